//! Hearth's own certificate authority and server certificate, made on first start and kept
//! in the state dir. Browsers expose no camera to `http://<LAN IP>`, so HTTPS is not optional;
//! the CA (served at `/hearth-ca.pem`) can be installed on a phone to silence the warning.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

const CA_DAYS: i64 = 3650;
/// Short enough for browsers' leaf-lifetime rules, re-issued well before it ends.
const SERVER_DAYS: i64 = 397;
const RENEW_BEFORE_DAYS: i64 = 30;

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
}

/// PEM text for the HTTPS server.
pub struct ServerIdentity {
    /// Server certificate followed by the CA certificate.
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ServerMeta {
    names: Vec<String>,
    not_after_unix: i64,
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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// Load or make the CA and a server certificate covering `dns_names` and `ips`.
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
    let (ca_pem, ca_key_pem) = ensure_ca(&dir, now)?;

    let mut names: Vec<String> = dns_names.to_vec();
    names.extend(ips.iter().map(|ip| ip.to_string()));
    let meta_path = dir.join("server.json");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    let meta: Option<ServerMeta> = read(&meta_path)?.and_then(|t| serde_json::from_str(&t).ok());
    let fresh = meta.is_some_and(|m| {
        m.names == names
            && m.not_after_unix > (now + Duration::days(RENEW_BEFORE_DAYS)).unix_timestamp()
    });
    if fresh {
        if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
            return Ok(ServerIdentity {
                chain_pem: format!("{cert}{ca_pem}"),
                key_pem: key,
                ca_pem,
            });
        }
    }

    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Damaged {
        path: dir.join("ca.key"),
        message: e.to_string(),
    })?;
    // The issuer needs only the CA's name and key; both are ours and fixed.
    let issuer = Issuer::new(ca_params(now)?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::days(1);
    let not_after = now + Duration::days(SERVER_DAYS);
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    let meta = ServerMeta {
        names,
        not_after_unix: not_after.unix_timestamp(),
    };
    let meta_text = serde_json::to_string(&meta).map_err(|e| TlsError::Damaged {
        path: meta_path.clone(),
        message: e.to_string(),
    })?;
    write(&meta_path, &meta_text, false)?;
    Ok(ServerIdentity {
        chain_pem: format!("{}{ca_pem}", cert.pem()),
        key_pem: key.serialize_pem(),
        ca_pem,
    })
}

fn ensure_ca(dir: &Path, now: OffsetDateTime) -> Result<(String, String), TlsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
        return Ok((cert, key));
    }
    let params = ca_params(now)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(now: OffsetDateTime) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Hearth home call box");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(CA_DAYS);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused_and_reissued_when_names_change() {
        let dir = std::env::temp_dir().join(format!("hearth-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
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
}
