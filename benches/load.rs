//! `make bench-load` (`cargo bench --bench load`): the SFU at scale, with no browser.
//!
//! N load clients in this one process, each a str0m `Rtc` as a phone (full ICE, offering
//! first), join the real `hearth` daemon (`[box] media = false`: the SFU only) over its
//! WebSocket signalling. Each publishes H.264 (640x480, 30 fps, ~500 kbit/s) and Opus (20 ms
//! frames) at real time, looping a few seconds encoded once at start by GStreamer, and
//! subscribes to everyone else. Every frame a client receives must be byte-identical to one
//! of the pre-encoded ones: a mismatch fails the bench.
//!
//! For each N (a new daemon each, so counters and the latency window start clean): wait until
//! every client has frames of every other's audio and video, settle, then over a window:
//! - the daemon's CPU (utime + stime) per 1000 packets it forwarded (`hearth status`), with the
//!   RTP packets the clients received as a cross-check, and as % of one core;
//! - its forwarding latency (datagram read → last copy handed to the socket), p50 and p99;
//! - delivery: frames received over frames the others sent, per kind (frames on their way at
//!   the window's edges can put it a hair over 100 %);
//! - on paper, the most participants one core holds at the measured cost per packet.
//!
//! `-- --sizes 4,8` picks call sizes (default 4, 8, 12), `-- --seconds S` the window (20).
//! Run inside `tests/in-netns` (the Makefile does): the clients and the daemon's media use
//! its interface 10.213.0.1, signalling its loopback.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use hearth_test_support::tokio_tungstenite::tungstenite::{Error as WsError, Message};
use hearth_test_support::wss::{self, Socket};
use hearth_test_support::{temp_dir, Daemon};
use serde_json::json;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaData, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};

const SIZES: [usize; 3] = [4, 8, 12];
/// A client must be through signalling (welcome, offer, answer) within this.
const JOIN_WITHIN: Duration = Duration::from_secs(20);
/// Everyone must receive everyone within this, or the bench fails.
const EVERYONE_WITHIN: Duration = Duration::from_secs(60);
/// After everyone receives everyone, before the window: keyframe requests and the SFU's
/// bandwidth estimates settle.
const SETTLE: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(20);
/// The address of the namespace's interface (`tests/in-netns`): the daemon offers it as its
/// media candidate, and browsers, like these clients, never use loopback for media.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// Seconds of media encoded at start and looped; the video's second keyframe is half way.
const LOOP_SECONDS: u64 = 4;
const VIDEO_FPS: u64 = 30;
const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// 90 kHz RTP clock over 30 fps.
const VIDEO_RTP_TICKS: u64 = 90_000 / VIDEO_FPS;
/// 48 kHz over 20 ms.
const AUDIO_RTP_TICKS: u64 = 960;
/// A `constrained-baseline` caps filter makes x264 stay in what every phone decodes;
/// `config-interval=-1` puts SPS and PPS before each keyframe, so a late subscriber can start
/// at any keyframe of the loop.
const VIDEO_PIPELINE: &str = "videotestsrc pattern=smpte horizontal-speed=3 num-buffers={frames} \
    ! video/x-raw,width=640,height=480,framerate=30/1 \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=500 \
    ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 \
    ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false";
const AUDIO_PIPELINE: &str = "audiotestsrc samplesperbuffer=960 num-buffers={frames} \
    ! audio/x-raw,rate=48000,channels=1 ! opusenc frame-size=20 ! appsink name=sink sync=false";

/// A frame written this much after it was due counts as late (a starved client).
const LATE: Duration = Duration::from_millis(10);
/// Frames of one kind written in one wake-up at most; a client further behind skips ahead.
const MAX_CATCH_UP: u32 = 10;
/// Datagrams read in one wake-up at most before timers get their turn.
const MAX_READS: usize = 64;
/// Outputs drained from an `Rtc` at once; more means it is stuck in a loop.
const MAX_OUTPUTS: usize = 10_000;
/// Each client's socket receive buffer, in bytes (the kernel caps it at `net.core.rmem_max`).
const CLIENT_RECEIVE_BUFFER: libc::c_int = 4 << 20;
/// Largest datagram read.
const MTU: usize = 2000;

const AUDIO: usize = 0;
const VIDEO: usize = 1;

fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => AUDIO,
        MediaKind::Video => VIDEO,
    }
}

/// The media every client sends, encoded once: frames in loop order, and the same frames in
/// sets, to check what a client receives against.
struct Media {
    video: Vec<Arc<[u8]>>,
    keyframe: Vec<bool>,
    audio: Vec<Arc<[u8]>>,
    video_set: HashSet<Arc<[u8]>>,
    audio_set: HashSet<Arc<[u8]>>,
    /// Every NAL unit of the video, to tell a frame cut short by a loss from a corrupted one.
    video_nals: HashSet<Vec<u8>>,
}

impl Media {
    fn encode() -> Result<Media> {
        gst::init()?;
        let frames = (LOOP_SECONDS * VIDEO_FPS) as usize;
        let video: Vec<Arc<[u8]>> = pull(VIDEO_PIPELINE, frames)?
            .iter()
            .map(|au| canonical_h264(au).into())
            .collect();
        if video.len() != frames {
            bail!(
                "x264enc gave {} access units for {frames} frames",
                video.len()
            );
        }
        let keyframe: Vec<bool> = video.iter().map(|au| nal_types(au).contains(&5)).collect();
        if !keyframe[0] {
            bail!("the first access unit is no keyframe: the loop would not start with one");
        }
        let audio_frames = (LOOP_SECONDS * 1000 / AUDIO_FRAME.as_millis() as u64) as usize;
        let audio: Vec<Arc<[u8]>> = pull(AUDIO_PIPELINE, audio_frames)?
            .into_iter()
            .map(Arc::from)
            .collect();
        if audio.len() < audio_frames * 9 / 10 {
            bail!("opusenc gave {} frames for {audio_frames}", audio.len());
        }
        Ok(Media {
            video_nals: video
                .iter()
                .flat_map(|au| nal_units(au).into_iter().map(<[u8]>::to_vec))
                .collect(),
            video_set: video.iter().cloned().collect(),
            audio_set: audio.iter().cloned().collect(),
            video,
            keyframe,
            audio,
        })
    }

    fn describe(&self) -> String {
        let kbps = |frames: &[Arc<[u8]>], seconds: f64| {
            frames.iter().map(|f| f.len()).sum::<usize>() as f64 * 8.0 / seconds / 1000.0
        };
        let video_seconds = self.video.len() as f64 / VIDEO_FPS as f64;
        let audio_seconds = self.audio.len() as f64 * AUDIO_FRAME.as_secs_f64();
        format!(
            "{} H.264 access units ({video_seconds:.1} s, {} keyframes, {:.0} kbit/s), {} Opus frames ({audio_seconds:.1} s, {:.0} kbit/s)",
            self.video.len(),
            self.keyframe.iter().filter(|k| **k).count(),
            kbps(&self.video, video_seconds),
            self.audio.len(),
            kbps(&self.audio, audio_seconds),
        )
    }

    /// The first keyframe at or after `at`, in loop order.
    fn next_keyframe(&self, at: usize) -> usize {
        (0..self.video.len())
            .map(|i| (at + i) % self.video.len())
            .find(|&i| self.keyframe[i])
            .unwrap_or(0)
    }
}

/// Runs a pipeline ending in `appsink name=sink` until `frames` buffers came or it ended.
fn pull(template: &str, frames: usize) -> Result<Vec<Vec<u8>>> {
    let description = template.replace("{frames}", &frames.to_string());
    let pipeline = gst::parse::launch(&description)
        .with_context(|| format!("cannot build {description}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline: {description}"))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .context("no appsink")?;
    pipeline.set_state(gst::State::Playing)?;
    let mut out = Vec::new();
    // Each pull waits at most 10 s; None is the end of the stream (or a failure, below).
    while out.len() < frames {
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) else {
            break;
        };
        if let Some(buffer) = sample.buffer() {
            out.push(buffer.map_readable()?.as_slice().to_vec());
        }
    }
    let error = pipeline
        .bus()
        .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]));
    pipeline.set_state(gst::State::Null)?;
    if let Some(message) = error {
        if let gst::MessageView::Error(e) = message.view() {
            bail!("{description}: {}", e.error());
        }
    }
    Ok(out)
}

/// NAL units of an Annex B access unit, without their start codes.
fn nal_units(au: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (start code begins, NAL unit begins)
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i..i + 3] == [0, 0, 1] {
            let begin = if i > 0 && au[i - 1] == 0 { i - 1 } else { i };
            starts.push((begin, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &(_, from))| {
            let to = starts.get(n + 1).map_or(au.len(), |&(begin, _)| begin);
            &au[from..to]
        })
        .filter(|nal| !nal.is_empty())
        .collect()
}

fn nal_types(au: &[u8]) -> Vec<u8> {
    nal_units(au).iter().map(|nal| nal[0] & 0x1F).collect()
}

/// The access unit as a receiver's str0m gives it back: its packetizer drops access unit
/// delimiters (type 9) and its depacketizer puts a 4-byte start code before every NAL unit.
/// Sending this form makes "byte-identical to what was sent" a check that can hold.
fn canonical_h264(au: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(au.len());
    for nal in nal_units(au).into_iter().filter(|nal| nal[0] & 0x1F != 9) {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
    out
}

/// What one client has sent and received so far; the bench reads it at the window's edges.
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Its participant id ("p3"), from `welcome`.
    id: Option<String>,
    /// Frames written, per kind.
    sent: [u64; 2],
    /// Frames written more than `LATE` after they were due, and frames skipped as too late.
    late: u64,
    skipped: u64,
    /// RTP datagrams received (RTCP, STUN and DTLS not counted): media, and the sender's
    /// resends and bandwidth probes (RTX payload types, or padding).
    rtp_received: u64,
    rtp_extra: u64,
    /// Frames received byte-identical to a pre-encoded one, per publisher id and kind.
    frames: HashMap<String, [u64; 2]>,
    /// Video frames that came out of str0m cut short after a loss: its H.264 depacketizer
    /// takes any whole NAL unit for a frame's start, so a frame whose first slice was lost is
    /// given as its remaining slices, flagged not contiguous. Each NAL unit is checked.
    partial: u64,
    /// Frames received that match none, a failure: bytes never sent, or `truncated`.
    mismatches: u64,
    /// Of those, video frames of whole NAL units sent but missing the first ones, with no
    /// sequence gap before them: the receiver cannot tell that anything is missing.
    truncated: u64,
    first_mismatch: Option<String>,
    /// Datagrams the socket would not take.
    send_failures: u64,
    keyframe_requests: u64,
    /// Why the client stopped, if it failed.
    failed: Option<String>,
}

/// What every client shares with the bench.
struct Shared {
    media: Arc<Media>,
    /// Told when a client first receives a publisher's kind, or fails.
    progress: Notify,
}

/// What woke a client up.
enum Wake {
    Datagram((usize, SocketAddr)),
    Signal(Option<Result<Message, WsError>>),
    Timer,
}

/// One load client: its signalling, its `Rtc` and its socket.
struct Client {
    name: String,
    ws: Socket,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    audio_mid: Mid,
    video_mid: Mid,
    audio_pt: Pt,
    video_pt: Pt,
    shared: Arc<Shared>,
    tally: Arc<Mutex<Tally>>,
    /// Payload types of resends, as negotiated so far.
    rtx_pts: HashSet<u8>,
    /// Publisher id and kind of each mid received on.
    sources: HashMap<Mid, (String, usize)>,
    /// When `Rtc` wants its next timeout.
    rtc_due: Instant,
    /// Set once connected: when the first frames went out, and how many of each since.
    publishing_since: Option<Instant>,
    audio_count: u64,
    video_count: u64,
    /// Where in the loop the next frame comes from.
    audio_at: usize,
    video_at: usize,
    keyframe_wanted: bool,
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Room for a client's datagrams while it waits for a core: at the kernel's default (208 KiB,
/// counted with overhead) a client of a 12-way call holds some 50 ms of them, and a client
/// that drops them is the bench measuring itself. Capped by `net.core.rmem_max`.
fn enlarge_receive_buffer(socket: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = CLIENT_RECEIVE_BUFFER;
    // SAFETY: a valid socket descriptor, an int option with its own size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        bail!("SO_RCVBUF: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// RTP rather than RTCP, STUN or DTLS (RFC 7983 and RFC 5761 demultiplexing).
fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12
        && (128..=191).contains(&datagram[0])
        && !(192..=223).contains(&datagram[1])
}

/// The first payload type negotiated on `mid` for `codec` (H.264: packetization mode 1,
/// constrained baseline preferred, what x264enc makes here).
fn pt_for(rtc: &mut Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let writer = rtc.writer(mid)?;
    writer
        .payload_params()
        .filter(|p| p.spec().codec == codec)
        .filter(|p| codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
        .min_by_key(|p| p.spec().format.profile_level_id != Some(0x42e01f))
        .map(|p| p.pt())
}

fn rtx_pts(rtc: &Rtc) -> HashSet<u8> {
    rtc.codec_config()
        .params()
        .iter()
        .filter_map(|p| p.resend())
        .map(|pt| *pt)
        .collect()
}

/// The daemon's media candidates in an SDP: every one on the namespace's interface, none on
/// loopback, or the bench would not measure what phones see.
fn check_candidates(sdp: &str) -> Result<()> {
    let addresses: Vec<IpAddr> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(4)?.parse().ok())
        .collect();
    if addresses.is_empty() || addresses.iter().any(|a| *a != IpAddr::V4(CLIENT_IP)) {
        bail!("the daemon's candidates are {addresses:?}, not only {CLIENT_IP}");
    }
    Ok(())
}

impl Client {
    /// Joins over `ws` with `token`, offers audio and video, takes the answer.
    async fn join(mut ws: Socket, token: &str, name: String, shared: Arc<Shared>) -> Result<Self> {
        let join = json!({"type": "join", "token": token, "name": name, "video_codecs": ["H264"]});
        wss::send(&mut ws, join).await?;
        // Each message within 10 s (`wss::next`); a welcome comes first, or a refusal.
        let welcome = wss::next(&mut ws)
            .await?
            .context("signalling closed before welcome")?;
        if welcome["type"] != "welcome" {
            bail!("{name}: {welcome}");
        }
        if welcome["publish_video_codec"] != "H264" {
            bail!("{name} is to publish {}", welcome["publish_video_codec"]);
        }
        let tally = Arc::new(Mutex::new(Tally {
            id: welcome["you"].as_str().map(str::to_string),
            ..Tally::default()
        }));

        let socket = UdpSocket::bind((CLIENT_IP, 0)).await?;
        enlarge_receive_buffer(&socket)?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, Protocol::Udp)?);
        let mut change = rtc.sdp_api();
        let audio_mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video_mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().context("nothing to offer")?;
        wss::send(
            &mut ws,
            json!({"type": "offer", "sdp": offer.to_sdp_string()}),
        )
        .await?;
        // The roster may come first; the server offers nothing before it answered.
        let mut answer = None;
        for _ in 0..10 {
            let message = wss::next(&mut ws)
                .await?
                .context("signalling closed before answer")?;
            if message["type"] == "answer" {
                answer = message["sdp"].as_str().map(str::to_string);
                break;
            }
        }
        let answer = answer.with_context(|| format!("{name}: no answer"))?;
        check_candidates(&answer)?;
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;
        let audio_pt = pt_for(&mut rtc, audio_mid, Codec::Opus).context("no Opus agreed")?;
        let video_pt = pt_for(&mut rtc, video_mid, Codec::H264).context("no H.264 agreed")?;
        let rtx_pts = rtx_pts(&rtc);
        Ok(Client {
            name,
            ws,
            rtc,
            socket,
            local,
            audio_mid,
            video_mid,
            audio_pt,
            video_pt,
            shared,
            tally,
            rtx_pts,
            sources: HashMap::new(),
            rtc_due: now,
            publishing_since: None,
            audio_count: 0,
            video_count: 0,
            audio_at: 0,
            video_at: 0,
            keyframe_wanted: false,
        })
    }

    /// The sans-IO loop until `stop` or `deadline`: datagrams and server offers in, due frames
    /// and timers, then everything the `Rtc` has to send or say.
    async fn run(mut self, mut stop: watch::Receiver<bool>, deadline: Instant) -> Result<()> {
        let mut buf = vec![0u8; MTU];
        self.drain()?;
        loop {
            let now = Instant::now();
            if now >= deadline {
                bail!("{} ran past its time limit", self.name);
            }
            let wake = [self.rtc_due, self.next_audio(), self.next_video(), deadline]
                .into_iter()
                .min()
                .unwrap_or(deadline);
            let wake = tokio::select! {
                received = self.socket.recv_from(&mut buf) => Wake::Datagram(received?),
                message = self.ws.next() => Wake::Signal(message),
                _ = tokio::time::sleep_until(wake.into()) => Wake::Timer,
                _ = stop.changed() => break,
            };
            match wake {
                Wake::Datagram((len, from)) => {
                    self.receive(&buf[..len], from)?;
                    // Whatever else has come, before timers get their turn.
                    for _ in 1..MAX_READS {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((len, from)) => self.receive(&buf[..len], from)?,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Wake::Signal(message) => self.signal(message).await?,
                Wake::Timer => {}
            }
            self.tick(Instant::now())?;
        }
        // Leave as a page does; the daemon stops anyway when the bench ends.
        let leave = wss::send(&mut self.ws, json!({"type": "leave"}));
        let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        Ok(())
    }

    fn next_audio(&self) -> Instant {
        match self.publishing_since {
            Some(since) => since + AUDIO_FRAME * self.audio_count as u32,
            None => Instant::now() + Duration::from_secs(1),
        }
    }

    fn next_video(&self) -> Instant {
        match self.publishing_since {
            Some(since) => {
                since + Duration::from_nanos(self.video_count * 1_000_000_000 / VIDEO_FPS)
            }
            None => Instant::now() + Duration::from_secs(1),
        }
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) -> Result<()> {
        if is_rtp(datagram) {
            let padding = datagram[0] & 0x20 != 0;
            let extra = padding || self.rtx_pts.contains(&(datagram[1] & 0x7F));
            let mut tally = lock(&self.tally);
            match extra {
                true => tally.rtp_extra += 1,
                false => tally.rtp_received += 1,
            }
        }
        let receive = Receive::new(Protocol::Udp, from, self.local, datagram)?;
        self.rtc
            .handle_input(Input::Receive(Instant::now(), receive))?;
        self.drain()
    }

    /// A server message: offers (others' tracks coming or going) are answered at once.
    async fn signal(&mut self, message: Option<Result<Message, WsError>>) -> Result<()> {
        let text = match message {
            None | Some(Ok(Message::Close(_))) => {
                bail!("{}: the server closed signalling", self.name)
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
        };
        let message: serde_json::Value = serde_json::from_str(&text)?;
        match message["type"].as_str() {
            Some("offer") => {
                let sdp = message["sdp"].as_str().context("an offer without SDP")?;
                let answer = self
                    .rtc
                    .sdp_api()
                    .accept_offer(SdpOffer::from_sdp_string(sdp)?)?;
                let reply = json!({"type": "answer", "sdp": answer.to_sdp_string()});
                wss::send(&mut self.ws, reply).await?;
                self.rtx_pts = rtx_pts(&self.rtc);
                self.drain()
            }
            Some("error") => bail!("{}: the server says {message}", self.name),
            _ => Ok(()),
        }
    }

    /// Frames that are due, then the `Rtc`'s timers.
    fn tick(&mut self, now: Instant) -> Result<()> {
        if let Some(since) = self.publishing_since {
            for _ in 0..MAX_CATCH_UP {
                let due = self.next_audio();
                if due > now {
                    break;
                }
                self.write_audio(now, due)?;
            }
            for _ in 0..MAX_CATCH_UP {
                let due = self.next_video();
                if due > now {
                    break;
                }
                self.write_video(now, due)?;
            }
            // Starved for longer than a catch-up covers: skip to now, as a live source would.
            let elapsed = now.duration_since(since);
            let audio_now = (elapsed.as_nanos() / AUDIO_FRAME.as_nanos()) as u64;
            let video_now = (elapsed.as_nanos() * VIDEO_FPS as u128 / 1_000_000_000) as u64;
            let skipped = audio_now.saturating_sub(self.audio_count)
                + video_now.saturating_sub(self.video_count);
            if skipped > 0 {
                lock(&self.tally).skipped += skipped;
                self.audio_count = self.audio_count.max(audio_now);
                self.video_count = self.video_count.max(video_now);
            }
        }
        if self.rtc_due <= now {
            self.rtc.handle_input(Input::Timeout(now))?;
        }
        self.drain()
    }

    fn write_audio(&mut self, now: Instant, due: Instant) -> Result<()> {
        let media = Arc::clone(&self.shared.media);
        let frame = Arc::clone(&media.audio[self.audio_at]);
        self.audio_at = (self.audio_at + 1) % media.audio.len();
        let time = MediaTime::new(
            self.audio_count * AUDIO_RTP_TICKS,
            Frequency::FORTY_EIGHT_KHZ,
        );
        let writer = self.rtc.writer(self.audio_mid).context("no audio writer")?;
        writer.write(self.audio_pt, now, time, frame)?;
        self.audio_count += 1;
        self.count_sent(AUDIO, now, due);
        self.drain()
    }

    fn write_video(&mut self, now: Instant, due: Instant) -> Result<()> {
        let media = Arc::clone(&self.shared.media);
        // A keyframe asked for (a new subscriber): the loop's next one, at once.
        if std::mem::take(&mut self.keyframe_wanted) {
            self.video_at = media.next_keyframe(self.video_at);
        }
        let frame = Arc::clone(&media.video[self.video_at]);
        self.video_at = (self.video_at + 1) % media.video.len();
        let time = MediaTime::new(self.video_count * VIDEO_RTP_TICKS, Frequency::NINETY_KHZ);
        let writer = self.rtc.writer(self.video_mid).context("no video writer")?;
        writer.write(self.video_pt, now, time, frame)?;
        self.video_count += 1;
        self.count_sent(VIDEO, now, due);
        self.drain()
    }

    fn count_sent(&self, kind: usize, now: Instant, due: Instant) {
        let mut tally = lock(&self.tally);
        tally.sent[kind] += 1;
        if now.duration_since(due) > LATE {
            tally.late += 1;
        }
    }

    /// Everything the `Rtc` has to send or say, until it names its next timeout.
    fn drain(&mut self) -> Result<()> {
        for _ in 0..MAX_OUTPUTS {
            match self.rtc.poll_output()? {
                Output::Timeout(due) => {
                    self.rtc_due = due;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if self.socket.try_send_to(&t.contents, t.destination).is_err() {
                        lock(&self.tally).send_failures += 1;
                    }
                }
                Output::Event(event) => self.event(event),
            }
        }
        bail!("{}: more than {MAX_OUTPUTS} outputs at once", self.name)
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Connected if self.publishing_since.is_none() => {
                self.publishing_since = Some(Instant::now());
            }
            Event::KeyframeRequest(request) if request.mid == self.video_mid => {
                self.keyframe_wanted = true;
                lock(&self.tally).keyframe_requests += 1;
            }
            Event::MediaData(data) => self.check(&data),
            _ => {}
        }
    }

    /// A received frame: whose, and whether it is exactly one that was sent.
    fn check(&mut self, data: &MediaData) {
        let source = match self.sources.get(&data.mid) {
            Some(source) => source.clone(),
            None => {
                let Some(media) = self.rtc.media(data.mid) else {
                    return;
                };
                // The SFU names each forwarded track's stream after its publisher.
                let source = (media.stream_id().to_string(), kind_index(media.kind()));
                self.sources.insert(data.mid, source.clone());
                source
            }
        };
        let (publisher, kind) = source;
        let known = match kind {
            AUDIO => &self.shared.media.audio_set,
            _ => &self.shared.media.video_set,
        };
        let mut tally = lock(&self.tally);
        if !known.contains(&data.data[..]) {
            // Whole NAL units of the sent video, but not a whole frame: its first ones are missing.
            let nals = nal_units(&data.data);
            let truncated = kind == VIDEO
                && !nals.is_empty()
                && nals
                    .iter()
                    .all(|nal| self.shared.media.video_nals.contains(*nal));
            // After a sequence gap the receiver knows it lost something: a loss, not corruption.
            if truncated && !data.contiguous {
                tally.partial += 1;
                return;
            }
            tally.mismatches += 1;
            if truncated {
                tally.truncated += 1;
            }
            if tally.first_mismatch.is_none() {
                tally.first_mismatch = Some(format!(
                    "{} got {} frame of {} bytes from {publisher} (mid {}, contiguous {}, NAL unit types {:?}{}) that was never sent: {:02x?}…",
                    self.name,
                    ["an audio", "a video"][kind],
                    data.data.len(),
                    data.mid,
                    data.contiguous,
                    nals.iter().map(|nal| nal[0] & 0x1F).collect::<Vec<_>>(),
                    if truncated { ", each one sent" } else { "" },
                    &data.data[..data.data.len().min(16)]
                ));
            }
            return;
        }
        let count = tally.frames.entry(publisher).or_default();
        count[kind] += 1;
        if count[kind] == 1 {
            self.shared.progress.notify_waiters();
        }
    }
}

/// utime + stime of a process, from /proc/PID/stat, in ms.
fn cpu_ms(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, in USER_HZ (100 on x86-64 and arm64).
    Ok((fields[11].parse::<u64>()? + fields[12].parse::<u64>()?) * 10)
}

/// The whole machine's CPU time from /proc/stat, in USER_HZ ticks: (busy, total, cores).
fn machine_ticks() -> Result<(u64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Ok((total - idle, total, cores))
}

/// Datagrams the kernel dropped at full receive buffers, summed over the namespace's UDP
/// sockets (/proc/net/udp{,6}, `drops`): (the daemon's media port, all others: the clients).
fn udp_drops(daemon_port: u16) -> Result<(u64, u64)> {
    let (mut daemon, mut clients) = (0, 0);
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue; // no IPv6
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields
                .get(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            let drops: u64 = fields.last().and_then(|d| d.parse().ok()).unwrap_or(0);
            match port == Some(daemon_port) {
                true => daemon += drops,
                false => clients += drops,
            }
        }
    }
    Ok((daemon, clients))
}

/// Packets held back from paused videos, over every subscriber's tracks (`hearth status`).
fn paused_packets(status: &serde_json::Value) -> u64 {
    let participants = status["participants"].as_array().into_iter().flatten();
    participants
        .flat_map(|p| p["received"].as_array().into_iter().flatten())
        .filter_map(|track| track["refused"]["paused"].as_u64())
        .sum()
}

/// Everything read at one edge of the window.
struct Snapshot {
    at: Instant,
    daemon_cpu_ms: u64,
    bench_cpu_ms: u64,
    machine: (u64, u64, usize),
    /// Packets the SFU did not forward because a subscriber's video was paused.
    paused: u64,
    /// Subscriptions the SFU offered anew (`media.subscriptions_renewed`).
    renewed: u64,
    /// Receive buffer drops: (daemon, clients).
    udp_drops: (u64, u64),
    forwarded: u64,
    tallies: Vec<Tally>,
}

impl Snapshot {
    fn take(daemon: &Daemon, tallies: &[Arc<Mutex<Tally>>]) -> Result<Snapshot> {
        // The CLI runs as a process of its own: off the runtime's workers, which the clients use.
        let status = tokio::task::block_in_place(|| daemon.status())?;
        Ok(Snapshot {
            at: Instant::now(),
            daemon_cpu_ms: cpu_ms(&daemon.pid().to_string())?,
            bench_cpu_ms: cpu_ms("self")?,
            machine: machine_ticks()?,
            udp_drops: udp_drops(daemon.udp_port)?,
            paused: paused_packets(&status),
            renewed: status["media"]["subscriptions_renewed"]
                .as_u64()
                .unwrap_or(0),
            forwarded: status["media"]["packets_forwarded"]
                .as_u64()
                .context("no packets_forwarded in hearth status")?,
            tallies: tallies.iter().map(|t| lock(t).clone()).collect(),
        })
    }
}

/// Subscriber-publisher pairs still waiting for a publisher's audio or video.
fn missing_pairs(tallies: &[Tally]) -> usize {
    let ids: Vec<Option<&String>> = tallies.iter().map(|t| t.id.as_ref()).collect();
    let mut missing = 0;
    for tally in tallies {
        for id in ids
            .iter()
            .flatten()
            .filter(|id| Some(**id) != tally.id.as_ref())
        {
            if !tally
                .frames
                .get(*id)
                .is_some_and(|f| f[AUDIO] > 0 && f[VIDEO] > 0)
            {
                missing += 1;
            }
        }
    }
    missing
}

/// One call of `n` clients on a new daemon: the figures, or an error if something failed
/// (mismatched frames included, after the figures are printed).
async fn measure(n: usize, window: Duration, media: &Arc<Media>) -> Result<()> {
    // `max_participants` lands in the [call] table (`start_with` appends after it): the
    // default of 8 would refuse the ninth client.
    let config = format!("max_participants = {n}\n[box]\nmedia = false\n");
    let daemon =
        tokio::task::block_in_place(|| Daemon::start_with(&temp_dir("bench-load"), &config))?;
    let result = call(&daemon, n, window, media).await;
    tokio::task::block_in_place(move || drop(daemon));
    result
}

async fn call(daemon: &Daemon, n: usize, window: Duration, media: &Arc<Media>) -> Result<()> {
    let token = daemon
        .join_url
        .split_once('#')
        .map(|(_, t)| t.to_string())
        .context("no token in the join link")?;
    let shared = Arc::new(Shared {
        media: Arc::clone(media),
        progress: Notify::new(),
    });
    let started = Instant::now();
    let deadline = started + EVERYONE_WITHIN + SETTLE + window + Duration::from_secs(30);
    let (stop, stopped) = watch::channel(false);
    let mut tallies = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let name = format!("Load {}", i + 1);
        let joining = async {
            let ws = wss::connect(daemon).await?;
            Client::join(ws, &token, name, Arc::clone(&shared)).await
        };
        let client = tokio::time::timeout(JOIN_WITHIN, joining)
            .await
            .map_err(|_| anyhow!("not joined within {JOIN_WITHIN:?}"))
            .and_then(|joined| joined)
            .with_context(|| format!("client {} joining", i + 1))?;
        let tally = Arc::clone(&client.tally);
        tallies.push(Arc::clone(&tally));
        let (shared, stopped) = (Arc::clone(&shared), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let result = client.run(stopped, deadline).await;
            if let Err(e) = &result {
                lock(&tally).failed = Some(format!("{e:#}"));
                shared.progress.notify_waiters();
            }
            result
        }));
    }

    let figures = async {
        let everyone_by = started + EVERYONE_WITHIN;
        loop {
            let progress = shared.progress.notified();
            let now: Vec<Tally> = tallies.iter().map(|t| lock(t).clone()).collect();
            if let Some(failed) = now.iter().find_map(|t| t.failed.clone()) {
                bail!("a client failed: {failed}");
            }
            if missing_pairs(&now) == 0 {
                break;
            }
            if tokio::time::timeout_at(everyone_by.into(), progress).await.is_err() {
                bail!(
                    "after {EVERYONE_WITHIN:?}, {} of {} subscriber-publisher pairs still miss audio or video",
                    missing_pairs(&now),
                    n * (n - 1)
                );
            }
        }
        let everyone = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        let before = Snapshot::take(daemon, &tallies)?;
        tokio::time::sleep(window).await; // the measurement window, not synchronisation
        let after = Snapshot::take(daemon, &tallies)?;
        let status = tokio::task::block_in_place(|| daemon.status())?;
        report(n, everyone, &before, &after, &status)
    }
    .await;

    let _ = stop.send(true);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if figures.is_ok() => return Err(e),
            Ok(Err(e)) if figures.is_ok() => return Err(e.into()),
            Err(_) if figures.is_ok() => bail!("a client did not stop within 10 s"),
            _ => {}
        }
    }
    figures
}

/// Prints the figures of one call size; an error if frames were corrupted.
fn report(
    n: usize,
    everyone: Duration,
    before: &Snapshot,
    after: &Snapshot,
    status: &serde_json::Value,
) -> Result<()> {
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let cpu = after.daemon_cpu_ms.saturating_sub(before.daemon_cpu_ms) as f64;
    let bench_cpu = after.bench_cpu_ms.saturating_sub(before.bench_cpu_ms) as f64;
    let forwarded = after.forwarded.saturating_sub(before.forwarded);
    let sum = |f: &dyn Fn(&Tally) -> u64| {
        let total = |s: &Snapshot| s.tallies.iter().map(f).sum::<u64>();
        total(after).saturating_sub(total(before))
    };
    let rtp_received = sum(&|t| t.rtp_received);
    let rtp_extra = sum(&|t| t.rtp_extra);
    let late = sum(&|t| t.late);
    let skipped = sum(&|t| t.skipped);
    let send_failures = sum(&|t| t.send_failures);
    let keyframe_requests = sum(&|t| t.keyframe_requests);
    let written = sum(&|t| t.sent[AUDIO] + t.sent[VIDEO]);
    let partial = sum(&|t| t.partial);
    let mismatches = after.tallies.iter().map(|t| t.mismatches).sum::<u64>();
    let truncated = after.tallies.iter().map(|t| t.truncated).sum::<u64>();
    let paused = after.paused.saturating_sub(before.paused);
    let renewed = after.renewed.saturating_sub(before.renewed);
    let daemon_drops = after.udp_drops.0.saturating_sub(before.udp_drops.0);
    let client_drops = after.udp_drops.1.saturating_sub(before.udp_drops.1);

    // Per kind: frames each subscriber received from the others, over what the others sent.
    let mut received = [0u64; 2];
    let mut expected = [0u64; 2];
    for (s, subscriber) in after.tallies.iter().enumerate() {
        for (p, publisher) in after.tallies.iter().enumerate().filter(|(p, _)| *p != s) {
            let id = publisher.id.clone().unwrap_or_default();
            let got = |t: &Tally, kind: usize| t.frames.get(&id).map_or(0, |f| f[kind]);
            for kind in [AUDIO, VIDEO] {
                received[kind] += got(subscriber, kind) - got(&before.tallies[s], kind);
                expected[kind] += publisher.sent[kind] - before.tallies[p].sent[kind];
            }
        }
    }
    let percent = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;

    println!(
        "N = {n} (a new daemon): each client publishes H.264 + Opus and subscribes to the other {}; everyone received everyone {:.1} s after the first join, window {seconds:.1} s",
        n - 1,
        everyone.as_secs_f64(),
    );
    if forwarded == 0 {
        bail!("N = {n}: the SFU forwarded nothing in the window");
    }
    println!(
        "  SFU CPU: {:.1} ms per 1000 forwarded packets ({cpu:.0} ms for {forwarded} packets, {:.0}/s; {:.1} % of one core)",
        cpu * 1000.0 / forwarded as f64,
        forwarded as f64 / seconds,
        100.0 * cpu / 1000.0 / seconds,
    );
    println!(
        "  cross-check: the clients received {rtp_received} RTP media packets ({:.1} % of those forwarded), and {rtp_extra} resends and probes",
        percent(rtp_received, forwarded),
    );
    let latency = &status["forwarding_latency_us"];
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("-".to_string(), |us| format!("{:.2}", us / 1000.0))
    };
    println!(
        "  forwarding latency (datagram read -> last copy to the socket): p50 {} ms, p99 {} ms over the last {} datagrams",
        ms(&latency["median"]),
        ms(&latency["p99"]),
        latency["count"],
    );
    println!(
        "  delivery: video {}/{} frames ({:.1} %), audio {}/{} ({:.1} %); frames not byte-identical to any sent: {mismatches}",
        received[VIDEO],
        expected[VIDEO],
        percent(received[VIDEO], expected[VIDEO]),
        received[AUDIO],
        expected[AUDIO],
        percent(received[AUDIO], expected[AUDIO]),
    );
    println!(
        "  losses: datagrams dropped at full receive buffers: daemon {daemon_drops}, clients {client_drops}; video frames cut short after a sequence gap: {partial}; packets the SFU held back from videos it paused: {paused}; subscriptions it renewed: {renewed}"
    );
    // c: CPU-ms per forwarded packet; r: packets per second per (publisher, subscriber) pair.
    let c = cpu / forwarded as f64;
    let r = forwarded as f64 / seconds / (n * (n - 1)) as f64;
    let most = (2..=1000usize)
        .take_while(|&m| c * (m * (m - 1)) as f64 * r <= 1000.0)
        .last();
    println!(
        "  one core, on paper: largest N with c·N·(N−1)·r ≤ 1000 ms/s, c = {c:.4} CPU-ms per packet, r = {r:.1} packets/s per pair: N = {}",
        most.map_or("fewer than 2".to_string(), |m| m.to_string()),
    );
    let (busy, total) = (
        after.machine.0.saturating_sub(before.machine.0),
        after.machine.1.saturating_sub(before.machine.1),
    );
    let cores = after.machine.2;
    let busy_cores = cores as f64 * busy as f64 / total.max(1) as f64;
    let others = busy_cores - (cpu + bench_cpu) / 1000.0 / seconds;
    println!(
        "  machine: {busy_cores:.2} of {cores} cores busy (SFU {:.2}, these clients {:.2}, everything else {:.2}); client frames late > {} ms: {late} of {written}, skipped {skipped}; socket refused {send_failures}; keyframe requests {keyframe_requests}",
        cpu / 1000.0 / seconds,
        bench_cpu / 1000.0 / seconds,
        others.max(0.0),
        LATE.as_millis(),
    );
    // Two ways to tell a starved measurement: no idle core left, and clients sending late.
    if busy_cores > 0.9 * cores as f64 {
        println!(
            "  WARNING: no core was idle ({:.2} cores went to other work): the SFU waited for CPU, which shows in its latency before its CPU per packet",
            others.max(0.0)
        );
    }
    if percent(late + skipped, written) > 1.0 {
        println!("  WARNING: the clients were starved ({late} frames late, {skipped} skipped): delivery and latency are the clients' as much as the SFU's");
    }
    if mismatches > 0 {
        let first = after.tallies.iter().find_map(|t| t.first_mismatch.clone());
        eprintln!(
            "!!! N = {n}: {mismatches} received frames match no frame sent, over the whole run; first: {}",
            first.unwrap_or_default()
        );
        if truncated > 0 {
            eprintln!(
                "!!! {truncated} of them are sent NAL units with the frame's first ones missing and no sequence gap before them: forwarding began mid-frame, numbered on without a gap (a paused video resuming?)"
            );
        }
        bail!("N = {n}: {mismatches} corrupted frames");
    }
    Ok(())
}

/// `--sizes 4,8` and `--seconds S`.
fn arguments() -> Result<(Vec<usize>, Duration)> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)
    };
    let sizes = match value("--sizes") {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .context("--sizes takes a list like 4,8,12")?,
        None => SIZES.to_vec(),
    };
    // The daemon's `max_participants` takes 2 to 16.
    if let Some(n) = sizes.iter().find(|n| !(2..=16).contains(*n)) {
        bail!("--sizes: {n} is not from 2 to 16");
    }
    let window = match value("--seconds") {
        Some(s) => Duration::from_secs(s.parse().context("--seconds takes whole seconds")?),
        None => WINDOW,
    };
    if window.is_zero() {
        bail!("--seconds must be at least 1");
    }
    Ok((sizes, window))
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects no run.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let (sizes, window) = arguments()?;
    str0m::crypto::from_feature_flags().install_process_default();
    let media = Arc::new(tokio::task::block_in_place(Media::encode)?);
    println!("load clients send, looped: {}", media.describe());
    for n in sizes {
        measure(n, window, &media).await?;
    }
    Ok(())
}
