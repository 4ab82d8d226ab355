//! `invites.json` in the state dir: read once at start; written by its own task whenever the
//! call says the invites changed, so the hub's loop never waits for the disk. Writes are
//! coalesced (only the newest copy matters) and atomic (temp file + rename, mode 0600).

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::call::invite::InviteStore;

const FILE_NAME: &str = "invites.json";

#[derive(Debug, thiserror::Error)]
pub enum InviteFileError {
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
}

/// The invites kept in `state_dir`; a missing file is none.
pub fn load(state_dir: &Path) -> Result<InviteStore, InviteFileError> {
    let path = state_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| InviteFileError::Parse {
            path: path.clone(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InviteStore::default()),
        Err(source) => Err(InviteFileError::Read { path, source }),
    }
}

/// Hands copies of the invites to the writer task; says which copy is on disk.
pub struct InviteWriter {
    latest: watch::Sender<(u64, InviteStore)>,
    written: watch::Receiver<u64>,
    version: u64,
}

impl InviteWriter {
    pub fn start(state_dir: &Path) -> InviteWriter {
        let (latest, mut to_write) = watch::channel((0, InviteStore::default()));
        let (written_tx, written) = watch::channel(0);
        let path = state_dir.join(FILE_NAME);
        tokio::spawn(async move {
            while to_write.changed().await.is_ok() {
                let (version, store) = to_write.borrow_and_update().clone();
                let path = path.clone();
                let saved = tokio::task::spawn_blocking(move || write_atomically(&path, &store))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                match saved {
                    Ok(()) => {
                        let _ = written_tx.send(version);
                    }
                    Err(e) => tracing::error!("cannot write {FILE_NAME}: {e}"),
                }
            }
        });
        InviteWriter {
            latest,
            written,
            version: 0,
        }
    }

    /// Queue this copy for writing; returns its version for `written`.
    pub fn save(&mut self, store: InviteStore) -> u64 {
        self.version += 1;
        let _ = self.latest.send((self.version, store));
        self.version
    }

    /// The version of the newest copy handed over.
    pub fn latest_version(&self) -> u64 {
        self.version
    }

    /// Resolves once `version` (or a newer copy) is on disk.
    pub fn written(&self, version: u64) -> impl std::future::Future<Output = bool> + Send {
        let mut written = self.written.clone();
        async move { written.wait_for(|w| *w >= version).await.is_ok() }
    }
}

fn write_atomically(path: &Path, store: &InviteStore) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600) // hashes of tokens: still not for other users' eyes
        .open(&tmp)?;
    let text = serde_json::to_string_pretty(store).map_err(std::io::Error::other)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn written_copies_survive_a_restart_and_damage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("hearth-invite-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = load(&dir).unwrap();
        let (_, token) = store.create("Gran", Duration::from_secs(3600), SystemTime::now());
        let mut writer = InviteWriter::start(&dir);
        let version = writer.save(store);
        assert!(writer.written(version).await);
        let mut again = load(&dir).unwrap();
        assert!(again.check(&token, SystemTime::now()).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.join(FILE_NAME), "{broken").unwrap();
        assert!(matches!(load(&dir), Err(InviteFileError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
