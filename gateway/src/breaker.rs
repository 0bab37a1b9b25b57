//! Overload limits per route (circuit breaking in Envoy's sense): a cap on
//! concurrent requests and on concurrent retries. Over a limit the gateway
//! answers 503 `overloaded` at once instead of queueing, so a slow backend
//! cannot pile up unbounded work in the gateway, and retries cannot grow
//! into a storm.
//!
//! The counters live in [`RouteState`], shared by every table that holds
//! the route (like the retry budget), so a rebuild does not reset them while
//! requests are in flight.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::retry::RetryBudget;

pub use portico_registry::route::{BreakerPolicy, Limits};

/// Mutable per-route state kept across table rebuilds.
#[derive(Debug, Default)]
pub struct RouteState {
    /// The route's retry budget.
    pub budget: RetryBudget,
    /// The route's request counters and latency histograms, kept here so a
    /// request reaches them without a lookup and a rebuild does not reset them.
    pub metrics: crate::metrics::RouteMetrics,
    active: AtomicU32,
    retrying: AtomicU32,
    pending: AtomicU32,
}

/// A slot held for as long as a request (or retry) is in flight.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one of `max` slots counted in `counter`.
pub fn acquire(counter: &AtomicU32, max: u32) -> Option<Slot<'_>> {
    let mut current = counter.load(Ordering::Acquire);
    loop {
        if current >= max {
            return None;
        }
        match counter.compare_exchange_weak(
            current,
            current + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(Slot(counter)),
            Err(seen) => current = seen,
        }
    }
}

impl RouteState {
    /// A request slot; `None` when the route is at `max_requests`.
    pub fn enter(&self, max: u32) -> Option<Slot<'_>> {
        acquire(&self.active, max)
    }

    /// A retry slot; `None` when the route is at `max_retries`.
    pub fn retry(&self, max: u32) -> Option<Slot<'_>> {
        acquire(&self.retrying, max)
    }

    /// The counter of requests waiting for a new connection, with its limit,
    /// for the pool (`None` when the route sets no `max_pending`).
    pub fn pending_limit(&self, limits: &Limits) -> Option<(&AtomicU32, u32)> {
        limits.max_pending.map(|max| (&self.pending, max))
    }

    /// Requests waiting for a new connection, counted against `max_pending`.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Retries in flight counted against `max_retries`.
    pub fn retrying(&self) -> u32 {
        self.retrying.load(Ordering::Relaxed)
    }

    /// Requests in flight counted against `max_requests`.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Whether a request may go to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Yes,
    /// Half-open: go, as a probe whose outcome decides the state.
    Probe,
    /// Open: pick another endpoint.
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Default)]
struct Circuit {
    state: State,
    consecutive: u32,
    window_start: u64,
    window_total: u32,
    window_failed: u32,
    open_until: u64,
    opened: u32,
    probes: u32,
}

/// One endpoint's circuit. Times are `health::now_ms()` readings, passed in
/// so the state machine is testable without a clock. A mutex, not atomics:
/// only routes with a breaker touch it, and the transitions must be atomic
/// as a whole.
#[derive(Debug, Default)]
pub struct Breaker(Mutex<Circuit>);

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.0.lock().expect("breaker lock poisoned")
    }

    /// May a request go now?
    pub fn admit(&self, now: u64, policy: &BreakerPolicy) -> Admission {
        let mut c = self.lock();
        match c.state {
            State::Closed => Admission::Yes,
            State::Open if now < c.open_until => Admission::No,
            State::Open => {
                c.state = State::HalfOpen;
                c.probes = 1;
                Admission::Probe
            }
            // A probe whose verdict never came (its client went away) must not
            // wedge the circuit: after another open period, probe again.
            State::HalfOpen
                if c.probes < policy.half_open_probes
                    || now >= c.open_until + policy.open_for.as_millis() as u64 =>
            {
                c.probes += 1;
                c.open_until = c.open_until.max(now);
                Admission::Probe
            }
            State::HalfOpen => Admission::No,
        }
    }

    /// Records an outcome; returns true when this outcome opened the circuit.
    pub fn record(&self, now: u64, policy: &BreakerPolicy, failed: bool) -> bool {
        let mut c = self.lock();
        match c.state {
            State::HalfOpen | State::Open => {
                if failed {
                    open(&mut c, now, policy);
                    return true;
                }
                *c = Circuit {
                    window_start: now,
                    ..Circuit::default()
                };
                false
            }
            State::Closed => {
                if now.saturating_sub(c.window_start) > policy.window.as_millis() as u64 {
                    c.window_start = now;
                    c.window_total = 0;
                    c.window_failed = 0;
                }
                c.window_total += 1;
                if failed {
                    c.consecutive += 1;
                    c.window_failed += 1;
                } else {
                    c.consecutive = 0;
                }
                let by_count =
                    policy.consecutive_failures > 0 && c.consecutive >= policy.consecutive_failures;
                let by_rate = policy.failure_rate_percent.is_some_and(|pct| {
                    c.window_total >= policy.min_requests
                        && c.window_failed * 100 >= pct * c.window_total
                });
                if failed && (by_count || by_rate) {
                    open(&mut c, now, policy);
                    return true;
                }
                false
            }
        }
    }

    /// Whether the circuit is open (not admitting) at `now`.
    pub fn is_open(&self, now: u64) -> bool {
        let c = self.lock();
        c.state == State::Open && now < c.open_until
    }

    /// `closed`, `open` or `half_open` at `now`, for operators.
    pub fn state_name(&self, now: u64) -> &'static str {
        let c = self.lock();
        match c.state {
            State::Closed => "closed",
            State::Open if now < c.open_until => "open",
            State::Open | State::HalfOpen => "half_open",
        }
    }
}

fn open(c: &mut Circuit, now: u64, policy: &BreakerPolicy) {
    c.opened += 1;
    let base = policy
        .open_for
        .saturating_mul(1 << (c.opened - 1).min(16))
        .min(policy.max_open);
    // +-20% jitter so circuits opened together do not probe together.
    let length = base
        .mul_f64(0.8 + fastrand::f64() * 0.4)
        .min(policy.max_open);
    c.state = State::Open;
    c.open_until = now + length.as_millis() as u64;
    c.consecutive = 0;
    c.window_total = 0;
    c.window_failed = 0;
    c.probes = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            open_for: Duration::from_millis(1000),
            max_open: Duration::from_millis(5000),
            ..BreakerPolicy::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_probes_then_closes() {
        let p = policy();
        let b = Breaker::default();
        assert!(!b.record(0, &p, true));
        assert!(!b.record(1, &p, true));
        assert!(b.record(2, &p, true), "third failure opens");
        assert_eq!(b.admit(3, &p), Admission::No);
        // After the (jittered) open period: one probe, then no more until it reports.
        assert_eq!(b.admit(2 + 1300, &p), Admission::Probe);
        assert_eq!(b.admit(2 + 1301, &p), Admission::No);
        assert!(!b.record(2 + 1302, &p, false));
        assert_eq!(
            b.admit(2 + 1303, &p),
            Admission::Yes,
            "a good probe closes it"
        );
    }

    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let p = policy();
        let b = Breaker::default();
        for t in 0..3 {
            b.record(t, &p, true);
        }
        assert_eq!(b.admit(1300, &p), Admission::Probe);
        assert!(b.record(1301, &p, true));
        // Second opening: 2 s +-20%, so still open 1.5 s later.
        assert_eq!(b.admit(1301 + 1500, &p), Admission::No);
        assert_eq!(b.admit(1301 + 2500, &p), Admission::Probe);
    }

    #[test]
    fn the_failure_rate_opens_it_only_past_the_minimum() {
        let p = BreakerPolicy {
            consecutive_failures: 0,
            failure_rate_percent: Some(50),
            min_requests: 10,
            ..policy()
        };
        let b = Breaker::default();
        // Alternate: 50% failures, never 3 in a row.
        let mut opened = false;
        for t in 0..10u64 {
            opened |= b.record(t, &p, t % 2 == 1);
            if t < 9 {
                assert!(!opened, "opened before the minimum at {t}");
            }
        }
        assert!(opened);
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let state = RouteState::default();
        let a = state.enter(2).unwrap();
        let _b = state.enter(2).unwrap();
        assert!(state.enter(2).is_none());
        drop(a);
        assert!(state.enter(2).is_some());
        assert!(state.retry(0).is_none());
    }
}
