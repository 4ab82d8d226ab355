//! A call in memory: str0m client `Rtc`s as the phones (full ICE, offering first, like a
//! browser), the real `Sfu` between them, addresses instead of sockets and a clock that only
//! moves when the test steps it. Every datagram is delivered at once and in order unless a
//! phone's uplink is cut.

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use hearth::call::protocol::VideoCodec;
use hearth::call::room::ParticipantId;
use hearth::call::sfu::{BoxEncoding, Sfu, SfuEvent, SfuOutput};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, KeyframeRequest, MediaData, MediaKind, MediaTime, Mid, Pt,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::VideoOrientation;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// The SFU's one UDP address, the candidate every phone is given.
pub const SFU_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    10000,
);
/// How far the clock moves per step at most.
pub const STEP: Duration = Duration::from_millis(5);
/// How far it moves at least: a step ends early at the SFU's timer, to the millisecond, as
/// the daemon's timer wakes it. At 5 ms steps alone its pacer sent a bandwidth probe in
/// lumps, the probe measured a fraction of the link, and the estimate fell to that.
const MIN_STEP: Duration = Duration::from_millis(1);
/// Phones send one audio and one video frame this often while publishing.
pub const FRAME: Duration = Duration::from_millis(20);
/// Added to the frame number of the box's half-size frames, so they differ from its full-size.
pub const LOW_FRAMES: u64 = 1_000_000;
/// How far apart datagrams read one at a time are (`World::one_datagram_at_a_time`).
const DATAGRAM_SPACING: Duration = Duration::from_micros(50);
/// A limited downlink's bucket, in bytes.
const DOWNLINK_BUCKET: f64 = 10_000.0;
/// Datagram exchanges within one step before the harness calls it a livelock.
const MAX_ROUNDS: usize = 1000;
/// A timer due within this is fired at once (see `pump`).
const IMMEDIATE: Duration = Duration::from_millis(1);

/// What a browser offers: Opus, VP8 and H.264 with str0m's numbering and extension ids.
pub fn browser() -> RtcConfig {
    Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
}

/// A phone in the call.
pub struct Phone {
    pub id: ParticipantId,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    /// Everything the phone's `Rtc` reported, with when.
    pub events: Vec<(Instant, Event)>,
    /// The server's offers, as SDP text, in order.
    pub offers: Vec<String>,
    pub audio_mid: Mid,
    pub video_mid: Mid,
    /// The video codec it sends with.
    pub video_codec: Codec,
    /// False: everything the phone sends is lost on the way to the SFU.
    pub uplink: bool,
    /// True: one audio and one video frame every `FRAME`.
    pub publishing: bool,
    /// Written with every video frame (the CVO header extension) when set.
    pub orientation: Option<VideoOrientation>,
    /// Written with every audio frame (the audio-level header extension) when set.
    pub audio_level: Option<i8>,
    /// Its video delta frames are padded to this many bytes (a keyframe is already bigger).
    pub video_frame_bytes: usize,
    /// Every frame written, per kind, in order.
    pub sent_audio: Vec<Arc<[u8]>>,
    pub sent_video: Vec<Arc<[u8]>>,
    /// The phone's downlink in kbit/s: what the SFU sends beyond it is dropped (a policer
    /// with a 10 KB bucket, as a shaped mobile link). None: unlimited.
    pub downlink_kbps: Option<u32>,
    /// Bytes the downlink may still take now.
    downlink_tokens: f64,
    /// RTP streams (SSRCs) first seen before this are dropped for good, as a browser that does
    /// not take a new subscription's packets (seen in the soak).
    pub deaf_until: Option<Instant>,
    known_ssrcs: std::collections::HashSet<u32>,
    ignored_ssrcs: std::collections::HashSet<u32>,
    /// How long the phone takes to answer a server offer (a page's JavaScript, a slow link).
    pub answer_delay: Duration,
    /// Server offers not answered yet, with when they are due.
    unanswered: Vec<(Instant, String)>,
    /// The next video frame is a keyframe (first frame, or after a keyframe request).
    keyframe_wanted: bool,
    timeout: Instant,
}

impl Phone {
    pub fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Connected))
    }

    pub fn connected_at(&self) -> Option<Instant> {
        self.events
            .iter()
            .find(|(_, e)| matches!(e, Event::Connected))
            .map(|(t, _)| *t)
    }

    /// Frames received, on any mid.
    pub fn media(&self) -> impl Iterator<Item = &MediaData> {
        self.events.iter().filter_map(|(_, e)| match e {
            Event::MediaData(d) => Some(d),
            _ => None,
        })
    }

    /// Frames received whose bytes are exactly ones `from` sent.
    pub fn media_from<'a>(
        &'a self,
        from: &'a Phone,
        kind: MediaKind,
    ) -> impl Iterator<Item = &'a MediaData> + 'a {
        let sent = match kind {
            MediaKind::Audio => &from.sent_audio,
            MediaKind::Video => &from.sent_video,
        };
        self.media().filter(move |d| sent.contains(&d.data))
    }

    /// Whether the phone takes this datagram: anything but RTP of a stream it is deaf to.
    fn takes(&mut self, datagram: &[u8], now: Instant) -> bool {
        // RTP: version 2, and a second byte that is no RTCP packet type (200-206).
        let rtp = datagram.len() >= 12
            && datagram[0] & 0xC0 == 0x80
            && !(200..=206).contains(&datagram[1]);
        if !rtp {
            return true;
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        if self.ignored_ssrcs.contains(&ssrc) {
            return false;
        }
        if !self.known_ssrcs.contains(&ssrc) {
            if self.deaf_until.is_some_and(|t| now < t) {
                self.ignored_ssrcs.insert(ssrc);
                return false;
            }
            self.known_ssrcs.insert(ssrc);
        }
        true
    }

    /// Keyframe requests the phone got for what it sends, with when.
    pub fn keyframe_requests(&self) -> impl Iterator<Item = (Instant, &KeyframeRequest)> {
        self.events.iter().filter_map(|(t, e)| match e {
            Event::KeyframeRequest(r) => Some((*t, r)),
            _ => None,
        })
    }

    /// The first payload type negotiated for `codec` (H.264: packetization-mode 1, preferring
    /// constrained baseline, as browsers send).
    pub fn pt_for(&mut self, mid: Mid, codec: Codec) -> Option<Pt> {
        let writer = self.rtc.writer(mid)?;
        writer
            .payload_params()
            .filter(|p| p.spec().codec == codec)
            .filter(|p| codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
            .min_by_key(|p| p.spec().format.profile_level_id != Some(0x42e01f))
            .map(|p| p.pt())
    }

    /// One audio frame and one video frame, marked with the phone, the kind and the count
    /// so that a receiver can tell whose they are.
    fn publish(&mut self, now: Instant) {
        let n = self.sent_audio.len() as u64;
        if let Some(pt) = self.pt_for(self.audio_mid, Codec::Opus) {
            let data = frame(self.id, Codec::Opus, n, false);
            let time = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
            let mut writer = self.rtc.writer(self.audio_mid).expect("audio mid");
            if let Some(level) = self.audio_level {
                writer = writer.audio_level(level, true);
            }
            writer
                .write(pt, now, time, data.clone())
                .expect("audio write");
            self.sent_audio.push(data);
        }
        if let Some(pt) = self.pt_for(self.video_mid, self.video_codec) {
            let key = std::mem::take(&mut self.keyframe_wanted);
            let data = sized(
                frame(self.id, self.video_codec, n, key),
                self.video_frame_bytes,
            );
            let time = MediaTime::new(n * 1800, Frequency::NINETY_KHZ);
            let mut writer = self.rtc.writer(self.video_mid).expect("video mid");
            if let Some(o) = self.orientation {
                writer = writer.video_orientation(o);
            }
            writer
                .write(pt, now, time, data.clone())
                .expect("video write");
            self.sent_video.push(data);
        }
    }
}

/// A fake encoded frame: codec framing a depacketizer understands, then a readable tag.
/// No zero bytes after the H.264 start code, so it stays one NAL unit. Video keyframes are
/// bigger than one packet, so they cross the SFU in fragments.
pub fn frame(from: ParticipantId, codec: Codec, n: u64, key: bool) -> Arc<[u8]> {
    let tag = format!("{from}:{codec}:{n}:{}", if key { "key" } else { "delta" });
    let mut data = match codec {
        // Annex B start code, then the NAL header: IDR slice (5) or non-IDR slice (1).
        Codec::H264 => vec![0, 0, 0, 1, if key { 0x65 } else { 0x41 }],
        // VP8 frame tag: bit 0 clear for a keyframe, show_frame set.
        Codec::Vp8 => vec![if key { 0x10 } else { 0x11 }],
        _ => Vec::new(),
    };
    data.extend_from_slice(tag.as_bytes());
    let padding = if key && codec.is_video() { 3000 } else { 100 };
    data.resize(data.len() + padding, b'.');
    data.into()
}

/// An H.264 frame behind an access unit delimiter, as the box's encoder (x264enc) makes them:
/// its first NAL unit says nothing of whether the frame is a keyframe.
fn delimited(frame: Arc<[u8]>) -> Arc<[u8]> {
    let mut data = vec![0, 0, 0, 1, 0x09, 0xF0];
    data.extend_from_slice(&frame);
    data.into()
}

/// A frame padded up to `bytes` (a keyframe, already bigger, is left as it is).
fn sized(frame: Arc<[u8]>, bytes: usize) -> Arc<[u8]> {
    let mut data = frame.to_vec();
    if data.len() < bytes {
        data.resize(bytes, b'.');
    }
    data.into()
}

pub struct World {
    pub start: Instant,
    pub now: Instant,
    pub sfu: Sfu,
    /// Time spent inside the SFU's own calls (datagrams, outputs, timeouts), for benches.
    pub sfu_busy: Duration,
    /// True: the SFU gets each datagram alone and is polled after it (a daemon on a quiet
    /// network, woken per datagram); false: a step's datagrams together.
    pub one_datagram_at_a_time: bool,
    pub phones: Vec<Phone>,
    /// Everything the SFU reported except offers (those go to the phones), with when.
    pub sfu_events: Vec<(Instant, SfuEvent)>,
    /// True: the box's camera and mic give the SFU a frame each every `FRAME`.
    pub box_publishing: bool,
    /// The box's frames given to the SFU, per kind, in order.
    pub box_audio: Vec<Arc<[u8]>>,
    pub box_video: Vec<Arc<[u8]>>,
    pub box_video_low: Vec<Arc<[u8]>>,
    /// The size of the box's full-size and half-size delta frames, in bytes.
    pub box_frame_bytes: (usize, usize),
    box_keyframe_wanted: bool,
    next_frame: Instant,
}

impl World {
    pub fn new() -> World {
        static CRYPTO: Once = Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let start = Instant::now();
        World {
            start,
            now: start,
            sfu: Sfu::new(SFU_ADDR),
            sfu_busy: Duration::ZERO,
            one_datagram_at_a_time: false,
            phones: Vec::new(),
            sfu_events: Vec::new(),
            box_publishing: false,
            box_audio: Vec::new(),
            box_video: Vec::new(),
            box_video_low: Vec::new(),
            box_frame_bytes: (100, 100),
            box_keyframe_wanted: true,
            next_frame: start,
        }
    }

    /// Phone `n` (address 10.0.0.(n+1):5000) joins: it offers its mic and camera, send-only,
    /// and takes the SFU's answer. It starts publishing once connected.
    pub fn join(&mut self, n: u64, config: RtcConfig, video_codec: Codec) {
        let id = ParticipantId(n);
        let addr = SocketAddr::from(([10, 0, 0, 1 + n as u8], 5000));
        let mut rtc = config.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, Protocol::Udp).expect("candidate"));
        let mut change = rtc.sdp_api();
        let audio_mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video_mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        let publish = match video_codec {
            Codec::Vp8 => VideoCodec::VP8,
            _ => VideoCodec::H264,
        };
        let answer = self
            .sfu
            .handle_offer(id, &offer.to_sdp_string(), publish, true, self.now)
            .expect("the SFU answers");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        self.phones.push(Phone {
            id,
            addr,
            rtc,
            events: Vec::new(),
            offers: Vec::new(),
            audio_mid,
            video_mid,
            video_codec,
            uplink: true,
            publishing: true,
            orientation: None,
            audio_level: None,
            video_frame_bytes: 0,
            sent_audio: Vec::new(),
            sent_video: Vec::new(),
            downlink_kbps: None,
            downlink_tokens: DOWNLINK_BUCKET,
            deaf_until: None,
            known_ssrcs: Default::default(),
            ignored_ssrcs: Default::default(),
            answer_delay: Duration::ZERO,
            unanswered: Vec::new(),
            keyframe_wanted: true,
            timeout: self.now,
        });
        self.pump();
    }

    /// The phone's signalling closes: the SFU is told and the phone is gone.
    pub fn leave(&mut self, n: u64) {
        let id = ParticipantId(n);
        self.phones.retain(|p| p.id != id);
        self.sfu.handle_peer_left(id);
        self.pump();
    }

    pub fn phone(&self, n: u64) -> &Phone {
        self.phones
            .iter()
            .find(|p| p.id == ParticipantId(n))
            .expect("no such phone")
    }

    pub fn phone_mut(&mut self, n: u64) -> &mut Phone {
        self.phones
            .iter_mut()
            .find(|p| p.id == ParticipantId(n))
            .expect("no such phone")
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Move the clock one step (to the SFU's timer or the next frame, within `MIN_STEP` and
    /// `STEP`): frames due are written, timers due are fired, and every datagram is delivered
    /// until nobody has anything more to say.
    pub fn step(&mut self) {
        let before = self.now;
        let sfu_due = self.sfu.poll_timeout().unwrap_or(before + STEP);
        self.now = sfu_due
            .min(self.next_frame)
            .clamp(before + MIN_STEP, before + STEP);
        let now = self.now;
        let elapsed = now - before;
        if now >= self.next_frame {
            self.next_frame = now + FRAME;
            for phone in &mut self.phones {
                if phone.publishing && phone.connected() {
                    phone.publish(now);
                }
            }
            if self.box_publishing {
                self.publish_box(now);
            }
        }
        for phone in &mut self.phones {
            if let Some(kbps) = phone.downlink_kbps {
                let refill = kbps as f64 * 1000.0 / 8.0 * elapsed.as_secs_f64();
                phone.downlink_tokens = (phone.downlink_tokens + refill).min(DOWNLINK_BUCKET);
            }
            if phone.timeout <= now {
                phone
                    .rtc
                    .handle_input(Input::Timeout(now))
                    .expect("phone timeout");
            }
        }
        if self.sfu.poll_timeout().is_none_or(|t| t <= now) {
            let started = Instant::now();
            self.sfu.handle_timeout(now);
            self.sfu_busy += started.elapsed();
        }
        self.pump();
    }

    /// One frame each from the box's mic and camera (a keyframe when one was asked for).
    fn publish_box(&mut self, now: Instant) {
        let n = self.box_audio.len() as u64;
        let audio = frame(ParticipantId::BOX, Codec::Opus, n, false);
        let time = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
        self.sfu
            .handle_box_frame(BoxEncoding::Opus, time, &audio, now);
        self.box_audio.push(audio);
        let key = std::mem::take(&mut self.box_keyframe_wanted);
        let (high_bytes, low_bytes) = self.box_frame_bytes;
        let video = delimited(sized(
            frame(ParticipantId::BOX, Codec::H264, n, key),
            high_bytes,
        ));
        let time = MediaTime::new(n * 1800, Frequency::NINETY_KHZ);
        self.sfu
            .handle_box_frame(BoxEncoding::H264, time, &video, now);
        self.box_video.push(video);
        // The half-size encoding: frames of its own, told apart by their number.
        let low = frame(ParticipantId::BOX, Codec::H264, n + LOW_FRAMES, key);
        let low = delimited(sized(low, low_bytes));
        self.sfu
            .handle_box_frame(BoxEncoding::H264Low, time, &low, now);
        self.box_video_low.push(low);
    }

    /// Step until `done` holds, for at most `limit` of simulated time. Returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> bool {
        let end = self.now + limit;
        while !done(self) {
            if self.now >= end {
                return false;
            }
            self.step();
        }
        true
    }

    /// Step for `span` of simulated time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.step();
        }
    }

    /// The SFU's events (offers aside) from `since` on.
    pub fn sfu_events_since(&self, since: Instant) -> impl Iterator<Item = &SfuEvent> {
        self.sfu_events
            .iter()
            .filter(move |(t, _)| *t >= since)
            .map(|(_, e)| e)
    }

    /// Everything the SFU has to send or say now, delivered; whether there was anything.
    fn deliver_sfu_outputs(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        loop {
            let started = Instant::now();
            let output = self.sfu.poll_output();
            self.sfu_busy += started.elapsed();
            let Some(output) = output else {
                break;
            };
            moved = true;
            match output {
                SfuOutput::Transmit(t) => {
                    let Some(phone) = self.phones.iter_mut().find(|p| p.addr == t.destination)
                    else {
                        continue;
                    };
                    if phone.downlink_kbps.is_some() {
                        let size = t.contents.len() as f64;
                        if phone.downlink_tokens < size {
                            continue;
                        }
                        phone.downlink_tokens -= size;
                    }
                    if !phone.takes(&t.contents, now) {
                        continue;
                    }
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: SFU_ADDR,
                            destination: t.destination,
                            contents: t.contents.as_slice().try_into().expect("datagram"),
                        },
                    );
                    phone.rtc.handle_input(input).expect("phone input");
                }
                SfuOutput::Event(SfuEvent::Offer(id, sdp)) => {
                    let Some(phone) = self.phones.iter_mut().find(|p| p.id == id) else {
                        continue;
                    };
                    phone.unanswered.push((now + phone.answer_delay, sdp));
                }
                SfuOutput::Event(e) => {
                    if e == SfuEvent::BoxKeyframe {
                        self.box_keyframe_wanted = true;
                    }
                    self.sfu_events.push((now, e));
                }
            }
        }
        moved
    }

    /// Deliver everything until all are quiet: phones' datagrams to the SFU, the SFU's to the
    /// phones, the SFU's offers to the phones and their answers back.
    fn pump(&mut self) {
        let now = self.now;
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            let mut uplink = Vec::new();
            for phone in &mut self.phones {
                let mut timeouts = 0;
                loop {
                    match phone.rtc.poll_output().expect("phone output") {
                        // Its pacer releases a packet per timeout and asks for the next at
                        // once: a browser sends a frame's packets in a burst, so does this.
                        Output::Timeout(t) if t <= now + IMMEDIATE && timeouts < MAX_ROUNDS => {
                            timeouts += 1;
                            phone
                                .rtc
                                .handle_input(Input::Timeout(t.max(now)))
                                .expect("phone timeout");
                        }
                        Output::Timeout(t) => {
                            phone.timeout = t;
                            break;
                        }
                        Output::Transmit(t) => {
                            if phone.uplink {
                                uplink.push((t.source, t.destination, t.contents.to_vec()));
                            }
                        }
                        Output::Event(e) => {
                            if matches!(e, Event::KeyframeRequest(_)) {
                                phone.keyframe_wanted = true;
                            }
                            phone.events.push((now, e));
                        }
                    }
                }
            }
            // As the daemon reads them: all that came in one step together, or each alone
            // with what it makes sent before the next is read.
            let batches: Vec<&[(SocketAddr, SocketAddr, Vec<u8>)]> =
                match self.one_datagram_at_a_time {
                    true => uplink.chunks(1).collect(),
                    false => vec![&uplink[..]],
                };
            for batch in batches {
                // Alone, each is read a little after the last, as datagrams come over a link.
                let read = match self.one_datagram_at_a_time {
                    true => {
                        let next = self.sfu.now().map_or(now, |t| t + DATAGRAM_SPACING);
                        next.clamp(now, now + MIN_STEP - DATAGRAM_SPACING)
                    }
                    false => now,
                };
                let started = Instant::now();
                for (source, destination, contents) in batch {
                    self.sfu
                        .handle_datagram(read, *source, *destination, contents);
                }
                self.sfu_busy += started.elapsed();
                moved |= self.deliver_sfu_outputs();
            }
            moved |= !uplink.is_empty();
            moved |= self.deliver_sfu_outputs();
            for phone in &mut self.phones {
                let due = phone
                    .unanswered
                    .iter()
                    .take_while(|(t, _)| *t <= now)
                    .count();
                for (_, sdp) in phone.unanswered.drain(..due) {
                    moved = true;
                    let offer = SdpOffer::from_sdp_string(&sdp).expect("offer parses");
                    let answer = phone
                        .rtc
                        .sdp_api()
                        .accept_offer(offer)
                        .expect("phone accepts the offer");
                    phone.offers.push(sdp);
                    self.sfu
                        .handle_answer(phone.id, &answer.to_sdp_string(), now)
                        .expect("SFU accepts the answer");
                }
            }
            if !moved {
                return;
            }
        }
        panic!("still exchanging datagrams after {MAX_ROUNDS} rounds");
    }
}
