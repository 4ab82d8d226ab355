//! The box's own media, through GStreamer: its camera and mic into the call (`capture`),
//! the phones onto its screen and speaker (`tv`), and what the machine has (`probe`).
//! `plan` holds the pure pipeline descriptions all of them are built from.

pub mod capture;
pub mod check;
pub mod plan;
pub mod probe;
pub mod tv;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::call::sfu::BoxEncoding;
use str0m::media::{Frequency, MediaKind, MediaTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKindTag {
    Audio,
    Video,
}

/// One encoded frame of the box's camera (H.264 access unit, or VP8 frame for phones without
/// H.264) or mic (Opus packet).
#[derive(Debug, Clone)]
pub struct BoxFrame {
    pub kind: MediaKindTag,
    pub encoding: BoxEncoding,
    /// Presentation time in the pipeline's running time.
    pub pts: Duration,
    pub data: Arc<[u8]>,
    /// When the frame left the encoder, for the latency benchmark.
    pub encoded_at: Instant,
}

/// What the media edge tells the hub, on one channel.
#[derive(Debug, Clone)]
pub enum MediaInput {
    Frame(BoxFrame),
    Event(MediaEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A capture device started (problem None) or stopped working.
    Device {
        kind: MediaKindTag,
        problem: Option<String>,
    },
    /// A device was closed for privacy (its pipeline reached NULL) at this moment.
    Released { kind: MediaKindTag, at: Instant },
    /// The TV and speaker were rebuilt after a failure: their decoders start afresh.
    ScreenRestarted,
}

impl BoxFrame {
    /// The frame's capture time in its track's RTP clock (90 kHz video, 48 kHz Opus).
    pub fn rtp_time(&self) -> (MediaKind, MediaTime) {
        let nanos = self.pts.as_nanos() as u64;
        match self.kind {
            MediaKindTag::Video => (
                MediaKind::Video,
                MediaTime::new(nanos / 100_000 * 9, Frequency::NINETY_KHZ),
            ),
            MediaKindTag::Audio => (
                MediaKind::Audio,
                MediaTime::new(nanos / 1_000_000 * 48, Frequency::FORTY_EIGHT_KHZ),
            ),
        }
    }
}

pub fn init() -> Result<(), String> {
    gstreamer::init().map_err(|e| format!("GStreamer does not start: {e}"))
}
