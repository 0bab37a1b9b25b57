//! `http1_raw`: raw bytes into a real gateway over a real TCP connection.
//!
//! One gateway per process, started on first use on `127.0.0.1:0` with three
//! static routes, each to its own listener of the strict [`backend`]:
//!
//! | route | hosts      | backend admits a forwarded Host of |
//! |-------|------------|------------------------------------|
//! | `a`   | `a.test`   | `a.test` only                      |
//! | `b`   | `*.b.test` | names under `.b.test` only         |
//! | `any` | any        | anything but the two above         |
//!
//! Each input is written on one new connection; the client reads until the
//! gateway closes it (short timeouts make sure it does), then waits for the
//! backend to hold no partial request. Oracles, beyond "nothing panics"
//! (in any task: see [`crate::panics`]):
//!
//! - every request the backend receives parses strictly, is HTTP/1.1 in
//!   origin form, frames its body one way only and validly, carries no
//!   hop-by-hop header, and carries exactly one valid Host, the one its
//!   route was chosen on, and a path without `.` or `..` segments;
//! - no bytes follow a whole request before its response (the gateway does
//!   not pipeline upstream, so such bytes mean the two sides disagree on
//!   where a message ends: smuggling);
//! - the backend never receives more requests than the client received
//!   responses, and more exactly: every backend answer reaches the client,
//!   except one in place of which the gateway answered 502–504 itself (a
//!   route timeout firing as the backend answers, on a stalled machine),
//!   and the client gets no backend answer that was not sent for its input;
//! - the gateway's answer is a well-formed sequence of HTTP/1.1 responses;
//! - the gateway closes the connection in bounded time.

mod backend;
mod client;
mod framing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::server::ServerSettings;
use portico_gateway::{Gateway, GatewayOptions};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use self::backend::{HostRule, Log};

/// Time a gateway may wait for a request head: ends idle keep-alive
/// connections quickly, so most inputs cost milliseconds. Safe that short
/// because the input is in the gateway's socket before the gateway first
/// reads it (see [`client::exchange`]): the clock only runs out on a head
/// that is really incomplete (or after the last request).
const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(5);
/// Route timeout: ends a request whose body never comes. One that fires
/// while the backend answers (a stalled machine) costs a gateway 504, which
/// the lost-response oracle accounts for.
const ROUTE_TIMEOUT: &str = "100ms";
/// Longest the gateway may keep a connection once the input is sent, and the
/// backend a partial request once the connection ended. Far above the
/// timeouts above, so reaching it means something does not end at all.
const DEADLINE: Duration = Duration::from_secs(10);

/// What an oracle found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A forwarded request head that does not parse or is not origin-form HTTP/1.1.
    Malformed,
    /// A forwarded request with no Host.
    MissingHost,
    /// A forwarded request with more than one Host.
    DuplicateHost,
    /// A forwarded Host that is not `uri-host[:port]`.
    InvalidHost,
    /// A forwarded path with a `.` or `..` segment (also as `%2e`): a
    /// backend that normalises would serve another path than the one
    /// routed.
    DotSegment,
    /// A request routed on one host and forwarded with another.
    HostMismatch,
    /// A forwarded body framed two ways, or framed wrong.
    Framing,
    /// A hop-by-hop header forwarded.
    HopByHop,
    /// Bytes after a whole request before its response: the gateway and the
    /// backend disagree on where a message ends.
    Desync,
    /// A request the backend answered whose response never reached the client.
    LostResponse,
    /// A response the client can not read as HTTP/1.1.
    BadResponse,
    /// The gateway kept a connection, or the backend a partial request, past
    /// [`DEADLINE`].
    Hang,
    /// A panic, in any thread.
    Panic,
}

/// One thing an oracle found wrong.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which oracle.
    pub kind: Kind,
    /// What exactly.
    pub detail: String,
}

/// Runs one input; panics with every violation.
pub fn check(data: &[u8]) {
    let found: Vec<Violation> = violations(data);
    assert!(
        found.is_empty(),
        "http1_raw: {} violation(s) for input {:?}:\n{}",
        found.len(),
        String::from_utf8_lossy(data),
        found
            .iter()
            .map(|v| format!("- {:?}: {}", v.kind, v.detail))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs one input and returns every violation, known or not.
pub fn violations(data: &[u8]) -> Vec<Violation> {
    crate::panics::watch();
    Harness::get().run(data)
}

/// The gateway and backends, started once per process.
struct Harness {
    rt: Runtime,
    gateway: SocketAddr,
    log: Arc<Log>,
    /// Inputs run one at a time: the oracles count per input.
    one_at_a_time: Mutex<()>,
}

impl Harness {
    fn get() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(Harness::start)
    }

    /// One thread runs everything: the gateway, its upstream pool, the
    /// backends and the client, so a run is as repeatable as it gets.
    fn start() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let log = Arc::new(Log::new());
        let gateway = rt.block_on(start_servers(log.clone()));
        Harness {
            rt,
            gateway,
            log,
            one_at_a_time: Mutex::new(()),
        }
    }

    fn run(&self, data: &[u8]) -> Vec<Violation> {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let panics = crate::panics::count();
        let answer = client::exchange(&self.rt, self.gateway, data, DEADLINE);
        let quiet = self.rt.block_on(self.backend_quiet());
        let (completed, mut found) = self.log.take();
        match answer {
            Err(()) => found.push(Violation {
                kind: Kind::Hang,
                detail: format!("the gateway kept the connection open for {DEADLINE:?}"),
            }),
            // HTTP/2 answers are frames: the response and count oracles do not apply.
            Ok(_) if data.starts_with(client::H2_PREFACE) => {}
            Ok(bytes) => found.extend(self.compare(&bytes, &completed)),
        }
        if !quiet {
            found.push(Violation {
                kind: Kind::Hang,
                detail: format!("the backend still held a partial request {DEADLINE:?} later"),
            });
        }
        if crate::panics::count() != panics {
            found.push(Violation {
                kind: Kind::Panic,
                detail: "a thread panicked (see the message above)".to_string(),
            });
        }
        found
    }

    /// Waits until no backend connection holds part of a request.
    async fn backend_quiet(&self) -> bool {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            // Let connections the gateway just dropped see their EOF first.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if self.log.busy() == 0 {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
        }
    }

    /// The client's responses against the backend's record.
    fn compare(&self, bytes: &[u8], completed: &[backend::Completed]) -> Vec<Violation> {
        let methods: HashMap<u64, String> = completed
            .iter()
            .map(|c| (c.seq, c.method.clone()))
            .collect();
        let answer = match client::responses(bytes, &self.log.token, &methods) {
            Ok(answer) => answer,
            Err(detail) => {
                return vec![Violation {
                    kind: Kind::BadResponse,
                    detail,
                }];
            }
        };
        let mut found = Vec::new();
        let missing: Vec<&backend::Completed> = completed
            .iter()
            .filter(|c| !answer.seqs.contains(&c.seq))
            .collect();
        // The brief's oracle, the backend never receiving more requests
        // than the client received responses, made exact where it can be:
        // a backend answer may only go missing in place of a gateway 5xx.
        if missing.len() > answer.gateway_errors {
            found.extend(missing.iter().map(|c| Violation {
                kind: Kind::LostResponse,
                detail: format!(
                    "the backend answered request #{} ({}) but the client never got it \
                     ({} such, {} gateway 5xx to account for them)",
                    c.seq,
                    c.summary,
                    missing.len(),
                    answer.gateway_errors
                ),
            }));
        }
        for s in answer.seqs.iter().filter(|s| !methods.contains_key(s)) {
            found.push(Violation {
                kind: Kind::BadResponse,
                detail: format!("the client got backend response #{s}, not sent for this input"),
            });
        }
        found
    }
}

async fn start_servers(log: Arc<Log>) -> SocketAddr {
    let mut upstreams = Vec::new();
    for rule in [
        HostRule::Exact("a.test"),
        HostRule::Suffix(".b.test"),
        HostRule::Neither("a.test", ".b.test"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        upstreams.push(listener.local_addr().expect("backend address"));
        tokio::spawn(backend::serve(listener, rule, log.clone()));
    }
    let routes = format!(
        r#"
        [[route]]
        name = "a"
        hosts = ["a.test"]
        upstreams = ["{}"]
        timeout = "{ROUTE_TIMEOUT}"
        [[route]]
        name = "b"
        hosts = ["*.b.test"]
        upstreams = ["{}"]
        timeout = "{ROUTE_TIMEOUT}"
        [[route]]
        name = "any"
        upstreams = ["{}"]
        timeout = "{ROUTE_TIMEOUT}"
        "#,
        upstreams[0], upstreams[1], upstreams[2]
    );
    let options = GatewayOptions {
        config: Config::parse(&routes).expect("the fuzz routes are valid"),
        server: ServerSettings {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: Duration::from_secs(1),
            // Accepted at once: an empty input would otherwise wait in the
            // kernel for the deferral (about 1 s) before the 5 ms header
            // timeout could close it; the parser is what is fuzzed here.
            defer_accept: None,
            ..ServerSettings::default()
        },
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    };
    let gateway = Gateway::new(options).expect("a static gateway");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gateway");
    let addr = listener.local_addr().expect("gateway address");
    tokio::spawn(async move {
        let _ = gateway.serve(listener, std::future::pending()).await;
    });
    addr
}
