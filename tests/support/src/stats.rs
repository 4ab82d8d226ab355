//! What a phone sends and receives on a call, from one `RTCPeerConnection.getStats()`, and
//! the figures of a window between two of them: decoded frame rate, frozen share, concealed
//! audio, the sender's target bitrate. Shared by the bad-network test and benchmark.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::phone::Phone;

/// JS: one `getStats()` of the page's connection, per RTP stream (by its stats id).
const STATS: &str = r#"(async () => {
  const pc = window.hearth && window.hearth.pc;
  const out = { video_in: {}, audio_in: {}, target: 0, limitation: '', rtx_bytes: 0, bytes: 0 };
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.video_in[s.id] = { frames: s.framesDecoded || 0, frozen: s.totalFreezesDuration || 0,
        lost: s.packetsLost || 0, received: s.packetsReceived || 0, nacks: s.nackCount || 0,
        plis: s.pliCount || 0 };
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audio_in[s.id] = { concealed: s.concealedSamples || 0, samples: s.totalSamplesReceived || 0 };
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      // Summed over a simulcast's encodings; the reason is the full-size one's (the last).
      out.target += s.targetBitrate || 0;
      out.limitation = s.qualityLimitationReason || '';
      out.bytes += s.bytesSent || 0;
      out.rtx_bytes += s.retransmittedBytesSent || 0;
    }
  });
  return out;
})()"#;

/// One `getStats()`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallStats {
    video_in: BTreeMap<String, VideoIn>,
    audio_in: BTreeMap<String, AudioIn>,
    /// The video sender's target, bit/s (all its simulcast encodings).
    pub target: f64,
    /// Why the video sender holds back ("bandwidth", "cpu", "none").
    pub limitation: String,
    bytes: f64,
    rtx_bytes: f64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct VideoIn {
    frames: f64,
    /// seconds
    frozen: f64,
    lost: f64,
    received: f64,
    nacks: f64,
    plis: f64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct AudioIn {
    concealed: f64,
    samples: f64,
}

/// A phone's figures between two `CallStats`, `seconds` apart.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Per received video stream: frames decoded per second.
    pub fps: Vec<f64>,
    /// Per received video stream: share of the window it was frozen.
    pub frozen: Vec<f64>,
    /// Per received audio stream: concealed samples per received sample.
    pub concealed: Vec<f64>,
    /// What this phone sent, kbit/s, and the share of it that was resends.
    pub sent_kbps: f64,
    pub resent_share: f64,
    /// Repairs this phone asked for in all its received video: NACKs and keyframe requests.
    pub nacks: f64,
    pub plis: f64,
    /// The worst loss of a received video stream before repair (RTP `packetsLost`).
    pub worst_loss: f64,
}

impl CallStats {
    pub async fn of(phone: &mut Phone) -> Result<CallStats> {
        let value = phone.eval(STATS).await?;
        serde_json::from_value(value).context("reading getStats figures")
    }

    /// The window from `before` to this, `seconds` long. Streams that came or went in
    /// between count from zero.
    pub fn since(&self, before: &CallStats, seconds: f64) -> Window {
        let mut w = Window::default();
        for (id, v1) in &self.video_in {
            let v0 = before.video_in.get(id).copied().unwrap_or_default();
            w.fps.push((v1.frames - v0.frames) / seconds);
            w.frozen.push((v1.frozen - v0.frozen) / seconds);
            w.nacks += v1.nacks - v0.nacks;
            w.plis += v1.plis - v0.plis;
            let (received, lost) = (v1.received - v0.received, v1.lost - v0.lost);
            if received + lost > 0.0 {
                w.worst_loss = w.worst_loss.max(lost / (received + lost));
            }
        }
        for (id, a1) in &self.audio_in {
            let a0 = before.audio_in.get(id).copied().unwrap_or_default();
            let samples = a1.samples - a0.samples;
            if samples > 0.0 {
                w.concealed.push((a1.concealed - a0.concealed) / samples);
            }
        }
        let sent = self.bytes - before.bytes;
        w.sent_kbps = sent * 8.0 / seconds / 1000.0;
        if sent > 0.0 {
            w.resent_share = (self.rtx_bytes - before.rtx_bytes) / sent;
        }
        w
    }
}

impl Window {
    /// "12.3–17.2 fps, frozen 4.5–6.3 %, audio concealed 1.1–1.4 %, ..." for printing.
    pub fn describe(&self) -> String {
        format!(
            "receives {} fps, frozen {} %, audio concealed {} %; sent {:.0} kbit/s ({:.0} % resends); \
             asked {:.0} NACKs and {:.0} keyframes; worst loss before repair {:.1} %",
            range(&self.fps, 1.0, 1),
            range(&self.frozen, 100.0, 1),
            range(&self.concealed, 100.0, 1),
            self.sent_kbps,
            self.resent_share * 100.0,
            self.nacks,
            self.plis,
            self.worst_loss * 100.0,
        )
    }
}

/// "min–max" of `values` times `scale`.
pub fn range(values: &[f64], scale: f64, decimals: usize) -> String {
    if values.is_empty() {
        return "none".into();
    }
    let min = values.iter().cloned().fold(f64::MAX, f64::min) * scale;
    let max = values.iter().cloned().fold(f64::MIN, f64::max) * scale;
    format!("{min:.decimals$}–{max:.decimals$}")
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}
