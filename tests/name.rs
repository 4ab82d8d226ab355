//! A name browsers trust (issue 12), in the simulated home: the owner's domain `box.home.test`
//! lives on bind9 in `internet`, which takes the box's RFC 2136 updates; pebble (an ACME CA)
//! checks the name through that DNS and the router's forwarding of port 443; a phone outside
//! trusts only pebble's root (an NSS database, as a desktop's certutil makes it; no
//! `--ignore-certificate-errors`).
//!
//! - `a_phone_outside_trusts_the_name_and_a_renewal_keeps_the_call`: nothing is requested
//!   while the clock is not known to be right; once it is, pebble issues; the link is
//!   `https://box.home.test/join#…`; the phone decodes the box; pebble's certificates last
//!   a minute, so one is renewed at 40 s and served without a restart while the call goes on.
//! - `the_name_follows_a_new_router_address_rfc2136` and `…_dyndns2`: the provider gives the
//!   router a new WAN address; the record points at it within 30 s.
//!
//! Needs root or `tests/in-netns` (the suite runs inside it), and `make deps` (pebble, bind9,
//! bind9-dnsutils, libnss3-tools, curl, openssl).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hearth_test_support::home::{Home, HomeOptions, Ns, UpnpOptions};
use hearth_test_support::servers::{test_pki, Named, Pebble};
use hearth_test_support::{temp_dir, BrowserKind, Daemon, Phone, Trust};
use serde_json::Value;

const NAME: &str = "box.home.test";
const ZONE: &str = "home.test";
const DNS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 53);
const ACME_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 54);
const DYNDNS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 55);
const NEW_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 2);
const SMALL_BOX: &str = "[board.camera]\nwidth = 320\nheight = 180\nframerate = 15\n\
    [board.display]\nwidth = 640\nheight = 360\n";

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A router that lets the box map external port 443 (ACME's TLS-ALPN-01 check comes there).
fn home_allowing_443() -> Result<Home> {
    let mut upnp = UpnpOptions::default();
    upnp.rules
        .insert(0, "allow 443 192.168.1.0/24 1024-65535".into());
    Home::build(HomeOptions {
        miniupnpd: Some(upnp),
        ..HomeOptions::default()
    })
}

/// `[remote]` with the name, the router asked every 2 s, and `[dns]` updating `named`.
fn remote_with_rfc2136(named: &Named) -> String {
    format!(
        "[remote]\nname = \"{NAME}\"\nport_mapping = \"on\"\nhttps_port = 443\ncheck_every = \"2s\"\n\
         [dns]\nupdate = \"rfc2136\"\nserver = \"{}\"\nzone = \"{}\"\nkey_name = \"{}\"\n\
         key_secret = \"{}\"\nttl = \"5s\"\n",
        named.ip, named.zone, named.key_name, named.key_secret
    )
}

/// `hearth status`'s `field` once `check` holds (within `within`, else an error with it).
fn status_until(
    daemon: &Daemon,
    field: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let status = daemon.status_within(field, within, |s| check(&s[field]))?;
    Ok(status[field].clone())
}

/// Until `named` answers `address` for the name; how long that took.
fn record_until(
    home: &Home,
    named: &Named,
    address: Ipv4Addr,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let now = named.lookup(home, NAME)?;
        if now == Some(address) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!(
                "{NAME} is {now:?} after {within:?}, not {address}:\n{}",
                named.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The serial number of the certificate served for the name at `addr`, as a phone outside
/// would get it (openssl in `internet`).
fn served_serial(home: &Home, addr: SocketAddr) -> Result<String> {
    let mut client = home.command_in(Ns::Internet, "openssl");
    let out = client
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            NAME,
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    x509.stdin
        .take()
        .context("stdin")?
        .write_all(pem.as_bytes())?;
    let serial = x509.wait_with_output()?;
    let serial = String::from_utf8_lossy(&serial.stdout).trim().to_string();
    ensure!(
        serial.starts_with("serial="),
        "no certificate from {addr}: {pem}"
    );
    Ok(serial)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_outside_trusts_the_name_and_a_renewal_keeps_the_call() -> Result<()> {
    let home = home_allowing_443()?;
    let wan = home.wan_ip();
    let named = Named::start(&home, DNS_IP, ZONE)?;
    let pebble = Pebble::start(&home, ACME_IP, DNS_IP, secs(60))?;
    let clock_dir = temp_dir("clock");
    let mark = clock_dir.join("synchronized");
    let config = format!(
        "{}[acme]\nenabled = true\ndirectory = \"{}\"\ndirectory_root = \"{}\"\n\
         [clock]\nsynchronized_mark = \"{}\"\n{SMALL_BOX}",
        remote_with_rfc2136(&named),
        pebble.directory(),
        pebble.https_root.display(),
        mark.display()
    );
    let daemon = home.start_box("name-acme", &config)?;

    // The name points home before anything else.
    record_until(&home, &named, wan, secs(20))?;
    // The clock is not known to be right: no certificate is asked for.
    status_until(&daemon, "certificate", secs(5), |c| {
        c["state"] == "waiting_for_clock"
    })?;
    ensure!(daemon.status()?["clock"] == "unsynchronized");
    // Nothing to await for "nothing happens": watch it for a while (the box looks at the
    // clock every 2 s).
    std::thread::sleep(secs(3));
    ensure!(
        daemon.status()?["certificate"]["state"] == "waiting_for_clock",
        "asked while the clock was unknown"
    );
    ensure!(
        !pebble.log().contains("order-plz"),
        "pebble got an order while the box's clock was unknown:\n{}",
        pebble.log()
    );

    // The NTP client marks the clock synchronised: the certificate comes.
    std::fs::write(&mark, "")?;
    let asked = Instant::now();
    let issued = status_until(&daemon, "certificate", secs(60), |c| c["state"] == "valid")
        .with_context(|| format!("pebble:\n{}", pebble.log()))?;
    eprintln!(
        "certificate issued {:?} after the clock was right: {issued}",
        asked.elapsed()
    );
    let https = SocketAddr::from((wan, 443));
    let first_serial = served_serial(&home, https)?;

    // The link uses the name; a phone outside trusting only pebble's root opens it.
    let url = daemon.invite("Outside")?;
    ensure!(url.starts_with(&format!("https://{NAME}/join#")), "{url}");
    let trust = Trust {
        root_pem: pebble.issuing_root(&home)?,
        resolve: vec![(NAME.into(), wan.into())],
    };
    let mut phone =
        Phone::launch_trusting(BrowserKind::Chromium, Some(home.ns(Ns::Internet)), &trust).await?;
    phone.open(&url).await?;
    phone
        .join_and_wait("Outside", "m.frames('p0') > 0", secs(30))
        .await?;

    // A minute's certificate is renewed at two thirds: served without a restart.
    let pid = daemon.pid();
    status_until(&daemon, "certificate", secs(70), |c| c["issued"] == 2)
        .with_context(|| format!("pebble:\n{}", pebble.log()))?;
    ensure!(daemon.pid() == pid);
    let second_serial = served_serial(&home, https)?;
    ensure!(
        first_serial != second_serial,
        "the renewed certificate is not served: {first_serial}"
    );
    // The call went on, and a new page load trusts the new certificate.
    let before = phone.media().await?.frames("p0");
    phone
        .wait_for(&format!("m.frames('p0') > {before}"), secs(10))
        .await?;
    let mut late =
        Phone::launch_trusting(BrowserKind::Chromium, Some(home.ns(Ns::Internet)), &trust).await?;
    late.open(&daemon.invite("Late")?).await?;
    late.join_and_wait("Late", "m.frames('p0') > 0", secs(30))
        .await?;

    // The same phone, trusting nothing but the system's roots, is refused: the test can fail.
    let stranger = Trust {
        root_pem: pebble.https_root.clone(),
        resolve: trust.resolve.clone(),
    };
    let mut wary = Phone::launch_trusting(
        BrowserKind::Chromium,
        Some(home.ns(Ns::Internet)),
        &stranger,
    )
    .await?;
    let refused = wary.open(&url).await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("CERT")),
        "a browser without pebble's root loaded the page: {refused:?}"
    );
    for p in [phone, late, wary] {
        p.close().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_name_follows_a_new_router_address_rfc2136() -> Result<()> {
    let mut home = home_allowing_443()?;
    let named = Named::start(&home, DNS_IP, ZONE)?;
    let config = format!("{}[box]\nmedia = false\n", remote_with_rfc2136(&named));
    let daemon = home.start_box("name-rfc2136", &config)?;
    record_until(&home, &named, home.wan_ip(), secs(20))?;

    home.change_wan_address(NEW_WAN)?;
    let took = record_until(&home, &named, NEW_WAN, secs(30))?;
    eprintln!("RFC 2136: the record followed the new address in {took:?}");
    let dns = daemon.status()?["dns"].clone();
    ensure!(
        dns["state"] == "updated" && dns["address"] == NEW_WAN.to_string(),
        "{dns}"
    );
    // The key never appears in what the box says.
    let log = daemon.log();
    ensure!(
        !log.contains(&named.key_secret),
        "the TSIG key is in the log"
    );
    Ok(())
}

/// A dyndns2 provider: HTTPS, basic auth, `good ADDRESS`. Records each update it accepts.
struct Dyndns2 {
    updates: Arc<Mutex<Vec<(String, String)>>>,
    root: std::path::PathBuf,
}

const DYNDNS_USER: &str = "family";
const DYNDNS_PASSWORD: &str = "correct horse battery staple";

fn start_dyndns2(home: &Home) -> Result<Dyndns2> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let dir = temp_dir("dyndns2");
    let pki = test_pki(&dir, DYNDNS_IP)?;
    hearth_test_support::servers::add_internet_address(home, DYNDNS_IP)?;
    let chain = CertificateDer::pem_file_iter(&pki.leaf_pem)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&pki.leaf_key)?;
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?,
    );
    let listener = home
        .ns(Ns::Internet)
        .tcp_listen(SocketAddr::from((DYNDNS_IP, 443)))?;
    let updates = Arc::new(Mutex::new(Vec::new()));
    let seen = updates.clone();
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{DYNDNS_USER}:{DYNDNS_PASSWORD}"))
    );
    std::thread::spawn(move || {
        // Ends with the test process; at most a few updates come.
        for stream in listener.incoming().take(100) {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(secs(5)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut reader = BufReader::new(&mut tls);
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let authorized = head.iter().any(|h| {
                h.split_once(':').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                })
            });
            let query = head
                .first()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|target| target.split_once('?'))
                .map(|(_, q)| q.to_string())
                .unwrap_or_default();
            let param = |key: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    .unwrap_or("")
                    .to_string()
            };
            let body = if authorized {
                seen.lock()
                    .unwrap()
                    .push((param("hostname"), param("myip")));
                format!("good {}", param("myip"))
            } else {
                "badauth".to_string()
            };
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    Ok(Dyndns2 {
        updates,
        root: pki.root_pem,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_name_follows_a_new_router_address_dyndns2() -> Result<()> {
    let mut home = home_allowing_443()?;
    let provider = start_dyndns2(&home)?;
    let config = format!(
        "[remote]\nname = \"{NAME}\"\nport_mapping = \"on\"\ncheck_every = \"2s\"\n\
         [dns]\nupdate = \"dyndns2\"\nurl = \"https://{DYNDNS_IP}/nic/update\"\n\
         username = \"{DYNDNS_USER}\"\npassword = \"{DYNDNS_PASSWORD}\"\nserver_root = \"{}\"\n\
         [box]\nmedia = false\n",
        provider.root.display()
    );
    let daemon = home.start_box("name-dyndns2", &config)?;
    let latest =
        |updates: &Arc<Mutex<Vec<(String, String)>>>| updates.lock().unwrap().last().cloned();
    let wait_for = |address: Ipv4Addr| -> Result<Duration> {
        let started = Instant::now();
        loop {
            if latest(&provider.updates) == Some((NAME.to_string(), address.to_string())) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > secs(30) {
                bail!(
                    "no update to {address}: {:?}, dns status {}",
                    provider.updates.lock().unwrap(),
                    daemon.status()?["dns"]
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(home.wan_ip())?;
    home.change_wan_address(NEW_WAN)?;
    let took = wait_for(NEW_WAN)?;
    eprintln!("dyndns2: the record followed the new address in {took:?}");
    ensure!(
        provider.updates.lock().unwrap().len() == 2,
        "an update is sent only when the address changes: {:?}",
        provider.updates.lock().unwrap()
    );
    ensure!(
        !daemon.log().contains(DYNDNS_PASSWORD),
        "the password is in the log"
    );
    Ok(())
}
