//! Active health checks run by the gateway (`[route.health_check]`).
//!
//! One task per (endpoint, check) sends `GET path` every `interval` (jittered
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

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http::uri::Authority;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::balance::Endpoint;
use crate::health::EndpointHealth;

pub use portico_registry::route::HealthCheck;

/// The running checker tasks, keyed by endpoint and check.
#[derive(Debug, Default)]
pub struct Checkers {
    running: HashMap<(String, Arc<HealthCheck>), JoinHandle<()>>,
}

impl Checkers {
    /// Makes the running tasks match `wanted`: starts the missing ones,
    /// stops the ones no longer wanted. Does nothing outside a runtime.
    pub fn reconcile(&mut self, wanted: Vec<(&Endpoint, Arc<HealthCheck>)>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut keep = HashMap::new();
        for (endpoint, check) in wanted {
            let key = (endpoint.authority.as_str().to_string(), check.clone());
            if keep.contains_key(&key) {
                continue;
            }
            let task = match self.running.remove(&key) {
                Some(task) => task,
                None => tokio::spawn(run(
                    endpoint.authority.clone(),
                    endpoint.health.clone(),
                    check,
                )),
            };
            keep.insert(key, task);
        }
        for (_, task) in self.running.drain() {
            task.abort();
        }
        self.running = keep;
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

async fn run(authority: Authority, health: Arc<EndpointHealth>, check: Arc<HealthCheck>) {
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let wait = check.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::sleep(wait).await;
        let ok = tokio::time::timeout(check.timeout, probe(&authority, &check))
            .await
            .unwrap_or(false);
        if ok {
            successes += 1;
            failures = 0;
            if health.is_checked_down() && successes >= check.healthy_threshold {
                health.set_checked_down(false);
                tracing::info!(endpoint = %authority, "active health check passing: endpoint back in rotation");
            }
        } else {
            failures += 1;
            successes = 0;
            if !health.is_checked_down() && failures >= check.unhealthy_threshold {
                health.set_checked_down(true);
                tracing::warn!(endpoint = %authority, path = %check.path, "active health check failing: endpoint out of rotation");
            }
        }
    }
}

/// One check: connect, `GET path`, judge the status.
async fn probe(authority: &Authority, check: &HealthCheck) -> bool {
    let Ok(stream) = TcpStream::connect(authority.as_str()).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let req = Request::get(check.path.as_str())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::USER_AGENT, "portico-health-check")
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
