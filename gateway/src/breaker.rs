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
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

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
    /// Turns taken of the route's split order (`targets`): kept here
    /// so the order goes on across tables instead of restarting.
    pub split_turn: AtomicUsize,
    /// Requests seen by the route's mirror sampler, copies in flight, sent
    /// and dropped (`mirror`; the proxy's `mirror` module).
    pub mirror: MirrorCounters,
}

/// A route's mirroring counters; all zero on routes without `mirror`.
#[derive(Debug, Default)]
pub struct MirrorCounters {
    /// Requests the sampler has seen (the share is taken by count).
    pub seen: AtomicU64,
    /// Copies outstanding now.
    pub in_flight: AtomicU32,
    /// Copies sent.
    pub sent: AtomicU64,
    /// Copies dropped because `max_in_flight` were outstanding.
    pub dropped: AtomicU64,
    /// Copies that failed (no endpoint, connection refused, timeout).
    pub failed: AtomicU64,
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

/// A request's admission through a circuit: which epoch of the circuit let
/// it through and whether as a half-open probe. Handed back with the
/// request's outcome, so the circuit can tell an outcome about its current
/// state from a straggler's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

impl Ticket {
    /// Whether the request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
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
    /// Moves on every opening and every closing. Only outcomes of requests
    /// admitted in the current epoch count: a request admitted while closed
    /// that ends after the circuit opened says nothing about the endpoint
    /// now (its success must not close the circuit, its failure must not
    /// reopen it for longer), nor does one from before a recovery.
    epoch: u64,
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

    /// May a request go now? `None`: the circuit is open, pick another
    /// endpoint. Otherwise the ticket to hand back to [`Breaker::record`].
    pub fn admit(&self, now: u64, policy: &BreakerPolicy) -> Option<Ticket> {
        let mut c = self.lock();
        let probe = match c.state {
            State::Closed => false,
            State::Open if now < c.open_until => return None,
            State::Open => {
                c.state = State::HalfOpen;
                c.probes = 1;
                true
            }
            // A probe whose verdict never came (its client went away) must not
            // wedge the circuit: after another open period, probe again.
            State::HalfOpen
                if c.probes < policy.half_open_probes
                    || now >= c.open_until + policy.open_for.as_millis() as u64 =>
            {
                c.probes += 1;
                c.open_until = c.open_until.max(now);
                true
            }
            State::HalfOpen => return None,
        };
        Some(Ticket {
            epoch: c.epoch,
            probe,
        })
    }

    /// Records the outcome of a request admitted with `ticket`; returns true
    /// when this outcome opened the circuit. Outcomes of requests admitted
    /// in an earlier epoch are ignored (see `Circuit::epoch`): only a probe
    /// moves an open or half-open circuit, and only requests admitted since
    /// the last closing count towards opening it.
    pub fn record(&self, now: u64, policy: &BreakerPolicy, ticket: Ticket, failed: bool) -> bool {
        let mut c = self.lock();
        if ticket.epoch != c.epoch {
            return false;
        }
        match c.state {
            State::HalfOpen | State::Open => {
                if !ticket.probe {
                    return false;
                }
                if failed {
                    open(&mut c, now, policy);
                    return true;
                }
                *c = Circuit {
                    epoch: c.epoch + 1,
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

    /// Milliseconds the circuit stays open from `now` (0 unless open).
    pub fn open_for_ms(&self, now: u64) -> u64 {
        let c = self.lock();
        match c.state {
            State::Open => c.open_until.saturating_sub(now),
            State::Closed | State::HalfOpen => 0,
        }
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
    c.epoch += 1;
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

    /// Admits a request at `now` and records its outcome at once.
    fn exchange(b: &Breaker, p: &BreakerPolicy, now: u64, failed: bool) -> bool {
        let ticket = b.admit(now, p).expect("admitted");
        b.record(now, p, ticket, failed)
    }

    #[test]
    fn opens_after_consecutive_failures_probes_then_closes() {
        let p = policy();
        let b = Breaker::default();
        assert!(!exchange(&b, &p, 0, true));
        assert!(!exchange(&b, &p, 1, true));
        assert!(exchange(&b, &p, 2, true), "third failure opens");
        assert_eq!(b.admit(3, &p), None);
        // After the (jittered) open period: one probe, then no more until it reports.
        let probe = b.admit(2 + 1300, &p).unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.admit(2 + 1301, &p), None);
        assert!(!b.record(2 + 1302, &p, probe, false));
        let next = b.admit(2 + 1303, &p).expect("a good probe closes it");
        assert!(!next.is_probe());
    }

    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let p = policy();
        let b = Breaker::default();
        for t in 0..3 {
            exchange(&b, &p, t, true);
        }
        let probe = b.admit(1300, &p).unwrap();
        assert!(b.record(1301, &p, probe, true));
        // Second opening: 2 s +-20%, so still open 1.5 s later.
        assert_eq!(b.admit(1301 + 1500, &p), None);
        assert!(b.admit(1301 + 2500, &p).unwrap().is_probe());
    }

    #[test]
    fn a_straggler_success_does_not_close_an_open_circuit() {
        let p = policy();
        let b = Breaker::default();
        // Admitted while closed, still in flight when the circuit opens.
        let straggler = b.admit(0, &p).unwrap();
        for t in 1..=3 {
            exchange(&b, &p, t, true);
        }
        assert_eq!(b.state_name(4), "open");
        assert!(!b.record(5, &p, straggler, false));
        assert_eq!(b.state_name(6), "open");
        assert_eq!(b.admit(6, &p), None);
        // Nor a half-open one: only the probe decides.
        let probe = b.admit(3 + 1300, &p).unwrap();
        assert!(!b.record(3 + 1301, &p, straggler, false));
        assert_eq!(
            b.admit(3 + 1302, &p),
            None,
            "still half-open, probe pending"
        );
        assert!(!b.record(3 + 1303, &p, probe, false));
        assert!(
            !b.admit(3 + 1304, &p).unwrap().is_probe(),
            "the probe closed it"
        );
    }

    #[test]
    fn a_straggler_failure_does_not_reopen_for_longer() {
        let p = policy();
        let b = Breaker::default();
        let stragglers: Vec<Ticket> = (0..5).map(|_| b.admit(0, &p).unwrap()).collect();
        for t in 1..=3 {
            exchange(&b, &p, t, true);
        }
        let open_for = b.open_for_ms(3);
        assert!((800..=1200).contains(&open_for), "{open_for}");
        for (i, s) in stragglers.iter().enumerate() {
            assert!(
                !b.record(10 + i as u64, &p, *s, true),
                "a late failure reopened it"
            );
        }
        assert_eq!(b.open_for_ms(3), open_for, "the open period did not move");
        // The first probe after the period is still a first reopening's
        // business: a failure there doubles once (2 s +-20%), not 2^6 times.
        let probe = b.admit(3 + open_for, &p).unwrap();
        assert!(b.record(3 + open_for, &p, probe, true));
        let second = b.open_for_ms(3 + open_for);
        assert!((1600..=2400).contains(&second), "{second}");
    }

    #[test]
    fn outcomes_from_before_a_recovery_do_not_count_after_it() {
        let p = policy();
        let b = Breaker::default();
        let old: Vec<Ticket> = (0..3).map(|_| b.admit(0, &p).unwrap()).collect();
        for t in 1..=3 {
            exchange(&b, &p, t, true);
        }
        let probe = b.admit(3 + 1300, &p).unwrap();
        b.record(3 + 1300, &p, probe, false);
        // Closed again. Three failures admitted before the opening arrive now:
        // they say nothing about the recovered endpoint.
        for s in old {
            assert!(!b.record(3 + 1301, &p, s, true));
        }
        assert_eq!(b.state_name(3 + 1302), "closed");
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
            opened |= exchange(&b, &p, t, t % 2 == 1);
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
