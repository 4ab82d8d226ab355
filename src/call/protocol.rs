//! The signalling wire protocol between the join page and Hearth: JSON text frames on the
//! WebSocket at `/ws`, one message per frame, tagged by `"type"`.
//!
//! Order of a session:
//! 1. client `join` (first frame; carries the invite token)
//! 2. server `refused` and close — or `welcome`, then `roster`
//! 3. client `offer` (its one and only offer: its own camera and mic, send-only)
//! 4. server `answer`
//! 5. from then on only the server offers (`offer` → client `answer`) when tracks of other
//!    participants come or go; so there is never glare.
//!
//! A page whose connection broke opens a new socket and starts again at 1, its `join`
//! carrying the `rejoin` key of its last `welcome`: it gets the same place (participant id)
//! if the box still holds it, else a new one, and sets up its media afresh.

use serde::{Deserialize, Serialize};

/// Largest text frame accepted from a client; an SDP offer is a few KiB.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest display name kept; longer names are cut on a character boundary.
pub const MAX_NAME_CHARS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Join {
        token: String,
        name: String,
        /// Video codecs this browser can decode, as MIME subtypes ("H264", "VP8", …),
        /// from `RTCRtpReceiver.getCapabilities('video')`.
        #[serde(default)]
        video_codecs: Vec<String>,
        /// The key from an earlier `welcome`: the page coming back after its connection
        /// broke, to take up its place in the call again (same participant, same tile).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejoin: Option<SeatKey>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    /// The participant's own mic/camera switches, shown to everyone on their tile.
    Mute {
        audio: bool,
        video: bool,
    },
    Leave,
    /// Turn the box's privacy on from the phone ("pause the box"). Only the switch on the
    /// box turns it off again.
    PauseBox,
}

/// One of a phone's `RTCPeerConnection` `iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The join was refused; the socket closes after this. Nothing about the call is sent.
    Refused {
        reason: String,
    },
    /// A knock-first link: wait until someone at home lets you in (then `welcome` comes), or
    /// not (then `refused`).
    Waiting {
        message: String,
    },
    Welcome {
        /// This participant's id; the `msid` stream id of its forwarded tracks.
        you: String,
        /// The video codec to send with ("H264" or "VP8"): one every participant can decode.
        publish_video_codec: VideoCodec,
        /// The owner's relay with this phone's own credentials (filled in at the edge, where
        /// the clock and the secret are); none when no relay is configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// What this page presents (`join.rejoin`) to come back as the same participant if
        /// its connection breaks.
        rejoin: SeatKey,
    },
    /// Everyone in the call, this participant included, in join order.
    Roster {
        participants: Vec<RosterEntry>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    /// Switch the video codec you send with (someone joined who cannot decode the old one).
    PublishCodec {
        codec: VideoCodec,
    },
    /// Send only the simulcast encodings not listed (by rid): no one in the call takes those
    /// now. An empty list: send them all.
    PublishLayers {
        paused: Vec<String>,
    },
    /// A problem with the last message; the session goes on.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub id: String,
    pub name: String,
    /// Mic on (as the participant says).
    pub audio: bool,
    /// Camera on (as the participant says).
    pub video: bool,
    /// A line to show on the tile, e.g. "camera unavailable".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The box only: privacy is on, since this Unix time (the page shows it in local time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_since: Option<u64>,
    /// Their connection broke and their page is coming back (the tile stays meanwhile).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconnecting: bool,
}

/// A participant's key to their own place in the call: 128 random bits, known only to the
/// page it was given to. Never printed (it would let its holder take the place over).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeatKey(pub String);

impl std::fmt::Debug for SeatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<seat key>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VideoCodec {
    H264,
    VP8,
}

impl VideoCodec {
    pub fn from_mime_subtype(name: &str) -> Option<VideoCodec> {
        match name.to_ascii_uppercase().as_str() {
            "H264" => Some(VideoCodec::H264),
            "VP8" => Some(VideoCodec::VP8),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

pub fn parse_client_msg(text: &str) -> Result<ClientMsg, ProtocolError> {
    if text.len() > MAX_CLIENT_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge(text.len()));
    }
    Ok(serde_json::from_str(text)?)
}

/// Cut a display name to plain text that shows as itself: control characters, bidi
/// overrides and isolates, zero-width characters and line/paragraph separators removed,
/// whitespace runs made one space, at most [`MAX_NAME_CHARS`] characters; empty becomes
/// "Guest". (Escaping for a particular screen is that screen's business.)
pub fn clean_name(raw: &str) -> String {
    let mut cleaned = String::new();
    // Tabs and newlines are control characters, but between two words they are a space.
    let spaced = raw
        .chars()
        .map(|c| if c.is_ascii_whitespace() { ' ' } else { c });
    for c in spaced.filter(|c| !is_hidden(*c)) {
        let c = if c.is_whitespace() { ' ' } else { c };
        if c == ' ' && (cleaned.is_empty() || cleaned.ends_with(' ')) {
            continue;
        }
        cleaned.push(c);
    }
    let trimmed: String = cleaned.trim().chars().take(MAX_NAME_CHARS).collect();
    match trimmed.trim() {
        "" => "Guest".to_string(),
        name => name.to_string(),
    }
}

/// Characters that change how the text around them shows, or do not show at all.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}'                  // Arabic letter mark
            | '\u{115F}' | '\u{1160}'    // Hangul fillers
            | '\u{180E}'                // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}'    // zero-width space, joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}'    // line and paragraph separators
            | '\u{202A}'..='\u{202E}'    // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'    // word joiner, invisible operators, bidi isolates
            | '\u{3164}'                // Hangul filler
            | '\u{FE00}'..='\u{FE0F}'    // variation selectors
            | '\u{FEFF}'                // byte order mark
            | '\u{FFF9}'..='\u{FFFB}'    // interlinear annotations
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_parses_with_tag() {
        let msg = parse_client_msg(
            r#"{"type":"join","token":"abc","name":"Gran","video_codecs":["VP8"]}"#,
        )
        .unwrap();
        assert_eq!(
            msg,
            ClientMsg::Join {
                token: "abc".into(),
                name: "Gran".into(),
                video_codecs: vec!["VP8".into()],
                rejoin: None,
            }
        );
    }

    #[test]
    fn unknown_type_and_fields_are_errors_not_panics() {
        assert!(parse_client_msg(r#"{"type":"hack"}"#).is_err());
        assert!(parse_client_msg(r#"{"type":"mute","audio":true,"video":true,"x":1}"#).is_err());
        assert!(parse_client_msg("not json").is_err());
        let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(70_000));
        assert!(matches!(
            parse_client_msg(&huge),
            Err(ProtocolError::TooLarge(_))
        ));
    }

    #[test]
    fn server_messages_serialize_snake_case() {
        let json = serde_json::to_string(&ServerMsg::PublishCodec {
            codec: VideoCodec::VP8,
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"publish_codec","codec":"VP8"}"#);
    }

    #[test]
    fn a_seat_key_is_never_printed() {
        let welcome = ServerMsg::Welcome {
            you: "p1".into(),
            publish_video_codec: VideoCodec::H264,
            ice_servers: Vec::new(),
            rejoin: SeatKey("kEy1234567890".into()),
        };
        assert!(!format!("{welcome:?}").contains("kEy1234567890"));
        let json = serde_json::to_string(&welcome).unwrap();
        assert!(json.contains(r#""rejoin":"kEy1234567890""#), "{json}");
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("  \u{7}Ann\n "), "Ann");
        assert_eq!(clean_name("Ann\u{202E}nmot\u{202C}"), "Annnmot");
        assert_eq!(clean_name("A\u{200B}n\u{FEFF}n\u{2066}"), "Ann");
        assert_eq!(clean_name("Gran\u{2028}ny\u{2029}  Smith"), "Granny Smith");
        assert_eq!(clean_name("Ann\n\tSmith\r\n"), "Ann Smith", "not AnnSmith");
        assert_eq!(clean_name("\u{200B}\u{200D}"), "Guest");
        assert_eq!(
            clean_name("<b>&amp;</b>"),
            "<b>&amp;</b>",
            "text stays text"
        );
        assert_eq!(clean_name(""), "Guest");
        assert_eq!(clean_name(&"x".repeat(100)).chars().count(), MAX_NAME_CHARS);
    }
}
