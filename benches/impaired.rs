//! `cargo bench --bench impaired` (or `make bench`): a call on a bad network. Three Chromium
//! phones (fake camera and mic, default settings) publish to the SFU and subscribe to one
//! another, with the box's own media off; then every UDP datagram on every hop is dropped
//! 5 % of the time and delayed 50 ± 30 ms (so datagrams also arrive out of order), with
//! `iptables -j NFQUEUE` and a delaying thread (`hearth_test_support::impair`).
//!
//! After the phones' congestion control has had `SETTLE` to adapt, it measures over `WINDOW`
//! and prints, per phone and over all:
//! - decoded frames per second of each video it receives;
//! - the share of the window that video was frozen (`totalFreezesDuration`);
//! - concealed audio samples per received sample;
//! - the sender's target bitrate (`targetBitrate` of its outbound video, sampled every second)
//!   and its `qualityLimitationReason`.
//!
//! These are the figures issue 13 compares with Janus 1.1.2 under the same impairment
//! (15–19.5 fps, frozen 13.5 %, senders ~150 kbit/s). Prints figures; asserts nothing. Run it
//! inside `tests/in-netns` (the Makefile does): the queue takes every datagram sent in the
//! namespace, which only these phones and this daemon use.
//!
//! `-- --runs N` repeats the measurement N times (a new call each time).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use hearth_test_support::impair::{Chain, Impaired, Impairment};
use hearth_test_support::stats::{mean, range, CallStats, Window};
use hearth_test_support::{BrowserKind, Daemon, Phone};

const PHONES: usize = 3;
/// After the impairment starts, before the window: congestion control adapts.
const SETTLE: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(20);
/// The queue number the impairment uses in this namespace.
const QUEUE: u16 = 7;

/// One phone's figures over the window, with its sender's mean target and why it held back.
struct Figures {
    window: Window,
    target_kbps: f64,
    limitations: BTreeMap<String, usize>,
}

async fn run_once(run: usize) -> Result<Vec<Figures>> {
    let daemon = Daemon::start("impaired")?;
    let mut phones = Vec::new();
    for i in 0..PHONES {
        let phone = Phone::join(BrowserKind::Chromium, &daemon.join_url, &format!("P{i}")).await?;
        phones.push(phone);
    }
    let others = PHONES - 1;
    for phone in &mut phones {
        let all = format!("m.video >= {others} && m.audio >= {others}");
        phone.wait_for(&all, Duration::from_secs(30)).await?;
    }
    let impaired = Impaired::start(None, &[Chain::Output], QUEUE, Impairment::mobile())?;
    tokio::time::sleep(SETTLE).await;

    let mut start = Vec::new();
    for phone in &mut phones {
        start.push(CallStats::of(phone).await?);
    }
    let mut targets = vec![Vec::new(); PHONES];
    let mut limitations = vec![BTreeMap::new(); PHONES];
    for _ in 0..WINDOW.as_secs() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, phone) in phones.iter_mut().enumerate() {
            let now = CallStats::of(phone).await?;
            targets[i].push(now.target / 1000.0);
            *limitations[i].entry(now.limitation).or_insert(0) += 1;
        }
    }
    let mut figures = Vec::new();
    for (i, phone) in phones.iter_mut().enumerate() {
        let end = CallStats::of(phone).await?;
        figures.push(Figures {
            window: end.since(&start[i], WINDOW.as_secs_f64()),
            target_kbps: mean(&targets[i]),
            limitations: std::mem::take(&mut limitations[i]),
        });
    }
    let counts = impaired.stop()?;
    let media = &daemon.status()?["media"];
    println!(
        "run {run}: the impairment passed {} and dropped {} datagrams (at most {} held); the SFU \
         asked publishers for {} keyframes, subscribers asked it for {}",
        counts.passed,
        counts.dropped,
        counts.most_held,
        media["keyframe_requests_sent"],
        media["keyframe_requests_received"],
    );
    for (i, f) in figures.iter().enumerate() {
        println!(
            "  phone {i}: {}; sender's target {:.0} kbit/s, limited by {:?}",
            f.window.describe(),
            f.target_kbps,
            f.limitations
        );
    }
    for phone in phones {
        phone.close().await?;
    }
    Ok(figures)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    println!(
        "A call through a bad network: {PHONES} Chromium phones, box media off, every datagram \
         5 % lost and delayed 50 ± 30 ms; {} s to settle, {} s measured",
        SETTLE.as_secs(),
        WINDOW.as_secs()
    );
    let (mut fps, mut frozen, mut concealed, mut targets) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        for f in run_once(run).await? {
            fps.extend(f.window.fps);
            frozen.extend(f.window.frozen);
            concealed.extend(f.window.concealed);
            targets.push(f.target_kbps);
        }
    }
    println!(
        "over all: decoded {:.1} fps (range {}), frozen {:.1} %, audio concealed {:.1} %, \
         senders' target {:.0} kbit/s (range {})",
        mean(&fps),
        range(&fps, 1.0, 1),
        mean(&frozen) * 100.0,
        mean(&concealed) * 100.0,
        mean(&targets),
        range(&targets, 1.0, 0),
    );
    Ok(())
}
