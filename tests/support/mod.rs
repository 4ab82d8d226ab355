// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod home;
pub mod netns;
pub mod wss;
