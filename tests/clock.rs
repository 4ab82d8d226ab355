//! A clock to trust (issue 12, item 5), in the simulated home: the router announces its NTP
//! server over DHCP (dnsmasq, option 42) and answers NTP; the box runs the image's own chain
//! (systemd-networkd as DHCP client, systemd-timesyncd with the image's configuration,
//! `tests/netsim/timesync.sh`), and Hearth says the clock is synchronised only once
//! timesyncd has marked it. Neither daemon can set this machine's clock (no CAP_SYS_TIME).
//! That nothing is certified before then is `tests/name.rs`'s first check.
//!
//! Needs root or `tests/in-netns` (the suite runs inside it), and `make deps` (dnsmasq-base;
//! systemd and systemd-timesyncd, which Debian 12 has).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hearth_test_support::home::{Home, HomeOptions, Ns, BOX_IP, ROUTER_LAN_IP};
use hearth_test_support::servers::{DhcpServer, NtpServer};
use hearth_test_support::temp_dir;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netsim/timesync.sh");

fn until_exists(path: &Path, within: Duration, logs: &[&Path]) -> Result<()> {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > within {
            let logs: Vec<String> = logs
                .iter()
                .map(|l| {
                    format!(
                        "{}:\n{}",
                        l.display(),
                        std::fs::read_to_string(l).unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "no {} within {within:?}\n{}",
                path.display(),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn the_homes_ntp_server_announced_over_dhcp_makes_the_clock_right() -> Result<()> {
    let home = Home::build(HomeOptions {
        miniupnpd: None,
        ..HomeOptions::default()
    })?;
    // The box takes its address over DHCP, as the image does.
    home.run_in(Ns::Home, "ip", &["addr", "flush", "dev", "eth0"])?;
    let ntp = NtpServer::start(&home, Ns::Router, ROUTER_LAN_IP)?;
    let _dhcp = DhcpServer::start(&home, BOX_IP, ROUTER_LAN_IP)?;

    let out = temp_dir("timesync");
    let (networkd_log, timesyncd_log) = (out.join("networkd.log"), out.join("timesyncd.log"));
    let chain_log = out.join("chain.log");
    let log = std::fs::File::create(&chain_log)?;
    let mut chain = home.command_in(Ns::Home, "unshare");
    chain
        .args(["--mount", "--propagation", "private", "sh", SCRIPT])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut chain = chain
        .spawn()
        .context("starting the box's networkd and timesyncd")?;
    until_exists(
        &out.join("ntp-known"),
        Duration::from_secs(30),
        &[&chain_log, &networkd_log],
    )?;
    let address = home.run_in(Ns::Home, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"])?;
    ensure!(
        address.contains(&format!("{BOX_IP}/24")),
        "no DHCP address: {address}"
    );

    // Hearth on the box, before timesyncd has run: the clock is not to be trusted.
    let mark = out.join("run-systemd/timesync/synchronized");
    let config = format!(
        "[box]\nmedia = false\n[clock]\nsynchronized_mark = \"{}\"\n",
        mark.display()
    );
    let daemon = home.start_box("clock", &config)?;
    let status = daemon.status()?;
    ensure!(status["clock"] == "unsynchronized", "{}", status["clock"]);

    // timesyncd asks the server DHCP named, and the clock is right.
    std::fs::write(out.join("go"), "")?;
    let synchronized = daemon.status_within("the clock", Duration::from_secs(30), |s| {
        s["clock"] == "synchronized"
    });
    let timesyncd = std::fs::read_to_string(&timesyncd_log).unwrap_or_default();
    synchronized.with_context(|| format!("timesyncd:\n{timesyncd}"))?;
    ensure!(
        ntp.answered.load(Ordering::Relaxed) > 0,
        "the router's NTP server was never asked:\n{timesyncd}"
    );
    ensure!(
        timesyncd.contains(&ROUTER_LAN_IP.to_string()),
        "timesyncd did not use the DHCP-announced server:\n{timesyncd}"
    );
    // The image's configuration keeps Debian's pool out (an outbound connection nobody
    // configured).
    ensure!(
        !timesyncd.contains("pool.ntp.org"),
        "timesyncd would ask Debian's pool:\n{timesyncd}"
    );
    let _ = chain.kill();
    let _ = chain.wait();
    Ok(())
}
