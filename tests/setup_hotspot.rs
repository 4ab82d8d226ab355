//! First boot without a network: while the box's own Wi-Fi is open (`hearth hotspot` wrote
//! its description), the TV's join link is taken down, `hearth status` names the hotspot,
//! and a phone on it picks the home's Wi-Fi on the setup page in a real browser; root's
//! `hearth setup --request` turns the pick into wpa_supplicant's configuration.
//!
//! The radio itself cannot be tested here (no Wi-Fi hardware): the hotspot's description
//! stands for it, with the box's address on loopback so the test's browser is "on" it.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_test_support::{temp_dir, BrowserKind, Daemon, Phone};
use serde_json::Value;

fn hotspot_json(networks: &[&str]) -> String {
    serde_json::json!({
        "ssid": "Hearth-3F2A",
        "password": "kq7PxRt4wNaY",
        "address": "127.0.0.1",
        "prefix": 8,
        "networks": networks,
    })
    .to_string()
}

fn tv_invites(daemon: &Daemon) -> Result<Vec<Value>> {
    let (ok, out, err) = daemon.cli(&["invite", "--list"]);
    anyhow::ensure!(ok, "invite --list: {err}");
    let list: Vec<Value> = serde_json::from_str(&out)?;
    Ok(list
        .into_iter()
        .filter(|i| i["name"] == "TV screen")
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_on_the_setup_hotspot_picks_the_homes_wifi() -> Result<()> {
    let state = temp_dir("setup-hotspot");
    let hotspot_file = state.join("hotspot.json");
    let config = format!(
        "[setup]\nhotspot_file = {:?}\n",
        hotspot_file.display().to_string()
    );
    let daemon = Daemon::start_with(&state, &config)?;
    let setup_url = format!("https://127.0.0.1:{}/setup", daemon.https_port);
    let status = daemon.status()?;
    assert_eq!(status["setup_hotspot"], Value::Null, "{status}");
    // The clock's state is there for the owner (a box without NTP yet says so).
    assert!(
        ["synchronized", "unsynchronized"].contains(&status["clock"].as_str().unwrap_or("")),
        "{status}"
    );
    let live_tv_links = |daemon: &Daemon| -> Result<usize> {
        Ok(tv_invites(daemon)?
            .iter()
            .filter(|i| i["state"] == "valid")
            .count())
    };
    assert_eq!(live_tv_links(&daemon)?, 1, "the TV shows a join link");

    // Before the hotspot opens, the setup page does not exist.
    let mut phone = Phone::launch(BrowserKind::Chromium).await?;
    let fetch_status = |path: &str| {
        format!("(async () => (await fetch({path:?}, {{ cache: 'no-store' }})).status)()")
    };
    phone.open(&daemon.join_url).await?;
    let code = phone.eval(&fetch_status("/setup")).await?;
    assert_eq!(code, 404);

    // The hotspot opens: the TV's join link goes (nobody can join a call without a network),
    // the status names the hotspot, never its password.
    std::fs::write(&hotspot_file, hotspot_json(&["Home", "Next door"]))?;
    let status = daemon.status_until("the hotspot is seen", |s| {
        s["setup_hotspot"] == "Hearth-3F2A"
    })?;
    assert!(!status.to_string().contains("kq7PxRt4wNaY"), "{status}");
    assert_eq!(
        live_tv_links(&daemon)?,
        0,
        "the TV's join link is withdrawn"
    );

    phone.open(&setup_url).await?;
    phone
        .wait_for(
            "document.body.dataset.view === 'pick' && \
             [...document.getElementById('network').options].map((o) => o.text).join('|') \
               === 'Home|Next door|Another network…'",
            Duration::from_secs(10),
        )
        .await?;
    // A wrong password is explained on the page and nothing is left for root.
    let pick = |password: &str| {
        format!(
            "(() => {{ document.getElementById('network').value = 'Next door'; \
             document.getElementById('password').value = {password:?}; \
             document.getElementById('country').value = 'gb'; }})()"
        )
    };
    phone.eval(&pick("short")).await?;
    phone.click("join-wifi").await?;
    phone
        .wait_for(
            "document.getElementById('message').textContent.includes('8 to 63 characters')",
            Duration::from_secs(10),
        )
        .await?;
    let request = state.join("wifi-request.toml");
    assert!(!request.exists());

    phone.eval(&pick("correct horse battery")).await?;
    phone.click("join-wifi").await?;
    phone
        .wait_for(
            "document.body.dataset.view === 'done' && \
             document.getElementById('message').textContent.includes('Next door')",
            Duration::from_secs(10),
        )
        .await?;
    let text = std::fs::read_to_string(&request).context("no request left for root")?;
    assert!(text.contains("name = \"Next door\""), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&request)?.permissions().mode() & 0o777,
        0o600
    );

    // Root applies it (hearth-wifi-request.service), into a stand-in root here.
    let root = state.join("root");
    let apply = |hotspot: &std::path::Path| {
        daemon.cli(&[
            "setup",
            "--request",
            request.to_str().unwrap(),
            "--hotspot-file",
            hotspot.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ])
    };
    // Only while the hotspot is open: the daemon's user cannot replace a working Wi-Fi.
    let copy = std::fs::read_to_string(&request)?;
    let (ok, _, err) = apply(&state.join("no-hotspot.json"));
    assert!(!ok && err.contains("not open"), "{err}");
    assert!(!request.exists() && !root.exists());
    std::fs::write(&request, copy)?;
    let (ok, out, err) = apply(&hotspot_file);
    assert!(ok, "{err}");
    assert!(out.contains("wifi: true"), "{out}");
    assert!(
        !request.exists(),
        "the password does not stay in the state dir"
    );
    let wpa = std::fs::read_to_string(root.join("etc/wpa_supplicant/wpa_supplicant-wlan0.conf"))?;
    let ssid: String = "Next door".bytes().map(|b| format!("{b:02x}")).collect();
    assert!(wpa.contains(&format!("ssid={ssid}\n")), "{wpa}");
    assert!(wpa.contains("country=GB\n") && wpa.contains("psk=\"correct horse battery\""));

    // The hotspot closes: the page is gone again and the TV shows a join link.
    std::fs::remove_file(&hotspot_file)?;
    daemon.status_until("the hotspot is gone", |s| s["setup_hotspot"].is_null())?;
    assert_eq!(live_tv_links(&daemon)?, 1);
    let code = phone.eval(&fetch_status("/setup/api/networks")).await?;
    assert_eq!(code, 404);
    phone.close().await?;
    Ok(())
}
