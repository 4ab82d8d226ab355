//! Join links: capability tokens with 128 random bits, stored only as SHA-256 hashes, with a
//! name, an expiry and revocation. Pure (token + now → verdict); the daemon keeps the file
//! (`daemon::state_file`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const TOKEN_BYTES: usize = 16; // 128 bits

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("no invite with id {0}")]
    UnknownId(String),
}

/// Why a token does not open the call. The text is what the join page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("This invite link is not valid. Ask the family for a new one.")]
    Unknown,
    #[error("This invite link has expired. Ask the family for a new one.")]
    Expired,
    #[error("This invite link was withdrawn. Ask the family for a new one.")]
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// Short public id for listing and revoking; not the token.
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the token. The token itself is never stored.
    pub token_sha256: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub expires: u64,
    pub last_used: Option<u64>,
    pub revoked: bool,
    /// How many devices may be in the call with this link at once; None: the call's
    /// default (`call.sessions_per_invite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Knock first: whoever comes with this link waits until someone at home lets them in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub knock: bool,
}

/// Every invite, as kept in `invites.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteStore {
    invites: Vec<Invite>,
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A capability secret: 128 random bits, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How secrets are kept and compared: as the hex of their SHA-256, so comparing takes the
/// same time however much of a guess is right.
pub(crate) fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl InviteStore {
    /// Make a new invite. Returns the record and the token, which exists only in the link.
    pub fn create(&mut self, name: &str, ttl: Duration, now: SystemTime) -> (Invite, String) {
        self.create_limited(name, ttl, now, None)
    }

    /// `create`, with its own limit of devices at once.
    pub fn create_limited(
        &mut self,
        name: &str,
        ttl: Duration,
        now: SystemTime,
        max_sessions: Option<u32>,
    ) -> (Invite, String) {
        let token = new_secret();
        let mut id_bytes = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let created = unix_seconds(now);
        let invite = Invite {
            id: id_bytes.iter().map(|b| format!("{b:02x}")).collect(),
            name: crate::call::protocol::clean_name(name),
            token_sha256: hash(&token),
            created,
            expires: created.saturating_add(ttl.as_secs()),
            last_used: None,
            revoked: false,
            max_sessions,
            knock: false,
        };
        self.invites.push(invite.clone());
        (invite, token)
    }

    /// Check a presented token. On success records the use.
    pub fn check(&mut self, token: &str, now: SystemTime) -> Result<&Invite, Refusal> {
        let digest = hash(token);
        let now = unix_seconds(now);
        let invite = self
            .invites
            .iter_mut()
            .find(|i| i.token_sha256 == digest)
            .ok_or(Refusal::Unknown)?;
        if invite.revoked {
            return Err(Refusal::Revoked);
        }
        if now >= invite.expires {
            return Err(Refusal::Expired);
        }
        invite.last_used = Some(now);
        Ok(invite)
    }

    /// Make an invite knock-first (or not).
    pub fn set_knock(&mut self, id: &str, knock: bool) -> Result<(), InviteError> {
        let invite = self
            .invites
            .iter_mut()
            .find(|i| i.id == id)
            .ok_or_else(|| InviteError::UnknownId(id.to_string()))?;
        invite.knock = knock;
        Ok(())
    }

    pub fn revoke(&mut self, id: &str) -> Result<(), InviteError> {
        let invite = self
            .invites
            .iter_mut()
            .find(|i| i.id == id)
            .ok_or_else(|| InviteError::UnknownId(id.to_string()))?;
        invite.revoked = true;
        Ok(())
    }

    pub fn list(&self) -> &[Invite] {
        &self.invites
    }

    /// Forget invites that expired more than a week ago, so the file stays small.
    pub fn prune(&mut self, now: SystemTime) {
        let horizon = unix_seconds(now).saturating_sub(7 * 24 * 3600);
        self.invites.retain(|i| i.expires > horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn tokens_carry_128_bits_and_are_not_stored() {
        let mut store = InviteStore::default();
        let (invite, token) = store.create("Gran", DAY, SystemTime::now());
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 16);
        let (_, other) = store.create("Gran", DAY, SystemTime::now());
        assert_ne!(token, other);
        let text = serde_json::to_string(&store).unwrap();
        assert!(!text.contains(&token));
        assert_eq!(invite.token_sha256, hash(&token));
    }

    #[test]
    fn valid_expired_revoked_and_unknown() {
        let start = SystemTime::now();
        let mut store = InviteStore::default();
        let (invite, token) = store.create("Gran", DAY, start);
        assert_eq!(store.check(&token, start).unwrap().name, "Gran");
        assert_eq!(store.list()[0].last_used, Some(unix_seconds(start)));
        assert_eq!(
            store.check(&token, start + DAY).unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(
            store.check("AAAAAAAAAAAAAAAAAAAAAA", start).unwrap_err(),
            Refusal::Unknown
        );
        store.revoke(&invite.id).unwrap();
        assert_eq!(store.check(&token, start).unwrap_err(), Refusal::Revoked);
        assert!(store.revoke("nope").is_err());
    }
}
