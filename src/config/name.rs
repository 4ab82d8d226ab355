//! The owner's own domain name for the box: certificates for it from an ACME CA (`[acme]`),
//! and the DNS record kept pointing at the home (`[dns]`). Both talk only to the servers
//! named here; with nothing named, nothing is contacted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Secret;

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Certificates every browser trusts, for `remote.name`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawAcmeConfig")]
pub struct AcmeConfig {
    pub enabled: bool,
    /// The CA's ACME directory URL.
    pub directory: String,
    /// `mailto:` address the CA may write to about the certificate; empty: none.
    pub contact: String,
    /// Root certificate (PEM) the directory's own HTTPS chains to, for a private ACME server;
    /// None: the system's roots.
    pub directory_root: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            directory: LETS_ENCRYPT.into(),
            contact: String::new(),
            directory_root: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAcmeConfig {
    enabled: bool,
    directory: String,
    contact: String,
    directory_root: String,
}

impl Default for RawAcmeConfig {
    fn default() -> Self {
        RawAcmeConfig {
            enabled: false,
            directory: LETS_ENCRYPT.into(),
            contact: String::new(),
            directory_root: String::new(),
        }
    }
}

impl TryFrom<RawAcmeConfig> for AcmeConfig {
    type Error = String;

    fn try_from(raw: RawAcmeConfig) -> Result<Self, String> {
        https_url("directory", &raw.directory)?;
        if !raw.contact.is_empty() {
            let address = raw.contact.strip_prefix("mailto:").unwrap_or("");
            let (user, domain) = address.split_once('@').unwrap_or(("", ""));
            if user.is_empty() || !super::is_host_name(domain) || !printable(&raw.contact) {
                return Err("contact must be mailto:someone@example.org".into());
            }
        }
        let directory_root = match raw.directory_root.as_str() {
            "" => None,
            path if path.starts_with('/') => Some(PathBuf::from(path)),
            _ => return Err("directory_root must be an absolute path".into()),
        };
        Ok(AcmeConfig {
            enabled: raw.enabled,
            directory: raw.directory,
            contact: raw.contact,
            directory_root,
        })
    }
}

/// How `remote.name`'s address record is kept up to date.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(try_from = "RawDnsConfig")]
pub enum DnsUpdateConfig {
    #[default]
    Off,
    /// RFC 2136 dynamic update, signed with a TSIG key (RFC 8945).
    Rfc2136 {
        /// The primary server as `host:port` (port 53 unless the owner said otherwise).
        server: String,
        zone: String,
        key_name: String,
        /// The key, base64 as `tsig-keygen` prints it, decoded.
        key: SecretBytes,
        ttl: Duration,
    },
    /// The dyndns2 HTTP protocol (`/nic/update?hostname=…&myip=…` with basic auth).
    Dyndns2 {
        /// The update URL, e.g. `https://members.dyndns.org/nic/update`.
        url: String,
        username: String,
        password: Secret,
        /// Root certificate (PEM) the server's HTTPS chains to; None: the system's roots.
        root: Option<PathBuf>,
    },
}

/// Bytes that are never printed.
#[derive(Clone, Default, PartialEq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDnsConfig {
    update: String,
    server: String,
    zone: String,
    key_name: String,
    key_algorithm: String,
    key_secret: Secret,
    ttl: String,
    url: String,
    username: String,
    password: Secret,
    server_root: String,
}

impl Default for RawDnsConfig {
    fn default() -> Self {
        RawDnsConfig {
            update: "off".into(),
            server: String::new(),
            zone: String::new(),
            key_name: String::new(),
            key_algorithm: "hmac-sha256".into(),
            key_secret: Secret::default(),
            ttl: "60s".into(),
            url: String::new(),
            username: String::new(),
            password: Secret::default(),
            server_root: String::new(),
        }
    }
}

impl TryFrom<RawDnsConfig> for DnsUpdateConfig {
    type Error = String;

    fn try_from(raw: RawDnsConfig) -> Result<Self, String> {
        match raw.update.as_str() {
            "off" => Ok(DnsUpdateConfig::Off),
            "rfc2136" => {
                let (host, port) = match raw.server.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
                        let port = port
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or("server: the port must be 1 to 65535")?;
                        (host.trim_start_matches('[').trim_end_matches(']'), port)
                    }
                    _ => (raw.server.as_str(), 53),
                };
                let server = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
                    Err(_) if super::is_host_name(host) => format!("{host}:{port}"),
                    Err(_) => return Err("server must be the DNS server's name or address (port 53 unless host:port)".into()),
                };
                if !super::is_host_name(raw.zone.trim_end_matches('.')) {
                    return Err("zone must be the DNS zone that holds remote.name".into());
                }
                if !super::is_host_name(raw.key_name.trim_end_matches('.')) {
                    return Err("key_name must be the TSIG key's name".into());
                }
                if raw.key_algorithm != "hmac-sha256" {
                    return Err("key_algorithm: only hmac-sha256 is supported".into());
                }
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(raw.key_secret.0.trim())
                    .ok()
                    .filter(|k| k.len() >= 16)
                    .ok_or("key_secret must be the TSIG key in base64 (16 bytes or more), as tsig-keygen prints it")?;
                let ttl = humantime::parse_duration(&raw.ttl).map_err(|e| format!("ttl: {e}"))?;
                if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(86400) {
                    return Err("ttl is out of range (1s to 1 day)".into());
                }
                Ok(DnsUpdateConfig::Rfc2136 {
                    server,
                    zone: raw.zone.trim_end_matches('.').to_ascii_lowercase(),
                    key_name: raw.key_name.trim_end_matches('.').to_ascii_lowercase(),
                    key: SecretBytes(key),
                    ttl,
                })
            }
            "dyndns2" => {
                https_url("url", &raw.url)?;
                if raw.username.is_empty()
                    || !printable(&raw.username)
                    || raw.username.contains(':')
                {
                    return Err("username: the dynamic-DNS account's user name".into());
                }
                if raw.password.0.is_empty() {
                    return Err("password: the dynamic-DNS account's password or token".into());
                }
                let root = match raw.server_root.as_str() {
                    "" => None,
                    path if path.starts_with('/') => Some(PathBuf::from(path)),
                    _ => return Err("server_root must be an absolute path".into()),
                };
                Ok(DnsUpdateConfig::Dyndns2 {
                    url: raw.url,
                    username: raw.username,
                    password: raw.password,
                    root,
                })
            }
            other => Err(format!(
                "update `{}` is not one of \"off\", \"rfc2136\", \"dyndns2\"",
                other.chars().take(32).collect::<String>().escape_debug()
            )),
        }
    }
}

fn printable(text: &str) -> bool {
    text.len() <= 256 && text.chars().all(|c| c.is_ascii_graphic())
}

fn https_url(key: &str, url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("https://").unwrap_or("");
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => host,
    };
    let host_ok = super::is_host_name(host) || host.parse::<std::net::IpAddr>().is_ok();
    if !printable(url) || !host_ok {
        return Err(format!("{key} must be an https:// URL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(text: &str) -> Result<DnsUpdateConfig, String> {
        toml::from_str::<toml::Table>(text)
            .map_err(|e| e.to_string())
            .and_then(|t| t.try_into::<DnsUpdateConfig>().map_err(|e| e.to_string()))
    }

    #[test]
    fn rfc2136_keys_are_checked_and_decoded() {
        let ok = dns(
            "update = \"rfc2136\"\nserver = \"203.0.114.53\"\nzone = \"Home.Test.\"\n\
             key_name = \"hearth\"\nkey_secret = \"MDEyMzQ1Njc4OWFiY2RlZg==\"\n",
        )
        .unwrap();
        match ok {
            DnsUpdateConfig::Rfc2136 {
                zone,
                key,
                ttl,
                server,
                ..
            } => {
                assert_eq!(server, "203.0.114.53:53");
                assert_eq!(zone, "home.test");
                assert_eq!(key.0, b"0123456789abcdef");
                assert_eq!(ttl, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        let short_key = dns(
            "update = \"rfc2136\"\nserver = \"ns\"\nzone = \"home.test\"\nkey_name = \"k\"\nkey_secret = \"c2hvcnQ=\"\n",
        );
        assert!(short_key.unwrap_err().contains("key_secret"));
        let bad_server = dns(
            "update = \"rfc2136\"\nserver = \"ns:99999\"\nzone = \"home.test\"\nkey_name = \"k\"\n",
        );
        assert!(bad_server.unwrap_err().contains("port"));
        assert!(dns("update = \"nsupdate\"")
            .unwrap_err()
            .contains("not one of"));
    }

    #[test]
    fn dyndns2_needs_https_and_an_account() {
        assert!(dns("update = \"dyndns2\"\nurl = \"http://x.test/nic/update\"\nusername = \"u\"\npassword = \"p\"")
            .unwrap_err()
            .contains("https"));
        assert!(
            dns("update = \"dyndns2\"\nurl = \"https://x.test/nic/update\"\npassword = \"p\"")
                .unwrap_err()
                .contains("username")
        );
        let ok = dns("update = \"dyndns2\"\nurl = \"https://x.test:8443/nic/update\"\nusername = \"u\"\npassword = \"p\"").unwrap();
        assert!(format!("{ok:?}").contains("<secret>"), "{ok:?}");
    }
}
