//! First boot without a shell: the owner writes `hearth-setup.toml` on the card's FAT boot
//! partition (Wi-Fi name and password, the box's name), as Raspberry Pi Imager users do.
//! At boot, before the network starts, `hearth setup` turns it into the system's Wi-Fi
//! configuration and the box's name, then removes it (it holds a password). Without a cable
//! or that file, the box opens its own Wi-Fi instead (`hotspot`), and the setup page on it
//! leaves the same `[wifi]` table in Hearth's state dir ([`REQUEST_FILE`]) for
//! `hearth setup --request` to apply. Parsing and rendering are pure; `apply_file` does the
//! file work, under a root directory for tests.

pub mod hotspot;
pub mod radio;

use std::path::Path;

use serde::Deserialize;

/// The file's name on the boot partition.
pub const SETUP_FILE: &str = "hearth-setup.toml";
/// Written next to it when it cannot be used, for the owner to read on another computer.
pub const ERROR_FILE: &str = "hearth-setup-error.txt";
/// wpa_supplicant's per-interface file, which its `@wlan0` unit reads.
pub const WPA_FILE: &str = "etc/wpa_supplicant/wpa_supplicant-wlan0.conf";
/// The box's name, in Hearth's state dir (where owners' renames go too).
pub const BOX_NAME_FILE: &str = "var/lib/hearth/box-name";
/// What the setup page asks for, in Hearth's state dir, until root applies it.
pub const REQUEST_FILE: &str = "wifi-request.toml";

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub wifi: Option<Wifi>,
    #[serde(rename = "box")]
    pub home: Option<BoxSetup>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// The network's name (SSID).
    pub name: String,
    /// Its password (8 to 63 characters).
    pub password: String,
    /// Two letters: the country whose radio rules apply (e.g. "GB", "DE", "US").
    pub country: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BoxSetup {
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    #[error("{SETUP_FILE} is not valid: {0}")]
    Invalid(String),
    #[error("the Wi-Fi name must be 1 to 32 bytes")]
    WifiName,
    #[error("the Wi-Fi password must be 8 to 63 characters, without line breaks")]
    WifiPassword,
    #[error("the country must be two letters, like \"GB\"")]
    Country,
}

impl Setup {
    pub fn parse(text: &str) -> Result<Setup, SetupError> {
        let setup: Setup = toml::from_str(text)
            .map_err(|e| SetupError::Invalid(e.message().replace('\n', " ")))?;
        if let Some(wifi) = &setup.wifi {
            wifi.check()?;
        }
        Ok(setup)
    }
}

impl Wifi {
    pub fn check(&self) -> Result<(), SetupError> {
        if self.name.is_empty() || self.name.len() > 32 {
            return Err(SetupError::WifiName);
        }
        let printable = self.password.chars().all(|c| (' '..='~').contains(&c));
        if !(8..=63).contains(&self.password.len()) || !printable {
            return Err(SetupError::WifiPassword);
        }
        if self.country.len() != 2 || !self.country.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(SetupError::Country);
        }
        Ok(())
    }

    /// wpa_supplicant's configuration for this network. The name goes in hex, so any byte
    /// in it is fine; the password is printable ASCII (checked), quoted.
    pub fn wpa_supplicant_conf(&self) -> String {
        let ssid: String = self.name.bytes().map(|b| format!("{b:02x}")).collect();
        format!(
            "# Written by `hearth setup` from {SETUP_FILE}.\n\
             ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\n\
             update_config=0\n\
             country={}\n\
             network={{\n\
             \tssid={ssid}\n\
             \tpsk=\"{}\"\n\
             \tkey_mgmt=WPA-PSK SAE\n\
             \tieee80211w=1\n\
             }}\n",
            self.country.to_ascii_uppercase(),
            self.password
        )
    }
}

/// What `apply` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// No setup file on the boot partition.
    Nothing,
    Done {
        wifi: bool,
        name: bool,
    },
}

/// Read the setup file from `boot`, write the system's files under `root`, remove it. A
/// file that cannot be used is removed too (it holds a password), and the reason is written
/// beside it for the owner.
pub fn apply(boot: &Path, root: &Path) -> std::io::Result<Result<Applied, SetupError>> {
    apply_file(
        &boot.join(SETUP_FILE),
        Some(&boot.join(ERROR_FILE)),
        root,
        false,
    )
}

/// `apply` for any such file: the boot partition's, or (with `wifi_only`) the setup page's
/// request, which the daemon's user wrote and so may name the Wi-Fi and nothing else. The
/// reason a file cannot be used goes to `error_file` when there is one.
pub fn apply_file(
    file: &Path,
    error_file: Option<&Path>,
    root: &Path,
    wifi_only: bool,
) -> std::io::Result<Result<Applied, SetupError>> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let text = match read_small(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(Applied::Nothing)),
        Err(e) => {
            // Not a plain small file (a link, a device): not read, but gone all the same.
            let _ = std::fs::remove_file(file);
            return Err(e);
        }
    };
    let parsed = Setup::parse(&text).and_then(|setup| match (&setup.home, wifi_only) {
        (Some(_), true) => Err(SetupError::Invalid(
            "the setup page sets only the Wi-Fi".into(),
        )),
        _ => Ok(setup),
    });
    let setup = match parsed {
        Ok(setup) => setup,
        Err(why) => {
            std::fs::remove_file(file)?;
            if let Some(error_file) = error_file {
                std::fs::write(error_file, format!("{why}\n"))?;
            }
            std::fs::File::open(dir)?.sync_all()?;
            return Ok(Err(why));
        }
    };
    if let Some(wifi) = &setup.wifi {
        crate::durable::write(
            &root.join(WPA_FILE),
            wifi.wpa_supplicant_conf().as_bytes(),
            0o600,
        )?;
    }
    if let Some(home) = &setup.home {
        let name = crate::call::protocol::clean_name(&home.name);
        crate::durable::write(
            &root.join(BOX_NAME_FILE),
            format!("{name}\n").as_bytes(),
            0o644,
        )?;
    }
    std::fs::remove_file(file)?;
    if let Some(error_file) = error_file {
        let _ = std::fs::remove_file(error_file);
    }
    // The password's removal reaches the card now, not at the next writeback: a box may be
    // unplugged at any moment.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Ok(Applied::Done {
        wifi: setup.wifi.is_some(),
        name: setup.home.is_some(),
    }))
}

/// The setup page's request: the home's Wi-Fi as a setup file's `[wifi]` table.
pub fn wifi_request(wifi: &Wifi) -> String {
    let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
    format!(
        "# From the setup page on the box's own Wi-Fi; `hearth setup --request` applies it.\n\
         [wifi]\nname = {}\npassword = {}\ncountry = {}\n",
        quoted(&wifi.name),
        quoted(&wifi.password),
        quoted(&wifi.country)
    )
}

/// A setup file's text: at most 16 KiB, and never through a symbolic link (root reads what
/// the daemon's user may have left).
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(16 * 1024).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[wifi]\nname = \"Café \\\"Net\\\"\"\npassword = \"correct horse\"\ncountry = \"gb\"\n\n[box]\nname = \"Gran's\\u202E box\"\n";

    #[test]
    fn the_setup_file_becomes_wifi_and_a_name_and_is_gone() {
        let dir = std::env::temp_dir().join(format!("hearth-setup-{}", std::process::id()));
        let (boot, root) = (dir.join("boot"), dir.join("root"));
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join(SETUP_FILE), GOOD).unwrap();
        let applied = apply(&boot, &root).unwrap().unwrap();
        assert_eq!(
            applied,
            Applied::Done {
                wifi: true,
                name: true
            }
        );
        assert!(
            !boot.join(SETUP_FILE).exists(),
            "the password does not stay on the card"
        );
        let wpa = std::fs::read_to_string(root.join(WPA_FILE)).unwrap();
        assert!(wpa.contains("country=GB\n"));
        assert!(
            wpa.contains(&format!("ssid={}\n", hex("Café \"Net\""))),
            "{wpa}"
        );
        assert!(wpa.contains("psk=\"correct horse\"\n"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join(WPA_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let name = std::fs::read_to_string(root.join(BOX_NAME_FILE)).unwrap();
        assert_eq!(name, "Gran's box\n", "names are cleaned here too");
        assert_eq!(apply(&boot, &root).unwrap().unwrap(), Applied::Nothing);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_is_removed_and_explained() {
        let dir = std::env::temp_dir().join(format!("hearth-setup-bad-{}", std::process::id()));
        let (boot, root) = (dir.join("boot"), dir.join("root"));
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(
            boot.join(SETUP_FILE),
            "[wifi]\nname = \"Home\"\npassword = \"short\"\ncountry = \"GB\"\n",
        )
        .unwrap();
        assert_eq!(apply(&boot, &root).unwrap(), Err(SetupError::WifiPassword));
        assert!(!boot.join(SETUP_FILE).exists());
        let why = std::fs::read_to_string(boot.join(ERROR_FILE)).unwrap();
        assert!(why.contains("8 to 63 characters"), "{why}");
        assert!(!root.join(WPA_FILE).exists());
        for bad in [
            "[wifi]\nname = \"x\"\n",
            "[wiif]\n",
            "[wifi]\nname=\"\"\npassword=\"12345678\"\ncountry=\"GB\"\n",
        ] {
            assert!(Setup::parse(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_setup_pages_request_is_a_setup_file_that_applies_the_same() {
        let wifi = Wifi {
            name: "Flat 3 \"upstairs\" \\ ✓".into(),
            password: "a'b\"c\\d#e f".into(),
            country: "DE".into(),
        };
        let text = wifi_request(&wifi);
        let parsed = Setup::parse(&text).unwrap();
        assert_eq!(parsed.wifi, Some(wifi.clone()));
        let dir = std::env::temp_dir().join(format!("hearth-setup-req-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let request = dir.join(REQUEST_FILE);
        std::fs::write(&request, &text).unwrap();
        let root = dir.join("root");
        let applied = apply_file(&request, None, &root, true).unwrap().unwrap();
        assert_eq!(
            applied,
            Applied::Done {
                wifi: true,
                name: false
            }
        );
        assert!(!request.exists());
        let wpa = std::fs::read_to_string(root.join(WPA_FILE)).unwrap();
        assert_eq!(wpa, wifi.wpa_supplicant_conf());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_setup_pages_request_names_only_the_wifi_and_is_never_a_link() {
        let dir = std::env::temp_dir().join(format!("hearth-setup-link-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(&dir).unwrap();
        let request = dir.join(REQUEST_FILE);
        let wifi = "[wifi]\nname = \"Home\"\npassword = \"12345678\"\ncountry = \"GB\"\n";
        std::fs::write(&request, format!("{wifi}[box]\nname = \"x\"\n")).unwrap();
        assert!(matches!(
            apply_file(&request, None, &root, true).unwrap(),
            Err(SetupError::Invalid(_))
        ));
        assert!(!root.join(BOX_NAME_FILE).exists() && !request.exists());
        // A link in place of the request is not followed, and is removed.
        let secret = dir.join("secret");
        std::fs::write(&secret, wifi).unwrap();
        std::os::unix::fs::symlink(&secret, &request).unwrap();
        assert!(apply_file(&request, None, &root, true).is_err());
        assert!(!root.join(WPA_FILE).exists() && std::fs::symlink_metadata(&request).is_err());
        // A link where the temporary file goes is replaced, not written through.
        let target = root.join(WPA_FILE);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, target.with_extension("tmp")).unwrap();
        crate::durable::write(&target, "network={}\n".as_bytes(), 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), wifi);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "network={}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn hex(text: &str) -> String {
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }
}
