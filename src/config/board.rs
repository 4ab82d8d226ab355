//! Which board Hearth runs on, and that board's profile (`board/<name>.toml`): camera,
//! encoders in order of preference, audio devices, display. The config file's `[board]`
//! table overrides any of the profile's fields.

use clap::ValueEnum;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Board {
    /// A development machine: test media, simulated privacy switch, loopback only.
    Dev,
    /// Raspberry Pi 4.
    Pi4,
    /// Raspberry Pi 5.
    Pi5,
}

impl Board {
    /// Whether the daemon listens on the local network without being asked to.
    pub fn on_lan_by_default(self) -> bool {
        !matches!(self, Board::Dev)
    }

    fn profile_text(self) -> &'static str {
        match self {
            Board::Dev => include_str!("../../board/dev.toml"),
            Board::Pi4 => include_str!("../../board/pi4.toml"),
            Board::Pi5 => include_str!("../../board/pi5.toml"),
        }
    }

    /// The board's profile with `overrides` (the config's `[board]` table) merged in.
    pub fn profile(self, overrides: &toml::Table) -> Result<Profile, ProfileError> {
        let mut table: toml::Table =
            self.profile_text().parse().map_err(|e: toml::de::Error| {
                ProfileError(format!("built-in {self:?} profile: {e}"))
            })?;
        merge(&mut table, overrides);
        Profile::deserialize(toml::Value::Table(table))
            .map_err(|e| ProfileError(format!("[board] {}", e.message())))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProfileError(String);

fn merge(base: &mut toml::Table, overrides: &toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub camera: CameraProfile,
    pub encoder: EncoderProfile,
    pub audio: AudioProfile,
    pub display: DisplayProfile,
    pub gpio: GpioProfile,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    /// The Linux GPIO character device (Pi 4, Pi 5, any Linux board).
    Cdev,
    /// A switch and LED in memory, flipped from the command line.
    Simulated,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpioProfile {
    pub backend: GpioBackend,
    /// Line names, e.g. "GPIO17".
    pub switch_line: String,
    pub led_line: String,
    pub switch_active_low: bool,
    pub led_active_low: bool,
    pub debounce_ms: u64,
    pub bounce: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CameraSource {
    Test,
    Auto,
    Libcamera,
    V4l2,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraProfile {
    pub source: CameraSource,
    /// V4L2 device path; empty means the first capture device found.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncoderProfile {
    /// GStreamer element names, best first.
    pub video: Vec<String>,
    pub bitrate_kbps: u32,
    pub min_kbps: u32,
    pub max_kbps: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioProfile {
    /// "test" or an ALSA device.
    pub capture: String,
    /// "count" or an ALSA device.
    pub playback: String,
    pub echo_cancel: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DisplaySink {
    /// A window when a desktop is there (DISPLAY or WAYLAND_DISPLAY), else off-screen.
    Auto,
    Offscreen,
    Window,
    Kmssink,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DisplayProfile {
    pub sink: DisplaySink,
    pub width: u32,
    pub height: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_loads() {
        for board in [Board::Dev, Board::Pi4, Board::Pi5] {
            board.profile(&toml::Table::new()).unwrap();
        }
        assert_eq!(
            Board::Pi4
                .profile(&toml::Table::new())
                .unwrap()
                .encoder
                .video[0],
            "v4l2h264enc"
        );
        assert!(!Board::Pi5
            .profile(&toml::Table::new())
            .unwrap()
            .encoder
            .video
            .contains(&"v4l2h264enc".to_string()));
    }

    #[test]
    fn config_overrides_single_fields() {
        let overrides: toml::Table = "[camera]\nwidth = 640\n".parse().unwrap();
        let profile = Board::Pi4.profile(&overrides).unwrap();
        assert_eq!(profile.camera.width, 640);
        assert_eq!(profile.camera.height, 720);
        let bad: toml::Table = "[camera]\nwidht = 640\n".parse().unwrap();
        assert!(Board::Pi4
            .profile(&bad)
            .unwrap_err()
            .to_string()
            .contains("widht"));
    }
}
