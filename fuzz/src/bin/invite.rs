//! `cargo afl fuzz` target: see `targets/invite.rs`.

fn main() {
    afl::fuzz!(|data: &[u8]| hearth_fuzz::targets::invite::run(data));
}
