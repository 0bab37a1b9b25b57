//! Prometheus metrics of the data plane, served as `GET /metrics` on the
//! admin listener (see `docs/api.md` for the list).
//!
//! Two kinds, kept apart for the hot path's sake:
//!
//! - **What requests do** (responses by status class, latency, retries):
//!   plain atomics in a [`RouteMetrics`] that lives in the route's
//!   `RouteState` (in `breaker`), so it survives table
//!   rebuilds exactly like the retry budget. A request does a handful of
//!   relaxed atomic adds: no label lookup, no string, no lock.
//! - **What the gateway is** (endpoint health, ejection, breaker state,
//!   retry budget, table revision): never touched per request. The
//!   scrape-time collector (the `collector` module) reads it from the current
//!   table.
//!
//! This module is a leaf of the gateway's import graph: it knows nothing of
//! routes, endpoint sets or discovery (an endpoint set is seen through the
//! small [`EndpointIds`] trait), so the route state that holds these
//! counters, and everything under it, can be read and tested alone.
//!
//! The histograms are our own ([`LatencyHistogram`]: one atomic per bucket)
//! rather than `prometheus_client`'s, whose `observe` takes a mutex: a mutex
//! shared by every core serving a route is exactly the contention a gateway
//! must not add. `prometheus_client` still does all the encoding.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::StatusCode;
use portico_registry::gateway::RouteLoad;
use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

use crate::acme::AcmeStats;
use crate::caps::CapStats;
use crate::tls::TlsStats;
use crate::tunnel::TunnelStats;

/// `Content-Type` of `GET /metrics`: the Prometheus text format 0.0.4, which
/// every scraper reads.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `route` label of requests no route matched. Route names are limited
/// to `[A-Za-z0-9-_.:]`, so this can never be a real route's name.
pub const NO_ROUTE: &str = "<none>";

/// Upper bounds of the latency buckets, in microseconds: from 100 us (a
/// local upstream) to 30 s (past any sensible route timeout).
const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 30_000_000,
];

/// Status classes counted per route, in label order.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A latency histogram whose `observe` is two relaxed atomic adds.
///
/// Buckets count their own observations (not cumulatively) and the total is
/// their sum, so there is no separate count to keep in step; the scrape adds
/// them up. Sum and buckets are read one after the other, so under traffic a
/// scrape may see a sample in one and not yet in the other, which Prometheus
/// tolerates (rates converge).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Linear from the smallest bound: fast requests, the common case,
        // stop at the first or second comparison.
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes the histogram as one Prometheus histogram sample.
    pub fn encode(&self, encoder: &mut MetricEncoder<'_>) -> fmt::Result {
        // Per-bucket counts, as kept: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = BOUNDS_US
                    .get(i)
                    .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
                (bound, b.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// A route's counters at one moment; two of them a period apart give the
/// route's load over the period ([`RouteTotals::load_since`]), which the
/// gateway's registry record carries for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTotals {
    /// Responses, every class.
    pub responses: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Latency histogram buckets (per bucket, not cumulative).
    pub buckets: [u64; BOUNDS_US.len() + 1],
}

impl RouteTotals {
    /// Requests per second, 5xx share and p99 between `before` and these
    /// totals, `elapsed` apart; `None` when no response was counted.
    pub fn load_since(&self, before: &RouteTotals, elapsed: Duration) -> Option<RouteLoad> {
        let n = self.responses.checked_sub(before.responses)?;
        if n == 0 || elapsed.is_zero() {
            return None;
        }
        let errors = self.errors.saturating_sub(before.errors);
        let buckets: Vec<u64> = (0..self.buckets.len())
            .map(|i| self.buckets[i].saturating_sub(before.buckets[i]))
            .collect();
        Some(RouteLoad {
            rps: n as f64 / elapsed.as_secs_f64(),
            error_rate: (errors as f64 / n as f64).min(1.0),
            p99_ms: quantile_us(&buckets, 0.99) / 1e3,
        })
    }
}

/// The `q` quantile of per-bucket counts over [`BOUNDS_US`], in
/// microseconds: linear within the bucket it falls in (as Prometheus's
/// `histogram_quantile`); the open last bucket answers the last bound.
fn quantile_us(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, &count) in buckets.iter().enumerate() {
        let upper = match BOUNDS_US.get(i) {
            Some(&b) => b as f64,
            None => return BOUNDS_US[BOUNDS_US.len() - 1] as f64,
        };
        if count > 0 && seen + count as f64 >= rank {
            let lower = i.checked_sub(1).map_or(0.0, |j| BOUNDS_US[j] as f64);
            return lower + (upper - lower) * (rank - seen) / count as f64;
        }
        seen += count as f64;
    }
    0.0
}

/// Request metrics of one route, kept in its `RouteState` across rebuilds.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Responses by status class (1xx..5xx), the gateway's own errors included.
    responses: [AtomicU64; CLASSES.len()],
    /// Arrival to response head.
    latency: LatencyHistogram,
    /// Tries after the first.
    retries: AtomicU64,
    upstreams: UpstreamLatencies,
    /// gRPC calls by the `grpc-status` they ended with (0 to 16), and in
    /// the last slot the calls that ended without one (cut off).
    grpc: [AtomicU64; GRPC_CODES + 1],
}

/// gRPC status codes 0 to 16.
const GRPC_CODES: usize = 17;
/// Label values of the gRPC counters: the codes, then "none".
pub(crate) const GRPC_LABELS: [&str; GRPC_CODES + 1] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "none",
];

impl RouteMetrics {
    /// Counts a finished request: its status class and its latency (arrival
    /// to response head; the body streams afterwards and is not timed).
    pub fn record(&self, status: StatusCode, latency: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, CLASSES.len()) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }

    /// Counts a gRPC call that ended with `code` (`None`: without a
    /// `grpc-status`, e.g. cut off).
    pub fn record_grpc(&self, code: Option<u8>) {
        let i = code.map_or(GRPC_CODES, |c| usize::from(c).min(GRPC_CODES));
        self.grpc[i].fetch_add(1, Ordering::Relaxed);
    }

    /// gRPC calls that ended with `code` (`None`: without a status).
    pub fn grpc_calls(&self, code: Option<u8>) -> u64 {
        let i = code.map_or(GRPC_CODES, |c| usize::from(c).min(GRPC_CODES));
        self.grpc[i].load(Ordering::Relaxed)
    }

    /// Counts one retry.
    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time endpoint `index` of `set` took to answer with a
    /// response head.
    pub fn observe_upstream<S: EndpointIds>(&self, set: &Arc<S>, index: usize, latency: Duration) {
        self.upstreams.observe(set, index, latency);
    }

    /// Responses counted in a status class (`2` for 2xx).
    pub fn responses(&self, class: u16) -> u64 {
        let i = usize::from(class).clamp(1, CLASSES.len()) - 1;
        self.responses[i].load(Ordering::Relaxed)
    }

    /// The route's latency histogram.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Responses by status class, in the order of [`CLASSES`].
    pub(crate) fn responses_by_class(&self) -> impl Iterator<Item = u64> + '_ {
        self.responses.iter().map(|n| n.load(Ordering::Relaxed))
    }

    /// gRPC calls by code, in the order of [`GRPC_LABELS`].
    pub(crate) fn grpc_by_code(&self) -> impl Iterator<Item = u64> + '_ {
        self.grpc.iter().map(|n| n.load(Ordering::Relaxed))
    }

    /// The counts a gateway's record reports from: see [`RouteTotals`].
    pub fn totals(&self) -> RouteTotals {
        RouteTotals {
            responses: self.responses_by_class().sum(),
            errors: self.responses(5),
            buckets: std::array::from_fn(|i| self.latency.buckets[i].load(Ordering::Relaxed)),
        }
    }

    /// Tries after the first, so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The per-endpoint histograms of the endpoints in `set`, for a scrape;
    /// see [`UpstreamLatencies::current`].
    pub fn upstream_latencies(
        &self,
        set: &dyn EndpointIds,
    ) -> Vec<(Arc<str>, Arc<LatencyHistogram>)> {
        self.upstreams.current(set)
    }
}

/// What the per-endpoint histograms need of an endpoint set: its endpoints'
/// ids, in the order requests index them. A trait, so that this leaf module
/// need not import the balancer (which sits above it, through the route
/// state that holds these counters).
pub trait EndpointIds: Send + Sync + 'static {
    /// The ids, in index order.
    fn ids(&self) -> Box<dyn Iterator<Item = &Arc<str>> + '_>;
}

/// Per-endpoint latency of one route.
///
/// The endpoint is known on the request path by its index in the route's
/// current endpoint set. `resolved` maps those indices to histograms for
/// one set; a request loads it (one `ArcSwap` load), checks it was resolved
/// for the set it picked from, and adds to the histogram at its index. Only
/// the first request after a rebuild replaced the set misses and resolves
/// the new set by endpoint id under the mutex, so an endpoint keeps its
/// histogram across rebuilds.
#[derive(Debug, Default)]
struct UpstreamLatencies {
    resolved: ArcSwapOption<Resolved>,
    /// Every endpoint's histogram by id: what a resolution starts from and
    /// what a scrape reads. Ids no longer in the route's set are pruned at
    /// scrape time.
    by_id: Mutex<HashMap<Arc<str>, Arc<LatencyHistogram>>>,
}

#[derive(Debug)]
struct Resolved {
    /// The set the histograms are in the order of. A `Weak` keeps the
    /// allocation's address from being reused by another set while this
    /// mapping exists, so comparing addresses is exact.
    set: Weak<dyn EndpointIds>,
    histograms: Vec<Arc<LatencyHistogram>>,
}

impl UpstreamLatencies {
    fn observe<S: EndpointIds>(&self, set: &Arc<S>, index: usize, latency: Duration) {
        {
            let current = self.resolved.load();
            if let Some(r) = current.as_deref()
                && std::ptr::addr_eq(r.set.as_ptr(), Arc::as_ptr(set))
            {
                if let Some(h) = r.histograms.get(index) {
                    h.observe(latency);
                }
                return;
            }
        }
        let resolved = self.resolve(set);
        if let Some(h) = resolved.histograms.get(index) {
            h.observe(latency);
        }
    }

    fn resolve<S: EndpointIds>(&self, set: &Arc<S>) -> Arc<Resolved> {
        let mut by_id = self.by_id.lock().expect("upstream metrics lock poisoned");
        let histograms = set
            .ids()
            .map(|id| by_id.entry(id.clone()).or_default().clone())
            .collect();
        let weak: Weak<S> = Arc::downgrade(set);
        let resolved = Arc::new(Resolved {
            set: weak,
            histograms,
        });
        self.resolved.store(Some(resolved.clone()));
        resolved
    }

    /// The histograms of the endpoints in `set`, for a scrape: every one of
    /// them (an endpoint not used yet shows zeros), none that left it.
    fn current(&self, set: &dyn EndpointIds) -> Vec<(Arc<str>, Arc<LatencyHistogram>)> {
        let mut by_id = self.by_id.lock().expect("upstream metrics lock poisoned");
        let ids: HashSet<&str> = set.ids().map(|id| &**id).collect();
        by_id.retain(|id, _| ids.contains(&**id));
        for id in set.ids() {
            by_id.entry(id.clone()).or_default();
        }
        let mut out: Vec<_> = by_id
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Gateway-wide request metrics, shared by the proxy, the listener and the
/// admin API.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Requests no route matched (only responses and latency are used).
    no_route: RouteMetrics,
    /// Downstream connections open now.
    connections: AtomicI64,
    /// Upgraded connections (tunnels), counted by [`crate::tunnel::Tunnels`].
    tunnels: Arc<TunnelStats>,
    /// Refused connections and accept errors, counted by the listener.
    caps: Arc<CapStats>,
    /// TLS handshakes, certificate reloads and the certificates served.
    tls: Arc<TlsStats>,
    /// ACME orders and the next renewal.
    acme: Arc<AcmeStats>,
}

impl GatewayMetrics {
    /// Metrics of requests that matched no route.
    pub fn no_route(&self) -> &RouteMetrics {
        &self.no_route
    }

    /// Counts a downstream connection as open until the guard drops.
    pub fn open_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Downstream connections open now.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The connection-cap counters, for the listener.
    pub fn caps(&self) -> &Arc<CapStats> {
        &self.caps
    }

    /// The tunnel counters, for the gateway's [`crate::tunnel::Tunnels`].
    pub fn tunnels(&self) -> &Arc<TunnelStats> {
        &self.tunnels
    }

    /// The TLS counters and certificates, for the TLS listener.
    pub fn tls(&self) -> &Arc<TlsStats> {
        &self.tls
    }

    /// The ACME counters, for the ACME client.
    pub fn acme(&self) -> &Arc<AcmeStats> {
        &self.acme
    }
}

/// One open downstream connection; see [`GatewayMetrics::open_connection`].
#[derive(Debug)]
pub struct ConnectionGuard(Arc<GatewayMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_load_is_the_difference_of_two_totals() {
        let m = RouteMetrics::default();
        let before = m.totals();
        for i in 0..100u64 {
            let status = if i < 10 {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            // 99 fast requests (under 100 us), one slow (2-5 ms bucket).
            let latency = if i == 99 {
                Duration::from_millis(3)
            } else {
                Duration::from_micros(50)
            };
            m.record(status, latency);
        }
        let load = m
            .totals()
            .load_since(&before, Duration::from_secs(2))
            .unwrap();
        assert_eq!(load.rps, 50.0);
        assert_eq!(load.error_rate, 0.1);
        // The 99th of 100 falls in the first bucket (0-100 us).
        assert!(load.p99_ms > 0.0 && load.p99_ms <= 0.1, "{load:?}");
        assert_eq!(
            m.totals().load_since(&m.totals(), Duration::from_secs(1)),
            None
        );
        let mut buckets = [0; BOUNDS_US.len() + 1];
        buckets[BOUNDS_US.len()] = 1;
        let one = RouteTotals {
            responses: 1,
            buckets,
            ..RouteTotals::default()
        };
        let open = one
            .load_since(&RouteTotals::default(), Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            open.p99_ms, 30_000.0,
            "the open bucket answers the last bound"
        );
    }

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1, "le=100us");
        assert_eq!(h.buckets[1].load(Ordering::Relaxed), 1, "le=250us");
        assert_eq!(
            h.buckets[BOUNDS_US.len()].load(Ordering::Relaxed),
            1,
            "+Inf"
        );
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum_us.load(Ordering::Relaxed), 60_000_201);
    }

    #[test]
    fn status_classes_clamp_to_the_known_ones() {
        let m = RouteMetrics::default();
        m.record(StatusCode::SWITCHING_PROTOCOLS, Duration::ZERO);
        m.record(StatusCode::OK, Duration::ZERO);
        m.record(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO);
        assert_eq!((m.responses(1), m.responses(2), m.responses(5)), (1, 1, 1));
        assert_eq!(m.latency().count(), 3);
    }

    /// An endpoint set as this module sees it.
    struct Ids(Vec<Arc<str>>);

    impl EndpointIds for Ids {
        fn ids(&self) -> Box<dyn Iterator<Item = &Arc<str>> + '_> {
            Box::new(self.0.iter())
        }
    }

    #[test]
    fn upstream_histograms_follow_endpoints_across_sets() {
        let set = |addrs: &[&str]| Arc::new(Ids(addrs.iter().map(|&a| Arc::from(a)).collect()));
        let m = RouteMetrics::default();
        let first = set(&["127.0.0.1:1", "127.0.0.1:2"]);
        m.observe_upstream(&first, 1, Duration::from_millis(1));
        // A rebuild reorders the endpoints: the sample stays with 127.0.0.1:2.
        let second = set(&["127.0.0.1:2", "127.0.0.1:3"]);
        m.observe_upstream(&second, 0, Duration::from_millis(1));
        let current = m.upstream_latencies(&*second);
        let counts: Vec<(&str, u64)> = current.iter().map(|(id, h)| (&**id, h.count())).collect();
        assert_eq!(counts, [("127.0.0.1:2", 2), ("127.0.0.1:3", 0)]);
    }
}
