//! The media port: one UDP socket per address of this machine, all on the same port, so
//! every datagram's destination is known exactly (ICE answers only on the address a check
//! was sent to) and every reply leaves from the address the phone talks to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

#[derive(Debug, thiserror::Error)]
pub enum MediaSocketError {
    #[error("port {0} is already in use (call.udp_port)")]
    InUse(u16),
    #[error("cannot bind UDP {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Whose datagrams are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    Anyone,
    /// Only this machine's own addresses (the dev board: a browser on the same machine).
    Own(Vec<IpAddr>),
}

/// One datagram as received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub source: SocketAddr,
    /// The local address it was sent to.
    pub destination: SocketAddr,
}

pub struct MediaSockets {
    /// Each socket with its own address, asked of the kernel once (not at every datagram).
    sockets: Vec<(UdpSocket, SocketAddr)>,
    accept: Accept,
    /// Where the next receive starts looking, so one busy address cannot starve another.
    next: AtomicUsize,
}

impl MediaSockets {
    /// Bind `port` on every address (port 0: the first socket's free port, for all).
    pub fn bind(
        addresses: &[IpAddr],
        port: u16,
        accept: Accept,
    ) -> Result<MediaSockets, MediaSocketError> {
        let mut sockets = Vec::new();
        let mut port = port;
        for ip in addresses {
            let addr = SocketAddr::new(*ip, port);
            let socket = std::net::UdpSocket::bind(addr).map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => MediaSocketError::InUse(port),
                _ => MediaSocketError::Bind(addr, e),
            })?;
            socket
                .set_nonblocking(true)
                .map_err(|e| MediaSocketError::Bind(addr, e))?;
            let socket =
                UdpSocket::from_std(socket).map_err(|e| MediaSocketError::Bind(addr, e))?;
            let local = socket
                .local_addr()
                .map_err(|e| MediaSocketError::Bind(addr, e))?;
            if port == 0 {
                port = local.port();
            }
            sockets.push((socket, local));
        }
        Ok(MediaSockets {
            sockets,
            accept,
            next: AtomicUsize::new(0),
        })
    }

    /// The addresses phones can send media to.
    pub fn hosts(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(_, local)| *local).collect()
    }

    pub fn port(&self) -> u16 {
        self.hosts().first().map_or(0, |a| a.port())
    }

    pub fn accepts(&self, source: IpAddr) -> bool {
        match &self.accept {
            Accept::Anyone => true,
            Accept::Own(own) => source.is_loopback() || own.contains(&source),
        }
    }

    /// The next datagram on any of the addresses.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Received> {
        std::future::poll_fn(|cx| {
            let count = self.sockets.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..count {
                let (socket, local) = &self.sockets[(start + i) % count];
                let mut read = ReadBuf::new(buf);
                if let Poll::Ready(result) = socket.poll_recv_from(cx, &mut read) {
                    let received = result.map(|source| Received {
                        len: read.filled().len(),
                        source,
                        destination: *local,
                    });
                    return Poll::Ready(received);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// A datagram already waiting on any of the addresses, without waiting for one: None
    /// when there is none (or the receive failed, which the next `recv` reports).
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<Received> {
        let count = self.sockets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).find_map(|i| {
            let (socket, local) = &self.sockets[(start + i) % count];
            let (len, source) = socket.try_recv_from(buf).ok()?;
            Some(Received {
                len,
                source,
                destination: *local,
            })
        })
    }

    /// Send from the socket bound to `source` (the first one when none is).
    pub async fn send(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> std::io::Result<usize> {
        let socket = self
            .sockets
            .iter()
            .find(|(_, local)| *local == source)
            .or_else(|| self.sockets.first())
            .map(|(socket, _)| socket)
            .ok_or_else(|| std::io::Error::other("no media socket"))?;
        // Straight into the socket's buffer when it has room, as it nearly always has; only a
        // full buffer waits for the runtime to say it has drained.
        match socket.try_send_to(data, destination) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.send_to(data, destination).await
            }
            sent => sent,
        }
    }
}

/// This machine's addresses for media: IPv4 and global IPv6 (not loopback, not link-local,
/// which needs a scope browsers do not give). Loopback only when there is nothing else.
pub fn media_addresses() -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !is_link_local(*ip))
        .collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        tracing::warn!(
            "this machine has no network address besides loopback: browsers will not connect"
        );
        found.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    found
}

/// Every address of this machine, loopback included: who the dev board accepts media from.
pub fn own_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .collect()
}

pub(crate) fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_come_with_their_destination_and_replies_leave_from_it() {
        let loopbacks: Vec<IpAddr> =
            vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        let sockets = MediaSockets::bind(&loopbacks, 0, Accept::Anyone).unwrap();
        let hosts = sockets.hosts();
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts[0].port(),
            hosts[1].port(),
            "one port on every address"
        );
        let phone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        phone.send_to(b"to the second", hosts[1]).unwrap();
        phone.send_to(b"and again", hosts[1]).unwrap();
        let mut buf = [0u8; 64];
        let got = sockets.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..got.len], b"to the second");
        assert_eq!(got.destination, hosts[1]);
        // What else is waiting is taken without waiting, until nothing is.
        let waiting = sockets
            .try_recv(&mut buf)
            .expect("the second datagram is waiting");
        assert_eq!(&buf[..waiting.len], b"and again");
        assert_eq!(waiting.destination, hosts[1]);
        assert!(
            sockets.try_recv(&mut buf).is_none(),
            "nothing more is waiting"
        );
        sockets
            .send(got.destination, got.source, b"back")
            .await
            .unwrap();
        let (n, from) = phone.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"back"[..], hosts[1]));
    }

    #[test]
    fn the_dev_board_takes_only_its_own_addresses() {
        let own = Accept::Own(vec!["10.0.0.5".parse().unwrap()]);
        let sockets = MediaSockets {
            sockets: Vec::new(),
            accept: own,
            next: AtomicUsize::new(0),
        };
        assert!(sockets.accepts("10.0.0.5".parse().unwrap()));
        assert!(sockets.accepts("127.0.0.1".parse().unwrap()));
        assert!(!sockets.accepts("10.0.0.6".parse().unwrap()));
    }
}
