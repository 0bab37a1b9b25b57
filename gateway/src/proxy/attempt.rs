//! Phase 4: pick an endpoint, send, judge the outcome, and try again
//! elsewhere when that is safe and allowed, all within the route's timeout.
//!
//! When a failed try is tried again (each rule checked in this order):
//!
//! - **Nothing was sent** (the connection could not be made): the same
//!   request, untouched, goes to another endpoint, whatever the method, up
//!   to [`MAX_CONNECT_ATTEMPTS`] endpoints. No budget: nothing reached an
//!   upstream.
//! - **The client's fault** (its body was too large, malformed, stalled or
//!   cut off): never tried again and never counted against the endpoint,
//!   whose outlier detection, breaker and latency are left alone.
//! - **The route's retry policy** (`[route.retry]`): the failure is one of
//!   its conditions, the method qualifies, the body was kept, attempts are
//!   left and the retry budget has a token. A gRPC call (always a POST)
//!   qualifies for the gRPC status conditions (and `refused_stream`) when
//!   the route names any: naming them says the route's calls may be sent
//!   again on those statuses, as gRPC's own retry policy does; the other
//!   conditions need `non_idempotent`. A gRPC status is only retried from
//!   a trailers-only answer (nothing reached the client yet) to a unary
//!   call whose whole request (at most [`MAX_RETRY_BODY`]) was copied as
//!   it streamed: the call is never held back to read its body first, so a
//!   streaming call works as before and is simply not retried.
//! - **A reset before any answer**, by default: an idempotent request
//!   without a body whose upstream connection broke before a response head
//!   arrived goes once to another endpoint (what nginx's default
//!   `proxy_next_upstream error` does). A backend dying with requests in
//!   flight then costs no errors when others can take them.
//!
//! When every endpoint has been tried, the client gets the last answer an
//! upstream gave (a 5xx the policy wanted to retry) or the last error, never
//! an error naming the wrong cause.
//!
//! A gRPC call's `grpc-timeout` shortens the route timeout (never lengthens
//! it) and is a hard deadline from the call's arrival; each try sends what
//! is left of it (or of the per-try timeout, if shorter) upstream as
//! `grpc-timeout`, so the server stops when the client stops waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use portico_registry::model::Scheme;
use tokio::time::Instant;

use super::outgoing::{Added, Hop, Outgoing, Pairs, target};
use super::pick::{Pick, Turn, pick};
use super::{BodyState, Peer, Proxy, RequestCtx, UpstreamResponseBody};
use crate::balance::{Endpoint, EndpointSet};
use crate::body::{BodyFault, BodyWatch, ClientBodyError, Tee};
use crate::breaker::{Slot, Ticket};
use crate::config::{Balance, Route};
use crate::error::ProxyError;
use crate::grpc::{Code, GRPC_TIMEOUT, encode_timeout};
use crate::h1::client::Field;
use crate::health::now_ms;
use crate::idle::LazyDeadline;
use crate::pool::{SendError, UpstreamBody, UpstreamError};
use crate::retry::{MAX_RETRY_BODY, RetryOn, RetryPolicy, backoff_for};
use crate::router::RouteEntry;
use crate::tls::upstream::TlsDial;

/// Most endpoints one request tries when connections are refused.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Most tries of one request, whatever the reasons.
const MAX_TRIES: usize = 8;

/// What the send phase gives back: the chosen upstream's response, and the
/// client's side of an upgrade it asked for.
pub(super) type Answer = (
    Response<UpstreamResponseBody>,
    Option<crate::tunnel::DownstreamUpgrade>,
);

/// What to do after a try.
enum Next {
    /// Give the client this answer.
    Done(Response<UpstreamResponseBody>),
    /// Give the client this error.
    Fail(ProxyError),
    /// Try again: with this request (it was never sent), or rebuilt from
    /// what was kept.
    Again(Option<Request<UpstreamBody>>),
}

/// What is kept of a request so it can be sent again.
struct Kept {
    method: http::Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Kept {
    #[inline(never)]
    fn rebuild(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Where every try sends the request, whichever endpoint it picks.
#[derive(Clone, Copy)]
struct Destination<'a> {
    path_and_query: &'a PathAndQuery,
    host: Option<&'a HeaderValue>,
    /// The client asked for an upgrade (a 101 is then expected).
    upgrade: bool,
    /// Send `te: trailers` to HTTP/2 endpoints.
    te_trailers: bool,
    /// A gRPC call's deadline: each try tells the upstream what is left.
    deadline: Option<Instant>,
    /// The fields the proxy adds, kept beside the request's map, and where
    /// their values come from.
    added: (&'a Added, Hop<'a>),
    /// The response's fields may be relayed as they arrive (`h1::relay`):
    /// nothing on its way reads them.
    relay: bool,
}

/// One request's tries: what was tried, what is left, what to answer.
struct Tries<'a> {
    entry: &'a RouteEntry,
    hash_key: Option<u64>,
    load_aware: bool,
    /// The route's policy, when it applies to this request.
    retry: Option<&'a RetryPolicy>,
    /// The policy's conditions that apply to this request (a gRPC call
    /// without `non_idempotent` gets only the gRPC-safe ones).
    on: RetryOn,
    kept: Option<Kept>,
    /// A gRPC call's body copied as it streams, and its head: what a retry
    /// on a gRPC status sends again.
    tee: Option<(Arc<Tee>, http::Method, HeaderMap)>,
    tried: [usize; MAX_TRIES],
    n: usize,
    retries: u32,
    connect_failures: usize,
    /// The default once-only retry after a reset has been used.
    reset_retried: bool,
    /// The next try may go back to an endpoint already tried (a policy
    /// retry with none new left; never after a refused connection).
    anywhere: bool,
    retry_slot: Option<Slot<'a>>,
    /// Served if no other try can be made: an upstream's answer that the
    /// policy wanted to retry (kept over the errors of later tries), else
    /// the error of the failed try being tried again. Boxed: only a request
    /// tried again has one, and inline the two took 336 bytes of every
    /// request's future.
    last: Option<Box<Result<Response<UpstreamResponseBody>, ProxyError>>>,
    /// The request a client handed back after its exchange ended before
    /// any answer, for the default reset retry (see
    /// [`crate::pool::SendError`]).
    resend: Option<Box<Request<UpstreamBody>>>,
    /// The client's body, when it streams: its faults are the client's.
    watch: Option<Arc<BodyWatch>>,
    /// The endpoint of the try in flight, with the breaker's admission to
    /// hand back with its outcome.
    in_flight: Option<(usize, Option<Ticket>)>,
    /// The added fields went into the request's map (for a try that was
    /// not the native client's); later tries send them from there.
    folded: bool,
    /// When the route timeout started: the first try's send time too (one
    /// clock read for both).
    first_sent: Option<Instant>,
}

impl Proxy {
    /// Phase 4: sends `out` to the route's endpoints until one answers or
    /// nothing more may be tried, within the route's timeout.
    ///
    /// A plain function (see [`Proxy::handle`]) whose future keeps `out`
    /// once and uses its parts in place: taking it apart into new bindings
    /// would keep them twice, and work done before the future is made costs
    /// a copy of the whole future to its caller.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep `out` twice in every request's future"
    )]
    pub(super) fn send<'t>(
        &self,
        entry: &'t RouteEntry,
        mut out: Outgoing,
        peer: &Peer,
        ctx: &mut RequestCtx<'t>,
    ) -> impl Future<Output = Result<Answer, ProxyError>> {
        async move {
            let route = &entry.route;
            if let Some(policy) = &route.retry {
                entry.state.budget.deposit(policy);
            }
            let upgrade = out.upgrade.is_some();
            let (retry, on) = policy_for(route, &out.req, upgrade, ctx.grpc.is_some());
            // The body is read (when kept for a retry) before the route slot
            // is taken: a slow client must not hold a slot meant for
            // upstream work.
            let mut tee = None;
            let kept = match retry {
                Some(_) if ctx.grpc.is_some() && on.any_grpc() => {
                    tee = keep_copy(&mut out.req);
                    None
                }
                Some(_) => {
                    // Read at the client's pace, and the body's watch is
                    // gone after it: the route timeout starts after.
                    ctx.waited = true;
                    let (kept, req) = self.keep_for_retry(out.req, ctx).await?;
                    out.req = req;
                    kept
                }
                // The default reset retry's copy is made per try, and only
                // for a client that consumes the request ([`Tries::run`]).
                None => None,
            };
            let _slot = match route.limits.max_requests {
                Some(max) => {
                    Some(
                        entry
                            .state
                            .enter(max)
                            .ok_or_else(|| ProxyError::Overloaded {
                                route: route.name.to_string(),
                                limit: max,
                            })?,
                    )
                }
                None => None,
            };
            let watch = match &ctx.body {
                BodyState::Streaming(w) => Some(w.clone()),
                _ => None,
            };
            let mut tries = Tries {
                entry,
                hash_key: out.hash_key,
                load_aware: matches!(route.lb, Balance::LeastRequest | Balance::PeakEwma),
                retry,
                on,
                kept,
                tee,
                tried: [usize::MAX; MAX_TRIES],
                n: 0,
                retries: 0,
                connect_failures: 0,
                reset_retried: false,
                anywhere: false,
                retry_slot: None,
                last: None,
                resend: None,
                watch: watch.clone(),
                in_flight: None,
                folded: false,
                first_sent: None,
            };
            // The client's deadline binds when it is shorter than the route's.
            let grpc_timeout = out.grpc_timeout;
            let deadline = grpc_timeout
                .filter(|d| *d < route.timeout)
                .map(|d| ctx.started + d);
            let to = Destination {
                path_and_query: &out.path_and_query,
                host: out.host.as_ref(),
                upgrade,
                te_trailers: out.te_trailers,
                // What the upstream is told it has: the call's deadline, at
                // most the route's timeout.
                deadline: grpc_timeout.map(|d| ctx.started + d.min(route.timeout)),
                added: (
                    &out.added,
                    Hop {
                        peer,
                        host: out.host.as_ref(),
                    },
                ),
                relay: relays(entry, peer, ctx, upgrade),
            };
            let mut timer = std::mem::take(&mut ctx.timer);
            // One clock reading (the request's own, if nothing has waited
            // since) starts the route timeout and times the first try.
            let now = ctx.now();
            tries.first_sent = Some(now);
            let result = {
                let run = tries.run(self, out.req, to, ctx);
                tokio::pin!(run);
                let timeout = (now, route.timeout);
                within(run, &mut timer, timeout, watch.as_deref(), deadline).await
            };
            ctx.timer = timer;
            match result {
                Some(Ok(resp)) => Ok((resp, out.upgrade)),
                Some(Err(e)) => Err(e),
                None => Err(self.timed_out(entry, tries.in_flight, grpc_timeout, ctx)),
            }
        }
    }

    /// The route timeout (or a gRPC call's shorter deadline) ran out: the
    /// try in flight is abandoned and counted against its endpoint.
    #[inline(never)]
    fn timed_out(
        &self,
        entry: &RouteEntry,
        in_flight: Option<(usize, Option<Ticket>)>,
        grpc_timeout: Option<Duration>,
        ctx: &RequestCtx<'_>,
    ) -> ProxyError {
        if let Some((index, ticket)) = in_flight {
            self.record(&entry.endpoints, &entry.route, index, ticket, true);
        }
        let endpoint = ctx.upstream.as_deref().unwrap_or("-").to_string();
        match grpc_timeout.filter(|d| *d < entry.route.timeout) {
            Some(timeout) => ProxyError::DeadlineExceeded { endpoint, timeout },
            None => ProxyError::UpstreamTimeout {
                endpoint,
                timeout: entry.route.timeout,
            },
        }
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
            && endpoint
                .health
                .breaker
                .record(now_ms(), policy, ticket, failed)
        {
            tracing::warn!(endpoint = %endpoint.id, route = %route.name, "circuit opened");
        }
    }

    /// Reads a small body into memory so the request can be retried; a body
    /// too large (or of unknown length) is streamed and not retried. The
    /// client body's own limits and read timeout apply while reading.
    async fn keep_for_retry(
        &self,
        req: Request<UpstreamBody>,
        ctx: &mut RequestCtx<'_>,
    ) -> Result<(Option<Kept>, Request<UpstreamBody>), ProxyError> {
        use http_body::Body as _;
        let fits = req
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_RETRY_BODY);
        if !fits {
            return Ok((None, req));
        }
        let limit = match &ctx.body {
            BodyState::Streaming(watch) => watch.limit(),
            _ => u64::MAX,
        };
        let (parts, body) = req.into_parts();
        let bytes = Limited::new(body, MAX_RETRY_BODY as usize)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<ClientBodyError>() {
                Some(c) => self.fault_error(c.fault, limit),
                None => ProxyError::BadBody("longer than its declared length"),
            })?
            .to_bytes();
        ctx.body = BodyState::Done;
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

    /// The answer for a client's body fault; `limit` is the size limit the
    /// body had (the route's, its `body_limit` filter's or the gateway's),
    /// which a 413 names.
    #[inline(never)]
    fn fault_error(&self, fault: BodyFault, limit: u64) -> ProxyError {
        match fault {
            BodyFault::TooLarge => ProxyError::BodyTooLarge { limit },
            BodyFault::Malformed => ProxyError::BadBody("its framing is broken"),
            BodyFault::ClientGone => ProxyError::BadBody("the client closed it early"),
            BodyFault::TimedOut => ProxyError::BodyTimeout {
                timeout: self.edge.body_read_timeout,
            },
        }
    }
}

/// The route's retry policy, when it applies to this request, and the
/// conditions it covers for it: an upgrade is never retried, and a gRPC
/// call (a POST) without `non_idempotent` only on gRPC-safe conditions.
fn policy_for<'r>(
    route: &'r Route,
    req: &Request<UpstreamBody>,
    upgrade: bool,
    grpc: bool,
) -> (Option<&'r RetryPolicy>, RetryOn) {
    let retry = route.retry.as_ref().filter(|p| {
        !upgrade && (p.non_idempotent || req.method().is_idempotent() || (grpc && p.on.any_grpc()))
    });
    let on = match retry {
        Some(p) if grpc && !p.non_idempotent => p.on.grpc_safe(),
        Some(p) => p.on,
        None => RetryOn::default(),
    };
    (retry, on)
}

/// The try over h2c, boxed and out of line (see [`Tries::send_tls`]).
#[inline(never)]
fn send_h2c<'f>(
    proxy: &'f Proxy,
    endpoint: &'f Endpoint,
    req: Request<UpstreamBody>,
    extra: Bytes,
) -> BoxFuture<'f, Result<Response<UpstreamResponseBody>, SendError>> {
    use futures_util::FutureExt as _;
    // Made in its box, not copied there.
    crate::inplace::box_in_place(|| {
        proxy
            .pool
            .send_h2c(endpoint, req, extra)
            .map(|r| r.map(|resp| resp.map(Either::Right)))
    })
}

/// What the default reset retry needs kept: an idempotent request with no
/// body, on a route with another endpoint to go to. Costs one header map
/// clone per such request.
#[inline(never)]
fn keep_for_reset(req: &Request<UpstreamBody>, entry: &RouteEntry, upgrade: bool) -> Option<Kept> {
    use http_body::Body as _;
    let eligible = !upgrade
        && entry.endpoints.len() > 1
        && req.method().is_idempotent()
        && req.body().is_end_stream();
    eligible.then(|| Kept {
        method: req.method().clone(),
        headers: req.headers().clone(),
        body: Bytes::new(),
    })
}

/// A gRPC call's body copied as it streams (see [`Tee`]), with the head a
/// retry sends again; `None` when the call has no body to stream.
#[inline(never)]
fn keep_copy(req: &mut Request<UpstreamBody>) -> Option<(Arc<Tee>, http::Method, HeaderMap)> {
    let Either::Left(body) = req.body_mut() else {
        return None;
    };
    let tee = body.keep_copy(MAX_RETRY_BODY as usize);
    Some((tee, req.method().clone(), req.headers().clone()))
}

/// Awaits `fut` for `timeout`, counted from the later of `from` and the
/// client body's last progress, and never running out while the gateway
/// waits for the client's bytes (the body's read timeout governs then): a
/// slow client is not an upstream timing out. A `hard` deadline (a gRPC call's own)
/// ends it whatever the client body does. `None` when it ran out.
///
/// It waits on `clock` (its timer made or taken from the spares here when
/// it has none), which the caller hands on to the response body's read
/// timeout.
fn within<'w, F: Future>(
    mut fut: Pin<&'w mut F>,
    clock: &'w mut LazyDeadline,
    (from, timeout): (Instant, Duration),
    watch: Option<&'w BodyWatch>,
    hard: Option<Instant>,
) -> impl Future<Output = Option<F::Output>> + 'w {
    let cap = move |d: Instant| hard.map_or(d, |h| d.min(h));
    let deadline = cap(from + timeout);
    clock.set(deadline);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        loop {
            std::task::ready!(clock.poll_expired(cx));
            let now = Instant::now();
            if hard.is_some_and(|h| h <= now) {
                return Poll::Ready(None);
            }
            let next = match watch.map(|w| w.deadline(timeout)) {
                None => return Poll::Ready(None),
                Some(None) => now + timeout,
                Some(Some(d)) if d > now => d,
                Some(Some(_)) => return Poll::Ready(None),
            };
            clock.set(cap(next));
        }
    })
}

impl<'a> Tries<'a> {
    /// The tries, one after another, until one decides the answer (a plain
    /// function: see [`Proxy::handle`]).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep the request twice in every request's future"
    )]
    fn run(
        &mut self,
        proxy: &Proxy,
        mut req: Request<UpstreamBody>,
        to: Destination<'_>,
        ctx: &mut RequestCtx<'a>,
    ) -> impl Future<Output = Result<Response<UpstreamResponseBody>, ProxyError>> {
        async move {
            loop {
                let (index, endpoint) = match self.pick() {
                    Pick::Endpoint(i, e) => (i, e),
                    Pick::Exhausted => return self.exhausted(ctx),
                    Pick::AllOpen => {
                        return match self.last.take().map(|last| *last) {
                            Some(Ok(resp)) => Ok(resp),
                            _ => Err(ProxyError::CircuitOpen {
                                route: self.entry.route.name.to_string(),
                            }),
                        };
                    }
                };
                ctx.upstream = Some(endpoint.id.clone());
                if self.n < MAX_TRIES {
                    self.tried[self.n] = index;
                    self.n += 1;
                }
                target(
                    &mut req,
                    endpoint,
                    to.path_and_query,
                    to.host,
                    to.te_trailers,
                )?;
                // The try's start: what is left of a deadline, the pool's
                // idle check and the upstream's latency count from it.
                let sent_at = self.first_sent.take().unwrap_or_else(crate::clock::fresh);
                if let Some(deadline) = to.deadline {
                    self.pass_deadline(&mut req, deadline, (endpoint, sent_at))?;
                }
                // Load-aware balancing needs in-flight counts and latency;
                // round robin and friends skip the bookkeeping.
                let _in_flight = self.load_aware.then(|| endpoint.health.begin());
                ctx.answered_at = None;
                let native = proxy.pool.writes_extra(endpoint.scheme, to.upgrade);
                if !native && self.retry.is_none() && self.kept.is_none() {
                    // hyper's clients, and the native HTTP/2 one once its
                    // stream opened, consume the request: what the default
                    // reset retry would send again is copied first. (The
                    // native HTTP/1.1 client hands such a request back
                    // itself.)
                    self.kept = keep_for_reset(&req, self.entry, to.upgrade);
                }
                // The added fields go beside the map, not into it, for the
                // native clients: HTTP/1.1 writes them after the map's,
                // HTTP/2 takes them encoded.
                let beside = native || proxy.pool.encodes_extra(endpoint.scheme, to.upgrade);
                let pairs = self.added(beside, &mut req, &to);
                let sent = (to.upgrade, pairs.as_slice(), to.relay);
                // The boxed tries (h2c, TLS) are awaited apart from the
                // inline HTTP/1.1 one: one future for all was the size of
                // the HTTP/1.1 exchange, and each h2c try copied all of it
                // into the request's future (about 11 write misses a unary
                // gRPC call, callgrind's cache simulation). Now an h2c try
                // copies the box's pointer.
                let result = match endpoint.scheme {
                    Scheme::Http => {
                        let send = self.send_http1(proxy, endpoint, req, sent, sent_at);
                        self.send_once(send).await
                    }
                    Scheme::H2c => {
                        let extra = pairs.hpack();
                        self.send_once(send_h2c(proxy, endpoint, req, extra)).await
                    }
                    Scheme::Https => {
                        let pending = self.entry.state.pending_limit(&self.entry.route.limits);
                        let send = self.send_tls(proxy, endpoint, req, (pending, to.upgrade));
                        self.send_once(send).await
                    }
                };
                let next = match result {
                    Some(Ok(resp)) => {
                        self.judge_answer(proxy, resp, index, to.upgrade, sent_at, ctx)
                    }
                    Some(Err(failed)) => self.judge_failure(proxy, failed, index, endpoint),
                    None => self.judge_timeout(proxy, index, endpoint),
                };
                req = match next {
                    Next::Done(resp) => return Ok(resp),
                    Next::Fail(e) => return Err(e),
                    Next::Again(Some(unsent)) => unsent,
                    Next::Again(None) => self.before_retry().await?,
                };
            }
        }
    }

    /// The added fields this try's client writes beside the map: all of
    /// them for the native HTTP/1.1 client and the native HTTP/2 one over
    /// h2c (`beside`); for any other, none, as they go into the map (once:
    /// a later try finds them there).
    fn added<'t>(
        &mut self,
        beside: bool,
        req: &mut Request<UpstreamBody>,
        to: &Destination<'t>,
    ) -> Pairs<'t> {
        let (added, hop) = to.added;
        added.for_try(hop, (beside, &mut self.folded), req.headers_mut())
    }

    /// Tells the upstream how long it has (`grpc-timeout`): what is left of
    /// the call's deadline, or the per-try timeout if that is shorter.
    #[inline(never)]
    fn pass_deadline(
        &self,
        req: &mut Request<UpstreamBody>,
        deadline: Instant,
        (endpoint, now): (&Endpoint, Instant),
    ) -> Result<(), ProxyError> {
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(ProxyError::DeadlineExceeded {
                endpoint: endpoint.id.to_string(),
                timeout: self.entry.route.timeout,
            });
        }
        let left = match self.retry.and_then(|p| p.per_try_timeout) {
            Some(per_try) => left.min(per_try),
            None => left,
        };
        req.headers_mut()
            .insert(GRPC_TIMEOUT.clone(), encode_timeout(left));
        Ok(())
    }

    /// One try, bounded by the policy's per-try timeout (`None`: it ran out).
    ///
    /// Plain functions returning their futures, here and in
    /// [`Tries::send_http1`]: as `async fn`s, each level kept its argument (the
    /// request, then the try's future) a second time beside the future it
    /// awaited, and the whole of it was copied at each move
    /// (`-Zprint-type-sizes`: 1,672 bytes for this level before).
    fn send_once<'f, F>(&self, send: F) -> impl Future<Output = Option<F::Output>> + 'f
    where
        F: Future + 'f,
    {
        use futures_util::FutureExt as _;
        use futures_util::future::Either as Which;
        match self.retry.and_then(|p| p.per_try_timeout) {
            Some(limit) => Which::Left(tokio::time::timeout(limit, send).map(Result::ok)),
            None => Which::Right(send.map(Some)),
        }
    }

    /// The try's exchange with a cleartext HTTP/1.1 `endpoint` (the usual
    /// case), inline in the request's future. `sent`: whether the client
    /// asked for an upgrade, and the fields the native client writes beside
    /// the map ([`Tries::added`]).
    fn send_http1<'f>(
        &self,
        proxy: &'f Proxy,
        endpoint: &'f Endpoint,
        req: Request<UpstreamBody>,
        sent: (bool, &'f [Field<'f>], bool),
        now: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamResponseBody>, SendError>> + 'f
    where
        'a: 'f,
    {
        use futures_util::FutureExt as _;
        let pending = self.entry.state.pending_limit(&self.entry.route.limits);
        let send = proxy.pool.send_http1(endpoint, req, (pending, now), sent);
        send.map(|r| r.map(|resp| resp.map(Either::Left)))
    }

    /// The try over TLS, boxed. Out of line, as [`send_h2c`]: made in the
    /// poll function of every request's tries, these futures (1.6 and 1.8
    /// kB) took their room in its stack frame whatever the scheme.
    #[inline(never)]
    fn send_tls<'f>(
        &self,
        proxy: &'f Proxy,
        endpoint: &'f Endpoint,
        req: Request<UpstreamBody>,
        (pending, upgrade): (Option<(&'f AtomicU32, u32)>, bool),
    ) -> BoxFuture<'f, Result<Response<UpstreamResponseBody>, SendError>>
    where
        'a: 'f,
    {
        match self.dial(proxy, endpoint, upgrade) {
            Ok(dial) => {
                Box::pin(async move { proxy.pool.send_tls(endpoint, &dial, req, pending).await })
            }
            Err(reason) => Box::pin(std::future::ready(Err(SendError {
                error: UpstreamError::Tls(reason),
                request: Some(Box::new(req)),
            }))),
        }
    }

    /// How to reach an `https` endpoint with the route's TLS setting (an
    /// unloadable CA or client certificate is a TLS failure, named).
    fn dial(&self, proxy: &Proxy, endpoint: &Endpoint, upgrade: bool) -> Result<TlsDial, String> {
        let route = &self.entry.route;
        let client = proxy
            .upstream_tls
            .for_route(route.upstream_tls.as_deref())
            .map_err(|e| e.to_string())?;
        client.dial(
            endpoint.authority.as_str(),
            endpoint.tls_name.as_deref(),
            upgrade,
        )
    }

    /// The next endpoint: a new one if any; with a policy retry and none
    /// new left, one already tried.
    fn pick(&mut self) -> Pick<'a> {
        let mut ticket = None;
        let tried = &self.tried[..self.n];
        let pick = pick(
            self.entry,
            self.hash_key,
            tried,
            self.anywhere,
            Turn::Take,
            &mut ticket,
        );
        self.in_flight = pick.endpoint().map(|i| (i, ticket));
        pick
    }

    /// Records the outcome of the try in flight (with its breaker ticket).
    fn record(&self, proxy: &Proxy, index: usize, failed: bool) {
        let ticket = self
            .in_flight
            .and_then(|(i, t)| (i == index).then_some(t))
            .flatten();
        proxy.record(
            &self.entry.endpoints,
            &self.entry.route,
            index,
            ticket,
            failed,
        );
    }

    /// Nothing more can be tried: the last answer, else the last error.
    #[inline(never)]
    fn exhausted(
        &mut self,
        ctx: &RequestCtx<'_>,
    ) -> Result<Response<UpstreamResponseBody>, ProxyError> {
        if let Some(last) = self.last.take() {
            return *last;
        }
        Err(match self.n {
            0 => ProxyError::NoHealthyUpstream {
                route: self.entry.route.name.to_string(),
            },
            _ => ProxyError::UpstreamConnect {
                endpoint: ctx.upstream.as_deref().unwrap_or("-").to_string(),
            },
        })
    }

    fn judge_answer(
        &mut self,
        proxy: &Proxy,
        resp: Response<UpstreamResponseBody>,
        index: usize,
        upgrade: bool,
        sent_at: Instant,
        ctx: &mut RequestCtx<'_>,
    ) -> Next {
        let entry: &'a RouteEntry = self.entry;
        let set = &entry.endpoints;
        let endpoint = &set.endpoints()[index];
        let answered_at = crate::clock::fresh();
        ctx.answered_at = Some(answered_at);
        let took = answered_at.saturating_duration_since(sent_at);
        if self.load_aware {
            endpoint.health.observe_latency(took);
        }
        if let Err(reason) = check_head(&resp, upgrade) {
            self.record(proxy, index, true);
            return Next::Fail(ProxyError::UpstreamProtocol {
                endpoint: endpoint.id.to_string(),
                reason: reason.to_string(),
            });
        }
        entry.state.metrics.observe_upstream(set, index, took);
        let status = resp.status().as_u16();
        // A trailers-only UNAVAILABLE is an endpoint saying it cannot serve:
        // a failure for its health, like a 5xx.
        let grpc = ctx.grpc.and_then(|_| Code::in_headers(resp.headers()));
        let failed = resp.status().is_server_error() || grpc == Some(Code::UNAVAILABLE);
        self.record(proxy, index, failed);
        let wanted = self.retry.is_some() && self.on.retries_status(status)
            || grpc.is_some_and(|c| self.on.retries_grpc(c.0) && self.keep_unary());
        if wanted && self.may_retry(|_| true) {
            tracing::debug!(endpoint = %endpoint.id, status, "retrying on another endpoint");
            self.last = Some(Box::new(Ok(resp)));
            self.anywhere = true;
            return Next::Again(None);
        }
        Next::Done(resp)
    }

    #[inline(never)]
    fn judge_failure(
        &mut self,
        proxy: &Proxy,
        failed: SendError,
        index: usize,
        endpoint: &Endpoint,
    ) -> Next {
        let route = &self.entry.route;
        let id = endpoint.id.to_string();
        let (reason, covered): (String, fn(&RetryOn) -> bool) = match failed.error {
            // A failed TLS handshake is a failed connect: counted against
            // the endpoint, retried elsewhere, with its own error code.
            UpstreamError::Connect(ref reason) | UpstreamError::Tls(ref reason) => {
                self.record(proxy, index, true);
                tracing::debug!(endpoint = %endpoint.id, %reason, "upstream connect failed");
                self.connect_failures += 1;
                self.anywhere = false;
                let error = match failed.error {
                    UpstreamError::Tls(reason) => ProxyError::UpstreamTls {
                        endpoint: id,
                        reason,
                    },
                    _ => ProxyError::UpstreamConnect { endpoint: id },
                };
                return match failed.request {
                    // Nothing was sent: the same request, untouched, goes elsewhere.
                    Some(back) if self.connect_failures < MAX_CONNECT_ATTEMPTS => {
                        if !matches!(self.last.as_deref(), Some(Ok(_))) {
                            self.last = Some(Box::new(Err(error)));
                        }
                        Next::Again(Some(*back))
                    }
                    _ => Next::Fail(error),
                };
            }
            UpstreamError::Overloaded => {
                return Next::Fail(ProxyError::Overloaded {
                    route: route.name.to_string(),
                    limit: route.limits.max_pending.unwrap_or(0),
                });
            }
            UpstreamError::Refused(reason) => (reason, |on| on.refused_stream),
            UpstreamError::Protocol(reason) => (reason, |on| on.reset),
        };
        // The exchange broke because the client's body did: not the
        // endpoint's doing.
        if let Some((fault, limit)) = self
            .watch
            .as_ref()
            .and_then(|w| w.fault().map(|f| (f, w.limit())))
        {
            return Next::Fail(proxy.fault_error(fault, limit));
        }
        self.record(proxy, index, true);
        let error = ProxyError::UpstreamProtocol {
            endpoint: id,
            reason,
        };
        if self.retry.is_some() && covered(&self.on) {
            // The route's policy governs this failure (attempts, budget).
            if !self.may_retry(covered) {
                return Next::Fail(error);
            }
            tracing::debug!(endpoint = %endpoint.id, "retrying after a broken exchange");
            self.anywhere = true;
        } else if self.may_retry_reset(failed.request.as_deref()) {
            tracing::debug!(endpoint = %endpoint.id, "reset before an answer: once more elsewhere");
            self.reset_retried = true;
            self.anywhere = false;
            self.resend = failed.request;
        } else {
            return Next::Fail(error);
        }
        self.last = Some(Box::new(Err(error)));
        Next::Again(None)
    }

    /// The default after a reset before any answer: once, elsewhere (a
    /// route with another endpoint), for an idempotent request without a
    /// body: the one the client handed `back`, else the copy kept.
    fn may_retry_reset(&self, back: Option<&Request<UpstreamBody>>) -> bool {
        let idempotent = match back {
            Some(req) => req.method().is_idempotent(),
            None => self.kept.as_ref().is_some_and(|k| k.method.is_idempotent()),
        };
        idempotent && !self.reset_retried && self.n < MAX_TRIES && self.entry.endpoints.len() > 1
    }

    #[inline(never)]
    fn judge_timeout(&mut self, proxy: &Proxy, index: usize, endpoint: &Endpoint) -> Next {
        self.record(proxy, index, true);
        let per_try = self.retry.and_then(|p| p.per_try_timeout);
        let error = ProxyError::UpstreamTimeout {
            endpoint: endpoint.id.to_string(),
            timeout: per_try.unwrap_or(self.entry.route.timeout),
        };
        if !self.may_retry(|on| on.timeout) {
            return Next::Fail(error);
        }
        tracing::debug!(endpoint = %endpoint.id, "retrying after a per-try timeout");
        self.anywhere = true;
        self.last = Some(Box::new(Err(error)));
        Next::Again(None)
    }

    /// A gRPC call answered trailers-only: keeps its request for a retry
    /// if the copy holds the whole of a unary call (one message, the body
    /// ended). True when a request is kept.
    #[inline(never)]
    fn keep_unary(&mut self) -> bool {
        if self.kept.is_some() {
            return true;
        }
        let Some((tee, method, headers)) = &self.tee else {
            return false;
        };
        if !self.watch.as_ref().is_some_and(|w| w.ended()) {
            return false;
        }
        let Some(body) = tee.bytes() else {
            return false;
        };
        let unary = body.len() >= 5
            && body.len() - 5 == u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if unary {
            self.kept = Some(Kept {
                method: method.clone(),
                headers: headers.clone(),
                body,
            });
        }
        unary
    }

    /// May a failure the policy names (`allowed`) be retried: the body was
    /// kept, attempts are left, and the budget has a token (taken here).
    fn may_retry(&self, allowed: fn(&RetryOn) -> bool) -> bool {
        let Some(p) = self.retry else { return false };
        allowed(&self.on)
            && self.kept.is_some()
            && self.retries + 1 < p.attempts
            && self.n < MAX_TRIES
            && self.entry.state.budget.withdraw(p)
    }

    /// A retry: it needs a retry slot (`max_retries`), then backs off and
    /// rebuilds the request from what was kept.
    async fn before_retry(&mut self) -> Result<Request<UpstreamBody>, ProxyError> {
        let route = &self.entry.route;
        if self.retry_slot.is_none()
            && let Some(max) = route.limits.max_retries
        {
            match self.entry.state.retry(max) {
                Some(slot) => self.retry_slot = Some(slot),
                None => {
                    return Err(ProxyError::Overloaded {
                        route: route.name.to_string(),
                        limit: max,
                    });
                }
            }
        }
        self.retries += 1;
        self.entry.state.metrics.count_retry();
        if let Some(p) = self.retry {
            tokio::time::sleep(backoff_for(p, self.retries)).await;
        }
        if let Some(req) = self.resend.take() {
            return Ok(*req);
        }
        // The copy was made before any try folded the added fields into the
        // map: the next try adds them again.
        self.folded = false;
        Ok(self
            .kept
            .as_ref()
            .expect("a retry is only decided with a request handed back or kept")
            .rebuild())
    }
}

/// Whether a response may reach the client with its fields as they
/// arrived (`h1::relay`): no filter, gRPC handling or HSTS policy reads or
/// adds to them, no upgrade, and an HTTP/1.1 client (the native server
/// writes them in one copy; hyper's HTTP/2 server would need them parsed
/// into a map again).
fn relays(entry: &RouteEntry, peer: &Peer, ctx: &RequestCtx<'_>, upgrade: bool) -> bool {
    entry.filters.is_none()
        && peer.hsts.is_none()
        && ctx.grpc.is_none()
        && ctx.version == http::Version::HTTP_11
        && !upgrade
}

/// Checks a response head before it is passed on: an upgrade the client did
/// not ask for, or both framings at once, is an upstream breaking HTTP.
fn check_head(
    resp: &Response<UpstreamResponseBody>,
    upgrade_asked: bool,
) -> Result<(), &'static str> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade_asked {
        return Err("101 Switching Protocols to a request that asked for no upgrade");
    }
    let headers = resp.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err("response with both Content-Length and Transfer-Encoding");
    }
    Ok(())
}
