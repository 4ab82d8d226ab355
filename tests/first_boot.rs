//! First boot with no network at all (no cable, no Wi-Fi yet): Hearth still starts, so the
//! TV and `hearth status` can say the box is not connected (and the setup hotspot's page can
//! be served); once the machine has an address it exits for systemd to start it again bound
//! to that address. Found by booting the image under QEMU without a network card, where
//! Hearth refused to start and systemd restarted it every 2 s.

use std::time::Duration;

use anyhow::{ensure, Result};
use hearth_test_support::netns::Netns;
use hearth_test_support::{temp_dir, Daemon};

#[test]
fn with_no_network_the_box_says_so_and_restarts_once_it_has_one() -> Result<()> {
    let ns = Netns::new("first-boot")?;
    let ip = |args: &[&str]| -> Result<()> {
        let status = ns.command("ip").args(args).status()?;
        ensure!(status.success(), "ip {args:?}");
        Ok(())
    };
    ip(&["link", "set", "lo", "up"])?;
    // As on a Pi: serving the home network, asking the router to forward ports.
    let config = "[remote]\nport_mapping = \"on\"\n[box]\nmedia = false\n";
    let mut daemon = Daemon::start_wrapped(
        &temp_dir("first-boot"),
        "dev",
        config,
        &ns.nsenter_prefix(),
        &["--lan"],
    )?;
    let status = daemon.status()?;
    let reach = &status["reach"];
    ensure!(
        reach["outside"] == false
            && reach["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not connected to a network")),
        "{status}"
    );

    // A cable: the machine gets an address, and Hearth leaves to be started on it.
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    ip(&["link", "set", "eth1", "up"])?;
    ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"])?;
    ip(&["link", "set", "eth0", "up"])?;
    let exit = daemon.exited_within(Duration::from_secs(15))?;
    ensure!(
        !exit.success(),
        "it must exit non-zero for Restart=always: {exit}"
    );
    Ok(())
}
