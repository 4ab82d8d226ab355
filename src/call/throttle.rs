//! Guessing join links is throttled per source address: after a few failed tokens in a
//! minute, an address is refused without its token being looked at, and its refusals are
//! logged once a minute, not once each. Pure: addresses and the time in, verdicts out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed tokens allowed from one address within `WINDOW`.
pub const FAILURES_PER_WINDOW: usize = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at once; beyond this the oldest are forgotten.
const MAX_ADDRESSES: usize = 4096;

/// Where attempts come from: an IPv4 address, or an IPv6 /64 (one home's whole network,
/// since a guesser there could use every address of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u32::from(v4) as u128),
                None => Source(u128::from(v6) & !((1u128 << 64) - 1)),
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct GuessThrottle {
    failures: HashMap<Source, VecDeque<Instant>>,
    last_logged: HashMap<Source, Instant>,
}

impl GuessThrottle {
    /// Whether `ip` has used up its failed attempts for now.
    pub fn is_throttled(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = Source::of(ip);
        let Some(times) = self.failures.get_mut(&source) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        times.len() >= FAILURES_PER_WINDOW
    }

    /// A failed token from `ip`. True when this address's refusals should be logged now
    /// (the first in a window).
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = Source::of(ip);
        if !self.failures.contains_key(&source) && self.failures.len() >= MAX_ADDRESSES {
            self.forget_oldest();
        }
        let times = self.failures.entry(source).or_default();
        times.push_back(now);
        if times.len() > FAILURES_PER_WINDOW {
            times.pop_front();
        }
        self.should_log(source, now)
    }

    /// A throttled attempt: logged like failures, once per window.
    pub fn record_throttled(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.should_log(Source::of(ip), now)
    }

    fn should_log(&mut self, source: Source, now: Instant) -> bool {
        let due = self
            .last_logged
            .get(&source)
            .is_none_or(|t| now.saturating_duration_since(*t) >= WINDOW);
        if due {
            if self.last_logged.len() >= MAX_ADDRESSES {
                self.last_logged
                    .retain(|_, t| now.saturating_duration_since(*t) < WINDOW);
            }
            self.last_logged.insert(source, now);
        }
        due
    }

    /// Drop what no longer matters (called from the call's timer).
    pub fn prune(&mut self, now: Instant) {
        self.failures.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < WINDOW)
        });
        self.last_logged
            .retain(|_, t| now.saturating_duration_since(*t) < WINDOW);
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .failures
            .iter()
            .min_by_key(|(_, times)| times.back().copied())
            .map(|(source, _)| *source);
        if let Some(source) = oldest {
            self.failures.remove(&source);
        }
    }
}

/// An address fit for the log at info level: the network, not the host.
pub fn redacted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.x")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_in_a_minute_is_throttled_and_others_are_not() {
        let t = Instant::now();
        let guesser: IpAddr = "203.0.113.9".parse().unwrap();
        let gran: IpAddr = "198.51.100.4".parse().unwrap();
        let mut throttle = GuessThrottle::default();
        let mut logged = 0;
        for i in 0..FAILURES_PER_WINDOW {
            assert!(!throttle.is_throttled(guesser, t));
            logged += throttle.record_failure(guesser, t + Duration::from_millis(i as u64)) as u32;
        }
        assert_eq!(logged, 1, "refusals are logged once a minute");
        assert!(throttle.is_throttled(guesser, t + Duration::from_secs(1)));
        assert!(!throttle.is_throttled(gran, t + Duration::from_secs(1)));
        assert!(!throttle.is_throttled(guesser, t + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn ipv6_is_counted_per_slash_64() {
        let t = Instant::now();
        let mut throttle = GuessThrottle::default();
        for i in 0..FAILURES_PER_WINDOW {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            throttle.record_failure(ip, t);
        }
        assert!(throttle.is_throttled("2001:db8:1:2::ffff".parse().unwrap(), t));
        assert!(!throttle.is_throttled("2001:db8:1:3::1".parse().unwrap(), t));
        assert_eq!(redacted("192.168.1.77".parse().unwrap()), "192.168.1.x");
    }
}
