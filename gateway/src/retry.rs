//! Retries: the per-route policy and the retry budget.
//!
//! A retry happens only when every one of these holds: the route has a
//! `[route.retry]` policy; the failure is one of its conditions; the method
//! is idempotent (or the route allows others); the request body was small
//! enough to be kept in memory (at most [`MAX_RETRY_BODY`], or empty), so
//! the retry sends exactly what the first try sent; attempts are left; and
//! the route's **retry budget** has a token. Each try goes to an endpoint not
//! tried yet, after an exponential backoff with full jitter.
//!
//! The budget is what stops retries from multiplying an outage: every request
//! deposits `budget_percent`/100 of a token, every retry withdraws one, and a
//! floor of `budget_min_per_second` tokens a second keeps low-traffic routes
//! able to retry at all. With every backend failing, retries stay within
//! that share of the traffic instead of multiplying it by `attempts`.
//!
//! Independently of any policy, a connection that could not be made (nothing
//! was sent) is always tried on another endpoint (see the proxy).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest request body kept in memory so the request can be retried.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;
pub use portico_registry::route::{DEFAULT_BACKOFF, RetryOn, RetryPolicy};

/// Longest backoff between tries.
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// The wait before retry number `retry` (1 for the first retry): a random
/// time up to base x 2^(retry-1), capped (full jitter).
pub fn backoff_for(policy: &RetryPolicy, retry: u32) -> Duration {
    let ceiling = policy
        .backoff
        .saturating_mul(1 << retry.saturating_sub(1).min(10))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(fastrand::f64())
}

/// Scale of a token: deposits are fractions of one.
const UNIT: i64 = 1000;

#[derive(Debug)]
struct Bucket {
    tokens: i64,
    refilled: Instant,
    started: bool,
}

/// A route's retry budget; shared by all its requests and kept across table
/// rebuilds. The mutex guards two integers for a few instructions, only on
/// routes with a retry policy.
#[derive(Debug)]
pub struct RetryBudget {
    bucket: Mutex<Bucket>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            bucket: Mutex::new(Bucket {
                tokens: 0,
                refilled: Instant::now(),
                started: false,
            }),
        }
    }
}

impl RetryBudget {
    fn with_bucket<T>(&self, policy: &RetryPolicy, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut b = self.bucket.lock().expect("retry budget lock poisoned");
        if !b.started {
            // A new route starts with one second of floor, so its first
            // failures can be retried before any traffic has paid in.
            b.started = true;
            b.tokens = i64::from(policy.budget_min_per_second) * UNIT;
            b.refilled = Instant::now();
        }
        // The per-second floor, accrued lazily; the balance is capped at ten
        // seconds' worth of floor plus a hundred retries, so a quiet period
        // cannot bank an unbounded burst.
        let now = Instant::now();
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        let floor = (elapsed * f64::from(policy.budget_min_per_second) * UNIT as f64) as i64;
        if floor > 0 {
            b.tokens += floor;
            b.refilled = now;
        }
        let cap = (i64::from(policy.budget_min_per_second) * 10 + 100) * UNIT;
        b.tokens = b.tokens.min(cap);
        f(&mut b)
    }

    /// A request arrived: deposit its share.
    pub fn deposit(&self, policy: &RetryPolicy) {
        let share = i64::from(policy.budget_percent) * UNIT / 100;
        self.with_bucket(policy, |b| b.tokens += share);
    }

    /// Retries the budget would allow right now.
    pub fn available(&self, policy: &RetryPolicy) -> f64 {
        self.with_bucket(policy, |b| b.tokens as f64 / UNIT as f64)
    }

    /// Takes a token for one retry; `false` when the budget is spent.
    pub fn withdraw(&self, policy: &RetryPolicy) -> bool {
        self.with_bucket(policy, |b| {
            if b.tokens >= UNIT {
                b.tokens -= UNIT;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on: RetryOn::default(),
            per_try_timeout: None,
            backoff: DEFAULT_BACKOFF,
            budget_percent: 20,
            budget_min_per_second: 0,
            non_idempotent: false,
        }
    }

    #[test]
    fn the_budget_allows_a_share_of_requests() {
        let p = policy();
        let budget = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..1000 {
            budget.deposit(&p);
            // Every request would like two retries.
            for _ in 0..2 {
                if budget.withdraw(&p) {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 200, "20% of 1000 requests");
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = policy();
        for retry in 1..12 {
            let d = backoff_for(&p, retry);
            assert!(d <= MAX_BACKOFF);
            assert!(d <= DEFAULT_BACKOFF * (1 << (retry - 1).min(10)));
        }
    }
}
