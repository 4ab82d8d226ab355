//! For tests that attack the daemon: its memory and file descriptors from /proc, the
//! service unit's limits applied to it, idle TLS connections from other loopback addresses,
//! and a phone's join timed from the page load to `welcome`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::daemon::Daemon;
use super::wss::{self, Socket};

/// The service unit the package installs.
pub const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../systemd/hearth.service");

/// A `Key=value` of the service unit, e.g. `LimitNOFILE`.
pub fn unit_setting(key: &str) -> Result<String> {
    let text = std::fs::read_to_string(UNIT)?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("{key} is not set in {UNIT}"))
}

/// A field of /proc/PID/status in kB, e.g. `VmRSS`.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The daemon's resident memory in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    Ok(status_kib(pid, "VmRSS")? as f64 / 1024.0)
}

/// File descriptors the process has open.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Give the process the unit's file-descriptor limit (soft and hard), as systemd would.
pub fn apply_unit_nofile(pid: u32) -> Result<u64> {
    let limit: u64 = unit_setting("LimitNOFILE")?.parse()?;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .context("prlimit (package util-linux)")?;
    if !status.success() {
        bail!("prlimit failed");
    }
    Ok(limit)
}

/// The largest value `sample` gives, every `every`, until the returned handle is asked.
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<f64>,
}

impl Sampler {
    pub fn start(every: Duration, sample: impl Fn() -> Option<f64> + Send + 'static) -> Sampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut max = f64::MIN;
            let mut tick = tokio::time::interval(every);
            loop {
                if let Some(value) = sample() {
                    max = max.max(value);
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return max,
                }
            }
        });
        Sampler { stop, task }
    }

    pub async fn max(self) -> f64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(f64::NAN)
    }
}

/// A client TLS config that trusts the daemon's CA.
pub fn tls_config(daemon: &Daemon) -> Result<Arc<rustls::ClientConfig>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let ca = daemon.state_dir.join("tls/ca.pem");
    for cert in CertificateDer::pem_file_iter(&ca).context("reading the daemon's CA")? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS connection that will never send a request.
pub struct IdleTls {
    stream: std::net::TcpStream,
    _tls: rustls::ClientConnection,
}

impl IdleTls {
    /// Whether the server has closed it (reads end or fail instead of waiting).
    pub fn closed_by_server(&mut self) -> bool {
        let _ = self.stream.set_nonblocking(true);
        // Bytes may be waiting (the server's session tickets): what counts is the end.
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
            }
        }
    }
}

/// Connect from `from` (a loopback address other than 127.0.0.1 is another "host") to the
/// daemon's HTTPS port and finish the TLS handshake, within 5 s.
pub async fn idle_tls(
    from: IpAddr,
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
) -> Result<IdleTls> {
    let to = SocketAddr::from(([127, 0, 0, 1], daemon.https_port));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    let mut stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    tokio::task::spawn_blocking(move || {
        let name = ServerName::IpAddress(to.ip().into());
        let mut tls = rustls::ClientConnection::new(config, name)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut stream)?;
        }
        Ok(IdleTls { stream, _tls: tls })
    })
    .await?
}

/// GET `path` over HTTPS from 127.0.0.1, as a browser loading the join page; the status line.
pub async fn https_get(daemon: &Daemon, path: &str) -> Result<String> {
    let config = tls_config(daemon)?;
    let port = daemon.https_port;
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = rustls::ClientConnection::new(config, name)?;
        let mut stream = rustls::StreamOwned::new(tls, tcp);
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        // The server closes without close_notify now and then: what was read counts.
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        Ok(text.lines().next().unwrap_or_default().to_string())
    })
    .await?
}

pub fn token_of(url: &str) -> &str {
    url.split_once('#')
        .map(|(_, t)| t)
        .expect("a token in the fragment")
}

pub fn join_msg(url: &str, name: &str) -> serde_json::Value {
    json!({"type": "join", "token": token_of(url), "name": name, "video_codecs": ["H264", "VP8"]})
}

/// A phone joins with `url`: signalling connected and `join` sent, its first answer
/// (`welcome` or `refused`) read, all within `limit`.
pub async fn join(
    daemon: &Daemon,
    url: &str,
    name: &str,
    limit: Duration,
) -> Result<(Socket, serde_json::Value)> {
    let attempt = async {
        let mut socket = wss::connect(daemon).await?;
        wss::send(&mut socket, join_msg(url, name)).await?;
        let first = wss::next(&mut socket)
            .await?
            .ok_or_else(|| anyhow!("closed before any answer"))?;
        Ok::<_, anyhow::Error>((socket, first))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| anyhow!("{name}: no answer to join within {limit:?}"))?
}

/// Read (and drop) everything until the server closes the socket: the time that took and
/// how many pings came. Reading also answers the pings.
pub async fn until_closed_within(
    socket: &mut Socket,
    limit: Duration,
) -> Result<(Duration, usize)> {
    let start = Instant::now();
    let read = async {
        let mut pings = 0;
        loop {
            match socket.next().await {
                None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return pings,
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(_)) => {}
            }
        }
    };
    let pings = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow!("still open after {limit:?}"))?;
    Ok((start.elapsed(), pings))
}

/// Poll `hearth status` until `check` holds, for at most `limit` (the daemon has no push
/// channel for tests).
pub async fn status_within(
    daemon: &Daemon,
    what: &str,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let status = daemon.status()?;
        if check(&status) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many people `hearth status` lists in the call.
pub fn participants(status: &serde_json::Value) -> usize {
    status["participants"].as_array().map_or(0, Vec::len)
}
