//! The etcd backend (cargo feature `etcd`): the [`Store`] contract over an
//! etcd v3 cluster, so any number of registry replicas share one state.
//!
//! # Keys
//!
//! Under the prefix (`--etcd-prefix`, default `/portico/`):
//!
//! - `kv/{key}`: the registry's own keys and values (instances, routes). The
//!   revision the API reports is etcd's revision.
//! - `lease/{key}`: the lease record of a leased key: the ids of its two etcd
//!   leases and its length. Not attached to any lease.
//! - `alive/{key}`: attached to an etcd lease of the full lease length.
//! - `fresh/{key}`: attached to an etcd lease of two thirds of it.
//!
//! # Leases: etcd keeps the clock, the registry decides
//!
//! Expiry must stay a registry decision (self-preservation pauses it when
//! many leases lapse at once, and an expired instance is first marked
//! `critical`), so the data key is never attached to an etcd lease: etcd
//! expiring a lease only deletes the `alive/` marker. [`Store::lapsed`] then
//! reports keys whose record is there but whose `alive/` marker is gone
//! (lapsed), and keys whose `fresh/` marker is gone (late: less than a third
//! left, a renewal missed), in three range reads at one revision.
//!
//! A heartbeat ([`Store::keep_alive`]) renews both etcd leases: two
//! keep-alive messages, which etcd's leader answers from memory, with no
//! Raft proposal and no disk write, and no new revision. At 10,000 instances
//! renewing every third of a 30 s lease that is ~1,000 keep-alives a second
//! and zero etcd writes. A lease that etcd already expired is granted again
//! (one write), which is what happens after a long partition.
//!
//! The leases live in etcd, not in a replica: when the replica that granted
//! a lease dies, another replica renews it (it reads the lease ids from the
//! record), and the lease keeps counting down meanwhile, as it should. When
//! etcd elects a new leader it extends every lease by its full length, the
//! same grace the embedded store gives after a restart. Several replicas
//! sweep at once without harm: marking `critical` and removing are
//! compare-and-swap on the key's revision, so exactly one replica wins each
//! transition and none is missed while any replica runs.
//!
//! # Failover
//!
//! One client per member, used in turn: an operation that fails with a
//! transport error, `Unavailable` or "no leader" is tried again on the next
//! member (every member twice at most, with a short pause), so a dead member
//! costs one failed attempt, not a share of all traffic. Watches reconnect to
//! a live member and resume from the last revision they delivered; a
//! compacted revision is reported as `Compacted` and the registry re-lists.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};

use super::{Change, KeyValue, LeaseReport, Range, Store, StoreError, Watch};
use crate::model::Revision;

/// How long one etcd request may take before the next member is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before a second round over the members.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// The lease record kept at `lease/{key}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LeaseRecord {
    alive: i64,
    fresh: i64,
    ttl_ms: u64,
}

struct Inner {
    endpoints: Vec<String>,
    clients: Vec<tokio::sync::OnceCell<Client>>,
    current: AtomicUsize,
    /// Clients that do not require a leader, for reads when there is none.
    stale_clients: Vec<tokio::sync::OnceCell<Client>>,
    /// Unix ms of the last operation a quorum answered.
    last_ok_ms: std::sync::atomic::AtomicU64,
    prefix: String,
    /// Lease ids by key, so a heartbeat need not read the record.
    leases: DashMap<String, LeaseRecord>,
    /// An open keep-alive stream per lease: a heartbeat is one message on
    /// it instead of a new gRPC stream.
    keepers: DashMap<i64, Arc<tokio::sync::Mutex<Option<Keeper>>>>,
}

type Keeper = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The etcd store; cheap to clone.
#[derive(Debug, Clone)]
pub struct EtcdStore(Arc<Inner>);

/// Whether another member might succeed: everything but the errors a
/// request earns by itself (bad argument, missing permission, ...). A
/// connection cut by a dying member surfaces as `Unknown` or `Internal`, an
/// election as `Unavailable` ("leader changed", "no leader", "request timed
/// out"), an overloaded member as `ResourceExhausted`.
fn retriable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::AlreadyExists
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange
                | tonic::Code::Unimplemented
        ),
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::LeaseKeepAliveError(_)
        | etcd_client::Error::WatchError(_) => true,
        _ => false,
    }
}

fn failed(e: &etcd_client::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

/// The lease record in the first of `kvs`, if any.
fn decode_record(kvs: &[etcd_client::KeyValue]) -> Option<LeaseRecord> {
    kvs.first()
        .and_then(|kv| serde_json::from_slice::<LeaseRecord>(kv.value()).ok())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as Revision)
}

impl EtcdStore {
    /// A store over the etcd members at `endpoints` (`http://host:port`),
    /// keeping everything under `prefix`. Connects lazily; fails only on an
    /// empty endpoint list.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Failed("no etcd endpoints given".into()));
        }
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(EtcdStore(Arc::new(Inner {
            clients: endpoints
                .iter()
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            stale_clients: endpoints
                .iter()
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            endpoints,
            current: AtomicUsize::new(0),
            last_ok_ms: std::sync::atomic::AtomicU64::new(0),
            prefix,
            leases: DashMap::new(),
            keepers: DashMap::new(),
        })))
    }

    /// Waits until some member answers, so a registry does not report ready
    /// on a cluster it cannot reach.
    pub async fn check(&self) -> Result<Revision, StoreError> {
        self.revision().await
    }

    fn data(&self, key: &str) -> String {
        format!("{}kv/{key}", self.0.prefix)
    }

    fn marker(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}/{key}", self.0.prefix)
    }

    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let endpoint = self.0.endpoints[i].clone();
        self.0.clients[i]
            .get_or_try_init(|| async move {
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
                    .with_require_leader(true);
                Client::connect([endpoint], Some(options)).await
            })
            .await
            .cloned()
    }

    /// Runs `op` on the current member, moving to the next one on errors a
    /// live member would not give.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.0.endpoints.len();
        let start = self.0.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for attempt in 0..2 * n {
            if attempt == n {
                tokio::time::sleep(ROUND_PAUSE).await;
            }
            let i = (start + attempt) % n;
            let result = match self.client(i).await {
                Ok(client) => op(client).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    self.0.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
                    if i != start {
                        self.0.current.store(i, Ordering::Relaxed);
                        tracing::info!(endpoint = %self.0.endpoints[i], "etcd: using another member");
                    }
                    return Ok(v);
                }
                Err(e) if retriable(&e) => {
                    tracing::debug!(endpoint = %self.0.endpoints[i], error = %e, "etcd member failed; trying the next");
                    last = format!("{}: {e}", self.0.endpoints[i]);
                }
                Err(e) => return Err(failed(&e)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "etcd unavailable: no member could serve the request, or the cluster has no quorum (last error: {last})"
        )))
    }

    /// Runs a transaction on a live member.
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.run(|mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    /// Revokes the lease record a transaction's first operation (a get of
    /// `lease/{key}`) found: the write it belonged to replaced or removed it.
    fn revoke_replaced(&self, resp: &etcd_client::TxnResponse) {
        if let Some(TxnOpResponse::Get(get)) = resp.op_responses().first() {
            if let Some(record) = decode_record(get.kvs()) {
                self.revoke_later(record);
            }
        }
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseRecord, StoreError> {
        let full = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let two_thirds = (ttl.as_secs_f64() * 2.0 / 3.0).ceil().max(1.0) as i64;
        let alive = self
            .run(|mut c| async move { c.lease_grant(full, None).await })
            .await?
            .id();
        let fresh = self
            .run(|mut c| async move { c.lease_grant(two_thirds, None).await })
            .await?
            .id();
        Ok(LeaseRecord {
            alive,
            fresh,
            ttl_ms: ttl.as_millis() as u64,
        })
    }

    fn revoke_later(&self, record: LeaseRecord) {
        let store = self.clone();
        for id in [record.alive, record.fresh] {
            self.0.keepers.remove(&id);
        }
        tokio::spawn(async move {
            for id in [record.alive, record.fresh] {
                // Best effort: an unrevoked lease only expires on its own.
                let _ = store
                    .run(|mut c| async move { c.lease_revoke(id).await })
                    .await;
            }
        });
    }

    /// One keep-alive round trip; the lease's remaining TTL (0: expired).
    /// Reuses the lease's open keep-alive stream; a broken one (its member
    /// died) is reopened through [`EtcdStore::run`], on a live member.
    async fn renew(&self, id: i64) -> Result<i64, StoreError> {
        let slot = self.0.keepers.entry(id).or_default().clone();
        let mut keeper = slot.lock().await;
        if let Some((k, stream)) = keeper.as_mut() {
            let answer = async {
                k.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
                Ok(Ok(Some(r))) => return Ok(self.settle(id, r.ttl())),
                _ => *keeper = None,
            }
        }
        let opened = self
            .run(|mut c| async move {
                let (mut k, mut stream) = match c.lease_keep_alive(id).await {
                    Ok(opened) => opened,
                    // etcd-client's own check of the first answer (TTL 0):
                    // the lease expired, which is an answer, not a failure
                    // to try on another member.
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                k.keep_alive().await?;
                let ttl = stream.message().await?.map_or(0, |r| r.ttl());
                Ok(Some((k, stream, ttl)))
            })
            .await?;
        let Some((k, stream, ttl)) = opened else {
            return Ok(self.settle(id, 0));
        };
        *keeper = Some((k, stream));
        Ok(self.settle(id, ttl))
    }

    /// Forgets the stream of a lease etcd no longer has.
    fn settle(&self, id: i64, ttl: i64) -> i64 {
        if ttl <= 0 {
            self.0.keepers.remove(&id);
        }
        ttl
    }

    async fn read_record(&self, key: &str) -> Result<Option<LeaseRecord>, StoreError> {
        if let Some(r) = self.0.leases.get(key) {
            return Ok(Some(*r));
        }
        let record_key = self.marker("lease", key);
        let resp = self
            .run(|mut c| {
                let k = record_key.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        let record = decode_record(resp.kvs());
        if let Some(r) = record {
            self.0.leases.insert(key.to_string(), r);
        }
        Ok(record)
    }

    /// Puts the markers of `record` if `key` still exists.
    async fn attach(&self, key: &str, record: LeaseRecord) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(&record).expect("a lease record serialises");
        let (data, rec, alive, fresh) = (
            self.data(key),
            self.marker("lease", key),
            self.marker("alive", key),
            self.marker("fresh", key),
        );
        let txn = Txn::new()
            .when([Compare::version(data, CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put(rec, value, None),
                TxnOp::put(alive, "", Some(PutOptions::new().with_lease(record.alive))),
                TxnOp::put(fresh, "", Some(PutOptions::new().with_lease(record.fresh))),
            ]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            self.0.leases.insert(key.to_string(), record);
        }
        Ok(resp.succeeded())
    }

    /// Deletes `key` and its lease markers, when `guard` holds.
    async fn remove(&self, key: &str, guard: Compare) -> Result<Option<Revision>, StoreError> {
        let ops = [
            TxnOp::get(self.marker("lease", key), None),
            TxnOp::delete(self.data(key), None),
            TxnOp::delete(self.marker("lease", key), None),
            TxnOp::delete(self.marker("alive", key), None),
            TxnOp::delete(self.marker("fresh", key), None),
        ];
        let txn = Txn::new().when([guard]).and_then(ops);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        self.0.leases.remove(key);
        self.revoke_replaced(&resp);
        Ok(Some(revision_of(resp.header())))
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        let key = key.strip_prefix(&self.data(""))?;
        Some(KeyValue {
            key: key.to_string(),
            value: Bytes::copy_from_slice(kv.value()),
            mod_revision: kv.mod_revision().max(0) as Revision,
        })
    }

    /// Without quorum no current read exists; a member that is still up can
    /// answer from its own copy (a serializable read). The answer says how
    /// long it has been since the last current one.
    async fn stale_range(&self, prefix: &str) -> Option<Range> {
        for (i, endpoint) in self.0.endpoints.iter().enumerate() {
            let client = self.0.stale_clients[i]
                .get_or_try_init(|| async {
                    let options = ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(1))
                        .with_timeout(Duration::from_secs(1));
                    Client::connect([endpoint.clone()], Some(options)).await
                })
                .await;
            let Ok(mut client) = client.cloned() else {
                continue;
            };
            let options = GetOptions::new().with_prefix().with_serializable();
            if let Ok(resp) = client.get(self.data(prefix), Some(options)).await {
                let last = self.0.last_ok_ms.load(Ordering::Relaxed);
                return Some(Range {
                    kvs: resp.kvs().iter().filter_map(|kv| self.to_kv(kv)).collect(),
                    revision: revision_of(resp.header()),
                    stale_ms: Some(unix_ms().saturating_sub(last)),
                });
            }
        }
        None
    }

    async fn range_at(
        &self,
        prefix: String,
        revision: Option<i64>,
        keys_only: bool,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.run(|mut c| {
            let mut options = GetOptions::new().with_prefix();
            if let Some(r) = revision {
                options = options.with_revision(r);
            }
            if keys_only {
                options = options.with_keys_only();
            }
            let p = prefix.clone();
            async move { c.get(p, Some(options)).await }
        })
        .await
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
        let record = match lease {
            Some(ttl) => Some(self.grant(ttl).await?),
            None => None,
        };
        let mut ops = vec![
            TxnOp::get(self.marker("lease", key), None),
            TxnOp::put(self.data(key), value.to_vec(), None),
        ];
        match &record {
            Some(r) => ops.extend([
                TxnOp::put(
                    self.marker("lease", key),
                    serde_json::to_vec(r).expect("a lease record serialises"),
                    None,
                ),
                TxnOp::put(
                    self.marker("alive", key),
                    "",
                    Some(PutOptions::new().with_lease(r.alive)),
                ),
                TxnOp::put(
                    self.marker("fresh", key),
                    "",
                    Some(PutOptions::new().with_lease(r.fresh)),
                ),
            ]),
            None => ops.extend([
                TxnOp::delete(self.marker("lease", key), None),
                TxnOp::delete(self.marker("alive", key), None),
                TxnOp::delete(self.marker("fresh", key), None),
            ]),
        }
        let txn = Txn::new().and_then(ops);
        let resp = self.txn(txn).await?;
        // The lease this write replaced, if any, is no longer referenced.
        self.revoke_replaced(&resp);
        match record {
            Some(r) => {
                self.0.leases.insert(key.to_string(), r);
            }
            None => {
                self.0.leases.remove(key);
            }
        }
        Ok(revision_of(resp.header()))
    }

    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        let data = self.data(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                data.clone(),
                CompareOp::Equal,
                expected as i64,
            )])
            .and_then([TxnOp::put(data, value.to_vec(), None)]);
        let resp = self.txn(txn).await?;
        Ok(resp.succeeded().then(|| revision_of(resp.header())))
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.remove(key, Compare::version(self.data(key), CompareOp::Greater, 0))
            .await
    }

    async fn delete_if(
        &self,
        key: &str,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        self.remove(
            key,
            Compare::mod_revision(self.data(key), CompareOp::Equal, expected as i64),
        )
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let data = self.data(key);
        let resp = self
            .run(|mut c| {
                let k = data.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        Ok(resp.kvs().first().and_then(|kv| self.to_kv(kv)))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let resp = match self.range_at(self.data(prefix), None, false).await {
            Ok(resp) => resp,
            Err(StoreError::Unavailable(reason)) => {
                return self
                    .stale_range(prefix)
                    .await
                    .ok_or(StoreError::Unavailable(reason));
            }
            Err(e) => return Err(e),
        };
        Ok(Range {
            kvs: resp.kvs().iter().filter_map(|kv| self.to_kv(kv)).collect(),
            revision: revision_of(resp.header()),
            stale_ms: None,
        })
    }

    async fn keep_alive(&self, key: &str) -> Result<bool, StoreError> {
        let Some(record) = self.read_record(key).await? else {
            return Ok(false);
        };
        // Both leases at once: one round trip of latency, not two.
        let (alive, fresh) = tokio::join!(self.renew(record.alive), self.renew(record.fresh));
        if alive? <= 0 {
            // etcd expired the lease (a long silence): grant it again.
            self.0.leases.remove(key);
            let fresh = self.grant(Duration::from_millis(record.ttl_ms)).await?;
            let attached = self.attach(key, fresh).await?;
            self.revoke_later(record);
            return Ok(attached);
        }
        if fresh? <= 0 {
            // Late but not lapsed: only the two-thirds lease is gone.
            let two_thirds = (record.ttl_ms as f64 / 1000.0 * 2.0 / 3.0).ceil().max(1.0) as i64;
            let id = self
                .run(|mut c| async move { c.lease_grant(two_thirds, None).await })
                .await?
                .id();
            let renewed = LeaseRecord {
                fresh: id,
                ..record
            };
            return self.attach(key, renewed).await;
        }
        Ok(true)
    }

    async fn lapsed(&self, prefix: &str) -> Result<LeaseReport, StoreError> {
        let records = self
            .range_at(self.marker("lease", prefix), None, false)
            .await?;
        let at = records.header().map(|h| h.revision());
        let alive = self
            .range_at(self.marker("alive", prefix), at, true)
            .await?;
        let fresh = self
            .range_at(self.marker("fresh", prefix), at, true)
            .await?;
        let strip =
            |kvs: &[etcd_client::KeyValue], kind: &str| -> std::collections::HashSet<String> {
                let p = self.marker(kind, "");
                kvs.iter()
                    .filter_map(|kv| std::str::from_utf8(kv.key()).ok())
                    .filter_map(|k| k.strip_prefix(&p).map(str::to_string))
                    .collect()
            };
        let alive = strip(alive.kvs(), "alive");
        let fresh = strip(fresh.kvs(), "fresh");
        let leased = strip(records.kvs(), "lease");
        let missing: Vec<&String> = leased.iter().filter(|k| !alive.contains(*k)).collect();
        let late = leased
            .iter()
            .filter(|k| alive.contains(*k) && !fresh.contains(*k))
            .count();
        let mut lapsed = Vec::with_capacity(missing.len());
        if !missing.is_empty() {
            let data = self.range_at(self.data(prefix), at, false).await?;
            for kv in data.kvs().iter().filter_map(|kv| self.to_kv(kv)) {
                if missing.iter().any(|m| **m == kv.key) {
                    lapsed.push(kv);
                }
            }
        }
        Ok(LeaseReport {
            lapsed,
            late,
            leased: leased.len(),
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        let mut watch = EtcdWatch {
            store: self.clone(),
            prefix: self.data(prefix),
            next: after as i64 + 1,
            stream: None,
            pending: std::collections::VecDeque::new(),
        };
        // Open now so a compacted start is reported to the caller at once.
        watch.open().await?;
        Ok(Box::new(watch))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let data = self.data("");
        let resp = self
            .run(|mut c| {
                let k = data.clone();
                async move {
                    c.get(k, Some(GetOptions::new().with_prefix().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(revision_of(resp.header()))
    }
}

/// A watch that survives member failures: on a broken stream it reopens on
/// a live member from the revision after the last change it delivered.
struct EtcdWatch {
    store: EtcdStore,
    prefix: String,
    /// First revision not yet delivered.
    next: i64,
    stream: Option<etcd_client::WatchStream>,
    pending: std::collections::VecDeque<Change>,
}

impl EtcdWatch {
    async fn open(&mut self) -> Result<(), StoreError> {
        let (prefix, start) = (self.prefix.clone(), self.next);
        let mut stream = self
            .store
            .run(|mut c| {
                let p = prefix.clone();
                async move {
                    c.watch(
                        p,
                        Some(
                            WatchOptions::new()
                                .with_prefix()
                                .with_start_revision(start)
                                .with_progress_notify(),
                        ),
                    )
                    .await
                }
            })
            .await?;
        // The first message says whether the watch was created or refused
        // because `start` is compacted.
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.compact_revision() > 0 {
                    return Err(StoreError::Compacted {
                        requested: (start - 1).max(0) as Revision,
                        compacted: (resp.compact_revision() - 1).max(0) as Revision,
                    });
                }
                self.absorb(&resp);
                self.stream = Some(stream);
                Ok(())
            }
            Ok(None) => Err(StoreError::Unavailable("etcd closed the watch".into())),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    fn absorb(&mut self, resp: &etcd_client::WatchResponse) {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            if revision < self.next {
                continue;
            }
            let change = match event.event_type() {
                EventType::Put => match self.store.to_kv(kv) {
                    Some(kv) => Change::Put(kv),
                    None => continue,
                },
                EventType::Delete => {
                    let Some(key) = std::str::from_utf8(kv.key())
                        .ok()
                        .and_then(|k| k.strip_prefix(&self.store.data("")))
                    else {
                        continue;
                    };
                    Change::Delete {
                        key: key.to_string(),
                        revision: revision.max(0) as Revision,
                    }
                }
            };
            self.pending.push_back(change);
        }
        // Several events of one transaction share a revision: only move on
        // once the whole response is queued.
        if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
            self.next = self.next.max(last.mod_revision() + 1);
        }
    }
}

#[async_trait]
impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Change, StoreError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(e @ StoreError::Compacted { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch lost; reconnecting");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            }
            let stream = self.stream.as_mut().expect("checked above");
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        let start = self.next;
                        self.stream = None;
                        return Err(StoreError::Compacted {
                            requested: (start - 1).max(0) as Revision,
                            compacted: (resp.compact_revision() - 1).max(0) as Revision,
                        });
                    }
                    if resp.canceled() {
                        self.stream = None;
                        continue;
                    }
                    self.absorb(&resp);
                }
                Ok(None) | Err(_) => {
                    self.stream = None;
                }
            }
        }
    }
}
