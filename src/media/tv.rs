//! The TV and the speaker: each phone's video decoded into a compositor grid with names, each
//! phone's audio decoded into a mixer, the mixed sound passing the echo probe that the mic's
//! echo canceller listens to. With nobody in the call the screen shows a QR code of a join
//! link. One thread owns the pipeline; the hub sends it commands and never waits for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tokio::sync::oneshot;

use super::plan::ECHO_PROBE;
use crate::call::room::ParticipantId;
use crate::call::sfu::{PhoneCodec, PhoneFrame};
use crate::config::board::{AudioProfile, DisplayProfile, DisplaySink};

#[derive(Debug)]
pub enum Command {
    Frame(PhoneFrame),
    /// Phones in the call, in join order, with their names.
    Roster(Vec<(ParticipantId, String)>),
    /// What the idle screen shows: a QR code (`code`: a join link, the owner code, the setup
    /// hotspot), a heading over it, the text printed under it (the link itself, or empty),
    /// and the box's status lines.
    Idle {
        heading: String,
        code: String,
        caption: String,
        status: String,
    },
    /// A line across the top of the screen over the call (privacy on, who paused the box);
    /// empty: none.
    Banner(String),
    Snapshot(PathBuf, oneshot::Sender<Result<(), String>>),
    /// Dev board and tests: fail the way a lost HDMI or sound device does (an error from the
    /// pipeline), so the screen is rebuilt.
    SimulateFailure,
    /// From the pipeline's bus: it failed (the screen is rebuilt).
    Failed(String),
    Stop,
}

/// The first wait before the screen is rebuilt after a failure; it doubles while rebuilds
/// keep failing, up to [`MAX_REBUILD_WAIT`].
const FIRST_REBUILD_WAIT: Duration = Duration::from_millis(500);
const MAX_REBUILD_WAIT: Duration = Duration::from_secs(30);
/// A screen that ran this long before failing starts its waits from the first again.
const RAN_WELL: Duration = Duration::from_secs(60);

/// Phones' frames waiting for the screen's thread; more are dropped (like the box's own
/// capture does), while commands (roster, idle screen, snapshot, stop) always get through.
pub const FRAME_QUEUE: usize = 128;
/// Bytes waiting in one phone's decoder input before the oldest are dropped.
const PHONE_QUEUE_BYTES: u64 = 1_000_000;

/// What the screen has shown and played, for `hearth status` and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub speaker_samples: AtomicU64,
    /// Times the screen was rebuilt after a failure.
    pub restarts: AtomicU64,
    /// Why the screen is not working now (None while it does).
    pub problem: Mutex<Option<String>>,
    /// Phones' frames dropped because the screen's thread was behind.
    pub frames_dropped: AtomicU64,
    /// Per phone: (video frames decoded, audio buffers decoded).
    pub per_phone: Mutex<HashMap<ParticipantId, (u64, u64)>>,
}

pub struct Screen {
    commands: std_mpsc::Sender<Command>,
    /// Frames in `commands` not yet taken by the thread (at most [`FRAME_QUEUE`]).
    frames_queued: Arc<AtomicUsize>,
    pub counters: Arc<Counters>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Screen {
    /// Start the TV and speaker. If they cannot start or fail later (no HDMI, a sound card
    /// that vanished), the call goes on without them while they are rebuilt, with waits
    /// growing to [`MAX_REBUILD_WAIT`]; `events` hears of each rebuild.
    pub fn start(
        display: &DisplayProfile,
        audio: &AudioProfile,
        events: tokio::sync::mpsc::Sender<super::MediaInput>,
    ) -> Screen {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = std_mpsc::channel();
        let frames_queued = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox {
            commands: rx,
            frames_queued: frames_queued.clone(),
        };
        let supervisor = Supervisor {
            display: display.clone(),
            audio: audio.clone(),
            counters: counters.clone(),
            failures: tx.clone(),
            events,
            shown: Shown::default(),
        };
        let thread = thread::Builder::new()
            .name("hearth-screen".into())
            .spawn(move || supervisor.run(inbox))
            .ok();
        Screen {
            commands: tx,
            frames_queued,
            counters,
            thread,
        }
    }

    /// Never waits: a frame is dropped when [`FRAME_QUEUE`] frames are waiting already.
    pub fn send(&self, command: Command) {
        if matches!(command, Command::Frame(_)) {
            if self.frames_queued.load(Ordering::Acquire) >= FRAME_QUEUE {
                self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.frames_queued.fetch_add(1, Ordering::AcqRel);
        }
        let _ = self.commands.send(command);
    }
}

/// What the screen was told to show, replayed into a rebuilt one.
#[derive(Default)]
struct Shown {
    roster: Option<Vec<(ParticipantId, String)>>,
    /// The idle screen's QR code and its text.
    idle: Option<(String, String)>,
    banner: Option<String>,
}

impl Shown {
    /// Keep what `command` changes on screen.
    fn remember(&mut self, command: &Command) {
        match command {
            Command::Roster(names) => self.roster = Some(names.clone()),
            Command::Idle {
                heading,
                code,
                caption,
                status,
            } => self.idle = Some((code.clone(), idle_markup(heading, caption, status))),
            Command::Banner(text) => self.banner = Some(text.clone()),
            _ => {}
        }
    }

    fn replay(&self, state: &mut State) {
        if let Some(names) = &self.roster {
            state.roster(names.clone());
        }
        if let Some((code, text)) = &self.idle {
            state.idle(code, text);
        }
        if let Some(text) = &self.banner {
            state.banner.set_property("text", markup(text));
        }
    }
}

/// Keeps the screen running: builds it, and rebuilds it after a failure.
struct Supervisor {
    display: DisplayProfile,
    audio: AudioProfile,
    counters: Arc<Counters>,
    /// The bus reports failures into the screen's own channel.
    failures: std_mpsc::Sender<Command>,
    events: tokio::sync::mpsc::Sender<super::MediaInput>,
    shown: Shown,
}

impl Supervisor {
    fn run(mut self, inbox: Inbox) {
        let mut wait = FIRST_REBUILD_WAIT;
        let mut built_once = false;
        loop {
            let started = std::time::Instant::now();
            let why = match State::build(
                &self.display,
                &self.audio,
                self.counters.clone(),
                self.failures.clone(),
            ) {
                Ok(mut state) => {
                    self.shown.replay(&mut state);
                    self.set_problem(None);
                    if built_once {
                        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                        let restarted =
                            super::MediaInput::Event(super::MediaEvent::ScreenRestarted);
                        let _ = self.events.blocking_send(restarted);
                        tracing::info!("screen and speaker rebuilt");
                    }
                    built_once = true;
                    match state.run(&inbox, &mut self.shown) {
                        None => return,
                        Some(why) => why,
                    }
                }
                Err(why) => why,
            };
            if started.elapsed() >= RAN_WELL {
                wait = FIRST_REBUILD_WAIT;
            }
            if self.set_problem(Some(why.clone())) {
                tracing::error!(
                    "screen and speaker: {why}; the call goes on without them, rebuilding"
                );
            }
            if !self.wait_out(&inbox, wait, &why) {
                return;
            }
            wait = (wait * 2).min(MAX_REBUILD_WAIT);
        }
    }

    /// True when the problem is news (logged once, not at every attempt).
    fn set_problem(&self, problem: Option<String>) -> bool {
        let mut current = self
            .counters
            .problem
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let news = *current != problem;
        *current = problem;
        news
    }

    /// Wait `wait` without a screen: what it should show is remembered, frames are dropped,
    /// snapshots are refused. False on Stop.
    fn wait_out(&mut self, inbox: &Inbox, wait: Duration, why: &str) -> bool {
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match inbox.recv_timeout(left) {
                Ok(Command::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(std_mpsc::RecvTimeoutError::Timeout) => return true,
                Ok(Command::Snapshot(_, reply)) => {
                    let _ = reply.send(Err(format!("the screen is unavailable: {why}")));
                }
                Ok(command) => self.shown.remember(&command),
            }
        }
    }
}

/// The screen thread's end of the channel, which keeps the count of waiting frames.
struct Inbox {
    commands: std_mpsc::Receiver<Command>,
    frames_queued: Arc<AtomicUsize>,
}

impl Inbox {
    fn recv_timeout(&self, wait: Duration) -> Result<Command, std_mpsc::RecvTimeoutError> {
        self.commands.recv_timeout(wait).inspect(|c| self.taken(c))
    }

    fn taken(&self, command: &Command) {
        if matches!(command, Command::Frame(_)) {
            self.frames_queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the background (and idle QR code) frame is pushed.
const BACKGROUND_FPS: i32 = 4;
/// The screen's frame rate.
const SCREEN_FPS: i32 = 30;
/// The screen's format: the phones' decoders' own, in colour.
const SCREEN_FORMAT: gst_video::VideoFormat = gst_video::VideoFormat::I420;
/// The speaker's sound: the mixer's output, what the echo probe listens to.
const SPEAKER_RATE: i32 = 48_000;

/// The idle screen's QR code: half the screen's height, even (for I420).
fn qr_size(display: &DisplayProfile) -> u32 {
    (display.height / 2) & !1
}

/// What the screen pipeline is made of on a board: decided from the profile alone (and
/// whether a desktop is there), so every board's choice is tested on any machine.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScreenPlan {
    width: u32,
    height: u32,
    video_out: VideoOut,
    speaker: SpeakerOut,
    /// The mixed sound passes a `webrtcechoprobe` named [`ECHO_PROBE`], which the mic's
    /// echo canceller listens to.
    echo_probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoOut {
    /// HDMI through KMS, without a desktop (a Pi).
    Hdmi,
    /// A window on the desktop.
    Window,
    /// Rendered but shown nowhere: only `hearth snapshot` sees it.
    Offscreen,
}

impl VideoOut {
    fn factory(self) -> &'static str {
        match self {
            VideoOut::Hdmi => "kmssink",
            VideoOut::Window => "autovideosink",
            VideoOut::Offscreen => "fakesink",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SpeakerOut {
    /// An ALSA device.
    Alsa(String),
    /// Samples counted (`Counters::speaker_samples`), not played.
    Count,
}

/// The screen pipeline for a board profile; `desktop`: whether a desktop session is there.
fn plan(display: &DisplayProfile, audio: &AudioProfile, desktop: bool) -> ScreenPlan {
    let video_out = match display.sink {
        DisplaySink::Auto if desktop => VideoOut::Window,
        DisplaySink::Auto | DisplaySink::Offscreen => VideoOut::Offscreen,
        DisplaySink::Window => VideoOut::Window,
        DisplaySink::Kmssink => VideoOut::Hdmi,
    };
    let speaker = match audio.playback.as_str() {
        "count" => SpeakerOut::Count,
        device => SpeakerOut::Alsa(device.to_string()),
    };
    ScreenPlan {
        width: display.width,
        height: display.height,
        video_out,
        speaker,
        echo_probe: audio.echo_cancel,
    }
}

fn desktop() -> bool {
    std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// An element from its builder; a missing plugin is an error naming it.
fn build(builder: gst::element_factory::ElementBuilder<'_>) -> Result<gst::Element, String> {
    builder.build().map_err(|e| e.to_string())
}

fn make(factory: &str) -> Result<gst::Element, String> {
    build(gst::ElementFactory::make(factory))
}

fn capsfilter(caps: gst::Caps) -> Result<gst::Element, String> {
    build(gst::ElementFactory::make("capsfilter").property("caps", caps))
}

/// A live source of timed buffers pushed by Hearth.
fn appsrc(name: &str, caps: gst::Caps) -> Result<gst_app::AppSrc, String> {
    build(
        gst::ElementFactory::make("appsrc")
            .name(name)
            .property("format", gst::Format::Time)
            .property("is-live", true)
            .property("do-timestamp", true)
            .property("caps", caps),
    )?
    .downcast()
    .map_err(|_| format!("{name} is not an appsrc"))
}

/// A sink whose buffers Hearth takes (no clock: as they come).
fn appsink(name: &str) -> gst::element_factory::ElementBuilder<'_> {
    gst::ElementFactory::make("appsink")
        .name(name)
        .property("sync", false)
}

/// At most two frames waiting, the oldest dropped: a slow sink never holds up the others.
fn leaky_queue() -> Result<gst::Element, String> {
    build(
        gst::ElementFactory::make("queue")
            .property("max-size-buffers", 2u32)
            .property_from_str("leaky", "downstream"),
    )
}

/// compositor `mix` → the screen's format, size and rate → the `banner` line over it → tee
/// `screen` (to the display and the snapshot). The format is fixed: left free, the compositor takes the format of
/// its inputs with the most pixels, and a grey background would make every phone grey.
fn video_chain(plan: &ScreenPlan) -> Result<Vec<gst::Element>, String> {
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", SCREEN_FORMAT.to_str())
        .field("width", plan.width as i32)
        .field("height", plan.height as i32)
        .field("framerate", gst::Fraction::new(SCREEN_FPS, 1))
        .build();
    Ok(vec![
        build(
            gst::ElementFactory::make("compositor")
                .name("mix")
                .property_from_str("background", "black"),
        )?,
        capsfilter(caps)?,
        build(
            gst::ElementFactory::make("textoverlay")
                .name("banner")
                .property_from_str("valignment", "top")
                .property_from_str("halignment", "center")
                .property("font-desc", "Sans 24")
                .property("text", ""),
        )?,
        make("videoconvert")?,
        build(gst::ElementFactory::make("tee").name("screen"))?,
    ])
}

fn display_chain(plan: &ScreenPlan) -> Result<Vec<gst::Element>, String> {
    let sink = gst::ElementFactory::make(plan.video_out.factory()).property("sync", false);
    Ok(vec![leaky_queue()?, build(sink)?])
}

/// The latest frame as RGB, kept by the appsink `snapshot` for `hearth snapshot`.
fn snapshot_chain() -> Result<Vec<gst::Element>, String> {
    let rgb = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .build();
    let sink = appsink("snapshot")
        .property("max-buffers", 1u32)
        .property("drop", true);
    Ok(vec![
        leaky_queue()?,
        make("videoconvert")?,
        capsfilter(rgb)?,
        build(sink)?,
    ])
}

/// The background frames' layout: the screen's own format and size, so the compositor
/// converts nothing.
fn background_info(plan: &ScreenPlan) -> Result<gst_video::VideoInfo, String> {
    gst_video::VideoInfo::builder(SCREEN_FORMAT, plan.width, plan.height)
        .fps(gst::Fraction::new(BACKGROUND_FPS, 1))
        .build()
        .map_err(|e| format!("screen of {}x{}: {e}", plan.width, plan.height))
}

/// The appsrc `background` (pushed by `State::run`) with the idle screen's text `idle_text`.
fn background_chain(plan: &ScreenPlan) -> Result<Vec<gst::Element>, String> {
    let caps = background_info(plan)?
        .to_caps()
        .map_err(|e| e.to_string())?;
    let src = appsrc("background", caps)?;
    let text = gst::ElementFactory::make("textoverlay")
        .name("idle_text")
        .property_from_str("valignment", "bottom")
        .property_from_str("halignment", "center")
        .property("font-desc", "Sans 16");
    Ok(vec![
        src.upcast(),
        make("videoconvert")?,
        build(text)?,
        make("videoconvert")?,
    ])
}

/// audiomixer `amix` → 48 kHz mono → the echo probe, if any → the speaker.
fn speaker_chain(plan: &ScreenPlan) -> Result<Vec<gst::Element>, String> {
    let caps = gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("rate", SPEAKER_RATE)
        .field("channels", 1i32)
        .build();
    let mut chain = vec![
        build(gst::ElementFactory::make("audiomixer").name("amix"))?,
        make("audioconvert")?,
        make("audioresample")?,
        capsfilter(caps)?,
    ];
    if plan.echo_probe {
        chain.push(build(
            gst::ElementFactory::make("webrtcechoprobe").name(ECHO_PROBE),
        )?);
        chain.push(make("audioconvert")?);
    }
    chain.push(match &plan.speaker {
        SpeakerOut::Count => build(appsink("speaker"))?,
        SpeakerOut::Alsa(device) => build(
            gst::ElementFactory::make("alsasink")
                .property("device", device)
                .property("sync", false),
        )?,
    });
    Ok(chain)
}

/// Silence into the mixer, so the speaker plays (and the echo probe runs) with nobody in.
fn silence_chain() -> Result<Vec<gst::Element>, String> {
    let caps = gst::Caps::builder("audio/x-raw")
        .field("rate", SPEAKER_RATE)
        .field("channels", 1i32)
        .build();
    let src = gst::ElementFactory::make("audiotestsrc")
        .property("is-live", true)
        .property_from_str("wave", "silence");
    Ok(vec![build(src)?, capsfilter(caps)?])
}

/// Add a chain to `bin` and link it in order.
fn add_chain(bin: &impl IsA<gst::Bin>, chain: &[gst::Element]) -> Result<(), String> {
    bin.add_many(chain).map_err(|e| e.to_string())?;
    gst::Element::link_many(chain).map_err(|e| e.to_string())
}

fn link(from: &[gst::Element], to: &[gst::Element]) -> Result<(), String> {
    match (from.last(), to.first()) {
        (Some(a), Some(b)) => a.link(b).map_err(|e| e.to_string()),
        _ => Err("an empty chain".into()),
    }
}

/// The screen pipeline's fixed part, built but not started; phones' branches are added as
/// they come.
fn assemble(plan: &ScreenPlan) -> Result<gst::Pipeline, String> {
    let pipeline = gst::Pipeline::builder().name("screen").build();
    let video = video_chain(plan)?;
    let display = display_chain(plan)?;
    let snapshot = snapshot_chain()?;
    let background = background_chain(plan)?;
    let speaker = speaker_chain(plan)?;
    let silence = silence_chain()?;
    for chain in [&video, &display, &snapshot, &background, &speaker, &silence] {
        add_chain(&pipeline, chain)?;
    }
    link(&video, &display)?;
    link(&video, &snapshot)?;
    // The background first: the compositor's bottom layer, under every phone.
    link(&background, &video)?;
    link(&silence, &speaker)?;
    Ok(pipeline)
}

/// One phone's decoding branch, linked into the compositor or the mixer.
struct Branch {
    bin: gst::Bin,
    src: gst_app::AppSrc,
    /// The name under a phone's video.
    label: Option<gst::Element>,
    mixer_pad: gst::Pad,
    codec: PhoneCodec,
}

/// What a textoverlay shows for `text`: its `text` property is Pango markup, and names and
/// links are text (a name with `&` would show nothing, one with `<span size=…>` fill the TV).
fn markup(text: &str) -> String {
    gst::glib::markup_escape_text(text).to_string()
}

/// The idle screen's words under the QR code.
fn idle_markup(heading: &str, caption: &str, status: &str) -> String {
    let lines: Vec<&str> = [heading, caption, status]
        .into_iter()
        .filter(|line| !line.is_empty())
        .collect();
    markup(&lines.join("\n"))
}

/// A branch's elements, in order, before they go into a bin.
struct BranchParts {
    src: gst_app::AppSrc,
    label: Option<gst::Element>,
    chain: Vec<gst::Element>,
}

/// One phone's decoder: its frames in through an appsrc, decoded video with its name
/// under it (for the compositor) or 48 kHz mono sound (for the mixer) out.
fn branch_parts(codec: PhoneCodec, name: &str) -> Result<BranchParts, String> {
    let caps = match codec {
        PhoneCodec::H264 => gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build(),
        PhoneCodec::Vp8 => gst::Caps::builder("video/x-vp8").build(),
        PhoneCodec::Opus => gst::Caps::builder("audio/x-opus")
            .field("channel-mapping-family", 0i32)
            .field("channels", 2i32)
            .field("rate", SPEAKER_RATE)
            .build(),
    };
    let src = appsrc("src", caps)?;
    // A decoder that falls behind loses the oldest frames, not the box its memory.
    src.set_property("max-bytes", PHONE_QUEUE_BYTES);
    src.set_property_from_str("leaky-type", "downstream");
    let mut chain = vec![src.clone().upcast()];
    let label = match codec {
        PhoneCodec::H264 | PhoneCodec::Vp8 => {
            if codec == PhoneCodec::H264 {
                chain.extend([make("h264parse")?, make("avdec_h264")?]);
            } else {
                chain.push(make("vp8dec")?);
            }
            let label = build(
                gst::ElementFactory::make("textoverlay")
                    .name("label")
                    .property("text", markup(name))
                    .property_from_str("valignment", "bottom")
                    .property_from_str("halignment", "left")
                    .property("font-desc", "Sans 28"),
            )?;
            chain.extend([make("videoconvert")?, label.clone()]);
            Some(label)
        }
        PhoneCodec::Opus => {
            let mono = gst::Caps::builder("audio/x-raw")
                .field("rate", SPEAKER_RATE)
                .field("channels", 1i32)
                .build();
            chain.extend([
                build(gst::ElementFactory::make("opusdec").property("plc", true))?,
                make("audioconvert")?,
                make("audioresample")?,
                capsfilter(mono)?,
            ]);
            None
        }
    };
    Ok(BranchParts { src, label, chain })
}

/// Count what a branch hands to the compositor or the mixer, for `hearth status`.
fn count_buffers(out: &gst::Pad, id: ParticipantId, is_audio: bool, counters: Arc<Counters>) {
    out.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Ok(mut map) = counters.per_phone.lock() {
            let entry = map.entry(id).or_default();
            if is_audio {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// The snapshot appsink's latest frame, kept for `hearth snapshot`.
fn keep_last_frame(snapshot: &gst_app::AppSink) -> Arc<Mutex<Option<gst::Sample>>> {
    let last_frame = Arc::new(Mutex::new(None));
    let keep = last_frame.clone();
    snapshot.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Ok(mut last) = keep.lock() {
                    *last = Some(sample);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    last_frame
}

/// The dev board's speaker: samples counted, not played.
fn count_samples(speaker: &gst_app::AppSink, counters: Arc<Counters>) {
    speaker.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(buffer) = sample.buffer() {
                    // S16LE mono: two bytes a sample.
                    counters
                        .speaker_samples
                        .fetch_add(buffer.size() as u64 / 2, Ordering::Relaxed);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

struct State {
    pipeline: gst::Pipeline,
    compositor: gst::Element,
    /// The line over the call (privacy, who paused the box).
    banner: gst::Element,
    mixer: gst::Element,
    idle_text: gst::Element,
    /// The screen behind the tiles: black, with a QR code when nobody is in the call. Pushed
    /// a few times a second (the compositor shows a live input's latest frame).
    background_src: gst_app::AppSrc,
    background: gst::Buffer,
    background_info: gst_video::VideoInfo,
    last_frame: Arc<Mutex<Option<gst::Sample>>>,
    width: u32,
    height: u32,
    qr_size: u32,
    video: HashMap<ParticipantId, Branch>,
    audio: HashMap<ParticipantId, Branch>,
    names: Vec<(ParticipantId, String)>,
    /// Branches that could not be built, not retried for every frame (until the roster changes).
    failed: std::collections::HashSet<(ParticipantId, bool)>,
    counters: Arc<Counters>,
}

impl State {
    fn build(
        display: &DisplayProfile,
        audio: &AudioProfile,
        counters: Arc<Counters>,
        failures: std_mpsc::Sender<Command>,
    ) -> Result<State, String> {
        let plan = plan(display, audio, desktop());
        let pipeline = assemble(&plan)?;
        let background_info = background_info(&plan)?;
        let get = |name: &str| {
            pipeline
                .by_name(name)
                .ok_or(format!("screen pipeline lacks {name}"))
        };
        let compositor = get("mix")?;
        let mixer = get("amix")?;
        let idle_text = get("idle_text")?;
        let banner = get("banner")?;
        let background_src = get("background")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| "background is not an appsrc")?;
        let snapshot = get("snapshot")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| "snapshot is not an appsink")?;
        let last_frame = keep_last_frame(&snapshot);
        if let Some(speaker) = pipeline
            .by_name("speaker")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        {
            count_samples(&speaker, counters.clone());
        }
        if let Some(bus) = pipeline.bus() {
            // A fault here must be visible, and the screen rebuilt: the call itself goes on.
            bus.set_sync_handler(move |_, message| {
                if let gst::MessageView::Error(e) = message.view() {
                    let from = message
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    let _ = failures.send(Command::Failed(format!("{} ({from})", e.error())));
                }
                gst::BusSyncReply::Drop
            });
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("screen pipeline does not start: {e}"))?;
        Ok(State {
            pipeline,
            compositor,
            banner,
            mixer,
            idle_text,
            background_src,
            background: gst::Buffer::from_slice(background_frame(&background_info, None, 0, 0)),
            background_info,
            last_frame,
            width: display.width,
            height: display.height,
            qr_size: qr_size(display),
            video: HashMap::new(),
            audio: HashMap::new(),
            names: Vec::new(),
            failed: Default::default(),
            counters,
        })
    }

    /// Until Stop (None) or a failure (why).
    fn run(mut self, commands: &Inbox, shown: &mut Shown) -> Option<String> {
        let every = Duration::from_millis(1000 / BACKGROUND_FPS as u64);
        let mut next_background = std::time::Instant::now();
        loop {
            let now = std::time::Instant::now();
            if now >= next_background {
                let _ = self.background_src.push_buffer(self.background.clone());
                next_background = now + every;
            }
            let command =
                match commands.recv_timeout(next_background.saturating_duration_since(now)) {
                    Ok(command) => command,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                };
            shown.remember(&command);
            match command {
                Command::Stop => break,
                Command::Frame(frame) => self.frame(frame),
                Command::Roster(names) => self.roster(names),
                Command::Idle {
                    heading,
                    code,
                    caption,
                    status,
                } => self.idle(&code, &idle_markup(&heading, &caption, &status)),
                Command::Banner(text) => self.banner.set_property("text", markup(&text)),
                Command::Snapshot(path, reply) => {
                    let _ = reply.send(self.snapshot(&path));
                }
                Command::SimulateFailure => {
                    gst::element_error!(
                        self.background_src,
                        gst::ResourceError::NotFound,
                        ["display unplugged (simulated)"]
                    );
                }
                Command::Failed(why) => {
                    let _ = self.pipeline.set_state(gst::State::Null);
                    return Some(why);
                }
            }
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        None
    }

    fn frame(&mut self, frame: PhoneFrame) {
        let is_audio = frame.codec == PhoneCodec::Opus;
        let existing = if is_audio {
            self.audio.get(&frame.from)
        } else {
            self.video.get(&frame.from)
        };
        if existing.is_some_and(|b| b.codec != frame.codec) {
            // The phone switched codec (someone joined who decodes only VP8): new decoder.
            self.remove_branch(frame.from, is_audio);
        }
        let branches = if is_audio { &self.audio } else { &self.video };
        if !branches.contains_key(&frame.from) {
            if self.failed.contains(&(frame.from, is_audio)) {
                return;
            }
            match self.add_branch(frame.from, frame.codec) {
                Ok(branch) => {
                    if is_audio {
                        self.audio.insert(frame.from, branch);
                    } else {
                        self.video.insert(frame.from, branch);
                        self.layout();
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot play {}'s {}: {e}",
                        frame.from,
                        if is_audio { "audio" } else { "video" }
                    );
                    self.failed.insert((frame.from, is_audio));
                    return;
                }
            }
        }
        let branches = if is_audio { &self.audio } else { &self.video };
        if let Some(branch) = branches.get(&frame.from) {
            let buffer = gst::Buffer::from_slice(frame.data.to_vec());
            let _ = branch.src.push_buffer(buffer);
        }
    }

    fn add_branch(&mut self, id: ParticipantId, codec: PhoneCodec) -> Result<Branch, String> {
        let name = self
            .names
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, n)| n.as_str())
            .unwrap_or_default();
        let parts = branch_parts(codec, name)?;
        let is_audio = codec == PhoneCodec::Opus;
        let kind = if is_audio { "audio" } else { "video" };
        let bin = gst::Bin::builder().name(format!("{id}-{kind}")).build();
        add_chain(&bin, &parts.chain)?;
        // Only the output is ghosted: textoverlay's text input, if exposed, would make it
        // wait for text forever.
        let last = parts
            .chain
            .last()
            .and_then(|e| e.static_pad("src"))
            .ok_or("branch without output")?;
        let out = gst::GhostPad::with_target(&last).map_err(|e| e.to_string())?;
        bin.add_pad(&out).map_err(|e| e.to_string())?;
        count_buffers(out.upcast_ref(), id, is_audio, self.counters.clone());
        let mixer = if is_audio {
            &self.mixer
        } else {
            &self.compositor
        };
        let mixer_pad = mixer
            .request_pad_simple("sink_%u")
            .ok_or("mixer has no free input")?;
        let added = self
            .pipeline
            .add(&bin)
            .map_err(|e| e.to_string())
            .and_then(|()| out.link(&mixer_pad).map_err(|e| format!("{e:?}")))
            .and_then(|_| bin.sync_state_with_parent().map_err(|e| e.to_string()));
        if let Err(e) = added {
            let _ = bin.set_state(gst::State::Null);
            let _ = self.pipeline.remove(&bin);
            mixer.release_request_pad(&mixer_pad);
            return Err(e);
        }
        Ok(Branch {
            bin,
            src: parts.src,
            label: parts.label,
            mixer_pad,
            codec,
        })
    }

    fn remove_branch(&mut self, id: ParticipantId, is_audio: bool) {
        let branch = if is_audio {
            self.audio.remove(&id)
        } else {
            self.video.remove(&id)
        };
        let Some(branch) = branch else {
            return;
        };
        let _ = branch.bin.set_state(gst::State::Null);
        if let Some(out) = branch.bin.static_pad("src") {
            let _ = out.unlink(&branch.mixer_pad);
        }
        let mixer = if is_audio {
            &self.mixer
        } else {
            &self.compositor
        };
        mixer.release_request_pad(&branch.mixer_pad);
        let _ = self.pipeline.remove(&branch.bin);
    }

    fn roster(&mut self, names: Vec<(ParticipantId, String)>) {
        let gone: Vec<ParticipantId> = self
            .video
            .keys()
            .chain(self.audio.keys())
            .filter(|id| !names.iter().any(|(p, _)| p == *id))
            .copied()
            .collect();
        for id in gone {
            self.remove_branch(id, false);
            self.remove_branch(id, true);
            if let Ok(mut map) = self.counters.per_phone.lock() {
                map.remove(&id);
            }
        }
        for (id, name) in &names {
            if let Some(label) = self.video.get(id).and_then(|b| b.label.as_ref()) {
                label.set_property("text", markup(name));
            }
        }
        self.names = names;
        self.failed.clear();
        self.layout();
    }

    /// Tiles in a grid of equal cells, in join order; the idle QR code only when empty.
    fn layout(&mut self) {
        let ids: Vec<ParticipantId> = self
            .names
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| self.video.contains_key(id))
            .collect();
        let n = ids.len() as u32;
        let idle = self.names.is_empty();
        if !idle {
            let black = background_frame(&self.background_info, None, 0, 0);
            self.background = gst::Buffer::from_slice(black);
        }
        if !idle {
            self.idle_text.set_property("text", "");
        }
        if n == 0 {
            return;
        }
        let cols = (1..=n).find(|c| c * c >= n).unwrap_or(1);
        let rows = n.div_ceil(cols);
        let (w, h) = (self.width / cols, self.height / rows);
        for (i, id) in ids.iter().enumerate() {
            let i = i as u32;
            if let Some(branch) = self.video.get(id) {
                let pad = &branch.mixer_pad;
                pad.set_property("xpos", ((i % cols) * w) as i32);
                pad.set_property("ypos", ((i / cols) * h) as i32);
                pad.set_property("width", w as i32);
                pad.set_property("height", h as i32);
            }
        }
    }

    fn idle(&mut self, code: &str, text: &str) {
        if !self.names.is_empty() {
            return; // someone joined meanwhile: the tiles stay
        }
        self.idle_text.set_property("text", text);
        let Ok(code) = qrcode::QrCode::new(code.as_bytes()) else {
            return;
        };
        let qr = qr_gray8(&code, self.qr_size);
        let x0 = (self.width.saturating_sub(self.qr_size)) / 2;
        let y0 = (self.height.saturating_sub(self.qr_size)) / 6;
        let frame = background_frame(&self.background_info, Some((&qr, self.qr_size)), x0, y0);
        self.background = gst::Buffer::from_slice(frame);
    }

    fn snapshot(&self, path: &std::path::Path) -> Result<(), String> {
        let sample = self
            .last_frame
            .lock()
            .map_err(|_| "screen state poisoned".to_string())?
            .clone()
            .ok_or("nothing has been shown yet")?;
        let png_caps = gst::Caps::builder("image/png").build();
        let png =
            gst_video::convert_sample(&sample, &png_caps, Some(gst::ClockTime::from_seconds(5)))
                .map_err(|e| format!("cannot encode the snapshot: {e}"))?;
        let buffer = png.buffer().ok_or("empty snapshot")?;
        let map = buffer.map_readable().map_err(|e| e.to_string())?;
        std::fs::write(path, map.as_slice()).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Luma of black and white in I420's video range.
const BLACK_Y: u8 = 16;
const WHITE_Y: u8 = 235;

/// A background frame in `info`'s layout (I420): black, with the square GRAY8 `image` of
/// `size`² pasted at (x0, y0) if given, as much of it as fits.
fn background_frame(
    info: &gst_video::VideoInfo,
    image: Option<(&[u8], u32)>,
    x0: u32,
    y0: u32,
) -> Vec<u8> {
    let mut frame = vec![128u8; info.size()]; // no colour in the chroma planes
    let (offset, stride) = (info.offset()[0], info.stride()[0] as usize);
    let luma = offset..offset + stride * info.height() as usize;
    if let Some(plane) = frame.get_mut(luma) {
        plane.fill(BLACK_Y);
    }
    let Some((image, size)) = image else {
        return frame;
    };
    let width = size.min(info.width().saturating_sub(x0)) as usize;
    for row in 0..size.min(info.height().saturating_sub(y0)) {
        let from = (row * size) as usize;
        let to = offset + (y0 + row) as usize * stride + x0 as usize;
        if let (Some(to), Some(from)) =
            (frame.get_mut(to..to + width), image.get(from..from + width))
        {
            for (y, &gray) in to.iter_mut().zip(from) {
                *y = (BLACK_Y as u32 + gray as u32 * (WHITE_Y - BLACK_Y) as u32 / 255) as u8;
            }
        }
    }
    frame
}

/// A QR code drawn as a GRAY8 image of `size`², dark modules on white with a quiet zone.
fn qr_gray8(code: &qrcode::QrCode, size: u32) -> Vec<u8> {
    let modules = code.width() as u32;
    let total = modules + 8; // four modules of quiet zone each side
    let colors = code.to_colors();
    let mut image = vec![255u8; (size * size) as usize];
    for y in 0..size {
        for x in 0..size {
            let mx = (x * total / size) as i64 - 4;
            let my = (y * total / size) as i64 - 4;
            if mx >= 0 && my >= 0 && (mx as u32) < modules && (my as u32) < modules {
                let index = my as usize * modules as usize + mx as usize;
                if colors[index] == qrcode::Color::Dark {
                    image[(y * size + x) as usize] = 0;
                }
            }
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::board::Board;

    #[test]
    fn frames_beyond_the_queue_are_dropped_and_commands_never_are() {
        let (tx, rx) = std_mpsc::channel();
        let frames_queued = Arc::new(AtomicUsize::new(0));
        let screen = Screen {
            commands: tx,
            frames_queued: frames_queued.clone(),
            counters: Arc::new(Counters::default()),
            thread: None,
        };
        let inbox = Inbox {
            commands: rx,
            frames_queued,
        };
        let frame = || {
            Command::Frame(PhoneFrame {
                from: ParticipantId(1),
                codec: PhoneCodec::Opus,
                data: Arc::from(&[0u8; 8][..]),
            })
        };
        // The screen's thread is behind: nothing is taken.
        for _ in 0..FRAME_QUEUE + 50 {
            screen.send(frame());
        }
        screen.send(Command::Roster(Vec::new()));
        assert_eq!(screen.counters.frames_dropped.load(Ordering::Relaxed), 50);
        let waiting: Vec<Command> = inbox.commands.try_iter().collect();
        assert_eq!(waiting.len(), FRAME_QUEUE + 1);
        assert!(matches!(waiting.last(), Some(Command::Roster(_))));
        // Once the thread takes frames, there is room again.
        for command in &waiting {
            inbox.taken(command);
        }
        screen.send(frame());
        assert!(matches!(
            inbox.recv_timeout(Duration::ZERO),
            Ok(Command::Frame(_))
        ));
        assert_eq!(screen.counters.frames_dropped.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn qr_code_has_dark_modules_and_a_white_quiet_zone() {
        let code = qrcode::QrCode::new(b"https://hearth.local:8443/join#abc").unwrap();
        let image = qr_gray8(&code, 120);
        assert_eq!(image.len(), 120 * 120);
        assert_eq!(image[0], 255);
        assert!(image.iter().filter(|&&p| p == 0).count() > 1000);
    }

    fn profile(board: Board) -> crate::config::board::Profile {
        board.profile(&toml::Table::new()).unwrap()
    }

    #[test]
    fn each_board_chooses_its_screen_and_speaker() {
        let pi = profile(Board::Pi4);
        assert_eq!(
            plan(&pi.display, &pi.audio, false),
            ScreenPlan {
                width: 1920,
                height: 1080,
                video_out: VideoOut::Hdmi,
                speaker: SpeakerOut::Alsa("default".into()),
                echo_probe: true,
            }
        );
        let dev = profile(Board::Dev);
        let headless = plan(&dev.display, &dev.audio, false);
        assert_eq!(headless.video_out, VideoOut::Offscreen);
        assert_eq!(headless.speaker, SpeakerOut::Count);
        assert_eq!(
            plan(&dev.display, &dev.audio, true).video_out,
            VideoOut::Window
        );
    }

    /// From `first`, the elements that follow, one src pad after the other, as
    /// "factory" or "factory name" when the element was given a name; stops after an
    /// element with other than one src pad (a tee, a sink).
    fn downstream(first: &gst::Element) -> Vec<String> {
        let mut seen = Vec::new();
        let mut element = first.clone();
        loop {
            let factory = element.factory().map(|f| f.name().to_string());
            let factory = factory.unwrap_or_default();
            let name = element.name();
            let auto = name.starts_with(factory.as_str())
                && name[factory.len()..].chars().all(|c| c.is_ascii_digit());
            seen.push(if auto {
                factory
            } else {
                format!("{factory} {name}")
            });
            let pads = element.src_pads();
            let next = match pads.as_slice() {
                [pad] => pad.peer().and_then(|p| p.parent_element()),
                _ => None,
            };
            match next {
                Some(next) => element = next,
                None => return seen,
            }
        }
    }

    /// The chains after each of the tee's outputs.
    fn after_tee(pipeline: &gst::Pipeline) -> Vec<Vec<String>> {
        let tee = pipeline.by_name("screen").unwrap();
        tee.src_pads()
            .iter()
            .filter_map(|pad| pad.peer().and_then(|p| p.parent_element()))
            .map(|e| downstream(&e))
            .collect()
    }

    #[test]
    fn dev_screen_is_built_from_its_plan() {
        gst::init().unwrap();
        let dev = profile(Board::Dev);
        let pipeline = assemble(&plan(&dev.display, &dev.audio, false)).unwrap();
        let background = pipeline.by_name("background").unwrap();
        assert_eq!(
            downstream(&background),
            [
                "appsrc background",
                "videoconvert",
                "textoverlay idle_text",
                "videoconvert",
                "compositor mix",
                "capsfilter",
                "textoverlay banner",
                "videoconvert",
                "tee screen"
            ]
        );
        assert_eq!(
            after_tee(&pipeline),
            [
                vec!["queue", "fakesink"],
                vec!["queue", "videoconvert", "capsfilter", "appsink snapshot"]
            ]
        );
        let silence = pipeline.by_name("audiotestsrc0").unwrap();
        assert_eq!(
            downstream(&silence),
            [
                "audiotestsrc",
                "capsfilter",
                "audiomixer amix",
                "audioconvert",
                "audioresample",
                "capsfilter",
                "webrtcechoprobe echo_probe",
                "audioconvert",
                "appsink speaker"
            ]
        );
        let size = pipeline.by_name("mix").unwrap().static_pad("src").unwrap();
        let caps = size.peer().unwrap().parent_element().unwrap();
        let caps = caps.property::<gst::Caps>("caps");
        let caps = caps.structure(0).unwrap();
        assert_eq!(caps.get::<&str>("format"), Ok("I420"));
        assert_eq!(caps.get::<i32>("width"), Ok(1280));
        let background = background.property::<gst::Caps>("caps");
        let background = background.structure(0).unwrap();
        assert_eq!(background.get::<&str>("format"), Ok("I420"));
    }

    #[test]
    fn background_is_black_i420_with_the_qr_code_in_its_luma() {
        gst::init().unwrap();
        let pi = profile(Board::Pi4);
        let mut plan = plan(&pi.display, &pi.audio, false);
        // A common TV size whose rows are padded (to 1368 bytes).
        (plan.width, plan.height) = (1366, 768);
        let info = background_info(&plan).unwrap();
        let (stride, chroma) = (info.stride()[0] as usize, info.offset()[1]);
        assert_eq!(stride, 1368);
        let black = background_frame(&info, None, 0, 0);
        assert_eq!(black.len(), info.size());
        assert!(black[..chroma].iter().all(|&y| y == BLACK_Y));
        assert!(black[chroma..].iter().all(|&c| c == 128));
        let image = [255u8, 0, 0, 255];
        let frame = background_frame(&info, Some((&image, 2)), 1365, 10);
        // The image's first column fits, the second is off the screen.
        assert_eq!(frame[10 * stride + 1365], WHITE_Y);
        assert_eq!(frame[11 * stride + 1365], BLACK_Y);
        assert_eq!(frame[10 * stride + 1366], BLACK_Y);
        assert_eq!(frame.len(), info.size());
    }

    #[test]
    fn pi_screen_drives_hdmi_and_alsa_behind_the_echo_probe() {
        gst::init().unwrap();
        let pi = profile(Board::Pi4);
        let pipeline = assemble(&plan(&pi.display, &pi.audio, true)).unwrap();
        assert_eq!(after_tee(&pipeline)[0], ["queue", "kmssink"]);
        let mixer = pipeline.by_name("amix").unwrap();
        let speaker = downstream(&mixer);
        assert_eq!(
            speaker[speaker.len() - 3..],
            ["webrtcechoprobe echo_probe", "audioconvert", "alsasink"]
        );
        let alsa = pipeline
            .iterate_sinks()
            .into_iter()
            .flatten()
            .find(|e| e.factory().is_some_and(|f| f.name() == "alsasink"))
            .unwrap();
        assert_eq!(alsa.property::<String>("device"), "default");
        assert!(!alsa.property::<bool>("sync"));
    }

    #[test]
    fn phone_branches_decode_each_codec() {
        gst::init().unwrap();
        let factories = |codec| {
            let parts = branch_parts(codec, "Ann").unwrap();
            assert_eq!(parts.chain[0], parts.src.clone().upcast::<gst::Element>());
            parts
                .chain
                .iter()
                .map(|e| e.factory().unwrap().name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            factories(PhoneCodec::H264),
            [
                "appsrc",
                "h264parse",
                "avdec_h264",
                "videoconvert",
                "textoverlay"
            ]
        );
        assert_eq!(
            factories(PhoneCodec::Vp8),
            ["appsrc", "vp8dec", "videoconvert", "textoverlay"]
        );
        assert_eq!(
            factories(PhoneCodec::Opus),
            [
                "appsrc",
                "opusdec",
                "audioconvert",
                "audioresample",
                "capsfilter"
            ]
        );
        let video = branch_parts(PhoneCodec::Vp8, "Ann").unwrap();
        // A decoder that falls behind drops its oldest input.
        assert_eq!(video.src.property::<u64>("max-bytes"), PHONE_QUEUE_BYTES);
        let leaky = video.src.property_value("leaky-type");
        assert!(format!("{leaky:?}").contains("DOWNSTREAM"), "{leaky:?}");
        let label = video.label.unwrap();
        assert_eq!(label.property::<String>("text"), "Ann");
        assert!(branch_parts(PhoneCodec::Opus, "Ann")
            .unwrap()
            .label
            .is_none());
    }

    #[test]
    fn names_and_links_are_shown_as_text_not_markup() {
        gst::init().unwrap();
        let video = branch_parts(PhoneCodec::H264, "A & <b>B</b>").unwrap();
        let label = video.label.unwrap().property::<String>("text");
        assert_eq!(label, "A &amp; &lt;b&gt;B&lt;/b&gt;");
        assert_eq!(
            markup("<span size='90000'>BIG</span>"),
            "&lt;span size=&apos;90000&apos;&gt;BIG&lt;/span&gt;"
        );
        assert_eq!(markup("Gran"), "Gran");
        assert_eq!(
            idle_markup(
                "Scan to join the call",
                "https://box/join?a=1&b=2",
                "Camera & mic on"
            ),
            "Scan to join the call\nhttps://box/join?a=1&amp;b=2\nCamera &amp; mic on"
        );
        assert_eq!(
            idle_markup("Set up", "", "<Wi-Fi>"),
            "Set up\n&lt;Wi-Fi&gt;"
        );
    }
}
