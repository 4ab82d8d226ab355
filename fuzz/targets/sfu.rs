//! The SFU's datagram input, with one phone connected (ICE and DTLS done, so datagrams
//! from its address reach its str0m session) and the box in the call.
//!
//! The input is records: an op byte, a little-endian u16 length, that many bytes.
//! - op % 4 == 0: a datagram from the phone's address;
//! - op % 4 == 1: a datagram from an address the SFU has never seen;
//! - op % 4 == 2: the phone sends these bytes as one media frame (audio when op & 0x10,
//!   else video): through SRTP, to the SFU's depacketizer and on to the box;
//! - op % 4 == 3: time passes, 10 ms times the first byte (timers run).
//!
//! After each record the SFU's output is drained (`poll_output` until None) and delivered
//! to the phone, whose answers go back. What must hold: no panic, and the draining ends.

#[allow(dead_code)]
#[path = "../../tests/sfu/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use hearth::call::sfu::{SfuEvent, SfuOutput};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Frequency, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Input, Output};

use harness::{World, SFU_ADDR};

/// Outputs from one input before the SFU is judged to be looping.
const MAX_OUTPUTS: usize = 100_000;
/// Exchanges between the phone and the SFU after one input.
const MAX_ROUNDS: usize = 200;

pub fn run(data: &[u8]) {
    let mut world = World::new();
    world.sfu.enable_box(300, 2500);
    world.join(1, harness::browser(), Codec::H264);
    let connected = world.run_until(Duration::from_secs(5), |w| w.phone(1).connected());
    assert!(connected, "set-up: the phone connects");
    let phone = world.phone(1).addr;
    let stranger = SocketAddr::from(([10, 0, 0, 99], 6000));
    let mut frames = 0u64;
    let mut rest = data;
    while let Some((op, payload, tail)) = record(rest) {
        rest = tail;
        let now = world.now;
        match op % 4 {
            0 => world.sfu.handle_datagram(now, phone, SFU_ADDR, payload),
            1 => world.sfu.handle_datagram(now, stranger, SFU_ADDR, payload),
            2 => {
                frames += 1;
                write_frame(&mut world, op & 0x10 != 0, frames, payload);
            }
            _ => {
                let step = 10 * payload.first().copied().unwrap_or(1) as u64;
                world.now += Duration::from_millis(step.max(1));
                let now = world.now;
                world.sfu.handle_timeout(now);
                for p in &mut world.phones {
                    let _ = p.rtc.handle_input(Input::Timeout(now));
                }
            }
        }
        exchange(&mut world);
    }
}

fn record(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&op, rest) = data.split_first()?;
    let len = match rest {
        [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]) as usize,
        _ => 0,
    };
    let rest = rest.get(2..).unwrap_or(&[]);
    let len = len.min(rest.len());
    Some((op, &rest[..len], &rest[len..]))
}

fn write_frame(world: &mut World, audio: bool, n: u64, payload: &[u8]) {
    let now = world.now;
    let phone = &mut world.phones[0];
    let (mid, codec, time) = if audio {
        let time = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
        (phone.audio_mid, Codec::Opus, time)
    } else {
        let time = MediaTime::new(n * 1800, Frequency::NINETY_KHZ);
        (phone.video_mid, phone.video_codec, time)
    };
    let Some(pt) = phone.pt_for(mid, codec) else {
        return;
    };
    if let Some(writer) = phone.rtc.writer(mid) {
        let _ = writer.write(pt, now, time, payload.to_vec());
    }
}

/// Deliver datagrams both ways until both are quiet, tolerating whatever the phone thinks
/// of what it gets (only the SFU is under test).
fn exchange(world: &mut World) {
    let now = world.now;
    let mut outputs = 0;
    for _ in 0..MAX_ROUNDS {
        let mut uplink = Vec::new();
        for phone in &mut world.phones {
            while let Ok(output) = phone.rtc.poll_output() {
                match output {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        uplink.push((t.source, t.destination, t.contents.to_vec()))
                    }
                    Output::Event(_) => {}
                }
            }
        }
        let mut moved = !uplink.is_empty();
        for (source, destination, contents) in uplink {
            world
                .sfu
                .handle_datagram(now, source, destination, &contents);
        }
        while let Some(output) = world.sfu.poll_output() {
            outputs += 1;
            assert!(outputs < MAX_OUTPUTS, "the SFU keeps producing output");
            moved = true;
            match output {
                SfuOutput::Transmit(t) => {
                    let Some(phone) = world.phones.iter_mut().find(|p| p.addr == t.destination)
                    else {
                        continue;
                    };
                    let Ok(contents) = t.contents.as_slice().try_into() else {
                        continue;
                    };
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: SFU_ADDR,
                            destination: t.destination,
                            contents,
                        },
                    );
                    let _ = phone.rtc.handle_input(input);
                }
                SfuOutput::Event(SfuEvent::Offer(id, sdp)) => {
                    let Some(phone) = world.phones.iter_mut().find(|p| p.id == id) else {
                        continue;
                    };
                    let Ok(offer) = SdpOffer::from_sdp_string(&sdp) else {
                        continue;
                    };
                    if let Ok(answer) = phone.rtc.sdp_api().accept_offer(offer) {
                        let answer = SdpAnswer::to_sdp_string(&answer);
                        let _ = world.sfu.handle_answer(id, &answer, now);
                    }
                }
                SfuOutput::Event(_) => {}
            }
        }
        if !moved {
            return;
        }
    }
}
