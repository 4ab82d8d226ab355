//! The CLI ↔ daemon control channel: one JSON request and one JSON response per connection
//! on a Unix socket in the state dir, mode 0600 so only the owner can mint invites. Both
//! sides live here: the typed requests, `serve` (the daemon's accept loop) and `request`
//! (the CLI's).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

pub const SOCKET_NAME: &str = "control.sock";
const MAX_REQUEST_BYTES: u64 = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Empty braces, not unit variants, so unknown fields are refused here too.
    Status {},
    InviteCreate {
        name: String,
        ttl_secs: Option<u64>,
        /// Knock first: whoever comes with the link waits until someone at home lets them in.
        #[serde(default)]
        knock: bool,
    },
    InviteList {},
    InviteRevoke {
        id: String,
    },
    /// Write what the TV shows to a PNG file (a path on the box).
    Snapshot {
        path: String,
    },
    /// `hearth privacy on|off`. Answered once it has taken effect.
    Privacy {
        state: OnOff,
    },
    /// Simulated devices (dev board, or a board whose switch line is simulated). Answered
    /// once the daemon has seen the change.
    Simulate {
        simulation: Simulation,
    },
    /// Let in (or turn away) someone knocking with a knock-first link.
    KnockAnswer {
        knock: u64,
        let_in: bool,
    },
    /// End someone's part in the call ("p3").
    Remove {
        participant: String,
    },
    /// The privacy log's latest lines.
    PrivacyLog {},
    /// The box's name on everyone's screen.
    Rename {
        name: String,
    },
    /// The owners' phones (never their credentials).
    Owners {},
    OwnerRevoke {
        id: String,
    },
    /// The owner page exchanges the code the TV showed (after the switch pattern at the box)
    /// for an owner credential.
    PairOwner {
        token: String,
        name: String,
    },
    /// A request from an owner's phone, carrying its credential. Only what an owner may do
    /// is allowed (see `Request::owner_may`).
    AsOwner {
        credential: String,
        request: Box<Request>,
    },
    /// `hearth owners --pairing-url`: the owner page link the TV shows as a QR code while the
    /// pairing window is open. For the box's own command line only (the socket is the box's
    /// root of trust, and `hearth snapshot` shows the same code as a picture); never over the
    /// network.
    OwnerPairingUrl {},
}

/// What an owner's phone is told when it asks for something only the box itself may do.
pub const NOT_FOR_OWNERS: &str = "That is not something an owner's phone can do.";

impl Request {
    /// What an owner's phone may ask for over the network. Not: writing files on the box
    /// (snapshot), simulated devices, pairing, or turning privacy off.
    pub fn owner_may(&self) -> bool {
        match self {
            Request::Status {}
            | Request::InviteCreate { .. }
            | Request::InviteList {}
            | Request::InviteRevoke { .. }
            | Request::KnockAnswer { .. }
            | Request::Remove { .. }
            | Request::PrivacyLog {}
            | Request::Rename { .. }
            | Request::Owners {}
            | Request::OwnerRevoke { .. } => true,
            Request::Privacy { state } => *state == OnOff::On,
            Request::Snapshot { .. }
            | Request::Simulate { .. }
            | Request::PairOwner { .. }
            | Request::AsOwner { .. }
            | Request::OwnerPairingUrl {} => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Plug {
    Plug,
    Unplug,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(rename_all = "snake_case")]
pub enum Simulation {
    /// Unplug or plug the dev board's camera.
    Camera { action: Plug },
    /// Unplug or plug the dev board's microphone.
    Mic { action: Plug },
    /// Flip the simulated privacy switch.
    Switch { state: OnOff },
    /// Make the dev board's screen fail as an unplugged display does (it is rebuilt).
    ScreenFailure,
    /// Break a phone's signalling connection as a lost network does (no goodbye): its page
    /// should come back by itself as the same participant.
    SignallingCut {
        /// The participant ("p1"), as `hearth status` names them.
        participant: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// A request on its way to the hub, with where to send the answer.
pub type Envelope = (Request, oneshot::Sender<Response>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Hearth is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("Hearth is already running (control socket {0} answers)")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon sent something unreadable: {0}")]
    BadResponse(String),
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Bind the control socket, replacing a stale one left by a crash but never a live daemon's.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(state_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path));
        }
        let _ = std::fs::remove_file(&path);
    }
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Accept CLI connections and pass their requests to the hub.
pub async fn serve(listener: UnixListener, hub: mpsc::Sender<Envelope>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, hub).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, hub: mpsc::Sender<Envelope>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error(format!("bad request: {e}")),
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if hub.send((request, tx)).await.is_err() {
                Response::Error("Hearth is shutting down".into())
            } else {
                rx.await
                    .unwrap_or_else(|_| Response::Error("Hearth is shutting down".into()))
            }
        }
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// The CLI side: one request, one response.
pub async fn request(state_dir: &Path, request: &Request) -> Result<Response, ControlError> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|_| ControlError::NotRunning(path.clone()))?;
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut text =
        serde_json::to_string(request).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    text.push('\n');
    write.write_all(text.as_bytes()).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ControlError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_typed_on_the_wire() {
        let text = r#"{"cmd":"simulate","simulation":{"camera":{"action":"unplug"}}}"#;
        let request: Request = serde_json::from_str(text).unwrap();
        assert_eq!(
            request,
            Request::Simulate {
                simulation: Simulation::Camera {
                    action: Plug::Unplug
                }
            }
        );
        for bad in [
            r#"{"cmd":"privacy","state":"maybe"}"#,
            r#"{"cmd":"simulate","simulation":{"toaster":{"action":"plug"}}}"#,
            r#"{"cmd":"status","extra":1}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
