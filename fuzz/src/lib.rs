//! The fuzz targets (`targets/`, shared with the normal test suite) for the fuzzer's binaries.

#[path = "../targets/mod.rs"]
pub mod targets;
