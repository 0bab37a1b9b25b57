//! Prometheus metrics of the data plane, served as `GET /metrics` on the
//! admin listener (see `docs/api.md` for the list).
//!
//! Two kinds, kept apart for the hot path's sake:
//!
//! - **What requests do** (responses by status class, latency, retries):
//!   plain atomics in a [`RouteMetrics`] that lives in the route's
//!   [`RouteState`](crate::breaker::RouteState), so it survives table
//!   rebuilds exactly like the retry budget. A request does a handful of
//!   relaxed atomic adds: no label lookup, no string, no lock.
//! - **What the gateway is** (endpoint health, ejection, breaker state,
//!   retry budget, table revision): never touched per request. The
//!   [`GatewayCollector`] reads it from the current table at scrape time.
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

use arc_swap::{ArcSwap, ArcSwapOption};
use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::acme::AcmeStats;
use crate::balance::{Endpoint, EndpointSet};
use crate::caps::{CapStats, Refusal};
use crate::discovery::DiscoveryStatus;
use crate::health::now_ms;
use crate::router::{RouteEntry, RouteTable};
use crate::tls::{Handshake, TlsStats};
use crate::tunnel::{Closed, TunnelStats};

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
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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

    fn encode(&self, encoder: &mut MetricEncoder<'_>) -> fmt::Result {
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
const GRPC_LABELS: [&str; GRPC_CODES + 1] = [
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
    pub fn observe_upstream(&self, set: &Arc<EndpointSet>, index: usize, latency: Duration) {
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
}

/// Per-endpoint latency of one route.
///
/// The endpoint is known on the request path by its index in the route's
/// current [`EndpointSet`]. `resolved` maps those indices to histograms for
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
    set: Weak<EndpointSet>,
    histograms: Vec<Arc<LatencyHistogram>>,
}

impl UpstreamLatencies {
    fn observe(&self, set: &Arc<EndpointSet>, index: usize, latency: Duration) {
        {
            let current = self.resolved.load();
            if let Some(r) = current.as_deref() {
                if std::ptr::eq(r.set.as_ptr(), Arc::as_ptr(set)) {
                    if let Some(h) = r.histograms.get(index) {
                        h.observe(latency);
                    }
                    return;
                }
            }
        }
        let resolved = self.resolve(set);
        if let Some(h) = resolved.histograms.get(index) {
            h.observe(latency);
        }
    }

    fn resolve(&self, set: &Arc<EndpointSet>) -> Arc<Resolved> {
        let mut by_id = self.by_id.lock().expect("upstream metrics lock poisoned");
        let histograms = set
            .endpoints()
            .iter()
            .map(|e| by_id.entry(e.id.clone()).or_default().clone())
            .collect();
        let resolved = Arc::new(Resolved {
            set: Arc::downgrade(set),
            histograms,
        });
        self.resolved.store(Some(resolved.clone()));
        resolved
    }

    /// The histograms of the endpoints in `set`, for a scrape: every one of
    /// them (an endpoint not used yet shows zeros), none that left it.
    fn current(&self, set: &EndpointSet) -> Vec<(Arc<str>, Arc<LatencyHistogram>)> {
        let mut by_id = self.by_id.lock().expect("upstream metrics lock poisoned");
        let ids: HashSet<&str> = set.endpoints().iter().map(|e| &*e.id).collect();
        by_id.retain(|id, _| ids.contains(&**id));
        for e in set.endpoints() {
            by_id.entry(e.id.clone()).or_default();
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

/// A registry holding the [`GatewayCollector`], built once per admin
/// listener.
pub fn registry(
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<GatewayMetrics>,
    status: Arc<DiscoveryStatus>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GatewayCollector {
        table,
        metrics,
        status,
    }));
    registry
}

/// Renders `registry` in the text format of [`CONTENT_TYPE`].
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// Emits every gateway metric from the current table and the request
/// counters at scrape time; see the module docs.
#[derive(Debug)]
pub struct GatewayCollector {
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<GatewayMetrics>,
    status: Arc<DiscoveryStatus>,
}

type Pair<'a> = [(&'static str, &'a str); 2];

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let table = self.table.load_full();
        let entries = table.entries();
        let now = now_ms();

        let mut e = encoder.encode_descriptor(
            "portico_requests",
            "Responses sent, by route and status class; the gateway's own errors included (route \"<none>\": no route matched).",
            None,
            MetricType::Counter,
        )?;
        let routes = entries
            .iter()
            .map(|entry| (&*entry.route.name, &entry.state.metrics))
            .chain([(NO_ROUTE, &self.metrics.no_route)]);
        for (route, m) in routes.clone() {
            for (class, count) in CLASSES.iter().zip(&m.responses) {
                let labels: Pair = [("route", route), ("class", class)];
                e.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count.load(Ordering::Relaxed), None)?;
            }
        }

        let mut e = encoder.encode_descriptor(
            "portico_grpc_calls",
            "gRPC calls by route and the grpc-status they ended with (\"none\": cut off without one); only codes seen are listed.",
            None,
            MetricType::Counter,
        )?;
        for (route, m) in routes.clone() {
            for (code, count) in GRPC_LABELS.iter().zip(&m.grpc) {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    let labels: Pair = [("route", route), ("grpc_status", code)];
                    e.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }

        let mut e = encoder.encode_descriptor(
            "portico_request_duration_seconds",
            "Time from a request's arrival to its response head, by route.",
            None,
            MetricType::Histogram,
        )?;
        for (route, m) in routes {
            m.latency
                .encode(&mut e.encode_family(&[("route", route)])?)?;
        }

        let mut e = encoder.encode_descriptor(
            "portico_upstream_duration_seconds",
            "Time from sending a request to an endpoint to its response head, by route and endpoint.",
            None,
            MetricType::Histogram,
        )?;
        for entry in entries {
            let upstreams = &entry.state.metrics.upstreams;
            for (id, h) in upstreams.current(&entry.endpoints) {
                let labels: Pair = [("route", &*entry.route.name), ("endpoint", &*id)];
                h.encode(&mut e.encode_family(&labels)?)?;
            }
        }

        let mut e = encoder.encode_descriptor(
            "portico_retries",
            "Retries (tries after the first), by route.",
            None,
            MetricType::Counter,
        )?;
        for entry in entries {
            let retries = entry.state.metrics.retries.load(Ordering::Relaxed);
            e.encode_family(&[("route", &*entry.route.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&retries, None)?;
        }

        let mut e = encoder.encode_descriptor(
            "portico_retry_budget_tokens",
            "Retries the route's retry budget would allow now (routes with a retry policy).",
            None,
            MetricType::Gauge,
        )?;
        for entry in entries {
            if let Some(policy) = &entry.route.retry {
                let available = entry.state.budget.available(policy);
                e.encode_family(&[("route", &*entry.route.name)])?
                    .encode_gauge(&available)?;
            }
        }

        // Endpoint state, labelled by route and endpoint as the table holds it.
        type Gauge = fn(&RouteEntry, &Endpoint, u64) -> Option<i64>;
        let endpoint_gauges: [(&str, &str, Gauge); 3] = [
            (
                "portico_endpoint_in_rotation",
                "1 when the endpoint may be picked (not ejected, not failing its active health check).",
                |_, ep, now| Some(i64::from(!ep.health.is_out(now))),
            ),
            (
                "portico_endpoint_ejected",
                "1 while passive outlier detection has the endpoint ejected.",
                |_, ep, now| Some(i64::from(ep.health.is_ejected(now))),
            ),
            (
                "portico_endpoint_health_check_failing",
                "1 when the endpoint's active health check says it is down (routes with a health check).",
                |entry, ep, _| {
                    entry
                        .route
                        .health_check
                        .as_ref()
                        .map(|_| i64::from(ep.health.is_checked_down()))
                },
            ),
        ];
        for (name, help, value) in endpoint_gauges {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for entry in entries {
                for ep in entry.endpoints.endpoints() {
                    if let Some(v) = value(entry, ep, now) {
                        let labels: Pair = [("route", &*entry.route.name), ("endpoint", &*ep.id)];
                        e.encode_family(&labels)?.encode_gauge(&v)?;
                    }
                }
            }
        }

        let mut e = encoder.encode_descriptor(
            "portico_endpoint_ejections",
            "Times passive outlier detection has ejected the endpoint.",
            None,
            MetricType::Counter,
        )?;
        for entry in entries {
            for ep in entry.endpoints.endpoints() {
                let labels: Pair = [("route", &*entry.route.name), ("endpoint", &*ep.id)];
                e.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(
                        &u64::from(ep.health.ejections()),
                        None,
                    )?;
            }
        }

        let mut e = encoder.encode_descriptor(
            "portico_endpoint_breaker_state",
            "Circuit breaker state, one series per state, 1 for the current one (routes with a breaker).",
            None,
            MetricType::Gauge,
        )?;
        for entry in entries.iter().filter(|e| e.route.breaker.is_some()) {
            for ep in entry.endpoints.endpoints() {
                let current = ep.health.breaker.state_name(now);
                for state in ["closed", "open", "half_open"] {
                    let labels: [(&str, &str); 3] = [
                        ("route", &*entry.route.name),
                        ("endpoint", &*ep.id),
                        ("state", state),
                    ];
                    e.encode_family(&labels)?
                        .encode_gauge(&i64::from(state == current))?;
                }
            }
        }

        encoder
            .encode_descriptor(
                "portico_downstream_connections",
                "Downstream (client) connections open now.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.metrics.connections())?;
        let caps = &self.metrics.caps;
        encoder
            .encode_descriptor(
                "portico_downstream_connections_max",
                "The gateway-wide cap on client connections (--max-connections, or derived from the descriptor limit).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(caps.max() as i64))?;
        let mut e = encoder.encode_descriptor(
            "portico_downstream_connections_refused",
            "Client connections refused at accept, by cap: gateway_limit (503) or client_ip_limit (429).",
            None,
            MetricType::Counter,
        )?;
        for (why, label) in Refusal::ALL {
            e.encode_family(&[("reason", label)])?
                .encode_counter::<NoLabelSet, _, u64>(&caps.refused(why), None)?;
        }
        encoder
            .encode_descriptor(
                "portico_accept_errors",
                "Failed accepts on the public listener (out of file descriptors and the like), each followed by a pause.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&caps.accept_errors(), None)?;
        let tunnels = &self.metrics.tunnels;
        encoder
            .encode_descriptor(
                "portico_gateway_tunnels_open",
                "Upgraded connections (WebSocket tunnels) open now.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(tunnels.open() as i64))?;
        let mut e = encoder.encode_descriptor(
            "portico_gateway_tunnels_closed",
            "Tunnels closed, by why: ended (a side closed), idle (no bytes for the tunnel idle timeout), shutdown (open when the drain ran out).",
            None,
            MetricType::Counter,
        )?;
        for (why, label) in Closed::ALL {
            e.encode_family(&[("reason", label)])?
                .encode_counter::<NoLabelSet, _, u64>(&tunnels.closed(why), None)?;
        }

        encode_tls(&mut encoder, &self.metrics.tls)?;
        if self.metrics.acme.enabled() {
            encode_acme(&mut encoder, &self.metrics.acme)?;
        }

        encoder
            .encode_descriptor(
                "portico_routing_table_revision",
                "Registry revision the routing table being served reflects (0 for static routes).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&table.revision)?;

        // Propagation: how far behind the registry this gateway is.
        let st = &self.status;
        let seen = st.seen_revision.load(Ordering::Relaxed);
        let applied = st.applied_revision.load(Ordering::Relaxed);
        let gauges: [(&str, &str, i64); 3] = [
            (
                "portico_gateway_seen_revision",
                "Newest registry revision this gateway has heard of.",
                seen as i64,
            ),
            (
                "portico_gateway_revision_lag",
                "Registry revisions heard of but not yet in the served table (0 when current).",
                seen.saturating_sub(applied) as i64,
            ),
            (
                "portico_gateway_registry_connected",
                "1 while the registry watch is connected.",
                i64::from(st.connected.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        encoder
            .encode_descriptor(
                "portico_gateway_serving_cached_state",
                "1 while the table is built from the registry-state cache (no registry has answered since start).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(st.serving_cache.load(Ordering::Relaxed)))?;
        if let Some(age_ms) = st.cache_age_ms() {
            encoder
                .encode_descriptor(
                    "portico_gateway_cache_age_seconds",
                    "Age of the cached registry state being served.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(age_ms as f64 / 1000.0))?;
        }
        encoder
            .encode_descriptor(
                "portico_gateway_registry_resyncs",
                "Times the registry watch re-listed after a line it could not decode.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&st.resyncs.load(Ordering::Relaxed), None)?;
        let applied_at = st.applied_at_ms.load(Ordering::Relaxed);
        if applied_at > 0 {
            let now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            encoder
                .encode_descriptor(
                    "portico_gateway_table_age_seconds",
                    "Time since the served table was last rebuilt: grows while the registry is quiet or unreachable.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(now_unix.saturating_sub(applied_at) as f64 / 1000.0))?;
        }
        encoder
            .encode_descriptor(
                "portico_gateway_table_build_seconds",
                "Time the last rebuild took, from the burst of changes arriving to the new table being swapped in.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(st.last_build_us.load(Ordering::Relaxed) as f64 / 1e6))?;
        encoder
            .encode_descriptor(
                "portico_gateway_table_rebuilds",
                "Routing tables built from registry changes and route-file reloads.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&st.rebuilds.load(Ordering::Relaxed), None)?;
        let mut e = encoder.encode_descriptor(
            "portico_route_file_reloads",
            "Route-file reloads, by result (applied, or refused and the previous routes kept).",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [("applied", &st.reloads), ("refused", &st.reload_failures)] {
            e.encode_family(&[("result", result)])?
                .encode_counter::<NoLabelSet, _, u64>(&count.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }
}

/// TLS handshakes by outcome, certificate reloads, and each certificate's
/// time to expiry (read from the certificates served when scraped).
fn encode_tls(encoder: &mut DescriptorEncoder, tls: &TlsStats) -> fmt::Result {
    let mut e = encoder.encode_descriptor(
        "portico_gateway_tls_handshakes",
        "TLS handshakes on the HTTPS listener, by result (ok, failed, timeout) and the protocol ALPN chose.",
        None,
        MetricType::Counter,
    )?;
    for (outcome, result, protocol) in Handshake::ALL {
        e.encode_family(&[("result", result), ("protocol", protocol)])?
            .encode_counter::<NoLabelSet, _, u64>(&tls.handshakes(outcome), None)?;
    }
    encoder
        .encode_descriptor(
            "portico_gateway_tls_resumed_handshakes",
            "Completed TLS handshakes that resumed a session (ticket or session id).",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&tls.resumed(), None)?;
    let (applied, refused) = tls.store().reloads();
    let mut e = encoder.encode_descriptor(
        "portico_gateway_tls_reloads",
        "Certificates loaded from files or the registry, applied or refused (refused: the previous certificate kept serving).",
        None,
        MetricType::Counter,
    )?;
    for (result, n) in [("applied", applied), ("refused", refused)] {
        e.encode_family(&[("result", result)])?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    let now = crate::tls::cert::unix_now();
    let mut e = encoder.encode_descriptor(
        "portico_certificate_expiry_seconds",
        "Seconds until each served certificate expires (negative once it has), by source (file or registry), name (the file, or the registry name) and names.",
        None,
        MetricType::Gauge,
    )?;
    for cert in tls.store().current().certs() {
        let names = cert.names.join(",");
        let (source, name) = match cert.registry_name() {
            Some(name) => ("registry", name),
            None => ("file", cert.source.as_str()),
        };
        let labels: [(&str, &str); 3] = [("source", source), ("name", name), ("names", &names)];
        e.encode_family(&labels)?
            .encode_gauge(&cert.expires_in(now))?;
    }
    Ok(())
}

fn encode_acme(encoder: &mut DescriptorEncoder, acme: &AcmeStats) -> fmt::Result {
    let (ok, failed) = acme.orders();
    let mut e = encoder.encode_descriptor(
        "portico_acme_orders",
        "ACME orders by result (a failed one is retried with backoff; the certificate served is kept).",
        None,
        MetricType::Counter,
    )?;
    for (result, n) in [("ok", ok), ("failed", failed)] {
        e.encode_family(&[("result", result)])?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    encoder
        .encode_descriptor(
            "portico_acme_next_renewal_timestamp_seconds",
            "Unix time of the next ACME order (renewal at two thirds of the lifetime, or a retry).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&acme.next_renewal())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_scrape_shows_cumulative_buckets_and_matching_counts() {
        let config = crate::config::Config::parse(
            "[[route]]\nname = \"r\"\nupstreams = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let table =
            crate::discovery::TableBuilder::new(config.routes, false, Arc::default()).build(4);
        let m = &table.entries()[0].state.metrics;
        m.record(StatusCode::OK, Duration::from_micros(50));
        m.record(StatusCode::OK, Duration::from_millis(2));
        m.record(StatusCode::BAD_GATEWAY, Duration::from_secs(1));
        let table = Arc::new(ArcSwap::from_pointee(table));
        let text = render(&registry(table, Arc::default(), Arc::default()));
        for line in [
            "portico_requests_total{route=\"r\",class=\"2xx\"} 2",
            "portico_requests_total{route=\"r\",class=\"5xx\"} 1",
            "portico_requests_total{route=\"<none>\",class=\"4xx\"} 0",
            "portico_request_duration_seconds_bucket{route=\"r\",le=\"0.0001\"} 1",
            "portico_request_duration_seconds_bucket{route=\"r\",le=\"0.0025\"} 2",
            "portico_request_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 3",
            "portico_request_duration_seconds_count{route=\"r\"} 3",
            "portico_endpoint_in_rotation{route=\"r\",endpoint=\"127.0.0.1:1\"} 1",
            "portico_routing_table_revision 4",
            "portico_downstream_connections 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
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

    #[test]
    fn upstream_histograms_follow_endpoints_across_sets() {
        let health = crate::health::HealthRegistry::default();
        let set = |addrs: &[&str]| {
            Arc::new(EndpointSet::new(
                addrs
                    .iter()
                    .map(|a| Endpoint::from_static(a.parse().unwrap(), &health))
                    .collect(),
            ))
        };
        let m = RouteMetrics::default();
        let first = set(&["127.0.0.1:1", "127.0.0.1:2"]);
        m.observe_upstream(&first, 1, Duration::from_millis(1));
        // A rebuild reorders the endpoints: the sample stays with 127.0.0.1:2.
        let second = set(&["127.0.0.1:2", "127.0.0.1:3"]);
        m.observe_upstream(&second, 0, Duration::from_millis(1));
        let current = m.upstreams.current(&second);
        let counts: Vec<(&str, u64)> = current.iter().map(|(id, h)| (&**id, h.count())).collect();
        assert_eq!(counts, [("127.0.0.1:2", 2), ("127.0.0.1:3", 0)]);
    }
}
