//! Upstream connections: a small pool over Portico's own HTTP/1.1 client
//! ([`h1::client`], for cleartext requests that ask for no upgrade) and
//! hyper's connection-level clients (upgrades, h2c, `https`).
//!
//! Why not hyper-util's pooled client: on the request path it costs a pool
//! key hash (SipHash over the authority) on checkout and again on return, a
//! `select` between checkout and connect, several boxed futures and a dozen
//! large moves per request. Measured with callgrind on the small-GET
//! benchmark it was about a quarter of Portico's user-space instructions. This
//! pool does only what a reverse proxy needs:
//!
//! - HTTP/1.1: a stack of idle connections per endpoint. A connection goes
//!   back on the stack when the response body has been read to the end (the
//!   [`PooledBody`] wrapper sees that, including for empty bodies the server
//!   never polls) and is dropped if the body was abandoned midway, because
//!   its state is then unknown.
//! - HTTP/2 (h2c, or `https` where ALPN chose it): one multiplexed
//!   connection per endpoint, shared by clones of its handle; Portico's own
//!   client ([`crate::h2::client`]) by default, hyper's as a choice
//!   ([`Http2Client`]).
//! - Native HTTP/1.1: the same stack, of sockets alone (no task, no
//!   buffer). A socket the peer closed, or wrote to, while it was idle is
//!   dropped at checkout (tokio's readiness says so without a system call
//!   while nothing arrived).
//! - A request that a reused hyper connection could not even start (it
//!   closed while idle) is retried once on a fresh connection: nothing was
//!   sent.
//! - Idle connections older than the idle timeout, or closed by the peer,
//!   are discarded at checkout and by a periodic prune.
//!
//! Connecting is boxed: it is the cold path, and inlining its (large)
//! futures would make every request's state machine bigger and costlier to
//! move.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balance::Endpoint;
use crate::body::ClientBody;
use crate::h1;
use crate::h1::client::Field;
use crate::streams::{ServeStreams, StreamExecutor};
use crate::tls::upstream::TlsDial;
use portico_registry::model::Scheme;

/// Most idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Why an upstream exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No TCP connection could be made (nothing was sent).
    #[error("connect: {0}")]
    Connect(String),
    /// The TLS handshake with an `https` upstream failed (nothing was
    /// sent): an untrusted or mismatched certificate, no shared protocol.
    #[error("TLS: {0}")]
    Tls(String),
    /// The exchange failed after connecting.
    #[error("{0}")]
    Protocol(String),
    /// Too many requests already wait for a new connection (`max_pending`).
    #[error("too many requests waiting for a connection")]
    Overloaded,
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): it did not
    /// process the request, so retrying it elsewhere is safe.
    #[error("stream refused: {0}")]
    Refused(String),
}

/// Whether an error is (or wraps) HTTP/2 REFUSED_STREAM.
fn is_refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        current = err.source();
    }
    false
}

/// Whether an error is (or wraps) a TLS alert or error: with TLS 1.3 an
/// upstream refuses a client certificate after the client's handshake is
/// done, so the refusal arrives with the first response read.
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && inner.downcast_ref::<rustls::Error>().is_some()
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// A failed exchange, with the request handed back when it can go to
/// another endpoint.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: UpstreamError,
    /// The request handed back. With a connect failure (or an overloaded
    /// route), untouched: nothing of it was sent. With
    /// [`UpstreamError::Protocol`], a body-less request with an idempotent
    /// method that the native client sent and whose connection then ended
    /// before any answer: it comes back as it was, so the default reset
    /// retry needs no copy kept beforehand. Boxed: a failure is rare, and
    /// inline the request made every `Result` of an exchange (and every
    /// future holding one) 330 bytes larger.
    pub request: Option<Box<Request<UpstreamBody>>>,
}

impl SendError {
    fn sent(error: UpstreamError) -> SendError {
        SendError {
            error,
            request: None,
        }
    }

    /// Nothing was sent: the request comes back for another endpoint.
    fn unsent(error: UpstreamError, request: Request<UpstreamBody>) -> SendError {
        SendError {
            error,
            request: Some(Box::new(request)),
        }
    }

    /// The native client's exchange ended before any answer, on a
    /// connection that is not replaced here (a new one): the request's head
    /// comes back, its (empty) body made again.
    fn unanswered(back: Box<(http::request::Parts, h1::client::ClientError)>) -> SendError {
        let (parts, cause) = *back;
        let request = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
        SendError {
            error: UpstreamError::Protocol(error_chain(&cause)),
            request: Some(Box::new(request)),
        }
    }
}

/// What the gateway sends upstream: the client's body streamed as it
/// arrives (with its limits), or a body it holds in memory (empty, or kept
/// so the request can be retried).
pub type UpstreamBody = http_body_util::Either<ClientBody, http_body_util::Full<Bytes>>;

/// Largest upstream HTTP/1.1 read buffer of hyper's client: how much of a
/// response it reads from an upstream at once (the native client's bound
/// is [`crate::buffers::RELAY_SIZE`], 32 KiB). hyper's default (about 400 KiB)
/// let each client that reads slowly pin that much, twice over (the buffer
/// and the chunk queued for the client); nginx reads in 4-8 KiB buffers.
/// Past what is buffered, back-pressure reaches the upstream.
pub const UPSTREAM_BUFFER: usize = 16 * 1024;
/// HTTP/2 stream window towards upstreams: the same bound for h2c (hyper's
/// default is 2 MiB a stream); 64 KiB is HTTP/2's own default.
pub const UPSTREAM_H2_WINDOW: u32 = 64 * 1024;

type Key = Box<str>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The idle stack for `key`, made on first use: a key is allocated once
/// per endpoint, not once per connection handed back.
fn stack_for<'a, T>(map: &'a mut FastMap<Key, Vec<T>>, key: &str) -> &'a mut Vec<T> {
    if !map.contains_key(key) {
        map.insert(Key::from(key), Vec::new());
    }
    map.get_mut(key).expect("inserted above")
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// An idle connection of the native client: the socket alone, and
/// whether its last response was large (the next head is read with room
/// for a large body: [`h1::client::send`]).
struct IdleSocket {
    io: TcpStream,
    since: Instant,
    large: bool,
}

#[derive(Default)]
struct Conns {
    http1: FastMap<Key, Vec<Idle>>,
    native: FastMap<Key, Vec<IdleSocket>>,
    /// HTTP/2 connections (h2c, and `https` where ALPN chose h2) per key:
    /// one, and more while every one is at the upstream's limit of
    /// concurrent streams (see [`Conns::h2_for`]).
    h2c: FastMap<Key, Vec<H2Sender>>,
    /// h2c connections being made: the requests that find none to share
    /// wait for the one on its way, rather than each making its own (a
    /// burst of first requests would otherwise open a connection apiece).
    h2c_connecting: FastMap<Key, Connecting>,
    /// The same for `https` endpoints whose protocol is not known to be
    /// HTTP/1.1: a burst of first requests shares one handshake, and if
    /// ALPN chose HTTP/2, one connection.
    tls_connecting: FastMap<Key, TlsConnecting>,
    /// `https` keys whose last handshake chose HTTP/1.1: their requests
    /// each make their own connection when none is idle, as HTTP/1.1
    /// needs, without waiting for another's.
    tls_http1: std::collections::HashSet<Key, foldhash::fast::RandomState>,
}

/// Most HTTP/2 connections kept per key: past this many, all at the
/// upstream's stream limit, requests wait on the least loaded one (its
/// client queues them until a stream ends) rather than open another.
const MAX_H2_PER_KEY: usize = 8;

impl Conns {
    /// An open HTTP/2 connection for `key` with room for a stream; the
    /// least loaded one when all are full and there are already
    /// [`MAX_H2_PER_KEY`]; `None` when there is none, or all are full and
    /// another may be opened. Closed connections are dropped on the way.
    fn h2_for(&mut self, key: &str) -> Option<H2Sender> {
        let list = self.h2c.get_mut(key)?;
        list.retain(|s| !s.is_closed());
        if let Some(room) = list.iter().find(|s| s.has_room()) {
            return Some(room.clone());
        }
        if list.len() < MAX_H2_PER_KEY {
            return None;
        }
        list.iter().min_by_key(|s| s.load()).cloned()
    }

    /// Keeps a new connection for `key`. Until its own SETTINGS come, it
    /// is taken to allow what the key's other connections were allowed
    /// (one server): requests waiting for it then spread over as many
    /// connections as the limit needs rather than all queue on it.
    fn add_h2(&mut self, key: &str, sender: H2Sender) {
        let list = stack_for(&mut self.h2c, key);
        if let Some(limit) = list.iter().filter_map(H2Sender::known_limit).min() {
            sender.assume_limit(limit);
        }
        list.push(sender);
    }
}

/// An h2c connection on its way, shared by every request waiting for it.
type Connecting = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<H2Sender, UpstreamError>>,
>;

/// A TLS connection on its way: an HTTP/2 one to share, or `None` when
/// ALPN chose HTTP/1.1 (the connection then waits in the idle pool for
/// one of the requests that waited).
type TlsConnecting = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<Option<H2Sender>, UpstreamError>>,
>;

/// Which client speaks HTTP/2 to upstreams (h2c, and `https` where ALPN
/// chooses it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Http2Client {
    /// Portico's own ([`crate::h2::client`]).
    #[default]
    Native,
    /// hyper's (the h2 crate), kept to compare and fall back on.
    Hyper,
}

/// An upstream HTTP/2 response's body, from whichever client read it.
pub type H2ResponseBody = Either<crate::h2::body::H2Body, Incoming>;

/// A shared HTTP/2 upstream connection's handle.
#[derive(Clone)]
enum H2Sender {
    Native(crate::h2::client::SendRequest<UpstreamBody>),
    Hyper(http2::SendRequest<UpstreamBody>),
}

/// A failed HTTP/2 exchange: why, and the request if it never went out
/// (boxed, as the native client hands it back: the failure is rare, and
/// it is what the try's outcome is sized by).
type H2Failure = (UpstreamError, Option<Box<Request<UpstreamBody>>>);

impl H2Sender {
    fn is_closed(&self) -> bool {
        match self {
            H2Sender::Native(s) => s.is_closed(),
            H2Sender::Hyper(s) => s.is_closed(),
        }
    }

    /// Room for another stream within the upstream's limit (hyper's client
    /// does not say: one connection per key, its client queueing past it).
    fn has_room(&self) -> bool {
        match self {
            H2Sender::Native(s) => s.has_room(),
            H2Sender::Hyper(_) => true,
        }
    }

    fn load(&self) -> usize {
        match self {
            H2Sender::Native(s) => s.load(),
            H2Sender::Hyper(_) => 0,
        }
    }

    fn known_limit(&self) -> Option<usize> {
        match self {
            H2Sender::Native(s) => s.stream_limit(),
            H2Sender::Hyper(_) => None,
        }
    }

    fn assume_limit(&self, limit: usize) {
        if let H2Sender::Native(s) = self {
            s.assume_stream_limit(limit);
        }
    }

    /// Whether `other` is a handle to the same connection (hyper's handles
    /// cannot tell: they are then told apart by being closed).
    fn same_connection(&self, other: &H2Sender) -> bool {
        match (self, other) {
            (H2Sender::Native(a), H2Sender::Native(b)) => a.same_connection(b),
            _ => false,
        }
    }

    /// Sends `req` on this connection, with `extra` fields after its own
    /// (encoded: [`crate::h2::client::SendRequest::send_with`]; only the
    /// native client takes them, see [`Pool::encodes_extra`]). The native
    /// client takes the request at once and the future only waits for its
    /// answer (tens of bytes), so the try's future does not keep the
    /// request a second time; hyper's (the fallback) is boxed, so its
    /// larger future does not size every native try.
    fn send(
        &mut self,
        req: Request<UpstreamBody>,
        extra: Bytes,
    ) -> impl Future<Output = Result<Response<H2ResponseBody>, H2Failure>> + use<> {
        use futures_util::FutureExt as _;
        use futures_util::future::Either as Which;
        match self {
            H2Sender::Native(s) => {
                Which::Left(s.send_with(req, extra).map(|answer| match answer {
                    Ok(resp) => Ok(resp.map(Either::Left)),
                    Err(failure) => Err(native_failure(failure)),
                }))
            }
            H2Sender::Hyper(s) => {
                debug_assert!(extra.is_empty(), "hyper's client takes no encoded fields");
                let sent = s.try_send_request(req);
                Which::Right(Box::pin(async move {
                    match sent.await {
                        Ok(resp) => Ok(resp.map(Either::Right)),
                        Err(e) => Err(hyper_failure(e)),
                    }
                }))
            }
        }
    }
}

/// A native HTTP/2 try's failure as the pool tells it: the error's kind,
/// and the request if it never left.
fn native_failure(failure: crate::h2::client::SendFailure<UpstreamBody>) -> H2Failure {
    use crate::h2::client::ClientError;
    let error = match &failure.error {
        ClientError::Refused(_) => UpstreamError::Refused(failure.error.to_string()),
        ClientError::Io(e) if is_tls_error(&**e) => UpstreamError::Tls(error_chain(&**e)),
        other => UpstreamError::Protocol(other.to_string()),
    };
    (error, failure.request)
}

/// A hyper HTTP/2 try's failure, as [`native_failure`].
fn hyper_failure(mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>) -> H2Failure {
    let error = if is_refused_stream(e.error()) {
        UpstreamError::Refused(error_chain(e.error()))
    } else if is_tls_error(e.error()) {
        UpstreamError::Tls(error_chain(e.error()))
    } else {
        UpstreamError::Protocol(error_chain(e.error()))
    };
    (error, e.take_message().map(Box::new))
}

/// Which client speaks HTTP/1.1 to cleartext upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Http1Client {
    /// Portico's own ([`h1::client`]): the exchange runs in the request's
    /// task, an idle connection is a socket alone.
    #[default]
    Native,
    /// hyper's, a task per connection (kept to compare and fall back on).
    Hyper,
}

/// The pool; cheap to share behind an `Arc`.
pub struct Pool {
    conns: Mutex<Conns>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    client: Http1Client,
    http2: Http2Client,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool; spawns a task that prunes idle connections until the pool is dropped.
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        (client, http2): (Http1Client, Http2Client),
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            conns: Mutex::new(Conns::default()),
            connect_timeout,
            idle_timeout,
            client,
            http2,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(prune_loop(Arc::downgrade(&pool)));
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns
            .lock()
            .expect("pool lock poisoned: a panic while holding it")
    }

    /// Sends `req` to `endpoint` over HTTP/1.1 and returns the response with
    /// a body that hands the connection back when read to the end.
    ///
    /// `pending`: a counter and limit of requests allowed to wait for a new
    /// connection at once; over it, the request comes back unsent with
    /// [`UpstreamError::Overloaded`]. `now`: a clock reading of the try's
    /// start, which the idle connections' age is judged by (one clock read
    /// fewer per request).
    ///
    /// A plain function returning the chosen client's future, so the
    /// caller's state holds that future alone (see [`h1::client::send`]).
    ///
    /// `extra`: fields the native client writes after the request's own;
    /// only for a request [`Pool::writes_extra`] says it sends (hyper's
    /// client would not see them: they belong in the map then). `relay`:
    /// the native client may leave the response's fields out of its map,
    /// for the caller to take ([`PooledBody::take_relayed`]).
    pub fn send_http1<'a>(
        self: &'a Arc<Self>,
        endpoint: &'a Endpoint,
        req: Request<UpstreamBody>,
        (pending, now): (Option<(&'a std::sync::atomic::AtomicU32, u32)>, Instant),
        (upgrade, extra, relay): (bool, &'a [Field<'a>], bool),
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + 'a {
        use futures_util::future::BoxFuture;
        use futures_util::future::Either::{Left, Right};
        if !self.writes_extra(Scheme::Http, upgrade) {
            debug_assert!(extra.is_empty(), "fields hyper's client would drop");
            // Behind a vtable, as the connecting path below: their polls
            // stay out of the pooled exchange's, whose stack frame they
            // would otherwise grow on every request.
            let hyper: BoxFuture<'a, _> = Box::pin(self.send_hyper(endpoint, req, pending));
            return Right(hyper);
        }
        // A pooled connection: the exchange's own future, with no `async`
        // level around it to hold the request a second time (callgrind).
        let again = (pending, extra, relay);
        match self.checkout_native(endpoint.authority.as_str(), now) {
            Some(io) => Left(Left(self.exchange_native(endpoint, io, req, again, true))),
            // Connecting first: boxed, so the usual case stays small.
            None => {
                let connect: BoxFuture<'a, _> = Box::pin(self.connect_native(endpoint, req, again));
                Left(Right(connect))
            }
        }
    }

    /// Whether a request to an endpoint of `scheme` goes through the
    /// native HTTP/1.1 client, which writes fields kept beside the
    /// request's map (`extra` of [`Pool::send_http1`]).
    pub fn writes_extra(&self, scheme: Scheme, upgrade: bool) -> bool {
        scheme == Scheme::Http && self.client == Http1Client::Native && !upgrade
    }

    /// Whether a try to `scheme` takes the proxy's added fields apart from
    /// the request's map, encoded for HTTP/2 ([`Pool::send_h2c`]'s
    /// `extra`): h2c with the native HTTP/2 client.
    pub fn encodes_extra(&self, scheme: Scheme, upgrade: bool) -> bool {
        scheme == Scheme::H2c && self.http2 == Http2Client::Native && !upgrade
    }

    /// One exchange on `io` with the native client (`large`: its last
    /// response was large, a new connection's is taken as not); the
    /// response's body hands `io` back once read to its end.
    ///
    /// `reused` (an idle connection, with the route's limit of requests
    /// waiting for a new one): a body-less idempotent request that the
    /// connection ended before any answer to is sent again, once, on a new
    /// connection. The upstream closed that idle connection before the
    /// request reached it, and its close was not yet seen when the
    /// connection was taken (what hyper's pool, and nginx's, do too).
    fn exchange_native<'a>(
        self: &'a Arc<Self>,
        endpoint: &'a Endpoint,
        (io, large): (TcpStream, bool),
        req: Request<UpstreamBody>,
        (pending, extra, relay): Resend<'a>,
        reused: bool,
    ) -> NativeExchange<
        'a,
        impl Future<Output = Result<Response<h1::client::ResponseBody>, h1::client::ClientError>>
        + Send
        + use<>,
    > {
        NativeExchange::Sending {
            send: h1::client::send(io, req, (extra, relay, large)),
            home: Some((Arc::downgrade(self), endpoint.pool_key.clone())),
            again: reused.then_some((self, endpoint, (pending, extra, relay))),
        }
    }

    /// [`Pool::send_http1`] with the native client when no idle connection
    /// is at hand: connects (within the route's limit of requests waiting
    /// for a connection), then sends.
    async fn connect_native(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        req: Request<UpstreamBody>,
        (pending, extra, relay): Resend<'_>,
    ) -> Result<Response<PooledBody>, SendError> {
        let waiting = match pending.map(|(c, max)| crate::breaker::acquire(c, max)) {
            Some(None) => return Err(SendError::unsent(UpstreamError::Overloaded, req)),
            other => other.flatten(),
        };
        let io = match Box::pin(self.connect(endpoint)).await {
            Ok(io) => io,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        // Counted while waiting for the connection only.
        drop(waiting);
        self.exchange_native(endpoint, (io, false), req, (pending, extra, relay), false)
            .await
    }

    /// [`Pool::send_http1`] with hyper's client.
    async fn send_hyper(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut req: Request<UpstreamBody>,
        pending: Option<(&std::sync::atomic::AtomicU32, u32)>,
    ) -> Result<Response<PooledBody>, SendError> {
        let key = endpoint.authority.as_str();
        let mut reused = true;
        let mut sender = match self.checkout_http1(key) {
            Some(s) => s,
            None => {
                reused = false;
                let _waiting = match pending {
                    None => None,
                    Some((counter, max)) => match crate::breaker::acquire(counter, max) {
                        Some(slot) => Some(slot),
                        None => {
                            return Err(SendError::unsent(UpstreamError::Overloaded, req));
                        }
                    },
                };
                match Box::pin(self.connect_http1(endpoint)).await {
                    Ok(s) => s,
                    Err(error) => {
                        return Err(SendError::unsent(error, req));
                    }
                }
            }
        };
        loop {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let home = endpoint.pool_key.clone();
                    return Ok(self.hyper_body(resp, home, sender));
                }
                Err(mut e) => match e.take_message() {
                    // Never started: the idle connection had closed. Once more, fresh.
                    Some(back) if reused => {
                        reused = false;
                        match Box::pin(self.connect_http1(endpoint)).await {
                            Ok(s) => sender = s,
                            Err(error) => {
                                return Err(SendError::unsent(error, back));
                            }
                        }
                        req = back;
                    }
                    _ => {
                        return Err(SendError::sent(UpstreamError::Protocol(error_chain(
                            e.error(),
                        ))));
                    }
                },
            }
        }
    }

    /// Sends `req` to `endpoint` over h2c, sharing one connection per endpoint.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep the request twice in every h2c try's future"
    )]
    pub fn send_h2c<'s>(
        self: &'s Arc<Self>,
        endpoint: &'s Endpoint,
        mut req: Request<UpstreamBody>,
        extra: Bytes,
    ) -> impl Future<Output = Result<Response<H2ResponseBody>, SendError>> + 's {
        // What the future keeps across its waits is the request (once) and
        // the connection's handle: a request turned back goes into the
        // request's own place before the next wait. Under 1,032 bytes, the
        // try's box comes from glibc's per-thread cache; with the request
        // kept twice and the turned-back request and the send's outcome
        // beside them, it was 1,552 and did not.
        async move {
            let key = endpoint.authority.as_str();
            let shared = self.lock().h2_for(key);
            let mut reused = shared.is_some();
            let mut sender = match shared {
                Some(s) => s,
                None => match self.h2c_with_room(endpoint).await {
                    Ok(s) => s,
                    Err(error) => return Err(SendError::unsent(error, req)),
                },
            };
            loop {
                req = match sender.send(req, extra.clone()).await {
                    Ok(resp) => return Ok(resp),
                    Err((_, Some(back))) if reused => *back,
                    Err((error, _)) => return Err(SendError::sent(error)),
                };
                // Closed before the request went out: the requests it
                // turned back share one new connection.
                reused = false;
                self.forget_h2c(key, &sender);
                sender = match self.h2c_with_room(endpoint).await {
                    Ok(s) => s,
                    Err(error) => return Err(SendError::unsent(error, req)),
                };
            }
        }
    }

    /// Sends `req` (in HTTP/1.1 form) to an `https` endpoint, over the
    /// protocol its ALPN chose: HTTP/2 connections are shared per key,
    /// HTTP/1.1 ones pooled like cleartext ones. A reused connection that
    /// closed before the request started is replaced once, as for h2c.
    pub async fn send_tls(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        dial: &TlsDial,
        mut req: Request<UpstreamBody>,
        pending: Option<(&std::sync::atomic::AtomicU32, u32)>,
    ) -> Result<Response<Either<PooledBody, H2ResponseBody>>, SendError> {
        let key = &*dial.key;
        let shared = self.lock().h2_for(key);
        let mut conn = match shared {
            Some(s) => Some(TlsConn::H2(s)),
            None => self.checkout_http1(key).map(TlsConn::H1),
        };
        let mut reused = conn.is_some();
        loop {
            let sender = match conn.take() {
                Some(c) => c,
                None => {
                    let _waiting = match pending.map(|(c, max)| crate::breaker::acquire(c, max)) {
                        Some(None) => {
                            return Err(SendError::unsent(UpstreamError::Overloaded, req));
                        }
                        other => other.flatten(),
                    };
                    match Box::pin(self.tls_connection(endpoint, dial)).await {
                        Ok(c) => c,
                        Err(error) => return Err(SendError::unsent(error, req)),
                    }
                }
            };
            let (error, back) = match sender {
                TlsConn::H1(mut s) => match s.try_send_request(http1_form(req)).await {
                    Ok(resp) => {
                        let home = Arc::from(key);
                        return Ok(self.hyper_body(resp, home, s).map(Either::Left));
                    }
                    Err(mut e) => {
                        let error = if is_tls_error(e.error()) {
                            UpstreamError::Tls(error_chain(e.error()))
                        } else {
                            UpstreamError::Protocol(error_chain(e.error()))
                        };
                        (error, e.take_message())
                    }
                },
                TlsConn::H2(mut s) => match s.send(http2_form(req), Bytes::new()).await {
                    Ok(resp) => return Ok(resp.map(Either::Right)),
                    Err((error, back)) => (error, back.map(|b| *b)),
                },
            };
            match back {
                Some(back) if reused => {
                    reused = false;
                    req = back;
                }
                _ => return Err(SendError::sent(error)),
            }
        }
    }

    /// A connection to an `https` endpoint for a request that found none to
    /// use: one shared by a burst, unless the endpoint is known to speak
    /// HTTP/1.1.
    async fn tls_connection(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        dial: &TlsDial,
    ) -> Result<TlsConn, UpstreamError> {
        if !self.lock().tls_http1.contains(&dial.key) {
            // As for h2c: another, while those that waited with this
            // request took all of the new connection's streams.
            for _ in 0..MAX_H2_PER_KEY {
                match self.shared_tls(endpoint, dial).await? {
                    Some(h2) if h2.has_room() => return Ok(TlsConn::H2(h2)),
                    // Full: one with room (or, at the most kept, the least
                    // loaded), else another made.
                    Some(_) => {
                        if let Some(open) = self.lock().h2_for(&dial.key) {
                            return Ok(TlsConn::H2(open));
                        }
                    }
                    None => break,
                }
            }
            // HTTP/1.1: the connection made is idle for one waiter; the
            // others make their own.
            if let Some(idle) = self.checkout_http1(&dial.key) {
                return Ok(TlsConn::H1(idle));
            }
        }
        self.connect_tls(endpoint, dial).await
    }

    /// The TLS connection on its way to `dial`'s key, or a new one.
    fn shared_tls(self: &Arc<Self>, endpoint: &Endpoint, dial: &TlsDial) -> TlsConnecting {
        use futures_util::FutureExt as _;
        let mut conns = self.lock();
        if let Some(connecting) = conns.tls_connecting.get(&dial.key) {
            return connecting.clone();
        }
        let key = dial.key.clone();
        let (pool, endpoint, dial) = (self.clone(), endpoint.clone(), dial.clone());
        let connecting = async move {
            let made = pool.connect_tls(&endpoint, &dial).await;
            pool.lock().tls_connecting.remove(&dial.key);
            match made? {
                TlsConn::H2(sender) => Ok(Some(sender)),
                TlsConn::H1(sender) => {
                    pool.give_back(&dial.key, sender);
                    Ok(None)
                }
            }
        }
        .boxed()
        .shared();
        conns.tls_connecting.insert(key, connecting.clone());
        connecting
    }

    /// Keeps whether `key`'s last handshake chose HTTP/2.
    fn remember_alpn(&self, key: &str, h2: bool) {
        let mut conns = self.lock();
        match h2 {
            true => conns.tls_http1.remove(key),
            false => conns.tls_http1.insert(key.into()),
        };
    }

    /// A hyper response whose body hands `sender` back to the pool once
    /// read to its end (not after a 101: the connection is then a tunnel).
    fn hyper_body(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        key: Arc<str>,
        sender: http1::SendRequest<UpstreamBody>,
    ) -> Response<PooledBody> {
        let keep = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        let home = keep.then(|| (Arc::downgrade(self), key));
        resp.map(|body| PooledBody {
            inner: Inner::Hyper {
                body,
                sender: keep.then_some(sender),
                done: false,
            },
            home,
        })
    }

    /// The most recently used idle native connection to `key` that is
    /// still open and silent,
    /// and whether its last response was large.
    fn checkout_native(&self, key: &str, now: Instant) -> Option<(TcpStream, bool)> {
        let mut conns = self.lock();
        let stack = conns.native.get_mut(key)?;
        while let Some(idle) = stack.pop() {
            let idle_for = now.saturating_duration_since(idle.since);
            if idle_for < self.idle_timeout && h1::client::usable(&idle.io) {
                return Some((idle.io, idle.large));
            }
        }
        None
    }

    fn give_back_native(&self, key: &str, (io, large): (TcpStream, bool)) {
        let mut conns = self.lock();
        let stack = stack_for(&mut conns.native, key);
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(IdleSocket {
                io,
                since: crate::clock::now(),
                large,
            });
        }
    }

    fn checkout_http1(&self, key: &str) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut conns = self.lock();
        let stack = conns.http1.get_mut(key)?;
        let now = Instant::now();
        // Most recently used first: its peer is the least likely to have timed it out.
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            let idle = &stack[i];
            if idle.sender.is_closed() || now.duration_since(idle.since) >= self.idle_timeout {
                stack.remove(i);
            } else if idle.sender.is_ready() {
                return Some(stack.remove(i).sender);
            }
            // Not ready yet (its connection task has not seen the end of the
            // last exchange): leave it for a later checkout.
        }
        None
    }

    fn give_back(&self, key: &str, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.lock();
        let stack = stack_for(&mut conns.http1, key);
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, UpstreamError> {
        let connect = async {
            match endpoint.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => {
                    let addrs: Vec<SocketAddr> =
                        tokio::net::lookup_host(endpoint.authority.as_str())
                            .await?
                            .collect();
                    let mut last = std::io::Error::other("host resolved to no address");
                    for addr in addrs {
                        match TcpStream::connect(addr).await {
                            Ok(s) => return Ok(s),
                            Err(e) => last = e,
                        }
                    }
                    Err(last)
                }
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!("timed out after {:?}", self.connect_timeout))
            })?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_http1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let stream = self.connect(endpoint).await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Takes `sender` out of the pool, if it is still kept for `key`.
    fn forget_h2c(&self, key: &str, sender: &H2Sender) {
        if let Some(list) = self.lock().h2c.get_mut(key) {
            list.retain(|s| !s.same_connection(sender));
        }
    }

    /// A connection for a request that found none with room: the one being
    /// made, unless the requests that waited for it with this one took all
    /// its streams, then another (at most [`MAX_H2_PER_KEY`] tries).
    async fn h2c_with_room(
        self: &Arc<Self>,
        endpoint: &Endpoint,
    ) -> Result<H2Sender, UpstreamError> {
        let mut got = self.shared_h2c(endpoint).await?;
        for _ in 1..MAX_H2_PER_KEY {
            if got.has_room() {
                break;
            }
            got = self.shared_h2c(endpoint).await?;
        }
        Ok(got)
    }

    /// The endpoint's h2c connection: the open one, else the one on its
    /// way, else a new one (made once, however many requests wait for it).
    fn shared_h2c(self: &Arc<Self>, endpoint: &Endpoint) -> Connecting {
        use futures_util::FutureExt as _;
        let key = endpoint.authority.as_str();
        let mut conns = self.lock();
        if let Some(open) = conns.h2_for(key) {
            let open: Result<H2Sender, UpstreamError> = Ok(open);
            return futures_util::future::ready(open).boxed().shared();
        }
        if let Some(connecting) = conns.h2c_connecting.get(key) {
            return connecting.clone();
        }
        let (pool, endpoint) = (self.clone(), endpoint.clone());
        let connecting = async move {
            let made = pool.connect_h2c(&endpoint).await;
            // Made or failed: the next request that finds no connection
            // tries again.
            pool.lock()
                .h2c_connecting
                .remove(endpoint.authority.as_str());
            made
        }
        .boxed()
        .shared();
        conns.h2c_connecting.insert(key.into(), connecting.clone());
        connecting
    }

    async fn connect_h2c(&self, endpoint: &Endpoint) -> Result<H2Sender, UpstreamError> {
        let stream = self.connect(endpoint).await?;
        let sender = self.h2_handshake(stream).await?;
        self.lock()
            .add_h2(endpoint.authority.as_str(), sender.clone());
        Ok(sender)
    }

    /// A new TLS connection to `endpoint`: TCP within the connect timeout,
    /// then the handshake within it again; ALPN decides HTTP/2 (the
    /// connection then shared under the dial's key) or HTTP/1.1.
    async fn connect_tls(
        &self,
        endpoint: &Endpoint,
        dial: &TlsDial,
    ) -> Result<TlsConn, UpstreamError> {
        let stream = self.connect(endpoint).await?;
        let connector = tokio_rustls::TlsConnector::from(dial.config.clone());
        let tls = tokio::time::timeout(
            self.connect_timeout,
            connector.connect(dial.name.clone(), stream),
        )
        .await
        .map_err(|_| {
            UpstreamError::Tls(format!(
                "handshake timed out after {:?}",
                self.connect_timeout
            ))
        })?
        .map_err(|e| UpstreamError::Tls(error_chain(&e)))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        self.remember_alpn(&dial.key, h2);
        if h2 {
            let sender = self.h2_handshake(tls).await?;
            self.lock().add_h2(&dial.key, sender.clone());
            return Ok(TlsConn::H2(sender));
        }
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_BUFFER)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream TLS connection ended with an error");
            }
        });
        Ok(TlsConn::H1(sender))
    }

    /// An HTTP/2 connection on `io` with the pool's client, its task
    /// spawned.
    async fn h2_handshake<I>(&self, io: I) -> Result<H2Sender, UpstreamError>
    where
        I: crate::conn_io::Io,
    {
        match self.http2 {
            Http2Client::Native => {
                let config = crate::h2::client_conn::Config {
                    stream_window: UPSTREAM_H2_WINDOW,
                    connection_window: 16 * UPSTREAM_H2_WINDOW,
                    ..Default::default()
                };
                let keep_alive = crate::h2::client::KEEP_ALIVE;
                Ok(H2Sender::Native(crate::h2::client::connect(
                    io, config, keep_alive,
                )))
            }
            Http2Client::Hyper => hyper_h2_handshake(io).await.map(H2Sender::Hyper),
        }
    }

    /// Drops idle connections that are closed or past the idle timeout.
    fn prune(&self) {
        let now = Instant::now();
        let mut conns = self.lock();
        conns.http1.retain(|_, stack| {
            stack.retain(|i| {
                !i.sender.is_closed() && now.duration_since(i.since) < self.idle_timeout
            });
            !stack.is_empty()
        });
        conns.native.retain(|_, stack| {
            stack.retain(|i| {
                now.duration_since(i.since) < self.idle_timeout && h1::client::usable(&i.io)
            });
            !stack.is_empty()
        });
        conns.h2c.retain(|_, list| {
            list.retain(|s| !s.is_closed());
            !list.is_empty()
        });
    }

    /// Idle HTTP/1.1 connections currently pooled (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        let conns = self.lock();
        conns.http1.values().map(Vec::len).sum::<usize>()
            + conns.native.values().map(Vec::len).sum::<usize>()
    }
}

/// An upstream connection made over TLS: ALPN chose its protocol.
enum TlsConn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(H2Sender),
}

/// A hyper HTTP/2 client connection on `io` (h2c or TLS), its task spawned.
///
/// One task per connection: hyper runs the connection's frames, and per
/// request a future that waits for the response (and one that sends the
/// request's body, when it has one), on its executor. With tokio's, those
/// were two tasks spawned per gRPC call and a chain of wake-ups between
/// four tasks; [`StreamExecutor`] queues them for the connection's own
/// task instead, as the HTTP/2 server does with its streams.
async fn hyper_h2_handshake<I>(io: I) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let executor = StreamExecutor::default();
    let (sender, conn) = http2::Builder::new(executor.clone())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(UPSTREAM_H2_WINDOW)
        .initial_connection_window_size(16 * UPSTREAM_H2_WINDOW)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = ServeStreams::new(conn, executor).await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// `req` as HTTP/1.1 wants it: origin form, the authority in `Host`
/// (the proxy prepares requests for `https` endpoints this way).
fn http1_form(mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
    if req.version() == http::Version::HTTP_2 {
        if let Some(authority) = req.uri().authority()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(http::header::HOST, host);
        }
        let path = req.uri().path_and_query().cloned();
        *req.uri_mut() = path.map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
        *req.version_mut() = http::Version::HTTP_11;
    }
    req
}

/// `req` as HTTP/2 over TLS wants it: `https` and the `Host` as the
/// `:authority`.
fn http2_form(mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
    if req.version() != http::Version::HTTP_2 {
        let host = req.headers_mut().remove(http::header::HOST);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = host.and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
    }
    req
}

async fn prune_loop(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_secs(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.prune(),
            None => return,
        }
    }
}

/// What a native exchange needs to send its request again: the route's
/// limit of requests waiting for a new connection, and the fields written
/// beside the request's map.
type Resend<'a> = (
    Option<(&'a std::sync::atomic::AtomicU32, u32)>,
    &'a [Field<'a>],
    bool,
);

/// Where a request that a reused connection left unanswered goes again:
/// the pool, the endpoint, and what [`Resend`] keeps.
type Again<'a> = (&'a Arc<Pool>, &'a Endpoint, Resend<'a>);

pin_project_lite::pin_project! {
    /// [`Pool::exchange_native`]'s future: the exchange, then (rarely) the
    /// same request on a new connection. Written out rather than as
    /// combinators, which held a second copy of the response while it was
    /// handed on (callgrind).
    #[project = NativeProj]
    enum NativeExchange<'a, F> {
        Sending {
            #[pin]
            send: F,
            home: Option<(Weak<Pool>, Arc<str>)>,
            again: Option<Again<'a>>,
        },
        Again {
            again: futures_util::future::BoxFuture<'a, Result<Response<PooledBody>, SendError>>,
        },
    }
}

impl<F> Future for NativeExchange<'_, F>
where
    F: Future<Output = Result<Response<h1::client::ResponseBody>, h1::client::ClientError>>,
{
    type Output = Result<Response<PooledBody>, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (pool, endpoint, resend, parts) = match self.as_mut().project() {
            NativeProj::Again { again } => return again.as_mut().poll(cx),
            NativeProj::Sending { send, home, again } => match std::task::ready!(send.poll(cx)) {
                Ok(resp) => {
                    return Poll::Ready(Ok(resp.map(|body| PooledBody {
                        inner: Inner::Native(body),
                        home: home.take(),
                    })));
                }
                Err(h1::client::ClientError::Unanswered(back)) => match again.take() {
                    Some((pool, endpoint, resend)) => (pool, endpoint, resend, back.0),
                    None => return Poll::Ready(Err(SendError::unanswered(back))),
                },
                Err(e) => {
                    let error = UpstreamError::Protocol(error_chain(&e));
                    return Poll::Ready(Err(SendError::sent(error)));
                }
            },
        };
        let req = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
        let again = Box::pin(pool.connect_native(endpoint, req, resend));
        self.set(NativeExchange::Again { again });
        self.poll(cx)
    }
}

/// An upstream HTTP/1.1 response body that returns its connection to the
/// pool once it has been read to the end.
///
/// Kept small (120 bytes), so that a response with it stays within 256
/// bytes: each move of a response (returned from phase to phase, a dozen
/// per request) is then one of `memcpy`'s short copies, about 30
/// instructions instead of 64 (callgrind). A size test holds it there.
pub struct PooledBody {
    inner: Inner,
    /// The pool and the key the connection goes back to: a cleartext
    /// endpoint's [`Endpoint::pool_key`] (a reference count, no allocation
    /// per response), or a TLS connection's key.
    home: Option<(Weak<Pool>, Arc<str>)>,
}

/// The body as one of the two clients reads it.
enum Inner {
    /// hyper's, with the sender that goes back to the pool. `done`: it
    /// returned its end (hyper's `is_end_stream` does not always say so
    /// after a chunked body's last chunk).
    Hyper {
        body: Incoming,
        sender: Option<http1::SendRequest<UpstreamBody>>,
        done: bool,
    },
    /// The native client's, which holds its connection (and says it ended
    /// once it has, or failed).
    Native(h1::client::ResponseBody),
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("ended", &self.ended())
            .finish()
    }
}

impl PooledBody {
    fn finish(&mut self) {
        let Some((pool, key)) = self.home.take() else {
            return;
        };
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match &mut self.inner {
            Inner::Hyper { sender, .. } => {
                if let Some(sender) = sender.take().filter(|s| !s.is_closed()) {
                    pool.give_back(&key, sender);
                }
            }
            Inner::Native(body) => {
                if let Some(idle) = body.reusable() {
                    pool.give_back_native(&key, idle);
                }
            }
        }
    }

    /// The response's fields, when the native client relayed its head
    /// (they are then not in the response's map).
    pub fn take_relayed(&mut self) -> Option<h1::relay::Relayed> {
        match &mut self.inner {
            Inner::Native(body) => body.take_relayed(),
            Inner::Hyper { .. } => None,
        }
    }

    /// Read to its end (or empty from the start).
    fn ended(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, done, .. } => *done || body.is_end_stream(),
            Inner::Native(body) => body.is_end_stream(),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = match &mut self.inner {
            Inner::Hyper { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Native(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        };
        match &polled {
            Poll::Ready(None) => {
                if let Inner::Hyper { done, .. } = &mut self.inner {
                    *done = true;
                }
                self.finish();
            }
            // The last bytes read: the connection goes back to the pool now,
            // not once they are written on. The client has them as soon as
            // they are, and its next request, on a connection served by
            // another thread, found this one still out and opened another.
            Poll::Ready(Some(Ok(_))) if matches!(self.inner, Inner::Native(_)) && self.ended() => {
                self.finish();
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken body: the connection is not reusable.
                self.home = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Native(body) => body.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to the end (or empty from the start): the connection is clean.
        if self.ended() {
            self.finish();
        }
    }
}

/// The error and its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A pool with the gateway's usual timeouts, and `addr` as an endpoint.
    fn pool_to(addr: std::net::SocketAddr) -> (Arc<Pool>, Endpoint) {
        let pool = Pool::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            (Http1Client::Native, Http2Client::Native),
        );
        let endpoint = Endpoint::from_static(
            addr.to_string().parse().unwrap(),
            &crate::health::HealthRegistry::default(),
        );
        (pool, endpoint)
    }

    /// Reads from `s` until a head's end; the head read.
    async fn head(s: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a head's end: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(seen).unwrap()
    }

    /// An idle connection the upstream closes as the next request reaches
    /// it: the request goes again on a new connection, with the fields
    /// kept beside its map as well as its own.
    #[tokio::test]
    async fn a_request_an_idle_connection_left_unanswered_goes_again_with_its_added_fields() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut first, _) = l.accept().await.unwrap();
            let mut heads = vec![head(&mut first).await];
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")
                .await
                .unwrap();
            // The second request reaches a connection its upstream is
            // closing: read, unanswered.
            heads.push(head(&mut first).await);
            drop(first);
            let (mut second, _) = l.accept().await.unwrap();
            heads.push(head(&mut second).await);
            second
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb")
                .await
                .unwrap();
            heads
        });
        let (pool, endpoint) = pool_to(addr);
        let name = HeaderName::from_static("x-forwarded-for");
        let value = HeaderValue::from_static("192.0.2.7");
        let extra = [(&name, &value)];
        for want in ["a", "b"] {
            let req = Request::builder()
                .uri("/p")
                .header("host", "a")
                .body(Either::Right(Full::new(Bytes::new())))
                .unwrap();
            let resp = pool
                .send_http1(
                    &endpoint,
                    req,
                    (None, Instant::now()),
                    (false, &extra, false),
                )
                .await
                .unwrap_or_else(|e| panic!("{:?}", e.error));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, want);
        }
        let heads = upstream.await.unwrap();
        let sent = "GET /p HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 192.0.2.7\r\n\r\n";
        assert_eq!(heads, [sent, sent, sent]);
    }

    /// The hint that a connection's last response was large goes back to
    /// the pool with the socket and comes out with it: after a 16 KiB
    /// answer, the next head (a 2-byte answer's) is read into a relay
    /// buffer, the one the 16 KiB body went through; after that small
    /// answer, the next is read into a usual buffer again.
    #[tokio::test]
    async fn a_pooled_connections_last_large_answer_sizes_its_next_heads_read() {
        const LEN: usize = 16 * 1024;
        let bodies = [LEN, 2, 2];
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for len in bodies {
                head(&mut s).await;
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
                answer.resize(answer.len() + len, b'x');
                s.write_all(&answer).await.unwrap();
            }
        });
        let (pool, endpoint) = pool_to(addr);
        // Where each answer's pieces lay.
        let mut at = Vec::new();
        // The upstream takes one connection: a request that did not reuse
        // it would wait for ever.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for len in bodies {
            let req = Request::builder()
                .uri("/p")
                .header("host", "a")
                .body(Either::Right(Full::new(Bytes::new())))
                .unwrap();
            let exchange = async {
                let resp = pool
                    .send_http1(&endpoint, req, (None, Instant::now()), (false, &[], false))
                    .await
                    .unwrap_or_else(|e| panic!("{:?}", e.error));
                let mut body = resp.into_body();
                let (mut got, mut pieces) = (0, Vec::new());
                while let Some(frame) = body.frame().await {
                    let data = frame.unwrap().into_data().unwrap();
                    got += data.len();
                    pieces.push(data.as_ptr() as usize);
                }
                (got, pieces)
            };
            let (got, pieces) = tokio::time::timeout_at(deadline, exchange)
                .await
                .expect("answered on the one connection");
            assert_eq!(got, len);
            at.push(pieces);
        }
        upstream.await.unwrap();
        // The 16 KiB body's first piece past the head's read is at the
        // start of a relay buffer; the first 2-byte body lies in the same
        // one, taken again.
        let relay = at[0][1];
        let inside = |p: usize| (relay..relay + crate::buffers::RELAY_SIZE).contains(&p);
        assert!(inside(at[1][0]), "after a large answer: {at:?}");
        assert!(!inside(at[2][0]), "after a small answer: {at:?}");
    }

    /// An h2c origin on its own runtime and thread that holds every
    /// request until `release` is notified, telling `arrived` of each.
    /// An h2c origin whose connections stay until `close` is notified,
    /// then go: with a graceful GOAWAY (`graceful`), or closed outright.
    /// Each closed connection is reported on the channel returned.
    async fn closing_h2c_origin(
        graceful: bool,
        close: Arc<tokio::sync::Notify>,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (io, _) = l.accept().await.unwrap();
                let (closed_tx, close) = (closed_tx.clone(), close.clone());
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(io), service);
                    let mut conn = Box::pin(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = close.notified() => {
                            if graceful {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.as_mut().await;
                            }
                        }
                    }
                    // Not graceful: dropped here, closed.
                    drop(conn);
                    let _ = closed_tx.send(());
                });
            }
        });
        (addr, closed)
    }

    /// An h2c connection that the upstream closed, with a GOAWAY or
    /// without, is replaced: every request is answered on a new one, with
    /// either client.
    #[tokio::test]
    async fn an_h2c_connection_the_upstream_closed_is_replaced() {
        for client in [Http2Client::Native, Http2Client::Hyper] {
            for graceful in [true, false] {
                let close = Arc::new(tokio::sync::Notify::new());
                let (addr, mut closed) = closing_h2c_origin(graceful, close.clone()).await;
                let (_, endpoint) = pool_to(addr);
                let pool = Pool::new(
                    Duration::from_secs(5),
                    Duration::from_secs(60),
                    (Http1Client::Native, client),
                );
                for n in 0..5 {
                    let req = Request::builder()
                        .uri(format!("http://a/{n}"))
                        .version(http::Version::HTTP_2)
                        .body(Either::Right(Full::new(Bytes::from(n.to_string()))))
                        .unwrap();
                    let what = format!("{client:?}, graceful {graceful}, request {n}");
                    let resp = match pool.send_h2c(&endpoint, req, Bytes::new()).await {
                        Ok(resp) => resp,
                        Err(e) => panic!("{what}: {}", e.error),
                    };
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body, n.to_string(), "{what}");
                    // The origin closes that connection, and the pool sees
                    // it (a request sent before the close is read
                    // would fail with either client: whether the upstream
                    // processed it cannot be known).
                    close.notify_one();
                    let wait = tokio::time::timeout(Duration::from_secs(10), closed.recv());
                    assert!(matches!(wait.await, Ok(Some(()))), "{what}: not closed");
                    let key = endpoint.authority.as_str();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let open = |p: &Pool| {
                        p.lock()
                            .h2c
                            .get(key)
                            .is_some_and(|l| l.iter().any(|s| !s.is_closed()))
                    };
                    while open(&pool) {
                        assert!(Instant::now() < deadline, "{what}: never seen closed");
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
    }

    /// Tells a test of each request its origin holds, and is notified to
    /// let them all go.
    type Hold = (
        tokio::sync::mpsc::UnboundedSender<()>,
        Arc<tokio::sync::Notify>,
    );

    /// An h2c origin that echoes each request's body, counting the
    /// connections it accepts. With `limit`, it allows that many concurrent
    /// streams per connection; with `hold`, it tells of each request and
    /// holds it until released.
    async fn counting_h2c_origin(
        limit: Option<u32>,
        hold: Option<Hold>,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = l.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let hold = hold.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let hold = hold.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        if let Some((arrived, release)) = hold {
                            let released = release.notified();
                            let _ = arrived.send(());
                            released.await;
                        }
                        Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                    }
                });
                let mut server =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                if let Some(limit) = limit {
                    server.max_concurrent_streams(limit);
                }
                tokio::spawn(server.serve_connection(TokioIo::new(io), service));
            }
        });
        (addr, accepted)
    }

    /// A burst of first requests to an h2c endpoint opens one connection,
    /// which all of them share, with either client; so does a burst after
    /// that connection closed.
    #[tokio::test]
    async fn a_burst_of_first_h2c_requests_opens_one_connection() {
        for client in [Http2Client::Native, Http2Client::Hyper] {
            let (addr, accepted) = counting_h2c_origin(None, None).await;
            let (_, endpoint) = pool_to(addr);
            let pool = Pool::new(
                Duration::from_secs(5),
                Duration::from_secs(60),
                (Http1Client::Native, client),
            );
            let burst = |round: usize| {
                futures_util::future::join_all((0..32).map(|n| {
                    let req = Request::builder()
                        .uri(format!("http://a/{n}"))
                        .version(http::Version::HTTP_2)
                        .body(Either::Right(Full::new(Bytes::from(format!(
                            "{round}-{n}"
                        )))))
                        .unwrap();
                    let (pool, endpoint) = (pool.clone(), endpoint.clone());
                    async move {
                        let resp = pool.send_h2c(&endpoint, req, Bytes::new()).await;
                        let resp = resp.unwrap_or_else(|e| panic!("{client:?}: {}", e.error));
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(body, format!("{round}-{n}"), "{client:?}");
                    }
                }))
            };
            burst(0).await;
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{client:?}"
            );
            burst(1).await;
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{client:?}: reused"
            );
            assert!(
                pool.lock().h2c_connecting.is_empty(),
                "{client:?}: nothing left on its way"
            );
        }
    }

    /// A request for `/n` over HTTP/2 with the body `n`, through `pool` to
    /// `endpoint`: its response's body.
    fn h2c_call(
        pool: &Arc<Pool>,
        endpoint: &Endpoint,
        n: usize,
    ) -> impl Future<Output = Bytes> + use<> {
        let req = Request::builder()
            .uri(format!("http://a/{n}"))
            .version(http::Version::HTTP_2)
            .body(Either::Right(Full::new(Bytes::from(n.to_string()))))
            .unwrap();
        let (pool, endpoint) = (pool.clone(), endpoint.clone());
        async move {
            let resp = pool.send_h2c(&endpoint, req, Bytes::new()).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    }

    /// Requests past an h2c upstream's limit of concurrent streams go over
    /// more connections (the native client; hyper's queues them on one),
    /// and later requests reuse those connections.
    #[tokio::test]
    async fn requests_past_an_h2c_upstreams_stream_limit_open_more_connections() {
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Notify::new());
        let (addr, accepted) =
            counting_h2c_origin(Some(2), Some((arrived_tx, release.clone()))).await;
        let (_, endpoint) = pool_to(addr);
        let pool = Pool::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            (Http1Client::Native, Http2Client::Native),
        );
        let call = |n: usize| h2c_call(&pool, &endpoint, n);
        // The first opens the connection and learns its limit.
        let (body, ()) = tokio::join!(call(0), async {
            arrived.recv().await.unwrap();
            release.notify_waiters();
        });
        assert_eq!(body, "0");
        for round in 0..2 {
            // Six at once, two streams a connection: all six reach the
            // origin before any is answered.
            let calls = futures_util::future::join_all((1..=6).map(call));
            let (bodies, ()) = tokio::join!(calls, async {
                for _ in 0..6 {
                    let got = tokio::time::timeout(Duration::from_secs(10), arrived.recv()).await;
                    assert!(
                        matches!(got, Ok(Some(()))),
                        "round {round}: not all in flight"
                    );
                }
                release.notify_waiters();
            });
            let want: Vec<Bytes> = (1..=6).map(|n| Bytes::from(n.to_string())).collect();
            assert_eq!(bodies, want);
            // Three connections carry them, the second round as the first.
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                3,
                "round {round}"
            );
        }
    }

    fn holding_h2c_origin(
        arrived: tokio::sync::mpsc::UnboundedSender<()>,
        release: Arc<tokio::sync::Notify>,
    ) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::from_std(l).unwrap();
                let (io, _) = l.accept().await.unwrap();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (arrived, release) = (arrived.clone(), release.clone());
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let released = release.notified();
                        let _ = arrived.send(());
                        released.await;
                        Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), service)
                        .await;
            });
        });
        addr
    }

    /// Requests in flight on a shared h2c connection add no task to the
    /// gateway's runtime, with either client: their request bodies are
    /// sent, and their responses waited for, by the connection's own task.
    #[tokio::test]
    async fn h2c_requests_in_flight_run_in_their_connections_task() {
        for client in [Http2Client::Native, Http2Client::Hyper] {
            h2c_requests_in_flight_add_no_task(client).await;
        }
    }

    async fn h2c_requests_in_flight_add_no_task(client: Http2Client) {
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Notify::new());
        let addr = holding_h2c_origin(arrived_tx, release.clone());
        let (_, endpoint) = pool_to(addr);
        let pool = Pool::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            (Http1Client::Native, client),
        );
        let call = |n: usize| h2c_call(&pool, &endpoint, n);
        // The first call opens the connection (its task stays).
        let first = call(0);
        let first = async {
            let (body, ()) = tokio::join!(first, async {
                arrived.recv().await.unwrap();
                release.notify_waiters();
            });
            body
        };
        assert_eq!(first.await, "0");
        let metrics = tokio::runtime::Handle::current().metrics();
        let idle = metrics.num_alive_tasks();
        const N: usize = 8;
        let calls = futures_util::future::join_all((1..=N).map(call));
        let (bodies, in_flight) = tokio::join!(calls, async {
            for _ in 0..N {
                arrived.recv().await.unwrap();
            }
            let in_flight = metrics.num_alive_tasks();
            release.notify_waiters();
            in_flight
        });
        let want: Vec<Bytes> = (1..=N).map(|n| Bytes::from(n.to_string())).collect();
        assert_eq!(bodies, want);
        assert_eq!(
            in_flight, idle,
            "{client:?}: {N} requests in flight added tasks to the runtime"
        );
    }
}
