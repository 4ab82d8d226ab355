//! `cargo afl fuzz` target: see `targets/signalling.rs`.

fn main() {
    afl::fuzz!(|data: &[u8]| hearth_fuzz::targets::signalling::run(data));
}
