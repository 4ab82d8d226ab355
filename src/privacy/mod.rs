//! The privacy switch: a pure state machine (`machine`) fed by the switch's lines (`gpio`).

pub mod gpio;
pub mod machine;
