//! The owner's command line: config errors, port clashes, no daemon.

use std::process::Command;

use hearth_test_support::daemon::{cli, hearth_bin, temp_dir};

#[test]
fn default_config_checks_clean() {
    let dir = temp_dir("cli-default");
    let (ok, text, _) = cli(&dir, &["config", "default"]);
    assert!(ok);
    let file = dir.join("default.toml");
    std::fs::write(&file, text).unwrap();
    let (ok, out, err) = cli(&dir, &["config", "check", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.ends_with("ok\n"));
}

#[test]
fn bad_configs_stop_start_up_with_one_line_naming_line_column_and_key() {
    let dir = temp_dir("cli-bad");
    let cases = [
        ("syntax", "[web\nhttps_port = 1\n", ":1:"),
        (
            "unknown-key",
            "[call]\nudp_prot = 1\n",
            ":2:1: key `call.udp_prot`",
        ),
        (
            "wrong-type",
            "[web]\nhttps_port = \"x\"\n",
            ":2:14: key `web.https_port`",
        ),
        (
            "bad-address",
            "[web]\nlan_address = \"1.2.3\"\n",
            ":2:15: key `web.lan_address`",
        ),
        (
            "out-of-range",
            "[call]\n\nudp_port = 0\n",
            ":3:12: key `call.udp_port`",
        ),
        (
            "bad-duration",
            "[call]\ninvite_ttl = \"soon\"\n",
            ":2:14: key `call.invite_ttl`",
        ),
    ];
    for (name, text, expected) in cases {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        for args in [vec!["config", "check", path], vec!["run", "--config", path]] {
            let output = Command::new(hearth_bin())
                .arg("--state-dir")
                .arg(&dir)
                .args(&args)
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(1), "{name} {args:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
            assert!(
                stderr.contains(&format!("{path}{expected}")),
                "{name}: {stderr}"
            );
        }
    }
}

#[test]
fn cli_without_a_daemon_says_so_in_one_line() {
    let dir = temp_dir("cli-none");
    for args in [&["status"][..], &["invite"][..], &["invite", "--list"][..]] {
        let (ok, _, err) = cli(&dir, args);
        assert!(!ok);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("Hearth is not running"), "{err}");
    }
}

#[test]
fn a_port_in_use_is_named() {
    let dir = temp_dir("cli-port");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let file = dir.join("busy.toml");
    std::fs::write(
        &file,
        format!("[web]\nhttps_port = {port}\nhttp_port = 0\n"),
    )
    .unwrap();
    let output = Command::new(hearth_bin())
        .arg("--state-dir")
        .arg(&dir)
        .args(["run", "--board", "dev", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("hearth: port {port} is already in use (web.https_port)")
    );
}

#[test]
fn check_passes_on_the_dev_board_and_fails_without_pi_hardware() {
    let dir = temp_dir("cli-check");
    let (ok, out, err) = cli(&dir, &["check"]);
    assert!(ok, "{err}");
    assert!(out.contains("Encoder in use: x264enc"), "{out}");
    // This machine has no Pi camera, no webcam and no sound card.
    let (ok, out, err) = cli(&dir, &["check", "--board", "pi4"]);
    assert!(!ok);
    assert!(out.contains("v4l2h264enc: not available"), "{out}");
    assert!(out.contains("Camera: MISSING"), "{out}");
    assert!(err.contains("is not all here"), "{err}");
    // Nothing here answers as a home router would: family outside could not join.
    assert!(
        out.contains("Family outside the home: Only family at home can join"),
        "{out}"
    );
}

#[test]
fn support_runs_the_binary_cargo_built_for_these_tests() {
    assert_eq!(
        hearth_bin(),
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_hearth"))
    );
}
