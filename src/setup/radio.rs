//! `hearth hotspot`, as root: the edge around [`super::hotspot`]. It looks for a network,
//! scans for the home's Wi-Fi, writes the hotspot's files and becomes wpa_supplicant (the
//! unit's main process), so that stopping the unit stops the hotspot.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::RngCore;

use super::hotspot::{networks_from_iw_scan, Hotspot, INTERFACE, NETWORK_FILE};

/// Where `hearth hotspot` writes.
#[derive(Debug, Clone)]
pub struct HotspotPaths {
    /// The daemon's copy (`hotspot.json`) and wpa_supplicant's configuration.
    pub run_dir: PathBuf,
    /// systemd-networkd's runtime configuration directory.
    pub network_dir: PathBuf,
    /// The root whose `/etc/wpa_supplicant` and `/etc/group` count (`/` on the box).
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RadioError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("wpa_supplicant did not start: {0}")]
    Exec(std::io::Error),
}

/// Why there is no hotspot (not an error: the box has a network).
#[derive(Debug, PartialEq, Eq)]
pub enum NotNeeded {
    /// A default route: a cable, or Wi-Fi that works.
    Connected,
    /// The home's Wi-Fi is configured (it may come up later).
    WifiConfigured,
}

/// Whether the box needs its hotspot: no Wi-Fi configured and no default route.
pub fn needed(root: &Path) -> Result<(), NotNeeded> {
    if root.join(super::WPA_FILE).exists() {
        return Err(NotNeeded::WifiConfigured);
    }
    if has_default_route(&std::fs::read_to_string("/proc/net/route").unwrap_or_default()) {
        return Err(NotNeeded::Connected);
    }
    Ok(())
}

/// `/proc/net/route` has a default route (destination 0 on some interface).
pub fn has_default_route(table: &str) -> bool {
    table
        .lines()
        .skip(1)
        .any(|line| line.split_whitespace().nth(1) == Some("00000000"))
}

/// The home's Wi-Fi networks the radio sees now (none if it cannot scan).
pub fn scan() -> Vec<String> {
    let _ = Command::new("ip")
        .args(["link", "set", INTERFACE, "up"])
        .status();
    match Command::new("iw").args(["dev", INTERFACE, "scan"]).output() {
        Ok(out) if out.status.success() => {
            networks_from_iw_scan(&String::from_utf8_lossy(&out.stdout))
        }
        Ok(out) => {
            tracing::warn!(
                "no Wi-Fi scan: iw said {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("no Wi-Fi scan: iw: {e}");
            Vec::new()
        }
    }
}

/// Write the hotspot's files and tell networkd. The hotspot it describes.
pub fn prepare(paths: &HotspotPaths, networks: Vec<String>) -> Result<Hotspot, RadioError> {
    let mut random = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let hotspot = Hotspot::new(&random, networks);
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e| RadioError::Io(what, e)
    };
    let wpa = paths.run_dir.join("wpa_supplicant.conf");
    crate::durable::write(&wpa, hotspot.wpa_supplicant_conf().as_bytes(), 0o600)
        .map_err(io(&wpa))?;
    let network = paths.network_dir.join(NETWORK_FILE);
    crate::durable::write(&network, hotspot.network_file().as_bytes(), 0o644)
        .map_err(io(&network))?;
    let json = paths.run_dir.join("hotspot.json");
    let text = serde_json::to_string_pretty(&hotspot).unwrap_or_default();
    crate::durable::write(&json, text.as_bytes(), 0o640).map_err(io(&json))?;
    // The daemon runs as `hearth` and shows the password on the TV; nobody else reads it.
    if let Some(gid) = group_id(&paths.root.join("etc/group"), "hearth") {
        std::os::unix::fs::chown(&json, None, Some(gid)).map_err(io(&json))?;
    }
    match Command::new("networkctl").arg("reload").status() {
        Ok(status) if status.success() => {}
        other => tracing::warn!("networkctl reload: {other:?}"),
    }
    Ok(hotspot)
}

/// Become wpa_supplicant with the hotspot's configuration. Returns only if that fails.
pub fn run_access_point(paths: &HotspotPaths) -> RadioError {
    let conf = paths.run_dir.join("wpa_supplicant.conf");
    RadioError::Exec(
        Command::new("wpa_supplicant")
            .arg("-i")
            .arg(INTERFACE)
            .arg("-c")
            .arg(conf)
            .exec(),
    )
}

/// What is left for the daemon when the Wi-Fi picked on the setup page did not work: its
/// name, for the TV ("check the password") when the hotspot is open again.
pub const WIFI_FAILED_FILE: &str = "var/lib/hearth/wifi-failed";

/// After a Wi-Fi was picked: wait up to `within` for a default route. If none comes, the
/// pick is undone (its configuration removed, the hotspot opened again) and the reason is
/// left for the TV. True if the box is connected.
pub fn keep_wifi_if_it_works(root: &Path, within: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        if has_default_route(&table) {
            let _ = std::fs::remove_file(root.join(WIFI_FAILED_FILE));
            return true;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let wpa = root.join(super::WPA_FILE);
    let name = std::fs::read_to_string(&wpa)
        .ok()
        .and_then(|conf| ssid_in(&conf))
        .unwrap_or_default();
    let _ = std::fs::remove_file(&wpa);
    let _ = crate::durable::write(
        &root.join(WIFI_FAILED_FILE),
        format!("{name}\n").as_bytes(),
        0o644,
    );
    for (verb, unit) in [
        ("stop", "wpa_supplicant@wlan0.service"),
        ("start", "hearth-hotspot.service"),
    ] {
        if let Err(e) = Command::new("systemctl").args([verb, unit]).status() {
            tracing::warn!("systemctl {verb} {unit}: {e}");
        }
    }
    false
}

/// The network name in a configuration `hearth setup` wrote (hex).
fn ssid_in(conf: &str) -> Option<String> {
    let hex = conf.lines().find_map(|l| l.trim().strip_prefix("ssid="))?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

fn group_id(group_file: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(group_file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_route_is_found_in_the_kernels_table() {
        let header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n";
        let lan = "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        let default = "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n";
        assert!(!has_default_route(header));
        assert!(!has_default_route(&format!("{header}{lan}")));
        assert!(has_default_route(&format!("{header}{lan}{default}")));
    }

    #[test]
    fn the_hotspot_files_are_written_for_root_and_the_daemon() {
        let dir = std::env::temp_dir().join(format!("hearth-radio-{}", std::process::id()));
        let paths = HotspotPaths {
            run_dir: dir.join("run"),
            network_dir: dir.join("network"),
            root: dir.join("root"),
        };
        std::fs::create_dir_all(paths.root.join("etc/wpa_supplicant")).unwrap();
        std::fs::write(paths.root.join(super::super::WPA_FILE), "network={}\n").unwrap();
        assert_eq!(needed(&paths.root), Err(NotNeeded::WifiConfigured));

        let hotspot = prepare(&paths, vec!["Home".into()]).unwrap();
        let json = std::fs::read_to_string(paths.run_dir.join("hotspot.json")).unwrap();
        assert_eq!(Hotspot::parse(&json).unwrap(), hotspot);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(paths.run_dir.join("wpa_supplicant.conf")), 0o600);
        assert_eq!(mode(paths.run_dir.join("hotspot.json")), 0o640);
        let network = std::fs::read_to_string(paths.network_dir.join(NETWORK_FILE)).unwrap();
        assert_eq!(network, hotspot.network_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_network_name_is_read_back_from_the_wifi_configuration() {
        let wifi = super::super::Wifi {
            name: "Café \"5G\"".into(),
            password: "12345678".into(),
            country: "FR".into(),
        };
        assert_eq!(
            ssid_in(&wifi.wpa_supplicant_conf()).as_deref(),
            Some("Café \"5G\"")
        );
        assert_eq!(ssid_in("network={}\n"), None);
        assert_eq!(ssid_in("ssid=zz\n"), None);
    }

    #[test]
    fn the_daemons_group_is_read_from_etc_group() {
        let dir = std::env::temp_dir().join(format!("hearth-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("group");
        std::fs::write(&file, "root:x:0:\ngpio:x:997:hearth\nhearth:x:998:\n").unwrap();
        assert_eq!(group_id(&file, "hearth"), Some(998));
        assert_eq!(group_id(&file, "nobody"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
