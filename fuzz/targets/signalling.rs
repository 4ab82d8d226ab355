//! Signalling messages into the call core, one text frame per line of the input.
//!
//! Lines that start with `#` are commands for the harness, not frames:
//! - `#c` then a digit: talk on connection N from now on (a new socket if it is not open);
//! - `#x`: the current socket closes;
//! - `#t` then seconds: time passes (the call's timers run).
//!
//! In frames, `@TOKEN@`, `@EXPIRED@` and `@REVOKED@` become real tokens of a good, an
//! expired and a withdrawn link, and `@OFFER@` a browser's SDP offer (JSON-escaped), so
//! the fuzzer reaches past the door.
//!
//! What must hold: no panic; every frame on an open socket is answered (a message to that
//! socket, its close, or the box paused), except an accepted SDP answer and a mute that
//! changes nothing; no error or refusal
//! carries parser internals; no roster name carries a hidden character or poses as the box;
//! the call never holds more phones than its limit.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use hearth::call::invite::InviteStore;
use hearth::call::protocol::{clean_name, parse_client_msg, ClientMsg, ServerMsg, MAX_NAME_CHARS};
use hearth::call::room::Room;
use hearth::call::sfu::Sfu;
use hearth::call::{Call, CallLimits, ConnId, Output};

const BOX_NAME: &str = "Home";
const MAX_PHONES: usize = 8;
/// Outputs from one input before the core is judged to be looping.
const MAX_OUTPUTS: usize = 100_000;
/// What errors and refusals must never carry: parser and debug internals.
const INTERNALS: &[&str] = &[
    "0x",
    "Offset",
    "Pointer",
    "line ",
    "column",
    "invalid type",
    "unknown variant",
    "Error(",
    "{",
];

struct Harness {
    call: Call,
    now: Instant,
    wall: SystemTime,
    /// The socket the next frame goes to, and the connection number it stands for.
    conn: ConnId,
    slot: u8,
    open: HashSet<ConnId>,
    next_conn: u64,
    tokens: [(&'static str, String); 3],
    offer: Option<String>,
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut h = Harness::new();
    for line in text.split('\n') {
        match line.strip_prefix('#') {
            Some(command) => h.command(command),
            None => h.say(line),
        }
    }
    h.command("t3600");
}

impl Harness {
    fn new() -> Harness {
        let wall = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let mut invites = InviteStore::default();
        let (_, good) = invites.create("Gran", hour, wall);
        let (_, expired) = invites.create("Old", hour, wall - 2 * hour);
        let (withdrawn, revoked) = invites.create("Gone", hour, wall);
        invites.revoke(&withdrawn.id).expect("the invite exists");
        let now = Instant::now();
        let mut room = Room::new(MAX_PHONES);
        room.add_box(BOX_NAME, now);
        let mut sfu = Sfu::new("127.0.0.1:10000".parse().expect("an address"));
        sfu.enable_box(300, 2500);
        let mut h = Harness {
            call: Call::new(room, sfu, invites, CallLimits::default()),
            now,
            wall,
            conn: ConnId(0),
            slot: 0,
            open: HashSet::new(),
            next_conn: 1,
            tokens: [
                ("@TOKEN@", good),
                ("@EXPIRED@", expired),
                ("@REVOKED@", revoked),
            ],
            offer: None,
        };
        h.connect();
        h
    }

    /// A new socket for the current slot, from that slot's address.
    fn connect(&mut self) {
        self.conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let from = IpAddr::V4(Ipv4Addr::new(203, 0, 113, self.slot));
        self.call.handle_connected(self.conn, from, self.now);
        self.open.insert(self.conn);
    }

    fn command(&mut self, command: &str) {
        let mut chars = command.chars();
        match chars.next() {
            Some('c') => {
                let slot = chars.next().and_then(|c| c.to_digit(10)).unwrap_or(0) as u8;
                self.slot = slot;
                // Connection numbers 1000 + slot are the slots' first sockets.
                let conn = ConnId(1000 + slot as u64);
                self.conn = conn;
                if self.open.insert(conn) {
                    let from = IpAddr::V4(Ipv4Addr::new(203, 0, 113, slot));
                    self.call.handle_connected(conn, from, self.now);
                }
            }
            Some('x') if self.open.remove(&self.conn) => {
                self.call.handle_closed(self.conn, self.now);
                self.drain();
            }
            Some('t') => {
                let secs: u64 = chars.as_str().trim().parse().unwrap_or(1);
                let step = Duration::from_secs(secs.min(3600));
                self.now += step;
                self.wall += step;
                self.call.handle_timeout(self.now);
                self.drain();
            }
            _ => {}
        }
    }

    fn say(&mut self, line: &str) {
        if !self.open.contains(&self.conn) {
            self.connect();
        }
        let mut text = line.to_string();
        for (placeholder, token) in &self.tokens {
            text = text.replace(placeholder, token);
        }
        if text.contains("@OFFER@") {
            let offer = self.offer.get_or_insert_with(browser_offer).clone();
            text = text.replace("@OFFER@", &offer);
        }
        let conn = self.conn;
        self.call.handle_message(conn, &text, self.now, self.wall);
        let outputs = self.drain();
        let answered = outputs.iter().any(|o| match o {
            Output::Send(c, _) | Output::Close(c) => *c == conn,
            Output::PauseBox(_) => true,
            _ => false,
        });
        // An accepted SDP answer, and a mute that changes nothing, need no reply.
        let may_be_silent = matches!(
            parse_client_msg(&text),
            Ok(ClientMsg::Answer { .. } | ClientMsg::Mute { .. })
        );
        assert!(
            answered || may_be_silent || !self.open.contains(&conn),
            "no answer to {text:?}"
        );
    }

    /// Everything the call wants done now, checked.
    fn drain(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut closed = Vec::new();
        while let Some(output) = self.call.poll_output() {
            assert!(
                outputs.len() < MAX_OUTPUTS,
                "the call keeps producing output"
            );
            outputs.push(output);
        }
        for output in &outputs {
            match output {
                Output::Send(conn, msg) => {
                    assert!(self.open.contains(conn), "sent to a closed socket: {msg:?}");
                    check_message(msg);
                }
                Output::Close(conn) => {
                    self.open.remove(conn);
                    closed.push(*conn);
                }
                Output::ScreenRoster(phones) => {
                    assert!(phones.len() <= MAX_PHONES, "{} phones", phones.len());
                    for (_, name) in phones {
                        check_name(name);
                    }
                }
                _ => {}
            }
        }
        assert!(self.call.room().phones().count() <= MAX_PHONES);
        // The socket tasks end, and tell the call, as in the daemon.
        for conn in closed {
            self.call.handle_closed(conn, self.now);
            outputs.extend(self.drain());
        }
        outputs
    }
}

fn check_message(msg: &ServerMsg) {
    match msg {
        ServerMsg::Error { message: text } | ServerMsg::Refused { reason: text } => {
            for internal in INTERNALS {
                assert!(!text.contains(internal), "{internal:?} leaked: {text:?}");
            }
        }
        ServerMsg::Roster { participants } => {
            assert!(participants.len() <= MAX_PHONES + 1);
            for entry in participants {
                check_name(&entry.name);
            }
            let boxes = participants.iter().filter(|p| p.name == BOX_NAME).count();
            assert!(boxes <= 1, "a guest is named as the box: {participants:?}");
        }
        _ => {}
    }
}

fn check_name(name: &str) {
    assert_eq!(clean_name(name), name, "a name that is not clean");
    assert!(
        name.chars().count() <= MAX_NAME_CHARS + " (guest)".len(),
        "a long name: {name:?}"
    );
    assert!(
        !name.eq_ignore_ascii_case(BOX_NAME) || name == BOX_NAME,
        "a guest poses as the box: {name:?}"
    );
}

/// What a browser offers (its mic and camera, send-only), as the content of a JSON string.
fn browser_offer() -> String {
    use str0m::media::{Direction, MediaKind};
    use str0m::net::Protocol;
    use str0m::{Candidate, Rtc};
    static CRYPTO: std::sync::Once = std::sync::Once::new();
    CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .build(Instant::now());
    let addr = "127.0.0.1:5000".parse().expect("an address");
    rtc.add_local_candidate(Candidate::host(addr, Protocol::Udp).expect("a candidate"));
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().expect("an offer");
    let quoted = serde_json::to_string(&offer.to_sdp_string()).expect("a string");
    quoted[1..quoted.len() - 1].to_string()
}
