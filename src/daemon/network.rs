//! Which addresses Hearth serves on, and its listening sockets: HTTPS, the optional
//! plain-HTTP redirect, the media UDP port. Bound before anything else starts, so a port in
//! use is reported in one line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{anyhow, Result};

use crate::config::Config;

pub struct Listeners {
    pub https: std::net::TcpListener,
    pub http: Option<std::net::TcpListener>,
    pub udp: tokio::net::UdpSocket,
}

/// Where the web servers listen and which address phones send media to.
pub struct Addresses {
    /// Serving the local network (else loopback only).
    pub lan: bool,
    listen: IpAddr,
    media: IpAddr,
}

impl Addresses {
    pub fn choose(config: &Config, lan: bool) -> Result<Addresses> {
        if !lan {
            let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
            return Ok(Addresses {
                lan,
                listen: loopback,
                media: loopback,
            });
        }
        let media = config.web.lan_address.or_else(lan_ipv4).ok_or_else(|| {
            anyhow!("--lan: this machine has no network address besides loopback")
        })?;
        let listen = config
            .web
            .lan_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(Addresses { lan, listen, media })
    }

    /// The host part of join links when no hostname is configured.
    pub fn link_host(&self) -> String {
        match self.media {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
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
            ips.push(self.media);
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
        let port = config.call.udp_port;
        let udp =
            std::net::UdpSocket::bind(SocketAddr::new(self.media, port)).map_err(|e| {
                match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        anyhow!("port {port} is already in use (call.udp_port)")
                    }
                    _ => anyhow!("cannot bind UDP {}:{port}: {e}", self.media),
                }
            })?;
        udp.set_nonblocking(true)?;
        Ok(Listeners {
            https,
            http,
            udp: tokio::net::UdpSocket::from_std(udp)?,
        })
    }
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
