//! Join links: capability tokens with 128 random bits, stored only as SHA-256 hashes, with a
//! name, an expiry and revocation. The check is pure (token + now → verdict); saving to the
//! state dir is `InviteStore::save`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const TOKEN_BYTES: usize = 16; // 128 bits
const FILE_NAME: &str = "invites.json";

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
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
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteStore {
    invites: Vec<Invite>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl InviteStore {
    /// Load the store from the state dir; a missing file is an empty store.
    pub fn load(state_dir: &Path) -> Result<Self, InviteError> {
        let path = state_dir.join(FILE_NAME);
        let mut store = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<InviteStore>(&text).map_err(|source| InviteError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => InviteStore::default(),
            Err(source) => return Err(InviteError::Read { path, source }),
        };
        store.path = Some(path);
        Ok(store)
    }

    /// Write atomically (temp file + rename) with mode 0600: hashes are still secrets' kin.
    pub fn save(&self) -> Result<(), InviteError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("json.tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| InviteError::Write {
            path: path.clone(),
            source,
        })
    }

    /// Make a new invite. Returns the record and the token, which exists only in the link.
    pub fn create(&mut self, name: &str, ttl: Duration, now: SystemTime) -> (Invite, String) {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
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

    #[test]
    fn survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("hearth-invite-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = InviteStore::load(&dir).unwrap();
        let (_, token) = store.create("Gran", DAY, SystemTime::now());
        store.save().unwrap();
        let mut again = InviteStore::load(&dir).unwrap();
        assert!(again.check(&token, SystemTime::now()).is_ok());
        std::fs::write(dir.join(FILE_NAME), "{broken").unwrap();
        assert!(matches!(
            InviteStore::load(&dir),
            Err(InviteError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
