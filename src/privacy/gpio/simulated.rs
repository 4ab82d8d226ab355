//! The dev board's switch and LED: a switch flipped from the command line that reports like
//! the real line (optionally with contact bounce), and an LED whose state `hearth status`
//! shows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::privacy::machine::Reading;

#[derive(Clone)]
pub struct Switch {
    readings: mpsc::Sender<Reading>,
    bounce: bool,
    on: Arc<AtomicBool>,
    led: Arc<AtomicBool>,
}

impl Switch {
    /// Starts off (the usual position), and reports that at once as a real line's first read.
    pub fn start(
        bounce: bool,
        readings: mpsc::Sender<Reading>,
        mut led_rx: watch::Receiver<bool>,
    ) -> Switch {
        let led = Arc::new(AtomicBool::new(*led_rx.borrow()));
        let shown = led.clone();
        tokio::spawn(async move {
            while led_rx.changed().await.is_ok() {
                shown.store(*led_rx.borrow(), Ordering::Relaxed);
            }
        });
        let _ = readings.try_send(Reading::Off);
        Switch {
            readings,
            bounce,
            on: Arc::new(AtomicBool::new(false)),
            led,
        }
    }

    pub async fn flip(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        let reading = |on: bool| if on { Reading::On } else { Reading::Off };
        if self.bounce {
            // A toggle's contacts chatter for a few milliseconds before they settle.
            for _ in 0..3 {
                let _ = self.readings.send(reading(on)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = self.readings.send(reading(!on)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let _ = self.readings.send(reading(on)).await;
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn led(&self) -> bool {
        self.led.load(Ordering::Relaxed)
    }
}
