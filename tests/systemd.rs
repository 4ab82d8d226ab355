//! The service unit: verified by systemd, and its sandbox exposure score kept low.

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hearth.service");

#[test]
fn unit_security_exposure_is_at_most_3() {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", UNIT])
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&output.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for hearth.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 3.0, "exposure {score}:\n{text}");
}

#[test]
fn unit_verifies_clean() {
    // verify checks that ExecStart exists: point it at the binary just built.
    let dir = std::env::temp_dir().join(format!("hearth-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/bin/hearth", env!("CARGO_BIN_EXE_hearth"));
    let path = dir.join("hearth.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (package systemd)");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
    assert!(Path::new(env!("CARGO_BIN_EXE_hearth")).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
