//! The embedded store: the whole working set in memory, every acknowledged
//! write durable in a local redb file.
//!
//! Writes go through one writer thread that batches whatever is queued into a
//! single redb transaction (group commit): one fsync covers many registrations,
//! so throughput does not collapse to one fsync per request. A change becomes
//! visible to readers and watchers only after its transaction committed, so a
//! watcher can never see a revision that a crash would take back.
//!
//! Lease deadlines live only in memory: a heartbeat costs no disk write. After
//! a restart every persisted lease starts one full TTL from the moment of
//! opening, so instances get time to heartbeat again before anything expires.
//!
//! Watch history is a bounded in-memory ring; a watcher resuming from before it
//! (or from before the process started) gets [`StoreError::Compacted`] and
//! re-lists, exactly as an etcd client does after compaction.
//!
//! A commit that fails (a full disk) does not take the store down until a
//! restart: writes are refused meanwhile, reads go on, and the writer
//! reopens the file and takes writes again once it can (see `writer`).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::{Change, KeyValue, LeaseReport, Range, Store, StoreError, Watch, WriteHealth};
use crate::model::Revision;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
/// File name inside `--data-dir`.
pub const DB_FILE: &str = "portico.redb";
/// Changes kept for watchers to resume from, by default.
pub const DEFAULT_HISTORY: usize = 10_000;

mod writer;

pub use writer::RECOVERY_INTERVAL;

/// How long opening waits for a previous owner to let go of the file.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Opens (or creates) the database at `path`. A store that was just shut
/// down in this process (a registry restarted in place) lets go of the file
/// only once its writer thread has finished its last commit, so "already
/// open" is waited out for [`RELEASE_WAIT`] before it is an error. Blocks:
/// call it from a blocking context.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(StoreError::Failed(format!("open {}: {e}", path.display())));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Bytes,
    mod_revision: Revision,
    lease: Option<Duration>,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct State {
    kvs: BTreeMap<String, Entry>,
    revision: Revision,
    history: VecDeque<Change>,
    /// Every change at or below this revision has left `history`.
    compacted: Revision,
}

#[derive(Debug)]
struct Shared {
    /// std lock: held only for in-memory reads and the publish step, never across `.await`.
    state: RwLock<State>,
    leases: DashMap<String, Lease>,
    changes: broadcast::Sender<Arc<Change>>,
    history_limit: usize,
    /// Whether the writer takes writes; see `writer`.
    faults: writer::WriteFaults,
}

enum Op {
    Put {
        key: String,
        value: Bytes,
        lease: Option<Duration>,
    },
    PutIf {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
    },
    DeleteIf {
        key: String,
        expected: Revision,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Put { key, .. }
            | Op::PutIf { key, .. }
            | Op::Delete { key }
            | Op::DeleteIf { key, .. } => key,
        }
    }
}

type Reply = oneshot::Sender<Result<Option<Revision>, StoreError>>;

/// The embedded store; cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: mpsc::Sender<(Op, Reply)>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, loading every key into memory.
    ///
    /// Fails if another process holds the file (redb locks it).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_history(dir, DEFAULT_HISTORY)
    }

    /// Like [`EmbeddedStore::open`], keeping `history` changes for watchers.
    pub fn open_with_history(dir: &Path, history: usize) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Failed(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = open_database(&path)?;
        let (kvs, revision) = load(&db)?;
        let now = Instant::now();
        let leases = DashMap::new();
        for (key, entry) in &kvs {
            if let Some(ttl) = entry.lease {
                // Grace after a restart: a full TTL from now, whatever was left before.
                leases.insert(
                    key.clone(),
                    Lease {
                        ttl,
                        deadline: now + ttl,
                    },
                );
            }
        }
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                kvs,
                revision,
                history: VecDeque::new(),
                compacted: revision,
            }),
            leases,
            changes,
            history_limit: history.max(1),
            faults: writer::WriteFaults::default(),
        });
        let (tx, rx) = mpsc::channel(8192);
        // The writer's own clock, to wait with a timeout while it recovers.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Failed(format!("writer runtime: {e}")))?;
        let writer = writer::Writer::new(path.clone(), db, shared.clone());
        std::thread::Builder::new()
            .name("portico-store-writer".into())
            .spawn(move || writer.run(&rt, rx))
            .map_err(|e| StoreError::Failed(format!("spawn writer thread: {e}")))?;
        Ok(EmbeddedStore {
            shared,
            writer: tx,
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit(&self, op: Op) -> Result<Option<Revision>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((op, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .expect("store state lock poisoned: a writer panicked mid-publish")
    }
}

fn load(db: &Database) -> Result<(BTreeMap<String, Entry>, Revision), StoreError> {
    let fail = |e: &dyn std::fmt::Display| StoreError::Failed(format!("load: {e}"));
    // Create the tables on first open so read transactions find them.
    let txn = db.begin_write().map_err(|e| fail(&e))?;
    {
        txn.open_table(KV).map_err(|e| fail(&e))?;
        txn.open_table(META).map_err(|e| fail(&e))?;
    }
    txn.commit().map_err(|e| fail(&e))?;

    let txn = db.begin_read().map_err(|e| fail(&e))?;
    let meta = txn.open_table(META).map_err(|e| fail(&e))?;
    let revision = meta
        .get(META_REVISION)
        .map_err(|e| fail(&e))?
        .map(|v| v.value())
        .unwrap_or(0);
    let table = txn.open_table(KV).map_err(|e| fail(&e))?;
    let mut kvs = BTreeMap::new();
    for row in table.iter().map_err(|e| fail(&e))? {
        let (k, v) = row.map_err(|e| fail(&e))?;
        let entry = decode(v.value()).ok_or_else(|| {
            StoreError::Failed(format!("load: corrupt record for key {:?}", k.value()))
        })?;
        kvs.insert(k.value().to_string(), entry);
    }
    Ok((kvs, revision))
}

/// Record layout: mod_revision (u64 LE), lease in ms (u64 LE, 0 = none), value.
fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entry.value.len());
    out.extend_from_slice(&entry.mod_revision.to_le_bytes());
    let lease_ms = entry.lease.map_or(0, |d| d.as_millis() as u64);
    out.extend_from_slice(&lease_ms.to_le_bytes());
    out.extend_from_slice(&entry.value);
    out
}

fn decode(raw: &[u8]) -> Option<Entry> {
    let rev = u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?);
    let lease_ms = u64::from_le_bytes(raw.get(8..16)?.try_into().ok()?);
    Some(Entry {
        value: Bytes::copy_from_slice(&raw[16..]),
        mod_revision: rev,
        lease: (lease_ms > 0).then(|| Duration::from_millis(lease_ms)),
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        let op = Op::Put {
            key: key.to_string(),
            value,
            lease,
        };
        self.submit(op)
            .await?
            .ok_or_else(|| StoreError::Failed("unconditional put made no change".into()))
    }

    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        self.submit(Op::PutIf {
            key: key.to_string(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.submit(Op::Delete {
            key: key.to_string(),
        })
        .await
    }

    async fn delete_if(
        &self,
        key: &str,
        expected: Revision,
    ) -> Result<Option<Revision>, StoreError> {
        self.submit(Op::DeleteIf {
            key: key.to_string(),
            expected,
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.read().kvs.get(key).map(|e| KeyValue {
            key: key.to_string(),
            value: e.value.clone(),
            mod_revision: e.mod_revision,
        }))
    }

    fn peek(&self, key: &str) -> Option<Option<KeyValue>> {
        // Memory is the whole store here: the exact answer.
        Some(self.read().kvs.get(key).map(|e| KeyValue {
            key: key.to_string(),
            value: e.value.clone(),
            mod_revision: e.mod_revision,
        }))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let state = self.read();
        let kvs = state
            .kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| KeyValue {
                key: k.clone(),
                value: e.value.clone(),
                mod_revision: e.mod_revision,
            })
            .collect();
        Ok(Range {
            kvs,
            revision: state.revision,
            stale_ms: None,
        })
    }

    async fn keep_alive(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        let renewed = match self.shared.leases.get_mut(key) {
            Some(mut lease) => {
                lease.deadline = Instant::now() + lease.ttl;
                true
            }
            None => false,
        };
        // Read after the lease's guard is gone: the writer takes the state
        // lock first, then lease entries.
        Ok(renewed.then(|| self.read().revision))
    }

    fn lease_left(&self, key: &str) -> Option<Duration> {
        let lease = self.shared.leases.get(key)?;
        let left = lease.deadline.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    async fn lapsed(&self, prefix: &str) -> Result<LeaseReport, StoreError> {
        let now = Instant::now();
        let mut leased = 0;
        let mut late = 0;
        let mut lapsed_keys = Vec::new();
        for lease in self.shared.leases.iter() {
            if !lease.key().starts_with(prefix) {
                continue;
            }
            leased += 1;
            if lease.deadline <= now {
                lapsed_keys.push(lease.key().clone());
            } else if lease.deadline - now < lease.ttl / 3 {
                late += 1;
            }
        }
        let state = self.read();
        let lapsed = lapsed_keys
            .into_iter()
            .filter_map(|k| {
                state.kvs.get(&k).map(|e| KeyValue {
                    key: k,
                    value: e.value.clone(),
                    mod_revision: e.mod_revision,
                })
            })
            .collect();
        Ok(LeaseReport {
            lapsed,
            late,
            leased,
            elsewhere: Default::default(),
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        // Subscribe before reading history so nothing falls between the two.
        let rx = self.shared.changes.subscribe();
        let state = self.read();
        if after < state.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.compacted,
            });
        }
        let backlog = state
            .history
            .iter()
            .filter(|c| c.revision() > after && c.key().starts_with(prefix))
            .cloned()
            .collect();
        let covered = after.max(state.revision);
        drop(state);
        Ok(Box::new(EmbeddedWatch {
            shared: self.shared.clone(),
            prefix: prefix.to_string(),
            backlog,
            rx,
            covered,
        }))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.read().revision)
    }

    fn write_health(&self) -> WriteHealth {
        self.shared.faults.health()
    }
}

struct EmbeddedWatch {
    shared: Arc<Shared>,
    prefix: String,
    backlog: VecDeque<Change>,
    rx: broadcast::Receiver<Arc<Change>>,
    /// Changes at or below this revision were already queued in `backlog` (or
    /// predate the watch) and must be skipped when they arrive live.
    covered: Revision,
}

#[async_trait]
impl Watch for EmbeddedWatch {
    async fn next(&mut self) -> Result<Change, StoreError> {
        loop {
            if let Some(change) = self.backlog.pop_front() {
                return Ok(change);
            }
            match self.rx.recv().await {
                Ok(change) => {
                    if change.revision() <= self.covered {
                        continue;
                    }
                    self.covered = change.revision();
                    if change.key().starts_with(&self.prefix) {
                        return Ok((*change).clone());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // We missed live changes; recover them from history if it still has them.
                    let state = self.shared.state.read().expect("store state lock poisoned");
                    if self.covered < state.compacted {
                        return Err(StoreError::Compacted {
                            requested: self.covered,
                            compacted: state.compacted,
                        });
                    }
                    let covered = self.covered;
                    self.backlog.extend(
                        state
                            .history
                            .iter()
                            .filter(|c| c.revision() > covered && c.key().starts_with(&self.prefix))
                            .cloned(),
                    );
                    self.covered = state.revision;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn revisions_move_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.put("a/1", b("x"), None).await.unwrap(), 1);
        assert_eq!(store.delete("a/2").await.unwrap(), None);
        assert_eq!(store.put_if("a/1", b("y"), 7).await.unwrap(), None);
        assert_eq!(store.revision().await.unwrap(), 1);
        assert_eq!(store.put_if("a/1", b("y"), 1).await.unwrap(), Some(2));
        assert_eq!(store.delete_if("a/1", 1).await.unwrap(), None);
        assert_eq!(store.delete_if("a/1", 2).await.unwrap(), Some(3));
        assert_eq!(store.revision().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn put_if_revision_zero_creates_only_an_absent_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.put_if("l/a", b("x"), 0).await.unwrap(), Some(1));
        assert_eq!(store.put_if("l/a", b("y"), 0).await.unwrap(), None);
        assert_eq!(store.get("l/a").await.unwrap().unwrap().value, b("x"));
        assert_eq!(store.put_if("l/a", b("z"), 1).await.unwrap(), Some(2));
        assert_eq!(store.delete_if("l/a", 2).await.unwrap(), Some(3));
        assert_eq!(store.put_if("l/a", b("w"), 0).await.unwrap(), Some(4));
        assert_eq!(store.revision().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn data_and_revision_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .put("a/1", b("x"), Some(Duration::from_secs(5)))
                .await
                .unwrap();
            store.put("b/1", b("y"), None).await.unwrap();
            drop(store);
        }
        // The writer thread owns the database and lets go of it a moment
        // after the drop: opening again waits for that by itself.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.revision().await.unwrap(), 2);
        let range = store.range("a/").await.unwrap();
        assert_eq!(range.kvs.len(), 1);
        assert_eq!(range.kvs[0].value, b("x"));
        assert_eq!(store.keep_alive("a/1").await.unwrap(), Some(2));
        assert_eq!(store.keep_alive("b/1").await.unwrap(), None);
        // History does not survive: resuming from before the restart must re-list.
        assert!(matches!(
            store.watch("", 1).await.err(),
            Some(StoreError::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn watch_replays_then_follows_with_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("a/1", b("1"), None).await.unwrap();
        store.put("b/1", b("2"), None).await.unwrap();
        let mut w = store.watch("a/", 0).await.unwrap();
        assert_eq!(w.next().await.unwrap().revision(), 1);
        store.put("b/2", b("3"), None).await.unwrap();
        store.delete("a/1").await.unwrap();
        let c = w.next().await.unwrap();
        assert_eq!(
            c,
            Change::Delete {
                key: "a/1".into(),
                revision: 4
            }
        );
    }

    #[tokio::test]
    async fn watch_from_compacted_revision_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with_history(dir.path(), 2).unwrap();
        for i in 0..5 {
            store.put(&format!("k/{i}"), b("v"), None).await.unwrap();
        }
        assert!(matches!(
            store.watch("", 1).await.err(),
            Some(StoreError::Compacted { compacted: 3, .. })
        ));
        assert!(store.watch("", 3).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn leases_lapse_and_renew() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .put("i/a", b("a"), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        store
            .put("i/b", b("b"), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(store.keep_alive("i/a").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(6)).await;
        let report = store.lapsed("i/").await.unwrap();
        assert_eq!(report.leased, 2);
        assert_eq!(report.lapsed.len(), 1);
        assert_eq!(report.lapsed[0].key, "i/b");
        // A conditional update keeps the (lapsed) lease rather than restarting it.
        let rev = report.lapsed[0].mod_revision;
        store.put_if("i/b", b("b2"), rev).await.unwrap().unwrap();
        assert_eq!(store.lapsed("i/").await.unwrap().lapsed.len(), 1);
    }
}
