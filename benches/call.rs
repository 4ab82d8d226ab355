//! `cargo bench --bench call` (or `make bench`): figures for a real call on loopback.
//!
//! 1. Link click → first remote frame: a Chromium phone opens the join link, taps Join as
//!    soon as the page is loaded, and we read the page clock (which starts at navigation)
//!    when the first frame of the other participant is decoded. Median of 10.
//! 2. SFU CPU per 1000 forwarded RTP packets: 4 Chromium phones, each publishing audio and
//!    video and subscribing to the other 3; the daemon's CPU time from /proc over a fixed
//!    window, divided by the packets it forwarded in that window.
//!
//! Prints figures; asserts nothing about speed. Run it inside `tests/in-netns` so all traffic
//! stays on loopback (the Makefile does).

use hearth_test_support as support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use support::browser::{Browser, BrowserKind};
use support::daemon::Daemon;

const JOIN_RUNS: usize = 10;
const CPU_WINDOW: Duration = Duration::from_secs(15);

/// Ms since navigation when `videos` remote video tracks have decoded a frame, measured in the
/// page; -1 after 10 s.
fn first_frames_js(videos: u32) -> String {
    format!(
        r#"(async () => {{
  const tap = performance.now();
  document.getElementById('name').value = 'Bench';
  document.getElementById('join').click();
  while (performance.now() - tap < 10000) {{
    const pc = window.hearth && window.hearth.pc;
    if (pc) {{
      let n = 0;
      (await pc.getStats()).forEach(s => {{
        if (s.type === 'inbound-rtp' && s.kind === 'video' && s.framesDecoded > 0) n++;
      }});
      if (n >= {videos}) return [performance.now(), performance.now() - tap];
    }}
    await new Promise(r => setTimeout(r, 10));
  }}
  return [-1, -1];
}})()"#
    )
}

const JOIN: &str = "(() => { document.getElementById('name').value = 'Phone'; document.getElementById('join').click(); return true; })()";

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// User + system CPU time of a process, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 on x86-64 and arm64.
    Ok(Duration::from_millis(ticks * 10))
}

fn packets_forwarded(daemon: &Daemon) -> Result<u64> {
    daemon.status()?["media"]["packets_forwarded"]
        .as_u64()
        .context("no packets_forwarded in status")
}

async fn wait_until_all_decode(browsers: &mut [Browser], videos: u32) -> Result<()> {
    for browser in browsers.iter_mut() {
        let js = format!(
            r#"(async () => {{
  const t0 = performance.now();
  while (performance.now() - t0 < 30000) {{
    const pc = window.hearth && window.hearth.pc;
    let n = 0;
    if (pc) (await pc.getStats()).forEach(s => {{ if (s.type === 'inbound-rtp' && s.kind === 'video' && s.framesDecoded > 0) n++; }});
    if (n >= {videos}) return true;
    await new Promise(r => setTimeout(r, 50));
  }}
  return false;
}})()"#
        );
        if browser.eval(&js).await? != serde_json::Value::Bool(true) {
            bail!("a phone never decoded {videos} videos");
        }
    }
    Ok(())
}

async fn link_click_to_first_frame() -> Result<()> {
    let daemon = Daemon::start("bench-join")?;
    let mut publisher = Browser::launch(BrowserKind::Chromium).await?;
    publisher.goto(&daemon.join_url).await?;
    publisher.eval(JOIN).await?;
    let mut phone = Browser::launch(BrowserKind::Chromium).await?;
    let mut from_link = Vec::new();
    let mut from_tap = Vec::new();
    for run in 0..JOIN_RUNS {
        // A new navigation each time: the previous page's call ends, a new one starts.
        phone.goto("about:blank").await?;
        phone.goto(&daemon.join_url).await?;
        let result = phone.eval(&first_frames_js(1)).await?;
        let link = result[0].as_f64().unwrap_or(-1.0);
        let tap = result[1].as_f64().unwrap_or(-1.0);
        if link < 0.0 {
            bail!("run {run}: no remote frame within 10 s");
        }
        from_link.push(link);
        from_tap.push(tap);
    }
    println!(
        "link click -> first remote frame: median {:.0} ms (min {:.0}, max {:.0}) over {JOIN_RUNS} joins; goal < 700 ms",
        median(&mut from_link.clone()),
        from_link.iter().cloned().fold(f64::MAX, f64::min),
        from_link.iter().cloned().fold(0.0, f64::max),
    );
    println!(
        "  of which Join tap -> first remote frame: median {:.0} ms",
        median(&mut from_tap)
    );
    publisher.close().await?;
    phone.close().await?;
    Ok(())
}

async fn sfu_cpu_per_1000_packets() -> Result<()> {
    let daemon = Daemon::start("bench-cpu")?;
    let mut phones = Vec::new();
    for _ in 0..4 {
        let mut phone = Browser::launch(BrowserKind::Chromium).await?;
        phone.goto(&daemon.join_url).await?;
        phone.eval(JOIN).await?;
        phones.push(phone);
    }
    wait_until_all_decode(&mut phones, 3).await?;
    let cpu_before = cpu_time(daemon.pid())?;
    let packets_before = packets_forwarded(&daemon)?;
    let started = Instant::now();
    tokio::time::sleep(CPU_WINDOW).await; // a measurement window, not synchronisation
    let cpu = cpu_time(daemon.pid())? - cpu_before;
    let packets = packets_forwarded(&daemon)? - packets_before;
    let wall = started.elapsed();
    if packets == 0 {
        bail!("nothing was forwarded");
    }
    println!(
        "SFU, 4 publishers x 3 subscribers: {packets} RTP packets forwarded in {:.1} s ({:.0}/s), daemon CPU {} ms ({:.1}% of one core)",
        wall.as_secs_f64(),
        packets as f64 / wall.as_secs_f64(),
        cpu.as_millis(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
    );
    println!(
        "  CPU per 1000 forwarded packets: {:.1} ms (Janus VideoRoom on this kind of machine: ~112 ms)",
        cpu.as_secs_f64() * 1000.0 * 1000.0 / packets as f64
    );
    for phone in phones {
        phone.close().await?;
    }
    Ok(())
}

/// Resident memory of a process, from /proc/PID/status.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The box in the call at the dev board's 1280x720@30 (x264) with two phones.
async fn box_with_two_phones() -> Result<()> {
    let daemon = Daemon::start_with_box("bench-box")?;
    let mut phones = Vec::new();
    for _ in 0..2 {
        let mut phone = Browser::launch(BrowserKind::Chromium).await?;
        phone.goto(&daemon.join_url).await?;
        phone.eval(JOIN).await?;
        phones.push(phone);
    }
    // The box's video and the other phone's.
    wait_until_all_decode(&mut phones, 2).await?;
    let cpu_before = cpu_time(daemon.pid())?;
    let started = Instant::now();
    tokio::time::sleep(CPU_WINDOW).await; // a measurement window, not synchronisation
    let cpu = cpu_time(daemon.pid())? - cpu_before;
    let wall = started.elapsed();
    let rss = rss_kib(daemon.pid())?;
    let status = daemon.status()?;
    let latency = &status["box"]["send_latency_us"];
    println!(
        "box + 2 phones, 1280x720@30 x264: daemon CPU {:.0}% of one core, RSS {} MiB",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        rss / 1024
    );
    println!(
        "  encoded frame -> last RTP packet on the socket: median {} us, p99 {} us over the last {} frames; goal < 5 ms",
        latency["median"], latency["p99"], latency["frames"]
    );
    for phone in phones {
        phone.close().await?;
    }
    Ok(())
}

const TOGGLES: usize = 100;

/// Flip the (simulated) switch 100 times with a phone in the call; the daemon times each
/// change from the reading's arrival to capture released and to the room told.
async fn privacy_toggles() -> Result<()> {
    let daemon = Daemon::start_with(
        &support::daemon::temp_dir("bench-privacy"),
        "[board.camera]\nwidth = 640\nheight = 360\n[board.display]\nwidth = 640\nheight = 360\n",
    )?;
    let mut phone = Browser::launch(BrowserKind::Chromium).await?;
    phone.goto(&daemon.join_url).await?;
    phone.eval(JOIN).await?;
    wait_until_all_decode(std::slice::from_mut(&mut phone), 1).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..TOGGLES * 2 {
        let on = i % 2 == 0;
        let (ok, _, err) = daemon.cli(&["simulate", "switch", if on { "on" } else { "off" }]);
        if !ok {
            bail!("flip failed: {err}");
        }
        // The next flip waits until this one has taken effect.
        loop {
            if daemon.status()?["privacy"]["on"] == on {
                break;
            }
            if Instant::now() > deadline {
                bail!("toggles did not finish in 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let privacy = &daemon.status()?["privacy"];
    println!(
        "privacy switch edge -> capture released (pipeline NULL, device closed): median {} us, p99 {} us over {} closes ({TOGGLES} toggles, camera and mic each); goal < 50 ms",
        privacy["capture_release_us"]["median"], privacy["capture_release_us"]["p99"], privacy["capture_release_us"]["count"]
    );
    println!(
        "privacy switch edge -> every phone told: median {} us, p99 {} us over {} changes; goal < 200 ms",
        privacy["everyone_told_us"]["median"], privacy["everyone_told_us"]["p99"], privacy["everyone_told_us"]["count"]
    );
    phone.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects no run.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    link_click_to_first_frame().await?;
    sfu_cpu_per_1000_packets().await?;
    box_with_two_phones().await?;
    privacy_toggles().await?;
    Ok(())
}
