//! The batcher: every write of this replica goes into one etcd transaction
//! with whatever else is queued, at most [`MAX_TXN_OPS`] operations and
//! [`MAX_TXN_BYTES`] bytes, with up to [`SLOTS`] transactions in flight.
//!
//! Each logical write is a nested transaction with its own compares, so a
//! failed compare fails that write only, and the outer transaction has one
//! compare of its own: the *slot key* (`writes/{writer}/{slot}`), whose
//! revision must be the one this slot last wrote, and which the transaction
//! rewrites with its sequence number. A transaction whose answer is lost
//! (a timeout, a member killed after committing) is sent again to the next
//! member by [`Members::run`]; only one of the two can commit. When the
//! second finds the slot moved and reads back its own sequence number, the
//! batch had applied, and each write's outcome is read from etcd at the
//! batch's revision: a write is applied exactly once, and its caller learns
//! what happened. A key is in at most one write of a transaction (etcd
//! refuses duplicates) and a key with a write in flight waits for it, so
//! writes to one key apply in the order they were submitted.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::sync::{mpsc, oneshot};

use super::keys::{Keys, LeaseRecord};
use super::members::{Members, revision_of};
use crate::model::Revision;
use crate::store::StoreError;

/// Operations per transaction: etcd's default `--max-txn-ops`. Every
/// compare and operation at every nesting level counts.
pub(super) const MAX_TXN_OPS: usize = 128;
/// Bytes of keys and values per transaction, under etcd's default
/// `--max-request-bytes` (1.5 MiB).
pub(super) const MAX_TXN_BYTES: usize = 1 << 20;
/// Transactions in flight at once. More were tried for issue 14 (16 and
/// 32): with 64 clients each waiting for its own Raft commit, registrations
/// did not get faster (bench/RESULTS.md), while etcd spent more CPU on
/// smaller transactions.
pub(super) const SLOTS: usize = 4;
/// The outer transaction's own operations: the slot compare, its put, its get.
const SLOT_OPS: usize = 3;
/// Writes waiting for a transaction, beyond which submitters wait.
const MAX_QUEUED: usize = 16_384;

/// One logical write.
#[derive(Debug, Clone)]
pub(super) enum WriteOp {
    /// Writes data; with a record, the lease record too, else removes it.
    Put {
        key: String,
        value: Bytes,
        record: Option<LeaseRecord>,
    },
    /// Writes data if its revision is `expected`, keeping the record.
    PutIf {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    /// Removes data and record.
    Delete { key: String },
    /// Removes data and record if the data's revision is `expected`.
    DeleteIf { key: String, expected: Revision },
    /// [`WriteOp::PutIf`], and only while the record is still the one this
    /// replica wrote (`claim`) and its session (`session`) is alive.
    PutFenced {
        key: String,
        value: Bytes,
        expected: Revision,
        claim: Revision,
        session: i64,
    },
    /// [`WriteOp::DeleteIf`] with the same fences as [`WriteOp::PutFenced`].
    DeleteFenced {
        key: String,
        expected: Revision,
        claim: Revision,
        session: i64,
    },
    /// Rewrites the lease record (to name this replica) if its revision is
    /// still `expected` and the data exists.
    Claim {
        key: String,
        record: LeaseRecord,
        expected: Revision,
    },
    /// Writes data (no lease) and the unique entry `unique` naming `key`,
    /// if the entry is absent (`holder` None) or names `holder`; removes
    /// the entry `release` if it names `key`.
    PutUnique {
        key: String,
        value: Bytes,
        unique: String,
        holder: Option<String>,
        release: Option<String>,
    },
    /// Removes data (no lease) and the unique entry `unique` if it names `key`.
    DeleteUnique { key: String, unique: Option<String> },
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It took effect at this revision.
    Applied(Revision),
    /// A compare failed, or there was nothing to remove.
    NotApplied,
    /// A claim lost: whether data and record still exist.
    Lost { data: bool, record: bool },
    /// A unique write lost: the key the entry names ("" when absent).
    Held(String),
}

impl WriteOp {
    fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::PutIf { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::DeleteIf { key, .. }
            | WriteOp::PutFenced { key, .. }
            | WriteOp::DeleteFenced { key, .. }
            | WriteOp::Claim { key, .. }
            | WriteOp::PutUnique { key, .. }
            | WriteOp::DeleteUnique { key, .. } => key,
        }
    }

    /// Every etcd key the write may touch (for the one-write-per-key rule).
    fn touched(&self, k: &Keys) -> Vec<String> {
        let key = self.key();
        let mut out = vec![k.data(key), k.record(key)];
        match self {
            WriteOp::PutUnique {
                unique, release, ..
            } => {
                out.push(k.unique(unique));
                out.extend(release.iter().map(|r| k.unique(r)));
            }
            WriteOp::DeleteUnique {
                unique: Some(u), ..
            } => out.push(k.unique(u)),
            _ => {}
        }
        out
    }

    fn bytes(&self) -> usize {
        let value = match self {
            WriteOp::Put { value, .. }
            | WriteOp::PutIf { value, .. }
            | WriteOp::PutFenced { value, .. }
            | WriteOp::PutUnique { value, .. } => value.len(),
            _ => 0,
        };
        value + 4 * (self.key().len() + 64)
    }

    /// The nested transaction of this write.
    fn txn(&self, k: &Keys) -> Txn {
        let data = k.data(self.key());
        let record = k.record(self.key());
        let rev = |key: &str, r: Revision| Compare::mod_revision(key, CompareOp::Equal, r as i64);
        let fences = |claim: Revision, session: i64| {
            [
                rev(&record, claim),
                Compare::version(k.session(session), CompareOp::Greater, 0),
            ]
        };
        match self {
            WriteOp::Put {
                value,
                record: Some(r),
                ..
            } => Txn::new().and_then([
                TxnOp::put(data, value.to_vec(), None),
                TxnOp::put(record, r.encode(), None),
            ]),
            WriteOp::Put {
                value,
                record: None,
                ..
            } => Txn::new().and_then([
                TxnOp::put(data, value.to_vec(), None),
                TxnOp::delete(record, None),
            ]),
            WriteOp::PutIf {
                value, expected, ..
            } => Txn::new()
                .when([rev(&data, *expected)])
                .and_then([TxnOp::put(data, value.to_vec(), None)]),
            WriteOp::Delete { .. } => {
                Txn::new().and_then([TxnOp::delete(data, None), TxnOp::delete(record, None)])
            }
            WriteOp::DeleteIf { expected, .. } => Txn::new()
                .when([rev(&data, *expected)])
                .and_then([TxnOp::delete(data, None), TxnOp::delete(record, None)]),
            WriteOp::PutFenced {
                value,
                expected,
                claim,
                session,
                ..
            } => {
                let mut when = vec![rev(&data, *expected)];
                when.extend(fences(*claim, *session));
                Txn::new()
                    .when(when)
                    .and_then([TxnOp::put(data, value.to_vec(), None)])
            }
            WriteOp::DeleteFenced {
                expected,
                claim,
                session,
                ..
            } => {
                let mut when = vec![rev(&data, *expected)];
                when.extend(fences(*claim, *session));
                Txn::new().when(when).and_then([
                    TxnOp::delete(data, None),
                    TxnOp::delete(record.clone(), None),
                ])
            }
            WriteOp::Claim {
                record: r,
                expected,
                ..
            } => {
                let count = || Some(GetOptions::new().with_count_only());
                Txn::new()
                    .when([
                        rev(&record, *expected),
                        Compare::version(data.clone(), CompareOp::Greater, 0),
                    ])
                    .and_then([TxnOp::put(record.clone(), r.encode(), None)])
                    .or_else([TxnOp::get(data, count()), TxnOp::get(record, count())])
            }
            WriteOp::PutUnique {
                key,
                value,
                unique,
                holder,
                release,
            } => {
                let entry = k.unique(unique);
                let when = match holder {
                    None => Compare::version(entry.clone(), CompareOp::Equal, 0),
                    Some(h) => Compare::value(entry.clone(), CompareOp::Equal, h.as_bytes()),
                };
                let mut then = vec![
                    TxnOp::put(data, value.to_vec(), None),
                    TxnOp::delete(record, None),
                    TxnOp::put(entry.clone(), key.as_bytes(), None),
                ];
                if let Some(r) = release.as_ref().filter(|r| *r != unique) {
                    then.push(release_entry(&k.unique(r), key));
                }
                Txn::new()
                    .when([when])
                    .and_then(then)
                    .or_else([TxnOp::get(entry, None)])
            }
            WriteOp::DeleteUnique { key, unique } => {
                let mut then = vec![TxnOp::delete(data, None), TxnOp::delete(record, None)];
                if let Some(u) = unique {
                    then.push(release_entry(&k.unique(u), key));
                }
                Txn::new().and_then(then)
            }
        }
    }

    /// Operations the nested transaction counts for (see [`MAX_TXN_OPS`]).
    fn cost(&self) -> usize {
        // The nested transaction itself, then its compares and operations.
        1 + match self {
            WriteOp::Put { .. } | WriteOp::Delete { .. } => 2,
            WriteOp::PutIf { .. } => 2,
            WriteOp::DeleteIf { .. } => 3,
            WriteOp::PutFenced { .. } => 4,
            WriteOp::DeleteFenced { .. } => 5,
            WriteOp::Claim { .. } => 5,
            // compare, 3 puts/deletes, the failure get, and a release (3).
            WriteOp::PutUnique { .. } => 8,
            WriteOp::DeleteUnique { .. } => 5,
        }
    }

    /// What the write did, from its nested transaction's answer.
    fn outcome(&self, resp: &TxnResponse, revision: Revision) -> Outcome {
        let ops = resp.op_responses();
        let deleted = || matches!(ops.first(), Some(TxnOpResponse::Delete(d)) if d.deleted() > 0);
        let applied = |yes: bool| {
            if yes {
                Outcome::Applied(revision)
            } else {
                Outcome::NotApplied
            }
        };
        match self {
            WriteOp::Put { .. } => Outcome::Applied(revision),
            WriteOp::PutIf { .. } | WriteOp::PutFenced { .. } => applied(resp.succeeded()),
            WriteOp::Delete { .. } | WriteOp::DeleteUnique { .. } => applied(deleted()),
            WriteOp::DeleteIf { .. } | WriteOp::DeleteFenced { .. } => {
                applied(resp.succeeded() && deleted())
            }
            WriteOp::Claim { .. } if resp.succeeded() => Outcome::Applied(revision),
            WriteOp::Claim { .. } => {
                let exists =
                    |i: usize| matches!(ops.get(i), Some(TxnOpResponse::Get(g)) if g.count() > 0);
                Outcome::Lost {
                    data: exists(0),
                    record: exists(1),
                }
            }
            WriteOp::PutUnique { .. } if resp.succeeded() => Outcome::Applied(revision),
            WriteOp::PutUnique { .. } => Outcome::Held(match ops.first() {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            }),
        }
    }

    /// What the write did, for a batch that applied at `revision` but whose
    /// answer was lost: read back from etcd's history at that revision
    /// (only this batch wrote at it, and it wrote each key once).
    async fn recover(
        &self,
        members: &Members,
        k: &Keys,
        revision: Revision,
    ) -> Result<Outcome, StoreError> {
        let at = revision as i64;
        let written =
            |kv: Option<etcd_client::KeyValue>| kv.is_some_and(|kv| kv.mod_revision() == at);
        Ok(match self {
            WriteOp::Delete { key }
            | WriteOp::DeleteIf { key, .. }
            | WriteOp::DeleteFenced { key, .. }
            | WriteOp::DeleteUnique { key, .. } => {
                let before = members.get(&k.data(key), Some(at - 1)).await?;
                let after = members.get(&k.data(key), Some(at)).await?;
                if before.is_some() && after.is_none() {
                    Outcome::Applied(revision)
                } else {
                    Outcome::NotApplied
                }
            }
            WriteOp::Claim { key, .. } => {
                let record = members.get(&k.record(key), Some(at)).await?;
                if written(record.clone()) {
                    Outcome::Applied(revision)
                } else {
                    let data = members.get(&k.data(key), Some(at)).await?;
                    Outcome::Lost {
                        data: data.is_some(),
                        record: record.is_some(),
                    }
                }
            }
            WriteOp::PutUnique { key, unique, .. } => {
                if written(members.get(&k.data(key), Some(at)).await?) {
                    Outcome::Applied(revision)
                } else {
                    let entry = members.get(&k.unique(unique), None).await?;
                    Outcome::Held(
                        entry
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                            .unwrap_or_default(),
                    )
                }
            }
            WriteOp::Put { key, .. }
            | WriteOp::PutIf { key, .. }
            | WriteOp::PutFenced { key, .. } => {
                if written(members.get(&k.data(key), Some(at)).await?) {
                    Outcome::Applied(revision)
                } else {
                    Outcome::NotApplied
                }
            }
        })
    }
}

/// A nested transaction removing `entry` if it still names `key`.
fn release_entry(entry: &str, key: &str) -> TxnOp {
    TxnOp::txn(
        Txn::new()
            .when([Compare::value(entry, CompareOp::Equal, key.as_bytes())])
            .and_then([TxnOp::delete(entry, None)]),
    )
}

/// Transactions and operations sent, for metrics.
#[derive(Debug, Default)]
pub(super) struct BatchStats {
    pub txns: AtomicU64,
    pub ops: AtomicU64,
}

struct Pending {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// A handle to submit writes; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Batcher {
    tx: mpsc::Sender<Pending>,
    stats: Arc<BatchStats>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("op", &self.op).finish()
    }
}

impl Batcher {
    /// Starts the batching task for the process whose slot keys are under
    /// `writes/{writer}/`.
    pub(super) fn start(
        members: Arc<Members>,
        keys: Keys,
        writer: u64,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let stats = Arc::new(BatchStats::default());
        let slots = (0..SLOTS)
            .map(|i| Slot {
                key: format!("{}{i}", keys.writer(writer)),
                seq: 0,
                expected: 0,
            })
            .collect();
        let task = tokio::spawn(
            Loop {
                members,
                keys,
                stats: stats.clone(),
                free: slots,
                busy: HashSet::new(),
                queue: VecDeque::new(),
            }
            .run(rx),
        );
        (Batcher { tx, stats }, task)
    }

    /// Submits `op` and waits until etcd has committed it (or refused it).
    pub(super) async fn submit(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

/// One slot: its key, the last sequence number it sent, and the revision
/// at which its key was last written (0: never).
#[derive(Debug)]
struct Slot {
    key: String,
    seq: u64,
    expected: i64,
}

struct Loop {
    members: Arc<Members>,
    keys: Keys,
    stats: Arc<BatchStats>,
    free: Vec<Slot>,
    /// etcd keys with a write in flight.
    busy: HashSet<String>,
    queue: VecDeque<Pending>,
}

type Flight = (Slot, Vec<String>);

impl Loop {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut flying: tokio::task::JoinSet<Flight> = tokio::task::JoinSet::new();
        let mut open = true;
        loop {
            if self.queue.is_empty() && flying.is_empty() {
                if !open {
                    return;
                }
                match rx.recv().await {
                    Some(p) => self.queue.push_back(p),
                    None => return,
                }
            } else {
                tokio::select! {
                    p = rx.recv(), if open && self.queue.len() < MAX_QUEUED => match p {
                        Some(p) => self.queue.push_back(p),
                        None => open = false,
                    },
                    Some(done) = flying.join_next(), if !flying.is_empty() => {
                        let (slot, touched) = done.expect("a batch task never panics");
                        self.free.push(slot);
                        for k in touched {
                            self.busy.remove(&k);
                        }
                    }
                }
            }
            while self.queue.len() < MAX_QUEUED {
                match rx.try_recv() {
                    Ok(p) => self.queue.push_back(p),
                    Err(_) => break,
                }
            }
            while !self.queue.is_empty() {
                let Some(slot) = self.free.pop() else { break };
                let batch = self.take_batch();
                if batch.is_empty() {
                    self.free.push(slot);
                    break;
                }
                let touched: Vec<String> = batch
                    .iter()
                    .flat_map(|p| p.op.touched(&self.keys))
                    .collect();
                self.busy.extend(touched.iter().cloned());
                let cost: usize = batch.iter().map(|p| p.op.cost()).sum();
                self.stats.txns.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .ops
                    .fetch_add((cost + SLOT_OPS) as u64, Ordering::Relaxed);
                let (members, keys) = (self.members.clone(), self.keys.clone());
                flying.spawn(async move {
                    let slot = send(&members, &keys, slot, batch).await;
                    (slot, touched)
                });
            }
        }
    }

    /// Takes the queued writes that fit one transaction, in order, leaving
    /// those whose keys are in flight or taken (and every later write to
    /// the same keys) for a later one.
    fn take_batch(&mut self) -> Vec<Pending> {
        let mut batch = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        let mut blocked: HashSet<String> = HashSet::new();
        let (mut cost, mut bytes) = (SLOT_OPS, 0);
        let mut full = false;
        while let Some(p) = self.queue.pop_front() {
            if full {
                kept.push_back(p);
                continue;
            }
            let touched = p.op.touched(&self.keys);
            if touched
                .iter()
                .any(|k| self.busy.contains(k) || blocked.contains(k))
            {
                blocked.extend(touched);
                kept.push_back(p);
                continue;
            }
            let (c, b) = (p.op.cost(), p.op.bytes());
            if !batch.is_empty() && (cost + c > MAX_TXN_OPS || bytes + b > MAX_TXN_BYTES) {
                full = true;
                kept.push_back(p);
                continue;
            }
            cost += c;
            bytes += b;
            blocked.extend(touched);
            batch.push(p);
        }
        self.queue = kept;
        batch
    }
}

/// Sends one batch through `slot` (see the module docs) and answers every
/// write in it. Returns the slot as it now stands.
async fn send(members: &Members, keys: &Keys, mut slot: Slot, batch: Vec<Pending>) -> Slot {
    let nested: Vec<TxnOp> = batch.iter().map(|p| TxnOp::txn(p.op.txn(keys))).collect();
    let mut seq = slot.seq + 1;
    for _ in 0..4 {
        let mut ops = nested.clone();
        ops.push(TxnOp::put(
            slot.key.clone(),
            seq.to_string(),
            None::<PutOptions>,
        ));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                slot.key.clone(),
                CompareOp::Equal,
                slot.expected,
            )])
            .and_then(ops)
            .or_else([TxnOp::get(slot.key.clone(), None)]);
        let resp = match members.txn(txn).await {
            Ok(resp) => resp,
            Err(e) => {
                // Outcome unknown: the next batch through this slot finds
                // out (the slot key then holds this sequence number).
                slot.seq = seq;
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return slot;
            }
        };
        let revision = revision_of(resp.header());
        if resp.succeeded() {
            (slot.seq, slot.expected) = (seq, revision as i64);
            let answers = resp.op_responses();
            for (p, answer) in batch.into_iter().zip(answers) {
                let outcome = match answer {
                    TxnOpResponse::Txn(t) => Ok(p.op.outcome(&t, revision)),
                    _ => Err(StoreError::Failed(
                        "etcd answered a write out of shape".into(),
                    )),
                };
                let _ = p.reply.send(outcome);
            }
            return slot;
        }
        let current = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| {
                let n = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse().ok());
                (n.unwrap_or(0u64), kv.mod_revision())
            }),
            _ => None,
        };
        match current {
            Some((n, at)) if n == seq => {
                // An earlier attempt of this very batch committed.
                (slot.seq, slot.expected) = (seq, at);
                for p in batch {
                    let outcome = p.op.recover(members, keys, at as Revision).await;
                    let _ = p.reply.send(outcome);
                }
                return slot;
            }
            Some((n, at)) => {
                // An earlier batch whose answer was lost committed after all.
                slot.expected = at;
                slot.seq = slot.seq.max(n);
                seq = slot.seq + 1;
            }
            None => slot.expected = 0,
        }
    }
    for p in batch {
        let _ = p.reply.send(Err(StoreError::Unavailable(
            "etcd write slot kept moving".into(),
        )));
    }
    slot
}
