//! `hearth check`: what this machine offers the board profile, and whether it is enough.

use std::fmt::Write;

use gstreamer as gst;

use super::plan::{self, CameraFound};
use super::probe;
use crate::config::board::{CameraSource, DisplaySink, Profile};

/// A readable report, and whether everything the profile needs is here.
pub fn report(profile: &Profile) -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(out, "Board profile: {}", profile.name);
    let mut ok = cameras(&mut out, profile);
    ok &= encoders(&mut out, profile);
    ok &= sound(&mut out, profile);
    ok &= display(&mut out, profile);
    if profile.camera.source == CameraSource::Test {
        let _ = writeln!(
            out,
            "\n(The dev profile simulates its devices; nothing else is needed.)"
        );
    }
    (out, ok)
}

/// The cameras found, and the one the profile will use.
fn cameras(out: &mut String, profile: &Profile) -> bool {
    let mut ok = true;
    let has = |name: &str| gst::ElementFactory::find(name).is_some();
    let cameras = probe::cameras();
    let _ = writeln!(out, "\nCameras found: {}", cameras.len());
    for camera in &cameras {
        let _ = writeln!(
            out,
            "  {} [{}] {}",
            camera.name,
            camera.api,
            camera.path.as_deref().unwrap_or("")
        );
        for format in camera.formats.iter().take(8) {
            let _ = writeln!(out, "    {format}");
        }
        if camera.formats.len() > 8 {
            let _ = writeln!(out, "    … and {} more formats", camera.formats.len() - 8);
        }
    }
    let (libcamera, v4l2) = probe::split(&cameras);
    match plan::find_camera(&profile.camera, &has, libcamera, &v4l2) {
        CameraFound::Test => {
            let _ = writeln!(
                out,
                "Camera in use: test pattern (profile camera.source = \"test\")"
            );
        }
        CameraFound::Libcamera => {
            let _ = writeln!(out, "Camera in use: libcamera");
        }
        CameraFound::V4l2 { device } => {
            let _ = writeln!(out, "Camera in use: {device} (V4L2)");
        }
        CameraFound::Missing(why) => {
            ok = false;
            let _ = writeln!(out, "Camera: MISSING: {why}");
        }
    }

    ok
}

/// The profile's encoders, and the one it will use.
fn encoders(out: &mut String, profile: &Profile) -> bool {
    let mut ok = true;
    let has = |name: &str| gst::ElementFactory::find(name).is_some();
    let _ = writeln!(out, "\nVideo encoders, in the profile's order:");
    for name in &profile.encoder.video {
        let _ = writeln!(
            out,
            "  {name}: {}",
            if has(name) {
                "available"
            } else {
                "not available"
            }
        );
    }
    match plan::choose_encoder(&profile.encoder, &has) {
        Ok(name) => {
            let why = if Some(name) == profile.encoder.video.first().map(String::as_str) {
                "the profile's first choice".to_string()
            } else {
                "the first available of the profile's list".to_string()
            };
            let _ = writeln!(out, "Encoder in use: {name} ({why})");
        }
        Err(why) => {
            ok = false;
            let _ = writeln!(out, "Encoder: MISSING: {why}");
        }
    }

    ok
}

/// Sound cards, microphone, speaker and echo cancellation.
fn sound(out: &mut String, profile: &Profile) -> bool {
    let mut ok = true;
    let has = |name: &str| gst::ElementFactory::find(name).is_some();
    let _ = writeln!(out, "\nALSA devices (/proc/asound/pcm):");
    let alsa = probe::alsa_devices();
    if alsa.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for line in &alsa {
        let _ = writeln!(out, "  {line}");
    }
    for (what, device, simulated) in [
        ("Microphone", &profile.audio.capture, "test"),
        ("Speaker", &profile.audio.playback, "count"),
    ] {
        if device == simulated {
            let _ = writeln!(out, "{what}: simulated ({device})");
        } else if alsa.is_empty() {
            ok = false;
            let _ = writeln!(
                out,
                "{what}: MISSING: ALSA device {device:?} but no sound card"
            );
        } else {
            let _ = writeln!(out, "{what}: ALSA {device:?}");
        }
    }
    if profile.audio.echo_cancel && !has("webrtcdsp") {
        ok = false;
        let _ = writeln!(
            out,
            "Echo cancellation: MISSING: webrtcdsp (gstreamer1.0-plugins-bad)"
        );
    }
    ok
}

/// The TV's video sink.
fn display(out: &mut String, profile: &Profile) -> bool {
    let mut ok = true;
    let has = |name: &str| gst::ElementFactory::find(name).is_some();
    let display_element = match profile.display.sink {
        DisplaySink::Auto | DisplaySink::Offscreen => "fakesink",
        DisplaySink::Window => "autovideosink",
        DisplaySink::Kmssink => "kmssink",
    };
    let _ = writeln!(
        out,
        "Display: {display_element} {}x{}: {}",
        profile.display.width,
        profile.display.height,
        if has(display_element) {
            "available"
        } else {
            "MISSING"
        }
    );
    ok &= has(display_element);
    ok
}
