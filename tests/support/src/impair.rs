//! A bad network for the tests and benchmarks to make for themselves: loss, delay and jitter
//! on UDP datagrams, inside a network namespace the test created (this kernel has no netem).
//!
//! `iptables -j NFQUEUE` hands every UDP datagram of the chosen chains to a queue; a thread
//! of the test process, inside the same namespace, drops some of them at random and lets the
//! others through after a random delay (`delay ± jitter`, uniform), so they also arrive out
//! of order, as on a mobile link. Datagrams only the namespace itself sends or receives are
//! touched, and nothing leaves it. Everything is undone on drop.
//!
//! ```ignore
//! // Every datagram sent inside this namespace: each hop between browsers and the SFU once.
//! let bad = Impaired::start(None, &[Chain::Output], 5, Impairment::mobile())?;
//! // ... measure ...
//! let counts = bad.stop()?;
//! ```

use std::collections::BinaryHeap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// What happens to each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Dropped at random, in percent.
    pub loss_percent: f64,
    /// Mean delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` plus or minus up to this (uniform).
    pub jitter: Duration,
}

impl Impairment {
    /// The issue's anchor: 5 % loss, 50 ± 30 ms.
    pub fn mobile() -> Impairment {
        Impairment {
            loss_percent: 5.0,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(30),
        }
    }
}

/// Where in the namespace datagrams are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Datagrams the namespace sends (every hop once, when all ends are inside it).
    Output,
    /// Datagrams the namespace receives.
    Input,
}

impl Chain {
    fn name(self) -> &'static str {
        match self {
            Chain::Output => "OUTPUT",
            Chain::Input => "INPUT",
        }
    }
}

/// What the impairment did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub passed: u64,
    pub dropped: u64,
    /// The most datagrams held at once.
    pub most_held: usize,
}

pub struct Impaired {
    /// `nsenter --net=… --` for the namespace's iptables (empty: the test's own namespace).
    nsenter: Vec<std::ffi::OsString>,
    rules: Vec<Vec<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<Counts>>>,
}

impl Impaired {
    /// Impair the UDP datagrams of `chains` in `netns` (None: the namespace the test runs
    /// in, which must be one it made, e.g. inside `tests/in-netns`), through queue number
    /// `queue` (distinct per impairment in one namespace).
    pub fn start(
        netns: Option<&Netns>,
        chains: &[Chain],
        queue: u16,
        impairment: Impairment,
    ) -> Result<Impaired> {
        if crate::home::find_tool("iptables").is_none() {
            bail!("`iptables` is missing: `make deps` installs it");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let enter = netns.map(Netns::entry);
            std::thread::spawn(move || {
                if let Some(enter) = enter {
                    enter()?;
                }
                run(queue, impairment, &stop, ready_tx)
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the impairment's queue {queue}: {e}"),
            Err(_) => bail!("the impairment's queue {queue} did not open"),
        }
        let mut impaired = Impaired {
            nsenter: netns.map(Netns::nsenter_prefix).unwrap_or_default(),
            rules: Vec::new(),
            stop,
            thread: Some(thread),
        };
        for chain in chains {
            let rule: Vec<String> = [
                chain.name(),
                "-p",
                "udp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            impaired.iptables("-A", &rule)?;
            impaired.rules.push(rule);
        }
        Ok(impaired)
    }

    /// Undo the rules, let held datagrams go, and say what was done.
    pub fn stop(mut self) -> Result<Counts> {
        self.undo()
    }

    fn undo(&mut self) -> Result<Counts> {
        for rule in std::mem::take(&mut self.rules) {
            self.iptables("-D", &rule)?;
        }
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(counts) => Ok(counts?),
                Err(_) => bail!("the impairment's thread panicked"),
            },
            None => Ok(Counts::default()),
        }
    }

    fn iptables(&self, action: &str, rule: &[String]) -> Result<()> {
        let mut command = match self.nsenter.split_first() {
            Some((nsenter, args)) => {
                let mut command = Command::new(nsenter);
                command.args(args).arg("iptables");
                command
            }
            None => Command::new("iptables"),
        };
        let output = command
            .arg("-w")
            .arg(action)
            .args(rule)
            .output()
            .context("running iptables")?;
        if !output.status.success() {
            bail!(
                "iptables {action} {}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Impaired {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}

/// A datagram waiting for its time.
struct Held {
    due: Instant,
    order: u64,
    message: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed: the heap's top is the datagram due first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// The queue's loop: take datagrams as they come, drop or hold each, release the due ones.
fn run(
    queue_num: u16,
    impairment: Impairment,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<Counts> {
    let opened = (|| {
        let mut queue = nfq::Queue::open()?;
        queue.bind(queue_num)?;
        // The verdict is all it gives; the datagrams' bytes need not be copied up.
        queue.set_copy_range(queue_num, 0)?;
        queue.set_nonblocking(true);
        Ok::<_, io::Error>(queue)
    })();
    let mut queue = match opened {
        Ok(queue) => {
            let _ = ready.send(Ok(()));
            queue
        }
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let mut rng = XorShift::seeded();
    let mut held = BinaryHeap::new();
    let mut counts = Counts::default();
    let mut order = 0;
    let jitter = impairment.jitter.as_secs_f64();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    if rng.unit() * 100.0 < impairment.loss_percent {
                        message.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(message)?;
                        counts.dropped += 1;
                        continue;
                    }
                    let spread = (rng.unit() * 2.0 - 1.0) * jitter;
                    let delay = (impairment.delay.as_secs_f64() + spread).max(0.0);
                    order += 1;
                    held.push(Held {
                        due: Instant::now() + Duration::from_secs_f64(delay),
                        order,
                        message,
                    });
                    counts.most_held = counts.most_held.max(held.len());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h: &Held| h.due <= now) {
            if let Some(mut h) = held.pop() {
                h.message.set_verdict(nfq::Verdict::Accept);
                queue.verdict(h.message)?;
                counts.passed += 1;
            }
        }
        // The queue buffers messages inside, so its socket cannot be polled: look again
        // within a millisecond, or when the next datagram is due.
        let wait = held
            .peek()
            .map_or(Duration::from_millis(1), |h: &Held| {
                h.due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(1));
        std::thread::sleep(wait);
    }
    // Whatever is still held goes through rather than vanishing with the queue.
    while let Some(mut h) = held.pop() {
        h.message.set_verdict(nfq::Verdict::Accept);
        queue.verdict(h.message)?;
        counts.passed += 1;
    }
    Ok(counts)
}

/// Good enough randomness for loss and jitter, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        XorShift(nanos | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
