//! Active health checks run by the gateway (`[route.health_check]`).
//!
//! One task per (endpoint, check) sends `GET path` (or, for a check with a
//! `grpc_service`, a gRPC `grpc.health.v1.Health/Check` over h2c) every
//! `interval` (jittered
//! by +-10% so checks of many endpoints spread out) on a fresh connection,
//! so a check also proves the endpoint accepts connections. The endpoint is
//! marked down after `unhealthy_threshold` consecutive failures and up again
//! after `healthy_threshold` consecutive successes; one odd result does not
//! flip it. A new endpoint starts up: it is in the registry because it said
//! it was ready, and starting it down would delay every deploy by a
//! threshold's worth of intervals.
//!
//! [`Checkers`] reconciles the running tasks with the tables discovery
//! builds: a task starts when an endpoint appears under a route with a check
//! and stops when no route checks it any more.
//!
//! A verdict lives only as long as its checker. Each task holds a [`Vote`]
//! on the endpoint's shared health: "down" counts once while the check
//! fails and is withdrawn when the task stops, so removing a route's
//! `health_check` (or the route) puts back an endpoint that only that check
//! kept out. Health is kept per address, shared by every route holding it,
//! so when two routes check one address with different checks, the
//! endpoint is out of rotation for all of them while *any* of its checks
//! fails (one process behind one address: a failing check is taken as the
//! process being unwell), and back once none does. Each check keeps its own
//! thresholds; one check passing never overrides another failing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::Request;
use http::uri::Authority;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use portico_registry::model::Scheme;
use portico_registry::route::UpstreamTls;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::balance::Endpoint;
use crate::health::EndpointHealth;
use crate::tls::upstream::{TlsDial, UpstreamTlsConfigs};

pub use portico_registry::route::HealthCheck;

/// What checks send as `User-Agent`.
const USER_AGENT: &str = "portico-health-check";

/// The running checker tasks, keyed by endpoint and check, each with the
/// vote it casts.
#[derive(Debug, Default)]
pub struct Checkers {
    running: HashMap<CheckKey, (JoinHandle<()>, Arc<Vote>)>,
    /// The data path's upstream TLS settings, which checks of `https`
    /// endpoints use too (none: such checks fail, saying why).
    upstream_tls: Option<Arc<UpstreamTlsConfigs>>,
}

/// A checker's identity: the endpoint's `host:port`, the check, and how
/// the endpoint is reached (a change of scheme or TLS setting is a new
/// checker).
type CheckKey = (String, Arc<HealthCheck>, Transport);

/// How a check reaches its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Cleartext (`http`, `h2c`).
    Plain,
    /// TLS (`https`), with the route's setting (`None`: the gateway's
    /// default) and the instance's own server name.
    Tls {
        /// The route's `upstream_tls`.
        setting: Option<Arc<UpstreamTls>>,
        /// The instance's `tls_server_name`.
        name: Option<Arc<str>>,
    },
}

impl Transport {
    /// How the data path reaches `endpoint` under a route with `setting`.
    pub fn of(endpoint: &Endpoint, setting: Option<&Arc<UpstreamTls>>) -> Transport {
        match endpoint.scheme {
            Scheme::Https => Transport::Tls {
                setting: setting.cloned(),
                name: endpoint.tls_name.clone(),
            },
            Scheme::Http | Scheme::H2c => Transport::Plain,
        }
    }
}

/// One check's verdict on one endpoint, counted in the endpoint's health
/// while it says "down". Withdrawn for good when its checker stops: a task
/// being aborted may still finish a step, and a withdrawn vote ignores it.
#[derive(Debug)]
pub struct Vote {
    health: Arc<EndpointHealth>,
    state: AtomicU8,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Vote {
    /// A vote for "up" (new endpoints start in rotation).
    pub fn new(health: Arc<EndpointHealth>) -> Vote {
        Vote {
            health,
            state: AtomicU8::new(UP),
        }
    }

    /// Whether this check says "down".
    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
    }

    /// Sets this check's verdict; true when it changed.
    pub fn set_down(&self, down: bool) -> bool {
        let (from, to) = if down { (UP, DOWN) } else { (DOWN, UP) };
        let changed = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if changed {
            if down {
                self.health.add_check_down();
            } else {
                self.health.remove_check_down();
            }
        }
        changed
    }

    /// Takes the verdict back for good (the check stopped).
    pub fn withdraw(&self) {
        if self.state.swap(WITHDRAWN, Ordering::AcqRel) == DOWN {
            self.health.remove_check_down();
        }
    }
}

impl Checkers {
    /// Checks of `https` endpoints connect with `configs`, the data path's.
    pub fn with_upstream_tls(configs: Arc<UpstreamTlsConfigs>) -> Checkers {
        Checkers {
            running: HashMap::new(),
            upstream_tls: Some(configs),
        }
    }

    /// Makes the running tasks match `wanted` (each endpoint with a check
    /// and how it is reached): starts the missing ones, stops the ones no
    /// longer wanted. Does nothing outside a runtime.
    pub fn reconcile(&mut self, wanted: Vec<(&Endpoint, Arc<HealthCheck>, Transport)>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut keep = HashMap::new();
        for (endpoint, check, transport) in wanted {
            let key = (
                endpoint.authority.as_str().to_string(),
                check.clone(),
                transport,
            );
            if keep.contains_key(&key) {
                continue;
            }
            let running = match self.running.remove(&key) {
                Some(running) => running,
                None => {
                    let vote = Arc::new(Vote::new(endpoint.health.clone()));
                    let dial = self.dial(&endpoint.authority, &check, &key.2);
                    let target = Target {
                        authority: endpoint.authority.clone(),
                        dial,
                    };
                    let task = tokio::spawn(run(target, vote.clone(), check));
                    (task, vote)
                }
            };
            keep.insert(key, running);
        }
        for (_, (task, vote)) in self.running.drain() {
            stop(&task, &vote);
        }
        self.running = keep;
    }
}

impl Checkers {
    /// How a checker of `transport` connects: `None` in cleartext; for TLS
    /// the data path's configuration, or why there is none (every check
    /// then fails).
    fn dial(
        &self,
        authority: &Authority,
        check: &HealthCheck,
        transport: &Transport,
    ) -> Option<Result<TlsDial, String>> {
        let Transport::Tls { setting, name } = transport else {
            return None;
        };
        let Some(configs) = &self.upstream_tls else {
            return Some(Err("no upstream TLS settings".into()));
        };
        let dial = configs
            .for_route(setting.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|client| {
                // An HTTP check speaks HTTP/1.1 only: offer only that.
                let http1_only = check.grpc_service.is_none();
                client.dial(authority.as_str(), name.as_deref(), http1_only)
            });
        if let Err(reason) = &dial {
            tracing::warn!(endpoint = %authority, %reason, "active health check cannot reach an https endpoint: every check fails");
        }
        Some(dial)
    }
}

/// Where one checker connects.
#[derive(Debug)]
struct Target {
    authority: Authority,
    /// TLS, as the data path connects (`None`: cleartext).
    dial: Option<Result<TlsDial, String>>,
}

/// Stops a checker and takes its verdict back: no check, no verdict.
fn stop(task: &JoinHandle<()>, vote: &Vote) {
    task.abort();
    vote.withdraw();
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for (task, vote) in self.running.values() {
            stop(task, vote);
        }
    }
}

async fn run(target: Target, vote: Arc<Vote>, check: Arc<HealthCheck>) {
    let authority = &target.authority;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let wait = check.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::sleep(wait).await;
        let ok = tokio::time::timeout(check.timeout, probe(&target, &check))
            .await
            .unwrap_or(false);
        if ok {
            successes += 1;
            failures = 0;
            if successes >= check.healthy_threshold && vote.set_down(false) {
                tracing::info!(endpoint = %authority, path = %check.path, "active health check passing again");
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= check.unhealthy_threshold && vote.set_down(true) {
                tracing::warn!(endpoint = %authority, path = %check.path, "active health check failing: endpoint out of rotation");
            }
        }
    }
}

/// One check on a fresh connection, in cleartext or over TLS as
/// `target` says: a gRPC health check ([`portico_registry::grpc_health`])
/// when the route's check names a `grpc_service`, else `GET path` and the
/// status judged.
async fn probe(target: &Target, check: &HealthCheck) -> bool {
    let authority = &target.authority;
    let Ok(stream) = TcpStream::connect(authority.as_str()).await else {
        return false;
    };
    match &target.dial {
        None => speak(TokioIo::new(stream), "http", authority, check).await,
        Some(Err(_)) => false,
        Some(Ok(dial)) => {
            let connector = tokio_rustls::TlsConnector::from(dial.config.clone());
            match connector.connect(dial.name.clone(), stream).await {
                Ok(tls) => speak(TokioIo::new(tls), "https", authority, check).await,
                Err(e) => {
                    tracing::debug!(endpoint = %authority, error = %e, "active health check: TLS handshake failed");
                    false
                }
            }
        }
    }
}

/// The check itself, over a connection made.
async fn speak<T>(io: T, scheme: &str, authority: &Authority, check: &HealthCheck) -> bool
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if let Some(service) = &check.grpc_service {
        return portico_registry::grpc_health::probe_on(
            io,
            scheme,
            authority.as_str(),
            service,
            USER_AGENT,
        )
        .await
        .is_ok();
    }
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let req = Request::get(check.path.as_str())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new());
    let healthy = match req {
        Ok(req) => match sender.send_request(req).await {
            Ok(resp) => check.healthy(resp.status().as_u16()),
            Err(_) => false,
        },
        Err(_) => false,
    };
    drop(sender);
    conn.abort();
    healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_out_while_any_vote_says_down_and_a_withdrawn_vote_is_gone() {
        let health = Arc::new(EndpointHealth::new());
        let (a, b) = (Vote::new(health.clone()), Vote::new(health.clone()));
        assert!(a.set_down(true));
        assert!(!a.set_down(true), "one check counts once");
        assert!(b.set_down(true));
        assert!(b.set_down(false));
        assert!(
            health.is_checked_down(),
            "one passing check does not override another"
        );
        a.withdraw();
        assert!(!health.is_checked_down());
        // A step finishing after the withdrawal changes nothing.
        assert!(!a.set_down(true));
        assert!(!health.is_checked_down());
        b.withdraw();
        assert!(!health.is_checked_down());
    }

    #[tokio::test]
    async fn a_stopped_checker_takes_its_verdict_with_it() {
        let health = crate::health::HealthRegistry::default();
        // Nothing listens on port 1 of the loopback: every probe fails.
        let endpoint = Endpoint::from_static("127.0.0.1:1".parse().unwrap(), &health);
        let check = Arc::new(HealthCheck {
            path: "/healthz".into(),
            grpc_service: None,
            interval: std::time::Duration::from_millis(5),
            timeout: std::time::Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            expected_statuses: Vec::new(),
        });
        let mut checkers = Checkers::default();
        checkers.reconcile(vec![(&endpoint, check, Transport::Plain)]);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while !endpoint.health.is_checked_down() {
            assert!(tokio::time::Instant::now() < deadline, "never checked down");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        checkers.reconcile(Vec::new());
        assert!(!endpoint.health.is_checked_down());
    }
}
