//! The box in its own call, on the dev board (test camera with clock, test tone, off-screen
//! display, counted speaker), with real headless browsers as phones.

use hearth_test_support as support;

use anyhow::{bail, Result};
use support::browser::{Browser, BrowserKind};
use support::daemon::Daemon;

/// Frames decoded from the box (its stream id is "p0") and media from everyone.
const MEDIA: &str = r#"(async () => {
  const pc = window.hearth && window.hearth.pc;
  if (!pc) return { boxVideo: 0, boxAudio: 0, video: 0, audio: 0 };
  const tile = document.querySelector('.tile[data-participant="p0"] video');
  const stream = tile && tile.srcObject;
  const ids = stream ? stream.getTracks().map(t => t.id) : [];
  let boxVideo = 0, boxAudio = 0, video = 0, audio = 0;
  (await pc.getStats()).forEach(s => {
    if (s.type !== 'inbound-rtp') return;
    const fromBox = ids.includes(s.trackIdentifier);
    if (s.kind === 'video' && s.framesDecoded > 0) { video++; if (fromBox) boxVideo = s.framesDecoded; }
    if (s.kind === 'audio' && s.packetsReceived > 0) { audio++; if (fromBox) boxAudio = s.packetsReceived; }
  });
  return { boxVideo, boxAudio, video, audio };
})()"#;

fn wait_in_page(condition: &str, ms: u32) -> String {
    format!(
        r#"(async () => {{
  const t0 = performance.now();
  while (performance.now() - t0 < {ms}) {{
    const m = await {MEDIA};
    if ({condition}) return performance.now() - t0;
    await new Promise(r => setTimeout(r, 20));
  }}
  return -1;
}})()"#
    )
}

const JOIN: &str = "(() => { document.getElementById('name').value = NAME; document.getElementById('join').click(); return true; })()";

async fn phone(url: &str, name: &str) -> Result<Browser> {
    let mut browser = Browser::launch(BrowserKind::Chromium).await?;
    browser.goto(url).await?;
    browser
        .eval(&JOIN.replace("NAME", &format!("{name:?}")))
        .await?;
    Ok(browser)
}

async fn waited(browser: &mut Browser, condition: &str, ms: u32) -> Result<f64> {
    Ok(browser
        .eval(&wait_in_page(condition, ms))
        .await?
        .as_f64()
        .unwrap_or(-1.0))
}

/// Mean brightness (0–255) of a rectangle of an RGB/RGBA PNG.
fn brightness(png: &[u8], x0: u32, y0: u32, w: u32, h: u32) -> Result<f64> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info()?;
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels)?;
    let channels = info.color_type.samples() as u32;
    let mut sum = 0u64;
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            let i = ((y * info.width + x) * channels) as usize;
            sum += pixels[i..i + 3].iter().map(|&v| v as u64).sum::<u64>() / 3;
        }
    }
    Ok(sum as f64 / (w * h) as f64)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_box_sees_hears_and_is_seen_and_heard() -> Result<()> {
    // A smaller picture than the boards' 720p30: three browsers and the box share two cores.
    let daemon = Daemon::start_with(
        &support::daemon::temp_dir("e2e-box"),
        "[board.camera]\nwidth = 640\nheight = 360\nframerate = 30\n[board.display]\nwidth = 640\nheight = 360\n",
    )?;
    let url = daemon.join_url.clone();
    let mut ann = phone(&url, "Ann").await?;
    let mut bob = phone(&url, "Bob").await?;

    // Each phone decodes the box's video and receives its audio, and the other phone's.
    for (name, browser) in [("Ann", &mut ann), ("Bob", &mut bob)] {
        let took = waited(
            browser,
            "m.boxVideo > 0 && m.boxAudio > 0 && m.video >= 2 && m.audio >= 2",
            20_000,
        )
        .await?;
        if took < 0.0 {
            bail!(
                "{name}: {} / {}",
                browser.eval(MEDIA).await?,
                daemon.status()?
            );
        }
    }

    // The box decodes both phones' video and audio, and its speaker plays.
    let status = daemon.status_until("box decodes both phones", |s| {
        let screen = &s["box"]["screen"];
        ["p1", "p2"].iter().all(|p| {
            screen[p]["video_frames"].as_u64().unwrap_or(0) > 10
                && screen[p]["audio_buffers"].as_u64().unwrap_or(0) > 10
        })
    })?;
    let samples = status["box"]["speaker_samples"].as_u64().unwrap_or(0);
    assert!(samples > 48_000, "speaker got {samples} samples");

    // The TV shows a tile per phone: two side by side, both lit, in a 640x360 picture.
    let file = daemon.state_dir.join("tv.png");
    let (ok, _, err) = daemon.cli(&["snapshot", file.to_str().unwrap_or_default()]);
    assert!(ok, "{err}");
    let png = std::fs::read(&file)?;
    let left = brightness(&png, 40, 80, 240, 200)?;
    let right = brightness(&png, 360, 80, 240, 200)?;
    assert!(
        left > 20.0 && right > 20.0,
        "tiles look empty: left {left:.0}, right {right:.0}"
    );

    // A late joiner decodes the box's video within 1 s: its keyframe request reaches the encoder.
    // (Bob leaves first: two cores do not run four browsers, two decoders and an encoder well.)
    bob.close().await?;
    let mut cat = Browser::launch(BrowserKind::Chromium).await?;
    cat.goto(&url).await?;
    let took = cat
        .eval(&format!(
            "(async () => {{ {}; return await {}; }})()",
            JOIN.replace("NAME", "'Cat'"),
            wait_in_page("m.boxVideo > 0", 10_000)
        ))
        .await?
        .as_f64()
        .unwrap_or(-1.0);
    eprintln!("late joiner decoded the box's video {took:.0} ms after Join");
    assert!(
        (0.0..1000.0).contains(&took),
        "took {took:.0} ms: {}",
        cat.eval(MEDIA).await?
    );
    cat.close().await?;

    // Unplug the (simulated) camera mid-call: the call goes on, the phones are told, and the
    // box's video resumes when it is back.
    let (ok, _, err) = daemon.cli(&["simulate", "camera", "unplug"]);
    assert!(ok, "{err}");
    assert_ne!(daemon.status()?["box"]["camera"], "running");
    let told = ann
        .eval("document.querySelector('.tile[data-participant=\"p0\"]').innerText")
        .await?;
    assert!(
        told.as_str()
            .unwrap_or_default()
            .contains("camera unavailable"),
        "Ann sees {told}"
    );
    let before = ann.eval(MEDIA).await?["boxVideo"].as_f64().unwrap_or(0.0);
    let (ok, _, err) = daemon.cli(&["simulate", "camera", "plug"]);
    assert!(ok, "{err}");
    let resumed = waited(&mut ann, &format!("m.boxVideo > {before} + 10"), 10_000).await?;
    assert!(resumed >= 0.0, "the box's video did not resume");
    let status = daemon.status()?;
    assert_eq!(status["box"]["camera"], "running");
    assert_eq!(
        status["participants"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    ann.close().await?;
    Ok(())
}
