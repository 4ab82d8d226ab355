//! The box's owners: phones that run it (make and withdraw links, remove someone, read the
//! privacy log, rename the box). Becoming an owner needs a hand on the box: a switch
//! pattern opens a one-minute pairing window, whose token the TV shows as a QR code; the
//! phone that presents it gets a long-lived owner credential. Credentials are capabilities
//! like join links: 128 random bits, stored only as SHA-256 hashes, revocable. Pure: tokens
//! and the time in, verdicts out; the daemon keeps the file (`owners.json`).

use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::call::invite::unix_seconds;

/// How long the TV shows the owner QR code.
pub const PAIRING_WINDOW: Duration = Duration::from_secs(60);
const TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// Short public id for listing and revoking.
    pub id: String,
    /// What the owner called this phone ("Mum's phone").
    pub name: String,
    pub credential_sha256: String,
    pub created: u64,
    pub last_used: Option<u64>,
    pub revoked: bool,
}

/// Why an owner request is refused. The text is what the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OwnerRefusal {
    #[error("This phone is not an owner of the box.")]
    NotOwner,
    #[error("This phone's owner access was withdrawn.")]
    Revoked,
    #[error(
        "That owner code has expired or was used. Flip the switch on, off, on to show a new one."
    )]
    PairingClosed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerStore {
    owners: Vec<Owner>,
    /// The open pairing window: the token's hash and when it closes. Never written to disk.
    #[serde(skip)]
    pairing: Option<(String, Instant)>,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

impl OwnerStore {
    /// Open a pairing window (the switch pattern at the box). Returns the token for the TV's
    /// QR code; any earlier window closes.
    pub fn open_pairing(&mut self, now: Instant) -> String {
        let token = random_token();
        self.pairing = Some((hash(&token), now + PAIRING_WINDOW));
        token
    }

    /// When the open window closes, if one is open.
    pub fn pairing_until(&self) -> Option<Instant> {
        self.pairing.as_ref().map(|(_, until)| *until)
    }

    pub fn close_pairing(&mut self) {
        self.pairing = None;
    }

    /// Exchange the window's token for an owner credential. The token works once.
    pub fn pair(
        &mut self,
        token: &str,
        name: &str,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(Owner, String), OwnerRefusal> {
        match &self.pairing {
            Some((digest, until)) if *digest == hash(token) && now < *until => {}
            _ => return Err(OwnerRefusal::PairingClosed),
        }
        self.pairing = None;
        let credential = random_token();
        let mut id = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let owner = Owner {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            name: crate::call::protocol::clean_name(name),
            credential_sha256: hash(&credential),
            created: unix_seconds(wall),
            last_used: None,
            revoked: false,
        };
        self.owners.push(owner.clone());
        Ok((owner, credential))
    }

    /// Check a presented credential; records the use.
    pub fn check(&mut self, credential: &str, wall: SystemTime) -> Result<&Owner, OwnerRefusal> {
        let digest = hash(credential);
        let owner = self
            .owners
            .iter_mut()
            .find(|o| o.credential_sha256 == digest)
            .ok_or(OwnerRefusal::NotOwner)?;
        if owner.revoked {
            return Err(OwnerRefusal::Revoked);
        }
        owner.last_used = Some(unix_seconds(wall));
        Ok(owner)
    }

    pub fn revoke(&mut self, id: &str) -> bool {
        match self.owners.iter_mut().find(|o| o.id == id) {
            Some(owner) => {
                owner.revoked = true;
                true
            }
            None => false,
        }
    }

    pub fn list(&self) -> &[Owner] {
        &self.owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pairing_token_works_once_within_its_minute() {
        let t = Instant::now();
        let wall = SystemTime::now();
        let mut store = OwnerStore::default();
        assert_eq!(
            store.pair("anything", "Mum", t, wall).unwrap_err(),
            OwnerRefusal::PairingClosed,
            "no window, no owner"
        );
        let token = store.open_pairing(t);
        let late = t + PAIRING_WINDOW;
        assert_eq!(
            store.pair(&token, "Mum", late, wall).unwrap_err(),
            OwnerRefusal::PairingClosed
        );
        let token = store.open_pairing(t);
        let (owner, credential) = store.pair(&token, "Mum", t, wall).unwrap();
        assert_eq!(owner.name, "Mum");
        assert_eq!(
            store.pair(&token, "Eve", t, wall).unwrap_err(),
            OwnerRefusal::PairingClosed,
            "used once"
        );
        assert_eq!(store.check(&credential, wall).unwrap().id, owner.id);
        let saved = serde_json::to_string(&store).unwrap();
        assert!(!saved.contains(&credential) && !saved.contains(&token));
        assert!(store.revoke(&owner.id));
        assert_eq!(
            store.check(&credential, wall).unwrap_err(),
            OwnerRefusal::Revoked
        );
        assert_eq!(
            store.check("AAAAAAAAAAAAAAAAAAAAAA", wall).unwrap_err(),
            OwnerRefusal::NotOwner
        );
    }
}
