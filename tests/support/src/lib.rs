//! What Hearth's integration tests (`tests/*.rs`) and benchmark (`benches/call.rs`) share:
//!
//! - [`Daemon`]: the real `hearth` binary started on loopback with its own state dir, and its
//!   command line (`hearth status`, `hearth privacy on`, ...).
//! - [`Phone`]: a real headless browser on the join page: join, tap buttons, read tiles, and
//!   read or wait for the media it receives (`RTCPeerConnection.getStats()`).
//! - [`Browser`]: the browser underneath, Chromium over CDP or Firefox over WebDriver BiDi.
//! - [`wss`]: a signalling client that trusts only the daemon's own CA.
//! - [`home`]: a simulated home network (box, phones at home and outside, a NAT router with
//!   miniupnpd) in network namespaces the test makes, entered through [`netns`].
//!
//! The `hearth` binary is the one Cargo built next to the running test or bench (see
//! [`daemon::hearth_bin`]), so this crate works from the hearth package's tests and benches
//! without being told where it is.

pub mod attack;
pub mod browser;
pub mod daemon;
pub mod home;
pub mod impair;
pub mod netns;
pub mod phone;
pub mod servers;
pub mod stats;
pub mod wss;

pub use browser::{Browser, BrowserKind, Trust};
// Tests that speak WebSocket frames themselves use the same version as `wss`.
pub use daemon::{temp_dir, Daemon};
pub use phone::{Joined, Media, Phone, Received};
pub use tokio_tungstenite;
