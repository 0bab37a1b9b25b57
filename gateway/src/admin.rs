//! The gateway's admin listener: a separate address (never the public one)
//! that shows why traffic goes where it goes.
//!
//! - `GET /healthz`: 200 while the gateway runs.
//! - `GET /status`: the registry revision the served table reflects, the
//!   newest revision heard of, whether the watch is connected, rebuild and
//!   route-file reload counts, downstream connections and tunnels open. Comparing `applied_revision` across gateways
//!   shows a lagging one.
//! - `GET /endpoints`: per route, its policy in brief, the retry budget and
//!   requests in flight, and per endpoint its weight, zone, in-flight count,
//!   latency EWMA, consecutive failures, ejection (times, time left), active
//!   health-check verdict and breaker state.
//! - `GET /explain?method=&host=&path=&header=name:value&content_type=&client_ip=`: which
//!   route a request would take and why (every candidate the router tried,
//!   with the reason each was passed over), the route's endpoints with their
//!   state, which one would be picked, and a one-line verdict that names the
//!   answer the client would get (`404 no_route`, `503 no_healthy_upstream`,
//!   ...). Built for debugging a 404 or a 503 without reading logs. With a
//!   gRPC `content_type` (`application/grpc`, `-web`, `-web-text`) it also
//!   says the gRPC status the call would get (`UNIMPLEMENTED`, ...).
//! - `GET /routes`: every route of the live table with its source (`file`,
//!   `registry`, `implicit`), match and target (see [`routes`]).
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]).
//!
//! Plain hyper: a few read-only documents do not need a framework.

mod routes;

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

use std::sync::atomic::Ordering;

use http::HeaderMap;
use portico_registry::route::percent_decode;

use crate::balance::Endpoint;
use crate::config::{Balance, HostMatch, PathMatch, Route, Target};
use crate::discovery::DiscoveryStatus;
use crate::error::ProxyError;
use crate::health::now_ms;
use crate::metrics::GatewayMetrics;
use crate::path::PathPolicy;
use crate::proxy::pick::{self, Pick, Turn};
use crate::router::{Considered, Level, Mismatch, RequestView, RouteEntry, RouteTable};
use crate::split::Chosen;
use portico_registry::route::WeightedTarget;

/// What the admin listener reads: the live table, discovery progress, the
/// request metrics (scraped with the table's state), and the gateway's path
/// policy (so `/explain` sees the path the router would).
struct Admin {
    table: Arc<ArcSwap<RouteTable>>,
    status: Arc<DiscoveryStatus>,
    metrics: Arc<GatewayMetrics>,
    registry: Registry,
    paths: PathPolicy,
}

/// Serves the admin API on `listener` until the task is aborted.
pub fn spawn(
    listener: TcpListener,
    table: Arc<ArcSwap<RouteTable>>,
    status: Arc<DiscoveryStatus>,
    metrics: Arc<GatewayMetrics>,
    paths: PathPolicy,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let admin = Arc::new(Admin {
            registry: crate::collector::registry(table.clone(), metrics.clone(), status.clone()),
            table,
            status,
            metrics,
            paths,
        });
        // Out of descriptors, accepting fails: back off and keep serving,
        // rather than end the admin listener.
        let mut errors = crate::caps::AcceptErrors::new("admin", None);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    errors.succeeded();
                    stream
                }
                Err(e) => {
                    tokio::time::sleep(errors.failed(&e)).await;
                    continue;
                }
            };
            let (admin, builder) = (admin.clone(), builder.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&req)) }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

impl Admin {
    /// Answers one admin request.
    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (table, discovery, registry, metrics) =
            (&self.table, &*self.status, &self.registry, &*self.metrics);
        let (status, body) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => (StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET, "/endpoints") => (StatusCode::OK, endpoints(&table.load())),
            (&Method::GET, "/routes") => (StatusCode::OK, routes::routes(&table.load())),
            (&Method::GET, "/status") => (
                StatusCode::OK,
                status_json(&table.load(), discovery, metrics),
            ),
            (&Method::GET, "/explain") => {
                match explain(&table.load(), req.uri().query(), &self.paths) {
                    Ok(v) => (StatusCode::OK, with_grpc(v)),
                    Err((field, reason)) => (
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("{field}: {reason}"), "code": "invalid_value", "field": field}),
                    ),
                }
            }
            (&Method::GET, "/metrics") => {
                return Response::builder()
                    .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                    .body(Full::new(Bytes::from(crate::collector::render(registry))))
                    .expect("admin responses are well-formed");
            }
            (_, "/healthz" | "/endpoints" | "/routes" | "/status" | "/explain" | "/metrics") => (
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
}

fn lb_name(lb: &Balance) -> &'static str {
    lb.name()
}

fn status_json(table: &RouteTable, s: &DiscoveryStatus, metrics: &GatewayMetrics) -> Value {
    json!({
        "downstream_connections": metrics.connections(),
        "tunnels_open": metrics.tunnels().open(),
        "applied_revision": s.applied_revision.load(Ordering::Relaxed),
        "table_revision": table.revision,
        "seen_revision": s.seen_revision.load(Ordering::Relaxed),
        "registry_connected": s.connected.load(Ordering::Relaxed),
        "rebuilds": s.rebuilds.load(Ordering::Relaxed),
        "applied_at_unix_ms": s.applied_at_ms.load(Ordering::Relaxed),
        "last_build_us": s.last_build_us.load(Ordering::Relaxed),
        "route_file_reloads": s.reloads.load(Ordering::Relaxed),
        "route_file_reload_failures": s.reload_failures.load(Ordering::Relaxed),
        "routes": table.entries().len(),
        "cache": s.cache_json(),
        "tls": tls_json(metrics.tls()),
        "acme": acme_json(metrics.acme()),
    })
}

/// The ACME client's line: what it orders for, orders by result, the next
/// order and the last failure (`null` when ACME is off).
fn acme_json(acme: &crate::acme::AcmeStats) -> Value {
    if !acme.enabled() {
        return Value::Null;
    }
    let (ok, failed) = acme.orders();
    json!({
        "domains": acme.domains(),
        "orders_ok": ok,
        "orders_failed": failed,
        "next_renewal_unix": acme.next_renewal(),
        "last_error": acme.last_error(),
    })
}

/// The certificates served (names, expiry, fingerprint, never a key),
/// handshakes by outcome and certificate reloads.
fn tls_json(tls: &crate::tls::TlsStats) -> Value {
    let now = crate::tls::cert::unix_now();
    let certificates: Vec<Value> = tls
        .store()
        .current()
        .certs()
        .iter()
        .map(|c| {
            json!({
                "source": c.source,
                "names": c.names,
                "not_after_unix": c.not_after,
                "expires_in_seconds": c.expires_in(now),
                "fingerprint_sha256": c.fingerprint,
            })
        })
        .collect();
    let mut handshakes = serde_json::Map::new();
    for (outcome, result, protocol) in crate::tls::Handshake::ALL {
        let key = if result == "ok" { protocol } else { result };
        handshakes.insert(key.to_string(), json!(tls.handshakes(outcome)));
    }
    handshakes.insert("resumed".into(), json!(tls.resumed()));
    let (applied, refused) = tls.store().reloads();
    json!({
        "certificates": certificates,
        "handshakes": handshakes,
        "reloads_applied": applied,
        "reloads_refused": refused,
    })
}

/// Every endpoint of a route entry, as `/endpoints` and `/explain` show them.
/// A route's target as `/explain` shows it; for a split, each target with
/// its weight, subset and endpoints, and which one the next turn chooses.
fn target_json(entry: &RouteEntry, chosen: Option<Chosen>, now: u64) -> Value {
    match (&entry.route.target, &entry.split) {
        (Target::Service(s), _) => json!({"service": s}),
        (Target::Static(list), _) => {
            json!({"upstreams": list.iter().map(|a| a.as_str()).collect::<Vec<_>>()})
        }
        (Target::Split(targets), split) => {
            let sets = split.as_ref().map(|s| &s.targets[..]).unwrap_or_default();
            let list: Vec<Value> = targets
                .iter()
                .zip(sets)
                .map(|(t, e)| {
                    json!({
                        "service": t.service,
                        "weight": t.weight,
                        "subset": {"tags": t.subset.tags, "metadata": t.subset.metadata},
                        "endpoints": e.endpoints.endpoints().iter().map(|e| &*e.id).collect::<Vec<_>>(),
                        "in_rotation": e.endpoints.any_in_rotation(now),
                    })
                })
                .collect();
            json!({
                "split": list,
                "would_choose": chosen.map(|c| c.index),
                "passed_over": chosen.and_then(|c| c.skipped),
            })
        }
    }
}

/// The verdict of a split route: which target the turn chose (and which
/// it passed over), then what that target's pick gives.
fn split_verdict(targets: &[WeightedTarget], c: Chosen, verdict: &str) -> String {
    let name = |i: usize| {
        let t = &targets[i];
        format!("targets[{i}] ({:?}, weight {})", t.service, t.weight)
    };
    match c.skipped {
        Some(s) if s != c.index => format!(
            "split: the next turn is {}'s, which has no endpoint in rotation, so it goes to {}: {verdict}",
            name(s),
            name(c.index)
        ),
        Some(_) => format!(
            "split: the next turn is {}'s; no target has an endpoint in rotation: {verdict}",
            name(c.index)
        ),
        None => format!("split: the next turn goes to {}: {verdict}", name(c.index)),
    }
}

fn endpoints_json(entry: &RouteEntry, now: u64) -> Vec<Value> {
    entry
        .endpoints
        .endpoints()
        .iter()
        .map(|e| endpoint_json(&entry.route, e, now))
        .collect()
}

/// One endpoint's state, as `/endpoints` and `/explain` show it.
fn endpoint_json(route: &Route, e: &Endpoint, now: u64) -> Value {
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
        v["breaker_open_for_ms"] = json!(h.breaker.open_for_ms(now));
    }
    v
}

fn endpoints(table: &RouteTable) -> Value {
    let now = now_ms();
    let routes: Vec<Value> = table
        .entries()
        .iter()
        .map(|entry| {
            let route = &entry.route;
            let endpoints = endpoints_json(entry, now);
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

/// The inputs of `/explain`, from its query string.
struct ExplainQuery {
    method: Method,
    host: Option<String>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    client_ip: std::net::IpAddr,
}

fn parse_explain(raw: Option<&str>) -> Result<ExplainQuery, (&'static str, String)> {
    let mut q = ExplainQuery {
        method: Method::GET,
        host: None,
        path: "/".to_string(),
        query: None,
        headers: HeaderMap::new(),
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match name {
            "method" => {
                q.method = Method::from_bytes(value.to_ascii_uppercase().as_bytes())
                    .map_err(|_| ("method", format!("{value:?} is not an HTTP method")))?;
            }
            "host" => {
                // What a client could send as Host: a URI authority (no
                // path, no spaces, no userinfo), as the router would see it.
                let valid = value.is_empty()
                    || http::uri::Authority::try_from(value.as_str())
                        .is_ok_and(|a| !a.as_str().contains('@'));
                if !valid {
                    return Err(("host", format!("{value:?} is not a valid host[:port]")));
                }
                let host = value.trim_end_matches('.').to_ascii_lowercase();
                let host = match host.rsplit_once(':') {
                    Some((h, port))
                        if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') =>
                    {
                        h.to_string()
                    }
                    _ => host,
                };
                q.host = (!host.is_empty()).then_some(host);
            }
            "path" => {
                if !value.starts_with('/') {
                    return Err(("path", format!("{value:?} must start with '/'")));
                }
                // Only what can stand in a request line: `/a b` (from
                // `path=/a%20b`) cannot, its encoded form `/a%20b` can.
                if http::uri::PathAndQuery::try_from(value.as_str()).is_err() {
                    return Err((
                        "path",
                        format!("{value:?} is not a valid request path (percent-encode it)"),
                    ));
                }
                match value.split_once('?') {
                    Some((p, query)) => {
                        q.path = p.to_string();
                        q.query = Some(query.to_string());
                    }
                    None => q.path = value,
                }
            }
            "header" => {
                let (n, v) = value
                    .split_once(':')
                    .ok_or(("header", format!("{value:?}: expected name:value")))?;
                let n = http::HeaderName::from_bytes(n.trim().as_bytes())
                    .map_err(|_| ("header", format!("{n:?} is not a header name")))?;
                let v = http::HeaderValue::from_str(v.trim())
                    .map_err(|_| ("header", format!("{v:?} is not a header value")))?;
                q.headers.append(n, v);
            }
            "content_type" => {
                let v = http::HeaderValue::from_str(value.trim())
                    .map_err(|_| ("content_type", format!("{value:?} is not a header value")))?;
                q.headers.insert(header::CONTENT_TYPE, v);
            }
            "client_ip" => {
                q.client_ip = value
                    .parse()
                    .map_err(|_| ("client_ip", format!("{value:?} is not an IP address")))?;
            }
            other => {
                return Err((
                    "query",
                    format!(
                        "unknown parameter {other:?}: expected method, host, path, header, content_type or client_ip"
                    ),
                ));
            }
        }
    }
    Ok(q)
}

fn level_name(level: &Level<'_>) -> String {
    match level {
        Level::ExactHost(h) => format!("host {h}"),
        Level::WildcardHost(s) => format!("host *{s}"),
        Level::AnyHost => "any host".to_string(),
    }
}

fn describe_match(route: &Route) -> Value {
    let hosts: Vec<String> = route.hosts.iter().map(HostMatch::to_string).collect();
    let path = match &route.path {
        PathMatch::Exact(p) => json!({"exact": p}),
        PathMatch::Prefix(p) => json!({"prefix": p}),
        PathMatch::Regex(p) => json!({"regex": p.source(), "indexed_under": p.literal_prefix()}),
    };
    json!({
        "hosts": hosts,
        "path": path,
        "methods": route.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
        "headers": route.headers.iter().map(|h| format!("{} {}", h.name, h.rule.describe())).collect::<Vec<_>>(),
        "query": route.query.iter().map(|q| format!("{} {}", q.name, q.rule.describe())).collect::<Vec<_>>(),
        "priority": route.priority,
    })
}

fn mismatch_reason(route: &Route, m: Mismatch, q: &ExplainQuery) -> String {
    match m {
        Mismatch::Method => format!(
            "method {} is not among {:?}",
            q.method,
            route.methods.iter().map(Method::as_str).collect::<Vec<_>>()
        ),
        Mismatch::PathRegex => match &route.path {
            PathMatch::Regex(p) => {
                format!("path {:?} does not match regex {:?}", q.path, p.source())
            }
            _ => "path does not match".to_string(),
        },
        Mismatch::Header(n) => {
            let h = &route.headers[n];
            format!("header {} must be {}", h.name, h.rule.describe())
        }
        Mismatch::Query(n) => {
            let p = &route.query[n];
            format!("query parameter {} must be {}", p.name, p.rule.describe())
        }
    }
}

/// Adds what a gRPC call gets to an explanation whose request is gRPC: the
/// kind, and the gRPC status of the gateway's own answer (from the same
/// mapping the proxy uses), or that the upstream answers.
fn with_grpc(mut v: Value) -> Value {
    let ct = v["request"]["content_type"].as_str().unwrap_or_default();
    let Some(kind) = crate::grpc::GrpcKind::of_content_type(ct.as_bytes()) else {
        return v;
    };
    let verdict = v["verdict"].as_str().unwrap_or_default();
    let code = verdict
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches(':');
    let error = match code {
        "no_route" => Some(ProxyError::NoRoute),
        "no_healthy_upstream" => Some(ProxyError::NoHealthyUpstream {
            route: String::new(),
        }),
        "circuit_open" => Some(ProxyError::CircuitOpen {
            route: String::new(),
        }),
        "bad_path" => Some(ProxyError::BadRequest("path")),
        _ => None,
    };
    let answer = match error {
        Some(e) => {
            let status = e.grpc_code();
            format!(
                "trailers-only: grpc-status {} {} ({})",
                status.0,
                status.name(),
                e.code()
            )
        }
        None => "the upstream's answer, its grpc-status passed through".to_string(),
    };
    v["grpc"] = json!({"kind": format!("{kind:?}"), "answer": answer});
    v
}

/// Answers `/explain`: the route, the candidates, the endpoints, the pick.
fn explain(
    table: &RouteTable,
    raw: Option<&str>,
    paths: &PathPolicy,
) -> Result<Value, (&'static str, String)> {
    let mut q = parse_explain(raw)?;
    // The router sees the normalised path; so does the explanation.
    match crate::path::normalize(&q.path, paths) {
        Ok(p) => q.path = p.into_owned(),
        Err(e) => {
            return Ok(json!({
                "table_revision": table.revision,
                "request": {
                    "method": q.method.as_str(), "host": q.host, "path": q.path,
                    "content_type": q.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                },
                "route": null,
                "verdict": format!("400 bad_path: {e}"),
            }));
        }
    }
    let req = RequestView {
        host: q.host.as_deref(),
        path: &q.path,
        query: q.query.as_deref(),
        method: &q.method,
        headers: &q.headers,
    };
    let mut considered: Vec<(usize, String, String, Result<(), Mismatch>)> = Vec::new();
    let matched = table.lookup_observed(&req, true, &mut |c: Considered<'_>| {
        considered.push((
            c.index,
            level_name(&c.level),
            c.path_key.to_string(),
            c.outcome,
        ));
    });
    let winner = matched.as_ref().map(|m| &m.entry.route);
    let considered_json: Vec<Value> = considered
        .iter()
        .map(|(index, level, key, outcome)| {
            let route = &table.entries()[*index].route;
            let result = match (outcome, winner) {
                (Ok(()), Some(w)) if w.name == route.name => "matched: chosen".to_string(),
                (Ok(()), Some(w)) if w.priority > route.priority => format!(
                    "matches too, but {:?} has a higher priority ({} > {})",
                    &*w.name, w.priority, route.priority
                ),
                (Ok(()), Some(w)) => format!(
                    "matches too, but {:?} comes first (a more specific host or path, more conditions, or earlier)",
                    &*w.name
                ),
                (Ok(()), None) => "matched".to_string(),
                (Err(m), _) => mismatch_reason(route, *m, &q),
            };
            json!({
                "route": &*route.name,
                "at": level,
                "path_key": key,
                "priority": route.priority,
                "result": result,
            })
        })
        .collect();
    let request = json!({
        "method": q.method.as_str(),
        "host": q.host,
        "path": q.path,
        "query": q.query,
        "headers": q.headers.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("<binary>"))).collect::<Vec<_>>(),
        "content_type": q.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    });
    let Some(m) = matched else {
        let verdict = if table.entries().is_empty() {
            "404 no_route: the gateway has no routes at all".to_string()
        } else if considered.is_empty() {
            "404 no_route: no route's host and path cover this request".to_string()
        } else {
            format!(
                "404 no_route: {} route(s) cover this host and path, but none of their conditions hold (see considered)",
                considered.len()
            )
        };
        return Ok(json!({
            "table_revision": table.revision,
            "request": request,
            "route": null,
            "considered": considered_json,
            "verdict": verdict,
        }));
    };
    let route_entry: &RouteEntry = m.entry;
    let route = &route_entry.route;
    let now = now_ms();
    let endpoints = endpoints_json(route_entry, now);
    // A split route: the target the next request's turn would choose
    // (peeked, as the pick below), whose endpoints the verdict is about.
    let (entry, chosen) = route_entry.target(false);
    let all = entry.endpoints.endpoints();
    let out = all.iter().filter(|e| e.health.is_out(now)).count();
    let open = all
        .iter()
        .filter(|e| route.breaker.is_some() && e.health.breaker.is_open(now))
        .count();
    // What the balancer would pick for the next request: the request
    // path's own pick, as a peek (explaining must not take a live
    // request's turn, nor a breaker's admission).
    let ip = q.client_ip.to_string();
    let hash = pick::hash_key(route, &q.path, &q.headers, ip.as_bytes());
    let pick = match pick::pick(entry, hash, &[], false, Turn::Peek, &mut None) {
        Pick::Endpoint(i, e) => Some((i, e)),
        Pick::Exhausted | Pick::AllOpen => None,
    };
    let target = target_json(route_entry, chosen, now);
    let verdict = match (&route.target, all.len(), pick) {
        (Target::Service(s), 0, _) => format!(
            "503 no_healthy_upstream: route {:?} targets service {s:?}, which has no passing instance in the registry",
            &*route.name
        ),
        (Target::Split(_), 0, _) => format!(
            "503 no_healthy_upstream: none of route {:?}'s targets has a passing instance in the registry",
            &*route.name
        ),
        (_, n, None) if open == n => {
            format!("503 circuit_open: the circuit breaker is open on all {n} endpoint(s)")
        }
        (_, n, Some((_, e))) if out == n => format!(
            "proxied to {} in panic mode: all {n} endpoint(s) are out of rotation ({} ejected, {} failing health checks), so the gateway spreads traffic over all of them",
            e.authority,
            all.iter()
                .filter(|e| e.health.ejected_for_ms(now) > 0)
                .count(),
            all.iter().filter(|e| e.health.is_checked_down()).count(),
        ),
        (_, _, Some((_, e))) => format!(
            "proxied to {} ({}) by {}",
            e.authority,
            e.id,
            route.lb.name()
        ),
        (_, n, None) => {
            format!("503 no_healthy_upstream: none of the {n} endpoint(s) can be picked")
        }
    };
    let verdict = match (&route.target, chosen) {
        (Target::Split(targets), Some(c)) => split_verdict(targets, c, &verdict),
        _ => verdict,
    };
    Ok(json!({
        "table_revision": table.revision,
        "request": request,
        "route": {
            "name": &*route.name,
            "match": describe_match(route),
            "target": target,
            "lb": route.lb.name(),
            "strip_prefix": route.strip_prefix,
        },
        "considered": considered_json,
        "endpoints": endpoints,
        "would_pick": pick.map(|(_, e)| json!({"id": &*e.id, "address": e.authority.as_str()})),
        "verdict": verdict,
    }))
}
