//! Checks the registry runs itself, for instances registered with a
//! `"check"`: HTTP (`GET path`) or gRPC (`grpc.health.v1.Health/Check`
//! with `grpc_service`, see [`crate::grpc_health`]).
//!
//! One task per checked instance, reconciled with the registry's own change
//! feed (the same one gateways follow): a registration with a check starts
//! or restarts its task, a deregistration or a registration without a check
//! stops it. Every `interval` (+-10% jitter) the task sends `GET path` on a
//! fresh connection. `failures` failures in a row make a passing instance
//! `critical` (flagged `check_failing`, so its heartbeats are still accepted
//! and its lease keeps running); `successes` passes in a row make it
//! `passing` again. Status changes are conditional writes, so a
//! re-registration or drain racing a check wins.
//!
//! With several registry replicas (a later store), each would run the same
//! checks; the conditional writes keep that correct, at the cost of
//! duplicated probes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::catalog::{Catalog, decode_instance, encode_instance, instance_key};
use crate::lease::unix_ms;
use crate::model::{HttpCheck, Instance, Status, WatchEvent};

/// Runs checks until aborted.
pub fn spawn_checker(catalog: Arc<Catalog>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = Tasks::default();
        let tasks = &mut tasks.0;
        loop {
            let mut feed = match catalog.feed(0).await {
                Ok(feed) => feed,
                Err(e) => {
                    tracing::warn!(error = %e, "health checker cannot read the registry; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Some(WatchEvent::Snapshot { instances, .. }) = feed.snapshot.take() {
                let present: Vec<String> = instances
                    .iter()
                    .map(|i| instance_key(&i.service, &i.id))
                    .collect();
                tasks.retain(|k, (_, task)| {
                    let keep = present.contains(k);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for instance in instances {
                    reconcile(&catalog, tasks, &instance);
                }
            }
            loop {
                match feed.next().await {
                    Ok(WatchEvent::Put { instance, .. }) => reconcile(&catalog, tasks, &instance),
                    Ok(WatchEvent::Delete { service, id, .. }) => {
                        if let Some((_, task)) = tasks.remove(&instance_key(&service, &id)) {
                            task.abort();
                        }
                    }
                    Ok(_) => {}
                    // Fell behind or the store hiccuped: start over from a snapshot.
                    Err(_) => break,
                }
            }
        }
    })
}

/// The check tasks; aborted with the checker, so none outlives it.
#[derive(Default)]
struct Tasks(HashMap<String, (HttpCheck, JoinHandle<()>)>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in self.0.values() {
            task.abort();
        }
    }
}

fn reconcile(
    catalog: &Arc<Catalog>,
    tasks: &mut HashMap<String, (HttpCheck, JoinHandle<()>)>,
    instance: &Instance,
) {
    let key = instance_key(&instance.service, &instance.id);
    match &instance.spec.check {
        None => {
            if let Some((_, task)) = tasks.remove(&key) {
                task.abort();
            }
        }
        Some(check) => {
            if tasks.get(&key).is_some_and(|(c, _)| c == check.as_ref()) {
                return;
            }
            if let Some((_, task)) = tasks.remove(&key) {
                task.abort();
            }
            let task = tokio::spawn(run(
                catalog.clone(),
                key.clone(),
                instance.authority(),
                check.as_ref().clone(),
            ));
            tasks.insert(key, (check.as_ref().clone(), task));
        }
    }
}

async fn run(catalog: Arc<Catalog>, key: String, authority: String, check: HttpCheck) {
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let wait = check.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::sleep(wait).await;
        let ok = tokio::time::timeout(check.timeout, probe(&authority, &check))
            .await
            .unwrap_or(false);
        if ok {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let Ok(Some(kv)) = catalog.store().get(&key).await else {
            continue;
        };
        let Some(mut instance) = decode_instance(&kv) else {
            continue;
        };
        let flip_down = !ok
            && fails >= check.failures
            && matches!(instance.status, Status::Passing | Status::Warning);
        let flip_up = ok && passes >= check.successes && instance.check_failing;
        if !(flip_down || flip_up) {
            continue;
        }
        instance.status = if flip_down {
            Status::Critical
        } else {
            Status::Passing
        };
        instance.check_failing = flip_down;
        instance.status_since_ms = unix_ms();
        match catalog
            .store()
            .put_if(&key, encode_instance(&instance), kv.mod_revision)
            .await
        {
            Ok(Some(_)) if flip_down => {
                tracing::warn!(instance = %key, path = %check.path, "registry check failing: instance critical");
            }
            Ok(Some(_)) => tracing::info!(instance = %key, "registry check passing again"),
            Ok(None) => {} // changed meanwhile; the next round decides again
            Err(e) => {
                tracing::warn!(instance = %key, error = %e, "could not record a check result")
            }
        }
    }
}

/// One check: an HTTP `GET path` or, with a `grpc_service`, a gRPC health
/// check over h2c.
async fn probe(authority: &str, check: &HttpCheck) -> bool {
    match &check.grpc_service {
        Some(service) => crate::grpc_health::probe(authority, service, "portico-registry-check")
            .await
            .is_ok(),
        None => probe_http(authority, &check.path).await,
    }
}

async fn probe_http(authority: &str, path: &str) -> bool {
    let Ok(stream) = TcpStream::connect(authority).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let healthy = match http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "portico-registry-check")
        .body(Empty::<Bytes>::new())
    {
        Ok(req) => sender
            .send_request(req)
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    };
    drop(sender);
    conn.abort();
    healthy
}
