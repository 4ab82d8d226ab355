//! The simulated home network itself (tests/support/home.rs): the LAN is behind NAT, the
//! router's miniupnpd answers NAT-PMP, PCP and UPnP-IGD for real, its mappings open the box
//! to the internet and, through hairpin NAT, to the LAN at the WAN address; and headless
//! browsers in each namespace can load a page the box serves.
//!
//! Needs root or `tests/in-netns` (the suite runs inside it), and `make deps` (nftables,
//! miniupnpd-nftables).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hearth_test_support::home::{
    Home, HomeOptions, Mapping, Ns, Proto, UpnpOptions, BOX_IP, ROUTER_LAN_IP, WIFI_PHONE_IP,
};
use hearth_test_support::Daemon;
use hearth_test_support::{Browser, BrowserKind};

const SECOND: Duration = Duration::from_secs(1);

/// A TCP listener and a UDP socket on `port` in `ns` that answer every connection and
/// datagram with "hello <peer address>", on threads that end with the test process.
fn echo(home: &Home, ns: Ns, port: u16) -> Result<()> {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let tcp = home.ns(ns).tcp_listen(any)?;
    let udp = home.ns(ns).udp_bind(any)?;
    std::thread::spawn(move || {
        for mut stream in tcp.incoming().map_while(Result::ok) {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let _ = stream.write_all(format!("hello {peer}").as_bytes());
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("hello {peer}").as_bytes(), peer);
        }
    });
    Ok(())
}

/// What the echo at `to` says over TCP to a connection from `from`: "hello <our address as
/// it saw it>".
fn tcp_hello(home: &Home, from: Ns, to: SocketAddr, within: Duration) -> Result<String> {
    let mut stream = home.ns(from).tcp_connect(to, within)?;
    stream.set_read_timeout(Some(5 * SECOND))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The same over UDP; None when no answer comes within `within`.
fn udp_hello(home: &Home, from: Ns, to: SocketAddr, within: Duration) -> Result<Option<String>> {
    let socket = home.ns(from).udp_bind((Ipv4Addr::UNSPECIFIED, 0).into())?;
    socket.connect(to)?;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1500];
    // Datagrams may be lost while a mapping is being set up: resend every 200 ms.
    while Instant::now() < deadline {
        socket.send(b"hi")?;
        let left = deadline.saturating_duration_since(Instant::now());
        socket.set_read_timeout(Some(
            left.min(Duration::from_millis(200))
                .max(Duration::from_millis(1)),
        ))?;
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

fn peer_ip(hello: &str) -> Option<Ipv4Addr> {
    let addr: SocketAddrV4 = hello.strip_prefix("hello ")?.parse().ok()?;
    Some(*addr.ip())
}

fn no_upnp() -> HomeOptions {
    HomeOptions {
        miniupnpd: None,
        ..HomeOptions::default()
    }
}

#[test]
fn the_lan_is_behind_nat_and_closed_to_the_internet() -> Result<()> {
    let home = Home::build(no_upnp())?;
    echo(&home, Ns::Home, 7000)?;
    echo(&home, Ns::Internet, 7000)?;
    let boxed = SocketAddr::from((BOX_IP, 7000));

    // Out: the internet sees the router's WAN address, not the box's.
    let seen = tcp_hello(
        &home,
        Ns::Home,
        (home.internet_ip(), 7000).into(),
        5 * SECOND,
    )?;
    ensure!(
        peer_ip(&seen) == Some(home.wan_ip()),
        "the internet saw {seen}"
    );
    let seen = udp_hello(
        &home,
        Ns::Home,
        (home.internet_ip(), 7000).into(),
        5 * SECOND,
    )?;
    ensure!(
        seen.as_deref().and_then(peer_ip) == Some(home.wan_ip()),
        "over UDP: {seen:?}"
    );

    // On the LAN, the phone at home reaches the box directly, as itself.
    let seen = tcp_hello(&home, Ns::Wifi, boxed, 5 * SECOND)?;
    ensure!(peer_ip(&seen) == Some(WIFI_PHONE_IP), "the box saw {seen}");

    // In: the phone outside routes to the router, whose firewall drops what no mapping lets
    // in, and it has no mapping yet: neither the LAN address nor the WAN address answers.
    // (Half a second is long here: a round trip between namespaces takes microseconds.)
    let half = SECOND / 2;
    for to in [boxed, SocketAddr::from((home.wan_ip(), 7000))] {
        let tcp = home.ns(Ns::Internet).tcp_connect(to, half);
        ensure!(tcp.is_err(), "the internet reached {to} over TCP");
        let udp = udp_hello(&home, Ns::Internet, to, half)?;
        ensure!(udp.is_none(), "the internet reached {to} over UDP: {udp:?}");
    }
    Ok(())
}

#[test]
fn natpmp_mappings_open_the_box_to_the_internet_and_to_the_lan_by_hairpin() -> Result<()> {
    let home = Home::build(HomeOptions::default())?;
    echo(&home, Ns::Home, 7000)?;

    let address = home.natpmp_external_address(Ns::Home)?;
    ensure!(address.result == 0, "{address:?}");
    ensure!(address.external_ip == home.wan_ip(), "{address:?}");

    let udp = home.natpmp_map(Ns::Home, Proto::Udp, 7000, 40000, 60)?;
    let tcp = home.natpmp_map(Ns::Home, Proto::Tcp, 7000, 40001, 60)?;
    for reply in [udp, tcp] {
        ensure!(reply.result == 0 && reply.lifetime == 60, "{reply:?}");
    }
    ensure!(
        udp.external_port == 40000 && tcp.external_port == 40001,
        "{udp:?} {tcp:?}"
    );
    // In place, and copied for hairpin: LAN packets sent to the WAN address before that
    // would be stuck with a conntrack entry that bypasses the mapping.
    let internal = SocketAddrV4::new(BOX_IP, 7000);
    let want = [(Proto::Udp, 40000), (Proto::Tcp, 40001)].map(|(proto, external_port)| Mapping {
        proto,
        external_port,
        internal,
    });
    home.mappings_until("both mappings", 5 * SECOND, |m| {
        m.len() == 2 && want.iter().all(|w| m.contains(w))
    })?;

    // From the internet, at the WAN address; the box sees the phone's own address.
    let wan_udp = SocketAddr::from((home.wan_ip(), 40000));
    let wan_tcp = SocketAddr::from((home.wan_ip(), 40001));
    let seen = udp_hello(&home, Ns::Internet, wan_udp, 5 * SECOND)?;
    ensure!(
        seen.as_deref().and_then(peer_ip) == Some(home.internet_ip()),
        "{seen:?}"
    );
    let seen = tcp_hello(&home, Ns::Internet, wan_tcp, 5 * SECOND)?;
    ensure!(peer_ip(&seen) == Some(home.internet_ip()), "{seen}");

    // Hairpin: the phone at home and the box itself, at the WAN address. The router stands
    // in as the source, so replies come back through it.
    for from in [Ns::Wifi, Ns::Home] {
        let seen = udp_hello(&home, from, wan_udp, 5 * SECOND)?;
        let seen =
            seen.with_context(|| format!("{from:?}: no hairpin reply; {}", home.ruleset()))?;
        ensure!(peer_ip(&seen) == Some(ROUTER_LAN_IP), "{from:?}: {seen}");
        let seen = tcp_hello(&home, from, wan_tcp, 5 * SECOND)?;
        ensure!(peer_ip(&seen) == Some(ROUTER_LAN_IP), "{from:?}: {seen}");
    }

    // Lifetime 0 deletes; the port is closed again.
    let gone = home.natpmp_map(Ns::Home, Proto::Tcp, 7000, 0, 0)?;
    ensure!(gone.result == 0, "{gone:?}");
    home.mappings_until("the TCP mapping gone", 5 * SECOND, |m| {
        m.iter().all(|m| m.proto != Proto::Tcp)
    })?;
    ensure!(home.ns(Ns::Internet).tcp_connect(wan_tcp, SECOND).is_err());
    Ok(())
}

#[test]
fn natpmp_grants_what_is_asked_and_moves_refused_ports() -> Result<()> {
    let home = Home::build(HomeOptions::default())?;
    // miniupnpd 2.3.1 does not clamp NAT-PMP lifetimes to min/max_lifetime (only PCP's).
    for lifetime in [5, 30, 100_000] {
        let reply = home.natpmp_map(Ns::Home, Proto::Udp, 7000, 40000, lifetime)?;
        ensure!(reply.result == 0 && reply.lifetime == lifetime, "{reply:?}");
    }
    // A lease ends on time: miniupnpd removes the rules within a second of it.
    let short = home.natpmp_map(Ns::Home, Proto::Udp, 7000, 40000, 2)?;
    ensure!(short.lifetime == 2, "{short:?}");
    let t = Instant::now();
    home.mappings_until("the 2 s mapping gone", 6 * SECOND, |m| m.is_empty())?;
    ensure!(
        t.elapsed() < 4 * SECOND,
        "a 2 s lease lasted {:?}",
        t.elapsed()
    );
    // External port 443 is outside the default permission rules (1024-65535): NAT-PMP is
    // given another port instead of an error. Clients must use the port in the reply.
    let reply = home.natpmp_map(Ns::Home, Proto::Tcp, 8443, 443, 60)?;
    ensure!(reply.result == 0, "{reply:?}");
    ensure!(
        reply.external_port != 443 && reply.external_port >= 1024,
        "{reply:?}"
    );
    Ok(())
}

/// A PCP MAP request (RFC 6887) from the box: (result code, lifetime, epoch, external port,
/// external address).
fn pcp_map(
    home: &Home,
    proto: Proto,
    internal_port: u16,
    external_port: u16,
    lifetime: u32,
) -> Result<(u8, u32, u32, u16, Ipv4Addr)> {
    let socket = home.ns(Ns::Home).udp_bind((BOX_IP, 0).into())?;
    socket.connect((ROUTER_LAN_IP, 5351))?;
    let mut request = vec![2, 1, 0, 0];
    request.extend_from_slice(&lifetime.to_be_bytes());
    request.extend_from_slice(&BOX_IP.to_ipv6_mapped().octets());
    request.extend_from_slice(b"hearth-nonce"); // 12 bytes
    request.push(match proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    });
    request.extend_from_slice(&[0, 0, 0]);
    request.extend_from_slice(&internal_port.to_be_bytes());
    request.extend_from_slice(&external_port.to_be_bytes());
    request.extend_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    assert_eq!(request.len(), 60);
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    for _ in 0..4 {
        socket.send(&request)?;
        let mut buf = [0u8; 1100];
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        ensure!(
            n >= 60 && buf[0] == 2 && buf[1] == 0x81,
            "PCP reply {:02x?}",
            &buf[..n]
        );
        ensure!(
            &buf[24..36] == b"hearth-nonce",
            "PCP reply for another nonce"
        );
        let ip: [u8; 16] = buf[44..60].try_into()?;
        let ip = std::net::Ipv6Addr::from(ip)
            .to_ipv4_mapped()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        return Ok((
            buf[3],
            u32::from_be_bytes(buf[4..8].try_into()?),
            u32::from_be_bytes(buf[8..12].try_into()?),
            u16::from_be_bytes([buf[42], buf[43]]),
            ip,
        ));
    }
    bail!("no PCP reply; miniupnpd:\n{}", home.miniupnpd_log())
}

#[test]
fn pcp_maps_with_lifetimes_clamped_to_the_routers_lease_settings() -> Result<()> {
    let home = Home::build(HomeOptions {
        miniupnpd: Some(UpnpOptions {
            min_lifetime: 20,
            max_lifetime: 30,
            ..UpnpOptions::default()
        }),
        ..HomeOptions::default()
    })?;
    echo(&home, Ns::Home, 7000)?;
    let (result, lifetime, _, port, ip) = pcp_map(&home, Proto::Udp, 7000, 40000, 3600)?;
    ensure!(result == 0, "PCP result {result}");
    ensure!(
        lifetime == 30,
        "a 3600 s request got {lifetime} s, not max_lifetime"
    );
    ensure!(ip == home.wan_ip() && port == 40000, "{ip}:{port}");
    let (_, lifetime, ..) = pcp_map(&home, Proto::Udp, 7000, 40000, 5)?;
    ensure!(
        lifetime == 20,
        "a 5 s request got {lifetime} s, not min_lifetime"
    );
    let seen = udp_hello(&home, Ns::Internet, (ip, port).into(), 5 * SECOND)?;
    ensure!(
        seen.as_deref().and_then(peer_ip) == Some(home.internet_ip()),
        "{seen:?}"
    );
    Ok(())
}

/// An HTTP/1.1 request from `ns` with `Connection: close`: (status line, body).
fn http(home: &Home, ns: Ns, to: SocketAddr, head: &str, body: &str) -> Result<(String, String)> {
    let mut stream = home.ns(ns).tcp_connect(to, 5 * SECOND)?;
    stream.set_read_timeout(Some(5 * SECOND))?;
    let request = format!(
        "{head}\r\nHost: {to}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (headers, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((
        headers.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// The text of the first `<tag>…</tag>` after `from` in `xml`.
fn element<'a>(xml: &'a str, from: &str, tag: &str) -> Option<&'a str> {
    let rest = &xml[xml.find(from)?..];
    let start = rest.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = rest[start..].find(&format!("</{tag}>"))?;
    Some(&rest[start..start + end])
}

/// The router's IGD, found as a control point finds it: SSDP M-SEARCH from the box
/// (multicast out of its default route, a unicast reply), then the device description.
struct Igd {
    http: SocketAddr,
    service: String,
    control: String,
}

impl Igd {
    fn discover(home: &Home) -> Result<Igd> {
        let ssdp = home
            .ns(Ns::Home)
            .udp_bind((Ipv4Addr::UNSPECIFIED, 0).into())?;
        ssdp.set_read_timeout(Some(Duration::from_millis(500)))?;
        let search = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
        let mut location = None;
        for _ in 0..6 {
            ssdp.send_to(search.as_bytes(), "239.255.255.250:1900")?;
            let mut buf = [0u8; 2048];
            if let Ok((n, from)) = ssdp.recv_from(&mut buf) {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                ensure!(from.ip() == ROUTER_LAN_IP, "SSDP reply from {from}");
                location = reply.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("location")
                        .then(|| value.trim().to_string())
                });
                break;
            }
        }
        let location = location.context("no SSDP reply with a LOCATION from the router")?;
        let url = location
            .strip_prefix("http://")
            .context("LOCATION is not http")?;
        let (authority, path) = url.split_at(url.find('/').unwrap_or(url.len()));
        let http_addr: SocketAddr = authority.parse()?;
        ensure!(
            http_addr == SocketAddr::from((ROUTER_LAN_IP, 5000)),
            "{location}"
        );
        let get = format!("GET {path} HTTP/1.1");
        let (status, desc) = http(home, Ns::Home, http_addr, &get, "")?;
        ensure!(status.contains("200"), "{status}");
        ensure!(
            !desc.contains("<presentationURL>"),
            "the router advertises a presentation URL"
        );
        let wanip = "<serviceType>urn:schemas-upnp-org:service:WANIPConnection:";
        let service = element(&desc, wanip, "serviceType");
        let control = element(&desc, wanip, "controlURL");
        Ok(Igd {
            http: http_addr,
            service: service.context("no WANIPConnection")?.to_string(),
            control: control.context("no controlURL")?.to_string(),
        })
    }

    /// One SOAP action on WANIPConnection: (status line, body).
    fn soap(&self, home: &Home, action: &str, args: &str) -> Result<(String, String)> {
        let service = &self.service;
        let body = format!(
            r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><u:{action} xmlns:u="{service}">{args}</u:{action}></s:Body></s:Envelope>"#
        );
        let head = format!(
            "POST {} HTTP/1.1\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{service}#{action}\"",
            self.control
        );
        http(home, Ns::Home, self.http, &head, &body)
    }

    fn external_ip(&self, home: &Home) -> Result<(String, String)> {
        self.soap(home, "GetExternalIPAddress", "")
    }

    fn add_tcp(
        &self,
        home: &Home,
        external: u16,
        internal: u16,
        lease: u32,
    ) -> Result<(String, String)> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort><NewProtocol>TCP</NewProtocol><NewInternalPort>{internal}</NewInternalPort><NewInternalClient>{BOX_IP}</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>hearth test</NewPortMappingDescription><NewLeaseDuration>{lease}</NewLeaseDuration>"
        );
        self.soap(home, "AddPortMapping", &args)
    }
}

#[test]
fn upnp_igd_answers_ssdp_and_maps_ports_over_soap() -> Result<()> {
    let home = Home::build(HomeOptions::default())?;
    echo(&home, Ns::Home, 7000)?;
    let igd = Igd::discover(&home)?;

    let (status, body) = igd.external_ip(&home)?;
    // miniupnpd 2.3.1 is an IGDv2 (unless force_igd_desc_v1), and answers a search for v1.
    ensure!(
        igd.service.ends_with("WANIPConnection:2"),
        "{}",
        igd.service
    );
    ensure!(status.contains("200"), "{status}: {body}");
    let external = element(
        &body,
        "GetExternalIPAddressResponse",
        "NewExternalIPAddress",
    );
    ensure!(external == Some(&home.wan_ip().to_string()), "{body}");

    let (status, body) = igd.add_tcp(&home, 40002, 7000, 60)?;
    ensure!(status.contains("200"), "{status}: {body}");
    let wan = SocketAddr::from((home.wan_ip(), 40002));
    let seen = tcp_hello(&home, Ns::Internet, wan, 5 * SECOND)?;
    ensure!(peer_ip(&seen) == Some(home.internet_ip()), "{seen}");

    // UPnP refuses a port the permission rules do not allow (NAT-PMP picks another).
    let (status, body) = igd.add_tcp(&home, 443, 7000, 60)?;
    ensure!(
        status.contains("500") && body.contains("<errorCode>606</errorCode>"),
        "{status}: {body}"
    );

    let args = "<NewRemoteHost></NewRemoteHost><NewExternalPort>40002</NewExternalPort><NewProtocol>TCP</NewProtocol>";
    let (status, body) = igd.soap(&home, "DeletePortMapping", args)?;
    ensure!(status.contains("200"), "{status}: {body}");
    ensure!(home.mappings()?.is_empty(), "{:?}", home.mappings()?);

    // The same router describing itself as an IGDv1.
    let mut home = home;
    home.miniupnpd_stop()?;
    home.miniupnpd_start(UpnpOptions {
        igd_v1: true,
        ..UpnpOptions::default()
    })?;
    let igd = Igd::discover(&home)?;
    ensure!(
        igd.service.ends_with("WANIPConnection:1"),
        "{}",
        igd.service
    );
    Ok(())
}

#[test]
fn without_hairpin_the_lan_cannot_use_the_wan_address() -> Result<()> {
    let home = Home::build(HomeOptions {
        hairpin: false,
        ..HomeOptions::default()
    })?;
    echo(&home, Ns::Home, 7000)?;
    let mapped = home.natpmp_map(Ns::Home, Proto::Udp, 7000, 40000, 60)?;
    ensure!(mapped.result == 0, "{mapped:?}");
    let wan = SocketAddr::from((home.wan_ip(), 40000));
    let outside = udp_hello(&home, Ns::Internet, wan, 5 * SECOND)?;
    ensure!(outside.is_some(), "the mapping does not work from outside");
    let inside = udp_hello(&home, Ns::Wifi, wan, SECOND)?;
    ensure!(inside.is_none(), "hairpin is off, yet: {inside:?}");
    Ok(())
}

#[test]
fn a_restarted_router_forgets_its_mappings_announces_itself_and_restarts_its_epoch() -> Result<()> {
    for lease_file in [false, true] {
        let upnp = UpnpOptions {
            lease_file,
            ..UpnpOptions::default()
        };
        let mut home = Home::build(HomeOptions {
            miniupnpd: Some(upnp.clone()),
            ..HomeOptions::default()
        })?;
        let mapped = home.natpmp_map(Ns::Home, Proto::Udp, 7000, 40000, 3600)?;
        ensure!(mapped.result == 0 && home.mappings()?.len() == 1);
        // The epoch counts seconds: wait until it has moved, so that a restart shows.
        let deadline = Instant::now() + 3 * SECOND;
        let moved = loop {
            let epoch = home.natpmp_external_address(Ns::Home)?.epoch;
            if epoch > mapped.epoch {
                break epoch;
            }
            ensure!(Instant::now() < deadline, "the NAT-PMP epoch does not move");
            std::thread::sleep(Duration::from_millis(100));
        };
        // Where a restarted router announces itself: 224.0.0.1:5350.
        let announcements = home.ns(Ns::Home).run(|| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5350))?;
            socket.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 1), &BOX_IP)?;
            Ok(socket)
        })?;

        home.miniupnpd_stop()?;
        ensure!(
            home.mappings()?.is_empty(),
            "stopped: {:?}",
            home.mappings()?
        );
        ensure!(
            home.natpmp_external_address(Ns::Home).is_err(),
            "a stopped router answers"
        );
        home.miniupnpd_start(upnp)?;

        let after = home.natpmp_external_address(Ns::Home)?;
        ensure!(after.epoch < moved, "epoch {} after {moved}", after.epoch);
        let kept = home.mappings()?;
        ensure!(
            kept.len() == usize::from(lease_file),
            "lease file {lease_file}: {kept:?}"
        );
        // miniupnpd 2.3.1 announces with PCP (version 2, ANNOUNCE, epoch 0), not with
        // NAT-PMP's version 0 packet.
        announcements.set_read_timeout(Some(2 * SECOND))?;
        let mut buf = [0u8; 1100];
        let (n, from) = announcements.recv_from(&mut buf)?;
        ensure!(
            from == SocketAddr::from((ROUTER_LAN_IP, 5351)),
            "from {from}"
        );
        ensure!(n >= 24 && buf[..4] == [2, 0x80, 0, 0], "{:02x?}", &buf[..n]);
        ensure!(
            buf[8..12] == [0, 0, 0, 0],
            "announced epoch {:02x?}",
            &buf[8..12]
        );
    }
    Ok(())
}

#[test]
fn behind_carrier_grade_nat_the_router_maps_nothing() -> Result<()> {
    let home = Home::build(HomeOptions::carrier_grade_nat())?;
    // miniupnpd sees a private/shared address on its WAN interface and refuses every
    // request: NAT-PMP result 3 (network failure), ...
    let address = home.natpmp_external_address(Ns::Home)?;
    ensure!(address.result == 3, "{address:?}");
    let map = home.natpmp_map(Ns::Home, Proto::Udp, 7000, 40000, 60)?;
    ensure!(map.result == 3, "{map:?}");
    // ... PCP result 8 (NO_RESOURCES), ...
    let (result, ..) = pcp_map(&home, Proto::Udp, 7000, 40000, 60)?;
    ensure!(result == 8, "PCP result {result}");
    // ... and UPnP: an empty external address (with 200 OK), AddPortMapping 501.
    let igd = Igd::discover(&home)?;
    let (status, body) = igd.external_ip(&home)?;
    let ip = element(
        &body,
        "GetExternalIPAddressResponse",
        "NewExternalIPAddress",
    );
    ensure!(status.contains("200") && ip == Some(""), "{status}: {body}");
    let (status, body) = igd.add_tcp(&home, 40002, 7000, 60)?;
    ensure!(
        status.contains("500") && body.contains("<errorCode>501</errorCode>"),
        "{status}: {body}"
    );
    ensure!(home.mappings()?.is_empty(), "{:?}", home.mappings()?);
    Ok(())
}

/// What the join page shows, once loaded: its host and whether the Join button is there.
const PAGE: &str = "({ host: location.host, join: !!document.getElementById('join'), secure: window.isSecureContext })";

#[tokio::test(flavor = "multi_thread")]
async fn browsers_at_home_and_outside_load_the_boxs_page() -> Result<()> {
    let home = Home::build(HomeOptions::default())?;
    let started = Instant::now();
    let state_dir = hearth_test_support::daemon::temp_dir("home-net");
    let daemon = Daemon::start_wrapped(
        &state_dir,
        "dev",
        "[box]\nmedia = false\n",
        &home.ns(Ns::Home).nsenter_prefix(),
        &["--lan"],
    )?;
    let port = daemon.https_port;
    ensure!(
        daemon
            .join_url
            .starts_with(&format!("https://{BOX_IP}:{port}/")),
        "join link {}",
        daemon.join_url
    );
    let fragment = &daemon.join_url[daemon.join_url.find("/join").context("no /join")?..];
    // The mapping the daemon will make itself one day, by hand.
    let mapped = home.natpmp_map(Ns::Home, Proto::Tcp, port, port, 120)?;
    ensure!(mapped.result == 0, "{mapped:?}");
    home.mappings_until("the HTTPS port mapped", 5 * SECOND, |m| {
        m.iter().any(|m| m.external_port == mapped.external_port)
    })?;
    let outside = format!(
        "https://{}:{}{fragment}",
        home.wan_ip(),
        mapped.external_port
    );
    eprintln!("daemon up and mapped in {:?}", started.elapsed());

    for (ns, url) in [
        (Ns::Home, daemon.join_url.clone()),
        (Ns::Internet, outside.clone()),
        (Ns::Wifi, outside.clone()), // through hairpin NAT
    ] {
        let t = Instant::now();
        let mut browser = Browser::launch_in(BrowserKind::Chromium, Some(home.ns(ns))).await?;
        browser
            .goto(&url)
            .await
            .with_context(|| format!("{ns:?} loading {url}"))?;
        let page = browser.eval(PAGE).await?;
        let host = url["https://".len()..].split('/').next().unwrap_or("");
        ensure!(
            page["host"] == host && page["join"] == true && page["secure"] == true,
            "{ns:?}: {page}"
        );
        browser.close().await?;
        eprintln!("{ns:?}: Chromium loaded {host} in {:?}", t.elapsed());
    }
    drop(daemon);
    std::fs::remove_dir_all(&state_dir)?;
    Ok(())
}
