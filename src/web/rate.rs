//! Limits on what one signalling socket may send, and over-limit events logged once in a
//! while rather than once each. Pure where it can be: the time comes in.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages a socket may send per second, on average. A phone sends a handful in a call
/// (join, offer, an answer per renegotiation, a mute now and then, a pong every 10 s).
pub const MESSAGES_PER_SECOND: f64 = 10.0;
/// Messages a socket may send at once before the rate applies.
pub const MESSAGE_BURST: f64 = 30.0;
/// A socket over the rate for this long without a break is closed.
pub const OVER_RATE_LIMIT: Duration = Duration::from_secs(10);

/// A token bucket for one socket's inbound messages. Over the rate, a message waits for its
/// token (the socket is not read meanwhile, so TCP slows the sender down); a socket that
/// stays over the rate for [`OVER_RATE_LIMIT`] is to be closed.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    patience: Duration,
    tokens: f64,
    last: Instant,
    /// Since when every message has had to wait for its token.
    over_since: Option<Instant>,
    /// The last verdict was `After`: the next call is the same message, after its wait.
    waiting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    /// Take the message now.
    Now,
    /// Ask again after this long (the message's token is not there yet).
    After(Duration),
    /// Over the rate for too long: close the socket.
    Close,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, patience: Duration, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            patience,
            tokens: burst,
            last: now,
            over_since: None,
            waiting: false,
        }
    }

    /// The signalling socket's bucket.
    pub fn for_signalling(now: Instant) -> TokenBucket {
        TokenBucket::new(MESSAGES_PER_SECOND, MESSAGE_BURST, OVER_RATE_LIMIT, now)
    }

    /// A message arrived (or, after `After`, its wait is over): may it be taken?
    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            // Only a message that found its token waiting ends a run over the rate.
            if !self.waiting {
                self.over_since = None;
            }
            self.waiting = false;
            return Admit::Now;
        }
        let since = *self.over_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.patience {
            return Admit::Close;
        }
        self.waiting = true;
        // At least a millisecond: rounding must not make a wait of nothing.
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        Admit::After(wait.max(Duration::from_millis(1)))
    }
}

/// An event worth a log line, but not one per occurrence: the first is logged at once,
/// later ones are counted and summed up at most once per `every`.
#[derive(Debug)]
pub struct Occasional {
    every: Duration,
    state: Mutex<OccasionalState>,
}

#[derive(Debug, Default)]
struct OccasionalState {
    last: Option<Instant>,
    unlogged: u64,
}

impl Occasional {
    pub const fn new(every: Duration) -> Occasional {
        Occasional {
            every,
            state: Mutex::new(OccasionalState {
                last: None,
                unlogged: 0,
            }),
        }
    }

    /// One more event. Returns how many events the log line now due should report (this
    /// one included), or None when it is not time for a line yet.
    pub fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.unlogged += 1;
        let due = state
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if !due {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_then_messages_wait_for_the_rate() {
        let t = Instant::now();
        let mut bucket = TokenBucket::for_signalling(t);
        for _ in 0..30 {
            assert_eq!(bucket.admit(t), Admit::Now);
        }
        match bucket.admit(t) {
            Admit::After(wait) => assert!(wait > ms(90) && wait <= ms(100), "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(bucket.admit(t + ms(100)), Admit::Now);
        // A phone's pace (one message a second) never waits.
        let mut at = t + ms(100);
        for _ in 0..100 {
            at += ms(1000);
            assert_eq!(bucket.admit(at), Admit::Now);
        }
    }

    #[test]
    fn a_socket_over_the_rate_for_ten_seconds_is_closed() {
        let t = Instant::now();
        let mut bucket = TokenBucket::for_signalling(t);
        let mut now = t;
        let mut admitted = 0;
        // A sender that always has the next message ready: every message waits its turn.
        let closed_at = loop {
            match bucket.admit(now) {
                Admit::Now => admitted += 1,
                Admit::After(wait) => now += wait,
                Admit::Close => break now,
            }
            assert!(now < t + Duration::from_secs(60), "never closed");
        };
        assert!(closed_at >= t + OVER_RATE_LIMIT);
        assert!(
            closed_at <= t + OVER_RATE_LIMIT + ms(200),
            "{:?}",
            closed_at - t
        );
        // The burst, then ten per second.
        assert!((125..=135).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_pause_ends_a_run_over_the_rate() {
        let t = Instant::now();
        let mut bucket = TokenBucket::for_signalling(t);
        let mut now = t;
        for round in 0..5 {
            // Eight seconds over the rate...
            let until = now + Duration::from_secs(8);
            while now < until {
                // The next message, taken once its wait is over.
                loop {
                    match bucket.admit(now) {
                        Admit::Now => break,
                        Admit::After(wait) => now += wait,
                        Admit::Close => panic!("closed in round {round}"),
                    }
                }
            }
            // ...then a second's quiet.
            now += Duration::from_secs(1);
            assert_eq!(bucket.admit(now), Admit::Now);
        }
    }

    #[test]
    fn occasional_events_are_summed_up_once_a_minute() {
        let t = Instant::now();
        let log = Occasional::new(Duration::from_secs(60));
        assert_eq!(log.note(t), Some(1));
        for i in 1..100 {
            assert_eq!(log.note(t + ms(i)), None);
        }
        assert_eq!(log.note(t + Duration::from_secs(60)), Some(100));
        assert_eq!(log.note(t + Duration::from_secs(61)), None);
    }
}
