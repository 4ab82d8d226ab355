//! `make soak` (`cargo bench --bench soak`): does Hearth stay flat over a long call?
//!
//! The box with its own media (test camera and tone, off-screen TV) and four Chromium phones
//! for `--minutes` (30 by default). All the while, one phone after another:
//! - leaves and joins again (Leave, then "Join again"),
//! - turns its mic and camera off and on,
//! - loses its signalling connection (`hearth simulate signalling-cut`) and comes back by
//!   itself,
//! - is closed like a tab and replaced by a new browser.
//!
//! After each step the call must be whole again (every phone decoding the box and the other
//! three) before the next. Once a minute it prints the daemon's resident memory, open file
//! descriptors, threads and CPU share. The baseline is taken with all four phones in the call
//! after a warm-up, the final figure the same way after the last step; it fails loudly when
//! memory, descriptors or threads grew (more than `RSS_SLACK_KIB` of memory, or any
//! descriptor, or more than `THREAD_SLACK` threads), and says whether memory stayed under
//! the 80 MB goal.
//!
//! Run inside `tests/in-netns` (the Makefile does): all traffic stays on loopback.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_test_support::{temp_dir, BrowserKind, Daemon, Phone};

const PHONES: usize = 4;
/// A small box: test camera and tone at a size two cores keep up with beside four browsers.
const SMALL_BOX: &str = "[board.camera]\nwidth = 320\nheight = 180\nframerate = 15\n[board.display]\nwidth = 640\nheight = 360\n";
/// Before the baseline, steps of every kind on every phone: allocators and caches reach the
/// working size of a call whose phones come and go, not just of a steady one (a first soak
/// measured its baseline on the steady call and saw 25 MB come with the first dozen steps,
/// then nothing more for half an hour).
const WARM_UP_STEPS: usize = 24;
/// Before each of the two measurements, with the whole call up.
const SETTLE: Duration = Duration::from_secs(20);
/// Memory may vary by this much between two measurements of the same call.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// Worker threads that come and go with the load (GStreamer's pool for encoder calls,
/// tokio's blocking pool): a leak shows as more than this over a long run.
const THREAD_SLACK: u64 = 2;
const RSS_GOAL_KIB: u64 = 80 * 1024;
/// Each step must leave the call whole within this.
const STEP_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    /// The part of RSS that is the process's own (heap, stacks), not mapped files such as
    /// the GStreamer plugins' libraries.
    anon_kib: u64,
    fds: u64,
    threads: u64,
    /// User + system CPU time so far.
    cpu: Duration,
    at: Instant,
}

fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, in USER_HZ (100 on x86-64 and arm64).
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Sample {
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
        fds,
        threads: field("Threads:")?,
        cpu: Duration::from_millis(ticks * 10),
        at: Instant::now(),
    })
}

fn line(label: &str, s: &Sample, since: Option<&Sample>) -> String {
    let cpu = since.map_or(String::new(), |b| {
        let wall = s.at.duration_since(b.at).as_secs_f64();
        let used = s.cpu.saturating_sub(b.cpu).as_secs_f64();
        format!(", CPU {:.0} % of one core", 100.0 * used / wall.max(0.001))
    });
    format!(
        "{label}: RSS {:.1} MB ({:.1} MB anonymous), {} fds, {} threads{cpu}",
        s.rss_kib as f64 / 1024.0,
        s.anon_kib as f64 / 1024.0,
        s.fds,
        s.threads
    )
}

/// Everyone decodes the box and the other phones.
fn whole(others: usize) -> String {
    format!(
        "hearth.state === 'in-call' && m.frames('p0') > 0 && m.video >= {}",
        others + 1
    )
}

struct Call {
    daemon: Daemon,
    phones: Vec<Phone>,
    names: Vec<String>,
    next_name: usize,
}

impl Call {
    async fn new_phone(&mut self) -> Result<(Phone, String)> {
        let name = format!("S{}", self.next_name);
        self.next_name += 1;
        let phone = Phone::join(BrowserKind::Chromium, &self.daemon.join_url, &name).await?;
        Ok((phone, name))
    }

    async fn wait_whole(&mut self) -> Result<()> {
        for phone in &mut self.phones {
            if let Err(e) = phone.wait_for(&whole(PHONES - 1), STEP_LIMIT).await {
                // What the box wrote to each phone, per track: a stalled subscription shows
                // as a count that stopped while its publisher's kept growing.
                let (_, status, _) = self.daemon.cli(&["status"]);
                return Err(e.context(format!("hearth status: {status}")));
            }
        }
        Ok(())
    }

    /// One step of the soak on phone `number % PHONES`; every phone gets every kind of step
    /// in turn.
    async fn step(&mut self, number: usize) -> Result<&'static str> {
        let i = number % PHONES;
        let what = match (number + number / PHONES) % 4 {
            0 => {
                let phone = &mut self.phones[i];
                phone.click("leave").await?;
                phone
                    .wait_for("hearth.state === 'left'", STEP_LIMIT)
                    .await?;
                phone.click("again").await?;
                "left and joined again"
            }
            1 => {
                let phone = &mut self.phones[i];
                for button in ["mic", "camera", "mic", "camera"] {
                    phone.click(button).await?;
                }
                "muted and unmuted"
            }
            2 => {
                let id = self.daemon.participant_id(&self.names[i])?;
                let joins = self.phones[i].eval("hearth.joins").await?;
                let (ok, _, err) = self.daemon.cli(&["simulate", "signalling-cut", &id]);
                if !ok {
                    bail!("signalling-cut {id}: {err}");
                }
                let back = format!("hearth.joins > {joins}");
                self.phones[i].wait_for(&back, STEP_LIMIT).await?;
                "lost its connection and came back"
            }
            _ => {
                let (phone, name) = self.new_phone().await?;
                let old = std::mem::replace(&mut self.phones[i], phone);
                self.names[i] = name;
                old.close().await?;
                "closed and replaced by a new phone"
            }
        };
        self.wait_whole().await?;
        Ok(what)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let minutes: u64 = args
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let daemon = Daemon::start_with(&temp_dir("soak"), SMALL_BOX)?;
    let pid = daemon.pid();
    let mut call = Call {
        daemon,
        phones: Vec::new(),
        names: Vec::new(),
        next_name: 0,
    };
    for _ in 0..PHONES {
        let (phone, name) = call.new_phone().await?;
        call.phones.push(phone);
        call.names.push(name);
    }
    call.wait_whole().await?;
    println!("Soak: the box and {PHONES} phones, {minutes} min of leaving, joining, muting and reconnecting");
    println!("{}", line("at start", &sample(pid)?, None));
    let mut steps = 0;
    while steps < WARM_UP_STEPS {
        call.step(steps)
            .await
            .with_context(|| format!("warm-up step {steps} on phone {}", steps % PHONES))?;
        steps += 1;
    }
    tokio::time::sleep(SETTLE).await;
    let baseline = sample(pid)?;
    println!(
        "{}",
        line(
            &format!("baseline (after {WARM_UP_STEPS} warm-up steps)"),
            &baseline,
            None
        )
    );

    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    // Bounded in count as well as time: a step takes seconds.
    let most_steps = WARM_UP_STEPS + (minutes as usize + 1) * 60;
    let mut last = baseline;
    while Instant::now() < deadline && steps < most_steps {
        let what = call
            .step(steps)
            .await
            .with_context(|| format!("step {steps} on phone {}", steps % PHONES))?;
        steps += 1;
        if last.at.elapsed() >= Duration::from_secs(60) {
            let now = sample(pid)?;
            println!(
                "{} (step {steps}: a phone {what})",
                line("  minute", &now, Some(&last))
            );
            last = now;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let end = sample(pid)?;
    println!("{}", line("at end (the same call)", &end, Some(&baseline)));
    println!("{} steps after the warm-up", steps - WARM_UP_STEPS);

    let mut grew = Vec::new();
    if end.rss_kib > baseline.rss_kib + RSS_SLACK_KIB {
        grew.push(format!(
            "memory grew by {:.1} MB",
            (end.rss_kib - baseline.rss_kib) as f64 / 1024.0
        ));
    }
    if end.fds > baseline.fds {
        grew.push(format!("{} more file descriptors", end.fds - baseline.fds));
    }
    if end.threads > baseline.threads + THREAD_SLACK {
        grew.push(format!("{} more threads", end.threads - baseline.threads));
    }
    let goal = if end.rss_kib < RSS_GOAL_KIB {
        "under"
    } else {
        "OVER"
    };
    println!("memory {goal} the 80 MB goal");
    for phone in call.phones {
        phone.close().await?;
    }
    if !grew.is_empty() {
        bail!("NOT FLAT: {}", grew.join(", "));
    }
    println!("flat: no growth in memory, descriptors or threads");
    Ok(())
}
