//! The dyndns2 update protocol most dynamic-DNS providers and routers speak:
//! `GET <url>?hostname=NAME&myip=ADDRESS` over HTTPS with basic authentication; the answer's
//! first word says what happened.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;

use super::DnsUpdateError;

/// What the provider's answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// `good` or `nochg`: the name points at the address.
    Updated,
    /// Worth trying again, not soon (`911`, `dnserr`, anything unknown).
    TryLater(String),
    /// Will not work until the owner changes something (`badauth`, `nohost`, `notfqdn`,
    /// `abuse`, `!donator`, `badagent`): tried again only after a long wait.
    Rejected(String),
}

pub fn interpret(body: &str) -> Answer {
    let first = body.split_whitespace().next().unwrap_or("");
    let shown: String = first
        .chars()
        .take(32)
        .filter(|c| c.is_ascii_graphic())
        .collect();
    match first {
        "good" | "nochg" => Answer::Updated,
        "badauth" | "nohost" | "notfqdn" | "abuse" | "!donator" | "badagent" | "numhost" => {
            Answer::Rejected(shown)
        }
        _ => Answer::TryLater(shown),
    }
}

/// `url?hostname=…&myip=…`, with the name and address (neither needs escaping: a host name
/// and an address are letters, digits, `-`, `.` and `:`).
pub fn update_url(url: &str, name: &str, address: IpAddr) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}hostname={name}&myip={address}")
}

/// Send the update; the answer's meaning.
pub async fn send(
    url: &str,
    username: &str,
    password: &str,
    name: &str,
    address: IpAddr,
    root: Option<&Path>,
) -> Result<Answer, DnsUpdateError> {
    use base64::Engine;
    let connector = https_connector(root)?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<axum::body::Bytes>>(connector);
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let request = axum::http::Request::get(update_url(url, name, address))
        .header("authorization", format!("Basic {credentials}"))
        .header("user-agent", concat!("Hearth/", env!("CARGO_PKG_VERSION")))
        .body(http_body_util::Empty::new())
        .map_err(|e| DnsUpdateError::Http(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| DnsUpdateError::Http(e.to_string()))?;
        let status = response.status();
        // An answer is a line; more is not read.
        let body = http_body_util::Limited::new(response.into_body(), 4096)
            .collect()
            .await
            .map_err(|e| DnsUpdateError::Http(e.to_string()))?
            .to_bytes();
        Ok::<_, DnsUpdateError>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| DnsUpdateError::Http("no answer within 20 s".into()))??;
    if status == axum::http::StatusCode::UNAUTHORIZED {
        return Ok(Answer::Rejected("badauth".into()));
    }
    if !status.is_success() {
        return Ok(Answer::TryLater(format!("HTTP {}", status.as_u16())));
    }
    Ok(interpret(&String::from_utf8_lossy(&body)))
}

fn https_connector(
    root: Option<&Path>,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    DnsUpdateError,
> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match root {
        Some(root) => {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(root)
                .map_err(|e| DnsUpdateError::Http(format!("{}: {e}", root.display())))?
            {
                let cert = cert.map_err(|e| DnsUpdateError::Http(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| DnsUpdateError::Http(e.to_string()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| DnsUpdateError::Http(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| DnsUpdateError::Http(format!("the system's roots: {e}")))?,
    };
    Ok(builder.https_only().enable_http1().build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(interpret("good 203.0.114.2\n"), Answer::Updated);
        assert_eq!(interpret("nochg 203.0.114.2"), Answer::Updated);
        assert_eq!(interpret("badauth"), Answer::Rejected("badauth".into()));
        assert_eq!(interpret("911"), Answer::TryLater("911".into()));
        assert_eq!(interpret(""), Answer::TryLater("".into()));
        assert_eq!(
            interpret("\u{1b}[31mgood"),
            Answer::TryLater("[31mgood".into())
        );
    }

    #[test]
    fn the_url_carries_name_and_address() {
        assert_eq!(
            update_url(
                "https://dyn.test/nic/update",
                "box.home.test",
                "203.0.114.2".parse().unwrap()
            ),
            "https://dyn.test/nic/update?hostname=box.home.test&myip=203.0.114.2"
        );
        assert_eq!(
            update_url(
                "https://dyn.test/u?system=dyndns",
                "b.test",
                "2001:db8::1".parse().unwrap()
            ),
            "https://dyn.test/u?system=dyndns&hostname=b.test&myip=2001:db8::1"
        );
    }
}
