//! Start the real `hearth` binary on loopback with its own state dir and free ports, for
//! tests and benchmarks. Stopped with SIGTERM on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// In the state dir: the daemon's log as the test saw it.
const LOG_FILE: &str = "test-hearth.log";

pub struct Daemon {
    child: Child,
    /// How it was started, for `restart`.
    launch: Launch,
    pub state_dir: PathBuf,
    pub https_port: u16,
    pub udp_port: u16,
    /// The join URL the daemon printed at start.
    pub join_url: String,
}

/// The `hearth` binary under test: the one Cargo built for the running test or bench. Cargo
/// puts those in `target/<profile>/deps/` and the binary in `target/<profile>/`, and builds the
/// binary whenever it builds the hearth package's integration tests or benches.
/// (`env!("CARGO_BIN_EXE_hearth")` says the same, but only inside the hearth package itself,
/// not in this crate; `tests/cli.rs` checks that the two agree.)
pub fn hearth_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's own path");
    let profile_dir = exe
        .parent()
        .filter(|deps| deps.ends_with("deps"))
        .and_then(Path::parent);
    let bin = profile_dir.map(|dir| dir.join(format!("hearth{}", std::env::consts::EXE_SUFFIX)));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "no hearth binary next to {}: run the tests and the benchmark with `cargo test` and \
             `cargo bench` in the hearth package",
            exe.display()
        ),
    }
}

/// A unique empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hearth-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

impl Daemon {
    /// The phones-only SFU: the box's own media off.
    pub fn start(label: &str) -> Result<Daemon> {
        Self::start_with(&temp_dir(label), "[box]\nmedia = false\n")
    }

    /// The box in its own call: test camera and tone, off-screen display, counted speaker.
    pub fn start_with_box(label: &str) -> Result<Daemon> {
        Self::start_with(&temp_dir(label), "")
    }

    /// Start with `state_dir` (which may already hold invites).
    pub fn start_in(state_dir: &Path) -> Result<Daemon> {
        Self::start_with(state_dir, "[box]\nmedia = false\n")
    }

    /// Start with `state_dir` and extra config text (appended after the ports).
    pub fn start_with(state_dir: &Path, extra_config: &str) -> Result<Daemon> {
        Self::start_on_board(state_dir, "dev", extra_config)
    }

    /// Start a board profile other than dev (its hardware overridden in `extra_config`).
    pub fn start_on_board(state_dir: &Path, board: &str, extra_config: &str) -> Result<Daemon> {
        Self::start_wrapped(state_dir, board, extra_config, &[], &[])
    }

    /// Start with `prefix` before the command line (e.g. `Netns::nsenter_prefix()`, so the
    /// daemon runs in that network namespace; the prefix must exec the daemon, keeping its
    /// process id) and `run_args` after `hearth run` (e.g. `--lan`). The CLI still works from
    /// anywhere: it talks over the state dir's Unix socket.
    pub fn start_wrapped(
        state_dir: &Path,
        board: &str,
        extra_config: &str,
        prefix: &[std::ffi::OsString],
        run_args: &[&str],
    ) -> Result<Daemon> {
        let https_port = free_tcp_port();
        let udp_port = free_udp_port();
        let config = state_dir.join("test.toml");
        // Extra settings may have a [web] table of their own: the ports join it.
        let ports = format!("https_port = {https_port}\nhttp_port = 0\n");
        let text = match extra_config.strip_prefix("[web]\n") {
            Some(rest) => format!("[web]\n{ports}{rest}\n[call]\nudp_port = {udp_port}\n"),
            None => format!("[web]\n{ports}[call]\nudp_port = {udp_port}\n{extra_config}"),
        };
        std::fs::write(&config, text)?;
        let launch = Launch {
            board: board.to_string(),
            config,
            prefix: prefix.to_vec(),
            run_args: run_args.iter().map(|a| a.to_string()).collect(),
        };
        let (child, join_url) = spawn(state_dir, &launch)?;
        Ok(Daemon {
            child,
            launch,
            state_dir: state_dir.to_path_buf(),
            https_port,
            udp_port,
            join_url,
        })
    }

    /// Start it again as it was started (same state dir, config and ports), as systemd's
    /// `Restart=always` does after a crash: `kill` it first.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("hearth still runs: kill or stop it before restarting it");
        }
        let (child, join_url) = spawn(&self.state_dir, &self.launch)?;
        self.child = child;
        self.join_url = join_url;
        Ok(())
    }

    /// SIGKILL, as a crash or the OOM killer would, and reap it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join(LOG_FILE)).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop it as systemd does (SIGTERM) and wait up to `within` for it to exit: its exit
    /// status, or an error if it is still running then (it is killed on drop).
    pub fn stop(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("hearth did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait up to `within` for it to exit by itself: its exit status.
    pub fn exited_within(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("hearth still runs after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Run the CLI against this daemon: (exit success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(&self.state_dir, args)
    }

    /// `hearth status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        let (ok, out, err) = self.cli(&["status"]);
        if !ok {
            bail!("hearth status failed: {err}");
        }
        Ok(serde_json::from_str(&out)?)
    }

    /// The id ("p1", ...) of the participant in the call who joined as `name`.
    pub fn participant_id(&self, name: &str) -> Result<String> {
        let status = self.status()?;
        let id = status["participants"]
            .as_array()
            .and_then(|list| list.iter().find(|p| p["name"] == name))
            .and_then(|p| p["id"].as_str());
        match id {
            Some(id) => Ok(id.to_string()),
            None => bail!("nobody called {name} in the call: {status}"),
        }
    }

    /// A fresh join URL from `hearth invite`.
    pub fn invite(&self, name: &str) -> Result<String> {
        let (ok, out, err) = self.cli(&["invite", "--name", name]);
        if !ok {
            bail!("hearth invite failed: {err}");
        }
        Ok(out.trim().to_string())
    }

    /// Poll `hearth status` until `check` holds, for at most 15 s. Only for what nothing
    /// announces: control requests that change something (`hearth privacy`, `hearth
    /// simulate`) are answered once it has happened, so await their reply instead, and what
    /// phones are told shows in their page; but the box's own decoding, for one, tells the
    /// tests nothing.
    pub fn status_until(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        self.status_within(what, Duration::from_secs(15), check)
    }

    /// `status_until` for what takes longer than 15 s (a certificate's renewal).
    pub fn status_within(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let status = self.status()?;
            if check(&status) {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("{what}: not within {within:?}: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ws_url(&self) -> String {
        format!("wss://127.0.0.1:{}/ws", self.https_port)
    }
}

/// How a daemon was started.
struct Launch {
    board: String,
    config: PathBuf,
    prefix: Vec<std::ffi::OsString>,
    run_args: Vec<String>,
}

/// Start `hearth run` and wait for the join link it prints.
fn spawn(state_dir: &Path, launch: &Launch) -> Result<(Child, String)> {
    let mut command = match launch.prefix.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(hearth_bin());
            command
        }
        None => Command::new(hearth_bin()),
    };
    let mut child = command
        .arg("--state-dir")
        .arg(state_dir)
        .args(["run", "--board", &launch.board, "--config"])
        .arg(&launch.config)
        .args(&launch.run_args)
        .env("HEARTH_LOG", "hearth=debug")
        // Tests never open windows on a developer's desktop.
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting hearth")?;
    // Its log goes to the test's stderr as before, and to a file `log()` reads.
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    // Appended to: a restarted daemon's log follows the one before.
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join(LOG_FILE))?;
    std::thread::spawn(move || {
        use std::io::Write;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = writeln!(log_file, "{line}");
        }
    });
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("Join: ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let join_url = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => url,
        Err(_) => {
            let _ = child.kill();
            bail!("hearth printed no join link within 30 s");
        }
    };
    Ok((child, join_url))
}

pub fn cli(state_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(hearth_bin())
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .output()
        .expect("running hearth");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Already stopped (and reaped): its pid may belong to another process by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first, so shutdown runs as in production; SIGKILL if it has not exited in 5 s.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let (exited, exit) = mpsc::channel();
        std::thread::scope(|scope| {
            let child = &mut self.child;
            scope.spawn(move || {
                let _ = child.wait();
                let _ = exited.send(());
            });
            if exit.recv_timeout(Duration::from_secs(5)).is_err() {
                // Not reaped (the waiting thread would have said so): the pid is still its own.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
    }
}
