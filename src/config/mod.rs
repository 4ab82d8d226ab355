//! The owner's configuration file: TOML, every field defaulted, unknown keys refused.
//! Range checks run inside deserialization so every error carries the span of the bad value,
//! which becomes "FILE:LINE:COLUMN: key `x.y`: problem" in one line.

pub mod board;
pub mod name;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub web: WebConfig,
    pub call: CallConfig,
    #[serde(rename = "box")]
    pub home: BoxConfig,
    pub remote: RemoteConfig,
    pub setup: SetupConfig,
    pub relay: RelayConfig,
    pub acme: name::AcmeConfig,
    pub dns: name::DnsUpdateConfig,
    pub clock: ClockConfig,
    /// Overrides for the board profile's fields (`board/<name>.toml`), e.g. `[board.camera]`.
    pub board: toml::Table,
}

/// A TURN server the owner chose, for phones on networks that block UDP (`reach::relay`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawRelayConfig")]
pub struct RelayConfig {
    /// `turn:` and `turns:` URLs phones are given; empty: no relay.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`: it makes each phone's credentials, and never leaves
    /// the box.
    pub secret: Secret,
    /// How long a phone's credentials work.
    pub credential_lifetime: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            urls: Vec::new(),
            secret: Secret::default(),
            credential_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// A string that is never printed.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<secret>"
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRelayConfig {
    urls: Vec<String>,
    secret: Secret,
    credential_lifetime: String,
}

impl Default for RawRelayConfig {
    fn default() -> Self {
        RawRelayConfig {
            urls: Vec::new(),
            secret: Secret::default(),
            credential_lifetime: "12h".into(),
        }
    }
}

impl TryFrom<RawRelayConfig> for RelayConfig {
    type Error = String;

    fn try_from(raw: RawRelayConfig) -> Result<Self, String> {
        if raw.urls.len() > 8 {
            return Err("at most 8 relay URLs".into());
        }
        for url in &raw.urls {
            let scheme_ok = url.starts_with("turn:") || url.starts_with("turns:");
            let printable = url.chars().all(|c| c.is_ascii_graphic()) && url.len() <= 256;
            if !scheme_ok || !printable {
                let shown: String = url.chars().take(64).collect();
                return Err(format!(
                    "`{}` is not a TURN URL (turn:HOST:PORT or turns:HOST:PORT?transport=tcp)",
                    shown.escape_debug()
                ));
            }
        }
        if !raw.urls.is_empty() && raw.secret.0.len() < 16 {
            return Err(
                "a relay needs `secret`: coturn's static-auth-secret, 16 characters or more".into(),
            );
        }
        let lifetime = humantime::parse_duration(&raw.credential_lifetime)
            .map_err(|e| format!("credential_lifetime: {e}"))?;
        if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(7 * 24 * 3600) {
            return Err("credential_lifetime is out of range (1 minute to 7 days)".into());
        }
        Ok(RelayConfig {
            urls: raw.urls,
            secret: raw.secret,
            credential_lifetime: lifetime,
        })
    }
}

/// Setting the box up without a network (see `setup::hotspot`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SetupConfig {
    /// Where `hearth hotspot` describes the box's own Wi-Fi while it is open.
    pub hotspot_file: std::path::PathBuf,
}

impl Default for SetupConfig {
    fn default() -> Self {
        SetupConfig {
            hotspot_file: crate::setup::hotspot::DEFAULT_FILE.into(),
        }
    }
}

/// How the box knows its clock is right (`crate::clock`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// The file the NTP client creates once it has synchronised the clock. Where its
    /// directory does not exist (no such client installed), the kernel's flag is asked.
    pub synchronized_mark: std::path::PathBuf,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            synchronized_mark: crate::clock::TIMESYNCD_SYNCHRONIZED.into(),
        }
    }
}

/// Reaching the box from outside the home: the home router forwards its ports.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The owner's domain name for the box (join links use it); empty: the router's address.
    #[serde(deserialize_with = "domain_name")]
    pub name: String,
    /// Ask the home router to forward the HTTPS and media ports (PCP, NAT-PMP, UPnP).
    pub port_mapping: PortMapping,
    /// External HTTPS port to ask for first (the router may give another).
    #[serde(deserialize_with = "port")]
    pub https_port: u16,
    /// External media port to ask for first; 0: the same as `call.udp_port`.
    #[serde(deserialize_with = "port_or_zero")]
    pub media_port: u16,
    /// How long the router keeps a forwarding before it must be renewed.
    #[serde(deserialize_with = "lease")]
    pub lease: Duration,
    /// How often the router is asked again (renewal; a router that restarted or changed
    /// its address is noticed at the next check).
    #[serde(deserialize_with = "check_every")]
    pub check_every: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PortMapping {
    /// On for the Pi boards, off for the dev board.
    Auto,
    On,
    Off,
}

impl PortMapping {
    pub fn is_on(self, board: board::Board) -> bool {
        match self {
            PortMapping::Auto => board != board::Board::Dev,
            PortMapping::On => true,
            PortMapping::Off => false,
        }
    }
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            name: String::new(),
            port_mapping: PortMapping::Auto,
            https_port: 443,
            media_port: 0,
            lease: Duration::from_secs(3600),
            check_every: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BoxConfig {
    /// The box joins its own call with its camera, mic, screen and speaker.
    pub media: bool,
    /// The box's name on everyone's screen.
    pub name: String,
}

impl Default for BoxConfig {
    fn default() -> Self {
        BoxConfig {
            media: true,
            name: "Home".to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// HTTPS port of the join page and signalling.
    #[serde(deserialize_with = "port")]
    pub https_port: u16,
    /// Plain HTTP port that only redirects to HTTPS; 0 turns it off.
    #[serde(deserialize_with = "port_or_zero")]
    pub http_port: u16,
    /// Name in join links and the certificate; empty means the machine's hostname.
    #[serde(deserialize_with = "hostname")]
    pub hostname: String,
    /// Address to listen on with `--lan`; empty means every address.
    #[serde(deserialize_with = "optional_ip")]
    pub lan_address: Option<IpAddr>,
    /// Web connections open at once (HTTPS and the redirect together). At the cap the
    /// longest idle one is closed to make room.
    #[serde(deserialize_with = "max_connections")]
    pub max_connections: usize,
    /// Web connections open at once from one address (an IPv6 /64 counts as one).
    #[serde(deserialize_with = "max_connections_per_address")]
    pub max_connections_per_address: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallConfig {
    /// The one UDP port every phone's media uses.
    #[serde(deserialize_with = "port")]
    pub udp_port: u16,
    #[serde(deserialize_with = "max_participants")]
    pub max_participants: usize,
    /// Devices in the call at once with one link (a phone and a tablet). The TV's link is
    /// for the whole family and allows `max_participants`.
    #[serde(deserialize_with = "sessions_per_invite")]
    pub sessions_per_invite: u32,
    /// Whoever scans the TV's code knocks first and waits to be let in.
    pub tv_link_knocks: bool,
    /// How long a new join link stays valid unless `--ttl` says otherwise.
    #[serde(deserialize_with = "invite_ttl")]
    pub invite_ttl: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            https_port: 8443,
            http_port: 8080,
            hostname: String::new(),
            lan_address: None,
            max_connections: 256,
            max_connections_per_address: 32,
        }
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            udp_port: 10000,
            max_participants: 8,
            sessions_per_invite: 2,
            tv_link_knocks: true,
            invite_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default configuration as commented TOML (`hearth config default`).
pub const DEFAULT_TOML: &str = r#"# Hearth configuration. Every key is optional; these are the defaults.

[web]
# HTTPS port of the join page (phones open https://<hostname>.local:<port>/join#...).
https_port = 8443
# Plain HTTP port; it only redirects to HTTPS. 0 turns it off.
http_port = 8080
# Name used in join links and in Hearth's certificate. Empty: this machine's hostname.
hostname = ""
# With --lan: the address to listen on. Empty: all addresses.
lan_address = ""
# Web connections open at once (16 to 4096), and from one address (2 to 1024; an IPv6 /64
# counts as one address). At the cap the longest idle connection is closed to make room; a
# phone in the call is never idle. Keep max_connections well under the service's LimitNOFILE.
max_connections = 256
max_connections_per_address = 32

[call]
# The single UDP port that carries every phone's audio and video.
udp_port = 10000
# Most people in one call (2 to 16). Each phone receives everyone else's video.
max_participants = 8
# How many devices may be in the call at once with one join link (1 to 16). The link on the
# TV's screen is for the whole family and allows max_participants.
sessions_per_invite = 2
# Whoever scans the code on the TV knocks first: the TV shows their name, and someone at home
# lets them in (an owner's phone, or a flick of the privacy switch: on and off again).
tv_link_knocks = true
# How long a new join link stays valid (for example "2h", "24h", "7d"; at most 30 days).
invite_ttl = "24h"

[box]
# The box joins its own call: its camera and mic go to the phones, the phones appear on its
# screen and are heard from its speaker. false: the box only forwards between phones.
media = true
# The box's name on everyone's screen.
name = "Home"

[remote]
# Your domain name for the box, e.g. "grandma.example.org" (a name you own, or one from a
# dynamic-DNS provider). Join links use it; [acme] gets it a certificate every browser
# trusts and [dns] keeps it pointing at your home. Empty: links use the router's address.
name = ""
# Family outside the home reach the box through the home router: Hearth asks it (PCP, NAT-PMP
# or UPnP-IGD, whichever it answers) to forward the HTTPS port and the media port to the box,
# and learns the router's external address from it. This opens those two ports on the router
# while Hearth runs (the forwarding is removed when it stops). "auto": on for the Pi boards,
# off for the dev board; "off": the box is for the home network only.
port_mapping = "auto"
# External HTTPS port to ask the router for (it may give another if this one is taken).
https_port = 443
# External media port to ask for; 0: the same as call.udp_port.
media_port = 0
# How long the router keeps the forwarding unless renewed (30s to 24h).
lease = "1h"
# How often Hearth asks the router again: renewal, and noticing a router that restarted or
# changed its address; [dns] follows a new address within this (1s to 1h).
check_every = "20s"

[relay]
# A TURN server you run or chose (coturn with use-auth-secret), for relatives on networks
# that block UDP (hotels, offices, care homes). Phones get short-lived credentials made from
# the secret; the secret never leaves the box, and the box itself never contacts the relay.
# Example: urls = ["turns:turn.example.org:443?transport=tcp", "turn:turn.example.org:3478"]
urls = []
secret = ""
credential_lifetime = "12h"

[acme]
# A certificate for remote.name from an ACME CA (Let's Encrypt), renewed by itself; until one
# is issued, Hearth's own certificate serves. The CA checks the name by connecting to port 443
# of remote.name (TLS-ALPN-01): the router must forward external port 443 to the box (port
# mapping asks for it). Nothing is requested while the clock is not known to be right.
enabled = false
directory = "https://acme-v02.api.letsencrypt.org/directory"
# Let's Encrypt's staging CA, for trying it out:
# directory = "https://acme-staging-v02.api.letsencrypt.org/directory"
# Address the CA may write to about the certificate, e.g. "mailto:you@example.org".
contact = ""
# For a private ACME server: the root certificate (PEM file) its own HTTPS chains to.
directory_root = ""

[dns]
# Keep remote.name pointing at the home's external address when the router's changes.
# "off"; "rfc2136": a DNS server that takes updates signed with a TSIG key (server, zone,
# key_name, key_secret); "dyndns2": the update protocol of most dynamic-DNS providers (url,
# username, password). The key and password never leave the box except to that server.
update = "off"
server = ""
zone = ""
key_name = ""
key_algorithm = "hmac-sha256"
key_secret = ""
ttl = "60s"
url = ""
username = ""
password = ""
# For a private update server: the root certificate (PEM file) its HTTPS chains to.
server_root = ""

[clock]
# Made by the NTP client (systemd-timesyncd) once the clock is right; links, certificates and
# the privacy log trust the clock only then.
synchronized_mark = "/run/systemd/timesync/synchronized"

[setup]
# Where `hearth hotspot` describes the box's own setup Wi-Fi while it is open.
hotspot_file = "/run/hearth-hotspot/hotspot.json"

# Any field of the board profile (board/dev.toml, pi4.toml, pi5.toml) can be overridden:
# [board.camera]
# width = 640
[board]
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        /// "key `web.https_port`: " or empty when the error is not about one key.
        key: String,
        message: String,
    },
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    let config = parse_sections(text, path)?;
    let needs_name = [
        ("acme", "enabled", config.acme.enabled),
        ("dns", "update", config.dns != name::DnsUpdateConfig::Off),
    ];
    let invalid = |table: &str, key: &str, message: &str| {
        let offset = offset_of(text, table, key).unwrap_or(0);
        let (line, column) = line_and_column(text, offset);
        ConfigError::Invalid {
            path: path.to_string(),
            line,
            column,
            key: format!("key `{table}.{key}`: "),
            message: message.into(),
        }
    };
    for (table, key, on) in needs_name {
        if on && config.remote.name.is_empty() {
            return Err(invalid(
                table,
                key,
                "needs remote.name: the domain name to use",
            ));
        }
    }
    if let name::DnsUpdateConfig::Rfc2136 { zone, .. } = &config.dns {
        let name = &config.remote.name;
        if name != zone && !name.ends_with(&format!(".{zone}")) {
            return Err(invalid("dns", "zone", "remote.name is not in this zone"));
        }
    }
    Ok(config)
}

/// Where `key` is set inside `[table]`, for errors about a whole setting.
fn offset_of(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed.trim_matches(|c| c == '[' || c == ']').trim() == table;
        } else if inside && trimmed.split('=').next().map(str::trim) == Some(key) {
            return Some(offset + line.find(key).unwrap_or(0));
        }
        offset += line.len();
    }
    None
}

fn parse_sections(text: &str, path: &str) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let (line, column) = line_and_column(text, offset);
        let key = key_at(text, offset)
            .map(|k| format!("key `{k}`: "))
            .unwrap_or_default();
        ConfigError::Invalid {
            path: path.to_string(),
            line,
            column,
            key,
            message: e.message().replace('\n', " "),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text
        .get(line_start..offset)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// The dotted key whose line holds `offset`: the nearest `[table]` above plus the key on
/// that line. None for lines that are not `key = value`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text.get(..offset)?.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let table = text
        .get(..line_start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let value = i64::deserialize(d)?;
    match u16::try_from(value) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(serde::de::Error::custom(format!(
            "port {value} is out of range (1 to 65535)"
        ))),
    }
}

fn port_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let value = i64::deserialize(d)?;
    u16::try_from(value)
        .map_err(|_| serde::de::Error::custom(format!("port {value} is out of range (0 to 65535)")))
}

fn max_participants<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = i64::deserialize(d)?;
    match usize::try_from(value) {
        Ok(n) if (2..=16).contains(&n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "{value} is out of range (2 to 16)"
        ))),
    }
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 16, 4096)
}

fn max_connections_per_address<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 2, 1024)
}

fn in_range<'de, D: Deserializer<'de>>(d: D, min: usize, max: usize) -> Result<usize, D::Error> {
    let value = i64::deserialize(d)?;
    match usize::try_from(value) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "{value} is out of range ({min} to {max})"
        ))),
    }
}

fn sessions_per_invite<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(d)?;
    match u32::try_from(value) {
        Ok(n) if (1..=16).contains(&n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "{value} is out of range (1 to 16)"
        ))),
    }
}

fn lease<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration_between(
        d,
        Duration::from_secs(30),
        Duration::from_secs(24 * 3600),
        "30s to 24h",
    )
}

fn check_every<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration_between(
        d,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        "1s to 1h",
    )
}

fn duration_between<'de, D: Deserializer<'de>>(
    d: D,
    min: Duration,
    max: Duration,
    range: &str,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let value = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("`{text}` is not a duration like \"1h\": {e}"))
    })?;
    if value < min || value > max {
        return Err(serde::de::Error::custom(format!(
            "`{text}` is out of range ({range})"
        )));
    }
    Ok(value)
}

fn invite_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_ttl(&text).map_err(serde::de::Error::custom)
}

/// A link lifetime like "90m", "24h", "7d": at least a minute, at most 30 days.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like \"24h\": {e}"))?;
    if ttl < Duration::from_secs(60) || ttl > MAX_INVITE_TTL {
        return Err(format!("`{text}` is out of range (1 minute to 30 days)"));
    }
    Ok(ttl)
}

/// Empty, or a DNS host name: dot-separated labels of letters, digits and hyphens (1 to 63
/// each, no hyphen at either end), 253 characters at most. It goes into every join link and
/// the certificate, so nothing else may pass.
fn hostname<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() || is_host_name(&text) {
        return Ok(text);
    }
    let shown: String = text.chars().take(64).collect();
    Err(serde::de::Error::custom(format!(
        "`{}` is not a host name (letters, digits, hyphens and dots)",
        shown.escape_debug()
    )))
}

/// A public domain name: a host name with at least two labels.
fn domain_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim_end_matches('.').to_ascii_lowercase();
    if text.is_empty() || (is_host_name(&text) && text.contains('.')) {
        return Ok(text);
    }
    let shown: String = text.chars().take(64).collect();
    Err(serde::de::Error::custom(format!(
        "`{}` is not a domain name (like home.example.org)",
        shown.escape_debug()
    )))
}

fn is_host_name(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn optional_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text, "hearth.toml").unwrap_err().to_string()
    }

    #[test]
    fn default_text_is_the_default_config() {
        assert_eq!(parse(DEFAULT_TOML, "default").unwrap(), Config::default());
        assert_eq!(parse("", "empty").unwrap(), Config::default());
    }

    #[test]
    fn five_kinds_of_bad_config_name_file_line_column_and_key() {
        let cases = [
            // syntax error
            ("[web]\nhttps_port = = 3\n", "hearth.toml:2:"),
            // unknown key
            (
                "[web]\nhttps_prot = 443\n",
                "hearth.toml:2:1: key `web.https_prot`: unknown field",
            ),
            // wrong type
            (
                "[call]\nudp_port = \"ten\"\n",
                "hearth.toml:2:12: key `call.udp_port`: invalid type",
            ),
            // bad address
            (
                "[web]\nlan_address = \"10.0.0.300\"\n",
                "hearth.toml:2:15: key `web.lan_address`: `10.0.0.300` is not an IP address",
            ),
            // out-of-range number
            (
                "[call]\nmax_participants = 99\n",
                "hearth.toml:2:20: key `call.max_participants`: 99 is out of range",
            ),
            (
                "\n[web]\nhttps_port = 70000\n",
                "hearth.toml:3:14: key `web.https_port`: port 70000 is out of range",
            ),
            (
                "[web]\nmax_connections = 100000\n",
                "hearth.toml:2:19: key `web.max_connections`: 100000 is out of range (16 to 4096)",
            ),
            (
                "[call]\ninvite_ttl = \"forever\"\n",
                "hearth.toml:2:14: key `call.invite_ttl`: `forever` is not a duration",
            ),
            // unknown table
            ("[cal]\nudp_port = 1\n", "hearth.toml:1:"),
            // a host name that would break every join link
            (
                "[web]\nhostname = \"box/../x y\"\n",
                "hearth.toml:2:12: key `web.hostname`: `box/../x y` is not a host name",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(message.starts_with(expected), "{text:?} gave {message:?}");
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
    }

    #[test]
    fn host_names() {
        for good in [
            "hearth",
            "hearth.local",
            "my-box.example.org",
            "192.168.1.5",
            "",
        ] {
            let text = format!("[web]\nhostname = \"{good}\"\n");
            assert_eq!(parse(&text, "t").unwrap().web.hostname, good);
        }
        let long = format!("{}.local", "a".repeat(64));
        for bad in [
            "a b",
            "x/y",
            "-box",
            "box-",
            "a..b",
            "box.",
            "\u{202E}box",
            &long,
        ] {
            let text = format!("[web]\nhostname = \"{bad}\"\n");
            assert!(error(&text).contains("is not a host name"), "{bad:?}");
        }
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_ttl("10s").is_err());
        assert!(parse_ttl("31d").is_err());
    }
}
