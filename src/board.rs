//! Which board Hearth runs on. The dev board needs no hardware and keeps everything on
//! loopback unless `--lan` is given; the Pi profiles (camera, encoder, GPIO) build on this.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Board {
    /// A development machine: test media, simulated privacy switch, loopback only.
    Dev,
    /// Raspberry Pi 4.
    Pi4,
    /// Raspberry Pi 5.
    Pi5,
}

impl Board {
    /// Whether the daemon listens on the local network without being asked to.
    pub fn on_lan_by_default(self) -> bool {
        !matches!(self, Board::Dev)
    }
}
