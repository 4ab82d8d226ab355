//! Which certificate the HTTPS server presents, chosen per connection: the ACME CA's for the
//! owner's domain name once it has been issued, the one-off certificate answering an ACME
//! TLS-ALPN-01 check (RFC 8737) while one runs, and Hearth's own for everything else (the
//! box's local names and addresses). Each is swapped in place, so renewals never restart the
//! server and connections already open keep theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol an ACME CA offers when it checks a TLS-ALPN-01 challenge.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the certificate chain is not PEM: {0}")]
    Chain(String),
    #[error("the private key is not PEM: {0}")]
    Key(String),
    #[error("the private key cannot sign: {0}")]
    Unusable(rustls::Error),
}

/// A chain and key, ready to present.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Chain("no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError::Key(e.to_string()))?;
    let signing =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(CertError::Unusable)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The certificates the server may present; shared by the server and whoever renews them.
pub struct ServerCerts {
    own: RwLock<Arc<CertifiedKey>>,
    /// The owner's domain name and the ACME CA's certificate for it.
    trusted: RwLock<Option<(String, Arc<CertifiedKey>)>>,
    /// TLS-ALPN-01 answers by domain name, only while a check runs.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCerts")
    }
}

impl ServerCerts {
    pub fn new(own: Arc<CertifiedKey>) -> Arc<ServerCerts> {
        Arc::new(ServerCerts {
            own: RwLock::new(own),
            trusted: RwLock::new(None),
            challenges: Mutex::new(HashMap::new()),
        })
    }

    /// Hearth's own certificate, renewed.
    pub fn set_own(&self, key: Arc<CertifiedKey>) {
        *self.own.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// Hearth's own certificate as presented now.
    pub fn own(&self) -> Arc<CertifiedKey> {
        self.own.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The certificate browsers trust for `name`, issued or renewed.
    pub fn set_trusted(&self, name: &str, key: Arc<CertifiedKey>) {
        *self.trusted.write().unwrap_or_else(|e| e.into_inner()) =
            Some((name.to_ascii_lowercase(), key));
    }

    /// Back to Hearth's own certificate for every name.
    pub fn clear_trusted(&self) {
        *self.trusted.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn add_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.lock_challenges()
            .insert(name.to_ascii_lowercase(), key);
    }

    pub fn remove_challenge(&self, name: &str) {
        self.lock_challenges().remove(&name.to_ascii_lowercase());
    }

    fn lock_challenges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.challenges.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to present to a client that named `server_name` and offered `alpn`.
    fn choose<'a>(
        &self,
        server_name: Option<&str>,
        mut alpn: impl Iterator<Item = &'a [u8]>,
    ) -> Option<Arc<CertifiedKey>> {
        let name = server_name.map(str::to_ascii_lowercase);
        if alpn.any(|p| p == ACME_TLS_ALPN) {
            // Only the challenge answer, never a real certificate, to an ACME check.
            return self.lock_challenges().get(name.as_deref()?).cloned();
        }
        let trusted = self.trusted.read().unwrap_or_else(|e| e.into_inner());
        if let (Some((trusted_name, key)), Some(name)) = (trusted.as_ref(), name.as_deref()) {
            if trusted_name == name {
                return Some(key.clone());
            }
        }
        Some(self.own.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let alpn: Vec<&[u8]> = hello.alpn().map(|a| a.collect()).unwrap_or_default();
        self.choose(hello.server_name(), alpn.into_iter())
    }
}

/// The HTTPS server's TLS settings: HTTP/2 and 1.1 for browsers, and `acme-tls/1` for
/// ACME checks (only ever offered by a CA; the connection then ends after the handshake).
pub fn server_config(certs: Arc<ServerCerts>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports TLS 1.2 and 1.3")
    .with_no_client_auth()
    .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        certified_key(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    fn same(a: &Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>) -> bool {
        a.as_ref().is_some_and(|a| Arc::ptr_eq(a, b))
    }

    #[test]
    fn each_client_gets_the_certificate_for_what_it_asked() {
        let own = self_signed("hearth.local");
        let certs = ServerCerts::new(own.clone());
        let http: [&[u8]; 2] = [b"h2", b"http/1.1"];
        // Before ACME: Hearth's own for every name.
        assert!(same(
            &certs.choose(Some("home.example.org"), http.into_iter()),
            &own
        ));
        assert!(same(&certs.choose(None, http.into_iter()), &own));

        let trusted = self_signed("home.example.org");
        certs.set_trusted("Home.Example.org", trusted.clone());
        assert!(same(
            &certs.choose(Some("home.example.ORG"), http.into_iter()),
            &trusted
        ));
        assert!(same(
            &certs.choose(Some("hearth.local"), http.into_iter()),
            &own
        ));
        assert!(same(&certs.choose(None, http.into_iter()), &own));

        // An ACME check gets the challenge answer or nothing: never a served certificate.
        let acme: [&[u8]; 1] = [ACME_TLS_ALPN];
        assert!(certs
            .choose(Some("home.example.org"), acme.into_iter())
            .is_none());
        let answer = self_signed("home.example.org");
        certs.add_challenge("home.example.org", answer.clone());
        assert!(same(
            &certs.choose(Some("home.example.org"), acme.into_iter()),
            &answer
        ));
        assert!(certs
            .choose(Some("other.example.org"), acme.into_iter())
            .is_none());
        assert!(same(
            &certs.choose(Some("home.example.org"), http.into_iter()),
            &trusted
        ));
        certs.remove_challenge("home.example.org");
        assert!(certs
            .choose(Some("home.example.org"), acme.into_iter())
            .is_none());

        let renewed = self_signed("hearth.local");
        certs.set_own(renewed.clone());
        assert!(same(
            &certs.choose(Some("hearth.local"), http.into_iter()),
            &renewed
        ));
    }

    #[test]
    fn bad_pem_is_an_error() {
        assert!(matches!(certified_key("", ""), Err(CertError::Chain(_))));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            certified_key(&cert.pem(), "not a key"),
            Err(CertError::Key(_))
        ));
    }
}
