//! The privacy machine wired to its own effects: the switch's readings come in, the LED
//! follows, every change is appended to `privacy.log`. What concerns the rest of the box
//! (closing capture, telling the room) is handed back to the daemon as a `BoxEffect`.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::gpio::{self, simulated, PrivacyLines};
use super::machine::{Action, Privacy, Reading};
use crate::config::board::GpioProfile;

/// What the rest of the box must do after a privacy change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxEffect {
    /// Close camera and mic (pipelines to NULL, devices released).
    CloseCapture,
    OpenCapture,
    /// Privacy turned on or off: tell everyone, update the TV.
    Changed {
        on: bool,
    },
    /// A sign made with the switch at the box.
    Gesture(super::machine::Gesture),
}

pub struct PrivacyControl {
    machine: Privacy,
    lines: PrivacyLines,
    readings: mpsc::Receiver<Reading>,
    /// Append-only, one line per change.
    log: super::log::PrivacyLog,
    /// A hardware board: only the physical switch releases privacy.
    hardware: bool,
    /// When privacy last changed (wall clock, for the phones and the log).
    since: SystemTime,
}

impl PrivacyControl {
    /// Start the board's switch backend. Privacy is on (LED lit) until the switch is read.
    pub fn start(profile: &GpioProfile, log: PathBuf, hardware: bool) -> PrivacyControl {
        let (lines, readings) = gpio::start(profile);
        let machine = Privacy::new(Duration::from_millis(profile.debounce_ms));
        let mut control = PrivacyControl {
            machine,
            lines,
            readings,
            log: super::log::PrivacyLog::start(log),
            hardware,
            since: SystemTime::now(),
        };
        let actions = control.machine.start();
        control.carry_out(actions);
        control
    }

    pub async fn next_reading(&mut self) -> Option<Reading> {
        self.readings.recv().await
    }

    pub fn handle_reading(&mut self, reading: Reading, now: Instant) -> Vec<BoxEffect> {
        let actions = self.machine.handle_reading(reading, now);
        self.carry_out(actions)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<BoxEffect> {
        let actions = self.machine.handle_timeout(now);
        self.carry_out(actions)
    }

    /// Privacy on from software; `who` goes into the log.
    pub fn handle_software_on(&mut self, who: &str) -> Vec<BoxEffect> {
        let actions = self.machine.handle_software_on(who);
        self.carry_out(actions)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    pub fn is_on(&self) -> bool {
        self.machine.is_on()
    }

    /// The debounced switch: None until read, or while it cannot be read.
    pub fn switch_on(&self) -> Option<bool> {
        self.machine.switch_on()
    }

    pub fn paused_by_software(&self) -> bool {
        self.machine.paused_by_software()
    }

    pub fn log(&self) -> &super::log::PrivacyLog {
        &self.log
    }

    pub fn is_hardware(&self) -> bool {
        self.hardware
    }

    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// The dev board's switch (or a board whose switch line is simulated).
    pub fn simulated_switch(&self) -> Option<&simulated::Switch> {
        self.lines.simulated.as_ref()
    }

    fn carry_out(&mut self, actions: Vec<Action>) -> Vec<BoxEffect> {
        let mut effects = Vec::new();
        for action in actions {
            match action {
                Action::StopCapture => effects.push(BoxEffect::CloseCapture),
                Action::StartCapture => effects.push(BoxEffect::OpenCapture),
                Action::Gesture(gesture) => effects.push(BoxEffect::Gesture(gesture)),
                Action::Led(on) => {
                    let _ = self.lines.led.send(on);
                }
                Action::Changed { on, cause } => {
                    self.since = SystemTime::now();
                    let state = if on { "on" } else { "off" };
                    tracing::info!("privacy {state} ({cause})");
                    let line = format!(
                        "{} privacy {state} ({cause})\n",
                        humantime::format_rfc3339_seconds(self.since)
                    );
                    self.log.append(line);
                    effects.push(BoxEffect::Changed { on });
                }
            }
        }
        effects
    }
}
