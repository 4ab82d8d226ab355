//! HTTPS: the join page, its assets, Hearth's CA certificate, and the signalling WebSocket.
//! Plus the plain-HTTP listener whose only job is to redirect to HTTPS.

pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::call::protocol::MAX_CLIENT_MESSAGE_BYTES;
use crate::call::ConnId;
use crate::daemon::hub::{WsCommand, WsEvent};

const JOIN_HTML: &str = include_str!("assets/join.html");
const JOIN_JS: &str = include_str!("assets/join.js");
const JOIN_CSS: &str = include_str!("assets/join.css");

/// Nothing is loaded from anywhere but Hearth itself.
const CSP: &str = "default-src 'self'; connect-src 'self'; media-src 'self' blob: mediastream:; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub struct WebState {
    pub hub: mpsc::Sender<WsEvent>,
    pub next_conn: Arc<AtomicU64>,
    pub ca_pem: Arc<str>,
}

pub fn app(state: WebState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/join") }))
        .route(
            "/join",
            get(|| asset(JOIN_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/join.js",
            get(|| asset(JOIN_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/join.css",
            get(|| asset(JOIN_CSS, "text/css; charset=utf-8")),
        )
        .route("/hearth-ca.pem", get(ca_certificate))
        .route("/ws", get(websocket))
        .with_state(state)
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // The token lives in the fragment, which browsers never send; no-referrer is the backstop.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
    );
    response
}

async fn ca_certificate(State(state): State<WebState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"hearth-ca.pem\"",
            ),
        ],
        state.ca_pem.to_string(),
    )
        .into_response()
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

async fn websocket(
    State(state): State<WebState>,
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
        .on_upgrade(move |socket| signalling(socket, state))
}

async fn signalling(socket: WebSocket, state: WebState) {
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let (tx, mut commands) = mpsc::unbounded_channel();
    if state.hub.send(WsEvent::Open(conn, tx)).await.is_err() {
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

/// The plain-HTTP app: everything redirects to the same path on HTTPS.
pub fn redirect_app(https_port: u16, fallback_host: String) -> Router {
    Router::new().fallback(move |headers: HeaderMap, uri: Uri| {
        let fallback_host = fallback_host.clone();
        async move {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(strip_port)
                .filter(|h| is_plain_host(h))
                .unwrap_or(&fallback_host)
                .to_string();
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Redirect::permanent(&format!("https://{host}:{https_port}{path}"))
        }
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Only hostnames and IP literals are echoed into a redirect.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state() -> (WebState, mpsc::Receiver<WsEvent>) {
        let (tx, rx) = mpsc::channel(8);
        (
            WebState {
                hub: tx,
                next_conn: Arc::new(AtomicU64::new(1)),
                ca_pem: Arc::from("-----BEGIN CERTIFICATE-----\n"),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn join_page_is_self_contained_and_strict() {
        let (state, _rx) = state();
        let response = app(state)
            .oneshot(Request::get("/join").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert!(headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        // Nothing fetched from elsewhere.
        for text in [JOIN_HTML, JOIN_JS, JOIN_CSS] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "external URL in an asset"
            );
        }
        assert!(JOIN_HTML.contains(">Join<"));
    }

    #[tokio::test]
    async fn cross_origin_websocket_is_refused() {
        let (state, _rx) = state();
        let request = Request::get("/ws")
            .header(header::HOST, "127.0.0.1:8443")
            .header(header::ORIGIN, "https://evil.example")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Body::empty())
            .unwrap();
        let response = app(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn plain_http_redirects_to_https() {
        let response = redirect_app(8443, "hearth".into())
            .oneshot(
                Request::get("/join?x=1")
                    .header(header::HOST, "127.0.0.1:8080")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://127.0.0.1:8443/join?x=1"
        );
        let response = redirect_app(8443, "hearth".into())
            .oneshot(
                Request::get("/")
                    .header(header::HOST, "bad host\"><")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()[header::LOCATION], "https://hearth:8443/");
    }
}
