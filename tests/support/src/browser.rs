//! Real headless browsers for end-to-end tests, driven without any WebDriver binary:
//! Chromium over the Chrome DevTools Protocol (CDP), Firefox over WebDriver BiDi, both spoken
//! directly over one WebSocket. Calls are strictly sequential (one in flight at a time), which
//! keeps the protocol handling to "send, then read until the reply with our id arrives".

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for any single protocol round trip, so a hung browser fails the test, not CI.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the browser gets to print its "listening on ws://..." line.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_LINES: usize = 40;

/// The real binary, not Debian's /usr/bin/chromium wrapper: the wrapper exports Debian's Google
/// API key (which switches on model downloads from googleapis.com) and adds flags of its own.
const CHROMIUM_BIN: &str = "/usr/lib/chromium/chromium";
const FIREFOX_BIN: &str = "/usr/bin/firefox-esr";

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox", // we run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    // (and --use-fake-device-for-media-stream, added in `launch_with`: a synthetic camera and
    // microphone)
    "--use-fake-ui-for-media-stream", // auto-accept the getUserMedia prompt
    "--autoplay-policy=no-user-gesture-required", // <video autoplay> with sound, no click needed
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    // NetworkTimeServiceQuerying: secure-time pings to clients2.google.com, which
    // --disable-background-networking does not stop. (WebRTC stays at its defaults: ICE as
    // a user's browser does it.)
    "--disable-features=NetworkTimeServiceQuerying",
    // Even with --disable-component-update, Chromium fetches an on-device-AI model manifest "on
    // demand" at startup. Point the updater at a port Chromium refuses to dial, so it never does.
    "--component-updater=url-source=http://127.0.0.1:9/",
    "--remote-debugging-port=0", // let the OS pick; the port is read back from stderr
];

/// The Firefox profile's user.js. The remote agent applies similar "recommended" prefs itself,
/// but only once it is up, after some services have already started phoning home.
const FIREFOX_USER_JS: &str = r#"
user_pref("media.navigator.streams.fake", true);
user_pref("media.navigator.permission.disabled", true);
// Firefox gathers only the default-route address (none at all in a namespace with just `lo`)
// unless the page has camera/mic permission, and fake devices alone do not count as that.
user_pref("permissions.default.camera", 1);
user_pref("permissions.default.microphone", 1);
user_pref("media.autoplay.default", 0);
// No background traffic: updates, studies, telemetry, safe browsing, captive portal and
// connectivity checks, remote settings, add-on and codec (GMP) updates, push, geolocation.
user_pref("app.update.disabledForTesting", true);
user_pref("app.normandy.enabled", false);
user_pref("app.normandy.api_url", "");
user_pref("app.shield.optoutstudies.enabled", false);
user_pref("browser.backup.enabled", false);
user_pref("browser.ml.enable", false);
user_pref("browser.translations.enable", false);
user_pref("browser.newtabpage.activity-stream.testing.shouldInitializeFeeds", false);
user_pref("browser.topsites.contile.enabled", false);
user_pref("browser.region.network.url", "");
user_pref("browser.search.update", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
user_pref("browser.safebrowsing.downloads.enabled", false);
user_pref("browser.safebrowsing.blockedURIs.enabled", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("browser.urlbar.suggest.searches", false);
user_pref("captivedetect.canonicalURL", "");
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("network.dns.disablePrefetch", true);
user_pref("network.prefetch-next", false);
user_pref("network.http.speculative-parallel-limit", 0);
user_pref("network.trr.mode", 5);
user_pref("datareporting.healthreport.uploadEnabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("datareporting.usage.uploadEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("toolkit.telemetry.unified", false);
user_pref("toolkit.telemetry.archive.enabled", false);
user_pref("toolkit.telemetry.server", "data:,");
user_pref("extensions.update.enabled", false);
user_pref("extensions.getAddons.cache.enabled", false);
user_pref("extensions.systemAddon.update.enabled", false);
user_pref("extensions.blocklist.enabled", false);
// Release builds ignore this override unless MOZ_DISABLE_NONLOCAL_CONNECTIONS=1 (set below).
user_pref("services.settings.server", "data:,#remote-settings-dummy/v1");
user_pref("security.remote_settings.intermediates.enabled", false);
user_pref("security.remote_settings.crlite_filters.enabled", false);
user_pref("messaging-system.rsexperimentloader.enabled", false);
user_pref("media.gmp-manager.updateEnabled", false);
user_pref("media.gmp-manager.url", "data:,");
user_pref("dom.push.connection.enabled", false);
user_pref("geo.provider.network.url", "");
user_pref("identity.fxaccounts.enabled", false);
"#;

/// Hearth's own certificate is not one a browser trusts out of the box: tests that are not
/// about certificates skip the check (see `Browser::launch_trusting` for those that are).
const IGNORE_CERTIFICATE_ERRORS: &str = "--ignore-certificate-errors";

/// What a browser trusts besides the system's roots, and names it resolves without DNS.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub root_pem: PathBuf,
    pub resolve: Vec<(String, std::net::IpAddr)>,
}

/// An NSS database in `home` trusting `root_pem` for websites.
fn trust_root(home: &std::path::Path, root_pem: &std::path::Path) -> Result<()> {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db)?;
    let db = format!("sql:{}", db.display());
    for args in [
        vec!["-d", &db, "-N", "--empty-password"],
        vec!["-d", &db, "-A", "-n", "test-root", "-t", "C,,", "-i"],
    ] {
        let mut command = Command::new("certutil");
        command.args(&args);
        if args.contains(&"-A") {
            command.arg(root_pem);
        }
        let out = command
            .output()
            .context("running certutil (`make deps` installs libnss3-tools)")?;
        if !out.status.success() {
            bail!(
                "certutil {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrowserKind {
    Chromium,
    Firefox,
}

pub struct Browser {
    kind: BrowserKind,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Messages read but not yet claimed (see `read_until`).
    inbox: VecDeque<Value>,
    /// CDP: the flattened session id of the page. BiDi: the top-level browsing context id.
    target: String,
    proc: Proc,
}

/// The process and its scratch dir. Cleanup lives here, not on `Browser`, so a launch that fails
/// half-way (no listening line, handshake error) still kills the process and removes the dir.
struct Proc {
    child: Child,
    dir: PathBuf,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected once both output readers have finished. Every helper process the browser
    /// forks inherits its pipes, so that means the whole process tree is gone, not just the
    /// main process.
    gone: std::sync::mpsc::Receiver<()>,
}

impl Proc {
    fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().map(|l| format!("  | {l}\n")).collect()
    }

    /// Wait (blocking) up to `limit` for the whole process tree to be gone; whether it is.
    fn wait_gone(&self, limit: Duration) -> bool {
        // The readers send nothing: their ends of the channel closing is the news.
        matches!(
            self.gone.recv_timeout(limit),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Chromium's helpers outlive the main process briefly and keep writing to the profile.
        self.wait_gone(Duration::from_secs(5));
        // Should a helper still be writing after that, removal can fail; try a few times.
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Drains one output pipe on a plain thread (a browser blocks once a pipe fills up), keeps the
/// last lines for error messages, and reports the line that starts with `marker`. Drops
/// `gone` when the pipe closes.
fn pump(
    out: impl Read + Send + 'static,
    marker: &'static str,
    tx: mpsc::UnboundedSender<String>,
    log: Arc<Mutex<VecDeque<String>>>,
    gone: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let _gone = gone;
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(url) = line.strip_prefix(marker) {
                let _ = tx.send(url.trim().to_string());
            }
            let mut log = log.lock().unwrap();
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

impl Browser {
    pub async fn launch(kind: BrowserKind) -> Result<Browser> {
        Self::launch_in(kind, None).await
    }

    /// Launch inside a network namespace (a phone in the simulated home, see home.rs). The
    /// browser's protocol port is on that namespace's 127.0.0.1, so the connection to it is
    /// made from inside (a socket keeps its namespace) and then used from here as usual.
    pub async fn launch_in(
        kind: BrowserKind,
        netns: Option<&super::netns::Netns>,
    ) -> Result<Browser> {
        Self::launch_with(kind, netns, None, None).await
    }

    /// `launch_in` with Chromium's fake camera at `fps` frames a second instead of its default
    /// (20), for a test whose three phones would otherwise leave a 2-core machine no CPU for
    /// the call they are in (see weak_link.rs). Chromium only.
    pub async fn launch_in_at_fps(
        kind: BrowserKind,
        netns: Option<&super::netns::Netns>,
        fps: u32,
    ) -> Result<Browser> {
        Self::launch_with(kind, netns, None, Some(fps)).await
    }

    /// As a user's browser: certificates checked against the system's roots plus
    /// `trust.root_pem` (an NSS database in the browser's own HOME, as `certutil` makes it on a
    /// desktop), and test names resolved to test addresses. Chromium only.
    pub async fn launch_trusting(
        kind: BrowserKind,
        netns: Option<&super::netns::Netns>,
        trust: &Trust,
    ) -> Result<Browser> {
        Self::launch_with(kind, netns, Some(trust), None).await
    }

    async fn launch_with(
        kind: BrowserKind,
        netns: Option<&super::netns::Netns>,
        trust: Option<&Trust>,
        camera_fps: Option<u32>,
    ) -> Result<Browser> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "hearth-{kind:?}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(name.to_lowercase());
        let (profile, home, tmp) = (dir.join("profile"), dir.join("home"), dir.join("tmp"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for d in [&profile, &home, &tmp] {
            std::fs::create_dir(d)?;
        }

        let (bin, marker, mut cmd) = match kind {
            BrowserKind::Chromium => {
                let mut cmd = Command::new(CHROMIUM_BIN);
                let fake_devices = "--use-fake-device-for-media-stream";
                match camera_fps {
                    None => cmd.arg(fake_devices),
                    Some(fps) => cmd.arg(format!("{fake_devices}=fps={fps}")),
                };
                cmd.args(CHROMIUM_FLAGS)
                    .arg(format!("--user-data-dir={}", profile.display()));
                match trust {
                    None => {
                        cmd.arg(IGNORE_CERTIFICATE_ERRORS);
                    }
                    Some(trust) => {
                        trust_root(&home, &trust.root_pem)?;
                        let rules: Vec<String> = trust
                            .resolve
                            .iter()
                            .map(|(name, ip)| format!("MAP {name} {ip}"))
                            .collect();
                        cmd.arg(format!("--host-resolver-rules={}", rules.join(",")));
                    }
                }
                (CHROMIUM_BIN, "DevTools listening on ", cmd)
            }
            BrowserKind::Firefox => {
                if trust.is_some() {
                    bail!("launch_trusting is for Chromium (NSS database in HOME)");
                }
                if camera_fps.is_some() {
                    bail!("launch_in_at_fps is for Chromium (a command-line switch)");
                }
                std::fs::write(profile.join("user.js"), FIREFOX_USER_JS)?;
                let mut cmd = Command::new(FIREFOX_BIN);
                cmd.args(["--headless", "--no-remote", "--profile"])
                    .arg(&profile);
                // Port 0 works here too: Firefox binds a free port and prints it.
                cmd.args(["--remote-debugging-port", "0"]);
                // NONLOCAL: refuse connections to anything but loopback/private addresses, and
                // honour the remote-settings override above. Not inside a namespace of the
                // simulated home: there a phone outside must load the router's public
                // address, and the namespaces have no way out (nothing routes beyond the
                // router), so whatever Firefox tries to reach beyond them goes nowhere.
                match netns {
                    None => cmd.env("MOZ_DISABLE_NONLOCAL_CONNECTIONS", "1"),
                    Some(_) => cmd.env_remove("MOZ_DISABLE_NONLOCAL_CONNECTIONS"),
                };
                cmd.env("MOZ_CRASHREPORTER_DISABLE", "1");
                (FIREFOX_BIN, "WebDriver BiDi listening on ", cmd)
            }
        };
        // Private HOME/TMPDIR/XDG_RUNTIME_DIR: nothing touches the real user's dotfiles or audio
        // server, and the droppings (Chromium's singleton socket dir, PulseAudio's /tmp/pulse-*)
        // land inside `dir`, which Drop removes.
        cmd.arg("about:blank")
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("XDG_RUNTIME_DIR", &tmp);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(netns) = netns {
            netns.enter(&mut cmd);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e)
                    .with_context(|| format!("cannot start {kind:?} at {bin} (is it installed?)"));
            }
        };
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (gone_tx, gone) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        pump(stdout, marker, tx.clone(), log.clone(), gone_tx.clone());
        pump(
            child.stderr.take().unwrap(),
            marker,
            tx,
            log.clone(),
            gone_tx,
        );
        let mut proc = Proc {
            child,
            dir,
            log,
            gone,
        };

        let url = match timeout(LAUNCH_TIMEOUT, rx.recv()).await {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = proc.child.wait().map(|s| s.to_string()).unwrap_or_default();
                bail!("{kind:?} ({bin}) exited ({status}) before listening; output:\n{}", proc.tail())
            }
            Err(_) => bail!("{kind:?} ({bin}) printed no `{marker}ws://...` line within {LAUNCH_TIMEOUT:?}; output:\n{}", proc.tail()),
        };
        // Firefox prints the bare server address; BiDi sessions live under /session.
        let url = if kind == BrowserKind::Firefox {
            format!("{url}/session")
        } else {
            url
        };
        let (ws, _) = match netns {
            None => timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await,
            Some(netns) => {
                let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse()?;
                let (host, port) = (uri.host().unwrap_or("127.0.0.1"), uri.port_u16());
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port.unwrap_or(80)))?
                    .next()
                    .with_context(|| format!("no address for {url}"))?;
                let tcp = netns.tokio_tcp_connect(addr, Duration::from_secs(5))?;
                let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
                timeout(
                    CALL_TIMEOUT,
                    tokio_tungstenite::client_async(url.as_str(), tcp),
                )
                .await
            }
        }
        .map_err(|_| anyhow!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))?;
        let mut b = Browser {
            kind,
            ws,
            next_id: 0,
            inbox: VecDeque::new(),
            target: String::new(),
            proc,
        };

        b.target = match kind {
            BrowserKind::Chromium => {
                let targets = b.call("Target.getTargets", json!({}), false).await?;
                let page = targets["targetInfos"]
                    .as_array()
                    .and_then(|t| t.iter().find(|t| t["type"] == "page"));
                let id = match page {
                    Some(page) => page["targetId"].clone(),
                    None => b
                        .call("Target.createTarget", json!({"url": "about:blank"}), false)
                        .await?["targetId"]
                        .clone(),
                };
                // flatten: page commands then go over this same socket, tagged with sessionId.
                let attached = b
                    .call(
                        "Target.attachToTarget",
                        json!({"targetId": id, "flatten": true}),
                        false,
                    )
                    .await?;
                attached["sessionId"]
                    .as_str()
                    .context("attachToTarget returned no sessionId")?
                    .to_string()
            }
            BrowserKind::Firefox => {
                let caps = json!({"capabilities": {"alwaysMatch": {"acceptInsecureCerts": true}}});
                b.call("session.new", caps, false).await?;
                let tree = b
                    .call("browsingContext.getTree", json!({"maxDepth": 0}), false)
                    .await?;
                tree["contexts"][0]["context"]
                    .as_str()
                    .context("Firefox reported no browsing context")?
                    .to_string()
            }
        };
        if kind == BrowserKind::Chromium {
            b.call("Page.enable", json!({}), true).await?; // needed for Page.loadEventFired
        }
        Ok(b)
    }

    pub fn kind(&self) -> BrowserKind {
        self.kind
    }

    /// Navigates the page and waits until its load event has fired.
    pub async fn goto(&mut self, url: &str) -> Result<()> {
        match self.kind {
            BrowserKind::Chromium => {
                self.inbox.clear(); // any load event seen from here on belongs to this navigation
                let nav = self
                    .call("Page.navigate", json!({"url": url}), true)
                    .await?;
                if let Some(err) = nav["errorText"].as_str() {
                    bail!("Chromium could not load {url}: {err}");
                }
                // No loaderId means a same-document (#fragment) navigation: there is no load event.
                if nav.get("loaderId").is_some() {
                    let load = |m: &Value| m["method"] == "Page.loadEventFired";
                    let what = "Page.navigate's load event";
                    self.read_until(what, CALL_TIMEOUT, load).await?;
                }
            }
            BrowserKind::Firefox => {
                let params = json!({"context": self.target, "url": url, "wait": "complete"});
                self.call("browsingContext.navigate", params, false)
                    .await
                    .with_context(|| format!("Firefox could not load {url}"))?;
            }
        }
        Ok(())
    }

    /// Evaluate a JS expression (may evaluate to a Promise, which is awaited) in the page and
    /// return its value as JSON; `undefined` becomes `Value::Null`. A thrown exception or a
    /// rejected promise becomes an `Err` carrying the JS error message. The whole evaluation
    /// must finish within 30 s; see `eval_within` for longer ones.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        self.eval_within(expression, CALL_TIMEOUT).await
    }

    /// `eval` for an expression that may take up to `limit` (a wait inside the page).
    pub async fn eval_within(&mut self, expression: &str, limit: Duration) -> Result<Value> {
        // JSON.stringify in the page gives both protocols the same plain string to hand back.
        // The newlines keep a trailing `// comment` or `;` in `expression` from eating the tail.
        let wrapped = format!("(async () => JSON.stringify(await (\n{expression}\n)))()");
        let (value, error) = match self.kind {
            BrowserKind::Chromium => {
                // userGesture: code run by a test stands in for a tap (autoplay, play(), AudioContext).
                let params = json!({"expression": wrapped, "awaitPromise": true, "returnByValue": true, "userGesture": true});
                let r = self
                    .call_within("Runtime.evaluate", params, true, limit)
                    .await?;
                // An Error has a description ("TypeError: x\n  at ..."); `throw "x"` only a value.
                let error = r.get("exceptionDetails").map(|d| match &d["exception"] {
                    e if e["description"].is_string() => {
                        e["description"].as_str().unwrap().to_string()
                    }
                    e if e["value"].is_string() => e["value"].as_str().unwrap().to_string(),
                    e => e.get("value").unwrap_or(&d["text"]).to_string(),
                });
                (r["result"].clone(), error)
            }
            BrowserKind::Firefox => {
                let params = json!({"expression": wrapped, "target": {"context": self.target}, "awaitPromise": true, "resultOwnership": "none", "userActivation": true});
                let r = self
                    .call_within("script.evaluate", params, false, limit)
                    .await?;
                let error = (r["type"] == "exception").then(|| {
                    r["exceptionDetails"]["text"]
                        .as_str()
                        .unwrap_or("exception")
                        .to_string()
                });
                (r["result"].clone(), error)
            }
        };
        if let Some(error) = error {
            bail!("JS error: {error}");
        }
        match value["value"].as_str() {
            Some(json) => serde_json::from_str(json)
                .with_context(|| format!("eval result is not JSON: {json}")),
            None => Ok(Value::Null), // JSON.stringify(undefined) is undefined
        }
    }

    /// Asks the browser to quit and waits up to 10 s for all its processes to be gone; kills
    /// what is left after that.
    pub async fn close(mut self) -> Result<()> {
        let method = match self.kind {
            BrowserKind::Chromium => "Browser.close",
            BrowserKind::Firefox => "browser.close",
        };
        // The browser may drop the socket before it replies, so the reply is not required.
        let _ = timeout(Duration::from_secs(5), self.call(method, json!({}), false)).await;
        let proc = self.proc;
        tokio::task::spawn_blocking(move || {
            proc.wait_gone(Duration::from_secs(10));
            drop(proc); // kills what is left, removes the profile
        })
        .await?;
        Ok(())
    }

    /// One request/response round trip. `on_page` routes a CDP call to the attached page session.
    async fn call(&mut self, method: &str, params: Value, on_page: bool) -> Result<Value> {
        self.call_within(method, params, on_page, CALL_TIMEOUT)
            .await
    }

    /// `call`, with `limit` for the reply instead of `CALL_TIMEOUT`.
    async fn call_within(
        &mut self,
        method: &str,
        params: Value,
        on_page: bool,
        limit: Duration,
    ) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = json!(self.target);
        }
        let sent = timeout(CALL_TIMEOUT, self.ws.send(Message::text(msg.to_string()))).await;
        sent.map_err(|_| anyhow!("{:?}: sending {method} timed out", self.kind))??;
        let reply = self.read_until(method, limit, |m| m["id"] == id).await?;
        // CDP errors: {"error": {"code", "message"}}; BiDi: {"type": "error", "error", "message"}.
        let kind = self.kind;
        let message = |e: &Value| e["message"].as_str().map_or(e.to_string(), str::to_string);
        match &reply["error"] {
            Value::Null => Ok(reply["result"].clone()),
            Value::String(code) => bail!("{kind:?} {method} failed: {code}: {}", message(&reply)),
            err => bail!("{kind:?} {method} failed: {}", message(err)),
        }
    }

    /// Reads until a message matches `want` (or one already read did), keeping the others:
    /// events that arrive while a call is in flight are what `goto` waits for afterwards.
    async fn read_until(
        &mut self,
        what: &str,
        limit: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let kind = self.kind;
        let read = async {
            loop {
                if let Some(i) = self.inbox.iter().position(&want) {
                    return Ok(self.inbox.remove(i).unwrap());
                }
                let text = match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => {
                        bail!(
                            "{kind:?} closed the connection; output:\n{}",
                            self.proc.tail()
                        )
                    }
                    Some(Ok(_)) => continue, // tungstenite answers pings itself
                    Some(Err(e)) => return Err(e).context("reading from the browser"),
                };
                if self.inbox.len() == 1000 {
                    self.inbox.pop_front(); // events nobody waits for must not pile up forever
                }
                self.inbox.push_back(serde_json::from_str(&text)?);
            }
        };
        timeout(limit, read)
            .await
            .map_err(|_| anyhow!("{kind:?}: no reply to {what} within {limit:?}"))?
    }
}
