//! Keeps the owner's domain name pointing at the home: when the router reports a new external
//! address (`reach::mapper`), the owner's DNS is told, by RFC 2136 dynamic update with a TSIG
//! key or by the dyndns2 HTTP protocol (`[dns]`). Only the server the owner named is
//! contacted, and only when the address changes (or an earlier attempt failed).
//!
//! [`Plan`] is the pure core: the address wanted, the one last published and past failures
//! in; whether to send an update now out.

pub mod dyndns2;
pub mod rfc2136;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::Reach;
use crate::call::invite::unix_seconds;
use crate::config::name::DnsUpdateConfig;

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// After a provider says the account or name is wrong, it is asked again only this rarely
/// (dyndns2 providers block clients that repeat a rejected update).
const REJECTED_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// After a provider says it has trouble (`911`, `dnserr`): the protocol asks for 30 minutes.
const PROVIDER_TROUBLE_BACKOFF: Duration = Duration::from_secs(1800);

/// How long a failure keeps the box from asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// No answer, a refused or unsigned one: from 5 s, doubling to 10 minutes.
    Retry,
    /// The provider says it has trouble: at least 30 minutes.
    ProviderTrouble,
    /// The provider rejected the account or name: 6 hours.
    Rejected,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsUpdateError {
    #[error("cannot reach the DNS server: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer from the DNS server {0}")]
    NoAnswer(SocketAddr),
    #[error("the DNS server's name {0} does not resolve")]
    Unresolved(String),
    #[error(transparent)]
    Update(#[from] rfc2136::UpdateError),
    #[error("the update server: {0}")]
    Http(String),
    #[error("the update server answered `{0}`")]
    TryLater(String),
    #[error("the update server rejected the update: `{0}` (check [dns] url, username, password and remote.name)")]
    Rejected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the address changes.
    Idle,
    Update(IpAddr),
    WaitUntil(SystemTime),
}

#[derive(Debug, Default)]
pub struct Plan {
    published: Option<IpAddr>,
    failures: u32,
    retry_at: Option<SystemTime>,
}

impl Plan {
    pub fn step(&self, now: SystemTime, wanted: Option<IpAddr>) -> Step {
        let Some(wanted) = wanted else {
            // No external address known: the record is left as it is.
            return Step::Idle;
        };
        if self.published == Some(wanted) {
            return Step::Idle;
        }
        match self.retry_at {
            Some(at) if now < at => Step::WaitUntil(at),
            _ => Step::Update(wanted),
        }
    }

    pub fn published(&mut self, address: IpAddr) {
        *self = Plan {
            published: Some(address),
            ..Plan::default()
        };
    }

    /// The update failed: when to try again.
    pub fn failed(&mut self, now: SystemTime, kind: Backoff) -> SystemTime {
        let doubling = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        let backoff = match kind {
            Backoff::Retry => doubling,
            Backoff::ProviderTrouble => doubling.max(PROVIDER_TROUBLE_BACKOFF),
            Backoff::Rejected => REJECTED_BACKOFF,
        };
        self.failures += 1;
        let at = now + backoff;
        self.retry_at = Some(at);
        at
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The `dns` section of `hearth status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DnsStatus {
    Off,
    /// No external address from the router yet.
    Waiting,
    Updated {
        name: String,
        address: IpAddr,
        at_unix: u64,
        /// Updates sent since the daemon started.
        updates: u32,
    },
    Failed {
        address: IpAddr,
        error: String,
        retry_at_unix: u64,
        failures: u32,
    },
}

/// What the task needs.
pub struct DnsSettings {
    pub config: DnsUpdateConfig,
    pub name: String,
}

/// Follow the router's external address for ever (spawn it).
pub async fn keep_pointing(
    settings: DnsSettings,
    mut reach: watch::Receiver<Reach>,
    status: watch::Sender<DnsStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut plan = Plan::default();
    let mut updates = 0;
    status.send_replace(DnsStatus::Waiting);
    loop {
        let wanted = reach.borrow_and_update().mapping().map(|m| m.external_ip);
        let now = SystemTime::now();
        let wait = match plan.step(now, wanted) {
            Step::Idle => None,
            Step::WaitUntil(at) => Some(at.duration_since(now).unwrap_or_default()),
            Step::Update(address) => {
                match update(&settings, address).await {
                    Ok(()) => {
                        plan.published(address);
                        updates += 1;
                        tracing::info!("the box's name now points at the home's new address");
                        status.send_replace(DnsStatus::Updated {
                            name: settings.name.clone(),
                            address,
                            at_unix: unix_seconds(SystemTime::now()),
                            updates,
                        });
                    }
                    Err(e) => {
                        let kind = match e {
                            DnsUpdateError::Rejected(_) => Backoff::Rejected,
                            DnsUpdateError::TryLater(_) => Backoff::ProviderTrouble,
                            _ => Backoff::Retry,
                        };
                        let retry_at = plan.failed(SystemTime::now(), kind);
                        tracing::warn!(
                            "cannot update the DNS record of the box's name (`hearth status` says why)"
                        );
                        tracing::debug!("DNS update: {e}");
                        status.send_replace(DnsStatus::Failed {
                            address,
                            error: e.to_string(),
                            retry_at_unix: unix_seconds(retry_at),
                            failures: plan.failures(),
                        });
                    }
                }
                continue;
            }
        };
        let waited = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = waited => {}
            changed = reach.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

async fn update(settings: &DnsSettings, address: IpAddr) -> Result<(), DnsUpdateError> {
    match &settings.config {
        DnsUpdateConfig::Off => Ok(()),
        DnsUpdateConfig::Rfc2136 {
            server,
            zone,
            key_name,
            key,
            ttl,
        } => {
            let server = tokio::net::lookup_host(server.as_str())
                .await
                .ok()
                .and_then(|mut found| found.next())
                .ok_or_else(|| DnsUpdateError::Unresolved(server.clone()))?;
            let key = rfc2136::TsigKey {
                name: key_name,
                secret: &key.0,
            };
            let id = rand::random::<u16>();
            let message = rfc2136::build(
                zone,
                &settings.name,
                address,
                *ttl,
                &key,
                id,
                SystemTime::now(),
            )?;
            rfc2136::send(server, &message, &key).await
        }
        DnsUpdateConfig::Dyndns2 {
            url,
            username,
            password,
            root,
        } => {
            let answer = dyndns2::send(
                url,
                username,
                &password.0,
                &settings.name,
                address,
                root.as_deref(),
            )
            .await?;
            match answer {
                dyndns2::Answer::Updated => Ok(()),
                dyndns2::Answer::TryLater(why) => Err(DnsUpdateError::TryLater(why)),
                dyndns2::Answer::Rejected(why) => Err(DnsUpdateError::Rejected(why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn an_update_only_when_the_address_changes() {
        let mut plan = Plan::default();
        let first: IpAddr = "203.0.114.1".parse().unwrap();
        let second: IpAddr = "203.0.114.2".parse().unwrap();
        assert_eq!(plan.step(at(0), None), Step::Idle);
        assert_eq!(plan.step(at(0), Some(first)), Step::Update(first));
        plan.published(first);
        assert_eq!(plan.step(at(1), Some(first)), Step::Idle);
        assert_eq!(
            plan.step(at(1), None),
            Step::Idle,
            "a lost mapping keeps the record"
        );
        assert_eq!(plan.step(at(2), Some(second)), Step::Update(second));
    }

    #[test]
    fn failures_back_off_and_rejections_wait_long() {
        let mut plan = Plan::default();
        let address: IpAddr = "203.0.114.1".parse().unwrap();
        assert_eq!(plan.failed(at(0), Backoff::Retry), at(5));
        assert_eq!(plan.step(at(4), Some(address)), Step::WaitUntil(at(5)));
        assert_eq!(plan.step(at(5), Some(address)), Step::Update(address));
        assert_eq!(plan.failed(at(5), Backoff::Retry), at(15));
        assert_eq!(plan.failed(at(0), Backoff::ProviderTrouble), at(1800));
        for _ in 0..20 {
            plan.failed(at(0), Backoff::Retry);
        }
        assert_eq!(plan.failed(at(0), Backoff::Retry), at(600));
        assert_eq!(plan.failed(at(0), Backoff::Rejected), at(6 * 3600));
        plan.published(address);
        assert_eq!(plan.failures(), 0);
    }
}
