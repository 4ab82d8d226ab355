//! The control socket's requests, as the hub answers them. A request that changes something
//! is answered once the change has happened (the switch has flipped and the devices are
//! closed, the invite is on disk), so the CLI and tests can rely on the answer.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::oneshot;

use super::control::{OnOff, Plug, Request, Response, Simulation};
use super::hub::Hub;
use crate::call::invite::unix_seconds;
use crate::config::MAX_INVITE_TTL;
use crate::media::{tv, MediaKindTag};
use crate::web::signalling::WsCommand;

/// How long a request waits for its effect before it is answered with an error.
const EFFECT_LIMIT: Duration = Duration::from_secs(10);

/// What a waiting request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// Privacy on and the camera and mic closed.
    PrivacyOn,
    /// The (simulated) switch has settled in this position.
    Switch(OnOff),
    /// The box has seen a simulated device come or go.
    Device(MediaKindTag, Plug),
}

/// A control request whose answer waits for its effect.
pub(super) struct Waiter {
    awaited: Awaited,
    reply: oneshot::Sender<Response>,
    deadline: Instant,
}

impl Waiter {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Hub {
    pub(super) async fn handle_request(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Response>,
    ) {
        let Some((request, reply)) = Box::pin(self.handle_owner_request(request, reply)).await
        else {
            return;
        };
        match request {
            Request::Status {} => {
                let _ = reply.send(Response::Ok(self.status()));
            }
            Request::Snapshot { path } => self.snapshot(path, reply),
            Request::Privacy { state } => self.privacy_request(state, reply),
            Request::Simulate { simulation } => self.simulate(simulation, reply),
            Request::InviteCreate {
                name,
                ttl_secs,
                knock,
            } => self.create_invite(&name, ttl_secs, knock, reply).await,
            Request::InviteList {} => {
                let _ = reply.send(Response::Ok(self.invite_list()));
            }
            Request::InviteRevoke { id } => {
                if let Err(e) = self.call.revoke_invite(&id) {
                    let _ = reply.send(Response::Error(e.to_string()));
                    return;
                }
                self.carry_out().await;
                self.reply_when_saved(reply, json!({ "revoked": id }));
            }
            // Owners' requests were answered above.
            _ => {
                let _ = reply.send(Response::Error("not handled".into()));
            }
        }
    }

    /// Answer the requests whose effect has happened, or whose time is up.
    pub(super) fn answer_waiters(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            match self.outcome(waiter.awaited) {
                Some(response) => {
                    let _ = waiter.reply.send(response);
                }
                None if now >= waiter.deadline => {
                    let _ = waiter.reply.send(Response::Error(format!(
                        "{:?} did not happen within {} s",
                        waiter.awaited,
                        EFFECT_LIMIT.as_secs()
                    )));
                }
                None => self.waiters.push(waiter),
            }
        }
    }

    fn wait_for(&mut self, awaited: Awaited, reply: oneshot::Sender<Response>) {
        self.waiters.push(Waiter {
            awaited,
            reply,
            deadline: Instant::now() + EFFECT_LIMIT,
        });
        self.answer_waiters(Instant::now());
    }

    /// The answer once `awaited` holds; None while it does not yet.
    fn outcome(&self, awaited: Awaited) -> Option<Response> {
        let capture_closed = self.media.as_ref().is_none_or(|m| m.capture_closed());
        let privacy_on = json!({ "privacy": "on" });
        match awaited {
            Awaited::PrivacyOn => {
                (self.privacy.is_on() && capture_closed).then_some(Response::Ok(privacy_on))
            }
            Awaited::Switch(OnOff::On) => (self.privacy.switch_on() == Some(true)
                && capture_closed)
                .then_some(Response::Ok(privacy_on)),
            Awaited::Switch(OnOff::Off) if self.privacy.switch_on() != Some(false) => None,
            Awaited::Switch(OnOff::Off) if self.privacy.is_on() => Some(Response::Error(
                "privacy stays on: it was paused from software; flip the switch on and off \
                 to release it"
                    .into(),
            )),
            Awaited::Switch(OnOff::Off) => Some(Response::Ok(json!({ "privacy": "off" }))),
            Awaited::Device(kind, action) => {
                let media = self.media.as_ref()?;
                // While privacy is on the device is closed; a plug or unplug shows later.
                let seen =
                    self.privacy.is_on() || media.problem(kind).is_none() == (action == Plug::Plug);
                seen.then(|| Response::Ok(json!({ "device": kind_name(kind), "action": action })))
            }
        }
    }

    /// `hearth privacy on|off`. On the dev board the command flips the simulated switch. On a
    /// hardware board it can turn privacy on, never off.
    fn privacy_request(&mut self, state: OnOff, reply: oneshot::Sender<Response>) {
        if !self.privacy.is_hardware() && self.privacy.simulated_switch().is_some() {
            return self.flip_switch(state, reply);
        }
        match state {
            OnOff::On => {
                let effects = self.privacy.handle_software_on("command line");
                self.apply_privacy(effects);
                self.wait_for(Awaited::PrivacyOn, reply);
            }
            OnOff::Off => {
                let _ = reply.send(Response::Error(
                    "privacy can only be turned off with the switch on the box".into(),
                ));
            }
        }
    }

    /// Privacy on from software, named (`who`, for the privacy log; `name`, for the TV),
    /// answered once the camera and mic are closed.
    pub(super) fn software_pause(
        &mut self,
        who: &str,
        name: String,
        reply: oneshot::Sender<Response>,
    ) {
        if !self.privacy.is_on() {
            self.paused_by = Some(name);
        }
        let effects = self.privacy.handle_software_on(who);
        self.apply_privacy(effects);
        self.wait_for(Awaited::PrivacyOn, reply);
    }

    fn simulate(&mut self, simulation: Simulation, reply: oneshot::Sender<Response>) {
        let (kind, action) = match simulation {
            Simulation::Switch { state } => return self.flip_switch(state, reply),
            Simulation::Camera { action } => (MediaKindTag::Video, action),
            Simulation::Mic { action } => (MediaKindTag::Audio, action),
            Simulation::ScreenFailure => return self.fail_screen(reply),
            Simulation::SignallingCut { participant } => {
                return self.cut_signalling(&participant, reply)
            }
        };
        let Some(media) = &self.media else {
            let _ = reply.send(Response::Error("box media is off".into()));
            return;
        };
        match media.simulate_present(kind, action == Plug::Plug) {
            Ok(()) => self.wait_for(Awaited::Device(kind, action), reply),
            Err(e) => {
                let _ = reply.send(Response::Error(e));
            }
        }
    }

    /// Answered once the connection is dropped; the page's return shows in `hearth status`.
    fn cut_signalling(&mut self, participant: &str, reply: oneshot::Sender<Response>) {
        let conn = crate::call::room::ParticipantId::parse(participant)
            .and_then(|id| self.call.conn_of_participant(id));
        let answer = match conn.and_then(|conn| self.conns.get(&conn)) {
            Some(tx) => {
                let _ = tx.try_send(WsCommand::Drop);
                Response::Ok(serde_json::json!({ "cut": participant }))
            }
            None => Response::Error(format!("{participant:?} has no connection to cut")),
        };
        let _ = reply.send(answer);
    }

    /// Answered at once: the rebuild shows in `hearth status` (`box.screen_restarts`).
    fn fail_screen(&mut self, reply: oneshot::Sender<Response>) {
        let answer = match &self.media {
            Some(media) if media.is_simulated() => {
                media.tv(crate::media::tv::Command::SimulateFailure);
                Response::Ok(serde_json::json!({ "screen": "failing" }))
            }
            Some(_) => Response::Error("this board's screen is real, not simulated".into()),
            None => Response::Error("box media is off".into()),
        };
        let _ = reply.send(answer);
    }

    fn flip_switch(&mut self, state: OnOff, reply: oneshot::Sender<Response>) {
        let Some(switch) = self.privacy.simulated_switch().cloned() else {
            let _ = reply.send(Response::Error(
                "this board's switch is real, not simulated".into(),
            ));
            return;
        };
        // The simulated switch reports like a real line (with bounce, if configured): its
        // readings come back through the hub's loop, which answers once they settle.
        tokio::spawn(async move { switch.flip(state.is_on()).await });
        self.wait_for(Awaited::Switch(state), reply);
    }

    fn snapshot(&self, path: String, reply: oneshot::Sender<Response>) {
        let Some(media) = &self.media else {
            let _ = reply.send(Response::Error(
                "this box has no screen (box media is off)".into(),
            ));
            return;
        };
        // The TV's thread answers; the hub does not wait for it.
        let (tx, rx) = oneshot::channel();
        media.tv(tv::Command::Snapshot(path.into(), tx));
        tokio::spawn(async move {
            let response = match rx.await {
                Ok(Ok(())) => Response::Ok(json!({ "written": true })),
                Ok(Err(e)) => Response::Error(e),
                Err(_) => Response::Error("the screen is not running".into()),
            };
            let _ = reply.send(response);
        });
    }

    async fn create_invite(
        &mut self,
        name: &str,
        ttl_secs: Option<u64>,
        knock: bool,
        reply: oneshot::Sender<Response>,
    ) {
        let ttl = match ttl_secs {
            None => self.links.default_ttl(),
            Some(secs) if (60..=MAX_INVITE_TTL.as_secs()).contains(&secs) => {
                Duration::from_secs(secs)
            }
            Some(_) => {
                let _ = reply.send(Response::Error(
                    "a link lasts between 1 minute and 30 days".into(),
                ));
                return;
            }
        };
        let (id, links) = self.new_invite(name, ttl, None);
        if knock {
            let _ = self.call.set_invite_knock(&id, true);
        }
        self.carry_out().await;
        let answer = json!({ "id": id, "url": links.url, "at_home": links.at_home });
        self.reply_when_saved(reply, answer);
    }

    /// Answer once the invites as they are now are on disk (off the hub's loop).
    fn reply_when_saved(&self, reply: oneshot::Sender<Response>, answer: serde_json::Value) {
        let written = self.invite_file.written(self.invite_file.latest_version());
        tokio::spawn(async move {
            let response = match tokio::time::timeout(EFFECT_LIMIT, written).await {
                Ok(true) => Response::Ok(answer),
                _ => Response::Error("the invites could not be saved".into()),
            };
            let _ = reply.send(response);
        });
    }

    fn invite_list(&self) -> serde_json::Value {
        let now = unix_seconds(SystemTime::now());
        let list = self.call.invites().iter().map(|i| {
            let state = if i.revoked {
                "revoked"
            } else if i.expires <= now {
                "expired"
            } else {
                "valid"
            };
            json!({
                "id": i.id,
                "name": i.name,
                "created": i.created,
                "expires": i.expires,
                "last_used": i.last_used,
                "state": state,
                "knock": i.knock,
            })
        });
        serde_json::Value::Array(list.collect())
    }
}

fn kind_name(kind: MediaKindTag) -> &'static str {
    match kind {
        MediaKindTag::Video => "camera",
        MediaKindTag::Audio => "mic",
    }
}
