//! The privacy log: one line per change, appended and synced to disk by a thread of its own,
//! so the hub (which closes camera and mic) never waits for the disk. Reads go through the
//! same thread, after every line sent before them: whoever is told of a change and then asks
//! for the log finds it there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

enum Entry {
    Line(String),
    Read(oneshot::Sender<std::io::Result<String>>),
}

pub struct PrivacyLog {
    path: PathBuf,
    entries: mpsc::Sender<Entry>,
}

impl PrivacyLog {
    pub fn start(path: PathBuf) -> PrivacyLog {
        let (entries, queue) = mpsc::channel();
        let file = path.clone();
        let spawned = std::thread::Builder::new()
            .name("privacy-log".into())
            .spawn(move || write_entries(&file, queue));
        if let Err(e) = spawned {
            tracing::error!("cannot start the privacy log's writer: {e}");
        }
        PrivacyLog { path, entries }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `line` (ending in a newline); written and synced in the background.
    pub fn append(&self, line: String) {
        if self.entries.send(Entry::Line(line)).is_err() {
            tracing::error!("privacy log {}: its writer is gone", self.path.display());
        }
    }

    /// The whole log, with every line appended before this call.
    pub async fn read(&self) -> std::io::Result<String> {
        let (tx, rx) = oneshot::channel();
        self.entries
            .send(Entry::Read(tx))
            .map_err(|_| std::io::Error::other("the privacy log's writer is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("the privacy log's writer is gone"))?
    }
}

/// Until the sender is dropped (the daemon stops).
fn write_entries(path: &Path, queue: mpsc::Receiver<Entry>) {
    for entry in queue {
        match entry {
            Entry::Line(line) => {
                if let Err(e) = append_synced(path, &line) {
                    tracing::error!("privacy log {}: {e}", path.display());
                }
            }
            Entry::Read(reply) => {
                let text = match std::fs::read_to_string(path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                    other => other,
                };
                let _ = reply.send(text);
            }
        }
    }
}

/// One write per line (O_APPEND: a line is never interleaved or split by a crash of the
/// process), then synced: a line is on the disk before the next is written.
fn append_synced(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_finds_every_line_appended_before_it() {
        let dir = std::env::temp_dir().join(format!("hearth-privacy-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = PrivacyLog::start(dir.join("privacy.log"));
        assert_eq!(log.read().await.unwrap(), "", "no log yet");
        for n in 0..50 {
            log.append(format!("line {n}\n"));
        }
        let text = log.read().await.unwrap();
        assert_eq!(text.lines().count(), 50);
        assert_eq!(text.lines().last(), Some("line 49"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
