//! The box's own leg in the SFU: its camera and mic, encoded once by GStreamer, packetized
//! once and written straight into every phone's session; phones' packets made whole frames
//! again for its TV and speaker; and the keyframe requests and bitrate its encoder is asked
//! for. No loopback WebRTC peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, MediaTime, Mid, Pt};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::Rtc;

use super::payload;
use super::peer::{Peer, TrackOut};
use super::reassembly::Reassembly;
use super::{PhoneCodec, PhoneFrame, SfuCounters, SfuEvent};
use crate::call::room::ParticipantId;

/// The largest RTP payload the box sends: with headers, SRTP and UDP it stays well under a
/// 1280-byte IPv6 path MTU (and a mobile link's tunnels).
const MAX_PAYLOAD: usize = 1100;

/// The box's encoder is asked for a keyframe at most this often.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

pub(super) struct BoxLeg {
    /// The box's tracks (its mic and camera), offered to every phone.
    tracks: [(MediaKind, Mid); 2],
    /// The next sequence number of each of the box's tracks, as `tracks`.
    next_seq: [u64; 2],
    /// Phones' frames for the TV and speaker, until polled.
    to_box: Vec<PhoneFrame>,
    /// Each phone track the box plays, being put back together.
    playing: HashMap<(ParticipantId, Mid), Reassembly>,
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
            next_seq: [0; 2],
            to_box: Vec::new(),
            playing: HashMap::new(),
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

    /// Packetize one of the box's encoded frames and write it to every connected phone
    /// subscribed to it.
    pub fn write(
        &mut self,
        peers: &mut [Peer],
        kind: MediaKind,
        rtp_time: MediaTime,
        data: &[u8],
        now: Instant,
        counters: &mut SfuCounters,
    ) {
        let Some(track) = self.tracks.iter().position(|(k, _)| *k == kind) else {
            return;
        };
        let origin_mid = self.tracks[track].1;
        let payloads: Vec<Arc<[u8]>> = match kind {
            MediaKind::Video => payload::packetize_h264(data, MAX_PAYLOAD)
                .into_iter()
                .map(Arc::from)
                .collect(),
            MediaKind::Audio => vec![Arc::from(data)],
        };
        if payloads.is_empty() {
            return;
        }
        let first_seq = self.next_seq[track];
        self.next_seq[track] += payloads.len() as u64;
        let time = rtp_time.numer() as u32;
        let video = kind == MediaKind::Video;
        for peer in peers {
            // The box encodes only H.264: a phone that cannot decode it gets no box video.
            if video && !peer.decodes_h264 {
                continue;
            }
            let Some(mid) = peer.mid_for(ParticipantId::BOX, origin_mid) else {
                continue;
            };
            let Some(pt) = payload_type(&peer.rtc, mid, kind) else {
                continue;
            };
            let last = payloads.len() - 1;
            let mut sent = false;
            for (i, payload) in payloads.iter().enumerate() {
                let seq = first_seq + i as u64;
                sent |= peer.send(ParticipantId::BOX, origin_mid, seq, |seq| {
                    RtpWrite::new(pt, seq, time, now, payload.clone())
                        .marker(video && i == last)
                        .nackable(video)
                });
            }
            if sent {
                counters.box_frames_sent += 1;
            }
        }
    }

    /// A phone's packet reached the SFU: the box plays it once its frame is whole. True when
    /// the phone should send a keyframe (the box's decoder starts, or lost its place).
    pub fn hear(
        &mut self,
        origin: ParticipantId,
        mid: Mid,
        params: PayloadParams,
        packet: &RtpPacket,
        now: Instant,
    ) -> bool {
        let Some(codec) = phone_codec(params.spec().codec) else {
            return false;
        };
        let assembled = self
            .playing
            .entry((origin, mid))
            .or_insert_with(|| Reassembly::new(params.spec().codec))
            .push(
                *packet.seq_no,
                packet.header.marker,
                packet.payload.clone(),
                now,
            );
        self.to_box
            .extend(assembled.frames.into_iter().map(|data| PhoneFrame {
                from: origin,
                codec,
                data: data.into(),
            }));
        assembled.wants_keyframe
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
        self.playing.values_mut().for_each(Reassembly::restart);
    }

    pub fn forget(&mut self, id: ParticipantId) {
        self.playing.retain(|(origin, _), _| *origin != id);
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

fn phone_codec(codec: Codec) -> Option<PhoneCodec> {
    match codec {
        Codec::H264 => Some(PhoneCodec::H264),
        Codec::Vp8 => Some(PhoneCodec::Vp8),
        Codec::Opus => Some(PhoneCodec::Opus),
        _ => None,
    }
}

/// The payload type for the box's frames on a phone's `mid`: Opus, or H.264 with
/// packetization-mode 1 (constrained baseline preferred), as the box's encoder makes.
fn payload_type(rtc: &Rtc, mid: Mid, kind: MediaKind) -> Option<Pt> {
    let negotiated = rtc.media(mid)?.remote_pts();
    let mut best: Option<(u8, Pt)> = None;
    for params in rtc.codec_config().params() {
        if !negotiated.contains(&params.pt()) {
            continue;
        }
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
