//! Downstream connection caps, and what to do when descriptors run out.
//!
//! - A gateway-wide cap on client connections. Past it a new connection
//!   gets an immediate minimal `503` with `connection: close` and the JSON
//!   error `too_many_connections` (nginx's `limit_conn` answers 503 too),
//!   and is closed; connections already open are untouched. The default is
//!   derived from `RLIMIT_NOFILE` the way HAProxy derives `maxconn`: each
//!   proxied connection costs two descriptors (client and upstream), and a
//!   tenth of the limit (at least 32) is kept back for listeners, the
//!   registry watch, health checks, idle pooled upstream connections and
//!   refusals in progress. So the cap is reached before the descriptors
//!   are, and a client is told "busy" instead of waiting in the backlog.
//! - An optional cap per client IP (off by default: clients behind a NAT or
//!   a corporate proxy share one address). Past it: `429`
//!   `too_many_client_connections`, the client's own doing.
//! - Accept errors (at the descriptor limit above all, when the cap is set
//!   too high or other descriptors grew) back off, 5 ms doubling to 1 s,
//!   and are logged once, then summarised once per [`LOG_INTERVAL`] with a
//!   count, and once more when accepting works again.
//!
//! A refusal writes its answer, half-closes and then reads what the client
//! still sends (up to 64 KiB, at most [`LINGER`]) before closing: closing a
//! socket with unread request bytes makes the kernel send a reset, which can
//! destroy the answer before the client reads it (nginx's lingering close).
//! Lingering costs a descriptor, so only so many refusals linger at once;
//! beyond that, the answer is written and the socket closed at once.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Descriptors kept back from the derived cap: at least this many ...
const RESERVED_FDS_MIN: u64 = 32;
/// ... or this share (1/n) of the limit, whichever is more.
const RESERVED_FDS_SHARE: u64 = 10;
/// The derived cap where the descriptor limit cannot be read (not Unix).
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;
/// Longest a refused connection is kept open to let its answer arrive.
pub const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read from a refused connection before closing it.
const LINGER_BYTES: usize = 64 * 1024;
/// How often accept errors are summarised in the log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// First and longest pause after an accept error.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The gateway-wide cap for a descriptor limit of `nofile`: two descriptors
/// per proxied connection, after the reserve (see the module docs).
pub fn max_connections_for(nofile: u64) -> usize {
    let reserve = RESERVED_FDS_MIN.max(nofile / RESERVED_FDS_SHARE);
    let max = nofile.saturating_sub(reserve) / 2;
    usize::try_from(max).unwrap_or(usize::MAX).max(1)
}

/// The default gateway-wide cap, from this process's `RLIMIT_NOFILE`.
pub fn derived_max_connections() -> usize {
    match fd_limit() {
        Some(nofile) => max_connections_for(nofile),
        None => FALLBACK_MAX_CONNECTIONS,
    }
}

/// The soft descriptor limit; `None` when unknown or unlimited.
#[cfg(unix)]
fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn fd_limit() -> Option<u64> {
    None
}

/// Raises the soft descriptor limit to the hard one, as Go programs do at
/// start: the usual soft limit (1024) is a leftover of `select()`, and a
/// service manager that wants a gateway bounded sets the hard limit.
/// Returns the (soft, hard) limits in force afterwards.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<(Option<u64>, Option<u64>)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    Some((limit.current, limit.maximum))
}

/// Not available here: the limit is left as it is.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<(Option<u64>, Option<u64>)> {
    None
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway-wide cap.
    Gateway = 0,
    /// The per-client-IP cap.
    ClientIp = 1,
}

impl Refusal {
    /// Every reason, in counter order, with its metric label.
    pub const ALL: [(Refusal, &'static str); 2] = [
        (Refusal::Gateway, "gateway_limit"),
        (Refusal::ClientIp, "client_ip_limit"),
    ];

    /// The whole answer on the wire: status, headers and JSON body.
    fn answer(self) -> &'static [u8] {
        match self {
            Refusal::Gateway => concat!(
                "HTTP/1.1 503 Service Unavailable\r\n",
                "content-type: application/json\r\n",
                "x-portico-error: too_many_connections\r\n",
                "connection: close\r\n",
                "content-length: 81\r\n\r\n",
                r#"{"error":"the gateway is at its connection limit","code":"too_many_connections"}"#,
                "\n",
            )
            .as_bytes(),
            Refusal::ClientIp => concat!(
                "HTTP/1.1 429 Too Many Requests\r\n",
                "content-type: application/json\r\n",
                "x-portico-error: too_many_client_connections\r\n",
                "connection: close\r\n",
                "content-length: 95\r\n\r\n",
                r#"{"error":"too many connections from this client address","code":"too_many_client_connections"}"#,
                "\n",
            )
            .as_bytes(),
        }
    }
}

/// Counters of the caps, shared with the metrics.
#[derive(Debug, Default)]
pub struct CapStats {
    refused: [AtomicU64; 2],
    accept_errors: AtomicU64,
    /// The gateway-wide cap in force (0 until the listener starts).
    max: AtomicU64,
}

impl CapStats {
    /// Connections refused so far for `why`.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    /// Failed accepts so far.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// The gateway-wide cap in force.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

/// Open client connections against the caps.
#[derive(Debug)]
pub struct ConnectionCaps {
    max: usize,
    per_ip: Option<usize>,
    open: AtomicUsize,
    /// Connections per client IP, only with a per-IP cap. Touched once at
    /// accept and once at close, never per request; entries go at zero.
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    lingering: AtomicUsize,
    max_lingering: usize,
    stats: Arc<CapStats>,
}

/// A client connection's place under the caps, given back when dropped
/// (it lives in the connection's I/O: through an upgrade too).
#[derive(Debug)]
pub struct Permit {
    caps: Arc<ConnectionCaps>,
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.caps.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut by_ip = self
                .caps
                .by_ip
                .lock()
                .expect("connection caps lock poisoned");
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
    }
}

impl ConnectionCaps {
    /// Caps of `max` connections in all and, when set, `per_ip` per client
    /// address, counted in `stats`.
    pub fn new(max: usize, per_ip: Option<usize>, stats: Arc<CapStats>) -> Arc<ConnectionCaps> {
        stats.max.store(max as u64, Ordering::Relaxed);
        Arc::new(ConnectionCaps {
            max,
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            lingering: AtomicUsize::new(0),
            // Within the reserve the derived cap keeps back.
            max_lingering: (max / 16).clamp(16, 1024),
            stats,
        })
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Gateway);
        }
        let mut permit = Permit {
            caps: self.clone(),
            ip: None,
        };
        if let Some(limit) = self.per_ip {
            let mut by_ip = self.by_ip.lock().expect("connection caps lock poisoned");
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= limit {
                if *n == 0 {
                    by_ip.remove(&ip);
                }
                return Err(Refusal::ClientIp);
            }
            *n += 1;
            permit.ip = Some(ip);
        }
        Ok(permit)
    }

    /// Answers a refused connection and closes it, on its own task.
    pub fn refuse(self: &Arc<Self>, stream: TcpStream, why: Refusal) {
        self.stats.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        let lingering = self.lingering.fetch_add(1, Ordering::AcqRel) < self.max_lingering;
        if !lingering {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            // Too many refusals in progress: best effort, no descriptor
            // held. Reading what has arrived first makes a reset less likely.
            let mut buf = [0u8; 4096];
            for _ in 0..LINGER_BYTES / buf.len() {
                if !matches!(stream.try_read(&mut buf), Ok(n) if n > 0) {
                    break;
                }
            }
            let _ = stream.try_write(why.answer());
            return;
        }
        let caps = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(LINGER, answer_and_linger(stream, why)).await;
            caps.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn answer_and_linger(mut stream: TcpStream, why: Refusal) -> io::Result<()> {
    stream.write_all(why.answer()).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < LINGER_BYTES {
        match stream.read(&mut buf).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}

/// Accept errors of one listener: how long to pause, and what to log.
///
/// One log line per [`LOG_INTERVAL`] at most, whatever happens: the first
/// failure of a run is logged when the interval allows, later ones are
/// counted and reported in the next line; a run that was logged gets one
/// line when accepting works again. So a listener flapping at the
/// descriptor limit logs a couple of lines per interval, not one per
/// failure.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    stats: Option<Arc<CapStats>>,
    delay: Duration,
    /// Failures not logged yet.
    suppressed: u64,
    /// Failures since accepting last worked.
    run: u64,
    /// Whether this run of failures was logged (its end will be too).
    announced: bool,
    logged_at: Option<Instant>,
}

impl AcceptErrors {
    /// Tracking for the listener named `listener` (in log lines), counted
    /// in `stats` when given.
    pub fn new(listener: &'static str, stats: Option<Arc<CapStats>>) -> AcceptErrors {
        AcceptErrors {
            listener,
            stats,
            delay: BACKOFF_FIRST,
            suppressed: 0,
            run: 0,
            announced: false,
            logged_at: None,
        }
    }

    /// Records a failed accept; returns how long to wait before the next
    /// one (zero for an error that concerns only the connection that
    /// failed, such as one reset before it was accepted).
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        ) {
            tracing::debug!(listener = self.listener, %error, "a connection failed before it was accepted");
            return Duration::ZERO;
        }
        if let Some(stats) = &self.stats {
            stats.accept_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.run += 1;
        let now = Instant::now();
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL);
        if due {
            let failures = self.suppressed + 1;
            if self.announced {
                tracing::warn!(
                    listener = self.listener,
                    %error,
                    failures,
                    "accept still failing: {failures} failures since the last report"
                );
            } else {
                tracing::warn!(
                    listener = self.listener,
                    %error,
                    failures,
                    "accept failed (out of file descriptors?): backing off; failures are reported at most every {LOG_INTERVAL:?}"
                );
            }
            self.logged_at = Some(now);
            self.suppressed = 0;
            self.announced = true;
        } else {
            self.suppressed += 1;
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        wait
    }

    /// Records a successful accept: the backoff starts over, and the end of
    /// a logged run of failures is logged once.
    pub fn succeeded(&mut self) {
        if self.run == 0 {
            return;
        }
        if self.announced {
            tracing::warn!(
                listener = self.listener,
                failures = self.run,
                "accepting connections again after {} failed accepts",
                self.run
            );
            self.logged_at = Some(Instant::now());
        }
        self.run = 0;
        self.announced = false;
        self.delay = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_leaves_a_reserve_and_two_descriptors_a_connection() {
        assert_eq!(max_connections_for(64), 16);
        assert_eq!(max_connections_for(1024), 461);
        assert_eq!(max_connections_for(65_536), 29_491);
        assert_eq!(max_connections_for(10), 1);
    }

    #[test]
    fn the_answers_are_complete_http_messages() {
        for (why, _) in Refusal::ALL {
            let text = std::str::from_utf8(why.answer()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(body.len(), len, "{head}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(head.contains(&format!("x-portico-error: {}", v["code"].as_str().unwrap())));
            assert!(head.contains("connection: close"));
        }
    }

    #[tokio::test]
    async fn caps_count_globally_and_per_ip_and_free_on_drop() {
        let caps = ConnectionCaps::new(3, Some(2), Arc::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refusal::ClientIp);
        let b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).unwrap_err(), Refusal::Gateway);
        drop(a1);
        let _a3 = caps.admit(a).unwrap();
        drop(b1);
        assert_eq!(
            caps.by_ip.lock().unwrap().get(&b),
            None,
            "no entry left at zero"
        );
    }

    #[test]
    fn accept_errors_back_off_up_to_a_second() {
        let mut errors = AcceptErrors::new("test", None);
        let emfile = io::Error::from_raw_os_error(24);
        let waits: Vec<Duration> = (0..12).map(|_| errors.failed(&emfile)).collect();
        assert_eq!(waits[0], Duration::from_millis(5));
        assert_eq!(waits[1], Duration::from_millis(10));
        assert_eq!(waits[11], Duration::from_secs(1));
        assert_eq!(errors.suppressed, 11, "logged once, the rest counted");
        assert!(errors.announced);
        errors.succeeded();
        // A new run right after: backoff from the start, not logged (the
        // interval has not passed), so its end is not logged either.
        assert_eq!(errors.failed(&emfile), Duration::from_millis(5));
        assert_eq!(errors.suppressed, 12);
        assert!(!errors.announced);
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(errors.failed(&aborted), Duration::ZERO);
    }
}
