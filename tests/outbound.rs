//! Privacy rule 4: no outbound traffic but what the owner configured and the call's own
//! peers. With nothing configured (no name, ACME, DNS provider or relay: a box as it comes,
//! whose only default is asking the home router to forward its ports), the box's namespace in
//! the simulated home records the destination of every TCP and UDP packet it sends while a
//! phone outside joins and decodes the box. What the box starts goes only to the home router
//! (port mapping), UPnP discovery's multicast group or its own external address (the hairpin
//! check); what it answers goes only to the phone (and the router).
//!
//! Needs root or `tests/in-netns` (the suite runs inside it), and `make deps`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hearth_test_support::home::{Home, HomeOptions, Ns};
use hearth_test_support::{temp_dir, BrowserKind, Phone};
use serde_json::Value;

/// Every TCP or UDP packet the box's namespace sends, by (destination, protocol, port):
/// in `opened` when the box started that flow, in `answered` when the other side did.
const WATCH: &str = r#"
table inet hearth_outbound {
    set opened4 { type ipv4_addr . inet_proto . inet_service; flags dynamic; size 4096; }
    set opened6 { type ipv6_addr . inet_proto . inet_service; flags dynamic; size 4096; }
    set answered4 { type ipv4_addr . inet_proto . inet_service; flags dynamic; size 4096; }
    set answered6 { type ipv6_addr . inet_proto . inet_service; flags dynamic; size 4096; }
    chain output {
        type filter hook output priority 0; policy accept;
        oifname "lo" accept
        meta l4proto != { tcp, udp } accept
        ct direction original meta nfproto ipv4 update @opened4 { ip daddr . meta l4proto . th dport }
        ct direction original meta nfproto ipv6 update @opened6 { ip6 daddr . meta l4proto . th dport }
        ct direction reply meta nfproto ipv4 update @answered4 { ip daddr . meta l4proto . th dport }
        ct direction reply meta nfproto ipv6 update @answered6 { ip6 daddr . meta l4proto . th dport }
    }
}
"#;

const ROUTER_LAN: &str = "192.168.1.1";
const SSDP: &str = "239.255.255.250";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Destination {
    ip: IpAddr,
    proto: String,
    port: u16,
}

/// The set's members, as `nft -j` lists them (bare, or with the dynamic set's extras).
fn destinations(json: &str) -> Result<BTreeSet<Destination>> {
    let value: Value = serde_json::from_str(json)?;
    let mut out = BTreeSet::new();
    for item in value["nftables"].as_array().context("no nftables")? {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for elem in elems {
            let concat = elem["concat"]
                .as_array()
                .or_else(|| elem["elem"]["val"]["concat"].as_array())
                .with_context(|| format!("unexpected element {elem}"))?;
            ensure!(concat.len() == 3, "{elem}");
            out.insert(Destination {
                ip: concat[0].as_str().context("address")?.parse()?,
                proto: concat[1].as_str().context("protocol")?.to_string(),
                port: concat[2]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .context("port")?,
            });
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_nothing_configured_the_box_talks_only_to_the_router_and_its_phones() -> Result<()> {
    let home = Home::build(HomeOptions::default())?;
    let rules = temp_dir("outbound").join("watch.nft");
    std::fs::write(&rules, WATCH)?;
    home.run_in(Ns::Home, "nft", &["-f", rules.to_str().unwrap()])?;

    // The Pi boards' defaults: port mapping on; nothing else is configured.
    let config = "[remote]\nport_mapping = \"on\"\n[board.camera]\nwidth = 320\nheight = 180\nframerate = 15\n";
    let daemon = home.start_box("outbound-box", config)?;
    let mut phone = Phone::launch_in(BrowserKind::Chromium, Some(home.ns(Ns::Internet))).await?;
    phone.open(&daemon.join_url).await?;
    phone
        .join_and_wait("Outside", "m.frames('p0') > 0", Duration::from_secs(20))
        .await?;
    let reach = daemon.status()?["reach"].clone();
    ensure!(reach["outside"] == true, "{reach}");
    phone.close().await?;

    let set = |name: &str| -> Result<BTreeSet<Destination>> {
        let args = ["-j", "list", "set", "inet", "hearth_outbound", name];
        destinations(&home.run_in(Ns::Home, "nft", &args)?)
    };
    let opened: BTreeSet<Destination> =
        set("opened4")?.into_iter().chain(set("opened6")?).collect();
    let answered: BTreeSet<Destination> = set("answered4")?
        .into_iter()
        .chain(set("answered6")?)
        .collect();
    eprintln!("the box opened flows to {opened:?}");
    eprintln!("the box answered {answered:?}");
    let phone_ip = IpAddr::V4(home.internet_ip());
    let router: IpAddr = ROUTER_LAN.parse()?;
    let ssdp: IpAddr = SSDP.parse()?;
    let wan = IpAddr::V4(home.wan_ip());
    let https_port = reach["https_port"].as_u64().unwrap_or(0) as u16;
    // What the box starts: asking the router (PCP, NAT-PMP, UPnP and its discovery), and
    // connecting to its own external address to see whether the router loops it back.
    let may_open = |d: &Destination| {
        d.ip == router
            || (d.ip == ssdp && d.proto == "udp" && d.port == 1900)
            || (d.ip == wan && d.proto == "tcp" && d.port == https_port)
    };
    let strays: Vec<&Destination> = opened.iter().filter(|d| !may_open(d)).collect();
    ensure!(
        strays.is_empty(),
        "the box opened flows nobody configured: {strays:?}"
    );
    // What it answers: the phone (its page, signalling and media), and the router.
    let strays: Vec<&Destination> = answered
        .iter()
        .filter(|d| d.ip != phone_ip && d.ip != router)
        .collect();
    ensure!(strays.is_empty(), "the box answered strangers: {strays:?}");
    // The watch saw what it is there for: the router was asked, the phone got media.
    ensure!(
        opened.iter().any(|d| d.ip == router),
        "the watch missed the router: {opened:?}"
    );
    ensure!(
        answered
            .iter()
            .any(|d| d.ip == phone_ip && d.proto == "udp"),
        "the watch missed the phone's media: {answered:?}"
    );
    Ok(())
}

#[test]
fn nft_set_listings_are_read_bare_or_with_extras() -> Result<()> {
    let json = r#"{"nftables":[{"metainfo":{}},{"set":{"family":"inet","name":"seen4","elem":[
        {"concat":["192.168.1.1","udp",5351]},
        {"elem":{"val":{"concat":["203.0.114.50","udp",40000]},"expires":1}}]}}]}"#;
    let got = destinations(json)?;
    assert_eq!(got.len(), 2);
    assert!(got.contains(&Destination {
        ip: "203.0.114.50".parse()?,
        proto: "udp".into(),
        port: 40000
    }));
    Ok(())
}
