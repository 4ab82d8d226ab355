//! The privacy switch, end to end on the dev board (simulated switch and LED; its camera and
//! mic hold files standing for device nodes, so open descriptors can be checked).

use hearth_test_support as support;

use std::path::Path;

use anyhow::Result;
use support::browser::{Browser, BrowserKind};
use support::daemon::{temp_dir, Daemon};

const SMALL_BOX: &str = "[board.camera]\nwidth = 640\nheight = 360\nframerate = 15\n[board.display]\nwidth = 640\nheight = 360\n";

/// Frames of the box's video (stream "p0") decoded so far.
const BOX_FRAMES: &str = r#"(async () => {
  const pc = window.hearth && window.hearth.pc;
  const tile = document.querySelector('.tile[data-participant="p0"] video');
  const ids = tile && tile.srcObject ? tile.srcObject.getTracks().map(t => t.id) : [];
  let frames = 0;
  if (pc) (await pc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp' && s.kind === 'video' && ids.includes(s.trackIdentifier)) frames = s.framesDecoded;
  });
  return frames;
})()"#;

/// Wait in the page until the box's video has not advanced for 300 ms; ms taken or -1.
const FROZEN: &str = r#"(async () => {
  const t0 = performance.now();
  let last = -1, since = t0;
  while (performance.now() - t0 < 3000) {
    const f = await BOX;
    if (f !== last) { last = f; since = performance.now(); }
    else if (performance.now() - since >= 300) return since - t0;
    await new Promise(r => setTimeout(r, 20));
  }
  return -1;
})()"#;

fn advancing(by: u32, ms: u32) -> String {
    format!(
        r#"(async () => {{
  const t0 = performance.now();
  const start = await {BOX_FRAMES};
  while (performance.now() - t0 < {ms}) {{
    if ((await {BOX_FRAMES}) >= start + {by}) return performance.now() - t0;
    await new Promise(r => setTimeout(r, 20));
  }}
  return -1;
}})()"#
    )
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

async fn tile_text(browser: &mut Browser) -> Result<String> {
    let text = browser
        .eval("document.querySelector('.tile[data-participant=\"p0\"]').innerText")
        .await?;
    Ok(text.as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn privacy_closes_the_devices_and_everyone_sees_it() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("privacy"), SMALL_BOX)?;
    let mut ann = Browser::launch(BrowserKind::Chromium).await?;
    ann.goto(&daemon.join_url).await?;
    ann.eval("(() => { document.getElementById('name').value = 'Ann'; document.getElementById('join').click(); return true; })()")
        .await?;
    let took = ann
        .eval(&advancing(10, 20_000))
        .await?
        .as_f64()
        .unwrap_or(-1.0);
    assert!(took >= 0.0, "no video from the box");
    let open = capture_fds(daemon.pid(), &daemon.state_dir);
    assert_eq!(
        open.len(),
        2,
        "camera and mic should be open while capturing: {open:?}"
    );

    // Privacy on: within 1 s the box's video stops, the page says so, no device is open.
    let (ok, _, err) = daemon.cli(&["privacy", "on"]);
    assert!(ok, "{err}");
    let frozen = ann
        .eval(&FROZEN.replace("BOX", BOX_FRAMES))
        .await?
        .as_f64()
        .unwrap_or(-1.0);
    assert!(
        (0.0..1000.0).contains(&frozen),
        "the box's video went on for {frozen:.0} ms"
    );
    // The answer came once the devices were closed.
    let status = daemon.status()?;
    assert_eq!(status["privacy"]["on"], true);
    assert_eq!(status["privacy"]["led"], true);
    assert!(capture_fds(daemon.pid(), &daemon.state_dir).is_empty());
    assert!(
        tile_text(&mut ann).await?.contains("Privacy on"),
        "{}",
        tile_text(&mut ann).await?
    );

    // Privacy off: the video resumes within 2 s.
    let (ok, _, err) = daemon.cli(&["privacy", "off"]);
    assert!(ok, "{err}");
    let resumed = ann
        .eval(&advancing(5, 2000))
        .await?
        .as_f64()
        .unwrap_or(-1.0);
    assert!(resumed >= 0.0, "the box's video did not resume within 2 s");
    assert_eq!(daemon.status()?["privacy"]["led"], false);
    assert!(!tile_text(&mut ann).await?.contains("Privacy on"));

    // "Pause the box" from the phone: on at once; releasing it takes the switch, flipped
    // on and off again (a software pause is never undone by software).
    ann.eval("(() => { document.getElementById('pause-box').click(); return true; })()")
        .await?;
    daemon.status_until("paused from the page", |s| s["privacy"]["on"] == true)?;
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

    let log = std::fs::read_to_string(daemon.state_dir.join("privacy.log"))?;
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 5, "{log}");
    assert!(lines[0].ends_with("privacy off (start-up)"), "{log}");
    assert!(lines[1].ends_with("privacy on (switch)"), "{log}");
    assert!(
        log.contains("privacy on (software (Ann, from the call page))"),
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
