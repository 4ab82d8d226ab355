//! Wiring: state dir, config, certificate, sockets, the hub, the web servers, signals.

pub mod control;
pub mod hub;
pub mod notify;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::sync::{mpsc, watch};

use crate::call::invite::InviteStore;
use crate::call::room::Room;
use crate::call::sfu::Sfu;
use crate::call::Call;
use crate::config::board::Board;
use crate::config::Config;
use crate::daemon::hub::{BoxMedia, Hub, PrivacyControl};
use crate::web::{self, WebState};

pub struct RunOptions {
    pub state_dir: PathBuf,
    pub config: Config,
    pub board: Board,
    pub lan: bool,
}

/// Where the daemon's state lives unless `--state-dir` says otherwise: systemd's
/// `StateDirectory`, `/var/lib/hearth` for a binary installed under /usr, else the user's
/// XDG state dir.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    let installed = std::env::current_exe()
        .map(|p| p.starts_with("/usr"))
        .unwrap_or(false);
    if installed {
        return PathBuf::from("/var/lib/hearth");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hearth")
}

pub fn ensure_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set permissions on {}", dir.display()))
}

fn hostname() -> String {
    // /proc/sys is hidden inside the service's sandbox (ProcSubset=pid); /etc/hostname is not.
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "hearth".to_string())
}

/// The first non-loopback IPv4 address: what a phone on the LAN reaches.
fn lan_ipv4() -> Option<IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

fn bind_tcp(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!("port {} is already in use ({what})", addr.port()),
        _ => anyhow!("cannot listen on {addr} ({what}): {e}"),
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub async fn run(options: RunOptions) -> Result<()> {
    let RunOptions {
        state_dir,
        config,
        board,
        lan,
    } = options;
    ensure_state_dir(&state_dir)?;
    let lan = lan || board.on_lan_by_default();

    let (listen_ip, media_ip): (IpAddr, IpAddr) = if lan {
        let media = config.web.lan_address.or_else(lan_ipv4).ok_or_else(|| {
            anyhow!("--lan: this machine has no network address besides loopback")
        })?;
        (
            config
                .web
                .lan_address
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            media,
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
    };

    let host = if config.web.hostname.is_empty() {
        hostname()
    } else {
        config.web.hostname.clone()
    };
    let mut dns_names = vec![
        host.clone(),
        format!("{host}.local"),
        "localhost".to_string(),
    ];
    dns_names.dedup();
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if lan {
        ips.extend(
            if_addrs::get_if_addrs()
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.ip())
                .filter(|ip| !ip.is_loopback()),
        );
    }
    let identity = crate::web::tls::ensure_identity(
        &state_dir,
        &dns_names,
        &ips,
        time::OffsetDateTime::now_utc(),
    )?;

    let https = bind_tcp(
        SocketAddr::new(listen_ip, config.web.https_port),
        "web.https_port",
    )?;
    let http = match config.web.http_port {
        0 => None,
        port => Some(bind_tcp(SocketAddr::new(listen_ip, port), "web.http_port")?),
    };
    let udp = std::net::UdpSocket::bind(SocketAddr::new(media_ip, config.call.udp_port)).map_err(
        |e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                anyhow!(
                    "port {} is already in use (call.udp_port)",
                    config.call.udp_port
                )
            }
            _ => anyhow!("cannot bind UDP {media_ip}:{}: {e}", config.call.udp_port),
        },
    )?;
    udp.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    let candidate = udp.local_addr()?;
    let control_listener = control::bind(&state_dir).await?;

    let link_host = if !config.web.hostname.is_empty() {
        config.web.hostname.clone()
    } else {
        match media_ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    };
    let base_url = format!("https://{link_host}:{}", config.web.https_port);

    let invites = InviteStore::load(&state_dir)?;
    let profile = board.profile(&config.board)?;
    // The dev board's simulated devices are files standing for device nodes (see capture).
    let dev_device = |name: &str| -> Result<Option<PathBuf>> {
        if board != Board::Dev {
            return Ok(None);
        }
        let dir = state_dir.join("dev");
        std::fs::create_dir_all(&dir)?;
        Ok(Some(dir.join(name)))
    };
    // Privacy first: nothing is captured until the switch has been read.
    let (lines, readings) = crate::privacy::gpio::start(&profile.gpio);
    let privacy = PrivacyControl {
        machine: crate::privacy::machine::Privacy::new(Duration::from_millis(
            profile.gpio.debounce_ms,
        )),
        lines,
        readings,
        log: state_dir.join("privacy.log"),
        hardware: board != Board::Dev,
        since: std::time::SystemTime::now(),
        changed_at: None,
        changed_at_for_release: None,
        release_latencies: Vec::new(),
        told_latencies: Vec::new(),
    };
    for action in privacy.machine.start() {
        if let crate::privacy::machine::Action::Led(on) = action {
            let _ = privacy.lines.led.send(on);
        }
    }
    let mut room = Room::new(config.call.max_participants);
    let mut sfu = Sfu::new(candidate);
    let media = if config.home.media {
        crate::media::init().map_err(|e| anyhow!(e))?;
        let (tx, rx) = mpsc::channel(64);
        let screen = crate::media::tv::Screen::start(&profile.display, &profile.audio);
        room.add_box(&config.home.name, std::time::Instant::now());
        sfu.enable_box(profile.encoder.min_kbps, profile.encoder.max_kbps);
        Some(BoxMedia {
            camera: crate::media::capture::camera(&profile, tx.clone(), dev_device("camera")?),
            mic: crate::media::capture::microphone(&profile, tx, dev_device("mic")?),
            screen,
            input: rx,
            simulated: board == Board::Dev,
            camera_problem: None,
            mic_problem: None,
            send_latencies: Vec::new(),
        })
    } else {
        None
    };
    let call = Call::new(room, sfu, invites);
    let mut hub = Hub {
        call,
        media,
        privacy,
        pending_out: Vec::new(),
        socket: udp,
        loopback_only: !lan,
        base_url,
        default_ttl: config.call.invite_ttl,
    };
    let (_, url) = hub.new_invite("Join link printed at start", config.call.invite_ttl)?;
    print_join_link(&url);
    hub.show_idle_screen();
    tracing::info!(
        "Hearth on board {board:?}: https port {}, media UDP port {}, {}",
        config.web.https_port,
        candidate.port(),
        if lan {
            "on the local network"
        } else {
            "loopback only"
        }
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ws_tx, ws_rx) = mpsc::channel(256);
    let (control_tx, control_rx) = mpsc::channel(16);
    let hub_task = tokio::spawn(hub.run(ws_rx, control_rx, shutdown_rx.clone()));
    tokio::spawn(control::serve(control_listener, control_tx));

    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        identity.chain_pem.into_bytes(),
        identity.key_pem.into_bytes(),
    )
    .await
    .context("loading Hearth's certificate")?;
    let handle = axum_server::Handle::new();
    let state = WebState {
        hub: ws_tx,
        next_conn: Arc::new(AtomicU64::new(1)),
        ca_pem: Arc::from(identity.ca_pem.as_str()),
    };
    let web_server = axum_server::from_tcp_rustls(https, tls)
        .handle(handle.clone())
        .serve(web::app(state).into_make_service());
    let web_task = tokio::spawn(web_server);
    if let Some(http) = http {
        let redirect = web::redirect_app(config.web.https_port, host);
        let handle = handle.clone();
        tokio::spawn(async move {
            let server = axum_server::from_tcp(http)
                .handle(handle)
                .serve(redirect.into_make_service());
            if let Err(e) = server.await {
                tracing::error!("http redirect server: {e}");
            }
        });
    }

    crate::daemon::notify::notify("READY=1");
    wait_for_signal().await?;
    crate::daemon::notify::notify("STOPPING=1");
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    handle.graceful_shutdown(Some(Duration::from_secs(2)));
    let _ = hub_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(3), web_task).await;
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    Ok(())
}

/// The join link is a secret: printed for the person at the terminal, never into systemd's
/// journal (there the TV's idle screen and `hearth invite` give links).
fn print_join_link(url: &str) {
    use std::io::Write;
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing::info!("started; a join link is on the TV, or run `hearth invite`");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Join: {url}");
    if let Ok(code) = qrcode::QrCode::new(url.as_bytes()) {
        let art = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        let _ = writeln!(out, "{art}");
    }
    let _ = out.flush();
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
