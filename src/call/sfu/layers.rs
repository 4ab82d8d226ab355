//! Which encoding of a track each subscriber gets. A phone that simulcasts sends two or three
//! encodings of its camera (each with its RTP stream id, `rid`), the box encodes a high and a
//! low one; each subscriber gets one of them, chosen from its own bandwidth estimate, and
//! switched only at a keyframe of the encoding it switches to. Pure: rates, estimates and the
//! time are inputs.

use std::time::{Duration, Instant};

use str0m::media::Rid;
use str0m::rtp::SeqNo;

/// A subscriber's share of its estimate kept free: estimates are optimistic, and audio, RTCP
/// and resends need room too.
const HEADROOM: f32 = 0.85;
/// What each audio track is reckoned to take (Opus at ~32 kbit/s plus packet overhead).
pub(super) const AUDIO_KBPS: u32 = 50;
/// A better encoding is taken only once it has fitted for this long...
const UP_AFTER: Duration = Duration::from_secs(3);
/// ...and a worse one once the current has not fitted for this long.
const DOWN_AFTER: Duration = Duration::from_millis(800);
/// The window a publisher's encoding rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Bytes per encoding over the last window: what each encoding costs a subscriber.
#[derive(Debug, Default)]
pub(super) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    kbps: Option<u32>,
    last_heard: Option<Instant>,
}

impl RateMeter {
    pub fn add(&mut self, bytes: usize, now: Instant) {
        self.last_heard = Some(now);
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let bits = self.bytes * 8;
            self.kbps = Some((bits / elapsed.as_millis().max(1) as u64) as u32);
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += bytes as u64;
    }

    /// The last full window's rate; None before one has passed or once the encoding has been
    /// silent for two windows (a publisher drops its top encoding on a weak uplink).
    pub fn kbps(&self, now: Instant) -> Option<u32> {
        let heard = self.last_heard?;
        if now.saturating_duration_since(heard) > 2 * RATE_WINDOW {
            return None;
        }
        self.kbps
    }
}

/// One encoding a subscriber could get, with what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Encoding {
    pub rid: Option<Rid>,
    pub kbps: u32,
}

/// Why a subscriber gets the encoding it gets, for `hearth status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerReason {
    /// The track has one encoding only.
    Only,
    /// The best there is fits the subscriber's estimate.
    Best,
    /// The estimate does not fit a better one.
    Estimate,
    /// Waiting for a better one to fit for long enough.
    Settling,
}

/// A subscriber's choice for one track, with the time it has wanted a different one.
#[derive(Debug, Default)]
pub(super) struct Choice {
    pub target: Option<Rid>,
    /// The encoding the estimate points to now, if it differs from the target, and since when.
    pending: Option<(Option<Rid>, Instant)>,
    pub reason: Option<LayerReason>,
}

/// What one subscriber's tracks should get: every track at least its cheapest encoding, then
/// better ones in order (the box's first, as it is what everyone looks at), while they fit.
/// `options[i]` lists track i's encodings, cheapest first; `current[i]` is what it gets now.
/// Returns the index into `options[i]` each track should get.
pub(super) fn allocate(
    estimate_kbps: Option<u32>,
    audio_tracks: usize,
    options: &[Vec<Encoding>],
) -> Vec<usize> {
    let Some(estimate) = estimate_kbps else {
        // No estimate yet (the first second of a call): the best, as a browser would send.
        return options.iter().map(|o| o.len().saturating_sub(1)).collect();
    };
    let budget = (estimate as f32 * HEADROOM) as i64 - (audio_tracks as u32 * AUDIO_KBPS) as i64;
    let mut chosen = vec![0; options.len()];
    let mut left = budget
        - options
            .iter()
            .filter_map(|o| o.first())
            .map(|e| e.kbps as i64)
            .sum::<i64>();
    // Raise one track a step at a time, round the tracks, so one track does not take all.
    loop {
        let mut raised = false;
        for (i, o) in options.iter().enumerate() {
            let Some(next) = o.get(chosen[i] + 1) else {
                continue;
            };
            let step = next.kbps as i64 - o[chosen[i]].kbps as i64;
            if step <= left {
                left -= step;
                chosen[i] += 1;
                raised = true;
            }
        }
        if !raised {
            return chosen;
        }
    }
}

/// What a subscriber's bandwidth estimator should find out about, in kbit/s: (the rate that
/// would take its next better encoding, the rate of the best of everything). Without traffic
/// near them an estimate never grows past what is being sent, and a phone that once went down
/// to a cheap encoding would stay there.
pub(super) fn probe_rates(
    audio_tracks: usize,
    options: &[Vec<Encoding>],
    chosen: &[usize],
) -> (u32, u32) {
    let audio = audio_tracks as u32 * AUDIO_KBPS;
    let sent: u32 = options
        .iter()
        .zip(chosen)
        .filter_map(|(o, &c)| o.get(c))
        .map(|e| e.kbps)
        .sum();
    let next_step = options
        .iter()
        .zip(chosen)
        .filter_map(|(o, &c)| Some(o.get(c + 1)?.kbps.saturating_sub(o[c].kbps)))
        .min()
        .unwrap_or(0);
    let best: u32 = options
        .iter()
        .filter_map(|o| o.last())
        .map(|e| e.kbps)
        .sum();
    let gross = |kbps: u32| (kbps as f32 / HEADROOM) as u32;
    (gross(sent + next_step + audio), gross(best + audio))
}

impl Choice {
    /// Move towards `wanted` (an index into `options`, cheapest first): down once the current
    /// has not fitted for `DOWN_AFTER`, up once the better one has fitted for `UP_AFTER`.
    /// Returns true when the target changed.
    pub fn update(&mut self, options: &[Encoding], wanted: usize, now: Instant) -> bool {
        let Some(best) = options.len().checked_sub(1) else {
            self.reason = None;
            return false;
        };
        let wanted_rid = options[wanted.min(best)].rid.clone();
        let current = options.iter().position(|e| e.rid == self.target);
        let reason_if_there = if best == 0 {
            LayerReason::Only
        } else if wanted >= best {
            LayerReason::Best
        } else {
            LayerReason::Estimate
        };
        let Some(current) = current else {
            // Nothing yet, or the encoding it had is gone: straight to what fits.
            self.target = wanted_rid;
            self.pending = None;
            self.reason = Some(reason_if_there);
            return true;
        };
        if current == wanted {
            self.pending = None;
            self.reason = Some(reason_if_there);
            return false;
        }
        let since = match &self.pending {
            Some((rid, since)) if *rid == wanted_rid => *since,
            _ => {
                self.pending = Some((wanted_rid.clone(), now));
                now
            }
        };
        let hold = if wanted > current {
            UP_AFTER
        } else {
            DOWN_AFTER
        };
        if now.saturating_duration_since(since) < hold {
            self.reason = Some(if wanted > current {
                LayerReason::Settling
            } else {
                reason_if_there
            });
            return false;
        }
        self.target = wanted_rid;
        self.pending = None;
        self.reason = Some(reason_if_there);
        true
    }
}

/// A subscriber's numbering of one track: continuous sequence numbers and timestamps while
/// the encoding it is fed from changes. The first packet it gets is numbered below 65536, as
/// SRTP needs (its rollover counter starts at 0).
#[derive(Debug, Default)]
pub(super) struct Renumber {
    /// Added (wrapping) to an input sequence number of the current encoding.
    seq_offset: u64,
    /// The first input sequence number of the current encoding: older packets of it came
    /// before the switch and are not forwarded.
    start: u64,
    highest: Option<u64>,
    ts_offset: u32,
    /// The last timestamp written and when.
    last_ts: Option<(u32, Instant)>,
}

impl Renumber {
    /// From this packet on, the input is another encoding (or the first one). `clock` is the
    /// track's RTP clock rate.
    pub fn begin(&mut self, seq: u64, ts: u32, clock: u32, now: Instant) {
        self.start = seq;
        match self.highest {
            None => self.seq_offset = (seq & !0xFFFF).wrapping_neg(),
            Some(highest) => self.seq_offset = (highest + 1).wrapping_sub(seq),
        }
        self.ts_offset = match self.last_ts {
            None => 0,
            Some((last, at)) => {
                // The new encoding's clock has its own origin: carry on from the last
                // timestamp written, advanced by the time that has passed.
                let elapsed = now.saturating_duration_since(at).as_micros() as u64;
                let ticks = (elapsed * clock as u64 / 1_000_000).max(1) as u32;
                last.wrapping_add(ticks).wrapping_sub(ts)
            }
        };
    }

    /// The output numbering of a packet of the current encoding; None for one from before
    /// `begin`.
    pub fn map(&mut self, seq: u64, ts: u32, now: Instant) -> Option<(SeqNo, u32)> {
        if seq < self.start {
            return None;
        }
        let out = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        if self.highest.is_none_or(|h| out > h) {
            self.highest = Some(out);
            self.last_ts = Some((out_ts, now));
        }
        Some((SeqNo::from(out), out_ts))
    }

    pub fn started(&self) -> bool {
        self.highest.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(rid: &str, kbps: u32) -> Encoding {
        Encoding {
            rid: Some(Rid::from(rid)),
            kbps,
        }
    }

    #[test]
    fn the_first_packet_is_numbered_below_65536_and_the_rest_follow() {
        let now = Instant::now();
        let mut r = Renumber::default();
        r.begin(70_000, 1000, 90_000, now);
        assert_eq!(r.map(70_000, 1000, now), Some((SeqNo::from(4464), 1000)));
        assert_eq!(r.map(70_001, 4000, now), Some((SeqNo::from(4465), 4000)));
        assert_eq!(r.map(69_999, 900, now), None, "from before the start");
    }

    #[test]
    fn a_switch_carries_on_the_numbering_without_a_jump_or_a_repeat() {
        let t0 = Instant::now();
        let mut r = Renumber::default();
        r.begin(100, 5000, 90_000, t0);
        for i in 0..10 {
            r.map(100 + i, 5000 + i as u32 * 3000, t0);
        }
        // The other encoding numbers from somewhere else entirely, 40 ms later.
        let t1 = t0 + Duration::from_millis(40);
        r.begin(50_000, 999_999, 90_000, t1);
        let (seq, ts) = r.map(50_000, 999_999, t1).unwrap();
        assert_eq!(*seq, 110);
        assert_eq!(ts, 5000 + 9 * 3000 + 3600);
        assert_eq!(
            r.map(50_001, 1_002_999, t1).unwrap(),
            (SeqNo::from(111), ts + 3000)
        );
        assert_eq!(r.map(49_999, 0, t1), None);
    }

    #[test]
    fn a_weak_estimate_gets_the_cheap_encodings_and_a_good_one_the_best() {
        let tracks = vec![
            vec![enc("l", 100), enc("h", 800)],
            vec![enc("l", 100), enc("h", 600)],
        ];
        assert_eq!(allocate(Some(400), 2, &tracks), vec![0, 0]);
        assert_eq!(
            allocate(Some(1300), 2, &tracks),
            vec![1, 0],
            "the first raised first"
        );
        assert_eq!(allocate(Some(2000), 2, &tracks), vec![1, 1]);
        assert_eq!(allocate(None, 2, &tracks), vec![1, 1], "no estimate yet");
        // Never below the cheapest, however weak.
        assert_eq!(allocate(Some(50), 2, &tracks), vec![0, 0]);
    }

    #[test]
    fn a_choice_goes_down_soon_and_up_only_after_it_has_fitted_a_while() {
        let t0 = Instant::now();
        let options = vec![enc("l", 100), enc("h", 800)];
        let mut c = Choice::default();
        assert!(c.update(&options, 1, t0));
        assert_eq!(c.target, Some(Rid::from("h")));
        // The estimate drops: not at once, but within DOWN_AFTER.
        assert!(!c.update(&options, 0, t0 + Duration::from_millis(100)));
        assert!(!c.update(&options, 0, t0 + Duration::from_millis(500)));
        assert!(c.update(&options, 0, t0 + Duration::from_millis(950)));
        assert_eq!(c.target, Some(Rid::from("l")));
        assert_eq!(c.reason, Some(LayerReason::Estimate));
        // It recovers, then flaps back before UP_AFTER: still low, and the wait starts over.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!c.update(&options, 1, t1));
        assert_eq!(c.reason, Some(LayerReason::Settling));
        assert!(!c.update(&options, 0, t1 + Duration::from_secs(2)));
        assert!(!c.update(&options, 1, t1 + Duration::from_millis(2500)));
        assert!(!c.update(&options, 1, t1 + Duration::from_millis(5000)));
        assert!(c.update(&options, 1, t1 + Duration::from_millis(5600)));
        assert_eq!(c.target, Some(Rid::from("h")));
        assert_eq!(c.reason, Some(LayerReason::Best));
    }

    #[test]
    fn a_meter_reports_the_last_window_and_forgets_a_silent_encoding() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=50 {
            m.add(1000, t0 + Duration::from_millis(i * 20));
        }
        // 50 packets of 1000 bytes in one second: 400 kbit/s.
        assert_eq!(m.kbps(t0 + Duration::from_secs(1)), Some(400));
        assert_eq!(m.kbps(t0 + Duration::from_secs(4)), None);
    }
}
