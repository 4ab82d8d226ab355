//! The plain-HTTP listener: its only job is to send browsers to HTTPS.

use axum::http::Uri;
use axum::response::Redirect;
use axum::Router;

/// The plain-HTTP app: everything redirects to the same path on HTTPS at `host`, the host the
/// join links use (the configured hostname, else the box's address). The request's `Host`
/// header is never used: whoever sends the request must not choose where the browser goes.
pub fn redirect_app(https_port: u16, host: String) -> Router {
    Router::new().fallback(move |uri: Uri| {
        let location = format!(
            "https://{host}:{https_port}{}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        async move { Redirect::permanent(&location) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    async fn location(host_header: &str, path: &str) -> (StatusCode, String) {
        let response = redirect_app(8443, "hearth.local".into())
            .oneshot(
                Request::get(path)
                    .header(header::HOST, host_header)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let location = response.headers()[header::LOCATION].to_str().unwrap();
        (response.status(), location.to_string())
    }

    #[tokio::test]
    async fn plain_http_redirects_to_the_configured_host_whatever_the_host_header_says() {
        assert_eq!(
            location("hearth.local:8080", "/join?x=1").await,
            (
                StatusCode::PERMANENT_REDIRECT,
                "https://hearth.local:8443/join?x=1".to_string()
            )
        );
        for host in [
            "evil.example",
            "127.0.0.1:8080",
            "bad host\"><",
            "[::1]:8080",
        ] {
            assert_eq!(
                location(host, "/").await.1,
                "https://hearth.local:8443/",
                "Host: {host}"
            );
        }
    }
}
