//! The privacy switch, end to end on the dev board (simulated switch and LED; its camera and
//! mic hold files standing for device nodes, so open descriptors can be checked).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use hearth_test_support::{temp_dir, BrowserKind, Daemon, Phone};

const SMALL_BOX: &str = "[board.camera]\nwidth = 640\nheight = 360\nframerate = 15\n[board.display]\nwidth = 640\nheight = 360\n";

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The daemon's open descriptors that point at its (simulated) camera or mic.
fn capture_fds(pid: u32, state_dir: &Path) -> Vec<String> {
    let devices = [state_dir.join("dev/camera"), state_dir.join("dev/mic")];
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return vec!["cannot read /proc".into()];
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            devices.contains(target)
                || target.starts_with("/dev/video")
                || target.starts_with("/dev/snd")
                || target.starts_with("/dev/media")
        })
        .map(|t| t.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn privacy_closes_the_devices_and_everyone_sees_it() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("privacy"), SMALL_BOX)?;
    let mut ann = Phone::join(BrowserKind::Chromium, &daemon.join_url, "Ann").await?;
    ann.wait_for("m.frames('p0') >= 10", secs(20)).await?;
    let open = capture_fds(daemon.pid(), &daemon.state_dir);
    assert_eq!(
        open.len(),
        2,
        "camera and mic should be open while capturing: {open:?}"
    );

    // Privacy on: within 1 s the box's video stops (the privacy issue's requirement, so an
    // assert here, not a benchmark figure), the page says so, no device is open.
    let (ok, _, err) = daemon.cli(&["privacy", "on"]);
    assert!(ok, "{err}");
    let last_frame = ann
        .video_stops("p0", Duration::from_millis(300), secs(3))
        .await?;
    assert!(
        last_frame < Duration::from_secs(1),
        "the box's video went on for {last_frame:?}"
    );
    // The answer came once the devices were closed.
    let status = daemon.status()?;
    assert_eq!(status["privacy"]["on"], true);
    assert_eq!(status["privacy"]["led"], true);
    assert!(capture_fds(daemon.pid(), &daemon.state_dir).is_empty());
    ann.wait_for("m.text('p0').includes('Privacy on')", secs(5))
        .await?;

    // Privacy off: the video resumes.
    let (ok, _, err) = daemon.cli(&["privacy", "off"]);
    assert!(ok, "{err}");
    let before = ann.media().await?.frames("p0");
    ann.wait_for(&format!("m.frames('p0') >= {before} + 5"), secs(10))
        .await?;
    assert_eq!(daemon.status()?["privacy"]["led"], false);
    ann.wait_for("!m.text('p0').includes('Privacy on')", secs(5))
        .await?;

    // "Pause the box" from the phone: on at once; releasing it takes the switch, flipped
    // on and off again (a software pause is never undone by software).
    ann.click("pause-box").await?;
    // The tap gets no answer, but the roster the daemon sends once privacy is on does.
    ann.wait_for("m.text('p0').includes('Privacy on')", secs(5))
        .await?;
    assert_eq!(daemon.status()?["privacy"]["on"], true);
    // The switch settles off, and the answer says privacy stayed on.
    let (ok, _, err) = daemon.cli(&["privacy", "off"]);
    assert!(!ok, "the page's pause was undone without the switch");
    assert!(err.contains("privacy stays on"), "{err}");
    assert_eq!(daemon.status()?["privacy"]["on"], true);
    let (ok, _, err) = daemon.cli(&["privacy", "on"]);
    assert!(ok, "{err}");
    let (ok, out, err) = daemon.cli(&["privacy", "off"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "privacy off");
    assert_eq!(
        daemon.status()?["privacy"]["on"],
        false,
        "released by the switch"
    );

    // The log is written in the background; asking for it returns once every line told of
    // so far is there (and on the disk).
    let (ok, _, err) = daemon.cli(&["privacy-log"]);
    assert!(ok, "{err}");
    let log = std::fs::read_to_string(daemon.state_dir.join("privacy.log"))?;
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 5, "{log}");
    assert!(lines[0].ends_with("privacy off (start-up)"), "{log}");
    assert!(lines[1].ends_with("privacy on (switch)"), "{log}");
    assert!(
        log.contains("privacy on (software (\"Ann\" (p1, invite ")
            && log.contains("), from the call page))"),
        "{log}"
    );
    ann.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_hardware_board_refuses_privacy_off_from_software() -> Result<()> {
    // The Pi 4 profile with its switch line simulated (no Pi here), test media, loopback.
    let config = "[web]\nlan_address = \"127.0.0.1\"\n\
        [board.gpio]\nbackend = \"simulated\"\n\
        [board.camera]\nsource = \"test\"\nwidth = 320\nheight = 180\n\
        [board.audio]\ncapture = \"test\"\nplayback = \"count\"\n\
        [board.display]\nsink = \"offscreen\"\nwidth = 320\nheight = 180\n";
    let dir = temp_dir("privacy-pi4");
    let daemon = Daemon::start_on_board(&dir, "pi4", config)?;
    // Answered once the switch has settled off (it starts off).
    let (ok, _, err) = daemon.cli(&["simulate", "switch", "off"]);
    assert!(ok, "{err}");
    assert_eq!(daemon.status()?["privacy"]["on"], false);

    let (ok, _, err) = daemon.cli(&["simulate", "switch", "on"]);
    assert!(ok, "{err}");
    assert_eq!(daemon.status()?["privacy"]["on"], true);
    let (ok, _, err) = daemon.cli(&["privacy", "off"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "hearth: privacy can only be turned off with the switch on the box"
    );
    assert_eq!(daemon.status()?["privacy"]["on"], true);
    // Turning it on from software is always allowed; the switch, flipped off, releases.
    let (ok, _, err) = daemon.cli(&["simulate", "switch", "off"]);
    assert!(ok, "{err}");
    assert_eq!(daemon.status()?["privacy"]["on"], false);
    let (ok, _, err) = daemon.cli(&["privacy", "on"]);
    assert!(ok, "{err}");
    assert_eq!(daemon.status()?["privacy"]["on"], true);
    Ok(())
}
