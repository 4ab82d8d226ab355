//! `cargo bench --bench forward`: what the SFU core itself costs per forwarded packet, with
//! no socket, no runtime and no other process in the way.
//!
//! The phones of `tests/sfu` (str0m clients in memory, a clock the bench steps) publish
//! H.264 and Opus and subscribe to everyone else; only the time inside the SFU's own calls
//! (datagrams in, outputs polled, timers) is counted, over a window of simulated time. The
//! figure is that time per 1000 forwarded packets: the user-space part of what `make
//! bench-load` and `make bench-janus` measure with the kernel's share and the hub's wake-ups
//! in it. It moves only with the SFU's code (and str0m's), so a change to the forwarding path
//! shows here in a few seconds, where the browser benches need minutes and many runs to see
//! through their noise. The best of several runs is reported, as the one least disturbed.
//!
//! `-- --sizes 3,4` picks call sizes (default 3, 4 and 8), `-- --runs R` the runs (5).

#[allow(dead_code)]
#[path = "../tests/sfu/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{browser, World};
use str0m::format::Codec;
use str0m::media::MediaKind;

/// Simulated time counted per run, once everyone receives everyone.
const WINDOW: Duration = Duration::from_secs(10);
/// Before the window: keyframe requests and bandwidth estimates settle.
const SETTLE: Duration = Duration::from_secs(2);
/// A video delta frame's size: three packets, as a 640x480 picture at ~1 Mbit/s comes in.
const VIDEO_FRAME_BYTES: usize = 3000;

/// CPU-µs inside the SFU per forwarded packet (= CPU-ms per 1000), and the packets counted.
fn run(phones: u64, one_at_a_time: bool) -> (f64, u64) {
    let mut world = World::new();
    world.one_datagram_at_a_time = one_at_a_time;
    for n in 1..=phones {
        world.join(n, browser(), Codec::H264);
        world.phone_mut(n).video_frame_bytes = VIDEO_FRAME_BYTES;
    }
    let everyone = world.run_until(Duration::from_secs(5), |w| {
        w.phones.iter().all(|a| {
            w.phones.iter().filter(|b| b.id != a.id).all(|b| {
                a.media_from(b, MediaKind::Video).count() > 0
                    && a.media_from(b, MediaKind::Audio).count() > 0
            })
        })
    });
    assert!(everyone, "not everyone received everyone within 5 s");
    world.run_for(SETTLE);
    let (busy, forwarded) = (world.sfu_busy, world.sfu.counters().packets_forwarded);
    world.run_for(WINDOW);
    let busy = world.sfu_busy - busy;
    let packets = world.sfu.counters().packets_forwarded - forwarded;
    assert!(packets > 0, "nothing forwarded in the window");
    (busy.as_secs_f64() * 1e6 / packets as f64, packets)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<u64> = value("--sizes")
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 4, 8]);
    let runs: usize = value("--runs").and_then(|r| r.parse().ok()).unwrap_or(5);
    for (phones, one_at_a_time) in sizes.iter().flat_map(|&n| [(n, true), (n, false)]) {
        let mut figures: Vec<f64> = Vec::new();
        let mut packets = 0;
        for _ in 0..runs.max(1) {
            let (figure, counted) = run(phones, one_at_a_time);
            figures.push(figure);
            packets = counted;
        }
        figures.sort_by(f64::total_cmp);
        let median = figures[figures.len() / 2];
        println!(
            "N = {phones}, {}: SFU core {:.1} CPU-ms per 1000 forwarded packets (best of {}; median {median:.1}; {packets} packets per {} s window)",
            if one_at_a_time { "each datagram alone" } else { "a step's datagrams together" },
            figures[0],
            figures.len(),
            WINDOW.as_secs()
        );
    }
}
