//! The bad-input table: hostile input at each of Hearth's doors, and the answer it must get.
//! Signalling rows go to the real daemon over TLS and WebSocket, each from its own loopback
//! address (so one row's refused tokens do not throttle the next); control rows go to the
//! real control socket; config rows to `hearth config check`. Every row is checked, and all
//! failures are reported together, with the row.
//!
//! No answer may carry parser internals (`0x…`, `Offset`, `line 3 column 7`, …): a phone is
//! told what went wrong, never how.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use anyhow::{bail, Result};
use hearth_test_support::daemon::{hearth_bin, temp_dir, Daemon};
use hearth_test_support::tokio_tungstenite::tungstenite::{self, Message};
use hearth_test_support::wss::{self, Socket};
use serde_json::{json, Value};

/// What a phone (or the owner) sends.
enum Input {
    /// A text frame on a new socket, before any join.
    BeforeJoin(String),
    /// Joined with a good link, then this text frame.
    AfterJoin(String),
    /// Joined with a good link, then this binary frame.
    BinaryAfterJoin(Vec<u8>),
    /// Joined, offered media (answered), then this text frame.
    AfterOffer(String),
    /// A join with this token (`GOOD` is a working link's) and the page's codecs.
    Token(String),
    /// A join with a good link and this name.
    Name(String),
    /// A join with a good link and these video codecs.
    Codecs(Value),
    /// The same, on a box whose own name ("Home") is in the call.
    NameOnBox(String),
    /// Ten refused tokens from one address within a minute, then the eleventh.
    EleventhGuess,
    /// Two devices join with a new link (two devices at most), then a third.
    ThirdDevice,
    /// A WebSocket handshake with this `Origin` (`PORT` is the daemon's port).
    Origin(String),
    /// One line on the control socket.
    Control(String),
    /// A config file for `hearth config check`.
    Config(Vec<u8>),
}

/// The answer it must get.
enum Expect {
    /// `refused` with a reason containing this, and nothing else, then the close.
    Refused(&'static str),
    /// `error` containing this, and the session goes on (a mute is still answered).
    Error(&'static str),
    /// `error` containing this, then the close.
    ErrorAndClose(&'static str),
    /// The socket closes, with nothing said.
    Closed,
    /// Nothing, and the session goes on.
    Ignored,
    /// The roster shows the joiner under exactly this name.
    Named(String),
    /// The WebSocket handshake is refused with this HTTP status.
    Http(u16),
    /// The control socket answers with an error containing this.
    ControlError(&'static str),
    /// `hearth config check` fails with one line containing this.
    ConfigError(&'static str),
}

use Expect::*;
use Input::*;

/// In a row's token or frame: the token of a working link (the one the daemon printed).
const GOOD: &str = "GOOD";
/// As a row's token: that token in upper case.
const GOOD_UPPER: &str = "GOOD_IN_UPPER_CASE";

fn s(text: &str) -> String {
    text.to_string()
}

fn join_frame(token: &str, name: &str) -> String {
    json!({"type": "join", "token": token, "name": name, "video_codecs": ["H264", "VP8"]})
        .to_string()
}

fn offer_frame(sdp: &str) -> String {
    json!({"type": "offer", "sdp": sdp}).to_string()
}

fn answer_frame(sdp: &str) -> String {
    json!({"type": "answer", "sdp": sdp}).to_string()
}

fn control_create(ttl: &str) -> String {
    format!(r#"{{"cmd":"invite_create","name":"x","ttl_secs":{ttl}}}"#)
}

fn config(text: &str) -> Input {
    Config(text.as_bytes().to_vec())
}

/// The table: what each row sends, and the answer it must get.
#[rustfmt::skip]
fn rows() -> Vec<(&'static str, Input, Expect)> {
    let big = 65 * 1024;
    vec![
        // Before the join: nothing about the call, one refusal, then the close.
        ("leave before join", BeforeJoin(s(r#"{"type":"leave"}"#)), Refused("Join first")),
        ("offer before join", BeforeJoin(offer_frame("v=0")), Refused("Join first")),
        ("mute before join", BeforeJoin(s(r#"{"type":"mute","audio":true,"video":true}"#)), Refused("Join first")),
        ("not JSON before join", BeforeJoin(s("hello?")), Refused("not a join request")),
        ("unknown message type before join", BeforeJoin(s(r#"{"type":"admin"}"#)), Refused("not a join request")),
        ("join with an unknown field", BeforeJoin(s(r#"{"type":"join","token":"x","name":"A","admin":true}"#)), Refused("not a join request")),
        ("join whose token is a number", BeforeJoin(s(r#"{"type":"join","token":5,"name":"A"}"#)), Refused("not a join request")),
        ("join without a token", BeforeJoin(s(r#"{"type":"join","name":"A"}"#)), Refused("not a join request")),
        ("oversize frame (65 KiB) before join", BeforeJoin("x".repeat(big)), Closed),
        // After the join: unreadable messages are errors, and the session goes on.
        ("unknown message type", AfterJoin(s(r#"{"type":"hack"}"#)), Error("could not be read")),
        ("unknown field in a known message", AfterJoin(s(r#"{"type":"mute","audio":true,"video":true,"x":1}"#)), Error("could not be read")),
        ("wrong type of a field", AfterJoin(s(r#"{"type":"mute","audio":1,"video":true}"#)), Error("could not be read")),
        ("not JSON", AfterJoin(s("{{{{")), Error("could not be read")),
        ("JSON that is not an object", AfterJoin(s("[null, 1e999]")), Error("could not be read")),
        ("empty frame", AfterJoin(s("")), Error("could not be read")),
        ("a second join", AfterJoin(join_frame(GOOD, "Again")), Error("already in the call")),
        ("binary frame", BinaryAfterJoin(vec![0, 159, 146, 150, 255]), Ignored),
        // Media negotiation: what went wrong, never how; the phone must join again.
        ("garbage SDP offer", AfterJoin(offer_frame("v=0\r\nnonsense")), ErrorAndClose("could not be read")),
        ("SDP offer with a broken m-line", AfterJoin(offer_frame("v=0\r\nm=video x")), ErrorAndClose("could not be read")),
        ("60 KiB of garbage SDP", AfterJoin(offer_frame(&"a=".repeat(30 * 1024))), ErrorAndClose("could not be read")),
        ("an answer with no offer outstanding", AfterJoin(answer_frame(&sdp_answer())), ErrorAndClose("no media session")),
        ("garbage SDP answer", AfterOffer(answer_frame("v=0\r\nm=audio 0x7f")), ErrorAndClose("could not be read")),
        ("a second offer", AfterOffer(offer_frame(&sdp_offer())), ErrorAndClose("already set up")),
        ("oversize frame (65 KiB) after join", AfterJoin(offer_frame(&"a".repeat(big))), Closed),
        // Tokens: every bad one is "not valid", whatever its shape.
        ("token of the wrong length", Token(s("abc")), Refused("not valid")),
        ("token that is not base64", Token(s("!!!!!!!!!!!!!!!!!!!!!!")), Refused("not valid")),
        ("empty token", Token(s("")), Refused("not valid")),
        ("10 KB token", Token("A".repeat(10 * 1024)), Refused("not valid")),
        ("good token with padding", Token(format!("{GOOD}==")), Refused("not valid")),
        ("good token with spaces", Token(format!(" {GOOD} ")), Refused("not valid")),
        ("good token with a NUL", Token(format!("{GOOD}\u{0}")), Refused("not valid")),
        ("good token in upper case", Token(s(GOOD_UPPER)), Refused("not valid")),
        // Names are plain text that shows as itself, and never the box's.
        ("name with a right-to-left override", Name(s("\u{202E}nnA")), Named(s("nnA"))),
        ("name with bidi isolates", Name(s("Ann\u{2066}x\u{2069}")), Named(s("Annx"))),
        ("name with zero-width characters", Name(s("A\u{200B}n\u{200D}n\u{FEFF}")), Named(s("Ann"))),
        ("name with a line separator (U+2028)", Name(s("Gran\u{2028}ny\u{2029}")), Named(s("Granny"))),
        ("name with newline and tab", Name(s("Ann\n\tSmith")), Named(s("Ann Smith"))),
        ("name with markup", Name(s("<b>Gran</b><script>x()</script>")), Named(s("<b>Gran</b><script>x()</script>"))),
        ("10 KB name", Name("x".repeat(10 * 1024)), Named("x".repeat(40))),
        ("name of invisible characters only", Name(s("\u{200B}\u{200D}\u{2060}")), Named(s("Guest"))),
        ("empty name", Name(s("")), Named(s("Guest"))),
        ("the box's own name", NameOnBox(s("Home")), Named(s("Home (guest)"))),
        ("the box's name in other case, hidden characters around", NameOnBox(s("\u{200B}hOmE ")), Named(s("hOmE (guest)"))),
        ("a browser that decodes no codec of the call", Codecs(json!(["AV1"])), Refused("cannot play")),
        ("codecs that are not strings", Codecs(json!([1, {"x": 2}])), Refused("not a join request")),
        // Limits per address and per link.
        ("the 11th bad token from one address in a minute", EleventhGuess, Refused("Too many attempts")),
        ("a third device on a two-device link", ThirdDevice, Refused("already in use on 2 devices")),
        // Only the join page may open signalling sockets.
        ("cross-origin WebSocket", Origin(s("https://evil.example")), Http(403)),
        ("WebSocket with Origin null", Origin(s("null")), Http(403)),
        ("WebSocket from a look-alike origin", Origin(s("https://127.0.0.1:PORT.evil.example")), Http(403)),
        // The control socket checks what the CLI checks.
        ("invite lasting 0 s", Control(control_create("0")), ControlError("between 1 minute and 30 days")),
        ("invite lasting 2^64-1 s", Control(control_create(&u64::MAX.to_string())), ControlError("between 1 minute and 30 days")),
        ("invite lasting 59 s", Control(control_create("59")), ControlError("between 1 minute and 30 days")),
        ("invite lasting -1 s", Control(control_create("-1")), ControlError("bad request")),
        ("control request with an unknown field", Control(s(r#"{"cmd":"invite_create","name":"x","ttl_secs":60,"max_sessions":99}"#)), ControlError("bad request")),
        ("status with an unknown field", Control(s(r#"{"cmd":"status","all":true}"#)), ControlError("bad request")),
        ("unknown control command", Control(s(r#"{"cmd":"shell","line":"id"}"#)), ControlError("bad request")),
        ("control request that is not JSON", Control(s("status")), ControlError("bad request")),
        ("control request over 16 KiB", Control(format!(r#"{{"cmd":"invite_create","name":"{}"}}"#, "x".repeat(20 * 1024))), ControlError("bad request")),
        ("privacy neither on nor off", Control(s(r#"{"cmd":"privacy","state":"maybe"}"#)), ControlError("bad request")),
        ("revoking an invite that does not exist", Control(s(r#"{"cmd":"invite_revoke","id":"../../etc"}"#)), ControlError("no invite with id")),
        // Config files: one line naming the file, the place and the problem.
        ("https port 0", config("[web]\nhttps_port = 0\n"), ConfigError(":2:14: key `web.https_port`: port 0 is out of range")),
        ("https port 70000", config("[web]\nhttps_port = 70000\n"), ConfigError("port 70000 is out of range")),
        ("udp port -1", config("[call]\nudp_port = -1\n"), ConfigError("port -1 is out of range")),
        ("one participant", config("[call]\nmax_participants = 1\n"), ConfigError("1 is out of range (2 to 16)")),
        ("zero sessions per link", config("[call]\nsessions_per_invite = 0\n"), ConfigError("0 is out of range (1 to 16)")),
        ("links lasting 30 s", config("[call]\ninvite_ttl = \"30s\"\n"), ConfigError("out of range (1 minute to 30 days)")),
        ("links lasting 31 days", config("[call]\ninvite_ttl = \"31d\"\n"), ConfigError("out of range (1 minute to 30 days)")),
        ("links lasting forever", config("[call]\ninvite_ttl = \"forever\"\n"), ConfigError("is not a duration")),
        ("links lasting 10^20 days", config("[call]\ninvite_ttl = \"99999999999999999999d\"\n"), ConfigError("key `call.invite_ttl`")),
        ("a LAN address that is not one", config("[web]\nlan_address = \"10.0.0.300\"\n"), ConfigError("`10.0.0.300` is not an IP address")),
        ("an unknown key", config("[web]\nhttps_prot = 443\n"), ConfigError("key `web.https_prot`: unknown field")),
        ("an unknown table", config("[webb]\nx = 1\n"), ConfigError("unknown field `webb`")),
        ("a relay that is not TURN", config("[relay]\nurls = [\"https://evil.example/\"]\nsecret = \"0123456789abcdef\"\n"), ConfigError("is not a TURN URL")),
        ("a relay without its secret", config("[relay]\nurls = [\"turns:turn.example.org:443?transport=tcp\"]\n"), ConfigError("a relay needs `secret`")),
        ("relay credentials for a year", config("[relay]\ncredential_lifetime = \"365d\"\n"), ConfigError("out of range (1 minute to 7 days)")),
        ("a relay key misspelt", config("[relay]\nsecrett = \"x\"\n"), ConfigError("unknown field `secrett`")),
        ("a name that is one word", config("[remote]\nname = \"grandma\"\n"), ConfigError("is not a domain name")),
        ("ACME without a name", config("[acme]\nenabled = true\n"), ConfigError("key `acme.enabled`: needs remote.name")),
        ("an ACME directory over HTTP", config("[acme]\ndirectory = \"http://ca.example/dir\"\n"), ConfigError("directory must be an https:// URL")),
        ("an ACME contact that is not mail", config("[acme]\ncontact = \"https://me.example\"\n"), ConfigError("contact must be mailto:")),
        ("DNS updates without a name", config("[dns]\nupdate = \"dyndns2\"\nurl = \"https://dyn.example/nic/update\"\nusername = \"u\"\npassword = \"p\"\n"), ConfigError("key `dns.update`: needs remote.name")),
        ("an unknown DNS update protocol", config("[dns]\nupdate = \"carrier-pigeon\"\n"), ConfigError("is not one of")),
        ("a TSIG key that is not base64", config("[remote]\nname = \"box.example.org\"\n[dns]\nupdate = \"rfc2136\"\nserver = \"ns.example.org\"\nzone = \"example.org\"\nkey_name = \"k\"\nkey_secret = \"not base64!\"\n"), ConfigError("key_secret must be the TSIG key in base64")),
        ("a name outside the DNS zone", config("[remote]\nname = \"box.example.org\"\n[dns]\nupdate = \"rfc2136\"\nserver = \"ns.example.net\"\nzone = \"example.net\"\nkey_name = \"k\"\nkey_secret = \"MDEyMzQ1Njc4OWFiY2RlZg==\"\n"), ConfigError("key `dns.zone`: remote.name is not in this zone")),
        ("a dyndns2 URL over HTTP", config("[remote]\nname = \"box.example.org\"\n[dns]\nupdate = \"dyndns2\"\nurl = \"http://dyn.example/nic/update\"\nusername = \"u\"\npassword = \"p\"\n"), ConfigError("url must be an https:// URL")),
        ("a misspelt board override", config("[board.camera]\nwidht = 640\n"), ConfigError("unknown field `widht`")),
        ("a board override of the wrong type", config("[board.camera]\nwidth = \"wide\"\n"), ConfigError("invalid type")),
        ("a host name with a path and a space", config("[web]\nhostname = \"evil.example/../x y\"\n"), ConfigError("is not a host name")),
        ("a host name of 300 characters", config(&format!("[web]\nhostname = \"{}\"\n", "a".repeat(300))), ConfigError("is not a host name")),
        ("a config file that is not UTF-8", Config(b"[box]\nname = \"\xff\xfe\"\n".to_vec()), ConfigError("cannot read")),
        ("a number past 2^64", config("[board.gpio]\ndebounce_ms = 18446744073709551616\n"), ConfigError(":2:")),
    ]
}

/// Parser and debug internals that no answer may carry.
const INTERNALS: &[&str] = &[
    "0x",
    "Offset",
    "Pointer",
    "line 1",
    "column",
    "invalid type",
    "Error(",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_answer() -> Result<()> {
    let rows = rows();
    assert!(rows.len() >= 25);
    let phones = Daemon::start("bad-input")?;
    let mut with_box: Option<Daemon> = None;
    let mut failures = Vec::new();
    for (i, (what, input, expect)) in rows.into_iter().enumerate() {
        // Each row from its own address: 127.0.0.10 and up.
        let from = Ipv4Addr::new(127, 0, 0, 10 + i as u8);
        let daemon = match input {
            NameOnBox(_) => &*with_box.get_or_insert_with(|| {
                Daemon::start_with_box("bad-input-box").expect("a box daemon")
            }),
            _ => &phones,
        };
        let started = Instant::now();
        if let Err(e) = check_row(daemon, from, input, &expect).await {
            failures.push(format!("row {i} ({what}): {e:#}"));
        }
        let took = started.elapsed();
        eprintln!("row {i:2} {what}: {:?}", took);
    }
    if !failures.is_empty() {
        bail!("{} rows failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

async fn check_row(daemon: &Daemon, from: Ipv4Addr, input: Input, expect: &Expect) -> Result<()> {
    let good = token_of(&daemon.join_url);
    let answer = match input {
        BeforeJoin(text) => {
            let mut socket = wss::connect_from(daemon, from, None).await?;
            socket.send_text(text).await?;
            Answer::Socket(socket)
        }
        AfterJoin(text) => {
            let mut socket = joined(daemon, from, &good, "Row").await?;
            socket.send_text(text.replace(GOOD, &good)).await?;
            Answer::Socket(socket)
        }
        BinaryAfterJoin(bytes) => {
            let mut socket = joined(daemon, from, &good, "Row").await?;
            futures_util::SinkExt::send(&mut socket, Message::Binary(bytes.into())).await?;
            Answer::Socket(socket)
        }
        AfterOffer(text) => {
            let mut socket = joined(daemon, from, &good, "Row").await?;
            socket.send_text(offer_frame(&sdp_offer())).await?;
            let answer = next_of(&mut socket, &["answer", "error"]).await?;
            if answer["type"] != "answer" {
                bail!("the offer was not answered: {answer}");
            }
            socket.send_text(text).await?;
            Answer::Socket(socket)
        }
        Token(token) => {
            let token = match token.as_str() {
                GOOD_UPPER => good.to_uppercase(),
                _ => token.replace(GOOD, &good),
            };
            let mut socket = wss::connect_from(daemon, from, None).await?;
            socket.send_text(join_frame(&token, "Guesser")).await?;
            Answer::Socket(socket)
        }
        Name(name) | NameOnBox(name) => {
            let mut socket = wss::connect_from(daemon, from, None).await?;
            socket.send_text(join_frame(&good, &name)).await?;
            Answer::Joined(socket)
        }
        Codecs(codecs) => {
            let mut socket = wss::connect_from(daemon, from, None).await?;
            let frame =
                json!({"type": "join", "token": good, "name": "Old", "video_codecs": codecs});
            socket.send_text(frame.to_string()).await?;
            Answer::Socket(socket)
        }
        EleventhGuess => {
            for n in 0..10 {
                let mut socket = wss::connect_from(daemon, from, None).await?;
                socket
                    .send_text(join_frame(&format!("guess{n:017}"), "Mallory"))
                    .await?;
                let said = said_until_closed(&mut socket).await;
                if !said.iter().any(|m| {
                    m["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("not valid"))
                }) {
                    bail!("guess {n} was not refused as not valid: {said:?}");
                }
            }
            let mut socket = wss::connect_from(daemon, from, None).await?;
            socket.send_text(join_frame(&good, "Mallory")).await?;
            let said = said_until_closed(&mut socket).await;
            // Meanwhile Gran, elsewhere, joins at once.
            let gran = joined(daemon, Ipv4Addr::new(127, 0, 0, 250), &good, "Gran").await;
            gran.map_err(|e| e.context("a good link from another address"))?;
            Answer::Said(said)
        }
        ThirdDevice => {
            let url = daemon.invite("Two devices")?;
            let token = token_of(&url);
            let _first = joined(daemon, from, &token, "Phone").await?;
            let _second = joined(daemon, from, &token, "Tablet").await?;
            let mut third = wss::connect_from(daemon, from, None).await?;
            third.send_text(join_frame(&token, "Third")).await?;
            Answer::Said(said_until_closed(&mut third).await)
        }
        Origin(origin) => {
            let origin = origin.replace("PORT", &daemon.https_port.to_string());
            match wss::connect_from(daemon, from, Some(&origin)).await {
                Ok(_) => bail!("the handshake from {origin} was accepted"),
                Err(e) => Answer::Http(http_status(&e)),
            }
        }
        Control(line) => Answer::Control(control(daemon, &line)?),
        Config(bytes) => Answer::Config(config_check(&bytes)),
    };
    answer.check(expect).await
}

/// What came back, to be held against the row's expectation.
enum Answer {
    Socket(Socket),
    Joined(Socket),
    Said(Vec<Value>),
    Http(Option<u16>),
    Control(Value),
    Config((Option<i32>, String)),
}

impl Answer {
    async fn check(self, expect: &Expect) -> Result<()> {
        match (self, expect) {
            (Answer::Socket(mut socket), Refused(_) | ErrorAndClose(_) | Closed) => {
                check_said(&said_until_closed(&mut socket).await, expect)
            }
            (Answer::Said(said), Refused(_) | ErrorAndClose(_) | Closed) => {
                check_said(&said, expect)
            }
            (Answer::Socket(mut socket), Error(text)) => {
                let error = next_of(&mut socket, &["error"]).await?;
                check_text(&error, text)?;
                still_going(&mut socket).await
            }
            (Answer::Socket(mut socket), Ignored) => still_going(&mut socket).await,
            (Answer::Joined(mut socket), Named(name)) => {
                let welcome = next_of(&mut socket, &["welcome", "refused"]).await?;
                let you = welcome["you"].as_str().unwrap_or_default().to_string();
                let roster = next_of(&mut socket, &["roster"]).await?;
                let entries = roster["participants"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let me = entries.iter().find(|p| p["id"] == you.as_str());
                match me.and_then(|p| p["name"].as_str()) {
                    Some(shown) if shown == name.as_str() => Ok(()),
                    other => bail!("shown as {other:?}, not {name:?}: {roster}"),
                }
            }
            (Answer::Http(status), Http(want)) if status == Some(*want) => Ok(()),
            (Answer::Http(status), Http(want)) => bail!("HTTP {status:?}, not {want}"),
            (Answer::Control(response), ControlError(text)) => match response["error"].as_str() {
                Some(error) if error.contains(text) => Ok(()),
                _ => bail!("control answered {response}, not an error with {text:?}"),
            },
            (Answer::Config((code, stderr)), ConfigError(text)) => {
                if code != Some(1) || stderr.lines().count() != 1 || !stderr.contains(text) {
                    bail!(
                        "config check exited {code:?} with {stderr:?}, not one line with {text:?}"
                    );
                }
                Ok(())
            }
            _ => bail!("this row's input cannot have this answer"),
        }
    }
}

/// Everything said before the close (rosters aside: others come and go), checked against a
/// refusal, an error, or silence.
fn check_said(said: &[Value], expect: &Expect) -> Result<()> {
    let said: Vec<Value> = said
        .iter()
        .filter(|m| m["type"] != "roster")
        .cloned()
        .collect();
    for message in &said {
        for internal in INTERNALS {
            if message.to_string().contains(internal) {
                bail!("{internal:?} leaked: {message}");
            }
        }
    }
    match expect {
        Refused(text) => match said.as_slice() {
            [only] if only["type"] == "refused" => check_text(only, text),
            _ => bail!("not one refusal: {said:?}"),
        },
        ErrorAndClose(text) => match said.iter().find(|m| m["type"] == "error") {
            Some(error) => check_text(error, text),
            None => bail!("no error before the close: {said:?}"),
        },
        _ if said.is_empty() => Ok(()),
        _ => bail!("something said before the close: {said:?}"),
    }
}

fn check_text(message: &Value, text: &str) -> Result<()> {
    let said = message["reason"]
        .as_str()
        .or(message["message"].as_str())
        .unwrap_or_default();
    if !said.contains(text) {
        bail!("{message} does not say {text:?}");
    }
    for internal in INTERNALS {
        if said.contains(internal) {
            bail!("{internal:?} leaked: {message}");
        }
    }
    Ok(())
}

trait SendText {
    async fn send_text(&mut self, text: String) -> Result<()>;
}

impl SendText for Socket {
    async fn send_text(&mut self, text: String) -> Result<()> {
        futures_util::SinkExt::send(self, Message::Text(text.into())).await?;
        Ok(())
    }
}

/// A socket in the call with `token`: welcome and roster read.
async fn joined(daemon: &Daemon, from: Ipv4Addr, token: &str, name: &str) -> Result<Socket> {
    let mut socket = wss::connect_from(daemon, from, None).await?;
    socket.send_text(join_frame(token, name)).await?;
    let welcome = next_of(&mut socket, &["welcome", "refused"]).await?;
    if welcome["type"] != "welcome" {
        bail!("join refused: {welcome}");
    }
    next_of(&mut socket, &["roster"]).await?;
    Ok(socket)
}

/// The next message of one of these types (rosters and the like in between are skipped).
async fn next_of(socket: &mut Socket, types: &[&str]) -> Result<Value> {
    loop {
        match wss::next(socket).await? {
            Some(m) if types.iter().any(|t| m["type"] == *t) => return Ok(m),
            Some(m) if m["type"] == "refused" || m["type"] == "error" => {
                bail!("{m} while waiting for {types:?}")
            }
            Some(_) => continue,
            None => bail!("closed while waiting for {types:?}"),
        }
    }
}

/// The session goes on: a mute is answered with a roster.
async fn still_going(socket: &mut Socket) -> Result<()> {
    socket
        .send_text(s(r#"{"type":"mute","audio":false,"video":true}"#))
        .await?;
    let roster = next_of(socket, &["roster"]).await?;
    let muted = roster["participants"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["audio"] == false));
    if !muted {
        bail!("the mute after it was not heard: {roster}");
    }
    Ok(())
}

/// Messages until the server closes (a reset counts as a close).
async fn said_until_closed(socket: &mut Socket) -> Vec<Value> {
    let mut said = Vec::new();
    while let Ok(Some(message)) = wss::next(socket).await {
        said.push(message);
    }
    said
}

fn http_status(error: &anyhow::Error) -> Option<u16> {
    error
        .chain()
        .find_map(|e| match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(response)) => Some(response.status().as_u16()),
            _ => None,
        })
}

fn token_of(url: &str) -> String {
    url.split_once('#')
        .map(|(_, t)| t.to_string())
        .unwrap_or_default()
}

fn control(daemon: &Daemon, line: &str) -> Result<Value> {
    let mut stream = UnixStream::connect(daemon.state_dir.join("control.sock"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    // A request over the limit is cut short by the daemon, which may answer before all of it
    // is written.
    let _ = stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.write_all(b"\n"));
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response)?;
    Ok(serde_json::from_str(&response)?)
}

fn config_check(bytes: &[u8]) -> (Option<i32>, String) {
    let dir = temp_dir("bad-config");
    let file = dir.join("hearth.toml");
    std::fs::write(&file, bytes).expect("a config file");
    let output = std::process::Command::new(hearth_bin())
        .arg("--state-dir")
        .arg(&dir)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("running hearth");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A browser's offer: its mic and camera, send-only.
fn sdp_offer() -> String {
    offer_and_answer().0
}

/// A well-formed answer, to an offer the box never made.
fn sdp_answer() -> String {
    offer_and_answer().1
}

fn offer_and_answer() -> (String, String) {
    use str0m::media::{Direction, MediaKind};
    use str0m::net::Protocol;
    use str0m::{Candidate, Rtc};
    static CRYPTO: std::sync::Once = std::sync::Once::new();
    CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
    let now = Instant::now();
    let mut phone = Rtc::builder().build(now);
    let addr = "127.0.0.1:5000".parse().expect("an address");
    phone.add_local_candidate(Candidate::host(addr, Protocol::Udp).expect("a candidate"));
    let mut change = phone.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().expect("an offer");
    let offer_text = offer.to_sdp_string();
    let mut other = Rtc::builder().build(now);
    let answer = other.sdp_api().accept_offer(offer).expect("an answer");
    (offer_text, answer.to_sdp_string())
}
