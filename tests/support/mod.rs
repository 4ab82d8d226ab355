// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod attack;
pub mod browser;
pub mod daemon;
pub mod wss;
