//! The call's signalling core: maps (connection, message) and datagrams to (connection,
//! message), datagrams to send and connections to close. It owns the room, the SFU and the
//! invites, takes the current time as input, and does no I/O — the daemon's hub pumps it.
//! Inputs are `handle_*`; what to do comes out of `poll_output`, and `poll_timeout` says
//! when `handle_timeout` is due.

pub mod invite;
pub mod protocol;
pub mod room;
pub mod sfu;
pub mod throttle;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use str0m::media::MediaTime;

use invite::{Invite, InviteError, InviteStore};
use protocol::{parse_client_msg, ClientMsg, SeatKey, ServerMsg};
use room::{ParticipantId, Room};
use sfu::{BoxEncoding, PhoneFrame, Sfu, SfuEvent, SfuOutput, Transmit};
use throttle::{redacted, GuessThrottle};

/// A connection that has not presented a token within this is closed.
const JOIN_LIMIT: Duration = Duration::from_secs(10);
/// A knock nobody answers is declined after this.
pub const KNOCK_LIMIT: Duration = Duration::from_secs(120);
/// A participant that has not offered its media within this is removed: it holds a place
/// in the call without being in it.
const OFFER_LIMIT: Duration = Duration::from_secs(15);
/// A participant whose connection broke keeps their place this long for their page to come
/// back (a phone walking from Wi-Fi to mobile data, a box restarting its web server).
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// Limits that keep one link, or one address, from taking the call over.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Devices in the call at once with one invite, unless the invite says otherwise.
    pub sessions_per_invite: u32,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            sessions_per_invite: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Debug)]
pub enum Output {
    Send(ConnId, ServerMsg),
    Close(ConnId),
    Transmit(Transmit),
    /// The invites changed (one was made, used or revoked): persist this copy.
    SaveInvites(InviteStore),
    /// A phone needs a keyframe from the box's encoder.
    BoxKeyframe,
    /// The box's encoder should aim at this many kbit/s.
    BoxBitrate(u32),
    /// The box's half-size encoder should aim at this many kbit/s.
    BoxLowBitrate(u32),
    /// The box's camera should encode VP8 too (a phone without H.264 takes its video).
    BoxVp8(bool),
    /// A phone's frame for the box's screen or speaker.
    ToBox(PhoneFrame),
    /// The phones now in the call, for the box's screen (tiles, names, idle screen).
    ScreenRoster(Vec<(ParticipantId, String)>),
    /// A phone asked to pause the box (privacy on).
    PauseBox(Pauser),
    /// Who is knocking changed (for the TV and the owners).
    Knocks(Vec<Knock>),
}

/// Someone with a knock-first link, waiting to be let in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Knock {
    /// Names the knock in `handle_knock_answer`.
    pub id: u64,
    pub name: String,
    /// The invite's name ("Grandma's link").
    pub link: String,
    pub waiting_secs: u64,
}

/// Who paused the box from a phone, for the privacy log and the TV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pauser {
    pub participant: ParticipantId,
    pub name: String,
    /// The id of the invite the phone joined with.
    pub invite: String,
}

impl std::fmt::Display for Pauser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, id, invite) = (&self.name, self.participant, &self.invite);
        write!(f, "{name:?} ({id}, invite {invite})")
    }
}

#[derive(Debug, Clone)]
enum Conn {
    AwaitingJoin {
        since: Instant,
        from: IpAddr,
    },
    /// Came with a knock-first link: waits, with no media and no roster, until someone at
    /// home lets them in (or not).
    Knocking {
        since: Instant,
        invite: String,
        name: String,
        video_codecs: Vec<String>,
    },
    Joined {
        id: ParticipantId,
        /// The id of the invite it joined with.
        invite: String,
        since: Instant,
        offered: bool,
    },
}

/// What lets a participant's page take up its place again after its connection broke.
#[derive(Debug)]
struct Seat {
    /// Kept hashed, as invite tokens are.
    key_sha256: String,
    /// The invite it was taken with: coming back needs that invite, still valid.
    invite: String,
    /// Since when it waits for its page (no connection); None while connected.
    held_since: Option<Instant>,
}

impl Seat {
    fn new(invite: String) -> (Seat, SeatKey) {
        let key = invite::new_secret();
        let seat = Seat {
            key_sha256: invite::hash(&key),
            invite,
            held_since: None,
        };
        (seat, SeatKey(key))
    }

    fn renew_key(&mut self) -> SeatKey {
        let key = invite::new_secret();
        self.key_sha256 = invite::hash(&key);
        SeatKey(key)
    }
}

pub struct Call {
    room: Room,
    sfu: Sfu,
    invites: InviteStore,
    limits: CallLimits,
    throttle: GuessThrottle,
    /// Participants who paused the box: once each (only the switch at home releases it).
    pausers: std::collections::HashSet<ParticipantId>,
    conns: HashMap<ConnId, Conn>,
    /// Every participant's place in the call, which their page can come back to.
    seats: HashMap<ParticipantId, Seat>,
    outputs: VecDeque<Output>,
}

impl Call {
    pub fn new(room: Room, sfu: Sfu, invites: InviteStore, limits: CallLimits) -> Self {
        Call {
            room,
            sfu,
            invites,
            limits,
            throttle: GuessThrottle::default(),
            pausers: Default::default(),
            conns: HashMap::new(),
            seats: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn room(&self) -> &Room {
        &self.room
    }

    pub fn sfu(&self) -> &Sfu {
        &self.sfu
    }

    /// The box's screen was rebuilt (see `Sfu::box_decoders_restarted`).
    pub fn box_decoders_restarted(&mut self) {
        self.sfu.box_decoders_restarted();
    }

    /// The media addresses offered to phones that join from now on.
    pub fn set_candidates(&mut self, candidates: sfu::Candidates) {
        self.sfu.set_candidates(candidates);
    }

    pub fn invites(&self) -> &[Invite] {
        self.invites.list()
    }

    /// Make a join link's token (and record it, hashed). Expired invites are pruned first.
    /// `max_sessions`: devices at once with this link, when not the call's default.
    pub fn create_invite(
        &mut self,
        name: &str,
        ttl: Duration,
        wall: SystemTime,
        max_sessions: Option<u32>,
    ) -> (Invite, String) {
        self.invites.prune(wall);
        let made = self.invites.create_limited(name, ttl, wall, max_sessions);
        self.save_invites();
        made
    }

    /// Knock first with this invite (or not).
    pub fn set_invite_knock(&mut self, id: &str, knock: bool) -> Result<(), InviteError> {
        self.invites.set_knock(id, knock)?;
        self.save_invites();
        Ok(())
    }

    pub fn revoke_invite(&mut self, id: &str) -> Result<(), InviteError> {
        self.invites.revoke(id)?;
        self.save_invites();
        Ok(())
    }

    fn save_invites(&mut self) {
        self.outputs
            .push_back(Output::SaveInvites(self.invites.clone()));
    }

    /// One of the box's encoded frames for the phones.
    pub fn handle_box_frame(
        &mut self,
        encoding: BoxEncoding,
        rtp_time: MediaTime,
        data: &[u8],
        now: Instant,
    ) {
        self.sfu.handle_box_frame(encoding, rtp_time, data, now);
    }

    /// The box's camera or mic changed (device trouble, privacy); everyone is told.
    pub fn handle_box_state(
        &mut self,
        audio: bool,
        video: bool,
        note: Option<String>,
        privacy_since: Option<u64>,
    ) {
        let messages = self.room.set_box_state(audio, video, note, privacy_since);
        self.send_all(messages);
    }

    /// A signalling connection opened from `from`.
    pub fn handle_connected(&mut self, conn: ConnId, from: IpAddr, now: Instant) {
        self.conns
            .insert(conn, Conn::AwaitingJoin { since: now, from });
    }

    /// A signalling connection closed without a goodbye (a goodbye is `leave`): the place
    /// of a participant whose media was set up is held for their page to come back (see
    /// [`HOLD_LIMIT`]); one that broke before is simply gone.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        match self.conns.remove(&conn) {
            Some(Conn::Joined {
                id, offered: true, ..
            }) => self.hold(id, now),
            Some(Conn::Joined { id, .. }) => self.leave(id),
            Some(Conn::Knocking { .. }) => self.tell_knocks(now),
            _ => {}
        }
    }

    pub fn handle_message(&mut self, conn: ConnId, text: &str, now: Instant, wall: SystemTime) {
        let Some(state) = self.conns.get(&conn).cloned() else {
            return;
        };
        let msg = match parse_client_msg(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("{conn:?}: unreadable message: {e}");
                match state {
                    Conn::Knocking { .. } => {}
                    Conn::AwaitingJoin { .. } => self.refuse(conn, "That was not a join request."),
                    Conn::Joined { .. } => self.outputs.push_back(Output::Send(
                        conn,
                        ServerMsg::Error {
                            message: "That message could not be read.".into(),
                        },
                    )),
                }
                return;
            }
        };
        match (state, msg) {
            (
                Conn::AwaitingJoin { from, .. },
                ClientMsg::Join {
                    token,
                    name,
                    video_codecs,
                    rejoin,
                },
            ) => {
                let asked = Asked {
                    token: &token,
                    name: &name,
                    video_codecs: &video_codecs,
                    rejoin: rejoin.as_ref(),
                };
                self.join(conn, from, asked, now, wall)
            }
            (Conn::AwaitingJoin { .. }, _) => {
                self.refuse(conn, "Join first, with the invite link.")
            }
            (Conn::Knocking { .. }, ClientMsg::Leave) => {
                self.conns.remove(&conn);
                self.outputs.push_back(Output::Close(conn));
                self.tell_knocks(now);
            }
            // Nothing else means anything before someone at home lets them in.
            (Conn::Knocking { .. }, _) => {}
            (Conn::Joined { id, .. }, msg) => self.joined_message(conn, id, msg, now),
        }
    }

    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.sfu.handle_datagram(now, source, destination, data);
    }

    /// Time passed: close connections that never joined and participants that never
    /// offered media, give up places held too long, advance the media sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        let gone: Vec<ParticipantId> = self
            .seats
            .iter()
            .filter(|(_, seat)| seat.held_since.is_some_and(|t| now >= t + HOLD_LIMIT))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::info!("{id} did not come back within {} s", HOLD_LIMIT.as_secs());
            self.leave(id);
        }
        let stale: Vec<(ConnId, Option<ParticipantId>)> = self
            .conns
            .iter()
            .filter(|(_, state)| state.deadline().is_some_and(|d| now >= d))
            .map(|(conn, state)| (*conn, state.participant()))
            .collect();
        for (conn, participant) in stale {
            if matches!(self.conns.get(&conn), Some(Conn::Knocking { .. })) {
                self.refuse(conn, DECLINED);
                self.tell_knocks(now);
                continue;
            }
            self.conns.remove(&conn);
            if let Some(id) = participant {
                tracing::info!("{id} offered no media within {} s", OFFER_LIMIT.as_secs());
                self.leave(id);
            }
            self.outputs.push_back(Output::Close(conn));
        }
        self.throttle.prune(now);
        self.sfu.handle_timeout(now);
    }

    /// The next thing to do, or None until new input or `poll_timeout`.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            match self.sfu.poll_output()? {
                SfuOutput::Transmit(t) => return Some(Output::Transmit(t)),
                SfuOutput::Event(event) => self.sfu_event(event),
            }
        }
    }

    /// When `handle_timeout` is due at the latest: the media sessions' next timer, and the
    /// join limit of connections still waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(Conn::deadline);
        let held = self.seats.values().filter_map(|s| s.held_since);
        let held = held.map(|since| since + HOLD_LIMIT);
        conns.chain(held).chain(self.sfu.poll_timeout()).min()
    }

    fn join(&mut self, conn: ConnId, from: IpAddr, asked: Asked, now: Instant, wall: SystemTime) {
        let Asked {
            token,
            name,
            video_codecs,
            rejoin,
        } = asked;
        if self.throttle.is_throttled(from, now) {
            if self.throttle.record_throttled(from, now) {
                tracing::info!(
                    "join attempts from {} throttled for a minute",
                    redacted(from)
                );
            }
            return self.refuse(conn, TOO_MANY_ATTEMPTS);
        }
        let invite: Invite = match self.invites.check(token, wall) {
            Ok(invite) => invite.clone(),
            Err(refusal) => {
                if self.throttle.record_failure(from, now) {
                    tracing::info!("join refused from {} ({refusal:?})", redacted(from));
                }
                return self.refuse(conn, &refusal.to_string());
            }
        };
        self.save_invites();
        // Coming back needs the link (still valid: a revoked one does not let anyone back)
        // and the key of a place taken with it.
        if let Some(id) = rejoin.and_then(|key| self.seat_of(key, &invite.id)) {
            return self.resume(conn, id, now);
        }
        let allowed = invite
            .max_sessions
            .unwrap_or(self.limits.sessions_per_invite);
        if self.sessions_of(&invite.id) >= allowed as usize {
            return self.refuse(conn, &format!(
                "This link is already in use on {allowed} devices. Ask the family for a link of your own."
            ));
        }
        if invite.knock {
            let knocking = Conn::Knocking {
                since: now,
                invite: invite.id,
                name: protocol::clean_name(name),
                video_codecs: video_codecs.to_vec(),
            };
            self.conns.insert(conn, knocking);
            let waiting = ServerMsg::Waiting {
                message: "Waiting for someone at home to let you in…".into(),
            };
            self.outputs.push_back(Output::Send(conn, waiting));
            self.tell_knocks(now);
            return;
        }
        self.enter(conn, invite.id, name, video_codecs, now);
    }

    /// Into the room: welcome, roster, and the phone may offer its media.
    fn enter(
        &mut self,
        conn: ConnId,
        invite: String,
        name: &str,
        video_codecs: &[String],
        now: Instant,
    ) {
        let (seat, key) = Seat::new(invite.clone());
        match self.room.join(name, video_codecs, key, now) {
            Ok((id, messages)) => {
                tracing::info!("{id} joined with invite {invite}");
                self.seats.insert(id, seat);
                self.connect_participant(conn, id, invite, now);
                self.send_all(messages);
                self.screen_roster();
            }
            Err(refused) => self.refuse(conn, &refused.to_string()),
        }
    }

    /// The participant whose place this key opens, if it was taken with this invite and
    /// its participant is still in the call.
    fn seat_of(&self, key: &SeatKey, invite: &str) -> Option<ParticipantId> {
        let digest = invite::hash(&key.0);
        self.seats
            .iter()
            .find(|(_, seat)| seat.key_sha256 == digest && seat.invite == invite)
            .map(|(id, _)| *id)
            .filter(|id| self.room.participant(*id).is_some())
    }

    /// A participant's page is back on connection `conn`: it takes over the place (from the
    /// old connection too, should the box not have noticed that one break yet) and sets up
    /// its media afresh. The others keep the same tile.
    fn resume(&mut self, conn: ConnId, id: ParticipantId, now: Instant) {
        if let Some(old) = self.conn_of(id) {
            self.conns.remove(&old);
            self.outputs.push_back(Output::Close(old));
        }
        self.sfu.handle_peer_left(id);
        let Some(seat) = self.seats.get_mut(&id) else {
            return;
        };
        seat.held_since = None;
        let key = seat.renew_key();
        let invite = seat.invite.clone();
        let Some(messages) = self.room.rejoin(id, key) else {
            return;
        };
        tracing::info!("{id} is back");
        self.connect_participant(conn, id, invite, now);
        self.send_all(messages);
    }

    /// `conn` now speaks for participant `id`, whose media is yet to be offered.
    fn connect_participant(
        &mut self,
        conn: ConnId,
        id: ParticipantId,
        invite: String,
        now: Instant,
    ) {
        let joined = Conn::Joined {
            id,
            invite,
            since: now,
            offered: false,
        };
        self.conns.insert(conn, joined);
    }

    /// A participant's connection broke: their media stops, their place waits for them.
    fn hold(&mut self, id: ParticipantId, now: Instant) {
        self.sfu.handle_peer_left(id);
        let Some(seat) = self.seats.get_mut(&id) else {
            return self.leave(id);
        };
        seat.held_since = Some(now);
        tracing::info!(
            "{id}: connection broke; their place waits {} s for them",
            HOLD_LIMIT.as_secs()
        );
        let messages = self.room.set_reconnecting(id, true);
        self.send_all(messages);
    }

    /// Someone at home answered a knock (the owner page, or the switch flicked at the box).
    /// False when there is no such knock (answered already, or gone).
    pub fn handle_knock_answer(&mut self, knock: u64, let_in: bool, now: Instant) -> bool {
        let conn = ConnId(knock);
        let Some(Conn::Knocking {
            invite,
            name,
            video_codecs,
            ..
        }) = self.conns.get(&conn).cloned()
        else {
            return false;
        };
        if let_in {
            self.enter(conn, invite, &name, &video_codecs, now);
        } else {
            self.refuse(conn, DECLINED);
        }
        self.tell_knocks(now);
        true
    }

    /// The knocks waiting, oldest first.
    pub fn knocks(&self, now: Instant) -> Vec<Knock> {
        let mut knocks: Vec<Knock> = self
            .conns
            .iter()
            .filter_map(|(conn, state)| match state {
                Conn::Knocking {
                    since,
                    invite,
                    name,
                    ..
                } => Some(Knock {
                    id: conn.0,
                    name: name.clone(),
                    link: self
                        .invites
                        .list()
                        .iter()
                        .find(|i| i.id == *invite)
                        .map(|i| i.name.clone())
                        .unwrap_or_default(),
                    waiting_secs: now.saturating_duration_since(*since).as_secs(),
                }),
                _ => None,
            })
            .collect();
        knocks.sort_by_key(|k| std::cmp::Reverse(k.waiting_secs));
        knocks
    }

    fn tell_knocks(&mut self, now: Instant) {
        let knocks = self.knocks(now);
        self.outputs.push_back(Output::Knocks(knocks));
    }

    /// An owner removes someone from the call. False when there is no such participant.
    pub fn remove_participant(&mut self, id: ParticipantId) -> bool {
        let Some(conn) = self.conn_of(id) else {
            // Someone whose page is away: no more waiting for it.
            let held = self.seats.get(&id).is_some_and(|s| s.held_since.is_some());
            if held {
                self.leave(id);
            }
            return held;
        };
        self.conns.remove(&conn);
        self.leave(id);
        let removed = ServerMsg::Refused {
            reason: "Someone at home ended your part in the call.".into(),
        };
        self.outputs.push_back(Output::Send(conn, removed));
        self.outputs.push_back(Output::Close(conn));
        true
    }

    /// The box's new name, on everyone's roster.
    pub fn rename_box(&mut self, name: &str) {
        let messages = self.room.rename_box(name);
        self.send_all(messages);
    }

    /// Devices in the call with this invite: connected, knocking, or with a place held.
    fn sessions_of(&self, invite_id: &str) -> usize {
        let connected = self
            .conns
            .values()
            .filter(|c| match c {
                Conn::Joined { invite, .. } | Conn::Knocking { invite, .. } => invite == invite_id,
                Conn::AwaitingJoin { .. } => false,
            })
            .count();
        let held = self
            .seats
            .values()
            .filter(|s| s.held_since.is_some() && s.invite == invite_id)
            .count();
        connected + held
    }

    fn joined_message(&mut self, conn: ConnId, id: ParticipantId, msg: ClientMsg, now: Instant) {
        match msg {
            ClientMsg::Offer { sdp } => {
                let publish = self.room.publish_codec();
                let decodes_h264 = self.room.participant(id).is_some_and(|p| p.can_decode_h264);
                match self.sfu.handle_offer(id, &sdp, publish, decodes_h264, now) {
                    Ok(answer) => {
                        if let Some(Conn::Joined { offered, .. }) = self.conns.get_mut(&conn) {
                            *offered = true;
                        }
                        let answer = ServerMsg::Answer { sdp: answer };
                        self.outputs.push_back(Output::Send(conn, answer));
                    }
                    Err(e) => self.fail(conn, id, &e),
                }
            }
            ClientMsg::Answer { sdp } => {
                if let Err(e) = self.sfu.handle_answer(id, &sdp, now) {
                    self.fail(conn, id, &e);
                }
            }
            ClientMsg::Mute { audio, video } => {
                let messages = self.room.set_mute(id, audio, video);
                self.send_all(messages);
            }
            ClientMsg::Leave => {
                self.conns.remove(&conn);
                self.leave(id);
                self.outputs.push_back(Output::Close(conn));
            }
            ClientMsg::PauseBox if !self.pausers.insert(id) => {
                let message = "You have paused the box once already: only the switch at home \
                               turns it back on, and pausing again is not yours to do.";
                let error = ServerMsg::Error {
                    message: message.into(),
                };
                self.outputs.push_back(Output::Send(conn, error));
            }
            ClientMsg::PauseBox => {
                let name = self
                    .room
                    .participant(id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let invite = match self.conns.get(&conn) {
                    Some(Conn::Joined { invite, .. }) => invite.clone(),
                    _ => String::new(),
                };
                let pauser = Pauser {
                    participant: id,
                    name,
                    invite,
                };
                self.outputs.push_back(Output::PauseBox(pauser));
            }
            ClientMsg::Join { .. } => self.outputs.push_back(Output::Send(
                conn,
                ServerMsg::Error {
                    message: "already in the call".into(),
                },
            )),
        }
    }

    /// A negotiation broke: the peer's media state is unknown, so it must rejoin. The phone
    /// hears what went wrong; how is for the debug log.
    fn fail(&mut self, conn: ConnId, id: ParticipantId, error: &sfu::SfuError) {
        tracing::info!("{id}: negotiation failed: {}", error.public_reason());
        tracing::debug!("{id}: negotiation failed: {error}");
        self.outputs.push_back(Output::Send(
            conn,
            ServerMsg::Error {
                message: error.public_reason().to_string(),
            },
        ));
        self.conns.remove(&conn);
        self.leave(id);
        self.outputs.push_back(Output::Close(conn));
    }

    fn refuse(&mut self, conn: ConnId, reason: &str) {
        self.conns.remove(&conn);
        self.outputs.push_back(Output::Send(
            conn,
            ServerMsg::Refused {
                reason: reason.to_string(),
            },
        ));
        self.outputs.push_back(Output::Close(conn));
    }

    fn leave(&mut self, id: ParticipantId) {
        self.seats.remove(&id);
        self.sfu.handle_peer_left(id);
        let messages = self.room.leave(id);
        if !messages.is_empty() || self.room.participants().iter().all(|p| p.id != id) {
            tracing::info!("{id} left");
        }
        self.send_all(messages);
        self.screen_roster();
    }

    fn screen_roster(&mut self) {
        let phones = self.room.phones().map(|p| (p.id, p.name.clone())).collect();
        self.outputs.push_back(Output::ScreenRoster(phones));
    }

    fn send_all(&mut self, messages: Vec<(ParticipantId, ServerMsg)>) {
        for (id, msg) in messages {
            if let Some(conn) = self.conn_of(id) {
                self.outputs.push_back(Output::Send(conn, msg));
            }
        }
    }

    /// The signalling connection of a participant (none while their place is held).
    pub fn conn_of_participant(&self, id: ParticipantId) -> Option<ConnId> {
        self.conn_of(id)
    }

    fn conn_of(&self, id: ParticipantId) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|(_, s)| s.participant() == Some(id))
            .map(|(c, _)| *c)
    }

    fn sfu_event(&mut self, event: SfuEvent) {
        match event {
            SfuEvent::Offer(id, sdp) => {
                if let Some(conn) = self.conn_of(id) {
                    self.outputs
                        .push_back(Output::Send(conn, ServerMsg::Offer { sdp }));
                }
            }
            // The page sees its connection close and comes back with new media.
            SfuEvent::PeerLost(id, reason) => {
                tracing::info!("{id}: media connection lost ({reason:?})");
                if let Some(conn) = self.conn_of(id) {
                    self.conns.remove(&conn);
                    self.outputs.push_back(Output::Close(conn));
                }
                if let Some(now) = self.sfu.now() {
                    self.hold(id, now);
                }
            }
            SfuEvent::BoxKeyframe => self.outputs.push_back(Output::BoxKeyframe),
            SfuEvent::BoxBitrate(kbps) => self.outputs.push_back(Output::BoxBitrate(kbps)),
            SfuEvent::BoxLowBitrate(kbps) => self.outputs.push_back(Output::BoxLowBitrate(kbps)),
            SfuEvent::BoxVp8(on) => self.outputs.push_back(Output::BoxVp8(on)),
            SfuEvent::ToBox(frame) => self.outputs.push_back(Output::ToBox(frame)),
            SfuEvent::PublishLayers(id, paused) => {
                if let Some(conn) = self.conn_of(id) {
                    let paused = paused.iter().map(|rid| rid.to_string()).collect();
                    self.outputs
                        .push_back(Output::Send(conn, ServerMsg::PublishLayers { paused }));
                }
            }
        }
    }
}

/// What a `join` asks for.
struct Asked<'a> {
    token: &'a str,
    name: &'a str,
    video_codecs: &'a [String],
    rejoin: Option<&'a SeatKey>,
}

/// What a connection that never presents a token is told, once its address has used up
/// its attempts.
const TOO_MANY_ATTEMPTS: &str =
    "Too many attempts with links that do not work. Wait a minute, then try your link again.";

/// What a knock that nobody let in is told.
const DECLINED: &str = "Nobody at home let you in this time. You can try the link again later.";

impl Conn {
    fn participant(&self) -> Option<ParticipantId> {
        match self {
            Conn::Joined { id, .. } => Some(*id),
            Conn::AwaitingJoin { .. } | Conn::Knocking { .. } => None,
        }
    }

    /// When this connection is closed if nothing happens: no join, or no media offered.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Conn::AwaitingJoin { since, .. } => Some(*since + JOIN_LIMIT),
            Conn::Knocking { since, .. } => Some(*since + KNOCK_LIMIT),
            Conn::Joined {
                since,
                offered: false,
                ..
            } => Some(*since + OFFER_LIMIT),
            Conn::Joined { offered: true, .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::invite::Refusal;

    const HOME: &str = "192.168.1.20";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn call() -> (Call, String, String) {
        let mut invites = InviteStore::default();
        let wall = SystemTime::now();
        let (_, good) = invites.create("Gran", Duration::from_secs(3600), wall);
        let (_, expired) = invites.create(
            "Old",
            Duration::from_secs(60),
            wall - Duration::from_secs(120),
        );
        let sfu = Sfu::new("127.0.0.1:10000".parse().unwrap());
        let call = Call::new(Room::new(8), sfu, invites, CallLimits::default());
        (call, good, expired)
    }

    fn join_text(token: &str, name: &str) -> String {
        serde_json::json!({"type": "join", "token": token, "name": name, "video_codecs": ["H264", "VP8"]}).to_string()
    }

    /// A new connection sends `text`; everything the call wants done afterwards.
    fn connect_and_say(call: &mut Call, conn: ConnId, text: &str, now: Instant) -> Vec<Output> {
        connect_from(call, HOME, conn, text, now)
    }

    fn connect_from(
        call: &mut Call,
        from: &str,
        conn: ConnId,
        text: &str,
        now: Instant,
    ) -> Vec<Output> {
        call.handle_connected(conn, ip(from), now);
        say(call, conn, text, now)
    }

    fn drain(call: &mut Call) -> Vec<Output> {
        std::iter::from_fn(|| call.poll_output()).collect()
    }

    fn refused(out: &[Output], conn: ConnId) -> Option<String> {
        sent_to(out, conn)
            .into_iter()
            .find(|s| s.contains(r#""type":"refused""#))
    }

    fn say(call: &mut Call, conn: ConnId, text: &str, now: Instant) -> Vec<Output> {
        call.handle_message(conn, text, now, SystemTime::now());
        std::iter::from_fn(|| call.poll_output()).collect()
    }

    /// Everything sent to `conn`, as JSON text, for checking what leaked.
    fn sent_to(out: &[Output], conn: ConnId) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(c, m) if *c == conn => Some(serde_json::to_string(m).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bad_tokens_get_a_refusal_and_nothing_about_the_call() {
        let (mut call, good, expired) = call();
        let now = Instant::now();
        connect_and_say(
            &mut call,
            ConnId(1),
            &join_text(&good, "Alice Insider"),
            now,
        );
        let gran = call
            .invites()
            .iter()
            .find(|i| i.name == "Gran")
            .map(|i| i.id.clone())
            .unwrap();

        let random = "q2Vt8nWcY1oR3xZ5bL7dJg";
        let cases: Vec<(String, Refusal)> = vec![
            (random.to_string(), Refusal::Unknown),
            (expired.clone(), Refusal::Expired),
        ];
        for (i, (token, refusal)) in cases.iter().enumerate() {
            let conn = ConnId(10 + i as u64);
            let out = connect_and_say(&mut call, conn, &join_text(token, "Mallory"), now);
            let sent = sent_to(&out, conn);
            assert_eq!(sent.len(), 1, "{sent:?}");
            assert!(sent[0].contains(r#""type":"refused""#));
            assert!(sent[0].contains(&refusal.to_string()));
            assert!(!sent[0].contains("Alice Insider"));
            assert!(out
                .iter()
                .any(|o| matches!(o, Output::Close(c) if *c == conn)));
            assert!(
                sent_to(&out, ConnId(1)).is_empty(),
                "the one inside heard of it"
            );
        }

        // Revoke the good invite: the next join with it is refused too.
        call.revoke_invite(&gran).unwrap();
        let out = connect_and_say(&mut call, ConnId(20), &join_text(&good, "Late"), now);
        let sent = sent_to(&out, ConnId(20));
        assert_eq!(sent.len(), 1);
        assert!(sent[0].contains(&Refusal::Revoked.to_string()));
        assert!(!sent[0].contains("Alice Insider"));
        assert!(sent_to(&out, ConnId(1)).is_empty());
    }

    #[test]
    fn a_valid_join_gets_welcome_and_roster_and_the_use_is_saved() {
        let (mut call, good, _) = call();
        let out = connect_and_say(
            &mut call,
            ConnId(1),
            &join_text(&good, "Ann"),
            Instant::now(),
        );
        let sent = sent_to(&out, ConnId(1));
        assert!(sent[0].contains(r#""type":"welcome""#), "{sent:?}");
        assert!(sent
            .iter()
            .any(|s| s.contains(r#""type":"roster""#) && s.contains("Ann")));
        let saved = out.iter().find_map(|o| match o {
            Output::SaveInvites(store) => Some(store),
            _ => None,
        });
        let gran = saved.and_then(|s| s.list().iter().find(|i| i.name == "Gran"));
        assert!(
            gran.is_some_and(|i| i.last_used.is_some()),
            "the use is saved"
        );
    }

    #[test]
    fn messages_before_join_and_silent_connections_are_closed() {
        let (mut call, _, _) = call();
        let now = Instant::now();
        let out = connect_and_say(&mut call, ConnId(1), r#"{"type":"leave"}"#, now);
        assert!(sent_to(&out, ConnId(1))[0].contains("refused"));
        call.handle_connected(ConnId(2), ip(HOME), now);
        let due = call.poll_timeout().unwrap();
        assert!(due <= now + JOIN_LIMIT, "the join limit is a timer");
        call.handle_timeout(now + JOIN_LIMIT + Duration::from_secs(1));
        let out: Vec<Output> = std::iter::from_fn(|| call.poll_output()).collect();
        assert!(out.iter().any(|o| matches!(o, Output::Close(ConnId(2)))));
    }

    #[test]
    fn garbage_sdp_is_an_error_not_a_panic() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        connect_and_say(&mut call, ConnId(1), &join_text(&good, "Ann"), now);
        let out = say(
            &mut call,
            ConnId(1),
            r#"{"type":"offer","sdp":"v=0\r\nnonsense"}"#,
            now,
        );
        assert!(sent_to(&out, ConnId(1))
            .iter()
            .any(|s| s.contains(r#""type":"error""#)));
        assert!(call.room().participants().is_empty());
    }

    #[test]
    fn one_link_admits_two_devices_and_the_tv_link_the_family() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        for conn in 1..=2 {
            let out = connect_and_say(&mut call, ConnId(conn), &join_text(&good, "Gran"), now);
            assert!(refused(&out, ConnId(conn)).is_none());
        }
        let out = connect_and_say(&mut call, ConnId(3), &join_text(&good, "Third"), now);
        let refusal = refused(&out, ConnId(3)).expect("a third device is refused");
        assert!(refusal.contains("already in use on 2 devices"), "{refusal}");

        let (_, family) =
            call.create_invite("TV", Duration::from_secs(60), SystemTime::now(), Some(8));
        for conn in 10..15 {
            let out = connect_and_say(&mut call, ConnId(conn), &join_text(&family, "Kid"), now);
            assert!(refused(&out, ConnId(conn)).is_none());
        }
    }

    /// The key in the welcome sent to `conn`.
    fn seat_key(out: &[Output], conn: ConnId) -> String {
        out.iter()
            .find_map(|o| match o {
                Output::Send(c, ServerMsg::Welcome { rejoin, .. }) if *c == conn => {
                    Some(rejoin.0.clone())
                }
                _ => None,
            })
            .expect("a welcome")
    }

    /// A phone's real offer (audio and video, send-only), as a browser makes one.
    fn offer_text() -> String {
        use str0m::media::{Direction, MediaKind};
        let mut phone = str0m::Rtc::builder().build(Instant::now());
        let mut change = phone.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, _) = change.apply().expect("an offer");
        serde_json::json!({"type": "offer", "sdp": offer.to_sdp_string()}).to_string()
    }

    /// Join on `conn` and offer media: in the call, with a place to come back to. Its key.
    fn join_with_media(call: &mut Call, conn: ConnId, token: &str, name: &str) -> String {
        let now = Instant::now();
        let out = connect_and_say(call, conn, &join_text(token, name), now);
        let key = seat_key(&out, conn);
        let out = say(call, conn, &offer_text(), now);
        assert!(
            sent_to(&out, conn).iter().any(|m| m.contains("answer")),
            "answered"
        );
        key
    }

    fn rejoin_text(token: &str, name: &str, key: &str) -> String {
        serde_json::json!({"type": "join", "token": token, "name": name, "rejoin": key}).to_string()
    }

    fn reconnecting(call: &Call, id: ParticipantId) -> bool {
        call.room()
            .participant(id)
            .expect("still in the call")
            .reconnecting
    }

    #[test]
    fn a_broken_connection_keeps_the_place_and_the_key_takes_it_up_again() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        let key = join_with_media(&mut call, ConnId(1), &good, "Gran");
        assert_eq!(key.len(), 22, "128 bits, base64url");
        join_with_media(&mut call, ConnId(2), &good, "Ann");
        let (gran, ann) = (ParticipantId(1), ParticipantId(2));

        call.handle_closed(ConnId(1), now);
        let out = drain(&mut call);
        assert!(reconnecting(&call, gran));
        let told = sent_to(&out, ConnId(2));
        assert!(
            told.iter().any(|m| m.contains(r#""reconnecting":true"#)),
            "{told:?}"
        );

        // A wrong key is a join like any other: here the link is on its two devices already
        // (Ann, and Gran's held place).
        let later = now + Duration::from_secs(5);
        let out = connect_and_say(
            &mut call,
            ConnId(3),
            &rejoin_text(&good, "X", "AAAA"),
            later,
        );
        assert!(refused(&out, ConnId(3)).is_some_and(|r| r.contains("2 devices")));

        let out = connect_and_say(
            &mut call,
            ConnId(4),
            &rejoin_text(&good, "Gran", &key),
            later,
        );
        let welcome = &sent_to(&out, ConnId(4))[0];
        assert!(welcome.contains(r#""you":"p1""#), "{welcome}");
        let new_key = seat_key(&out, ConnId(4));
        assert_ne!(new_key, key, "a new key each time");
        assert!(!reconnecting(&call, gran));
        let told = sent_to(&out, ConnId(2));
        assert!(told
            .iter()
            .any(|m| m.contains("roster") && !m.contains("reconnecting")));
        assert_eq!(call.room().phones().count(), 2, "no new participant");
        assert!(call.room().participant(ann).is_some());

        // The old key opens nothing any more; a second page with the new one takes the place
        // over from the first (whose break the box may not have noticed yet).
        let out = connect_and_say(&mut call, ConnId(5), &rejoin_text(&good, "G", &key), later);
        assert!(refused(&out, ConnId(5)).is_some_and(|r| r.contains("2 devices")));
        let out = connect_and_say(
            &mut call,
            ConnId(6),
            &rejoin_text(&good, "G", &new_key),
            later,
        );
        assert!(sent_to(&out, ConnId(6))[0].contains(r#""you":"p1""#));
        assert!(out.iter().any(|o| matches!(o, Output::Close(ConnId(4)))));
        call.handle_closed(ConnId(4), later);
        assert!(
            !reconnecting(&call, gran),
            "the old connection's end changes nothing"
        );
    }

    #[test]
    fn a_place_is_given_up_after_the_hold_and_never_with_another_or_a_revoked_link() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        let key = join_with_media(&mut call, ConnId(1), &good, "Gran");
        call.handle_closed(ConnId(1), now);
        drain(&mut call);

        // The key with another link: a new participant with that link.
        let (other_invite, other) =
            call.create_invite("Other", Duration::from_secs(60), SystemTime::now(), None);
        let out = connect_and_say(&mut call, ConnId(2), &rejoin_text(&other, "O", &key), now);
        assert!(sent_to(&out, ConnId(2))[0].contains(r#""you":"p2""#));
        // A held place counts against its link's devices.
        connect_and_say(&mut call, ConnId(3), &join_text(&good, "Second"), now);
        let out = connect_and_say(&mut call, ConnId(4), &join_text(&good, "Third"), now);
        assert!(
            refused(&out, ConnId(4)).is_some(),
            "2 devices: one held, one here"
        );

        call.handle_timeout(now + HOLD_LIMIT - Duration::from_millis(1));
        assert!(call.room().participant(ParticipantId(1)).is_some());
        call.handle_timeout(now + HOLD_LIMIT);
        assert!(call.room().participant(ParticipantId(1)).is_none(), "gone");
        let out = connect_and_say(&mut call, ConnId(5), &rejoin_text(&good, "G", &key), now);
        assert!(!sent_to(&out, ConnId(5))[0].contains(r#""you":"p1""#));

        // Revoking the link ends coming back with it.
        let key = join_with_media(&mut call, ConnId(6), &other, "P");
        call.handle_closed(ConnId(6), now);
        call.revoke_invite(&other_invite.id).unwrap();
        let out = connect_and_say(&mut call, ConnId(7), &rejoin_text(&other, "P", &key), now);
        assert!(refused(&out, ConnId(7)).is_some());
    }

    #[test]
    fn a_goodbye_frees_the_place_at_once() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        let key = join_with_media(&mut call, ConnId(1), &good, "Gran");
        say(&mut call, ConnId(1), r#"{"type":"leave"}"#, now);
        assert!(call.room().phones().next().is_none());
        let out = connect_and_say(&mut call, ConnId(2), &rejoin_text(&good, "G", &key), now);
        assert!(sent_to(&out, ConnId(2))[0].contains(r#""you":"p2""#));
        // A page that breaks before its media is set up is gone at once.
        call.handle_closed(ConnId(2), now);
        assert!(call.room().phones().next().is_none());
        // An owner removes someone whose page is away.
        join_with_media(&mut call, ConnId(3), &good, "Gran");
        call.handle_closed(ConnId(3), now);
        assert!(call.remove_participant(ParticipantId(3)));
        assert!(call.room().phones().next().is_none());
    }

    #[test]
    fn a_joiner_that_never_offers_media_is_removed() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        connect_and_say(&mut call, ConnId(1), &join_text(&good, "Silent"), now);
        assert_eq!(call.room().participants().len(), 1);
        assert_eq!(call.poll_timeout(), Some(now + OFFER_LIMIT));
        call.handle_timeout(now + OFFER_LIMIT);
        let out = drain(&mut call);
        assert!(out.iter().any(|o| matches!(o, Output::Close(ConnId(1)))));
        assert!(
            call.room().participants().is_empty(),
            "its place is free again"
        );
    }

    #[test]
    fn guessing_is_throttled_per_address() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        let guesser = "203.0.113.9";
        for i in 0..throttle::FAILURES_PER_WINDOW as u64 {
            let text = join_text(&format!("guess{i:017}"), "Mallory");
            let out = connect_from(&mut call, guesser, ConnId(100 + i), &text, now);
            assert!(refused(&out, ConnId(100 + i))
                .unwrap()
                .contains("not valid"));
        }
        // The 11th is refused without a look at its token, even a good one.
        let out = connect_from(&mut call, guesser, ConnId(200), &join_text(&good, "M"), now);
        assert!(refused(&out, ConnId(200))
            .unwrap()
            .contains("Too many attempts"));
        // Gran, elsewhere, joins at once.
        let out = connect_from(
            &mut call,
            "198.51.100.4",
            ConnId(201),
            &join_text(&good, "Gran"),
            now,
        );
        assert!(refused(&out, ConnId(201)).is_none());
        assert!(sent_to(&out, ConnId(201))[0].contains("welcome"));
    }

    #[test]
    fn errors_say_what_not_how() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        connect_and_say(&mut call, ConnId(1), &join_text(&good, "Ann"), now);
        let out = say(&mut call, ConnId(1), r#"{"type":"mute","audio":1}"#, now);
        let sent = sent_to(&out, ConnId(1)).join(" ");
        assert!(sent.contains("could not be read"), "{sent}");
        assert!(
            !sent.contains("invalid type") && !sent.contains("line"),
            "{sent}"
        );
        let out = say(
            &mut call,
            ConnId(1),
            r#"{"type":"offer","sdp":"v=0\r\nm=video x"}"#,
            now,
        );
        let sent = sent_to(&out, ConnId(1)).join(" ");
        assert!(sent.contains("could not be read"), "{sent}");
        assert!(!sent.contains("0x") && !sent.contains("Offset"), "{sent}");
    }

    #[test]
    fn a_guest_pauses_the_box_once() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        connect_and_say(&mut call, ConnId(1), &join_text(&good, "Ann"), now);
        let out = say(&mut call, ConnId(1), r#"{"type":"pause_box"}"#, now);
        let pauser = out.iter().find_map(|o| match o {
            Output::PauseBox(p) => Some(p.clone()),
            _ => None,
        });
        let pauser = pauser.expect("the first pause goes through");
        assert_eq!(pauser.name, "Ann");
        assert!(!pauser.invite.is_empty(), "the log can name the invite");
        let out = say(&mut call, ConnId(1), r#"{"type":"pause_box"}"#, now);
        assert!(!out.iter().any(|o| matches!(o, Output::PauseBox(_))));
        assert!(sent_to(&out, ConnId(1))[0].contains("once already"));
    }

    #[test]
    fn a_knock_waits_with_nothing_until_let_in_or_declined() {
        let (mut call, _, _) = call();
        let now = Instant::now();
        let (_, token) =
            call.create_invite("Door", Duration::from_secs(600), SystemTime::now(), Some(8));
        connect_and_say(&mut call, ConnId(1), &join_text(&token, "Inside"), now);
        let (_, knocking) =
            call.create_invite("Knock", Duration::from_secs(600), SystemTime::now(), None);
        let id = call
            .invites()
            .iter()
            .find(|i| i.name == "Knock")
            .unwrap()
            .id
            .clone();
        call.set_invite_knock(&id, true).unwrap();

        let out = connect_and_say(&mut call, ConnId(2), &join_text(&knocking, "Gran"), now);
        let sent = sent_to(&out, ConnId(2));
        assert_eq!(sent.len(), 1, "only the waiting message: {sent:?}");
        assert!(sent[0].contains(r#""type":"waiting""#));
        assert!(
            sent_to(&out, ConnId(1)).is_empty(),
            "the room hears nothing yet"
        );
        let knocks = call.knocks(now);
        assert_eq!((knocks.len(), knocks[0].name.as_str()), (1, "Gran"));
        // An offer while knocking does nothing.
        let out = say(&mut call, ConnId(2), r#"{"type":"offer","sdp":"v=0"}"#, now);
        assert!(sent_to(&out, ConnId(2)).is_empty());

        assert!(call.handle_knock_answer(2, true, now));
        let out = drain(&mut call);
        assert!(sent_to(&out, ConnId(2))[0].contains("welcome"));
        assert!(sent_to(&out, ConnId(1)).iter().any(|s| s.contains("Gran")));
        assert!(call.knocks(now).is_empty());
        assert!(!call.handle_knock_answer(2, true, now), "answered once");

        // A second knock is declined; a third is left unanswered and declined in 2 minutes.
        connect_and_say(&mut call, ConnId(3), &join_text(&knocking, "Tablet"), now);
        call.handle_knock_answer(3, false, now);
        let out = drain(&mut call);
        assert!(refused(&out, ConnId(3))
            .unwrap()
            .contains("Nobody at home let you in"));
        connect_and_say(&mut call, ConnId(4), &join_text(&knocking, "Late"), now);
        call.handle_timeout(now + KNOCK_LIMIT);
        let out = drain(&mut call);
        assert!(refused(&out, ConnId(4))
            .unwrap()
            .contains("Nobody at home let you in"));
    }
}
