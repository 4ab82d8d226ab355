//! A relay for strict networks (issue 12, item 4), in the simulated home: the owner's TURN
//! server is Debian's coturn (`use-auth-secret`), run in `internet` at an address of its
//! own; the phone's own UDP is dropped there (a hotel network that lets only TCP out), so its
//! only way to the box is TURN over TLS on port 443. The box gives the phone short-lived
//! credentials in its welcome and never the secret; the relay sends the phone's media to the
//! box's port on the router, which forwards it.
//!
//! Needs root or `tests/in-netns` (the suite runs inside it), and `make deps` (coturn, its
//! host service masked: the test starts its own and stops it).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hearth_test_support::home::{Home, HomeOptions, Ns};
use hearth_test_support::{temp_dir, BrowserKind, Phone};

const TURN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 114, 60);
const SECRET: &str = "relay-secret-for-the-test-0123456789";

/// coturn, stopped (and waited for) when dropped.
struct Turnserver(Child);

impl Drop for Turnserver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_coturn(home: &Home) -> Result<Turnserver> {
    let dir = temp_dir("coturn");
    let (cert, key) = (dir.join("turn.pem"), dir.join("turn.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=turn.test"])
        .args(["-addext", &format!("subjectAltName=IP:{TURN_IP}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()?;
    ensure!(
        made.success(),
        "openssl could not make the relay's certificate"
    );
    let conf = dir.join("turnserver.conf");
    std::fs::write(
        &conf,
        format!(
            "listening-ip={TURN_IP}\nrelay-ip={TURN_IP}\nlistening-port=3478\n\
             tls-listening-port=443\nuse-auth-secret\nstatic-auth-secret={SECRET}\n\
             realm=hearth.test\ncert={}\npkey={}\nno-cli\nno-dtls\nlog-file=stdout\n\
             simple-log\npidfile={}\nuserdb={}\n",
            cert.display(),
            key.display(),
            dir.join("turnserver.pid").display(),
            dir.join("turndb").display(),
        ),
    )?;
    let mut command = Command::new("turnserver");
    command
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = home.spawn_in(Ns::Internet, &mut command)?;
    let server = Turnserver(child);
    home.ns(Ns::Internet)
        .tcp_connect(SocketAddr::from((TURN_IP, 443)), Duration::from_secs(10))
        .context("coturn does not listen on 443")?;
    Ok(server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_whose_network_blocks_udp_joins_through_the_owners_relay() -> Result<()> {
    let home = Home::build(HomeOptions::default())?;
    let phone_ip = home.internet_ip();
    home.run_in(
        Ns::Internet,
        "ip",
        &["addr", "add", &format!("{TURN_IP}/24"), "dev", "eth0"],
    )?;
    // The phone's network lets no UDP of its own out: only TCP (to the relay's 443).
    let rules = temp_dir("relay-rules").join("strict.nft");
    std::fs::write(
        &rules,
        format!(
            "table inet strict {{\n  chain output {{\n    type filter hook output priority 0;\n    \
             ip saddr {phone_ip} meta l4proto udp counter drop\n  }}\n}}\n"
        ),
    )?;
    home.run_in(Ns::Internet, "nft", &["-f", rules.to_str().unwrap()])?;
    let _coturn = start_coturn(&home)?;

    let config = format!(
        "[remote]\nport_mapping = \"on\"\n\
         [relay]\nurls = [\"turns:{TURN_IP}:443?transport=tcp\"]\nsecret = \"{SECRET}\"\n\
         [board.camera]\nwidth = 320\nheight = 180\nframerate = 15\n"
    );
    let daemon = home.start_box("relay-box", &config)?;

    let mut phone = Phone::launch_in(BrowserKind::Chromium, Some(home.ns(Ns::Internet))).await?;
    phone.open(&daemon.join_url).await?;
    phone
        .join_and_wait("Hotel", "m.frames('p0') > 0", Duration::from_secs(30))
        .await?;
    let pair = phone.selected_pair().await?;
    ensure!(
        pair["local"]["type"] == "relay" && pair["local"]["relay_protocol"] == "tls",
        "the phone's media does not go through the relay over TLS: {pair}"
    );
    let config: serde_json::Value = phone
        .eval("JSON.stringify(hearth.pc.getConfiguration().iceServers)")
        .await
        .and_then(|v| Ok(serde_json::from_str(v.as_str().unwrap_or("[]"))?))?;
    let server = &config[0];
    ensure!(
        server["urls"][0] == format!("turns:{TURN_IP}:443?transport=tcp"),
        "{config}"
    );
    let username = server["username"].as_str().unwrap_or_default();
    ensure!(username.ends_with(":p1"), "per-phone user name: {username}");
    // The phone did try UDP of its own, and the network dropped it.
    let table = home.run_in(
        Ns::Internet,
        "nft",
        &["-j", "list", "table", "inet", "strict"],
    )?;
    let dropped = serde_json::from_str::<serde_json::Value>(&table)?["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .sum::<u64>();
    ensure!(dropped > 0, "no UDP of the phone's was dropped: {table}");
    eprintln!("the phone's selected pair: {pair}; its own UDP dropped: {dropped} packets");
    // What the page was given: the relay with its own credentials, never the secret.
    ensure!(
        !config.to_string().contains(SECRET),
        "the secret reached the phone"
    );
    phone.close().await?;
    Ok(())
}
