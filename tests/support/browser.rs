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
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for any single protocol round trip, so a hung browser fails the test, not CI.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the browser gets to print its "listening on ws://..." line.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_LINES: usize = 40;

const CHROMIUM_BIN: &str = "/usr/bin/chromium";
const FIREFOX_BIN: &str = "/usr/bin/firefox-esr";

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox", // we run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--use-fake-device-for-media-stream", // synthetic camera + microphone
    "--use-fake-ui-for-media-stream",     // auto-accept the getUserMedia prompt
    "--autoplay-policy=no-user-gesture-required", // <video autoplay> with sound, no click needed
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--ignore-certificate-errors", // Hearth serves a self-signed certificate
    "--allow-loopback-in-peer-connection", // otherwise 127.0.0.1 is never an ICE candidate
    "--disable-features=WebRtcHideLocalIpsWithMdns", // plain host candidates, no .local names
    "--remote-debugging-port=0",   // let the OS pick; the port is read back from stderr
];

/// Firefox profile prefs (user.js). The remote agent applies similar "recommended" prefs itself,
/// but only once it is up, which is after some services have already started phoning home.
const FIREFOX_PREFS: &[(&str, &str)] = &[
    ("media.navigator.streams.fake", "true"), // synthetic camera + microphone
    ("media.navigator.permission.disabled", "true"), // no getUserMedia prompt
    // Firefox gathers only the default-route address (none at all in a namespace with just `lo`)
    // unless the page has camera/mic permission, and fake devices alone do not count as that.
    ("permissions.default.camera", "1"),
    ("permissions.default.microphone", "1"),
    ("media.autoplay.default", "0"),
    ("media.peerconnection.ice.loopback", "true"), // gather 127.0.0.1 candidates
    ("media.peerconnection.ice.obfuscate_host_addresses", "false"), // no mDNS .local names
    ("app.update.disabledForTesting", "true"),
    ("app.update.auto", "false"),
    ("app.normandy.enabled", "false"),
    ("app.normandy.api_url", "\"\""),
    ("app.shield.optoutstudies.enabled", "false"),
    ("browser.backup.enabled", "false"),
    ("browser.ml.enable", "false"),
    ("browser.translations.enable", "false"),
    (
        "browser.newtabpage.activity-stream.testing.shouldInitializeFeeds",
        "false",
    ),
    ("browser.topsites.contile.enabled", "false"),
    ("browser.region.network.url", "\"\""),
    ("browser.region.update.enabled", "false"),
    ("browser.search.update", "false"),
    ("browser.safebrowsing.malware.enabled", "false"),
    ("browser.safebrowsing.phishing.enabled", "false"),
    ("browser.safebrowsing.downloads.enabled", "false"),
    ("browser.safebrowsing.blockedURIs.enabled", "false"),
    ("browser.safebrowsing.provider.mozilla.updateURL", "\"\""),
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("browser.urlbar.suggest.searches", "false"),
    ("captivedetect.canonicalURL", "\"\""),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("network.dns.disablePrefetch", "true"),
    ("network.prefetch-next", "false"),
    ("network.http.speculative-parallel-limit", "0"),
    ("network.trr.mode", "5"), // DNS-over-HTTPS off
    ("datareporting.healthreport.uploadEnabled", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("datareporting.usage.uploadEnabled", "false"),
    ("toolkit.telemetry.enabled", "false"),
    ("toolkit.telemetry.unified", "false"),
    ("toolkit.telemetry.archive.enabled", "false"),
    ("toolkit.telemetry.server", "\"data:,\""),
    ("extensions.update.enabled", "false"),
    ("extensions.getAddons.cache.enabled", "false"),
    ("extensions.systemAddon.update.enabled", "false"),
    ("extensions.blocklist.enabled", "false"),
    (
        "services.settings.server",
        "\"data:,#remote-settings-dummy/v1\"",
    ), // remote settings
    ("security.remote_settings.intermediates.enabled", "false"),
    ("security.remote_settings.crlite_filters.enabled", "false"),
    ("messaging-system.rsexperimentloader.enabled", "false"),
    ("geo.provider.network.url", "\"\""),
    ("identity.fxaccounts.enabled", "false"),
    ("dom.push.connection.enabled", "false"),
    ("media.gmp-manager.updateEnabled", "false"),
    ("media.gmp-manager.url", "\"data:,\""),
];

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
    /// Events that arrived while we waited for a reply; `goto` looks for its load event here.
    events: VecDeque<Value>,
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
    /// The output readers. Every helper process the browser forks inherits these pipes, so both
    /// readers finishing means the whole process tree is gone, not just the main process.
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().map(|l| format!("  | {l}\n")).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Chromium's helpers outlive the main process briefly and keep writing to the profile.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.pumps.iter().all(|p| p.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Drains one output pipe on a plain thread (a browser blocks once a pipe fills up), keeps the
/// last lines for error messages, and reports the line that starts with `marker`.
fn pump(
    out: impl Read + Send + 'static,
    marker: &'static str,
    tx: mpsc::UnboundedSender<String>,
    log: Arc<Mutex<VecDeque<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
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
    })
}

impl Browser {
    pub async fn launch(kind: BrowserKind) -> Result<Browser> {
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
                cmd.args(CHROMIUM_FLAGS)
                    .arg(format!("--user-data-dir={}", profile.display()));
                (CHROMIUM_BIN, "DevTools listening on ", cmd)
            }
            BrowserKind::Firefox => {
                let prefs: String = FIREFOX_PREFS
                    .iter()
                    .map(|(k, v)| format!("user_pref(\"{k}\", {v});\n"))
                    .collect();
                std::fs::write(profile.join("user.js"), prefs)?;
                let mut cmd = Command::new(FIREFOX_BIN);
                cmd.args(["--headless", "--no-remote", "--profile"])
                    .arg(&profile);
                // Port 0 works here too: Firefox binds a free port and prints it.
                cmd.args(["--remote-debugging-port", "0"])
                    .env("MOZ_CRASHREPORTER_DISABLE", "1");
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
        let pumps = vec![
            pump(
                child.stdout.take().unwrap(),
                marker,
                tx.clone(),
                log.clone(),
            ),
            pump(child.stderr.take().unwrap(), marker, tx, log.clone()),
        ];
        let mut proc = Proc {
            child,
            dir,
            log,
            pumps,
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
        let (ws, _) = timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .map_err(|_| anyhow!("connecting to {url} timed out"))?
            .with_context(|| format!("connecting to {url}"))?;
        let mut b = Browser {
            kind,
            ws,
            next_id: 0,
            events: VecDeque::new(),
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
                self.events.clear(); // any load event seen from here on belongs to this navigation
                let nav = self
                    .call("Page.navigate", json!({"url": url}), true)
                    .await?;
                if let Some(err) = nav["errorText"].as_str() {
                    bail!("Chromium could not load {url}: {err}");
                }
                // No loaderId means a same-document (#fragment) navigation: there is no load event.
                if nav.get("loaderId").is_some() {
                    self.wait_event("Page.loadEventFired").await?;
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
    /// must finish within 30 s: poll from Rust for anything slower.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        // JSON.stringify in the page gives both protocols the same plain string to hand back.
        // The newlines keep a trailing `// comment` or `;` in `expression` from eating the tail.
        let wrapped = format!("(async () => JSON.stringify(await (\n{expression}\n)))()");
        let (value, error) = match self.kind {
            BrowserKind::Chromium => {
                let params =
                    json!({"expression": wrapped, "awaitPromise": true, "returnByValue": true});
                let r = self.call("Runtime.evaluate", params, true).await?;
                let error = r.get("exceptionDetails").map(|d| {
                    let e = &d["exception"];
                    e["description"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| e.get("value").map(Value::to_string))
                        .unwrap_or_else(|| d["text"].to_string())
                });
                (r["result"].clone(), error)
            }
            BrowserKind::Firefox => {
                let params = json!({"expression": wrapped, "target": {"context": self.target}, "awaitPromise": true, "resultOwnership": "none"});
                let r = self.call("script.evaluate", params, false).await?;
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

    /// Asks the browser to quit and waits up to 10 s for it; `Drop` kills it if it will not.
    pub async fn close(mut self) -> Result<()> {
        let method = match self.kind {
            BrowserKind::Chromium => "Browser.close",
            BrowserKind::Firefox => "browser.close",
        };
        // The browser may drop the socket before it replies, so the reply is not required.
        let _ = timeout(Duration::from_secs(5), self.call(method, json!({}), false)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.proc.child.try_wait()?.is_some() {
                return Ok(());
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// One request/response round trip. `on_page` routes a CDP call to the attached page session.
    async fn call(&mut self, method: &str, params: Value, on_page: bool) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = json!(self.target);
        }
        let kind = self.kind;
        let reply = timeout(CALL_TIMEOUT, async {
            self.ws.send(Message::text(msg.to_string())).await?;
            loop {
                let msg = self.next_message().await?;
                if msg["id"] == id {
                    return Ok::<_, anyhow::Error>(msg);
                }
                self.stash(msg);
            }
        })
        .await
        .map_err(|_| anyhow!("{kind:?} did not answer {method} within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{kind:?} {method}"))?;
        // CDP errors: {"error": {"code", "message"}}; BiDi: {"type": "error", "error", "message"}.
        match &reply["error"] {
            Value::Null => Ok(reply["result"].clone()),
            Value::String(code) => bail!(
                "{kind:?} {method} failed: {code}: {}",
                reply["message"].as_str().unwrap_or("")
            ),
            err => bail!(
                "{kind:?} {method} failed: {}",
                err["message"].as_str().unwrap_or(&err.to_string())
            ),
        }
    }

    async fn wait_event(&mut self, method: &str) -> Result<Value> {
        let kind = self.kind;
        timeout(CALL_TIMEOUT, async {
            loop {
                if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
                    return Ok(self.events.remove(i).unwrap());
                }
                let msg = self.next_message().await?;
                self.stash(msg);
            }
        })
        .await
        .map_err(|_| anyhow!("{kind:?} sent no {method} within {CALL_TIMEOUT:?}"))?
    }

    /// Keeps events for `wait_event`; bounded so a chatty page cannot grow it without limit.
    fn stash(&mut self, msg: Value) {
        if msg.get("method").is_some() {
            if self.events.len() == 1000 {
                self.events.pop_front();
            }
            self.events.push_back(msg);
        }
    }

    async fn next_message(&mut self) -> Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(_))) | None => {
                    bail!(
                        "browser closed the connection; output:\n{}",
                        self.proc.tail()
                    )
                }
                Some(Ok(_)) => continue, // pings are answered by tungstenite itself
                Some(Err(e)) => return Err(e).context("reading from the browser"),
            }
        }
    }
}
