//! Whether the system clock is known to be right. A Pi has no battery clock: until an NTP
//! client (the image's systemd-timesyncd, asking only the NTP server the home network names
//! over DHCP, or one the owner set) has synchronised it, the time may be days behind, and
//! with it every link's expiry. timesyncd marks the moment it has synchronised the clock,
//! and the kernel's `adjtimex` says so too. Nothing a phone says ever sets the clock.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockState {
    /// An NTP client keeps the clock right.
    Synchronized,
    /// Nobody has set the clock from a trusted source since the box started.
    Unsynchronized,
}

/// Made by systemd-timesyncd once it has synchronised the clock.
pub const TIMESYNCD_SYNCHRONIZED: &str = "/run/systemd/timesync/synchronized";

/// The NTP client's word, from the mark it makes (`[clock] synchronized_mark`; the unit's
/// `ProtectClock=` forbids even reading `adjtimex`). Only where no such client is installed
/// (the mark's directory is missing) the kernel's view, now.
pub fn state(synchronized_mark: &std::path::Path) -> ClockState {
    if synchronized_mark.exists() {
        return ClockState::Synchronized;
    }
    if synchronized_mark.parent().is_some_and(|dir| dir.is_dir()) {
        return ClockState::Unsynchronized;
    }
    // SAFETY: adjtimex with modes 0 only reads; the struct is plain data the kernel fills.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::adjtimex(&mut timex) };
    interpret(result, timex.status)
}

/// `adjtimex`'s return value and status flags, as a state: TIME_ERROR, a failed call or the
/// STA_UNSYNC flag all mean "not known to be right".
fn interpret(result: libc::c_int, status: libc::c_int) -> ClockState {
    if result < 0 || result == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0 {
        ClockState::Unsynchronized
    } else {
        ClockState::Synchronized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_mark_decides_where_the_client_exists() {
        let dir = std::env::temp_dir().join(format!("hearth-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mark = dir.join("synchronized");
        let _ = std::fs::remove_file(&mark);
        assert_eq!(state(&mark), ClockState::Unsynchronized);
        std::fs::write(&mark, "").unwrap();
        assert_eq!(state(&mark), ClockState::Synchronized);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_kernels_answer_is_read_cautiously() {
        assert_eq!(interpret(libc::TIME_OK, 0), ClockState::Synchronized);
        assert_eq!(interpret(libc::TIME_ERROR, 0), ClockState::Unsynchronized);
        assert_eq!(
            interpret(libc::TIME_OK, libc::STA_UNSYNC),
            ClockState::Unsynchronized
        );
        assert_eq!(interpret(-1, 0), ClockState::Unsynchronized);
    }
}
