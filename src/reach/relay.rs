//! A relay for strict networks: a TURN server the owner runs or chose (coturn with
//! `use-auth-secret`). Phones behind networks that block UDP reach the box through it; the
//! box itself never talks to it. Each phone gets its own short-lived credentials in its
//! `welcome` (coturn's REST API scheme: the user name is the expiry time and the
//! participant, the password an HMAC-SHA1 of it under the shared secret); the secret never
//! leaves the box.

use std::time::{Duration, SystemTime};

use base64::Engine;

pub use crate::call::protocol::IceServer;

/// The owner's TURN server.
#[derive(Clone)]
pub struct Relay {
    urls: Vec<String>,
    secret: String,
    lifetime: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, whoever prints this.
        f.debug_struct("Relay")
            .field("urls", &self.urls)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// None when no relay is configured.
    pub fn new(urls: &[String], secret: &str, lifetime: Duration) -> Option<Relay> {
        (!urls.is_empty()).then(|| Relay {
            urls: urls.to_vec(),
            secret: secret.to_string(),
            lifetime,
        })
    }

    /// Credentials for `participant`, valid from `now` for the configured lifetime.
    pub fn ice_server(&self, participant: &str, now: SystemTime) -> IceServer {
        let expires = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.lifetime)
            .as_secs();
        let username = format!("{expires}:{participant}");
        let mac = hmac_sha1(self.secret.as_bytes(), username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            username,
            credential: base64::engine::general_purpose::STANDARD.encode(mac),
        }
    }
}

/// HMAC (RFC 2104) over SHA-1, as coturn checks it.
fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        assert_eq!(
            hex(&hmac_sha1(&[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(&hmac_sha1(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn each_phone_gets_its_own_expiring_credentials_and_never_the_secret() {
        let urls = vec!["turns:turn.example.org:443?transport=tcp".to_string()];
        let relay = Relay::new(&urls, "s3cret", Duration::from_secs(3600)).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let server = relay.ice_server("p3", now);
        assert_eq!(server.urls, urls);
        assert_eq!(server.username, "1800003600:p3");
        let expected = base64::engine::general_purpose::STANDARD
            .encode(hmac_sha1(b"s3cret", b"1800003600:p3"));
        assert_eq!(server.credential, expected);
        assert_ne!(relay.ice_server("p4", now).credential, server.credential);
        assert!(!format!("{relay:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&server).unwrap().contains("s3cret"));
        assert!(Relay::new(&[], "s3cret", Duration::from_secs(1)).is_none());
    }
}
