//! One phone track's packets back into whole frames, in order, for the box's decoders.
//! Packets come out of order and with holes (the SFU's NACKs fill most); a frame leaves only
//! when all its packets are here, and a hole that stays past `PATIENCE` is given up: audio
//! skips it, video waits for the keyframe it asks for, so the TV never decodes a broken
//! picture.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;

use super::payload;

/// How long a hole may wait for its resend before the frames behind it go on without it.
const VIDEO_PATIENCE: Duration = Duration::from_millis(400);
const AUDIO_PATIENCE: Duration = Duration::from_millis(120);
/// Packets held at most (about 2 s of video): the rest is given up, never memory.
const MAX_HELD: usize = 600;

struct Held {
    marker: bool,
    payload: Arc<[u8]>,
    arrived: Instant,
}

/// What one packet let out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    /// Whole frames, in order.
    pub frames: Vec<Vec<u8>>,
    /// The publisher should send a keyframe: video starts or resumes only from one.
    pub wants_keyframe: bool,
}

pub struct Reassembly {
    codec: Codec,
    held: BTreeMap<u64, Held>,
    /// Where the next frame starts; None until a frame boundary is seen.
    next: Option<u64>,
    /// Video after a start or a lost frame: nothing is decodable until a keyframe.
    needs_keyframe: bool,
}

impl Reassembly {
    pub fn new(codec: Codec) -> Reassembly {
        Reassembly {
            codec,
            held: BTreeMap::new(),
            next: None,
            needs_keyframe: codec.is_video(),
        }
    }

    /// The decoder was made anew: video waits for a keyframe again.
    pub fn restart(&mut self) {
        self.needs_keyframe = self.codec.is_video();
    }

    /// One packet by its extended sequence number; `marker` is the RTP marker bit.
    pub fn push(&mut self, seq: u64, marker: bool, payload: Arc<[u8]>, now: Instant) -> Assembled {
        let mut out = Assembled::default();
        let video = self.codec.is_video();
        // Every Opus packet is a frame of its own.
        let ends_frame = marker || !video;
        match self.next {
            Some(next) if seq < next => return out,
            None if video => {
                // The first frame boundary: what follows it is a whole frame.
                if ends_frame {
                    self.next = Some(seq + 1);
                    self.held.retain(|&s, _| s > seq);
                } else {
                    self.held.insert(
                        seq,
                        Held {
                            marker,
                            payload,
                            arrived: now,
                        },
                    );
                }
                out.wants_keyframe = self.needs_keyframe;
                return self.trim(out);
            }
            None => self.next = Some(seq),
            Some(_) => {}
        }
        self.held.insert(
            seq,
            Held {
                marker: ends_frame,
                payload,
                arrived: now,
            },
        );
        self.release(&mut out);
        self.give_up_stale(now, &mut out);
        self.trim(out)
    }

    /// Let out every whole frame at the front.
    fn release(&mut self, out: &mut Assembled) {
        while let Some(next) = self.next {
            let mut end = next;
            loop {
                match self.held.get(&end) {
                    Some(h) if h.marker => break,
                    Some(_) => end += 1,
                    None => return,
                }
            }
            let packets: Vec<Held> = (next..=end).filter_map(|s| self.held.remove(&s)).collect();
            self.next = Some(end + 1);
            let payloads: Vec<&[u8]> = packets.iter().map(|h| &*h.payload).collect();
            let keyframe = payload::starts_keyframe(self.codec, payloads[0]);
            if self.needs_keyframe && !keyframe {
                // Asked again at every frame dropped: the SFU merges the requests while one
                // is on its way, and a request lost on the way is made again.
                out.wants_keyframe = true;
                continue;
            }
            self.needs_keyframe = false;
            match payload::depacketize(self.codec, &payloads) {
                Some(frame) => out.frames.push(frame),
                None => self.lost_video(out),
            }
        }
    }

    /// A hole older than the patience is given up: the frames behind it go on.
    fn give_up_stale(&mut self, now: Instant, out: &mut Assembled) {
        let patience = if self.codec.is_video() {
            VIDEO_PATIENCE
        } else {
            AUDIO_PATIENCE
        };
        let Some((&oldest, held)) = self.held.first_key_value() else {
            return;
        };
        if now.saturating_duration_since(held.arrived) < patience && self.held.len() < MAX_HELD {
            return;
        }
        // The held packets before the first frame end after the hole belong to a frame
        // that misses a packet.
        let Some((&end, _)) = self.held.iter().find(|(_, h)| h.marker) else {
            self.held.clear();
            self.next = None;
            self.lost_video(out);
            return;
        };
        let resume = if self.codec.is_video() {
            end + 1
        } else {
            oldest
        };
        self.held.retain(|&s, _| s >= resume);
        self.next = Some(resume);
        self.lost_video(out);
        self.release(out);
    }

    fn lost_video(&mut self, out: &mut Assembled) {
        if self.codec.is_video() {
            self.needs_keyframe = true;
            out.wants_keyframe = true;
        }
    }

    fn trim(&mut self, out: Assembled) -> Assembled {
        while self.held.len() > MAX_HELD {
            self.held.pop_first();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idr() -> Arc<[u8]> {
        Arc::from(&[0x65, 1][..])
    }
    fn delta(n: u8) -> Arc<[u8]> {
        Arc::from(&[0x41, n][..])
    }
    fn fu(start: bool, end: bool, byte: u8) -> Arc<[u8]> {
        let header = 0x01 | if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
        Arc::from(&[0x5C, header, byte][..])
    }

    #[test]
    fn video_starts_at_a_keyframe_and_frames_come_out_whole_and_in_order() {
        let t = Instant::now();
        let mut r = Reassembly::new(Codec::H264);
        let first = r.push(10, true, delta(0), t);
        assert!(first.wants_keyframe && first.frames.is_empty());
        assert!(
            r.push(11, true, delta(1), t).frames.is_empty(),
            "no keyframe yet"
        );
        // A keyframe, then a two-packet frame whose packets arrive swapped.
        assert_eq!(
            r.push(12, true, idr(), t).frames,
            vec![vec![0, 0, 0, 1, 0x65, 1]]
        );
        assert!(r.push(14, true, fu(false, true, 9), t).frames.is_empty());
        let out = r.push(13, false, fu(true, false, 8), t);
        assert_eq!(out.frames, vec![vec![0, 0, 0, 1, 0x41, 8, 9]]);
        assert!(!out.wants_keyframe);
    }

    #[test]
    fn a_hole_waits_for_its_resend_then_video_waits_for_a_keyframe() {
        let t = Instant::now();
        let mut r = Reassembly::new(Codec::H264);
        r.push(1, true, delta(0), t);
        r.push(2, true, idr(), t);
        // 3 is lost; 4 and 5 wait behind it.
        assert!(r.push(4, true, delta(4), t).frames.is_empty());
        let resent = r.push(3, true, delta(3), t + Duration::from_millis(100));
        assert_eq!(resent.frames.len(), 2, "the resend lets both out");
        // 6 never comes: after the patience the frames behind it are not decodable.
        r.push(7, true, delta(7), t + Duration::from_millis(200));
        let late = r.push(8, true, delta(8), t + Duration::from_millis(700));
        assert!(late.wants_keyframe && late.frames.is_empty());
        assert!(r
            .push(9, true, delta(9), t + Duration::from_millis(710))
            .frames
            .is_empty());
        assert_eq!(
            r.push(10, true, idr(), t + Duration::from_millis(720))
                .frames
                .len(),
            1
        );
    }

    #[test]
    fn audio_skips_a_lost_packet_after_a_short_wait() {
        let t = Instant::now();
        let mut r = Reassembly::new(Codec::Opus);
        let opus = |n: u8| Arc::from(&[n][..]);
        assert_eq!(r.push(100, false, opus(0), t).frames, vec![vec![0]]);
        assert!(r.push(102, false, opus(2), t).frames.is_empty());
        let later = r.push(103, false, opus(3), t + Duration::from_millis(150));
        assert_eq!(later.frames, vec![vec![2], vec![3]]);
        assert!(!later.wants_keyframe);
        assert!(
            r.push(101, false, opus(1), t).frames.is_empty(),
            "too late now"
        );
    }

    #[test]
    fn a_stream_of_holes_never_holds_more_than_the_limit() {
        let t = Instant::now();
        let mut r = Reassembly::new(Codec::H264);
        r.push(0, true, idr(), t);
        for seq in (2..5000).step_by(2) {
            r.push(seq, false, delta(0), t);
        }
        assert!(r.held.len() <= MAX_HELD);
    }
}
