//! The setup page, served only while the box's own Wi-Fi is open and only to phones on it
//! (having joined it means having read its password on the TV). It offers the networks the
//! box saw and leaves the owner's pick in Hearth's state dir, as a setup file's `[wifi]`
//! table, for `hearth setup --request` (root, started by a systemd path unit) to apply.
//!
//! - `GET /setup` (and its script and styles): the page.
//! - `GET /setup/api/networks` → `{"hotspot", "networks"}`.
//! - `POST /setup/api/wifi` `{"name", "password", "country"}` → `{"name"}` once written.
//!
//! To anyone else each of these is 404: the page does not exist outside setup.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

use super::owner::{checked_body, error, ok};
use super::page::{owner_asset, JOIN_CSS, OWNER_CSS, SETUP_HTML, SETUP_JS};
use crate::setup::hotspot::Hotspot;
use crate::setup::{wifi_request, Wifi, REQUEST_FILE};

#[derive(Clone)]
pub struct SetupState {
    hotspot: watch::Receiver<Option<Hotspot>>,
    /// Where the request is left for root to apply.
    state_dir: PathBuf,
}

impl SetupState {
    pub fn new(hotspot: watch::Receiver<Option<Hotspot>>, state_dir: PathBuf) -> SetupState {
        SetupState { hotspot, state_dir }
    }

    /// The hotspot, if it is open, `peer` is on it and the request names the box by its
    /// address there (a page from elsewhere that rebinds its own name to the box's address
    /// still says its own name).
    fn for_peer(&self, peer: SocketAddr, headers: &HeaderMap, uri: &Uri) -> Option<Hotspot> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))?;
        let named = host
            .rsplit_once(':')
            .map_or(host, |(name, _port)| name)
            .parse::<std::net::Ipv4Addr>()
            .ok();
        self.hotspot
            .borrow()
            .as_ref()
            .filter(|h| h.serves(peer.ip()) && named == Some(h.address))
            .cloned()
    }
}

pub fn routes(state: SetupState) -> Router {
    Router::new()
        .route(
            "/setup",
            get(|s, p, h, u| asset(s, p, (h, u), SETUP_HTML, HTML)),
        )
        .route(
            "/setup/setup.js",
            get(|s, p, h, u| asset(s, p, (h, u), SETUP_JS, JS)),
        )
        .route(
            "/setup/join.css",
            get(|s, p, h, u| asset(s, p, (h, u), JOIN_CSS, CSS)),
        )
        .route(
            "/setup/owner.css",
            get(|s, p, h, u| asset(s, p, (h, u), OWNER_CSS, CSS)),
        )
        .route("/setup/api/networks", get(networks))
        .route("/setup/api/wifi", post(pick_wifi))
        .with_state(state)
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

fn not_here() -> Response {
    (StatusCode::NOT_FOUND, "Not found").into_response()
}

async fn asset(
    State(state): State<SetupState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    (headers, uri): (HeaderMap, Uri),
    body: &'static str,
    content_type: &'static str,
) -> Response {
    match state.for_peer(peer, &headers, &uri) {
        Some(_) => owner_asset(body, content_type).await,
        None => not_here(),
    }
}

async fn networks(
    State(state): State<SetupState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match state.for_peer(peer, &headers, &uri) {
        Some(hotspot) => ok(json!({ "hotspot": hotspot.ssid, "networks": hotspot.networks })),
        None => not_here(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pick {
    name: String,
    password: String,
    country: String,
}

async fn pick_wifi(
    State(state): State<SetupState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if state.for_peer(peer, &headers, &uri).is_none() {
        return not_here();
    }
    let body = match checked_body(&headers, &uri, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let Ok(pick) = serde_json::from_slice::<Pick>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "That is not a request the box understands.",
        );
    };
    let wifi = Wifi {
        name: pick.name,
        password: pick.password,
        country: pick.country.trim().to_ascii_uppercase(),
    };
    if let Err(why) = wifi.check() {
        return error(StatusCode::BAD_REQUEST, &capitalised(&why.to_string()));
    }
    let file = state.state_dir.join(REQUEST_FILE);
    let text = wifi_request(&wifi);
    let written =
        tokio::task::spawn_blocking(move || crate::durable::write(&file, text.as_bytes(), 0o600))
            .await;
    match written {
        Ok(Ok(())) => {
            tracing::info!("setup page: the owner picked a Wi-Fi network");
            ok(json!({ "name": wifi.name }))
        }
        Ok(Err(e)) => {
            tracing::warn!("setup page: cannot write the Wi-Fi request: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The box could not save that. Try again.",
            )
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "The box is restarting."),
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect::<String>() + ".",
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, Request};
    use tower::ServiceExt;

    fn hotspot() -> Hotspot {
        Hotspot::new(&[7; 16], vec!["Home".into(), "Next door".into()])
    }

    async fn send(
        app: &Router,
        request: Request<Body>,
        from: [u8; 4],
    ) -> (StatusCode, serde_json::Value) {
        let app = app
            .clone()
            .layer(axum::extract::connect_info::MockConnectInfo(
                SocketAddr::from((from, 50000)),
            ));
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn pick(body: &str) -> Request<Body> {
        Request::post("/setup/api/wifi")
            .header(header::HOST, "10.42.0.1:8080")
            .header(header::ORIGIN, "http://10.42.0.1:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn only_phones_on_the_open_hotspot_see_the_page_and_a_pick_is_left_for_root() {
        let dir = std::env::temp_dir().join(format!("hearth-setup-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = watch::channel(None);
        let app = routes(SetupState::new(rx, dir.clone()));
        let phone = [10, 42, 0, 23];
        let get = |path: &str, host: &str| {
            Request::get(path)
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap()
        };
        let page = || get("/setup", "10.42.0.1:8080");
        // No hotspot: nothing, to anyone.
        assert_eq!(send(&app, page(), phone).await.0, StatusCode::NOT_FOUND);
        tx.send_replace(Some(hotspot()));
        assert_eq!(send(&app, page(), phone).await.0, StatusCode::OK);
        // Not on the hotspot (the home network, loopback): nothing.
        for other in [[192, 168, 1, 5], [127, 0, 0, 1]] {
            assert_eq!(send(&app, page(), other).await.0, StatusCode::NOT_FOUND);
            let good = r#"{"name":"Home","password":"12345678","country":"gb"}"#;
            assert_eq!(send(&app, pick(good), other).await.0, StatusCode::NOT_FOUND);
        }
        // A page from elsewhere whose name now points at the box still says its own name.
        let rebound = get("/setup/api/networks", "evil.example:8080");
        assert_eq!(send(&app, rebound, phone).await.0, StatusCode::NOT_FOUND);
        let list = get("/setup/api/networks", "10.42.0.1:8080");
        let (status, body) = send(&app, list, phone).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["networks"], json!(["Home", "Next door"]));

        let (status, body) = send(
            &app,
            pick(r#"{"name":"Home","password":"short","country":"GB"}"#),
            phone,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "The Wi-Fi password must be 8 to 63 characters, without line breaks."
        );
        assert!(!dir.join(REQUEST_FILE).exists());
        let (status, _) = send(
            &app,
            pick(r#"{"name":"Home","password":"12345678"}"#),
            phone,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, body) = send(
            &app,
            pick(r#"{"name":"Home","password":"correct horse","country":"gb"}"#),
            phone,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let request = std::fs::read_to_string(dir.join(REQUEST_FILE)).unwrap();
        let setup = crate::setup::Setup::parse(&request).unwrap();
        let wifi = setup.wifi.unwrap();
        assert_eq!(
            (
                wifi.name.as_str(),
                wifi.password.as_str(),
                wifi.country.as_str()
            ),
            ("Home", "correct horse", "GB")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
