//! Pipeline descriptions built from a board profile: which elements, in which order, with
//! which caps. Pure (the list of elements that exist is an input), so the Pi pipelines are
//! tested on a machine without a Pi; `media::pipelines` turns them into GStreamer objects.

use std::fmt;

use crate::call::sfu::{LOW_KBPS, VP8_KBPS};
use crate::config::board::{AudioProfile, CameraProfile, CameraSource, EncoderProfile};

/// One link in a `gst-launch`-style chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Element {
        factory: &'static str,
        props: Vec<(&'static str, String)>,
    },
    Caps(String),
    /// Starts a second branch from the named element (a `tee`): `name.` in gst-launch.
    Branch(&'static str),
}

impl Stage {
    fn element(factory: &'static str, props: &[(&'static str, &str)]) -> Stage {
        Stage::Element {
            factory,
            props: props.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }
}

/// A linear chain of stages, rendered as a `gst-launch` description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain(pub Vec<Stage>);

impl Chain {
    #[cfg(test)]
    pub fn factories(&self) -> Vec<&'static str> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Stage::Element { factory, .. } => Some(*factory),
                Stage::Caps(_) | Stage::Branch(_) => None,
            })
            .collect()
    }

    #[cfg(test)]
    pub fn caps(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Stage::Caps(c) => Some(c.as_str()),
                Stage::Element { .. } | Stage::Branch(_) => None,
            })
            .collect()
    }

    fn push(&mut self, stage: Stage) -> &mut Self {
        self.0.push(stage);
        self
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stage) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if matches!(stage, Stage::Branch(_)) {
                    "  "
                } else {
                    " ! "
                })?;
            }
            match stage {
                Stage::Caps(caps) => f.write_str(caps)?,
                Stage::Branch(from) => write!(f, "{from}.")?,
                Stage::Element { factory, props } => {
                    f.write_str(factory)?;
                    for (key, value) in props {
                        if value.contains([' ', ',', '"', '=']) {
                            write!(f, " {key}=\"{}\"", value.replace('"', "\\\""))?;
                        } else {
                            write!(f, " {key}={value}")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The H.264 the SFU forwards: constrained baseline (every phone decodes it in hardware),
/// Annex B access units so each appsink buffer is one frame.
pub const H264_OUT_CAPS: &str =
    "video/x-h264,profile=constrained-baseline,stream-format=byte-stream,alignment=au";

/// Where the camera's frames come from, after looking at the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraFound {
    Test,
    Libcamera,
    V4l2 { device: String },
    Missing(String),
}

/// Decide the camera from the profile and what the machine has.
pub fn find_camera(
    camera: &CameraProfile,
    has_element: &dyn Fn(&str) -> bool,
    libcamera_cameras: usize,
    v4l2_devices: &[String],
) -> CameraFound {
    let v4l2 = || {
        if !camera.device.is_empty() {
            Some(camera.device.clone())
        } else {
            v4l2_devices.first().cloned()
        }
    };
    match camera.source {
        CameraSource::Test => CameraFound::Test,
        CameraSource::Libcamera if has_element("libcamerasrc") && libcamera_cameras > 0 => {
            CameraFound::Libcamera
        }
        CameraSource::Libcamera => CameraFound::Missing("no libcamera camera found".into()),
        CameraSource::V4l2 => v4l2()
            .map(|device| CameraFound::V4l2 { device })
            .unwrap_or_else(|| CameraFound::Missing("no V4L2 capture device found".into())),
        CameraSource::Auto => {
            if has_element("libcamerasrc") && libcamera_cameras > 0 {
                CameraFound::Libcamera
            } else if let Some(device) = v4l2() {
                CameraFound::V4l2 { device }
            } else {
                CameraFound::Missing("no camera found (libcamera or USB webcam)".into())
            }
        }
    }
}

/// The first encoder of the profile's list that exists here, with why the others were not.
pub fn choose_encoder<'a>(
    encoder: &'a EncoderProfile,
    has_element: &dyn Fn(&str) -> bool,
) -> Result<&'a str, String> {
    let mut skipped = Vec::new();
    for name in &encoder.video {
        if has_element(name) {
            return Ok(name);
        }
        skipped.push(format!("{name} is not available"));
    }
    Err(format!("no H.264 encoder: {}", skipped.join(", ")))
}

/// The tee the camera's raw frames are split at, and the valve that keeps the VP8 encoder idle
/// until a phone needs VP8 (`capture` opens it).
pub const CAMERA_SPLIT: &str = "split";
pub const VP8_GATE: &str = "vp8_gate";
/// The full-size H.264 encoder's element name (its bitrate follows the phones').
pub const HIGH_ENCODER: &str = "encoder";
/// The half-size H.264 encoder's (its bitrate follows the phones that get it).
pub const LOW_ENCODER: &str = "encoder_low";

/// camera → scale/convert → encoder → H.264 access units into the appsink `video`; from the
/// same frames H.264 at half the size into `video_low`, for phones on a weak link; and behind
/// a closed valve, VP8 at half the size into the appsink `vp8`. The rates of the two smaller
/// ones are the SFU's (`call::sfu::{LOW_KBPS, VP8_KBPS}`): it reckons with them.
pub fn video_capture(
    camera: &CameraProfile,
    found: &CameraFound,
    encoder: &str,
    kbps: u32,
) -> Chain {
    let Some(mut chain) = camera_source(camera, found) else {
        return Chain::default();
    };
    chain
        .push(Stage::element("videoconvert", &[]))
        .push(Stage::Caps(format!(
            "video/x-raw,format=I420,width={},height={},framerate={}/1",
            camera.width, camera.height, camera.framerate
        )))
        .push(Stage::element("tee", &[("name", CAMERA_SPLIT)]))
        // Each encoder behind its own leaky queue: the camera's thread never waits for one
        // (a privacy cut closes the camera without waiting for a frame being encoded).
        .push(leaky_queue());
    // A keyframe every two seconds at most, so a lost one is soon replaced.
    let key_interval = camera.framerate.saturating_mul(2);
    chain
        .0
        .extend(h264_encoder(encoder, kbps, key_interval, HIGH_ENCODER, Slices::AsThreads).0);
    chain
        .push(Stage::element("h264parse", &[("config-interval", "-1")]))
        .push(Stage::Caps(H264_OUT_CAPS.into()))
        .push(appsink("video"));
    let half = |n: u32| (n / 4 * 2).max(2);
    let half_size = format!(
        "video/x-raw,width={},height={}",
        half(camera.width),
        half(camera.height)
    );
    chain
        .push(Stage::Branch(CAMERA_SPLIT))
        .push(leaky_queue())
        .push(Stage::element("videoscale", &[]))
        .push(Stage::Caps(half_size.clone()));
    chain
        .0
        .extend(h264_encoder(encoder, LOW_KBPS, key_interval, LOW_ENCODER, Slices::One).0);
    chain
        .push(Stage::element("h264parse", &[("config-interval", "-1")]))
        .push(Stage::Caps(H264_OUT_CAPS.into()))
        .push(appsink("video_low"));
    chain
        .push(Stage::Branch(CAMERA_SPLIT))
        .push(leaky_queue())
        .push(Stage::element(
            "valve",
            &[("name", VP8_GATE), ("drop", "true")],
        ))
        .push(Stage::element("videoscale", &[]))
        .push(Stage::Caps(half_size))
        .push(Stage::element(
            "vp8enc",
            &[
                ("deadline", "1"),
                ("cpu-used", "8"),
                ("end-usage", "cbr"),
                ("target-bitrate", &(VP8_KBPS * 1000).to_string()),
                ("keyframe-max-dist", &key_interval.to_string()),
                ("lag-in-frames", "0"),
                ("error-resilient", "default"),
                ("threads", "1"),
            ],
        ))
        .push(Stage::Caps("video/x-vp8".into()))
        // Not waiting for a first buffer to start: behind a closed valve none comes, and a
        // sink that waits holds the whole pipeline out of PLAYING.
        .push(appsink("vp8").with("async", "false"));
    chain
}

fn leaky_queue() -> Stage {
    Stage::element(
        "queue",
        &[("max-size-buffers", "2"), ("leaky", "downstream")],
    )
}

impl Stage {
    /// The same element with one more property.
    fn with(mut self, key: &'static str, value: &str) -> Stage {
        if let Stage::Element { props, .. } = &mut self {
            props.push((key, value.to_string()));
        }
        self
    }
}

fn appsink(name: &str) -> Stage {
    Stage::element(
        "appsink",
        &[
            ("name", name),
            ("sync", "false"),
            ("max-buffers", "4"),
            ("drop", "true"),
        ],
    )
}

/// The camera's raw frames at the profile's size and rate; None when there is no camera.
/// A leaky queue right behind the device: its thread only hands frames over, so a privacy
/// cut that stops it never waits for a frame being converted or overlaid.
fn camera_source(camera: &CameraProfile, found: &CameraFound) -> Option<Chain> {
    let raw = format!(
        "video/x-raw,width={},height={},framerate={}/1",
        camera.width, camera.height, camera.framerate
    );
    let mut chain = Chain::default();
    match found {
        CameraFound::Test => {
            chain
                .push(Stage::element(
                    "videotestsrc",
                    &[("is-live", "true"), ("pattern", "ball")],
                ))
                .push(Stage::Caps(raw))
                .push(leaky_queue())
                .push(Stage::element(
                    "clockoverlay",
                    &[("time-format", "%H:%M:%S"), ("font-desc", "Sans 36")],
                ));
        }
        CameraFound::Libcamera => {
            chain
                .push(Stage::element("libcamerasrc", &[]))
                .push(Stage::Caps(raw))
                .push(leaky_queue());
        }
        CameraFound::V4l2 { device } => {
            // Webcams offer many formats; let GStreamer pick, then fit size and rate.
            chain
                .push(Stage::element("v4l2src", &[("device", device)]))
                .push(leaky_queue())
                .push(Stage::element("videorate", &[("drop-only", "true")]))
                .push(Stage::element("videoscale", &[]));
        }
        CameraFound::Missing(_) => return None,
    }
    Some(chain)
}

/// How x264 cuts a frame. Its zero-latency tuning encodes one slice per thread (three on a
/// two-core machine), each its own RTP packet. At the low layer's 40–100 kbit/s those are
/// 60-byte packets whose headers cost more than the picture: 90 packets a second, 97 kbit/s
/// on the wire for a 40 kbit/s encoding, on exactly the link that has no room for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slices {
    AsThreads,
    One,
}

/// The encoder element with its bitrate and keyframe interval, and its output caps.
fn h264_encoder(encoder: &str, kbps: u32, key_interval: u32, name: &str, slices: Slices) -> Chain {
    let bits = kbps.saturating_mul(1000).to_string();
    let key_interval = key_interval.to_string();
    let baseline = || Stage::Caps("video/x-h264,profile=constrained-baseline".into());
    let mut chain = Chain::default();
    match encoder {
        "v4l2h264enc" => {
            let controls = format!(
                "controls,video_bitrate={bits},h264_i_frame_period={key_interval},repeat_sequence_header=1"
            );
            chain
                .push(Stage::element(
                    "v4l2h264enc",
                    &[("extra-controls", &controls)],
                ))
                // The Pi's encoder wants its level spelled out.
                .push(Stage::Caps(
                    "video/x-h264,level=(string)4,profile=constrained-baseline".into(),
                ));
        }
        "openh264enc" => {
            chain
                .push(Stage::element(
                    "openh264enc",
                    &[
                        ("bitrate", &bits),
                        ("gop-size", &key_interval),
                        ("complexity", "low"),
                        ("rate-control", "bitrate"),
                    ],
                ))
                .push(baseline());
        }
        _ => {
            chain
                .push(Stage::element(
                    "x264enc",
                    &[
                        ("tune", "zerolatency"),
                        ("speed-preset", "ultrafast"),
                        ("bitrate", &kbps.to_string()),
                        ("key-int-max", &key_interval),
                        ("bframes", "0"),
                    ]
                    .into_iter()
                    .chain((slices == Slices::One).then_some(("threads", "1")))
                    .collect::<Vec<_>>(),
                ))
                .push(baseline());
        }
    }
    // Named, so the bitrate goes to the full-size one and not its smaller sibling.
    if let Some(first) = chain.0.first_mut() {
        *first = first.clone().with("name", name);
    }
    chain
}

/// The name of the echo probe that the speaker path carries and the mic path reads.
pub const ECHO_PROBE: &str = "echo_probe";

/// mic → 48 kHz mono → echo cancellation → Opus into the appsink `audio`.
pub fn audio_capture(audio: &AudioProfile) -> Chain {
    let mut chain = Chain::default();
    if audio.capture == "test" {
        chain.push(Stage::element(
            "audiotestsrc",
            &[
                ("is-live", "true"),
                ("wave", "sine"),
                ("freq", "440"),
                ("volume", "0.2"),
            ],
        ));
    } else {
        chain.push(Stage::element("alsasrc", &[("device", &audio.capture)]));
    }
    chain
        .push(Stage::element("audioconvert", &[]))
        .push(Stage::element("audioresample", &[]))
        .push(Stage::Caps(
            "audio/x-raw,format=S16LE,rate=48000,channels=1".into(),
        ));
    if audio.echo_cancel {
        chain.push(Stage::element(
            "webrtcdsp",
            &[
                ("probe", ECHO_PROBE),
                ("echo-cancel", "true"),
                ("noise-suppression", "true"),
            ],
        ));
        chain.push(Stage::element("audioconvert", &[]));
    }
    chain
        .push(Stage::element(
            "opusenc",
            &[
                ("bitrate", "32000"),
                ("frame-size", "20"),
                ("audio-type", "voice"),
            ],
        ))
        .push(Stage::Caps("audio/x-opus".into()))
        .push(Stage::element(
            "appsink",
            &[
                ("name", "audio"),
                ("sync", "false"),
                ("max-buffers", "8"),
                ("drop", "true"),
            ],
        ));
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::board::Board;

    fn profile(board: Board) -> crate::config::board::Profile {
        board.profile(&toml::Table::new()).unwrap()
    }

    #[test]
    fn pi4_uses_the_hardware_encoder_with_libcamera() {
        let p = profile(Board::Pi4);
        let has = |name: &str| matches!(name, "libcamerasrc" | "v4l2h264enc" | "x264enc");
        let found = find_camera(&p.camera, &has, 1, &["/dev/video0".into()]);
        assert_eq!(found, CameraFound::Libcamera);
        let encoder = choose_encoder(&p.encoder, &has).unwrap();
        assert_eq!(encoder, "v4l2h264enc");
        let chain = video_capture(&p.camera, &found, encoder, p.encoder.bitrate_kbps);
        assert_eq!(
            chain.factories(),
            [
                "libcamerasrc",
                "queue",
                "videoconvert",
                "tee",
                "queue",
                "v4l2h264enc",
                "h264parse",
                "appsink",
                "queue",
                "videoscale",
                "v4l2h264enc",
                "h264parse",
                "appsink",
                "queue",
                "valve",
                "videoscale",
                "vp8enc",
                "appsink"
            ]
        );
        assert_eq!(
            chain.caps(),
            [
                "video/x-raw,width=1280,height=720,framerate=30/1",
                "video/x-raw,format=I420,width=1280,height=720,framerate=30/1",
                "video/x-h264,level=(string)4,profile=constrained-baseline",
                H264_OUT_CAPS,
                // The half-size layer: a second instance of the hardware encoder.
                "video/x-raw,width=640,height=360",
                "video/x-h264,level=(string)4,profile=constrained-baseline",
                H264_OUT_CAPS,
                "video/x-raw,width=640,height=360",
                "video/x-vp8",
            ]
        );
        assert!(
            chain
                .to_string()
                .contains("appsink name=video sync=false max-buffers=4 drop=true  split. ! queue"),
            "the VP8 branch starts at the tee: {chain}"
        );
        assert!(chain.to_string().contains(
            "v4l2h264enc extra-controls=\"controls,video_bitrate=1500000,h264_i_frame_period=60,repeat_sequence_header=1\""
        ));
    }

    #[test]
    fn pi4_falls_back_to_a_usb_webcam_and_software_when_hardware_is_missing() {
        let p = profile(Board::Pi4);
        let has = |name: &str| matches!(name, "x264enc" | "openh264enc");
        let found = find_camera(&p.camera, &has, 0, &["/dev/video2".into()]);
        assert_eq!(
            found,
            CameraFound::V4l2 {
                device: "/dev/video2".into()
            }
        );
        assert_eq!(choose_encoder(&p.encoder, &has).unwrap(), "x264enc");
        let chain = video_capture(&p.camera, &found, "x264enc", 1500);
        assert_eq!(
            chain.factories(),
            [
                "v4l2src",
                "queue",
                "videorate",
                "videoscale",
                "videoconvert",
                "tee",
                "queue",
                "x264enc",
                "h264parse",
                "appsink",
                "queue",
                "videoscale",
                "x264enc",
                "h264parse",
                "appsink",
                "queue",
                "valve",
                "videoscale",
                "vp8enc",
                "appsink"
            ]
        );
        assert!(chain
            .to_string()
            .starts_with("v4l2src device=/dev/video2 ! "));
    }

    #[test]
    fn pi5_encodes_in_software_and_says_why() {
        let p = profile(Board::Pi5);
        let has = |name: &str| matches!(name, "libcamerasrc" | "openh264enc");
        assert_eq!(choose_encoder(&p.encoder, &has).unwrap(), "openh264enc");
        let none = |_: &str| false;
        let err = choose_encoder(&p.encoder, &none).unwrap_err();
        assert!(err.contains("x264enc is not available"), "{err}");
        let chain = video_capture(&p.camera, &CameraFound::Libcamera, "openh264enc", 800);
        assert!(chain
            .to_string()
            .contains("openh264enc bitrate=800000 gop-size=60"));
    }

    #[test]
    fn x264_cuts_the_low_layer_in_one_slice_and_the_full_one_per_thread() {
        let p = profile(Board::Dev);
        let chain = video_capture(&p.camera, &CameraFound::Test, "x264enc", 1500).to_string();
        let encoder = |name: &str| {
            let end = chain.find(&format!("name={name} ")).expect(name);
            chain[chain[..end].rfind("x264enc").expect("x264enc")..end].to_string()
        };
        assert!(encoder(LOW_ENCODER).contains("threads=1"), "{chain}");
        assert!(!encoder(HIGH_ENCODER).contains("threads="), "{chain}");
    }

    #[test]
    fn huge_rates_from_the_config_saturate_instead_of_wrapping() {
        // Found by the fuzzer (fuzz/seeds/config/board_overrides): `framerate * 2` and
        // `kbps * 1000` overflowed, a panic in a debug build and a nonsense pipeline in release.
        let mut p = profile(Board::Pi5);
        p.camera.framerate = u32::MAX;
        let chain = video_capture(&p.camera, &CameraFound::Test, "openh264enc", u32::MAX);
        let text = chain.to_string();
        assert!(
            text.contains(&format!("bitrate={} gop-size={}", u32::MAX, u32::MAX)),
            "{text}"
        );
    }

    #[test]
    fn missing_camera_is_reported_not_invented() {
        let p = profile(Board::Pi5);
        let none = |_: &str| false;
        assert!(matches!(
            find_camera(&p.camera, &none, 0, &[]),
            CameraFound::Missing(_)
        ));
    }

    #[test]
    fn mic_path_cancels_echo_before_opus() {
        let p = profile(Board::Pi4);
        let chain = audio_capture(&p.audio);
        assert_eq!(
            chain.factories(),
            [
                "alsasrc",
                "audioconvert",
                "audioresample",
                "webrtcdsp",
                "audioconvert",
                "opusenc",
                "appsink"
            ]
        );
        assert!(chain.to_string().contains("webrtcdsp probe=echo_probe"));
        let dev = audio_capture(&profile(Board::Dev).audio);
        assert_eq!(dev.factories()[0], "audiotestsrc");
    }
}
