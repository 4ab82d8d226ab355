//! Join-link tokens: the bytes as the token a phone presents, at several clocks, and as the
//! `invites.json` the box keeps. `@TOKEN@`, `@EXPIRED@` and `@REVOKED@` become real tokens.
//!
//! What must hold: no panic; a token opens the call only if it is exactly a good link's,
//! and every other answer is the right refusal.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth::call::invite::{InviteStore, Refusal};
use hearth::call::throttle::{redacted, GuessThrottle};

pub fn run(data: &[u8]) {
    let wall = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let mut store = InviteStore::default();
    let (_, good) = store.create("Gran", hour, wall);
    let (_, expired) = store.create("Old", hour, wall - 2 * hour);
    let (withdrawn, revoked) = store.create("Gone", hour, wall);
    store.revoke(&withdrawn.id).expect("the invite exists");

    let token = String::from_utf8_lossy(data)
        .replace("@TOKEN@", &good)
        .replace("@EXPIRED@", &expired)
        .replace("@REVOKED@", &revoked);
    let verdict = store.check(&token, wall).map(|invite| invite.name.clone());
    let expected = if token == good {
        Ok("Gran".to_string())
    } else if token == expired {
        Err(Refusal::Expired)
    } else if token == revoked {
        Err(Refusal::Revoked)
    } else {
        Err(Refusal::Unknown)
    };
    assert_eq!(verdict, expected, "token {token:?}");

    // Clocks at the edges. Far ahead, every link has expired. Before the links were made
    // (a box whose clock is behind), no link is checked against its creation time, so an
    // expired one opens too; a withdrawn or unknown one never does.
    let far = Duration::from_secs(u32::MAX as u64 * 100);
    assert!(
        store.check(&token, wall + far).is_err(),
        "{token:?} opens in the far future"
    );
    for when in [UNIX_EPOCH - hour, UNIX_EPOCH] {
        if store.check(&token, when).is_ok() {
            assert!(
                token == good || token == expired,
                "{token:?} opens at {when:?}"
            );
        }
    }

    // The same bytes as the invites file a box reads at start.
    if let Ok(mut kept) = serde_json::from_slice::<InviteStore>(data) {
        let _ = kept.check(&token, wall);
        kept.prune(wall);
        let _ = kept.revoke("0badcafe");
        let _ = serde_json::to_string(&kept).expect("a store serializes");
    }

    // The bytes as the address of a guesser (IPv6, and IPv4 from the first four): it is
    // throttled after its failures, and the log's form of it names the network, not the host.
    if data.len() >= 16 {
        let mut v6 = [0u8; 16];
        v6.copy_from_slice(&data[..16]);
        let mut other_host = v6;
        other_host[8..].iter_mut().for_each(|b| *b ^= 0xff);
        let v4 = [v6[0], v6[1], v6[2], v6[3]];
        let other_v4 = [v6[0], v6[1], v6[2], !v6[3]];
        for (ip, neighbour) in [
            (IpAddr::from(v6), IpAddr::from(other_host)),
            (IpAddr::from(v4), IpAddr::from(other_v4)),
        ] {
            let mut throttle = GuessThrottle::default();
            let now = std::time::Instant::now();
            for _ in 0..hearth::call::throttle::FAILURES_PER_WINDOW {
                throttle.record_failure(ip, now);
            }
            assert!(throttle.is_throttled(ip, now), "{ip}");
            assert_eq!(
                redacted(ip),
                redacted(neighbour),
                "the log tells hosts apart"
            );
        }
    }
}
