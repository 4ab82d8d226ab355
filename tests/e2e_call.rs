//! Real browsers, the real join page, the real daemon: phones calling each other through
//! Hearth's SFU. Media is proven with `RTCPeerConnection.getStats()`, not with the DOM.

use std::time::Duration;

use anyhow::Result;
use hearth_test_support::{BrowserKind, Daemon, Phone};

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// JS condition: video decoded and audio received from each of `ids`.
fn sees_and_hears(ids: &[&str]) -> String {
    let each: Vec<String> = ids
        .iter()
        .map(|id| format!("m.frames('{id}') > 0 && m.packets('{id}') > 0"))
        .collect();
    each.join(" && ")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_phones_then_one_leaves_and_one_joins_late() -> Result<()> {
    let daemon = Daemon::start("e2e")?;
    let url = daemon.join_url.clone();

    // Chromium first sends H.264; Firefox here decodes no H.264, so the room moves to VP8.
    let mut ann = Phone::join(BrowserKind::Chromium, &url, "Ann").await?;
    let mut fox = Phone::join(BrowserKind::Firefox, &url, "Fox").await?;
    let mut cat = Phone::join(BrowserKind::Chromium, &url, "Cat").await?;

    for phone in [&mut ann, &mut fox, &mut cat] {
        phone
            .wait_for("m.video >= 2 && m.audio >= 2", secs(20))
            .await?;
    }
    let status = daemon.status()?;
    assert_eq!(
        status["participants"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert_eq!(status["video_codec"], "VP8", "{status}");
    // Each phone's media comes from the right tile, in Chromium and in Firefox alike.
    let a = daemon.participant_id("Ann")?;
    let f = daemon.participant_id("Fox")?;
    let c = daemon.participant_id("Cat")?;
    for (phone, others) in [
        (&mut ann, [&f, &c]),
        (&mut fox, [&a, &c]),
        (&mut cat, [&a, &f]),
    ] {
        let others = others.map(String::as_str);
        phone.wait_for(&sees_and_hears(&others), secs(5)).await?;
    }

    // Cat leaves: the others lose Cat's tile within 5 s.
    cat.click("leave").await?;
    for phone in [&mut ann, &mut fox] {
        phone
            .wait_for(&format!("!m.tiles.includes('{c}')"), secs(5))
            .await?;
        let names = phone.eval("document.body.innerText").await?;
        assert!(
            !names.as_str().unwrap_or_default().contains("Cat"),
            "{}: {names}",
            phone.name()
        );
    }
    cat.close().await?;

    // Dan joins late and decodes both publishers' video (the SFU asks the publishers for
    // keyframes as soon as Dan subscribes; how soon is a figure of `make bench`).
    let mut dan = Phone::join(BrowserKind::Chromium, &url, "Dan").await?;
    dan.wait_for("m.video >= 2", secs(10)).await?;
    // And the others now see and hear Dan.
    let d = daemon.participant_id("Dan")?;
    for phone in [&mut ann, &mut fox] {
        phone.wait_for(&sees_and_hears(&[&d]), secs(10)).await?;
    }

    for phone in [ann, fox, dan] {
        phone.close().await?;
    }
    Ok(())
}
