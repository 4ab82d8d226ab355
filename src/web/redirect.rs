//! The plain-HTTP listener: its only job is to send browsers to HTTPS.

use axum::http::{header, HeaderMap, Uri};
use axum::response::Redirect;
use axum::Router;

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
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

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
