//! The setup hotspot: a box with no network at first boot (no cable, no `hearth-setup.toml`)
//! opens a Wi-Fi network of its own, with a random password that only the TV shows. A phone
//! that joins it has seen the TV, so it may pick the home's Wi-Fi on the setup page.
//!
//! `hearth hotspot` (root, `hearth-hotspot.service`) writes what is here: wpa_supplicant's
//! access-point configuration, a systemd-networkd file (the box's address and a DHCP server
//! on `wlan0`), and [`Hotspot`] as JSON for the daemon, which shows the TV's QR code and
//! serves the setup page. Everything here is pure; the files are written by the caller.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The interface the hotspot runs on.
pub const INTERFACE: &str = "wlan0";
/// The box's address on its hotspot; phones get one from the same /24.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
pub const PREFIX: u8 = 24;
/// Where `hearth hotspot` puts the daemon's copy (a systemd runtime directory: gone when
/// the hotspot stops or the box restarts).
pub const DEFAULT_FILE: &str = "/run/hearth-hotspot/hotspot.json";
/// systemd-networkd's file for the hotspot; sorts before the image's `20-wired.network`.
pub const NETWORK_FILE: &str = "10-hearth-hotspot.network";
/// Networks listed on the setup page at most.
const MAX_NETWORKS: usize = 40;
/// Letters that cannot be mistaken for one another when typed from a TV.
const PASSWORD_LETTERS: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY3479";
const PASSWORD_LEN: usize = 12;

/// What the daemon needs to know about a running hotspot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hotspot {
    /// The hotspot's name ("Hearth-3F2A").
    pub ssid: String,
    pub password: String,
    /// The box's address on it; only phones in its /24 see the setup page.
    pub address: Ipv4Addr,
    #[serde(default = "default_prefix")]
    pub prefix: u8,
    /// The Wi-Fi networks the box saw before it opened its own, for the setup page to offer.
    #[serde(default)]
    pub networks: Vec<String>,
}

fn default_prefix() -> u8 {
    PREFIX
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotspotError {
    #[error("the hotspot file is not valid: {0}")]
    Invalid(String),
    #[error("the hotspot file's prefix must be 8 to 30")]
    Prefix,
}

impl Hotspot {
    /// A hotspot with a name and password drawn from `random` (at least 16 bytes).
    pub fn new(random: &[u8; 16], networks: Vec<String>) -> Hotspot {
        let ssid = format!("Hearth-{:02X}{:02X}", random[0], random[1]);
        // Rejection sampling keeps every letter equally likely (12 of 49 letters: 67 bits).
        let mut password = String::with_capacity(PASSWORD_LEN);
        let limit = 256 - 256 % PASSWORD_LETTERS.len();
        let mut bytes = random[2..].iter().copied().chain(extra_bytes(random));
        while password.len() < PASSWORD_LEN {
            let Some(b) = bytes.next() else { break };
            if (b as usize) < limit {
                password.push(PASSWORD_LETTERS[b as usize % PASSWORD_LETTERS.len()] as char);
            }
        }
        Hotspot {
            ssid,
            password,
            address: ADDRESS,
            prefix: PREFIX,
            networks: networks.into_iter().take(MAX_NETWORKS).collect(),
        }
    }

    pub fn parse(text: &str) -> Result<Hotspot, HotspotError> {
        let hotspot: Hotspot =
            serde_json::from_str(text).map_err(|e| HotspotError::Invalid(e.to_string()))?;
        if !(8..=30).contains(&hotspot.prefix) {
            return Err(HotspotError::Prefix);
        }
        Ok(hotspot)
    }

    /// Whether `ip` is a phone on the hotspot (or the box itself there).
    pub fn serves(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return false,
            },
        };
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.address) & mask
    }

    /// wpa_supplicant as an access point: WPA2 (CCMP) on 2.4 GHz channel 6, which every
    /// country allows.
    pub fn wpa_supplicant_conf(&self) -> String {
        format!(
            "# Written by `hearth hotspot`: the box's own Wi-Fi for setting it up.\n\
             ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\n\
             ap_scan=2\n\
             network={{\n\
             \tssid={}\n\
             \tmode=2\n\
             \tfrequency=2437\n\
             \tkey_mgmt=WPA-PSK\n\
             \tproto=RSN\n\
             \tpairwise=CCMP\n\
             \tgroup=CCMP\n\
             \tpsk=\"{}\"\n\
             }}\n",
            hex(&self.ssid),
            self.password
        )
    }

    /// systemd-networkd: the box's address on the hotspot and a DHCP server for phones (no
    /// DNS, no route to anywhere: the hotspot leads only to the box).
    pub fn network_file(&self) -> String {
        format!(
            "# Written by `hearth hotspot`; removed when the hotspot stops.\n\
             [Match]\n\
             Name={INTERFACE}\n\n\
             [Network]\n\
             Address={}/{}\n\
             DHCPServer=yes\n\
             MulticastDNS=no\n\
             LLMNR=no\n\
             IPv6AcceptRA=no\n\n\
             [DHCPServer]\n\
             PoolOffset=10\n\
             PoolSize=100\n\
             EmitDNS=no\n\
             EmitRouter=no\n",
            self.address, self.prefix
        )
    }

    /// The QR code phones' cameras read as "join this Wi-Fi" (the ZXing `WIFI:` format).
    pub fn wifi_qr(&self) -> String {
        format!(
            "WIFI:T:WPA;S:{};P:{};;",
            qr_escape(&self.ssid),
            qr_escape(&self.password)
        )
    }

    /// The setup page on the hotspot (plain HTTP: the hotspot's own WPA2 protects it, and
    /// a phone shows no certificate warning).
    pub fn setup_url(&self, http_port: u16) -> String {
        match http_port {
            80 => format!("http://{}/setup", self.address),
            port => format!("http://{}:{port}/setup", self.address),
        }
    }
}

/// More bytes for the password when `random` had too many rejected (practically never):
/// derived, so the result stays a function of `random`.
fn extra_bytes(random: &[u8; 16]) -> impl Iterator<Item = u8> + '_ {
    (0u8..=255).flat_map(move |round| random.iter().map(move |b| b.wrapping_mul(31) ^ round))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn qr_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | ';' | ',' | ':' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The network names in `iw dev wlan0 scan` output: each `SSID:` line once, in the order
/// seen (strongest first is iw's habit), hidden ones left out, `\xNN` escapes decoded.
pub fn networks_from_iw_scan(output: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in output.lines() {
        let Some(raw) = line.trim_start().strip_prefix("SSID: ") else {
            continue;
        };
        let name = decode_iw_escapes(raw);
        let visible = !name.trim().is_empty() && !name.chars().all(|c| c == '\0');
        if visible && !names.contains(&name) && names.len() < MAX_NETWORKS {
            names.push(name);
        }
    }
    names
}

fn decode_iw_escapes(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let Some(b) = raw
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hotspot() -> Hotspot {
        let mut random = [0u8; 16];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        Hotspot::new(&random, vec!["Home".into(), "Neighbours".into()])
    }

    #[test]
    fn a_hotspot_has_a_short_name_and_a_long_unambiguous_password() {
        let h = hotspot();
        assert!(
            h.ssid.starts_with("Hearth-") && h.ssid.len() == 11,
            "{}",
            h.ssid
        );
        assert_eq!(h.password.len(), PASSWORD_LEN);
        assert!(h.password.bytes().all(|b| PASSWORD_LETTERS.contains(&b)));
        assert!(!h.password.contains(['0', 'O', 'o', '1', 'l', 'I']));
        let other = Hotspot::new(&[200; 16], vec![]);
        assert_ne!(other.password, h.password);
        // Every byte rejected still gives a full password.
        let rejected = [255u8; 16];
        assert_eq!(Hotspot::new(&rejected, vec![]).password.len(), PASSWORD_LEN);
    }

    #[test]
    fn the_files_say_what_wpa_supplicant_and_networkd_need() {
        let h = hotspot();
        let wpa = h.wpa_supplicant_conf();
        assert!(
            wpa.contains("\tmode=2\n") && wpa.contains("\tproto=RSN\n"),
            "{wpa}"
        );
        assert!(wpa.contains(&format!("\tssid={}\n", hex(&h.ssid))));
        assert!(wpa.contains(&format!("\tpsk=\"{}\"\n", h.password)));
        let net = h.network_file();
        assert!(net.contains("Name=wlan0\n") && net.contains("Address=10.42.0.1/24\n"));
        assert!(net.contains("DHCPServer=yes\n") && net.contains("EmitRouter=no\n"));
    }

    #[test]
    fn the_qr_code_escapes_what_the_wifi_format_reserves() {
        let mut h = hotspot();
        h.ssid = "a;b:c".into();
        h.password = r#"p\w,"d""#.into();
        assert_eq!(h.wifi_qr(), r#"WIFI:T:WPA;S:a\;b\:c;P:p\\w\,\"d\";;"#);
        assert_eq!(h.setup_url(80), "http://10.42.0.1/setup");
        assert_eq!(h.setup_url(8080), "http://10.42.0.1:8080/setup");
    }

    #[test]
    fn only_phones_on_the_hotspot_are_served() {
        let h = hotspot();
        assert!(h.serves("10.42.0.57".parse().unwrap()));
        assert!(h.serves("::ffff:10.42.0.57".parse().unwrap()));
        assert!(!h.serves("10.42.1.5".parse().unwrap()));
        assert!(!h.serves("127.0.0.1".parse().unwrap()));
        assert!(!h.serves("192.168.1.20".parse().unwrap()));
        assert!(!h.serves("::1".parse().unwrap()));
    }

    #[test]
    fn the_daemons_copy_round_trips_and_bad_ones_are_refused() {
        let h = hotspot();
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(Hotspot::parse(&text).unwrap(), h);
        assert!(Hotspot::parse("{}").is_err());
        assert!(Hotspot::parse("not json").is_err());
        let wide = text.replace("\"prefix\":24", "\"prefix\":0");
        assert_eq!(Hotspot::parse(&wide), Err(HotspotError::Prefix));
    }

    #[test]
    fn networks_are_read_from_iw_scan_output() {
        let output = "BSS aa:bb:cc:dd:ee:ff(on wlan0)\n\tsignal: -40.00 dBm\n\tSSID: Home\n\
                      BSS 11:22:33:44:55:66(on wlan0)\n\tSSID: Caf\\xc3\\xa9 Wi-Fi\n\
                      BSS 11:22:33:44:55:67(on wlan0)\n\tSSID: \n\
                      BSS 11:22:33:44:55:68(on wlan0)\n\tSSID: \\x00\\x00\n\
                      BSS 11:22:33:44:55:69(on wlan0)\n\tSSID: Home\n\
                      \t\t * SSID List\n";
        assert_eq!(networks_from_iw_scan(output), ["Home", "Café Wi-Fi"]);
    }
}
