//! The gateway's admin listener: a separate address (never the public one)
//! that shows why each endpoint is in or out of rotation.
//!
//! - `GET /healthz`: 200 while the gateway runs.
//! - `GET /endpoints`: per route, its policy in brief, the retry budget and
//!   requests in flight, and per endpoint its weight, zone, in-flight count,
//!   latency EWMA, consecutive failures, ejection (times, time left), active
//!   health-check verdict and breaker state.
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]).
//!
//! Plain hyper: three read-only documents do not need a framework.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Balance;
use crate::health::now_ms;
use crate::metrics::GatewayMetrics;
use crate::router::RouteTable;

/// Serves the admin API on `listener` until the task is aborted; `metrics`
/// are the gateway's request metrics, scraped with the table's state.
pub fn spawn(
    listener: TcpListener,
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<GatewayMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let registry = Arc::new(crate::metrics::registry(table.clone(), metrics));
        while let Ok((stream, _)) = listener.accept().await {
            let (table, builder, registry) = (table.clone(), builder.clone(), registry.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (table, registry) = (table.clone(), registry.clone());
                    async move { Ok::<_, Infallible>(handle(&req, &table, &registry)) }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

fn handle(
    req: &Request<Incoming>,
    table: &ArcSwap<RouteTable>,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/endpoints") => (StatusCode::OK, endpoints(&table.load())),
        (&Method::GET, "/metrics") => {
            return Response::builder()
                .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                .body(Full::new(Bytes::from(crate::metrics::render(registry))))
                .expect("admin responses are well-formed");
        }
        (_, "/healthz" | "/endpoints" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method not allowed", "code": "method_not_allowed"}),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({"error": "no such admin endpoint", "code": "not_found"}),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("admin responses are well-formed")
}

fn lb_name(lb: &Balance) -> &'static str {
    match lb {
        Balance::RoundRobin => "round_robin",
        Balance::LeastRequest => "least_request",
        Balance::PeakEwma => "peak_ewma",
        Balance::Random => "random",
        Balance::ConsistentHash(_) => "consistent_hash",
    }
}

fn endpoints(table: &RouteTable) -> Value {
    let now = now_ms();
    let routes: Vec<Value> = table
        .entries()
        .iter()
        .map(|entry| {
            let route = &entry.route;
            let endpoints: Vec<Value> = entry
                .endpoints
                .endpoints()
                .iter()
                .map(|e| {
                    let h = &e.health;
                    let mut v = json!({
                        "id": &*e.id,
                        "address": e.authority.as_str(),
                        "weight": e.weight,
                        "zone": e.zone.as_deref(),
                        "in_rotation": !h.is_out(now),
                        "in_flight": h.in_flight(),
                        "latency_ewma_ms": h.ewma_us() / 1000.0,
                        "consecutive_failures": h.consecutive_failures(),
                        "ejections": h.ejections(),
                        "ejected_for_ms": h.ejected_for_ms(now),
                        "health_check": if route.health_check.is_none() {
                            Value::Null
                        } else if h.is_checked_down() {
                            json!("failing")
                        } else {
                            json!("passing")
                        },
                    });
                    if h.ejected_for_ms(now) > 0 {
                        v["ejection_reason"] = json!("consecutive_failures");
                    }
                    if route.breaker.is_some() {
                        v["breaker"] = json!(h.breaker.state_name(now));
                    }
                    v
                })
                .collect();
            let mut r = json!({
                "name": &*route.name,
                "lb": lb_name(&route.lb),
                "requests_in_flight": entry.state.active(),
                "retries_in_flight": entry.state.retrying(),
                "requests_pending": entry.state.pending(),
                "endpoints": endpoints,
            });
            if let Some(policy) = &route.retry {
                r["retry_budget_available"] = json!(entry.state.budget.available(policy));
            }
            r
        })
        .collect();
    json!({ "revision": table.revision, "routes": routes })
}
