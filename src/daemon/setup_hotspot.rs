//! The daemon's side of the setup hotspot: the file `hearth hotspot` writes is watched, and
//! while the hotspot is open the TV shows how to join it instead of a join link (there is
//! no network to join a call through).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::hub::Hub;
use crate::media::tv;
use crate::setup::hotspot::Hotspot;

/// How often the file is looked at: the hotspot opens up to half a minute after the daemon
/// starts (after networkd has waited for a link), and closes when a Wi-Fi is picked.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// In the state dir: the Wi-Fi picked last that gave no network (`setup::radio`).
const WIFI_FAILED: &str = "wifi-failed";

/// Publish the hotspot described by `file` (None when there is no such file or it cannot
/// be read) until shutdown.
pub async fn watch_file(
    file: PathBuf,
    tx: watch::Sender<Option<Hotspot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut complained = false;
    loop {
        let hotspot = match tokio::fs::read_to_string(&file).await {
            Ok(text) => match Hotspot::parse(&text) {
                Ok(hotspot) => Some(hotspot),
                Err(e) => {
                    if !complained {
                        tracing::warn!("{}: {e}", file.display());
                        complained = true;
                    }
                    None
                }
            },
            Err(_) => None,
        };
        tx.send_if_modified(|current| {
            let changed = *current != hotspot;
            *current = hotspot;
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Hub {
    pub(super) fn handle_hotspot(&mut self, hotspot: Option<Hotspot>) {
        match &hotspot {
            Some(h) => tracing::info!("the box's own Wi-Fi \"{}\" is open for setup", h.ssid),
            None if self.hotspot.is_some() => tracing::info!("the box's own Wi-Fi closed"),
            None => {}
        }
        self.hotspot = hotspot;
        if self.call.room().phones().next().is_none() {
            self.show_idle_screen();
        }
    }

    /// The TV while the hotspot is open: the Wi-Fi's QR code, its name and password for
    /// phones that cannot scan one, and the setup page's address. True if shown.
    pub(super) fn show_setup_screen(&mut self) -> bool {
        let Some(hotspot) = self.hotspot.clone() else {
            return false;
        };
        // The join link the TV showed is taken down with it (one TV link at a time).
        if let Some(previous) = self.tv_invite.take() {
            let _ = self.call.revoke_invite(&previous);
        }
        let page = match self.setup_http_port {
            0 => format!(
                "https://{}:{}/setup",
                hotspot.address, self.setup_https_port
            ),
            port => hotspot.setup_url(port),
        };
        let mut status = format!(
            "Wi-Fi: {}   Password: {}\nThen open {page} to pick your home's Wi-Fi.",
            hotspot.ssid, hotspot.password
        );
        // Left by `hearth setup --keep-wifi-within` when the last pick gave no network.
        let failed = std::fs::read_to_string(self.state_dir.join(WIFI_FAILED))
            .ok()
            .filter(|name| !name.trim().is_empty())
            .map(|name| crate::call::protocol::clean_name(name.trim()))
            .unwrap_or_default();
        if !failed.is_empty() {
            status = format!("The box could not join \"{failed}\": check its password.\n{status}");
        }
        self.tv(tv::Command::Idle {
            heading: "Set up the box: scan this to join its own Wi-Fi".into(),
            code: hotspot.wifi_qr(),
            caption: String::new(),
            status,
        });
        true
    }
}
