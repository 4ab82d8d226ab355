//! The box's own leg in the SFU: its camera and mic, encoded once by GStreamer, packetized
//! once and written straight into every phone's session; phones' packets made whole frames
//! again for its TV and speaker; and the keyframe requests and bitrate its encoder is asked
//! for. No loopback WebRTC peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, MediaTime, Mid, Pt, Rid};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::Rtc;

use super::layers::{self, Encoding, RateMeter};
use super::payload;
use super::peer::{Outgoing, Peer, TrackOut};
use super::reassembly::Reassembly;
use super::{PhoneCodec, PhoneFrame, SfuCounters, SfuEvent};
use crate::call::room::ParticipantId;

/// The largest RTP payload the box sends: with headers, SRTP and UDP it stays well under a
/// 1280-byte IPv6 path MTU (and a mobile link's tunnels).
const MAX_PAYLOAD: usize = 1100;

/// The box's encoder is asked for a keyframe at most this often.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// The share of the slowest estimate (among phones that get it) the full-size encoder aims at.
const HIGH_SHARE: f32 = 0.6;

/// The box's tracks belong to no phone connection.
pub(super) const BOX_SESSION: u64 = 0;

/// What the low H.264 encoding (half the camera's size) aims at at most, and at least: for a
/// phone on a weak link it follows what that link has left after audio.
pub const LOW_KBPS: u32 = 100;
const LOW_MIN_KBPS: u32 = 40;
/// What the VP8 encoding aims at, for phones without H.264.
pub const VP8_KBPS: u32 = 400;

/// One of the encodings the box's camera and mic make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxEncoding {
    Opus,
    /// The camera at full size, at the bitrate the SFU asks for.
    H264,
    /// The camera at half size, for phones whose link does not carry the full one.
    H264Low,
    /// Half size, for phones that cannot decode H.264.
    Vp8,
}

impl BoxEncoding {
    fn codec(self) -> Codec {
        match self {
            BoxEncoding::Opus => Codec::Opus,
            BoxEncoding::H264 | BoxEncoding::H264Low => Codec::H264,
            BoxEncoding::Vp8 => Codec::Vp8,
        }
    }

    /// The name a subscriber's choice knows it by (like a phone's simulcast rid).
    fn rid(self) -> Option<Rid> {
        match self {
            BoxEncoding::Opus => None,
            BoxEncoding::H264 => Some(Rid::from("h")),
            BoxEncoding::H264Low => Some(Rid::from("l")),
            BoxEncoding::Vp8 => Some(Rid::from("v")),
        }
    }
}

/// One encoding of the box's: its own sequence numbers, so that a phone sees no gap where
/// packets of another encoding went to other phones.
struct BoxStream {
    encoding: BoxEncoding,
    /// What the encoding has cost lately: what a phone that gets it must carry.
    meter: RateMeter,
    /// Index into `BoxLeg::tracks`.
    track: usize,
    next_seq: u64,
    /// VP8's picture id, one per frame.
    next_picture: u16,
}

impl BoxStream {
    fn new(encoding: BoxEncoding, track: usize) -> BoxStream {
        BoxStream {
            encoding,
            meter: RateMeter::default(),
            track,
            next_seq: 0,
            next_picture: 0,
        }
    }
}

pub(super) struct BoxLeg {
    /// The box's tracks (its mic and camera), offered to every phone.
    tracks: [(MediaKind, Mid); 2],
    /// What the box sends on those tracks: Opus; H.264 at two sizes, and VP8 for phones
    /// without H.264.
    streams: [BoxStream; 4],
    /// Whether the camera was last told to encode VP8 as well.
    vp8_told: bool,
    /// Phones' frames for the TV and speaker, until polled.
    to_box: Vec<PhoneFrame>,
    /// Each phone track the box plays, being put back together.
    playing: HashMap<(ParticipantId, Mid), (Option<Rid>, Reassembly)>,
    keyframe_due: Option<Instant>,
    last_keyframe: Option<Instant>,
    /// The encoder's bitrate range, and what it was last told.
    min_kbps: u32,
    max_kbps: u32,
    bitrate_told: Option<u32>,
    low_told: Option<u32>,
}

impl BoxLeg {
    pub fn new(min_kbps: u32, max_kbps: u32) -> BoxLeg {
        BoxLeg {
            tracks: [
                (MediaKind::Audio, Mid::from("boxa")),
                (MediaKind::Video, Mid::from("boxv")),
            ],
            streams: [
                BoxStream::new(BoxEncoding::Opus, 0),
                BoxStream::new(BoxEncoding::H264, 1),
                BoxStream::new(BoxEncoding::H264Low, 1),
                BoxStream::new(BoxEncoding::Vp8, 1),
            ],
            vp8_told: false,
            to_box: Vec::new(),
            playing: HashMap::new(),
            keyframe_due: None,
            last_keyframe: None,
            min_kbps,
            max_kbps: max_kbps.max(min_kbps),
            bitrate_told: None,
            low_told: None,
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

    /// The encodings of the box's camera a phone could get, cheapest first, at what they
    /// cost lately (until measured, what they aim at): H.264 at two sizes, or VP8 for a phone
    /// without H.264.
    pub fn encodings(&self, decodes_h264: bool, now: Instant) -> Vec<Encoding> {
        let cost = |encoding: BoxEncoding, aim: u32| {
            let stream = self.streams.iter().find(|s| s.encoding == encoding);
            Encoding {
                rid: encoding.rid(),
                kbps: stream.and_then(|s| s.meter.kbps(now)).unwrap_or(aim),
            }
        };
        if !decodes_h264 {
            return vec![cost(BoxEncoding::Vp8, VP8_KBPS)];
        }
        let high = self.bitrate_told.unwrap_or(self.max_kbps);
        let mut encodings = vec![
            cost(BoxEncoding::H264Low, LOW_KBPS),
            cost(BoxEncoding::H264, high),
        ];
        encodings.sort_by_key(|e| e.kbps);
        encodings
    }

    /// Packetize one of the box's encoded frames and write it to every connected phone
    /// that gets this encoding.
    pub fn write(
        &mut self,
        peers: &mut [Peer],
        encoding: BoxEncoding,
        rtp_time: MediaTime,
        data: &[u8],
        now: Instant,
        counters: &mut SfuCounters,
    ) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.encoding == encoding) else {
            return;
        };
        let codec = encoding.codec();
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
        stream.meter.add(data.len(), now);
        let first_seq = stream.next_seq;
        stream.next_seq += payloads.len() as u64;
        let time = rtp_time.numer() as u32;
        let video = kind == MediaKind::Video;
        // Of the whole access unit: x264enc puts a delimiter (and at times an SEI) before the
        // parameter sets, so the first payload alone does not tell.
        let keyframe = video && payloads.iter().any(|p| payload::starts_keyframe(codec, p));
        let clock = rtp_time.frequency().get();
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
                let packet = Outgoing {
                    rid: encoding.rid(),
                    seq: first_seq + i as u64,
                    ts: time,
                    keyframe: keyframe && i == 0,
                    clock,
                };
                let session = BOX_SESSION;
                sent |= peer.send(
                    ParticipantId::BOX,
                    session,
                    origin_mid,
                    &packet,
                    now,
                    |seq, ts| {
                        RtpWrite::new(pt, seq, ts, now, payload.clone())
                            .marker(video && i == last)
                            .nackable(video)
                    },
                );
            }
            if sent {
                counters.box_frames_sent += 1;
            }
        }
    }

    /// A phone's packet reached the SFU: the box plays it once its frame is whole. True when
    /// the phone should send a keyframe (the box's decoder starts, or lost its place). Of a
    /// simulcasting phone the box plays one encoding, `best`, switching at its keyframe.
    #[allow(clippy::too_many_arguments)]
    pub fn hear(
        &mut self,
        origin: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        best: Option<Rid>,
        keyframe: bool,
        params: PayloadParams,
        packet: &RtpPacket,
        now: Instant,
    ) -> bool {
        let Some(codec) = phone_codec(params.spec().codec) else {
            return false;
        };
        let playing = self
            .playing
            .entry((origin, mid))
            .or_insert_with(|| (best, Reassembly::new(params.spec().codec)));
        if rid != playing.0 {
            if rid != best || !keyframe {
                // Another encoding than the one played: a better one is taken at its keyframe.
                return false;
            }
            *playing = (rid, Reassembly::new(params.spec().codec));
        }
        let assembled = playing.1.push(
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
        self.playing.values_mut().for_each(|(_, r)| r.restart());
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
        if let Some(kbps) = self.low_bitrate(peers) {
            events.push(SfuEvent::BoxLowBitrate(kbps));
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

    /// What the full-size H.264 encoder should aim at: a share of the slowest estimate among
    /// the phones that get it (a phone whose link does not carry it gets the low encoding
    /// instead and drags no one down), when that moved more than 10 % from what it was last
    /// told. The share leaves room for the call's other tracks.
    fn bitrate(&mut self, peers: &[Peer]) -> Option<u32> {
        let lowest = self
            .phones_getting(peers, BoxEncoding::H264)
            .filter_map(|p| p.estimate_kbps)
            .min()?;
        let lowest = (lowest as f32 * HIGH_SHARE) as u32;
        let lowest = lowest.clamp(self.min_kbps, self.max_kbps);
        let moved = self
            .bitrate_told
            .is_none_or(|told| lowest.abs_diff(told) * 10 > told);
        if !moved {
            return None;
        }
        self.bitrate_told = Some(lowest);
        Some(lowest)
    }

    /// The connected phones that get `encoding` of the box's camera now.
    fn phones_getting<'a>(
        &self,
        peers: &'a [Peer],
        encoding: BoxEncoding,
    ) -> impl Iterator<Item = &'a Peer> {
        let video_mid = self.tracks[1].1;
        peers
            .iter()
            .filter(|p| p.connected && p.decodes_h264)
            .filter(move |p| {
                p.tracks_out.iter().any(|t| {
                    t.origin == ParticipantId::BOX
                        && t.origin_mid == video_mid
                        && t.choice.target == encoding.rid()
                        && !t.choice.paused
                })
            })
    }

    /// What the half-size encoder should aim at: what the slowest phone that gets it has
    /// for video after its audio (its link is the weak one: a fixed rate over it keeps its
    /// queue full and its estimate sinking), between `LOW_MIN_KBPS` and `LOW_KBPS`; when
    /// that moved more than 10 % from what it was last told.
    fn low_bitrate(&mut self, peers: &[Peer]) -> Option<u32> {
        let lowest = self
            .phones_getting(peers, BoxEncoding::H264Low)
            .filter_map(|p| {
                let audio = p
                    .tracks_out
                    .iter()
                    .filter(|t| t.kind == MediaKind::Audio)
                    .count();
                Some(layers::video_budget(p.estimate_kbps?, audio).max(0) as u32)
            })
            .min()?;
        let kbps = lowest.clamp(LOW_MIN_KBPS, LOW_KBPS);
        let moved = self
            .low_told
            .is_none_or(|told| kbps.abs_diff(told) * 10 > told);
        if !moved {
            return None;
        }
        self.low_told = Some(kbps);
        Some(kbps)
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
