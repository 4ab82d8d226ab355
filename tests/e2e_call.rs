//! Real browsers, the real join page, the real daemon: phones calling each other through
//! Hearth's SFU. Media is proven with `RTCPeerConnection.getStats()`, not with the DOM.

use hearth_test_support as support;

use anyhow::{bail, Result};
use support::browser::{Browser, BrowserKind};
use support::daemon::Daemon;

/// Counts of remote tracks with media: inbound video that decoded frames, inbound audio
/// that received packets.
const MEDIA: &str = r#"(async () => {
  const pc = window.hearth && window.hearth.pc;
  if (!pc) return { video: 0, audio: 0 };
  let video = 0, audio = 0;
  (await pc.getStats()).forEach(s => {
    if (s.type !== 'inbound-rtp') return;
    if (s.kind === 'video' && s.framesDecoded > 0) video++;
    if (s.kind === 'audio' && s.packetsReceived > 0) audio++;
  });
  return { video, audio };
})()"#;

/// Per inbound track detail, for failure messages.
const DETAIL: &str = r#"(async () => {
  const pc = window.hearth && window.hearth.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  const out = [];
  stats.forEach(s => {
    const codec = s.codecId && stats.get(s.codecId);
    if (s.type === 'outbound-rtp') out.push({ out: s.kind, codec: codec && codec.mimeType, packets: s.packetsSent });
    if (s.type !== 'inbound-rtp') return;
    out.push({ kind: s.kind, mid: s.mid, codec: codec && codec.mimeType, packets: s.packetsReceived,
      frames: s.framesReceived, decoded: s.framesDecoded, keyframes: s.keyFramesDecoded, plis: s.pliCount });
  });
  return { inbound: out, transceivers: pc.getTransceivers().map(t => [t.mid, t.direction, t.currentDirection]) };
})()"#;

/// Run `condition` (a JS expression, may be async) in the page until it is truthy or
/// `ms` pass; returns the milliseconds it took, or -1. The wait happens inside the page so
/// the measurement does not include protocol round trips.
fn wait_in_page(condition: &str, ms: u32) -> String {
    format!(
        r#"(async () => {{
  const t0 = performance.now();
  while (performance.now() - t0 < {ms}) {{
    if (await ({condition})) return performance.now() - t0;
    await new Promise(r => setTimeout(r, 20));
  }}
  return -1;
}})()"#
    )
}

fn has_media(videos: u32, audios: u32) -> String {
    format!("(async () => {{ const m = await {MEDIA}; return m.video >= {videos} && m.audio >= {audios}; }})()")
}

async fn open_and_join(kind: BrowserKind, url: &str, name: &str) -> Result<Browser> {
    let mut browser = Browser::launch(kind).await?;
    browser.goto(url).await?;
    browser
        .eval(&format!(
            "(() => {{ document.getElementById('name').value = {name:?}; document.getElementById('join').click(); return true; }})()"
        ))
        .await?;
    Ok(browser)
}

async fn elapsed(browser: &mut Browser, condition: &str, ms: u32) -> Result<f64> {
    let value = browser.eval(&wait_in_page(condition, ms)).await?;
    Ok(value.as_f64().unwrap_or(-1.0))
}

async fn media_of(browser: &mut Browser) -> Result<serde_json::Value> {
    browser.eval(DETAIL).await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_phones_then_one_leaves_and_one_joins_late() -> Result<()> {
    let daemon = Daemon::start("e2e")?;
    let url = daemon.join_url.clone();

    // Chromium first sends H.264; Firefox here decodes no H.264, so the room moves to VP8.
    let mut ann = open_and_join(BrowserKind::Chromium, &url, "Ann").await?;
    let mut fox = open_and_join(BrowserKind::Firefox, &url, "Fox").await?;
    let mut cat = open_and_join(BrowserKind::Chromium, &url, "Cat").await?;

    for (name, browser) in [("Ann", &mut ann), ("Fox", &mut fox), ("Cat", &mut cat)] {
        let took = elapsed(browser, &has_media(2, 2), 20_000).await?;
        if took < 0.0 {
            bail!(
                "{name} did not decode both others' video and audio: {} (status {})",
                media_of(browser).await?,
                daemon.status()?
            );
        }
    }
    let status = daemon.status()?;
    assert_eq!(
        status["participants"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert_eq!(status["video_codec"], "VP8", "{status}");

    // Cat leaves: the others lose Cat's tile within 5 s.
    cat.eval("(() => { document.getElementById('leave').click(); return true; })()")
        .await?;
    let one_other_tile = "document.querySelectorAll('.tile[data-participant]').length === 2";
    for (name, browser) in [("Ann", &mut ann), ("Fox", &mut fox)] {
        let took = elapsed(browser, one_other_tile, 5_000).await?;
        assert!(took >= 0.0, "{name} still shows Cat's tile after 5 s");
        let names = browser.eval("document.body.innerText").await?;
        assert!(
            !names.as_str().unwrap_or_default().contains("Cat"),
            "{name}: {names}"
        );
    }
    cat.close().await?;

    // Dan joins late and decodes both publishers' video within 1 s of tapping Join
    // (the SFU asks the publishers for keyframes as soon as Dan subscribes).
    let mut dan = Browser::launch(BrowserKind::Chromium).await?;
    dan.goto(&url).await?;
    let took = dan
        .eval(&format!(
            "(async () => {{ document.getElementById('name').value = 'Dan'; document.getElementById('join').click(); return await {}; }})()",
            wait_in_page(&has_media(2, 0), 10_000)
        ))
        .await?
        .as_f64()
        .unwrap_or(-1.0);
    eprintln!("late joiner: first frames of both publishers decoded {took:.0} ms after Join");
    assert!(
        took >= 0.0,
        "Dan decoded nothing: {}",
        media_of(&mut dan).await?
    );
    // And the others now receive Dan.
    for (name, browser) in [("Ann", &mut ann), ("Fox", &mut fox)] {
        let tiles = "document.querySelectorAll('.tile[data-participant]').length === 3";
        assert!(
            elapsed(browser, tiles, 5_000).await? >= 0.0,
            "{name} has no tile for Dan"
        );
    }

    for browser in [ann, fox, dan] {
        browser.close().await?;
    }
    Ok(())
}
