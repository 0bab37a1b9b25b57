//! The downstream listeners: accept connections, serve HTTP/1.1 and h2c
//! (prior knowledge) on the cleartext port and HTTPS on the TLS port,
//! enforce connection limits, and drain gracefully on shutdown.
//!
//! A cleartext connection's first bytes tell HTTP/1.1 from h2c and refuse
//! other HTTP versions with 505 ([`crate::protocol`]); the native HTTP/1.1
//! server ([`crate::h1`]) or hyper's HTTP/2 server then serves it (HTTP/2
//! streams in the connection's task: [`crate::streams`]). On the TLS
//! listener the handshake comes first (within the header read timeout,
//! counted by outcome in
//! [`crate::tls::TlsStats`]); ALPN `h2` goes straight to HTTP/2, anything
//! else through the same first-bytes check. Both listeners share the
//! connection caps, the idle and send timeouts, and the drain; requests on
//! the TLS one carry `X-Forwarded-Proto: https` and, when configured,
//! `Strict-Transport-Security` on their responses.
//!
//! Limits and why they are where they are:
//! - header read timeout: from the moment a connection waits for a request
//!   head until the head is complete, so it also bounds how long an idle
//!   keep-alive connection waits for its next request (the native HTTP/1.1
//!   server, [`crate::h1::server`], runs it itself; hyper's HTTP/2 server
//!   needs a timer on its builder, set here).
//! - maximum head size: a head that does not fit is refused with 431
//!   (`max_header_list_size` for HTTP/2).
//! - idle timeout: no bytes in either direction for this long closes the
//!   connection gracefully (in-flight requests still finish); see
//!   [`crate::idle`]: the hot path pays one relaxed store per read or write.
//!   A connection idle because its client stopped reading (the last write
//!   could not proceed) is closed at once: it would never finish. So the
//!   idle timeout is also the send timeout. A connection still open one
//!   idle period after a graceful close was asked is closed.
//! - buffering per connection: the native HTTP/1.1 server holds no buffer
//!   while a connection waits for a request, reads at most the head size
//!   limit (64 KiB) for a head and one frame of body at a time; hyper's
//!   HTTP/2 send buffer per stream is bounded by [`MAX_SEND_BUFFER`]; past them, back-pressure reaches the upstream
//!   (whose own read is bounded: [`crate::buffers::RELAY_SIZE`] for the
//!   native client, [`crate::pool::UPSTREAM_BUFFER`] for hyper's).
//! - connection caps, gateway-wide and per client IP, and the backoff on
//!   accept errors: see [`crate::caps`].
//! - drain: at shutdown, connections and tunnels ([`crate::tunnel`]) get
//!   the drain timeout to finish; tunnels still open then are closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::header::{self, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::body::RequestBody;
use crate::caps::{AcceptErrors, ConnectionCaps, Permit};
use crate::conn_io::LazyTcp;
use crate::drain::{CloseOnDrop, Drain};
use crate::h1;
use crate::h1::response::Answer;
use crate::idle::{self, Activity, ActivityIo, IdleClock, WakeGate};
use crate::protocol::{Protocol, Rewind};
use crate::proxy::{Peer, Proxy};
use crate::streams::{ServeStreams, StreamExecutor};
use crate::tls::{Handshake, ServerTls};

/// Default time allowed for a client to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest request head (request line and headers).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// Default time a connection may carry no bytes before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time in-flight requests get to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time Linux holds a new connection that says nothing before
/// handing it over anyway (`TCP_DEFER_ACCEPT`): one second, as nginx's
/// `deferred` and HAProxy's `defer-accept`. The kernel counts it in SYN-ACK
/// retransmissions, so a silent client is accepted with its answer to the
/// first one (about 1 s; 3 s if that is lost), then has the header read
/// timeout like any connection. Longer would keep silent clients in the
/// listen backlog and out of the per-IP cap, and gain nothing: clients
/// that speak do so within milliseconds.
pub const DEFAULT_DEFER_ACCEPT: Duration = Duration::from_secs(1);
/// Default length asked for a listener's backlog. Linux caps two queues
/// with it (each at most `net.core.somaxconn`, 4096 since 5.4): completed
/// connections waiting for `accept`, and handshakes not yet done, which
/// with [`DEFAULT_DEFER_ACCEPT`] include silent clients held for their
/// first bytes. The 128 that std and tokio ask for is filled by one burst
/// of new connections: with the first queue full the kernel drops SYNs (a
/// client waits a second for its retransmission); with the second full it
/// answers with SYN cookies, which skip the deferral (or drops, with
/// cookies off). nginx asks for 511, HAProxy for its connection limit.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Most response bytes buffered per HTTP/2 stream for a client that has
/// not taken them yet (hyper's default is 400 KiB).
pub const MAX_SEND_BUFFER: usize = 64 * 1024;

/// The two HTTP servers a connection may get, configured once.
#[derive(Debug)]
struct Protocols {
    http1: http1::Builder,
    /// HTTP/2's settings; [`Protocols::http2`] gives each connection its
    /// server, with an executor of its own ([`crate::streams`]).
    max_header_list_size: u32,
    max_concurrent_streams: u32,
    /// Bounds the first read too (before hyper's own clock starts).
    header_read_timeout: Duration,
    /// The native HTTP/1.1 server's limits; `None`: hyper's serves HTTP/1.1.
    native: Option<h1::server::Settings>,
    /// The native HTTP/2 server's limits; `None`: hyper's serves HTTP/2.
    native_h2: Option<crate::h2::server::Settings>,
}

impl Protocols {
    fn new(settings: &ServerSettings) -> Protocols {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_size.max(8192))
            .keep_alive(true);
        let native = (settings.http1 == Http1Server::Native).then_some(h1::server::Settings {
            header_read_timeout: settings.header_read_timeout,
            max_head: settings.max_header_size,
        });
        let native_h2 =
            (settings.http2 == Http2Server::Native).then_some(crate::h2::server::Settings {
                max_concurrent_streams: settings.max_concurrent_streams,
                max_header_list_size: settings.max_header_size as u32,
            });
        Protocols {
            http1: h1,
            native_h2,
            max_header_list_size: settings.max_header_size as u32,
            max_concurrent_streams: settings.max_concurrent_streams,
            header_read_timeout: settings.header_read_timeout,
            native,
        }
    }

    /// One connection's HTTP/2 server, its streams run by `executor`.
    ///
    /// No keep-alive PINGs: the idle timeout already closes a connection
    /// whose peer went away (no bytes for that long), and a PING every
    /// 30 s kept an idle connection from ever reaching the 60 s idle
    /// timeout. Without them hyper also skips its per-frame PING
    /// bookkeeping (a lock per frame received).
    fn http2(&self, executor: StreamExecutor) -> http2::Builder<StreamExecutor> {
        let mut h2 = http2::Builder::new(executor);
        h2.timer(TokioTimer::new())
            .max_header_list_size(self.max_header_list_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buf_size(MAX_SEND_BUFFER);
        h2
    }
}

/// Listener limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Time allowed to receive a full request head.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_size: usize,
    /// Close connections that carry no bytes for this long.
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Most client connections open at once (tunnels included); past it a
    /// new one is answered `503 too_many_connections` and closed. `None`:
    /// derived from `RLIMIT_NOFILE` ([`crate::caps::derived_max_connections`]).
    pub max_connections: Option<usize>,
    /// Most client connections from one IP address; past it `429
    /// too_many_client_connections`. `None`: no per-IP cap.
    pub max_connections_per_ip: Option<usize>,
    /// Which server speaks HTTP/1.1 on the gateway's listeners.
    pub http1: Http1Server,
    /// Which server speaks HTTP/2 on the gateway's listeners.
    pub http2: Http2Server,
    /// Have Linux queue a new connection for accepting only once its first
    /// bytes arrive, or this long passes (`TCP_DEFER_ACCEPT`, whole
    /// seconds; nothing elsewhere): one wake-up per new connection instead
    /// of two (the `sockopt` module). `None`: accepted with the handshake.
    pub defer_accept: Option<Duration>,
}

/// Which server speaks HTTP/2 on the gateway's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http2Server {
    /// The native server ([`crate::h2::server`]): the connection's streams
    /// in its own task, HPACK without a dynamic table on the way out.
    #[default]
    Native,
    /// hyper's (the h2 crate), as before issue 15: kept to compare and to
    /// fall back on.
    Hyper,
}

/// Which server speaks HTTP/1.1 on the gateway's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Server {
    /// The native server ([`crate::h1::server`]): no buffer held while a
    /// connection is idle, the request's future polled on its own task.
    #[default]
    Native,
    /// hyper's HTTP/1 server, as before issue 15.
    Hyper,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_concurrent_streams: 256,
            max_connections: None,
            max_connections_per_ip: None,
            http1: Http1Server::default(),
            http2: Http2Server::default(),
            defer_accept: Some(DEFAULT_DEFER_ACCEPT),
        }
    }
}

/// The listeners a gateway serves, sharing one set of connection caps and
/// one drain.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Cleartext HTTP/1.1 and h2c (`--listen`); `None` when turned off.
    pub plain: Option<TcpListener>,
    /// HTTPS (`--tls-listen`): ALPN chooses HTTP/2 or HTTP/1.1.
    pub tls: Option<(TcpListener, ServerTls)>,
}

impl Listeners {
    /// One cleartext listener.
    pub fn plain(listener: TcpListener) -> Listeners {
        Listeners {
            plain: Some(listener),
            tls: None,
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    proxy: Arc<Proxy>,
    /// The embedder's layers around the proxy, if any.
    layered: Option<crate::service::LayeredService>,
    protocols: Protocols,
    caps: Arc<ConnectionCaps>,
    idle_timeout: Duration,
    /// How long the listeners defer accepting (`ServerSettings::defer_accept`).
    defer_accept: Option<Duration>,
}

impl Shared {
    fn new(
        proxy: Arc<Proxy>,
        layer: Option<&crate::service::DownstreamLayer>,
        settings: &ServerSettings,
    ) -> Shared {
        let max = settings
            .max_connections
            .unwrap_or_else(crate::caps::derived_max_connections);
        let stats = proxy.metrics().caps().clone();
        let caps = ConnectionCaps::new(max, settings.max_connections_per_ip, stats);
        tracing::info!(
            max_connections = max,
            max_connections_per_ip = settings.max_connections_per_ip,
            "connection caps"
        );
        Shared {
            layered: layer.map(|l| l.service(proxy.clone())),
            proxy,
            protocols: Protocols::new(settings),
            caps,
            idle_timeout: settings.idle_timeout,
            defer_accept: settings.defer_accept,
        }
    }
}

/// Serves `proxy` on `listeners` until `shutdown` completes, then stops
/// accepting, asks every connection to finish its in-flight requests, and
/// waits for them up to the drain timeout.
pub async fn serve(
    listeners: Listeners,
    proxy: Arc<Proxy>,
    layer: Option<&crate::service::DownstreamLayer>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let shared = Arc::new(Shared::new(proxy.clone(), layer, &settings));
    // Closed at the end below, or when this future is dropped before then.
    let closing = CloseOnDrop(Arc::new(Drain::default()));
    // Every connection task holds a clone; when all are dropped, draining is done.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Draining {
        closing: closing.0.clone(),
        _alive: alive_tx,
    };
    let (tls_listener, tls) = match listeners.tls {
        Some((l, t)) => (Some(l), Some(t)),
        None => (None, None),
    };
    // Driven as a set in which each part is polled only when it is woken:
    // `join!` polled all three whenever any one was, so every accepted
    // connection also polled the signal handlers behind `shutdown` (with
    // the stop future made once per loop below, about 700 instructions
    // fewer per accepted connection, callgrind `NEWCONN=1`).
    let mut parts = FuturesUnordered::new();
    parts.push(Either::Left(async {
        shutdown.await;
        let _ = stop_tx.send(true);
    }));
    let plain = accept_loop(listeners.plain, None, &shared, &draining, stop_rx.clone());
    parts.push(Either::Right(plain));
    let tls = accept_loop(tls_listener, tls, &shared, &draining, stop_rx);
    parts.push(Either::Right(tls));
    while parts.next().await.is_some() {}
    drop(parts);
    drop(closing);
    drop(draining);
    drain(&mut alive_rx, &proxy, settings.drain_timeout).await;
    Ok(())
}

/// Accepts on `listener` (none: returns at once) until `stop`, admitting
/// each connection under the caps and serving it on a task of its own.
async fn accept_loop(
    listener: Option<TcpListener>,
    tls: Option<ServerTls>,
    shared: &Arc<Shared>,
    draining: &Draining,
    mut stop: watch::Receiver<bool>,
) {
    let Some(listener) = listener else { return };
    nodelay_for_accepted(&listener);
    let name = if tls.is_some() {
        "gateway-tls"
    } else {
        "gateway"
    };
    if let Some(wait) = shared.defer_accept {
        defer_accept(&listener, name, wait);
    }
    let listener = match crate::conn_io::Acceptor::new(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listener = name, error = %e, "could not take over the listener");
            return;
        }
    };
    let mut errors = AcceptErrors::new(name, Some(shared.proxy.metrics().caps().clone()));
    // Made once, not once per connection accepted (registering a waiter
    // with the channel and removing it again each time).
    let mut stopped = pin!(stop.wait_for(|s| *s));
    loop {
        let accepted = tokio::select! {
            biased;
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                let wait = errors.failed(&e);
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    _ = &mut stopped => return,
                }
            }
        };
        errors.succeeded();
        let permit = match shared.caps.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                // Answered on a task of its own, in the event loop.
                if let Ok(stream) = stream.into_tokio() {
                    shared.caps.refuse(stream, why);
                }
                continue;
            }
        };
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        // Boxed: the connection's future (under 1 kB, a size test keeps it
        // so) is then written once, into its box, and tokio moves a pointer
        // into its task and out again; spawned whole it was copied five
        // times (callgrind).
        let (shared, tls, draining) = (shared.clone(), tls.clone(), draining.clone());
        // Each poll of the connection shares one clock reading (`clock`).
        tokio::spawn(crate::clock::Turns::new(crate::inplace::box_in_place(
            move || serve_connection(stream, permit, peer, shared, tls, draining),
        )));
    }
}

/// `TCP_NODELAY` on the listener: Linux gives an accepted socket the
/// listener's options, so each connection has it without a `setsockopt`
/// of its own (one system call fewer per connection; elsewhere each
/// accepted socket still sets it).
fn nodelay_for_accepted(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "could not set TCP_NODELAY on the listener");
    }
}

/// `TCP_DEFER_ACCEPT` on the listener (Linux; elsewhere nothing): a
/// connection is accepted with its first bytes. A connection whose
/// handshake completed before this call is accepted at once, as before.
fn defer_accept(listener: &TcpListener, name: &str, wait: Duration) {
    #[cfg(target_os = "linux")]
    if let Err(e) = crate::sockopt::set_defer_accept(listener, wait) {
        tracing::warn!(listener = name, error = %e, "could not set TCP_DEFER_ACCEPT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (listener, name, wait);
}

/// A listener bound to `addr` with room for `backlog` connections waiting
/// to be accepted (the kernel caps it: see [`DEFAULT_LISTEN_BACKLOG`]).
/// `SO_REUSEADDR` is set, as std and tokio set it, so a restarted gateway
/// binds while its old connections are in `TIME_WAIT`. Must be called
/// within a tokio runtime.
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Waits for connections and tunnels to finish, both within one drain
/// timeout, then closes the tunnels still open. (Connections still open
/// are closed by the caller dropping the runtime's tasks; a tunnel has no
/// graceful end of its own, so it is closed here, both sides.)
async fn drain(alive: &mut mpsc::Receiver<()>, proxy: &Proxy, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    if tokio::time::timeout_at(deadline, alive.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with connections still open; closing them");
    }
    let tunnels = proxy.tunnels();
    if tokio::time::timeout_at(deadline, tunnels.wait_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tunnels.open(),
            "drain timeout reached with tunnels still open; closing them"
        );
        tunnels.close_all();
        // Closing is dropping two sockets per tunnel: quick, but bounded anyway.
        let _ = tokio::time::timeout(Duration::from_secs(1), tunnels.wait_closed()).await;
    }
}

/// A connection task's part in the drain: told when to close, and counted
/// alive (the sender) for as long as the task runs.
#[derive(Debug, Clone)]
struct Draining {
    closing: Arc<Drain>,
    _alive: mpsc::Sender<()>,
}

/// Serves one accepted connection: cleartext, or TLS first.
///
/// Not an `async` block: the connection's set-up is done here, before its
/// task starts, and each argument is moved into the future that uses it.
/// An `async` block keeps every value it captured for its whole life, even
/// once moved on (200 bytes of every connection's task).
fn serve_connection(
    stream: LazyTcp,
    permit: Permit,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<ServerTls>,
    draining: Draining,
) -> impl Future<Output = ()> {
    // Counted open, and holding its place under the caps, for as long as
    // the socket is open: the guards live in the I/O, which an upgrade
    // hands on to a tunnel. Under TLS the I/O watched for activity is the
    // socket's, so the idle and send timeouts see every byte.
    let guards = (shared.proxy.metrics().open_connection(), permit);
    let active = Activity::new();
    let io = ActivityIo::with_guard(stream, active.clone(), guards);
    match tls {
        None => {
            let conn = Conn {
                peer: Arc::new(shared.proxy.peer(peer, false)),
                active,
                draining,
            };
            Either::Left(serve_detected(io, shared, conn))
        }
        // Boxed: the handshake's state is large, and inline it would size
        // every connection's task, cleartext ones too, for their whole life.
        Some(tls) => Either::Right(crate::inplace::box_in_place(|| {
            serve_tls(io, tls, peer, shared, active, draining)
        })),
    }
}

/// Serves a TLS connection: the handshake (within the header read
/// timeout), then HTTP/2 when ALPN chose it, else detection as in
/// cleartext. A TLS-ALPN-01 validation ends after its handshake.
///
/// A plain function around an `async move` block, as [`serve_connection`].
/// What an idle TLS connection's task holds is kept small (bench/RESULTS.md,
/// thirty-fifth pass: 6.3 kB of its 14.7 kB was this future):
/// - the handshake's future (3.2 kB) is boxed, so it is freed once done,
///   not kept as room in the connection's future for its whole life;
/// - the stream (1.3 kB, rustls's state) is boxed, so each layer that
///   takes it by value (an `async` block keeps what it captured, moved on
///   or not) keeps 8 bytes of it, not 1.3 kB;
/// - what follows the handshake is built in [`serve_handshaken`], a plain
///   function, so its locals are not kept beside the serving future.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in every TLS connection's task"
)]
fn serve_tls(
    io: ActivityIo<LazyTcp, (crate::metrics::ConnectionGuard, Permit)>,
    tls: ServerTls,
    peer: SocketAddr,
    shared: Arc<Shared>,
    active: Arc<Activity>,
    draining: Draining,
) -> impl Future<Output = ()> {
    async move {
        let handshake = Box::pin(tls.accept(io).map(|done| done.map(Box::new)));
        let handshake = idle::timeout(shared.protocols.header_read_timeout, handshake);
        let accepted = tokio::select! {
            accepted = handshake => accepted,
            // Shutting down before the handshake finished: nothing to finish.
            () = draining.closing.closing() => return,
        };
        let stream = match accepted {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tls.stats.count(Handshake::Failed, false);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            None => {
                tls.stats.count(Handshake::Timeout, false);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        if let Some(serving) = serve_handshaken(stream, &tls, peer, shared, (active, draining)) {
            serving.await;
        }
    }
}

/// A TLS connection's stream once its handshake is done.
type Handshaken = Box<
    tokio_rustls::server::TlsStream<ActivityIo<LazyTcp, (crate::metrics::ConnectionGuard, Permit)>>,
>;

/// The serving of a TLS connection whose handshake is done: HTTP/2 when
/// ALPN chose it, else detection as in cleartext; `None` for a
/// TLS-ALPN-01 validation, which ends after its handshake. Counts the
/// handshake; the connection's client is described from the session.
fn serve_handshaken(
    stream: Handshaken,
    tls: &ServerTls,
    peer: SocketAddr,
    shared: Arc<Shared>,
    (active, draining): (Arc<Activity>, Draining),
) -> Option<impl Future<Output = ()> + use<>> {
    let session = stream.get_ref().1;
    if session.alpn_protocol() == Some(crate::tls::alpn::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the answer, and no
        // HTTP is spoken on such a connection (RFC 8737 §3).
        return None;
    }
    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let outcome = if h2 { Handshake::H2 } else { Handshake::Http1 };
    tls.stats.count(outcome, resumed);
    let mut downstream = shared.proxy.peer(peer, true);
    downstream.client_subject = crate::tls::client_subject(session);
    downstream.hsts = tls.hsts.clone();
    let conn = Conn {
        peer: Arc::new(downstream),
        active,
        draining,
    };
    Some(if h2 {
        // The client chose HTTP/2 by ALPN: its preface follows, no sniffing.
        Either::Left(serve_http(
            stream,
            BytesMut::new(),
            Protocol::H2c,
            shared,
            conn,
        ))
    } else {
        Either::Right(serve_detected(stream, shared, conn))
    })
}

/// One connection's own state, handed from phase to phase.
struct Conn {
    /// The client, with the HSTS policy its responses get (TLS only).
    peer: Arc<Peer>,
    active: Arc<Activity>,
    draining: Draining,
}

/// Reads the first bytes to tell HTTP/1 from h2c (505 for other versions),
/// then serves.
///
/// Two phases, one after the other in the same place (`then`): the
/// detection owns the connection's parts and hands them on to the serving.
/// An `async` block awaiting both would keep the parts it was given beside
/// the serving future that took them, for the connection's whole life.
fn serve_detected<I>(io: I, shared: Arc<Shared>, conn: Conn) -> impl Future<Output = ()>
where
    I: h1::server::Io,
{
    detect(io, shared, conn).then(|detected| match detected {
        None => Either::Left(std::future::ready(())),
        Some(d) if d.protocol == Protocol::Unsupported => {
            Either::Right(Either::Left(refuse_version(d.io, d.prefix)))
        }
        Some(d) => Either::Right(Either::Right(serve_http(
            d.io, d.prefix, d.protocol, d.shared, d.conn,
        ))),
    })
}

/// A connection whose protocol is known: its parts, and the bytes read to
/// tell it.
struct Detected<I> {
    io: I,
    prefix: BytesMut,
    protocol: Protocol,
    shared: Arc<Shared>,
    conn: Conn,
}

/// The protocol and the bytes read to tell it; `None`: closed, failed,
/// silent for the header timeout, or shutting down first (nothing to
/// answer or finish).
async fn detect<I>(mut io: I, shared: Arc<Shared>, conn: Conn) -> Option<Detected<I>>
where
    I: h1::server::Io,
{
    let first = idle::timeout(
        shared.protocols.header_read_timeout,
        crate::protocol::detect(&mut io, crate::buffers::take()),
    );
    // Detection first: a client's first bytes are most often in already,
    // and then the drain signal is never polled, so this connection never
    // registers with it and removes itself again (in a random order, half
    // of all connections did).
    let detected = tokio::select! {
        biased;
        detected = first => detected.and_then(Result::ok).flatten(),
        () = conn.draining.closing.closing() => None,
    };
    let (protocol, prefix) = detected?;
    Some(Detected {
        io,
        prefix,
        protocol,
        shared,
        conn,
    })
}

/// Answers an HTTP version the gateway does not speak with 505 and closes.
async fn refuse_version<I: h1::server::Io>(io: I, prefix: BytesMut) {
    let mut io = Rewind::new(prefix.freeze(), io);
    let _ = io.write_all(crate::protocol::VERSION_NOT_SUPPORTED).await;
    let _ = io.shutdown().await;
}

/// Serves HTTP/1.1 or HTTP/2 on `io` (`prefix`: the bytes already read from
/// it) until the connection ends, through the embedder's layers when there
/// are some.
///
/// A plain function returning the serving future, not an `async fn`: an
/// `async fn` level would keep its own copy of `io` and `conn` beside the
/// future it awaits, for the connection's whole life.
fn serve_http<I>(
    io: I,
    prefix: BytesMut,
    protocol: Protocol,
    shared: Arc<Shared>,
    conn: Conn,
) -> impl Future<Output = ()>
where
    I: h1::server::Io,
{
    let Conn {
        peer: downstream,
        active,
        draining,
    } = conn;
    let addr = downstream.addr;
    let idle = IdleClock::new(shared.idle_timeout, active.clone());
    let watch = (idle, active, draining, addr);
    if let Some(layered) = &shared.layered {
        let layered = layered.clone();
        let handle = move |mut req: http::Request<RequestBody>| {
            req.extensions_mut().insert(downstream.clone());
            // Added again for an answer the layers made themselves.
            let hsts = downstream.hsts.clone();
            let call = tower::ServiceExt::oneshot(layered.clone(), req);
            async move {
                let mut resp = call
                    .await
                    .unwrap_or_else(|e| crate::service::answer_error(&e));
                add_hsts(&mut resp, hsts);
                resp
            }
        };
        // Boxed: the layers' futures would otherwise size every connection.
        return Either::Left(Box::pin(serve_with(
            io, prefix, protocol, shared, handle, watch,
        )));
    }
    let proxy = shared.proxy.clone();
    // Not boxed here: the native server boxes each request's exchange
    // once, this future inside it (one allocation per request, not two);
    // serve_hyper boxes it for hyper. The proxy adds the HSTS policy
    // itself (the peer's): added here, the answer was moved once more on
    // every request (callgrind, `memcpy`). The future owns its handles
    // (`Proxy::handle_with`): an `async` block owning them around
    // `Proxy::handle` kept the request a second time in every request's
    // future (280 bytes of a small GET's 5,960-byte exchange).
    let handle = move |req: http::Request<RequestBody>| {
        Proxy::handle_with(proxy.clone(), req, downstream.clone())
    };
    Either::Right(serve_with(io, prefix, protocol, shared, handle, watch))
}

/// `Strict-Transport-Security` on a response of the TLS listener; an
/// upstream that sets its own policy keeps it.
fn add_hsts<B>(resp: &mut http::Response<B>, hsts: Option<HeaderValue>) {
    if let Some(hsts) = hsts {
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(hsts);
    }
}

/// Serves `handle` on `io`: HTTP/2 with hyper's server, HTTP/1.1 with the
/// native one ([`h1::server`]) or, when configured, hyper's.
///
/// A plain function around an `async move` block, which keeps `watch` once
/// and borrows it in place (an `async fn` taking `mut watch` would store it
/// twice).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store `watch` twice in every connection's task"
)]
fn serve_with<I, H, F, B>(
    io: I,
    prefix: BytesMut,
    protocol: Protocol,
    shared: Arc<Shared>,
    handle: H,
    mut watch: Watch,
) -> impl Future<Output = ()>
where
    I: h1::server::Io,
    H: Fn(http::Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output: Answer<Body = B> + Send> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    async move {
        if let (Protocol::Http1, Some(settings)) = (protocol, &shared.protocols.native) {
            // The connection's future is a local here and `drive` borrows
            // it: passed by value it would be stored twice (once as the
            // argument, once pinned), doubling what every idle connection
            // costs.
            let closing = AtomicBool::new(false);
            let conn = pin!(h1::server::serve(io, prefix, settings, &closing, handle));
            let graceful = |_: Pin<&mut _>| closing.store(true, Ordering::Release);
            drive(conn, graceful, &mut watch).await;
            return;
        }
        if let (Protocol::H2c, Some(settings)) = (protocol, &shared.protocols.native_h2) {
            let closing = AtomicBool::new(false);
            let handle = move |req: http::Request<Option<crate::h2::body::H2Body>>| {
                let answer = handle(req.map(|b| b.map_or(RequestBody::Empty, RequestBody::H2)));
                Folded { answer }
            };
            // Boxed: its state would otherwise size every HTTP/1.1
            // connection's task too.
            let mut conn = crate::inplace::box_in_place(|| {
                crate::h2::server::serve(io, prefix, settings, &closing, handle)
            });
            let graceful = |_: Pin<&mut _>| closing.store(true, Ordering::Release);
            drive(conn.as_mut(), graceful, &mut watch).await;
            return;
        }
        // Boxed: hyper's connection state would otherwise size every native
        // connection's task too.
        crate::inplace::box_in_place(|| serve_hyper(io, prefix, protocol, &shared, handle, watch))
            .await;
    }
}

/// Serves `handle` on `io` with hyper's HTTP/2 or HTTP/1.1 server.
async fn serve_hyper<I, H, F, B>(
    io: I,
    prefix: BytesMut,
    protocol: Protocol,
    shared: &Shared,
    handle: H,
    mut watch: Watch,
) where
    I: h1::server::Io,
    H: Fn(http::Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output: Answer<Body = B> + Send> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    let handle = Arc::new(handle);
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // Boxed: hyper's HTTP/1.1 dispatcher keeps room for the request's
        // future for the connection's whole life.
        let fut = crate::inplace::box_in_place(|| handle(req.map(RequestBody::Hyper)));
        async move {
            let (mut resp, beside) = fut.await.into_parts();
            beside.fold(&mut resp);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = TokioIo::new(Rewind::new(prefix.freeze(), io));
    if protocol == Protocol::H2c {
        let executor = StreamExecutor::default();
        let http2 = shared.protocols.http2(executor.clone());
        let conn = ServeStreams::new(http2.serve_connection(io, service), executor);
        drive(
            pin!(conn),
            |c| c.get_mut().conn().graceful_shutdown(),
            &mut watch,
        )
        .await;
    } else {
        let conn = shared
            .protocols
            .http1
            .serve_connection(io, service)
            .with_upgrades();
        drive(pin!(conn), |c| c.graceful_shutdown(), &mut watch).await;
    }
}

pin_project_lite::pin_project! {
    /// An answer future whose answer the native HTTP/2 server takes whole:
    /// the fields beside the response folded into its map, but for the
    /// request id, which the server writes after the map's fields.
    struct Folded<F> {
        #[pin]
        answer: F,
    }
}

impl<F: Future<Output: Answer>> Future for Folded<F> {
    type Output = FoldedAnswer<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.project().answer.poll(cx).map(FoldedAnswer)
    }
}

/// An [`Answer`], as the native HTTP/2 server takes it.
struct FoldedAnswer<A>(A);

impl<A: Answer> crate::h2::server::Respond for FoldedAnswer<A> {
    type Body = A::Body;

    fn into_parts(self) -> (http::Response<A::Body>, Option<crate::h2::server::Named>) {
        let (mut resp, mut beside) = self.0.into_parts();
        // The request id is written after the map's fields, not inserted.
        let named = beside
            .request_id
            .take()
            .map(|id| (&crate::h1::response::X_REQUEST_ID, id));
        beside.fold(&mut resp);
        (resp, named)
    }
}

/// What watches a connection: its idle clock, its activity, its part in
/// the drain, and its peer (for the log).
type Watch = (IdleClock, Arc<Activity>, Draining, SocketAddr);

/// Runs a connection to its end: asks it to finish gracefully at shutdown
/// or when idle, and drops it (closing the socket) when it is idle because
/// its client stopped reading, or still open an idle period after a
/// graceful close was asked.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    (idle, active, draining, peer): &mut Watch,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    /// What ended a wait.
    enum Event<T> {
        Done(T),
        Closing,
        Idle,
    }
    let mut shutting_down = false;
    // The connection is polled on each wake-up; its watchers only when
    // their own wakers fired.
    let gate = WakeGate::default();
    loop {
        let mut closing = pin!(draining.closing.closing());
        let mut expired = pin!(idle.expired());
        gate.open();
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(result));
            }
            gate.poll(cx, |cx| {
                if !shutting_down && closing.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Closing);
                }
                expired.as_mut().poll(cx).map(|()| Event::Idle)
            })
        })
        .await;
        match event {
            Event::Done(result) => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            Event::Closing => {
                shutting_down = true;
                graceful(conn.as_mut());
            }
            Event::Idle => {
                if active.write_blocked() {
                    tracing::debug!(%peer, "closing a connection whose client stopped reading");
                    return;
                }
                if shutting_down {
                    tracing::debug!(%peer, "closing a connection that did not finish after an idle period");
                    return;
                }
                tracing::debug!(%peer, "closing idle connection");
                shutting_down = true;
                graceful(conn.as_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// What the accept loop relies on instead of a `setsockopt` per
    /// connection: an accepted socket has the listener's `TCP_NODELAY`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        nodelay_for_accepted(&listener);
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY inherited");
    }

    /// How many connections wait to be accepted on the listener at
    /// 127.0.0.1:`port` (the `LISTEN` line's receive queue in
    /// `/proc/net/tcp`).
    #[cfg(target_os = "linux")]
    fn accept_queue(port: u16) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let local = format!("0100007F:{port:04X}");
        table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[1] == local && f[3] == "0A")
            .map(|f| {
                let (_, rx) = f[4].split_once(':').unwrap();
                usize::from_str_radix(rx, 16).unwrap()
            })
            .expect("the listener is in /proc/net/tcp")
    }

    /// A burst of new connections larger than std's and tokio's backlog of
    /// 128 all complete their handshakes and wait for `accept` in the
    /// kernel: with 128 the queue stops at 129 and the rest of the burst
    /// has its SYNs dropped, each client waiting a second or more for a
    /// retransmission.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_burst_beyond_128_new_connections_waits_in_the_backlog() {
        const BURST: usize = 300;
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
        let somaxconn: usize = somaxconn.trim().parse().unwrap();
        assert!(
            somaxconn >= BURST,
            "net.core.somaxconn is {somaxconn}: the kernel caps every backlog at it, \
             so this host cannot tell a backlog of {DEFAULT_LISTEN_BACKLOG} from 128"
        );
        let listener = listen("127.0.0.1:0".parse().unwrap(), DEFAULT_LISTEN_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..BURST)
            .map(|_| tokio::spawn(TcpStream::connect(addr)))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut waiting = accept_queue(addr.port());
        while waiting < BURST {
            assert!(
                std::time::Instant::now() < deadline,
                "{waiting} of {BURST} connections wait to be accepted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiting = accept_queue(addr.port());
        }
        for client in clients {
            client.await.unwrap().unwrap();
        }
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert!(peer.ip().is_loopback());
    }

    /// A gateway's shared state with no routes, and one accepted
    /// connection (its client kept open) with its permit and drain.
    async fn one_connection() -> (
        Arc<Shared>,
        TcpStream,
        LazyTcp,
        SocketAddr,
        Permit,
        Draining,
    ) {
        let table = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::router::RouteTable::default(),
        ));
        let tls = Arc::new(crate::tls::upstream::UpstreamTlsConfigs::new(&[]).unwrap());
        let proxy = Arc::new(Proxy::new(table, &Default::default(), tls));
        let shared = Arc::new(Shared::new(proxy, None, &ServerSettings::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let acceptor = crate::conn_io::Acceptor::new(listener).unwrap();
        let (stream, peer) = acceptor.accept().await.unwrap();
        let permit = shared.caps.admit(peer.ip()).unwrap();
        let (alive, _) = mpsc::channel(1);
        let draining = Draining {
            closing: Arc::default(),
            _alive: alive,
        };
        (shared, client, stream, peer, permit, draining)
    }

    /// A connection's task is allocated per accepted connection and kept
    /// while it is open: past 1,032 bytes glibc serves it on its slow path
    /// (no per-thread cache), and every idle connection holds all of it.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let (shared, _client, stream, peer, permit, draining) = one_connection().await;
        let task = serve_connection(stream, permit, peer, shared, None, draining);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        assert!(size <= 1032, "a connection's task is {size} bytes");
    }

    /// A TLS connection's future (boxed in its task) is kept while the
    /// connection is open, idle or not: the handshake's state and the
    /// stream are boxed apart, so it holds neither inline (6,320 bytes
    /// with both; 1,536 without, in a test build). Either back inline
    /// would add at least 1.2 kB.
    #[tokio::test]
    async fn a_tls_connection_future_stays_small() {
        let (shared, _client, stream, peer, permit, draining) = one_connection().await;
        let settings = crate::tls::TlsSettings {
            acme: true,
            ..Default::default()
        };
        let tls = ServerTls::new(&settings, shared.proxy.metrics().tls().clone()).unwrap();
        let guards = (shared.proxy.metrics().open_connection(), permit);
        let active = Activity::new();
        let io = ActivityIo::with_guard(stream, active.clone(), guards);
        let task = serve_tls(io, tls, peer, shared, active, draining);
        let size = std::mem::size_of_val(&task);
        eprintln!("TLS connection future: {size} bytes");
        assert!(size <= 2048, "a TLS connection's future is {size} bytes");
    }
}
