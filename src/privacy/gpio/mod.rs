//! The privacy switch and its LED. One small interface, two backends: the GPIO character
//! device (`cdev`, what a Pi runs) and a simulation (`simulated`, the dev board) that
//! behaves like the lines, bounce included. Both report readings on a channel and take the
//! LED's state from a watch; the privacy state machine decides what they mean.

pub mod cdev;
pub mod simulated;

use tokio::sync::{mpsc, watch};

use crate::config::board::{GpioBackend, GpioProfile};
use crate::privacy::machine::Reading;

/// Handle kept by the hub: the LED to drive, and the simulated switch when there is one.
pub struct PrivacyLines {
    pub led: watch::Sender<bool>,
    pub simulated: Option<simulated::Switch>,
}

/// Start the profile's backend. Readings (and failures to read) arrive on the channel.
pub fn start(profile: &GpioProfile) -> (PrivacyLines, mpsc::Receiver<Reading>) {
    let (readings, rx) = mpsc::channel(64);
    // The LED starts lit: privacy is on until the switch has been read.
    let (led, led_rx) = watch::channel(true);
    let simulated = match profile.backend {
        GpioBackend::Cdev => {
            tokio::spawn(cdev::run(profile.clone(), readings, led_rx));
            None
        }
        GpioBackend::Simulated => Some(simulated::Switch::start(profile.bounce, readings, led_rx)),
    };
    (PrivacyLines { led, simulated }, rx)
}
