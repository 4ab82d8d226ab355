//! The privacy state machine: switch readings, software requests and the current time in;
//! what to do with capture, the LED and the room out. Pure, so every rule is tested with a
//! fake clock. The rules:
//!
//! - Privacy is on while the switch reads on, while it cannot be read, before it has been
//!   read at all, or while software asked for it.
//! - Turning on is immediate (the safe direction); turning off needs the switch to read off
//!   steadily for the debounce time, so contact bounce never opens the camera.
//! - Software can turn privacy on. On a hardware board nothing but the physical switch
//!   releases it: the software request is cleared when the switch is switched off.
//!   On the dev board the simulated switch plays that part.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    On,
    Off,
    /// The line could not be read (chip missing, request or read failed).
    Unreadable(String),
}

/// Why privacy changed, for the log and the phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Switch,
    SwitchUnreadable(String),
    Software(String),
    StartUp,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Switch => f.write_str("switch"),
            Cause::SwitchUnreadable(why) => write!(f, "switch unreadable: {why}"),
            Cause::Software(who) => write!(f, "software ({who})"),
            Cause::StartUp => f.write_str("start-up"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Close camera and mic: pipelines to NULL, devices released.
    StopCapture,
    StartCapture,
    Led(bool),
    /// Tell every participant, and append to the privacy log.
    Changed {
        on: bool,
        cause: Cause,
    },
    /// A hand at the box made a sign with the switch.
    Gesture(Gesture),
}

/// Signs made with the switch: physical, so only someone at the box can make them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gesture {
    /// On, then off again within `FLICK`: let in whoever is knocking.
    Flick,
    /// On, off, on within `PATTERN`: show the owner pairing code on the TV.
    OwnerPattern,
}

/// The longest "on" that still counts as a flick.
pub const FLICK: Duration = Duration::from_secs(3);
/// The on-off-on pattern must fit in this.
pub const PATTERN: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Privacy {
    debounce: Duration,
    /// Latest reading and since when it has been read so.
    reading: Option<(Reading, Instant)>,
    /// The switch as debounced: None until first known.
    switch_on: Option<bool>,
    software_on: bool,
    /// Whether the switch has ever read off steadily (the first time is start-up).
    known_once: bool,
    /// The effective state; starts on (nothing is captured until the switch is known).
    on: bool,
    /// The switch's last few settled positions and when it moved to them, for gestures.
    moves: std::collections::VecDeque<(bool, Instant)>,
}

impl Privacy {
    pub fn new(debounce: Duration) -> Self {
        Privacy {
            debounce,
            reading: None,
            switch_on: None,
            software_on: false,
            known_once: false,
            on: true,
            moves: Default::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The switch as debounced: None until it has been read (or while it cannot be).
    pub fn switch_on(&self) -> Option<bool> {
        self.switch_on
    }

    /// Whether software asked for privacy and the switch has not yet released it.
    pub fn paused_by_software(&self) -> bool {
        self.software_on
    }

    /// Start-up: privacy is on and capture has not started. The LED shows it.
    pub fn start(&self) -> Vec<Action> {
        vec![Action::Led(true)]
    }

    /// A reading of the switch line (an edge event, or a poll).
    pub fn handle_reading(&mut self, reading: Reading, now: Instant) -> Vec<Action> {
        let changed = self.reading.as_ref().is_none_or(|(r, _)| *r != reading);
        if changed {
            self.reading = Some((reading.clone(), now));
        }
        match reading {
            Reading::On => {
                let moved = self.switch_on.replace(true) != Some(true);
                let mut actions = self.settle(Cause::Switch);
                if moved {
                    actions.extend(self.moved(true, now));
                }
                actions
            }
            Reading::Unreadable(why) => {
                self.switch_on = None;
                self.settle(Cause::SwitchUnreadable(why))
            }
            // Off counts only once steady: see `tick`.
            Reading::Off => self.handle_timeout(now),
        }
    }

    /// Time passed: a steady "off" reading may now release the switch.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        if let Some((Reading::Off, since)) = &self.reading {
            if now.saturating_duration_since(*since) >= self.debounce
                && self.switch_on != Some(false)
            {
                let before = self.switch_on.replace(false);
                if before == Some(true) {
                    // Switching off is the owner's hand at the box: it also ends a software pause.
                    self.software_on = false;
                }
                let cause = if self.known_once {
                    Cause::Switch
                } else {
                    Cause::StartUp
                };
                self.known_once = true;
                let mut actions = self.settle(cause);
                if let Some((_, since)) = &self.reading {
                    let since = *since;
                    actions.extend(self.moved(false, since));
                }
                return actions;
            }
        }
        Vec::new()
    }

    /// The switch settled in a new position at `at`: did that finish a gesture?
    fn moved(&mut self, on: bool, at: Instant) -> Option<Action> {
        if self.moves.len() == 3 {
            self.moves.pop_front();
        }
        self.moves.push_back((on, at));
        let moves: Vec<(bool, Instant)> = self.moves.iter().copied().collect();
        match moves.as_slice() {
            [.., (true, first), (false, _), (true, last)]
                if last.saturating_duration_since(*first) <= PATTERN =>
            {
                self.moves.clear();
                Some(Action::Gesture(Gesture::OwnerPattern))
            }
            [.., (true, went_on), (false, went_off)]
                if went_off.saturating_duration_since(*went_on) <= FLICK =>
            {
                Some(Action::Gesture(Gesture::Flick))
            }
            _ => None,
        }
    }

    /// When the next `handle_timeout` could change something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.reading {
            Some((Reading::Off, since)) if self.switch_on != Some(false) => {
                Some(*since + self.debounce)
            }
            _ => None,
        }
    }

    /// Software (the command line, a phone's "Pause the box") turns privacy on. There is no
    /// way back from software: only the switch, flipped on and off, releases it.
    pub fn handle_software_on(&mut self, who: &str) -> Vec<Action> {
        self.software_on = true;
        self.settle(Cause::Software(who.to_string()))
    }

    fn any_reason_for_privacy(&self) -> bool {
        // Unknown (None) counts as on: fail closed.
        self.switch_on != Some(false) || self.software_on
    }

    fn settle(&mut self, cause: Cause) -> Vec<Action> {
        let on = self.any_reason_for_privacy();
        if on == self.on {
            return Vec::new();
        }
        self.on = on;
        if on {
            vec![
                Action::StopCapture,
                Action::Led(true),
                Action::Changed { on: true, cause },
            ]
        } else {
            vec![
                Action::StartCapture,
                Action::Led(false),
                Action::Changed { on: false, cause },
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn started(now: Instant) -> Privacy {
        let mut p = Privacy::new(DEBOUNCE);
        assert_eq!(p.start(), vec![Action::Led(true)]);
        p.handle_reading(Reading::Off, now);
        let actions = p.handle_timeout(now + DEBOUNCE);
        assert!(actions.contains(&Action::StartCapture));
        p
    }

    #[test]
    fn nothing_is_captured_until_the_switch_is_read() {
        let t = Instant::now();
        let mut p = Privacy::new(DEBOUNCE);
        assert!(p.is_on());
        assert!(
            p.handle_timeout(t + ms(1000)).is_empty(),
            "no reading, no capture"
        );
        assert!(
            p.handle_reading(Reading::Off, t).is_empty(),
            "not steady yet"
        );
        assert_eq!(p.poll_timeout(), Some(t + DEBOUNCE));
        let actions = p.handle_timeout(t + DEBOUNCE);
        assert_eq!(actions[0], Action::StartCapture);
        assert!(!p.is_on());
    }

    #[test]
    fn switch_on_closes_capture_at_once() {
        let t = Instant::now();
        let mut p = started(t);
        let actions = p.handle_reading(Reading::On, t + ms(100));
        assert_eq!(
            actions,
            vec![
                Action::StopCapture,
                Action::Led(true),
                Action::Changed {
                    on: true,
                    cause: Cause::Switch
                }
            ]
        );
    }

    #[test]
    fn bounce_is_ignored() {
        let t = Instant::now();
        let mut p = started(t);
        // On with bounce: the first contact engages, the chatter changes nothing.
        assert!(p
            .handle_reading(Reading::On, t + ms(100))
            .contains(&Action::StopCapture));
        for i in 0..5 {
            p.handle_reading(Reading::Off, t + ms(101 + 2 * i));
            assert!(p.handle_timeout(t + ms(102 + 2 * i)).is_empty());
            assert!(p
                .handle_reading(Reading::On, t + ms(102 + 2 * i))
                .is_empty());
        }
        // Off with bounce: released once, only after it reads off for the debounce time.
        p.handle_reading(Reading::Off, t + ms(200));
        p.handle_reading(Reading::On, t + ms(205));
        p.handle_reading(Reading::Off, t + ms(207));
        assert!(
            p.handle_timeout(t + ms(220)).is_empty(),
            "13 ms steady is not enough"
        );
        let actions = p.handle_timeout(t + ms(227));
        assert_eq!(actions[0], Action::StartCapture);
        assert!(p.handle_timeout(t + ms(300)).is_empty());
    }

    #[test]
    fn an_unreadable_switch_means_privacy() {
        let t = Instant::now();
        let mut p = started(t);
        let actions = p.handle_reading(Reading::Unreadable("gpiochip0 missing".into()), t + ms(50));
        assert!(actions.contains(&Action::StopCapture));
        assert!(actions.contains(&Action::Led(true)));
        assert!(matches!(
            &actions[2],
            Action::Changed {
                on: true,
                cause: Cause::SwitchUnreadable(_)
            }
        ));
        // Retries that keep failing change nothing (one log line, not one per retry).
        assert!(p
            .handle_reading(
                Reading::Unreadable("gpiochip0 missing".into()),
                t + ms(2050)
            )
            .is_empty());
        // Readable again and off: released after the debounce.
        p.handle_reading(Reading::Off, t + ms(4000));
        assert!(p
            .handle_timeout(t + ms(4020))
            .contains(&Action::StartCapture));
    }

    #[test]
    fn unreadable_at_start_never_captures() {
        let t = Instant::now();
        let mut p = Privacy::new(DEBOUNCE);
        p.start();
        assert!(
            p.handle_reading(Reading::Unreadable("no chip".into()), t)
                .is_empty(),
            "already on"
        );
        assert!(p.handle_timeout(t + ms(5000)).is_empty());
        assert!(p.is_on());
    }

    #[test]
    fn software_engages_but_only_the_switch_releases() {
        let t = Instant::now();
        let mut p = started(t);
        let actions = p.handle_software_on("the phone page");
        assert!(actions.contains(&Action::StopCapture));
        assert!(p.paused_by_software());
        assert!(
            p.handle_timeout(t + ms(1000)).is_empty(),
            "the switch still reads off: stays on"
        );
        // The owner flips the switch on and off again: that releases it.
        p.handle_reading(Reading::On, t + ms(2000));
        p.handle_reading(Reading::Off, t + ms(3000));
        assert!(p
            .handle_timeout(t + ms(3020))
            .contains(&Action::StartCapture));
        assert!(!p.is_on() && !p.paused_by_software());
    }

    #[test]
    fn the_switch_makes_signs_only_when_quick() {
        let t = Instant::now();
        let mut p = started(t);
        let gestures = |actions: Vec<Action>| -> Vec<Gesture> {
            actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Gesture(g) => Some(g),
                    _ => None,
                })
                .collect()
        };
        // A flick: on, off within 3 s.
        assert!(gestures(p.handle_reading(Reading::On, t + ms(1000))).is_empty());
        p.handle_reading(Reading::Off, t + ms(2000));
        assert_eq!(gestures(p.handle_timeout(t + ms(2020))), [Gesture::Flick]);
        // On again within 5 s of the first on: the owner pattern.
        assert_eq!(
            gestures(p.handle_reading(Reading::On, t + ms(4000))),
            [Gesture::OwnerPattern]
        );
        // Slow moves are no sign.
        p.handle_reading(Reading::Off, t + ms(20_000));
        assert!(
            gestures(p.handle_timeout(t + ms(20_020))).is_empty(),
            "on for 16 s"
        );
        p.handle_reading(Reading::On, t + ms(30_000));
        p.handle_reading(Reading::Off, t + ms(40_000));
        assert!(gestures(p.handle_timeout(t + ms(40_020))).is_empty());
        assert!(gestures(p.handle_reading(Reading::On, t + ms(41_000))).is_empty());
    }
}
