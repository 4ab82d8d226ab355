//! The one task that owns the call: it pumps the UDP socket, the WebSockets and the control
//! requests into the pure `Call` core and carries out what it returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::call::{Call, ConnId, Output};
use crate::control::{Envelope, Request, Response};
use crate::invite::unix_seconds;
use crate::protocol::ServerMsg;

/// What a WebSocket task tells the hub.
#[derive(Debug)]
pub enum WsEvent {
    Open(ConnId, mpsc::UnboundedSender<WsCommand>),
    Text(ConnId, String),
    Closed(ConnId),
}

/// What the hub tells a WebSocket task.
#[derive(Debug)]
pub enum WsCommand {
    Send(ServerMsg),
    Close,
}

pub struct Hub {
    pub call: Call,
    pub socket: UdpSocket,
    /// Drop datagrams from anywhere but loopback (dev board without `--lan`).
    pub loopback_only: bool,
    /// `https://host:port` for join links.
    pub base_url: String,
    pub default_ttl: Duration,
}

pub fn join_url(base_url: &str, token: &str) -> String {
    format!("{base_url}/join#{token}")
}

impl Hub {
    pub async fn run(
        mut self,
        mut ws: mpsc::Receiver<WsEvent>,
        mut control: mpsc::Receiver<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let local = self.socket.local_addr().ok();
        let mut conns: HashMap<ConnId, mpsc::UnboundedSender<WsCommand>> = HashMap::new();
        let mut buf = vec![0u8; 2000];
        let mut out = Vec::new();
        let mut next = Instant::now();
        loop {
            let sleep = tokio::time::sleep_until(next.into());
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let now = Instant::now();
                    match received {
                        Ok((n, source)) if !self.loopback_only || source.ip().is_loopback() => {
                            let destination = local.unwrap_or(source);
                            next = self.call.datagram(now, source, destination, &buf[..n], &mut out);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("udp receive: {e}"),
                    }
                }
                Some(event) = ws.recv() => {
                    let now = Instant::now();
                    next = match event {
                        WsEvent::Open(conn, tx) => {
                            conns.insert(conn, tx);
                            self.call.connected(conn, now);
                            next
                        }
                        WsEvent::Text(conn, text) => {
                            self.call.message(conn, &text, now, SystemTime::now(), &mut out)
                        }
                        WsEvent::Closed(conn) => {
                            conns.remove(&conn);
                            self.call.closed(conn, now, &mut out)
                        }
                    };
                }
                Some((request, reply)) = control.recv() => {
                    let _ = reply.send(self.control(request));
                }
                _ = sleep => {
                    next = self.call.timeout(Instant::now(), &mut out);
                }
                _ = shutdown.changed() => break,
            }
            self.carry_out(&mut out, &mut conns).await;
        }
        for tx in conns.values() {
            let _ = tx.send(WsCommand::Close);
        }
    }

    async fn carry_out(
        &mut self,
        out: &mut Vec<Output>,
        conns: &mut HashMap<ConnId, mpsc::UnboundedSender<WsCommand>>,
    ) {
        for output in out.drain(..) {
            match output {
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!("udp send: {e}");
                    }
                }
                Output::Send(conn, msg) => {
                    if let Some(tx) = conns.get(&conn) {
                        let _ = tx.send(WsCommand::Send(msg));
                    }
                }
                Output::Close(conn) => {
                    if let Some(tx) = conns.remove(&conn) {
                        let _ = tx.send(WsCommand::Close);
                    }
                }
                Output::SaveInvites => {
                    if let Err(e) = self.call.invites_mut().save() {
                        tracing::error!("{e}");
                    }
                }
            }
        }
    }

    fn control(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Ok(self.status()),
            Request::InviteCreate { name, ttl_secs } => {
                let ttl = ttl_secs
                    .map(Duration::from_secs)
                    .unwrap_or(self.default_ttl);
                let url = self.new_invite(&name, ttl);
                match url {
                    Ok((id, url)) => Response::Ok(serde_json::json!({ "id": id, "url": url })),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::InviteList => {
                let now = unix_seconds(SystemTime::now());
                let list: Vec<serde_json::Value> = self
                    .call
                    .invites_mut()
                    .list()
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id,
                            "name": i.name,
                            "created": i.created,
                            "expires": i.expires,
                            "last_used": i.last_used,
                            "state": if i.revoked { "revoked" } else if i.expires <= now { "expired" } else { "valid" },
                        })
                    })
                    .collect();
                Response::Ok(serde_json::Value::Array(list))
            }
            Request::InviteRevoke { id } => {
                let invites = self.call.invites_mut();
                match invites.revoke(&id).and_then(|_| invites.save()) {
                    Ok(()) => Response::Ok(serde_json::json!({ "revoked": id })),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
        }
    }

    /// Make, save and return a new invite's id and join URL.
    pub fn new_invite(
        &mut self,
        name: &str,
        ttl: Duration,
    ) -> Result<(String, String), crate::invite::InviteError> {
        let now = SystemTime::now();
        let invites = self.call.invites_mut();
        invites.prune(now);
        let (invite, token) = invites.create(name, ttl, now);
        invites.save()?;
        Ok((invite.id, join_url(&self.base_url, &token)))
    }

    fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let media = self.call.sfu().summaries();
        let participants: Vec<serde_json::Value> = self
            .call
            .room()
            .participants()
            .iter()
            .map(|p| {
                let id = p.id.to_string();
                let peer = media.iter().find(|m| m.id == id);
                serde_json::json!({
                    "id": id,
                    "name": p.name,
                    "mic": p.audio,
                    "camera": p.video,
                    "in_call_secs": now.saturating_duration_since(p.joined_at).as_secs(),
                    "media_connected": peer.is_some_and(|m| m.connected),
                    "tracks_published": peer.map_or(0, |m| m.tracks_published),
                    "tracks_subscribed": peer.map_or(0, |m| m.tracks_subscribed),
                })
            })
            .collect();
        serde_json::json!({
            "participants": participants,
            "video_codec": self.call.room().publish_codec(),
            "media": self.call.sfu().counters(),
            "udp": self.socket.local_addr().ok().map(|a: SocketAddr| a.to_string()),
        })
    }
}
