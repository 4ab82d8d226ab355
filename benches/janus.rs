//! `make bench-janus` (`cargo bench --profile ship --bench janus`): what forwarding costs
//! Hearth's SFU, built as it ships, next to Janus 1.1.2's VideoRoom (Debian's `janus`, which
//! `make bench-janus` installs), on this machine, in one run, alternating.
//!
//! The same headless Chromium at default settings with its fake camera and mic, `PHONES` of
//! them each time, each publishing H.264 (two simulcast encodings, full and half size, as
//! Hearth's page does) and Opus and subscribing to all the others; Hearth
//! with `[box] media = false`. Over `WINDOW`, once everyone decodes everyone:
//! - CPU is the server process's utime + stime;
//! - packets are every subscriber's inbound-rtp `packetsReceived` deltas (audio and video),
//!   from `getStats()` in the pages, so both servers are counted the same way.
//!
//! It prints CPU-ms per 1000 forwarded packets for each run and the ratio Hearth / Janus.
//! `-- --phones N` measures one call size, `-- --runs N` repeats N times, `-- --settle S`
//! waits S seconds (default 8) before the window; `HEARTH_PERF=DIR`
//! profiles Hearth's windows (see `perf_record`).
//! Prints figures; asserts nothing. Run inside `tests/in-netns` (the Makefile does): Janus
//! listens on the namespace's interface and its loopback only.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hearth_test_support::browser::{Browser, BrowserKind};
use hearth_test_support::{temp_dir, Daemon, Phone};

const RUNS: usize = 3;
/// From everyone decoding everyone to the window. Hearth pauses a simulcast encoding no one
/// takes 10 s after it was last taken (dynacast), so the window's first seconds may still
/// hold some of that; `-- --settle 20` measures a call past it (it moved the ratio by about
/// 0.02 here, within run-to-run noise).
const SETTLE: Duration = Duration::from_secs(8);
const WINDOW: Duration = Duration::from_secs(20);
const JANUS_HTTP_PORT: u16 = 18088;
const NO_BOX_MEDIA: &str = "[box]\nmedia = false\n";

/// JS: every inbound RTP packet this page has received, summed over its peer connections,
/// and the width of the last frame decoded on each of its inbound videos (so that each
/// server is seen to forward the full-size encoding).
const INBOUND: &str = r#"(async () => {
  const pcs = window.hearth ? [window.hearth.pc] : (window.bench ? window.bench.pcs : []);
  const inbound = { packets: 0, widths: [] };
  for (const pc of pcs) {
    if (!pc) continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      inbound.packets += s.packetsReceived || 0;
      if (s.kind === 'video' && s.framesDecoded > 0) inbound.widths.push(s.frameWidth || 0);
    });
  }
  return inbound;
})()"#;

/// JS: a VideoRoom participant over Janus's HTTP API: publish camera and mic, subscribe to
/// every other publisher (one peer connection each), without trickle (offers and answers
/// carry their candidates). `window.bench.decoding` counts subscriptions that decoded video.
const JANUS_CLIENT: &str = r#"async (base, name) => {
  const tx = () => Math.random().toString(36).slice(2);
  const post = async (path, body) => {
    const r = await fetch(base + path, { method: 'POST', body: JSON.stringify({ ...body, transaction: tx() }) });
    const j = await r.json();
    if (j.janus === 'error') throw new Error(JSON.stringify(j.error));
    return j;
  };
  const gathered = (pc) => new Promise((ok) => {
    if (pc.iceGatheringState === 'complete') return ok();
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') ok(); });
  });
  const session = (await post('', { janus: 'create' })).data.id;
  const attach = async () => (await post('/' + session, { janus: 'attach', plugin: 'janus.plugin.videoroom' })).data.id;
  const bench = window.bench = { pcs: [], decoding: 0, feeds: new Set(), errors: [] };
  const waiters = new Map(); // handle -> resolve, for the next event with a jsep or a result
  const subscribe = async (feed) => {
    if (bench.feeds.has(feed)) return;
    bench.feeds.add(feed);
    const handle = await attach();
    const got = new Promise((ok) => waiters.set(handle, ok));
    await post('/' + session + '/' + handle, { janus: 'message', body: { request: 'join', ptype: 'subscriber', room: 1234, streams: [{ feed }] } });
    const ev = await got;
    const pc = new RTCPeerConnection();
    bench.pcs.push(pc);
    pc.ontrack = (e) => {
      if (e.track.kind !== 'video') return;
      const v = document.createElement('video');
      v.muted = true; v.autoplay = true; v.srcObject = new MediaStream([e.track]);
      document.body.appendChild(v);
      v.requestVideoFrameCallback(() => { bench.decoding++; });
    };
    await pc.setRemoteDescription(ev.jsep);
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await post('/' + session + '/' + handle, { janus: 'message', body: { request: 'start', room: 1234 }, jsep: pc.localDescription });
  };
  const onEvent = (ev) => {
    const data = ev.plugindata && ev.plugindata.data;
    const wait = waiters.get(ev.sender);
    if (wait && (ev.jsep || (data && data.videoroom === 'joined'))) { waiters.delete(ev.sender); wait(ev); }
    for (const p of (data && data.publishers) || []) subscribe(p.id).catch((e) => bench.errors.push(String(e)));
  };
  (async () => {
    for (;;) {
      try {
        const r = await fetch(base + '/' + session + '?maxev=10');
        const j = await r.json();
        for (const ev of Array.isArray(j) ? j : [j]) onEvent(ev);
      } catch (e) { bench.errors.push(String(e)); await new Promise((ok) => setTimeout(ok, 100)); }
    }
  })();
  const handle = await attach();
  const joined = new Promise((ok) => waiters.set(handle, ok));
  await post('/' + session + '/' + handle, { janus: 'message', body: { request: 'join', ptype: 'publisher', room: 1234, display: name } });
  await joined;
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  const pc = new RTCPeerConnection();
  // Two encodings, as Hearth's page sends (join.js), so both servers receive the same: in
  // janus.js's order, the best first; subscribers get the best by default.
  pc.addTransceiver(stream.getAudioTracks()[0], { direction: 'sendonly', streams: [stream] });
  pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly', streams: [stream], sendEncodings: [
    { rid: 'h', scaleResolutionDownBy: 1, maxBitrate: 900000 },
    { rid: 'l', scaleResolutionDownBy: 2, maxBitrate: 100000 },
  ] });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answered = new Promise((ok) => waiters.set(handle, ok));
  await post('/' + session + '/' + handle, { janus: 'message', body: { request: 'publish', audio: true, video: true }, jsep: pc.localDescription });
  const ev = await answered;
  await pc.setRemoteDescription(ev.jsep);
  bench.publisher = pc;
  return true;
}"#;

/// Janus with only the VideoRoom plugin and the HTTP transport, from a config directory of
/// our own; its ICE on the namespace's interface only.
struct Janus {
    child: Child,
}

impl Janus {
    fn start() -> Result<Janus> {
        if !std::path::Path::new("/usr/bin/janus").exists() {
            bail!("Janus is not installed: run `make bench-janus`, which installs Debian's janus");
        }
        let dir = temp_dir("bench-janus");
        let lib = "/usr/lib/x86_64-linux-gnu/janus";
        std::fs::write(
            dir.join("janus.jcfg"),
            format!(
                "general: {{\n configs_folder = \"{}\"\n plugins_folder = \"{lib}/plugins\"\n transports_folder = \"{lib}/transports\"\n events_folder = \"{lib}/events\"\n loggers_folder = \"{lib}/loggers\"\n debug_level = 3\n}}\n\
                 nat: {{\n ice_enforce_list = \"hearth0\"\n}}\n\
                 media: {{\n rtp_port_range = \"20000-40000\"\n}}\n\
                 plugins: {{\n disable = \"libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so\"\n}}\n\
                 transports: {{\n disable = \"libjanus_websockets.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so\"\n}}\n\
                 events: {{\n broadcast = false\n}}\n",
                dir.display()
            ),
        )?;
        std::fs::write(
            dir.join("janus.transport.http.jcfg"),
            format!("general: {{\n base_path = \"/janus\"\n http = true\n port = {JANUS_HTTP_PORT}\n https = false\n}}\nadmin: {{\n admin_http = false\n}}\n"),
        )?;
        // The same codecs as Hearth's phones: H.264 and Opus; no bitrate cap (Hearth has none).
        std::fs::write(
            dir.join("janus.plugin.videoroom.jcfg"),
            "room-1234: {\n description = \"bench\"\n publishers = 12\n bitrate = 0\n videocodec = \"h264\"\n audiocodec = \"opus\"\n fir_freq = 10\n}\n",
        )?;
        let log = std::fs::File::create(dir.join("janus.log"))?;
        let child = Command::new("janus")
            .arg(format!("--config={}", dir.join("janus.jcfg").display()))
            .arg(format!("--configs-folder={}", dir.display()))
            .arg("--disable-colors")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("janus does not start")?;
        // Ready when its HTTP API answers.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", JANUS_HTTP_PORT)).is_ok() {
                return Ok(Janus { child });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "Janus's HTTP API did not come up; see {}",
            dir.join("janus.log").display()
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blank page on loopback (a secure context, so the camera may be opened) for the Janus
/// client to run in; answered by one thread for as long as the bench runs.
fn serve_blank_page() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(1000) {
            // One thread per connection: Chromium opens spare connections that never send.
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 2048];
                if !matches!(stream.read(&mut request), Ok(n) if n > 0) {
                    return;
                }
                let body = "<!doctype html><title>bench</title>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    Ok(url)
}

fn cpu_ms(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, in USER_HZ (100 on x86-64 and arm64).
    Ok((fields[11].parse::<u64>()? + fields[12].parse::<u64>()?) * 10)
}

/// Packets received by all the pages, and how many of their videos decode at each width.
async fn inbound(browsers: &mut [&mut Browser]) -> Result<(u64, BTreeMap<u64, usize>)> {
    let (mut packets, mut widths) = (0, BTreeMap::new());
    for b in browsers.iter_mut() {
        let page = b.eval(INBOUND).await?;
        packets += page["packets"].as_u64().unwrap_or(0);
        for w in page["widths"].as_array().into_iter().flatten() {
            *widths.entry(w.as_u64().unwrap_or(0)).or_default() += 1;
        }
    }
    Ok((packets, widths))
}

/// With `HEARTH_PERF=DIR` set, where Hearth's window is profiled with `perf record` (one file
/// per run; `perf report -i FILE` reads it): the top functions before and after a change.
fn perf_record(pid: u32, name: &str) -> Result<Option<Child>> {
    let Some(dir) = std::env::var_os("HEARTH_PERF") else {
        return Ok(None);
    };
    std::fs::create_dir_all(&dir)?;
    let out = std::path::Path::new(&dir).join(format!("{name}.data"));
    let child = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-p", &pid.to_string(), "-o"])
        .arg(&out)
        .args(["--", "sleep", &WINDOW.as_secs().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("perf record (Debian's linux-perf)")?;
    Ok(Some(child))
}

/// What one server's window came to.
struct Figure {
    /// CPU-ms per 1000 packets received by the subscribers.
    cpu_per_1000: f64,
    packets: u64,
    /// How many subscriptions decode at each frame width, at the end of the window.
    widths: BTreeMap<u64, usize>,
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let widths: Vec<String> = self
            .widths
            .iter()
            .map(|(w, n)| format!("{n} at {w} wide"))
            .collect();
        write!(
            f,
            "{:.1} CPU-ms per 1000 packets ({} packets; video {})",
            self.cpu_per_1000,
            self.packets,
            widths.join(", ")
        )
    }
}

/// CPU-ms per 1000 packets received by the subscribers over the window.
async fn measure(
    pid: u32,
    browsers: &mut [&mut Browser],
    settle: Duration,
    profile: Option<&str>,
) -> Result<Figure> {
    tokio::time::sleep(settle).await;
    let (cpu0, (rx0, _)) = (cpu_ms(pid)?, inbound(browsers).await?);
    let perf = match profile {
        Some(name) => perf_record(pid, name)?,
        None => None,
    };
    tokio::time::sleep(WINDOW).await;
    let (cpu1, (rx1, widths)) = (cpu_ms(pid)?, inbound(browsers).await?);
    if let Some(mut perf) = perf {
        perf.wait()?;
    }
    let packets = rx1.saturating_sub(rx0);
    if packets == 0 {
        bail!("no packets received in the window");
    }
    Ok(Figure {
        cpu_per_1000: (cpu1 - cpu0) as f64 * 1000.0 / packets as f64,
        packets,
        widths,
    })
}

async fn hearth_run(phones: usize, run: usize, settle: Duration) -> Result<Figure> {
    let daemon = Daemon::start_with(&temp_dir("bench-janus-hearth"), NO_BOX_MEDIA)?;
    let mut list = Vec::new();
    for i in 0..phones {
        list.push(Phone::join(BrowserKind::Chromium, &daemon.join_url, &format!("P{i}")).await?);
    }
    let all = format!("m.video >= {0} && m.audio >= {0}", phones - 1);
    for phone in &mut list {
        phone.wait_for(&all, Duration::from_secs(30)).await?;
    }
    let mut browsers: Vec<&mut Browser> = list.iter_mut().map(Phone::browser_mut).collect();
    let profile = format!("hearth-n{phones}-run{run}");
    let figure = measure(daemon.pid(), &mut browsers, settle, Some(&profile)).await;
    for phone in list {
        phone.close().await?;
    }
    figure
}

async fn janus_run(phones: usize, page: &str, settle: Duration) -> Result<Figure> {
    let janus = Janus::start()?;
    let base = format!("http://127.0.0.1:{JANUS_HTTP_PORT}/janus");
    let mut browsers = Vec::new();
    for i in 0..phones {
        let mut b = Browser::launch(BrowserKind::Chromium).await?;
        b.goto(page).await?;
        let call = format!("({JANUS_CLIENT})({}, 'P{i}')", serde_json::json!(base));
        b.eval(&call)
            .await
            .with_context(|| format!("Janus client P{i}"))?;
        browsers.push(b);
    }
    for (i, b) in browsers.iter_mut().enumerate() {
        let wait = format!(
            "(async () => {{ const t0 = Date.now(); while (Date.now() - t0 < 30000) {{ if (window.bench.decoding >= {}) return true; await new Promise((ok) => setTimeout(ok, 100)); }} return JSON.stringify(window.bench.errors); }})()",
            phones - 1
        );
        let done = b.eval_within(&wait, Duration::from_secs(40)).await?;
        if done != serde_json::Value::Bool(true) {
            bail!("Janus: P{i} did not decode the others within 30 s: {done}");
        }
    }
    let mut refs: Vec<&mut Browser> = browsers.iter_mut().collect();
    let figure = measure(janus.pid(), &mut refs, settle, None).await;
    for b in browsers {
        b.close().await?;
    }
    figure
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects no run.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)?.parse::<usize>().ok()
    };
    let runs = value("--runs").unwrap_or(RUNS).max(1);
    let settle = value("--settle").map_or(SETTLE, |s| Duration::from_secs(s as u64));
    let sizes = match value("--phones") {
        Some(n) => vec![n],
        None => vec![3, 4],
    };
    let page = serve_blank_page()?;
    for phones in sizes {
        println!(
            "N = {phones}: each publishes H.264 (two encodings) + Opus and subscribes to the other {}; \
             window {} s from {} s after everyone decodes everyone",
            phones - 1,
            WINDOW.as_secs(),
            settle.as_secs()
        );
        let mut ratios = Vec::new();
        for run in 1..=runs {
            let hearth = hearth_run(phones, run, settle).await?;
            let janus = janus_run(phones, &page, settle).await?;
            let ratio = hearth.cpu_per_1000 / janus.cpu_per_1000;
            ratios.push(ratio);
            println!("  run {run}: ratio {ratio:.2}\n    Hearth {hearth}\n    Janus  {janus}");
        }
        // Runs on this machine spread by +-15 % (both servers): the spread is printed with the
        // middle, so that more runs (`--runs`) can tell a change from noise.
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let (best, worst) = (ratios[0], ratios[ratios.len() - 1]);
        println!(
            "  ratio Hearth / Janus: mean {mean:.2}, median {median:.2}, best {best:.2}, \
             worst {worst:.2} over {} runs (goal at most 0.5)",
            ratios.len()
        );
    }
    Ok(())
}
