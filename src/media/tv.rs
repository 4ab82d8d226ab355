//! The TV and the speaker: each phone's video decoded into a compositor grid with names, each
//! phone's audio decoded into a mixer, the mixed sound passing the echo probe that the mic's
//! echo canceller listens to. With nobody in the call the screen shows a QR code of a join
//! link. One thread owns the pipeline; the hub sends it commands and never waits for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
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
    /// What the idle screen shows: a join link and the privacy line.
    Idle {
        url: String,
        status: String,
    },
    Snapshot(PathBuf, oneshot::Sender<Result<(), String>>),
    Stop,
}

/// What the screen has shown and played, for `hearth status` and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub speaker_samples: AtomicU64,
    /// Per phone: (video frames decoded, audio buffers decoded).
    pub per_phone: Mutex<HashMap<ParticipantId, (u64, u64)>>,
}

pub struct Screen {
    commands: std_mpsc::Sender<Command>,
    pub counters: Arc<Counters>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Screen {
    /// Start the TV and speaker. If they cannot start (no HDMI, no sound card), the call goes
    /// on without them: the thread then only answers that the screen is unavailable.
    pub fn start(display: &DisplayProfile, audio: &AudioProfile) -> Screen {
        let counters = Arc::new(Counters::default());
        let state = State::build(display, audio, counters.clone());
        let (tx, rx) = std_mpsc::channel();
        let thread = thread::Builder::new()
            .name("hearth-screen".into())
            .spawn(move || match state {
                Ok(state) => state.run(rx),
                Err(why) => {
                    tracing::error!(
                        "screen and speaker unavailable: {why}; the call goes on without them"
                    );
                    while let Ok(command) = rx.recv() {
                        match command {
                            Command::Stop => break,
                            Command::Snapshot(_, reply) => {
                                let _ =
                                    reply.send(Err(format!("the screen is unavailable: {why}")));
                            }
                            _ => {}
                        }
                    }
                }
            })
            .ok();
        Screen {
            commands: tx,
            counters,
            thread,
        }
    }

    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
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

/// One phone's decoding branch, linked into the compositor or the mixer.
struct Branch {
    bin: gst::Bin,
    src: gst_app::AppSrc,
    mixer_pad: gst::Pad,
    codec: PhoneCodec,
}

struct State {
    pipeline: gst::Pipeline,
    compositor: gst::Element,
    mixer: gst::Element,
    idle_text: gst::Element,
    /// The screen behind the tiles: black, with a QR code when nobody is in the call. Pushed
    /// a few times a second (the compositor shows a live input's latest frame).
    background_src: gst_app::AppSrc,
    background: gst::Buffer,
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

/// How often the background (and idle QR code) frame is pushed.
const BACKGROUND_FPS: u32 = 4;

/// The idle screen's QR code: half the screen's height, even (for I420).
fn qr_size(display: &DisplayProfile) -> u32 {
    (display.height / 2) & !1
}

fn sink_for(display: &DisplayProfile) -> &'static str {
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    match display.sink {
        DisplaySink::Auto if desktop => "autovideosink sync=false",
        DisplaySink::Auto | DisplaySink::Offscreen => "fakesink sync=false",
        DisplaySink::Window => "autovideosink sync=false",
        DisplaySink::Kmssink => "kmssink sync=false",
    }
}

/// The screen pipeline's fixed part; phones' branches are added as they come.
pub fn describe(display: &DisplayProfile, audio: &AudioProfile) -> String {
    let (w, h) = (display.width, display.height);
    let speaker = if audio.playback == "count" {
        "appsink name=speaker sync=false".to_string()
    } else {
        format!("alsasink device=\"{}\" sync=false", audio.playback)
    };
    let probe = if audio.echo_cancel {
        format!(" ! webrtcechoprobe name={ECHO_PROBE} ! audioconvert")
    } else {
        String::new()
    };
    format!(
        "compositor name=mix background=black ! video/x-raw,width={w},height={h},framerate=30/1 \
           ! videoconvert ! tee name=screen \
         screen. ! queue leaky=downstream max-size-buffers=2 ! {display_sink} \
         screen. ! queue leaky=downstream max-size-buffers=2 ! videoconvert ! video/x-raw,format=RGB \
           ! appsink name=snapshot sync=false max-buffers=1 drop=true \
         appsrc name=background format=time is-live=true do-timestamp=true \
           caps=video/x-raw,format=GRAY8,width={w},height={h},framerate={BACKGROUND_FPS}/1 \
           ! videoconvert ! textoverlay name=idle_text valignment=bottom halignment=center font-desc=\"Sans 16\" \
           ! videoconvert ! mix.sink_0 \
         audiomixer name=amix ! audioconvert ! audioresample ! audio/x-raw,format=S16LE,rate=48000,channels=1{probe} ! {speaker} \
         audiotestsrc is-live=true wave=silence ! audio/x-raw,rate=48000,channels=1 ! amix.",
        display_sink = sink_for(display),
    )
}

impl State {
    fn build(
        display: &DisplayProfile,
        audio: &AudioProfile,
        counters: Arc<Counters>,
    ) -> Result<State, String> {
        let description = describe(display, audio);
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| format!("screen pipeline: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "screen pipeline is not a pipeline".to_string())?;
        let get = |name: &str| {
            pipeline
                .by_name(name)
                .ok_or(format!("screen pipeline lacks {name}"))
        };
        let compositor = get("mix")?;
        let mixer = get("amix")?;
        let idle_text = get("idle_text")?;
        let background_src = get("background")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| "background is not an appsrc")?;
        let last_frame = Arc::new(Mutex::new(None));
        let snapshot = get("snapshot")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| "snapshot is not an appsink")?;
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
        if let Some(speaker) = pipeline
            .by_name("speaker")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        {
            let counters = counters.clone();
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
        if let Some(bus) = pipeline.bus() {
            // A fault here must be visible: the call itself goes on without the screen.
            bus.set_sync_handler(|_, message| {
                if let gst::MessageView::Error(e) = message.view() {
                    tracing::error!(
                        "screen: {} ({})",
                        e.error(),
                        message
                            .src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default()
                    );
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
            mixer,
            idle_text,
            background_src,
            background: gst::Buffer::from_slice(vec![
                0u8;
                (display.width * display.height) as usize
            ]),
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

    fn run(mut self, commands: std_mpsc::Receiver<Command>) {
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
            match command {
                Command::Stop => break,
                Command::Frame(frame) => self.frame(frame),
                Command::Roster(names) => self.roster(names),
                Command::Idle { url, status } => self.idle(&url, &status),
                Command::Snapshot(path, reply) => {
                    let _ = reply.send(self.snapshot(&path));
                }
            }
        }
        let _ = self.pipeline.set_state(gst::State::Null);
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
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
            .replace(['"', '\\'], "");
        let description = match codec {
            PhoneCodec::H264 => format!(
                "appsrc name=src format=time is-live=true do-timestamp=true \
                 caps=video/x-h264,stream-format=byte-stream,alignment=au \
                 ! h264parse ! avdec_h264 ! videoconvert \
                 ! textoverlay text=\"{name}\" valignment=bottom halignment=left font-desc=\"Sans 28\" name=out"
            ),
            PhoneCodec::Vp8 => format!(
                "appsrc name=src format=time is-live=true do-timestamp=true caps=video/x-vp8 \
                 ! vp8dec ! videoconvert \
                 ! textoverlay text=\"{name}\" valignment=bottom halignment=left font-desc=\"Sans 28\" name=out"
            ),
            PhoneCodec::Opus => "appsrc name=src format=time is-live=true do-timestamp=true \
                 caps=audio/x-opus,channel-mapping-family=0,channels=2,rate=48000 \
                 ! opusdec plc=true ! audioconvert ! audioresample \
                 ! capsfilter name=out caps=audio/x-raw,rate=48000,channels=1"
                .to_string(),
        };
        // Only the output is ghosted: textoverlay's text input, if exposed, would make it
        // wait for text forever.
        let bin =
            gst::parse::bin_from_description(&description, false).map_err(|e| e.to_string())?;
        let last = bin
            .by_name("out")
            .and_then(|e| e.static_pad("src"))
            .ok_or("branch without output")?;
        let ghost = gst::GhostPad::with_target(&last).map_err(|e| e.to_string())?;
        bin.add_pad(&ghost).map_err(|e| e.to_string())?;
        let src = bin
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or("branch without appsrc")?;
        let out = bin.static_pad("src").ok_or("branch without output")?;
        let counters = self.counters.clone();
        let is_audio = codec == PhoneCodec::Opus;
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
        let mixer = if is_audio {
            &self.mixer
        } else {
            &self.compositor
        };
        let mixer_pad = mixer
            .request_pad_simple("sink_%u")
            .ok_or("mixer has no free input")?;
        self.pipeline.add(&bin).map_err(|e| e.to_string())?;
        out.link(&mixer_pad).map_err(|e| format!("{e:?}"))?;
        bin.sync_state_with_parent().map_err(|e| e.to_string())?;
        Ok(Branch {
            bin,
            src,
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
            if let Some(branch) = self.video.get(id) {
                if let Some(label) = branch.bin.by_name("out") {
                    label.set_property("text", name.as_str());
                }
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
            self.background =
                gst::Buffer::from_slice(vec![0u8; (self.width * self.height) as usize]);
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

    fn idle(&mut self, url: &str, status: &str) {
        if !self.names.is_empty() {
            return; // someone joined meanwhile: the tiles stay
        }
        self.idle_text
            .set_property("text", format!("Scan to join the call\n{url}\n{status}"));
        let Ok(code) = qrcode::QrCode::new(url.as_bytes()) else {
            return;
        };
        let qr = qr_gray8(&code, self.qr_size);
        let mut frame = vec![0u8; (self.width * self.height) as usize];
        let x0 = (self.width.saturating_sub(self.qr_size)) / 2;
        let y0 = (self.height.saturating_sub(self.qr_size)) / 6;
        for row in 0..self.qr_size.min(self.height) {
            let src = (row * self.qr_size) as usize;
            let dst = ((y0 + row) * self.width + x0) as usize;
            let len = self.qr_size.min(self.width) as usize;
            if let (Some(to), Some(from)) = (frame.get_mut(dst..dst + len), qr.get(src..src + len))
            {
                to.copy_from_slice(from);
            }
        }
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
        let png = gstreamer_video::convert_sample(
            &sample,
            &png_caps,
            Some(gst::ClockTime::from_seconds(5)),
        )
        .map_err(|e| format!("cannot encode the snapshot: {e}"))?;
        let buffer = png.buffer().ok_or("empty snapshot")?;
        let map = buffer.map_readable().map_err(|e| e.to_string())?;
        std::fs::write(path, map.as_slice()).map_err(|e| format!("{}: {e}", path.display()))
    }
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
    fn qr_code_has_dark_modules_and_a_white_quiet_zone() {
        let code = qrcode::QrCode::new(b"https://hearth.local:8443/join#abc").unwrap();
        let image = qr_gray8(&code, 120);
        assert_eq!(image.len(), 120 * 120);
        assert_eq!(image[0], 255);
        assert!(image.iter().filter(|&&p| p == 0).count() > 1000);
    }

    #[test]
    fn pi_screen_drives_hdmi_and_alsa_with_the_echo_probe() {
        let p = Board::Pi4.profile(&toml::Table::new()).unwrap();
        let text = describe(&p.display, &p.audio);
        assert!(text.contains("kmssink"));
        assert!(text.contains(
            "webrtcechoprobe name=echo_probe ! audioconvert ! alsasink device=\"default\""
        ));
        assert!(text.contains("width=1920,height=1080"));
        let dev = Board::Dev.profile(&toml::Table::new()).unwrap();
        let text = describe(&dev.display, &dev.audio);
        assert!(text.contains("appsink name=speaker"));
    }
}
