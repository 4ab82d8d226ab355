//! The task that talks to the home router: finds it, asks it to forward the HTTPS and media
//! ports (PCP with NAT-PMP fallback first, a UDP packet to the gateway; then UPnP-IGD),
//! renews the leases, notices a router that restarted or changed its address, and removes
//! the forwarding on a clean stop. What it learns goes out as a `Reach` on a watch channel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::tokio::Tokio;
use igd_next::aio::Gateway;
use igd_next::PortMappingProtocol;
use tokio::sync::watch;

use super::{classify_external, gateway, next_renewal, pcp, Mapping, Protocol, Reach, Unreachable};

/// What to ask the router for.
#[derive(Debug, Clone)]
pub struct MapperConfig {
    /// The box's HTTPS and media ports.
    pub https_port: u16,
    pub media_port: u16,
    /// External ports to ask for first.
    pub preferred_https: u16,
    pub preferred_media: u16,
    pub lease: Duration,
    /// How often the router is asked again (renewal, restart, new address).
    pub check_every: Duration,
}

impl MapperConfig {
    /// From the owner's config; `media_port` is the port the media socket got.
    pub fn new(config: &crate::config::Config, media_port: u16) -> MapperConfig {
        MapperConfig {
            https_port: config.web.https_port,
            media_port,
            preferred_https: config.remote.https_port,
            preferred_media: match config.remote.media_port {
                0 => media_port,
                port => port,
            },
            lease: config.remote.lease,
            check_every: config.remote.check_every,
        }
    }
}

/// One look at the router (`hearth check`): forward the ports, say what came of it, and take
/// the forwarding back.
pub async fn probe(config: &MapperConfig) -> Reach {
    match Forwarding::establish(config).await {
        Ok(forwarding) => {
            let reach = match classify_external(forwarding.mapping.external_ip) {
                Ok(()) => Reach::Outside(forwarding.mapping.clone()),
                Err(why) => Reach::HomeOnly(why),
            };
            forwarding.remove().await;
            reach
        }
        Err(why) => Reach::HomeOnly(why),
    }
}

/// Waiting before asking a silent router again: doubles up to a minute.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// PCP and NAT-PMP requests: a quick answer or none (retries double it).
const PMP_TIMEOUT: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};
/// Renewals wait longer (up to 5.75 s): a router busy for a moment has not lost the
/// forwarding, and taking it for lost would re-create everything.
const RENEW_TIMEOUT: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 4,
    max_retry_timeout: Some(Duration::from_secs(2)),
};
const SSDP_TIMEOUT: Duration = Duration::from_secs(3);
const DESCRIPTION: &str = "Hearth family call box";

/// Run until `shutdown`; then the forwarding is removed.
pub async fn run(
    config: MapperConfig,
    reach: watch::Sender<Reach>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = RETRY_FIRST;
    // While retries fail for the same reason, nothing changes for the TV, the status or the
    // journal (no "trying" in between: each change re-draws the TV's idle screen).
    let mut failing: Option<Unreachable> = None;
    loop {
        if failing.is_none() {
            let _ = reach.send(Reach::Trying);
        }
        match Forwarding::establish(&config).await {
            Ok(mut forwarding) => {
                retry = RETRY_FIRST;
                failing = None;
                publish(&reach, &forwarding).await;
                let stopped = forwarding.keep(&config, &reach, &mut shutdown).await;
                if stopped {
                    forwarding.remove().await;
                    return;
                }
            }
            Err(why) => {
                if failing.as_ref() != Some(&why) {
                    tracing::info!("family outside cannot join: {why}");
                    let _ = reach.send(Reach::HomeOnly(why.clone()));
                    failing = Some(why);
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Whether the external address is reachable at all, and whether it works from home.
async fn publish(reach: &watch::Sender<Reach>, forwarding: &Forwarding) {
    let mapping = forwarding.mapping.clone();
    if let Err(why) = classify_external(mapping.external_ip) {
        tracing::info!("family outside cannot join: {why}");
        let _ = reach.send(Reach::HomeOnly(why));
        return;
    }
    let hairpin = hairpin_works(mapping.https()).await;
    tracing::info!(
        "family outside can join: the router forwards via {} (hairpin {})",
        mapping.via,
        if hairpin { "works" } else { "does not work" }
    );
    let _ = reach.send(Reach::Outside(Mapping { hairpin, ..mapping }));
}

/// From inside the home, does the external address lead back to the box?
async fn hairpin_works(https: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(https);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

/// The forwarding in place, and how it was made.
struct Forwarding {
    mapping: Mapping,
    session: Session,
}

enum Session {
    /// PCP or NAT-PMP: one mapping per port, renewed with the gateway.
    Pmp {
        tcp: PortMapping,
        udp: PortMapping,
    },
    Upnp(Gateway<Tokio>),
}

impl Forwarding {
    async fn establish(config: &MapperConfig) -> Result<Forwarding, Unreachable> {
        let gateway = gateway::default_gateway().ok_or(Unreachable::NoRouter)?;
        let lan_ip = gateway::local_address_towards(gateway).ok_or(Unreachable::NoRouter)?;
        match Self::pmp(gateway, lan_ip, config).await {
            Ok(forwarding) => return Ok(forwarding),
            Err(e) => tracing::debug!("PCP/NAT-PMP: {e}"),
        }
        match Self::upnp(lan_ip, config).await {
            Ok(forwarding) => Ok(forwarding),
            // Behind carrier-grade NAT or another router, NAT-PMP and UPnP refuse without
            // saying why; a PCP reply names the router's address.
            Err(why) => Err(pcp::diagnose(gateway, lan_ip, config.media_port)
                .await
                .unwrap_or(why)),
        }
    }

    async fn pmp(
        gateway: Ipv4Addr,
        lan_ip: IpAddr,
        config: &MapperConfig,
    ) -> Result<Forwarding, String> {
        let map = |protocol, internal: u16, external: u16| {
            let options = PortMappingOptions {
                external_port: NonZeroU16::new(external),
                lifetime_seconds: Some(config.lease.as_secs() as u32),
                timeout_config: Some(PMP_TIMEOUT),
            };
            let internal = NonZeroU16::new(internal).unwrap_or(NonZeroU16::MIN);
            PortMapping::new(gateway.into(), lan_ip, protocol, internal, options)
        };
        let udp = map(
            InternetProtocol::Udp,
            config.media_port,
            config.preferred_media,
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        let tcp = map(
            InternetProtocol::Tcp,
            config.https_port,
            config.preferred_https,
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        let (via, external_ip) = match udp.mapping_type() {
            PortMappingType::Pcp { external_ip, .. } => (Protocol::Pcp, external_ip),
            PortMappingType::NatPmp => {
                let ip = crab_nat::natpmp::external_address(gateway.into(), Some(PMP_TIMEOUT))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                (Protocol::NatPmp, IpAddr::V4(ip))
            }
        };
        let mapping = Mapping {
            via,
            external_ip,
            https_port: tcp.external_port().get(),
            media_port: udp.external_port().get(),
            lan_ip,
            expires: udp.expiration().min(tcp.expiration()),
            hairpin: false,
        };
        Ok(Forwarding {
            mapping,
            session: Session::Pmp { tcp, udp },
        })
    }

    async fn upnp(lan_ip: IpAddr, config: &MapperConfig) -> Result<Forwarding, Unreachable> {
        let mut options = igd_next::SearchOptions::default();
        options.timeout = Some(SSDP_TIMEOUT);
        options.single_search_timeout = Some(SSDP_TIMEOUT);
        let gateway = igd_next::aio::tokio::search_gateway(options)
            .await
            .map_err(|e| {
                tracing::debug!("UPnP: {e}");
                Unreachable::NoAnswer
            })?;
        let external_ip = gateway
            .get_external_ip()
            .await
            .map_err(|e| Unreachable::Refused(e.to_string()))?;
        let lease = config.lease.as_secs() as u32;
        let media = SocketAddr::new(lan_ip, config.media_port);
        let https = SocketAddr::new(lan_ip, config.https_port);
        let media_port = add_port(
            &gateway,
            PortMappingProtocol::UDP,
            config.preferred_media,
            media,
            lease,
        )
        .await?;
        let https_port = add_port(
            &gateway,
            PortMappingProtocol::TCP,
            config.preferred_https,
            https,
            lease,
        )
        .await?;
        let mapping = Mapping {
            via: Protocol::Upnp,
            external_ip,
            https_port,
            media_port,
            lan_ip,
            expires: Instant::now() + config.lease,
            hairpin: false,
        };
        Ok(Forwarding {
            mapping,
            session: Session::Upnp(gateway),
        })
    }

    /// Keep the forwarding alive until shutdown (true) or until it is lost (false).
    async fn keep(
        &mut self,
        config: &MapperConfig,
        reach: &watch::Sender<Reach>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            let granted = Instant::now();
            let due = next_renewal(granted, config.lease, config.check_every);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = shutdown.changed() => return true,
            }
            match self.renew(config).await {
                Ok(moved) => {
                    if moved {
                        publish(reach, self).await;
                    } else {
                        // A router may loop its address back in only a moment after it
                        // forwards: until hairpin works, look again at every check.
                        let unseen = reach.borrow().mapping().is_some_and(|m| !m.hairpin);
                        let hairpin = unseen && hairpin_works(self.mapping.https()).await;
                        if hairpin {
                            tracing::info!("the router loops its address back in now (hairpin)");
                        }
                        let expires = self.mapping.expires;
                        reach.send_modify(|r| {
                            if let Reach::Outside(m) = r {
                                m.expires = expires;
                                m.hairpin |= hairpin;
                            }
                        });
                    }
                }
                Err(why) => {
                    tracing::info!("family outside cannot join: {why}");
                    let _ = reach.send(Reach::HomeOnly(why));
                    return false;
                }
            }
        }
    }

    /// Ask the router again. True when the external address or ports moved.
    async fn renew(&mut self, config: &MapperConfig) -> Result<bool, Unreachable> {
        let before = (
            self.mapping.external_ip,
            self.mapping.https_port,
            self.mapping.media_port,
        );
        match &mut self.session {
            Session::Pmp { tcp, udp } => {
                let lost = |e| Unreachable::Lost(format!("{e:?}"));
                udp.timeout_config = RENEW_TIMEOUT;
                tcp.timeout_config = RENEW_TIMEOUT;
                udp.renew().await.map_err(lost)?;
                tcp.renew().await.map_err(lost)?;
                self.mapping.media_port = udp.external_port().get();
                self.mapping.https_port = tcp.external_port().get();
                self.mapping.expires = udp.expiration().min(tcp.expiration());
                self.mapping.external_ip = match udp.mapping_type() {
                    PortMappingType::Pcp { external_ip, .. } => external_ip,
                    PortMappingType::NatPmp => {
                        let gateway = udp.gateway();
                        crab_nat::natpmp::external_address(gateway, Some(PMP_TIMEOUT))
                            .await
                            .map(IpAddr::V4)
                            .map_err(|e| Unreachable::Lost(format!("{e:?}")))?
                    }
                };
            }
            Session::Upnp(gateway) => {
                let lease = config.lease.as_secs() as u32;
                let lan = self.mapping.lan_ip;
                let lost = |e: igd_next::AddPortError| Unreachable::Lost(e.to_string());
                let media = SocketAddr::new(lan, config.media_port);
                let https = SocketAddr::new(lan, config.https_port);
                let (udp, tcp) = (PortMappingProtocol::UDP, PortMappingProtocol::TCP);
                let (media_port, https_port) = (self.mapping.media_port, self.mapping.https_port);
                gateway
                    .add_port(udp, media_port, media, lease, DESCRIPTION)
                    .await
                    .map_err(lost)?;
                gateway
                    .add_port(tcp, https_port, https, lease, DESCRIPTION)
                    .await
                    .map_err(lost)?;
                self.mapping.external_ip = gateway
                    .get_external_ip()
                    .await
                    .map_err(|e| Unreachable::Lost(e.to_string()))?;
                self.mapping.expires = Instant::now() + config.lease;
            }
        }
        let after = (
            self.mapping.external_ip,
            self.mapping.https_port,
            self.mapping.media_port,
        );
        Ok(before != after)
    }

    /// Take the forwarding back (a clean stop).
    async fn remove(self) {
        match self.session {
            Session::Pmp { tcp, udp } => {
                let _ = udp.try_drop().await;
                let _ = tcp.try_drop().await;
            }
            Session::Upnp(gateway) => {
                let _ = gateway
                    .remove_port(PortMappingProtocol::UDP, self.mapping.media_port)
                    .await;
                let _ = gateway
                    .remove_port(PortMappingProtocol::TCP, self.mapping.https_port)
                    .await;
            }
        }
        tracing::info!("the router no longer forwards to the box");
    }
}

/// The preferred external port, or any the router offers when that one is taken.
async fn add_port(
    gateway: &Gateway<Tokio>,
    protocol: PortMappingProtocol,
    preferred: u16,
    local: SocketAddr,
    lease: u32,
) -> Result<u16, Unreachable> {
    match gateway
        .add_port(protocol, preferred, local, lease, DESCRIPTION)
        .await
    {
        Ok(()) => Ok(preferred),
        Err(first) => {
            tracing::debug!("UPnP: port {preferred} not forwarded: {first}");
            gateway
                .add_any_port(protocol, local, lease, DESCRIPTION)
                .await
                .map_err(|e| Unreachable::Refused(e.to_string()))
        }
    }
}
