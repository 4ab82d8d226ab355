//! The box's own devices while it is in its call: camera and mic (each a capture
//! supervisor), the TV and speaker, and what is known about their state.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::config::board::Profile;
use crate::media::capture::{self, Device};
use crate::media::tv::{self, Screen};
use crate::media::{MediaInput, MediaKindTag};

/// Frames and device events from capture threads wait here for the hub.
const MEDIA_QUEUE: usize = 64;

pub struct BoxMedia {
    camera: Device,
    mic: Device,
    tv: Screen,
    input: mpsc::Receiver<MediaInput>,
    /// Dev board: devices are simulated and `hearth simulate` may unplug them.
    simulated: bool,
    camera_problem: Option<String>,
    mic_problem: Option<String>,
    /// Camera and mic closed (pipelines at NULL). Capture starts closed: nothing opens
    /// before the privacy switch has been read.
    camera_closed: bool,
    mic_closed: bool,
    /// The camera encodes VP8 as well, for a phone that cannot decode H.264.
    camera_vp8: bool,
}

impl BoxMedia {
    /// Start the TV and the (still closed) camera and mic. `dev_devices` is the directory of
    /// files standing for the dev board's simulated device nodes.
    pub fn start(profile: &Profile, dev_devices: Option<&Path>) -> BoxMedia {
        let (tx, input) = mpsc::channel(MEDIA_QUEUE);
        let node = |name: &str| -> Option<PathBuf> { dev_devices.map(|d| d.join(name)) };
        BoxMedia {
            camera: capture::camera(profile, tx.clone(), node("camera")),
            mic: capture::microphone(profile, tx.clone(), node("mic")),
            tv: Screen::start(&profile.display, &profile.audio, tx),
            input,
            simulated: dev_devices.is_some(),
            camera_problem: None,
            mic_problem: None,
            camera_closed: true,
            mic_closed: true,
            camera_vp8: false,
        }
    }

    pub async fn next_input(&mut self) -> Option<MediaInput> {
        self.input.recv().await
    }

    pub fn tv(&self, command: tv::Command) {
        self.tv.send(command);
    }

    pub fn tv_counters(&self) -> &tv::Counters {
        &self.tv.counters
    }

    pub fn camera(&self) -> &Device {
        &self.camera
    }

    /// VP8 from the camera as well as H.264, or not.
    pub fn set_camera_vp8(&mut self, on: bool) {
        self.camera_vp8 = on;
        self.camera.set_vp8(on);
    }

    pub fn camera_vp8(&self) -> bool {
        self.camera_vp8
    }

    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// Privacy: close both devices. Their problems are forgotten (a device that vanishes
    /// while closed is no news).
    pub fn close_capture(&mut self) {
        self.camera_problem = None;
        self.mic_problem = None;
        self.camera.pause();
        self.mic.pause();
    }

    pub fn open_capture(&mut self) {
        self.camera_closed = false;
        self.mic_closed = false;
        self.camera.resume();
        self.mic.resume();
    }

    /// A capture pipeline reached NULL after `close_capture`.
    pub fn released(&mut self, kind: MediaKindTag) {
        match kind {
            MediaKindTag::Video => self.camera_closed = true,
            MediaKindTag::Audio => self.mic_closed = true,
        }
    }

    pub fn capture_closed(&self) -> bool {
        self.camera_closed && self.mic_closed
    }

    /// A device started working (None) or stopped (why). True when that is news.
    pub fn device_state(&mut self, kind: MediaKindTag, problem: Option<String>) -> bool {
        let slot = match kind {
            MediaKindTag::Video => &mut self.camera_problem,
            MediaKindTag::Audio => &mut self.mic_problem,
        };
        if *slot == problem {
            return false;
        }
        match &problem {
            Some(why) => tracing::warn!("box {kind:?} unavailable: {why}"),
            None => tracing::info!("box {kind:?} running"),
        }
        *slot = problem;
        true
    }

    pub fn problem(&self, kind: MediaKindTag) -> Option<&str> {
        match kind {
            MediaKindTag::Video => self.camera_problem.as_deref(),
            MediaKindTag::Audio => self.mic_problem.as_deref(),
        }
    }

    /// Unplug or plug a simulated device (dev board only).
    pub fn simulate_present(&self, kind: MediaKindTag, present: bool) -> Result<(), String> {
        if !self.simulated {
            return Err("devices are simulated only on the dev board".into());
        }
        match kind {
            MediaKindTag::Video => self.camera.simulate_present(present),
            MediaKindTag::Audio => self.mic.simulate_present(present),
        }
        Ok(())
    }

    /// (mic on, camera on, what to show on the box's tile) for the phones.
    pub fn shown_state(&self) -> (bool, bool, Option<String>) {
        let note = match (&self.camera_problem, &self.mic_problem) {
            (None, None) => None,
            (Some(_), None) => Some("camera unavailable".to_string()),
            (None, Some(_)) => Some("microphone unavailable".to_string()),
            (Some(_), Some(_)) => Some("camera and microphone unavailable".to_string()),
        };
        (
            self.mic_problem.is_none(),
            self.camera_problem.is_none(),
            note,
        )
    }
}
