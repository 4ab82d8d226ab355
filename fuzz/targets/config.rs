//! The owner's config file: the bytes as `hearth.toml` to `config::parse`, then every board
//! profile with its `[board]` overrides, and the capture pipelines made from them.
//!
//! What must hold: no panic; an error is one line that names the file, a line and a column
//! inside the text; a config that parses has every value in its documented range.

use std::time::Duration;

use hearth::config::board::Board;
use hearth::config::{parse, ConfigError, MAX_INVITE_TTL};
use hearth::media::plan::{audio_capture, video_capture, CameraFound};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match parse(text, "fuzz.toml") {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "one line: {message:?}");
            assert!(message.starts_with("fuzz.toml:"), "{message:?}");
            let ConfigError::Invalid { line, column, .. } = error else {
                panic!("a text is never unreadable: {message:?}");
            };
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&line),
                "line {line} of {lines}: {message:?}"
            );
            assert!(column >= 1, "{message:?}");
            return;
        }
    };
    assert!(config.web.https_port >= 1 && config.call.udp_port >= 1);
    assert!((2..=16).contains(&config.call.max_participants));
    assert!((1..=16).contains(&config.call.sessions_per_invite));
    let ttl = config.call.invite_ttl;
    assert!(
        ttl >= Duration::from_secs(60) && ttl <= MAX_INVITE_TTL,
        "{ttl:?}"
    );
    for board in [Board::Dev, Board::Pi4, Board::Pi5] {
        let Ok(profile) = board.profile(&config.board) else {
            continue;
        };
        let found = [
            CameraFound::Test,
            CameraFound::Libcamera,
            CameraFound::V4l2 {
                device: profile.camera.device.clone(),
            },
        ];
        for found in &found {
            for encoder in &profile.encoder.video {
                let chain = video_capture(
                    &profile.camera,
                    found,
                    encoder,
                    profile.encoder.bitrate_kbps,
                );
                let _ = chain.to_string();
            }
        }
        let _ = audio_capture(&profile.audio).to_string();
    }
}
