//! The privacy switch: a pure state machine (`machine`), the switch's lines (`gpio`: the
//! real GPIO character device and a simulation), and the effects the privacy part carries
//! out itself, the LED and the privacy log (`control`, `log`).

pub mod control;
pub mod gpio;
pub mod log;
pub mod machine;

pub use control::{BoxEffect, PrivacyControl};
