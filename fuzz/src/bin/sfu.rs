//! `cargo afl fuzz` target: see `targets/sfu.rs`.

fn main() {
    afl::fuzz!(|data: &[u8]| hearth_fuzz::targets::sfu::run(data));
}
