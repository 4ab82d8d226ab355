//! Latency figures the benchmark reads from `hearth status`: recent samples in a bounded
//! window, summarised as median and p99.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The most recent samples kept per figure...
const WINDOW: usize = 1000;
/// ...and of forwarded datagrams, thousands a second in a large call: the last few seconds.
const FORWARD_WINDOW: usize = 20_000;

#[derive(Debug)]
pub struct LatencyWindow {
    samples: VecDeque<Duration>,
    capacity: usize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self::with_capacity(WINDOW)
    }
}

impl LatencyWindow {
    pub fn with_capacity(capacity: usize) -> Self {
        LatencyWindow {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn record(&mut self, sample: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// `{ "median": µs, "p99": µs, "count": n }`; null percentiles without samples.
    pub fn summary(&self) -> serde_json::Value {
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort();
        let at = |p: usize| {
            let last = sorted.len().checked_sub(1)?;
            sorted
                .get((sorted.len() * p / 100).min(last))
                .map(|d| d.as_micros() as u64)
        };
        serde_json::json!({ "median": at(50), "p99": at(99), "count": sorted.len() })
    }
}

/// The daemon's timing figures.
#[derive(Debug)]
pub struct Metrics {
    /// A phone's datagram read from the socket → the last copy the SFU forwarded of it handed
    /// to the socket (datagrams that were forwarded to no one are not counted).
    pub forward: LatencyWindow,
    /// Encoded frame of the box's camera → its packets handed to the socket.
    pub send: LatencyWindow,
    /// Privacy edge → capture pipelines at NULL (devices closed).
    pub capture_release: LatencyWindow,
    /// Privacy edge → the new roster handed to every phone's connection.
    pub everyone_told: LatencyWindow,
    /// When privacy last changed, until the phones have been told.
    privacy_changed_at: Option<Instant>,
    /// When privacy last turned on, to measure how fast capture was released.
    privacy_on_at: Option<Instant>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            forward: LatencyWindow::with_capacity(FORWARD_WINDOW),
            send: LatencyWindow::default(),
            capture_release: LatencyWindow::default(),
            everyone_told: LatencyWindow::default(),
            privacy_changed_at: None,
            privacy_on_at: None,
        }
    }
}

impl Metrics {
    pub fn privacy_changed(&mut self, on: bool, now: Instant) {
        self.privacy_changed_at = Some(now);
        if on {
            self.privacy_on_at = Some(now);
        }
    }

    /// A roster went out to the phones: if a privacy change was waiting for it, record.
    pub fn roster_sent(&mut self) {
        if let Some(at) = self.privacy_changed_at.take() {
            self.everyone_told.record(at.elapsed());
        }
    }

    pub fn capture_released(&mut self, at: Instant) {
        if let Some(edge) = self.privacy_on_at {
            self.capture_release
                .record(at.saturating_duration_since(edge));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_bounded_window() {
        let mut window = LatencyWindow::default();
        assert_eq!(window.summary()["median"], serde_json::Value::Null);
        for ms in 1..=100 {
            window.record(Duration::from_millis(ms));
        }
        let summary = window.summary();
        assert_eq!(summary["median"], 51_000);
        assert_eq!(summary["p99"], 100_000);
        for _ in 0..WINDOW {
            window.record(Duration::from_millis(7));
        }
        assert_eq!(window.summary()["count"], WINDOW);
        assert_eq!(
            window.summary()["p99"],
            7_000,
            "old samples leave the window"
        );
    }

    #[test]
    fn the_forwarding_window_keeps_more_samples() {
        let mut metrics = Metrics::default();
        for _ in 0..FORWARD_WINDOW + 5 {
            metrics.forward.record(Duration::from_micros(300));
        }
        assert_eq!(metrics.forward.summary()["count"], FORWARD_WINDOW);
        assert_eq!(metrics.forward.summary()["p99"], 300);
    }
}
