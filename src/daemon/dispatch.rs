//! Carrying out what the cores decided: datagrams to the socket, messages to signalling
//! connections, frames to the TV, invites to disk; and privacy's effects on the box.

use std::time::Instant;

use tokio::sync::mpsc::error::TrySendError;

use super::hub::{Hub, Links};
use crate::call::invite::unix_seconds;
use crate::call::protocol::ServerMsg;
use crate::call::Output;
use crate::media::tv;
use crate::privacy::machine::Gesture;
use crate::privacy::BoxEffect;
use crate::web::rate::Occasional;
use crate::web::signalling::WsCommand;

/// Connections closed for not reading, logged once a minute at most.
static UNREAD: Occasional = Occasional::new(std::time::Duration::from_secs(60));

impl Hub {
    /// Everything the call has to do, until it has nothing more (carrying out may make more:
    /// a pause from a phone tells the room).
    pub(super) async fn carry_out(&mut self) {
        // Datagrams are sent together at the end (one system call for many); nothing else
        // the call asks for waits on them.
        let mut transmits = Vec::new();
        while let Some(output) = self.call.poll_output() {
            match output {
                Output::Transmit(t) => transmits.push(t),
                other => self.dispatch(other).await,
            }
        }
        if !transmits.is_empty() {
            self.media_sockets.send_all(&transmits).await;
        }
    }

    async fn dispatch(&mut self, output: Output) {
        match output {
            // `carry_out` sends datagrams in batches; one alone goes out as a batch of one.
            Output::Transmit(t) => self.media_sockets.send_all(&[t]).await,
            Output::Send(conn, mut msg) => {
                if matches!(msg, ServerMsg::Roster { .. }) {
                    self.metrics.roster_sent();
                }
                if let (
                    ServerMsg::Welcome {
                        you, ice_servers, ..
                    },
                    Some(relay),
                ) = (&mut msg, &self.relay)
                {
                    *ice_servers = vec![relay.ice_server(you, std::time::SystemTime::now())];
                }
                let Some(tx) = self.conns.get(&conn) else {
                    return;
                };
                match tx.try_send(WsCommand::Send(msg)) {
                    Ok(()) => {}
                    // A phone that does not read its messages is let go, not buffered for.
                    Err(TrySendError::Full(_)) => {
                        tracing::debug!("{conn:?}: closing, its messages pile up unread");
                        if let Some(n) = UNREAD.note(Instant::now()) {
                            tracing::info!(
                                "{n} signalling connection(s) closed since the last report: \
                                 their messages piled up unread"
                            );
                        }
                        self.conns.remove(&conn);
                        self.call.handle_closed(conn, Instant::now());
                    }
                    // The session just ended; its `Closed` is on the way.
                    Err(TrySendError::Closed(_)) => {
                        self.conns.remove(&conn);
                        self.call.handle_closed(conn, Instant::now());
                    }
                }
            }
            Output::Close(conn) => {
                if let Some(tx) = self.conns.remove(&conn) {
                    // A full queue closes the connection as well, by dropping `tx`.
                    let _ = tx.try_send(WsCommand::Close);
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
            Output::BoxLowBitrate(kbps) => {
                if let Some(media) = &self.media {
                    tracing::debug!("box low encoder bitrate {kbps} kbit/s");
                    media.camera().set_low_bitrate(kbps);
                }
            }
            Output::BoxVp8(on) => {
                if let Some(media) = &mut self.media {
                    tracing::info!("the camera's VP8 {}", if on { "starts" } else { "stops" });
                    media.set_camera_vp8(on);
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
            Output::Knocks(knocks) => {
                self.knocking = knocks.first().map(|k| k.name.clone());
                self.tv(tv::Command::Banner(self.banner()));
            }
            Output::PauseBox(who) => {
                self.paused_by = Some(who.name.clone());
                let effects = self
                    .privacy
                    .handle_software_on(&format!("{who}, from the call page"));
                self.apply_privacy(effects);
            }
        }
    }

    pub(super) fn tv(&self, command: tv::Command) {
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
                BoxEffect::Gesture(Gesture::Flick) => {
                    let now = Instant::now();
                    if let Some(first) = self.call.knocks(now).first() {
                        tracing::info!("let in at the box by the switch");
                        self.call.handle_knock_answer(first.id, true, now);
                    }
                }
                BoxEffect::Gesture(Gesture::OwnerPattern) => self.show_owner_code(),
                BoxEffect::Changed { on } => {
                    if !on {
                        self.paused_by = None;
                    }
                    let banner = if on {
                        self.box_status_line()
                    } else {
                        String::new()
                    };
                    self.tv(tv::Command::Banner(banner));
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

    /// With nobody in the call, the TV shows a fresh join link as a QR code. The link it
    /// showed before is revoked: one TV link at a time, for the whole family.
    pub(super) fn show_idle_screen(&mut self) {
        if self.media.is_none() || self.show_setup_screen() {
            return;
        }
        if let Some(previous) = self.tv_invite.take() {
            let _ = self.call.revoke_invite(&previous);
        }
        let family = Some(self.call.room().max_phones() as u32);
        let ttl = self.links.default_ttl();
        let now = std::time::SystemTime::now();
        let (invite, token) = self.call.create_invite("TV screen", ttl, now, family);
        if self.links.tv_knocks() {
            let _ = self.call.set_invite_knock(&invite.id, true);
        }
        self.tv_invite = Some(invite.id);
        let url = self.links.for_tv(&token);
        let mut status = format!("{}\n{}", self.box_status_line(), self.reach.tv_line());
        if let Some(line) = self.certificate.tv_line() {
            status = format!("{status}\n{line}");
        }
        self.tv(tv::Command::Idle {
            heading: "Scan to join the call".into(),
            code: url.clone(),
            caption: url,
            status,
        });
    }

    /// The switch pattern was made at the box: for a minute the TV shows a code that makes
    /// the phone scanning it an owner.
    fn show_owner_code(&mut self) {
        let token = self.owners.open_pairing(Instant::now());
        tracing::info!("owner pairing open for a minute (switch pattern at the box)");
        let url = self.links.owner_pairing(&token);
        self.pairing_url = Some(url.clone());
        self.tv(tv::Command::Idle {
            heading: "Scan this with your phone to become an owner of this box".into(),
            code: url,
            caption: String::new(),
            status: "The code works once, for one minute.".into(),
        });
    }

    /// The line over the call: someone at the door first, then privacy.
    fn banner(&self) -> String {
        match (&self.knocking, self.privacy.is_on()) {
            (Some(name), _) => format!(
                "{name} is at the door: let them in on an owner's phone, or flick the switch on and off"
            ),
            (None, true) => self.box_status_line(),
            (None, false) => String::new(),
        }
    }

    fn box_status_line(&self) -> String {
        if self.privacy.is_on() {
            return match &self.paused_by {
                Some(name) => format!("Privacy on: paused by {name}"),
                None => "Privacy on: camera and microphone off".into(),
            };
        }
        match &self.media {
            Some(media) if media.problem(crate::media::MediaKindTag::Video).is_some() => {
                "Camera unavailable".into()
            }
            _ => "Camera and microphone on".into(),
        }
    }

    /// Make a new invite (saved by the invite file's task); returns its id and links.
    /// `max_sessions`: devices at once with it, when not the call's default.
    pub(super) fn new_invite(
        &mut self,
        name: &str,
        ttl: std::time::Duration,
        max_sessions: Option<u32>,
    ) -> (String, Links) {
        let now = std::time::SystemTime::now();
        let (invite, token) = self.call.create_invite(name, ttl, now, max_sessions);
        (invite.id, self.links.links(&token))
    }
}
