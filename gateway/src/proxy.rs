//! The request path: match a route, pick an endpoint, rewrite headers the
//! way a proxy must, stream the request upstream and the response back.
//!
//! Bodies are never buffered: the downstream [`Incoming`] body becomes the
//! upstream request body as is, and the upstream response body is handed back
//! the same way, so memory per request stays flat whatever the body size.
//! HTTP/1.1 upgrades (WebSocket and others) become a byte tunnel once the
//! upstream answers `101` (see [`crate::tunnel`]).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use portico_registry::model::Scheme;
use tokio::time::Instant;
use tracing::Instrument;

use crate::balance::{Endpoint, EndpointSet};
use crate::breaker::Ticket;
use crate::config::Route;
use crate::config::{Balance, HashOn};
use crate::error::ProxyError;
use crate::health::OutlierPolicy;
use crate::health::now_ms;
use crate::metrics::GatewayMetrics;
use crate::pool::{Pool, PooledBody, SendError, UpstreamBody, UpstreamError};
use crate::router::{RequestView, RouteEntry, RouteTable};
use crate::trace;
use crate::tunnel::Tunnels;

/// Body of every response the gateway sends: an upstream's streamed body, or
/// a small body the gateway made itself.
pub type ProxyBody = Either<PooledBody, Either<Incoming, Full<Bytes>>>;

/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled upstream connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Proxy tuning.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Emit one access-log line per request (target `portico::access`).
    pub access_log: bool,
    /// Time allowed to establish an upstream TCP connection.
    pub connect_timeout: Duration,
    /// How long idle upstream connections stay pooled.
    pub pool_idle_timeout: Duration,
    /// Passive outlier detection.
    pub outlier: OutlierPolicy,
    /// Give requests without a valid W3C `traceparent` a new one, so the
    /// upstream and the access log share a trace id. Off: the header is
    /// passed through (or not) exactly as received.
    pub generate_traceparent: bool,
    /// Close a tunnel (WebSocket) that carried no bytes for this long.
    pub tunnel_idle_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            access_log: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            outlier: OutlierPolicy::default(),
            generate_traceparent: false,
            tunnel_idle_timeout: crate::tunnel::DEFAULT_TUNNEL_IDLE_TIMEOUT,
        }
    }
}

/// The proxy: a table to read and pooled clients to send with.
#[derive(Debug)]
pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    pool: Arc<Pool>,
    outlier: OutlierPolicy,
    access_log: bool,
    generate_traceparent: bool,
    metrics: Arc<GatewayMetrics>,
    tunnels: Arc<Tunnels>,
}

/// The downstream peer of a connection, prepared once per connection so
/// requests do not format the address again.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Peer address.
    pub addr: SocketAddr,
    /// Peer IP as a header value, for `X-Forwarded-For`.
    ip: HeaderValue,
}

impl Peer {
    /// Describes the peer `addr`.
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Peer { addr, ip }
    }
}

/// What the access log and the metrics need about a finished request.
struct Outcome<'t> {
    /// The matched route (`None`: no route matched).
    entry: Option<&'t RouteEntry>,
    upstream: Option<Arc<str>>,
    /// When the last try's response head arrived (`None` when it did not):
    /// the end of the request's latency too, which saves a clock read.
    answered_at: Option<Instant>,
}

impl Proxy {
    /// A proxy reading routes from `table`.
    pub fn new(table: Arc<ArcSwap<RouteTable>>, settings: &ProxySettings) -> Proxy {
        let metrics = Arc::<GatewayMetrics>::default();
        let tunnels = Tunnels::new(settings.tunnel_idle_timeout, metrics.tunnels().clone());
        Proxy {
            table,
            pool: Pool::new(settings.connect_timeout, settings.pool_idle_timeout),
            outlier: settings.outlier.clone(),
            access_log: settings.access_log,
            generate_traceparent: settings.generate_traceparent,
            metrics,
            tunnels,
        }
    }

    /// The tunnels (upgraded connections) this proxy opened.
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// The request metrics this proxy records into.
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    /// Handles one downstream request; never fails (errors become responses).
    pub async fn handle(&self, mut req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let start = Instant::now();
        // Answer in the client's protocol, whatever the upstream spoke (an
        // HTTP/1.0 upstream must not turn the client's response into 1.0).
        let version = if req.version() == Version::HTTP_2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) => v.clone(),
            None => new_request_id(),
        };
        // The trace id is looked at only when generating or logging it.
        let trace_id = if self.generate_traceparent {
            Some(trace::ensure_traceparent(req.headers_mut()))
        } else if self.access_log {
            trace::trace_id(req.headers())
        } else {
            None
        };
        let logged = self
            .access_log
            .then(|| (req.method().clone(), req.uri().clone()));
        // Loaded here, not in `forward`, so the outcome can borrow the
        // matched route's state for the metrics without another refcount.
        let table = self.table.load_full();
        let mut outcome = Outcome {
            entry: None,
            upstream: None,
            answered_at: None,
        };
        // A span per request: free unless debug logging is on for this target.
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = request_id.to_str().unwrap_or("-"),
        );
        let forwarded = self
            .forward(&table, req, peer, &request_id, &mut outcome)
            .instrument(span)
            .await;
        let mut resp = match forwarded {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "request failed at the gateway");
                e.to_response().map(|b| Either::Right(Either::Right(b)))
            }
        };
        *resp.version_mut() = version;
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let elapsed = outcome
            .answered_at
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(start);
        match outcome.entry {
            Some(entry) => entry.state.metrics.record(resp.status(), elapsed),
            None => self.metrics.no_route().record(resp.status(), elapsed),
        }
        if let Some((method, uri)) = logged {
            tracing::info!(
                target: "portico::access",
                method = %method,
                path = %uri.path(),
                status = resp.status().as_u16(),
                route = outcome.entry.map_or("-", |e| &*e.route.name),
                upstream = outcome.upstream.as_deref().unwrap_or("-"),
                duration_us = elapsed.as_micros() as u64,
                request_id = request_id.to_str().unwrap_or("-"),
                trace_id = trace_id
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .unwrap_or("-"),
            );
        }
        resp
    }

    /// Feeds an outcome to outlier detection and, when the route has one, to
    /// the endpoint's circuit breaker.
    fn record(
        &self,
        set: &EndpointSet,
        route: &Route,
        index: usize,
        ticket: Option<Ticket>,
        failed: bool,
    ) {
        set.record(index, failed, &self.outlier);
        if let (Some(policy), Some(endpoint), Some(ticket)) =
            (&route.breaker, set.endpoints().get(index), ticket)
        {
            if endpoint
                .health
                .breaker
                .record(now_ms(), policy, ticket, failed)
            {
                tracing::warn!(endpoint = %endpoint.id, route = %route.name, "circuit opened");
            }
        }
    }

    async fn forward<'t>(
        &self,
        table: &'t RouteTable,
        mut req: Request<Incoming>,
        peer: &Peer,
        request_id: &HeaderValue,
        outcome: &mut Outcome<'t>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let host = request_host(&req);
        let view = RequestView {
            host: host.as_deref(),
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        };
        let matched = table.lookup(&view).ok_or(ProxyError::NoRoute)?;
        let route = &matched.entry.route;
        let set = &matched.entry.endpoints;
        outcome.entry = Some(matched.entry);

        let hash_key = match &route.lb {
            Balance::ConsistentHash(on) => hash_key(&req, on, peer),
            _ => None,
        };
        let load_aware = matches!(route.lb, Balance::LeastRequest | Balance::PeakEwma);

        // Everything that does not depend on which endpoint is picked.
        let path_and_query = if route.strip_prefix {
            stripped_path(req.uri(), matched.prefix_len)?
        } else {
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        };
        let upgrade = is_upgrade(&req);
        let mut downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let original_host = host_header_value(&req);
        let had_te = req.headers().contains_key(header::TRANSFER_ENCODING);
        let headers = req.headers_mut();
        if had_te {
            // Never let a request reach a backend carrying both framings.
            headers.remove(header::CONTENT_LENGTH);
        }
        let upgrade_proto = if upgrade {
            headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(headers);
        if let Some(proto) = upgrade_proto {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto);
        }
        append_forwarded_for(headers, &peer.ip);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if let Some(h) = &original_host {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());

        // Retries beyond the connect-failure default need the body kept, so
        // that each try sends exactly what the first did.
        let state = &matched.entry.state;
        let _slot = match route.limits.max_requests {
            Some(max) => Some(state.enter(max).ok_or_else(|| ProxyError::Overloaded {
                route: route.name.to_string(),
                limit: max,
            })?),
            None => None,
        };
        let budget = &state.budget;
        let retry = route.retry.as_ref();
        if let Some(policy) = retry {
            budget.deposit(policy);
        }
        let retry =
            retry.filter(|p| !upgrade && (p.non_idempotent || req.method().is_idempotent()));
        let (template, mut req) = match retry {
            Some(_) => keep_for_retry(req).await?,
            None => (None, req.map(Either::Left)),
        };

        // Pick, send; a connect failure (nothing was sent) moves on to
        // another endpoint, whatever the method. The route timeout covers
        // every try up to the response head.
        // The breaker's admission of the try in flight, handed back with its outcome.
        let mut ticket = None;
        let attempts = async {
            let mut tried = [usize::MAX; MAX_TRIES];
            let mut n = 0;
            let mut retries = 0u32;
            let mut connect_failures = 0;
            let mut last_was_connect = false;
            let mut retry_slot = None;
            loop {
                // Each try prefers an endpoint not tried yet; a policy retry
                // with none left goes back to one already tried (a refused
                // connection never does: that endpoint is down).
                let picked = if route.breaker.is_none() && route.slow_start.is_none() {
                    set.pick_with(&route.lb, hash_key, &tried[..n]).or_else(|| {
                        (retries > 0 && !last_was_connect)
                            .then(|| set.pick_with(&route.lb, hash_key, &[]))
                            .flatten()
                    })
                } else {
                    pick_admitted(set, route, hash_key, &tried[..n], &mut ticket).ok_or_else(
                        || ProxyError::CircuitOpen {
                            route: route.name.to_string(),
                        },
                    )?
                };
                let Some((index, endpoint)) = picked else {
                    return Err(match n {
                        0 => ProxyError::NoHealthyUpstream {
                            route: route.name.to_string(),
                        },
                        _ => ProxyError::UpstreamConnect {
                            endpoint: outcome.upstream.as_deref().unwrap_or("-").to_string(),
                        },
                    });
                };
                outcome.upstream = Some(endpoint.id.clone());
                if n < MAX_TRIES {
                    tried[n] = index;
                    n += 1;
                }
                target(&mut req, endpoint, &path_and_query, original_host.as_ref())?;
                // Load-aware balancing needs in-flight counts and latency;
                // round robin and friends skip the bookkeeping.
                let _in_flight = load_aware.then(|| endpoint.health.begin());
                outcome.answered_at = None;
                let sent_at = Instant::now();
                let send = async {
                    if endpoint.scheme == Scheme::H2c {
                        Box::pin(self.pool.send_h2c(endpoint, req))
                            .await
                            .map(|r| r.map(|b| Either::Right(Either::Left(b))))
                    } else {
                        self.pool
                            .send_http1(endpoint, req, state.pending_limit(&route.limits))
                            .await
                            .map(|r| r.map(Either::Left))
                    }
                };
                let per_try = retry.and_then(|p| p.per_try_timeout);
                let result = match per_try {
                    Some(limit) => tokio::time::timeout(limit, send).await.ok(),
                    None => Some(send.await),
                };
                // May this failure be retried (policy, body kept, attempts, budget)?
                let again = |allowed: fn(&crate::retry::RetryPolicy) -> bool| {
                    let Some(p) = retry else { return false };
                    allowed(p)
                        && template.is_some()
                        && retries + 1 < p.attempts
                        && n < MAX_TRIES
                        && budget.withdraw(p)
                };
                match result {
                    Some(Ok(resp)) => {
                        let answered_at = Instant::now();
                        outcome.answered_at = Some(answered_at);
                        let took = answered_at.saturating_duration_since(sent_at);
                        if load_aware {
                            endpoint.health.observe_latency(took);
                        }
                        state.metrics.observe_upstream(set, index, took);
                        let status = resp.status().as_u16();
                        self.record(set, route, index, ticket, resp.status().is_server_error());
                        let retry_status = retry.is_some_and(|p| p.retries_status(status));
                        if !(retry_status && again(|_| true)) {
                            return Ok(resp);
                        }
                        tracing::debug!(endpoint = %endpoint.id, status, "retrying on another endpoint");
                    }
                    Some(Err(SendError {
                        error: UpstreamError::Connect(reason),
                        request,
                    })) => {
                        self.record(set, route, index, ticket, true);
                        tracing::debug!(endpoint = %endpoint.id, %reason, "upstream connect failed");
                        connect_failures += 1;
                        last_was_connect = true;
                        match request {
                            // Nothing was sent: the same request, untouched, goes elsewhere.
                            Some(back) if connect_failures < MAX_CONNECT_ATTEMPTS => {
                                req = back;
                                continue;
                            }
                            _ => {
                                return Err(ProxyError::UpstreamConnect {
                                    endpoint: endpoint.id.to_string(),
                                });
                            }
                        }
                    }
                    Some(Err(SendError {
                        error: UpstreamError::Overloaded,
                        ..
                    })) => {
                        return Err(ProxyError::Overloaded {
                            route: route.name.to_string(),
                            limit: route.limits.max_pending.unwrap_or(0),
                        });
                    }
                    Some(Err(SendError {
                        error: UpstreamError::Refused(reason),
                        ..
                    })) => {
                        self.record(set, route, index, ticket, true);
                        if !again(|p| p.on.refused_stream) {
                            return Err(ProxyError::UpstreamProtocol {
                                endpoint: endpoint.id.to_string(),
                                reason,
                            });
                        }
                        tracing::debug!(endpoint = %endpoint.id, "retrying a refused stream");
                    }
                    Some(Err(SendError {
                        error: UpstreamError::Protocol(reason),
                        ..
                    })) => {
                        self.record(set, route, index, ticket, true);
                        if !again(|p| p.on.reset) {
                            return Err(ProxyError::UpstreamProtocol {
                                endpoint: endpoint.id.to_string(),
                                reason,
                            });
                        }
                        tracing::debug!(endpoint = %endpoint.id, %reason, "retrying after a broken exchange");
                    }
                    None => {
                        self.record(set, route, index, ticket, true);
                        if !again(|p| p.on.timeout) {
                            return Err(ProxyError::UpstreamTimeout {
                                endpoint: endpoint.id.to_string(),
                                timeout: per_try.unwrap_or(route.timeout),
                            });
                        }
                        tracing::debug!(endpoint = %endpoint.id, "retrying after a per-try timeout");
                    }
                }
                // A retry: it needs a retry slot (max_retries), then backs off
                // and rebuilds the request from what was kept.
                if retry_slot.is_none() {
                    if let Some(max) = route.limits.max_retries {
                        match state.retry(max) {
                            Some(slot) => retry_slot = Some(slot),
                            None => {
                                return Err(ProxyError::Overloaded {
                                    route: route.name.to_string(),
                                    limit: max,
                                });
                            }
                        }
                    }
                }
                retries += 1;
                state.metrics.count_retry();
                last_was_connect = false;
                if let Some(p) = retry {
                    tokio::time::sleep(crate::retry::backoff_for(p, retries)).await;
                }
                req = template
                    .as_ref()
                    .expect("a retry is only allowed with a kept request")
                    .rebuild();
            }
        };
        let mut resp = match tokio::time::timeout(route.timeout, attempts).await {
            Ok(result) => result?,
            Err(_) => {
                // The attempt in flight is abandoned: count it against its endpoint.
                if let Some(id) = &outcome.upstream {
                    if let Some(i) = set.endpoints().iter().position(|e| &e.id == id) {
                        self.record(set, route, i, ticket, true);
                    }
                }
                return Err(ProxyError::UpstreamTimeout {
                    endpoint: outcome.upstream.as_deref().unwrap_or("-").to_string(),
                    timeout: route.timeout,
                });
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(downstream) = downstream_upgrade.take() {
                let upstream = hyper::upgrade::on(&mut resp);
                self.tunnels.spawn(downstream, upstream);
                let headers = resp.headers_mut();
                let proto = headers.get(header::UPGRADE).cloned();
                strip_hop_by_hop(headers);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(proto) = proto {
                    headers.insert(header::UPGRADE, proto);
                }
                return Ok(resp);
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }
}

/// The `consistent_hash` key of a request, if it carries one.
pub(crate) fn hash_key<B>(req: &Request<B>, on: &HashOn, peer: &Peer) -> Option<u64> {
    crate::balance::hash_key(on, req.uri().path(), req.headers(), peer.ip.as_bytes())
}

/// Picks for a route with a breaker or slow start: skips endpoints whose
/// circuit is open, and lets a warming endpoint decline its turn by chance
/// (its share grows over the slow-start window). `Some(None)`: nothing left
/// to pick (the caller reports why); `None`: every circuit left was open.
/// `ticket` gets the breaker's admission of the endpoint picked, to hand
/// back with its outcome.
fn pick_admitted<'a>(
    set: &'a EndpointSet,
    route: &Route,
    key: Option<u64>,
    tried: &[usize],
    ticket: &mut Option<Ticket>,
) -> Option<Option<(usize, &'a Endpoint)>> {
    let mut skip = [usize::MAX; 32];
    let mut m = tried.len().min(skip.len());
    skip[..m].copy_from_slice(&tried[..m]);
    let now = now_ms();
    let mut any_open = false;
    // Admits through the endpoint's circuit (always, without a breaker).
    let mut admit = |e: &Endpoint, ticket: &mut Option<Ticket>| match &route.breaker {
        None => true,
        Some(policy) => {
            *ticket = e.health.breaker.admit(now, policy);
            any_open |= ticket.is_none();
            ticket.is_some()
        }
    };
    *ticket = None;
    // A warming endpoint that declined: used if nothing else will take it
    // (and its circuit admits it).
    let mut declined: Option<(usize, &'a Endpoint)> = None;
    loop {
        let picked = (m < skip.len())
            .then(|| set.pick_with(&route.lb, key, &skip[..m]))
            .flatten();
        let Some((i, e)) = picked else {
            return match declined {
                Some(found) if admit(found.1, ticket) => Some(Some(found)),
                _ if any_open => None,
                _ => Some(None),
            };
        };
        let warming = route
            .slow_start
            .is_some_and(|window| !e.health.warm_enough(now, window));
        if warming {
            declined.get_or_insert((i, e));
        } else if admit(e, ticket) {
            return Some(Some((i, e)));
        }
        skip[m] = i;
        m += 1;
    }
}

/// Most endpoints one request tries when connections are refused.
const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Most tries of one request, whatever the reasons.
const MAX_TRIES: usize = 8;

/// What is kept of a request so it can be sent again.
struct Kept {
    method: http::Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Kept {
    fn rebuild(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Reads a small body into memory so the request can be retried; a body too
/// large (or of unknown length beyond the limit) is streamed and not retried.
async fn keep_for_retry(
    req: Request<Incoming>,
) -> Result<(Option<Kept>, Request<UpstreamBody>), ProxyError> {
    use http_body::Body as _;
    let fits = req
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= crate::retry::MAX_RETRY_BODY);
    if !fits {
        return Ok((None, req.map(Either::Left)));
    }
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(
        body,
        crate::retry::MAX_RETRY_BODY as usize,
    ))
    .await
    .map_err(|_| ProxyError::BadRequest("the request body could not be read"))?
    .to_bytes();
    let kept = Kept {
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        body: bytes.clone(),
    };
    Ok((
        Some(kept),
        Request::from_parts(parts, Either::Right(Full::new(bytes))),
    ))
}

/// Points the request at `endpoint`: URI form, version and `Host` depend on
/// the protocol the endpoint speaks.
fn target(
    req: &mut Request<UpstreamBody>,
    endpoint: &Endpoint,
    path_and_query: &PathAndQuery,
    original_host: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    match endpoint.scheme {
        Scheme::Http => {
            // HTTP/1.1 upstreams get the origin form: just the path and query.
            *req.uri_mut() = Uri::from(path_and_query.clone());
            *req.version_mut() = Version::HTTP_11;
            if !req.headers().contains_key(header::HOST) {
                // HTTP/2 downstream carries the host in :authority; HTTP/1.1 needs Host.
                let host = match original_host {
                    Some(h) => h.clone(),
                    None => HeaderValue::from_str(endpoint.authority.as_str())
                        .map_err(|_| ProxyError::BadRequest("host"))?,
                };
                req.headers_mut().insert(header::HOST, host);
            }
        }
        Scheme::H2c => {
            // HTTP/2 carries the host in :authority: keep the client's when it has one.
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(UriScheme::HTTP);
            parts.authority = Some(
                original_host
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .unwrap_or_else(|| endpoint.authority.clone()),
            );
            parts.path_and_query = Some(path_and_query.clone());
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("uri"))?;
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
        }
        Scheme::Https => {
            return Err(ProxyError::UnsupportedScheme {
                endpoint: endpoint.id.to_string(),
                scheme: "https",
            });
        }
    }
    Ok(())
}

/// An HTTP/1.1 request asking to switch protocols.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-*`.
///
/// One pass over the names finds what is there; most messages carry at most
/// `Connection: keep-alive`, which then costs two removals and no parsing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let (mut connection, mut keep_alive, mut te, mut trailer, mut encoding, mut upgrade) =
        (false, false, false, false, false, false);
    let mut proxy_named = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            te = true;
        } else if name == header::TRAILER {
            trailer = true;
        } else if name == header::TRANSFER_ENCODING {
            encoding = true;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else {
            let n = name.as_str();
            if n == "keep-alive" {
                keep_alive = true;
            } else if n.starts_with("proxy-") {
                proxy_named = true;
            }
        }
    }
    if connection {
        // Tokens other than the usual ones name extra headers to drop.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty()
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"upgrade")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
        for name in &named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if keep_alive {
        headers.remove("keep-alive");
    }
    if te {
        headers.remove(header::TE);
    }
    if trailer {
        headers.remove(header::TRAILER);
    }
    if encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
    if proxy_named {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(&name);
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if prior.peek().is_none() {
        // The common case: no proxy before us; the prepared value is shared, not rebuilt.
        headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for v in prior {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The request's host, lowercase and without a port: `:authority` for
/// HTTP/2, the `Host` header for HTTP/1.1.
fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().host() {
        Some(h) => h,
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            strip_port(h)
        }
    };
    let raw = raw.trim_end_matches('.');
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(raw))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn host_header_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(h.clone());
    }
    let authority = req.uri().authority()?;
    HeaderValue::from_str(authority.as_str()).ok()
}

fn stripped_path(uri: &Uri, prefix_len: usize) -> Result<PathAndQuery, ProxyError> {
    let path = uri.path();
    let rest = path.get(prefix_len..).unwrap_or("");
    let mut out = String::with_capacity(rest.len() + 1 + uri.query().map_or(0, |q| q.len() + 1));
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::from_maybe_shared(out).map_err(|_| ProxyError::BadRequest("path"))
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-whatever", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, &Peer::new("127.0.0.1:5".parse().unwrap()).ip);
        assert_eq!(
            h.get(&X_FORWARDED_FOR).unwrap(),
            "1.1.1.1, 2.2.2.2, 127.0.0.1"
        );
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_query() {
        let uri: Uri = "/echo/a/b?x=1".parse().unwrap();
        assert_eq!(stripped_path(&uri, 5).unwrap().as_str(), "/a/b?x=1");
        let uri: Uri = "/echo?x=1".parse().unwrap();
        assert_eq!(stripped_path(&uri, 5).unwrap().as_str(), "/?x=1");
        let uri: Uri = "/echo/".parse().unwrap();
        assert_eq!(stripped_path(&uri, 6).unwrap().as_str(), "/");
    }

    #[test]
    fn host_ports_are_stripped() {
        assert_eq!(strip_port("Example.com:8080"), "Example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
