//! The media plane: one str0m `Rtc` per phone, all on one UDP port, forwarding each
//! publisher's frames to every other peer without decoding them. Sans-IO like str0m itself:
//! datagrams and the current time go in; datagrams to send, SDP to signal and peers to drop
//! come out. The socket lives in `sfu_io`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;

use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::call::protocol::VideoCodec;
use crate::call::room::ParticipantId;

/// A peer that has sent nothing for this long is gone (ICE failed, phone out of range).
/// Browsers send RTCP at least every second and STUN consent checks every few seconds.
const SILENCE_LIMIT: Duration = Duration::from_secs(4);
/// A peer that never completes ICE + DTLS within this is dropped.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// Keyframe requests to one publisher's track are merged within this window.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// Where each phone's bandwidth estimate starts; TWCC corrects it within a second or two.
const BWE_START_KBPS: u64 = 5000;
/// The box's encoder is asked for a keyframe at most this often.
const BOX_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("unparseable SDP: {0}")]
    BadSdp(String),
    #[error("SDP rejected: {0}")]
    Rejected(String),
    #[error("no such peer")]
    UnknownPeer,
    #[error("this peer already made its offer; only the server offers after that")]
    SecondOffer,
    #[error("an answer arrived but no offer was outstanding")]
    UnexpectedAnswer,
    #[error("the call has no UDP address to offer")]
    NoCandidate,
}

#[derive(Debug)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SfuEvent {
    /// Send this server offer to the peer (over signalling).
    Offer(ParticipantId, String),
    /// The peer's media connection is gone; the caller removes it from the room.
    PeerLost(ParticipantId, LostReason),
    /// A phone needs a keyframe from the box's encoder.
    BoxKeyframe,
    /// The box's encoder should aim at this bitrate: the lowest phone's estimate.
    BoxBitrate(u32),
    /// A phone's frame, for the box's screen and speaker.
    ToBox(PhoneFrame),
}

/// One encoded frame of a phone's track, as the box's decoders take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneFrame {
    pub from: ParticipantId,
    pub codec: PhoneCodec,
    pub data: Arc<[u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneCodec {
    H264,
    Vp8,
    Opus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    Silent,
    NeverConnected,
    IceDisconnected,
    Failed,
}

/// Counters for `hearth status` and the benchmark.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SfuCounters {
    /// Incoming RTP packets times the subscribers they were written to.
    pub packets_forwarded: u64,
    pub packets_received: u64,
    pub keyframe_requests_sent: u64,
    /// The box's own frames written to phones (one per frame per phone).
    pub box_frames_sent: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerSummary {
    pub id: String,
    pub connected: bool,
    pub tracks_published: usize,
    pub tracks_subscribed: usize,
}

#[derive(Debug)]
struct TrackIn {
    mid: Mid,
    kind: MediaKind,
    last_keyframe_request: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackOutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    Stopping(Mid),
}

#[derive(Debug)]
struct TrackOut {
    origin: ParticipantId,
    origin_mid: Mid,
    kind: MediaKind,
    state: TrackOutState,
}

impl TrackOut {
    fn open_mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::Open(m) => Some(m),
            _ => None,
        }
    }
    fn mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::ToOpen => None,
            TrackOutState::Negotiating(m)
            | TrackOutState::Open(m)
            | TrackOutState::ToStop(m)
            | TrackOutState::Stopping(m) => Some(m),
        }
    }
}

struct Peer {
    id: ParticipantId,
    rtc: Rtc,
    tracks_in: Vec<TrackIn>,
    tracks_out: Vec<TrackOut>,
    pending: Option<SdpPendingOffer>,
    decodes_h264: bool,
    /// This phone's bandwidth estimate for what the box sends it.
    estimate_kbps: Option<u32>,
    created: Instant,
    last_heard: Option<Instant>,
    connected: bool,
    lost: Option<LostReason>,
}

/// Something one peer produced that others must act on.
enum Propagate {
    TrackOpened(ParticipantId, Mid, MediaKind),
    Media(ParticipantId, Box<MediaData>),
    KeyframeWanted {
        publisher: ParticipantId,
        mid: Mid,
        kind: KeyframeRequestKind,
        urgency: Urgency,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// A subscriber lost packets or asked: merged with other requests in a short window.
    Repair,
    /// A subscriber just started: it sees nothing until a keyframe, so never merged away.
    NewSubscriber,
}

pub struct Sfu {
    candidate: SocketAddr,
    peers: Vec<Peer>,
    counters: SfuCounters,
    /// The box's own tracks (its camera and mic), offered to every phone.
    local_tracks: Vec<(MediaKind, Mid)>,
    /// Whether phones' frames are handed to the box (its screen and speaker).
    box_listens: bool,
    to_box: Vec<PhoneFrame>,
    /// Phone video tracks the box has started decoding: each needs a keyframe first.
    box_decoding: std::collections::HashSet<(ParticipantId, Mid)>,
    box_keyframe_due: Option<Instant>,
    last_box_keyframe: Option<Instant>,
    /// The box encoder's bitrate range, and what it was last told.
    box_kbps: (u32, u32),
    box_bitrate_told: Option<u32>,
}

impl Sfu {
    /// `candidate` is the address of the shared UDP socket that peers are told to reach.
    pub fn new(candidate: SocketAddr) -> Self {
        Sfu {
            candidate,
            peers: Vec::new(),
            counters: SfuCounters::default(),
            local_tracks: Vec::new(),
            box_listens: false,
            to_box: Vec::new(),
            box_decoding: Default::default(),
            box_keyframe_due: None,
            last_box_keyframe: None,
            box_kbps: (0, 0),
            box_bitrate_told: None,
        }
    }

    /// Make the box a participant: its camera and mic go to every phone, and every phone's
    /// frames come to the box.
    pub fn enable_box(&mut self, min_kbps: u32, max_kbps: u32) {
        self.box_kbps = (min_kbps, max_kbps);
        // The estimator starts high: it also paces what phones send each other, and a
        // keyframe held back by a low first guess is what a new phone waits for.
        self.local_tracks = vec![
            (MediaKind::Audio, Mid::from("boxa")),
            (MediaKind::Video, Mid::from("boxv")),
        ];
        self.box_listens = true;
        for peer in &mut self.peers {
            for (kind, mid) in &self.local_tracks {
                peer.tracks_out.push(TrackOut {
                    origin: ParticipantId::BOX,
                    origin_mid: *mid,
                    kind: *kind,
                    state: TrackOutState::ToOpen,
                });
            }
        }
    }

    /// Send one of the box's encoded frames (H.264 access unit or Opus packet) to every
    /// phone subscribed to it. `rtp_time` is the capture time in the track's clock.
    pub fn write_local(&mut self, kind: MediaKind, rtp_time: MediaTime, data: &[u8], now: Instant) {
        let Some(&(_, origin_mid)) = self.local_tracks.iter().find(|(k, _)| *k == kind) else {
            return;
        };
        let data: Arc<[u8]> = data.into();
        for peer in &mut self.peers {
            if !peer.connected || (kind == MediaKind::Video && !peer.decodes_h264) {
                continue;
            }
            let Some(mid) = peer
                .tracks_out
                .iter()
                .find(|t| t.origin == ParticipantId::BOX && t.origin_mid == origin_mid)
                .and_then(TrackOut::open_mid)
            else {
                continue;
            };
            let Some(writer) = peer.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = local_payload_type(&writer, kind) else {
                continue;
            };
            match writer.write(pt, now, rtp_time, data.clone()) {
                Ok(()) => self.counters.box_frames_sent += 1,
                Err(e) => tracing::debug!("{}: box frame not written: {e}", peer.id),
            }
        }
    }

    pub fn counters(&self) -> SfuCounters {
        self.counters
    }

    pub fn summaries(&self) -> Vec<PeerSummary> {
        self.peers
            .iter()
            .map(|p| PeerSummary {
                id: p.id.to_string(),
                connected: p.connected,
                tracks_published: p.tracks_in.len(),
                tracks_subscribed: p
                    .tracks_out
                    .iter()
                    .filter(|t| t.open_mid().is_some())
                    .count(),
            })
            .collect()
    }

    /// The peer's one offer (its own camera and mic). Returns the SDP answer.
    /// `publish` is the video codec this peer should send: listed first in the answer, since
    /// a browser sends with the answer's first codec. `decodes_h264` is false for browsers
    /// that list H.264 in SDP but cannot decode it; they are never sent H.264.
    pub fn accept_offer(
        &mut self,
        id: ParticipantId,
        sdp: &str,
        publish: VideoCodec,
        decodes_h264: bool,
        now: Instant,
    ) -> Result<String, SfuError> {
        if self.peers.iter().any(|p| p.id == id) {
            return Err(SfuError::SecondOffer);
        }
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let config = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false);
        let config = match publish {
            VideoCodec::H264 => config.enable_h264(true).enable_vp8(true),
            VideoCodec::VP8 => config.enable_vp8(true).enable_h264(true),
        };
        // Bandwidth estimates (TWCC) matter only where the box encodes for this phone: the
        // encoder follows the slowest phone. Phones' own streams adapt end to end.
        let config = if self.local_tracks.is_empty() {
            config
        } else {
            config.enable_bwe(Some(Bitrate::kbps(BWE_START_KBPS)))
        };
        let mut rtc = config.build(now);
        if !self.local_tracks.is_empty() {
            rtc.bwe().set_bitrate(
                Bitrate::kbps(self.box_kbps.0 as u64),
                Bitrate::kbps(BWE_START_KBPS),
            );
        }
        let candidate =
            Candidate::host(self.candidate, Protocol::Udp).map_err(|_| SfuError::NoCandidate)?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::Rejected(e.to_string()))?;
        // Everything already published by others is offered to the newcomer.
        let existing: Vec<TrackOut> = self
            .peers
            .iter()
            .flat_map(|p| {
                p.tracks_in.iter().map(|t| TrackOut {
                    origin: p.id,
                    origin_mid: t.mid,
                    kind: t.kind,
                    state: TrackOutState::ToOpen,
                })
            })
            .chain(self.local_tracks.iter().map(|(kind, mid)| TrackOut {
                origin: ParticipantId::BOX,
                origin_mid: *mid,
                kind: *kind,
                state: TrackOutState::ToOpen,
            }))
            .collect();
        self.peers.push(Peer {
            id,
            rtc,
            tracks_in: Vec::new(),
            tracks_out: existing,
            pending: None,
            decodes_h264,
            estimate_kbps: None,
            created: now,
            last_heard: None,
            connected: false,
            lost: None,
        });
        Ok(answer.to_sdp_string())
    }

    pub fn accept_answer(
        &mut self,
        id: ParticipantId,
        sdp: &str,
        now: Instant,
    ) -> Result<(), SfuError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let peer = self.peer_mut(id)?;
        let pending = peer.pending.take().ok_or(SfuError::UnexpectedAnswer)?;
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| SfuError::Rejected(e.to_string()))?;
        let mut newly_open = Vec::new();
        for track in &mut peer.tracks_out {
            if let TrackOutState::Negotiating(m) = track.state {
                track.state = TrackOutState::Open(m);
                newly_open.push((track.origin, track.origin_mid, track.kind));
            }
        }
        peer.tracks_out
            .retain(|t| !matches!(t.state, TrackOutState::Stopping(_)));
        // A new subscriber can decode nothing until the next keyframe: ask for one now if
        // media can flow, else when it connects (a keyframe sent before would be lost).
        if peer.connected {
            for (origin, mid, kind) in newly_open {
                if kind == MediaKind::Video {
                    self.request_keyframe(
                        origin,
                        mid,
                        KeyframeRequestKind::Pli,
                        Urgency::NewSubscriber,
                        now,
                    );
                }
            }
        }
        Ok(())
    }

    /// Drop a peer (WebSocket closed, left, or lost). Its tracks are stopped at the others.
    pub fn remove_peer(&mut self, id: ParticipantId) {
        self.peers.retain(|p| p.id != id);
        self.box_decoding.retain(|(origin, _)| *origin != id);
        for peer in &mut self.peers {
            peer.tracks_out.retain_mut(|t| {
                if t.origin != id {
                    return true;
                }
                match t.state {
                    TrackOutState::ToOpen => false,
                    TrackOutState::Negotiating(m) | TrackOutState::Open(m) => {
                        t.state = TrackOutState::ToStop(m);
                        true
                    }
                    TrackOutState::ToStop(_) | TrackOutState::Stopping(_) => true,
                }
            });
        }
    }

    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        // Which peer a datagram belongs to is known only to the peers themselves (ICE ufrag,
        // DTLS/SRTP 5-tuple).
        if let Some(peer) = self.peers.iter_mut().find(|p| p.rtc.accepts(&input)) {
            peer.last_heard = Some(now);
            if peer.rtc.handle_input(input).is_err() {
                peer.lost = Some(LostReason::Failed);
            }
        }
    }

    /// Move every peer's clock to `now` and drop the ones gone silent.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in &mut self.peers {
            if peer.lost.is_some() {
                continue;
            }
            if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                peer.lost = Some(LostReason::Failed);
            } else if peer.connected
                && peer
                    .last_heard
                    .is_some_and(|t| now.saturating_duration_since(t) > SILENCE_LIMIT)
            {
                peer.lost = Some(LostReason::Silent);
            } else if !peer.connected && now.saturating_duration_since(peer.created) > CONNECT_LIMIT
            {
                peer.lost = Some(LostReason::NeverConnected);
            }
        }
    }

    /// Drain everything the peers want done. Returns when the next timeout is due.
    pub fn poll(
        &mut self,
        now: Instant,
        transmits: &mut Vec<Transmit>,
        events: &mut Vec<SfuEvent>,
    ) -> Instant {
        let mut next = now + Duration::from_millis(100);
        loop {
            let mut propagate = Vec::new();
            for peer in &mut self.peers {
                if peer.lost.is_some() {
                    continue;
                }
                if let Some(offer) = peer.negotiate_if_needed() {
                    events.push(SfuEvent::Offer(peer.id, offer));
                }
                next = next.min(peer.drain(now, transmits, &mut propagate, &mut self.counters));
            }
            if propagate.is_empty() {
                break;
            }
            for item in propagate {
                self.apply(item, now);
            }
        }
        events.extend(self.to_box.drain(..).map(SfuEvent::ToBox));
        if let Some(kbps) = self.box_bitrate() {
            events.push(SfuEvent::BoxBitrate(kbps));
        }
        if let Some(due) = self.box_keyframe_due {
            if due <= now {
                events.push(SfuEvent::BoxKeyframe);
                self.box_keyframe_due = None;
                self.last_box_keyframe = Some(now);
            } else {
                next = next.min(due);
            }
        }
        for peer in &self.peers {
            if let Some(reason) = peer.lost {
                events.push(SfuEvent::PeerLost(peer.id, reason));
            }
        }
        let lost: Vec<ParticipantId> = self
            .peers
            .iter()
            .filter(|p| p.lost.is_some())
            .map(|p| p.id)
            .collect();
        for id in lost {
            self.remove_peer(id);
        }
        next.max(now)
    }

    fn apply(&mut self, item: Propagate, now: Instant) {
        match item {
            Propagate::TrackOpened(origin, mid, kind) => {
                for peer in self.peers.iter_mut().filter(|p| p.id != origin) {
                    peer.tracks_out.push(TrackOut {
                        origin,
                        origin_mid: mid,
                        kind,
                        state: TrackOutState::ToOpen,
                    });
                }
            }
            Propagate::Media(origin, data) => {
                if self.box_listens {
                    if data.params.spec().codec.is_video()
                        && self.box_decoding.insert((origin, data.mid))
                    {
                        self.request_keyframe(
                            origin,
                            data.mid,
                            KeyframeRequestKind::Pli,
                            Urgency::NewSubscriber,
                            now,
                        );
                    }
                    if let Some(codec) = phone_codec(&data) {
                        self.to_box.push(PhoneFrame {
                            from: origin,
                            codec,
                            data: data.data.clone(),
                        });
                    }
                }
                let packets = packet_count(&data);
                for peer in self.peers.iter_mut().filter(|p| p.id != origin) {
                    if peer.forward(origin, &data) {
                        self.counters.packets_forwarded += packets;
                    }
                }
            }
            Propagate::KeyframeWanted {
                publisher,
                mid,
                kind,
                urgency,
            } => self.request_keyframe(publisher, mid, kind, urgency, now),
        }
    }

    /// The slowest connected phone's estimate, when it moved more than 10 % from what the
    /// encoder was last told.
    fn box_bitrate(&mut self) -> Option<u32> {
        let lowest = self
            .peers
            .iter()
            .filter(|p| p.connected)
            .filter_map(|p| p.estimate_kbps)
            .min()?
            .clamp(self.box_kbps.0, self.box_kbps.1.max(self.box_kbps.0));
        let moved = self
            .box_bitrate_told
            .is_none_or(|told| lowest.abs_diff(told) * 10 > told);
        if !moved {
            return None;
        }
        self.box_bitrate_told = Some(lowest);
        Some(lowest)
    }

    fn request_keyframe(
        &mut self,
        publisher: ParticipantId,
        mid: Mid,
        kind: KeyframeRequestKind,
        urgency: Urgency,
        now: Instant,
    ) {
        if publisher == ParticipantId::BOX {
            let earliest = self
                .last_box_keyframe
                .map_or(now, |t| (t + BOX_KEYFRAME_INTERVAL).max(now));
            self.box_keyframe_due =
                Some(self.box_keyframe_due.map_or(earliest, |d| d.min(earliest)));
            return;
        }
        let Some(peer) = self.peers.iter_mut().find(|p| p.id == publisher) else {
            return;
        };
        let Some(track) = peer.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if urgency == Urgency::Repair
            && track
                .last_keyframe_request
                .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        track.last_keyframe_request = Some(now);
        if let Some(mut writer) = peer.rtc.writer(mid) {
            if writer.request_keyframe(None, kind).is_ok() {
                self.counters.keyframe_requests_sent += 1;
            }
        }
    }

    fn peer_mut(&mut self, id: ParticipantId) -> Result<&mut Peer, SfuError> {
        self.peers
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(SfuError::UnknownPeer)
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
fn local_payload_type(writer: &str0m::media::Writer, kind: MediaKind) -> Option<str0m::media::Pt> {
    let mut best: Option<(u8, str0m::media::Pt)> = None;
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

fn packet_count(data: &MediaData) -> u64 {
    (**data.seq_range.end()).saturating_sub(**data.seq_range.start()) + 1
}

impl Peer {
    /// Start a server offer for tracks to open or stop, unless one is already out.
    fn negotiate_if_needed(&mut self) -> Option<String> {
        if self.pending.is_some() {
            return None;
        }
        let mut change = self.rtc.sdp_api();
        for track in &mut self.tracks_out {
            match track.state {
                TrackOutState::ToOpen => {
                    let mid = change.add_media(
                        track.kind,
                        Direction::SendOnly,
                        Some(track.origin.to_string()),
                        None,
                        None,
                    );
                    track.state = TrackOutState::Negotiating(mid);
                }
                TrackOutState::ToStop(mid) => {
                    change.stop_media(mid);
                    track.state = TrackOutState::Stopping(mid);
                }
                _ => {}
            }
        }
        let (offer, pending) = change.apply()?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// Poll str0m until it has nothing but a timeout.
    fn drain(
        &mut self,
        now: Instant,
        transmits: &mut Vec<Transmit>,
        propagate: &mut Vec<Propagate>,
        counters: &mut SfuCounters,
    ) -> Instant {
        loop {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    self.lost = Some(LostReason::Failed);
                    return now;
                }
            };
            match output {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => transmits.push(Transmit {
                    destination: t.destination,
                    contents: t.contents.into(),
                }),
                Output::Event(event) => self.on_event(event, propagate, counters),
            }
        }
    }

    fn on_event(
        &mut self,
        event: Event,
        propagate: &mut Vec<Propagate>,
        counters: &mut SfuCounters,
    ) {
        match event {
            Event::Connected => {
                self.connected = true;
                for track in &self.tracks_out {
                    if track.kind == MediaKind::Video && track.open_mid().is_some() {
                        propagate.push(Propagate::KeyframeWanted {
                            publisher: track.origin,
                            mid: track.origin_mid,
                            kind: KeyframeRequestKind::Pli,
                            urgency: Urgency::NewSubscriber,
                        });
                    }
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.lost = Some(LostReason::IceDisconnected);
            }
            Event::MediaAdded(added)
                if matches!(added.direction, Direction::RecvOnly | Direction::SendRecv) =>
            {
                self.tracks_in.push(TrackIn {
                    mid: added.mid,
                    kind: added.kind,
                    last_keyframe_request: None,
                });
                propagate.push(Propagate::TrackOpened(self.id, added.mid, added.kind));
            }
            Event::MediaData(data) => {
                counters.packets_received += packet_count(&data);
                if !data.contiguous {
                    // Loss the NACKs could not repair: subscribers need a fresh keyframe.
                    propagate.push(Propagate::KeyframeWanted {
                        publisher: self.id,
                        mid: data.mid,
                        kind: KeyframeRequestKind::Fir,
                        urgency: Urgency::Repair,
                    });
                }
                propagate.push(Propagate::Media(self.id, Box::new(data)));
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.estimate_kbps = Some((estimate.as_u64() / 1000) as u32);
            }
            Event::KeyframeRequest(req) => {
                if let Some(t) = self.tracks_out.iter().find(|t| t.mid() == Some(req.mid)) {
                    propagate.push(Propagate::KeyframeWanted {
                        publisher: t.origin,
                        mid: t.origin_mid,
                        kind: req.kind,
                        urgency: Urgency::Repair,
                    });
                }
            }
            _ => {}
        }
    }

    /// Write one publisher's frame to this subscriber. False when it does not subscribe
    /// (yet) or cannot decode that codec.
    fn forward(&mut self, origin: ParticipantId, data: &MediaData) -> bool {
        if data.params.spec().codec == Codec::H264 && !self.decodes_h264 {
            return false;
        }
        let Some(mid) = self
            .tracks_out
            .iter()
            .find(|t| t.origin == origin && t.origin_mid == data.mid)
            .and_then(TrackOut::open_mid)
        else {
            return false;
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = writer.match_params(data.params) else {
            return false;
        };
        if writer
            .write(pt, data.network_time, data.time, data.data.clone())
            .is_err()
        {
            self.lost = Some(LostReason::Failed);
            return false;
        }
        true
    }
}
