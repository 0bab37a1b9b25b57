//! The leases this replica holds: its session, the deadline of every lease
//! whose record names the session, claims, adoption, and the counts it
//! publishes for the other replicas' self-preservation.
//!
//! The deadlines live here, in memory, like the embedded store's: a
//! heartbeat that reaches the holder moves one, and etcd hears nothing of
//! it. etcd only holds *who* holds each lease (`lease/{key}`) and whether
//! the holder is alive (its session: an etcd lease with `session/{id}`
//! attached, renewed on one keep-alive stream).
//!
//! The holder vouches for its leases only while etcd has promised its
//! session: until the last keep-alive answer's TTL, counted from when the
//! keep-alive was sent, less a tenth for safety. Past that it refuses
//! heartbeats (503: clients try another replica) and does not sweep. Time
//! during which the replica could not vouch, or did not run at all (a
//! SIGSTOP, a starved process: a 100 ms ticker that fell over a second
//! behind), is added to every deadline it holds: it does not count against
//! clients. A session etcd says is gone is replaced by a new one, and every
//! lease of the old one is forgotten (the others adopt them).
//!
//! See `docs/architecture.md` ("The etcd store") for the whole protocol
//! and its failure cases.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use etcd_client::{DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::batch::{Batcher, Outcome, WriteOp};
use super::keys::{Keys, LeaseRecord, SessionValue, rank};
use super::members::{Members, REQUEST_TIMEOUT};
use super::mirror::{Mirror, Observer};
use crate::model::Revision;
use crate::store::{LeaseCounts, LeaseReport, StoreError};

/// How often the freeze detector ticks.
const TICK: Duration = Duration::from_millis(100);
/// A tick this late means the replica was not running meanwhile.
const FROZEN: Duration = Duration::from_secs(1);
/// Tries of a heartbeat to take a lease whose record keeps moving.
const CLAIM_ATTEMPTS: usize = 3;
/// Claims of one adoption pass in flight at once.
const ADOPTING: usize = 256;
/// The most time between two keep-alives of the session (a third of its
/// TTL when that is shorter). The replica vouches for its leases until the
/// last answered keep-alive's TTL runs out, so what it can ride out (an
/// etcd election, a member killed under its stream) is that TTL less a
/// tenth less this pause. At a third of a 10 s TTL that left 5.7 s, which
/// an election on a loaded machine outlasted; a keep-alive is an in-memory
/// renewal on the etcd leader (no Raft write), so one a second per replica
/// costs etcd nothing that shows.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);
/// A keep-alive answered later than this logs how much of the session's
/// promise was left ([`Leases::log_recovered`]).
const KEEP_ALIVE_LATE: Duration = Duration::from_millis(500);

/// One lease this replica holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    ttl: Duration,
    deadline: Instant,
    /// The revision of the record as this replica wrote it (the fence).
    claim: Revision,
}

/// This process's session.
#[derive(Debug, Clone, Copy, Default)]
struct Session {
    /// The etcd lease id; 0 while there is none.
    id: i64,
    /// Until when etcd has promised it, less the safety margin.
    vouched_until: Option<Instant>,
}

/// Claims and adoptions made, for metrics.
#[derive(Debug, Default)]
pub(super) struct LeaseStats {
    pub claims: AtomicU64,
    pub adopted: AtomicU64,
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct Leases {
    keys: Keys,
    members: Arc<Members>,
    mirror: Arc<Mirror>,
    batcher: Batcher,
    session_ttl: Duration,
    /// Names this process's batch slot keys; published with the session.
    writer: u64,
    session: RwLock<Session>,
    /// The etcd lease of the session being opened or open, from the moment
    /// etcd grants it (0: none). `session.id` is set only once `session/{id}`
    /// is written and etcd has promised the lease; a close that interrupts
    /// the setup in between must still revoke this lease, or the `session/`
    /// key it may already carry keeps the others from adopting for a whole
    /// TTL. Set before `session.id` and cleared after it, so a non-zero
    /// `session.id` is always this one.
    granted: AtomicI64,
    held: DashMap<String, Held>,
    /// Since when each orphaned record has been seen orphaned.
    orphaned: Mutex<HashMap<String, Instant>>,
    /// The counts last published (None: never, or the write failed).
    published: Mutex<Option<LeaseCounts>>,
    /// Until when this replica takes no lease from a live replica: set for
    /// one session TTL when it opens a session after losing one (it was
    /// stopped or cut off). Heartbeats that queued up in its sockets while
    /// it was away, whose clients gave up and moved on long ago, must not
    /// take the leases back from the replica those clients now use.
    returning_until: Mutex<Option<Instant>>,
    pub(super) stats: LeaseStats,
}

fn no_session() -> StoreError {
    StoreError::Unavailable(
        "this replica has no etcd session it can vouch for now (etcd unreachable, or the replica was stopped); another replica holds its leases".into(),
    )
}

impl Leases {
    pub(super) fn new(
        keys: Keys,
        members: Arc<Members>,
        mirror: Arc<Mirror>,
        batcher: Batcher,
        session_ttl: Duration,
        writer: u64,
    ) -> Leases {
        Leases {
            keys,
            members,
            mirror,
            batcher,
            session_ttl,
            writer,
            session: RwLock::new(Session::default()),
            granted: AtomicI64::new(0),
            held: DashMap::new(),
            orphaned: Mutex::new(HashMap::new()),
            published: Mutex::new(None),
            returning_until: Mutex::new(None),
            stats: LeaseStats::default(),
        }
    }

    fn session(&self) -> Session {
        *self.session.read().expect("session lock poisoned")
    }

    /// The session id, if this replica can vouch for its leases now.
    pub(super) fn vouched(&self) -> Option<i64> {
        let s = self.session();
        (s.id != 0 && s.vouched_until.is_some_and(|t| Instant::now() < t)).then_some(s.id)
    }

    /// The session id, vouched for or not (0: none).
    pub(super) fn session_id(&self) -> i64 {
        self.session().id
    }

    /// Leases held now.
    /// Time until a lease this replica holds lapses; `None` for one it does
    /// not hold or that lapsed.
    pub(super) fn left(&self, key: &str) -> Option<Duration> {
        let held = self.held.get(key)?;
        let left = held.deadline.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// Holds `key` from now (a registration or a claim by this replica
    /// committed its record at `claim`), unless the mirror already has a
    /// newer record: then someone else wrote it after us.
    pub(super) fn hold(&self, key: &str, ttl: Duration, claim: Revision, owner: i64) {
        if owner == 0 || owner != self.session_id() {
            return;
        }
        self.mirror.with_record(key, |current| {
            if current.is_none_or(|r| r <= claim) {
                self.held.insert(
                    key.to_string(),
                    Held {
                        ttl,
                        deadline: Instant::now() + ttl,
                        claim,
                    },
                );
            }
        });
    }

    /// Forgets `key` (removed, or its lease dropped).
    pub(super) fn forget(&self, key: &str) {
        self.held.remove(key);
    }

    /// The record a registration writes now.
    pub(super) fn record_for(&self, ttl: Duration) -> LeaseRecord {
        LeaseRecord {
            owner: self.session_id(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    /// A heartbeat for `key`: `false` when it has no lease (or no data).
    pub(super) async fn renew(&self, key: &str) -> Result<bool, StoreError> {
        let me = self.vouched().ok_or_else(no_session)?;
        if let Some(mut held) = self.held.get_mut(key) {
            held.deadline = Instant::now() + held.ttl;
            return Ok(true);
        }
        // The mirror's record first; after a lost claim, etcd's own: a
        // claim lost against a record the mirror had not seen yet says
        // nothing about who holds the lease now, and answering 200 then
        // would let the lease lapse at a holder no heartbeat reaches.
        for attempt in 0..CLAIM_ATTEMPTS {
            let found = match self.mirror.record(key) {
                Some(found) if attempt == 0 => Some(found),
                _ => self.read_record(key).await?,
            };
            let Some((record, revision)) = found else {
                return Ok(false);
            };
            if record.owner == me {
                // Ours already (a claim whose change the mirror has not
                // delivered yet): hold it from now.
                self.hold(key, record.ttl(), revision, me);
                return Ok(true);
            }
            if self.returning() && self.mirror.sessions().contains_key(&record.owner) {
                return Err(StoreError::Unavailable(
                    "this replica is back from losing its etcd session; another live replica holds this lease: use it".into(),
                ));
            }
            match self.claim(key, record, revision, me).await? {
                Some(true) => {
                    self.stats.claims.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                Some(false) => continue,
                None => return Ok(false),
            }
        }
        Err(StoreError::Unavailable(
            "the lease moved between replicas on every try: heartbeats for this instance reach several replicas at once".into(),
        ))
    }

    /// Whether this replica came back from losing its session a moment ago.
    fn returning(&self) -> bool {
        let until = *self
            .returning_until
            .lock()
            .expect("returning lock poisoned");
        until.is_some_and(|t| Instant::now() < t)
    }

    /// Rewrites `key`'s record to name session `me`, if it is still at
    /// `revision`. `Some(true)`: claimed; `Some(false)`: someone else wrote
    /// the record meanwhile (so someone holds a fresh lease); `None`: the
    /// key or its lease is gone.
    async fn claim(
        &self,
        key: &str,
        record: LeaseRecord,
        revision: Revision,
        me: i64,
    ) -> Result<Option<bool>, StoreError> {
        let mine = LeaseRecord {
            owner: me,
            ttl_ms: record.ttl_ms,
        };
        let op = WriteOp::Claim {
            key: key.to_string(),
            record: mine,
            expected: revision,
        };
        Ok(match self.batcher.submit(op).await? {
            Outcome::Applied(at) => {
                self.hold(key, mine.ttl(), at, me);
                Some(true)
            }
            Outcome::Lost { data, record } => (data && record).then_some(false),
            Outcome::NotApplied | Outcome::Held(_) => None,
        })
    }

    /// The record of `key` read from etcd, if the data exists too.
    async fn read_record(&self, key: &str) -> Result<Option<(LeaseRecord, Revision)>, StoreError> {
        let txn = Txn::new().and_then([
            TxnOp::get(
                self.keys.data(key),
                Some(GetOptions::new().with_count_only()),
            ),
            TxnOp::get(self.keys.record(key), None),
        ]);
        let resp = self.members.txn(txn).await?;
        let ops = resp.op_responses();
        let exists = matches!(ops.first(), Some(TxnOpResponse::Get(g)) if g.count() > 0);
        let record = match ops.get(1) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().and_then(|kv| {
                let r = LeaseRecord::decode(kv.value())?;
                Some((r, kv.mod_revision().max(0) as Revision))
            }),
            _ => None,
        };
        Ok(record.filter(|_| exists))
    }

    /// The fence for expiring `key`: the record revision this replica
    /// wrote and its session, if it holds the lease, the lease has lapsed,
    /// and the session is vouched for.
    pub(super) fn fence(&self, key: &str) -> Option<(Revision, i64)> {
        let me = self.vouched()?;
        let held = self.held.get(key)?;
        (held.deadline <= Instant::now()).then_some((held.claim, me))
    }

    /// What the sweeper needs: the leases held here that lapsed, how many
    /// are late, every lease record, and what the others published.
    pub(super) fn report(&self, prefix: &str) -> Result<LeaseReport, StoreError> {
        let me = self.vouched().ok_or_else(no_session)?;
        let now = Instant::now();
        let mut lapsed = Vec::new();
        let mut late = 0;
        for held in self.held.iter() {
            if !held.key().starts_with(prefix) {
                continue;
            }
            if held.deadline <= now {
                lapsed.push(held.key().clone());
            } else if held.deadline - now < held.ttl / 3 {
                late += 1;
            }
        }
        Ok(LeaseReport {
            lapsed: self.mirror.values(lapsed),
            late,
            leased: self.mirror.records_under(prefix),
            elsewhere: self.mirror.counts_except(me),
        })
    }

    /// Publishes this replica's at-risk counts in its session key, when they
    /// changed and another replica is there to read them.
    pub(super) fn publish(self: &Arc<Self>, counts: LeaseCounts) {
        let Some(me) = self.vouched() else { return };
        let others = self.mirror.sessions().keys().any(|id| *id != me);
        {
            let mut last = self.published.lock().expect("publish lock poisoned");
            if !others || last.unwrap_or_default() == counts {
                return;
            }
            *last = Some(counts);
        }
        let leases = self.clone();
        tokio::spawn(async move {
            if leases.put_session(me, counts).await.is_err() {
                // Try again at the next sweep.
                *leases.published.lock().expect("publish lock poisoned") = None;
            }
        });
    }

    async fn put_session(&self, id: i64, counts: LeaseCounts) -> Result<(), StoreError> {
        let key = self.keys.session(id);
        let value = SessionValue {
            writer: self.writer,
            counts,
        }
        .encode();
        self.members
            .run(|mut c| {
                let (k, v) = (key.clone(), value.clone());
                async move { c.put(k, v, Some(PutOptions::new().with_lease(id))).await }
            })
            .await
            .map(|_| ())
    }

    /// Opens a session, keeps it alive, and opens another when etcd says
    /// it is gone. Runs forever; on its own task.
    pub(super) async fn run_session(self: Arc<Self>) {
        let mut lost_one = false;
        loop {
            let (id, sent, granted_ttl) = self.open_session().await;
            self.vouch(id, sent, granted_ttl);
            if lost_one {
                *self
                    .returning_until
                    .lock()
                    .expect("returning lock poisoned") = Some(Instant::now() + self.session_ttl);
            }
            tracing::info!(session = id, ttl = granted_ttl, "etcd session open");
            self.keep(id).await;
            tracing::warn!(
                session = id,
                held = self.held.len(),
                "etcd session ended: the leases it held go to other replicas"
            );
            self.held.clear();
            lost_one = true;
            *self.session.write().expect("session lock poisoned") = Session::default();
            self.granted.store(0, Ordering::SeqCst);
            *self.published.lock().expect("publish lock poisoned") = None;
        }
    }

    /// Grants a lease and writes `session/{id}` on it, retrying until both
    /// worked: the id, when the grant was sent, and the TTL granted. The
    /// id is in [`Leases::granted`] from the grant on, for
    /// [`Leases::give_back`].
    async fn open_session(&self) -> (i64, Instant, i64) {
        let ttl = self.session_ttl.as_secs_f64().ceil().max(1.0) as i64;
        loop {
            let granted = self
                .members
                .run(|mut c| async move { c.lease_grant(ttl, None).await })
                .await;
            let (id, granted_ttl) = match granted {
                Ok(g) => (g.id(), g.ttl()),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: cannot open a session; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.granted.store(id, Ordering::SeqCst);
            let sent = Instant::now();
            match self.put_session(id, LeaseCounts::default()).await {
                Ok(()) => return (id, sent, granted_ttl),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: cannot register the session; retrying");
                    self.abandon(id).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Revokes lease `id`, whose `session/{id}` write failed: etcd may have
    /// applied it with the answer lost, and a session key left behind would
    /// keep the other replicas from adopting this replica's leases for a
    /// whole TTL. A revoke that fails too leaves the lease to expire.
    async fn abandon(&self, id: i64) {
        let revoked = self
            .members
            .run(|mut c| async move { revoked(c.lease_revoke(id).await) })
            .await;
        match revoked {
            Ok(()) => {
                let _ = self
                    .granted
                    .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::debug!(error = %e, lease = id, "etcd: cannot revoke an unregistered session's lease; it expires by itself");
            }
        }
    }

    /// etcd answered a keep-alive sent at `sent` with `ttl` seconds.
    fn vouch(&self, id: i64, sent: Instant, ttl: i64) {
        let ttl = Duration::from_secs(ttl.max(0) as u64);
        *self.session.write().expect("session lock poisoned") = Session {
            id,
            vouched_until: Some(sent + ttl - ttl / 10),
        };
    }

    /// Keeps session `id` alive until etcd says it is gone.
    async fn keep(&self, id: i64) {
        let mut stream = None;
        let mut failing = false;
        loop {
            let sent = Instant::now();
            match keep_alive(&self.members, id, &mut stream).await {
                Ok(ttl) if ttl > 0 => {
                    let slow = sent.elapsed() > KEEP_ALIVE_LATE;
                    if std::mem::take(&mut failing) || slow {
                        self.log_recovered(id);
                    }
                    self.vouch(id, sent, ttl);
                    let every = (Duration::from_secs(ttl as u64) / 3).min(KEEP_ALIVE_EVERY);
                    tokio::time::sleep(every).await;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd session keep-alive failed; retrying");
                    failing = true;
                    stream = None;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// Says how close a keep-alive answered late or after failures came to
    /// the end of what the session was vouched for, so an operator can size
    /// `--etcd-session-ttl` against the elections their etcd goes through.
    /// A warning when it came too late: heartbeats were refused meanwhile.
    fn log_recovered(&self, id: i64) {
        let until = self
            .session
            .read()
            .expect("session lock poisoned")
            .vouched_until;
        let Some(until) = until else { return };
        let now = Instant::now();
        let margin_ms = if until >= now {
            (until - now).as_millis() as i64
        } else {
            -((now - until).as_millis() as i64)
        };
        if margin_ms < 0 {
            tracing::warn!(
                session = id,
                margin_ms,
                "etcd session keep-alive answered after the session's promise ran out: heartbeats were refused meanwhile (a longer --etcd-session-ttl rides out longer etcd elections)"
            );
        } else {
            tracing::info!(
                session = id,
                margin_ms,
                "etcd session keep-alive answered late or after failures"
            );
        }
    }

    /// Moves every deadline forward while this replica could not act on
    /// leases: frozen (ticks over a second late) or without a vouched
    /// session. Runs forever; on its own task.
    pub(super) async fn run_clock(self: Arc<Self>) {
        let mut clock = Clock::new(Instant::now());
        loop {
            tokio::time::sleep(TICK).await;
            let (back, frozen) = clock.tick(Instant::now(), self.vouched().is_some());
            if let Some(lost) = frozen {
                tracing::warn!(
                    ?lost,
                    held = self.held.len(),
                    "this replica did not run for a while; the leases it holds get that time back"
                );
            }
            if !back.is_zero() {
                self.extend(back);
            }
        }
    }

    fn extend(&self, by: Duration) {
        for mut held in self.held.iter_mut() {
            held.deadline += by;
        }
    }

    /// Adopts the leases whose holder's session is gone: each survivor
    /// takes those that rank it first (or any, once one has stayed orphaned
    /// two session TTLs), with a full lease. Runs forever; on its own task.
    pub(super) async fn run_adoption(self: Arc<Self>) {
        let period =
            (self.session_ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let mut known: HashMap<i64, SessionValue> = HashMap::new();
        loop {
            tokio::time::sleep(period).await;
            if !self.mirror.loaded() {
                continue;
            }
            let Some(me) = self.vouched() else { continue };
            let sessions = self.mirror.sessions();
            self.sweep_writers(&known, &sessions);
            known = sessions;
            let mut live: HashSet<i64> = known.keys().copied().collect();
            live.insert(me);
            self.adopt(me, &live).await;
        }
    }

    /// Whether `key`'s once-across-replicas work (its registry check) falls
    /// to this replica: the ranking adoption uses, over the live sessions
    /// this replica sees. Never while it has no session it can vouch for (a
    /// replica cut off from etcd leaves the work to the others). Views that
    /// differ for a moment may run a check twice or skip a round; the
    /// check's writes are conditional, so either is harmless.
    pub(super) fn assigned_here(&self, key: &str) -> bool {
        let Some(me) = self.vouched() else {
            return false;
        };
        if !self.mirror.loaded() {
            return false;
        }
        let sessions = self.mirror.sessions();
        let winner = sessions
            .keys()
            .copied()
            .chain([me])
            .max_by_key(|s| rank(key, *s));
        winner == Some(me)
    }

    async fn adopt(&self, me: i64, live: &HashSet<i64>) {
        let orphans = self.mirror.orphans(live);
        let now = Instant::now();
        let patience = 2 * self.session_ttl;
        let mine: Vec<(String, LeaseRecord, Revision)> = {
            let mut since = self.orphaned.lock().expect("orphan lock poisoned");
            let present: HashSet<&String> = orphans.iter().map(|(k, _, _)| k).collect();
            since.retain(|k, _| present.contains(k));
            orphans
                .iter()
                .filter(|(key, _, _)| {
                    let first = *since.entry(key.clone()).or_insert(now);
                    let winner = live.iter().copied().max_by_key(|s| rank(key, *s));
                    winner == Some(me) || now - first > patience
                })
                .cloned()
                .collect()
        };
        if mine.is_empty() {
            return;
        }
        let claimed = futures_util::stream::iter(mine)
            .map(|(key, record, revision)| async move {
                matches!(self.claim(&key, record, revision, me).await, Ok(Some(true)))
            })
            .buffer_unordered(ADOPTING)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        if claimed > 0 {
            self.stats
                .adopted
                .fetch_add(claimed as u64, Ordering::Relaxed);
            tracing::info!(
                adopted = claimed,
                "adopted the leases of replicas whose sessions ended, each with a full lease"
            );
        }
    }

    /// Removes the batch slot keys of sessions that ended.
    fn sweep_writers(&self, before: &HashMap<i64, SessionValue>, now: &HashMap<i64, SessionValue>) {
        for (id, gone) in before {
            if now.contains_key(id) || gone.writer == 0 {
                continue;
            }
            let (members, prefix) = (self.members.clone(), self.keys.writer(gone.writer));
            tokio::spawn(async move {
                let _ = members
                    .run(|mut c| {
                        let p = prefix.clone();
                        async move { c.delete(p, Some(DeleteOptions::new().with_prefix())).await }
                    })
                    .await;
            });
        }
    }

    /// Gives the session back and forgets it and its leases, waiting for
    /// etcd's answer: the others adopt them at once. The lease revoked is
    /// the one granted, published or not: a close may interrupt the
    /// session's setup after etcd wrote `session/{id}`. For a store that is
    /// closing, once the session's task is gone (else it would open another
    /// or vouch for this one again).
    pub(super) async fn give_back(&self) -> Result<(), StoreError> {
        *self.session.write().expect("session lock poisoned") = Session::default();
        let id = self.granted.swap(0, Ordering::SeqCst);
        self.held.clear();
        if id == 0 {
            return Ok(());
        }
        self.members
            .run(|mut c| async move { revoked(c.lease_revoke(id).await) })
            .await
    }

    /// Gives the session back at shutdown, so the others adopt at once:
    /// spawned, for a store dropped without [`Leases::give_back`].
    pub(super) fn revoke(&self) {
        let id = self.granted.load(Ordering::SeqCst);
        if id == 0 {
            return;
        }
        let members = self.members.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = members
                    .run(|mut c| async move { c.lease_revoke(id).await })
                    .await;
            });
        }
    }
}

/// A revoke's answer. "Requested lease not found" (gRPC NotFound) is a
/// success: the lease is gone, most likely revoked by a first try whose
/// answer was lost before the member-retry sent this one.
fn revoked(
    answer: Result<etcd_client::LeaseRevokeResponse, etcd_client::Error>,
) -> Result<(), etcd_client::Error> {
    match answer {
        Ok(_) => Ok(()),
        Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The freeze detector's reckoning, tick by tick (see [`Leases::run_clock`]).
#[derive(Debug)]
struct Clock {
    last: Instant,
    /// Since when this replica has had no session it can vouch for.
    refusing_since: Option<Instant>,
}

impl Clock {
    fn new(now: Instant) -> Clock {
        Clock {
            last: now,
            refusing_since: None,
        }
    }

    /// A tick at `now`: the time the held leases get back, and the time
    /// lost to a freeze since the last tick, if there was one. Time
    /// without a session comes back whole once one is vouched for again,
    /// a freeze meanwhile included, so a freeze then is not given back on
    /// its own as well (that counted it twice, and expiry came a freeze
    /// late).
    fn tick(&mut self, now: Instant, vouched: bool) -> (Duration, Option<Duration>) {
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        let frozen = (gap > FROZEN).then(|| gap - TICK);
        let back = match (vouched, self.refusing_since) {
            (true, Some(since)) => {
                self.refusing_since = None;
                now - since
            }
            (false, Some(_)) => Duration::ZERO,
            (false, None) => {
                self.refusing_since = Some(now);
                frozen.unwrap_or_default()
            }
            (true, None) => frozen.unwrap_or_default(),
        };
        (back, frozen)
    }
}

/// One keep-alive of lease `id` on its open stream (opened on a live member
/// when there is none); the TTL etcd answers (0: the lease is gone).
async fn keep_alive(
    members: &Members,
    id: i64,
    stream: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
) -> Result<i64, StoreError> {
    if let Some((keeper, answers)) = stream.as_mut() {
        let answer = async {
            keeper.keep_alive().await?;
            answers.message().await
        };
        if let Ok(Ok(Some(r))) = tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            return Ok(r.ttl());
        }
        *stream = None;
    }
    let opened = members
        .run(|mut c| async move {
            match c.lease_keep_alive(id).await {
                Ok(opened) => Ok(Some(opened)),
                // etcd-client's own check of the first answer (TTL 0).
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .await?;
    match opened {
        // etcd-client consumed the first answer, which had a TTL above 0.
        Some(pair) => {
            *stream = Some(pair);
            let (keeper, answers) = stream.as_mut().expect("just set");
            keeper
                .keep_alive()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            match tokio::time::timeout(REQUEST_TIMEOUT, answers.message()).await {
                Ok(Ok(Some(r))) => Ok(r.ttl()),
                _ => Err(StoreError::Unavailable("etcd keep-alive unanswered".into())),
            }
        }
        None => Ok(0),
    }
}

impl Observer for Leases {
    fn record_changed(&self, key: &str, record: Option<LeaseRecord>, revision: Revision) {
        let me = self.session_id();
        match record {
            Some(r) if me != 0 && r.owner == me => {
                // Ours: a write whose answer we may not have seen yet.
                self.held
                    .entry(key.to_string())
                    .and_modify(|h| h.claim = h.claim.max(revision))
                    .or_insert(Held {
                        ttl: r.ttl(),
                        deadline: Instant::now() + r.ttl(),
                        claim: revision,
                    });
            }
            _ => {
                self.held.remove_if(key, |_, h| h.claim < revision);
            }
        }
    }

    fn reloaded(&self, records: &HashMap<String, (LeaseRecord, Revision)>) {
        let me = self.session_id();
        self.held.retain(|k, _| {
            records
                .get(k)
                .is_some_and(|(r, _)| me != 0 && r.owner == me)
        });
        for (key, (r, revision)) in records {
            if me != 0 && r.owner == me {
                self.held.entry(key.clone()).or_insert(Held {
                    ttl: r.ttl(),
                    deadline: Instant::now() + r.ttl(),
                    claim: *revision,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Ticks every [`TICK`] from `from` for `n` ticks; the time given back.
    fn ticks(clock: &mut Clock, from: Instant, n: u32, vouched: bool) -> (Instant, Duration) {
        let mut at = from;
        let mut back = Duration::ZERO;
        for _ in 0..n {
            at += TICK;
            back += clock.tick(at, vouched).0;
        }
        (at, back)
    }

    #[test]
    fn a_revoke_answered_lease_not_found_is_done() {
        let gone = tonic::Status::not_found("etcdserver: requested lease not found");
        assert!(revoked(Err(etcd_client::Error::GRpcStatus(gone))).is_ok());
        let refused = tonic::Status::unavailable("etcdserver: no leader");
        assert!(revoked(Err(etcd_client::Error::GRpcStatus(refused))).is_err());
    }

    #[test]
    fn a_freeze_with_a_session_is_given_back_once() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0);
        let (at, back) = ticks(&mut clock, t0, 10, true);
        assert_eq!(back, Duration::ZERO, "on time: nothing to give back");
        let (back, frozen) = clock.tick(at + 5 * S, true);
        assert_eq!(frozen, Some(5 * S - TICK));
        assert_eq!(back, 5 * S - TICK);
    }

    #[test]
    fn a_freeze_without_a_session_is_given_back_once_with_that_time() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0);
        // The session lapses at the first tick, stays lapsed through a
        // 5 s freeze and a second after, then is vouched for again.
        let lapsed = t0 + TICK;
        assert_eq!(clock.tick(lapsed, false).0, Duration::ZERO);
        let thawed = lapsed + 5 * S;
        let (back, frozen) = clock.tick(thawed, false);
        assert!(frozen.is_some());
        assert_eq!(back, Duration::ZERO, "given back with the session");
        let (at, back) = ticks(&mut clock, thawed, 10, false);
        assert_eq!(back, Duration::ZERO);
        let back = clock.tick(at + TICK, true).0;
        assert_eq!(back, at + TICK - lapsed, "the time without a session, once");
    }

    #[test]
    fn a_freeze_that_ends_the_session_is_given_back_then_the_time_after() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0);
        // Frozen 5 s with a session, which had lapsed by the thaw; vouched
        // for again a second later.
        let thawed = t0 + 5 * S;
        let (back, _) = clock.tick(thawed, false);
        assert_eq!(back, 5 * S - TICK, "the freeze");
        let (at, back) = ticks(&mut clock, thawed, 10, false);
        assert_eq!(back, Duration::ZERO);
        let back = clock.tick(at + TICK, true).0;
        assert_eq!(back, at + TICK - thawed, "then the time without a session");
    }
}
