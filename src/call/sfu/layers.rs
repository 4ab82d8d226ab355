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

    /// The last full window's rate however long ago: what a paused encoding would cost again.
    pub fn last_kbps(&self) -> Option<u32> {
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
    /// Not even its cheapest encoding fits beside the videos before it: none is sent, so
    /// that those and the call's audio get through.
    Paused,
}

/// A subscriber's choice for one track, with the time it has wanted a different one.
#[derive(Debug, Default)]
pub(super) struct Choice {
    pub target: Option<Rid>,
    /// Nothing of the track is sent (`target` is what it had before).
    pub paused: bool,
    /// What the estimate points to now (None: paused), if it differs, and since when.
    pending: Option<(Option<Option<Rid>>, Instant)>,
    pub reason: Option<LayerReason>,
}

/// What one subscriber's tracks should get, after the call's audio: a step at a time, round
/// the tracks in order (the box's first, as it is what everyone looks at), while they fit, so
/// everyone's small picture comes before anyone's full one. With `congested` (the phone
/// reports heavy loss), a track whose cheapest encoding does not fit is paused (None); the
/// first never is, so a phone on the weakest link still sees the box. Without it every track
/// gets at least its cheapest: an estimate alone is not trusted to take a picture away (on a
/// busy box, CPU delay reads as a congested link). But a track that loss paused (`paused[i]`)
/// comes back only once the estimate has room for it: brought back at once, it overran the
/// weak link again each time the loss was forgotten. `options[i]` lists track i's encodings,
/// cheapest first. Returns the index into `options[i]` each track should get.
pub(super) fn allocate(
    estimate_kbps: Option<u32>,
    audio_tracks: usize,
    options: &[Vec<Encoding>],
    congested: bool,
    paused: &[bool],
) -> Vec<Option<usize>> {
    let Some(estimate) = estimate_kbps else {
        // No estimate yet (the first second of a call): the best, as a browser would send.
        return options.iter().map(|o| o.len().checked_sub(1)).collect();
    };
    let budget = video_budget(estimate, audio_tracks);
    let mut chosen: Vec<Option<usize>> = vec![None; options.len()];
    let mut left = budget;
    let kept = |i: usize| i == 0 || !(congested || paused.get(i).copied().unwrap_or(false));
    for (i, o) in options.iter().enumerate().filter(|(i, _)| kept(*i)) {
        if let Some(cheapest) = o.first() {
            chosen[i] = Some(0);
            left -= cheapest.kbps as i64;
        }
    }
    loop {
        let mut raised = false;
        for (i, o) in options.iter().enumerate() {
            let next = chosen[i].map_or(0, |c| c + 1);
            let Some(encoding) = o.get(next) else {
                continue;
            };
            let now_costs = chosen[i].map_or(0, |c| o[c].kbps as i64);
            let step = encoding.kbps as i64 - now_costs;
            if step <= left {
                left -= step;
                chosen[i] = Some(next);
                raised = true;
            }
        }
        if !raised {
            return chosen;
        }
    }
}

/// What an estimate leaves for video, in kbit/s, after its headroom and `audio_tracks`.
pub(super) fn video_budget(estimate_kbps: u32, audio_tracks: usize) -> i64 {
    (estimate_kbps as f32 * HEADROOM) as i64 - (audio_tracks as u32 * AUDIO_KBPS) as i64
}

/// What a subscriber's bandwidth estimator should find out about, in kbit/s: (the rate that
/// would take its next better encoding, the rate of the best of everything). Without traffic
/// near them an estimate never grows past what is being sent, and a phone that once went down
/// to a cheap encoding would stay there. str0m pads what it sends up to the first.
///
/// A track in `follows_estimate` (the box's camera) has an encoder that follows the estimate,
/// so its best grows as the estimate does: it keeps headroom to grow into even at its best.
/// A phone's encoding at its best is what the phone sends: padding finds out nothing anyone
/// can use, and in a call of phones it was one packet in ten sent.
///
/// A `congested` link (it lost a fifth of what it was sent) is not padded at all: padding
/// would push out the audio and keyframes it carries. On a 300 kbit/s link beside three audio
/// streams, padding kept a fifth of everything lost and the box's small picture undecoded.
pub(super) fn probe_rates(
    audio_tracks: usize,
    options: &[Vec<Encoding>],
    chosen: &[Option<usize>],
    follows_estimate: &[bool],
    congested: bool,
) -> (u32, u32) {
    let audio = audio_tracks as u32 * AUDIO_KBPS;
    let costs = |o: &[Encoding], c: Option<usize>| c.and_then(|c| o.get(c)).map_or(0, |e| e.kbps);
    let sent: u32 = options.iter().zip(chosen).map(|(o, &c)| costs(o, c)).sum();
    let next_step = options
        .iter()
        .zip(chosen)
        .filter_map(|(o, &c)| {
            let next = o.get(c.map_or(0, |c| c + 1))?;
            Some(next.kbps.saturating_sub(costs(o, c)))
        })
        .min()
        .unwrap_or(0);
    let best: u32 = options
        .iter()
        .filter_map(|o| o.last())
        .map(|e| e.kbps)
        .sum();
    let gross = |kbps: u32| (kbps as f32 / HEADROOM) as u32;
    let minimum = if congested {
        0
    } else if next_step > 0 {
        gross(sent + next_step + audio)
    } else {
        let growing: u32 = options
            .iter()
            .zip(chosen)
            .zip(follows_estimate)
            .filter(|(_, &follows)| follows)
            .map(|((o, &c), _)| costs(o, c))
            .sum();
        if growing == 0 {
            // Nothing to find out: what is sent keeps its own estimate up, and padding up to
            // a figure of it (audio counted at `AUDIO_KBPS`, not as it is) only fills the
            // difference: about 2 % of the packets sent in a call of three phones.
            0
        } else {
            sent + audio + gross(growing) - growing
        }
    };
    (minimum, gross(best + audio))
}

impl Choice {
    /// Move towards `wanted` (an index into `options`, cheapest first; None: paused): down
    /// once the current has not fitted for `DOWN_AFTER`, up once the better one has fitted
    /// for `UP_AFTER`. Returns true when what is sent changed.
    pub fn update(&mut self, options: &[Encoding], wanted: Option<usize>, now: Instant) -> bool {
        let Some(best) = options.len().checked_sub(1) else {
            self.reason = None;
            return false;
        };
        // Levels: 0 is paused, i + 1 is options[i].
        let wanted_level = wanted.map_or(0, |w| w.min(best) + 1);
        let wanted_rid = wanted.map(|w| options[w.min(best)].rid);
        let current = if self.paused {
            Some(0)
        } else {
            options
                .iter()
                .position(|e| e.rid == self.target)
                .map(|i| i + 1)
        };
        let reason_if_there = if wanted.is_none() {
            LayerReason::Paused
        } else if best == 0 {
            LayerReason::Only
        } else if wanted_level > best {
            LayerReason::Best
        } else {
            LayerReason::Estimate
        };
        let take = |choice: &mut Choice| {
            match wanted_rid {
                Some(rid) => {
                    choice.target = rid;
                    choice.paused = false;
                }
                None => choice.paused = true,
            }
            choice.pending = None;
            choice.reason = Some(reason_if_there);
            true
        };
        let Some(current) = current else {
            // Nothing yet, or the encoding it had is gone: straight to what fits.
            return take(self);
        };
        if current == wanted_level {
            self.pending = None;
            self.reason = Some(reason_if_there);
            return false;
        }
        let since = match &self.pending {
            Some((rid, since)) if *rid == wanted_rid => *since,
            _ => {
                self.pending = Some((wanted_rid, now));
                now
            }
        };
        let up = wanted_level > current;
        let hold = if up { UP_AFTER } else { DOWN_AFTER };
        if now.saturating_duration_since(since) < hold {
            self.reason = Some(if up {
                LayerReason::Settling
            } else {
                reason_if_there
            });
            return false;
        }
        take(self)
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
        assert_eq!(
            allocate(Some(400), 2, &tracks, true, &[]),
            vec![Some(0), Some(0)]
        );
        assert_eq!(
            allocate(Some(1300), 2, &tracks, true, &[]),
            vec![Some(1), Some(0)],
            "the first raised first"
        );
        assert_eq!(
            allocate(Some(2000), 2, &tracks, true, &[]),
            vec![Some(1), Some(1)]
        );
        assert_eq!(
            allocate(None, 2, &tracks, true, &[]),
            vec![Some(1), Some(1)],
            "no estimate yet"
        );
        // Room for one small picture on a lossy link: the first gets it, the second is paused.
        assert_eq!(
            allocate(Some(300), 2, &tracks, true, &[]),
            vec![Some(0), None]
        );
        // The first is never paused, however weak.
        assert_eq!(
            allocate(Some(50), 2, &tracks, true, &[]),
            vec![Some(0), None]
        );
        // Without loss, a low estimate takes no picture away.
        assert_eq!(
            allocate(Some(50), 2, &tracks, false, &[false, false]),
            vec![Some(0), Some(0)]
        );
        // Once the loss is over, what it paused stays paused until the estimate has room...
        assert_eq!(
            allocate(Some(300), 2, &tracks, false, &[false, true]),
            vec![Some(0), None]
        );
        // ...and then comes back (0.85 * 500 - 2 * 50 = 325 for video: 100 + 100 fit).
        assert_eq!(
            allocate(Some(500), 2, &tracks, false, &[false, true]),
            vec![Some(0), Some(0)]
        );
        // The first is never paused, so never held back either.
        assert_eq!(
            allocate(Some(50), 2, &tracks, false, &[true, false]),
            vec![Some(0), Some(0)]
        );
    }

    #[test]
    fn a_paused_video_comes_back_only_after_it_has_fitted_a_while() {
        let t0 = Instant::now();
        let options = vec![enc("l", 100), enc("h", 800)];
        let mut c = Choice::default();
        assert!(c.update(&options, Some(0), t0));
        assert!(!c.update(&options, None, t0 + Duration::from_millis(100)));
        assert!(c.update(&options, None, t0 + Duration::from_millis(1000)));
        assert!(c.paused);
        assert_eq!(c.reason, Some(LayerReason::Paused));
        assert!(!c.update(&options, Some(0), t0 + Duration::from_secs(2)));
        assert_eq!(c.reason, Some(LayerReason::Settling));
        assert!(c.update(&options, Some(0), t0 + Duration::from_millis(5100)));
        assert!(!c.paused);
        assert_eq!(c.target, Some(Rid::from("l")));
    }

    #[test]
    fn a_choice_goes_down_soon_and_up_only_after_it_has_fitted_a_while() {
        let t0 = Instant::now();
        let options = vec![enc("l", 100), enc("h", 800)];
        let mut c = Choice::default();
        assert!(c.update(&options, Some(1), t0));
        assert_eq!(c.target, Some(Rid::from("h")));
        // The estimate drops: not at once, but within DOWN_AFTER.
        assert!(!c.update(&options, Some(0), t0 + Duration::from_millis(100)));
        assert!(!c.update(&options, Some(0), t0 + Duration::from_millis(500)));
        assert!(c.update(&options, Some(0), t0 + Duration::from_millis(950)));
        assert_eq!(c.target, Some(Rid::from("l")));
        assert_eq!(c.reason, Some(LayerReason::Estimate));
        // It recovers, then flaps back before UP_AFTER: still low, and the wait starts over.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!c.update(&options, Some(1), t1));
        assert_eq!(c.reason, Some(LayerReason::Settling));
        assert!(!c.update(&options, Some(0), t1 + Duration::from_secs(2)));
        assert!(!c.update(&options, Some(1), t1 + Duration::from_millis(2500)));
        assert!(!c.update(&options, Some(1), t1 + Duration::from_millis(5000)));
        assert!(c.update(&options, Some(1), t1 + Duration::from_millis(5600)));
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

    #[test]
    fn padding_only_where_an_estimate_can_be_used() {
        let phone = || vec![enc("l", 100), enc("h", 500)];
        let box_camera = || vec![enc("l", 100), enc("h", 1000)];
        // Below its best: padded towards the next step, everything with headroom.
        let (minimum, desired) = probe_rates(
            2,
            &[phone(), phone()],
            &[Some(0), Some(1)],
            &[false, false],
            false,
        );
        assert_eq!(minimum, ((600 + 400 + 100) as f32 / HEADROOM) as u32);
        assert_eq!(desired, ((1000 + 100) as f32 / HEADROOM) as u32);
        // Every phone at its best: nothing padded.
        let (minimum, _) = probe_rates(
            2,
            &[phone(), phone()],
            &[Some(1), Some(1)],
            &[false, false],
            false,
        );
        assert_eq!(minimum, 0);
        // The box's camera at its best still has room to grow into.
        let (minimum, _) = probe_rates(
            2,
            &[box_camera(), phone()],
            &[Some(1), Some(1)],
            &[true, false],
            false,
        );
        assert_eq!(
            minimum,
            1000 + 500 + 100 + ((1000.0 / HEADROOM) as u32 - 1000)
        );
        // A congested link below its best: no padding, while the best is still wanted.
        let (minimum, desired) = probe_rates(
            2,
            &[phone(), phone()],
            &[Some(0), Some(1)],
            &[false, false],
            true,
        );
        assert_eq!(minimum, 0);
        assert_eq!(desired, ((1000 + 100) as f32 / HEADROOM) as u32);
    }
}
