//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once
//! the upstream answers `101`, the gateway copies bytes both ways between
//! the client and the upstream until either side closes.
//!
//! A tunnel is not a request, so nothing else would bound it. [`Tunnels`]
//! keeps every one accounted for:
//! - counted while open (`portico_gateway_tunnels_open`, `/status`), and
//!   counted closed by why (ended by a side, idle, shutdown);
//! - closed, both sides, after the tunnel idle timeout with no bytes either
//!   way (the same rule as `--idle-timeout` for connections, with its own
//!   setting because tunnels are often quiet for longer);
//! - waited for by the shutdown drain, up to the drain timeout, then closed.
//!
//! The client's connection slot (connection caps) lives in its socket, so a
//! tunnel keeps holding it until the tunnel ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, oneshot, watch};

use crate::h1::server::{PendingUpgrade, RawIo, Upgraded as NativeUpgraded};

use crate::idle::{ActivityIo, IdleClock};

/// Default time a tunnel may carry no bytes before both sides are closed:
/// the same as the listener's idle timeout and nginx's `proxy_read_timeout`
/// (60 s), which WebSocket applications commonly ping within.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The client's side of an upgrade, from whichever server read its
/// request: hyper's (which hands over the connection itself) or the native
/// HTTP/1.1 server's (which sends it once the 101 is written).
pub enum DownstreamUpgrade {
    /// From hyper's server.
    Hyper(OnUpgrade),
    /// From the native server.
    Native(oneshot::Receiver<NativeUpgraded>),
}

impl std::fmt::Debug for DownstreamUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DownstreamUpgrade::Hyper(_) => "DownstreamUpgrade::Hyper",
            DownstreamUpgrade::Native(_) => "DownstreamUpgrade::Native",
        })
    }
}

impl DownstreamUpgrade {
    /// Takes the client's side of the upgrade `req` asks for.
    pub fn take<B>(req: &mut http::Request<B>) -> DownstreamUpgrade {
        match req.extensions_mut().remove::<PendingUpgrade>() {
            Some(pending) => match pending.take() {
                Some(rx) => DownstreamUpgrade::Native(rx),
                None => DownstreamUpgrade::Native(oneshot::channel().1),
            },
            None => DownstreamUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    async fn upgraded(self) -> Result<Box<dyn RawIo>, String> {
        match self {
            DownstreamUpgrade::Hyper(on) => match on.await {
                Ok(up) => Ok(Box::new(TokioIo::new(up))),
                Err(e) => Err(e.to_string()),
            },
            DownstreamUpgrade::Native(rx) => match rx.await {
                Ok(up) => Ok(Box::new(up)),
                Err(_) => Err("the client connection ended before the upgrade".to_string()),
            },
        }
    }
}

/// Why a tunnel closed, as counted in [`TunnelStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A side closed, or the upgrade failed.
    Ended = 0,
    /// No bytes either way for the idle timeout.
    Idle = 1,
    /// Still open when the shutdown drain ran out.
    Shutdown = 2,
}

impl Closed {
    /// Every reason, in counter order, with its metric label.
    pub const ALL: [(Closed, &'static str); 3] = [
        (Closed::Ended, "ended"),
        (Closed::Idle, "idle"),
        (Closed::Shutdown, "shutdown"),
    ];
}

/// Tunnel counters, shared with the metrics.
#[derive(Debug, Default)]
pub struct TunnelStats {
    open: AtomicU64,
    closed: [AtomicU64; 3],
}

impl TunnelStats {
    /// Tunnels open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Tunnels closed so far for `why`.
    pub fn closed(&self, why: Closed) -> u64 {
        self.closed[why as usize].load(Ordering::Relaxed)
    }
}

/// Every tunnel of a gateway: spawns them, counts them, closes them.
#[derive(Debug)]
pub struct Tunnels {
    idle_timeout: Duration,
    stats: Arc<TunnelStats>,
    /// Set once the drain ran out: every tunnel closes.
    closing: watch::Sender<bool>,
    /// Woken when the last open tunnel closes.
    drained: Notify,
}

/// One open tunnel, counted until dropped.
struct Open(Arc<Tunnels>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.stats.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl Tunnels {
    /// Tunnels closed after `idle_timeout` without bytes, counted in `stats`.
    pub fn new(idle_timeout: Duration, stats: Arc<TunnelStats>) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            idle_timeout,
            stats,
            closing: watch::Sender::new(false),
            drained: Notify::new(),
        })
    }

    /// Starts the tunnel between an upgraded client and upstream on its own
    /// task; it counts as open from now (before either upgrade completes),
    /// so a drain that starts now waits for it.
    pub fn spawn(self: &Arc<Self>, downstream: DownstreamUpgrade, upstream: OnUpgrade) {
        self.stats.open.fetch_add(1, Ordering::AcqRel);
        let open = Open(self.clone());
        tokio::spawn(async move {
            let why = open.0.run(downstream, upstream).await;
            open.0.stats.closed[why as usize].fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Tunnels open now.
    pub fn open(&self) -> u64 {
        self.stats.open()
    }

    /// Completes when no tunnel is open.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stats.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Closes every tunnel, both sides, now and from now on (the drain ran
    /// out).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    async fn run(&self, downstream: DownstreamUpgrade, upstream: OnUpgrade) -> Closed {
        let mut closing = self.closing.subscribe();
        let upgraded = tokio::select! {
            pair = async {
                let upstream = async { upstream.await.map_err(|e| e.to_string()) };
                tokio::try_join!(downstream.upgraded(), upstream)
            } => pair,
            _ = closing.wait_for(|c| *c) => return Closed::Shutdown,
        };
        let (down, up) = match upgraded {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return Closed::Ended;
            }
        };
        // Every byte either way passes through the client side: marking it
        // is enough to see activity in both directions.
        let active = crate::idle::Activity::new();
        let mut down = ActivityIo::new(down, active.clone());
        let mut up = TokioIo::new(up);
        let mut idle = IdleClock::new(self.idle_timeout, active);
        // Leaving the select drops both sides: both connections close.
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                if let Err(e) = copied {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
                Closed::Ended
            }
            () = idle.expired() => {
                tracing::debug!(timeout = ?self.idle_timeout, "closing an idle tunnel");
                Closed::Idle
            }
            _ = closing.wait_for(|c| *c) => Closed::Shutdown,
        }
    }
}
