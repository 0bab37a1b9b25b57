//! The etcd backend (cargo feature `etcd`): the [`Store`] contract over an
//! etcd v3 cluster, so any number of registry replicas share one state.
//!
//! Designed so that a heartbeat costs etcd nothing and no read needs the
//! whole keyspace in one message (`docs/architecture.md`, "The etcd store",
//! has the protocol and its failure cases):
//!
//! - [`members`]: one client per member, failover, paged range reads.
//! - [`mirror`]: the keyspace in memory, fed by one watch; reads (after a
//!   one-key sync with etcd) and watches are served from it.
//! - [`leases`]: this replica's session, the deadlines of the leases it
//!   holds (in memory: a heartbeat is a map update), claims when a
//!   heartbeat arrives for a lease another replica holds, adoption when a
//!   holder's session ends, and the counts published for the others'
//!   self-preservation.
//! - [`batch`]: every write packed into transactions of at most 128
//!   operations, applied exactly once even when an answer is lost.
//! - [`watch`]: a watch of etcd itself, for watchers resuming from before
//!   the mirror's ring.
//! - [`keys`]: the key layout under the prefix, and the records' format.

mod batch;
mod keys;
mod leases;
mod members;
mod mirror;
mod watch;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use self::batch::{Batcher, Outcome, WriteOp};
use self::keys::Keys;
use self::leases::Leases;
use self::members::Members;
use self::mirror::Mirror;
use super::{
    Holding, KeyValue, LeaseCounts, LeaseReport, Range, Store, StoreError, UniquePut, Watch,
    WriteHealth,
};
use crate::model::Revision;

/// Default TTL of a replica's session: how long after a replica dies the
/// others adopt the leases it held (each then gets a full lease).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Longest a read waits for the mirror to catch up before reading etcd.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest [`EtcdStore::check`] waits for the mirror and the session.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a closing store waits for etcd to take its session back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

struct Inner {
    keys: Keys,
    members: Arc<Members>,
    mirror: Arc<Mirror>,
    leases: Arc<Leases>,
    batcher: Batcher,
    /// Taken by [`Store::close`], which waits for them to be gone.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Leaving: give the session back so the others adopt at once.
        self.leases.revoke();
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.iter() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.members.endpoints())
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

/// TLS to the etcd members: the CA their certificates chain to and, for a
/// cluster started with `--client-cert-auth`, this replica's client
/// certificate. PEM, as read from the files the operator named; the name
/// verified is each endpoint's host (an IP against IP subjectAltNames).
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM bundle of the CAs trusted for the members' certificates.
    pub ca_pem: Vec<u8>,
    /// The client certificate (PEM chain) and its key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    fn options(&self) -> etcd_client::TlsOptions {
        let options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => options.identity(etcd_client::Identity::from_pem(cert, key)),
            None => options,
        }
    }
}

/// The etcd store; cheap to clone. Its tasks (mirror, session, adoption,
/// batcher) stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct EtcdStore(Arc<Inner>);

impl EtcdStore {
    /// A store over the etcd members at `endpoints` (`http://host:port`),
    /// keeping everything under `prefix`, with the default session TTL.
    /// Connects in the background; fails only on an empty endpoint list.
    /// Must be called within a Tokio runtime.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Result<EtcdStore, StoreError> {
        Self::with_session_ttl(endpoints, prefix, DEFAULT_SESSION_TTL)
    }

    /// [`EtcdStore::new`] with this replica's session TTL
    /// (`--etcd-session-ttl`).
    pub fn with_session_ttl(
        endpoints: Vec<String>,
        prefix: &str,
        session_ttl: Duration,
    ) -> Result<EtcdStore, StoreError> {
        Self::with_tls(endpoints, prefix, session_ttl, None)
    }

    /// [`EtcdStore::with_session_ttl`] over TLS (`https://` endpoints)
    /// when `tls` is given.
    pub fn with_tls(
        endpoints: Vec<String>,
        prefix: &str,
        session_ttl: Duration,
        tls: Option<EtcdTls>,
    ) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Failed("no etcd endpoints given".into()));
        }
        let keys = Keys::new(prefix);
        let members = Arc::new(Members::new(endpoints, tls.map(|t| t.options())));
        let mirror = Arc::new(Mirror::new(keys.clone()));
        let writer = fastrand::u64(1..);
        let (batcher, batching) = Batcher::start(members.clone(), keys.clone(), writer);
        let leases = Arc::new(Leases::new(
            keys.clone(),
            members.clone(),
            mirror.clone(),
            batcher.clone(),
            session_ttl,
            writer,
        ));
        let observer: Arc<dyn mirror::Observer> = leases.clone();
        let tasks = vec![
            batching,
            tokio::spawn(mirror.clone().run(members.clone(), observer)),
            tokio::spawn(leases.clone().run_session()),
            tokio::spawn(leases.clone().run_clock()),
            tokio::spawn(leases.clone().run_adoption()),
        ];
        Ok(EtcdStore(Arc::new(Inner {
            keys,
            members,
            mirror,
            leases,
            batcher,
            tasks: Mutex::new(tasks),
        })))
    }

    /// Waits until some member answers, then (at most 10 s) until the
    /// mirror is read and the session open, so a replica that reports
    /// ready serves reads from memory and takes heartbeats.
    pub async fn check(&self) -> Result<Revision, StoreError> {
        let revision = self.revision().await?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while !(self.0.mirror.loaded() && self.0.leases.vouched().is_some()) {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "etcd answers, but the mirror or the session is not ready yet".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(revision)
    }

    /// Aborts the store's tasks and waits (until `deadline`) until they are
    /// gone. An abort takes effect only at the task's next await: one still
    /// running on another worker could vouch for the session, or finish
    /// opening one, after [`Leases::give_back`] took it.
    async fn stop_tasks(&self, deadline: tokio::time::Instant) {
        let tasks = std::mem::take(&mut *self.0.tasks.lock().expect("tasks lock poisoned"));
        for task in &tasks {
            task.abort();
        }
        let stopped = futures_util::future::join_all(tasks);
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            tracing::warn!(
                "the etcd store's tasks did not stop in time; giving the session back anyway"
            );
        }
    }

    async fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        self.0.batcher.submit(op).await
    }

    /// Brings the mirror up to every write acknowledged before this call,
    /// on any replica: `Some(false)` when it is current, `Some(true)` when
    /// etcd has no quorum (the mirror is then the freshest copy there is,
    /// served as stale), `None` when there is no mirror yet or it did not
    /// catch up in time (read etcd directly).
    async fn synced(&self) -> Result<Option<bool>, StoreError> {
        if !self.0.mirror.loaded() {
            return Ok(None);
        }
        // Every write of every replica moved a slot key: the newest one is
        // the revision the mirror must have seen.
        match self.0.members.last_write(&self.0.keys.writers()).await {
            Ok(current) => {
                if self.0.mirror.sync(current, SYNC_TIMEOUT).await {
                    return Ok(Some(false));
                }
                tracing::warn!(
                    current,
                    mirror = self.0.mirror.revision(),
                    "etcd mirror behind; reading etcd directly"
                );
                Ok(None)
            }
            Err(StoreError::Unavailable(_)) => Ok(Some(true)),
            Err(e) => Err(e),
        }
    }

    /// A read of `prefix` straight from etcd (paged), or from a member
    /// without quorum (stale).
    async fn direct_range(&self, prefix: &str) -> Result<Range, StoreError> {
        let full = self.0.keys.data(prefix);
        let data = self.0.keys.data("");
        let to_range = |kvs: Vec<etcd_client::KeyValue>, at: i64, stale_ms| Range {
            kvs: kvs.into_iter().filter_map(|kv| to_kv(&data, kv)).collect(),
            revision: at.max(0) as Revision,
            stale_ms,
        };
        match self.0.members.range_paged(&full, None, false).await {
            Ok((kvs, at)) => Ok(to_range(kvs, at, None)),
            Err(StoreError::Unavailable(reason)) => {
                match self.0.members.stale_range_paged(&full).await {
                    Some((kvs, at, stale_ms)) => Ok(to_range(kvs, at, Some(stale_ms))),
                    None => Err(StoreError::Unavailable(reason)),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// A data key from etcd, without the `{prefix}kv/` part.
fn to_kv(data_prefix: &str, kv: etcd_client::KeyValue) -> Option<KeyValue> {
    let mod_revision = kv.mod_revision().max(0) as Revision;
    let (key, value) = kv.into_key_value();
    let key = String::from_utf8(key).ok()?;
    Some(KeyValue {
        key: key.strip_prefix(data_prefix)?.to_string(),
        value: Bytes::from(value),
        mod_revision,
    })
}

fn applied(outcome: &Outcome) -> Option<Revision> {
    match *outcome {
        Outcome::Applied(revision) => Some(revision),
        _ => None,
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        let record = lease.map(|ttl| self.0.leases.record_for(ttl));
        let op = WriteOp::Put {
            key: key.to_string(),
            value,
            record,
        };
        let revision = applied(&self.write(op).await?).ok_or_else(|| {
            StoreError::Failed("etcd did not apply an unconditional write".into())
        })?;
        match record {
            Some(r) => self.0.leases.hold(key, r.ttl(), revision, r.owner),
            None => self.0.leases.forget(key),
        }
        Ok(revision)
    }

    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let op = WriteOp::PutIf {
            key: key.to_string(),
            value,
            expected,
        };
        Ok(applied(&self.write(op).await?))
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        // Deleting what is not there writes nothing (every batch moves its
        // slot key, hence the revision): "changes nothing" holds on etcd
        // as on the embedded store. The mirror is current as of now, so a
        // write acknowledged before this call is seen.
        if self.synced().await? == Some(false) && self.0.mirror.get(key).is_none() {
            self.0.leases.forget(key);
            return Ok(None);
        }
        let done = applied(
            &self
                .write(WriteOp::Delete {
                    key: key.to_string(),
                })
                .await?,
        );
        self.0.leases.forget(key);
        Ok(done)
    }

    async fn delete_if(
        &self,
        key: &str,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let op = WriteOp::DeleteIf {
            key: key.to_string(),
            expected,
        };
        let done = applied(&self.write(op).await?);
        if done.is_some() {
            self.0.leases.forget(key);
        }
        Ok(done)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let kv = self.0.members.get(&self.0.keys.data(key), None).await?;
        Ok(kv.and_then(|kv| to_kv(&self.0.keys.data(""), kv)))
    }

    async fn get_cached(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.0.mirror.get(key) {
            Some(kv) => Ok(Some(kv)),
            None => self.get(key).await,
        }
    }

    fn peek(&self, key: &str) -> Option<Option<KeyValue>> {
        self.0.mirror.loaded().then(|| self.0.mirror.get(key))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        match self.synced().await? {
            Some(stale) => Ok(self.0.mirror.range(prefix, stale)),
            None => self.direct_range(prefix).await,
        }
    }

    async fn keep_alive(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        let renewed = self.0.leases.renew(key).await?;
        Ok(renewed.then(|| self.0.mirror.revision()))
    }

    async fn lapsed(&self, prefix: &str) -> Result<LeaseReport, StoreError> {
        self.0.leases.report(prefix)
    }

    async fn put_if_lapsed(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let Some((claim, session)) = self.0.leases.fence(key) else {
            return Ok(None);
        };
        let op = WriteOp::PutFenced {
            key: key.to_string(),
            value,
            expected,
            claim,
            session,
        };
        Ok(applied(&self.write(op).await?))
    }

    async fn delete_if_lapsed(
        &self,
        key: &str,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let Some((claim, session)) = self.0.leases.fence(key) else {
            return Ok(None);
        };
        let op = WriteOp::DeleteFenced {
            key: key.to_string(),
            expected,
            claim,
            session,
        };
        let done = applied(&self.write(op).await?);
        if done.is_some() {
            self.0.leases.forget(key);
        }
        Ok(done)
    }

    fn publish_lease_counts(&self, counts: LeaseCounts) {
        self.0.leases.publish(counts);
    }

    async fn put_unique(
        &self,
        key: &str,
        value: Bytes,
        unique: &str,
        release: Option<&str>,
        holder: Option<&str>,
    ) -> Result<UniquePut, StoreError> {
        let op = WriteOp::PutUnique {
            key: key.to_string(),
            value,
            unique: unique.to_string(),
            holder: holder.map(str::to_string),
            release: release.map(str::to_string),
        };
        match self.write(op).await? {
            Outcome::Applied(revision) => {
                self.0.leases.forget(key);
                Ok(UniquePut::Written(revision))
            }
            Outcome::Held(by) => Ok(UniquePut::Held { by }),
            other => Err(StoreError::Failed(format!(
                "unexpected answer to a unique write: {other:?}"
            ))),
        }
    }

    async fn delete_unique(
        &self,
        key: &str,
        unique: Option<&str>,
    ) -> Result<Option<Revision>, StoreError> {
        let op = WriteOp::DeleteUnique {
            key: key.to_string(),
            unique: unique.map(str::to_string),
        };
        Ok(applied(&self.write(op).await?))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        if let Some(watch) = self.0.mirror.watch(prefix, after) {
            return Ok(Box::new(watch));
        }
        let watch =
            watch::EtcdWatch::open(self.0.members.clone(), self.0.keys.clone(), prefix, after)
                .await?;
        Ok(Box::new(watch))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.0.members.revision(&self.0.keys.probe()).await
    }

    fn write_health(&self) -> WriteHealth {
        WriteHealth {
            refusing: self.0.leases.vouched().is_none().then(|| {
                "no etcd session this replica can vouch for: heartbeats are refused (503) so that clients use another replica".to_string()
            }),
            ..WriteHealth::default()
        }
    }

    fn lease_left(&self, key: &str) -> Option<Duration> {
        self.0.leases.left(key)
    }

    fn assigned_here(&self, key: &str) -> bool {
        self.0.leases.assigned_here(key)
    }

    async fn close(&self) {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        self.stop_tasks(deadline).await;
        match tokio::time::timeout_at(deadline, self.0.leases.give_back()).await {
            Ok(Ok(())) => {
                tracing::info!("etcd session given back: its leases go to the other replicas now")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not give the etcd session back: the other replicas adopt its leases when it lapses")
            }
            Err(_) => {
                tracing::warn!(timeout = ?CLOSE_TIMEOUT, "etcd did not answer the session's release in time: the other replicas adopt its leases when it lapses")
            }
        }
    }

    fn holding(&self) -> Option<Holding> {
        let (leases, batch) = (&self.0.leases, self.0.batcher.stats());
        Some(Holding {
            session: leases.vouched(),
            held: leases.held(),
            claims: leases.stats.claims.load(Ordering::Relaxed),
            adopted: leases.stats.adopted.load(Ordering::Relaxed),
            txns: batch.txns.load(Ordering::Relaxed),
            txn_ops: batch.ops.load(Ordering::Relaxed),
        })
    }
}
