//! Writes that survive the daemon dying mid-way (issue 13, item 7): the invite store is
//! replaced whole (`hearth::durable`) and the privacy log appended a synced line at a time,
//! so a daemon killed with SIGKILL while it writes leaves the old file or the new one, never
//! a torn one, and starts again on what it left.
//!
//! The moment of the kill varies from round to round; each round is bounded (a few hundred
//! writes at most).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use hearth_test_support::daemon::cli;
use hearth_test_support::{temp_dir, Daemon};

const NO_BOX_MEDIA: &str = "[box]\nmedia = false\n";

/// Every line a privacy change writes: `<RFC 3339 time> privacy on|off (<cause>)`.
fn whole_privacy_line(line: &str) -> bool {
    let mut words = line.splitn(3, ' ');
    let time = words.next().unwrap_or("");
    let privacy = words.next() == Some("privacy");
    let rest = words.next().unwrap_or("");
    humantime::parse_rfc3339(time).is_ok()
        && privacy
        && (rest.starts_with("on (") || rest.starts_with("off ("))
        && rest.ends_with(')')
}

#[test]
fn a_daemon_killed_while_writing_leaves_whole_files() -> Result<()> {
    for round in 0..4u64 {
        let dir = temp_dir(&format!("power-cut-{round}"));
        let mut daemon = Daemon::start_with(&dir, NO_BOX_MEDIA)?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                for n in 0..300 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = cli(&dir, &["invite", "--name", &format!("Guest {n}")]);
                    let state = if n % 2 == 0 { "on" } else { "off" };
                    let _ = cli(&dir, &["simulate", "switch", state]);
                }
            })
        };
        // Not a wait for anything: the moment of the cut, somewhere in the writing.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos() as u64;
        std::thread::sleep(Duration::from_millis(300 + nanos % 700 + round * 100));
        daemon.kill()?;
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("the writing thread");

        let invites = std::fs::read_to_string(dir.join("invites.json"))
            .context("no invite store after the kill")?;
        serde_json::from_str::<serde_json::Value>(&invites)
            .with_context(|| format!("round {round}: a torn invite store:\n{invites}"))?;
        let log = std::fs::read_to_string(dir.join("privacy.log"))?;
        ensure!(
            log.ends_with('\n'),
            "round {round}: a torn last line:\n{log}"
        );
        let torn: Vec<&str> = log.lines().filter(|l| !whole_privacy_line(l)).collect();
        ensure!(
            torn.is_empty(),
            "round {round}: torn privacy lines {torn:?}"
        );

        // It starts again on what it left, with the links it had.
        let daemon = Daemon::start_with(&dir, NO_BOX_MEDIA)?;
        let (ok, out, err) = daemon.cli(&["invite", "--list"]);
        ensure!(ok, "round {round}: {err}");
        eprintln!(
            "round {round}: {} privacy lines, `hearth invite --list` printed {} lines after the restart",
            log.lines().count(),
            out.lines().count()
        );
    }
    Ok(())
}
