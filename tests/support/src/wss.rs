//! A signalling client that trusts only the daemon's own CA, as a phone that installed it would.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::daemon::Daemon;

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(daemon: &Daemon) -> Result<Socket> {
    let request = daemon.ws_url().into_client_request()?;
    let origin = format!("https://127.0.0.1:{}", daemon.https_port);
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        with_origin(request, &origin)?,
        None,
        false,
        Some(connector(daemon)?),
    )
    .await
    .context("connecting to signalling")?;
    Ok(socket)
}

/// Connect from a loopback address of the test's choosing (each its own guesser, as far as
/// the daemon's per-address limits go), with the page's own origin or `origin`. A refused
/// handshake is the `tungstenite::Error::Http` in the error chain.
pub async fn connect_from(
    daemon: &Daemon,
    from: std::net::Ipv4Addr,
    origin: Option<&str>,
) -> Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    let stream = socket
        .connect(([127, 0, 0, 1], daemon.https_port).into())
        .await
        .with_context(|| format!("connecting from {from}"))?;
    let own = format!("https://127.0.0.1:{}", daemon.https_port);
    let request = with_origin(
        daemon.ws_url().into_client_request()?,
        origin.unwrap_or(&own),
    )?;
    let (socket, _) = tokio_tungstenite::client_async_tls_with_config(
        request,
        stream,
        None,
        Some(connector(daemon)?),
    )
    .await?;
    Ok(socket)
}

fn with_origin(
    mut request: tokio_tungstenite::tungstenite::handshake::client::Request,
    origin: &str,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    request.headers_mut().insert("origin", origin.parse()?);
    Ok(request)
}

/// TLS that trusts only the daemon's own CA.
fn connector(daemon: &Daemon) -> Result<Connector> {
    Ok(Connector::Rustls(crate::attack::tls_config(daemon)?))
}

pub async fn send(socket: &mut Socket, value: serde_json::Value) -> Result<()> {
    socket.send(Message::Text(value.to_string().into())).await?;
    Ok(())
}

/// The next text message, or None when the server closed the socket.
pub async fn next(socket: &mut Socket) -> Result<Option<serde_json::Value>> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .map_err(|_| anyhow!("no message from the server within 10 s"))?;
        match message {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Every message until the server closes the socket.
pub async fn until_closed(socket: &mut Socket) -> Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    while let Some(message) = next(socket).await? {
        all.push(message);
    }
    Ok(all)
}
