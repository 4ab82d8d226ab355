//! The box's camera and mic: GStreamer pipelines from the board profile, encoded once, handed
//! to the hub frame by frame through appsinks. One supervisor thread per device keeps it
//! running: a device missing at start or failing mid-call is retried every 2 s, and no
//! GStreamer error reaches the rest of the daemon.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use super::plan::{self, CameraFound, Chain};
use super::{BoxFrame, MediaEvent, MediaInput, MediaKindTag};
use crate::call::sfu::BoxEncoding;
use crate::config::board::Profile;

const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Commands to a device's supervisor.
#[derive(Debug)]
enum Command {
    KeyframeNow,
    Bitrate(u32),
    /// The half-size H.264 encoder's bitrate.
    LowBitrate(u32),
    /// Encode VP8 as well (camera only): a phone that cannot decode H.264 is in the call.
    Vp8(bool),
    /// A GStreamer error or end-of-stream from the running pipeline.
    Failed(String),
    /// Dev board only: the simulated device disappears or comes back.
    SimulatePresent(bool),
    /// Privacy: close the device (pipeline to NULL) and do not reopen it until `Resume`.
    Pause,
    Resume,
    Stop,
}

/// Handle to one capture device's supervisor thread.
pub struct Device {
    commands: std_mpsc::Sender<Command>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Device {
    pub fn request_keyframe(&self) {
        let _ = self.commands.send(Command::KeyframeNow);
    }

    pub fn set_bitrate(&self, kbps: u32) {
        let _ = self.commands.send(Command::Bitrate(kbps));
    }

    pub fn set_low_bitrate(&self, kbps: u32) {
        let _ = self.commands.send(Command::LowBitrate(kbps));
    }

    pub fn set_vp8(&self, on: bool) {
        let _ = self.commands.send(Command::Vp8(on));
    }

    pub fn simulate_present(&self, present: bool) {
        let _ = self.commands.send(Command::SimulatePresent(present));
    }

    pub fn pause(&self) {
        let _ = self.commands.send(Command::Pause);
    }

    pub fn resume(&self) {
        let _ = self.commands.send(Command::Resume);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How to build a device's pipeline right now (cameras are looked for on every attempt,
/// since a webcam may be plugged in later).
type Planner = Box<dyn Fn() -> Result<(Chain, Option<String>), String> + Send>;

/// Start the camera's supervisor. It opens nothing until `resume` (privacy must be known
/// first). `device_file` stands for the device node on the dev board, whose devices are
/// simulated: it is held open exactly while capturing, as /dev/video0 would be.
pub fn camera(
    profile: &Profile,
    media: mpsc::Sender<MediaInput>,
    device_file: Option<PathBuf>,
) -> Device {
    let camera = profile.camera.clone();
    let encoder_profile = profile.encoder.clone();
    let planner: Planner = Box::new(move || {
        let has = |name: &str| gst::ElementFactory::find(name).is_some();
        let (libcamera, v4l2) = super::probe::split(&super::probe::cameras());
        let found = plan::find_camera(&camera, &has, libcamera, &v4l2);
        if let CameraFound::Missing(why) = &found {
            return Err(why.clone());
        }
        let encoder = plan::choose_encoder(&encoder_profile, &has)?;
        Ok((
            plan::video_capture(&camera, &found, encoder, encoder_profile.bitrate_kbps),
            Some(encoder.to_string()),
        ))
    });
    spawn(
        MediaKindTag::Video,
        planner,
        media,
        device_file,
        profile.encoder.min_kbps,
        profile.encoder.max_kbps,
    )
}

/// Start the microphone's supervisor (see `camera`).
pub fn microphone(
    profile: &Profile,
    media: mpsc::Sender<MediaInput>,
    device_file: Option<PathBuf>,
) -> Device {
    let audio = profile.audio.clone();
    let planner: Planner = Box::new(move || Ok((plan::audio_capture(&audio), None)));
    spawn(MediaKindTag::Audio, planner, media, device_file, 0, 0)
}

fn spawn(
    kind: MediaKindTag,
    planner: Planner,
    media: mpsc::Sender<MediaInput>,
    device_file: Option<PathBuf>,
    min_kbps: u32,
    max_kbps: u32,
) -> Device {
    let (tx, rx) = std_mpsc::channel();
    let commands = tx.clone();
    let thread = thread::Builder::new()
        .name(format!("hearth-{kind:?}-capture").to_lowercase())
        .spawn(move || {
            Supervisor {
                kind,
                planner,
                media,
                commands: tx,
                min_kbps,
                max_kbps,
                wanted_kbps: Default::default(),
                wanted_low_kbps: Default::default(),
                vp8: false,
                running: None,
                present: true,
                paused: true,
                device_file,
                reported: None,
            }
            .run(rx)
        })
        .ok();
    Device { commands, thread }
}

struct Running {
    pipeline: gst::Pipeline,
    /// The simulated device node, open while capturing (dev board).
    _device: Option<std::fs::File>,
    encoder: Option<(String, gst::Element)>,
    sink: gst_app::AppSink,
    /// The camera's half-size H.264, for phones on a weak link.
    low_sink: Option<gst_app::AppSink>,
    /// The camera's VP8 branch: its valve and its appsink.
    vp8: Option<(gst::Element, gst_app::AppSink)>,
}

struct Supervisor {
    kind: MediaKindTag,
    planner: Planner,
    media: mpsc::Sender<MediaInput>,
    commands: std_mpsc::Sender<Command>,
    min_kbps: u32,
    max_kbps: u32,
    /// The bitrate last asked for: what the encoder is set to whenever a setting runs (they
    /// run on GStreamer's thread pool, in no promised order).
    wanted_kbps: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The same for the half-size encoder.
    wanted_low_kbps: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Whether VP8 is wanted, for this pipeline and any rebuilt one.
    vp8: bool,
    running: Option<Running>,
    /// False while a simulated device is unplugged (dev board).
    present: bool,
    /// Privacy is on (or not yet known): the device stays closed.
    paused: bool,
    device_file: Option<PathBuf>,
    /// What the hub was last told, so it hears of changes only.
    reported: Option<Result<(), String>>,
}

impl Supervisor {
    fn run(mut self, commands: std_mpsc::Receiver<Command>) {
        let mut retry_at = Instant::now();
        loop {
            if self.running.is_none() && !self.paused && Instant::now() >= retry_at {
                let starting = Instant::now();
                match self.start() {
                    Ok(running) => {
                        // A privacy cut that comes meanwhile waits for this.
                        tracing::debug!(
                            "{:?} capture started in {:?}",
                            self.kind,
                            starting.elapsed()
                        );
                        self.running = Some(running);
                        self.report(Ok(()));
                    }
                    Err(why) => {
                        self.report(Err(why));
                        retry_at = Instant::now() + RETRY_EVERY;
                    }
                }
            }
            let wait = if self.running.is_some() || self.paused {
                Duration::from_secs(3600)
            } else {
                retry_at.saturating_duration_since(Instant::now())
            };
            match commands.recv_timeout(wait) {
                Ok(Command::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(Command::KeyframeNow) => self.force_keyframe(),
                Ok(Command::Bitrate(kbps)) => self.set_bitrate(kbps),
                Ok(Command::LowBitrate(kbps)) => self.set_low_bitrate(kbps),
                Ok(Command::Vp8(on)) => {
                    self.vp8 = on;
                    if let Some(Running {
                        vp8: Some((gate, _)),
                        ..
                    }) = &self.running
                    {
                        gate.set_property("drop", !on);
                    }
                }
                Ok(Command::Failed(why)) => {
                    tracing::warn!("{:?} capture stopped: {why}; retrying every 2 s", self.kind);
                    self.stop_pipeline();
                    self.report(Err(why));
                    retry_at = Instant::now() + RETRY_EVERY;
                }
                Ok(Command::Pause) => {
                    self.paused = true;
                    self.close_device();
                    let _ = self
                        .media
                        .blocking_send(MediaInput::Event(MediaEvent::Released {
                            kind: self.kind,
                            at: Instant::now(),
                        }));
                    self.stop_pipeline();
                }
                Ok(Command::Resume) => {
                    self.paused = false;
                    retry_at = Instant::now();
                }
                Ok(Command::SimulatePresent(present)) => {
                    self.present = present;
                    if !present {
                        if let Some(running) = &self.running {
                            // Fail the way a vanished device does: an error from the source.
                            if let Some(src) = running
                                .pipeline
                                .iterate_sources()
                                .into_iter()
                                .flatten()
                                .next()
                            {
                                gst::element_error!(
                                    src,
                                    gst::ResourceError::NotFound,
                                    ["device unplugged (simulated)"]
                                );
                            }
                        }
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        self.stop_pipeline();
    }

    fn report(&mut self, state: Result<(), String>) {
        if self.reported.as_ref() == Some(&state) {
            return;
        }
        self.reported = Some(state.clone());
        // This thread is not async: waiting for room in the channel is fine here.
        let _ = self
            .media
            .blocking_send(MediaInput::Event(MediaEvent::Device {
                kind: self.kind,
                problem: state.err(),
            }));
    }

    fn start(&mut self) -> Result<Running, String> {
        if !self.present {
            return Err("device not present".into());
        }
        let device = self.open_device_node()?;
        let (chain, encoder_name) = (self.planner)()?;
        let description = chain.to_string();
        tracing::debug!("{:?} pipeline: {description}", self.kind);
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| format!("cannot build the pipeline: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "not a pipeline".to_string())?;
        let sink_name = match self.kind {
            MediaKindTag::Video => "video",
            MediaKindTag::Audio => "audio",
        };
        let sink = pipeline
            .by_name(sink_name)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or("the pipeline has no appsink")?;
        let encoder = encoder_name.and_then(|name| {
            let element = pipeline.by_name(plan::HIGH_ENCODER).or_else(|| {
                pipeline
                    .iterate_elements()
                    .into_iter()
                    .flatten()
                    .find(|e| e.factory().is_some_and(|f| f.name() == name.as_str()))
            })?;
            Some((name, element))
        });
        let encoding = match self.kind {
            MediaKindTag::Video => BoxEncoding::H264,
            MediaKindTag::Audio => BoxEncoding::Opus,
        };
        sink.set_callbacks(frames_to_hub(self.kind, encoding, self.media.clone()));
        let low_sink = pipeline
            .by_name("video_low")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok());
        if let Some(low) = &low_sink {
            low.set_callbacks(frames_to_hub(
                self.kind,
                BoxEncoding::H264Low,
                self.media.clone(),
            ));
        }
        let vp8_sink = pipeline
            .by_name("vp8")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok());
        let vp8 = pipeline.by_name(plan::VP8_GATE).zip(vp8_sink);
        if let Some((gate, vp8_sink)) = &vp8 {
            gate.set_property("drop", !self.vp8);
            vp8_sink.set_callbacks(frames_to_hub(
                self.kind,
                BoxEncoding::Vp8,
                self.media.clone(),
            ));
        }
        report_failures(&pipeline, self.commands.clone());
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(format!("cannot start: {e}"));
        }
        Ok(Running {
            pipeline,
            _device: device,
            encoder,
            sink,
            low_sink,
            vp8,
        })
    }

    /// The dev board's stand-in for a device node, held open while capturing.
    fn open_device_node(&self) -> Result<Option<std::fs::File>, String> {
        let Some(path) = &self.device_file else {
            return Ok(None);
        };
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn stop_pipeline(&mut self) {
        if let Some(running) = self.running.take() {
            // NULL closes the device (its file descriptors) before we go on.
            let _ = running.pipeline.set_state(gst::State::Null);
        }
    }

    /// Privacy: the device first, then the rest. The source's element to NULL closes the
    /// device; its thread never waits for the encoder (a leaky queue lies between), so this
    /// does not wait for a frame being encoded. Returns when the device is closed.
    fn close_device(&mut self) {
        if let Some(running) = &mut self.running {
            for source in running.pipeline.iterate_sources().into_iter().flatten() {
                let _ = source.set_state(gst::State::Null);
            }
            running._device = None;
        }
    }

    /// Asked of the encoder on GStreamer's own thread pool (`call_async`), as is a new
    /// bitrate: the encoder takes such requests between two frames, which under load can be
    /// a hundred milliseconds, and this thread must be free for a privacy cut meanwhile.
    fn force_keyframe(&self) {
        if let Some(running) = &self.running {
            tracing::debug!("{:?}: keyframe requested", self.kind);
            let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            let others: Vec<gst_app::AppSink> = running
                .vp8
                .iter()
                .map(|(_, sink)| sink.clone())
                .chain(running.low_sink.clone())
                .collect();
            running.sink.call_async(move |sink| {
                // Every encoder: the request may come from a phone that gets any of them.
                for other in others {
                    other.send_event(event.clone());
                }
                sink.send_event(event);
            });
        }
    }

    fn set_bitrate(&self, kbps: u32) {
        let Some(Running {
            encoder: Some((name, encoder)),
            ..
        }) = &self.running
        else {
            return;
        };
        let kbps = kbps.clamp(self.min_kbps, self.max_kbps.max(self.min_kbps));
        set_bitrate_later(encoder, name, &self.wanted_kbps, kbps);
    }

    /// The half-size encoder follows the phones that get it (`call::sfu::BoxLeg`), within
    /// the bounds the SFU keeps.
    fn set_low_bitrate(&self, kbps: u32) {
        let Some(Running {
            encoder: Some((name, _)),
            pipeline,
            ..
        }) = &self.running
        else {
            return;
        };
        let Some(low) = pipeline.by_name(plan::LOW_ENCODER) else {
            return;
        };
        set_bitrate_later(&low, name, &self.wanted_low_kbps, kbps);
    }
}

/// Set an encoder's bitrate on GStreamer's thread pool (see `force_keyframe`). Settings run
/// in no promised order, so each applies the latest wanted rate, not its own.
fn set_bitrate_later(
    encoder: &gst::Element,
    name: &str,
    wanted: &std::sync::Arc<std::sync::atomic::AtomicU32>,
    kbps: u32,
) {
    wanted.store(kbps, std::sync::atomic::Ordering::Relaxed);
    let (name, wanted) = (name.to_string(), wanted.clone());
    encoder.call_async(move |encoder| {
        let kbps = wanted.load(std::sync::atomic::Ordering::Relaxed);
        set_encoder_bitrate(encoder, &name, kbps)
    });
}

fn set_encoder_bitrate(encoder: &gst::Element, name: &str, kbps: u32) {
    match name {
        "x264enc" => encoder.set_property("bitrate", kbps),
        "openh264enc" => encoder.set_property("bitrate", kbps * 1000),
        "v4l2h264enc" => {
            let controls = gst::Structure::builder("controls")
                .field("video_bitrate", (kbps * 1000) as i32)
                .build();
            encoder.set_property("extra-controls", controls);
        }
        _ => {}
    }
}

/// Each encoded buffer, as a frame for the hub. A full queue means the hub is behind: the
/// frame is dropped rather than stalling capture.
fn frames_to_hub(
    kind: MediaKindTag,
    encoding: BoxEncoding,
    frames: mpsc::Sender<MediaInput>,
) -> gst_app::AppSinkCallbacks {
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let Some(buffer) = sample.buffer() else {
                return Ok(gst::FlowSuccess::Ok);
            };
            let Ok(map) = buffer.map_readable() else {
                return Ok(gst::FlowSuccess::Ok);
            };
            let frame = BoxFrame {
                kind,
                encoding,
                pts: buffer
                    .pts()
                    .map(|t| Duration::from_nanos(t.nseconds()))
                    .unwrap_or_default(),
                data: Arc::from(map.as_slice()),
                encoded_at: Instant::now(),
            };
            let _ = frames.try_send(MediaInput::Frame(frame));
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

/// Errors and end-of-stream become a `Failed` command to the supervisor, never a panic.
fn report_failures(pipeline: &gst::Pipeline, commands: std_mpsc::Sender<Command>) {
    let Some(bus) = pipeline.bus() else {
        return;
    };
    bus.set_sync_handler(move |_, message| {
        use gst::MessageView;
        match message.view() {
            MessageView::Error(e) => {
                let _ = commands.send(Command::Failed(e.error().to_string()));
            }
            MessageView::Eos(_) => {
                let _ = commands.send(Command::Failed("the device ended its stream".into()));
            }
            _ => {}
        }
        gst::BusSyncReply::Drop
    });
}
