//! The call's signalling core: maps (connection, message) and datagrams to (connection,
//! message), datagrams to send and connections to close. It owns the room, the SFU and the
//! invites, takes the current time as input, and does no I/O — `hub` pumps it.

pub mod invite;
pub mod protocol;
pub mod room;
pub mod sfu;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::call::invite::{Invite, InviteStore};
use crate::call::protocol::{parse_client_msg, ClientMsg, ServerMsg};
use crate::call::room::{ParticipantId, Room};
use crate::call::sfu::{PhoneFrame, Sfu, SfuEvent, Transmit};
use str0m::media::{MediaKind, MediaTime};

/// A connection that has not presented a token within this is closed.
const JOIN_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Debug)]
pub enum Output {
    Send(ConnId, ServerMsg),
    Close(ConnId),
    Transmit(Transmit),
    /// The invite store changed (a use was recorded); persist it.
    SaveInvites,
    /// A phone needs a keyframe from the box's encoder.
    BoxKeyframe,
    /// The box's encoder should aim at this many kbit/s.
    BoxBitrate(u32),
    /// A phone's frame for the box's screen or speaker.
    ToBox(PhoneFrame),
    /// The phones now in the call, for the box's screen (tiles, names, idle screen).
    ScreenRoster(Vec<(ParticipantId, String)>),
    /// A phone asked to pause the box (privacy on); the name says who.
    PauseBox(String),
}

#[derive(Debug, Clone, Copy)]
enum Conn {
    AwaitingJoin { since: Instant },
    Joined(ParticipantId),
}

pub struct Call {
    room: Room,
    sfu: Sfu,
    invites: InviteStore,
    conns: HashMap<ConnId, Conn>,
}

impl Call {
    pub fn new(room: Room, sfu: Sfu, invites: InviteStore) -> Self {
        Call {
            room,
            sfu,
            invites,
            conns: HashMap::new(),
        }
    }

    pub fn invites_mut(&mut self) -> &mut InviteStore {
        &mut self.invites
    }

    /// Send one of the box's encoded frames to the phones.
    pub fn box_frame(
        &mut self,
        kind: MediaKind,
        rtp_time: MediaTime,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Instant {
        self.sfu.write_local(kind, rtp_time, data, now);
        self.poll(now, out)
    }

    /// The box's camera or mic changed (device trouble, privacy); everyone is told.
    pub fn box_state(
        &mut self,
        audio: bool,
        video: bool,
        note: Option<String>,
        privacy_since: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        let messages = self.room.set_box_state(audio, video, note, privacy_since);
        self.send_all(messages, out);
    }

    pub fn room(&self) -> &Room {
        &self.room
    }

    pub fn sfu(&self) -> &Sfu {
        &self.sfu
    }

    pub fn connected(&mut self, conn: ConnId, now: Instant) {
        self.conns.insert(conn, Conn::AwaitingJoin { since: now });
    }

    pub fn closed(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Output>) -> Instant {
        if let Some(Conn::Joined(id)) = self.conns.remove(&conn) {
            self.leave(id, out);
        }
        self.poll(now, out)
    }

    pub fn message(
        &mut self,
        conn: ConnId,
        text: &str,
        now: Instant,
        wall: SystemTime,
        out: &mut Vec<Output>,
    ) -> Instant {
        let Some(state) = self.conns.get(&conn).copied() else {
            return self.poll(now, out);
        };
        let msg = match parse_client_msg(text) {
            Ok(m) => m,
            Err(e) => {
                match state {
                    Conn::AwaitingJoin { .. } => {
                        self.refuse(conn, "That was not a join request.", out)
                    }
                    Conn::Joined(_) => out.push(Output::Send(
                        conn,
                        ServerMsg::Error {
                            message: e.to_string(),
                        },
                    )),
                }
                return self.poll(now, out);
            }
        };
        match (state, msg) {
            (
                Conn::AwaitingJoin { .. },
                ClientMsg::Join {
                    token,
                    name,
                    video_codecs,
                },
            ) => self.join(conn, &token, &name, &video_codecs, now, wall, out),
            (Conn::AwaitingJoin { .. }, _) => {
                self.refuse(conn, "Join first, with the invite link.", out)
            }
            (Conn::Joined(id), msg) => self.joined_message(conn, id, msg, now, out),
        }
        self.poll(now, out)
    }

    pub fn datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        out: &mut Vec<Output>,
    ) -> Instant {
        self.sfu.handle_datagram(now, source, destination, data);
        self.poll(now, out)
    }

    /// Advance time. Returns when to call again at the latest.
    pub fn timeout(&mut self, now: Instant, out: &mut Vec<Output>) -> Instant {
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(c, s)| match s {
                Conn::AwaitingJoin { since }
                    if now.saturating_duration_since(*since) > JOIN_LIMIT =>
                {
                    Some(*c)
                }
                _ => None,
            })
            .collect();
        for conn in stale {
            self.conns.remove(&conn);
            out.push(Output::Close(conn));
        }
        self.sfu.handle_timeout(now);
        self.poll(now, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        conn: ConnId,
        token: &str,
        name: &str,
        video_codecs: &[String],
        now: Instant,
        wall: SystemTime,
        out: &mut Vec<Output>,
    ) {
        let invite: Invite = match self.invites.check(token, wall) {
            Ok(invite) => invite.clone(),
            Err(refusal) => {
                tracing::info!("join refused: {refusal:?}");
                return self.refuse(conn, &refusal.to_string(), out);
            }
        };
        out.push(Output::SaveInvites);
        match self.room.join(name, video_codecs, now) {
            Ok((id, messages)) => {
                tracing::info!("{id} joined with invite {} ({})", invite.id, invite.name);
                self.conns.insert(conn, Conn::Joined(id));
                self.send_all(messages, out);
                self.screen_roster(out);
            }
            Err(refused) => self.refuse(conn, &refused.to_string(), out),
        }
    }

    fn joined_message(
        &mut self,
        conn: ConnId,
        id: ParticipantId,
        msg: ClientMsg,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match msg {
            ClientMsg::Offer { sdp } => {
                let publish = self.room.publish_codec();
                let decodes_h264 = self.room.participant(id).is_some_and(|p| p.can_decode_h264);
                match self.sfu.accept_offer(id, &sdp, publish, decodes_h264, now) {
                    Ok(answer) => out.push(Output::Send(conn, ServerMsg::Answer { sdp: answer })),
                    Err(e) => self.fail(conn, id, &e.to_string(), out),
                }
            }
            ClientMsg::Answer { sdp } => {
                if let Err(e) = self.sfu.accept_answer(id, &sdp, now) {
                    self.fail(conn, id, &e.to_string(), out);
                }
            }
            ClientMsg::Mute { audio, video } => {
                let messages = self.room.set_mute(id, audio, video);
                self.send_all(messages, out);
            }
            ClientMsg::Leave => {
                self.conns.remove(&conn);
                self.leave(id, out);
                out.push(Output::Close(conn));
            }
            ClientMsg::PauseBox => {
                let name = self
                    .room
                    .participant(id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                out.push(Output::PauseBox(name));
            }
            ClientMsg::Join { .. } => out.push(Output::Send(
                conn,
                ServerMsg::Error {
                    message: "already in the call".into(),
                },
            )),
        }
    }

    /// A negotiation broke: the peer's media state is unknown, so it must rejoin.
    fn fail(&mut self, conn: ConnId, id: ParticipantId, why: &str, out: &mut Vec<Output>) {
        tracing::warn!("{id}: negotiation failed: {why}");
        out.push(Output::Send(
            conn,
            ServerMsg::Error {
                message: format!("negotiation failed: {why}"),
            },
        ));
        self.conns.remove(&conn);
        self.leave(id, out);
        out.push(Output::Close(conn));
    }

    fn refuse(&mut self, conn: ConnId, reason: &str, out: &mut Vec<Output>) {
        self.conns.remove(&conn);
        out.push(Output::Send(
            conn,
            ServerMsg::Refused {
                reason: reason.to_string(),
            },
        ));
        out.push(Output::Close(conn));
    }

    fn leave(&mut self, id: ParticipantId, out: &mut Vec<Output>) {
        self.sfu.remove_peer(id);
        let messages = self.room.leave(id);
        if !messages.is_empty() || self.room.participants().iter().all(|p| p.id != id) {
            tracing::info!("{id} left");
        }
        self.send_all(messages, out);
        self.screen_roster(out);
    }

    fn screen_roster(&self, out: &mut Vec<Output>) {
        let phones = self.room.phones().map(|p| (p.id, p.name.clone())).collect();
        out.push(Output::ScreenRoster(phones));
    }

    fn send_all(&self, messages: Vec<(ParticipantId, ServerMsg)>, out: &mut Vec<Output>) {
        for (id, msg) in messages {
            if let Some(conn) = self.conn_of(id) {
                out.push(Output::Send(conn, msg));
            }
        }
    }

    fn conn_of(&self, id: ParticipantId) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|(_, s)| matches!(s, Conn::Joined(p) if *p == id))
            .map(|(c, _)| *c)
    }

    fn poll(&mut self, now: Instant, out: &mut Vec<Output>) -> Instant {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let next = self.sfu.poll(now, &mut transmits, &mut events);
        out.extend(transmits.into_iter().map(Output::Transmit));
        for event in events {
            match event {
                SfuEvent::Offer(id, sdp) => {
                    if let Some(conn) = self.conn_of(id) {
                        out.push(Output::Send(conn, ServerMsg::Offer { sdp }));
                    }
                }
                SfuEvent::PeerLost(id, reason) => {
                    tracing::info!("{id}: media connection lost ({reason:?})");
                    if let Some(conn) = self.conn_of(id) {
                        self.conns.remove(&conn);
                        out.push(Output::Close(conn));
                    }
                    let messages = self.room.leave(id);
                    self.send_all(messages, out);
                    self.screen_roster(out);
                }
                SfuEvent::BoxKeyframe => out.push(Output::BoxKeyframe),
                SfuEvent::BoxBitrate(kbps) => out.push(Output::BoxBitrate(kbps)),
                SfuEvent::ToBox(frame) => out.push(Output::ToBox(frame)),
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::invite::Refusal;

    fn call() -> (Call, String, String) {
        let mut invites = InviteStore::default();
        let wall = SystemTime::now();
        let (_, good) = invites.create("Gran", Duration::from_secs(3600), wall);
        let (old, expired) = invites.create(
            "Old",
            Duration::from_secs(60),
            wall - Duration::from_secs(120),
        );
        let _ = old;
        let sfu = Sfu::new("127.0.0.1:10000".parse().unwrap());
        (Call::new(Room::new(8), sfu, invites), good, expired)
    }

    fn join_text(token: &str, name: &str) -> String {
        serde_json::json!({"type": "join", "token": token, "name": name, "video_codecs": ["H264", "VP8"]}).to_string()
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
        let wall = SystemTime::now();
        let mut out = Vec::new();
        call.connected(ConnId(1), now);
        call.message(
            ConnId(1),
            &join_text(&good, "Alice Insider"),
            now,
            wall,
            &mut out,
        );

        let mut revoked_store_id = None;
        for invite in call.invites_mut().list() {
            if invite.name == "Gran" {
                revoked_store_id = Some(invite.id.clone());
            }
        }
        let random = "q2Vt8nWcY1oR3xZ5bL7dJg";
        let cases: Vec<(String, Refusal)> = vec![
            (random.to_string(), Refusal::Unknown),
            (expired.clone(), Refusal::Expired),
        ];
        for (i, (token, refusal)) in cases.iter().enumerate() {
            let conn = ConnId(10 + i as u64);
            let mut out = Vec::new();
            call.connected(conn, now);
            call.message(conn, &join_text(token, "Mallory"), now, wall, &mut out);
            let sent = sent_to(&out, conn);
            assert_eq!(sent.len(), 1, "{sent:?}");
            assert!(sent[0].contains(r#""type":"refused""#));
            assert!(sent[0].contains(&refusal.to_string()));
            assert!(!sent[0].contains("Alice Insider"));
            assert!(out
                .iter()
                .any(|o| matches!(o, Output::Close(c) if *c == conn)));
        }

        // Revoke the good invite: the next join with it is refused too.
        call.invites_mut()
            .revoke(&revoked_store_id.unwrap())
            .unwrap();
        let mut out = Vec::new();
        call.connected(ConnId(20), now);
        call.message(ConnId(20), &join_text(&good, "Late"), now, wall, &mut out);
        let sent = sent_to(&out, ConnId(20));
        assert_eq!(sent.len(), 1);
        assert!(sent[0].contains(&Refusal::Revoked.to_string()));
        assert!(!sent[0].contains("Alice Insider"));
        // The one inside heard nothing of these attempts.
        assert!(sent_to(&out, ConnId(1)).is_empty());
    }

    #[test]
    fn a_valid_join_gets_welcome_and_roster() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        let mut out = Vec::new();
        call.connected(ConnId(1), now);
        call.message(
            ConnId(1),
            &join_text(&good, "Ann"),
            now,
            SystemTime::now(),
            &mut out,
        );
        let sent = sent_to(&out, ConnId(1));
        assert!(sent[0].contains(r#""type":"welcome""#), "{sent:?}");
        assert!(sent
            .iter()
            .any(|s| s.contains(r#""type":"roster""#) && s.contains("Ann")));
        assert!(out.iter().any(|o| matches!(o, Output::SaveInvites)));
    }

    #[test]
    fn messages_before_join_and_silent_connections_are_closed() {
        let (mut call, _, _) = call();
        let now = Instant::now();
        let mut out = Vec::new();
        call.connected(ConnId(1), now);
        call.message(
            ConnId(1),
            r#"{"type":"leave"}"#,
            now,
            SystemTime::now(),
            &mut out,
        );
        assert!(sent_to(&out, ConnId(1))[0].contains("refused"));
        let mut out = Vec::new();
        call.connected(ConnId(2), now);
        call.timeout(now + JOIN_LIMIT + Duration::from_secs(1), &mut out);
        assert!(out.iter().any(|o| matches!(o, Output::Close(ConnId(2)))));
    }

    #[test]
    fn garbage_sdp_is_an_error_not_a_panic() {
        let (mut call, good, _) = call();
        let now = Instant::now();
        let mut out = Vec::new();
        call.connected(ConnId(1), now);
        call.message(
            ConnId(1),
            &join_text(&good, "Ann"),
            now,
            SystemTime::now(),
            &mut out,
        );
        let mut out = Vec::new();
        call.message(
            ConnId(1),
            r#"{"type":"offer","sdp":"v=0\r\nnonsense"}"#,
            now,
            SystemTime::now(),
            &mut out,
        );
        assert!(sent_to(&out, ConnId(1))
            .iter()
            .any(|s| s.contains(r#""type":"error""#)));
        assert!(call.room().participants().is_empty());
    }
}
