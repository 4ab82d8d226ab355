//! A call with one phone on a bad link, in the simulated home (issue 13, item 3): the phone
//! on Wi-Fi loses 5 % of its datagrams each way and gets them 100 ± 30 ms late (out of
//! order, too), while two phones beside the box are on a clean link.
//! - The bad phone's audio goes on (concealed samples under `MOST_CONCEALED_BAD`) and its
//!   video recovers from the loss (it keeps decoding, repairing with NACKs and keyframes).
//! - The phones on a clean link see and hear each other as before.
//!
//! Then the bad link is mended but limited to 1 Mbit/s towards that phone: its audio has no
//! gaps (concealed under `MOST_CONCEALED_SLOW`).
//!
//! The figures are printed in full; the bounds are generous (two cores run three browsers
//! here), so a failure means something broke, not that a figure moved.

use std::time::Duration;

use anyhow::{ensure, Result};
use hearth_test_support::home::{Home, HomeOptions, Ns};
use hearth_test_support::impair::{Chain, Impaired, Impairment};
use hearth_test_support::stats::{CallStats, Window};
use hearth_test_support::{BrowserKind, Phone};

const NO_BOX_MEDIA: &str = "[box]\nmedia = false\n";
const SETTLE: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(15);

const MOST_CONCEALED_BAD: f64 = 0.25;
const LEAST_FPS_BAD: f64 = 3.0;
const LEAST_FPS_CLEAN: f64 = 10.0;
const MOST_CONCEALED_CLEAN: f64 = 0.03;
const MOST_CONCEALED_SLOW: f64 = 0.05;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Each phone's window: settle, then measure all of them over the same `WINDOW`.
async fn measure(phones: &mut [&mut Phone]) -> Result<Vec<Window>> {
    tokio::time::sleep(SETTLE).await;
    let mut before = Vec::new();
    for phone in phones.iter_mut() {
        before.push(CallStats::of(phone).await?);
    }
    tokio::time::sleep(WINDOW).await;
    let mut windows = Vec::new();
    for (phone, before) in phones.iter_mut().zip(&before) {
        let after = CallStats::of(phone).await?;
        windows.push(after.since(before, WINDOW.as_secs_f64()));
    }
    Ok(windows)
}

fn min(values: &[f64]) -> f64 {
    values.iter().cloned().fold(f64::MAX, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().cloned().fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bad_link_spoils_only_its_own_phone() -> Result<()> {
    let home = Home::build(HomeOptions {
        miniupnpd: None,
        ..HomeOptions::default()
    })?;
    let daemon = home.start_box("bad-network", NO_BOX_MEDIA)?;
    let url = daemon.join_url.clone();
    let mut bad =
        Phone::join_in(BrowserKind::Chromium, Some(home.ns(Ns::Wifi)), &url, "Far").await?;
    let mut ann =
        Phone::join_in(BrowserKind::Chromium, Some(home.ns(Ns::Home)), &url, "Ann").await?;
    let mut bob =
        Phone::join_in(BrowserKind::Chromium, Some(home.ns(Ns::Home)), &url, "Bob").await?;
    for phone in [&mut bad, &mut ann, &mut bob] {
        phone
            .wait_for("m.video >= 2 && m.audio >= 2", secs(30))
            .await?;
    }

    // Every datagram to and from the phone on Wi-Fi.
    let mobile = Impairment {
        delay: Duration::from_millis(100),
        ..Impairment::mobile()
    };
    let impaired = Impaired::start(
        Some(home.ns(Ns::Wifi)),
        &[Chain::Output, Chain::Input],
        3,
        mobile,
    )?;
    let windows = measure(&mut [&mut bad, &mut ann, &mut bob]).await?;
    let counts = impaired.stop()?;
    eprintln!(
        "5 % loss, 100 ± 30 ms on the phone on Wi-Fi ({} datagrams passed, {} dropped):",
        counts.passed, counts.dropped
    );
    for (who, w) in ["bad link", "Ann", "Bob"].iter().zip(&windows) {
        eprintln!("  {who}: {}", w.describe());
    }
    let [far, ann_w, bob_w] = &windows[..] else {
        unreachable!("three phones measured");
    };
    ensure!(counts.dropped > 0, "the impairment dropped nothing");
    ensure!(
        max(&far.concealed) < MOST_CONCEALED_BAD,
        "the bad link's audio is not continuous: {}",
        far.describe()
    );
    ensure!(
        min(&far.fps) >= LEAST_FPS_BAD && far.nacks > 0.0,
        "the bad link's video does not recover: {}",
        far.describe()
    );
    // Between Ann and Bob nothing changed; what they get from the bad link is its own.
    for (who, w) in [("Ann", ann_w), ("Bob", bob_w)] {
        ensure!(
            max(&w.fps) >= LEAST_FPS_CLEAN,
            "{who}'s video from the clean phone suffered: {}",
            w.describe()
        );
        ensure!(
            min(&w.concealed) < MOST_CONCEALED_CLEAN,
            "{who}'s audio from the clean phone suffered: {}",
            w.describe()
        );
    }

    // The link is mended but slow: 1 Mbit/s towards the phone (its port on the router's
    // bridge), with a quarter second of queue, as a busy mobile cell.
    home.run_in(
        Ns::Router,
        "tc",
        &[
            "qdisc", "add", "dev", "lan-wifi", "root", "tbf", "rate", "1mbit", "burst", "16kb",
            "latency", "250ms",
        ],
    )?;
    let windows = measure(&mut [&mut bad]).await?;
    let slow = &windows[0];
    eprintln!("1 Mbit/s towards the phone on Wi-Fi: {}", slow.describe());
    ensure!(
        max(&slow.concealed) < MOST_CONCEALED_SLOW,
        "audio has gaps on the slow link: {}",
        slow.describe()
    );

    for phone in [bad, ann, bob] {
        phone.close().await?;
    }
    Ok(())
}
