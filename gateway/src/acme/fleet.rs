//! ACME across several gateways following one registry: exactly one orders
//! at a time, the certificate lives in the registry, every gateway serves
//! it and any gateway answers the CA.
//!
//! - **One orders.** Before ordering, a gateway takes the registry lock
//!   `acme:<sorted domains>` (`/v1/locks`) and renews it every third of
//!   its TTL while the order runs; losing it (another holder, or no
//!   renewal before it lapsed) abandons the order. A gateway that dies
//!   holding it lets go when the TTL passes, and another takes over.
//! - **The registry is the certificate's home.** The certificate issued is
//!   stored as registry certificate `acme-<first sorted domain>`; every
//!   gateway receives it over the watch and serves it, the orderer too
//!   (it does not serve its own copy: a later renewal by another gateway
//!   must replace it everywhere). The renewal rule (two thirds of the
//!   lifetime) reads the certificate the watch delivered, so all gateways
//!   agree on when it is due and the lock makes exactly one renew it.
//! - **Under the lock, the registry decides.** The watch may lag: a
//!   gateway holding the lock first asks the registry for the stored
//!   certificate, and orders only if that one is the one it sees (or there
//!   is none) and is due. Otherwise it lets go and waits for the watch.
//! - **Any gateway answers HTTP-01.** The orderer publishes each key
//!   authorization in the registry (`/v1/challenges`) before telling the
//!   CA it is ready; a gateway asked for a token it does not hold looks it
//!   up there ([`super::challenge::Http01Answers`]). TLS-ALPN-01 the
//!   same way, by name: a gateway whose listener is asked to validate a
//!   name it holds no answer for fetches it ([`crate::tls::alpn`]).

use std::sync::Arc;
use std::time::Duration;

use instant_acme::Account;
use portico_registry::client::coordination::LockAnswer;
use portico_registry::client::{ClientError, RegistryClient};

use super::order::{self, Responders};
use super::renew::{backoff, covers, not_before, renew_at};
use super::state::StateDir;
use super::{AcmeError, AcmeSettings, AcmeStats};
use crate::tls::cert::{LoadedCert, unix_now};
use crate::tls::store::CertStore;

/// Default lock TTL (`--acme-lock-ttl`): renewed every third, so a holder
/// survives two lost renewals; a dead holder delays the order by at most this.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
/// How long a challenge answer stays in the registry if the orderer dies
/// before withdrawing it: longer than any order runs.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// One gateway's part in ordering for the fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The registry, with this gateway's token.
    pub client: RegistryClient,
    /// This gateway's id as a lock holder (unique per process).
    pub holder: String,
    /// The lock's TTL.
    pub lock_ttl: Duration,
}

impl Fleet {
    /// A fleet member with a fresh holder id: the process id and a random
    /// part, so two gateways in one process (tests) differ too.
    pub fn new(client: RegistryClient, lock_ttl: Duration) -> Fleet {
        Fleet {
            client,
            holder: format!("gateway-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            lock_ttl,
        }
    }

    /// How long to wait before asking again for a lock another holds.
    pub fn retry(&self) -> Duration {
        (self.lock_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// The lock every gateway ordering these names takes: `acme:` and the
/// names sorted, so gateways listing them in another order agree.
pub fn lock_name(domains: &[String]) -> String {
    format!("acme:{}", sorted(domains).join(","))
}

/// The registry certificate these names are stored as: `acme-` and the
/// first name sorted (the `acme-` prefix is what a gateway token may write).
pub fn certificate_name(domains: &[String]) -> String {
    format!(
        "{}{}",
        portico_registry::lock::ACME_CERTIFICATE_PREFIX,
        sorted(domains)[0]
    )
}

fn sorted(domains: &[String]) -> Vec<String> {
    let mut names: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names
}

/// The registry certificate covering every name that this gateway serves
/// now, if any (the watch delivered it).
pub fn served(store: &CertStore, domains: &[String]) -> Option<Arc<LoadedCert>> {
    store
        .registry_certs()
        .get(&certificate_name(domains))
        .filter(|c| covers(c, domains))
        .cloned()
}

/// Runs the renewal loop of a gateway following a registry until aborted:
/// the rule of [`super::renew`] applied to the registry certificate, with
/// the lock taken before each order.
pub async fn run(
    settings: AcmeSettings,
    state: StateDir,
    responders: Responders,
    stats: Arc<AcmeStats>,
) {
    let fleet = responders
        .fleet
        .clone()
        .expect("fleet::run is started only with a registry");
    let lock = lock_name(&settings.domains);
    let mut account: Option<Account> = None;
    let (mut failures, mut retry_at) = (0u32, 0i64);
    loop {
        let now = unix_now();
        let due = match served(&responders.store, &settings.domains) {
            _ if failures > 0 => retry_at,
            Some(c) => renew_at(not_before(&c), c.not_after),
            None => now,
        };
        stats.set_next_renewal(due);
        if due > now {
            // Woken early too, to see a certificate another gateway stored.
            let wait = Duration::from_secs((due - now) as u64).min(fleet.retry());
            tokio::time::sleep(wait).await;
            continue;
        }
        let expires_ms = match fleet
            .client
            .take_lock(&lock, &fleet.holder, fleet.lock_ttl)
            .await
        {
            Ok(LockAnswer::Held(held)) => held.expires_unix_ms,
            Ok(LockAnswer::HeldBy { holder, .. }) => {
                tracing::debug!(lock, holder, "another gateway is ordering");
                tokio::time::sleep(fleet.retry()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(lock, error = %e, "ACME lock not taken; retrying");
                tokio::time::sleep(fleet.retry()).await;
                continue;
            }
        };
        let outcome = tokio::select! {
            ordered = order_under_lock(&settings, &state, &responders, &fleet, &mut account) => ordered,
            lost = keep(&fleet, &lock, expires_ms) => Err(AcmeError::Order(lost.to_string())),
        };
        if let Err(e) = fleet.client.release_lock(&lock, &fleet.holder).await {
            tracing::warn!(lock, error = %e, "ACME lock not released; it lapses by itself");
        }
        match outcome {
            Ok(Ordered::Stored) => {
                stats.count_order(None);
                failures = 0;
            }
            Ok(Ordered::NotSeenYet) => tokio::time::sleep(fleet.retry()).await,
            Err(e) => {
                tracing::warn!(error = %e, failures = failures + 1, "ACME order failed; the certificate served is kept");
                if matches!(e, AcmeError::Acme { .. }) {
                    account = None;
                }
                stats.count_order(Some(e.to_string()));
                failures = failures.saturating_add(1);
                let wait = backoff(failures, settings.retry_first, settings.retry_max);
                retry_at = unix_now() + wait.as_secs().max(1) as i64;
            }
        }
    }
}

/// What an order under the lock came to.
enum Ordered {
    /// Issued and stored in the registry.
    Stored,
    /// The registry holds a certificate this gateway has not received
    /// yet (stored by another a moment ago): nothing ordered.
    NotSeenYet,
}

/// With the lock held: orders only if the registry's certificate is the
/// one this gateway decided from (or there is none, or it expired), then
/// stores the new one.
async fn order_under_lock(
    settings: &AcmeSettings,
    state: &StateDir,
    responders: &Responders,
    fleet: &Fleet,
    account: &mut Option<Account>,
) -> Result<Ordered, AcmeError> {
    let name = certificate_name(&settings.domains);
    let registry = |e: ClientError| AcmeError::Order(format!("registry certificate {name}: {e}"));
    let stored = fleet.client.certificate(&name).await.map_err(registry)?;
    let seen = responders
        .store
        .registry_certs()
        .get(&name)
        .map(|c| c.fingerprint.clone());
    if let Some(stored) = &stored {
        let unseen = seen.as_deref() != Some(stored.fingerprint_sha256.as_str());
        if unseen && stored.not_after_unix > unix_now() {
            return Ok(Ordered::NotSeenYet);
        }
    }
    if account.is_none() {
        *account = Some(order::account(settings, state).await?);
    }
    let acct = account.as_ref().expect("just set");
    let issued = order::issue(acct, settings, responders).await?;
    let summary = fleet
        .client
        .put_certificate(&name, &issued.cert, &issued.key)
        .await
        .map_err(registry)?;
    tracing::info!(
        certificate = %name,
        names = ?summary.names,
        not_after = %summary.not_after,
        fingerprint = %summary.fingerprint_sha256,
        "ACME certificate issued and stored in the registry"
    );
    Ok(Ordered::Stored)
}

/// Why the lock was lost while ordering.
#[derive(Debug, thiserror::Error)]
#[error("ACME lock {name:?} lost: {reason}")]
pub struct LockLost {
    name: String,
    reason: String,
}

/// Renews the lock held until `expires_ms` every third of its TTL; returns
/// only when it is lost (another holder has it, or it lapsed with no
/// renewal getting through). Run beside the order, which stops with it.
pub async fn keep(fleet: &Fleet, name: &str, mut expires_ms: u64) -> LockLost {
    let lost = |reason: String| LockLost {
        name: name.to_string(),
        reason,
    };
    loop {
        tokio::time::sleep(fleet.lock_ttl / 3).await;
        match fleet
            .client
            .take_lock(name, &fleet.holder, fleet.lock_ttl)
            .await
        {
            Ok(LockAnswer::Held(lock)) => expires_ms = lock.expires_unix_ms,
            Ok(LockAnswer::HeldBy { holder, .. }) => return lost(format!("taken by {holder}")),
            Err(e) if unix_ms() >= expires_ms => {
                return lost(format!("lapsed, renewals failing: {e}"));
            }
            Err(e) => tracing::warn!(lock = name, error = %e, "ACME lock renewal failed; retrying"),
        }
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_do_not_depend_on_the_order_given() {
        let a = vec!["b.example".to_string(), "A.example".to_string()];
        let b = vec!["a.example".to_string(), "b.example".to_string()];
        assert_eq!(lock_name(&a), "acme:a.example,b.example");
        assert_eq!(lock_name(&a), lock_name(&b));
        assert_eq!(certificate_name(&a), "acme-a.example");
    }
}
