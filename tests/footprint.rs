//! What a call costs the daemon in memory and file descriptors: the figures behind
//! `MemoryMax` and `LimitNOFILE` in systemd/hearth.service. Ignored by default (three
//! browsers for a minute); run it with
//! `./tests/in-netns cargo test --release --test footprint -- --ignored --nocapture`.

use std::time::Duration;

use anyhow::{bail, Result};
use hearth_test_support::attack::{self, Sampler};
use hearth_test_support::browser::{Browser, BrowserKind};
use hearth_test_support::Daemon;

const PHONES: usize = 3;
const WINDOW: Duration = Duration::from_secs(60);

/// True once the page has decoded video from `videos` others, within 30 s.
fn decodes(videos: usize) -> String {
    format!(
        r#"(async () => {{
  const t0 = performance.now();
  while (performance.now() - t0 < 30000) {{
    const pc = window.hearth && window.hearth.pc;
    let n = 0;
    if (pc) (await pc.getStats()).forEach(s => {{ if (s.type === 'inbound-rtp' && s.kind === 'video' && s.framesDecoded > 0) n++; }});
    if (n >= {videos}) return true;
    await new Promise(r => setTimeout(r, 50));
  }}
  return false;
}})()"#
    )
}

const JOIN: &str = "(() => { document.getElementById('name').value = 'Phone'; document.getElementById('join').click(); return true; })()";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "three browsers for a minute; run by hand for the unit's figures"]
async fn box_with_three_phones() -> Result<()> {
    let daemon = Daemon::start_with_box("footprint")?;
    let pid = daemon.pid();
    let idle_rss = attack::rss_mib(pid)?;
    let idle_fds = attack::open_fds(pid)?;
    let rss = Sampler::start(Duration::from_millis(200), move || {
        attack::rss_mib(pid).ok()
    });
    let fds = Sampler::start(Duration::from_millis(200), move || {
        attack::open_fds(pid).ok().map(|n| n as f64)
    });
    let mut phones = Vec::new();
    for _ in 0..PHONES {
        let mut phone = Browser::launch(BrowserKind::Chromium).await?;
        phone.goto(&daemon.join_url).await?;
        phone.eval(JOIN).await?;
        phones.push(phone);
    }
    // The box's video and the other phones'.
    for phone in &mut phones {
        if phone.eval(&decodes(PHONES)).await? != serde_json::Value::Bool(true) {
            bail!(
                "a phone did not decode {PHONES} videos: {}",
                daemon.status()?
            );
        }
    }
    tokio::time::sleep(WINDOW).await; // a measurement window, not synchronisation
    let status = daemon.status()?;
    let (peak_rss, peak_fds) = (rss.max().await, fds.max().await);
    let hwm = attack::status_kib(pid, "VmHWM")? as f64 / 1024.0;
    println!(
        "box + {PHONES} phones: RSS {idle_rss:.0} MiB before, peak {peak_rss:.0} MiB (VmHWM {hwm:.0} MiB); \
         fds {idle_fds} before, peak {peak_fds}; {} participants",
        attack::participants(&status)
    );
    for phone in phones {
        phone.close().await?;
    }
    Ok(())
}
