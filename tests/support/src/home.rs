//! A simulated home network, built by each test for itself (see tests/netsim/home.sh for the
//! topology, the router's ruleset and miniupnpd's configuration):
//!
//! ```text
//!  Ns::Home      the box         192.168.1.2 ─┐ br-lan 192.168.1.1
//!  Ns::Wifi      a phone at home 192.168.1.3 ─┤ Ns::Router: NAT (nftables masquerade, hairpin),
//!                                             │   miniupnpd (UPnP-IGD, NAT-PMP, PCP) on the LAN
//!  Ns::Internet  a phone outside 203.0.114.50 ── wan 203.0.114.1
//! ```
//!
//! Nothing leaves the namespaces, and everything goes away when the `Home` is dropped (also
//! when the test panics): the processes inside are killed and the namespaces, held only by
//! file descriptors of the test process, vanish with their links. See `netns.rs` for how.
//!
//! ```ignore
//! let mut home = Home::build(HomeOptions::default())?;           // miniupnpd running
//! let phone = home.ns(Ns::Internet).tcp_connect(addr, secs(5))?;  // a socket in `internet`
//! let out = home.run_in(Ns::Router, "nft", &["list", "ruleset"])?;
//! let daemon = Daemon::start_wrapped(&dir, "dev", "", &home.ns(Ns::Home).nsenter_prefix(), &["--lan"])?;
//! home.miniupnpd_restart()?;                                       // mappings forgotten
//! ```
//!
//! The WAN side defaults to 203.0.114.0/24 rather than a documentation range: miniupnpd
//! refuses to map ports when its external address is private or reserved, and it counts
//! RFC 5737's 192.0.2/24, 198.51.100/24 and 203.0.113/24 as reserved. (That refusal is what
//! `HomeOptions::carrier_grade_nat` shows.) These addresses exist only inside the namespaces.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::netns::Netns;

/// The script that knows the topology; used from any test binary of this package.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../netsim/home.sh");

pub const ROUTER_LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const BOX_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
pub const WIFI_PHONE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
/// NAT-PMP and PCP (RFC 6886, RFC 6887) on the router's LAN address.
pub const NATPMP_PORT: u16 = 5351;

/// The namespaces of a `Home`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    /// The box: 192.168.1.2 on `eth0`, default route via the router.
    Home,
    /// A phone on the home Wi-Fi: 192.168.1.3 on `eth0`, on the same bridge as the box.
    Wifi,
    /// The router: `br-lan` 192.168.1.1/24, `wan` with the WAN address.
    Router,
    /// A phone elsewhere: on the router's WAN subnet, default route via the router.
    Internet,
}

/// The router's miniupnpd settings (written to its miniupnpd.conf for each start).
#[derive(Clone, Debug)]
pub struct UpnpOptions {
    /// NAT-PMP and PCP (one switch in miniupnpd: `enable_natpmp`).
    pub natpmp: bool,
    /// UPnP-IGD: SSDP on 239.255.255.250:1900, descriptions and SOAP on `http_port`.
    pub upnp: bool,
    pub http_port: u16,
    /// PCP grants lifetimes clamped to [min_lifetime, max_lifetime] (seconds). miniupnpd
    /// 2.3.1 grants NAT-PMP and UPnP requests the lifetime asked for, whatever these say.
    pub min_lifetime: u32,
    pub max_lifetime: u32,
    /// Seconds between SSDP NOTIFY announcements.
    pub notify_interval: u32,
    /// Keep mappings in a lease file, so a restarted miniupnpd restores them. Off: a restart
    /// forgets every mapping, as most home routers' reboots do.
    pub lease_file: bool,
    /// Clients may map only to their own address.
    pub secure_mode: bool,
    /// Describe the router as an IGDv1 (WANIPConnection:1); by default miniupnpd 2.3.1 is an
    /// IGDv2 (WANIPConnection:2), which some clients do not look for.
    pub igd_v1: bool,
    /// Permission rules, in order: `allow|deny EXT-PORTS IP/MASK INT-PORTS`. The default is
    /// OpenWrt's: external ports 1024-65535 only, so a request for external port 443 is given
    /// another port (NAT-PMP) or refused (UPnP).
    pub rules: Vec<String>,
}

impl Default for UpnpOptions {
    fn default() -> Self {
        UpnpOptions {
            natpmp: true,
            upnp: true,
            http_port: 5000,
            min_lifetime: 120,
            max_lifetime: 86400,
            notify_interval: 30,
            lease_file: false,
            secure_mode: true,
            igd_v1: false,
            rules: vec![
                "allow 1024-65535 192.168.1.0/24 1024-65535".into(),
                "deny 0-65535 0.0.0.0/0 0-65535".into(),
            ],
        }
    }
}

#[derive(Clone, Debug)]
pub struct HomeOptions {
    /// The router's WAN address and prefix length.
    pub wan: (Ipv4Addr, u8),
    /// The internet phone's address, in the WAN subnet.
    pub internet: Ipv4Addr,
    /// NAT loopback: the LAN reaching the WAN address gets the port mappings too.
    pub hairpin: bool,
    /// Start miniupnpd with these settings while building; None: no port mapping service
    /// until `miniupnpd_start`.
    pub miniupnpd: Option<UpnpOptions>,
}

impl Default for HomeOptions {
    fn default() -> Self {
        HomeOptions {
            wan: (Ipv4Addr::new(203, 0, 114, 1), 24),
            internet: Ipv4Addr::new(203, 0, 114, 50),
            hairpin: true,
            miniupnpd: Some(UpnpOptions::default()),
        }
    }
}

impl HomeOptions {
    /// The router's WAN address is itself behind the provider's NAT (RFC 6598 shared
    /// address space): no mapping on the home router can make the box reachable.
    pub fn carrier_grade_nat() -> Self {
        HomeOptions {
            wan: (Ipv4Addr::new(100, 64, 0, 2), 24),
            internet: Ipv4Addr::new(100, 64, 0, 1),
            ..HomeOptions::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A port mapping as it stands in the router's ruleset (what miniupnpd put there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub proto: Proto,
    pub external_port: u16,
    pub internal: SocketAddrV4,
}

/// A process of the router's (miniupnpd, the hairpin keeper) with the tail of its output.
struct RouterProcess {
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl RouterProcess {
    /// Start `cmd` (already set to run in the router) in a process group of its own, and wait
    /// up to 10 s for every line in `ready` to appear in its output.
    fn start(name: &'static str, mut cmd: Command, ready: &[&str]) -> Result<RouterProcess> {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    if log.len() == 400 {
                        log.pop_front();
                    }
                    log.push_back(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let mut proc = RouterProcess { child, log };
        let mut waiting: Vec<&str> = ready.to_vec();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => waiting.retain(|w| !line.contains(w)),
                Err(_) => {
                    let status = proc.child.try_wait().ok().flatten();
                    proc.stop();
                    bail!(
                        "{name} ({}) did not print {waiting:?} within 10 s; output:\n{}",
                        status.map_or("running".to_string(), |s| s.to_string()),
                        proc.log()
                    );
                }
            }
        }
        Ok(proc)
    }

    fn log(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().map(|l| format!("  | {l}\n")).collect()
    }

    /// SIGTERM to the group, SIGKILL after 5 s.
    fn stop(&mut self) {
        let group = self.child.id() as i32;
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

pub struct Home {
    home: Netns,
    wifi: Netns,
    router: Netns,
    internet: Netns,
    dir: PathBuf,
    options: HomeOptions,
    /// The settings of the last miniupnpd start, for restarts.
    upnp: Option<UpnpOptions>,
    miniupnpd: Option<RouterProcess>,
    hairpin: Option<RouterProcess>,
}

impl Home {
    pub fn build(options: HomeOptions) -> Result<Home> {
        for (tool, package) in [
            ("nsenter", "util-linux"),
            ("ip", "iproute2"),
            ("nft", "nftables"),
        ] {
            if find_tool(tool).is_none() {
                bail!("`{tool}` is missing: `make deps` installs {package}");
            }
        }
        let namespaces = [
            Netns::new("home")?,
            Netns::new("wifi")?,
            Netns::new("router")?,
            Netns::new("internet")?,
        ];
        let [home, wifi, router, internet] = namespaces;
        let mut home = Home {
            home,
            wifi,
            router,
            internet,
            dir: super::daemon::temp_dir("home"),
            options: options.clone(),
            upnp: None,
            miniupnpd: None,
            hairpin: None,
        };
        let wire = home
            .script("wire")
            .output()
            .context("running home.sh wire")?;
        check(&wire, "tests/netsim/home.sh wire")?;
        if let Some(upnp) = options.miniupnpd {
            home.miniupnpd_start(upnp)?;
        }
        Ok(home)
    }

    /// Hearth in `home` on the dev board, serving the LAN (`--lan`), with `config` (for
    /// example `[remote] port_mapping = "on"`, as the Pi boards have it).
    pub fn start_box(&self, label: &str, config: &str) -> Result<crate::Daemon> {
        crate::Daemon::start_wrapped(
            &crate::temp_dir(label),
            "dev",
            config,
            &self.ns(Ns::Home).nsenter_prefix(),
            &["--lan"],
        )
    }

    pub fn ns(&self, ns: Ns) -> &Netns {
        match ns {
            Ns::Home => &self.home,
            Ns::Wifi => &self.wifi,
            Ns::Router => &self.router,
            Ns::Internet => &self.internet,
        }
    }

    pub fn options(&self) -> &HomeOptions {
        &self.options
    }

    /// The provider gives the router another WAN address (as after a reconnect): `wan` gets
    /// `new` and loses the old one, and `internet` routes through the new one. (The hairpin
    /// rule still names the old address: loop-back from the LAN ends with this.)
    pub fn change_wan_address(&mut self, new: Ipv4Addr) -> Result<()> {
        let (old, prefix) = self.options.wan;
        let cidr = |ip: Ipv4Addr| format!("{ip}/{prefix}");
        // Old first: deleting a primary address takes its secondaries with it.
        self.run_in(Ns::Router, "ip", &["addr", "del", &cidr(old), "dev", "wan"])?;
        self.run_in(Ns::Router, "ip", &["addr", "add", &cidr(new), "dev", "wan"])?;
        self.run_in(
            Ns::Internet,
            "ip",
            &["route", "replace", "default", "via", &new.to_string()],
        )?;
        self.options.wan.0 = new;
        Ok(())
    }

    pub fn wan_ip(&self) -> Ipv4Addr {
        self.options.wan.0
    }

    pub fn internet_ip(&self) -> Ipv4Addr {
        self.options.internet
    }

    /// A scratch directory removed with the home (miniupnpd's config, pid and lease files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `Command` for `program` that runs in `ns` (found on PATH, or in /usr/sbin or /sbin,
    /// where `nft` and `ip` live and which an ordinary user's PATH may lack).
    pub fn command_in(&self, ns: Ns, program: &str) -> Command {
        self.ns(ns)
            .command(find_tool(program).unwrap_or_else(|| program.into()))
    }

    /// Run `program args` in `ns` to completion: its stdout, or an error with its stderr.
    pub fn run_in(&self, ns: Ns, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command_in(ns, program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {ns:?}"))?;
        check(&out, &format!("{program} {} (in {ns:?})", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Spawn `cmd` in `ns`. The caller owns the child; whatever still runs in the namespace
    /// when the `Home` is dropped is killed.
    pub fn spawn_in(&self, ns: Ns, cmd: &mut Command) -> Result<Child> {
        self.ns(ns)
            .enter(cmd)
            .spawn()
            .with_context(|| format!("starting {:?} in {ns:?}", cmd.get_program()))
    }

    /// Start the router's port mapping service (and, with `hairpin`, the keeper of its rules'
    /// hairpin copy). Returns once miniupnpd listens.
    pub fn miniupnpd_start(&mut self, upnp: UpnpOptions) -> Result<()> {
        if self.miniupnpd.is_some() {
            bail!("miniupnpd is already running");
        }
        let Some(miniupnpd) = find_tool("miniupnpd") else {
            bail!("miniupnpd is missing: `make deps` installs miniupnpd-nftables");
        };
        if self.options.hairpin && self.hairpin.is_none() {
            let mut cmd = self.router.command("sh");
            cmd.args([SCRIPT, "hairpin"]).arg(&self.dir);
            self.hairpin = Some(RouterProcess::start("hairpin keeper", cmd, &["ready"])?);
        }
        let conf = self.dir.join("miniupnpd.conf");
        let mut script = self.script("miniupnpd-conf");
        script.arg(&self.dir);
        let yes = |b: bool| if b { "yes" } else { "no" };
        script
            .env("UPNP_NATPMP", yes(upnp.natpmp))
            .env("UPNP_UPNP", yes(upnp.upnp))
            .env("UPNP_HTTP_PORT", upnp.http_port.to_string())
            .env("UPNP_MIN_LIFETIME", upnp.min_lifetime.to_string())
            .env("UPNP_MAX_LIFETIME", upnp.max_lifetime.to_string())
            .env("UPNP_NOTIFY_INTERVAL", upnp.notify_interval.to_string())
            .env("UPNP_SECURE", yes(upnp.secure_mode))
            .env("UPNP_IGD_V1", yes(upnp.igd_v1))
            .env("UPNP_RULES", upnp.rules.join(";"))
            .env(
                "UPNP_LEASE_FILE",
                if upnp.lease_file {
                    self.dir.join("upnp.leases").into_os_string()
                } else {
                    "".into()
                },
            );
        let out = script.output().context("running home.sh miniupnpd-conf")?;
        check(&out, "tests/netsim/home.sh miniupnpd-conf")?;
        std::fs::write(&conf, &out.stdout)?;

        let mut cmd = self.router.command(miniupnpd);
        // -d: in the foreground, logging to stderr. -P: not /var/run/miniupnpd.pid.
        cmd.arg("-d").arg("-f").arg(&conf).arg("-P");
        cmd.arg(self.dir.join("miniupnpd.pid"));
        let mut ready = Vec::new();
        if upnp.upnp {
            ready.push("HTTP listening on port");
        }
        if upnp.natpmp {
            ready.push("Listening for NAT-PMP/PCP traffic on port");
        }
        self.miniupnpd = Some(RouterProcess::start("miniupnpd", cmd, &ready)?);
        self.upnp = Some(upnp);
        Ok(())
    }

    /// Stop miniupnpd and empty its chains, as a router reboot does (miniupnpd itself leaves
    /// its rules in place when it stops: the ports would stay open with nobody keeping them).
    pub fn miniupnpd_stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.miniupnpd.take() {
            proc.stop();
        }
        let out = self.script("miniupnpd-flush").output()?;
        check(&out, "tests/netsim/home.sh miniupnpd-flush")
    }

    /// Stop, then start with the same settings: every mapping is forgotten unless
    /// `lease_file` is on, and the NAT-PMP/PCP epoch starts again from 0.
    pub fn miniupnpd_restart(&mut self) -> Result<()> {
        let upnp = self
            .upnp
            .clone()
            .ok_or_else(|| anyhow!("miniupnpd was never started"))?;
        self.miniupnpd_stop()?;
        self.miniupnpd_start(upnp)
    }

    pub fn miniupnpd_running(&mut self) -> bool {
        self.miniupnpd
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// The last lines miniupnpd logged (it logs every request at debug level).
    pub fn miniupnpd_log(&self) -> String {
        self.miniupnpd.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// The port mappings in the router's ruleset right now.
    pub fn mappings(&self) -> Result<Vec<Mapping>> {
        let chain = self.run_in(
            Ns::Router,
            "nft",
            &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
        )?;
        Ok(chain.lines().filter_map(parse_mapping).collect())
    }

    /// Poll the router's ruleset every 50 ms until `check` holds, for at most `within`
    /// (mappings change inside miniupnpd, which tells nobody). With hairpin on, it also waits
    /// until the hairpin copy matches, so that the mappings work from the LAN as well.
    ///
    /// Wait for this before a LAN test uses the WAN address: a datagram or SYN sent there
    /// before the hairpin copy exists makes a conntrack entry without NAT, and UDP packets of
    /// the same 5-tuple keep following that entry (not the new mapping) until it has been
    /// idle for 30 s. Real routers do the same to the internet side of a fresh mapping.
    pub fn mappings_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Mapping]) -> bool,
    ) -> Result<Vec<Mapping>> {
        let deadline = Instant::now() + within;
        loop {
            let mappings = self.mappings()?;
            if check(&mappings) && (!self.options.hairpin || self.hairpin_copy()? == mappings) {
                return Ok(mappings);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {within:?}; mappings: {mappings:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The mappings as copied for hairpin NAT (tests/netsim/home.sh hairpin).
    fn hairpin_copy(&self) -> Result<Vec<Mapping>> {
        let chain = self.run_in(
            Ns::Router,
            "nft",
            &["list", "chain", "inet", "filter", "hairpin"],
        )?;
        Ok(chain.lines().filter_map(parse_mapping).collect())
    }

    /// The router's whole ruleset, for error messages.
    pub fn ruleset(&self) -> String {
        self.run_in(Ns::Router, "nft", &["list", "ruleset"])
            .unwrap_or_else(|e| e.to_string())
    }

    fn script(&self, verb: &str) -> Command {
        let (wan, prefix) = self.options.wan;
        let mut cmd = Command::new("sh");
        cmd.arg(SCRIPT)
            .arg(verb)
            .env("NS_HOME", self.home.path())
            .env("NS_WIFI", self.wifi.path())
            .env("NS_ROUTER", self.router.path())
            .env("NS_INTERNET", self.internet.path())
            .env("WAN_CIDR", format!("{wan}/{prefix}"))
            .env("INTERNET_IP", self.options.internet.to_string());
        cmd
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        self.miniupnpd.take();
        self.hairpin.take();
        for ns in [&self.home, &self.wifi, &self.router, &self.internet] {
            ns.kill_all();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `iif "wan" @nh,72,8 0x11 th dport 40000 dnat ip to 192.168.1.2:40000` (miniupnpd's), or
/// `udp dport 40000 dnat ip to 192.168.1.2:40000` (the hairpin copy).
fn parse_mapping(line: &str) -> Option<Mapping> {
    let line = line.trim();
    let proto = if line.contains("@nh,72,8 0x11 ") || line.contains("udp dport ") {
        Proto::Udp
    } else if line.contains("@nh,72,8 0x6 ") || line.contains("tcp dport ") {
        Proto::Tcp
    } else {
        return None;
    };
    let after = |key: &str| {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()
    };
    Some(Mapping {
        proto,
        external_port: after("dport ")?.parse().ok()?,
        internal: after("dnat ip to ")?.parse().ok()?,
    })
}

/// `tool` on PATH, or in /usr/sbin or /sbin.
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A NAT-PMP reply (RFC 6886): result code 0 is success; `epoch` is the router's seconds
/// since its mapping table was (re)started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPmpReply {
    pub result: u16,
    pub epoch: u32,
    /// Opcode 0: the external address. Mappings: unspecified.
    pub external_ip: Ipv4Addr,
    pub internal_port: u16,
    pub external_port: u16,
    pub lifetime: u32,
}

impl Home {
    /// NAT-PMP public address request (opcode 0) from `from` to the router.
    pub fn natpmp_external_address(&self, from: Ns) -> Result<NatPmpReply> {
        let reply = self.natpmp(from, &[0, 0], 12)?;
        Ok(NatPmpReply {
            result: u16::from_be_bytes([reply[2], reply[3]]),
            epoch: u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            external_ip: Ipv4Addr::new(reply[8], reply[9], reply[10], reply[11]),
            internal_port: 0,
            external_port: 0,
            lifetime: 0,
        })
    }

    /// NAT-PMP mapping request (opcode 1 UDP, 2 TCP) from `from`: with secure_mode the
    /// mapping goes to the sender's own address. Lifetime 0 deletes the mapping.
    pub fn natpmp_map(
        &self,
        from: Ns,
        proto: Proto,
        internal_port: u16,
        external_port: u16,
        lifetime: u32,
    ) -> Result<NatPmpReply> {
        let opcode = match proto {
            Proto::Udp => 1,
            Proto::Tcp => 2,
        };
        let mut request = vec![0, opcode, 0, 0];
        request.extend_from_slice(&internal_port.to_be_bytes());
        request.extend_from_slice(&external_port.to_be_bytes());
        request.extend_from_slice(&lifetime.to_be_bytes());
        let reply = self.natpmp(from, &request, 16)?;
        Ok(NatPmpReply {
            result: u16::from_be_bytes([reply[2], reply[3]]),
            epoch: u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            external_ip: Ipv4Addr::UNSPECIFIED,
            internal_port: u16::from_be_bytes([reply[8], reply[9]]),
            external_port: u16::from_be_bytes([reply[10], reply[11]]),
            lifetime: u32::from_be_bytes(reply[12..16].try_into().unwrap()),
        })
    }

    /// One NAT-PMP request and its reply: retransmitted after 250, 500, 1000 ms as RFC 6886
    /// says, then given up.
    fn natpmp(&self, from: Ns, request: &[u8], len: usize) -> Result<Vec<u8>> {
        let socket = self.ns(from).udp_bind((Ipv4Addr::UNSPECIFIED, 0).into())?;
        socket.connect((ROUTER_LAN_IP, NATPMP_PORT))?;
        let mut wait = Duration::from_millis(250);
        for _ in 0..4 {
            socket.send(request)?;
            socket.set_read_timeout(Some(wait))?;
            let mut buf = [0u8; 64];
            match socket.recv(&mut buf) {
                Ok(n) if n >= len && buf[1] == request[1] | 0x80 => return Ok(buf[..n].to_vec()),
                Ok(n) => bail!("NAT-PMP: unexpected reply {:02x?}", &buf[..n]),
                Err(_) => wait *= 2,
            }
        }
        bail!(
            "NAT-PMP: no reply from {ROUTER_LAN_IP}:{NATPMP_PORT} to {from:?}'s request; miniupnpd:\n{}",
            self.miniupnpd_log()
        )
    }
}
