//! Network namespaces made by the tests themselves, with no global state: no `ip netns add`,
//! no /run/netns entries, no holder processes. A namespace is created by `unshare(2)` on a
//! short-lived thread and held only by an open file descriptor in the test process; it goes
//! away (with its veths, bridges and ruleset) when that descriptor is closed and the last
//! process in it has exited, so even a test process killed with SIGKILL leaves nothing behind
//! but processes it started inside (which [`Netns::kill_all`] ends on drop).
//!
//! Entering one:
//! - a child process: [`Netns::enter`] sets up a `Command` to `setns(2)` before it execs, or
//!   [`Netns::nsenter_prefix`] gives `nsenter --net=/proc/PID/fd/N --` for code that only
//!   takes a command line;
//! - a socket: [`Netns::run`] runs a closure on a thread inside the namespace. A socket keeps
//!   the namespace it was made in, so a stream connected there can be handed to tokio and
//!   used from anywhere (see [`Netns::tcp_connect`]).
//!
//! Creating a namespace needs CAP_SYS_ADMIN over the current one: root, or inside
//! `tests/in-netns`, which as an ordinary user first makes a user namespace that maps the
//! user to root. Outside both, [`Netns::new`] fails with EPERM and says so.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// One network namespace, alive while this value (or a `Command` prepared by `enter`, or a
/// process inside it) is.
pub struct Netns {
    name: String,
    fd: Arc<OwnedFd>,
    inode: u64,
}

impl Netns {
    /// A new network namespace with only `lo` (down).
    pub fn new(name: &str) -> Result<Netns> {
        let made = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(|| -> io::Result<File> {
                // unshare(CLONE_NEWNET) moves only this thread, which then ends.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                File::open("/proc/thread-self/ns/net")
            })?
            .join()
            .map_err(|_| anyhow!("the thread making namespace {name} panicked"))?;
        let file = match made {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => bail!(
                "cannot make network namespace {name}: {e}. Run as root, or inside \
                 tests/in-netns (which makes a user namespace for an ordinary user)"
            ),
            Err(e) => return Err(e).with_context(|| format!("making network namespace {name}")),
        };
        let inode = file.metadata()?.ino();
        Ok(Netns {
            name: name.to_string(),
            fd: Arc::new(file.into()),
            inode,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A path naming this namespace for `nsenter --net=` and `ip link ... netns`, valid while
    /// this value lives (the test process's own descriptor, seen through /proc).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// `nsenter --net=PATH --`: put it before a command line to run that command in here. The
    /// command replaces nsenter (same process id), so signals reach it directly.
    pub fn nsenter_prefix(&self) -> Vec<OsString> {
        let mut net = OsString::from("--net=");
        net.push(self.path());
        vec!["nsenter".into(), net, "--".into()]
    }

    /// Make `cmd` start inside this namespace (it `setns`es between fork and exec). The
    /// command holds the namespace open until it is dropped.
    pub fn enter<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let fd = self.fd.clone();
        // SAFETY: only setns(2), which is async-signal-safe, runs in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }

    /// Something that moves the thread calling it into this namespace, for a thread of its
    /// own that lives on (sockets it makes there stay there).
    pub fn entry(&self) -> impl FnOnce() -> io::Result<()> + Send + 'static {
        let fd = self.fd.clone();
        move || {
            // SAFETY: setns(2) on a descriptor this closure keeps open.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// A `Command` for `program` that starts inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.enter(&mut cmd);
        cmd
    }

    /// Run `f` on a thread that is inside this namespace. Sockets it makes belong here for
    /// good, whichever thread uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked inside a namespace")))
        })
    }

    /// A TCP connection made from inside this namespace, retried until `within` has passed
    /// while the peer refuses (not yet listening) or is unreachable.
    pub fn tcp_connect(&self, addr: SocketAddr, within: Duration) -> Result<TcpStream> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt =
                self.run(|| TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(10))));
            match attempt {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!("connecting to {addr} from {} within {within:?}", self.name)
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// `tcp_connect`, as a tokio stream (needs a running tokio runtime).
    pub fn tokio_tcp_connect(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> Result<tokio::net::TcpStream> {
        let stream = self.tcp_connect(addr, within)?;
        stream.set_nonblocking(true)?;
        Ok(tokio::net::TcpStream::from_std(stream)?)
    }

    /// A UDP socket bound inside this namespace.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.run(|| UdpSocket::bind(addr))
            .with_context(|| format!("binding UDP {addr} in {}", self.name))
    }

    /// A TCP listener inside this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<std::net::TcpListener> {
        self.run(|| std::net::TcpListener::bind(addr))
            .with_context(|| format!("listening on TCP {addr} in {}", self.name))
    }

    /// The processes whose network namespace this is (the test process itself never is: it
    /// enters namespaces only on threads of its own).
    pub fn pids(&self) -> Vec<i32> {
        let want = format!("net:[{}]", self.inode);
        let me = std::process::id() as i32;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|link| link.as_os_str() == want.as_str())
            })
            .collect()
    }

    /// SIGKILL every process still inside, and wait (up to 5 s) until they are gone.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // Killed processes linger as zombies until their parent reaps them; a zombie has
            // no namespaces any more, so it drops out of `pids`.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({} net:[{}])", self.name, self.inode)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
    }
}
