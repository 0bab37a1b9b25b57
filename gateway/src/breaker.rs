//! Overload limits per route (circuit breaking in Envoy's sense): a cap on
//! concurrent requests and on concurrent retries. Over a limit the gateway
//! answers 503 `overloaded` at once instead of queueing, so a slow backend
//! cannot pile up unbounded work in the gateway, and retries cannot grow
//! into a storm.
//!
//! The counters live in [`RouteState`], shared by every table that holds
//! the route (like the retry budget), so a rebuild does not reset them while
//! requests are in flight.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::retry::RetryBudget;

/// A route's limits (`[route.limits]`); `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Most requests in flight on the route at once.
    pub max_requests: Option<u32>,
    /// Most retries in flight on the route at once.
    pub max_retries: Option<u32>,
}

/// Mutable per-route state kept across table rebuilds.
#[derive(Debug, Default)]
pub struct RouteState {
    /// The route's retry budget.
    pub budget: RetryBudget,
    active: AtomicU32,
    retrying: AtomicU32,
}

/// A slot held for as long as a request (or retry) is in flight.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn acquire(counter: &AtomicU32, max: u32) -> Option<Slot<'_>> {
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

    /// Requests in flight counted against `max_requests`.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
