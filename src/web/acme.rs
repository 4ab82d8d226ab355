//! A certificate every browser trusts for the owner's domain name, from the ACME CA the owner
//! configured (`[acme]`; Let's Encrypt by default). The CA checks that the name is ours with
//! TLS-ALPN-01 (RFC 8737) on port 443 of the name, which the router forwards to the HTTPS
//! server; [`super::certs::ServerCerts`] answers the check and later presents the certificate.
//!
//! [`Plan`] is the pure core: given the time, whether the clock is known to be right, the
//! certificate in use and past failures, it says whether to request one now. Renewal comes at
//! two thirds of the certificate's lifetime; failures back off from a minute to six hours.
//! Nothing is requested while the clock is not known to be right: a box whose clock is behind
//! would keep a certificate it believes valid, or ask at the wrong moment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::certs::{certified_key, ServerCerts};
use crate::call::invite::unix_seconds;
use crate::clock::ClockState;
use crate::config::name::AcmeConfig;
use crate::reach::dns_update::DnsStatus;
use crate::reach::Reach;

/// The first retry after a failure; each further failure doubles it, up to [`MAX_BACKOFF`].
/// Five minutes keeps within Let's Encrypt's five failed checks per name and hour.
const FIRST_BACKOFF: Duration = Duration::from_secs(300);
/// Never two requests closer than this, even if a new certificate is already due (a clock
/// that is wrong but marked right, a CA issuing very short lifetimes).
const MIN_GAP: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How often the clock is asked again while it is not known to be right.
const CLOCK_CHECK: Duration = Duration::from_secs(2);
/// One request, from the new order to the certificate, gives up after this.
const REQUEST_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME CA: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the CA did not offer the TLS-ALPN-01 check")]
    NoTlsAlpnChallenge,
    #[error("the CA's check of {name} failed: {detail}")]
    CheckFailed { name: String, detail: String },
    #[error("cannot make a key or request: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA's certificate cannot be used: {0}")]
    Unusable(String),
    #[error("cannot keep ACME state in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no answer from the CA within {0:?}")]
    TimedOut(Duration),
}

/// When a certificate starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Two thirds into its lifetime (Let's Encrypt's 90 days: at day 60).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// What the certificate task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Request,
    WaitUntil(SystemTime),
    WaitForClock,
}

/// Failures so far and when to try again.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    failures: u32,
    retry_at: Option<SystemTime>,
}

impl Plan {
    pub fn step(&self, now: SystemTime, clock: ClockState, current: Option<Validity>) -> Step {
        if clock != ClockState::Synchronized {
            return Step::WaitForClock;
        }
        let due = current.map(|v| v.renew_at()).unwrap_or(UNIX_EPOCH);
        let due = due.max(self.retry_at.unwrap_or(UNIX_EPOCH));
        if now >= due {
            Step::Request
        } else {
            Step::WaitUntil(due)
        }
    }

    /// A request failed at `now`: when to try again.
    pub fn failed(&mut self, now: SystemTime) -> SystemTime {
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.failures += 1;
        let at = now + backoff;
        self.retry_at = Some(at);
        at
    }

    pub fn succeeded(&mut self, now: SystemTime) {
        *self = Plan {
            failures: 0,
            retry_at: Some(now + MIN_GAP),
        };
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What `hearth status` and the TV say about the certificate for the owner's name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CertificateStatus {
    /// No `[acme]`: Hearth's own certificate serves every name.
    Off,
    /// Nothing is requested until the clock is known to be right.
    WaitingForClock,
    /// The CA's check could not reach the box yet: why.
    WaitingForReach {
        reason: String,
    },
    Requesting,
    Valid {
        name: String,
        not_after_unix: u64,
        renew_at_unix: u64,
        /// Certificates issued since the daemon started.
        issued: u32,
    },
    Failed {
        error: String,
        retry_at_unix: u64,
        failures: u32,
        /// Hearth's own certificate serves meanwhile; this one may still be valid.
        current_not_after_unix: Option<u64>,
    },
}

impl CertificateStatus {
    /// A line for the TV when something needs the owner's attention.
    pub fn tv_line(&self) -> Option<String> {
        match self {
            CertificateStatus::Failed { .. } => Some(
                "The certificate for the box's name could not be renewed (see hearth status)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Tell the hub only what changed: the loop says the same thing every few seconds while it
/// waits.
fn publish(status: &watch::Sender<CertificateStatus>, now: CertificateStatus) {
    status.send_if_modified(|shown| {
        let changed = *shown != now;
        *shown = now;
        changed
    });
}

/// What the task needs.
pub struct AcmeSettings {
    pub config: AcmeConfig,
    /// The owner's domain name.
    pub name: String,
    /// `<state dir>/acme`: the account key and the certificate.
    pub dir: PathBuf,
    pub clock_mark: PathBuf,
    /// What the router forwards (the CA's check comes to external port 443).
    pub reach: watch::Receiver<Reach>,
    /// The name's DNS record, when Hearth keeps it (`[dns]`).
    pub dns: Option<watch::Receiver<DnsStatus>>,
}

/// Whether the CA's check can reach the box now; why not otherwise. A check bound to fail
/// would only count against the CA's limit of failed checks.
pub fn checkable(reach: &Reach, dns: Option<&DnsStatus>) -> Result<(), String> {
    match reach {
        // The owner forwards port 443 by hand.
        Reach::Off => {}
        Reach::Trying => return Err("asking the router to forward port 443".into()),
        Reach::HomeOnly(why) => {
            return Err(format!("the router does not forward to the box: {why}"))
        }
        Reach::Outside(m) if m.https_port != 443 => {
            return Err(format!(
                "the router forwards external port {} to the box, not 443 where the CA checks",
                m.https_port
            ))
        }
        Reach::Outside(_) => {}
    }
    match dns {
        None | Some(DnsStatus::Updated { .. }) => Ok(()),
        Some(_) => Err("the name's DNS record is not up to date yet".into()),
    }
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

#[derive(Serialize, Deserialize)]
struct StoredCertificate {
    /// The CA's directory: a staging certificate is not kept once the owner moves on.
    directory: String,
    name: String,
    chain_pem: String,
    key_pem: String,
}

/// Keep a certificate for the name in `certs`, for ever (spawn it).
pub async fn keep_certified(
    settings: AcmeSettings,
    certs: Arc<ServerCerts>,
    status: watch::Sender<CertificateStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let AcmeSettings {
        config,
        name,
        dir,
        clock_mark,
        reach,
        dns,
    } = settings;
    let mut current = match load_certificate(&dir, &config.directory, &name) {
        Ok(Some((validity, key))) => {
            certs.set_trusted(&name, key);
            Some(validity)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("ignoring the stored ACME certificate: {e}");
            None
        }
    };
    let mut plan = Plan::default();
    let mut issued = 0;
    loop {
        let now = SystemTime::now();
        if current.is_some_and(|v| now >= v.not_after) {
            // An expired certificate is worse than Hearth's own: browsers refuse both, but
            // the own one at least works for a phone that installed Hearth's CA.
            certs.clear_trusted();
            current = None;
        }
        let clock = crate::clock::state(&clock_mark);
        let mut step = plan.step(now, clock, current);
        if step == Step::Request {
            let dns_now = dns.as_ref().map(|d| d.borrow().clone());
            if let Err(reason) = checkable(&reach.borrow(), dns_now.as_ref()) {
                publish(&status, CertificateStatus::WaitingForReach { reason });
                step = Step::WaitForClock;
            }
        }
        let wait = match step {
            Step::WaitForClock => {
                if clock != ClockState::Synchronized {
                    publish(&status, CertificateStatus::WaitingForClock);
                }
                CLOCK_CHECK
            }
            Step::WaitUntil(at) => {
                if plan.failures() == 0 {
                    if let Some(v) = current {
                        publish(
                            &status,
                            CertificateStatus::Valid {
                                name: name.clone(),
                                not_after_unix: unix_seconds(v.not_after),
                                renew_at_unix: unix_seconds(v.renew_at()),
                                issued,
                            },
                        );
                    }
                }
                // Re-checked at least hourly: a clock stepped by NTP moves `at`.
                at.duration_since(now)
                    .unwrap_or_default()
                    .min(Duration::from_secs(3600))
            }
            Step::Request => {
                publish(&status, CertificateStatus::Requesting);
                let request = request_certificate(&config, &name, &dir, &certs);
                let result = match tokio::time::timeout(REQUEST_LIMIT, request).await {
                    Ok(result) => result,
                    Err(_) => Err(AcmeError::TimedOut(REQUEST_LIMIT)),
                };
                certs.remove_challenge(&name);
                match result {
                    Ok((validity, key)) => {
                        certs.set_trusted(&name, key);
                        current = Some(validity);
                        plan.succeeded(SystemTime::now());
                        issued += 1;
                        tracing::info!(
                            "certificate for the box's name issued by the ACME CA, valid until {}",
                            humantime::format_rfc3339_seconds(validity.not_after)
                        );
                    }
                    Err(e) => {
                        let retry_at = plan.failed(SystemTime::now());
                        // The CA's words often hold the home's address: in the status only.
                        tracing::warn!(
                            "cannot get a certificate for the box's name (`hearth status` says why); trying again at {}",
                            humantime::format_rfc3339_seconds(retry_at)
                        );
                        tracing::debug!("ACME: {e}");
                        publish(
                            &status,
                            CertificateStatus::Failed {
                                error: e.to_string(),
                                retry_at_unix: unix_seconds(retry_at),
                                failures: plan.failures(),
                                current_not_after_unix: current.map(|v| unix_seconds(v.not_after)),
                            },
                        );
                    }
                }
                continue;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One order, from account to installed certificate.
async fn request_certificate(
    config: &AcmeConfig,
    name: &str,
    dir: &Path,
    certs: &ServerCerts,
) -> Result<(Validity, Arc<rustls::sign::CertifiedKey>), AcmeError> {
    let account = account(config, dir).await?;
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        if authorization.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or(AcmeError::NoTlsAlpnChallenge)?;
        let answer = challenge_answer(name, challenge.key_authorization().digest().as_ref())?;
        certs.add_challenge(name, answer);
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        let detail = order
            .state()
            .error
            .as_ref()
            .and_then(|p| p.detail.clone())
            .unwrap_or_else(|| format!("the order is {status:?}"));
        return Err(AcmeError::CheckFailed {
            name: name.to_string(),
            detail,
        });
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    let key_pem = key.serialize_pem();
    let (validity, certified) = usable(&chain_pem, &key_pem)?;
    let stored = StoredCertificate {
        directory: config.directory.clone(),
        name: name.to_string(),
        chain_pem,
        key_pem,
    };
    store(dir.join(CERTIFICATE_FILE), stored).await?;
    Ok((validity, certified))
}

const ACCOUNT_FILE: &str = "account.json";
const CERTIFICATE_FILE: &str = "certificate.json";

/// The stored account for this directory, or a new one.
async fn account(config: &AcmeConfig, dir: &Path) -> Result<Account, AcmeError> {
    let builder = || match &config.directory_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let path = dir.join(ACCOUNT_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<StoredAccount>(&text) {
            Ok(stored) if stored.directory == config.directory => {
                return Ok(builder()?.from_credentials(stored.credentials).await?);
            }
            Ok(_) => tracing::info!("the ACME directory changed: making a new account"),
            Err(e) => tracing::warn!("{} is damaged ({e}): making a new account", path.display()),
        }
    }
    let contact: Vec<&str> = [config.contact.as_str()]
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await?;
    let stored = StoredAccount {
        directory: config.directory.clone(),
        credentials,
    };
    store(path, stored).await?;
    Ok(account)
}

/// The self-signed certificate that answers a TLS-ALPN-01 check: the name, and the digest of
/// the key authorization in the critical acmeIdentifier extension.
fn challenge_answer(
    name: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    certified_key(&cert.pem(), &key.serialize_pem()).map_err(|e| AcmeError::Unusable(e.to_string()))
}

/// The chain's leaf validity, and the chain ready to present.
fn usable(
    chain_pem: &str,
    key_pem: &str,
) -> Result<(Validity, Arc<rustls::sign::CertifiedKey>), AcmeError> {
    let certified =
        certified_key(chain_pem, key_pem).map_err(|e| AcmeError::Unusable(e.to_string()))?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| AcmeError::Unusable("an empty chain".into()))?;
    Ok((validity(leaf.as_ref())?, certified))
}

fn validity(der: &[u8]) -> Result<Validity, AcmeError> {
    use x509_cert::der::Decode;
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| AcmeError::Unusable(e.to_string()))?;
    let v = cert.tbs_certificate().validity();
    Ok(Validity {
        not_before: UNIX_EPOCH + v.not_before.to_date_time().unix_duration(),
        not_after: UNIX_EPOCH + v.not_after.to_date_time().unix_duration(),
    })
}

/// The stored certificate, if it is for `name`.
fn load_certificate(
    dir: &Path,
    directory: &str,
    name: &str,
) -> Result<Option<(Validity, Arc<rustls::sign::CertifiedKey>)>, AcmeError> {
    let path = dir.join(CERTIFICATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AcmeError::Io { path, source }),
    };
    let stored: StoredCertificate =
        serde_json::from_str(&text).map_err(|e| AcmeError::Unusable(e.to_string()))?;
    if stored.name != name || stored.directory != directory {
        return Ok(None);
    }
    usable(&stored.chain_pem, &stored.key_pem).map(Some)
}

/// `write_json` off the runtime's threads (it waits for the disk).
async fn store<T: Serialize + Send + 'static>(path: PathBuf, value: T) -> Result<(), AcmeError> {
    let written = tokio::task::spawn_blocking(move || write_json(&path, &value)).await;
    written.map_err(|e| AcmeError::Unusable(format!("the write was cancelled: {e}")))?
}

/// Private to the daemon's user; written whole or not at all.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AcmeError> {
    let io = |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(value).map_err(|e| io(e.into()))?;
    crate::durable::write(path, &text, 0o600).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    fn at(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000) + DAY * days as u32
    }

    #[test]
    fn nothing_is_requested_until_the_clock_is_right() {
        let plan = Plan::default();
        assert_eq!(
            plan.step(at(0), ClockState::Unsynchronized, None),
            Step::WaitForClock
        );
        assert_eq!(
            plan.step(at(0), ClockState::Synchronized, None),
            Step::Request
        );
        let cert = Validity {
            not_before: at(0),
            not_after: at(90),
        };
        assert_eq!(
            plan.step(at(89), ClockState::Unsynchronized, Some(cert)),
            Step::WaitForClock,
            "not even a renewal that looks due"
        );
    }

    #[test]
    fn no_request_the_cas_check_cannot_reach() {
        use crate::reach::{Mapping, Protocol, Unreachable};
        let mapping = |https_port| {
            Reach::Outside(Mapping {
                via: Protocol::Pcp,
                external_ip: "203.0.114.1".parse().unwrap(),
                https_port,
                media_port: 10000,
                lan_ip: "192.168.1.2".parse().unwrap(),
                expires: std::time::Instant::now(),
                hairpin: false,
            })
        };
        assert!(checkable(&mapping(443), None).is_ok());
        assert!(checkable(&Reach::Off, None).is_ok(), "forwarded by hand");
        assert!(checkable(&mapping(8443), None)
            .unwrap_err()
            .contains("not 443"));
        assert!(checkable(&Reach::Trying, None).is_err());
        assert!(checkable(&Reach::HomeOnly(Unreachable::NoAnswer), None).is_err());
        let updated = DnsStatus::Updated {
            name: "box.home.test".into(),
            address: "203.0.114.1".parse().unwrap(),
            at_unix: 1,
            updates: 1,
        };
        assert!(checkable(&mapping(443), Some(&updated)).is_ok());
        assert!(checkable(&mapping(443), Some(&DnsStatus::Waiting)).is_err());
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let cert = Validity {
            not_before: at(0),
            not_after: at(90),
        };
        assert_eq!(cert.renew_at(), at(60));
        let plan = Plan::default();
        assert_eq!(
            plan.step(at(59), ClockState::Synchronized, Some(cert)),
            Step::WaitUntil(at(60))
        );
        assert_eq!(
            plan.step(at(60), ClockState::Synchronized, Some(cert)),
            Step::Request
        );
        let short = Validity {
            not_before: at(0),
            not_after: at(0) + Duration::from_secs(90),
        };
        assert_eq!(short.renew_at(), at(0) + Duration::from_secs(60));
    }

    #[test]
    fn failures_back_off_to_six_hours_and_success_resets() {
        let mut plan = Plan::default();
        let now = at(0);
        assert_eq!(plan.failed(now), now + Duration::from_secs(300));
        assert_eq!(
            plan.step(now, ClockState::Synchronized, None),
            Step::WaitUntil(now + Duration::from_secs(300))
        );
        assert_eq!(plan.failed(now), now + Duration::from_secs(600));
        for _ in 0..20 {
            plan.failed(now);
        }
        assert_eq!(plan.failed(now), now + MAX_BACKOFF);
        plan.succeeded(now);
        assert_eq!(plan.failures(), 0);
        // A certificate that is due at once is not asked for again at once.
        let due_now = Validity {
            not_before: now - DAY,
            not_after: now + Duration::from_secs(10),
        };
        assert_eq!(
            plan.step(now, ClockState::Synchronized, Some(due_now)),
            Step::WaitUntil(now + MIN_GAP)
        );
        assert_eq!(
            plan.step(now + MIN_GAP, ClockState::Synchronized, Some(due_now)),
            Step::Request
        );
    }

    #[test]
    fn the_challenge_answer_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let answer = challenge_answer("home.example.org", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(answer.cert[0].as_ref()).unwrap();
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
    }

    #[test]
    fn a_stored_certificate_is_used_only_for_its_name() {
        let dir = std::env::temp_dir().join(format!("hearth-acme-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["home.example.org".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let stored = StoredCertificate {
            directory: "https://ca.test/dir".into(),
            name: "home.example.org".into(),
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write_json(&dir.join(CERTIFICATE_FILE), &stored).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(CERTIFICATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let ca = "https://ca.test/dir";
        assert!(load_certificate(&dir, ca, "home.example.org")
            .unwrap()
            .is_some());
        assert!(load_certificate(&dir, ca, "other.example.org")
            .unwrap()
            .is_none());
        let other_ca = load_certificate(&dir, "https://staging.test/dir", "home.example.org");
        assert!(other_ca.unwrap().is_none(), "a certificate from another CA");
        std::fs::write(dir.join(CERTIFICATE_FILE), "{").unwrap();
        assert!(load_certificate(&dir, ca, "home.example.org").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
