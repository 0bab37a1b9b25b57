//! The fuzz backend: a raw TCP server that reads what the gateway forwards
//! with a strict parser of its own (httparse for the head, [`framing`] for
//! the body) and records every way it falls short, instead of trusting a
//! lenient server to shrug it off.
//!
//! Each listener stands behind one route and knows the host that route
//! matches, so a request routed on one host and forwarded with another is
//! caught where it lands. Every complete request gets a sequence number,
//! echoed in the response (`x-fuzz-seq`), so the client side can tell which
//! backend responses reached it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::framing::{self, Body};
use super::{Kind, Violation};

/// Largest request head the backend reads before calling it a violation.
const MAX_HEAD: usize = 1 << 20;
/// Response header carrying `{token}-{seq}`.
pub const SEQ_HEADER: &str = "x-fuzz-seq";

/// The host a listener's route matches, as the gateway's router reads it.
#[derive(Debug, Clone, Copy)]
pub enum HostRule {
    /// `hosts = ["a.test"]`.
    Exact(&'static str),
    /// `hosts = ["*.b.test"]`: the suffix `.b.test`.
    Suffix(&'static str),
    /// A route with no hosts, behind the two others: any host but theirs.
    Neither(&'static str, &'static str),
}

impl HostRule {
    fn admits(self, host: &str) -> bool {
        match self {
            HostRule::Exact(h) => host == h,
            HostRule::Suffix(s) => host.ends_with(s),
            HostRule::Neither(h, s) => host != h && !host.ends_with(s),
        }
    }
}

/// A request the backend read whole and answered.
#[derive(Debug, Clone)]
pub struct Completed {
    /// Its sequence number.
    pub seq: u64,
    /// Its method (a `HEAD` response has no body).
    pub method: String,
    /// Request line and Host, for messages.
    pub summary: String,
}

/// What every listener shares with the check.
#[derive(Debug)]
pub struct Log {
    /// Random per process, so no input can forge a backend response.
    pub token: String,
    next_seq: AtomicU64,
    /// Connections holding part of a request: the check waits for none.
    busy: AtomicUsize,
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    completed: Vec<Completed>,
    violations: Vec<Violation>,
}

impl Log {
    /// An empty log.
    pub fn new() -> Log {
        Log {
            token: format!("{:016x}", fastrand::u64(..)),
            next_seq: AtomicU64::new(1),
            busy: AtomicUsize::new(0),
            records: Mutex::default(),
        }
    }

    /// Connections that hold part of a request right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Takes everything recorded so far.
    pub fn take(&self) -> (Vec<Completed>, Vec<Violation>) {
        let mut r = self.records.lock().expect("log lock");
        (
            std::mem::take(&mut r.completed),
            std::mem::take(&mut r.violations),
        )
    }

    fn violation(&self, kind: Kind, detail: String) {
        let mut r = self.records.lock().expect("log lock");
        r.violations.push(Violation { kind, detail });
    }

    fn complete(&self, method: &str, summary: String) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut r = self.records.lock().expect("log lock");
        r.completed.push(Completed {
            seq,
            method: method.to_string(),
            summary,
        });
        seq
    }
}

/// Serves `rule`'s route on `listener` until the runtime ends.
pub async fn serve(listener: TcpListener, rule: HostRule, log: std::sync::Arc<Log>) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            Connection {
                stream,
                buf: Vec::new(),
                rule,
                log: &log,
            }
            .run()
            .await;
        });
    }
}

/// Counts a connection busy while it holds part of a request.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(counter: &'a AtomicUsize) -> Busy<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Busy(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request head, owned.
struct Head {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
    body: Result<Option<Body>, String>,
}

struct Connection<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    rule: HostRule,
    log: &'a Log,
}

impl Connection<'_> {
    async fn run(mut self) {
        loop {
            // Idle between requests: wait for the first byte of the next one.
            if self.buf.is_empty() && !self.read_more().await {
                return;
            }
            let _busy = Busy::enter(&self.log.busy);
            match self.one_request().await {
                Ok(true) => {}
                // Closed mid-request (the gateway gave up on it): not ours to judge.
                Ok(false) => return,
                Err((kind, detail)) => {
                    self.log.violation(kind, detail);
                    return;
                }
            }
        }
    }

    /// Reads, checks and answers one request; `Ok(false)` when the
    /// connection closed before it was whole.
    async fn one_request(&mut self) -> Result<bool, (Kind, String)> {
        let Some((head, head_len)) = self.read_head().await? else {
            return Ok(false);
        };
        let summary = format!(
            "{} {} (Host {:?})",
            head.method,
            head.target,
            head.hosts()
                .iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect::<Vec<_>>()
        );
        self.buf.drain(..head_len);
        head.check_form()
            .map_err(|why| (Kind::Malformed, format!("{why}: {summary}")))?;
        // Wrong fields are recorded and the exchange goes on, so that the
        // oracles after this one still see inputs that trip a parked one.
        for (kind, why) in head.check_fields(self.rule) {
            self.log.violation(kind, format!("{why}: {summary}"));
        }
        let body = head
            .body
            .clone()
            .map_err(|why| (Kind::Framing, format!("{why}: {summary}")))?;
        let Some(body_len) = self.read_body(body.unwrap_or(Body::Empty)).await? else {
            return Ok(false);
        };
        self.buf.drain(..body_len);
        if !self.buf.is_empty() {
            return Err((
                Kind::Desync,
                format!(
                    "{} bytes after a whole request, before its response (the gateway does \
                     not pipeline: the two sides disagree on where the message ends): {:?} \
                     after {summary}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ),
            ));
        }
        let seq = self.log.complete(&head.method, summary);
        let body = if head.method == "HEAD" { "" } else { "ok\n" };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n{SEQ_HEADER}: {}-{seq}\r\n\r\n{body}",
            self.log.token
        );
        Ok(self.stream.write_all(response.as_bytes()).await.is_ok())
    }

    /// Appends what the socket has; false at EOF or on an error.
    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn read_head(&mut self) -> Result<Option<(Head, usize)>, (Kind, String)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 256];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Head {
                        method: req.method.unwrap_or_default().to_string(),
                        target: req.path.unwrap_or_default().to_string(),
                        version: req.version.unwrap_or_default(),
                        body: framing::declared(req.headers),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                            .collect(),
                    };
                    return Ok(Some((head, len)));
                }
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                    return Err((Kind::Malformed, "request head over 1 MiB".to_string()));
                }
                Ok(httparse::Status::Partial) => {
                    if !self.read_more().await {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    return Err((
                        Kind::Malformed,
                        format!(
                            "request head does not parse ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf[..self.buf.len().min(400)])
                        ),
                    ));
                }
            }
        }
    }

    /// Reads until the body is whole; its length, or `None` at EOF first.
    async fn read_body(&mut self, body: Body) -> Result<Option<usize>, (Kind, String)> {
        loop {
            let whole = match body {
                Body::Empty | Body::UntilClose => Some(0),
                Body::Length(n) => {
                    let n = usize::try_from(n).map_err(|_| (Kind::Framing, "huge".into()))?;
                    (self.buf.len() >= n).then_some(n)
                }
                Body::Chunked => framing::chunked_len(&self.buf)
                    .map_err(|why| (Kind::Framing, format!("chunked body: {why}")))?,
            };
            if whole.is_some() {
                return Ok(whole);
            }
            if !self.read_more().await {
                return Ok(None);
            }
        }
    }
}

/// Headers a proxy must not forward (RFC 9110 §7.6.1), `Upgrade` aside
/// (forwarded with `Connection: upgrade` on purpose).
const HOP_BY_HOP: &[&str] = &["keep-alive", "te", "trailer", "proxy-connection"];

impl Head {
    fn hosts(&self) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "host")
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The request line: HTTP/1.1, origin form (or `OPTIONS *`).
    fn check_form(&self) -> Result<(), &'static str> {
        if self.version != 1 {
            return Err("not HTTP/1.1");
        }
        let origin_form = self.target.starts_with('/');
        let asterisk = self.target == "*" && self.method == "OPTIONS";
        if !origin_form && !asterisk {
            return Err("request target not in origin form");
        }
        if self.method == "CONNECT" {
            return Err("CONNECT with an origin-form target");
        }
        Ok(())
    }

    /// Host, path segments and hop-by-hop headers: every way they are wrong.
    fn check_fields(&self, rule: HostRule) -> Vec<(Kind, String)> {
        let mut wrong = Vec::new();
        match self.hosts().as_slice() {
            [] => wrong.push((Kind::MissingHost, "no Host".to_string())),
            [one] => match normalise_host(one) {
                None => wrong.push((Kind::InvalidHost, "a Host not uri-host[:port]".into())),
                Some(host) if !rule.admits(&host) => wrong.push((
                    Kind::HostMismatch,
                    format!("routed as {rule:?} but forwarded with Host {host:?}"),
                )),
                Some(_) => {}
            },
            _ => wrong.push((Kind::DuplicateHost, "more than one Host".to_string())),
        }
        if has_dot_segment(&self.target) {
            wrong.push((Kind::DotSegment, "a `.` or `..` path segment".to_string()));
        }
        wrong.extend(self.hop_by_hop());
        wrong
    }

    fn hop_by_hop(&self) -> Option<(Kind, String)> {
        let mut upgrade_named = false;
        for (name, value) in &self.headers {
            if name == "connection" {
                if !value.eq_ignore_ascii_case(b"upgrade") {
                    return Some((Kind::HopByHop, format!("Connection: {value:?}")));
                }
                upgrade_named = true;
            } else if HOP_BY_HOP.contains(&name.as_str()) || name.starts_with("proxy-") {
                return Some((Kind::HopByHop, format!("{name} forwarded")));
            }
        }
        let has_upgrade = self.headers.iter().any(|(n, _)| n == "upgrade");
        (has_upgrade != upgrade_named).then(|| {
            (
                Kind::HopByHop,
                "Upgrade and Connection: upgrade not together".to_string(),
            )
        })
    }
}

/// Whether the path (before any query) has a segment that is `.` or `..`,
/// written plainly or percent-encoded (RFC 3986 §5.2.4, §2.3).
fn has_dot_segment(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    })
}

/// `uri-host [":" port]` (RFC 9110 §7.2) as the router reads it: lowercase,
/// without the port or a trailing dot; `None` when it is not that syntax.
fn normalise_host(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        {
            return None;
        }
        (
            literal,
            after.strip_prefix(':').or((after.is_empty()).then_some("")),
        )
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, Some("")),
        }
    };
    let port = port?;
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let reg_name_ok = text.starts_with('[')
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    if !reg_name_ok {
        return None;
    }
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}
