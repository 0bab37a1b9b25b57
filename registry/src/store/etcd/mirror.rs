//! The mirror: this replica's copy of the keys it serves and decides on
//! (`kv/`, `lease/`, `session/`), read in pages at one revision and then
//! kept current by one etcd watch of the prefix.
//!
//! Reads are served from it after a *sync* ([`Mirror::sync`]): the caller
//! learns the revision of the last write under the prefix (every write
//! transaction of every replica also writes its batch slot key, so a range
//! over the few slot keys tells it) and waits until the mirror's watch has
//! delivered it. Watch progress notifications are not used for this: etcd
//! 3.4 can send one with a revision whose events it has not sent yet (the
//! notification reads the store's revision before the events are queued),
//! and trusting it would skip those events. Watches are served from a ring of
//! the last changes and a broadcast, like the embedded store's; several
//! changes can share a revision (one transaction of the batcher), and a
//! watcher that falls behind resumes at the exact change, not the revision.
//!
//! When the watch reports that etcd compacted past it, the mirror reads
//! everything again and tells every watcher `Compacted` (they re-list).
//! Lease record changes are handed, in revision order and under the
//! mirror's lock, to an [`Observer`] (the lease holder of this replica).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{EventType, WatchOptions};
use tokio::sync::{broadcast, watch};

use super::keys::{Keys, Kind, LeaseRecord, SessionValue};
use super::members::{MAX_MESSAGE, Members, unix_ms};
use crate::model::Revision;
use crate::store::{Change, KeyValue, LeaseCounts, Range, StoreError, Watch};

/// Changes kept for watchers to resume from.
pub(super) const HISTORY: usize = 10_000;

/// Told about every lease record change the mirror applies.
pub(super) trait Observer: Send + Sync {
    /// `key`'s record is now `record` (None: removed), as of `revision`.
    fn record_changed(&self, key: &str, record: Option<LeaseRecord>, revision: Revision);
    /// The mirror read everything again: these are all the records now.
    fn reloaded(&self, records: &HashMap<String, (LeaseRecord, Revision)>);
}

#[derive(Debug, Clone)]
enum Event {
    Change(Arc<Change>),
    /// The mirror was read again from scratch: watchers must re-list.
    Reset,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    mod_revision: Revision,
}

#[derive(Debug, Default)]
struct State {
    loaded: bool,
    kvs: BTreeMap<String, Entry>,
    records: HashMap<String, (LeaseRecord, Revision)>,
    sessions: HashMap<i64, SessionValue>,
    history: VecDeque<Change>,
    /// The revision up to which every change is applied (moves under the
    /// lock, with the changes; `covered` follows it).
    revision: Revision,
    /// Every change at or below this revision has left `history`.
    compacted: Revision,
    /// Unix ms when the mirror last knew it was current.
    current_at_ms: u64,
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct Mirror {
    keys: Keys,
    state: RwLock<State>,
    changes: broadcast::Sender<Event>,
    /// The revision up to which the mirror has seen every change.
    covered: watch::Sender<Revision>,
}

impl Mirror {
    pub(super) fn new(keys: Keys) -> Mirror {
        Mirror {
            keys,
            state: RwLock::new(State::default()),
            changes: broadcast::channel(16_384).0,
            covered: watch::channel(0).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("mirror lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("mirror lock poisoned")
    }

    /// Reads, then follows, forever; run it on its own task.
    pub(super) async fn run(self: Arc<Self>, members: Arc<Members>, observer: Arc<dyn Observer>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let at = match self.load(&members, &*observer).await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd mirror: cannot read the keyspace; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.follow(&members, &*observer, at).await;
            tracing::warn!("etcd compacted past the mirror's watch; reading everything again");
        }
    }

    /// Reads `kv/`, `lease/` and `session/` in pages at one revision.
    async fn load(&self, members: &Members, observer: &dyn Observer) -> Result<i64, StoreError> {
        let p = self.keys.prefix();
        let (data, at) = members.range_paged(&format!("{p}kv/"), None, false).await?;
        let (records, _) = members
            .range_paged(&format!("{p}lease/"), Some(at), false)
            .await?;
        let (sessions, _) = members
            .range_paged(&format!("{p}session/"), Some(at), false)
            .await?;
        let mut fresh = State {
            loaded: true,
            revision: at.max(0) as Revision,
            compacted: at.max(0) as Revision,
            current_at_ms: unix_ms(),
            ..State::default()
        };
        for kv in data.into_iter().chain(records).chain(sessions) {
            let revision = kv.mod_revision().max(0) as Revision;
            let (key, value) = kv.into_key_value();
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            match self.keys.split(&key) {
                Some((Kind::Data, k)) => {
                    let entry = Entry {
                        value: Bytes::from(value),
                        mod_revision: revision,
                    };
                    fresh.kvs.insert(k.to_string(), entry);
                }
                Some((Kind::Record, k)) => {
                    if let Some(r) = LeaseRecord::decode(&value) {
                        fresh.records.insert(k.to_string(), (r, revision));
                    }
                }
                Some((Kind::Session, id)) => {
                    if let Ok(id) = id.parse() {
                        fresh.sessions.insert(id, SessionValue::decode(&value));
                    }
                }
                None => {}
            }
        }
        let mut state = self.write();
        let reload = state.loaded;
        *state = fresh;
        observer.reloaded(&state.records);
        if reload {
            let _ = self.changes.send(Event::Reset);
        }
        drop(state);
        self.covered.send_replace(at.max(0) as Revision);
        Ok(at)
    }

    /// Follows the watch from `at`, reopening it on a live member when it
    /// breaks, until etcd says it compacted past the mirror.
    async fn follow(&self, members: &Members, observer: &dyn Observer, at: i64) {
        let mut next = at + 1;
        let mut backoff = Duration::from_millis(50);
        loop {
            let prefix = self.keys.prefix().to_string();
            let opened = members
                .run(|c| {
                    let options = WatchOptions::new().with_prefix().with_start_revision(next);
                    let p = prefix.clone();
                    async move {
                        c.watch_client()
                            .max_decoding_message_size(MAX_MESSAGE)
                            .watch(p, Some(options))
                            .await
                    }
                })
                .await;
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd mirror: watch lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.compact_revision() > 0 => return,
                    Ok(Some(resp)) if resp.canceled() => break,
                    Ok(Some(resp)) => next = self.apply(&resp, observer, next),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    /// Applies one watch response; answers the next revision to watch from.
    fn apply(&self, resp: &etcd_client::WatchResponse, observer: &dyn Observer, next: i64) -> i64 {
        let events = resp.events();
        if events.is_empty() {
            // Created, or a progress notification: proof of life only (see
            // the module docs for why its revision is not trusted).
            self.write().current_at_ms = unix_ms();
            return next;
        }
        let mut state = self.write();
        let mut last = next - 1;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            if kv.mod_revision() < next {
                continue;
            }
            last = last.max(kv.mod_revision());
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            let put = event.event_type() == EventType::Put;
            self.apply_one(
                &mut state,
                observer,
                key,
                put.then(|| kv.value()),
                kv.mod_revision(),
            );
        }
        state.current_at_ms = unix_ms();
        state.revision = state.revision.max(last.max(0) as Revision);
        drop(state);
        if last >= next {
            self.covered.send_replace(last as Revision);
        }
        last.max(next - 1) + 1
    }

    fn apply_one(
        &self,
        state: &mut State,
        observer: &dyn Observer,
        key: &str,
        value: Option<&[u8]>,
        revision: i64,
    ) {
        let revision = revision.max(0) as Revision;
        match self.keys.split(key) {
            Some((Kind::Data, k)) => {
                let change = match value {
                    Some(v) => {
                        let value = Bytes::copy_from_slice(v);
                        state.kvs.insert(
                            k.to_string(),
                            Entry {
                                value: value.clone(),
                                mod_revision: revision,
                            },
                        );
                        Change::Put(KeyValue {
                            key: k.to_string(),
                            value,
                            mod_revision: revision,
                        })
                    }
                    None => {
                        state.kvs.remove(k);
                        Change::Delete {
                            key: k.to_string(),
                            revision,
                        }
                    }
                };
                state.history.push_back(change.clone());
                while state.history.len() > HISTORY {
                    if let Some(old) = state.history.pop_front() {
                        state.compacted = state.compacted.max(old.revision());
                    }
                }
                let _ = self.changes.send(Event::Change(Arc::new(change)));
            }
            Some((Kind::Record, k)) => {
                let record = value.and_then(LeaseRecord::decode);
                match record {
                    Some(r) => state.records.insert(k.to_string(), (r, revision)),
                    None => state.records.remove(k),
                };
                observer.record_changed(k, record, revision);
            }
            Some((Kind::Session, id)) => {
                if let Ok(id) = id.parse::<i64>() {
                    match value {
                        Some(v) => state.sessions.insert(id, SessionValue::decode(v)),
                        None => state.sessions.remove(&id),
                    };
                }
            }
            None => {}
        }
    }

    /// Whether the first read is done.
    pub(super) fn loaded(&self) -> bool {
        self.read().loaded
    }

    /// The revision up to which the mirror has seen everything.
    pub(super) fn revision(&self) -> Revision {
        *self.covered.borrow()
    }

    /// Waits (at most `timeout`) until the mirror has seen `target`.
    pub(super) async fn sync(&self, target: Revision, timeout: Duration) -> bool {
        let mut covered = self.covered.subscribe();
        if *covered.borrow_and_update() < target {
            let reached = covered.wait_for(|c| *c >= target);
            if !tokio::time::timeout(timeout, reached)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return false;
            }
        }
        self.write().current_at_ms = unix_ms();
        true
    }

    /// Every data key under `prefix`; `stale_ms` when the mirror could not
    /// be brought up to date (no quorum).
    pub(super) fn range(&self, prefix: &str, stale: bool) -> Range {
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
        Range {
            kvs,
            revision: state.revision,
            stale_ms: stale.then(|| unix_ms().saturating_sub(state.current_at_ms)),
        }
    }

    /// One data key as the mirror has it.
    pub(super) fn get(&self, key: &str) -> Option<KeyValue> {
        self.read().kvs.get(key).map(|e| KeyValue {
            key: key.to_string(),
            value: e.value.clone(),
            mod_revision: e.mod_revision,
        })
    }

    /// The data of every key in `keys` that has some.
    pub(super) fn values(&self, keys: Vec<String>) -> Vec<KeyValue> {
        let state = self.read();
        keys.into_iter()
            .filter_map(|key| {
                let e = state.kvs.get(&key)?;
                Some(KeyValue {
                    value: e.value.clone(),
                    mod_revision: e.mod_revision,
                    key,
                })
            })
            .collect()
    }

    /// `key`'s lease record and its revision.
    pub(super) fn record(&self, key: &str) -> Option<(LeaseRecord, Revision)> {
        self.read().records.get(key).copied()
    }

    /// Runs `f` with `key`'s current record revision, while no change can
    /// be applied (so `f` cannot act on a record that is already replaced).
    pub(super) fn with_record<T>(&self, key: &str, f: impl FnOnce(Option<Revision>) -> T) -> T {
        let state = self.read();
        f(state.records.get(key).map(|(_, r)| *r))
    }

    /// Lease records of keys under `prefix`.
    pub(super) fn records_under(&self, prefix: &str) -> usize {
        self.read()
            .records
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }

    /// The sessions alive (their `session/` key exists) and what they publish.
    pub(super) fn sessions(&self) -> HashMap<i64, SessionValue> {
        self.read().sessions.clone()
    }

    /// The at-risk counts every session but `me` published, summed.
    pub(super) fn counts_except(&self, me: i64) -> LeaseCounts {
        let state = self.read();
        let mut sum = LeaseCounts::default();
        for (id, s) in &state.sessions {
            if *id != me {
                sum.lapsed += s.counts.lapsed;
                sum.late += s.counts.late;
                sum.critical += s.counts.critical;
            }
        }
        sum
    }

    /// Lease records whose owner is not in `live`.
    pub(super) fn orphans(&self, live: &HashSet<i64>) -> Vec<(String, LeaseRecord, Revision)> {
        self.read()
            .records
            .iter()
            .filter(|(_, (r, _))| !live.contains(&r.owner))
            .map(|(k, (r, rev))| (k.clone(), *r, *rev))
            .collect()
    }

    /// A watch of `prefix` after `after`, served from the mirror; `None`
    /// when the mirror cannot serve it (not read yet, or `after` is older
    /// than its ring), for the caller to watch etcd itself.
    pub(super) fn watch(self: &Arc<Self>, prefix: &str, after: Revision) -> Option<MirrorWatch> {
        let rx = self.changes.subscribe();
        let state = self.read();
        if !state.loaded || after < state.compacted {
            return None;
        }
        let backlog = state
            .history
            .iter()
            .filter(|c| c.revision() > after)
            .cloned()
            .collect();
        Some(MirrorWatch {
            mirror: self.clone(),
            prefix: prefix.to_string(),
            backlog,
            rx,
            skip_through: state.revision.max(after),
            last: (after, usize::MAX),
        })
    }

    fn compacted(&self) -> Revision {
        self.read().compacted
    }
}

/// A watch served from the mirror; see [`Mirror::watch`].
#[derive(Debug)]
pub(super) struct MirrorWatch {
    mirror: Arc<Mirror>,
    prefix: String,
    /// Changes (of any key) still to go through, in order.
    backlog: VecDeque<Change>,
    rx: broadcast::Receiver<Event>,
    /// Live changes at or below this revision were in the backlog.
    skip_through: Revision,
    /// The revision of the last change gone through, and how many changes
    /// of that revision went through (`usize::MAX`: all of them).
    last: (Revision, usize),
}

impl MirrorWatch {
    /// Notes that `change` went through; whether the caller wants it.
    fn pass(&mut self, change: &Change) -> bool {
        let r = change.revision();
        if r == self.last.0 {
            self.last.1 = self.last.1.saturating_add(1);
        } else {
            self.last = (r, 1);
        }
        change.key().starts_with(&self.prefix)
    }

    /// After falling behind the broadcast: the rest, from the ring.
    fn recover(&mut self) -> Result<(), StoreError> {
        let state = self.mirror.read();
        let (rev, seen) = self.last;
        if rev < state.compacted || (rev == state.compacted && seen != usize::MAX) {
            return Err(StoreError::Compacted {
                requested: rev.saturating_sub(1),
                compacted: state.compacted,
            });
        }
        let mut at_rev = 0;
        for c in &state.history {
            if c.revision() == rev {
                at_rev += 1;
                if at_rev <= seen {
                    continue;
                }
            } else if c.revision() < rev {
                continue;
            }
            self.backlog.push_back(c.clone());
        }
        self.skip_through = state.revision;
        Ok(())
    }
}

#[async_trait]
impl Watch for MirrorWatch {
    async fn next(&mut self) -> Result<Change, StoreError> {
        loop {
            if let Some(change) = self.backlog.pop_front() {
                if self.pass(&change) {
                    return Ok(change);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(Event::Change(change)) => {
                    if change.revision() <= self.skip_through {
                        continue;
                    }
                    if self.pass(&change) {
                        return Ok((*change).clone());
                    }
                }
                Ok(Event::Reset) => {
                    return Err(StoreError::Compacted {
                        requested: self.last.0,
                        compacted: self.mirror.compacted(),
                    });
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.recover()?,
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}
