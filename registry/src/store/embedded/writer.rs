//! The embedded store's one writer thread: group commit, and what happens
//! when a commit fails.
//!
//! Each round takes whatever operations are queued (up to [`MAX_BATCH`]),
//! decides them against the working set plus the round's own earlier
//! operations, makes them durable in one redb transaction, and only then
//! publishes them (memory, leases, history, watchers) and answers.
//!
//! **A failed commit.** After an I/O error (a full disk, most often) redb
//! refuses every later operation on that handle with "Previous I/O error
//! occurred" until the file is reopened. So the writer drops the handle,
//! refuses writes with [`StoreError::Unavailable`] (503 `store_unavailable`
//! at the API; reads keep answering from memory, which holds exactly what
//! was acknowledged), reports the fault ([`WriteHealth`]: readiness and
//! metrics), and reopens the file: before the next write, and every
//! [`RECOVERY_INTERVAL`] while none comes. Writes are taken again only when
//! the reopened file holds what memory holds (below) *and* a probe write of
//! [`PROBE_SIZE`] commits: reopening alone frees the pages the failed round
//! had claimed inside the file, so without the probe a disk with no room
//! left would flap between ready and refusing on every small write.
//!
//! The reopened file is compared with memory first:
//!
//! - the same state: the failed round never reached the disk; carry on;
//! - the state plus the failed round: its commit failed *after* its data
//!   was durable (an fsync that reported an error late). Its callers were
//!   told it failed, but it is on disk, so it is published now: memory,
//!   watchers and the file agree again. (A write answered with an error may
//!   or may not have happened, as with any store; an acknowledged one always
//!   has.)
//! - anything else: the file was changed behind our back. Writes stay
//!   refused, loudly, until an operator restarts the registry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, TableDefinition};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Entry, KV, Lease, META, META_REVISION, Op, Reply, Shared, State, encode, load};
use crate::model::Revision;
use crate::store::{Change, KeyValue, StoreError, WriteHealth};

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 1024;
/// While writes are refused, how often the file is reopened when no write
/// comes to trigger it sooner: recovery does not wait for the next client.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two reopen attempts, so a burst of refused writes
/// is not a burst of reopens (each reads the whole file back).
const RECOVERY_MIN_GAP: Duration = Duration::from_millis(200);
/// The probe write that must commit before writes are taken again: room
/// for a few hundred registrations (a body is at most 64 KiB, most are
/// well under 1 KiB). Written to its own table and removed at once.
pub const PROBE_SIZE: usize = 1024 * 1024;
const PROBE: TableDefinition<u8, &[u8]> = TableDefinition::new("probe");

/// Whether writes are refused, and counters; shared with readers.
#[derive(Debug, Default)]
pub(super) struct WriteFaults {
    /// Why writes are refused and since when (Unix ms); `None`: taken.
    current: Mutex<Option<(String, u64)>>,
    failures: std::sync::atomic::AtomicU64,
    recoveries: std::sync::atomic::AtomicU64,
}

impl WriteFaults {
    pub(super) fn health(&self) -> WriteHealth {
        use std::sync::atomic::Ordering::Relaxed;
        let current = self.current.lock().expect("fault lock poisoned").clone();
        WriteHealth {
            since_ms: current.as_ref().map(|(_, since)| *since),
            refusing: current.map(|(reason, _)| reason),
            failures: self.failures.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
        }
    }

    fn refusal(&self) -> Option<String> {
        let current = self.current.lock().expect("fault lock poisoned");
        current.as_ref().map(|(reason, _)| reason.clone())
    }

    /// Writes are refused from now on (or still), for `reason`.
    fn set(&self, reason: String) {
        let mut current = self.current.lock().expect("fault lock poisoned");
        let since = current.as_ref().map_or_else(unix_ms, |(_, since)| *since);
        *current = Some((reason, since));
    }

    fn clear(&self) {
        *self.current.lock().expect("fault lock poisoned") = None;
        self.recoveries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a committed operation does to the in-memory lease table.
enum LeaseAction {
    Start(String, Duration),
    Drop(String),
    Keep,
}

/// One round of operations decided against the working set: what to
/// persist, then what to publish.
struct Decided {
    /// The new value of every key the round changes (`None`: removed).
    pending: HashMap<String, Option<Entry>>,
    changes: Vec<Change>,
    lease_actions: Vec<LeaseAction>,
    /// The revision after the round.
    revision: Revision,
}

/// The writer thread's state. It alone mutates the working set.
pub(super) struct Writer {
    path: PathBuf,
    /// `None` while writes are refused (the handle was dropped).
    db: Option<Database>,
    shared: std::sync::Arc<Shared>,
    /// The round whose commit failed, until a reopen shows whether it
    /// reached the disk after all.
    unconfirmed: Option<Decided>,
    last_attempt: Option<std::time::Instant>,
    /// The file no longer matches memory: no more reopen attempts.
    diverged: bool,
}

impl Writer {
    pub(super) fn new(path: PathBuf, db: Database, shared: std::sync::Arc<Shared>) -> Writer {
        Writer {
            path,
            db: Some(db),
            shared,
            unconfirmed: None,
            last_attempt: None,
            diverged: false,
        }
    }

    /// Runs until every sender is gone. `rt` only waits for the next
    /// operation with a timeout while writes are refused.
    pub(super) fn run(mut self, rt: &tokio::runtime::Runtime, mut rx: mpsc::Receiver<(Op, Reply)>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let faulted = self.db.is_none();
            let first = rt.block_on(async {
                if faulted {
                    tokio::time::timeout(RECOVERY_INTERVAL, rx.recv()).await
                } else {
                    Ok(rx.recv().await)
                }
            });
            if self.db.is_none() {
                self.try_recover();
            }
            let first = match first {
                Ok(Some(op)) => op,
                Ok(None) => return,
                Err(_) => continue,
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply(&mut batch);
        }
    }

    fn apply(&mut self, batch: &mut Vec<(Op, Reply)>) {
        if let Some(reason) = self.shared.faults.refusal() {
            let refused = StoreError::Unavailable(format!(
                "the store refuses writes until it recovers: {reason}"
            ));
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(refused.clone()));
            }
            return;
        }
        let (decided, outcomes) = decide(&self.shared, batch);
        if !decided.changes.is_empty() {
            let db = self
                .db
                .as_ref()
                .expect("a writer taking writes has a database");
            if let Err(e) = persist(db, &decided) {
                let reason = describe(&e);
                tracing::error!(error = %reason, operations = batch.len(),
                    "store commit failed: writes are refused until the store file is reopened");
                self.fault(reason.clone());
                self.unconfirmed = Some(decided);
                let refused =
                    StoreError::Unavailable(format!("the write was not persisted: {reason}"));
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(refused.clone()));
                }
                return;
            }
            publish(&self.shared, decided);
        }
        for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Refuses writes for `reason` and lets go of the redb handle (it
    /// refuses everything after an I/O error anyway).
    fn fault(&mut self, reason: String) {
        self.last_attempt = Some(std::time::Instant::now());
        self.shared.faults.set(reason);
        self.shared
            .faults
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(db) = self.db.take()
            && let Err(e) = db.close()
        {
            tracing::debug!(error = %e, "closing the failed store handle");
        }
    }

    /// Reopens the file and, if it holds what memory holds (see the module
    /// docs), takes writes again.
    fn try_recover(&mut self) {
        let now = std::time::Instant::now();
        if self.diverged
            || self
                .last_attempt
                .is_some_and(|t| now.duration_since(t) < RECOVERY_MIN_GAP)
        {
            return;
        }
        self.last_attempt = Some(now);
        let reopened = Database::create(&self.path)
            .map_err(|e| format!("reopening {}: {e}", self.path.display()))
            .and_then(|db| {
                let (kvs, revision) = load(&db).map_err(|e| e.to_string())?;
                Ok((db, kvs, revision))
            });
        let (db, kvs, revision) = match reopened {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "store still cannot be reopened");
                self.shared.faults.set(e);
                return;
            }
        };
        let verdict = {
            let state = self.shared.state.read().expect("store state lock poisoned");
            reconcile(&kvs, revision, &state, self.unconfirmed.as_ref())
        };
        match verdict {
            Reconciled::Same => {}
            Reconciled::FailedRoundLanded => {
                tracing::warn!(
                    revision,
                    "a commit reported as failed had reached the disk; publishing it"
                );
                let decided = self.unconfirmed.take().expect("checked by reconcile");
                publish(&self.shared, decided);
            }
            Reconciled::Diverged(why) => {
                let reason = format!(
                    "the store file no longer matches what this registry acknowledged ({why}); restart the registry"
                );
                tracing::error!(path = %self.path.display(), "{reason}");
                self.shared.faults.set(reason);
                self.diverged = true;
                return;
            }
        }
        self.unconfirmed = None;
        if let Err(e) = probe(&db) {
            let reason = describe(&e);
            tracing::debug!(error = %reason, "store reopened, but a probe write still fails");
            self.shared.faults.set(reason);
            let _ = db.close();
            return;
        }
        self.db = Some(db);
        self.shared.faults.clear();
        tracing::info!(path = %self.path.display(), revision, "store file reopened: writes are taken again");
    }
}

/// What a reopened file holds, next to memory.
#[derive(Debug, PartialEq, Eq)]
enum Reconciled {
    /// Exactly the working set.
    Same,
    /// The working set plus the round whose commit was reported failed.
    FailedRoundLanded,
    /// Something else.
    Diverged(String),
}

fn reconcile(
    disk: &std::collections::BTreeMap<String, Entry>,
    disk_revision: Revision,
    memory: &State,
    unconfirmed: Option<&Decided>,
) -> Reconciled {
    if disk_revision == memory.revision {
        return if *disk == memory.kvs {
            Reconciled::Same
        } else {
            Reconciled::Diverged(format!("same revision {disk_revision}, other keys"))
        };
    }
    if let Some(round) = unconfirmed.filter(|r| r.revision == disk_revision) {
        let mut expected = memory.kvs.clone();
        for (key, entry) in &round.pending {
            match entry {
                Some(e) => expected.insert(key.clone(), e.clone()),
                None => expected.remove(key),
            };
        }
        if *disk == expected {
            return Reconciled::FailedRoundLanded;
        }
    }
    Reconciled::Diverged(format!(
        "file at revision {disk_revision}, memory at {}",
        memory.revision
    ))
}

/// Decides every operation of `batch` against committed state plus the
/// batch's own earlier operations. Only the writer mutates `state`, so the
/// read view cannot change meanwhile. Answers the round and each
/// operation's outcome (`None`: a condition failed, nothing changed).
fn decide(shared: &Shared, batch: &[(Op, Reply)]) -> (Decided, Vec<Option<Revision>>) {
    let mut pending: HashMap<String, Option<Entry>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    let mut lease_actions = Vec::new();
    let state = shared.state.read().expect("store state lock poisoned");
    let mut rev = state.revision;
    for (op, _) in batch {
        let key = op.key();
        let current = match pending.get(key) {
            Some(e) => e.clone(),
            None => state.kvs.get(key).cloned(),
        };
        let Some((entry, action)) = effect(op, current.as_ref()) else {
            // Condition failed or nothing to delete: no change, no revision.
            outcomes.push(None);
            continue;
        };
        rev += 1;
        match entry {
            Some((value, lease)) => {
                let e = Entry {
                    value: value.clone(),
                    mod_revision: rev,
                    lease,
                };
                pending.insert(key.to_string(), Some(e));
                changes.push(Change::Put(KeyValue {
                    key: key.to_string(),
                    value,
                    mod_revision: rev,
                }));
            }
            None => {
                pending.insert(key.to_string(), None);
                changes.push(Change::Delete {
                    key: key.to_string(),
                    revision: rev,
                });
            }
        }
        lease_actions.push(action);
        outcomes.push(Some(rev));
    }
    let decided = Decided {
        pending,
        changes,
        lease_actions,
        revision: rev,
    };
    (decided, outcomes)
}

/// What `op` does to a key whose current entry is `current`: the new value
/// and lease (`None`: removed) and the lease action, or `None` when it does
/// nothing.
#[allow(clippy::type_complexity)]
fn effect(
    op: &Op,
    current: Option<&Entry>,
) -> Option<(Option<(bytes::Bytes, Option<Duration>)>, LeaseAction)> {
    let key = op.key();
    let current_rev = current.map(|e| e.mod_revision);
    match op {
        Op::Put { value, lease, .. } => {
            let action = match lease {
                Some(ttl) => LeaseAction::Start(key.to_string(), *ttl),
                None => LeaseAction::Drop(key.to_string()),
            };
            Some((Some((value.clone(), *lease)), action))
        }
        // Revision 0 (no key has it): create only if absent, as etcd's
        // compare on a missing key's mod_revision (0) does.
        Op::PutIf {
            value, expected, ..
        } if current_rev == Some(*expected) || (*expected == 0 && current.is_none()) => {
            let lease = current.and_then(|e| e.lease);
            Some((Some((value.clone(), lease)), LeaseAction::Keep))
        }
        Op::Delete { .. } if current.is_some() => Some((None, LeaseAction::Drop(key.to_string()))),
        Op::DeleteIf { expected, .. } if current_rev == Some(*expected) => {
            Some((None, LeaseAction::Drop(key.to_string())))
        }
        _ => None,
    }
}

/// Publishes a durable round: memory, leases, history, watchers, in that
/// order (a watcher never sees a revision memory does not have).
fn publish(shared: &Shared, decided: Decided) {
    {
        let mut state = shared.state.write().expect("store state lock poisoned");
        for (key, entry) in decided.pending {
            match entry {
                Some(e) => {
                    state.kvs.insert(key, e);
                }
                None => {
                    state.kvs.remove(&key);
                }
            }
        }
        state.revision = decided.revision;
        for change in &decided.changes {
            state.history.push_back(change.clone());
        }
        while state.history.len() > shared.history_limit {
            if let Some(old) = state.history.pop_front() {
                state.compacted = old.revision();
            }
        }
    }
    let now = Instant::now();
    for action in decided.lease_actions {
        match action {
            LeaseAction::Start(key, ttl) => {
                shared.leases.insert(
                    key,
                    Lease {
                        ttl,
                        deadline: now + ttl,
                    },
                );
            }
            LeaseAction::Drop(key) => {
                shared.leases.remove(&key);
            }
            LeaseAction::Keep => {}
        }
    }
    for change in decided.changes {
        // No receivers is fine: nobody is watching.
        let _ = shared.changes.send(std::sync::Arc::new(change));
    }
}

fn persist(db: &Database, decided: &Decided) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut kv = txn.open_table(KV)?;
        for (key, entry) in &decided.pending {
            match entry {
                Some(e) => {
                    kv.insert(key.as_str(), encode(e).as_slice())?;
                }
                None => {
                    kv.remove(key.as_str())?;
                }
            }
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(META_REVISION, decided.revision)?;
    }
    txn.commit()?;
    Ok(())
}

/// Commits [`PROBE_SIZE`] bytes to the probe table, then removes them:
/// proof that the disk takes writes again (and that the file has that much
/// room for the next ones).
fn probe(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(PROBE)?
        .insert(0, vec![0u8; PROBE_SIZE].as_slice())?;
    txn.commit()?;
    let txn = db.begin_write()?;
    txn.delete_table(PROBE)?;
    txn.commit()?;
    Ok(())
}

/// A commit failure for people: a full disk says so.
fn describe(e: &redb::Error) -> String {
    match e {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            format!("disk full ({io})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn entry(v: &str, rev: Revision) -> Entry {
        Entry {
            value: Bytes::copy_from_slice(v.as_bytes()),
            mod_revision: rev,
            lease: None,
        }
    }

    fn memory(kvs: &[(&str, Entry)], revision: Revision) -> State {
        State {
            kvs: kvs
                .iter()
                .map(|(k, e)| (k.to_string(), e.clone()))
                .collect(),
            revision,
            ..State::default()
        }
    }

    #[test]
    fn a_reopened_file_is_trusted_only_when_it_matches_memory() {
        let mem = memory(&[("a", entry("1", 1)), ("b", entry("2", 2))], 2);
        let same: BTreeMap<String, Entry> = mem.kvs.clone();
        assert_eq!(reconcile(&same, 2, &mem, None), Reconciled::Same);

        // The failed round (a put of c, a delete of a) reached the disk.
        let round = Decided {
            pending: HashMap::from([
                ("c".to_string(), Some(entry("3", 3))),
                ("a".to_string(), None),
            ]),
            changes: Vec::new(),
            lease_actions: Vec::new(),
            revision: 4,
        };
        let landed: BTreeMap<String, Entry> = [
            ("b".to_string(), entry("2", 2)),
            ("c".to_string(), entry("3", 3)),
        ]
        .into();
        assert_eq!(
            reconcile(&landed, 4, &mem, Some(&round)),
            Reconciled::FailedRoundLanded
        );
        // It did not: the file is what memory holds.
        assert_eq!(reconcile(&same, 2, &mem, Some(&round)), Reconciled::Same);

        // Anything else is refused.
        assert!(matches!(
            reconcile(&landed, 4, &mem, None),
            Reconciled::Diverged(_)
        ));
        assert!(matches!(
            reconcile(&landed, 2, &mem, None),
            Reconciled::Diverged(_)
        ));
        assert!(matches!(
            reconcile(&same, 7, &mem, Some(&round)),
            Reconciled::Diverged(_)
        ));
    }
}
