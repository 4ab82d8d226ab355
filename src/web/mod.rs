//! HTTPS: the join page (`page`), the signalling WebSocket (`signalling`), Hearth's own
//! certificate authority (`tls`), and the plain-HTTP listener that redirects (`redirect`);
//! connections counted, capped and timed out (`limits`), signalling messages rate-limited
//! (`rate`).

pub mod limits;
mod page;
pub mod rate;
pub mod redirect;
pub mod signalling;
pub mod tls;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use tokio::sync::mpsc;

use signalling::WsEvent;

/// What every request handler shares.
#[derive(Clone)]
pub struct WebState {
    /// Where signalling connections report to (the hub).
    hub: mpsc::Sender<WsEvent>,
    /// Connection ids, unique for the daemon's life.
    next_conn: Arc<AtomicU64>,
    /// Hearth's CA certificate, offered to phones at /hearth-ca.pem.
    ca_pem: Arc<str>,
}

impl WebState {
    pub fn new(hub: mpsc::Sender<WsEvent>, ca_pem: &str) -> WebState {
        WebState {
            hub,
            next_conn: Arc::new(AtomicU64::new(1)),
            ca_pem: Arc::from(ca_pem),
        }
    }
}

pub fn app(state: WebState) -> Router {
    use page::{asset, ca_certificate, JOIN_CSS, JOIN_HTML, JOIN_JS};
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
        .route("/ws", get(signalling::websocket))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use page::{JOIN_CSS, JOIN_HTML, JOIN_JS};
    use tower::ServiceExt;

    fn state() -> (WebState, mpsc::Receiver<WsEvent>) {
        let (tx, rx) = mpsc::channel(8);
        (WebState::new(tx, "-----BEGIN CERTIFICATE-----\n"), rx)
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
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
        let app = app(state).layer(axum::extract::connect_info::MockConnectInfo(peer));
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
