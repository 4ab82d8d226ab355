//! JSON files in the state dir (`invites.json`, `owners.json`): read once at start; written
//! by a task of their own whenever the cores say they changed, so the hub's loop never waits
//! for the disk. Writes are coalesced (only the newest copy matters) and atomic (temp file +
//! rename, mode 0600: they hold hashes of capabilities).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
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

/// The file `name` in `state_dir`; a missing file is the default (empty).
pub fn load<T: DeserializeOwned + Default>(
    state_dir: &Path,
    name: &str,
) -> Result<T, StateFileError> {
    let path = state_dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| StateFileError::Parse {
            path: path.clone(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StateFileError::Read { path, source }),
    }
}

/// Hands copies to the writer task; says which copy is on disk.
pub struct StateWriter<T> {
    latest: watch::Sender<(u64, T)>,
    written: watch::Receiver<u64>,
    version: u64,
}

impl<T: Serialize + Default + Clone + Send + Sync + 'static> StateWriter<T> {
    pub fn start(state_dir: &Path, name: &'static str) -> StateWriter<T> {
        let (latest, mut to_write) = watch::channel((0, T::default()));
        let (written_tx, written) = watch::channel(0);
        let path = state_dir.join(name);
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
                    Err(e) => tracing::error!("cannot write {name}: {e}"),
                }
            }
        });
        StateWriter {
            latest,
            written,
            version: 0,
        }
    }

    /// Queue this copy for writing; returns its version for `written`.
    pub fn save(&mut self, store: T) -> u64 {
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

fn write_atomically<T: Serialize>(path: &Path, store: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(store).map_err(std::io::Error::other)?;
    // Hashes of tokens: still not for other users' eyes.
    crate::durable::write(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::invite::InviteStore;
    use std::time::{Duration, SystemTime};

    const FILE_NAME: &str = "invites.json";

    #[tokio::test]
    async fn written_copies_survive_a_restart_and_damage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("hearth-invite-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store: InviteStore = load(&dir, FILE_NAME).unwrap();
        let (_, token) = store.create("Gran", Duration::from_secs(3600), SystemTime::now());
        let mut writer = StateWriter::start(&dir, FILE_NAME);
        let version = writer.save(store);
        assert!(writer.written(version).await);
        let mut again: InviteStore = load(&dir, FILE_NAME).unwrap();
        assert!(again.check(&token, SystemTime::now()).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.join(FILE_NAME), "{broken").unwrap();
        let damaged = load::<InviteStore>(&dir, FILE_NAME);
        assert!(matches!(damaged, Err(StateFileError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
