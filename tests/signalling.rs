//! Invites at the door, over real TLS and WebSocket against the running daemon.

use hearth_test_support::{temp_dir, wss, Daemon};
use serde_json::json;
use sha2::{Digest, Sha256};

fn token_of(url: &str) -> &str {
    url.split_once('#')
        .map(|(_, t)| t)
        .expect("a token in the fragment")
}

fn join(token: &str, name: &str) -> serde_json::Value {
    json!({"type": "join", "token": token, "name": name, "video_codecs": ["H264", "VP8"]})
}

#[tokio::test]
async fn random_expired_and_revoked_tokens_learn_nothing_about_the_call() -> anyhow::Result<()> {
    let dir = temp_dir("refusals");
    // An invite that expired long ago, whose token only this test knows.
    let expired_token = "ZXhwaXJlZC1saW5rLTEyMw";
    let digest: String = Sha256::digest(expired_token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    std::fs::write(
        dir.join("invites.json"),
        json!({"invites": [{"id": "0badcafe", "name": "Old link", "token_sha256": digest,
            "created": now - 7200, "expires": now - 3600, "last_used": null, "revoked": false}]})
        .to_string(),
    )?;
    let daemon = Daemon::start_in(&dir)?;

    let mut insider = wss::connect(&daemon).await?;
    wss::send(
        &mut insider,
        join(token_of(&daemon.join_url), "Alice Insider"),
    )
    .await?;
    let welcome = wss::next(&mut insider).await?.expect("welcome");
    assert_eq!(welcome["type"], "welcome");

    let revoked_url = daemon.invite("Link to withdraw")?;
    let (ok, list, _) = daemon.cli(&["invite", "--list"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&list)?;
    let id = list
        .as_array()
        .and_then(|l| l.iter().find(|i| i["name"] == "Link to withdraw"))
        .and_then(|i| i["id"].as_str())
        .expect("the new invite is listed")
        .to_string();
    let (ok, _, err) = daemon.cli(&["invite", "--revoke", &id]);
    assert!(ok, "{err}");

    let cases = [
        ("q2Vt8nWcY1oR3xZ5bL7dJg", "not valid"),
        (expired_token, "expired"),
        (token_of(&revoked_url), "withdrawn"),
    ];
    for (token, expected) in cases {
        let mut socket = wss::connect(&daemon).await?;
        wss::send(&mut socket, join(token, "Mallory")).await?;
        let messages = wss::until_closed(&mut socket).await?;
        assert_eq!(messages.len(), 1, "only the refusal: {messages:?}");
        assert_eq!(messages[0]["type"], "refused");
        let reason = messages[0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(expected), "{reason}");
        let text = messages[0].to_string();
        assert!(
            !text.contains("Alice"),
            "a participant's name leaked: {text}"
        );
    }

    // Nobody slipped in, and the insider heard nothing of the attempts.
    let status = daemon.status()?;
    assert_eq!(status["participants"].as_array().map(Vec::len), Some(1));
    let heard = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        wss::next(&mut insider),
    )
    .await;
    match heard {
        Err(_) => {}
        Ok(message) => {
            let message = message?;
            assert!(
                message.is_none_or(|m| m["type"] == "roster" && !m.to_string().contains("Mallory"))
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_socket_that_never_joins_is_closed() -> anyhow::Result<()> {
    let daemon = Daemon::start("silent")?;
    let mut socket = wss::connect(&daemon).await?;
    wss::send(&mut socket, json!({"type": "offer", "sdp": "v=0"})).await?;
    let messages = wss::until_closed(&mut socket).await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["type"], "refused");
    Ok(())
}
