//! Who is in the call and what everyone must be told: the meaning of the room, apart from
//! the media plane (`sfu`) and the wiring (`web`, `app`). Pure: inputs in, messages out.

use std::time::Instant;

use crate::call::protocol::{RosterEntry, SeatKey, ServerMsg, VideoCodec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(pub u64);

impl ParticipantId {
    /// The box itself, when its camera, mic, screen and speaker are in the call.
    pub const BOX: ParticipantId = ParticipantId(0);

    /// From its printed form ("p1").
    pub fn parse(text: &str) -> Option<ParticipantId> {
        text.strip_prefix('p')?.parse().ok().map(ParticipantId)
    }
}

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}", self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Participant {
    pub id: ParticipantId,
    pub name: String,
    pub can_decode_h264: bool,
    pub audio: bool,
    pub video: bool,
    pub joined_at: Instant,
    /// Shown on the tile, e.g. "camera unavailable".
    pub note: Option<String>,
    /// The box only: privacy on since (Unix seconds).
    pub privacy_since: Option<u64>,
    /// Their connection broke; their place is held for their page to come back.
    pub reconnecting: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinRefused {
    #[error("The call is full ({0} people). Try again when someone leaves.")]
    Full(usize),
    #[error("This browser cannot play the call's video (it decodes neither H.264 nor VP8).")]
    NoCommonCodec,
}

/// A message for one participant.
pub type Outgoing = (ParticipantId, ServerMsg);

#[derive(Debug)]
pub struct Room {
    next_id: u64,
    max_participants: usize,
    participants: Vec<Participant>,
}

impl Room {
    pub fn new(max_participants: usize) -> Self {
        Room {
            next_id: 1,
            max_participants,
            participants: Vec::new(),
        }
    }

    /// How many phones the call takes.
    pub fn max_phones(&self) -> usize {
        self.max_participants
    }

    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    pub fn participant(&self, id: ParticipantId) -> Option<&Participant> {
        self.participants.iter().find(|p| p.id == id)
    }

    /// The box joins its own call: first tile, never leaves, decodes everything.
    pub fn add_box(&mut self, name: &str, now: Instant) {
        self.participants.insert(
            0,
            Participant {
                id: ParticipantId::BOX,
                name: crate::call::protocol::clean_name(name),
                can_decode_h264: true,
                audio: true,
                video: true,
                joined_at: now,
                note: None,
                privacy_since: None,
                reconnecting: false,
            },
        );
    }

    /// Phones in the call (everyone but the box).
    pub fn phones(&self) -> impl Iterator<Item = &Participant> {
        self.participants
            .iter()
            .filter(|p| p.id != ParticipantId::BOX)
    }

    /// The box was renamed: everyone sees the new name.
    pub fn rename_box(&mut self, name: &str) -> Vec<Outgoing> {
        let name = crate::call::protocol::clean_name(name);
        match self
            .participants
            .iter_mut()
            .find(|p| p.id == ParticipantId::BOX)
        {
            Some(p) if p.name != name => {
                p.name = name;
                self.roster_for_all()
            }
            _ => Vec::new(),
        }
    }

    /// The box's camera/mic state and note changed (device trouble, privacy).
    pub fn set_box_state(
        &mut self,
        audio: bool,
        video: bool,
        note: Option<String>,
        privacy_since: Option<u64>,
    ) -> Vec<Outgoing> {
        match self
            .participants
            .iter_mut()
            .find(|p| p.id == ParticipantId::BOX)
        {
            Some(p)
                if (p.audio, p.video, &p.note, p.privacy_since)
                    != (audio, video, &note, privacy_since) =>
            {
                p.audio = audio;
                p.video = video;
                p.note = note;
                p.privacy_since = privacy_since;
                self.roster_for_all()
            }
            _ => Vec::new(),
        }
    }

    /// The codec every publisher sends: H.264 while everyone can decode it (phones decode it
    /// in hardware, and it is what the box's encoder makes), VP8 otherwise, since without
    /// transcoding every subscriber must decode what a publisher sends.
    pub fn publish_codec(&self) -> VideoCodec {
        if self.participants.iter().all(|p| p.can_decode_h264) {
            VideoCodec::H264
        } else {
            VideoCodec::VP8
        }
    }

    /// A new participant. `seat` is the key their page may come back with
    /// (see [`Room::rejoin`]); it goes into their welcome.
    pub fn join(
        &mut self,
        name: &str,
        video_codecs: &[String],
        seat: SeatKey,
        now: Instant,
    ) -> Result<(ParticipantId, Vec<Outgoing>), JoinRefused> {
        if self.phones().count() >= self.max_participants {
            return Err(JoinRefused::Full(self.max_participants));
        }
        let codecs: Vec<VideoCodec> = video_codecs
            .iter()
            .filter_map(|c| VideoCodec::from_mime_subtype(c))
            .collect();
        // An empty list means the browser did not say (old browser): assume both, as phones do.
        let (h264, vp8) = if video_codecs.is_empty() {
            (true, true)
        } else {
            (
                codecs.contains(&VideoCodec::H264),
                codecs.contains(&VideoCodec::VP8),
            )
        };
        if !h264 && !vp8 {
            return Err(JoinRefused::NoCommonCodec);
        }
        let codec_before = self.publish_codec();
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        let name = self.guest_name(name);
        self.participants.push(Participant {
            id,
            name,
            can_decode_h264: h264,
            audio: true,
            video: true,
            joined_at: now,
            note: None,
            privacy_since: None,
            reconnecting: false,
        });
        let mut out = vec![(id, self.welcome(id, seat))];
        out.extend(self.codec_change_since(codec_before, Some(id)));
        out.extend(self.roster_for_all());
        Ok((id, out))
    }

    fn welcome(&self, id: ParticipantId, seat: SeatKey) -> ServerMsg {
        ServerMsg::Welcome {
            you: id.to_string(),
            publish_video_codec: self.publish_codec(),
            ice_servers: Vec::new(),
            rejoin: seat,
        }
    }

    /// A participant's connection broke (`true`) and their place is held, or their page is
    /// back (`false`): everyone's tile for them says so. Unknown ids are ignored.
    pub fn set_reconnecting(&mut self, id: ParticipantId, reconnecting: bool) -> Vec<Outgoing> {
        match self.participants.iter_mut().find(|p| p.id == id) {
            Some(p) if p.reconnecting != reconnecting => {
                p.reconnecting = reconnecting;
                self.roster_for_all()
            }
            _ => Vec::new(),
        }
    }

    /// A participant's page is back after its connection broke: the same place, welcomed
    /// again (with a fresh `seat` key), and the tiles lose "reconnecting". None when the
    /// participant is no longer in the call.
    pub fn rejoin(&mut self, id: ParticipantId, seat: SeatKey) -> Option<Vec<Outgoing>> {
        self.participant(id)?;
        let mut out = vec![(id, self.welcome(id, seat))];
        let roster = self.set_reconnecting(id, false);
        out.extend(if roster.is_empty() {
            self.roster_for_all()
        } else {
            roster
        });
        Some(out)
    }

    /// A guest's name as shown: cleaned, and never the box's own (nobody can pose as it).
    fn guest_name(&self, raw: &str) -> String {
        let name = crate::call::protocol::clean_name(raw);
        let is_box_name = self
            .participant(ParticipantId::BOX)
            .is_some_and(|b| b.name.to_lowercase() == name.to_lowercase());
        if is_box_name {
            format!("{name} (guest)")
        } else {
            name
        }
    }

    /// Remove a participant; unknown ids are ignored (a socket may close twice).
    pub fn leave(&mut self, id: ParticipantId) -> Vec<Outgoing> {
        let codec_before = self.publish_codec();
        let before = self.participants.len();
        self.participants.retain(|p| p.id != id);
        if self.participants.len() == before {
            return Vec::new();
        }
        let mut out = self.codec_change_since(codec_before, None);
        out.extend(self.roster_for_all());
        out
    }

    pub fn set_mute(&mut self, id: ParticipantId, audio: bool, video: bool) -> Vec<Outgoing> {
        match self.participants.iter_mut().find(|p| p.id == id) {
            Some(p) if (p.audio, p.video) != (audio, video) => {
                p.audio = audio;
                p.video = video;
                self.roster_for_all()
            }
            _ => Vec::new(),
        }
    }

    fn codec_change_since(
        &self,
        before: VideoCodec,
        except: Option<ParticipantId>,
    ) -> Vec<Outgoing> {
        let codec = self.publish_codec();
        if codec == before {
            return Vec::new();
        }
        self.participants
            .iter()
            .filter(|p| Some(p.id) != except && p.id != ParticipantId::BOX)
            .map(|p| (p.id, ServerMsg::PublishCodec { codec }))
            .collect()
    }

    fn roster_for_all(&self) -> Vec<Outgoing> {
        let roster: Vec<RosterEntry> = self
            .participants
            .iter()
            .map(|p| RosterEntry {
                id: p.id.to_string(),
                name: p.name.clone(),
                audio: p.audio,
                video: p.video,
                note: p.note.clone(),
                privacy_since: p.privacy_since,
                reconnecting: p.reconnecting,
            })
            .collect();
        self.phones()
            .map(|p| {
                (
                    p.id,
                    ServerMsg::Roster {
                        participants: roster.clone(),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn roster_names(out: &[Outgoing], to: ParticipantId) -> Option<Vec<String>> {
        out.iter().rev().find_map(|(p, m)| match m {
            ServerMsg::Roster { participants } if *p == to => {
                Some(participants.iter().map(|e| e.name.clone()).collect())
            }
            _ => None,
        })
    }

    #[test]
    fn join_welcomes_and_tells_everyone() {
        let now = Instant::now();
        let mut room = Room::new(8);
        let (a, _) = room
            .join("Ann", &codecs(&["H264", "VP8"]), SeatKey::default(), now)
            .unwrap();
        let (b, out) = room
            .join("Bob", &codecs(&["H264", "VP8"]), SeatKey::default(), now)
            .unwrap();
        assert!(matches!(
            &out[0],
            (p, ServerMsg::Welcome { publish_video_codec: VideoCodec::H264, .. }) if *p == b
        ));
        assert_eq!(roster_names(&out, a).unwrap(), vec!["Ann", "Bob"]);
        assert_eq!(roster_names(&out, b).unwrap(), vec!["Ann", "Bob"]);
    }

    #[test]
    fn a_vp8_only_joiner_switches_the_room_and_back_when_gone() {
        let now = Instant::now();
        let mut room = Room::new(8);
        let (a, _) = room
            .join("Ann", &codecs(&["H264", "VP8"]), SeatKey::default(), now)
            .unwrap();
        let (f, out) = room
            .join("Fox", &codecs(&["VP8", "VP9"]), SeatKey::default(), now)
            .unwrap();
        assert!(out.contains(&(
            a,
            ServerMsg::PublishCodec {
                codec: VideoCodec::VP8
            }
        )));
        assert!(matches!(
            &out[0],
            (
                _,
                ServerMsg::Welcome {
                    publish_video_codec: VideoCodec::VP8,
                    ..
                }
            )
        ));
        // The joiner learns the codec from its welcome, not from a second message.
        assert!(!out
            .iter()
            .any(|(p, m)| *p == f && matches!(m, ServerMsg::PublishCodec { .. })));
        let out = room.leave(f);
        assert!(out.contains(&(
            a,
            ServerMsg::PublishCodec {
                codec: VideoCodec::H264
            }
        )));
    }

    #[test]
    fn full_room_and_codecless_browser_are_refused() {
        let now = Instant::now();
        let mut room = Room::new(1);
        room.join("Ann", &[], SeatKey::default(), now).unwrap();
        assert_eq!(
            room.join("Bob", &[], SeatKey::default(), now).unwrap_err(),
            JoinRefused::Full(1)
        );
        let mut room = Room::new(4);
        assert_eq!(
            room.join("Old", &codecs(&["AV1"]), SeatKey::default(), now)
                .unwrap_err(),
            JoinRefused::NoCommonCodec
        );
    }

    #[test]
    fn the_box_is_on_every_roster_but_not_counted_or_messaged() {
        let now = Instant::now();
        let mut room = Room::new(1);
        room.add_box("Home", now);
        let (a, out) = room.join("Ann", &[], SeatKey::default(), now).unwrap();
        assert_eq!(roster_names(&out, a).unwrap(), vec!["Home", "Ann"]);
        let mut other = Room::new(4);
        other.add_box("Home", now);
        let (_, out) = other
            .join(" HOME\u{200B}", &[], SeatKey::default(), now)
            .unwrap();
        assert_eq!(
            roster_names(&out, ParticipantId(1)).unwrap(),
            vec!["Home", "HOME (guest)"],
            "a guest cannot pose as the box"
        );
        assert!(out.iter().all(|(p, _)| *p != ParticipantId::BOX));
        assert_eq!(
            room.join("Bob", &[], SeatKey::default(), now).unwrap_err(),
            JoinRefused::Full(1)
        );
        let out = room.set_box_state(true, false, Some("camera unavailable".into()), None);
        assert!(
            matches!(&out[0].1, ServerMsg::Roster { participants } if participants[0].note.as_deref() == Some("camera unavailable") && !participants[0].video)
        );
        assert!(room
            .set_box_state(true, false, Some("camera unavailable".into()), None)
            .is_empty());
    }

    #[test]
    fn a_participant_coming_back_keeps_their_place_and_is_welcomed_again() {
        let now = Instant::now();
        let mut room = Room::new(8);
        let (a, _) = room.join("Ann", &[], SeatKey("k1".into()), now).unwrap();
        let (b, _) = room.join("Bob", &[], SeatKey::default(), now).unwrap();
        let out = room.set_reconnecting(a, true);
        let told_bob = out.iter().any(|(p, m)| {
            *p == b
                && matches!(m, ServerMsg::Roster { participants }
                    if participants.iter().any(|e| e.id == a.to_string() && e.reconnecting))
        });
        assert!(told_bob, "{out:?}");
        assert!(room.set_reconnecting(a, true).is_empty(), "said once");
        let out = room.rejoin(a, SeatKey("k2".into())).unwrap();
        assert!(
            matches!(&out[0], (p, ServerMsg::Welcome { you, rejoin, .. })
            if *p == a && you == "p1" && rejoin.0 == "k2")
        );
        assert_eq!(roster_names(&out, b).unwrap(), vec!["Ann", "Bob"]);
        assert!(room.participant(a).is_some_and(|p| !p.reconnecting));
        room.leave(a);
        assert!(room.rejoin(a, SeatKey::default()).is_none());
    }

    #[test]
    fn leave_twice_is_harmless_and_mute_is_broadcast_once() {
        let now = Instant::now();
        let mut room = Room::new(8);
        let (a, _) = room.join("Ann", &[], SeatKey::default(), now).unwrap();
        let (b, _) = room.join("Bob", &[], SeatKey::default(), now).unwrap();
        assert_eq!(room.set_mute(a, false, true).len(), 2);
        assert!(room.set_mute(a, false, true).is_empty());
        assert_eq!(roster_names(&room.leave(b), a).unwrap(), vec!["Ann"]);
        assert!(room.leave(b).is_empty());
    }
}
