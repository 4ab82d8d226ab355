//! `hearth status`: participants, privacy, the box's devices, media counters and timings,
//! as JSON.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};

use super::hub::Hub;
use crate::call::invite::unix_seconds;
use crate::call::room::ParticipantId;
use crate::media::MediaKindTag;

impl Hub {
    pub(super) fn status(&self) -> Value {
        json!({
            "privacy": self.privacy_status(),
            "reach": self.reach.to_json(Instant::now()),
            // Until an NTP client has set it, link expiry may be off: the owner should know.
            "clock": crate::clock::state(&self.clock_mark),
            "certificate": self.certificate,
            "dns": self.dns,
            "knocks": self.call.knocks(Instant::now()),
            "box_name": self.call.room().participant(ParticipantId::BOX).map(|b| b.name.clone()),
            "owners": self.owners.list().iter().filter(|o| !o.revoked).count(),
            // The hotspot's name only: its password is for the TV.
            "setup_hotspot": self.hotspot.as_ref().map(|h| h.ssid.clone()),
            "box": self.box_status(),
            "participants": self.participants(),
            "video_codec": self.call.room().publish_codec(),
            "media": self.call.sfu().counters(),
            "forwarding_latency_us": self.metrics.forward.summary(),
            "udp": self.media_sockets.hosts().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        })
    }

    fn participants(&self) -> Value {
        let now = Instant::now();
        let media = self.call.sfu().summaries();
        let list = self.call.room().participants().iter().map(|p| {
            let id = p.id.to_string();
            let peer = media.iter().find(|m| m.id == id);
            json!({
                "id": id,
                "name": p.name,
                "mic": p.audio,
                "camera": p.video,
                "reconnecting": p.reconnecting,
                "in_call_secs": now.saturating_duration_since(p.joined_at).as_secs(),
                "media_connected": peer.is_some_and(|m| m.connected),
                "tracks_published": peer.map_or(0, |m| m.tracks_published),
                "tracks_subscribed": peer.map_or(0, |m| m.tracks_subscribed),
                "received": peer.map(|m| m.received.clone()).unwrap_or_default(),
                // Which encoding of each video it gets, and why: its estimate decides.
                "estimate_kbps": peer.and_then(|m| m.estimate_kbps),
                "video": peer.map(|m| m.video.clone()).unwrap_or_default(),
                // Its own simulcast encodings it was told to pause: no one takes them.
                "paused_encodings": peer.map(|m| m.paused_encodings.clone()).unwrap_or_default(),
            })
        });
        Value::Array(list.collect())
    }

    fn box_status(&self) -> Option<Value> {
        let media = self.media.as_ref()?;
        let counters = media.tv_counters();
        let per_phone = counters
            .per_phone
            .lock()
            .map(|map| {
                map.iter()
                    .map(|(id, (video, audio))| {
                        let counts = json!({ "video_frames": video, "audio_buffers": audio });
                        (id.to_string(), counts)
                    })
                    .collect::<serde_json::Map<_, _>>()
            })
            .unwrap_or_default();
        Some(json!({
            "camera": media.problem(MediaKindTag::Video).unwrap_or("running"),
            // VP8 as well as H.264: a phone that cannot decode H.264 takes the box's video.
            "camera_vp8": media.camera_vp8(),
            "mic": media.problem(MediaKindTag::Audio).unwrap_or("running"),
            "screen": per_phone,
            "screen_frames_dropped": counters.frames_dropped.load(Ordering::Relaxed),
            "screen_restarts": counters.restarts.load(Ordering::Relaxed),
            "screen_problem": counters.problem.lock().ok().and_then(|p| p.clone()),
            "speaker_samples": counters.speaker_samples.load(Ordering::Relaxed),
            "send_latency_us": self.metrics.send.summary(),
            "temperature_c": temperature(),
        }))
    }

    fn privacy_status(&self) -> Value {
        let simulated = self.privacy.simulated_switch();
        let switch = simulated.map_or("hardware".to_string(), |s| {
            format!("simulated, {}", if s.is_on() { "on" } else { "off" })
        });
        json!({
            "on": self.privacy.is_on(),
            "since": unix_seconds(self.privacy.since()),
            "paused_by_software": self.privacy.paused_by_software(),
            "switch": switch,
            "led": simulated.map(|s| s.led()),
            "capture_release_us": self.metrics.capture_release.summary(),
            "everyone_told_us": self.metrics.everyone_told.summary(),
        })
    }
}

/// The board's temperature in °C, where the kernel reports one.
fn temperature() -> Option<f64> {
    let text = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    let millis: f64 = text.trim().parse().ok()?;
    Some((millis / 100.0).round() / 10.0)
}
