//! `cargo afl fuzz` target: see `targets/config.rs`.

fn main() {
    afl::fuzz!(|data: &[u8]| hearth_fuzz::targets::config::run(data));
}
