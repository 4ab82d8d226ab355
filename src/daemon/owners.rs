//! What owners do from their phones (and the CLI, on the box): pair a phone by the code the
//! TV showed, make and withdraw links, answer knocks, remove someone, read the privacy log,
//! rename the box. Over the network every request carries an owner credential; what it may
//! ask is `Request::owner_may`.

use std::time::{Instant, SystemTime};

use serde_json::json;
use tokio::sync::oneshot;

use super::control::{OnOff, Request, Response, NOT_FOR_OWNERS};
use super::hub::Hub;
use crate::call::room::ParticipantId;

/// Lines of the privacy log an owner is shown (the newest).
const PRIVACY_LOG_LINES: usize = 200;
/// The box's name as its owners set it, in the state dir.
pub const BOX_NAME_FILE: &str = "box-name";

impl Hub {
    /// Requests only owners make. Answers those it takes; hands back the others.
    pub(super) async fn handle_owner_request(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Response>,
    ) -> Option<(Request, oneshot::Sender<Response>)> {
        let response = match request {
            Request::PairOwner { token, name } => self.pair_owner(&token, &name),
            Request::AsOwner {
                credential,
                request,
            } => {
                let owner = match self.owners.check(&credential, SystemTime::now()) {
                    Err(refusal) => Err(refusal.to_string()),
                    Ok(_) if !request.owner_may() => Err(NOT_FOR_OWNERS.to_string()),
                    Ok(owner) => Ok((owner.id.clone(), owner.name.clone())),
                };
                match (owner, *request) {
                    (Err(refusal), _) => Response::Error(refusal),
                    (Ok((id, name)), Request::Privacy { state: OnOff::On }) => {
                        // A pause from an owner's phone, named in the privacy log like one
                        // from the call page; only the switch at the box releases it.
                        let who = format!("owner {name:?} ({id}), from the owner page");
                        self.software_pause(&who, name, reply);
                        return None;
                    }
                    // Checked: the inner request is answered like one from the box's own CLI.
                    (Ok(_), request) => {
                        return Box::pin(self.handle_owner_request(request, reply)).await
                    }
                }
            }
            Request::OwnerPairingUrl {} => match (&self.pairing_url, self.owners.pairing_until()) {
                (Some(url), Some(_)) => Response::Ok(json!({ "url": url })),
                _ => Response::Error(
                    "No owner code is showing. Flip the switch on, off, on to show one.".into(),
                ),
            },
            Request::KnockAnswer { knock, let_in } => {
                if self.call.handle_knock_answer(knock, let_in, Instant::now()) {
                    Response::Ok(json!({ "knock": knock, "let_in": let_in }))
                } else {
                    Response::Error("Nobody is knocking with that number any more.".into())
                }
            }
            Request::Remove { participant } => self.remove(&participant),
            Request::PrivacyLog {} => self.privacy_log().await,
            Request::Rename { name } => self.rename(&name).await,
            Request::Owners {} => Response::Ok(json!(self
                .owners
                .list()
                .iter()
                .map(|o| json!({
                    "id": o.id,
                    "name": o.name,
                    "created": o.created,
                    "last_used": o.last_used,
                    "revoked": o.revoked,
                }))
                .collect::<Vec<_>>())),
            Request::OwnerRevoke { id } => {
                if self.owners.revoke(&id) {
                    self.owners_file.save(self.owners.clone());
                    Response::Ok(json!({ "revoked": id }))
                } else {
                    Response::Error(format!("no owner with id {id}"))
                }
            }
            other => return Some((other, reply)),
        };
        let _ = reply.send(response);
        None
    }

    fn pair_owner(&mut self, token: &str, name: &str) -> Response {
        match self
            .owners
            .pair(token, name, Instant::now(), SystemTime::now())
        {
            Ok((owner, credential)) => {
                tracing::info!("a phone became an owner ({})", owner.id);
                self.pairing_url = None;
                self.owners_file.save(self.owners.clone());
                self.show_idle_screen();
                Response::Ok(
                    json!({ "id": owner.id, "name": owner.name, "credential": credential }),
                )
            }
            Err(refusal) => Response::Error(refusal.to_string()),
        }
    }

    fn remove(&mut self, participant: &str) -> Response {
        let id = ParticipantId::parse(participant).filter(|id| *id != ParticipantId::BOX);
        match id {
            Some(id) if self.call.remove_participant(id) => {
                Response::Ok(json!({ "removed": participant }))
            }
            _ => Response::Error(format!("nobody called {participant:?} is in the call")),
        }
    }

    async fn privacy_log(&self) -> Response {
        match self.privacy.log().read().await {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let newest = &lines[lines.len().saturating_sub(PRIVACY_LOG_LINES)..];
                Response::Ok(json!(newest))
            }
            Err(_) => Response::Error("the privacy log cannot be read".into()),
        }
    }

    async fn rename(&mut self, name: &str) -> Response {
        let name = crate::call::protocol::clean_name(name);
        self.call.rename_box(&name);
        let path = self.state_dir.join(BOX_NAME_FILE);
        let text = format!("{name}\n");
        // Replaced, not rewritten: first-boot setup may have left it owned by root.
        let saved = tokio::task::spawn_blocking(move || {
            crate::durable::write(&path, text.as_bytes(), 0o644)
        })
        .await;
        match saved {
            Ok(Ok(())) => Response::Ok(json!({ "name": name })),
            _ => Response::Error("the new name could not be saved".into()),
        }
    }
}
