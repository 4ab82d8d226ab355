//! The daemon: start-up wiring (`run`), the hub task that does the pure cores' I/O (`hub`,
//! with `dispatch`, `requests` and `status`), the box's devices (`box_media`), the control
//! socket the CLI talks to (`control`), the invites and owners files (`state_file`), timing figures
//! (`metrics`), sockets (`network`) and systemd notification (`notify`).

pub mod box_media;
pub mod control;
mod dispatch;
pub mod hub;
pub mod media_socket;
pub mod metrics;
pub mod network;
pub mod notify;
mod owners;
mod requests;
pub mod setup_hotspot;
pub mod state_file;
mod status;
mod udp_batch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::sync::{mpsc, watch};

use crate::call::room::Room;
use crate::call::sfu::{Candidates, Sfu};
use crate::call::{Call, CallLimits};
use crate::config::board::{Board, Profile};
use crate::config::Config;
use crate::privacy::PrivacyControl;
use crate::reach::dns_update::DnsStatus;
use crate::reach::mapper::MapperConfig;
use crate::reach::Reach;
use crate::web::acme::CertificateStatus;
use crate::web::limits::{self, ConnCaps, Limiter, Registry};
use crate::web::{self, tls::ServerIdentity, WebState};
use box_media::BoxMedia;
use hub::{Hub, HubInputs, JoinLinks, Links};
use media_socket::MediaSockets;
use network::{Addresses, Listeners};
use state_file::StateWriter;

/// Join links, as hashes, in the state dir.
const INVITES_FILE: &str = "invites.json";
/// Owners' credentials, as hashes.
const OWNERS_FILE: &str = "owners.json";

/// Signalling events and control requests waiting for the hub.
const SIGNALLING_QUEUE: usize = 256;
const CONTROL_QUEUE: usize = 16;

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

pub async fn run(options: RunOptions) -> Result<()> {
    let RunOptions {
        state_dir,
        config,
        board,
        lan,
    } = options;
    ensure_state_dir(&state_dir)?;
    let addresses = Addresses::choose(&config, lan || board.on_lan_by_default())?;
    let host = if config.web.hostname.is_empty() {
        hostname()
    } else {
        config.web.hostname.clone()
    };
    let mut dns_names = vec![host.clone(), format!("{host}.local"), "localhost".into()];
    dns_names.dedup();
    let now = time::OffsetDateTime::now_utc();
    let identity = crate::web::tls::ensure_identity(
        &state_dir,
        &dns_names,
        &addresses.certificate_ips(),
        now,
    )?;
    // The hub runs on a thread of its own (see `spawn_hub`); its media sockets are registered
    // with that thread's runtime, so a datagram wakes the hub's thread and nothing else.
    let hub_runtime = HubRuntime::new()?;
    let Listeners { https, http, media } = hub_runtime.enter(|| addresses.bind(&config))?;
    let media_port = media.port();
    let control_listener = control::bind(&state_dir).await?;

    let link_host = match config.web.hostname.as_str() {
        "" => addresses.link_host(),
        name => name.to_string(),
    };
    let base_url = format!("https://{link_host}:{}", config.web.https_port);
    let mut links = JoinLinks::new(base_url, config.call.invite_ttl, config.call.tv_link_knocks);
    if !config.remote.name.is_empty() {
        links.set_name(&config.remote.name, config.remote.https_port);
    }
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (reach, mapper) = start_port_mapping(&config, board, media_port, shutdown.clone()).await;
    let certs = crate::web::certs::ServerCerts::new(
        crate::web::certs::certified_key(&identity.chain_pem, &identity.key_pem)
            .context("loading Hearth's certificate")?,
    );
    let dns = start_dns_update(&config, reach.clone(), shutdown.clone());
    let certificate = start_acme(
        &config,
        &state_dir,
        certs.clone(),
        (&reach, &dns),
        shutdown.clone(),
    );
    let mut hub = build_hub(&state_dir, &config, board, media, links)?;
    hub.setup_http_port = config.web.http_port;
    hub.relay = crate::reach::relay::Relay::new(
        &config.relay.urls,
        &config.relay.secret.0,
        config.relay.credential_lifetime,
    );
    hub.setup_https_port = config.web.https_port;
    hub.clock_mark = config.clock.synchronized_mark.clone();
    hub.handle_reach(reach.borrow().clone());
    let (hotspot_tx, hotspot) = watch::channel(None);
    let hotspot_file = config.setup.hotspot_file.clone();
    tokio::spawn(self::setup_hotspot::watch_file(
        hotspot_file,
        hotspot_tx,
        shutdown.clone(),
    ));
    // Like the TV's, the link printed at start is for the whole family (several windows).
    let family = Some(config.call.max_participants as u32);
    let (_, links) = hub.new_invite("Join link printed at start", config.call.invite_ttl, family);
    print_join_link(&links);
    tracing::info!(
        "Hearth on board {board:?}: https port {}, media UDP port {media_port}, {}",
        config.web.https_port,
        if addresses.lan {
            "on the local network"
        } else {
            "loopback only"
        }
    );

    let (ws_tx, signalling) = mpsc::channel(SIGNALLING_QUEUE);
    let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
    let inputs = HubInputs {
        signalling,
        control,
        reach,
        hotspot: hotspot.clone(),
        certificate,
        dns,
        shutdown,
    };
    let hub_task = spawn_hub(hub_runtime, hub, inputs)?;
    // The owner page's API asks the hub as the CLI does, over the same channel.
    let web = WebState::new(ws_tx, control_tx.clone(), &identity.ca_pem);
    tokio::spawn(control::serve(control_listener, control_tx));
    let setup = crate::web::setup::SetupState::new(hotspot, state_dir.clone());
    let web = (web, setup);
    let (handle, web_task) =
        serve_web(https, http, (identity, certs), web, &config, link_host).await?;

    notify::notify("READY=1");
    let network_came = addresses.without_network().then(network_appears);
    let restart = tokio::select! {
        signal = wait_for_signal() => { signal?; false }
        _ = async { match network_came { Some(waiting) => waiting.await, None => std::future::pending().await } } => true,
    };
    notify::notify("STOPPING=1");
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    handle.graceful_shutdown(Some(Duration::from_secs(2)));
    let _ = tokio::task::spawn_blocking(move || hub_task.join()).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), web_task).await;
    if let Some(mapper) = mapper {
        // The router's forwarding is taken back before we go.
        let _ = tokio::time::timeout(Duration::from_secs(3), mapper).await;
    }
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    if restart {
        // Exiting non-zero: systemd (Restart=always) starts Hearth again, bound to the new
        // address. Binding every address anew while running is more than this needs.
        return Err(anyhow!(
            "the box has a network now: restarting to serve on it"
        ));
    }
    Ok(())
}

/// The hub's own single-threaded runtime, until its thread takes it (`spawn_hub`). On the
/// shared runtime each datagram's wake-up also woke a second worker to look for work, and the
/// hub's task moved between the two: at four phones the second worker used 30 % of the
/// daemon's CPU.
struct HubRuntime(Option<tokio::runtime::Runtime>);

impl HubRuntime {
    fn new() -> Result<HubRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the hub's runtime")?;
        Ok(HubRuntime(Some(runtime)))
    }

    /// Sockets made in `make` are registered with the hub's runtime.
    fn enter<T>(&self, make: impl FnOnce() -> T) -> T {
        let _hub = self.0.as_ref().map(|runtime| runtime.enter());
        make()
    }
}

impl Drop for HubRuntime {
    /// Not started (the daemon stopped on an error first): dropped without blocking, which
    /// inside the main runtime would panic.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn spawn_hub(
    mut runtime: HubRuntime,
    hub: Hub,
    inputs: HubInputs,
) -> Result<std::thread::JoinHandle<()>> {
    let runtime = runtime
        .0
        .take()
        .context("the hub's runtime was already taken")?;
    std::thread::Builder::new()
        .name("hearth-hub".into())
        .spawn(move || runtime.block_on(hub.run(inputs)))
        .context("starting the hub's thread")
}

/// Resolves when this machine has a network address besides loopback.
async fn network_appears() {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        every.tick().await;
        let found = tokio::task::spawn_blocking(media_socket::own_addresses)
            .await
            .unwrap_or_default();
        // As `media_addresses` counts them: loopback and link-local are no network.
        let usable = |ip: &std::net::IpAddr| {
            !ip.is_loopback() && !ip.is_unspecified() && !media_socket::is_link_local(*ip)
        };
        if found.iter().any(usable) {
            tracing::info!("the box has a network address now");
            return;
        }
    }
}

/// Ask the home router to forward our ports, unless the config (or the dev board) says not
/// to. Waits a few seconds for the router's first answer, so the link printed at start is
/// already the one that opens from outside.
async fn start_port_mapping(
    config: &Config,
    board: Board,
    media_port: u16,
    shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<Reach>, Option<tokio::task::JoinHandle<()>>) {
    if !config.remote.port_mapping.is_on(board) {
        let (_, reach) = watch::channel(Reach::Off);
        return (reach, None);
    }
    let mapper_config = MapperConfig::new(config, media_port);
    let (tx, mut reach) = watch::channel(Reach::Trying);
    let task = tokio::spawn(crate::reach::mapper::run(mapper_config, tx, shutdown));
    let first_answer = reach.wait_for(|r| *r != Reach::Trying);
    let _ = tokio::time::timeout(Duration::from_secs(10), first_answer).await;
    (reach, Some(task))
}

/// With `[acme]` on, keep a certificate browsers trust for the owner's name.
fn start_acme(
    config: &Config,
    state_dir: &Path,
    certs: Arc<crate::web::certs::ServerCerts>,
    (reach, dns): (&watch::Receiver<Reach>, &watch::Receiver<DnsStatus>),
    shutdown: watch::Receiver<bool>,
) -> watch::Receiver<CertificateStatus> {
    let (tx, rx) = watch::channel(CertificateStatus::Off);
    if config.acme.enabled {
        let settings = crate::web::acme::AcmeSettings {
            config: config.acme.clone(),
            name: config.remote.name.clone(),
            dir: state_dir.join("acme"),
            clock_mark: config.clock.synchronized_mark.clone(),
            reach: reach.clone(),
            dns: (config.dns != crate::config::name::DnsUpdateConfig::Off).then(|| dns.clone()),
        };
        tokio::spawn(crate::web::acme::keep_certified(
            settings, certs, tx, shutdown,
        ));
    }
    rx
}

/// With `[dns]` on, keep the owner's name pointing at the router's external address.
fn start_dns_update(
    config: &Config,
    reach: watch::Receiver<Reach>,
    shutdown: watch::Receiver<bool>,
) -> watch::Receiver<DnsStatus> {
    let (tx, rx) = watch::channel(DnsStatus::Off);
    if config.dns != crate::config::name::DnsUpdateConfig::Off {
        let settings = crate::reach::dns_update::DnsSettings {
            config: config.dns.clone(),
            name: config.remote.name.clone(),
        };
        tokio::spawn(crate::reach::dns_update::keep_pointing(
            settings, reach, tx, shutdown,
        ));
    }
    rx
}

/// The call's cores, the privacy switch and (unless off) the box's own devices.
fn build_hub(
    state_dir: &Path,
    config: &Config,
    board: Board,
    media_sockets: MediaSockets,
    links: JoinLinks,
) -> Result<Hub> {
    let invites = state_file::load(state_dir, INVITES_FILE)?;
    let profile = board.profile(&config.board)?;
    // Privacy first: nothing is captured until the switch has been read.
    let log = state_dir.join("privacy.log");
    let privacy = PrivacyControl::start(&profile.gpio, log, board != Board::Dev);
    let mut room = Room::new(config.call.max_participants);
    let hosts = media_sockets.hosts();
    let mut sfu = Sfu::new(hosts[0]);
    sfu.set_candidates(Candidates {
        hosts,
        reflexive: Vec::new(),
    });
    let media = if config.home.media {
        crate::media::init().map_err(|e| anyhow!(e))?;
        // The name owners gave the box outlives the config file's.
        let named = std::fs::read_to_string(state_dir.join(owners::BOX_NAME_FILE)).ok();
        let name = named.as_deref().map(str::trim).unwrap_or(&config.home.name);
        room.add_box(name, std::time::Instant::now());
        sfu.enable_box(profile.encoder.min_kbps, profile.encoder.max_kbps);
        Some(start_box_media(state_dir, &profile, board)?)
    } else {
        None
    };
    let limits = CallLimits {
        sessions_per_invite: config.call.sessions_per_invite,
    };
    let call = Call::new(room, sfu, invites, limits);
    let invite_file = StateWriter::start(state_dir, INVITES_FILE);
    let owners = state_file::load(state_dir, OWNERS_FILE)?;
    let owners_file = StateWriter::start(state_dir, OWNERS_FILE);
    Ok(Hub::new(
        call,
        media,
        privacy,
        media_sockets,
        links,
        invite_file,
        (owners, owners_file),
        state_dir.to_path_buf(),
    ))
}

fn start_box_media(state_dir: &Path, profile: &Profile, board: Board) -> Result<BoxMedia> {
    // The dev board's simulated devices are files standing for device nodes (see capture).
    let dev_devices = if board == Board::Dev {
        let dir = state_dir.join("dev");
        std::fs::create_dir_all(&dir)?;
        Some(dir)
    } else {
        None
    };
    Ok(BoxMedia::start(profile, dev_devices.as_deref()))
}

/// The HTTPS server, and the plain-HTTP redirect when it has a port.
async fn serve_web(
    https: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
    (identity, certs): (ServerIdentity, Arc<crate::web::certs::ServerCerts>),
    (state, setup): (WebState, crate::web::setup::SetupState),
    config: &Config,
    host: String,
) -> Result<(
    axum_server::Handle,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(crate::web::certs::server_config(
        certs.clone(),
    ));
    tokio::spawn(identity.renewal.keep_renewed(certs));
    let handle = axum_server::Handle::new();
    // One count of connections for both servers: they spend the same file descriptors.
    let registry = Registry::new(ConnCaps {
        total: config.web.max_connections,
        per_address: config.web.max_connections_per_address,
    });
    let limiter = Limiter::new(registry);
    let mut web_server = axum_server::from_tcp_rustls(https, tls)
        .map(|tls| {
            tls.handshake_timeout(limits::TLS_HANDSHAKE_LIMIT)
                .acceptor(limiter.clone())
        })
        .handle(handle.clone());
    limits::configure_http(web_server.http_builder());
    // The setup page is on both servers (HTTPS only matters when plain HTTP is off).
    let app = web::app(state)
        .merge(web::setup::routes(setup.clone()))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let web_task = tokio::spawn(web_server.serve(app));
    if let Some(http) = http {
        let redirect = web::setup::routes(setup)
            .merge(web::redirect::redirect_app(config.web.https_port, host));
        let handle = handle.clone();
        let mut server = axum_server::from_tcp(http).acceptor(limiter).handle(handle);
        limits::configure_http(server.http_builder());
        tokio::spawn(async move {
            let service = redirect.into_make_service_with_connect_info::<std::net::SocketAddr>();
            if let Err(e) = server.serve(service).await {
                tracing::error!("http redirect server: {e}");
            }
        });
    }
    Ok((handle, web_task))
}

/// The join link is a secret: printed for the person at the terminal, never into systemd's
/// journal (there the TV's idle screen and `hearth invite` give links).
fn print_join_link(links: &Links) {
    let url = links.url.as_str();
    use std::io::Write;
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing::info!("started; a join link is on the TV, or run `hearth invite`");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Join: {url}");
    if let Some(home) = &links.at_home {
        let _ = writeln!(
            out,
            "At home: {home} (the router does not loop the link above back in)"
        );
    }
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
