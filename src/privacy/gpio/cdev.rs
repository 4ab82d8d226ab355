//! The real switch and LED through the Linux GPIO character device: lines found by name,
//! the switch with pull-up, both-edge events and the kernel's debounce, the LED as output.
//! Any failure reads as "unreadable" (privacy on) and the lines are requested again every 2 s.

use std::time::Duration;

use gpiocdev::line::{Bias, EdgeDetection, Value};
use gpiocdev::tokio::AsyncRequest;
use gpiocdev::Request;
use tokio::sync::{mpsc, watch};

use crate::config::board::GpioProfile;
use crate::privacy::machine::Reading;

const RETRY_EVERY: Duration = Duration::from_secs(2);

pub async fn run(
    profile: GpioProfile,
    readings: mpsc::Sender<Reading>,
    mut led: watch::Receiver<bool>,
) {
    loop {
        let why = watch_lines(&profile, &readings, &mut led).await;
        if readings.send(Reading::Unreadable(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Watch until something fails; returns why.
async fn watch_lines(
    profile: &GpioProfile,
    readings: &mpsc::Sender<Reading>,
    led: &mut watch::Receiver<bool>,
) -> String {
    let Some(switch_line) = gpiocdev::find_named_line(&profile.switch_line) else {
        return format!("no GPIO line named {}", profile.switch_line);
    };
    let mut builder = Request::builder();
    builder
        .with_consumer("hearth privacy switch")
        .with_found_line(&switch_line)
        .as_input()
        .with_bias(Bias::PullUp)
        .with_edge_detection(EdgeDetection::BothEdges)
        .with_debounce_period(Duration::from_millis(profile.debounce_ms));
    if profile.switch_active_low {
        builder.as_active_low();
    }
    let switch = match builder.request() {
        Ok(r) => AsyncRequest::new(r),
        Err(e) => return format!("cannot request {}: {e}", profile.switch_line),
    };
    // The LED is best effort: privacy does not depend on it being there.
    let led_request = gpiocdev::find_named_line(&profile.led_line).and_then(|line| {
        let mut b = Request::builder();
        b.with_consumer("hearth privacy led")
            .with_found_line(&line)
            .as_output(Value::Active);
        if profile.led_active_low {
            b.as_active_low();
        }
        b.request().ok().map(|r| (r, line.info.offset))
    });
    let set_led = |on: bool| {
        if let Some((request, offset)) = &led_request {
            let _ = request.set_value(*offset, if on { Value::Active } else { Value::Inactive });
        }
    };
    set_led(*led.borrow());
    let offset = switch_line.info.offset;
    loop {
        let value = match switch.as_ref().value(offset) {
            Ok(v) => v,
            Err(e) => return format!("cannot read {}: {e}", profile.switch_line),
        };
        let reading = if value == Value::Active {
            Reading::On
        } else {
            Reading::Off
        };
        if readings.send(reading).await.is_err() {
            return "shutting down".into();
        }
        tokio::select! {
            event = switch.read_edge_event() => {
                if let Err(e) = event {
                    return format!("cannot watch {}: {e}", profile.switch_line);
                }
            }
            changed = led.changed() => {
                if changed.is_err() {
                    return "shutting down".into();
                }
                set_led(*led.borrow());
            }
        }
    }
}
