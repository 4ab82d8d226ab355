//! The owner page's API, on the same origin as the join page and as strict: JSON in and out,
//! small bodies, no CORS, cross-site requests refused. The web layer decides nothing itself:
//! it hands `Request::PairOwner` and `Request::AsOwner` to the hub over the control channel
//! the CLI uses, and turns the hub's answer into a status code.
//!
//! - `POST /owner/api/pair` `{"token", "name"}` → `{"credential", "id", "name"}`: the code
//!   the TV showed after the switch pattern at the box, for an owner credential.
//! - `POST /owner/api` with `Authorization: Bearer <credential>` and one control request
//!   (`{"cmd": "status"}`, `{"cmd": "invite_create", ...}`; see `Request::owner_may`) → the
//!   hub's answer.
//!
//! Refusals are `{"error": "..."}` with 401 (no credential, not an owner, withdrawn), 403 (a
//! request owners may not make, a used or expired pairing code, a cross-site request), 400
//! (unreadable, or the box could not do it), 413, 415, 429 (too many bad credentials or codes
//! from one address) or 503. Credentials and codes are never logged.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::WebState;
use crate::call::throttle::redacted;
use crate::daemon::control::{self, Request, NOT_FOR_OWNERS};
use crate::owner::OwnerRefusal;

/// Largest request body; a control request is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The hub answers a request once its effect has happened, within 10 s; a little more here.
const HUB_LIMIT: Duration = Duration::from_secs(15);
/// Longest credential or pairing code looked at (both are 22 characters).
const MAX_SECRET_CHARS: usize = 64;

const UNREADABLE: &str = "That is not a request the box understands.";
const TOO_MANY: &str =
    "Too many attempts with codes that do not work. Wait a minute, then try again.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pairing {
    token: String,
    name: String,
}

/// `POST /owner/api/pair`.
pub(super) async fn pair(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match checked_body(&headers, &uri, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let Ok(Pairing { token, name }) = serde_json::from_slice::<Pairing>(&body) else {
        return error(StatusCode::BAD_REQUEST, UNREADABLE);
    };
    if state.throttled(peer.ip()) {
        return error(StatusCode::TOO_MANY_REQUESTS, TOO_MANY);
    }
    if !plausible_secret(&token) {
        state.failed(peer.ip());
        return error(
            StatusCode::FORBIDDEN,
            &OwnerRefusal::PairingClosed.to_string(),
        );
    }
    match ask(&state, Request::PairOwner { token, name }).await {
        Ok(answer) => ok(answer),
        Err((status, message)) => {
            if status == StatusCode::FORBIDDEN {
                state.failed(peer.ip());
            }
            error(status, &message)
        }
    }
}

/// `POST /owner/api`: one control request from an owner's phone.
pub(super) async fn api(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match checked_body(&headers, &uri, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let Some(credential) = bearer(&headers) else {
        return not_owner(OwnerRefusal::NotOwner);
    };
    let Ok(request) = serde_json::from_slice::<Request>(&body) else {
        return error(StatusCode::BAD_REQUEST, UNREADABLE);
    };
    // Who is asking first (401), then what they ask (403): the hub checks both.
    if state.throttled(peer.ip()) {
        return error(StatusCode::TOO_MANY_REQUESTS, TOO_MANY);
    }
    if !plausible_secret(&credential) {
        state.failed(peer.ip());
        return not_owner(OwnerRefusal::NotOwner);
    }
    let request = Request::AsOwner {
        credential,
        request: Box::new(request),
    };
    match ask(&state, request).await {
        Ok(answer) => ok(answer),
        Err((status, message)) => {
            if status == StatusCode::UNAUTHORIZED {
                state.failed(peer.ip());
                return challenge(error(status, &message));
            }
            error(status, &message)
        }
    }
}

impl WebState {
    fn throttled(&self, ip: IpAddr) -> bool {
        let mut throttle = self
            .owner_throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        throttle.prune(now);
        let throttled = throttle.is_throttled(ip, now);
        if throttled && throttle.record_throttled(ip, now) {
            tracing::info!(
                "owner requests from {} refused for a minute: too many bad codes",
                redacted(ip)
            );
        }
        throttled
    }

    fn failed(&self, ip: IpAddr) {
        let mut throttle = self
            .owner_throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if throttle.record_failure(ip, Instant::now()) {
            tracing::info!("an owner code or credential refused from {}", redacted(ip));
        }
    }
}

/// The hub's answer, or the status and message to refuse with.
async fn ask(state: &WebState, request: Request) -> Result<Value, (StatusCode, String)> {
    let shutting_down = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "The box is busy or restarting. Try again in a moment.".to_string(),
        )
    };
    let (tx, rx) = oneshot::channel();
    let asked = async {
        state.control.send((request, tx)).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(HUB_LIMIT, asked).await {
        Ok(Some(control::Response::Ok(value))) => Ok(value),
        Ok(Some(control::Response::Error(message))) => Err((refusal_status(&message), message)),
        _ => Err(shutting_down()),
    }
}

/// The status for the hub's refusal: who is asking (401), what they ask (403), or what
/// happened (400).
fn refusal_status(message: &str) -> StatusCode {
    let is = |refusal: OwnerRefusal| message == refusal.to_string();
    if is(OwnerRefusal::NotOwner) || is(OwnerRefusal::Revoked) {
        StatusCode::UNAUTHORIZED
    } else if is(OwnerRefusal::PairingClosed) || message == NOT_FOR_OWNERS {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// The body of a same-origin JSON request, at most [`MAX_BODY_BYTES`].
pub(super) async fn checked_body(
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Vec<u8>, Response> {
    if !super::same_origin(headers, uri) || cross_site_fetch(headers) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Requests from other websites are refused.",
        ));
    }
    let one_type = headers.get_all(header::CONTENT_TYPE).iter().count() == 1;
    let json = one_type
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send JSON (Content-Type: application/json).",
        ));
    }
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "That request is too large.",
        )),
    }
}

/// Browsers say where a request comes from; anything but this origin (or a typed address)
/// is refused, whatever its Origin header says.
fn cross_site_fetch(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty())
        .then(|| credential.to_string())
}

/// Credentials and pairing codes are base64url; anything else is not looked up.
fn plausible_secret(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_SECRET_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn not_owner(refusal: OwnerRefusal) -> Response {
    challenge(error(StatusCode::UNAUTHORIZED, &refusal.to_string()))
}

/// A 401 says which credential it wants (RFC 9110).
fn challenge(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"hearth owner\""),
    );
    response
}

pub(super) fn ok(value: Value) -> Response {
    json_response(StatusCode::OK, &value)
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_status_codes() {
        let text = |r: OwnerRefusal| r.to_string();
        assert_eq!(
            refusal_status(&text(OwnerRefusal::NotOwner)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refusal_status(&text(OwnerRefusal::Revoked)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refusal_status(&text(OwnerRefusal::PairingClosed)),
            StatusCode::FORBIDDEN
        );
        assert_eq!(refusal_status(NOT_FOR_OWNERS), StatusCode::FORBIDDEN);
        assert_eq!(
            refusal_status("no invite with id x"),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn only_bearer_credentials_that_look_like_ours_are_looked_up() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            "Bearer AAAAAAAAAAAAAAAAAAAAAA".parse().unwrap(),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("AAAAAAAAAAAAAAAAAAAAAA"));
        assert!(plausible_secret("AAAAAAAAAAAAAAAAAAAA-_"));
        assert!(!plausible_secret("a b"));
        assert!(!plausible_secret(&"A".repeat(65)));
        assert!(!plausible_secret(""));
    }
}
