//! When to order: the renewal rule, the backoff, and the task that runs
//! them.
//!
//! A certificate is renewed once two thirds of its lifetime (notBefore to
//! notAfter) have passed: day 60 of Let's Encrypt's 90, as certbot and
//! Caddy do, which leaves a month of retries before it expires. With no
//! usable certificate (none saved, expired, or not covering every name)
//! the first order starts at once. A failed order is retried after
//! [`AcmeSettings::retry_first`], doubling each time up to
//! [`AcmeSettings::retry_max`]; the certificate being served meanwhile (if
//! any) keeps serving: it is replaced only by one that loaded.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::Account;

use super::order::{self, Responders};
use super::state::{IssuedPem, StateDir};
use super::{AcmeError, AcmeSettings, AcmeStats};
use crate::tls::cert::{LoadedCert, unix_now};

/// The Unix time at which a certificate valid from `not_before` to
/// `not_after` is renewed: two thirds into its lifetime.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before).max(0) * 2 / 3
}

/// The wait before retry number `failures` (1 for the first retry):
/// `first`, doubled per failure, never more than `max`.
pub fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    first.saturating_mul(1 << doublings).min(max)
}

/// A certificate served, with its notBefore for the renewal rule.
#[derive(Debug, Clone)]
struct Current {
    loaded: Arc<LoadedCert>,
    not_before: i64,
}

/// Runs the renewal loop until aborted: serves the saved certificate,
/// then orders whenever the rule says so.
pub async fn run(
    settings: AcmeSettings,
    state: StateDir,
    responders: Responders,
    stats: Arc<AcmeStats>,
) {
    let mut current = saved(&settings, &state, &responders);
    let mut account: Option<Account> = None;
    let mut failures = 0u32;
    loop {
        let now = unix_now();
        let due = match (&current, failures) {
            (_, 1..) => {
                now + backoff(failures, settings.retry_first, settings.retry_max).as_secs() as i64
            }
            (Some(c), 0) if covers(&c.loaded, &settings.domains) => {
                renew_at(c.not_before, c.loaded.not_after)
            }
            _ => now,
        };
        stats.set_next_renewal(due);
        if due > now {
            tokio::time::sleep(Duration::from_secs((due - now) as u64)).await;
        }
        match attempt(&settings, &state, &responders, &mut account).await {
            Ok(fresh) => {
                tracing::info!(
                    names = ?fresh.loaded.names,
                    not_after = fresh.loaded.not_after,
                    fingerprint = %fresh.loaded.fingerprint,
                    "ACME certificate issued"
                );
                responders.store.set_acme(fresh.loaded.clone());
                stats.count_order(None);
                current = Some(fresh);
                failures = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, failures = failures + 1, "ACME order failed; the certificate served is kept");
                // A saved account the server no longer knows is made again.
                if matches!(e, AcmeError::Acme { .. }) {
                    account = None;
                }
                stats.count_order(Some(e.to_string()));
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// One order: the account (made once), the certificate, saved, loaded.
async fn attempt(
    settings: &AcmeSettings,
    state: &StateDir,
    responders: &Responders,
    account: &mut Option<Account>,
) -> Result<Current, AcmeError> {
    if account.is_none() {
        *account = Some(order::account(settings, state).await?);
    }
    let acct = account.as_ref().expect("just set");
    let issued = order::issue(acct, settings, responders).await?;
    // Named by the file it is saved to, as the saved one is after a restart.
    let current = load(&issued, &state.cert_path().display().to_string())?;
    state.save_certificate(&issued)?;
    Ok(current)
}

/// The certificate saved by an earlier run, served at once when it loads
/// (not expired, key matching).
fn saved(settings: &AcmeSettings, state: &StateDir, responders: &Responders) -> Option<Current> {
    let what = state.cert_path().display().to_string();
    let issued = match state.certificate() {
        Ok(Some(issued)) => issued,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "ACME certificate not read; ordering a new one");
            return None;
        }
    };
    match load(&issued, &what) {
        Ok(current) => {
            responders.store.set_acme(current.loaded.clone());
            if !covers(&current.loaded, &settings.domains) {
                tracing::info!(file = %what, "the saved ACME certificate does not cover every --acme-domain; ordering");
            }
            Some(current)
        }
        Err(e) => {
            tracing::warn!(error = %e, "saved ACME certificate refused; ordering a new one");
            None
        }
    }
}

fn load(issued: &IssuedPem, what: &str) -> Result<Current, AcmeError> {
    let loaded = LoadedCert::from_pem(
        issued.cert.as_bytes(),
        issued.key.as_bytes(),
        what,
        what,
        unix_now(),
    )
    .map_err(|e| AcmeError::Order(e.to_string()))?;
    let not_before = x509_parser::parse_x509_certificate(&loaded.key.cert[0])
        .map(|(_, c)| c.validity().not_before.timestamp())
        .map_err(|e| AcmeError::Order(format!("{what}: {e}")))?;
    Ok(Current {
        loaded: Arc::new(loaded),
        not_before,
    })
}

/// Its leaf's notBefore, Unix seconds (0 if it cannot be read: due at once).
pub fn not_before(cert: &LoadedCert) -> i64 {
    x509_parser::parse_x509_certificate(&cert.key.cert[0])
        .map(|(_, c)| c.validity().not_before.timestamp())
        .unwrap_or(0)
}

/// Whether `cert` names every one of `domains`.
pub fn covers(cert: &LoadedCert, domains: &[String]) -> bool {
    domains
        .iter()
        .all(|d| cert.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let day = 86_400;
        assert_eq!(renew_at(0, 90 * day), 60 * day);
        assert_eq!(renew_at(1000, 1030), 1020);
        assert_eq!(
            renew_at(1000, 900),
            1000,
            "a backwards validity renews at once"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (first, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, first, max).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, first, max), max);
    }
}
