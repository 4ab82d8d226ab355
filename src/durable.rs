//! Files that survive a power cut: written whole or not at all (a new temporary file, synced,
//! renamed over the old one, the directory synced). A Pi is unplugged, not shut down. The
//! temporary file is always made new, never opened through whatever is already there: root
//! writes into Hearth's state dir too, where the daemon's user could leave a link.

use std::path::Path;

/// Replace `path` by `bytes`, with permissions `mode` (before any byte is written).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaced_whole_with_its_mode_and_no_temporary_left() {
        let dir = std::env::temp_dir().join(format!("hearth-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        write(&path, b"first", 0o600).unwrap();
        // A link left where the temporary goes is not followed.
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("state.tmp")).unwrap();
        write(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.join("elsewhere").exists());
        assert!(!dir.join("state.tmp").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
