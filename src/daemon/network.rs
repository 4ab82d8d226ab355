//! Which addresses Hearth serves on, and its listening sockets: HTTPS, the optional
//! plain-HTTP redirect, the media UDP port (on every address of the machine). Bound before
//! anything else starts, so a port in use is reported in one line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{anyhow, Result};

use super::media_socket::{media_addresses, own_addresses, Accept, MediaSockets};
use crate::config::Config;

pub struct Listeners {
    pub https: std::net::TcpListener,
    pub http: Option<std::net::TcpListener>,
    pub media: MediaSockets,
}

/// Where the web servers listen and which addresses phones send media to.
pub struct Addresses {
    /// Serving the local network (else the page on loopback only: the dev board).
    pub lan: bool,
    listen: IpAddr,
    /// The media port's addresses: this machine's own (browsers never pair loopback, even
    /// on the same machine).
    media: Vec<IpAddr>,
    /// Serving the home network, with no address on one yet (and none configured).
    waiting_for_network: bool,
}

impl Addresses {
    pub fn choose(config: &Config, lan: bool) -> Result<Addresses> {
        let media = match config.web.lan_address {
            Some(ip) => vec![ip],
            None => media_addresses(),
        };
        if !lan {
            let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
            return Ok(Addresses {
                lan,
                listen: loopback,
                media,
                waiting_for_network: false,
            });
        }
        // No network yet (first boot without a cable or Wi-Fi): serve anyway, so the TV and
        // `hearth status` can say so and the setup page can be reached on the box's own
        // Wi-Fi; `run` restarts once an address appears (see `Addresses::without_network`).
        let waiting_for_network =
            config.web.lan_address.is_none() && media.iter().all(|ip| ip.is_loopback());
        if waiting_for_network {
            tracing::warn!("no network yet: the call waits for one");
        }
        let listen = config
            .web
            .lan_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(Addresses {
            lan,
            listen,
            media,
            waiting_for_network,
        })
    }

    /// Serving the local network while the machine has no address on one: the media
    /// socket could not be bound where phones will send.
    pub fn without_network(&self) -> bool {
        self.waiting_for_network
    }

    /// The host part of join links when no hostname is configured: the LAN's IPv4 address
    /// (the page is on loopback on the dev board).
    pub fn link_host(&self) -> String {
        match (self.lan, self.link_ip()) {
            (true, Some(IpAddr::V4(v4))) => v4.to_string(),
            (true, Some(IpAddr::V6(v6))) => format!("[{v6}]"),
            _ => self.listen.to_string(),
        }
    }

    /// The LAN address join links carry: IPv4 first (every phone has it).
    fn link_ip(&self) -> Option<IpAddr> {
        let v4 = self.media.iter().find(|ip| ip.is_ipv4());
        v4.or(self.media.first()).copied()
    }

    /// The addresses Hearth's certificate names: loopback, with `--lan` the address join
    /// links use and the machine's addresses on the home network. Global addresses other
    /// than the join links' (public IPv4, global IPv6 whose privacy addresses change daily)
    /// are left out: Hearth's CA permits only home-network ranges and the links' address
    /// (see `web::tls::LOCAL_RANGES`).
    pub fn certificate_ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        if self.lan {
            ips.extend(self.link_ip());
            ips.extend(
                if_addrs::get_if_addrs()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i.ip())
                    .filter(|ip| !ip.is_loopback() && crate::web::tls::is_local(*ip)),
            );
        }
        ips
    }

    pub fn bind(&self, config: &Config) -> Result<Listeners> {
        let https = bind_tcp(
            SocketAddr::new(self.listen, config.web.https_port),
            "web.https_port",
        )?;
        let http = match config.web.http_port {
            0 => None,
            port => Some(bind_tcp(
                SocketAddr::new(self.listen, port),
                "web.http_port",
            )?),
        };
        let accept = if self.lan {
            Accept::Anyone
        } else {
            Accept::Own(own_addresses())
        };
        let media = MediaSockets::bind(&self.media, config.call.udp_port, accept)?;
        Ok(Listeners { https, http, media })
    }
}

fn bind_tcp(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!("port {} is already in use ({what})", addr.port()),
        _ => anyhow!("cannot listen on {addr} ({what}): {e}"),
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
