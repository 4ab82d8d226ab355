//! The signalling WebSocket at `/ws`: one task per connection, relaying text frames to the
//! hub and the hub's messages back. The call's meaning lives in `call`; this is transport.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::WebState;
use crate::call::protocol::{ServerMsg, MAX_CLIENT_MESSAGE_BYTES};
use crate::call::ConnId;

/// Messages waiting to be written to one connection. A phone that does not read them is
/// closed when this fills, rather than buffered without end.
pub const OUTBOUND_QUEUE: usize = 32;

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
}

/// Cross-site pages must not open signalling sockets from a visitor's browser.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => {
            origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                == Some(host)
        }
        // Non-browser clients send no Origin; they still need a valid token.
        (Some(_), None) => true,
        _ => false,
    }
}

pub(super) async fn websocket(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| signalling(socket, state, peer.ip()))
}

async fn signalling(socket: WebSocket, state: WebState, from: IpAddr) {
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let (tx, mut commands) = mpsc::channel(OUTBOUND_QUEUE);
    let open = WsEvent::Open {
        conn,
        from,
        commands: tx,
    };
    if state.hub.send(open).await.is_err() {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            match command {
                WsCommand::Send(msg) => {
                    let Ok(text) = serde_json::to_string(&msg) else {
                        continue;
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                WsCommand::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            }
        }
    });
    let hub = state.hub.clone();
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text)
                    if hub
                        .send(WsEvent::Text(conn, text.to_string()))
                        .await
                        .is_err() =>
                {
                    break
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // Whichever ends first (client gone, or hub closed us) ends the session.
    tokio::pin!(writer);
    tokio::select! {
        _ = reader => writer.abort(),
        _ = &mut writer => {}
    }
    let _ = state.hub.send(WsEvent::Closed(conn)).await;
}
