//! The signalling WebSocket at `/ws`: one task per connection, relaying text frames to the
//! hub and the hub's messages back. The call's meaning lives in `call`; this is transport.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use super::limits::{BusyGuard, ConnActivity};
use super::rate::{Admit, Occasional, TokenBucket};
use super::WebState;
use crate::call::protocol::{ServerMsg, MAX_CLIENT_MESSAGE_BYTES};
use crate::call::throttle::redacted;
use crate::call::ConnId;

/// Messages waiting to be written to one connection. A phone that does not read them is
/// closed when this fills, rather than buffered without end.
pub const OUTBOUND_QUEUE: usize = 32;
/// The server pings every connection this often...
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// ...and closes one from which nothing at all, not even a pong, came for this long.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// A message the phone does not take within this ends the session: it stopped reading.
pub const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// A session's time limits (unit tests use shorter ones).
#[derive(Debug, Clone, Copy)]
struct Timing {
    ping_every: Duration,
    silence: Duration,
    write_limit: Duration,
}

const TIMING: Timing = Timing {
    ping_every: PING_EVERY,
    silence: SILENCE_LIMIT,
    write_limit: WRITE_LIMIT,
};

/// Sockets closed for sending too fast, logged once a minute at most.
static OVER_RATE: Occasional = Occasional::new(Duration::from_secs(60));

/// What a WebSocket task tells the hub.
#[derive(Debug)]
pub enum WsEvent {
    Open {
        conn: ConnId,
        /// The phone's address, for per-address limits (never logged in full).
        from: IpAddr,
        commands: mpsc::Sender<WsCommand>,
    },
    Text(ConnId, String),
    Closed(ConnId),
}

/// What the hub tells a WebSocket task.
#[derive(Debug)]
pub enum WsCommand {
    Send(ServerMsg),
    Close,
    /// End the connection without a close frame, as a broken network does (`hearth
    /// simulate signalling-cut`).
    Drop,
}

pub(super) async fn websocket(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    activity: Option<Extension<ConnActivity>>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !super::same_origin(&headers, &uri) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let activity = activity.map(|Extension(activity)| activity);
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| signalling(socket, state, peer.ip(), activity))
}

async fn signalling(
    socket: WebSocket,
    state: WebState,
    from: IpAddr,
    activity: Option<ConnActivity>,
) {
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let (tx, commands) = mpsc::channel(OUTBOUND_QUEUE);
    let open = WsEvent::Open {
        conn,
        from,
        commands: tx,
    };
    if state.hub.send(open).await.is_err() {
        return;
    }
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write(sink, commands, TIMING, activity));
    let reader = read(stream, state.hub.clone(), conn, from, TIMING);
    // Whichever ends first (client gone, silent or too fast, or hub closed us) ends the
    // session.
    tokio::pin!(writer);
    tokio::select! {
        _ = reader => writer.abort(),
        _ = &mut writer => {}
    }
    let _ = state.hub.send(WsEvent::Closed(conn)).await;
}

/// The hub's messages to the phone, rosters coalesced, and a ping every [`PING_EVERY`].
/// Ends when the hub closes the session or the phone stops taking what is sent.
///
/// From its `welcome` on, a phone in the call keeps its connection busy: never idle, never
/// closed to make room for another; so does a phone knocking (`waiting`, at most two minutes
/// before the knock is declined). A socket that has not joined (yet) is neither.
async fn write<K>(
    mut sink: K,
    mut commands: mpsc::Receiver<WsCommand>,
    timing: Timing,
    activity: Option<ConnActivity>,
) where
    K: Sink<Message> + Unpin,
{
    let mut _in_call: Option<BusyGuard> = None;
    let every = timing.ping_every;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(OUTBOUND_QUEUE);
    loop {
        let first = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => command,
                None => return,
            },
            _ = ping.tick() => {
                if !deliver(&mut sink, Message::Ping(Default::default()), timing).await {
                    return;
                }
                continue;
            }
        };
        // Everything queued meanwhile goes in one batch, so a run of rosters is one roster.
        batch.push(first);
        while batch.len() < OUTBOUND_QUEUE {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        for command in coalesce_rosters(std::mem::take(&mut batch)) {
            match command {
                WsCommand::Send(msg) => {
                    if matches!(msg, ServerMsg::Welcome { .. } | ServerMsg::Waiting { .. }) {
                        _in_call = activity.as_ref().map(ConnActivity::busy);
                    }
                    let Ok(text) = serde_json::to_string(&msg) else {
                        continue;
                    };
                    if !deliver(&mut sink, Message::Text(text.into()), timing).await {
                        return;
                    }
                }
                WsCommand::Close => {
                    let _ = deliver(&mut sink, Message::Close(None), timing).await;
                    return;
                }
                WsCommand::Drop => return,
            }
        }
    }
}

/// Send one message; false when the socket failed or the phone did not take it within
/// [`WRITE_LIMIT`].
async fn deliver<K: Sink<Message> + Unpin>(sink: &mut K, message: Message, timing: Timing) -> bool {
    match tokio::time::timeout(timing.write_limit, sink.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("a signalling connection stopped taking its messages");
            false
        }
    }
}

/// Of each run of consecutive rosters only the last: a roster is the whole room, so the
/// latest says all the earlier ones did.
fn coalesce_rosters(commands: Vec<WsCommand>) -> Vec<WsCommand> {
    let is_roster = |c: &WsCommand| matches!(c, WsCommand::Send(ServerMsg::Roster { .. }));
    let mut out: Vec<WsCommand> = Vec::with_capacity(commands.len());
    for command in commands {
        if is_roster(&command) && out.last().is_some_and(is_roster) {
            out.pop();
        }
        out.push(command);
    }
    out
}

/// The phone's messages to the hub, at most [`super::rate::MESSAGES_PER_SECOND`] (after a
/// burst): over that, the socket is not read until the next message's turn, so TCP slows
/// the sender; a socket over the rate for [`super::rate::OVER_RATE_LIMIT`] is closed. Ends
/// when the phone closes, is silent for [`SILENCE_LIMIT`], or the hub is gone.
async fn read<S, E>(
    mut stream: S,
    hub: mpsc::Sender<WsEvent>,
    conn: ConnId,
    from: IpAddr,
    timing: Timing,
) where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut bucket = TokenBucket::for_signalling(Instant::now());
    loop {
        let message = match tokio::time::timeout(timing.silence, stream.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => return,
            Err(_) => {
                tracing::debug!("{conn:?}: nothing heard for {:?}, closing", timing.silence);
                return;
            }
        };
        // Every frame counts, pings and pongs too.
        loop {
            match bucket.admit(Instant::now()) {
                Admit::Now => break,
                Admit::After(wait) => tokio::time::sleep(wait).await,
                Admit::Close => {
                    tracing::debug!("{conn:?}: over the message rate for too long, closing");
                    if let Some(n) = OVER_RATE.note(Instant::now()) {
                        tracing::info!(
                            "{n} signalling connection(s) closed for sending too fast since \
                             the last report; the latest from {}",
                            redacted(from)
                        );
                    }
                    return;
                }
            }
        }
        let text = match message {
            Message::Text(text) => text.to_string(),
            Message::Close(_) => return,
            _ => continue,
        };
        if hub.send(WsEvent::Text(conn, text)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::protocol::RosterEntry;

    fn roster(name: &str) -> WsCommand {
        let entry = RosterEntry {
            id: "p1".into(),
            name: name.into(),
            audio: true,
            video: true,
            note: None,
            privacy_since: None,
            reconnecting: false,
        };
        WsCommand::Send(ServerMsg::Roster {
            participants: vec![entry],
        })
    }

    fn error(text: &str) -> WsCommand {
        WsCommand::Send(ServerMsg::Error {
            message: text.into(),
        })
    }

    fn describe(commands: &[WsCommand]) -> Vec<String> {
        commands
            .iter()
            .map(|c| match c {
                WsCommand::Send(ServerMsg::Roster { participants }) => {
                    format!("roster {}", participants[0].name)
                }
                WsCommand::Send(ServerMsg::Error { message }) => format!("error {message}"),
                WsCommand::Send(other) => format!("{other:?}"),
                WsCommand::Close => "close".into(),
                WsCommand::Drop => "drop".into(),
            })
            .collect()
    }

    const QUICK: Timing = Timing {
        ping_every: Duration::from_millis(100),
        silence: Duration::from_secs(1),
        write_limit: Duration::from_millis(200),
    };

    /// A sink that keeps what it is given.
    fn recorder() -> (
        impl Sink<Message, Error = ()> + Unpin,
        std::sync::Arc<std::sync::Mutex<Vec<Message>>>,
    ) {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = futures_util::sink::unfold(kept.clone(), |kept, message| async move {
            kept.lock().unwrap().push(message);
            Ok::<_, ()>(kept)
        });
        (Box::pin(sink), kept)
    }

    #[tokio::test]
    async fn the_writer_pings_coalesces_and_closes() {
        let (sink, kept) = recorder();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        for name in ["a", "b", "c"] {
            tx.try_send(roster(name)).unwrap();
        }
        let writer = tokio::spawn(write(sink, rx, QUICK, None));
        // Two pings' time, then the hub closes the session.
        tokio::time::sleep(QUICK.ping_every * 5 / 2).await;
        tx.try_send(WsCommand::Close).unwrap();
        writer.await.unwrap();
        let kept = kept.lock().unwrap();
        let kinds: Vec<&str> = kept
            .iter()
            .map(|m| match m {
                Message::Text(t) if t.contains("\"c\"") => "roster c",
                Message::Text(_) => "other text",
                Message::Ping(_) => "ping",
                Message::Close(_) => "close",
                _ => "other",
            })
            .collect();
        // The three rosters as one, pings (two, or more on a slow machine), the close.
        assert_eq!(kinds.first(), Some(&"roster c"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"close"), "{kinds:?}");
        let pings = &kinds[1..kinds.len() - 1];
        assert!(
            pings.len() >= 2 && pings.iter().all(|k| *k == "ping"),
            "{kinds:?}"
        );
    }

    #[tokio::test]
    async fn a_phone_that_takes_nothing_is_let_go() {
        let stuck = Box::pin(futures_util::sink::unfold((), |_, _: Message| {
            std::future::pending::<Result<(), ()>>()
        }));
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tx.try_send(roster("a")).unwrap();
        let started = Instant::now();
        let ended =
            tokio::time::timeout(Duration::from_secs(5), write(stuck, rx, QUICK, None)).await;
        assert!(ended.is_ok(), "the writer waited on");
        assert!(started.elapsed() >= QUICK.write_limit);
        drop(tx);
    }

    #[tokio::test]
    async fn a_socket_is_closed_after_its_silence_not_while_it_talks() {
        let (phone, frames) = mpsc::channel::<Message>(8);
        let stream = Box::pin(futures_util::stream::unfold(
            frames,
            |mut frames| async move {
                let frame = frames.recv().await?;
                Some((Ok::<_, ()>(frame), frames))
            },
        ));
        let (hub, mut events) = mpsc::channel(8);
        let from = IpAddr::from([192, 0, 2, 1]);
        let reader = tokio::spawn(read(stream, hub, ConnId(1), from, QUICK));
        // Pongs and a text every 100 ms for 1.5 s: longer than the silence limit.
        let started = Instant::now();
        for i in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let frame = match i {
                5 => Message::Text("hello".into()),
                _ => Message::Pong(Default::default()),
            };
            phone.send(frame).await.unwrap();
        }
        assert!(!reader.is_finished(), "closed while the phone talked");
        let talked = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("never closed")
            .unwrap();
        let silent = talked.elapsed();
        assert!(silent >= QUICK.silence, "{silent:?}");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        match events.try_recv() {
            Ok(WsEvent::Text(ConnId(1), text)) => assert_eq!(text, "hello"),
            other => panic!("{other:?}"),
        }
        drop(phone);
    }

    #[test]
    fn runs_of_rosters_become_their_last_and_order_is_kept() {
        let batch = vec![
            roster("a"),
            roster("b"),
            roster("c"),
            error("x"),
            roster("d"),
            error("y"),
            roster("e"),
            roster("f"),
            WsCommand::Close,
        ];
        assert_eq!(
            describe(&coalesce_rosters(batch)),
            ["roster c", "error x", "roster d", "error y", "roster f", "close"]
        );
        assert!(coalesce_rosters(Vec::new()).is_empty());
    }
}
