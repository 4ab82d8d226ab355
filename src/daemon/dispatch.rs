//! Carrying out what the cores decided: datagrams to the socket, messages to signalling
//! connections, frames to the TV, invites to disk; and privacy's effects on the box.

use std::time::Instant;

use super::hub::Hub;
use crate::call::invite::unix_seconds;
use crate::call::protocol::ServerMsg;
use crate::call::Output;
use crate::media::tv;
use crate::privacy::BoxEffect;
use crate::web::signalling::WsCommand;

impl Hub {
    /// Everything the call has to do, until it has nothing more (carrying out may make more:
    /// a pause from a phone tells the room).
    pub(super) async fn carry_out(&mut self) {
        while let Some(output) = self.call.poll_output() {
            self.dispatch(output).await;
        }
    }

    async fn dispatch(&mut self, output: Output) {
        match output {
            Output::Transmit(t) => {
                if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                    tracing::debug!("udp send: {e}");
                }
            }
            Output::Send(conn, msg) => {
                if matches!(msg, ServerMsg::Roster { .. }) {
                    self.metrics.roster_sent();
                }
                if let Some(tx) = self.conns.get(&conn) {
                    let _ = tx.send(WsCommand::Send(msg));
                }
            }
            Output::Close(conn) => {
                if let Some(tx) = self.conns.remove(&conn) {
                    let _ = tx.send(WsCommand::Close);
                }
            }
            Output::SaveInvites(store) => {
                self.invite_file.save(store);
            }
            Output::BoxKeyframe => {
                if let Some(media) = &self.media {
                    media.camera().request_keyframe();
                }
            }
            Output::BoxBitrate(kbps) => {
                if let Some(media) = &self.media {
                    tracing::debug!("box encoder bitrate {kbps} kbit/s");
                    media.camera().set_bitrate(kbps);
                }
            }
            Output::ToBox(frame) => self.tv(tv::Command::Frame(frame)),
            Output::ScreenRoster(phones) => {
                let empty = phones.is_empty();
                self.tv(tv::Command::Roster(phones));
                if empty {
                    self.show_idle_screen();
                }
            }
            Output::PauseBox(who) => {
                let effects = self
                    .privacy
                    .handle_software_on(&format!("{who}, from the call page"));
                self.apply_privacy(effects);
            }
        }
    }

    fn tv(&self, command: tv::Command) {
        if let Some(media) = &self.media {
            media.tv(command);
        }
    }

    pub(super) fn apply_privacy(&mut self, effects: Vec<BoxEffect>) {
        for effect in effects {
            match effect {
                BoxEffect::CloseCapture => {
                    if let Some(media) = &mut self.media {
                        media.close_capture();
                    }
                }
                BoxEffect::OpenCapture => {
                    if let Some(media) = &mut self.media {
                        media.open_capture();
                    }
                }
                BoxEffect::Changed { on } => {
                    self.metrics.privacy_changed(on, Instant::now());
                    self.tell_box_state();
                    if self.call.room().phones().next().is_none() {
                        self.show_idle_screen();
                    }
                }
            }
        }
    }

    /// What every phone is told about the box: privacy first, then device trouble.
    pub(super) fn tell_box_state(&mut self) {
        let Some(media) = &self.media else {
            return;
        };
        if self.privacy.is_on() {
            let since = unix_seconds(self.privacy.since());
            let note = Some("privacy on".to_string());
            self.call.handle_box_state(false, false, note, Some(since));
        } else {
            let (audio, video, note) = media.shown_state();
            self.call.handle_box_state(audio, video, note, None);
        }
    }

    /// With nobody in the call, the TV shows a fresh join link as a QR code.
    pub(super) fn show_idle_screen(&mut self) {
        if self.media.is_none() {
            return;
        }
        let (_, url) = self.new_invite("TV screen", self.links.default_ttl());
        let status = self.box_status_line();
        self.tv(tv::Command::Idle { url, status });
    }

    fn box_status_line(&self) -> String {
        if self.privacy.is_on() {
            return "Privacy on: camera and microphone off".into();
        }
        match &self.media {
            Some(media) if media.problem(crate::media::MediaKindTag::Video).is_some() => {
                "Camera unavailable".into()
            }
            _ => "Camera and microphone on".into(),
        }
    }

    /// Make a new invite (saved by the invite file's task); returns its id and join URL.
    pub(super) fn new_invite(&mut self, name: &str, ttl: std::time::Duration) -> (String, String) {
        let (invite, token) = self
            .call
            .create_invite(name, ttl, std::time::SystemTime::now());
        (invite.id, self.links.url(&token))
    }
}
