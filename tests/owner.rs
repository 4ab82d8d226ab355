//! The owner's phone, end to end on the dev board with real browsers: pairing by the switch
//! pattern at the box, what a guest can and cannot reach, a link made, used, removed and
//! revoked on the owner page, the box renamed and paused from it, and knocks answered on the
//! page and by a flick of the switch.
//!
//! The owner code the TV shows is read with `hearth owners --pairing-url` (the control
//! socket, the box's own root of trust, which can already photograph the TV with `hearth
//! snapshot`): the test stands in for a person scanning the TV.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hearth_test_support::{temp_dir, BrowserKind, Daemon, Phone};
use serde_json::{json, Value};

/// A small box: test camera and tone at a size two cores keep up with.
const SMALL_BOX: &str = "[board.camera]\nwidth = 640\nheight = 360\nframerate = 15\n[board.display]\nwidth = 640\nheight = 360\n";

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn js(text: &str) -> String {
    Value::from(text).to_string()
}

/// `hearth ARGS...` must succeed; its output.
fn cli_ok(daemon: &Daemon, args: &[&str]) -> Result<String> {
    let (ok, out, err) = daemon.cli(args);
    ensure!(ok, "hearth {}: {err}", args.join(" "));
    Ok(out)
}

/// The switch pattern at the box (on, off, on, from off; each flip answered once it has
/// settled), then the owner page link the TV shows for a minute.
fn owner_pattern(daemon: &Daemon) -> Result<String> {
    for state in ["off", "on", "off", "on"] {
        cli_ok(daemon, &["simulate", "switch", state])?;
    }
    let url = cli_ok(daemon, &["owners", "--pairing-url"])?;
    Ok(url.trim().to_string())
}

/// A browser opens the owner code's link, names itself `name`, and is an owner: the owner
/// page shows what the box said.
async fn pair(kind: BrowserKind, url: &str, name: &str) -> Result<Phone> {
    let mut owner = Phone::launch(kind).await?;
    owner.open(url).await?;
    owner
        .wait_for("document.body.dataset.view === 'pairing'", secs(5))
        .await?;
    owner
        .eval(&format!(
            "(() => {{ document.getElementById('phone-name').value = {}; }})()",
            js(name)
        ))
        .await?;
    owner.click("pair").await?;
    owner
        .wait_for(
            "hearthOwner.view === 'owner' && hearthOwner.polls > 0",
            secs(10),
        )
        .await?;
    Ok(owner)
}

/// From `phone`'s page, as its own scripts could: POST `body` to `path`, with the
/// Authorization header `authorization` (a JS expression; null for none). The status and
/// the JSON answer.
async fn post_from(
    phone: &mut Phone,
    path: &str,
    authorization: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let script = format!(
        r#"(async () => {{
  const headers = {{ 'Content-Type': 'application/json' }};
  const auth = {authorization};
  if (auth) headers.Authorization = auth;
  const r = await fetch({path}, {{ method: 'POST', headers, body: {body} }});
  let answer = null;
  try {{ answer = await r.json(); }} catch (_) {{ /* not JSON */ }}
  return {{ status: r.status, answer }};
}})()"#,
        path = js(path),
        body = js(&body.to_string()),
    );
    let reply = phone.eval(&script).await?;
    let status = reply["status"].as_u64().context("no status")? as u16;
    Ok((status, reply["answer"].clone()))
}

/// The owner page's credential, as its page keeps it.
const OWN_CREDENTIAL: &str =
    "'Bearer ' + JSON.parse(localStorage.getItem('hearth.owner')).credential";

/// Tap the button of class `button` in the row of list `list` that mentions `text`, once
/// the page shows that row.
async fn tap_row(phone: &mut Phone, list: &str, text: &str, button: &str) -> Result<()> {
    let row = format!(
        "[...document.querySelectorAll('#{list} li')].find((li) => li.innerText.includes({}))",
        js(text)
    );
    phone.wait_for(&format!("!!{row}"), secs(10)).await?;
    phone
        .eval(&format!(
            "(() => {{ const b = ({row}).querySelector('button.{button}'); \
             if (!b || b.disabled) throw new Error('no {button} button'); b.click(); }})()"
        ))
        .await?;
    Ok(())
}

/// Make a link on the owner page; the link it shows.
async fn make_link(owner: &mut Phone, name: &str, knock: bool) -> Result<String> {
    owner
        .eval(&format!(
            "(() => {{ document.getElementById('link-name').value = {}; \
             document.getElementById('link-knock').checked = {knock}; \
             document.getElementById('new-link').value = ''; }})()",
            js(name)
        ))
        .await?;
    owner.click("make").await?;
    owner
        .wait_for(
            "document.getElementById('new-link').value.includes('/join#')",
            secs(10),
        )
        .await?;
    let url = owner
        .eval("document.getElementById('new-link').value")
        .await?;
    Ok(url.as_str().unwrap_or_default().to_string())
}

/// The page's message line contains `text` and the call's state is `state`.
fn page_says(state: &str, text: &str) -> String {
    format!(
        "hearth.state === {} && document.getElementById('message').textContent.includes({})",
        js(state),
        js(text)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_is_paired_at_the_box_and_a_guest_reaches_no_owner_action() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("owner-pair"), SMALL_BOX)?;
    let (ok, _, err) = daemon.cli(&["owners", "--pairing-url"]);
    assert!(
        !ok && err.contains("No owner code"),
        "before the pattern: {err}"
    );

    // Without a credential the page says how to become an owner.
    let mut owner = Phone::launch(BrowserKind::Chromium).await?;
    owner
        .open(&format!("https://127.0.0.1:{}/owner", daemon.https_port))
        .await?;
    owner
        .wait_for(
            "document.body.dataset.view === 'stranger' && \
             document.getElementById('stranger').innerText.includes('on, off, on')",
            secs(5),
        )
        .await?;
    owner.close().await?;

    let url = owner_pattern(&daemon)?;
    assert!(url.contains("/owner#pair="), "{url}");
    let mut owner = pair(BrowserKind::Chromium, &url, "Mum's phone").await?;
    // The code left the address bar; the credential stayed in the browser.
    let page = owner
        .eval("({ hash: location.hash, saved: localStorage.getItem('hearth.owner') || '' })")
        .await?;
    assert_eq!(page["hash"], "", "{page}");
    assert!(page["saved"].as_str().unwrap().contains("credential"));
    let owners: Value = serde_json::from_str(&cli_ok(&daemon, &["owners"])?)?;
    assert_eq!(owners[0]["name"], "Mum's phone", "{owners}");
    let mum = owners[0]["id"].as_str().unwrap().to_string();
    // The owner page shows the box: its links (the TV's among them) and its health.
    owner
        .wait_for(
            "document.getElementById('links').innerText.includes('TV screen') && \
             document.getElementById('health').innerText.includes('Camera')",
            secs(10),
        )
        .await?;
    let (ok, _, _) = daemon.cli(&["owners", "--pairing-url"]);
    assert!(!ok, "the code works once");

    // A guest: in the call with a join link, nothing more. (Privacy off, so that a pause
    // would show.)
    cli_ok(&daemon, &["simulate", "switch", "off"])?;
    let guest_url = daemon.invite("Guest")?;
    let guest_token = guest_url.split_once('#').unwrap().1.to_string();
    let mut guest = Phone::join(BrowserKind::Firefox, &guest_url, "Guest").await?;
    guest
        .wait_for("hearth.state === 'in-call'", secs(15))
        .await?;
    let status = json!({ "cmd": "status" });
    let guest_bearer = js(&format!("Bearer {guest_token}"));
    // Every owner action without a credential; the common ones with the guest's join token
    // (each of those counts as a bad credential from this address, and ten a minute would
    // make the box wait a minute before it listens to this address again).
    let owner_actions = [
        status.clone(),
        json!({ "cmd": "invite_create", "name": "Eve", "ttl_secs": 3600, "knock": false }),
        json!({ "cmd": "invite_list" }),
        json!({ "cmd": "invite_revoke", "id": "0" }),
        json!({ "cmd": "knock_answer", "knock": 1, "let_in": true }),
        json!({ "cmd": "remove", "participant": "p1" }),
        json!({ "cmd": "privacy_log" }),
        json!({ "cmd": "rename", "name": "Eve's box" }),
        json!({ "cmd": "owners" }),
        json!({ "cmd": "owner_revoke", "id": "0" }),
        json!({ "cmd": "privacy", "state": "on" }),
    ];
    let with_guest_token = [0, 1, 5, 6];
    for (i, body) in owner_actions.iter().enumerate() {
        let mut tries = vec![("no credential", "null")];
        if with_guest_token.contains(&i) {
            tries.push(("the guest's join token", guest_bearer.as_str()));
        }
        for (what, auth) in tries {
            let (code, answer) = post_from(&mut guest, "/owner/api", auth, body).await?;
            assert_eq!(code, 401, "{what}, {body}: {answer}");
            assert_eq!(
                answer["error"], "This phone is not an owner of the box.",
                "{what}"
            );
        }
    }
    let status_now = daemon.status()?;
    assert_eq!(status_now["box_name"], "Home", "{status_now}");
    assert_eq!(status_now["privacy"]["on"], false, "{status_now}");
    // A join token is no owner code either, nor is the used one.
    for token in [guest_token.as_str(), url.split_once("#pair=").unwrap().1] {
        let body = json!({ "token": token, "name": "Eve" });
        let (code, answer) = post_from(&mut guest, "/owner/api/pair", "null", &body).await?;
        assert_eq!(code, 403, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("expired or was used"),
            "{answer}"
        );
    }

    // A credential that was withdrawn: a phone paired with a second code, then revoked.
    let second = owner_pattern(&daemon)?;
    let token = second.split_once("#pair=").unwrap().1;
    let body = json!({ "token": token, "name": "Old phone" });
    let (code, paired) = post_from(&mut guest, "/owner/api/pair", "null", &body).await?;
    assert_eq!(code, 200, "{paired}");
    let old = js(&format!(
        "Bearer {}",
        paired["credential"].as_str().unwrap()
    ));
    let (code, _) = post_from(&mut guest, "/owner/api", &old, &status).await?;
    assert_eq!(code, 200, "an owner until revoked");
    cli_ok(
        &daemon,
        &["owners", "--revoke", paired["id"].as_str().unwrap()],
    )?;
    let (code, answer) = post_from(&mut guest, "/owner/api", &old, &status).await?;
    assert_eq!(code, 401, "{answer}");
    assert_eq!(answer["error"], "This phone's owner access was withdrawn.");

    // What no phone may ask, owner or not: files on the box, simulated devices, pairing
    // from inside, the pairing code, privacy off.
    let snapshot = daemon.state_dir.join("owner-snapshot.png");
    let forbidden = [
        json!({ "cmd": "snapshot", "path": snapshot.display().to_string() }),
        json!({ "cmd": "simulate", "simulation": { "switch": { "state": "off" } } }),
        json!({ "cmd": "pair_owner", "token": token, "name": "Eve" }),
        json!({ "cmd": "as_owner", "credential": "x", "request": { "cmd": "status" } }),
        json!({ "cmd": "owner_pairing_url" }),
        json!({ "cmd": "privacy", "state": "off" }),
    ];
    for body in &forbidden {
        let (code, answer) = post_from(&mut owner, "/owner/api", OWN_CREDENTIAL, body).await?;
        assert_eq!(code, 403, "{body}: {answer}");
        assert_eq!(
            answer["error"], "That is not something an owner's phone can do.",
            "{body}"
        );
        let (code, _) = post_from(&mut guest, "/owner/api", "null", body).await?;
        assert_eq!(code, 401, "a guest is not even asked what: {body}");
    }
    assert!(!snapshot.exists(), "a file was written");
    let status_now = daemon.status()?;
    assert_eq!(status_now["privacy"]["on"], true, "the switch is still on");
    assert_eq!(status_now["privacy"]["switch"], "simulated, on");
    // The guest is still in the call, and on the owner page it is a stranger.
    guest
        .wait_for("hearth.state === 'in-call'", secs(1))
        .await?;
    guest
        .open(&format!("https://127.0.0.1:{}/owner", daemon.https_port))
        .await?;
    guest
        .wait_for("document.body.dataset.view === 'stranger'", secs(5))
        .await?;

    // Withdrawn from the CLI, the owner page says so at its next look.
    cli_ok(&daemon, &["owners", "--revoke", &mum])?;
    owner
        .wait_for(
            "document.body.dataset.view === 'stranger' && \
             document.getElementById('message').textContent.includes('withdrawn') && \
             !localStorage.getItem('hearth.owner')",
            secs(10),
        )
        .await?;
    guest.close().await?;
    owner.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_for_grandma_made_on_the_owner_page_works_until_revoked_there() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("owner-link"), SMALL_BOX)?;
    let url = owner_pattern(&daemon)?;
    let mut owner = pair(BrowserKind::Chromium, &url, "Dad").await?;
    cli_ok(&daemon, &["simulate", "switch", "off"])?;

    let link = make_link(&mut owner, "Grandma", false).await?;
    owner
        .wait_for(
            "document.getElementById('links').innerText.includes('Grandma')",
            secs(10),
        )
        .await?;
    let mut grandma = Phone::join(BrowserKind::Chromium, &link, "Grandma").await?;
    grandma
        .wait_for("hearth.state === 'in-call' && m.frames('p0') > 0", secs(20))
        .await?;

    // Who is in the call, with a Remove button.
    tap_row(&mut owner, "people", "Grandma", "remove").await?;
    grandma
        .wait_for(
            &page_says("refused", "Someone at home ended your part in the call"),
            secs(10),
        )
        .await?;
    // The link still works: she joins again.
    grandma.join_as("Grandma").await?;
    grandma
        .wait_for("hearth.state === 'in-call'", secs(15))
        .await?;

    // Revoked on the owner page: the next join with it is refused.
    tap_row(&mut owner, "links", "Grandma", "revoke").await?;
    owner
        .wait_for(
            "!document.getElementById('links').innerText.includes('Grandma')",
            secs(10),
        )
        .await?;
    let list: Value = serde_json::from_str(&cli_ok(&daemon, &["invite", "--list"])?)?;
    let revoked = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "Grandma")
        .context("no Grandma link")?;
    assert_eq!(revoked["state"], "revoked", "{list}");
    grandma.open(&link).await?;
    grandma.join_as("Grandma").await?;
    grandma
        .wait_for(&page_says("refused", "withdrawn"), secs(10))
        .await?;
    grandma.close().await?;
    owner.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_page_renames_and_pauses_the_box_and_reads_the_privacy_log() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("owner-box"), SMALL_BOX)?;
    let url = owner_pattern(&daemon)?;
    let mut owner = pair(BrowserKind::Chromium, &url, "Mum").await?;
    cli_ok(&daemon, &["simulate", "switch", "off"])?;
    let mut ann = Phone::join(BrowserKind::Chromium, &daemon.invite("Ann")?, "Ann").await?;
    ann.wait_for("m.frames('p0') > 0", secs(20)).await?;

    owner
        .eval("(() => { document.getElementById('new-name').value = 'Granny flat'; })()")
        .await?;
    owner.click("save-name").await?;
    ann.wait_for("m.text('p0').includes('Granny flat')", secs(10))
        .await?;
    assert_eq!(daemon.status()?["box_name"], "Granny flat");
    owner
        .wait_for(
            "document.getElementById('box-name').textContent === 'Granny flat'",
            secs(10),
        )
        .await?;

    // Pause the box: privacy on at once, named in the log; only the switch releases it.
    owner
        .wait_for(
            "!document.getElementById('pause').hidden && \
             document.getElementById('health').innerText.includes('off: camera and microphone on')",
            secs(10),
        )
        .await?;
    owner.click("pause").await?;
    ann.wait_for("m.text('p0').includes('Privacy on')", secs(10))
        .await?;
    assert_eq!(daemon.status()?["privacy"]["paused_by_software"], true);
    owner
        .wait_for(
            "document.getElementById('pause').hidden && !document.getElementById('paused').hidden",
            secs(10),
        )
        .await?;
    let (ok, _, err) = daemon.cli(&["privacy", "off"]);
    assert!(
        !ok && err.contains("privacy stays on"),
        "released without the switch: {err}"
    );
    owner
        .eval("(() => { document.getElementById('log-card').open = true; })()")
        .await?;
    owner
        .wait_for(
            "document.getElementById('privacy-log').innerText.includes('owner \"Mum\"')",
            secs(10),
        )
        .await?;
    let log = std::fs::read_to_string(daemon.state_dir.join("privacy.log"))?;
    assert!(
        log.contains("privacy on (software (owner \"Mum\" (")
            && log.contains("from the owner page"),
        "{log}"
    );
    ann.close().await?;
    owner.close().await?;
    Ok(())
}

/// The joiner waits: nothing of the call on its page (no peer connection, no roster, no
/// tiles), the waiting message shown.
const WAITS_WITH_NOTHING: &str = "hearth.state === 'waiting' && !hearth.pc && hearth.roster.length === 0 \
     && document.querySelectorAll('.tile').length === 0 && document.getElementById('call').hidden \
     && document.getElementById('message').textContent.includes('Waiting for someone at home to let you in')";

/// `phone` keeps waiting with nothing for `hold`, looking every 100 ms.
async fn keeps_waiting(phone: &mut Phone, hold: Duration) -> Result<()> {
    let script = format!(
        r#"(async () => {{
  const t0 = performance.now();
  while (performance.now() - t0 < {ms}) {{
    if (!({WAITS_WITH_NOTHING})) return {{ ok: false, at: performance.now() - t0, state: hearth.state,
      message: document.getElementById('message').textContent }};
    await new Promise((r) => setTimeout(r, 100));
  }}
  return {{ ok: true }};
}})()"#,
        ms = hold.as_millis()
    );
    let reply = phone.eval(&script).await?;
    ensure!(reply["ok"] == true, "stopped waiting: {reply}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_knock_waits_with_nothing_until_the_owner_page_lets_in_or_declines() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("owner-knock"), SMALL_BOX)?;
    let url = owner_pattern(&daemon)?;
    let mut owner = pair(BrowserKind::Chromium, &url, "Mum").await?;
    cli_ok(&daemon, &["simulate", "switch", "off"])?;
    let link = make_link(&mut owner, "Gran's link", true).await?;
    owner
        .wait_for(
            "document.getElementById('links').innerText.includes('knock first')",
            secs(10),
        )
        .await?;

    // Declined: a clear message, and the Join button for another try.
    let mut gran = Phone::join(BrowserKind::Chromium, &link, "Gran").await?;
    gran.wait_for(WAITS_WITH_NOTHING, secs(10)).await?;
    tap_row(&mut owner, "knocks", "Gran", "decline").await?;
    gran.wait_for(
        &page_says("refused", "Nobody at home let you in this time"),
        secs(10),
    )
    .await?;
    let media = gran.media().await?;
    assert!(media.tiles.is_empty() && media.video == 0, "{media:?}");

    // Again: longer than an idle web connection lives (20 s), still waiting with nothing,
    // until let in on the owner page.
    gran.join_as("Gran").await?;
    gran.wait_for(WAITS_WITH_NOTHING, secs(10)).await?;
    owner
        .wait_for(
            "!document.getElementById('knocks-card').hidden && \
             document.getElementById('knocks').innerText.includes('Gran')",
            secs(10),
        )
        .await?;
    keeps_waiting(&mut gran, secs(22)).await?;
    tap_row(&mut owner, "knocks", "Gran", "let-in").await?;
    gran.wait_for(
        "hearth.state === 'in-call' && m.tiles.includes('p0') && m.frames('p0') > 0",
        secs(20),
    )
    .await?;
    owner
        .wait_for(
            "document.getElementById('knocks-card').hidden && \
             document.getElementById('people').innerText.includes('Gran')",
            secs(10),
        )
        .await?;
    gran.close().await?;
    owner.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flick_of_the_switch_at_the_box_lets_in_whoever_knocks() -> Result<()> {
    let daemon = Daemon::start_with(&temp_dir("owner-flick"), SMALL_BOX)?;
    let link = cli_ok(&daemon, &["invite", "--knock", "--name", "Gran's link"])?;
    let mut gran = Phone::join(BrowserKind::Chromium, link.trim(), "Gran").await?;
    gran.wait_for(WAITS_WITH_NOTHING, secs(10)).await?;
    let status = daemon.status()?;
    assert_eq!(status["knocks"][0]["name"], "Gran", "{status}");
    assert_eq!(status["knocks"][0]["link"], "Gran's link", "{status}");

    // On, then off again within a few seconds.
    cli_ok(&daemon, &["simulate", "switch", "on"])?;
    cli_ok(&daemon, &["simulate", "switch", "off"])?;
    gran.wait_for(
        "hearth.state === 'in-call' && m.tiles.includes('p0') && m.frames('p0') > 0",
        secs(20),
    )
    .await?;
    assert_eq!(daemon.status()?["knocks"], json!([]));
    gran.close().await?;
    Ok(())
}
