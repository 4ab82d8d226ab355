//! Many datagrams per system call on a nonblocking UDP socket: `recvmmsg(2)` takes everything
//! waiting (up to `BATCH`) at once, `sendmmsg(2)` sends a wake-up's worth of forwarded copies
//! at once. In a call each phone's packet goes out once per other participant, so the sends
//! outnumber the receives, and a system call each was a large part of the box's work.
//!
//! UDP GSO is not used: it sends one buffer as equal segments to *one* destination, while an
//! SFU's copies of a packet go to different phones.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Most datagrams taken or sent per system call. Also a bound on what one wake-up takes in,
/// so that signalling, control and the privacy switch never wait behind a flood.
pub const BATCH: usize = 32;
/// Largest datagram taken whole (a UDP payload on a 1500-byte link fits); a longer one,
/// which no phone sends, is dropped.
pub const MAX_DATAGRAM: usize = 2000;

/// Room for up to `BATCH` received datagrams and where each came from.
pub struct RecvBatch {
    buffers: Vec<[u8; MAX_DATAGRAM]>,
    /// Source, buffer and length of each datagram handed on.
    received: Vec<(SocketAddr, usize, usize)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buffers: vec![[0; MAX_DATAGRAM]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// The datagrams of the last `recv_many`, in order, with their sources.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.received
            .iter()
            .map(|&(source, buffer, len)| (source, &self.buffers[buffer][..len]))
    }

    pub fn len(&self) -> usize {
        self.received.len()
    }
}

/// Take every datagram waiting on `fd`, up to `BATCH`: how many came (at least one), or
/// `WouldBlock` when none was waiting. Truncated datagrams and ones from an address that is
/// not IP are left out of the batch but counted, so a batch may hold fewer than returned.
pub fn recv_many(fd: RawFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.received.clear();
    // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr (null pointers, zero
    // lengths); every pointer set below points into `batch.buffers` or these arrays, which
    // outlive the call.
    let mut addresses: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        iovecs[i].iov_base = batch.buffers[i].as_mut_ptr().cast();
        iovecs[i].iov_len = MAX_DATAGRAM;
        let header = &mut headers[i].msg_hdr;
        header.msg_name = (&mut addresses[i] as *mut libc::sockaddr_storage).cast();
        header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
    }
    // SAFETY: `headers` holds BATCH initialised headers whose buffers are valid for writes.
    let count = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    let count = count as usize;
    for (buffer, (header, address)) in headers.iter().zip(addresses.iter()).take(count).enumerate()
    {
        if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            continue;
        }
        if let Some(source) = socket_addr(address) {
            batch
                .received
                .push((source, buffer, header.msg_len as usize));
        }
    }
    Ok(count)
}

/// Send as many of `datagrams` as the socket takes now, in order, in one system call: how
/// many went. An error means the first did not go (`WouldBlock`: the buffer is full).
pub fn send_many(fd: RawFd, datagrams: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    let count = datagrams.len().min(BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: as in `recv_many`; the kernel only reads the buffers.
    let mut addresses: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (destination, data)) in datagrams.iter().take(count).enumerate() {
        iovecs[i].iov_base = data.as_ptr() as *mut libc::c_void;
        iovecs[i].iov_len = data.len();
        let header = &mut headers[i].msg_hdr;
        header.msg_namelen = write_socket_addr(*destination, &mut addresses[i]);
        header.msg_name = (&mut addresses[i] as *mut libc::sockaddr_storage).cast();
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
    }
    // SAFETY: the first `count` headers are initialised and point at live buffers.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, which fits in sockaddr_storage.
            let v4: libc::sockaddr_in = unsafe {
                std::ptr::read_unaligned((storage as *const libc::sockaddr_storage).cast())
            };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, which fits in sockaddr_storage.
            let v6: libc::sockaddr_in6 = unsafe {
                std::ptr::read_unaligned((storage as *const libc::sockaddr_storage).cast())
            };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                u32::from_be(v6.sin6_flowinfo),
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn write_socket_addr(address: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let mut raw = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let len = match address {
        SocketAddr::V4(a) => {
            let v4 = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write_unaligned(raw.as_mut_ptr().cast(), v4) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let v6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write_unaligned(raw.as_mut_ptr().cast(), v6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: zeroed, then partly written: fully initialised.
    *storage = unsafe { raw.assume_init() };
    len as libc::socklen_t
}

/// Ask the kernel to hold up to `bytes` of unread datagrams on `fd`: what it holds then (it
/// doubles what it is asked, capped at `net.core.rmem_max`).
pub fn raise_receive_buffer(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let asked = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `asked` outlives the call, and its size is passed with it.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&asked as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    receive_buffer(fd)
}

/// How many bytes of unread datagrams the kernel holds on `fd`.
pub fn receive_buffer(fd: RawFd) -> io::Result<usize> {
    let mut held: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `held` and `size` outlive the call, and `size` is `held`'s.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut held as *mut libc::c_int).cast(),
            &mut size,
        )
    };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(held).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn socket(addr: &str) -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_in_in_one() {
        let box_socket = socket("127.0.0.1:0");
        let phone_a = socket("127.0.0.1:0");
        let phone_b = socket("[::1]:0");
        let v6_box = socket("[::1]:0");
        let a = phone_a.local_addr().unwrap();
        let b = phone_b.local_addr().unwrap();
        let datagrams: Vec<(SocketAddr, &[u8])> =
            vec![(a, b"one"), (a, b"two"), (a, &[7u8; 1500][..])];
        assert_eq!(send_many(box_socket.as_raw_fd(), &datagrams).unwrap(), 3);
        assert_eq!(
            send_many(v6_box.as_raw_fd(), &[(b, &b"six"[..])]).unwrap(),
            1
        );

        let mut batch = RecvBatch::default();
        assert_eq!(recv_many(phone_a.as_raw_fd(), &mut batch).unwrap(), 3);
        let got: Vec<(SocketAddr, Vec<u8>)> =
            batch.datagrams().map(|(s, d)| (s, d.to_vec())).collect();
        let from = box_socket.local_addr().unwrap();
        assert_eq!(got[0], (from, b"one".to_vec()));
        assert_eq!(got[1], (from, b"two".to_vec()));
        assert_eq!(got[2], (from, vec![7u8; 1500]));
        assert_eq!(recv_many(phone_b.as_raw_fd(), &mut batch).unwrap(), 1);
        let (source, data) = batch.datagrams().next().unwrap();
        assert_eq!((source, data), (v6_box.local_addr().unwrap(), &b"six"[..]));

        let nothing = recv_many(phone_a.as_raw_fd(), &mut batch).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            batch.len(),
            0,
            "an empty receive leaves nothing from before"
        );
    }

    #[test]
    fn more_than_a_batch_waits_for_the_next_call_and_a_long_datagram_is_left_out() {
        let sender = socket("127.0.0.1:0");
        let receiver = socket("127.0.0.1:0");
        let to = receiver.local_addr().unwrap();
        sender.send_to(&[1u8; MAX_DATAGRAM + 1], to).unwrap();
        for i in 0..BATCH as u8 {
            sender.send_to(&[i], to).unwrap();
        }
        let mut batch = RecvBatch::default();
        assert_eq!(recv_many(receiver.as_raw_fd(), &mut batch).unwrap(), BATCH);
        assert_eq!(batch.len(), BATCH - 1, "the truncated one is not handed on");
        assert_eq!(batch.datagrams().next().unwrap().1, &[0u8][..]);
        assert_eq!(recv_many(receiver.as_raw_fd(), &mut batch).unwrap(), 1);
        assert_eq!(batch.datagrams().next().unwrap().1, &[BATCH as u8 - 1][..]);
    }
}
