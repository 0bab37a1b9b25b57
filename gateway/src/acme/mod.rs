//! Certificates that renew themselves: an ACME client (RFC 8555) on the
//! gateway (`--acme-directory`).
//!
//! - [`challenge`]: the HTTP-01 answers the proxy serves on the cleartext
//!   listener and the TLS-ALPN-01 certificate the TLS listener serves.
//! - [`order`]: the account and one order, with instant-acme.
//! - [`state`]: the state directory (`--acme-dir`): account key and the
//!   last certificate, so a restart neither re-registers nor re-orders.
//! - [`renew`]: the renewal rule (two thirds of the lifetime), the backoff
//!   on failure, and the task that runs them.
//!
//! Flow: at start the saved certificate (if it loads) is served at once;
//! when it is due (or missing), the task orders one for every
//! `--acme-domain`, publishing each challenge answer before telling the
//! server it is ready; the certificate issued is saved, then swapped into
//! the listener's [`CertStore`](crate::tls::store::CertStore) (open
//! connections keep the one they shook hands with). Counters are in
//! [`AcmeStats`], shown by `/status` and `/metrics`.
//!
//! A gateway following a registry orders for the fleet instead
//! ([`fleet`]): one at a time under a registry lock, the certificate
//! stored in the registry and served by every gateway from there, HTTP-01
//! answered by any gateway.

pub mod challenge;
pub mod fleet;
pub mod order;
pub mod renew;
pub mod state;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use self::challenge::Http01Answers;
use self::order::Responders;
use self::state::{StateDir, StateError};
use crate::tls::store::CertStore;

/// Default first retry after a failed order.
pub const DEFAULT_RETRY_FIRST: Duration = Duration::from_secs(60);
/// Default longest wait between retries of failed orders.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Which challenge the gateway answers when it orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// HTTP-01, on the cleartext listener (the CA connects to port 80).
    Http01,
    /// TLS-ALPN-01, on the TLS listener (the CA connects to port 443).
    TlsAlpn01,
}

impl ChallengeKind {
    /// Parses `http-01` or `tls-alpn-01`.
    pub fn parse(s: &str) -> Result<ChallengeKind, String> {
        match s {
            "http-01" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
            _ => Err(format!("{s:?}: expected http-01 or tls-alpn-01")),
        }
    }

    /// The name ACME gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// What the ACME client orders, from where, and where it keeps its state.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The ACME directory URL (`--acme-directory`).
    pub directory: String,
    /// Contact for the account (`--acme-email`), sent as `mailto:`.
    pub email: Option<String>,
    /// The DNS names the certificate covers (`--acme-domain`), one order
    /// and one certificate for all of them.
    pub domains: Vec<String>,
    /// PEM root the ACME server's own TLS certificate chains to
    /// (`--acme-ca`); `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The state directory (`--acme-dir`).
    pub dir: PathBuf,
    /// The challenge answered (`--acme-challenge`).
    pub challenge: ChallengeKind,
    /// First retry after a failed order; doubles per failure.
    pub retry_first: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// TTL of the registry lock taken before ordering (`--acme-lock-ttl`),
    /// when the gateway follows a registry.
    pub lock_ttl: Duration,
}

/// Why ACME could not start or an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The state directory could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The ACME server or the client library refused a step.
    #[error("ACME {step}: {reason}")]
    Acme {
        /// The step of the order.
        step: &'static str,
        /// instant-acme's error (a problem document from the server,
        /// or a transport failure).
        reason: String,
    },
    /// The order went somewhere it should not (an invalid authorization,
    /// no challenge of the configured kind, a certificate that does not
    /// load).
    #[error("ACME order: {0}")]
    Order(String),
}

impl AcmeError {
    fn from_acme(step: &'static str) -> impl Fn(instant_acme::Error) -> AcmeError {
        move |e| AcmeError::Acme {
            step,
            reason: e.to_string(),
        }
    }
}

/// ACME counters and the next renewal, read by `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct AcmeStats {
    enabled: AtomicBool,
    domains: OnceLock<Vec<String>>,
    orders_ok: AtomicU64,
    orders_failed: AtomicU64,
    /// Unix seconds of the next order (0: none planned).
    next_renewal: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl AcmeStats {
    /// Whether ACME is configured on this gateway.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The names ordered for.
    pub fn domains(&self) -> &[String] {
        self.domains.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// Orders that succeeded and failed so far.
    pub fn orders(&self) -> (u64, u64) {
        (
            self.orders_ok.load(Ordering::Relaxed),
            self.orders_failed.load(Ordering::Relaxed),
        )
    }

    /// Unix seconds of the next order (0: none planned).
    pub fn next_renewal(&self) -> i64 {
        self.next_renewal.load(Ordering::Relaxed)
    }

    /// The last failure, cleared by a success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("ACME stats poisoned").clone()
    }

    fn set_next_renewal(&self, unix_s: i64) {
        self.next_renewal.store(unix_s, Ordering::Relaxed);
    }

    fn count_order(&self, error: Option<String>) {
        match error {
            None => self.orders_ok.fetch_add(1, Ordering::Relaxed),
            Some(_) => self.orders_failed.fetch_add(1, Ordering::Relaxed),
        };
        *self.last_error.lock().expect("ACME stats poisoned") = error;
    }
}

/// The ACME client of one gateway, ready to run.
#[derive(Debug)]
pub struct Acme {
    settings: AcmeSettings,
    state: StateDir,
    responders: Responders,
    stats: Arc<AcmeStats>,
}

impl Acme {
    /// Opens the state directory (refused at startup if it cannot be made)
    /// and wires the answers: HTTP-01 through `http01`, TLS-ALPN-01 and the
    /// certificate through `store`; with `fleet`, ordering is coordinated
    /// through the registry.
    pub fn new(
        settings: AcmeSettings,
        http01: Arc<Http01Answers>,
        store: Arc<CertStore>,
        stats: Arc<AcmeStats>,
        fleet: Option<fleet::Fleet>,
    ) -> Result<Acme, AcmeError> {
        let state = StateDir::open(&settings.dir)?;
        stats.enabled.store(true, Ordering::Relaxed);
        let _ = stats.domains.set(settings.domains.clone());
        Ok(Acme {
            settings,
            state,
            responders: Responders {
                http01,
                store,
                fleet,
            },
            stats,
        })
    }

    /// Starts the renewal task; it runs until aborted.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let (settings, state) = (self.settings.clone(), self.state.clone());
        let (responders, stats) = (self.responders.clone(), self.stats.clone());
        match responders.fleet {
            Some(_) => tokio::spawn(fleet::run(settings, state, responders, stats)),
            None => tokio::spawn(renew::run(settings, state, responders, stats)),
        }
    }
}
