//! `cargo bench --bench call` (or `make bench`): figures for a real call on loopback.
//!
//! 1. Link click → first remote frame: a Chromium phone opens the join link, taps Join as
//!    soon as the page is loaded, and we read the page clock (which starts at navigation)
//!    when the first frame of the other participant is decoded. Median of 10.
//! 2. Late joiner → first frames, from the tap on Join (the SFU asks publishers for a
//!    keyframe as soon as a subscriber connects): with a Chromium and a Firefox phone in the
//!    call (VP8), until the late phone has decoded both; with the box and one phone in the
//!    call, until it has decoded the box's video (its keyframe request reaches the box's
//!    encoder). Median of 5 each.
//! 3. SFU CPU per 1000 forwarded RTP packets: 4 Chromium phones, each publishing audio and
//!    video and subscribing to the other 3; the daemon's CPU time from /proc over a fixed
//!    window, divided by the packets it forwarded in that window.
//! 4. The box in the call with two phones: daemon CPU and memory, encoder-to-socket latency.
//! 5. The privacy switch flipped 100 times: switch edge to capture released and to phones told.
//!
//! `-- WORD…` runs only the figures named by a word: join, sfu, box, privacy.
//!
//! Prints figures; asserts nothing about speed. Run it inside `tests/in-netns` so all traffic
//! stays on loopback (the Makefile does).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_test_support::{temp_dir, BrowserKind, Daemon, Phone};

const JOIN_RUNS: usize = 10;
const LATE_RUNS: usize = 5;
const CPU_WINDOW: Duration = Duration::from_secs(15);
/// How long phones get to join and decode one another before a measurement starts.
const SETTLE: Duration = Duration::from_secs(30);

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// "median 420 ms (min 380, max 610) over 5 joins"
fn spread(ms: &[f64]) -> String {
    format!(
        "median {:.0} ms (min {:.0}, max {:.0}) over {} joins",
        median(&mut ms.to_vec()),
        ms.iter().cloned().fold(f64::MAX, f64::min),
        ms.iter().cloned().fold(0.0, f64::max),
        ms.len()
    )
}

/// `LATE_RUNS` times: `phone` opens the join link afresh and taps Join; milliseconds from the
/// tap until `condition` (see `Phone::wait_for`) holds in its page.
async fn late_joins(phone: &mut Phone, url: &str, condition: &str) -> Result<Vec<f64>> {
    let mut taken = Vec::new();
    for _ in 0..LATE_RUNS {
        phone.open(url).await?;
        let joined = phone
            .join_and_wait("Late", condition, Duration::from_secs(10))
            .await?;
        taken.push(joined.since_tap.as_secs_f64() * 1000.0);
    }
    Ok(taken)
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

/// `count` Chromium phones in the call, each decoding `videos` remote videos.
async fn phones_in_call(daemon: &Daemon, count: usize, videos: u32) -> Result<Vec<Phone>> {
    let mut phones = Vec::new();
    for i in 0..count {
        let name = format!("Phone {}", i + 1);
        phones.push(Phone::join(BrowserKind::Chromium, &daemon.join_url, &name).await?);
    }
    for phone in phones.iter_mut() {
        phone
            .wait_for(&format!("m.video >= {videos}"), SETTLE)
            .await?;
    }
    Ok(phones)
}

async fn link_click_to_first_frame() -> Result<()> {
    let daemon = Daemon::start("bench-join")?;
    let publisher = Phone::join(BrowserKind::Chromium, &daemon.join_url, "Publisher").await?;
    let mut phone = Phone::launch(BrowserKind::Chromium).await?;
    let mut from_link = Vec::new();
    let mut from_tap = Vec::new();
    for _ in 0..JOIN_RUNS {
        // A new navigation each time: the previous page's call ends, a new one starts.
        phone.open(&daemon.join_url).await?;
        let joined = phone
            .join_and_wait("Bench", "m.video >= 1", Duration::from_secs(10))
            .await?;
        from_link.push(joined.since_navigation.as_secs_f64() * 1000.0);
        from_tap.push(joined.since_tap.as_secs_f64() * 1000.0);
    }
    println!(
        "link click -> first remote frame: {}; goal < 700 ms",
        spread(&from_link)
    );
    println!(
        "  of which Join tap -> first remote frame: median {:.0} ms",
        median(&mut from_tap)
    );
    publisher.close().await?;
    phone.close().await?;
    Ok(())
}

/// A Chromium and a Firefox phone in the call, then a late Chromium phone.
async fn late_joiner_two_phones() -> Result<()> {
    let daemon = Daemon::start("bench-late")?;
    let url = &daemon.join_url;
    let mut ann = Phone::join(BrowserKind::Chromium, url, "Ann").await?;
    let mut fox = Phone::join(BrowserKind::Firefox, url, "Fox").await?;
    for phone in [&mut ann, &mut fox] {
        phone.wait_for("m.video >= 1", SETTLE).await?;
    }
    let mut late = Phone::launch(BrowserKind::Chromium).await?;
    let taken = late_joins(&mut late, url, "m.video >= 2").await?;
    println!(
        "late joiner, Join tap -> first frames of both phones in the call (Chromium + Firefox, {}): {}; goal < 1 s",
        daemon.status()?["video_codec"].as_str().unwrap_or("?"),
        spread(&taken)
    );
    for phone in [ann, fox, late] {
        phone.close().await?;
    }
    Ok(())
}

/// The box (dev board, 1280x720@30) and one phone in the call, then a late phone.
async fn late_joiner_box() -> Result<()> {
    let daemon = Daemon::start_with_box("bench-late-box")?;
    let ann = phones_in_call(&daemon, 1, 1).await?;
    let mut late = Phone::launch(BrowserKind::Chromium).await?;
    let taken = late_joins(&mut late, &daemon.join_url, "m.frames('p0') > 0").await?;
    println!(
        "late joiner, Join tap -> first frame of the box's video (1280x720@30 x264): {}; goal < 1 s",
        spread(&taken)
    );
    for phone in ann.into_iter().chain([late]) {
        phone.close().await?;
    }
    Ok(())
}

async fn sfu_cpu_per_1000_packets() -> Result<()> {
    let daemon = Daemon::start("bench-cpu")?;
    let phones = phones_in_call(&daemon, 4, 3).await?;
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
    // Each decodes the box's video and the other phone's.
    let phones = phones_in_call(&daemon, 2, 2).await?;
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
        latency["median"], latency["p99"], latency["count"]
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
        &temp_dir("bench-privacy"),
        "[board.camera]\nwidth = 640\nheight = 360\n[board.display]\nwidth = 640\nheight = 360\n",
    )?;
    let phones = phones_in_call(&daemon, 1, 1).await?;
    for i in 0..TOGGLES * 2 {
        let on = i % 2 == 0;
        // Answered once the flip has taken effect (on: capture closed; off: the switch has
        // settled), so each flip starts from where the last one left things.
        let (ok, _, err) = daemon.cli(&["simulate", "switch", if on { "on" } else { "off" }]);
        if !ok {
            bail!("flip {i} failed: {err}");
        }
    }
    let status = daemon.status()?;
    let privacy = &status["privacy"];
    if privacy["on"] != false {
        bail!("privacy still on after the last flip: {privacy}");
    }
    println!(
        "privacy switch edge -> camera and mic closed (their sources at NULL): median {} us, p99 {} us over {} closes ({TOGGLES} toggles, camera and mic each); goal < 50 ms",
        privacy["capture_release_us"]["median"], privacy["capture_release_us"]["p99"], privacy["capture_release_us"]["count"]
    );
    println!(
        "privacy switch edge -> every phone told: median {} us, p99 {} us over {} changes; goal < 200 ms",
        privacy["everyone_told_us"]["median"], privacy["everyone_told_us"]["p99"], privacy["everyone_told_us"]["count"]
    );
    for phone in phones {
        phone.close().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects no run.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    // `cargo bench --bench call -- privacy`: only the figures whose name holds a word given.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| words.is_empty() || words.iter().any(|w| name.contains(w.as_str()));
    if wanted("join") {
        link_click_to_first_frame().await?;
        late_joiner_two_phones().await?;
        late_joiner_box().await?;
    }
    if wanted("sfu") {
        sfu_cpu_per_1000_packets().await?;
    }
    if wanted("box") {
        box_with_two_phones().await?;
    }
    if wanted("privacy") {
        privacy_toggles().await?;
    }
    Ok(())
}
