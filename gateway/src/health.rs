//! Passive health: outlier detection from live traffic.
//!
//! Every exchange with an endpoint is an outcome: a connect failure, a
//! timeout, a broken exchange or a 5xx answer is a failure; anything else is
//! a success and resets the count. After `consecutive_failures` failures in a
//! row the endpoint is ejected (receives no traffic) for `base_ejection` times
//! the number of times it has been ejected, capped at `max_ejection`. At most
//! `max_ejected_percent` of a set's endpoints are ejected at once (always at
//! least one may be); when every endpoint of a set is ejected anyway, picking
//! ignores ejection ("panic mode": traffic to all rather than to none).
//!
//! State lives in [`EndpointHealth`], shared by every table that contains the
//! endpoint (the [`HealthRegistry`] hands out one per `host:port`), so an
//! ejection survives the routing-table rebuilds that discovery triggers. On
//! the request path a healthy endpoint costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default consecutive failures that eject an endpoint.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default length of a first ejection.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Default longest ejection.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Default largest share of a set that may be ejected at once.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

/// How outliers are detected and ejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject an endpoint; 0 turns detection off.
    pub consecutive_failures: u32,
    /// Ejection length, multiplied by the number of times ejected.
    pub base_ejection: Duration,
    /// Cap on one ejection's length.
    pub max_ejection: Duration,
    /// Largest share (percent) of a set's endpoints ejected at once; one
    /// endpoint may always be ejected.
    pub max_ejected_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

/// Milliseconds on a process-wide monotonic clock (never 0).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Outcome counters and ejection state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    failures: AtomicU32,
    /// `now_ms()` until which the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// Requests sent and not yet answered (tracked for `least_request` and
    /// `peak_ewma` routes only).
    in_flight: AtomicU32,
    /// Latency EWMA to the response head, microseconds as `f64` bits; 0 until
    /// the first sample.
    ewma_us: AtomicU64,
    /// `now_ms()` of the last sample.
    ewma_at: AtomicU64,
    /// The circuit, for routes with a breaker.
    pub breaker: crate::breaker::Breaker,
    /// Active health checks whose verdict is "down" now: each check task
    /// covering the endpoint holds one vote (see `check::Vote`), withdrawn
    /// when the check stops, so a verdict cannot outlive its checker.
    checks_down: AtomicU32,
    /// `now_ms()` when the endpoint was first seen or last came back from
    /// an active-check failure (0: long ago). Slow start ramps from here.
    since: AtomicU64,
}

/// How fast an unobserved latency estimate fades (time constant): an
/// endpoint avoided for being slow is tried again after a while instead of
/// being judged forever on an old sample.
const EWMA_DECAY_MS: f64 = 10_000.0;

impl EndpointHealth {
    /// State for an endpoint seen for the first time now.
    pub fn new() -> EndpointHealth {
        let h = EndpointHealth::default();
        h.since.store(now_ms(), Ordering::Relaxed);
        h
    }

    /// When the endpoint (re)entered rotation: first seen, back from an
    /// active-check failure, or the end of its last ejection.
    pub fn in_rotation_since(&self, now: u64) -> u64 {
        let since = self.since.load(Ordering::Relaxed);
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && until <= now {
            since.max(until)
        } else {
            since
        }
    }

    /// Slow start: whether to send this request to the endpoint, which within
    /// `window` of entering rotation takes a share growing linearly from 10%
    /// to all of its weight.
    pub fn warm_enough(&self, now: u64, window: Duration) -> bool {
        let age = now.saturating_sub(self.in_rotation_since(now));
        let window_ms = window.as_millis() as u64;
        if age >= window_ms {
            return true;
        }
        let share = (age as f64 / window_ms as f64).max(0.1);
        fastrand::f64() < share
    }

    /// Whether the endpoint is ejected at `now` (a `now_ms()` reading).
    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now
    }

    /// Whether the endpoint is ejected now; one atomic load when it is not.
    pub fn is_ejected_now(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// Whether picking should skip the endpoint at `now`: ejected by outlier
    /// detection or failed by an active health check.
    pub fn is_out(&self, now: u64) -> bool {
        self.is_checked_down() || self.is_ejected(now)
    }

    /// [`EndpointHealth::is_out`] now; two atomic loads when it is in.
    pub fn is_out_now(&self) -> bool {
        self.is_checked_down() || self.is_ejected_now()
    }

    /// Whether any active health check covering the endpoint says "down".
    pub fn is_checked_down(&self) -> bool {
        self.checks_down.load(Ordering::Relaxed) > 0
    }

    /// One more check says "down".
    pub(crate) fn add_check_down(&self) {
        self.checks_down.fetch_add(1, Ordering::AcqRel);
    }

    /// One check that said "down" no longer does (it passes again, or it
    /// stopped); the last one puts the endpoint back, and slow start ramps
    /// from here.
    pub(crate) fn remove_check_down(&self) {
        if self.checks_down.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Milliseconds of ejection left at `now` (0 when not ejected).
    pub fn ejected_for_ms(&self, now: u64) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now)
    }

    /// Times this endpoint has been ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Requests in flight to this endpoint (load-aware routes only).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency EWMA in microseconds (0 before the first sample), faded by
    /// the time since the last sample.
    pub fn ewma_us(&self) -> f64 {
        let raw = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        if raw == 0.0 {
            return 0.0;
        }
        let age = now_ms().saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        raw * (-age / EWMA_DECAY_MS).exp()
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { health: self }
    }

    /// Folds a latency sample into the EWMA. Peak-sensitive: a sample above
    /// the average replaces it at once (a slowing endpoint is noticed on its
    /// first slow answer); lower samples pull it down gradually.
    pub fn observe_latency(&self, latency: Duration) {
        const ALPHA: f64 = 0.3;
        let sample = latency.as_secs_f64() * 1e6;
        let old = self.ewma_us();
        let new = if old == 0.0 || sample > old {
            sample
        } else {
            old + ALPHA * (sample - old)
        };
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn record_success(&self) {
        // Read first: on the hot path the count is already 0 and the cache
        // line stays shared instead of being written by every request.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; returns the new consecutive count.
    pub(crate) fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects for base × times ejected (capped); returns the length.
    pub(crate) fn eject(&self, now: u64, policy: &OutlierPolicy) -> Duration {
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = policy
            .base_ejection
            .saturating_mul(times)
            .min(policy.max_ejection);
        self.ejected_until
            .store(now + length.as_millis() as u64, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        length
    }
}

/// One request counted in flight; see [`EndpointHealth::begin`].
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    health: &'a EndpointHealth,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands out one [`EndpointHealth`] per `host:port`, so state survives table
/// rebuilds. Entries no table uses any more are pruned by the table builder
/// once they may outnumber the endpoints in use.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    states: Mutex<HashMap<String, Arc<EndpointHealth>>>,
}

impl HealthRegistry {
    /// The state for `authority`, created on first use.
    pub fn get(&self, authority: &str) -> Arc<EndpointHealth> {
        let mut states = self.states.lock().expect("health registry lock poisoned");
        states
            .entry(authority.to_string())
            .or_insert_with(|| Arc::new(EndpointHealth::new()))
            .clone()
    }

    /// Number of states held, used or not.
    pub fn len(&self) -> usize {
        self.states
            .lock()
            .expect("health registry lock poisoned")
            .len()
    }

    /// Whether no state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets endpoints that no table references.
    pub fn prune(&self) {
        let mut states = self.states.lock().expect("health registry lock poisoned");
        states.retain(|_, s| Arc::strong_count(s) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_grows_with_each_ejection_and_is_capped() {
        let policy = OutlierPolicy {
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            ..OutlierPolicy::default()
        };
        let h = EndpointHealth::default();
        assert_eq!(h.eject(1000, &policy), Duration::from_secs(10));
        assert!(h.is_ejected(1000 + 9_999));
        assert!(!h.is_ejected(1000 + 10_000));
        assert_eq!(h.eject(1000, &policy), Duration::from_secs(20));
        assert_eq!(h.eject(1000, &policy), Duration::from_secs(25));
        assert_eq!(h.ejections(), 3);
    }

    #[test]
    fn slow_start_share_grows_over_the_window() {
        let h = EndpointHealth::new();
        let start = h.in_rotation_since(now_ms());
        let window = Duration::from_secs(10);
        let share = |at: u64| (0..10_000).filter(|_| h.warm_enough(at, window)).count();
        let first = share(start);
        assert!((700..=1300).contains(&first), "10% at the start: {first}");
        let half = share(start + 5_000);
        assert!((4500..=5500).contains(&half), "50% halfway: {half}");
        assert_eq!(share(start + 10_000), 10_000);
    }

    #[test]
    fn success_resets_the_count() {
        let h = EndpointHealth::default();
        assert_eq!(h.record_failure(), 1);
        assert_eq!(h.record_failure(), 2);
        h.record_success();
        assert_eq!(h.record_failure(), 1);
    }

    #[test]
    fn registry_shares_state_and_prunes_unused() {
        let r = HealthRegistry::default();
        let a = r.get("127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &r.get("127.0.0.1:1")));
        r.get("127.0.0.1:2");
        r.prune();
        assert_eq!(r.states.lock().unwrap().len(), 1);
    }
}
