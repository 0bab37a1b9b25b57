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
//! An instance registered with `scheme = "https"` is checked over TLS, as
//! gateways reach it: verified against the web PKI roots plus the
//! registry's `--check-ca` bundles, the name being the instance's
//! `tls_server_name` metadata or else the host of its address; a check with
//! `tls_skip_verify` accepts any certificate. ALPN offers `http/1.1` to an
//! HTTP check and `h2` to a gRPC one. A failed handshake is a failed check.
//!
//! A check with `tcp` passes when a connection opens (nothing is sent). An
//! instance its check has kept `critical` for the check's
//! `deregister_critical_after` is removed (conditionally, as a status flip).
//! An instance registered with a check and no `ttl` has no lease: its check
//! alone keeps it, until it is deregistered or removed that way.
//!
//! With several registry replicas (etcd), each follows every checked
//! instance but probes only those assigned to it
//! ([`crate::store::Store::assigned_here`]: rendezvous hashing over the live
//! replica sessions), so each check runs once across the replicas; when a
//! replica's session ends, its checks move to the survivors at their next
//! round. Status changes are conditional writes, so a moment of differing
//! views (a round run twice, or skipped) is harmless.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::catalog::{Catalog, decode_instance, encode_instance, instance_key};
use crate::certificate::load::{CertError, provider};
use crate::certificate::trust::{self, AnyServerCert};
use crate::lease::unix_ms;
use crate::model::{Instance, InstanceCheck, Scheme, Status, WatchEvent};
use crate::store::KeyValue;

/// Instance metadata naming the TLS server name to verify and send as SNI
/// (the same key gateways read).
pub const SERVER_NAME_META: &str = "tls_server_name";

/// The client configurations checks of `https` instances connect with:
/// verified or not, offering `http/1.1` or `h2`. Built once.
#[derive(Debug, Clone)]
pub struct CheckTls {
    /// Indexed by `[verify][h2]`.
    configs: [[Arc<ClientConfig>; 2]; 2],
}

impl CheckTls {
    /// Trusting the web PKI roots plus every CA in `ca_files` (refused,
    /// naming the file, when one holds no certificate).
    pub fn new(ca_files: &[PathBuf]) -> Result<CheckTls, CertError> {
        let roots = Arc::new(trust::roots_with(ca_files)?);
        let config = |verify: bool, alpn: &[u8]| {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("the default provider supports the default versions");
            let mut config = match verify {
                true => builder.with_root_certificates(roots.clone()),
                false => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider()))),
            }
            .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        Ok(CheckTls {
            configs: [
                [config(false, b"http/1.1"), config(false, b"h2")],
                [config(true, b"http/1.1"), config(true, b"h2")],
            ],
        })
    }

    fn config(&self, check: &InstanceCheck) -> Arc<ClientConfig> {
        self.configs[usize::from(!check.tls_skip_verify)][usize::from(check.grpc_service.is_some())]
            .clone()
    }
}

/// Where a check connects: the instance's address, and for an `https`
/// instance the name its certificate is verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    authority: String,
    tls: Option<ServerName<'static>>,
}

impl Target {
    /// `None`: an `https` instance whose server name is not a valid name
    /// (its check then always fails, as a gateway's connection would).
    fn of(instance: &Instance) -> Option<Target> {
        let authority = instance.authority();
        let tls = match instance.spec.scheme {
            Scheme::Https => {
                let name = instance
                    .spec
                    .meta
                    .get(SERVER_NAME_META)
                    .map_or(instance.spec.address.as_str(), String::as_str);
                Some(ServerName::try_from(name.to_string()).ok()?)
            }
            Scheme::Http | Scheme::H2c => None,
        };
        Some(Target { authority, tls })
    }
}

/// Runs checks until aborted; `https` instances are reached with `tls`.
pub fn spawn_checker(catalog: Arc<Catalog>, tls: CheckTls) -> JoinHandle<()> {
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
                tasks.retain(|k, (_, _, task)| {
                    let keep = present.contains(k);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for instance in instances {
                    reconcile(&catalog, &tls, tasks, &instance);
                }
            }
            loop {
                match feed.next().await {
                    Ok(WatchEvent::Put { instance, .. }) => {
                        reconcile(&catalog, &tls, tasks, &instance)
                    }
                    Ok(WatchEvent::Delete { service, id, .. }) => {
                        if let Some((_, _, task)) = tasks.remove(&instance_key(&service, &id)) {
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

/// A running check: what it checks, where, and its task.
type Running = (InstanceCheck, Option<Target>, JoinHandle<()>);

/// The check tasks; aborted with the checker, so none outlives it.
#[derive(Default)]
struct Tasks(HashMap<String, Running>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, _, task) in self.0.values() {
            task.abort();
        }
    }
}

fn reconcile(
    catalog: &Arc<Catalog>,
    tls: &CheckTls,
    tasks: &mut HashMap<String, Running>,
    instance: &Instance,
) {
    let key = instance_key(&instance.service, &instance.id);
    let Some(check) = &instance.spec.check else {
        if let Some((_, _, task)) = tasks.remove(&key) {
            task.abort();
        }
        return;
    };
    let target = Target::of(instance);
    if tasks
        .get(&key)
        .is_some_and(|(c, t, _)| c == check.as_ref() && *t == target)
    {
        return;
    }
    if let Some((_, _, task)) = tasks.remove(&key) {
        task.abort();
    }
    let check = check.as_ref().clone();
    let task = tokio::spawn(run(
        catalog.clone(),
        key.clone(),
        target.clone(),
        tls.config(&check),
        check.clone(),
    ));
    tasks.insert(key, (check, target, task));
}

async fn run(
    catalog: Arc<Catalog>,
    key: String,
    target: Option<Target>,
    tls: Arc<ClientConfig>,
    check: InstanceCheck,
) {
    let mut streak = Streak::default();
    loop {
        let wait = check.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::sleep(wait).await;
        if !catalog.store().assigned_here(&key) {
            // Another replica checks this one; start afresh if it comes back.
            streak = Streak::default();
            continue;
        }
        let ok = match &target {
            Some(target) => tokio::time::timeout(check.timeout, probe(target, &tls, &check))
                .await
                .unwrap_or(false),
            None => false,
        };
        catalog.metrics().count_check(ok);
        streak.record(ok);
        // The local view (on etcd, the replica's mirror): a check round
        // costs the store nothing unless the status changes.
        let Ok(Some(kv)) = catalog.store().get_cached(&key).await else {
            continue;
        };
        let Some(instance) = decode_instance(&kv) else {
            continue;
        };
        if removed_as_critical(&catalog, &key, &kv, &instance, &check).await {
            return;
        }
        record(&catalog, &key, &kv, instance, &check, streak).await;
    }
}

/// Passes or failures in a row.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    passes: u32,
    fails: u32,
}

impl Streak {
    fn record(&mut self, ok: bool) {
        *self = match ok {
            true => Streak {
                passes: self.passes + 1,
                fails: 0,
            },
            false => Streak {
                passes: 0,
                fails: self.fails + 1,
            },
        };
    }
}

/// Flips the instance's status when the streak says so, by a conditional
/// write: a re-registration or drain racing the check wins.
async fn record(
    catalog: &Catalog,
    key: &str,
    kv: &KeyValue,
    mut instance: Instance,
    check: &InstanceCheck,
    streak: Streak,
) {
    let flip_down = streak.fails >= check.failures
        && matches!(instance.status, Status::Passing | Status::Warning);
    let flip_up = streak.passes >= check.successes && instance.check_failing;
    if !(flip_down || flip_up) {
        return;
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
        .put_if(key, encode_instance(&instance), kv.mod_revision)
        .await
    {
        Ok(Some(_)) if flip_down => {
            tracing::warn!(instance = %key, check = %describe(check), "registry check failing: instance critical");
        }
        Ok(Some(_)) => tracing::info!(instance = %key, "registry check passing again"),
        Ok(None) => {} // changed meanwhile; the next round decides again
        Err(e) => {
            tracing::warn!(instance = %key, error = %e, "could not record a check result")
        }
    }
}

/// Removes an instance its check has kept critical for the check's
/// `deregister_critical_after` (what ends an instance with no lease that
/// will never pass again). True when it was removed.
async fn removed_as_critical(
    catalog: &Arc<Catalog>,
    key: &str,
    kv: &KeyValue,
    instance: &Instance,
    check: &InstanceCheck,
) -> bool {
    let Some(after) = check.deregister_critical_after else {
        return false;
    };
    let critical_for = unix_ms().saturating_sub(instance.status_since_ms);
    if !(instance.check_failing && instance.status == Status::Critical)
        || u128::from(critical_for) < after.as_millis()
    {
        return false;
    }
    // Its own task: the removal's event aborts this check's task (maybe
    // before the write's answer is back), which must not lose the count.
    let (catalog, key, revision) = (catalog.clone(), key.to_string(), kv.mod_revision);
    let removal = tokio::spawn(async move {
        match catalog.store().delete_if(&key, revision).await {
            Ok(Some(_)) => {
                catalog.metrics().count_check_removal();
                tracing::info!(instance = %key, critical_for_ms = critical_for, "check critical past deregister_critical_after: instance removed");
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(instance = %key, error = %e, "could not remove an instance whose check stayed critical");
                false
            }
        }
    });
    removal.await.unwrap_or(false)
}

/// How a check is named in logs: its path, gRPC service or `tcp`.
fn describe(check: &InstanceCheck) -> &str {
    match (&check.grpc_service, check.tcp) {
        (Some(service), _) => service,
        (None, true) => "tcp",
        (None, false) => &check.path,
    }
}

/// One check on a fresh connection: a TCP connect, an HTTP `GET path` or,
/// with a `grpc_service`, a gRPC health check (h2c, or h2 over TLS).
async fn probe(target: &Target, tls: &Arc<ClientConfig>, check: &InstanceCheck) -> bool {
    let Ok(tcp) = TcpStream::connect(&target.authority).await else {
        return false;
    };
    if check.tcp {
        return true;
    }
    let _ = tcp.set_nodelay(true);
    let Some(name) = &target.tls else {
        return speak(TokioIo::new(tcp), "http", &target.authority, check).await;
    };
    match TlsConnector::from(tls.clone())
        .connect(name.clone(), tcp)
        .await
    {
        Ok(stream) => speak(TokioIo::new(stream), "https", &target.authority, check).await,
        Err(e) => {
            tracing::debug!(authority = %target.authority, error = %e, "registry check: TLS handshake failed");
            false
        }
    }
}

/// The check's request over an open connection.
async fn speak<T>(io: T, scheme: &str, authority: &str, check: &InstanceCheck) -> bool
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match &check.grpc_service {
        Some(service) => {
            crate::grpc_health::probe_on(io, scheme, authority, service, "portico-registry-check")
                .await
                .is_ok()
        }
        None => probe_http(io, authority, &check.path).await,
    }
}

async fn probe_http<T>(io: T, authority: &str, path: &str) -> bool
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
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
