//! The request path, as phases over one per-request context.
//!
//! [`Proxy::handle`] runs, in order, each phase a short function of its own:
//!
//! 1. **Request filter** ([`edge`]): refuse at the edge what is malformed or
//!    over a limit (Host, path, URI length, header names, a declared body
//!    too large), and settle the host and normalised path that both the
//!    router and the upstream will see. May answer by itself.
//! 2. **Route**: the current [`RouteTable`] is loaded once and the request
//!    matched; the route's state (metrics, budget, limits) travels in the
//!    context to the end.
//! 3. **Upstream request** ([`outgoing`]): hop-by-hop headers out,
//!    forwarding headers in, the path rewritten, the body wrapped in its
//!    limits ([`crate::body::ClientBody`]).
//! 4. **Send** ([`attempt`]): pick an endpoint, send, classify the outcome,
//!    and retry elsewhere when the policy (or, for connection failures and
//!    resets before any answer, the defaults) allows, within the route's
//!    timeout.
//! 5. **Response filter** ([`Proxy::respond`]): upgrades become tunnels
//!    ([`crate::tunnel`]),
//!    hop-by-hop headers go, the body gets its read timeout.
//! 6. **Log**: metrics and the access log, once per request (for a gRPC
//!    call, when its body ends with its `grpc-status`: [`crate::grpc::body`]).
//!
//! gRPC calls ([`crate::grpc`]) take the same phases: the context notes
//! the call's kind once (from `content-type`), and each phase consults it
//! where gRPC differs: `te: trailers` and `grpc-timeout` in the upstream
//! request, the deadline and retries on gRPC statuses in the send phase,
//! gRPC-Web translation and status accounting in the response filter.
//!
//! Errors in any phase are typed ([`ProxyError`]) and become responses in
//! one place ([`ProxyError::respond`]: JSON, or trailers-only gRPC for a
//! gRPC call). Bodies are never buffered unless
//! a retry needs them: memory per request stays flat whatever the body size.

mod attempt;
pub mod edge;
pub mod mirror;
mod outgoing;
pub mod pick;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use tokio::time::Instant;
use tracing::Instrument;

use crate::access::{AccessLine, LineRef};
use crate::acme::challenge::Http01Answers;
use crate::body::{BodyWatch, RequestBody, TimedBody};
use crate::error::ProxyError;
use crate::filter::ConsumerStore;
use crate::filter::compress::Compressor;
use crate::grpc::body::{GrpcBody, Outcome};
use crate::grpc::{Code, GrpcKind};
use crate::health::OutlierPolicy;
use crate::idle::LazyDeadline;
use crate::metrics::GatewayMetrics;
use crate::pool::{H2ResponseBody, Http1Client, Http2Client, Pool, PooledBody};
use crate::router::{RouteEntry, RouteTable};
use crate::tls::upstream::UpstreamTlsConfigs;
use crate::trace;
use crate::tunnel::Tunnels;

pub use edge::{Cidr, EdgePolicy, UnderscorePolicy};
pub use outgoing::strip_hop_by_hop;

/// An upstream's response body: HTTP/1.1 from the pool, or an HTTP/2
/// stream's.
pub type UpstreamResponseBody = Either<PooledBody, H2ResponseBody>;

/// An upstream's streamed body (with its read timeout), compressed on a
/// route with a `compression` filter. The compressed one is boxed: its
/// encoders' state is several kilobytes (about 5.8 KiB), and inline it
/// would make every response body that large, costing every request a
/// copy of it (+16% instructions per small GET, measured with callgrind,
/// and more memory per connection) on routes without compression.
pub type StreamedBody = Either<
    TimedBody<UpstreamResponseBody>,
    Pin<Box<tower_http::compression::CompressionBody<TimedBody<UpstreamResponseBody>>>>,
>;

/// Body of every response the gateway sends: an upstream's streamed body,
/// or a small body the gateway made itself, or a gRPC call's body (watched
/// for its status, translated for gRPC-Web).
///
/// The gRPC body is boxed (one allocation per call): inline, its 240 bytes
/// would size every response, and a response over 256 bytes costs each of
/// its dozen moves per request twice the instructions (`memcpy`'s longer
/// copy; callgrind). A size test keeps a response within 256 bytes.
pub type ProxyBody =
    Either<StreamedBody, Either<Full<Bytes>, Box<GrpcBody<TimedBody<UpstreamResponseBody>>>>>;

/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled upstream connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

use crate::h1::relay::Relayed;
use crate::h1::response::{Beside, X_REQUEST_ID};

/// Proxy tuning.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Emit one access-log line per request (target `portico::access`).
    pub access_log: bool,
    /// Time allowed to establish an upstream TCP connection.
    pub connect_timeout: Duration,
    /// How long idle upstream connections stay pooled.
    pub pool_idle_timeout: Duration,
    /// Which client speaks HTTP/1.1 to cleartext upstreams.
    pub http1_client: Http1Client,
    /// Which client speaks HTTP/2 to upstreams.
    pub http2_client: Http2Client,
    /// Passive outlier detection.
    pub outlier: OutlierPolicy,
    /// Give requests without a valid W3C `traceparent` a new one, so the
    /// upstream and the access log share a trace id. Off: the header is
    /// passed through (or not) exactly as received.
    pub generate_traceparent: bool,
    /// What the edge accepts: hosts, paths, sizes, header names, trusted
    /// hops, body limits and timeouts.
    pub edge: EdgePolicy,
    /// Close a tunnel (WebSocket) that carried no bytes for this long.
    pub tunnel_idle_timeout: Duration,
    /// Answer every cleartext request with a 308 to HTTPS
    /// (`--https-redirect`); routes can ask for it one by one too.
    pub https_redirect: bool,
    /// The HTTPS port redirects name (`None` or 443: none in the URL).
    pub https_port: Option<u16>,
    /// CA bundles trusted for `https` upstreams beside the web PKI roots
    /// (`--upstream-ca`).
    pub upstream_ca: Vec<std::path::PathBuf>,
    /// The request header carrying the verified client certificate's
    /// subject upstream (`--tls-client-subject-header`); whatever a client
    /// sends in it is always removed.
    pub client_subject_header: Option<http::HeaderName>,
    /// HTTP-01 answers of the ACME client, served on the cleartext
    /// listener before routing; `None`: no ACME, the path is routed.
    pub acme_http01: Option<Arc<Http01Answers>>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            access_log: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            http1_client: Http1Client::default(),
            http2_client: Http2Client::default(),
            outlier: OutlierPolicy::default(),
            generate_traceparent: false,
            edge: EdgePolicy::default(),
            tunnel_idle_timeout: crate::tunnel::DEFAULT_TUNNEL_IDLE_TIMEOUT,
            https_redirect: false,
            https_port: None,
            upstream_ca: Vec::new(),
            client_subject_header: None,
            acme_http01: None,
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
    edge: EdgePolicy,
    metrics: Arc<GatewayMetrics>,
    tunnels: Arc<Tunnels>,
    https_redirect: bool,
    https_port: Option<u16>,
    /// Client TLS settings for `https` upstreams.
    upstream_tls: Arc<UpstreamTlsConfigs>,
    client_subject_header: Option<http::HeaderName>,
    acme_http01: Option<Arc<Http01Answers>>,
    /// The consumers `api_key` filters look keys up in, kept by the
    /// discovery task from the registry's watch.
    consumers: Arc<ConsumerStore>,
}

/// The downstream peer of a connection, prepared once per connection so
/// requests do not format the address again.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Peer address.
    pub addr: SocketAddr,
    /// Peer IP as a header value, for `X-Forwarded-For`.
    ip: HeaderValue,
    /// `for=IP;proto=http` (or `https`), for `Forwarded`.
    forwarded: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    proto: HeaderValue,
    /// Whether the connection came over TLS.
    pub secure: bool,
    /// Whether the peer is a trusted hop (its forwarding headers are kept
    /// and appended to, not replaced).
    trusted: bool,
    /// The subject of the client certificate verified on this connection
    /// (mTLS on the HTTPS listener), for `--tls-client-subject-header`.
    pub client_subject: Option<HeaderValue>,
    /// `Strict-Transport-Security` for every response on this connection
    /// (the TLS listener's `--hsts`); an upstream's own policy is kept.
    pub hsts: Option<HeaderValue>,
}

impl Peer {
    /// Describes the peer `addr`, untrusted, on a TLS connection when
    /// `secure`.
    pub fn new(addr: SocketAddr, secure: bool) -> Peer {
        let proto = if secure { "https" } else { "http" };
        let (forwarded, ip) = forwarded_for_again(addr.ip(), proto);
        Peer {
            addr,
            ip,
            forwarded,
            proto: HeaderValue::from_static(proto),
            secure,
            trusted: false,
            client_subject: None,
            hsts: None,
        }
    }
}

/// [`forwarded_for`], reused while connections come from the address the
/// last one on this thread came from: they do, again and again, behind a
/// load balancer or a NAT and from a client that reconnects. A repeat
/// costs two reference counts instead of formatting and checking both
/// values (about 600 instructions per connection, callgrind, a new
/// connection per request).
fn forwarded_for_again(ip: std::net::IpAddr, proto: &'static str) -> (HeaderValue, HeaderValue) {
    type Last = Option<(std::net::IpAddr, &'static str, HeaderValue, HeaderValue)>;
    thread_local! {
        static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new(None) };
    }
    let make = || forwarded_for(ip, proto);
    LAST.try_with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return make();
        };
        match &*last {
            Some((seen, by, forwarded, bare)) if *seen == ip && *by == proto => {
                (forwarded.clone(), bare.clone())
            }
            _ => {
                let (forwarded, bare) = make();
                *last = Some((ip, proto, forwarded.clone(), bare.clone()));
                (forwarded, bare)
            }
        }
    })
    .unwrap_or_else(|_| make())
}

/// `Forwarded`'s `for=IP;proto=P` (an IPv6 address quoted, in brackets, as
/// RFC 7239 §6 asks) and the bare IP for `X-Forwarded-For`, both in one
/// buffer. Made once per connection: with `format!` and a string per value
/// it was about 4,000 instructions, a twentieth of a request on a new
/// connection (callgrind, `NEWCONN=1 bench/callgrind.sh`).
fn forwarded_for(ip: std::net::IpAddr, proto: &str) -> (HeaderValue, HeaderValue) {
    use bytes::BufMut;
    let mut buf = bytes::BytesMut::with_capacity(64);
    buf.put_slice(b"for=");
    let ip_at = match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b'.');
                }
                buf.put_slice(crate::h1::response::decimal(octet.into(), &mut [0; 20]));
            }
            4..buf.len()
        }
        std::net::IpAddr::V6(v6) => {
            buf.put_slice(b"\"[");
            let start = buf.len();
            std::fmt::Write::write_fmt(&mut buf, format_args!("{v6}"))
                .expect("writing to a BytesMut does not fail");
            let at = start..buf.len();
            buf.put_slice(b"]\"");
            at
        }
    };
    buf.put_slice(b";proto=");
    buf.put_slice(proto.as_bytes());
    let all = buf.freeze();
    let valid = "an IP address is a valid header value";
    let ip = HeaderValue::from_maybe_shared(all.slice(ip_at)).expect(valid);
    (HeaderValue::from_maybe_shared(all).expect(valid), ip)
}

/// What one request carries through the phases, and what the last phase
/// (metrics and the access log) needs to know of the others.
struct RequestCtx<'t> {
    started: Instant,
    /// A phase may have waited since `started` (a route filter for an auth
    /// service or a key set, a body read whole for a retry): see
    /// [`RequestCtx::now`].
    waited: bool,
    /// The client's protocol: responses are answered in it whatever the
    /// upstream spoke (an HTTP/1.0 upstream must not turn them into 1.0).
    version: Version,
    request_id: HeaderValue,
    /// The request id came with the request (`X-Request-Id`), so it is in
    /// the request's headers already.
    request_id_received: bool,
    trace_id: Option<[u8; 32]>,
    /// Method and URI as received, when the access log is on.
    logged: Option<(Method, Uri)>,
    /// The matched route (`None`: no route matched).
    entry: Option<&'t RouteEntry>,
    upstream: Option<Arc<str>>,
    /// When the last try's response head arrived: the end of the request's
    /// latency too, which saves a clock read.
    answered_at: Option<Instant>,
    body: BodyState,
    /// A gRPC call, and which kind (`content-type` read once, in `begin`).
    grpc: Option<GrpcKind>,
    /// The request's `Origin`, when the route's `cors` filter allows it:
    /// the answer, whoever makes it, gets the CORS headers in phase 6.
    cors_origin: Option<HeaderValue>,
    /// What custom filters keep from phase to phase (one pointer, empty
    /// until a filter stores something).
    extensions: http::Extensions,
    /// The route timeout's timer, handed on to the response body's read
    /// timeout: one timer per request, not two (and that one usually a
    /// spare kept from an earlier request: see `LazyDeadline`).
    timer: LazyDeadline,
    /// The upstream response's fields, relayed as they arrived (phase 5
    /// takes them off its body, phase 6 puts them beside the map).
    relayed: Option<Relayed>,
}

/// What is known of the client's request body.
enum BodyState {
    /// None was sent (or it was read whole before sending).
    Done,
    /// One was sent and nothing has read it: the connection cannot carry
    /// another request after the response.
    Unread,
    /// It is streaming upstream.
    Streaming(Arc<BodyWatch>),
}

impl RequestCtx<'_> {
    /// The time now, for the route timeout's start, the first try's (an
    /// upstream latency's start) and the request body's first deadline:
    /// the request's own start while no phase has waited since. Until then
    /// only this request's work has run, within the same poll (a few
    /// microseconds at most), so the reading is as good as a new one and
    /// saves one of the clock reads a request makes (about 20 ns each
    /// here). After a wait, a fresh reading: a poll's cached one may be
    /// milliseconds old on an HTTP/2 connection (`clock`).
    fn now(&self) -> Instant {
        if self.waited {
            crate::clock::fresh()
        } else {
            self.started
        }
    }
}

impl BodyState {
    /// Whether the client must be told `connection: close`: its body was not
    /// read to the end, so the connection is not at a request boundary.
    fn unfinished(&self) -> bool {
        match self {
            BodyState::Done => false,
            BodyState::Unread => true,
            BodyState::Streaming(w) => !w.ended(),
        }
    }
}

impl Proxy {
    /// A proxy reading routes from `table`, reaching `https` upstreams with
    /// `upstream_tls`.
    pub fn new(
        table: Arc<ArcSwap<RouteTable>>,
        settings: &ProxySettings,
        upstream_tls: Arc<UpstreamTlsConfigs>,
    ) -> Proxy {
        let metrics = Arc::<GatewayMetrics>::default();
        let tunnels = Tunnels::new(settings.tunnel_idle_timeout, metrics.tunnels().clone());
        Proxy {
            table,
            pool: Pool::new(
                settings.connect_timeout,
                settings.pool_idle_timeout,
                (settings.http1_client, settings.http2_client),
            ),
            outlier: settings.outlier.clone(),
            access_log: settings.access_log,
            generate_traceparent: settings.generate_traceparent,
            edge: settings.edge.clone(),
            metrics,
            tunnels,
            https_redirect: settings.https_redirect,
            https_port: settings.https_port,
            upstream_tls,
            client_subject_header: settings.client_subject_header.clone(),
            acme_http01: settings.acme_http01.clone(),
            consumers: Arc::default(),
        }
    }

    /// The consumers this proxy's `api_key` filters know (filled from the
    /// registry by the discovery task).
    pub fn consumers(&self) -> &Arc<ConsumerStore> {
        &self.consumers
    }

    /// The tunnels (upgraded connections) this proxy opened.
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// The request metrics this proxy records into.
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    /// Describes a downstream peer (on a TLS connection when `secure`),
    /// trusted when it is one of the configured trusted hops.
    pub fn peer(&self, addr: SocketAddr, secure: bool) -> Peer {
        let mut peer = Peer::new(addr, secure);
        peer.trusted = self.edge.is_trusted(addr.ip());
        peer
    }

    /// Handles one downstream request; never fails (errors become responses).
    /// Every answer gets the peer's HSTS policy (an upstream's own is kept).
    ///
    /// The future is [`Proxy::handle_with`]'s: a plain function around an
    /// `async move` block, as are [`Proxy::proxy`], [`Proxy::send`] and the
    /// tries' loop, since an `async fn` keeps each argument twice (as passed
    /// and as bound), and the request's future is copied whole when it is
    /// boxed.
    pub fn handle<'p>(
        &'p self,
        req: Request<RequestBody>,
        peer: &'p Peer,
    ) -> impl Future<Output = (Response<ProxyBody>, Beside)> + 'p {
        Self::handle_with(self, req, peer)
    }

    /// [`Proxy::handle`] with the proxy and the peer held however the
    /// caller holds them: borrowed, or shared (`Arc`s) when the future
    /// must own them, as a server's per-request future does. Owned here,
    /// they need no `async` block of the caller's around [`Proxy::handle`]:
    /// such a block kept the request a second time (272 bytes, for the
    /// request's whole life) and moved it once more.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep the request twice in every request's future"
    )]
    pub fn handle_with<S, P>(
        this: S,
        mut req: Request<RequestBody>,
        peer: P,
    ) -> impl Future<Output = (Response<ProxyBody>, Beside)>
    where
        S: std::ops::Deref<Target = Proxy>,
        P: std::ops::Deref<Target = Peer>,
    {
        async move {
            let (this, peer) = (&*this, &*peer);
            let mut ctx = this.begin(&mut req);
            // Loaded here, not in `proxy`, so the context can borrow the
            // matched route's state for the metrics without another refcount.
            let table = this.table.load_full();
            // A span per request: free unless debug logging is on for this
            // target.
            let span = tracing::debug_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                request_id = ctx.request_id.to_str().unwrap_or("-"),
            );
            let mut resp = match this
                .proxy(&table, req, peer, &mut ctx)
                .instrument(span)
                .await
            {
                Ok(resp) => resp,
                Err(e) => failed(&e, ctx.grpc),
            };
            if let Some(hsts) = &peer.hsts {
                resp.headers_mut()
                    .entry(header::STRICT_TRANSPORT_SECURITY)
                    .or_insert_with(|| hsts.clone());
            }
            this.finish(resp, ctx)
        }
    }

    /// Before the phases: request id, trace id, what the log will need.
    fn begin(&self, req: &mut Request<RequestBody>) -> RequestCtx<'static> {
        use http_body::Body as _;
        let (request_id, request_id_received) = match req.headers().get(&X_REQUEST_ID) {
            Some(v) => (v.clone(), true),
            None => (new_request_id(), false),
        };
        // The trace id is looked at only when generating or logging it.
        let trace_id = if self.generate_traceparent {
            Some(trace::ensure_traceparent(req.headers_mut()))
        } else if self.access_log {
            trace::trace_id(req.headers())
        } else {
            None
        };
        RequestCtx {
            started: crate::clock::fresh(),
            waited: false,
            version: if req.version() == Version::HTTP_2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
            request_id,
            request_id_received,
            trace_id,
            logged: self
                .access_log
                .then(|| (req.method().clone(), req.uri().clone())),
            entry: None,
            upstream: None,
            answered_at: None,
            body: if req.body().is_end_stream() {
                BodyState::Done
            } else {
                BodyState::Unread
            },
            grpc: GrpcKind::of(req.headers()),
            cors_origin: None,
            extensions: http::Extensions::new(),
            timer: LazyDeadline::default(),
            relayed: None,
        }
    }

    /// Phases 1 to 5.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep the request twice in every request's future"
    )]
    fn proxy<'t>(
        &self,
        table: &'t RouteTable,
        mut req: Request<RequestBody>,
        peer: &Peer,
        ctx: &mut RequestCtx<'t>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
        async move {
            let front = edge::check(&req, &self.edge)?;
            if let Some(name) = &self.client_subject_header {
                // Only the gateway says who the client certificate named.
                let headers = req.headers_mut();
                headers.remove(name);
                if let Some(subject) = &peer.client_subject {
                    headers.insert(name.clone(), subject.clone());
                }
            }
            // Waits only for a challenge's path, which it answers.
            if let Some(answer) = self.acme_answer(&req, peer).await {
                return answer;
            }
            if self.https_redirect && !peer.secure {
                return self.redirect(&front, &req);
            }
            let matched = table.lookup(&front.view(&req)).ok_or(ProxyError::NoRoute)?;
            ctx.entry = Some(matched.entry);
            if matched.entry.route.https_redirect && !peer.secure {
                return self.redirect(&front, &req);
            }
            let entry = matched.entry;
            if let Some(chain) = &entry.filters {
                ctx.cors_origin = chain.cors_origin(req.headers());
                ctx.waited |= chain.may_wait();
                match self
                    .route_filter(entry, chain, &mut req, peer, &mut ctx.extensions)
                    .await
                {
                    Ok(Some(answer)) => return Ok(answer.map(|b| Either::Right(Either::Left(b)))),
                    Ok(None) => {}
                    Err(e) => {
                        if matches!(e, ProxyError::CorsRefused { .. }) {
                            // A refused preflight carries no CORS header at all.
                            ctx.cors_origin = None;
                        }
                        return Err(e);
                    }
                }
                if let Some(redirect) = chain.redirect() {
                    return route_redirect(redirect, &front, &req, peer, matched.prefix_len);
                }
            }
            // Kept for phase 5, only where it is used.
            let accept_encoding = match entry.filters.as_ref().and_then(|c| c.compression()) {
                Some(_) => req.headers().get(header::ACCEPT_ENCODING).cloned(),
                None => None,
            };
            // Not boxed: the native HTTP/1.1 server boxes each request's whole
            // exchange once already, and a second box here cost a malloc and a
            // copy of the send phase's future per request (callgrind, LTO off:
            // 51,858 boxed, 50,833 not; h2c 72,154 and 72,294, level).
            // The outgoing request is made in a block whose value is the send
            // phase's future, so its local ends before the await. Declared
            // beside the await, it kept its place (528 bytes) in every
            // request's future next to the send phase's own copy.
            let sending = {
                let mut out = outgoing::prepare(req, &front, &matched, peer, &self.edge, ctx)?;
                if let Some(chain) = &entry.filters {
                    let hop = (peer, matched.prefix_len);
                    self.filter_outgoing(chain, entry, &mut out, hop, ctx)?;
                }
                if let Some(set) = &entry.mirror {
                    self.mirror(entry, set, &out, peer);
                }
                // A split route sends through the target its turn chooses (a
                // plain route through itself: one branch).
                let (target, _) = entry.target(true);
                self.send(target, out, peer, ctx)
            };
            let (resp, upgrade) = sending.await?;
            Ok(self.response_filter(resp, upgrade, entry, ctx, accept_encoding.as_ref()))
        }
    }

    /// Phase 3 for a route with filters: they see (and may change) every
    /// field the request leaves with. Out of line, as are the other paths
    /// a plain route never takes: inlined, their temporaries made the
    /// request's poll function a 30 kB stack frame.
    #[inline(never)]
    fn filter_outgoing(
        &self,
        chain: &crate::filter::FilterChain,
        entry: &RouteEntry,
        out: &mut outgoing::Outgoing,
        (peer, prefix_len): (&Peer, usize),
        ctx: &mut RequestCtx<'_>,
    ) -> Result<(), ProxyError> {
        let hop = outgoing::Hop {
            peer,
            host: out.host.as_ref(),
        };
        std::mem::take(&mut out.added).fold(hop, out.req.headers_mut());
        // Hop-by-hop, as the filters have always seen it: a lone
        // `te: trailers` left for an h2c try is put back by `target`.
        out.req.headers_mut().remove(header::TE);
        chain.on_upstream_request(out.req.headers_mut());
        if let Some(rule) = chain.rewrite() {
            outgoing::rewrite(out, rule, prefix_len, &self.edge.path)?;
        }
        if !chain.custom().is_empty() {
            custom_upstream_request(chain, entry, &mut out.req, &mut ctx.extensions);
        }
        Ok(())
    }

    /// Phase 2 (after the route is known, for a route with filters): the
    /// route's request filters, which may refuse the request before
    /// anything is read or sent, and may edit it (credentials out, the
    /// consumer's name in). Authentication runs before rate limits.
    ///
    /// A chain that cannot wait (no key set to fetch) runs in place: its
    /// future completes on the first poll. One that may wait is boxed, so
    /// its state does not grow the future of every request. `Some`: an
    /// answer a filter made for the client (an auth service's refusal).
    async fn route_filter(
        &self,
        entry: &RouteEntry,
        chain: &crate::filter::FilterChain,
        req: &mut Request<RequestBody>,
        peer: &Peer,
        extensions: &mut http::Extensions,
    ) -> Result<Option<Response<Full<Bytes>>>, ProxyError> {
        use futures_util::FutureExt as _;
        // Taken out and put back so headers and URI can be lent together.
        let mut uri = std::mem::take(req.uri_mut());
        let client = edge::client_ip(&self.edge, peer.addr.ip(), peer.trusted, req.headers());
        let method = req.method().clone();
        let head = crate::filter::RequestHead {
            client,
            headers: req.headers_mut(),
            uri: &mut uri,
            method: &method,
            secure: peer.secure,
            route: &entry.route.name,
            extensions,
        };
        let verdict = if chain.may_wait() {
            Box::pin(chain.on_request(head, &self.consumers)).await
        } else {
            chain
                .on_request(head, &self.consumers)
                .now_or_never()
                .expect("a chain that may not wait completes at once")
        };
        *req.uri_mut() = uri;
        match verdict {
            Ok(_) => Ok(None),
            Err(crate::filter::Refusal::Answer(answer)) => Ok(Some(*answer)),
            Err(refusal) => Err(refused(entry, refusal)),
        }
    }

    /// Phase 5, whichever the protocol: the route's response filters, then
    /// the gRPC or plain HTTP handling of the response.
    fn response_filter(
        &self,
        mut resp: Response<UpstreamResponseBody>,
        upgrade: Option<crate::tunnel::DownstreamUpgrade>,
        entry: &RouteEntry,
        ctx: &mut RequestCtx<'_>,
        accept_encoding: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        if let Either::Left(body) = resp.body_mut()
            && let Some(relayed) = body.take_relayed()
        {
            // Asked for only where nothing below reads the fields; a map
            // for any other (none today) all the same.
            if entry.filters.is_none() && ctx.grpc.is_none() && upgrade.is_none() {
                ctx.relayed = Some(relayed);
            } else {
                relayed.into_map(resp.headers_mut());
            }
        }
        let mut compress = None;
        if let Some(chain) = &entry.filters {
            chain.on_response(resp.headers_mut());
            if !chain.custom().is_empty() {
                resp = custom_response(chain, entry, resp, &mut ctx.extensions);
            }
            compress = chain.compression().map(|c| (c, accept_encoding));
        }
        let route = &entry.route;
        let timer = std::mem::take(&mut ctx.timer);
        match ctx.grpc {
            Some(kind) => respond_grpc(resp, kind, route, ctx.version, timer),
            None => self.respond(resp, upgrade, (route.read_timeout, timer), compress),
        }
    }

    /// An ACME HTTP-01 validation request on the cleartext listener:
    /// answered here, before the HTTPS redirect and routing, so neither a
    /// route nor `--https-redirect` can hide it (RFC 8555 §8.3). `None`:
    /// not one (or no ACME); a token not published is a 404.
    async fn acme_answer(
        &self,
        req: &Request<RequestBody>,
        peer: &Peer,
    ) -> Option<Result<Response<ProxyBody>, ProxyError>> {
        let answers = self.acme_http01.as_ref()?;
        if peer.secure || !matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let Some(key_authorization) = answers.answer(req.uri().path()).await? else {
            return Some(Err(ProxyError::NoRoute));
        };
        let body = Bytes::copy_from_slice(key_authorization.as_bytes());
        Some(Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Either::Right(Either::Left(Full::new(body))))
            .expect("a challenge answer is well-formed")))
    }

    /// A 308 to the same URL over HTTPS: 308 rather than 301 so a client
    /// repeats the method and body (RFC 9110 §15.4.9).
    #[inline(never)]
    fn redirect(
        &self,
        front: &edge::Front,
        req: &Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let location = edge::https_location(front, req, self.https_port)?;
        Ok(Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .header(header::CONTENT_LENGTH, 0)
            .body(Either::Right(Either::Left(Full::new(Bytes::new()))))
            .expect("a redirect is well-formed"))
    }

    /// Phase 5: the response on its way back (compressed, with
    /// `compress`, by the client's `Accept-Encoding`).
    fn respond(
        &self,
        mut resp: Response<UpstreamResponseBody>,
        downstream_upgrade: Option<crate::tunnel::DownstreamUpgrade>,
        (read_timeout, timer): (Duration, LazyDeadline),
        compress: Option<(&Compressor, Option<&HeaderValue>)>,
    ) -> Response<ProxyBody> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = downstream_upgrade
        {
            return self.upgraded(resp, downstream, (read_timeout, timer));
        }
        strip_hop_by_hop(resp.headers_mut());
        let resp = resp.map(|b| TimedBody::new(b, read_timeout, timer));
        match compress {
            Some((compressor, accept)) => compressed(compressor, accept, resp),
            None => resp.map(|b| Either::Left(Either::Left(b))),
        }
    }

    /// A `101` the client asked for: the tunnel starts, the head goes back.
    #[inline(never)]
    fn upgraded(
        &self,
        mut resp: Response<UpstreamResponseBody>,
        downstream: crate::tunnel::DownstreamUpgrade,
        (read_timeout, timer): (Duration, LazyDeadline),
    ) -> Response<ProxyBody> {
        // Checked when the head arrived: a 101 only comes this far when
        // the client asked for it.
        let upstream = hyper::upgrade::on(&mut resp);
        self.tunnels.spawn(downstream, upstream);
        let headers = resp.headers_mut();
        let proto = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(headers);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(proto) = proto {
            headers.insert(header::UPGRADE, proto);
        }
        resp.map(|b| Either::Left(Either::Left(TimedBody::new(b, read_timeout, timer))))
    }

    /// Phase 6: the fields every response carries (beside its map),
    /// metrics, access log.
    fn finish(
        &self,
        mut resp: Response<ProxyBody>,
        ctx: RequestCtx<'_>,
    ) -> (Response<ProxyBody>, Beside) {
        *resp.version_mut() = ctx.version;
        if let (Some(origin), Some(entry)) = (&ctx.cors_origin, ctx.entry)
            && let Some(chain) = &entry.filters
        {
            chain.on_cors(origin, resp.headers_mut());
        }
        // The client's body was not read to its end, so this connection is
        // not at a request boundary and will close: say so, or a keep-alive
        // client loses its next request.
        let close = ctx.version != Version::HTTP_2 && ctx.body.unfinished();
        let elapsed = ctx
            .answered_at
            .unwrap_or_else(crate::clock::fresh)
            .saturating_duration_since(ctx.started);
        let metrics = match ctx.entry {
            Some(entry) => &entry.state.metrics,
            None => self.metrics.no_route(),
        };
        metrics.record(resp.status(), elapsed);
        if let Some(chain) = ctx.entry.and_then(|e| e.filters.as_ref())
            && !chain.custom().is_empty()
        {
            let entry = crate::filter::custom::LogEntry {
                route: &ctx.entry.expect("a chain comes with its route").route.name,
                status: resp.status(),
                duration: elapsed,
                upstream: ctx.upstream.as_deref(),
                extensions: &ctx.extensions,
            };
            chain.custom().iter().for_each(|f| f.on_log(&entry));
        }
        if ctx.grpc.is_none() {
            if let Some((method, uri)) = &ctx.logged {
                crate::access::emit(
                    &LineRef {
                        method,
                        path: uri.path(),
                        status: resp.status().as_u16(),
                        route: ctx.entry.map(|e| &*e.route.name),
                        upstream: ctx.upstream.as_deref(),
                        duration: elapsed,
                        request_id: &ctx.request_id,
                        trace_id: ctx.trace_id.as_ref(),
                    },
                    None,
                );
            }
            let beside = Beside {
                request_id: Some(ctx.request_id),
                close,
                fields: ctx.relayed,
            };
            return (resp, beside);
        }
        let request_id = Some(ctx.request_id.clone());
        (
            finish_grpc(resp, ctx, metrics, elapsed),
            Beside {
                request_id,
                close,
                fields: None,
            },
        )
    }
}

/// A request the gateway answers itself, with the error's response
/// (JSON, or a gRPC status for a gRPC client).
#[inline(never)]
fn failed(e: &ProxyError, grpc: Option<GrpcKind>) -> Response<ProxyBody> {
    tracing::debug!(error = %e, "request failed at the gateway");
    e.respond(grpc).map(|b| Either::Right(Either::Left(b)))
}

/// A response compressed by the route's `compress` filter, as the
/// client's `Accept-Encoding` allows.
#[inline(never)]
fn compressed(
    compressor: &Compressor,
    accept: Option<&HeaderValue>,
    resp: Response<TimedBody<UpstreamResponseBody>>,
) -> Response<ProxyBody> {
    compressor
        .wrap(accept, resp)
        .map(|b| Either::Left(Either::Right(Box::pin(b))))
}

/// Phase 3 for custom filters: the request as it will leave.
#[inline(never)]
fn custom_upstream_request<B>(
    chain: &crate::filter::FilterChain,
    entry: &RouteEntry,
    req: &mut Request<B>,
    extensions: &mut http::Extensions,
) {
    let method = req.method().clone();
    // Taken out and put back so the URI and headers can be lent together.
    let mut uri = std::mem::take(req.uri_mut());
    let mut head = crate::filter::custom::UpstreamRequest {
        route: &entry.route.name,
        method: &method,
        uri: &mut uri,
        headers: req.headers_mut(),
        extensions,
    };
    for filter in chain.custom() {
        filter.on_upstream_request(&mut head);
    }
    *req.uri_mut() = uri;
}

/// Phase 5 for custom filters: an upstream's response head.
#[inline(never)]
fn custom_response<B>(
    chain: &crate::filter::FilterChain,
    entry: &RouteEntry,
    resp: Response<B>,
    extensions: &mut http::Extensions,
) -> Response<B> {
    let (mut parts, body) = resp.into_parts();
    let mut head = crate::filter::custom::ResponseHead {
        route: &entry.route.name,
        status: &mut parts.status,
        headers: &mut parts.headers,
        extensions,
    };
    for filter in chain.custom() {
        filter.on_response(&mut head);
    }
    Response::from_parts(parts, body)
}

/// The error answering a refusal of the request filter phase.
fn refused(entry: &RouteEntry, refusal: crate::filter::Refusal) -> ProxyError {
    use crate::filter::{AuthRefusal, Refusal};
    let route = entry.route.name.to_string();
    match refusal {
        Refusal::Limited(limited) => ProxyError::RateLimited { route, limited },
        Refusal::Auth(AuthRefusal::Unauthorized { reason, challenge }) => {
            ProxyError::Unauthorized {
                route,
                reason,
                challenge,
            }
        }
        Refusal::Auth(AuthRefusal::Forbidden { consumer }) => {
            ProxyError::Forbidden { route, consumer }
        }
        Refusal::AddressRefused(client) => ProxyError::AddressRefused { route, client },
        Refusal::AuthUnavailable(reason) => ProxyError::AuthUnavailable { route, reason },
        Refusal::CorsRefused => ProxyError::CorsRefused { route },
        Refusal::Unavailable(reason) => ProxyError::FilterUnavailable {
            route,
            reason: reason.to_string(),
        },
        Refusal::Answer(_) => unreachable!("route_filter sends a filter's answer as it is"),
    }
}

/// Phase 2, a route's `redirect` filter (after the route's other request
/// filters, so a redirect is no way around them): the answer, with nothing
/// sent upstream.
#[inline(never)]
fn route_redirect(
    redirect: &portico_registry::filter::Redirect,
    front: &edge::Front,
    req: &Request<RequestBody>,
    peer: &Peer,
    prefix_len: usize,
) -> Result<Response<ProxyBody>, ProxyError> {
    let origin = crate::filter::redirect::Origin {
        secure: peer.secure,
        host: front.host.as_ref(),
        path: front.path(req),
        prefix_len,
        query: req.uri().query(),
    };
    let location = crate::filter::redirect::location(redirect, &origin).ok_or(
        ProxyError::BadRequest("a redirect to the same host needs a Host"),
    )?;
    Ok(Response::builder()
        .status(redirect.status)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, 0)
        .body(Either::Right(Either::Left(Full::new(Bytes::new()))))
        .expect("a redirect is well-formed"))
}

/// Phase 6 for a gRPC call: its status is known at the end of its body
/// (the body then counts it and writes the log line), or now for an
/// answer without one (trailers-only, or the gateway's own).
#[inline(never)]
fn finish_grpc(
    mut resp: Response<ProxyBody>,
    ctx: RequestCtx<'_>,
    metrics: &crate::metrics::RouteMetrics,
    elapsed: Duration,
) -> Response<ProxyBody> {
    let line = ctx.logged.map(|(method, uri)| AccessLine {
        method,
        uri,
        status: resp.status().as_u16(),
        route: ctx.entry.map(|e| e.route.name.clone()),
        upstream: ctx.upstream,
        duration: elapsed,
        request_id: ctx.request_id,
        trace_id: ctx.trace_id,
    });
    if let Either::Right(Either::Right(body)) = resp.body_mut() {
        body.set_outcome(Outcome {
            state: ctx.entry.map(|e| e.state.clone()),
            log: line,
        });
        return resp;
    }
    let code = Code::in_headers(resp.headers()).map(|c| c.0);
    metrics.record_grpc(code);
    if let Some(line) = line {
        line.emit(Some(code));
    }
    resp
}

/// Phase 5 for a gRPC call: hop-by-hop headers go, and the body is wrapped
/// to note the call's status (and, on a `grpc_web` route, to translate for
/// a gRPC-Web client).
#[inline(never)]
fn respond_grpc(
    mut resp: Response<UpstreamResponseBody>,
    kind: GrpcKind,
    route: &crate::config::Route,
    version: Version,
    timer: LazyDeadline,
) -> Response<ProxyBody> {
    strip_hop_by_hop(resp.headers_mut());
    let translate = route.grpc_web && kind.is_web();
    if translate {
        crate::grpc::web::response_headers(resp.headers_mut(), kind);
    } else if kind == GrpcKind::Native && version != Version::HTTP_2 {
        // hyper's HTTP/1.1 encoder writes only the trailer fields the head
        // declared (and only to a client that sent `te: trailers`): the
        // status fields are the ones a gRPC client needs.
        resp.headers_mut().insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
    let status = Code::in_headers(resp.headers());
    let mode = if translate { kind } else { GrpcKind::Native };
    let read_timeout = route.read_timeout;
    resp.map(|b| {
        Either::Right(Either::Right(Box::new(GrpcBody::new(
            TimedBody::new(b, read_timeout, timer),
            mode,
            status,
        ))))
    })
}

/// A fresh id, marked sensitive: not a secret, but unique to one request,
/// so HPACK must not index it (HTTP/2 responses, h2c upstreams). Indexed,
/// each id took a slot in the connection's header table and pushed out the
/// entries that do repeat (`server`, `content-type`, the second's `date`),
/// costing their bytes on later responses and an insertion every time.
///
/// Written into a per-thread buffer that ids are split off (one allocation
/// per 128 ids): an id of its own was one allocation, and the copy of it
/// the upstream request carries made its bytes shared, a second one.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const LEN: usize = 32;
    thread_local! {
        static IDS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    let mut n = fastrand::u128(..);
    let mut id = [0u8; LEN];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    let id = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() < LEN {
            *ids = BytesMut::with_capacity(128 * LEN);
        }
        ids.extend_from_slice(&id);
        ids.split_to(LEN).freeze()
    });
    let mut id = HeaderValue::from_maybe_shared(id).expect("hex is a valid header value");
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwarding_values_name_the_peer_as_its_address_prints() {
        let v4 = (0..=255u8).map(|o| format!("{o}.{}.10.{o}", 255 - o));
        let v6 = ["::1", "2001:db8::7", "::ffff:10.0.0.1", "fe80::1:2:3:4"];
        for ip in v4.chain(v6.iter().map(|s| s.to_string())) {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            for proto in ["http", "https"] {
                let (forwarded, bare) = super::forwarded_for(addr, proto);
                let want = match addr {
                    std::net::IpAddr::V4(_) => format!("for={addr};proto={proto}"),
                    std::net::IpAddr::V6(_) => format!("for=\"[{addr}]\";proto={proto}"),
                };
                assert_eq!(forwarded, want.as_str());
                assert_eq!(bare, addr.to_string().as_str());
            }
        }
    }

    /// A peer from the last peer's address shares its values (made once);
    /// another address, or the same one over TLS, gets its own.
    #[test]
    fn a_repeated_peer_address_reuses_its_forwarding_values() {
        let same = |a: &http::HeaderValue, b: &http::HeaderValue| {
            a == b && a.as_bytes().as_ptr() == b.as_bytes().as_ptr()
        };
        let one = super::Peer::new("10.0.0.1:1000".parse().unwrap(), false);
        let again = super::Peer::new("10.0.0.1:2000".parse().unwrap(), false);
        assert!(same(&one.forwarded, &again.forwarded));
        assert!(same(&one.ip, &again.ip));
        let tls = super::Peer::new("10.0.0.1:3000".parse().unwrap(), true);
        assert_eq!(tls.forwarded, "for=10.0.0.1;proto=https");
        let other = super::Peer::new("10.0.0.2:1000".parse().unwrap(), true);
        assert_eq!(other.forwarded, "for=10.0.0.2;proto=https");
        assert_eq!(other.ip, "10.0.0.2");
        assert!(!same(&one.ip, &other.ip));
    }

    /// Ids split off one per-thread buffer stay whole and distinct across
    /// the buffer's refills, each 32 hex digits and sensitive.
    #[test]
    fn request_ids_are_distinct_hex_across_buffer_refills() {
        let ids: Vec<_> = (0..300).map(|_| super::new_request_id()).collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            assert!(id.is_sensitive());
            assert_eq!(id.len(), 32, "{id:?}");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert!(seen.insert(id.as_bytes().to_vec()), "{id:?} twice");
        }
    }

    /// Every response carries a `ProxyBody`, moved and copied whole on the
    /// request path a dozen times: a variant that grows it (the compression
    /// encoders, about 5.8 KiB inline; the gRPC body) costs every request,
    /// so large ones are boxed. Whole, the response stays within 256 bytes,
    /// where each move is one of `memcpy`'s short copies (about 30
    /// instructions, against 64 past it). `--nocapture` prints the sizes.
    #[test]
    fn a_response_stays_within_a_short_copy() {
        let body = std::mem::size_of::<super::ProxyBody>();
        let response = std::mem::size_of::<http::Response<super::ProxyBody>>();
        println!("ProxyBody {body} bytes, a response {response} bytes");
        assert!(
            response <= 256,
            "a response is {response} bytes (its body {body}): box the large variant"
        );
    }
}
