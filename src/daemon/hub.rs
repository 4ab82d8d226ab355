//! The one task that owns the call: it pumps the UDP socket, the WebSockets and the control
//! requests into the pure `Call` core and carries out what it returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use str0m::media::{Frequency, MediaKind, MediaTime};

use crate::call::invite::unix_seconds;
use crate::call::protocol::ServerMsg;
use crate::call::{Call, ConnId, Output};
use crate::daemon::control::{Envelope, Request, Response};
use crate::media::capture::Device;
use crate::media::tv::{self, Screen};
use crate::media::{BoxFrame, MediaEvent, MediaInput, MediaKindTag};
use crate::privacy::gpio::PrivacyLines;
use crate::privacy::machine::{Action, Privacy, Reading};
use std::path::PathBuf;

/// What a WebSocket task tells the hub.
#[derive(Debug)]
pub enum WsEvent {
    Open(ConnId, mpsc::UnboundedSender<WsCommand>),
    Text(ConnId, String),
    Closed(ConnId),
}

/// What the hub tells a WebSocket task.
#[derive(Debug)]
pub enum WsCommand {
    Send(ServerMsg),
    Close,
}

/// The box's own devices, when it is in the call.
pub struct BoxMedia {
    pub camera: Device,
    pub mic: Device,
    pub screen: Screen,
    pub input: mpsc::Receiver<MediaInput>,
    /// Dev board: devices are simulated and `hearth simulate` may unplug them.
    pub simulated: bool,
    pub camera_problem: Option<String>,
    pub mic_problem: Option<String>,
    /// Encoder → socket latencies of recent video frames, for the benchmark.
    pub send_latencies: Vec<Duration>,
}

const LATENCY_SAMPLES: usize = 1000;

/// The privacy switch, its state machine, and what it has done.
pub struct PrivacyControl {
    pub machine: Privacy,
    pub lines: PrivacyLines,
    pub readings: mpsc::Receiver<Reading>,
    /// Append-only, one line per change.
    pub log: PathBuf,
    /// A hardware board: only the physical switch releases privacy.
    pub hardware: bool,
    pub since: SystemTime,
    /// When the reading that last changed the state arrived, to measure the reaction.
    pub changed_at: Option<Instant>,
    /// When privacy last turned on, to measure how fast capture was released.
    pub changed_at_for_release: Option<Instant>,
    pub release_latencies: Vec<Duration>,
    pub told_latencies: Vec<Duration>,
}

pub struct Hub {
    pub call: Call,
    pub media: Option<BoxMedia>,
    pub privacy: PrivacyControl,
    /// Outputs made while answering a control request, carried out right after.
    pub pending_out: Vec<Output>,
    pub socket: UdpSocket,
    /// Drop datagrams from anywhere but loopback (dev board without `--lan`).
    pub loopback_only: bool,
    /// `https://host:port` for join links.
    pub base_url: String,
    pub default_ttl: Duration,
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn record(samples: &mut Vec<Duration>, sample: Duration) {
    if samples.len() >= LATENCY_SAMPLES {
        samples.remove(0);
    }
    samples.push(sample);
}

/// Median, p99 and count of latency samples, in microseconds.
fn summary(samples: &[Duration]) -> serde_json::Value {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |p: usize| {
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .map(|d| d.as_micros() as u64)
    };
    serde_json::json!({ "median": at(50), "p99": at(99), "count": sorted.len() })
}

fn append(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line.as_bytes())
}

async fn next_media(media: &mut Option<BoxMedia>) -> Option<MediaInput> {
    match media {
        Some(m) => m.input.recv().await,
        None => std::future::pending().await,
    }
}

pub fn join_url(base_url: &str, token: &str) -> String {
    format!("{base_url}/join#{token}")
}

impl Hub {
    pub async fn run(
        mut self,
        mut ws: mpsc::Receiver<WsEvent>,
        mut control: mpsc::Receiver<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let local = self.socket.local_addr().ok();
        let mut conns: HashMap<ConnId, mpsc::UnboundedSender<WsCommand>> = HashMap::new();
        let mut buf = vec![0u8; 2000];
        let mut out = Vec::new();
        let mut next = Instant::now();
        // Pinging from this loop, not a separate task: if the loop hangs, systemd restarts us.
        let mut watchdog = crate::daemon::notify::watchdog_interval().map(tokio::time::interval);
        loop {
            let sleep = tokio::time::sleep_until(next.into());
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let now = Instant::now();
                    match received {
                        Ok((n, source)) if !self.loopback_only || source.ip().is_loopback() => {
                            let destination = local.unwrap_or(source);
                            next = self.call.datagram(now, source, destination, &buf[..n], &mut out);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("udp receive: {e}"),
                    }
                }
                Some(event) = ws.recv() => {
                    let now = Instant::now();
                    next = match event {
                        WsEvent::Open(conn, tx) => {
                            conns.insert(conn, tx);
                            self.call.connected(conn, now);
                            next
                        }
                        WsEvent::Text(conn, text) => {
                            self.call.message(conn, &text, now, SystemTime::now(), &mut out)
                        }
                        WsEvent::Closed(conn) => {
                            conns.remove(&conn);
                            self.call.closed(conn, now, &mut out)
                        }
                    };
                }
                Some(input) = next_media(&mut self.media) => {
                    let now = Instant::now();
                    match input {
                        MediaInput::Frame(frame) => {
                            next = self.box_frame(&frame, now, &mut out);
                            self.carry_out(&mut out, &mut conns).await;
                            if frame.kind == MediaKindTag::Video {
                                self.record_latency(frame.encoded_at.elapsed());
                            }
                        }
                        MediaInput::Event(event) => self.media_event(event, &mut out),
                    }
                }
                Some((request, reply)) = control.recv() => {
                    if let (Request::Snapshot { path }, Some(media)) = (&request, &self.media) {
                        // The screen thread answers; the hub does not wait for it.
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        media.screen.send(tv::Command::Snapshot(path.into(), tx));
                        tokio::spawn(async move {
                            let response = match rx.await {
                                Ok(Ok(())) => Response::Ok(serde_json::json!({ "written": true })),
                                Ok(Err(e)) => Response::Error(e),
                                Err(_) => Response::Error("the screen is not running".into()),
                            };
                            let _ = reply.send(response);
                        });
                    } else {
                        let _ = reply.send(self.control(request));
                    }
                }
                Some(reading) = self.privacy.readings.recv() => {
                    let now = Instant::now();
                    let actions = self.privacy.machine.reading(reading, now);
                    self.apply_privacy(actions, now, &mut out);
                }
                _ = sleep => {
                    let now = Instant::now();
                    let actions = self.privacy.machine.tick(now);
                    self.apply_privacy(actions, now, &mut out);
                    next = self.call.timeout(now, &mut out);
                }
                _ = tick(&mut watchdog) => crate::daemon::notify::notify("WATCHDOG=1"),
                _ = shutdown.changed() => break,
            }
            if let Some(deadline) = self.privacy.machine.next_deadline() {
                next = next.min(deadline);
            }
            self.carry_out(&mut out, &mut conns).await;
        }
        for tx in conns.values() {
            let _ = tx.send(WsCommand::Close);
        }
    }

    async fn carry_out(
        &mut self,
        out: &mut Vec<Output>,
        conns: &mut HashMap<ConnId, mpsc::UnboundedSender<WsCommand>>,
    ) {
        // Control requests leave outputs here, and carrying out can make more (a pause from
        // the page tells the room).
        out.append(&mut self.pending_out);
        while !out.is_empty() {
            self.carry_out_once(out, conns).await;
            out.append(&mut self.pending_out);
        }
    }

    async fn carry_out_once(
        &mut self,
        out: &mut Vec<Output>,
        conns: &mut HashMap<ConnId, mpsc::UnboundedSender<WsCommand>>,
    ) {
        let tells_room = out
            .iter()
            .any(|o| matches!(o, Output::Send(_, ServerMsg::Roster { .. })));
        if let (true, Some(at)) = (tells_room, self.privacy.changed_at.take()) {
            record(&mut self.privacy.told_latencies, at.elapsed());
        }
        for output in out.drain(..) {
            match output {
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!("udp send: {e}");
                    }
                }
                Output::Send(conn, msg) => {
                    if let Some(tx) = conns.get(&conn) {
                        let _ = tx.send(WsCommand::Send(msg));
                    }
                }
                Output::Close(conn) => {
                    if let Some(tx) = conns.remove(&conn) {
                        let _ = tx.send(WsCommand::Close);
                    }
                }
                Output::SaveInvites => {
                    if let Err(e) = self.call.invites_mut().save() {
                        tracing::error!("{e}");
                    }
                }
                Output::BoxKeyframe => {
                    if let Some(media) = &self.media {
                        media.camera.request_keyframe();
                    }
                }
                Output::BoxBitrate(kbps) => {
                    if let Some(media) = &self.media {
                        tracing::debug!("box encoder bitrate {kbps} kbit/s");
                        media.camera.set_bitrate(kbps);
                    }
                }
                Output::ToBox(frame) => {
                    if let Some(media) = &self.media {
                        media.screen.send(tv::Command::Frame(frame));
                    }
                }
                Output::PauseBox(who) => {
                    let actions = self
                        .privacy
                        .machine
                        .software_on(&format!("{who}, from the call page"));
                    let mut more = Vec::new();
                    self.apply_privacy(actions, Instant::now(), &mut more);
                    self.pending_out.extend(more);
                }
                Output::ScreenRoster(phones) => {
                    let empty = phones.is_empty();
                    if let Some(media) = &self.media {
                        media.screen.send(tv::Command::Roster(phones));
                    }
                    if empty {
                        self.show_idle_screen();
                    }
                }
            }
        }
    }

    fn box_frame(&mut self, frame: &BoxFrame, now: Instant, out: &mut Vec<Output>) -> Instant {
        let nanos = frame.pts.as_nanos() as u64;
        let (kind, rtp_time) = match frame.kind {
            MediaKindTag::Video => (
                MediaKind::Video,
                MediaTime::new(nanos / 100_000 * 9, Frequency::NINETY_KHZ),
            ),
            MediaKindTag::Audio => (
                MediaKind::Audio,
                MediaTime::new(nanos / 1_000_000 * 48, Frequency::FORTY_EIGHT_KHZ),
            ),
        };
        self.call.box_frame(kind, rtp_time, &frame.data, now, out)
    }

    fn record_latency(&mut self, latency: Duration) {
        if let Some(media) = &mut self.media {
            record(&mut media.send_latencies, latency);
        }
    }

    fn media_event(&mut self, event: MediaEvent, out: &mut Vec<Output>) {
        match event {
            MediaEvent::Released { at, .. } => {
                if let Some(edge) = self.privacy.changed_at_for_release {
                    record(
                        &mut self.privacy.release_latencies,
                        at.saturating_duration_since(edge),
                    );
                }
            }
            // A device vanishing while privacy is on is expected (the switch may cut a
            // webcam's power): nothing to tell.
            MediaEvent::Device { .. } if self.privacy.machine.is_on() => {}
            MediaEvent::Device { kind, problem } => {
                let Some(media) = &mut self.media else {
                    return;
                };
                match &problem {
                    Some(why) => tracing::warn!("box {kind:?} unavailable: {why}"),
                    None => tracing::info!("box {kind:?} running"),
                }
                match kind {
                    MediaKindTag::Video => media.camera_problem = problem,
                    MediaKindTag::Audio => media.mic_problem = problem,
                }
                self.update_box_state(out);
            }
        }
    }

    /// What every phone is told about the box: privacy first, then device trouble.
    fn update_box_state(&mut self, out: &mut Vec<Output>) {
        let Some(media) = &self.media else {
            return;
        };
        if self.privacy.machine.is_on() {
            let since = crate::call::invite::unix_seconds(self.privacy.since);
            self.call
                .box_state(false, false, Some("privacy on".into()), Some(since), out);
            return;
        }
        let note = match (&media.camera_problem, &media.mic_problem) {
            (None, None) => None,
            (Some(_), None) => Some("camera unavailable".to_string()),
            (None, Some(_)) => Some("microphone unavailable".to_string()),
            (Some(_), Some(_)) => Some("camera and microphone unavailable".to_string()),
        };
        let (audio, video) = (media.mic_problem.is_none(), media.camera_problem.is_none());
        self.call.box_state(audio, video, note, None, out);
    }

    fn apply_privacy(&mut self, actions: Vec<Action>, now: Instant, out: &mut Vec<Output>) {
        for action in actions {
            match action {
                Action::StopCapture => {
                    self.privacy.changed_at_for_release = Some(now);
                    if let Some(media) = &mut self.media {
                        media.camera_problem = None;
                        media.mic_problem = None;
                        media.camera.pause();
                        media.mic.pause();
                    }
                }
                Action::StartCapture => {
                    if let Some(media) = &self.media {
                        media.camera.resume();
                        media.mic.resume();
                    }
                }
                Action::Led(on) => {
                    let _ = self.privacy.lines.led.send(on);
                }
                Action::Changed { on, cause } => {
                    self.privacy.since = SystemTime::now();
                    self.privacy.changed_at = Some(now);
                    let line = format!(
                        "{} privacy {} ({cause})\n",
                        humantime::format_rfc3339_seconds(self.privacy.since),
                        if on { "on" } else { "off" }
                    );
                    tracing::info!("privacy {} ({cause})", if on { "on" } else { "off" });
                    if let Err(e) = append(&self.privacy.log, &line) {
                        tracing::error!("privacy log {}: {e}", self.privacy.log.display());
                    }
                    self.update_box_state(out);
                    if self.call.room().phones().next().is_none() {
                        self.show_idle_screen();
                    }
                }
            }
        }
    }

    /// With nobody in the call, the TV shows a fresh join link as a QR code.
    pub fn show_idle_screen(&mut self) {
        if self.media.is_none() {
            return;
        }
        match self.new_invite("TV screen", self.default_ttl) {
            Ok((_, url)) => {
                let status = self.box_status_line();
                if let Some(media) = &self.media {
                    media.screen.send(tv::Command::Idle { url, status });
                }
            }
            Err(e) => tracing::error!("cannot make a join link for the screen: {e}"),
        }
    }

    fn box_status_line(&self) -> String {
        if self.privacy.machine.is_on() {
            return "Privacy on: camera and microphone off".into();
        }
        match &self.media {
            Some(BoxMedia {
                camera_problem: Some(_),
                ..
            }) => "Camera unavailable".into(),
            _ => "Camera and microphone on".into(),
        }
    }

    fn control(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Ok(self.status()),
            Request::Snapshot { .. } => {
                Response::Error("this box has no screen (box media is off)".into())
            }
            Request::Privacy { on } => self.privacy_request(on),
            Request::Simulate { device, present } if device == "switch" => {
                match &self.privacy.lines.simulated {
                    Some(switch) => {
                        let switch = switch.clone();
                        tokio::spawn(async move { switch.flip(present).await });
                        Response::Ok(
                            serde_json::json!({ "switch": if present { "on" } else { "off" } }),
                        )
                    }
                    None => Response::Error("this board's switch is real, not simulated".into()),
                }
            }
            Request::Simulate { device, present } => match &self.media {
                Some(media) if media.simulated => {
                    match device.as_str() {
                        "camera" => media.camera.simulate_present(present),
                        "mic" => media.mic.simulate_present(present),
                        _ => {
                            return Response::Error(format!(
                                "no simulated device {device:?} (camera, mic)"
                            ))
                        }
                    }
                    Response::Ok(serde_json::json!({ "device": device, "present": present }))
                }
                Some(_) => Response::Error("devices are simulated only on the dev board".into()),
                None => Response::Error("box media is off".into()),
            },
            Request::InviteCreate { name, ttl_secs } => {
                let ttl = ttl_secs
                    .map(Duration::from_secs)
                    .unwrap_or(self.default_ttl);
                let url = self.new_invite(&name, ttl);
                match url {
                    Ok((id, url)) => Response::Ok(serde_json::json!({ "id": id, "url": url })),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::InviteList => {
                let now = unix_seconds(SystemTime::now());
                let list: Vec<serde_json::Value> = self
                    .call
                    .invites_mut()
                    .list()
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id,
                            "name": i.name,
                            "created": i.created,
                            "expires": i.expires,
                            "last_used": i.last_used,
                            "state": if i.revoked { "revoked" } else if i.expires <= now { "expired" } else { "valid" },
                        })
                    })
                    .collect();
                Response::Ok(serde_json::Value::Array(list))
            }
            Request::InviteRevoke { id } => {
                let invites = self.call.invites_mut();
                match invites.revoke(&id).and_then(|_| invites.save()) {
                    Ok(()) => Response::Ok(serde_json::json!({ "revoked": id })),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
        }
    }

    /// `hearth privacy on|off`. On the dev board the command flips the simulated switch. On a
    /// hardware board it can turn privacy on, never off.
    fn privacy_request(&mut self, on: bool) -> Response {
        if !self.privacy.hardware {
            if let Some(switch) = &self.privacy.lines.simulated {
                let switch = switch.clone();
                tokio::spawn(async move { switch.flip(on).await });
                return Response::Ok(
                    serde_json::json!({ "privacy": if on { "on" } else { "off" } }),
                );
            }
        }
        if on {
            let actions = self.privacy.machine.software_on("command line");
            let mut out = Vec::new();
            self.apply_privacy(actions, Instant::now(), &mut out);
            self.pending_out.extend(out);
            Response::Ok(serde_json::json!({ "privacy": "on" }))
        } else {
            match self.privacy.machine.software_off() {
                Ok(()) => Response::Ok(serde_json::json!({ "privacy": "off" })),
                Err(refused) => Response::Error(refused.to_string()),
            }
        }
    }

    /// Make, save and return a new invite's id and join URL.
    pub fn new_invite(
        &mut self,
        name: &str,
        ttl: Duration,
    ) -> Result<(String, String), crate::call::invite::InviteError> {
        let now = SystemTime::now();
        let invites = self.call.invites_mut();
        invites.prune(now);
        let (invite, token) = invites.create(name, ttl, now);
        invites.save()?;
        Ok((invite.id, join_url(&self.base_url, &token)))
    }

    fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let media = self.call.sfu().summaries();
        let participants: Vec<serde_json::Value> = self
            .call
            .room()
            .participants()
            .iter()
            .map(|p| {
                let id = p.id.to_string();
                let peer = media.iter().find(|m| m.id == id);
                serde_json::json!({
                    "id": id,
                    "name": p.name,
                    "mic": p.audio,
                    "camera": p.video,
                    "in_call_secs": now.saturating_duration_since(p.joined_at).as_secs(),
                    "media_connected": peer.is_some_and(|m| m.connected),
                    "tracks_published": peer.map_or(0, |m| m.tracks_published),
                    "tracks_subscribed": peer.map_or(0, |m| m.tracks_subscribed),
                })
            })
            .collect();
        let media = self.media.as_ref().map(|m| {
            let mut latencies = m.send_latencies.clone();
            latencies.sort();
            let percentile = |p: usize| {
                latencies
                    .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
                    .map(|d| d.as_micros() as u64)
            };
            let per_phone = m
                .screen
                .counters
                .per_phone
                .lock()
                .map(|map| {
                    map.iter()
                        .map(|(id, (video, audio))| {
                            (id.to_string(), serde_json::json!({ "video_frames": video, "audio_buffers": audio }))
                        })
                        .collect::<serde_json::Map<_, _>>()
                })
                .unwrap_or_default();
            serde_json::json!({
                "camera": m.camera_problem.as_deref().unwrap_or("running"),
                "mic": m.mic_problem.as_deref().unwrap_or("running"),
                "screen": per_phone,
                "speaker_samples": m.screen.counters.speaker_samples.load(std::sync::atomic::Ordering::Relaxed),
                "send_latency_us": { "median": percentile(50), "p99": percentile(99), "frames": latencies.len() },
            })
        });
        let privacy = serde_json::json!({
            "on": self.privacy.machine.is_on(),
            "since": crate::call::invite::unix_seconds(self.privacy.since),
            "switch": self.privacy.lines.simulated.as_ref().map_or("hardware".to_string(), |s| {
                format!("simulated, {}", if s.is_on() { "on" } else { "off" })
            }),
            "led": self.privacy.lines.simulated.as_ref().map(|s| s.led()),
            "capture_release_us": summary(&self.privacy.release_latencies),
            "everyone_told_us": summary(&self.privacy.told_latencies),
        });
        serde_json::json!({
            "privacy": privacy,
            "box": media,
            "participants": participants,
            "video_codec": self.call.room().publish_codec(),
            "media": self.call.sfu().counters(),
            "udp": self.socket.local_addr().ok().map(|a: SocketAddr| a.to_string()),
        })
    }
}
