//! The media port: one UDP socket per address of this machine, all on the same port, so
//! every datagram's destination is known exactly (ICE answers only on the address a check
//! was sent to) and every reply leaves from the address the phone talks to.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::udp_batch::{self, RecvBatch, BATCH};
use crate::call::sfu::Transmit;

/// What the kernel is asked to hold of datagrams not yet read (it doubles it for its own
/// bookkeeping): about half a second of a twelve-phone call coming in. Its default, 208 KiB
/// all told, is about 50 ms of one: a busy moment on a Pi (a keyframe encoded, a page
/// served) and datagrams were dropped before they were read (640 at twelve load clients).
/// The kernel caps it at `net.core.rmem_max`, which the .deb raises to this
/// (image/deb/sysctl.conf).
const RECEIVE_BUFFER: usize = 1 << 20;

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

pub struct MediaSockets {
    /// Each socket with its own address, asked of the kernel once (not at every datagram).
    sockets: Vec<(AsyncFd<std::net::UdpSocket>, SocketAddr)>,
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
            let held = udp_batch::raise_receive_buffer(socket.as_raw_fd(), RECEIVE_BUFFER)
                .map_err(|e| MediaSocketError::Bind(addr, e))?;
            if held < 2 * RECEIVE_BUFFER {
                tracing::debug!(
                    "media socket holds {held} bytes unread (asked for {}; net.core.rmem_max caps it)",
                    2 * RECEIVE_BUFFER
                );
            }
            let local = socket
                .local_addr()
                .map_err(|e| MediaSocketError::Bind(addr, e))?;
            // Registered for reading only: registered for writing as well, every send woke the
            // hub again (the kernel signals a UDP socket writable each time a sent datagram's
            // buffer is freed), and it went back to sleep with nothing to do, one wasted turn
            // of the runtime per batch sent. Writes wait for room only when the kernel has none
            // (`wait_writable`).
            // SAFETY: a std UdpSocket owns its descriptor for as long as it lives, and it
            // lives inside the AsyncFd.
            let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
                .map_err(|e| MediaSocketError::Bind(addr, e.into()))?;
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

    /// Whether a datagram from `source` is taken at all.
    pub fn accepts(&self, source: IpAddr) -> bool {
        match &self.accept {
            Accept::Anyone => true,
            Accept::Own(own) => source.is_loopback() || own.contains(&source),
        }
    }

    /// Everything waiting on one of the addresses (up to a batch), taken in one system call
    /// once there is something: which local address it came to.
    pub async fn recv(&self, batch: &mut RecvBatch) -> io::Result<SocketAddr> {
        std::future::poll_fn(|cx| {
            let count = self.sockets.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..count {
                let (socket, local) = &self.sockets[(start + i) % count];
                loop {
                    let mut ready = match socket.poll_read_ready(cx) {
                        Poll::Ready(Ok(ready)) => ready,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    };
                    match udp_batch::recv_many(socket.as_raw_fd(), batch) {
                        Ok(taken) => {
                            // Less than a batch: the queue was emptied. The next datagram
                            // wakes the loop (the runtime's epoll is edge-triggered), so
                            // no receive is spent only to find nothing.
                            if taken < BATCH {
                                ready.clear_ready();
                            }
                            return Poll::Ready(Ok(*local));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Send every datagram, each from the socket bound to its source (the first one when
    /// none is), as few system calls as the batch needs. Only a full socket buffer waits.
    pub async fn send_all(&self, transmits: &[Transmit]) {
        for (index, (socket, _)) in self.sockets.iter().enumerate() {
            let datagrams: Vec<(SocketAddr, &[u8])> = transmits
                .iter()
                .filter(|t| self.socket_for(t.source) == index)
                .map(|t| (t.destination, &t.contents[..]))
                .collect();
            let fd = socket.get_ref().as_fd();
            let mut rest = &datagrams[..];
            while !rest.is_empty() {
                match udp_batch::send_many(fd.as_raw_fd(), rest) {
                    Ok(sent) => rest = &rest[sent..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = wait_writable(fd).await {
                            tracing::debug!("udp send: {e}");
                            break;
                        }
                    }
                    // One phone's address unreachable: the others' datagrams still go.
                    Err(e) => {
                        tracing::debug!("udp send: {e}");
                        rest = &rest[1..];
                    }
                }
            }
        }
    }

    fn socket_for(&self, source: SocketAddr) -> usize {
        self.sockets
            .iter()
            .position(|(_, local)| *local == source)
            .unwrap_or(0)
    }
}

/// This machine's addresses for media: IPv4 and global IPv6 (not loopback, not link-local,
/// which needs a scope browsers do not give). Loopback only when there is nothing else.
/// Until the socket's send buffer has room: through a second descriptor for it, registered
/// for writing only while this waits (the socket itself is registered for reading only).
async fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let descriptor = fd.try_clone_to_owned()?;
    // SAFETY: the duplicate is owned by the AsyncFd and closed when it drops.
    let writer = unsafe { AsyncFd::register_with_interest(descriptor, Interest::WRITABLE) }
        .map_err(io::Error::from)?;
    writer.writable().await?.retain_ready();
    Ok(())
}

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
    async fn the_receive_buffer_is_raised_as_far_as_the_kernel_allows() {
        let loopback: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let sockets = MediaSockets::bind(&loopback, 0, Accept::Anyone).unwrap();
        // The kernel's cap, doubled, from a socket that asks for everything: net.core.rmem_max
        // is not readable inside a network namespace on older kernels (Debian 12's), and
        // the tests run in one.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cap = udp_batch::raise_receive_buffer(probe.as_raw_fd(), usize::MAX).unwrap();
        let held = udp_batch::receive_buffer(sockets.sockets[0].0.as_raw_fd()).unwrap();
        // Unraised, it holds net.core.rmem_default (208 KiB on Debian), less than either.
        assert_eq!(held, (2 * RECEIVE_BUFFER).min(cap));
    }

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
        let mut batch = RecvBatch::default();
        let to = sockets.recv(&mut batch).await.unwrap();
        assert_eq!(to, hosts[1]);
        let got: Vec<(SocketAddr, &[u8])> = batch.datagrams().collect();
        let from = phone.local_addr().unwrap();
        assert_eq!(
            got,
            vec![(from, &b"to the second"[..]), (from, &b"and again"[..])],
            "what is waiting comes in one batch"
        );
        let nothing_more = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            sockets.recv(&mut batch),
        );
        assert!(nothing_more.await.is_err(), "nothing more is waiting");
        phone.send_to(b"later", hosts[0]).unwrap();
        let to = sockets.recv(&mut batch).await.unwrap();
        assert_eq!(to, hosts[0], "the next datagram wakes the receive");
        assert_eq!(batch.datagrams().next().unwrap().1, b"later");

        let back = |source, contents: &[u8]| Transmit {
            source,
            destination: from,
            contents: contents.to_vec(),
        };
        sockets
            .send_all(&[back(hosts[1], b"back"), back(hosts[0], b"first")])
            .await;
        let mut buf = [0u8; 64];
        let mut replies = Vec::new();
        for _ in 0..2 {
            let (n, source) = phone.recv_from(&mut buf).unwrap();
            replies.push((buf[..n].to_vec(), source));
        }
        replies.sort();
        assert_eq!(
            replies,
            vec![(b"back".to_vec(), hosts[1]), (b"first".to_vec(), hosts[0])],
            "each leaves from the address it names"
        );
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
