//! Reaching the family outside the home, with no third party: the home router is asked to
//! forward the HTTPS port and the media port to the box (PCP, NAT-PMP or UPnP-IGD, whichever
//! it answers), and tells the box its external address. `mapper` is the task that talks to
//! the router; what it learns is a `Reach`, which the status, the TV, the join links and the
//! media candidates follow. Nothing here talks to anything but the home router. `relay`
//! gives phones credentials for the owner's TURN server, which the box never contacts.
//! `dns_update` keeps the owner's domain name pointing at the external address.

pub mod dns_update;
pub mod gateway;
pub mod mapper;
pub mod pcp;
pub mod relay;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How the router was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    #[serde(rename = "PCP")]
    Pcp,
    #[serde(rename = "NAT-PMP")]
    NatPmp,
    #[serde(rename = "UPnP")]
    Upnp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP",
        })
    }
}

/// Whether family outside the home can reach the box, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Port mapping is off in the config: the box is for the home network only.
    Off,
    /// Looking for the router.
    Trying,
    /// Only phones on the home network can join.
    HomeOnly(Unreachable),
    /// The router forwards both ports to the box.
    Outside(Mapping),
}

/// Why family outside cannot join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// The machine has no default route (no router).
    NoRouter,
    /// Neither PCP, NAT-PMP nor UPnP got an answer.
    NoAnswer,
    /// The router answered but would not forward.
    Refused(String),
    /// The router's own address is shared with other customers (100.64.0.0/10).
    CarrierGradeNat(IpAddr),
    /// The router's own address is private: another router sits in front of it.
    DoubleNat(IpAddr),
    /// Forwarding was in place and then lost (router restarted, unplugged).
    Lost(String),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::NoRouter => f.write_str(
                "this box is not connected to a network: plug in a cable, or put \
                 hearth-setup.toml with the Wi-Fi's name and password on the card",
            ),
            Unreachable::NoAnswer => {
                f.write_str("the router did not answer (UPnP, NAT-PMP and PCP are off or missing)")
            }
            Unreachable::Refused(why) => write!(f, "the router refused to forward ports: {why}"),
            Unreachable::CarrierGradeNat(ip) => write!(
                f,
                "the internet provider shares one address among customers (carrier-grade NAT, \
                 the router's address is {ip})"
            ),
            Unreachable::DoubleNat(ip) => write!(
                f,
                "another router sits in front of the home router (its address is the private {ip})"
            ),
            Unreachable::Lost(why) => write!(f, "the router stopped forwarding: {why}"),
        }
    }
}

/// Ports forwarded by the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub via: Protocol,
    pub external_ip: IpAddr,
    /// External HTTPS port (forwarded to the box's HTTPS port).
    pub https_port: u16,
    /// External media port (forwarded to the box's media port on `lan_ip`).
    pub media_port: u16,
    /// The box's address the router forwards to.
    pub lan_ip: IpAddr,
    /// When the router forgets the forwarding unless renewed.
    pub expires: Instant,
    /// Whether the external address works from inside the home too (hairpin NAT).
    pub hairpin: bool,
}

impl Mapping {
    pub fn https(&self) -> SocketAddr {
        SocketAddr::new(self.external_ip, self.https_port)
    }

    pub fn media(&self) -> SocketAddr {
        SocketAddr::new(self.external_ip, self.media_port)
    }
}

impl Reach {
    /// One plain line for the TV's idle screen.
    pub fn tv_line(&self) -> String {
        match self {
            Reach::Off => "Family at home can join (reaching the box from outside is off)".into(),
            Reach::Trying => "Checking whether family outside can join…".into(),
            Reach::HomeOnly(why) => format!("Only family at home can join: {why}"),
            Reach::Outside(_) => "Family outside the home can join too".into(),
        }
    }

    /// The `reach` section of `hearth status`.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        use serde_json::json;
        match self {
            Reach::Off => json!({ "state": "off", "outside": false }),
            Reach::Trying => json!({ "state": "trying", "outside": false }),
            Reach::HomeOnly(why) => json!({
                "state": "home only",
                "outside": false,
                "reason": why.to_string(),
                "kind": why.kind(),
            }),
            Reach::Outside(m) => json!({
                "state": "outside",
                "outside": true,
                "via": m.via,
                "external_address": m.external_ip.to_string(),
                "https_port": m.https_port,
                "media_port": m.media_port,
                "lease_left_secs": m.expires.saturating_duration_since(now).as_secs(),
                "hairpin": m.hairpin,
            }),
        }
    }

    pub fn mapping(&self) -> Option<&Mapping> {
        match self {
            Reach::Outside(m) => Some(m),
            _ => None,
        }
    }
}

impl Unreachable {
    /// A short machine-readable name for the reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Unreachable::NoRouter => "no router",
            Unreachable::NoAnswer => "no answer",
            Unreachable::Refused(_) => "refused",
            Unreachable::CarrierGradeNat(_) => "carrier-grade NAT",
            Unreachable::DoubleNat(_) => "double NAT",
            Unreachable::Lost(_) => "lost",
        }
    }
}

/// Whether a router's external address can be reached from the internet at all.
pub fn classify_external(ip: IpAddr) -> Result<(), Unreachable> {
    match ip {
        IpAddr::V4(v4) if is_shared(v4) => Err(Unreachable::CarrierGradeNat(ip)),
        IpAddr::V4(v4) if v4.is_private() || v4.is_link_local() || v4.is_loopback() => {
            Err(Unreachable::DoubleNat(ip))
        }
        IpAddr::V4(v4) if v4.is_unspecified() => Err(Unreachable::Refused(
            "the router has no external address yet".into(),
        )),
        _ => Ok(()),
    }
}

/// 100.64.0.0/10, shared address space for carrier-grade NAT (RFC 6598).
fn is_shared(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 100 && (64..128).contains(&b)
}

/// When to renew a lease of `lease` granted at `granted`: at half its life, or at the next
/// check, whichever comes first (a check notices a router that restarted and forgot it).
pub fn next_renewal(granted: Instant, lease: Duration, check_every: Duration) -> Instant {
    granted + (lease / 2).min(check_every).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_private_router_addresses_are_named() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            classify_external(ip("100.64.0.2")),
            Err(Unreachable::CarrierGradeNat(ip("100.64.0.2")))
        );
        assert_eq!(
            classify_external(ip("100.127.255.1")),
            Err(Unreachable::CarrierGradeNat(ip("100.127.255.1")))
        );
        assert_eq!(classify_external(ip("100.128.0.1")), Ok(()));
        assert_eq!(
            classify_external(ip("192.168.0.10")),
            Err(Unreachable::DoubleNat(ip("192.168.0.10")))
        );
        assert_eq!(classify_external(ip("203.0.113.1")), Ok(()));
        let line = Reach::HomeOnly(Unreachable::CarrierGradeNat(ip("100.64.0.2"))).tv_line();
        assert!(line.contains("carrier-grade NAT"), "{line}");
    }

    #[test]
    fn the_tv_says_in_one_line_whether_family_outside_can_join() {
        let line = Reach::HomeOnly(Unreachable::NoAnswer).tv_line();
        assert_eq!(
            line,
            "Only family at home can join: the router did not answer (UPnP, NAT-PMP and PCP \
             are off or missing)"
        );
        assert!(!line.contains('\n'));
        let line = Reach::Outside(Mapping {
            via: Protocol::Pcp,
            external_ip: "203.0.114.1".parse().unwrap(),
            https_port: 1024,
            media_port: 10000,
            lan_ip: "192.168.1.2".parse().unwrap(),
            expires: Instant::now(),
            hairpin: false,
        })
        .tv_line();
        assert_eq!(line, "Family outside the home can join too");
    }

    #[test]
    fn leases_are_renewed_at_half_life_or_at_the_next_check() {
        let t = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(next_renewal(t, hour, hour), t + hour / 2);
        assert_eq!(
            next_renewal(t, Duration::from_secs(30), Duration::from_secs(60)),
            t + Duration::from_secs(15)
        );
        assert_eq!(
            next_renewal(t, hour, Duration::from_secs(3)),
            t + Duration::from_secs(3)
        );
    }
}
