//! One phone's leg of the SFU: its str0m `Rtc`, the tracks it publishes, the tracks it
//! subscribes to and where each stands in negotiation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::change::SdpPendingOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Event, IceConnectionState, Input, Output, PacerReason, Reason, Rtc};

use super::layers::{Choice, Encoding, LayerReason, RateMeter, Renumber};
use super::{payload, LostReason, SfuCounters, Transmit};
use crate::call::room::ParticipantId;

/// Packets kept per subscribed video track to resend on request, and for how long.
const RTX_CACHE_PACKETS: usize = 2000;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
/// The largest payload forwarded. str0m writes a forwarded packet into a 2000-byte buffer
/// behind the subscriber's own header (up to ~30 bytes, 2 more for a resend) without checking
/// its size; browsers send at most ~1200, and on a 1500-byte link no more fits anyway. A
/// bigger one is a phone's mistake or mischief and is dropped, never forwarded.
const MAX_FORWARDED_PAYLOAD: usize = 1400;
/// The share of packets a phone reports lost (RTCP receiver reports, before repair) that
/// says its link is overrun: well above what a poor Wi-Fi or mobile link loses anyway, which
/// NACKs repair. A publisher's own losses count too (what it lost upstream is missing from
/// what is forwarded), so two poor links in a row, 5 % each, read as 10 %; an overrun link
/// loses 40 % and more.
const LOSS_CONGESTED: f32 = 0.20;
/// A subscription whose phone has reported none of its packets (RTCP receiver reports) this
/// long after it opened, with packets written to it, is renewed: a new m-line, new SSRC.
/// (Browsers report audio every 5 s, video every second.)
pub(super) const UNHEARD_LIMIT: Duration = Duration::from_secs(12);
/// ...once at least this many were written (a publisher with its camera off sends none).
const UNHEARD_MIN_PACKETS: u64 = 50;
/// A video subscription whose phone, after `UNHEARD_LIMIT`, asked for keyframes this many
/// times within `UNHEARD_LIMIT` does not decode it (keyframes were forwarded to it): it is
/// renewed too. Seen in the soak: packets arrived, the browser decoded none. Counted in a
/// window, not over the subscription's life: a phone in a long call asks now and then (a
/// loss burst, a newcomer's arrival) and decodes well.
const UNDECODED_REQUESTS: usize = 10;
/// ...the last of them this recently.
const UNDECODED_RECENT: Duration = Duration::from_secs(2);
/// Resends stop while they are more than this share of what a track sends (a congested
/// link is not helped by more resends).
const RTX_SHARE_CAP: f32 = 0.5;
/// str0m's pacer releases one packet per timeout and then asks for the next a microsecond
/// later: a timeout due within this is handled at once in `drain`, not left to the caller's
/// next wake-up (one packet per wake-up held queued media back for seconds on a busy box).
const IMMEDIATE: Duration = Duration::from_millis(1);
/// Bounds the packets one `drain` sends (a second of forwarding to one phone is ~1000).
const MOST_TIMEOUTS_PER_DRAIN: u32 = 4096;
/// How late housekeeping (reports, budgets, the pacer's pass after its last packet) may run:
/// a packet arrives every few milliseconds in a call and does it on its way, so a wake-up of
/// its own is rarely needed. Nothing a viewer sees or hears waits on it.
const HOUSEKEEPING_SLACK: Duration = Duration::from_millis(20);
/// How late the NACK scan (every 33 ms) and TWCC feedback (every 50 ms) may run: less than
/// the phones' own feedback intervals, and in a call a datagram comes within it to do them on
/// its way (about one wake-up in ten was theirs, bench-janus at N = 3).
const FEEDBACK_SLACK: Duration = Duration::from_millis(10);

/// A track this phone publishes.
#[derive(Debug)]
pub(super) struct TrackIn {
    pub mid: Mid,
    pub kind: MediaKind,
    /// Its encodings as heard: one, or two or three where the phone simulcasts.
    pub layers: Vec<LayerIn>,
}

/// One encoding of a published track.
#[derive(Debug)]
pub(super) struct LayerIn {
    pub rid: Option<Rid>,
    pub meter: RateMeter,
    pub last_keyframe_request: Option<Instant>,
    /// Since when a keyframe has been asked for and not yet come.
    pub keyframe_asked_since: Option<Instant>,
    /// The phone was told to stop sending it: no one takes it (see `Sfu::pause_unused_layers`).
    pub paused_at_source: bool,
    /// Since when no one has taken it.
    pub unused_since: Option<Instant>,
    /// While paused: since when a subscriber would take it if it were sent.
    pub wanted_since: Option<Instant>,
}

impl TrackIn {
    pub fn layer_mut(&mut self, rid: Option<Rid>) -> &mut LayerIn {
        match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(LayerIn {
                    rid,
                    meter: RateMeter::default(),
                    last_keyframe_request: None,
                    keyframe_asked_since: None,
                    paused_at_source: false,
                    unused_since: None,
                    wanted_since: None,
                });
                self.layers.last_mut().expect("just pushed")
            }
        }
    }

    /// The encodings a subscriber can choose from, cheapest first. Until their rates are
    /// known (the first second), all of them at no cost, so the best is tried.
    /// An encoding the phone was told to pause is not among them.
    pub fn encodings(&self, now: Instant) -> Vec<Encoding> {
        let sent = self.layers.iter().filter(|l| !l.paused_at_source);
        let mut measured: Vec<Encoding> = sent
            .clone()
            .filter_map(|l| {
                let kbps = l.meter.kbps(now)?;
                Some(Encoding { rid: l.rid, kbps })
            })
            .collect();
        if measured.is_empty() {
            return sent
                .map(|l| Encoding {
                    rid: l.rid,
                    kbps: 0,
                })
                .collect();
        }
        measured.sort_by_key(|e| e.kbps);
        measured
    }

    /// `encodings`, with the paused ones back at what they cost when they were last sent: what
    /// a subscriber would choose from if the phone sent them again.
    pub fn encodings_if_resumed(&self, now: Instant) -> Vec<Encoding> {
        let mut all = self.encodings(now);
        if all.iter().all(|e| e.kbps == 0) {
            return all;
        }
        all.extend(
            self.layers
                .iter()
                .filter(|l| l.paused_at_source)
                .map(|l| Encoding {
                    rid: l.rid,
                    kbps: l.meter.last_kbps().unwrap_or(0),
                }),
        );
        all.sort_by_key(|e| e.kbps);
        all
    }
}

/// Where a subscribed track stands: offered by the server, answered, or on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackOutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    Stopping(Mid),
}

/// A track of someone else (or of the box) that this phone receives.
#[derive(Debug)]
pub(super) struct TrackOut {
    pub origin: ParticipantId,
    pub origin_mid: Mid,
    /// Which of the origin's connections (a phone that rejoins publishes anew, often with the
    /// same mids): packets of another one never match this track.
    pub origin_session: u64,
    pub kind: MediaKind,
    state: TrackOutState,
    /// The encoding forwarded now; None before the first packet or for a track's only one.
    current: Option<Rid>,
    /// Which encoding this phone should get.
    pub choice: Choice,
    renumber: Renumber,
    /// It was paused: the next packet forwarded starts its numbering anew.
    resuming: bool,
    /// Since when a keyframe of the encoding it switches to was last asked for.
    pub keyframe_wait_from: Option<Instant>,
    /// Packets written to the phone for this track, and those that were not, by why
    /// (`hearth status`: a subscription that gets nothing says why).
    pub packets: u64,
    pub refused: Refused,
    /// When the phone accepted it.
    opened_at: Option<Instant>,
    /// The highest sequence number the phone has reported receiving (RTCP receiver report).
    pub reported_seq: Option<u64>,
    /// Packets str0m has actually sent of it (resends included): fewer than `packets` by
    /// more than a moment means its pacer holds them.
    pub sent: u64,
    /// Keyframe requests (PLI/FIR) the phone sent for it.
    pub keyframe_requests: u32,
    /// When the last `UNDECODED_REQUESTS` of them came, oldest first.
    recent_keyframe_requests: VecDeque<Instant>,
}

impl TrackOut {
    /// The encodings of its origin's track this subscription uses: the one forwarded now and
    /// the one it should get (they differ while it switches). None while it is paused.
    pub fn encodings_used(&self) -> Option<[Option<Rid>; 2]> {
        (self.open_mid().is_some() && !self.choice.paused)
            .then_some([self.current, self.choice.target])
    }
}

/// Packets of a track not written to a subscriber, by why.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Refused {
    /// The subscriber has no payload type for the publisher's codec.
    pub codec: u64,
    /// The subscriber's media connection is not up (yet).
    pub not_connected: u64,
    /// The track is not (or no longer) open at the subscriber.
    pub not_open: u64,
    /// Older than the first packet the subscriber got.
    pub before_start: u64,
    /// The track is paused for this subscriber: its link carries too little.
    pub paused: u64,
}

/// The share of packets a phone reports lost (RTCP receiver reports), over all its tracks
/// and a second: one track's report of a few dozen packets says little (5 % random loss
/// reads as 10 % often enough), a second of everything says whether the link is overrun.
#[derive(Debug, Default)]
struct LossWindow {
    start: Option<Instant>,
    sent: f32,
    lost: f32,
    last: Option<f32>,
}

impl LossWindow {
    const LENGTH: Duration = Duration::from_secs(1);
    /// Fewer packets than this in a window say nothing.
    const LEAST_PACKETS: f32 = 100.0;

    fn add(&mut self, sent: u64, loss: Option<f32>, now: Instant) {
        let start = *self.start.get_or_insert(now);
        if let Some(loss) = loss {
            self.sent += sent as f32;
            self.lost += sent as f32 * loss;
        }
        if now.saturating_duration_since(start) >= Self::LENGTH {
            self.last = (self.sent >= Self::LEAST_PACKETS).then(|| self.lost / self.sent);
            *self = LossWindow {
                start: Some(now),
                last: self.last,
                ..LossWindow::default()
            };
        }
    }

    fn congested(&self) -> bool {
        self.last.is_some_and(|loss| loss >= LOSS_CONGESTED)
    }
}

/// One packet of a track on its way to a subscriber.
pub(super) struct Outgoing {
    /// The encoding it belongs to (a simulcast rid, the box's layer), None for a track's only one.
    pub rid: Option<Rid>,
    /// Its sequence number and timestamp in the origin's numbering.
    pub seq: u64,
    pub ts: u32,
    /// It is the first packet of a keyframe: where a subscriber may start or switch.
    pub keyframe: bool,
    /// The track's RTP clock rate.
    pub clock: u32,
}

impl TrackOut {
    pub fn new(
        origin: ParticipantId,
        origin_session: u64,
        origin_mid: Mid,
        kind: MediaKind,
    ) -> TrackOut {
        TrackOut {
            origin,
            origin_mid,
            origin_session,
            kind,
            state: TrackOutState::ToOpen,
            current: None,
            choice: Choice::default(),
            renumber: Renumber::default(),
            resuming: false,
            keyframe_wait_from: None,
            packets: 0,
            refused: Refused::default(),
            opened_at: None,
            reported_seq: None,
            sent: 0,
            keyframe_requests: 0,
            recent_keyframe_requests: VecDeque::with_capacity(UNDECODED_REQUESTS),
        }
    }

    /// The packet in this phone's numbering, or None when it is not forwarded: another
    /// encoding than this phone gets, or one it switches to before that one's keyframe.
    fn admit(&mut self, p: &Outgoing, now: Instant) -> Option<(SeqNo, u32)> {
        if self.choice.paused {
            // When it comes back, it starts again (at a keyframe of a simulcast encoding),
            // numbered on from the last packet sent: no gap for the phone to ask resends for.
            self.resuming = true;
            self.refused.paused += 1;
            return None;
        }
        if self.resuming || p.rid != self.current || !self.renumber.started() {
            // A track's only encoding may start anywhere the first time (the phone's decoder
            // waits for the keyframe asked for it); after a pause only at a keyframe: numbered
            // on without a gap, a frame's later packets would pass for a whole frame.
            let start_here =
                p.rid == self.choice.target && (p.keyframe || (p.rid.is_none() && !self.resuming));
            if !start_here {
                return None;
            }
            self.current = p.rid;
            self.resuming = false;
            self.renumber.begin(p.seq, p.ts, p.clock, now);
        }
        self.renumber.map(p.seq, p.ts, now)
    }

    /// The encoding forwarded now, and why, for `hearth status`.
    pub fn layer(&self) -> (Option<Rid>, Option<LayerReason>) {
        let current = if self.choice.paused || self.resuming {
            None
        } else {
            self.current
        };
        (current, self.choice.reason)
    }

    /// Whether it has waited `wait` for the keyframe of the encoding it switches to (open,
    /// not paused); forgets the wait once it is not switching.
    pub fn keyframe_overdue(&mut self, now: Instant, wait: Duration) -> bool {
        if self.open_mid().is_none() || self.choice.paused || self.switching_to().is_none() {
            self.keyframe_wait_from = None;
            return false;
        }
        let from = *self.keyframe_wait_from.get_or_insert(now);
        now.saturating_duration_since(from) >= wait
    }

    /// The encoding it is being switched to, while that one's keyframe has not come.
    pub fn switching_to(&self) -> Option<Rid> {
        let target = self.choice.target.filter(|_| !self.choice.paused)?;
        (self.resuming || Some(target) != self.current || !self.renumber.started())
            .then_some(target)
    }

    /// The mid on this phone's connection, once the phone has accepted the track.
    pub fn open_mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::Open(m) => Some(m),
            _ => None,
        }
    }

    fn mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::ToOpen => None,
            TrackOutState::Negotiating(m)
            | TrackOutState::Open(m)
            | TrackOutState::ToStop(m)
            | TrackOutState::Stopping(m) => Some(m),
        }
    }
}

/// Something one peer produced that others must act on.
pub(super) enum Propagate {
    TrackOpened {
        origin: ParticipantId,
        session: u64,
        mid: Mid,
        kind: MediaKind,
    },
    /// A publisher's packet, with the codec its payload type stands for.
    Rtp {
        origin: ParticipantId,
        session: u64,
        mid: Mid,
        rid: Option<Rid>,
        /// The first packet of a keyframe.
        keyframe: bool,
        params: PayloadParams,
        packet: Box<RtpPacket>,
    },
    KeyframeWanted {
        publisher: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        urgency: Urgency,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Urgency {
    /// A subscriber lost packets or asked: merged with other requests in a short window.
    Repair,
    /// A subscriber just started: it sees nothing until a keyframe, so never merged away.
    NewSubscriber,
}

pub(super) struct Peer {
    pub id: ParticipantId,
    /// Unique to this connection of the participant's (see `TrackOut::origin_session`).
    pub session: u64,
    pub rtc: Rtc,
    pub tracks_in: Vec<TrackIn>,
    pub tracks_out: Vec<TrackOut>,
    /// The server's offer awaiting the phone's answer; no second offer goes out meanwhile.
    pending: Option<SdpPendingOffer>,
    /// False for browsers that list H.264 in SDP but cannot decode it: never sent H.264.
    pub decodes_h264: bool,
    /// This phone's bandwidth estimate for what the box sends it.
    pub estimate_kbps: Option<u32>,
    /// What its estimator was last told to find out about (`layers::probe_rates`).
    pub probe_told: Option<(u32, u32)>,
    /// When `desired` was last raised to ask str0m for a probe (see `Sfu::choose_layers`).
    pub probe_asked_at: Option<Instant>,
    /// When its estimate was last started again from a floor (see `Sfu::choose_layers`).
    pub estimate_reset_at: Option<Instant>,
    /// What the phone reports losing, over all it is sent, and when that last came to
    /// `LOSS_CONGESTED` or more.
    loss: LossWindow,
    pub lossy_at: Option<Instant>,
    created: Instant,
    /// When its `Rtc` next wants time to pass (from the last `drain`): a peer that was given
    /// nothing since has nothing to do before then, and is drained on any wake-up after.
    pub due: Instant,
    /// When it must be drained at the latest: `due`, or a little after it when what is due
    /// can wait for a wake-up the call makes anyway (`slack`).
    pub latest: Instant,
    /// RTP packets written to it since the last `drain`.
    written: u32,
    /// Every video it gets is the best there is and it is not padded: its estimate has
    /// nothing to find out, so its pacer sends what is written and no probes.
    pub nothing_to_probe: bool,
    pub last_heard: Option<Instant>,
    pub connected: bool,
    pub lost: Option<LostReason>,
}

impl Peer {
    pub fn new(
        id: ParticipantId,
        session: u64,
        rtc: Rtc,
        tracks_out: Vec<TrackOut>,
        decodes_h264: bool,
        now: Instant,
    ) -> Peer {
        Peer {
            id,
            session,
            rtc,
            tracks_in: Vec::new(),
            tracks_out,
            pending: None,
            decodes_h264,
            estimate_kbps: None,
            probe_told: None,
            probe_asked_at: None,
            estimate_reset_at: None,
            lossy_at: None,
            loss: LossWindow::default(),
            created: now,
            due: now,
            latest: now,
            written: 0,
            nothing_to_probe: false,
            last_heard: None,
            connected: false,
            lost: None,
        }
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// Start a server offer for tracks to open or stop, unless one is already out.
    pub fn negotiate_if_needed(&mut self) -> Option<String> {
        if self.pending.is_some() {
            return None;
        }
        // Asked after every datagram: most of the time there is nothing to change.
        let changes = self
            .tracks_out
            .iter()
            .any(|t| matches!(t.state, TrackOutState::ToOpen | TrackOutState::ToStop(_)));
        if !changes {
            return None;
        }
        let mut change = self.rtc.sdp_api();
        for track in &mut self.tracks_out {
            match track.state {
                TrackOutState::ToOpen => {
                    let mid = change.add_media(
                        track.kind,
                        Direction::SendOnly,
                        Some(track.origin.to_string()),
                        None,
                        None,
                    );
                    track.state = TrackOutState::Negotiating(mid);
                }
                TrackOutState::ToStop(mid) => {
                    change.stop_media(mid);
                    track.state = TrackOutState::Stopping(mid);
                }
                _ => {}
            }
        }
        let (offer, pending) = change.apply()?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// The server's outstanding offer, taken to apply the phone's answer to it.
    pub fn take_pending(&mut self) -> Option<SdpPendingOffer> {
        self.pending.take()
    }

    /// After an accepted answer: negotiated tracks are open, stopped ones are gone.
    pub fn settle_tracks(
        &mut self,
        now: Instant,
    ) -> Vec<(ParticipantId, Mid, Option<Rid>, MediaKind)> {
        let mut newly_open = Vec::new();
        for track in &mut self.tracks_out {
            if let TrackOutState::Negotiating(m) = track.state {
                track.state = TrackOutState::Open(m);
                track.opened_at = Some(now);
                newly_open.push((
                    track.origin,
                    track.origin_mid,
                    track.choice.target,
                    track.kind,
                ));
                if track.kind == MediaKind::Video {
                    if let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(m, None) {
                        // Not held back by str0m's pacer: what is forwarded was paced by its
                        // sender already. Paced to this phone's estimate, which sinks on a
                        // busy box (CPU delay reads as a congested link), the soak's phones
                        // were sent a fifth of the video written to them (`received[].sent`
                        // in `hearth status`), and newcomers' first keyframes never came.
                        stream.set_unpaced(true);
                        // str0m stops repairing a stream once 15 % of it is resends.
                        // Browsers ask again for packets that only came out of order, so on
                        // a jittery link that is soon reached, and then real losses go
                        // unrepaired and every one costs a keyframe and a freeze.
                        stream.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_SHARE_CAP));
                    }
                }
            }
        }
        self.tracks_out
            .retain(|t| !matches!(t.state, TrackOutState::Stopping(_)));
        newly_open
    }

    /// The publisher `origin` left: its tracks are stopped here at the next negotiation.
    pub fn unsubscribe(&mut self, origin: ParticipantId, session: u64) {
        self.tracks_out.retain_mut(|t| {
            if t.origin != origin || t.origin_session != session {
                return true;
            }
            match t.state {
                TrackOutState::ToOpen => false,
                TrackOutState::Negotiating(m) | TrackOutState::Open(m) => {
                    t.state = TrackOutState::ToStop(m);
                    true
                }
                TrackOutState::ToStop(_) | TrackOutState::Stopping(_) => true,
            }
        });
    }

    /// Subscriptions the phone has reported nothing of since `UNHEARD_LIMIT` after they
    /// opened, though packets were written: they are not reaching it, or its browser is not
    /// taking them. (The soak's cases were str0m never sending them, mended in `drain`; this
    /// stays as the repair for whatever else loses a subscription.) Each is stopped and
    /// offered anew, on a new m-line.
    /// Returns whose tracks were renewed, and whether because never reported (else never
    /// decoded).
    pub fn renew_unheard(&mut self, now: Instant) -> Vec<(ParticipantId, MediaKind, bool)> {
        let unheard = |t: &TrackOut| {
            let settled = t.open_mid().is_some()
                && t.packets >= UNHEARD_MIN_PACKETS
                && t.opened_at
                    .is_some_and(|at| now.saturating_duration_since(at) > UNHEARD_LIMIT);
            let asked = &t.recent_keyframe_requests;
            let never_decoded = asked.len() >= UNDECODED_REQUESTS
                && asked
                    .front()
                    .is_some_and(|at| now.saturating_duration_since(*at) < UNHEARD_LIMIT)
                && asked
                    .back()
                    .is_some_and(|at| now.saturating_duration_since(*at) < UNDECODED_RECENT);
            settled && (t.reported_seq.is_none() || never_decoded)
        };
        let mut renewed = Vec::new();
        let mut which = Vec::new();
        for track in self.tracks_out.iter_mut().filter(|t| unheard(t)) {
            if let TrackOutState::Open(m) = track.state {
                track.state = TrackOutState::ToStop(m);
                which.push((track.origin, track.kind, track.reported_seq.is_none()));
                renewed.push(TrackOut::new(
                    track.origin,
                    track.origin_session,
                    track.origin_mid,
                    track.kind,
                ));
            }
        }
        self.tracks_out.extend(renewed);
        which
    }

    /// Everything its `Rtc` has to send or tell, and time passed up to `now`; then `due` and
    /// `latest` say when it next needs draining.
    pub fn drain(
        &mut self,
        now: Instant,
        transmits: &mut Vec<Transmit>,
        propagate: &mut Vec<Propagate>,
        counters: &mut SfuCounters,
    ) {
        let mut timeouts = 0;
        let mut media_sent = 0;
        loop {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    self.lost = Some(LostReason::Failed);
                    self.wake_at(now, now);
                    return;
                }
            };
            match output {
                Output::Timeout(t)
                    if t <= now + IMMEDIATE && timeouts < MOST_TIMEOUTS_PER_DRAIN =>
                {
                    // After each packet the pacer asks for a pass to let the next one out.
                    // With all that was written sent and nothing to probe, that pass finds
                    // nothing to send: it is left to the pass the next write needs anyway
                    // (one pass per packet, not two), or to `HOUSEKEEPING_SLACK` later.
                    // Where probes or padding are wanted it runs now: they come from it.
                    let gate =
                        self.rtc.last_timeout_reason() == Reason::Pacer(PacerReason::Immediate);
                    if gate
                        && self.nothing_to_probe
                        && self.written > 0
                        && media_sent == self.written
                    {
                        self.written = 0;
                        self.wake_at(t + HOUSEKEEPING_SLACK, t + HOUSEKEEPING_SLACK);
                        return;
                    }
                    timeouts += 1;
                    if self.rtc.handle_input(Input::Timeout(t.max(now))).is_err() {
                        self.lost = Some(LostReason::Failed);
                        self.wake_at(now, now);
                        return;
                    }
                }
                Output::Timeout(t) => {
                    self.written = 0;
                    // While it is padded or probed, the pacer's budget pass makes the padding:
                    // put off, it came in bursts, and a weak link's estimate recovered more
                    // slowly (tests/sfu). Only a phone with nothing to probe has slack.
                    let slack = if self.nothing_to_probe {
                        slack(self.rtc.last_timeout_reason())
                    } else {
                        Duration::ZERO
                    };
                    self.wake_at(t, t + slack);
                    return;
                }
                Output::Transmit(t) => {
                    media_sent += u32::from(is_rtp(&t.contents));
                    transmits.push(Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    })
                }
                Output::Event(event) => self.on_event(event, now, propagate, counters),
            }
        }
    }

    /// Its simulcast encodings it was told to pause (`Sfu::pause_unused_layers`).
    pub fn paused_encodings(&self) -> impl Iterator<Item = Rid> + '_ {
        self.tracks_in
            .iter()
            .flat_map(|t| &t.layers)
            .filter(|l| l.paused_at_source)
            .filter_map(|l| l.rid)
    }

    /// Drain it at `due` if awake then, and wake up for it at `latest`.
    pub fn wake_at(&mut self, due: Instant, latest: Instant) {
        self.due = due;
        self.latest = latest;
    }

    fn on_event(
        &mut self,
        event: Event,
        now: Instant,
        propagate: &mut Vec<Propagate>,
        counters: &mut SfuCounters,
    ) {
        match event {
            Event::Connected => {
                self.connected = true;
                // Tracks opened before media could flow: a keyframe now, or nothing shows.
                for track in &self.tracks_out {
                    if track.kind == MediaKind::Video && track.open_mid().is_some() {
                        propagate.push(Propagate::KeyframeWanted {
                            publisher: track.origin,
                            mid: track.origin_mid,
                            rid: track.choice.target,
                            kind: KeyframeRequestKind::Pli,
                            urgency: Urgency::NewSubscriber,
                        });
                    }
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.lost = Some(LostReason::IceDisconnected);
            }
            Event::MediaAdded(added)
                if matches!(added.direction, Direction::RecvOnly | Direction::SendRecv) =>
            {
                self.tracks_in.push(TrackIn {
                    mid: added.mid,
                    kind: added.kind,
                    layers: Vec::new(),
                });
                propagate.push(Propagate::TrackOpened {
                    origin: self.id,
                    session: self.session,
                    mid: added.mid,
                    kind: added.kind,
                });
            }
            Event::RtpPacket(packet) => {
                counters.packets_received += 1;
                if packet.payload.len() > MAX_FORWARDED_PAYLOAD {
                    counters.packets_too_big += 1;
                    return;
                }
                let pt = packet.header.payload_type;
                let params = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|p| p.pt() == pt);
                let Some(&params) = params else {
                    return;
                };
                let mut api = self.rtc.direct_api();
                let Some((mid, rid)) = api
                    .stream_rx(&packet.header.ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                let codec = params.spec().codec;
                let keyframe = codec.is_video() && payload::starts_keyframe(codec, &packet.payload);
                if let Some(track) = self.tracks_in.iter_mut().find(|t| t.mid == mid) {
                    let layer = track.layer_mut(rid);
                    layer.meter.add(packet.payload.len(), now);
                    if keyframe {
                        layer.keyframe_asked_since = None;
                    }
                }
                // Losses the NACKs cannot repair are the subscribers' to notice: their
                // decoders ask for a keyframe, which is relayed.
                propagate.push(Propagate::Rtp {
                    origin: self.id,
                    session: self.session,
                    mid,
                    rid,
                    keyframe,
                    params,
                    packet: Box::new(packet),
                });
            }
            Event::MediaEgressStats(stats) => {
                let reported = stats.remote.map(|r| *r.maximum_sequence_number);
                let track = self
                    .tracks_out
                    .iter_mut()
                    .find(|t| t.open_mid() == Some(stats.mid));
                if let Some(track) = track {
                    let sent = stats.packets.saturating_sub(track.sent);
                    self.loss.add(sent, stats.loss, now);
                    if self.loss.congested() {
                        self.lossy_at = Some(now);
                    }
                    track.sent = stats.packets;
                    if reported.is_some() {
                        track.reported_seq = reported;
                    }
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.estimate_kbps = Some((estimate.as_u64() / 1000) as u32);
            }
            Event::KeyframeRequest(req) => {
                counters.keyframe_requests_received += 1;
                if let Some(t) = self
                    .tracks_out
                    .iter_mut()
                    .find(|t| t.mid() == Some(req.mid))
                {
                    t.keyframe_requests += 1;
                    if t.recent_keyframe_requests.len() == UNDECODED_REQUESTS {
                        t.recent_keyframe_requests.pop_front();
                    }
                    t.recent_keyframe_requests.push_back(now);
                    propagate.push(Propagate::KeyframeWanted {
                        publisher: t.origin,
                        mid: t.origin_mid,
                        rid: t.switching_to().or(t.layer().0),
                        kind: req.kind,
                        urgency: Urgency::Repair,
                    });
                }
            }
            _ => {}
        }
    }

    /// This phone's open mid for a publisher's track, if it subscribes to it.
    pub fn mid_for(&self, origin: ParticipantId, origin_mid: Mid) -> Option<Mid> {
        self.tracks_out
            .iter()
            .filter(|t| t.origin == origin && t.origin_mid == origin_mid)
            .find_map(TrackOut::open_mid)
    }

    /// The subscription to a publisher's track, in one pass: a renewed subscription has its
    /// new (open) track next to the old one being stopped, and the open one is preferred.
    fn track_at(&self, origin: ParticipantId, session: u64, origin_mid: Mid) -> Option<usize> {
        let mut found = None;
        for (i, t) in self.tracks_out.iter().enumerate() {
            if t.origin == origin && t.origin_session == session && t.origin_mid == origin_mid {
                found = Some(i);
                if t.open_mid().is_some() {
                    break;
                }
            }
        }
        found
    }

    /// Forward one publisher's packet to this subscriber as it came (payload untouched).
    /// False when it does not subscribe (yet), gets another encoding, or cannot decode that
    /// codec.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        origin: ParticipantId,
        session: u64,
        origin_mid: Mid,
        rid: Option<Rid>,
        keyframe: bool,
        params: PayloadParams,
        packet: &RtpPacket,
        now: Instant,
    ) -> bool {
        let spec = params.spec();
        let codec = spec.codec;
        if codec == Codec::H264 && !self.decodes_h264 {
            return false;
        }
        // The subscriber may number the same codec differently: map by codec parameters.
        let Some(pt) = self.rtc.codec_config().match_params(params).map(|p| p.pt()) else {
            if let Some(at) = self.track_at(origin, session, origin_mid) {
                self.tracks_out[at].refused.codec += 1;
            }
            return false;
        };
        // Header extensions the receiver plays by: a phone that negotiated CVO sends its
        // camera unrotated and says how to turn it (dropped, a portrait phone shows sideways);
        // the audio level is what the receiver's browser reports per source. str0m writes
        // them under this subscriber's extension ids, with its own mid and transport numbers.
        let header = &packet.header;
        let ext = ExtensionValues {
            audio_level: header.ext_vals.audio_level,
            voice_activity: header.ext_vals.voice_activity,
            video_orientation: header.ext_vals.video_orientation,
            ..Default::default()
        };
        let outgoing = Outgoing {
            rid,
            seq: *packet.seq_no,
            ts: header.timestamp,
            keyframe,
            clock: spec.clock_rate.get(),
        };
        self.send(origin, session, origin_mid, &outgoing, now, |seq, ts| {
            RtpWrite::new(pt, seq, ts, packet.timestamp, packet.payload.clone())
                .marker(header.marker)
                .ext_vals(ext)
                .nackable(codec.is_video())
        })
    }

    /// Write one packet of `origin`'s track to this phone, renumbered into its own sequence.
    /// False when the phone is not connected, does not receive that track, or gets another
    /// encoding of it.
    pub fn send(
        &mut self,
        origin: ParticipantId,
        session: u64,
        origin_mid: Mid,
        packet: &Outgoing,
        now: Instant,
        write: impl FnOnce(SeqNo, u32) -> RtpWrite,
    ) -> bool {
        let connected = self.connected;
        let Some(at) = self.track_at(origin, session, origin_mid) else {
            return false;
        };
        let track = &mut self.tracks_out[at];
        if !connected {
            track.refused.not_connected += 1;
            return false;
        }
        let Some(mid) = track.open_mid() else {
            track.refused.not_open += 1;
            return false;
        };
        let Some((seq, ts)) = track.admit(packet, now) else {
            // Another encoding, or one waiting for its keyframe, is not refused; a packet of
            // the encoding forwarded, older than where it started, is.
            if packet.rid == track.current && track.renumber.started() {
                track.refused.before_start += 1;
            }
            return false;
        };
        track.packets += 1;
        // Not told the time here: str0m stamps a written packet's queueing and sending with
        // the time of the `drain` that sends it, which the SFU runs at this same `now`.
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        stream.write_rtp(write(seq, ts));
        self.written += 1;
        self.wake_at(now, now);
        true
    }
}

/// How late what str0m wakes up for may be done, to be done on a wake-up the call makes
/// anyway: receiver and sender reports, statistics, the pacer's budget and paused-stream
/// checks by `HOUSEKEEPING_SLACK`; the NACK scan and TWCC feedback by `FEEDBACK_SLACK`.
/// Packets, resends, probes, connecting and the estimator's own timers are not put off. Only
/// a phone with nothing to probe gets any (`Peer::drain`).
fn slack(reason: Reason) -> Duration {
    match reason {
        Reason::Pacer(PacerReason::Handle)
        | Reason::Feedback
        | Reason::Stats
        | Reason::PauseCheck
        | Reason::NotHappening => HOUSEKEEPING_SLACK,
        Reason::Nack | Reason::Twcc => FEEDBACK_SLACK,
        _ => Duration::ZERO,
    }
}

/// An RTP packet, not RTCP, STUN or DTLS (RFC 7983's first byte; RFC 5761's packet types).
fn is_rtp(datagram: &[u8]) -> bool {
    matches!(datagram, [128..=191, second, ..] if !(192..=223).contains(second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rtp_counts_as_media_sent() {
        assert!(is_rtp(&[0x80, 96, 0, 1]), "RTP, payload type 96");
        assert!(is_rtp(&[0x80, 0x80 | 111, 0, 1]), "RTP with its marker bit");
        assert!(!is_rtp(&[0x80, 200, 0, 6]), "RTCP sender report");
        assert!(!is_rtp(&[0x81, 205, 0, 4]), "RTCP transport feedback");
        assert!(!is_rtp(&[0x00, 0x01, 0, 0]), "STUN binding request");
        assert!(!is_rtp(&[22, 0xfe, 0xfd]), "DTLS handshake");
        assert!(!is_rtp(&[0x80]), "too short");
    }

    #[test]
    fn only_housekeeping_waits() {
        assert_eq!(slack(Reason::Feedback), HOUSEKEEPING_SLACK);
        assert_eq!(
            slack(Reason::Pacer(PacerReason::Handle)),
            HOUSEKEEPING_SLACK
        );
        assert_eq!(slack(Reason::Twcc), FEEDBACK_SLACK);
        assert_eq!(slack(Reason::Nack), FEEDBACK_SLACK);
        for reason in [
            Reason::Pacer(PacerReason::Paced),
            Reason::Pacer(PacerReason::Unpaced),
            Reason::Pacer(PacerReason::Probe1),
            Reason::Pacer(PacerReason::Padding),
            Reason::Ice,
            Reason::DTLS,
            Reason::BweDelayControl,
        ] {
            assert_eq!(slack(reason), Duration::ZERO, "{reason:?}");
        }
    }

    #[test]
    fn a_paused_video_comes_back_at_a_keyframe_numbered_on_without_a_gap() {
        let t0 = Instant::now();
        let mut track = TrackOut::new(ParticipantId::BOX, 0, Mid::from("v"), MediaKind::Video);
        let packet = |seq: u64, keyframe: bool| Outgoing {
            rid: None,
            seq,
            ts: seq as u32 * 3000,
            keyframe,
            clock: 90_000,
        };
        let first = track
            .admit(&packet(10, false), t0)
            .expect("the only encoding starts anywhere");
        let second = track.admit(&packet(11, false), t0).expect("and goes on");
        assert_eq!(*second.0, *first.0 + 1);
        track.choice.paused = true;
        assert_eq!(track.admit(&packet(12, false), t0), None, "paused");
        track.choice.paused = false;
        assert_eq!(
            track.admit(&packet(13, false), t0),
            None,
            "the middle of a frame after the pause is not a place to start"
        );
        let back = track.admit(&packet(14, true), t0).expect("the keyframe is");
        assert_eq!(
            *back.0,
            *second.0 + 1,
            "no gap for the phone to ask resends for"
        );
    }

    #[test]
    fn a_link_is_congested_by_a_seconds_heavy_loss_over_all_tracks_not_by_one_reports_bad_luck() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = LossWindow::default();
        // One small track's report of 20 % (4 of 20 packets), among tracks losing nothing.
        w.add(20, Some(0.2), at(0));
        w.add(200, Some(0.0), at(500));
        w.add(200, Some(0.05), at(1000));
        assert!(!w.congested(), "{w:?}");
        // A second of 40 % over everything.
        w.add(150, Some(0.4), at(1500));
        w.add(150, Some(0.4), at(2000));
        assert!(w.congested(), "{w:?}");
        // Too few packets to tell: the last verdict is cleared.
        w.add(10, Some(0.9), at(3000));
        assert!(!w.congested(), "{w:?}");
    }
}
