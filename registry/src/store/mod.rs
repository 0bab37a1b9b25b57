//! The storage contract the registry is written against, and its backends.
//!
//! The trait has the shape both real backends share (etcd's MVCC and our
//! embedded redb store): ordered string keys, one monotonic revision bumped by
//! every change, per-key leases with keep-alive, compare-and-swap on a key's
//! revision, and a watch that replays every change after a given revision or
//! says that revision is compacted (the watcher then re-lists).
//!
//! Leases are deliberately *not* expired by the store. The store only reports
//! which leases have lapsed ([`Store::lapsed`]); the registry's sweeper
//! (`crate::lease`) decides what to do about them, because self-preservation
//! (pausing expiry when too many lapse at once) is a registry policy, and an
//! etcd backend must be able to apply the very same policy.
//!
//! - [`embedded`]: working set in memory, durably persisted to a local redb file.
//! - `etcd` (feature `etcd`): an etcd v3 cluster shared by registry replicas.

pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::Revision;

/// One key and its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `instances/web/web-1`.
    pub key: String,
    /// The opaque value (JSON for everything the registry stores).
    pub value: Bytes,
    /// Revision of the last write to this key: the token for compare-and-swap.
    pub mod_revision: Revision,
}

/// One change in the store's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was created or overwritten.
    Put(KeyValue),
    /// A key was removed.
    Delete {
        /// The removed key.
        key: String,
        /// Revision of the removal.
        revision: Revision,
    },
}

impl Change {
    /// Revision at which the change happened.
    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }
}

/// A consistent read of a key range: every key under a prefix as of `revision`.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// Keys in order.
    pub kvs: Vec<KeyValue>,
    /// Store revision the read reflects.
    pub revision: Revision,
    /// Set when the backend could only give a possibly stale read (an etcd
    /// member without quorum): how long since it last had a current one.
    pub stale_ms: Option<u64>,
}

/// At-risk counts of the leases one process holds: what a replica on a
/// shared store publishes so that the others' self-preservation sees the
/// whole fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseCounts {
    /// Lapsed leases whose instance is not critical yet.
    pub lapsed: usize,
    /// Late leases (a renewal missing, not lapsed yet).
    pub late: usize,
    /// Lapsed leases whose instance is already critical (out of rotation).
    pub critical: usize,
}

/// Which leases under a prefix have lapsed, and how many are held in all.
#[derive(Debug, Clone, Default)]
pub struct LeaseReport {
    /// Keys whose lease deadline has passed, with their current values.
    pub lapsed: Vec<KeyValue>,
    /// Leases not yet lapsed but late: less than a third of their length
    /// left, so at least one expected renewal (clients renew every third of
    /// the lease) is missing. Self-preservation counts these as at risk.
    pub late: usize,
    /// Number of keys under the prefix that hold a lease (lapsed or not),
    /// in the whole store (every replica's, on a shared store).
    pub leased: usize,
    /// On a store shared by several processes, where each holds some of the
    /// leases (etcd): the at-risk counts the other processes published.
    /// `lapsed` and `late` above are then this process's own. Zero on a
    /// store with one process.
    pub elsewhere: LeaseCounts,
}

/// Answer to [`Store::put_unique`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UniquePut {
    /// Written, at this revision.
    Written(Revision),
    /// Not written: the unique entry names this other key (empty: the
    /// entry is gone, try again).
    Held {
        /// The key the entry names.
        by: String,
    },
}

/// How a store shared by several processes holds leases (etcd), for
/// readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// This process's session (etcd lease id); None while it has none it
    /// can vouch for.
    pub session: Option<i64>,
    /// Leases this process holds.
    pub held: usize,
    /// Leases it took over from another replica because a heartbeat came here.
    pub claims: u64,
    /// Leases it took over because their holder's session ended.
    pub adopted: u64,
    /// Write transactions sent to the store.
    pub txns: u64,
    /// Operations in those transactions.
    pub txn_ops: u64,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The watch start revision is older than the retained history.
    #[error("revision {requested} is compacted (oldest retained change is after {compacted})")]
    Compacted {
        /// Revision the watcher asked to resume after.
        requested: Revision,
        /// Every change up to and including this revision is gone from history.
        compacted: Revision,
    },
    /// The backend cannot be reached or refused the operation; retrying may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed in a way retrying will not fix (corrupt file, full disk).
    #[error("store failure: {0}")]
    Failed(String),
    /// The store has shut down.
    #[error("store is closed")]
    Closed,
}

/// Whether a store takes writes now, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteHealth {
    /// Why writes are refused now (a full disk, say); `None` while they
    /// are taken.
    pub refusing: Option<String>,
    /// Unix milliseconds since when writes are refused.
    pub since_ms: Option<u64>,
    /// Commits that failed since start.
    pub failures: u64,
    /// Times the store recovered from a failed commit by itself.
    pub recoveries: u64,
}

/// A stream of changes, in revision order, with no gaps.
#[async_trait]
pub trait Watch: Send {
    /// The next change. `Compacted` means the watcher fell too far behind and
    /// must re-list; `Closed` means the store is gone.
    async fn next(&mut self) -> Result<Change, StoreError>;
}

/// The storage contract; see the module docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes `key`. With `lease`, attaches a lease of that length whose
    /// deadline starts now (replacing any previous lease); without, removes any
    /// lease. Always bumps the revision; returns it once the write is durable.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<Duration>,
    ) -> Result<Revision, StoreError>;

    /// Writes `key` only if its current `mod_revision` is `expected`, keeping
    /// its lease as it is. `None` when the key changed or vanished meanwhile.
    /// `expected` 0 (no key ever has it) means "only if absent": the key is
    /// created if no key of that name exists, on every store (etcd compares
    /// a missing key's mod_revision as 0; the embedded store does the same).
    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError>;

    /// Removes `key` and its lease. `None` (and no new revision) when absent.
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError>;

    /// Removes `key` only if its `mod_revision` is still `expected`.
    async fn delete_if(
        &self,
        key: &str,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError>;

    /// The current value of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key under `prefix`, in order, with the revision of the read.
    async fn range(&self, prefix: &str) -> Result<Range, StoreError>;

    /// Pushes the lease deadline of `key` one full lease length into the
    /// future. `None` when the key does not exist or holds no lease; else
    /// the store's revision as this process knows it (no extra read).
    async fn keep_alive(&self, key: &str) -> Result<Option<Revision>, StoreError>;

    /// The value of `key` as this process last saw it: on a store shared by
    /// several processes possibly a moment behind the others' writes (never
    /// missing a key: a key it has not seen yet is read from the store).
    /// Good for what a conditional write would catch anyway.
    async fn get_cached(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.get(key).await
    }

    /// The value of `key` as this process holds it in memory, without
    /// asking anyone: `Some(None)` when it holds no such key, which on a
    /// shared store may also mean another process wrote it a moment ago.
    /// `None` when this store keeps no copy in memory. For what only needs
    /// a hint (the timestamps a re-registration carries forward).
    fn peek(&self, _key: &str) -> Option<Option<KeyValue>> {
        None
    }

    /// A lease transition (the sweeper marking an expired instance): like
    /// [`Store::put_if`], and on a shared store only while this process
    /// still holds the lapsed lease (no other replica took it over meanwhile).
    async fn put_if_lapsed(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        self.put_if(key, value, expected).await
    }

    /// Removing an expired key: like [`Store::delete_if`], with the fences
    /// of [`Store::put_if_lapsed`].
    async fn delete_if_lapsed(
        &self,
        key: &str,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        self.delete_if(key, expected).await
    }

    /// Tells the other processes of a shared store this one's at-risk
    /// counts (after each sweep). Nothing to do with one process.
    fn publish_lease_counts(&self, _counts: LeaseCounts) {}

    /// Writes `key` (no lease) while taking the unique entry `unique` for
    /// it, and gives up `release` (the entry `key` held before) if it still
    /// names `key`. Taken only if the entry is absent, or names `holder`.
    /// A store with one writer process needs no entry: the caller's lock
    /// already serialises these writes, so the default just writes.
    async fn put_unique(
        &self,
        key: &str,
        value: Bytes,
        _unique: &str,
        _release: Option<&str>,
        _holder: Option<&str>,
    ) -> Result<UniquePut, StoreError> {
        Ok(UniquePut::Written(self.put(key, value, None).await?))
    }

    /// Removes `key` and gives up its unique entry (see [`Store::put_unique`]).
    async fn delete_unique(
        &self,
        key: &str,
        _unique: Option<&str>,
    ) -> Result<Option<Revision>, StoreError> {
        self.delete(key).await
    }

    /// Leased keys under `prefix` whose deadline has passed.
    async fn lapsed(&self, prefix: &str) -> Result<LeaseReport, StoreError>;

    /// Every change under `prefix` with a revision greater than `after`, then
    /// live changes as they happen.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError>;

    /// The latest revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Whether the store takes writes now. The default says it always does:
    /// a backend that cannot write (etcd without quorum) already fails
    /// [`Store::revision`], which readiness asks too.
    fn write_health(&self) -> WriteHealth {
        WriteHealth::default()
    }

    /// Time until `key`'s lease lapses unless renewed, when this process
    /// knows its deadline (`None`: no lease, lapsed, or held by another
    /// process of a shared store).
    fn lease_left(&self, _key: &str) -> Option<Duration> {
        None
    }

    /// Whether this process does the work for `key` that must run once
    /// across every process sharing the store (the registry's own checks).
    /// Always, on a store with one process.
    fn assigned_here(&self, _key: &str) -> bool {
        true
    }

    /// How a shared store holds leases; None on a store with one process.
    fn holding(&self) -> Option<Holding> {
        None
    }

    /// Gives back what this process holds in a shared store, at shutdown
    /// and awaited before the process exits: a task spawned from `Drop`
    /// dies with the runtime. (etcd: the session, so the other replicas
    /// adopt this one's leases at once, not a session TTL later.) The
    /// store holds no lease afterwards. Nothing to do on a store with one
    /// process.
    async fn close(&self) {}
}
