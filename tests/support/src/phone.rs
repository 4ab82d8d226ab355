//! A phone in the call: a real headless browser on Hearth's join page, driven the way a person
//! would (open the link, type a name, tap buttons) and observed the way a test must: media from
//! `RTCPeerConnection.getStats()` (the page keeps its connection in `window.hearth.pc`), text
//! from the tiles (`.tile[data-participant="pN"]`; the box is p0).
//!
//! Waits run inside the page, which looks at `getStats()` every 20 ms (it has no event), so a
//! time a wait returns holds no protocol round trip.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::browser::{Browser, BrowserKind};
use crate::netns::Netns;

/// An async JS function giving the media this phone receives, `m` in wait conditions:
///
/// - `m.video`: remote video tracks that decoded a frame; `m.audio`: remote audio tracks that
///   received a packet.
/// - `m.from.pN = { frames, packets }`: video frames decoded and audio packets received from
///   participant pN, attributed through the tracks its tile plays; `m.frames('pN')` and
///   `m.packets('pN')` give 0 for someone nothing came from; `m.codec('pN')` is the MIME
///   type of the video decoded from them ('video/H264', 'video/VP8'; '' before any), and
///   `m.width('pN')` the width of the last frame decoded from them (0 before any): which
///   encoding of a simulcast, or of the box's two layers, this phone gets.
/// - `m.tiles`: the participants with a tile, this phone's own included; `m.text('pN')` is
///   the text of pN's tile ('' without one).
const MEDIA: &str = r#"async () => {
  const tiles = [...document.querySelectorAll('.tile[data-participant]')];
  const m = {
    video: 0, audio: 0, from: {}, tiles: tiles.map((t) => t.dataset.participant),
    frames: (p) => (m.from[p] ? m.from[p].frames : 0),
    packets: (p) => (m.from[p] ? m.from[p].packets : 0),
    codec: (p) => (m.from[p] && m.from[p].codec) || '',
    width: (p) => (m.from[p] && m.from[p].width) || 0,
    text: (p) => { const t = tiles.find((t) => t.dataset.participant === p); return t ? t.innerText : ''; },
  };
  const pc = window.hearth && window.hearth.pc;
  if (!pc) return m;
  const owner = new Map(); // track id -> the participant whose tile plays it
  for (const t of tiles) {
    const v = t.querySelector('video');
    for (const track of v && v.srcObject ? v.srcObject.getTracks() : []) owner.set(track.id, t.dataset.participant);
  }
  // trackIdentifier is the receiving track's id in Chromium and Firefox; should a browser
  // leave it out, the transceiver of the stat's mid names the track.
  const byMid = new Map(pc.getTransceivers().map((t) => [t.mid, t.receiver.track.id]));
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const who = owner.get(s.trackIdentifier || byMid.get(s.mid));
    const from = who ? (m.from[who] = m.from[who] || { frames: 0, packets: 0 }) : null;
    if (s.kind === 'video') {
      if (s.framesDecoded > 0) m.video++;
      if (from) from.frames += s.framesDecoded || 0;
      const codec = s.codecId && stats.get(s.codecId);
      if (from && codec && s.framesDecoded > 0) from.codec = codec.mimeType;
      if (from && s.frameWidth) from.width = s.frameWidth;
    } else if (s.kind === 'audio') {
      if (s.packetsReceived > 0) m.audio++;
      if (from) from.packets += s.packetsReceived || 0;
    }
  });
  return m;
}"#;

/// An async JS function describing the page for failure messages: the call's state, what the
/// page says, and per RTP stream its codec, packets, frames and keyframe requests; for
/// received video also what was lost, resent and asked again, the width and the freezes.
const PAGE: &str = r#"async () => {
  const message = document.getElementById('message');
  const page = { state: window.hearth ? window.hearth.state : 'no window.hearth', message: message && message.textContent };
  const pc = window.hearth && window.hearth.pc;
  if (!pc) return page;
  page.connection = pc.connectionState;
  page.streams = [];
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type !== 'inbound-rtp' && s.type !== 'outbound-rtp') return;
    const codec = s.codecId && stats.get(s.codecId);
    page.streams.push({ type: s.type, kind: s.kind, mid: s.mid, codec: codec && codec.mimeType,
      packets: s.type === 'inbound-rtp' ? s.packetsReceived : s.packetsSent,
      frames: s.framesDecoded, keyframes: s.keyFramesDecoded, plis: s.pliCount,
      ...(s.type === 'inbound-rtp' && s.kind === 'video' ? { lost: s.packetsLost,
        resent: s.retransmittedPacketsReceived, nacks: s.nackCount, width: s.frameWidth,
        freezes: s.freezeCount } : {}) });
  });
  page.transceivers = pc.getTransceivers().map((t) => [t.mid, t.direction, t.currentDirection]);
  return page;
}"#;

/// JS: tap the button with this id as a person could (it must be shown and enabled).
const TAP: &str = r#"(id) => {
  const b = document.getElementById(id);
  if (!b) throw new Error(`no #${id} on the page`);
  if (b.disabled || b.closest('[hidden]')) throw new Error(`#${id} is hidden or disabled`);
  b.click();
}"#;

/// How often a wait in the page reads `getStats()` (it was 20 ms). Each read is work for the
/// browser's WebRTC threads, the ones that time packets for its bandwidth estimate, and the
/// conditions waited for take seconds. (`video_stops` keeps 20 ms: it measures a latency.)
const POLL_MS: u64 = 100;

/// How much longer than a wait inside the page the protocol call around it may take.
const WAIT_SLACK: Duration = Duration::from_secs(10);

/// What a phone receives, from one `getStats()`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Media {
    /// Remote video tracks that decoded at least one frame.
    pub video: u32,
    /// Remote audio tracks that received at least one packet.
    pub audio: u32,
    /// Per participant ("p0" is the box): what came from them, for those something came from.
    pub from: BTreeMap<String, Received>,
    /// The participants with a tile on the page, this phone's own included.
    pub tiles: Vec<String>,
}

/// What came from one participant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Received {
    /// Video frames decoded.
    pub frames: u64,
    /// Audio packets received.
    pub packets: u64,
    /// The width of the last video frame decoded (0 before any).
    #[serde(default)]
    pub width: u64,
}

impl Media {
    /// Video frames decoded from `participant` (0 if nothing came from them).
    pub fn frames(&self, participant: &str) -> u64 {
        self.from.get(participant).map_or(0, |r| r.frames)
    }

    /// The width of the last video frame decoded from `participant` (0 before any).
    pub fn width(&self, participant: &str) -> u64 {
        self.from.get(participant).map_or(0, |r| r.width)
    }

    /// Audio packets received from `participant` (0 if nothing came from them).
    pub fn packets(&self, participant: &str) -> u64 {
        self.from.get(participant).map_or(0, |r| r.packets)
    }
}

/// How long a join took, from `join_and_wait`.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    /// From the tap on Join.
    pub since_tap: Duration,
    /// From the start of the page's navigation (the link opened), by the page's own clock.
    pub since_navigation: Duration,
}

pub struct Phone {
    browser: Browser,
    /// The name it joined with, or its browser's before it joins (for messages).
    name: String,
}

impl Phone {
    /// A browser of `kind` with a blank page.
    pub async fn launch(kind: BrowserKind) -> Result<Phone> {
        Self::launch_in(kind, None).await
    }

    /// A browser of `kind` with a blank page, inside a network namespace (a phone in the
    /// simulated home, see `home.rs`).
    pub async fn launch_in(kind: BrowserKind, netns: Option<&Netns>) -> Result<Phone> {
        Ok(Phone::on(Browser::launch_in(kind, netns).await?))
    }

    /// A Chromium phone that checks certificates (see `Browser::launch_trusting`).
    pub async fn launch_trusting(
        kind: BrowserKind,
        netns: Option<&Netns>,
        trust: &crate::browser::Trust,
    ) -> Result<Phone> {
        Ok(Phone::on(
            Browser::launch_trusting(kind, netns, trust).await?,
        ))
    }

    /// Launch, open the join link `url`, and tap Join as `name`.
    pub async fn join(kind: BrowserKind, url: &str, name: &str) -> Result<Phone> {
        Phone::join_in(kind, None, url, name).await
    }

    /// `join`, with the browser in a network namespace (a phone of the simulated home).
    pub async fn join_in(
        kind: BrowserKind,
        netns: Option<&Netns>,
        url: &str,
        name: &str,
    ) -> Result<Phone> {
        Phone::on(Browser::launch_in(kind, netns).await?)
            .joined(url, name)
            .await
    }

    /// `join_in` with the fake camera at `fps` frames a second (see
    /// `Browser::launch_in_at_fps`).
    pub async fn join_in_at_fps(
        kind: BrowserKind,
        netns: Option<&Netns>,
        url: &str,
        name: &str,
        fps: u32,
    ) -> Result<Phone> {
        Phone::on(Browser::launch_in_at_fps(kind, netns, fps).await?)
            .joined(url, name)
            .await
    }

    /// A phone on a browser just launched, named after its kind until it joins.
    fn on(browser: Browser) -> Phone {
        let name = format!("{:?}", browser.kind());
        Phone { browser, name }
    }

    /// Open the join link `url` and tap Join as `name`.
    async fn joined(mut self, url: &str, name: &str) -> Result<Phone> {
        self.open(url).await?;
        self.join_as(name).await?;
        Ok(self)
    }

    /// Load `url` afresh (the same link again is a new page: any call on the old one ends).
    pub async fn open(&mut self, url: &str) -> Result<()> {
        self.browser.goto("about:blank").await?;
        self.browser.goto(url).await
    }

    /// Type `name` and tap Join. Returns once tapped; the page joins in the background.
    pub async fn join_as(&mut self, name: &str) -> Result<()> {
        self.name = name.to_string();
        let js = format!("(() => {{ {} }})()", join_js(name));
        self.browser.eval(&js).await?;
        Ok(())
    }

    /// Type `name`, tap Join, then wait in the page until `condition` holds (see `wait_for`):
    /// the times it returns are measured in the page, from the tap and from the navigation.
    pub async fn join_and_wait(
        &mut self,
        name: &str,
        condition: &str,
        within: Duration,
    ) -> Result<Joined> {
        self.name = name.to_string();
        let reply = self
            .wait(&join_js(name), condition, within)
            .await
            .map_err(|e| anyhow!("{} after tapping Join: {e}", self.name))?;
        Ok(Joined {
            since_tap: ms(&reply["took"]),
            since_navigation: ms(&reply["at"]),
        })
    }

    /// The media this phone receives now.
    pub async fn media(&mut self) -> Result<Media> {
        let value = self.browser.eval(&format!("({MEDIA})()")).await?;
        Ok(serde_json::from_value(value)?)
    }

    /// Wait in the page until the JS expression `condition` holds, looking every 20 ms, for at
    /// most `within`; returns how long it took. In `condition`, `m` is the media this phone
    /// receives (see `MEDIA`: `m.video`, `m.audio`, `m.frames('p0')`, `m.packets('p1')`,
    /// `m.tiles`, `m.text('p0')`), and the page's `document` is at hand. On timeout the error
    /// carries the media and the page's state and RTP streams.
    pub async fn wait_for(&mut self, condition: &str, within: Duration) -> Result<Duration> {
        let reply = self
            .wait("", condition, within)
            .await
            .map_err(|e| anyhow!("{}: {e}", self.name))?;
        Ok(ms(&reply["took"]))
    }

    /// Wait in the page until video from `participant` has decoded no new frame for `quiet`;
    /// returns when, after the call, the last new frame came. An error if it still comes
    /// after `within`.
    pub async fn video_stops(
        &mut self,
        participant: &str,
        quiet: Duration,
        within: Duration,
    ) -> Result<Duration> {
        let js = format!(
            r#"(async () => {{
  const media = {MEDIA};
  const t0 = performance.now();
  let last = -1, since = t0;
  for (;;) {{
    const m = await media();
    const frames = m.frames({who}), now = performance.now();
    if (frames !== last) {{ last = frames; since = now; }}
    else if (now - since >= {quiet}) return {{ ok: true, took: since - t0 }};
    if (now - t0 >= {within}) return {{ ok: false, media: m, page: await ({PAGE})() }};
    await new Promise((r) => setTimeout(r, 20));
  }}
}})()"#,
            who = js_string(participant),
            quiet = quiet.as_millis(),
            within = within.as_millis(),
        );
        let reply = self.browser.eval_within(&js, within + WAIT_SLACK).await?;
        if reply["ok"] != true {
            bail!(
                "{}: video from {participant} still came after {within:?}: media {}; page {}",
                self.name,
                reply["media"],
                reply["page"]
            );
        }
        Ok(ms(&reply["took"]))
    }

    /// The text of `participant`'s tile (name and badges such as "Privacy on").
    pub async fn tile_text(&mut self, participant: &str) -> Result<String> {
        let js = format!(
            "(() => {{ const p = {}; const t = document.querySelector(`.tile[data-participant=\"${{p}}\"]`); \
             if (!t) throw new Error(`no tile for ${{p}}`); return t.innerText; }})()",
            js_string(participant)
        );
        let text = self
            .browser
            .eval(&js)
            .await
            .map_err(|e| anyhow!("{}: {e}", self.name))?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    /// Tap the button with this id (`leave`, `mic`, `camera`, `pause-box`, ...). An error if
    /// the page has no such button or it is hidden or disabled.
    pub async fn click(&mut self, id: &str) -> Result<()> {
        let js = format!("(() => {{ ({TAP})({}); }})()", js_string(id));
        self.browser
            .eval(&js)
            .await
            .map_err(|e| anyhow!("{}: {e}", self.name))?;
        Ok(())
    }

    /// The selected ICE candidate pair, as the browser's getStats() reports it (Chromium
    /// names it from the `transport`; Firefox marks the pair `selected`): `{state, local,
    /// remote}`, each side `{address, port, type, relay_protocol}`; null before there is one.
    pub async fn selected_pair(&mut self) -> Result<Value> {
        self.browser.eval(SELECTED_PAIR).await
    }

    /// Evaluate any JS expression in the page (see `Browser::eval`).
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        self.browser.eval(expression).await
    }

    /// The browser underneath, for benchmarks that treat Hearth's pages and others alike.
    pub fn browser_mut(&mut self) -> &mut Browser {
        &mut self.browser
    }

    pub fn kind(&self) -> BrowserKind {
        self.browser.kind()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Close the page as a person closes the tab (it says goodbye from `pagehide`), then
    /// quit the browser.
    pub async fn close(mut self) -> Result<()> {
        // A browser that is already gone has no page to close.
        let _ = self.browser.goto("about:blank").await;
        self.browser.close().await
    }

    /// Run `before` (JS statements), then wait for `condition`; the reply's `took` counts from
    /// just before `before`, its `at` from the navigation.
    async fn wait(&mut self, before: &str, condition: &str, within: Duration) -> Result<Value> {
        let js = format!(
            r#"(async () => {{
  const media = {MEDIA};
  const t0 = performance.now();
  {before}
  for (;;) {{
    const m = await media();
    if (await (
{condition}
    )) return {{ ok: true, took: performance.now() - t0, at: performance.now() }};
    if (performance.now() - t0 >= {within}) return {{ ok: false, media: m, page: await ({PAGE})() }};
    await new Promise((r) => setTimeout(r, {POLL_MS}));
  }}
}})()"#,
            within = within.as_millis(),
        );
        let reply = self.browser.eval_within(&js, within + WAIT_SLACK).await?;
        if reply["ok"] != true {
            bail!(
                "`{condition}` not within {within:?}: media {}; page {}",
                reply["media"],
                reply["page"]
            );
        }
        Ok(reply)
    }
}

/// JS statements: type `name`, tap Join.
fn join_js(name: &str) -> String {
    format!(
        "document.getElementById('name').value = {}; ({TAP})('join');",
        js_string(name)
    )
}

/// A JS string literal (JSON's is one).
fn js_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// Milliseconds from the page as a Duration.
fn ms(value: &Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().unwrap_or(0.0).max(0.0) / 1000.0)
}

const SELECTED_PAIR: &str = r#"(async () => {
  const pc = window.hearth && window.hearth.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  stats.forEach((s) => {
    if (!pair && s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
  });
  if (!pair) return null;
  const side = (c) => c && { address: c.address || c.ip, port: c.port, type: c.candidateType,
                             relay_protocol: c.relayProtocol || null };
  return { state: pair.state, local: side(stats.get(pair.localCandidateId)),
           remote: side(stats.get(pair.remoteCandidateId)) };
})()"#;
