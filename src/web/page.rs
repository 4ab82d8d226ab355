//! The join page, the owner page and their assets, served with strict headers, and Hearth's
//! CA certificate for phones that want to trust the box.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::WebState;

pub(super) const JOIN_HTML: &str = include_str!("assets/join.html");
pub(super) const JOIN_JS: &str = include_str!("assets/join.js");
pub(super) const JOIN_CSS: &str = include_str!("assets/join.css");
pub(super) const OWNER_HTML: &str = include_str!("assets/owner.html");
pub(super) const OWNER_JS: &str = include_str!("assets/owner.js");
pub(super) const OWNER_CSS: &str = include_str!("assets/owner.css");
pub(super) const SETUP_HTML: &str = include_str!("assets/setup.html");
pub(super) const SETUP_JS: &str = include_str!("assets/setup.js");

/// Nothing is loaded from anywhere but Hearth itself.
pub(super) const CSP: &str = "default-src 'self'; connect-src 'self'; media-src 'self' blob: mediastream:; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The join page uses the camera and mic; the owner page never does, but shares links.
const JOIN_PERMISSIONS: &str = "camera=(self), microphone=(self), geolocation=()";
const OWNER_PERMISSIONS: &str =
    "camera=(), microphone=(), geolocation=(), clipboard-write=(self), web-share=(self)";

pub(super) async fn asset(body: &'static str, content_type: &'static str) -> Response {
    strict(body, content_type, JOIN_PERMISSIONS)
}

pub(super) async fn owner_asset(body: &'static str, content_type: &'static str) -> Response {
    strict(body, content_type, OWNER_PERMISSIONS)
}

fn strict(body: &'static str, content_type: &'static str, permissions: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Tokens live in the fragment, which browsers never send; no-referrer is the backstop.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("permissions-policy", HeaderValue::from_static(permissions));
    response
}

pub(super) async fn ca_certificate(State(state): State<WebState>) -> Response {
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
