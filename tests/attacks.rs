//! The three serious attacks of issue 9, each against a real daemon on loopback, and the
//! call still usable afterwards (or meanwhile): a flooder with non-reading accomplices,
//! joiners that never offer media, and idle TLS connections by the thousand.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::SinkExt;
use hearth_test_support::attack::{self, participants, status_within, Sampler};
use hearth_test_support::tokio_tungstenite::tungstenite::Message;
use hearth_test_support::wss;
use hearth_test_support::Daemon;
use serde_json::json;

/// How long the flooder may flood, and how many messages it may send at most.
const FLOOD_TIME: Duration = Duration::from_secs(20);
const FLOOD_MESSAGES: usize = 2_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_flooder_and_four_non_readers_cost_little_memory_and_are_let_go() -> Result<()> {
    let daemon = Daemon::start("flood")?;
    let pid = daemon.pid();
    let rss = Sampler::start(Duration::from_millis(100), move || {
        attack::rss_mib(pid).ok()
    });
    let start_rss = attack::rss_mib(pid)?;
    // The start link is the family's: it admits max_participants devices.
    let url = daemon.join_url.clone();
    let mut non_readers = Vec::new();
    for i in 0..4 {
        let mut socket = wss::connect(&daemon).await?;
        wss::send(&mut socket, attack::join_msg(&url, &format!("Sleepy {i}"))).await?;
        non_readers.push(socket); // never read again
    }
    let (mut flooder, welcome) =
        attack::join(&daemon, &url, "Flood", Duration::from_secs(5)).await?;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    status_within(&daemon, "five in the call", Duration::from_secs(5), |s| {
        participants(s) == 5
    })
    .await?;
    let joined = Instant::now();

    // Mute toggles as fast as the socket takes them, never reading.
    let started = Instant::now();
    let mut sent = 0;
    let cut_off = loop {
        let left = FLOOD_TIME.saturating_sub(started.elapsed());
        if left.is_zero() || sent == FLOOD_MESSAGES {
            break None;
        }
        let mute = json!({"type": "mute", "audio": sent % 2 == 0, "video": true});
        match tokio::time::timeout(left, flooder.send(Message::text(mute.to_string()))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break Some(started.elapsed()),
            Err(_) => break None,
        }
    };
    eprintln!("flooder: {sent} mutes sent, cut off after {cut_off:?}");
    let Some(cut_off) = cut_off else {
        bail!("the flooder was still connected after {FLOOD_TIME:?} ({sent} mutes)");
    };
    drop(flooder);

    // The non-readers never offered media (nor answered a ping): the call lets them go.
    let gone = status_within(&daemon, "non-readers gone", Duration::from_secs(45), |s| {
        participants(s) == 0
    })
    .await?;
    eprintln!(
        "non-readers gone {:.1} s after joining",
        (joined.elapsed()).as_secs_f64()
    );
    assert!(gone <= Duration::from_secs(45));
    drop(non_readers);

    // The call is usable: a new phone joins at once.
    let fresh = daemon.invite("After the flood")?;
    let (_phone, welcome) = attack::join(&daemon, &fresh, "Gran", Duration::from_secs(5)).await?;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let peak = rss.max().await;
    eprintln!("daemon RSS: {start_rss:.1} MiB at start, peak {peak:.1} MiB, flooder cut off after {:.1} s", cut_off.as_secs_f64());
    assert!(peak < 100.0, "daemon RSS reached {peak:.1} MiB");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_joiners_that_never_offer_are_gone_within_20_s_and_a_phone_gets_in() -> Result<()> {
    let daemon = Daemon::start("silent-joiners")?;
    let url = daemon.join_url.clone();
    let mut silent = Vec::new();
    for i in 0..8 {
        let (socket, welcome) = attack::join(
            &daemon,
            &url,
            &format!("Silent {i}"),
            Duration::from_secs(5),
        )
        .await?;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        silent.push(socket);
    }
    let joined = Instant::now();
    // They fill the call while they are in.
    let phone_url = daemon.invite("Phone")?;
    let (_, refused) = attack::join(&daemon, &phone_url, "Early", Duration::from_secs(5)).await?;
    assert_eq!(refused["type"], "refused", "{refused}");

    // Each reads (and so answers the daemon's pings) but never offers: closed by the daemon.
    let waits = silent
        .iter_mut()
        .map(|socket| attack::until_closed_within(socket, Duration::from_secs(20)));
    for closed in futures_util::future::join_all(waits).await {
        let (_, pings) = closed?;
        assert!(pings >= 1, "no ping from the daemon in 10 s");
    }
    let all_gone = joined.elapsed();
    eprintln!(
        "8 silent joiners closed {:.1} s after joining",
        all_gone.as_secs_f64()
    );
    assert!(all_gone <= Duration::from_secs(20), "{all_gone:?}");
    status_within(&daemon, "nobody left", Duration::from_secs(2), |s| {
        participants(s) == 0
    })
    .await?;

    let (_phone, welcome) =
        attack::join(&daemon, &phone_url, "Gran", Duration::from_secs(5)).await?;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    Ok(())
}

/// Idle TLS connections the attacker opens, from 127.0.0.2 on (25 per address, under the
/// per-address cap, so the cap in total is what holds); phones come from 127.0.0.1.
const IDLE_CONNECTIONS: usize = 1_100;
/// A second wave while a phone is in the call, from further addresses.
const SECOND_WAVE: usize = 300;
const PER_ATTACKER_ADDRESS: usize = 25;
const HOLD: Duration = Duration::from_secs(40);

fn attacker_address(i: usize) -> IpAddr {
    let host = 2 + i / PER_ATTACKER_ADDRESS;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host as u8))
}

/// Open idle TLS connections number `range` (each from its attacker address).
async fn open_idle(
    daemon: &Daemon,
    range: std::ops::Range<usize>,
    held: &mut Vec<attack::IdleTls>,
) -> Result<usize> {
    let config = attack::tls_config(daemon)?;
    let mut failed = 0;
    for i in range {
        match attack::idle_tls(attacker_address(i), daemon, config.clone()).await {
            Ok(conn) => held.push(conn),
            Err(_) => failed += 1,
        }
    }
    Ok(failed)
}

/// A phone from 127.0.0.1: loads the join page and joins; its socket and the time that took.
async fn phone_joins(daemon: &Daemon, name: &str) -> Result<(wss::Socket, Duration)> {
    let start = Instant::now();
    let page = attack::https_get(daemon, "/join").await?;
    assert!(page.contains(" 200 "), "{name}: join page: {page}");
    let url = daemon.invite(name)?;
    let (socket, welcome) = attack::join(daemon, &url, name, Duration::from_secs(5)).await?;
    assert_eq!(welcome["type"], "welcome", "{name}: {welcome}");
    Ok((socket, start.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_by_the_thousand_do_not_keep_a_phone_out() -> Result<()> {
    let daemon = Daemon::start("idle-tls")?;
    let pid = daemon.pid();
    let nofile = attack::apply_unit_nofile(pid)?;
    let fds = Sampler::start(Duration::from_millis(100), move || {
        attack::open_fds(pid).ok().map(|n| n as f64)
    });

    // One address gets the per-address cap's worth, no more.
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 250));
    let config = attack::tls_config(&daemon)?;
    let mut from_one = Vec::new();
    for _ in 0..40 {
        if let Ok(conn) = attack::idle_tls(one, &daemon, config.clone()).await {
            from_one.push(conn);
        }
    }
    assert_eq!(from_one.len(), 32, "connections from one address");

    // The attack: 1,100 idle TLS connections, held 40 s.
    let started = Instant::now();
    let mut held = Vec::new();
    let failed = open_idle(&daemon, 0..IDLE_CONNECTIONS, &mut held).await?;
    let opening = started.elapsed();
    assert!(
        held.len() > 1_000,
        "the attack itself failed: {failed} failed"
    );

    // With every connection slot taken, a phone still gets in at once...
    let (mut phone, first) = phone_joins(&daemon, "First").await?;
    assert!(first < Duration::from_secs(5), "{first:?}");
    // ...and stays in while more idle connections push the older ones out.
    let more = IDLE_CONNECTIONS..IDLE_CONNECTIONS + SECOND_WAVE;
    let failed_more = open_idle(&daemon, more, &mut held).await?;
    let mute = serde_json::json!({"type": "mute", "audio": false, "video": true});
    wss::send(&mut phone, mute).await?;
    let roster = loop {
        match wss::next(&mut phone).await? {
            Some(m) if m["type"] == "roster" && m["participants"][0]["audio"] == false => break m,
            Some(_) => continue,
            None => bail!("the phone in the call was closed to make room"),
        }
    };
    assert_eq!(participants(&daemon.status()?), 1, "{roster}");
    drop(phone);
    // A phone joins again later in the attack.
    tokio::time::sleep_until((started + HOLD / 3).into()).await; // the attack's schedule
    let (_, second) = phone_joins(&daemon, "Second").await?;
    assert!(second < Duration::from_secs(5), "{second:?}");

    tokio::time::sleep_until((started + HOLD).into()).await; // holding is the attack
    let closed = held
        .iter_mut()
        .map(|c| c.closed_by_server())
        .filter(|&closed| closed)
        .count();
    let peak = fds.max().await;
    eprintln!(
        "{} + {} idle TLS connections opened ({failed} + {failed_more} failed), the first {} in {:.1} s; \
         after {HOLD:?} the daemon had closed {closed} of them; its fds peaked at {peak} (limit {nofile}); \
         phones joined in {first:?} and {second:?}",
        IDLE_CONNECTIONS,
        SECOND_WAVE,
        IDLE_CONNECTIONS,
        opening.as_secs_f64()
    );
    assert!(
        peak < nofile as f64,
        "fds {peak} reached the limit {nofile}"
    );
    assert_eq!(
        closed,
        held.len(),
        "idle connections outlived the idle limit"
    );
    let (_, third) = phone_joins(&daemon, "Third").await?;
    assert!(third < Duration::from_secs(5), "{third:?}");
    Ok(())
}
