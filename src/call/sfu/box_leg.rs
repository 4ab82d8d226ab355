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

/// The box's tracks belong to no phone connection.
const BOX_SESSION: u64 = 0;

/// The largest RTP payload the box sends: with headers, SRTP and UDP it stays well under a
/// 1280-byte IPv6 path MTU (and a mobile link's tunnels).
const MAX_PAYLOAD: usize = 1100;

/// The box's encoder is asked for a keyframe at most this often.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// One encoding of the box's: its own sequence numbers, so that a phone sees no gap where
/// packets of another encoding went to other phones.
struct BoxStream {
    codec: Codec,
    /// Index into `BoxLeg::tracks`.
    track: usize,
    next_seq: u64,
    /// VP8's picture id, one per frame.
    next_picture: u16,
}

impl BoxStream {
    fn new(codec: Codec, track: usize) -> BoxStream {
        BoxStream {
            codec,
            track,
            next_seq: 0,
            next_picture: 0,
        }
    }
}

pub(super) struct BoxLeg {
    /// The box's tracks (its mic and camera), offered to every phone.
    tracks: [(MediaKind, Mid); 2],
    /// What the box sends on those tracks: Opus; H.264, and VP8 for phones without H.264.
    streams: [BoxStream; 3],
    /// Whether the camera was last told to encode VP8 as well.
    vp8_told: bool,
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
            streams: [
                BoxStream::new(Codec::Opus, 0),
                BoxStream::new(Codec::H264, 1),
                BoxStream::new(Codec::Vp8, 1),
            ],
            vp8_told: false,
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
            .map(|(kind, mid)| TrackOut::new(ParticipantId::BOX, BOX_SESSION, *mid, *kind))
    }

    /// Packetize one of the box's encoded frames and write it to every connected phone
    /// subscribed to it that decodes its codec: H.264 to those that can, VP8 to the others.
    pub fn write(
        &mut self,
        peers: &mut [Peer],
        codec: Codec,
        rtp_time: MediaTime,
        data: &[u8],
        now: Instant,
        counters: &mut SfuCounters,
    ) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.codec == codec) else {
            return;
        };
        let (kind, origin_mid) = self.tracks[stream.track];
        let payloads: Vec<Arc<[u8]>> = match codec {
            Codec::H264 => payload::packetize_h264(data, MAX_PAYLOAD),
            Codec::Vp8 => {
                stream.next_picture = stream.next_picture.wrapping_add(1);
                payload::packetize_vp8(data, stream.next_picture, MAX_PAYLOAD)
            }
            _ => vec![data.to_vec()],
        }
        .into_iter()
        .map(Arc::from)
        .collect();
        if payloads.is_empty() {
            return;
        }
        let first_seq = stream.next_seq;
        stream.next_seq += payloads.len() as u64;
        let time = rtp_time.numer() as u32;
        let video = kind == MediaKind::Video;
        for peer in peers {
            if video && (codec == Codec::H264) != peer.decodes_h264 {
                continue;
            }
            let Some(mid) = peer.mid_for(ParticipantId::BOX, origin_mid) else {
                continue;
            };
            let Some(pt) = payload_type(&peer.rtc, mid, codec) else {
                continue;
            };
            let last = payloads.len() - 1;
            let mut sent = false;
            for (i, payload) in payloads.iter().enumerate() {
                let seq = first_seq + i as u64;
                sent |= peer.send(ParticipantId::BOX, BOX_SESSION, origin_mid, seq, |seq| {
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
        let vp8 = self.vp8_wanted(peers);
        if vp8 != self.vp8_told {
            self.vp8_told = vp8;
            events.push(SfuEvent::BoxVp8(vp8));
        }
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

    /// Whether a phone that cannot decode H.264 takes the box's video: only then does the
    /// camera encode VP8 as well.
    fn vp8_wanted(&self, peers: &[Peer]) -> bool {
        let video_mid = self.tracks[1].1;
        peers.iter().any(|p| {
            !p.decodes_h264
                && p.lost.is_none()
                && p.mid_for(ParticipantId::BOX, video_mid).is_some()
        })
    }

    /// The slowest connected phone's estimate, when it moved more than 10 % from what the
    /// H.264 encoder was last told (board/README explains why the slowest).
    fn bitrate(&mut self, peers: &[Peer]) -> Option<u32> {
        let lowest = peers
            .iter()
            .filter(|p| p.connected && p.decodes_h264)
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

/// The payload type for the box's frames on a phone's `mid`: Opus, VP8, or H.264 with
/// packetization-mode 1 (constrained baseline preferred), as the box's encoder makes.
fn payload_type(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let negotiated = rtc.media(mid)?.remote_pts();
    let mut best: Option<(u8, Pt)> = None;
    for params in rtc.codec_config().params() {
        if !negotiated.contains(&params.pt()) {
            continue;
        }
        let spec = params.spec();
        let rank = match (codec, spec.codec) {
            (Codec::Opus, Codec::Opus) | (Codec::Vp8, Codec::Vp8) => 0,
            (Codec::H264, Codec::H264) if spec.format.packetization_mode == Some(1) => {
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
