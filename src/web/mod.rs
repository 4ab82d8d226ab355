//! HTTPS: the join page (`page`), the signalling WebSocket (`signalling`), the owner page and
//! its API (`owner`), Hearth's own certificate authority (`tls`), certificates for the owner's
//! domain from an ACME CA (`acme`), which certificate each connection gets (`certs`), and the
//! plain-HTTP listener
//! that redirects (`redirect`); connections counted, capped and timed out (`limits`),
//! signalling messages rate-limited (`rate`).

pub mod acme;
pub mod certs;
pub mod limits;
pub mod owner;
mod page;
pub mod rate;
pub mod redirect;
pub mod setup;
pub mod signalling;
pub mod tls;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, Uri};
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

use crate::call::throttle::GuessThrottle;
use crate::daemon::control::Envelope;
use signalling::WsEvent;

/// What every request handler shares.
#[derive(Clone)]
pub struct WebState {
    /// Where signalling connections report to (the hub).
    hub: mpsc::Sender<WsEvent>,
    /// The hub's control requests, as the CLI sends them: the owner page's API.
    control: mpsc::Sender<Envelope>,
    /// Addresses that presented bad owner credentials or pairing codes.
    owner_throttle: Arc<Mutex<GuessThrottle>>,
    /// Connection ids, unique for the daemon's life.
    next_conn: Arc<AtomicU64>,
    /// Hearth's CA certificate, offered to phones at /hearth-ca.pem.
    ca_pem: Arc<str>,
}

impl WebState {
    pub fn new(
        hub: mpsc::Sender<WsEvent>,
        control: mpsc::Sender<Envelope>,
        ca_pem: &str,
    ) -> WebState {
        WebState {
            hub,
            control,
            owner_throttle: Arc::new(Mutex::new(GuessThrottle::default())),
            next_conn: Arc::new(AtomicU64::new(1)),
            ca_pem: Arc::from(ca_pem),
        }
    }
}

pub fn app(state: WebState) -> Router {
    use page::{asset, ca_certificate, owner_asset, JOIN_CSS, JOIN_HTML, JOIN_JS};
    use page::{OWNER_CSS, OWNER_HTML, OWNER_JS};
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
        .route(
            "/owner",
            get(|| owner_asset(OWNER_HTML, "text/html; charset=utf-8")),
        )
        .route(
            "/owner.js",
            get(|| owner_asset(OWNER_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/owner.css",
            get(|| owner_asset(OWNER_CSS, "text/css; charset=utf-8")),
        )
        .route("/owner/api", post(owner::api))
        .route("/owner/api/pair", post(owner::pair))
        .route("/hearth-ca.pem", get(ca_certificate))
        .route("/ws", get(signalling::websocket))
        .with_state(state)
}

/// Cross-site pages must not open signalling sockets or call the owner API from a visitor's
/// browser: a browser's Origin must be this very host. (HTTP/2 requests carry the host as
/// the URI's authority, not a Host header.) Non-browser clients send no Origin; they still
/// need a token or credential.
fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    // Two Host or Origin headers are no browser's: refused rather than one of them believed.
    if headers.get_all(header::HOST).iter().count() > 1
        || headers.get_all(header::ORIGIN).iter().count() > 1
    {
        return false;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    match (host, origin) {
        (Some(host), Some(origin)) => {
            origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                == Some(host)
        }
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use page::{JOIN_CSS, JOIN_HTML, JOIN_JS, OWNER_CSS, OWNER_HTML, OWNER_JS};
    use tower::ServiceExt;

    use crate::daemon::control::{self, Request as Control};

    fn state() -> (WebState, mpsc::Receiver<WsEvent>) {
        let (tx, rx) = mpsc::channel(8);
        let (control, _) = mpsc::channel(8);
        (
            WebState::new(tx, control, "-----BEGIN CERTIFICATE-----\n"),
            rx,
        )
    }

    /// A web state whose control requests a stand-in hub answers: an owner with the
    /// credential "good", a pairing code "open". Every request the hub saw, in order.
    fn with_hub() -> (WebState, std::sync::Arc<Mutex<Vec<Control>>>) {
        let (tx, _rx) = mpsc::channel(8);
        let (control, mut requests) = mpsc::channel::<Envelope>(8);
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = requests.recv().await {
                log.lock().unwrap().push(request.clone());
                let answer = match request {
                    Control::PairOwner { token, name } if token == "open" => control::Response::Ok(
                        serde_json::json!({ "credential": "good", "id": "0a", "name": name }),
                    ),
                    Control::PairOwner { .. } => control::Response::Error(
                        crate::owner::OwnerRefusal::PairingClosed.to_string(),
                    ),
                    Control::AsOwner { credential, .. } if credential != "good" => {
                        control::Response::Error(crate::owner::OwnerRefusal::NotOwner.to_string())
                    }
                    Control::AsOwner { request, .. } if !request.owner_may() => {
                        control::Response::Error(control::NOT_FOR_OWNERS.to_string())
                    }
                    Control::AsOwner { .. } => {
                        control::Response::Ok(serde_json::json!({ "asked": true }))
                    }
                    _ => control::Response::Error("not from the web".into()),
                };
                let _ = reply.send(answer);
            }
        });
        (WebState::new(tx, control, ""), seen)
    }

    const HOST: &str = "127.0.0.1:8443";

    fn post(path: &str) -> axum::http::request::Builder {
        Request::post(path)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("https://{HOST}"))
            .header(header::CONTENT_TYPE, "application/json")
    }

    async fn call(
        state: &WebState,
        request: Request<Body>,
        from: [u8; 4],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let peer = std::net::SocketAddr::from((from, 40000));
        let app = app(state.clone()).layer(axum::extract::connect_info::MockConnectInfo(peer));
        let response = app.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, value)
    }

    const STATUS: &str = r#"{"cmd":"status"}"#;

    #[tokio::test]
    async fn the_owner_api_refuses_strangers_other_sites_and_odd_requests() {
        let (state, seen) = with_hub();
        let home = [192, 168, 1, 20];
        let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
            (
                "no credential",
                post("/owner/api").body(STATUS.into()).unwrap(),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "not a bearer credential",
                post("/owner/api")
                    .header(header::AUTHORIZATION, "Basic Z29vZDo=")
                    .body(STATUS.into())
                    .unwrap(),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "another site's page",
                post("/owner/api")
                    .header(header::ORIGIN, "https://evil.example")
                    .header(header::AUTHORIZATION, "Bearer good")
                    .body(STATUS.into())
                    .unwrap(),
                StatusCode::FORBIDDEN,
            ),
            (
                "a cross-site fetch, whatever its origin says",
                post("/owner/api")
                    .header("sec-fetch-site", "cross-site")
                    .header(header::AUTHORIZATION, "Bearer good")
                    .body(STATUS.into())
                    .unwrap(),
                StatusCode::FORBIDDEN,
            ),
            (
                "a form post, not JSON",
                post("/owner/api")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::AUTHORIZATION, "Bearer good")
                    .body("cmd=status".into())
                    .unwrap(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "a body over 16 KiB",
                post("/owner/api")
                    .header(header::AUTHORIZATION, "Bearer good")
                    .body(format!(r#"{{"cmd":"rename","name":"{}"}}"#, "x".repeat(20_000)).into())
                    .unwrap(),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                "not a request",
                post("/owner/api")
                    .header(header::AUTHORIZATION, "Bearer good")
                    .body(r#"{"cmd":"shell","line":"id"}"#.into())
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (what, request, expected) in cases {
            let (status, headers, body) = call(&state, request, home).await;
            assert_eq!(status, expected, "{what}: {body}");
            assert!(body["error"].is_string(), "{what}: {body}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{what}");
            assert!(
                headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
                "{what}"
            );
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "refused before the hub: {:?}",
            seen.lock().unwrap()
        );

        // A preflight is not answered: no other site may call the API.
        let preflight = Request::options("/owner/api")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, "https://evil.example")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = call(&state, preflight, home).await;
        assert!(!status.is_success(), "{status}");
        assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

        // The hub decides who is an owner and what owners may do.
        let as_owner = |credential: &str, body: &str| {
            post("/owner/api")
                .header(header::AUTHORIZATION, format!("Bearer {credential}"))
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let (status, headers, body) = call(&state, as_owner("stranger", STATUS), home).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        let snapshot = r#"{"cmd":"snapshot","path":"/tmp/x.png"}"#;
        let (status, _, body) = call(&state, as_owner("good", snapshot), home).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, headers, body) = call(&state, as_owner("good", STATUS), home).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, serde_json::json!({ "asked": true }))
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[2],
            Control::AsOwner {
                credential: "good".into(),
                request: Box::new(Control::Status {})
            }
        );
    }

    #[tokio::test]
    async fn pairing_works_with_the_code_and_guessing_codes_is_throttled() {
        let (state, _seen) = with_hub();
        let pair = |token: &str| {
            let body = format!(r#"{{"token":"{token}","name":"Mum"}}"#);
            post("/owner/api/pair").body(Body::from(body)).unwrap()
        };
        let (status, _, body) = call(&state, pair("open"), [192, 168, 1, 20]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["credential"], "good");

        let guesser = [192, 168, 1, 66];
        for i in 0..crate::call::throttle::FAILURES_PER_WINDOW {
            let (status, _, body) = call(&state, pair(&format!("guess{i}")), guesser).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        }
        // Now even the right code waits a minute from that address; others are not held up.
        let (status, _, body) = call(&state, pair("open"), guesser).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let (status, _, _) = call(&state, pair("open"), [192, 168, 1, 21]).await;
        assert_eq!(status, StatusCode::OK);
        // Guessing credentials counts the same.
        let body = STATUS;
        let request = post("/owner/api")
            .header(header::AUTHORIZATION, "Bearer good")
            .body(Body::from(body))
            .unwrap();
        let (status, _, _) = call(&state, request, guesser).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn owner_page_is_self_contained_and_strict() {
        let (state, _rx) = state();
        for path in ["/owner", "/owner.js", "/owner.css"] {
            let response = app(state.clone())
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            assert!(headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"));
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
            assert!(headers["permissions-policy"]
                .to_str()
                .unwrap()
                .contains("camera=()"));
        }
        for text in [OWNER_HTML, OWNER_JS, OWNER_CSS] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "external URL in an owner asset"
            );
        }
        // The page never writes markup from what the box says (names are text).
        assert!(!OWNER_JS.contains("innerHTML"));
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
