//! `rate_limit` with `scope = "gateway"`: a GCRA (generic cell rate
//! algorithm) per key, counted on this gateway alone.
//!
//! GCRA keeps one number per key, its *theoretical arrival time* (TAT): the
//! moment the key would be back at rest if it sent nothing more. A request
//! at `now` is admitted when `max(TAT, now) + T - now <= burst x T` (with
//! `T = per / rate`), and moves the TAT by `T`. So a key at rest may send
//! `burst` requests at once and then one every `T`: over a time `t` it gets
//! `burst + rate x t`, the figure the accuracy test checks.
//!
//! Our own rather than `governor`'s keyed limiter: governor keeps keys in a
//! map that grows until someone calls `retain_recent`, with no bound, while
//! a gateway must bound the memory any client population can make it spend.
//! Here keys are 64-bit hashes (a long header value costs no more than an
//! IP), spread over shards each capped at `max_keys / shards`:
//!
//! - a key whose TAT has passed is at rest, exactly as if absent, so a full
//!   shard first drops those: nothing is forgotten that mattered;
//! - if every key of a full shard is still in debt, the one nearest to rest
//!   (smallest TAT) is dropped: that key is forgiven what is left of its
//!   debt, at most one `burst`. Flooding the map with new keys so costs the
//!   flooder, not the keys already limited, nearly nothing.
//!
//! A `route` key is one atomic TAT, updated by compare-and-swap: no lock.
//!
//! With `scope = "cluster"` the same GCRA runs on this gateway's *share*
//! of the limit: `T` and the burst are scaled by the share that
//! the gateway's `cluster` module sets from the other gateways' records ([`LimitShare`]),
//! and every request (admitted or not) is counted as demand for the next
//! record. Nothing shared is asked per request.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use portico_registry::filter::{LimitKey, RateLimit};

/// TATs are nanoseconds since the limiter's epoch plus this offset, so a
/// fresh key (TAT 0) is at rest from the first instant, whatever the
/// tolerance, which a cluster limit changes as its share moves. 2^62 ns
/// is about 146 years: no sum of a TAT and an interval comes near 2^64.
const CLOCK_OFFSET: u64 = 1 << 62;

/// Most shards of a keyed limiter: enough that cores rarely meet on one
/// lock, few enough that a small `max_keys` still gives each shard room.
const SHARDS: usize = 16;

/// A refused request: what the 429 tells the client.
#[derive(Debug, Clone)]
pub struct Limited {
    /// Whole seconds until a request would be admitted (at least 1), for
    /// `Retry-After`.
    pub retry_after: u64,
    /// The `RateLimit-Policy` field value.
    pub policy: HeaderValue,
    /// The `RateLimit` field value.
    pub state: HeaderValue,
}

/// One `rate_limit` filter's counters, built once per route and kept across
/// table rebuilds while its settings stay the same.
#[derive(Debug)]
pub struct RateLimiter {
    key: LimitKey,
    /// `T` and `burst x T` as they apply on this gateway now.
    pace: std::sync::Arc<LimitShare>,
    /// The start of this limiter's clock (TATs are nanoseconds since).
    epoch: Instant,
    /// The TAT of a `route` key.
    single: AtomicU64,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    shard_cap: usize,
    hasher: foldhash::fast::RandomState,
    /// Name of the policy in the headers (`filters[N]`).
    name: String,
    policy: HeaderValue,
}

impl RateLimiter {
    /// A limiter for `config`, the route's filter number `index`.
    pub fn new(config: &RateLimit, index: usize) -> RateLimiter {
        let shards = SHARDS.min(config.max_keys).max(1);
        let name = format!("filters[{index}]");
        RateLimiter {
            key: config.key.clone(),
            pace: std::sync::Arc::new(LimitShare::new(config)),
            epoch: Instant::now(),
            single: AtomicU64::new(0),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_cap: config.max_keys.div_ceil(shards),
            hasher: foldhash::fast::RandomState::default(),
            policy: policy_value(&name, config),
            name,
        }
    }

    /// Admits or refuses a request from `client` with `headers`, sent by
    /// `consumer` when the route's authentication identified one.
    pub fn check(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
        consumer: Option<&str>,
    ) -> Result<(), Limited> {
        if self.pace.counting {
            self.pace.arrivals.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.now();
        let verdict = match &self.key {
            LimitKey::Route => self.check_single(now),
            LimitKey::ClientIp => self.check_keyed(self.hasher.hash_one(client), now),
            LimitKey::Header(name) => {
                // Requests without the header share the bucket of "".
                let value = headers.get(name).map_or(&[][..], |v| v.as_bytes());
                self.check_keyed(self.hasher.hash_one(value), now)
            }
            // Checked when the route was written: a route counting by
            // consumer authenticates, so `None` is not reached in practice.
            LimitKey::Consumer => {
                self.check_keyed(self.hasher.hash_one(consumer.unwrap_or("")), now)
            }
        };
        verdict.map_err(|wait| self.limited(wait))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(CLOCK_OFFSET)
    }

    /// The GCRA step: the new TAT, or how long to wait.
    fn step(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let interval = self.pace.interval.load(Ordering::Relaxed);
        let tolerance = self.pace.tolerance.load(Ordering::Relaxed);
        let next = tat.max(now).saturating_add(interval);
        if next - now > tolerance {
            Err(next - tolerance - now)
        } else {
            Ok(next)
        }
    }

    /// A limiter counting with `scope = "cluster"`: its pace follows the
    /// share set on the answered [`LimitShare`] (1 until set), and it
    /// counts every request it sees as demand.
    pub fn cluster(config: &RateLimit, index: usize) -> RateLimiter {
        let mut limiter = RateLimiter::new(config, index);
        let mut pace = LimitShare::new(config);
        pace.counting = true;
        limiter.pace = std::sync::Arc::new(pace);
        limiter
    }

    /// Whether it counts with `scope = "cluster"`.
    pub fn is_cluster(&self) -> bool {
        self.pace.counting
    }

    /// Its name in the headers and in cluster limit ids (`filters[N]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pace, which the gateway's `cluster` module sets for a cluster limit.
    pub fn share(&self) -> &std::sync::Arc<LimitShare> {
        &self.pace
    }

    fn check_single(&self, now: u64) -> Result<(), u64> {
        let mut tat = self.single.load(Ordering::Relaxed);
        loop {
            let next = self.step(tat, now)?;
            match self
                .single
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    fn check_keyed(&self, key: u64, now: u64) -> Result<(), u64> {
        let shard = &self.shards[(key as usize) % self.shards.len()];
        let mut map = shard.lock().expect("rate limit shard poisoned");
        let tat = map.get(&key).copied().unwrap_or(0);
        let next = self.step(tat, now)?;
        if map.len() >= self.shard_cap && !map.contains_key(&key) {
            make_room(&mut map, now, self.shard_cap);
        }
        map.insert(key, next);
        Ok(())
    }

    fn limited(&self, wait_ns: u64) -> Limited {
        let retry_after = Duration::from_nanos(wait_ns).as_secs_f64().ceil().max(1.0) as u64;
        let state = format!("\"{}\";r=0;t={retry_after}", self.name);
        Limited {
            retry_after,
            policy: self.policy.clone(),
            state: HeaderValue::from_str(&state).expect("a policy name is a valid header value"),
        }
    }

    /// Keys remembered now (for tests and operators).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("rate limit shard poisoned").len())
            .sum()
    }
}

/// The pace of a limiter on this gateway: its whole limit, or for a
/// cluster limit its share of it (`rate x share` per `per`, a burst of
/// `burst x share` but at least one request), and the requests it has seen
/// since its demand was last read.
#[derive(Debug)]
pub struct LimitShare {
    /// `T / share`: nanoseconds between requests at this gateway's rate.
    interval: AtomicU64,
    /// How far ahead of now a TAT may run: this gateway's burst times its
    /// interval.
    tolerance: AtomicU64,
    /// `T` of the whole limit.
    base_interval: u64,
    burst: u32,
    /// The share as last set, as `f64` bits (for operators and tests).
    share: AtomicU64,
    /// Requests seen since [`LimitShare::take_arrivals`] (cluster only).
    arrivals: AtomicU64,
    counting: bool,
}

impl LimitShare {
    fn new(config: &RateLimit) -> LimitShare {
        let per = u64::try_from(config.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(config.rate)).max(1);
        LimitShare {
            interval: AtomicU64::new(interval),
            tolerance: AtomicU64::new(interval.saturating_mul(u64::from(config.burst))),
            base_interval: interval,
            burst: config.burst,
            share: AtomicU64::new(1f64.to_bits()),
            arrivals: AtomicU64::new(0),
            counting: false,
        }
    }

    /// Sets this gateway's share of the limit (clamped to `1e-6..=1`).
    pub fn set_share(&self, share: f64) {
        let share = share.clamp(1e-6, 1.0);
        let interval =
            ((self.base_interval as f64 / share).min(u64::MAX as f64 / 2.0) as u64).max(1);
        let burst = (f64::from(self.burst) * share).max(1.0);
        self.interval.store(interval, Ordering::Relaxed);
        self.tolerance.store(
            (interval as f64 * burst).min(u64::MAX as f64 / 4.0) as u64,
            Ordering::Relaxed,
        );
        self.share.store(share.to_bits(), Ordering::Relaxed);
    }

    /// The share as last set (1 for a gateway-scope limit).
    pub fn get_share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::Relaxed))
    }

    /// The requests seen since the last call, and starts counting again.
    pub fn take_arrivals(&self) -> u64 {
        self.arrivals.swap(0, Ordering::Relaxed)
    }
}

/// Frees a slot in a full shard: keys at rest first (forgetting them loses
/// nothing), else the key nearest to rest.
fn make_room(map: &mut HashMap<u64, u64>, now: u64, cap: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() >= cap
        && let Some(oldest) = map.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k)
    {
        map.remove(&oldest);
    }
}

/// `RateLimit-Policy` as draft-ietf-httpapi-ratelimit-headers-09 writes it:
/// `"name";q=QUOTA;w=WINDOW` with the window in whole seconds. A period
/// under a second is stated per second (the quota scaled up).
fn policy_value(name: &str, config: &RateLimit) -> HeaderValue {
    let per = config.per.as_secs_f64();
    let (quota, window) = if per < 1.0 {
        ((f64::from(config.rate) / per).round() as u64, 1)
    } else {
        (u64::from(config.rate), per.round() as u64)
    };
    HeaderValue::from_str(&format!("\"{name}\";q={quota};w={window}"))
        .expect("a policy is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, max_keys: usize, key: LimitKey) -> RateLimiter {
        RateLimiter::new(
            &RateLimit {
                key,
                rate,
                per: Duration::from_secs(1),
                burst,
                max_keys,
                scope: Default::default(),
            },
            0,
        )
    }

    #[test]
    fn a_key_at_rest_gets_its_burst_then_the_rate() {
        let l = limiter(10, 3, 100, LimitKey::Route);
        let now = l.now();
        let admitted = (0..10).filter(|_| l.check_single(now).is_ok()).count();
        assert_eq!(admitted, 3, "the burst");
        // One interval (100 ms) later, one more.
        assert!(l.check_single(now + 100_000_000).is_ok());
        assert!(l.check_single(now + 100_000_000).is_err());
    }

    #[test]
    fn the_wait_is_until_the_next_slot() {
        let l = limiter(1, 1, 100, LimitKey::ClientIp);
        let now = l.now();
        assert!(l.check_keyed(7, now).is_ok());
        let wait = l.check_keyed(7, now).unwrap_err();
        assert_eq!(wait, 1_000_000_000);
        assert_eq!(l.limited(wait).retry_after, 1);
        assert_eq!(l.limited(wait).state, "\"filters[0]\";r=0;t=1");
        assert_eq!(l.policy, "\"filters[0]\";q=1;w=1");
    }

    #[test]
    fn keys_stay_bounded_under_a_flood_of_new_keys() {
        let l = limiter(1, 1, 64, LimitKey::ClientIp);
        let now = l.now();
        // A key in debt, then a flood of new keys long after it is at rest
        // again: memory stays within the cap.
        for k in 0..10_000u64 {
            let _ = l.check_keyed(k, now + k);
        }
        assert!(l.keys() <= 64, "{} keys kept", l.keys());
    }

    #[test]
    fn keys_at_rest_are_dropped_before_keys_in_debt() {
        // 16 shards of 4 keys; keys that are multiples of 16 share shard 0.
        let l = limiter(1, 1, 64, LimitKey::ClientIp);
        let start = l.now();
        for k in [16, 32, 48] {
            assert!(l.check_keyed(k, start).is_ok());
        }
        // Ten seconds on, those three are at rest; the hot key is in debt.
        let later = start + 10_000_000_000;
        assert!(l.check_keyed(0, later).is_ok());
        // A new key in the full shard: the keys at rest make room.
        assert!(l.check_keyed(64, later).is_ok());
        assert!(
            l.check_keyed(0, later).is_err(),
            "the key in debt was forgotten"
        );
        assert_eq!(l.keys(), 2);
    }

    #[test]
    fn sub_second_periods_are_stated_per_second() {
        let config = RateLimit {
            key: LimitKey::Route,
            rate: 5,
            per: Duration::from_millis(100),
            burst: 5,
            max_keys: 1,
            scope: Default::default(),
        };
        assert_eq!(policy_value("p", &config), "\"p\";q=50;w=1");
    }
}
