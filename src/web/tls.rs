//! Hearth's own certificate authority and server certificate, made on first start and kept
//! in the state dir. Browsers expose no camera to `http://<LAN IP>`, so HTTPS is not optional;
//! the CA (served at `/hearth-ca.pem`) can be installed on a phone to silence the warning.
//!
//! A phone that installs the CA trusts it for whatever the CA vouches for, so the CA carries
//! name constraints (critical): it can vouch only for the box's own names and for addresses on
//! a home network, never for a website. Which names, and why, is said at [`LOCAL_RANGES`].
//! The server certificate is re-issued before it expires, at start and while running
//! ([`Renewal`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

const CA_DAYS: i64 = 3650;
/// Short enough for browsers' leaf-lifetime rules, re-issued well before it ends.
const SERVER_DAYS: i64 = 397;
/// A server certificate this close to its end is re-issued.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// How often the running daemon asks whether its certificate is due.
const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The address ranges Hearth's CA permits (besides the box's DNS names): loopback, private
/// (RFC 1918), IPv4 link-local, IPv6 loopback, unique-local and link-local.
///
/// Why ranges and not the box's exact addresses: a home router hands out addresses by DHCP,
/// and they change (a new router, a lease that lapsed while the box was unplugged, a second
/// network interface). A CA constrained to today's exact addresses would have to be replaced
/// when that happens, and every phone that installed it would have to install the new one.
/// These ranges are never a public website's, so the CA still cannot vouch for one.
/// Global addresses (public IPv4, global IPv6, whose privacy addresses change daily) are left
/// out of the certificate, except the one address the join links use, which is then permitted
/// exactly (see [`ensure_identity`]).
pub const LOCAL_RANGES: [(IpAddr, u8); 8] = [
    (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
    (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
    (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    (IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
    (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
];

/// Whether `ip` lies in one of [`LOCAL_RANGES`].
pub fn is_local(ip: IpAddr) -> bool {
    LOCAL_RANGES.iter().any(|&(base, prefix)| {
        let subnet = Subnet::from(CidrSubnet::from_addr_prefix(base, prefix));
        subnet.contains(ip)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path} is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error("cannot load the renewed certificate: {0}")]
    Reload(#[from] super::certs::CertError),
}

/// PEM text for the HTTPS server.
pub struct ServerIdentity {
    /// Server certificate followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// What it takes to re-issue the server certificate while the daemon runs.
    pub renewal: Renewal,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ServerMeta {
    names: Vec<String>,
    not_after_unix: i64,
    /// SHA-256 of the CA certificate (PEM) that issued it.
    ca_sha256: String,
}

/// Whether a server certificate valid until `not_after` must be re-issued at `now`.
pub fn renewal_due(not_after: OffsetDateTime, now: OffsetDateTime) -> bool {
    now + Duration::days(RENEW_BEFORE_DAYS) >= not_after
}

/// The names a server certificate carries: DNS names and IP addresses, each once.
#[derive(Debug, Clone, PartialEq)]
struct BoxNames {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl BoxNames {
    /// A "DNS name" that is an IP literal (a configured `hostname = "192.168.1.20"`) becomes
    /// an address; one that no TLS client would accept is left out, with a warning.
    fn new(dns_names: &[String], ips: &[IpAddr]) -> BoxNames {
        let mut names = BoxNames {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        for name in dns_names {
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                names.add_ip(ip);
            } else if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
                tracing::warn!("`{name}` is not a valid DNS name; Hearth's certificate omits it");
            } else if !names.dns.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                names.dns.push(name.clone());
            }
        }
        for &ip in ips {
            names.add_ip(ip);
        }
        names
    }

    fn add_ip(&mut self, ip: IpAddr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    /// Every name as text, for `server.json`.
    fn all(&self) -> Vec<String> {
        let ips = self.ips.iter().map(|ip| ip.to_string());
        self.dns.iter().cloned().chain(ips).collect()
    }

    /// The name constraints of a CA for these names: the DNS names (each with its
    /// subdomains), [`LOCAL_RANGES`], and any of the addresses outside them, exactly.
    fn constraints(&self) -> NameConstraints {
        let mut permitted = Vec::new();
        for name in &self.dns {
            permitted.push(GeneralSubtree::DnsName(name.clone()));
        }
        for (base, prefix) in LOCAL_RANGES {
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                base, prefix,
            )));
        }
        for &ip in self.ips.iter().filter(|ip| !is_local(**ip)) {
            let exact = if ip.is_ipv4() { 32 } else { 128 };
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                ip, exact,
            )));
        }
        NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        }
    }
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let mode = if secret { 0o600 } else { 0o644 };
    crate::durable::write(path, text.as_bytes(), mode).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Load or make the CA and a server certificate covering `dns_names` and `ips`.
///
/// The CA is replaced when it has no name constraints (made by an older Hearth) or when they
/// no longer cover these names (the hostname changed); the server certificate is re-issued
/// when its names or its CA changed, or when it is due for renewal at `now`.
pub fn ensure_identity(
    state_dir: &Path,
    dns_names: &[String],
    ips: &[IpAddr],
    now: OffsetDateTime,
) -> Result<ServerIdentity, TlsError> {
    let dir = state_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Io {
        path: dir.clone(),
        source,
    })?;
    let names = BoxNames::new(dns_names, ips);
    let (ca_pem, ca_key_pem) = ensure_ca(&dir, &names, now)?;
    let ca_sha256 = sha256_hex(&ca_pem);
    let renewal = |not_after| Renewal {
        state_dir: state_dir.to_path_buf(),
        dns_names: dns_names.to_vec(),
        ips: ips.to_vec(),
        not_after,
    };

    let meta_path = dir.join("server.json");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    let meta: Option<ServerMeta> = read(&meta_path)?.and_then(|t| serde_json::from_str(&t).ok());
    let current = meta.and_then(|m| {
        let not_after = OffsetDateTime::from_unix_timestamp(m.not_after_unix).ok()?;
        let fresh =
            m.names == names.all() && m.ca_sha256 == ca_sha256 && !renewal_due(not_after, now);
        fresh.then_some(not_after)
    });
    if let Some(not_after) = current {
        if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
            return Ok(ServerIdentity {
                chain_pem: format!("{cert}{ca_pem}"),
                key_pem: key,
                ca_pem,
                renewal: renewal(not_after),
            });
        }
    }

    let (cert_pem, key_pem, not_after) = issue_server(&dir, &names, &ca_key_pem, now)?;
    write(&key_path, &key_pem, true)?;
    write(&cert_path, &cert_pem, false)?;
    let meta = ServerMeta {
        names: names.all(),
        not_after_unix: not_after.unix_timestamp(),
        ca_sha256,
    };
    let meta_text = serde_json::to_string(&meta).map_err(|e| TlsError::Damaged {
        path: meta_path.clone(),
        message: e.to_string(),
    })?;
    write(&meta_path, &meta_text, false)?;
    Ok(ServerIdentity {
        chain_pem: format!("{cert_pem}{ca_pem}"),
        key_pem,
        ca_pem,
        renewal: renewal(not_after),
    })
}

/// A new server certificate for `names`, signed by the CA: (certificate, key, not after).
fn issue_server(
    dir: &Path,
    names: &BoxNames,
    ca_key_pem: &str,
    now: OffsetDateTime,
) -> Result<(String, String, OffsetDateTime), TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::Damaged {
        path: dir.join("ca.key"),
        message: e.to_string(),
    })?;
    // The issuer needs only the CA's name and key; both are ours and fixed.
    let issuer = Issuer::new(ca_subject()?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in &names.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    params
        .subject_alt_names
        .extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(
        DnType::CommonName,
        names.dns.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::days(1);
    let not_after = now + Duration::days(SERVER_DAYS);
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// The CA's certificate and key (PEM): the existing ones if the CA vouches for `names` and for
/// nothing beyond the box, else new ones.
fn ensure_ca(
    dir: &Path,
    names: &BoxNames,
    now: OffsetDateTime,
) -> Result<(String, String), TlsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
        let permitted = Permitted::of_ca(&cert).map_err(|message| TlsError::Damaged {
            path: cert_path.clone(),
            message,
        })?;
        let why = match permitted {
            None => "vouched for every website (it was made by an older Hearth)".to_string(),
            Some(permitted) => match permitted.first_outside(names) {
                None => return Ok((cert, key)),
                Some(name) => format!("did not vouch for `{name}` (a new hostname or address?)"),
            },
        };
        tracing::info!(
            "Hearth's certificate authority {why}; it is replaced by a new one that vouches \
             only for this box. Phones that installed the old one need to install the new \
             one, from /hearth-ca.pem on the box's HTTPS port"
        );
    }
    let mut params = ca_subject()?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(names.constraints());
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(CA_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA's name, all an issuer needs besides its key.
fn ca_subject() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Hearth home call box");
    Ok(params)
}

/// An address range as address and mask bytes (4 or 16 of each).
#[derive(Debug, Clone, PartialEq)]
struct Subnet {
    base: Vec<u8>,
    mask: Vec<u8>,
}

impl From<CidrSubnet> for Subnet {
    fn from(subnet: CidrSubnet) -> Subnet {
        match subnet {
            CidrSubnet::V4(base, mask) => Subnet {
                base: base.to_vec(),
                mask: mask.to_vec(),
            },
            CidrSubnet::V6(base, mask) => Subnet {
                base: base.to_vec(),
                mask: mask.to_vec(),
            },
        }
    }
}

impl Subnet {
    fn contains(&self, ip: IpAddr) -> bool {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        octets.len() == self.base.len()
            && octets
                .iter()
                .zip(&self.base)
                .zip(&self.mask)
                .all(|((a, b), m)| a & m == b & m)
    }
}

/// The permitted subtrees of an existing CA's name constraints, as far as Hearth uses them.
#[derive(Debug)]
struct Permitted {
    dns: Vec<String>,
    ips: Vec<Subnet>,
}

impl Permitted {
    /// `None` when the CA does not confine both DNS names and addresses (an older Hearth's CA
    /// has no name constraints at all), or when it excludes anything (not one of ours).
    fn of_ca(ca_pem: &str) -> Result<Option<Permitted>, String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        use x509_cert::der::Decode;
        use x509_cert::ext::pkix::name::GeneralName;
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| e.to_string())?;
        let Some((_, constraints)) = cert
            .tbs_certificate()
            .get_extension::<x509_cert::ext::pkix::NameConstraints>()
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        if constraints.excluded_subtrees.is_some() {
            return Ok(None);
        }
        let mut permitted = Permitted {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        for subtree in constraints.permitted_subtrees.unwrap_or_default() {
            match subtree.base {
                GeneralName::DnsName(name) => permitted.dns.push(name.to_string()),
                GeneralName::IpAddress(bytes) => {
                    let bytes = bytes.as_bytes();
                    let (base, mask) = bytes.split_at(bytes.len() / 2);
                    permitted.ips.push(Subnet {
                        base: base.to_vec(),
                        mask: mask.to_vec(),
                    });
                }
                _ => {}
            }
        }
        Ok((!permitted.dns.is_empty() && !permitted.ips.is_empty()).then_some(permitted))
    }

    /// The first of `names` these subtrees do not permit (RFC 5280 matching: a DNS
    /// constraint permits the name itself and its subdomains).
    fn first_outside(&self, names: &BoxNames) -> Option<String> {
        let dns_ok = |name: &str| {
            let name = name.to_ascii_lowercase();
            self.dns.iter().any(|c| {
                let c = c.to_ascii_lowercase();
                match c.strip_prefix('.') {
                    Some(_) => name.ends_with(&c),
                    None => name == c || name.ends_with(&format!(".{c}")),
                }
            })
        };
        let missing_dns = names.dns.iter().find(|n| !dns_ok(n)).cloned();
        let missing_ip = || {
            names
                .ips
                .iter()
                .find(|ip| !self.ips.iter().any(|s| s.contains(**ip)))
                .map(|ip| ip.to_string())
        };
        missing_dns.or_else(missing_ip)
    }
}

/// Re-issues the server certificate before it expires, while the daemon runs, and hands it
/// to the HTTPS server: phones never meet an expired certificate on a box that is never
/// restarted.
pub struct Renewal {
    state_dir: PathBuf,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    not_after: OffsetDateTime,
}

impl Renewal {
    /// When the server certificate in use ends.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// If the certificate is due at `now`, re-issue it and load it into `tls`. True when it
    /// did.
    pub async fn renew_if_due(
        &mut self,
        certs: &super::certs::ServerCerts,
        now: OffsetDateTime,
    ) -> Result<bool, TlsError> {
        if !renewal_due(self.not_after, now) {
            return Ok(false);
        }
        let identity = ensure_identity(&self.state_dir, &self.dns_names, &self.ips, now)?;
        certs.set_own(super::certs::certified_key(
            &identity.chain_pem,
            &identity.key_pem,
        )?);
        self.not_after = identity.renewal.not_after;
        Ok(true)
    }

    /// Check twice a day, for ever (spawn it).
    pub async fn keep_renewed(mut self, certs: std::sync::Arc<super::certs::ServerCerts>) {
        let start = tokio::time::Instant::now() + RENEWAL_CHECK;
        let mut checks = tokio::time::interval_at(start, RENEWAL_CHECK);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            match self.renew_if_due(&certs, OffsetDateTime::now_utc()).await {
                Ok(true) => tracing::info!(
                    "renewed Hearth's server certificate; the new one is valid until {}",
                    self.not_after.date()
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot renew Hearth's server certificate: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn box_names(host: &str) -> Vec<String> {
        vec![
            host.to_string(),
            format!("{host}.local"),
            "localhost".into(),
        ]
    }

    fn loopback() -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]
    }

    #[test]
    fn made_once_then_reused_and_reissued_when_names_change() {
        let dir = temp_dir("reuse");
        let now = OffsetDateTime::now_utc();
        let names = vec!["hearth".to_string(), "hearth.local".to_string()];
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let first = ensure_identity(&dir, &names, &ips, now).unwrap();
        let again = ensure_identity(&dir, &names, &ips, now).unwrap();
        assert_eq!(first.chain_pem, again.chain_pem);
        let more: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let third = ensure_identity(&dir, &names, &more, now).unwrap();
        assert_ne!(first.chain_pem, third.chain_pem);
        assert_eq!(
            first.ca_pem, third.ca_pem,
            "the CA outlives server certificates"
        );
        let mode = std::fs::metadata(dir.join("tls/ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Near expiry, a new one is made.
        let later = now + Duration::days(SERVER_DAYS - 10);
        let renewed = ensure_identity(&dir, &names, &more, later).unwrap();
        assert_ne!(renewed.chain_pem, third.chain_pem);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The name constraints as an independent parser (x509-parser) reads them.
    fn parsed_constraints(ca_pem: &str) -> (bool, Vec<String>) {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let extension = cert
            .extensions()
            .iter()
            .find(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)))
            .expect("the CA has a name constraints extension");
        let ParsedExtension::NameConstraints(constraints) = extension.parsed_extension() else {
            unreachable!()
        };
        assert!(constraints.excluded_subtrees.is_none());
        let permitted = constraints
            .permitted_subtrees
            .as_ref()
            .unwrap()
            .iter()
            .map(|subtree| match &subtree.base {
                GeneralName::DNSName(name) => format!("dns {name}"),
                GeneralName::IPAddress(bytes) => {
                    let (base, mask) = bytes.split_at(bytes.len() / 2);
                    let prefix: u32 = mask.iter().map(|b| b.count_ones()).sum();
                    let base: IpAddr = match base.len() {
                        4 => <[u8; 4]>::try_from(base).unwrap().into(),
                        _ => <[u8; 16]>::try_from(base).unwrap().into(),
                    };
                    format!("ip {base}/{prefix}")
                }
                other => panic!("unexpected subtree {other:?}"),
            })
            .collect();
        (extension.critical, permitted)
    }

    const LOCAL: [&str; 8] = [
        "ip 127.0.0.0/8",
        "ip 10.0.0.0/8",
        "ip 172.16.0.0/12",
        "ip 192.168.0.0/16",
        "ip 169.254.0.0/16",
        "ip ::1/128",
        "ip fc00::/7",
        "ip fe80::/10",
    ];

    #[test]
    fn the_ca_is_constrained_to_the_box_names_and_local_ranges() {
        let dir = temp_dir("constraints");
        let now = OffsetDateTime::now_utc();
        let mut ips = loopback();
        ips.push("192.168.1.20".parse().unwrap());
        ips.push("fe80::1".parse().unwrap());
        let identity = ensure_identity(&dir, &box_names("kitchen"), &ips, now).unwrap();
        let (critical, permitted) = parsed_constraints(&identity.ca_pem);
        assert!(critical, "name constraints must be critical");
        let mut expected = vec![
            "dns kitchen".to_string(),
            "dns kitchen.local".into(),
            "dns localhost".into(),
        ];
        expected.extend(LOCAL.iter().map(|s| s.to_string()));
        assert_eq!(permitted, expected);

        // A public address the join links use (here: a configured IP-literal hostname) is
        // permitted exactly, and the CA is replaced to cover it.
        let mut names = box_names("kitchen");
        names.push("203.0.113.7".into());
        let public = ensure_identity(&dir, &names, &ips, now).unwrap();
        assert_ne!(public.ca_pem, identity.ca_pem);
        let (_, permitted) = parsed_constraints(&public.ca_pem);
        assert_eq!(permitted.last().unwrap(), "ip 203.0.113.7/32");
        assert_eq!(permitted.len(), expected.len() + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unconstrained_ca_is_replaced_and_so_is_the_server_certificate() {
        let dir = temp_dir("old-ca");
        let now = OffsetDateTime::now_utc();
        // What an older Hearth made: a CA without name constraints.
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        let mut old = ca_subject().unwrap();
        old.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let old_key = KeyPair::generate().unwrap();
        let old_ca = old.self_signed(&old_key).unwrap().pem();
        write(&dir.join("tls/ca.pem"), &old_ca, false).unwrap();
        write(&dir.join("tls/ca.key"), &old_key.serialize_pem(), true).unwrap();
        assert!(Permitted::of_ca(&old_ca).unwrap().is_none());
        std::fs::write(
            dir.join("tls/server.json"),
            r#"{"names":["hearth"],"not_after_unix":99999999999}"#,
        )
        .unwrap();

        let names = box_names("hearth");
        let identity = ensure_identity(&dir, &names, &loopback(), now).unwrap();
        assert_ne!(identity.ca_pem, old_ca);
        assert_eq!(
            std::fs::read_to_string(dir.join("tls/ca.pem")).unwrap(),
            identity.ca_pem
        );
        assert!(parsed_constraints(&identity.ca_pem).0);
        assert!(identity.chain_pem.ends_with(&identity.ca_pem));
        handshake(&identity, "hearth").unwrap();

        // Kept from then on; a new hostname outside the constraints gets a new CA.
        let again = ensure_identity(&dir, &names, &loopback(), now).unwrap();
        assert_eq!(again.ca_pem, identity.ca_pem);
        assert_eq!(again.chain_pem, identity.chain_pem);
        let renamed = ensure_identity(&dir, &box_names("kitchen"), &loopback(), now).unwrap();
        assert_ne!(renamed.ca_pem, identity.ca_pem);
        handshake(&renamed, "kitchen.local").unwrap();
        // Names the CA already covers (a subdomain, a new private address) keep it.
        let mut ips = loopback();
        ips.push("10.1.2.3".parse().unwrap());
        let mut names = box_names("kitchen");
        names.push("tv.kitchen".into());
        let covered = ensure_identity(&dir, &names, &ips, now).unwrap();
        assert_eq!(covered.ca_pem, renamed.ca_pem);
        assert_ne!(covered.chain_pem, renamed.chain_pem);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renewal_is_due_thirty_days_before_the_end() {
        let end = OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        assert!(!renewal_due(end, end - Duration::days(300)));
        assert!(!renewal_due(
            end,
            end - Duration::days(RENEW_BEFORE_DAYS) - Duration::seconds(1)
        ));
        assert!(renewal_due(end, end - Duration::days(RENEW_BEFORE_DAYS)));
        assert!(renewal_due(end, end - Duration::days(1)));
        assert!(renewal_due(end, end + Duration::days(400)));
    }

    #[tokio::test]
    async fn the_running_server_gets_a_renewed_certificate() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = temp_dir("renewal");
        let start = OffsetDateTime::now_utc();
        let names = box_names("hearth");
        let identity = ensure_identity(&dir, &names, &loopback(), start).unwrap();
        let tls = crate::web::certs::ServerCerts::new(
            crate::web::certs::certified_key(&identity.chain_pem, &identity.key_pem).unwrap(),
        );
        let mut renewal = identity.renewal;
        let first_end = renewal.not_after();
        let served = tls.own();

        // A day later (a fake clock): not due, nothing changes.
        let tomorrow = start + Duration::days(1);
        assert!(!renewal.renew_if_due(&tls, tomorrow).await.unwrap());
        assert!(Arc::ptr_eq(&served, &tls.own()));

        // Within RENEW_BEFORE_DAYS of the end: re-issued and loaded, the CA kept.
        let due = first_end - Duration::days(RENEW_BEFORE_DAYS - 1);
        assert!(renewal.renew_if_due(&tls, due).await.unwrap());
        assert!(!Arc::ptr_eq(&served, &tls.own()));
        assert_eq!(renewal.not_after(), due + Duration::days(SERVER_DAYS));
        let on_disk = ensure_identity(&dir, &names, &loopback(), due).unwrap();
        assert_eq!(on_disk.ca_pem, identity.ca_pem);
        assert!(!renewal.renew_if_due(&tls, due).await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A TLS handshake in memory between a rustls client that trusts only the CA (as a phone
    /// that installed it) and a server with the chain, for `server_name`.
    fn tls_handshake(
        chain_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        server_name: &str,
    ) -> Result<(), rustls::Error> {
        let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        panic!("the handshake did not finish");
    }

    fn handshake(identity: &ServerIdentity, server_name: &str) -> Result<(), rustls::Error> {
        tls_handshake(
            &identity.chain_pem,
            &identity.key_pem,
            &identity.ca_pem,
            server_name,
        )
    }

    #[test]
    fn a_tls_client_trusting_only_the_ca_accepts_the_box_and_nothing_else() {
        let dir = temp_dir("handshake");
        let now = OffsetDateTime::now_utc();
        let mut ips = loopback();
        ips.push("192.168.1.20".parse().unwrap());
        ips.push("fd00::20".parse().unwrap());
        let names = box_names("hearth");
        let identity = ensure_identity(&dir, &names, &ips, now).unwrap();
        // webpki enforces name constraints: every name of the box passes them.
        for name in [
            "127.0.0.1",
            "::1",
            "192.168.1.20",
            "fd00::20",
            "hearth",
            "hearth.local",
            "localhost",
        ] {
            handshake(&identity, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }

        // With the CA's key (a stolen box), a certificate for a website is still refused by
        // a phone that installed the CA.
        let ca_key = KeyPair::from_pem(&read(&dir.join("tls/ca.key")).unwrap().unwrap()).unwrap();
        let issuer = Issuer::new(ca_subject().unwrap(), ca_key);
        let forged = |name: &str| {
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (
                format!("{}{}", cert.pem(), identity.ca_pem),
                key.serialize_pem(),
            )
        };
        for name in ["bank.example", "8.8.8.8", "2001:db8::1"] {
            let (chain, key) = forged(name);
            let error = tls_handshake(&chain, &key, &identity.ca_pem, name).unwrap_err();
            assert!(
                format!("{error:?}").contains("NameConstraintViolation"),
                "{name}: {error:?}"
            );
        }
        // The same forgery under an unconstrained CA would have passed.
        let mut open = ca_subject().unwrap();
        open.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let open_key = KeyPair::generate().unwrap();
        let open_ca = open.self_signed(&open_key).unwrap().pem();
        let open_issuer = Issuer::new(ca_subject().unwrap(), open_key);
        let mut params = CertificateParams::new(vec!["bank.example".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &open_issuer).unwrap();
        let chain = format!("{}{open_ca}", cert.pem());
        tls_handshake(&chain, &key.serialize_pem(), &open_ca, "bank.example").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_normalised_and_matched_like_rfc_5280() {
        let names = BoxNames::new(
            &[
                "Hearth".into(),
                "hearth".into(),
                "192.168.1.20".into(),
                "[::1]".into(),
                "bad name".into(),
            ],
            &["192.168.1.20".parse().unwrap()],
        );
        assert_eq!(names.dns, vec!["Hearth".to_string()]);
        assert_eq!(
            names.ips,
            vec![
                "192.168.1.20".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        let permitted = Permitted {
            dns: vec!["hearth".into(), ".example".into()],
            ips: vec![Subnet::from(CidrSubnet::from_addr_prefix(
                "10.0.0.0".parse().unwrap(),
                8,
            ))],
        };
        let check = |dns: &[&str], ips: &[&str]| {
            let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
            let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
            permitted.first_outside(&BoxNames::new(&dns, &ips))
        };
        assert_eq!(
            check(&["HEARTH", "tv.hearth", "a.example"], &["10.9.9.9"]),
            None
        );
        assert_eq!(check(&["example"], &[]), Some("example".into()));
        assert_eq!(check(&["myhearth"], &[]), Some("myhearth".into()));
        assert_eq!(check(&[], &["11.0.0.1"]), Some("11.0.0.1".into()));
        assert_eq!(
            check(&[], &["::ffff:10.0.0.1"]),
            Some("::ffff:10.0.0.1".into())
        );
        assert!(is_local("172.31.255.255".parse().unwrap()));
        assert!(!is_local("172.32.0.1".parse().unwrap()));
        assert!(is_local("fd12::1".parse().unwrap()));
        assert!(!is_local("2001:db8::1".parse().unwrap()));
    }
}
