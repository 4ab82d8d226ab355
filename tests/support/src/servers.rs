//! Real servers from Debian that the owner's configuration may name, run by tests inside the
//! simulated home's `internet` namespace and stopped when dropped: pebble (an ACME CA),
//! named (bind9: the owner's DNS zone, taking RFC 2136 updates signed with a TSIG key), and a
//! test PKI made with openssl for their own HTTPS.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::home::{Home, Ns};

/// A root and a leaf for the test servers' own HTTPS (a server certificate must not be a CA).
pub struct TestPki {
    pub root_pem: PathBuf,
    pub leaf_pem: PathBuf,
    pub leaf_key: PathBuf,
}

/// A test root, and a leaf for `ip` signed by it, in `dir`.
pub fn test_pki(dir: &Path, ip: Ipv4Addr) -> Result<TestPki> {
    std::fs::create_dir_all(dir)?;
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=Hearth test root"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            &["-keyout", "root.key", "-out", "root.pem"],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=test server",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        path("leaf.ext"),
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ])?;
    Ok(TestPki {
        root_pem: path("root.pem"),
        leaf_pem: path("leaf.pem"),
        leaf_key: path("leaf.key"),
    })
}

/// Give `internet` one more address, for a server of its own.
pub fn add_internet_address(home: &Home, ip: Ipv4Addr) -> Result<()> {
    let prefix = home.options().wan.1;
    home.run_in(
        Ns::Internet,
        "ip",
        &["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"],
    )?;
    Ok(())
}

/// A child process, killed and waited for when dropped.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(home: &Home, mut command: Command, log: PathBuf) -> Result<Server> {
    let out = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = home.spawn_in(Ns::Internet, &mut command)?;
    Ok(Server { child, log })
}

/// Until `port` on `ip` accepts TCP connections from `internet`.
fn until_listening(home: &Home, addr: SocketAddr, what: &str, server: &Server) -> Result<()> {
    home.ns(Ns::Internet)
        .tcp_connect(addr, Duration::from_secs(10))
        .with_context(|| format!("{what} does not listen on {addr}:\n{}", server.log()))?;
    Ok(())
}

/// bind9's named, primary for one zone, taking updates signed with one TSIG key.
pub struct Named {
    server: Server,
    pub ip: Ipv4Addr,
    pub zone: String,
    pub key_name: String,
    /// The key in base64, as `tsig-keygen` prints it.
    pub key_secret: String,
}

impl Named {
    pub fn start(home: &Home, ip: Ipv4Addr, zone: &str) -> Result<Named> {
        let dir = crate::temp_dir("named");
        let key_name = "hearth-ddns";
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", key_name])
            .output()
            .context("running tsig-keygen (`make deps` installs bind9)")?;
        ensure!(key.status.success(), "tsig-keygen failed");
        let key_text = String::from_utf8(key.stdout)?;
        let key_secret = key_text
            .split("secret \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("tsig-keygen printed no secret")?
            .to_string();
        std::fs::write(dir.join("tsig.key"), &key_text)?;
        std::fs::write(
            dir.join("zone"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. ( 1 60 60 3600 60 )\n\
                 \x20 IN NS ns.{zone}.\nns IN A {ip}\n"
            ),
        )?;
        let d = dir.display();
        std::fs::write(
            dir.join("named.conf"),
            format!(
                "include \"{d}/tsig.key\";\n\
                 options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; \
                 session-keyfile \"{d}/session.key\"; listen-on port 53 {{ {ip}; }}; \
                 listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\n\
                 controls {{ }};\n\
                 zone \"{zone}\" {{ type primary; file \"{d}/zone\"; journal \"{d}/zone.jnl\"; \
                 allow-update {{ key \"{key_name}\"; }}; }};\n"
            ),
        )?;
        add_internet_address(home, ip)?;
        let mut command = Command::new("named");
        command.arg("-g").arg("-c").arg(dir.join("named.conf"));
        let server = spawn_logged(home, command, dir.join("named.log"))?;
        let named = Named {
            server,
            ip,
            zone: zone.to_string(),
            key_name: key_name.to_string(),
            key_secret,
        };
        let started = Instant::now();
        while named.lookup(home, &format!("ns.{zone}"))? != Some(ip) {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("named did not answer:\n{}", named.server.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(named)
    }

    /// The A record of `name` as this server answers it now.
    pub fn lookup(&self, home: &Home, name: &str) -> Result<Option<Ipv4Addr>> {
        let out = home
            .command_in(Ns::Internet, "dig")
            .args(["+short", "+time=1", "+tries=1"])
            .arg(format!("@{}", self.ip))
            .args([name, "A"])
            .output()
            .context("running dig (`make deps` installs bind9-dnsutils)")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().parse().ok()))
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// pebble, the ACME test CA, checking names through a given DNS server.
pub struct Pebble {
    server: Server,
    pub ip: Ipv4Addr,
    /// The root pebble's own HTTPS chains to (for the box's `[acme] directory_root`).
    pub https_root: PathBuf,
    dir: PathBuf,
}

impl Pebble {
    /// `validity`: how long the certificates it issues last. Its checks connect to port 443.
    pub fn start(home: &Home, ip: Ipv4Addr, dns: Ipv4Addr, validity: Duration) -> Result<Pebble> {
        let dir = crate::temp_dir("pebble");
        let pki = test_pki(&dir.join("pki"), ip)?;
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("{ip}:14000"),
            "managementListenAddress": format!("{ip}:15000"),
            "certificate": pki.leaf_pem,
            "privateKey": pki.leaf_key,
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string())?;
        add_internet_address(home, ip)?;
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("{dns}:53")])
            // No random waits, nonce rejections or reused authorizations: each order is
            // checked at once and for real.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let server = spawn_logged(home, command, dir.join("pebble.log"))
            .context("starting pebble (`make deps` installs it)")?;
        let pebble = Pebble {
            server,
            ip,
            https_root: pki.root_pem,
            dir,
        };
        until_listening(
            home,
            SocketAddr::from((ip, 14000)),
            "pebble",
            &pebble.server,
        )?;
        until_listening(
            home,
            SocketAddr::from((ip, 15000)),
            "pebble",
            &pebble.server,
        )?;
        Ok(pebble)
    }

    pub fn directory(&self) -> String {
        format!("https://{}:14000/dir", self.ip)
    }

    /// The root its certificates chain to (made anew at each start), as a PEM file.
    pub fn issuing_root(&self, home: &Home) -> Result<PathBuf> {
        let path = self.dir.join("issuing-root.pem");
        let url = format!("https://{}:15000/roots/0", self.ip);
        let https_root = self.https_root.display().to_string();
        let pem = home.run_in(
            Ns::Internet,
            "curl",
            &["-sSf", "--max-time", "10", "--cacert", &https_root, &url],
        )?;
        ensure!(pem.contains("BEGIN CERTIFICATE"), "pebble's root: {pem}");
        std::fs::write(&path, pem)?;
        Ok(path)
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// An NTP server (RFC 5905, server mode) answering with this machine's time: the home
/// router's, for the box's timesyncd. Counts the requests it answered.
pub struct NtpServer {
    pub answered: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// Seconds from 1900 (NTP's era) to 1970.
const NTP_TO_UNIX: u64 = 2_208_988_800;

fn ntp_timestamp(t: std::time::SystemTime) -> [u8; 8] {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = (since.as_secs() + NTP_TO_UNIX) as u32;
    let fraction = ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&seconds.to_be_bytes());
    out[4..].copy_from_slice(&fraction.to_be_bytes());
    out
}

/// The answer to a client's request: leap 0, the client's version, mode 4 (server), stratum
/// 2, the client's transmit time as origin, now as receive and transmit time.
pub fn ntp_answer(request: &[u8]) -> Option<[u8; 48]> {
    let (version, mode) = ((request.first()? >> 3) & 7, request.first()? & 7);
    if request.len() < 48 || mode != 3 || !(3..=4).contains(&version) {
        return None;
    }
    let now = ntp_timestamp(std::time::SystemTime::now());
    let mut a = [0u8; 48];
    a[0] = (version << 3) | 4;
    a[1] = 2; // stratum: synchronised to a clock upstream
    a[2] = request[2]; // poll, as asked
    a[3] = (-20i8) as u8; // precision: about a microsecond
                          // Root delay and dispersion (16.16 seconds): a millisecond each.
    a[4..8].copy_from_slice(&66u32.to_be_bytes());
    a[8..12].copy_from_slice(&66u32.to_be_bytes());
    a[12..16].copy_from_slice(&[192, 168, 1, 1]);
    a[16..24].copy_from_slice(&now);
    a[24..32].copy_from_slice(&request[40..48]);
    a[32..40].copy_from_slice(&now);
    a[40..48].copy_from_slice(&now);
    Some(a)
}

impl NtpServer {
    /// On UDP port 123 of `ip` in `ns`, for as long as the test process lives (or an hour).
    pub fn start(home: &Home, ns: Ns, ip: Ipv4Addr) -> Result<NtpServer> {
        let socket = home.ns(ns).udp_bind(SocketAddr::from((ip, 123)))?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = answered.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut buf = [0u8; 512];
            while started.elapsed() < Duration::from_secs(3600) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = ntp_answer(&buf[..n]) {
                    if socket.send_to(&answer, from).is_ok() {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(NtpServer { answered })
    }
}

/// dnsmasq as the home router's DHCP server (no DNS): one address, the router as gateway,
/// and (option 42) `ntp` as the NTP server.
pub struct DhcpServer {
    _server: Server,
}

impl DhcpServer {
    pub fn start(home: &Home, address: Ipv4Addr, ntp: Ipv4Addr) -> Result<DhcpServer> {
        let dir = crate::temp_dir("dnsmasq");
        let range = format!("--dhcp-range={address},{address},255.255.255.0,1h");
        let mut command = home.command_in(Ns::Router, "dnsmasq");
        command
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
            ])
            .args([
                "--interface=br-lan",
                "--bind-interfaces",
                "--no-ping",
                "--log-dhcp",
            ])
            .arg(range)
            .arg(format!(
                "--dhcp-option=option:router,{}",
                crate::home::ROUTER_LAN_IP
            ))
            .arg(format!("--dhcp-option=option:ntp-server,{ntp}"))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
        let log = dir.join("dnsmasq.log");
        let out = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .context("starting dnsmasq (`make deps` installs dnsmasq-base)")?;
        Ok(DhcpServer {
            _server: Server { child, log },
        })
    }
}
