//! The one task that owns the call: each arm of its loop takes one kind of input (a
//! datagram, a signalling event, the box's media, a control request, a switch reading, the
//! timer) and hands it to the pure cores; then it carries out what they return. The hub's
//! behaviour is split by concern: `dispatch` (carrying out the call's outputs), `requests`
//! (the control socket), `status` (what `hearth status` shows).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use super::box_media::BoxMedia;
use super::control::Envelope;
use super::media_socket::MediaSockets;
use super::metrics::Metrics;
use super::requests::Waiter;
use super::state_file::StateWriter;
use super::udp_batch::RecvBatch;
use crate::call::invite::InviteStore;
use crate::call::sfu::Candidates;
use crate::call::{Call, ConnId};
use crate::media::{MediaEvent, MediaInput};
use crate::owner::OwnerStore;
use crate::privacy::machine::Reading;
use crate::privacy::PrivacyControl;
use crate::reach::dns_update::DnsStatus;
use crate::reach::Reach;
use crate::setup::hotspot::Hotspot;
use crate::web::acme::CertificateStatus;
use crate::web::signalling::{WsCommand, WsEvent};

/// Where join links point and how long they last unless asked otherwise.
pub struct JoinLinks {
    /// `https://host:port` on the home network.
    home: String,
    /// `https://external-address:port` while the router forwards to the box.
    outside: Option<String>,
    /// Whether the outside link also opens from home (the router does hairpin NAT).
    outside_works_at_home: bool,
    /// The owner's domain name, and the external HTTPS port to use while the router does not
    /// say which it forwards.
    name: Option<(String, u16)>,
    default_ttl: Duration,
    /// The TV's link is knock-first.
    tv_knocks: bool,
}

/// `https://name` with the port unless it is HTTPS's own.
fn with_port(name: &str, port: u16) -> String {
    match port {
        443 => format!("https://{name}"),
        port => format!("https://{name}:{port}"),
    }
}

/// A join link, and the link for the home network when that one is different.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// The link to share: it opens from outside when the box is reachable from there.
    pub url: String,
    /// For phones at home when the router cannot loop the outside link back (no hairpin).
    pub at_home: Option<String>,
}

impl JoinLinks {
    pub fn new(home: String, default_ttl: Duration, tv_knocks: bool) -> JoinLinks {
        JoinLinks {
            home,
            outside: None,
            outside_works_at_home: false,
            name: None,
            default_ttl,
            tv_knocks,
        }
    }

    pub fn tv_knocks(&self) -> bool {
        self.tv_knocks
    }

    /// Links use the owner's domain name (on `https_port` until the router says otherwise).
    pub fn set_name(&mut self, name: &str, https_port: u16) {
        self.name = Some((name.to_string(), https_port));
        self.set_outside(None);
    }

    /// Follow the router (its external HTTPS address, and whether it loops that back in):
    /// the outside link while it forwards, the home link otherwise. With a domain name, links
    /// always use the name (the owner may forward ports by hand).
    pub fn set_outside(&mut self, outside: Option<(SocketAddr, bool)>) {
        self.outside_works_at_home = outside.is_some_and(|(_, hairpin)| hairpin);
        self.outside = match (&self.name, outside) {
            (Some((name, _)), Some((https, _))) => Some(with_port(name, https.port())),
            (Some((name, port)), None) => Some(with_port(name, *port)),
            (None, Some((https, _))) => Some(format!("https://{https}")),
            (None, None) => None,
        };
    }

    /// The token goes in the fragment, which browsers never send to a server.
    pub fn links(&self, token: &str) -> Links {
        let home = format!("{}/join#{token}", self.home);
        match &self.outside {
            Some(outside) => Links {
                url: format!("{outside}/join#{token}"),
                at_home: (!self.outside_works_at_home).then_some(home),
            },
            None => Links {
                url: home,
                at_home: None,
            },
        }
    }

    /// The owner page with a pairing token, on the home network (the owner is at the box).
    pub fn owner_pairing(&self, token: &str) -> String {
        format!("{}/owner#pair={token}", self.home)
    }

    /// The link for the TV's screen: people scanning it are at home.
    pub fn for_tv(&self, token: &str) -> String {
        let links = self.links(token);
        links.at_home.unwrap_or(links.url)
    }

    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }
}

/// What feeds the hub besides its own parts.
pub struct HubInputs {
    pub signalling: mpsc::Receiver<WsEvent>,
    pub control: mpsc::Receiver<Envelope>,
    /// What the router says (from `reach::mapper`).
    pub reach: watch::Receiver<Reach>,
    /// The setup hotspot, while it is open (from `setup_hotspot::watch_file`).
    pub hotspot: watch::Receiver<Option<Hotspot>>,
    /// The certificate for the owner's name (from `web::acme`).
    pub certificate: watch::Receiver<CertificateStatus>,
    /// The owner's name's DNS record (from `reach::dns_update`).
    pub dns: watch::Receiver<DnsStatus>,
    pub shutdown: watch::Receiver<bool>,
}

pub struct Hub {
    pub(super) call: Call,
    /// The box's camera, mic, TV and speaker; None when the box only forwards.
    pub(super) media: Option<BoxMedia>,
    pub(super) privacy: PrivacyControl,
    pub(super) media_sockets: MediaSockets,
    pub(super) links: JoinLinks,
    pub(super) invite_file: StateWriter<InviteStore>,
    /// Each signalling connection's way back.
    pub(super) conns: HashMap<ConnId, mpsc::Sender<WsCommand>>,
    pub(super) metrics: Metrics,
    /// Control requests answered once their effect has happened.
    pub(super) waiters: Vec<Waiter>,
    /// The TV's current join link (revoked when the next one is shown).
    pub(super) tv_invite: Option<String>,
    /// The phone that paused the box, shown on the TV until privacy is off again.
    pub(super) paused_by: Option<String>,
    /// Whether family outside can join.
    pub(super) reach: Reach,
    /// The first of those knocking, for the TV.
    pub(super) knocking: Option<String>,
    /// Owners' credentials (hashed) and the pairing window.
    pub(super) owners: OwnerStore,
    pub(super) owners_file: StateWriter<OwnerStore>,
    /// The owner page link the TV shows while the pairing window is open (in memory only).
    pub(super) pairing_url: Option<String>,
    /// Where the box keeps what owners change (its name).
    pub(super) state_dir: std::path::PathBuf,
    /// The owner's TURN server, whose credentials each phone gets in its welcome.
    pub(super) relay: Option<crate::reach::relay::Relay>,
    /// The box's own Wi-Fi for setting it up, while it is open.
    pub(super) hotspot: Option<Hotspot>,
    /// Where the setup page is served (plain HTTP unless that port is 0).
    pub(super) setup_http_port: u16,
    pub(super) setup_https_port: u16,
    /// The certificate for the owner's domain name.
    pub(super) certificate: CertificateStatus,
    /// The owner's domain name's DNS record.
    pub(super) dns: DnsStatus,
    /// Where `crate::clock` looks for the NTP client's mark.
    pub(super) clock_mark: std::path::PathBuf,
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        call: Call,
        media: Option<BoxMedia>,
        privacy: PrivacyControl,
        media_sockets: MediaSockets,
        links: JoinLinks,
        invite_file: StateWriter<InviteStore>,
        (owners, owners_file): (OwnerStore, StateWriter<OwnerStore>),
        state_dir: std::path::PathBuf,
    ) -> Hub {
        Hub {
            call,
            media,
            privacy,
            media_sockets,
            links,
            invite_file,
            conns: HashMap::new(),
            metrics: Metrics::default(),
            waiters: Vec::new(),
            tv_invite: None,
            paused_by: None,
            reach: Reach::Off,
            knocking: None,
            owners,
            owners_file,
            pairing_url: None,
            state_dir,
            relay: None,
            hotspot: None,
            setup_http_port: 0,
            setup_https_port: 0,
            certificate: CertificateStatus::Off,
            dns: DnsStatus::Off,
            clock_mark: crate::clock::TIMESYNCD_SYNCHRONIZED.into(),
        }
    }

    pub async fn run(mut self, mut inputs: HubInputs) {
        let mut batch = RecvBatch::default();
        // Pinging from this loop, not a separate task: if the loop hangs, systemd restarts us.
        let mut watchdog = super::notify::watchdog_interval().map(tokio::time::interval);
        inputs.reach.borrow_and_update();
        self.show_idle_screen();
        // One timer for the whole loop, moved only when the deadline does: a new one each turn
        // was registered afresh, and every one earlier than the runtime's planned wake-up made
        // the runtime wake itself (an eventfd write and a turn of epoll for nothing).
        let timer = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(timer);
        loop {
            let deadline: tokio::time::Instant = self.next_deadline(Instant::now()).into();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                received = self.media_sockets.recv(&mut batch) => match received {
                    Ok(destination) => {
                        // Everything that was waiting in one pass of the SFU and one round of
                        // sends, not a wake-up each; when each forwarded datagram was read,
                        // for the forwarding latency.
                        let read = Instant::now();
                        let mut forwarded = 0;
                        for (source, data) in batch.datagrams() {
                            forwarded += usize::from(self.handle_datagram(read, source, destination, data));
                        }
                        self.carry_out().await;
                        let latency = read.elapsed();
                        for _ in 0..forwarded {
                            self.metrics.forward.record(latency);
                        }
                    }
                    Err(e) => tracing::debug!("udp receive: {e}"),
                },
                Some(event) = inputs.signalling.recv() => self.handle_signalling(event),
                Some(input) = next_media(&mut self.media) => self.handle_media(input).await,
                Some((request, reply)) = inputs.control.recv() => {
                    self.handle_request(request, reply).await;
                }
                Some(reading) = self.privacy.next_reading() => self.handle_reading(reading),
                Ok(()) = inputs.reach.changed() => {
                    let reach = inputs.reach.borrow_and_update().clone();
                    self.handle_reach(reach);
                }
                Ok(()) = inputs.hotspot.changed() => {
                    let hotspot = inputs.hotspot.borrow_and_update().clone();
                    self.handle_hotspot(hotspot);
                }
                Ok(()) = inputs.certificate.changed() => {
                    let certificate = inputs.certificate.borrow_and_update().clone();
                    self.handle_certificate(certificate);
                }
                Ok(()) = inputs.dns.changed() => {
                    self.dns = inputs.dns.borrow_and_update().clone();
                }
                _ = &mut timer => self.handle_timeout(),
                _ = tick(&mut watchdog) => super::notify::notify("WATCHDOG=1"),
                _ = inputs.shutdown.changed() => break,
            }
            self.carry_out().await;
            self.answer_waiters(Instant::now());
        }
        for tx in self.conns.values() {
            let _ = tx.try_send(WsCommand::Close);
        }
    }

    /// The earliest of the cores' timers and the waiting requests' deadlines.
    fn next_deadline(&self, now: Instant) -> Instant {
        [
            self.call.poll_timeout(),
            self.privacy.poll_timeout(),
            self.waiters.iter().map(Waiter::deadline).min(),
            self.owners.pairing_until(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(1))
    }

    /// One datagram, read at `read`, into the SFU: whether any of it was forwarded.
    fn handle_datagram(
        &mut self,
        read: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        if !self.media_sockets.accepts(source.ip()) {
            return false;
        }
        let before = self.call.sfu().counters().packets_forwarded;
        self.call.handle_datagram(read, source, destination, data);
        self.call.sfu().counters().packets_forwarded > before
    }

    fn handle_signalling(&mut self, event: WsEvent) {
        let now = Instant::now();
        match event {
            WsEvent::Open {
                conn,
                from,
                commands,
            } => {
                self.conns.insert(conn, commands);
                self.call.handle_connected(conn, from, now);
            }
            WsEvent::Text(conn, text) => {
                self.call
                    .handle_message(conn, &text, now, SystemTime::now())
            }
            WsEvent::Closed(conn) => {
                self.conns.remove(&conn);
                self.call.handle_closed(conn, Instant::now());
            }
        }
    }

    async fn handle_media(&mut self, input: MediaInput) {
        match input {
            MediaInput::Frame(frame) => {
                let (kind, rtp_time) = frame.rtp_time();
                self.call
                    .handle_box_frame(frame.encoding, rtp_time, &frame.data, Instant::now());
                // Sent now rather than after the select, so the latency is the socket's.
                self.carry_out().await;
                if kind == str0m::media::MediaKind::Video {
                    self.metrics.send.record(frame.encoded_at.elapsed());
                }
            }
            MediaInput::Event(MediaEvent::Released { kind, at }) => {
                self.metrics.capture_released(at);
                if let Some(media) = &mut self.media {
                    media.released(kind);
                }
            }
            MediaInput::Event(MediaEvent::ScreenRestarted) => {
                self.call.box_decoders_restarted();
                // What the screen showed was replayed; the status line may have news.
                if self.call.room().phones().next().is_none() {
                    self.show_idle_screen();
                }
            }
            // A device vanishing while privacy is on is expected (the switch may cut a
            // webcam's power): nothing to tell.
            MediaInput::Event(MediaEvent::Device { .. }) if self.privacy.is_on() => {}
            MediaInput::Event(MediaEvent::Device { kind, problem }) => {
                let news = self
                    .media
                    .as_mut()
                    .is_some_and(|m| m.device_state(kind, problem));
                if news {
                    self.tell_box_state();
                }
            }
        }
    }

    fn handle_reading(&mut self, reading: Reading) {
        let effects = self.privacy.handle_reading(reading, Instant::now());
        self.apply_privacy(effects);
    }

    /// The router's answer changed: new phones get the external address as a candidate,
    /// links point outside, and the TV says whether family outside can join.
    pub(super) fn handle_reach(&mut self, reach: Reach) {
        let moved = self
            .reach
            .mapping()
            .map(|m| (m.external_ip, m.media_port, m.https_port, m.hairpin))
            != reach
                .mapping()
                .map(|m| (m.external_ip, m.media_port, m.https_port, m.hairpin));
        let same_kind = std::mem::discriminant(&self.reach) == std::mem::discriminant(&reach);
        let news = moved
            || !same_kind
            || matches!((&self.reach, &reach), (Reach::HomeOnly(a), Reach::HomeOnly(b)) if a != b);
        self.reach = reach;
        if !news {
            return;
        }
        let hosts = self.media_sockets.hosts();
        let mapping = self.reach.mapping();
        let reflexive = mapping
            .and_then(|m| {
                let base = hosts
                    .iter()
                    .find(|h| h.ip() == m.lan_ip)
                    .or(hosts.first())?;
                Some(vec![(m.media(), *base)])
            })
            .unwrap_or_default();
        self.call.set_candidates(Candidates { hosts, reflexive });
        let outside = mapping.map(|m| (m.https(), m.hairpin));
        self.links.set_outside(outside);
        if self.call.room().phones().next().is_none() {
            self.show_idle_screen();
        }
    }

    /// The TV says so when the certificate for the owner's name cannot be had.
    fn handle_certificate(&mut self, certificate: CertificateStatus) {
        let news = certificate.tv_line() != self.certificate.tv_line();
        self.certificate = certificate;
        if news && self.call.room().phones().next().is_none() {
            self.show_idle_screen();
        }
    }

    fn handle_timeout(&mut self) {
        let now = Instant::now();
        if self
            .owners
            .pairing_until()
            .is_some_and(|until| now >= until)
        {
            self.owners.close_pairing();
            self.pairing_url = None;
            self.show_idle_screen();
        }
        let effects = self.privacy.handle_timeout(now);
        self.apply_privacy(effects);
        self.call.handle_timeout(now);
    }
}

async fn next_media(media: &mut Option<BoxMedia>) -> Option<MediaInput> {
    match media {
        Some(m) => m.next_input().await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod join_link_tests {
    use super::*;

    fn links() -> JoinLinks {
        JoinLinks::new(
            "https://192.168.1.2:8443".into(),
            Duration::from_secs(60),
            false,
        )
    }

    fn outside(port: u16, hairpin: bool) -> Option<(SocketAddr, bool)> {
        Some((SocketAddr::from(([203, 0, 114, 1], port)), hairpin))
    }

    #[test]
    fn links_follow_the_router_and_the_owners_name() {
        let home = "https://192.168.1.2:8443/join#t";
        let mut plain = links();
        assert_eq!(plain.links("t").url, home);
        plain.set_outside(outside(40443, false));
        assert_eq!(plain.links("t").url, "https://203.0.114.1:40443/join#t");
        assert_eq!(plain.links("t").at_home.as_deref(), Some(home));
        assert_eq!(plain.for_tv("t"), home);
        plain.set_outside(outside(40443, true));
        assert_eq!(plain.links("t").at_home, None);

        let mut named = links();
        named.set_name("box.example.org", 443);
        assert_eq!(
            named.links("t").url,
            "https://box.example.org/join#t",
            "forwarded by hand"
        );
        assert_eq!(named.links("t").at_home.as_deref(), Some(home));
        named.set_outside(outside(443, true));
        assert_eq!(named.links("t").url, "https://box.example.org/join#t");
        assert_eq!(named.links("t").at_home, None);
        assert_eq!(named.for_tv("t"), "https://box.example.org/join#t");
        named.set_outside(outside(40443, false));
        assert_eq!(named.links("t").url, "https://box.example.org:40443/join#t");
        named.set_outside(None);
        assert_eq!(named.links("t").url, "https://box.example.org/join#t");
        // The owner page's pairing code stays on the home network.
        assert!(named
            .owner_pairing("p")
            .starts_with("https://192.168.1.2:8443/owner#"));
    }
}
