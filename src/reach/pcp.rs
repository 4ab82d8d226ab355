//! A PCP MAP request and its reply (RFC 6887), only to tell why a router refused to forward.
//! A router behind carrier-grade NAT (or another router) refuses every mapping, over NAT-PMP
//! and UPnP without saying its address; its PCP reply still carries it. The mappings
//! themselves are `crab_nat`'s (see `mapper`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::{classify_external, Unreachable};

const PORT: u16 = 5351;
const VERSION: u8 = 2;
const OPCODE_MAP: u8 = 1;
/// Set in replies' opcode byte.
const RESPONSE: u8 = 0x80;
const LEN: usize = 60;
const UDP: u8 = 17;

/// A MAP request: forward `protocol` `internal_port` of `client` for `lifetime` seconds
/// (0: delete), any external port and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    pub client: IpAddr,
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    pub lifetime: u32,
}

/// A MAP reply. On an error `result` is non-zero, and what the other fields hold is the
/// router's choice (miniupnpd fills in its external address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapReply {
    pub result: u8,
    pub lifetime: u32,
    pub epoch: u32,
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    pub external_ip: IpAddr,
}

/// IPv4 travels as an IPv4-mapped IPv6 address.
fn to_wire(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn from_wire(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl MapRequest {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[1] = OPCODE_MAP;
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..24].copy_from_slice(&to_wire(self.client));
        b[24..36].copy_from_slice(&self.nonce);
        b[36] = self.protocol;
        b[40..42].copy_from_slice(&self.internal_port.to_be_bytes());
        // Suggested external port 0 and address 0.0.0.0 (as ::ffff:0:0): any.
        b[44..60].copy_from_slice(&to_wire(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        b
    }
}

impl MapReply {
    /// A MAP reply, or None for anything else (another version, opcode, or too short).
    pub fn decode(b: &[u8]) -> Option<MapReply> {
        if b.len() < LEN || b[0] != VERSION || b[1] != RESPONSE | OPCODE_MAP {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        Some(MapReply {
            result: b[3],
            lifetime: u32_at(4),
            epoch: u32_at(8),
            nonce: b[24..36].try_into().ok()?,
            protocol: b[36],
            internal_port: u16_at(40),
            external_port: u16_at(42),
            external_ip: from_wire(b[44..60].try_into().ok()?),
        })
    }
}

/// Why the router at `gateway` would not forward, if its PCP reply tells: its external
/// address is shared (carrier-grade NAT) or private (double NAT). None when it does not
/// answer PCP, names no address, or names a public one.
pub async fn diagnose(
    gateway: Ipv4Addr,
    client: IpAddr,
    internal_port: u16,
) -> Option<Unreachable> {
    diagnose_at(SocketAddr::new(gateway.into(), PORT), client, internal_port).await
}

async fn diagnose_at(
    server: SocketAddr,
    client: IpAddr,
    internal_port: u16,
) -> Option<Unreachable> {
    let request = MapRequest {
        client,
        nonce: rand::random(),
        protocol: UDP,
        internal_port,
        lifetime: 120,
    };
    let reply = ask(server, &request).await?;
    if reply.result == 0 {
        // Granted after all: not ours to keep (the mapper asks for its own).
        let delete = MapRequest {
            lifetime: 0,
            ..request
        };
        let _ = ask(server, &delete).await;
    }
    match reply.external_ip {
        IpAddr::V4(v4) if v4.is_unspecified() => None,
        ip => classify_external(ip).err(),
    }
}

/// One request, sent again once after 250 ms, then 500 ms for a reply with our nonce: a
/// router that speaks PCP answers on the LAN within milliseconds, and one that does not has
/// already kept the mapper waiting.
async fn ask(server: SocketAddr, request: &MapRequest) -> Option<MapReply> {
    let socket = tokio::net::UdpSocket::bind((request.client, 0))
        .await
        .ok()?;
    socket.connect(server).await.ok()?;
    let bytes = request.encode();
    let mut wait = Duration::from_millis(250);
    for _ in 0..2 {
        socket.send(&bytes).await.ok()?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 1100];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            match MapReply::decode(&buf[..n]) {
                Some(reply) if reply.nonce == request.nonce => return Some(reply),
                _ => continue,
            }
        }
        wait *= 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOX: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));

    #[test]
    fn a_map_request_is_60_bytes_as_rfc_6887_lays_them_out() {
        let request = MapRequest {
            client: BOX,
            nonce: *b"hearth-nonce",
            protocol: UDP,
            internal_port: 10000,
            lifetime: 120,
        };
        let b = request.encode();
        assert_eq!(&b[..4], &[2, 1, 0, 0]);
        assert_eq!(&b[4..8], &120u32.to_be_bytes());
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 2]
        );
        assert_eq!(&b[24..36], b"hearth-nonce");
        assert_eq!(&b[36..40], &[17, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x27, 0x10, 0, 0]);
        assert_eq!(&b[44..60], &to_wire(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }

    /// A refusal as miniupnpd sends it behind carrier-grade NAT: result 8 (NO_RESOURCES),
    /// its external address filled in.
    fn refusal() -> Vec<u8> {
        let mut b = vec![2, 0x81, 0, 8];
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&42u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(b"hearth-nonce");
        b.extend_from_slice(&[17, 0, 0, 0, 0x27, 0x10, 0, 0]);
        b.extend_from_slice(&to_wire("100.64.0.2".parse().unwrap()));
        b
    }

    #[test]
    fn a_refusal_carries_the_routers_address() {
        let reply = MapReply::decode(&refusal()).unwrap();
        assert_eq!(
            reply,
            MapReply {
                result: 8,
                lifetime: 0,
                epoch: 42,
                nonce: *b"hearth-nonce",
                protocol: UDP,
                internal_port: 10000,
                external_port: 0,
                external_ip: "100.64.0.2".parse().unwrap(),
            }
        );
        assert_eq!(
            classify_external(reply.external_ip),
            Err(Unreachable::CarrierGradeNat("100.64.0.2".parse().unwrap()))
        );
    }

    #[test]
    fn other_packets_are_not_map_replies() {
        let reply = refusal();
        assert!(MapReply::decode(&reply[..59]).is_none(), "too short");
        let mut request = reply.clone();
        request[1] = 1;
        assert!(MapReply::decode(&request).is_none(), "a request");
        let mut natpmp = reply.clone();
        natpmp[0] = 0;
        assert!(MapReply::decode(&natpmp).is_none(), "NAT-PMP");
        let mut announce = reply;
        announce[1] = 0x80;
        assert!(MapReply::decode(&announce).is_none(), "ANNOUNCE");
    }

    #[tokio::test]
    async fn diagnose_reads_the_address_of_a_refusing_router() {
        // A router on loopback that refuses with its shared address, echoing the nonce.
        let router = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = router.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1100];
            while let Ok((n, from)) = router.recv_from(&mut buf) {
                let mut reply = refusal();
                reply[24..36].copy_from_slice(&buf[24..36]);
                if n == LEN {
                    let _ = router.send_to(&reply, from);
                }
            }
        });
        let why = diagnose_at(server, IpAddr::V4(Ipv4Addr::LOCALHOST), 10000).await;
        assert_eq!(
            why,
            Some(Unreachable::CarrierGradeNat("100.64.0.2".parse().unwrap()))
        );
    }
}
