//! The fuzz targets: each takes arbitrary bytes and panics only on a bug. They are shared by
//! the coverage-guided fuzzer (the `hearth-fuzz` crate beside this folder, run by
//! `make fuzz`) and the normal test suite (`tests/fuzz_inputs.rs` replays every seed in
//! `fuzz/seeds/` and every input kept in `fuzz/regressions/`).
//!
//! - `signalling`: lines of text to `Call::handle_message` (see `signalling.rs` for the
//!   few `#` commands and `@…@` placeholders); every message is answered or closed, and
//!   nothing sent leaks internals or a hidden character.
//! - `config`: the bytes as a config file to `config::parse`, then the board profiles and
//!   the capture pipelines made from it.
//! - `invite`: the bytes as a token to `InviteStore::check`, and as an `invites.json`.
//! - `sfu`: datagrams and media frames to `Sfu::handle_datagram` with a phone connected.

pub mod config;
pub mod invite;
pub mod sfu;
pub mod signalling;

/// A target: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name (the folder names under `fuzz/seeds/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("signalling", signalling::run),
    ("config", config::run),
    ("invite", invite::run),
    ("sfu", sfu::run),
];
