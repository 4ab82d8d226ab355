//! The box's own leg in the SFU: its camera and mic, encoded once by GStreamer, written
//! straight into every phone's session; phones' frames handed to its TV and speaker; and the
//! keyframe requests and bitrate its encoder is asked for. No loopback WebRTC peer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{MediaData, MediaKind, MediaTime, Mid, Pt, Writer};

use super::peer::{Peer, TrackOut};
use super::{PhoneCodec, PhoneFrame, SfuCounters, SfuEvent};
use crate::call::room::ParticipantId;

/// The box's encoder is asked for a keyframe at most this often.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

pub(super) struct BoxLeg {
    /// The box's tracks (its mic and camera), offered to every phone.
    tracks: [(MediaKind, Mid); 2],
    /// Phones' frames for the TV and speaker, until polled.
    to_box: Vec<PhoneFrame>,
    /// Phone video tracks the box has started decoding: each needed a keyframe first.
    decoding: HashSet<(ParticipantId, Mid)>,
    keyframe_due: Option<Instant>,
    last_keyframe: Option<Instant>,
    /// The encoder's bitrate range, and what it was last told.
    min_kbps: u32,
    max_kbps: u32,
    bitrate_told: Option<u32>,
}

impl BoxLeg {
    pub fn new(min_kbps: u32, max_kbps: u32) -> BoxLeg {
        BoxLeg {
            tracks: [
                (MediaKind::Audio, Mid::from("boxa")),
                (MediaKind::Video, Mid::from("boxv")),
            ],
            to_box: Vec::new(),
            decoding: HashSet::new(),
            keyframe_due: None,
            last_keyframe: None,
            min_kbps,
            max_kbps: max_kbps.max(min_kbps),
            bitrate_told: None,
        }
    }

    pub fn min_kbps(&self) -> u32 {
        self.min_kbps
    }

    /// The box's tracks, as every phone subscribes to them.
    pub fn tracks_out(&self) -> impl Iterator<Item = TrackOut> + '_ {
        self.tracks
            .iter()
            .map(|(kind, mid)| TrackOut::new(ParticipantId::BOX, *mid, *kind))
    }

    /// Write one of the box's encoded frames to every connected phone subscribed to it.
    pub fn write(
        &self,
        peers: &mut [Peer],
        kind: MediaKind,
        rtp_time: MediaTime,
        data: &[u8],
        now: Instant,
        counters: &mut SfuCounters,
    ) {
        let Some(&(_, origin_mid)) = self.tracks.iter().find(|(k, _)| *k == kind) else {
            return;
        };
        let data: Arc<[u8]> = data.into();
        for peer in peers {
            // The box encodes only H.264: a phone that cannot decode it gets no box video.
            if !peer.connected || (kind == MediaKind::Video && !peer.decodes_h264) {
                continue;
            }
            let Some(mid) = peer.mid_for(ParticipantId::BOX, origin_mid) else {
                continue;
            };
            let Some(writer) = peer.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = payload_type(&writer, kind) else {
                continue;
            };
            match writer.write(pt, now, rtp_time, data.clone()) {
                Ok(()) => counters.box_frames_sent += 1,
                Err(e) => tracing::debug!("{}: box frame not written: {e}", peer.id),
            }
        }
    }

    /// A phone's frame reached the SFU: the box plays it. True when this is the first frame
    /// of a video track, which the box's decoder cannot start without a keyframe.
    pub fn hear(&mut self, origin: ParticipantId, data: &MediaData) -> bool {
        let first_video =
            data.params.spec().codec.is_video() && self.decoding.insert((origin, data.mid));
        if let Some(codec) = phone_codec(data) {
            self.to_box.push(PhoneFrame {
                from: origin,
                codec,
                data: data.data.clone(),
            });
        }
        first_video
    }

    /// A phone needs a keyframe from the box's encoder: at most one per interval.
    pub fn want_keyframe(&mut self, now: Instant) {
        let earliest = self
            .last_keyframe
            .map_or(now, |t| (t + KEYFRAME_INTERVAL).max(now));
        self.keyframe_due = Some(self.keyframe_due.map_or(earliest, |d| d.min(earliest)));
    }

    /// The box's decoders were made anew (the screen restarted): each video track needs a
    /// keyframe again, asked for at its next frame.
    pub fn decoders_restarted(&mut self) {
        self.decoding.clear();
    }

    pub fn forget(&mut self, id: ParticipantId) {
        self.decoding.retain(|(origin, _)| *origin != id);
    }

    /// Events for the box's media edge; returns when a keyframe request falls due.
    pub fn poll(
        &mut self,
        peers: &[Peer],
        now: Instant,
        events: &mut Vec<SfuEvent>,
    ) -> Option<Instant> {
        events.extend(self.to_box.drain(..).map(SfuEvent::ToBox));
        if let Some(kbps) = self.bitrate(peers) {
            events.push(SfuEvent::BoxBitrate(kbps));
        }
        match self.keyframe_due {
            Some(due) if due <= now => {
                events.push(SfuEvent::BoxKeyframe);
                self.keyframe_due = None;
                self.last_keyframe = Some(now);
                None
            }
            due => due,
        }
    }

    /// The slowest connected phone's estimate, when it moved more than 10 % from what the
    /// encoder was last told (board/README explains why the slowest).
    fn bitrate(&mut self, peers: &[Peer]) -> Option<u32> {
        let lowest = peers
            .iter()
            .filter(|p| p.connected)
            .filter_map(|p| p.estimate_kbps)
            .min()?
            .clamp(self.min_kbps, self.max_kbps);
        let moved = self
            .bitrate_told
            .is_none_or(|told| lowest.abs_diff(told) * 10 > told);
        if !moved {
            return None;
        }
        self.bitrate_told = Some(lowest);
        Some(lowest)
    }
}

fn phone_codec(data: &MediaData) -> Option<PhoneCodec> {
    match data.params.spec().codec {
        Codec::H264 => Some(PhoneCodec::H264),
        Codec::Vp8 => Some(PhoneCodec::Vp8),
        Codec::Opus => Some(PhoneCodec::Opus),
        _ => None,
    }
}

/// The payload type for the box's frames: Opus, or H.264 with packetization-mode 1
/// (constrained baseline preferred), as the box's encoder makes.
fn payload_type(writer: &Writer, kind: MediaKind) -> Option<Pt> {
    let mut best: Option<(u8, Pt)> = None;
    for params in writer.payload_params() {
        let spec = params.spec();
        let rank = match (kind, spec.codec) {
            (MediaKind::Audio, Codec::Opus) => 0,
            (MediaKind::Video, Codec::H264) if spec.format.packetization_mode == Some(1) => {
                match spec.format.profile_level_id {
                    Some(0x42e01f) => 0,
                    _ => 1,
                }
            }
            _ => continue,
        };
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, params.pt()));
        }
    }
    best.map(|(_, pt)| pt)
}
