//! Hearth: family video calls from a box at home, with no company in the middle.
//!
//! The box serves the join page and signalling over HTTPS, runs its own SFU for the phones,
//! drives its camera, mic, TV and speaker through GStreamer, and obeys a physical privacy
//! switch. One process, one tokio runtime; the parts:
//!
//! - [`call`]: the call itself, pure (inputs and the time in, outputs out, no I/O):
//!   - [`call::room`]: who is in, which codec the room uses, what everyone is told;
//!   - [`call::invite`]: join links (128-bit tokens, stored hashed, expiry, revocation);
//!   - [`call::protocol`]: the signalling messages on the WebSocket;
//!   - [`call::sfu`]: the media plane on str0m (one `Rtc` per phone, forwarding, the box's leg).
//! - [`owner`]: the box's owners (phones paired by a switch pattern at the box), their
//!   credentials hashed like join links.
//! - [`privacy`]: the switch's state machine and its GPIO backends (real and simulated).
//! - [`media`]: the box's own camera and mic (`capture`), TV and speaker (`tv`), pipeline
//!   plans, and what hardware the machine has (`probe`, `check`).
//! - [`reach`]: family outside the home: the home router forwards the box's ports (PCP,
//!   NAT-PMP, UPnP-IGD) and tells it the external address; the owner's domain name kept
//!   pointing at it (`dns_update`); the owner's TURN relay.
//! - [`setup`]: first boot: the Wi-Fi and the box's name from a file on the card, or the
//!   box's own setup Wi-Fi and its page.
//! - [`clock`]: whether the system clock is known to be right.
//! - [`durable`]: files written whole or not at all.
//! - [`web`]: HTTPS (the join page, the signalling WebSocket, the owner and setup pages,
//!   Hearth's own CA, certificates for the owner's name from an ACME CA).
//! - [`daemon`]: the wiring: start-up, the hub task that does the cores' I/O, the control
//!   socket the CLI talks to, systemd notification.
//! - [`config`]: the owner's config file and the board profiles (`board/*.toml`).
//!
//! `src/main.rs` is the command line; everything else is here, so tests and benchmarks use
//! the same code.

pub mod call;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod media;
pub mod owner;
pub mod privacy;
pub mod reach;
pub mod setup;
pub mod web;
