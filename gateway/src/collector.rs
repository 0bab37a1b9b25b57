//! The scrape-time side of `GET /metrics`: one Prometheus collector that
//! reads, when scraped, the request counters ([`crate::metrics`]), the
//! current route table (endpoint health, ejection, breaker state, retry
//! budget) and the discovery status.
//!
//! It sits at the top of the gateway's import graph, beside the admin
//! listener that serves it: it reads everything, and nothing below imports
//! it. Nothing here runs per request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::acme::AcmeStats;
use crate::balance::Endpoint;
use crate::caps::Refusal;
use crate::discovery::DiscoveryStatus;
use crate::health::now_ms;
use crate::metrics::{CLASSES, GRPC_LABELS, GatewayMetrics, NO_ROUTE};
use crate::router::{RouteEntry, RouteTable};
use crate::tls::{Handshake, TlsStats};
use crate::tunnel::Closed;

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
            .chain([(NO_ROUTE, self.metrics.no_route())]);
        for (route, m) in routes.clone() {
            for (class, count) in CLASSES.iter().zip(m.responses_by_class()) {
                let labels: Pair = [("route", route), ("class", class)];
                e.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }

        let mut e = encoder.encode_descriptor(
            "portico_grpc_calls",
            "gRPC calls by route and the grpc-status they ended with (\"none\": cut off without one); only codes seen are listed.",
            None,
            MetricType::Counter,
        )?;
        for (route, m) in routes.clone() {
            for (code, n) in GRPC_LABELS.iter().zip(m.grpc_by_code()) {
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
            m.latency()
                .encode(&mut e.encode_family(&[("route", route)])?)?;
        }

        let mut e = encoder.encode_descriptor(
            "portico_upstream_duration_seconds",
            "Time from sending a request to an endpoint to its response head, by route and endpoint.",
            None,
            MetricType::Histogram,
        )?;
        for entry in entries {
            let metrics = &entry.state.metrics;
            for (id, h) in metrics.upstream_latencies(&*entry.endpoints) {
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
            let retries = entry.state.metrics.retries();
            e.encode_family(&[("route", &*entry.route.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&retries, None)?;
        }

        let mut e = encoder.encode_descriptor(
            "portico_mirror_copies",
            "Copies of requests for a route's mirror service, by route and outcome: sent (answered), failed, or dropped (max_in_flight copies were outstanding).",
            None,
            MetricType::Counter,
        )?;
        for entry in entries.iter().filter(|e| e.route.mirror.is_some()) {
            let m = &entry.state.mirror;
            for (outcome, n) in [
                ("sent", &m.sent),
                ("failed", &m.failed),
                ("dropped", &m.dropped),
            ] {
                let n = n.load(std::sync::atomic::Ordering::Relaxed);
                e.encode_family(&[("route", &*entry.route.name), ("outcome", outcome)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
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
        let caps = self.metrics.caps();
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
        encoder
            .encode_descriptor(
                "portico_access_log_dropped",
                "Access-log lines dropped rather than making requests wait: the log's writer was 1 MiB behind (a stalled pipe or a slow disk), or a write failed.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&crate::access::writer::dropped(), None)?;
        let tunnels = self.metrics.tunnels();
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

        encode_tls(&mut encoder, self.metrics.tls())?;
        if self.metrics.acme().enabled() {
            encode_acme(&mut encoder, self.metrics.acme())?;
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
    fn a_scrape_shows_cumulative_buckets_and_matching_counts() {
        let config = crate::config::Config::parse(
            "[[route]]\nname = \"r\"\nupstreams = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let table =
            crate::discovery::TableBuilder::new(config.routes, false, Arc::default()).build(4);
        let m = &table.entries()[0].state.metrics;
        m.record(http::StatusCode::OK, std::time::Duration::from_micros(50));
        m.record(http::StatusCode::OK, std::time::Duration::from_millis(2));
        m.record(
            http::StatusCode::BAD_GATEWAY,
            std::time::Duration::from_secs(1),
        );
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
}
