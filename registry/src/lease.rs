//! Lease expiry with self-preservation.
//!
//! Every `sweep_interval` the sweeper asks the store which instance leases have
//! lapsed. Normally each lapsed instance is marked `critical` (gateways stop
//! routing to it at once) and removed `critical_grace` later.
//!
//! **Self-preservation.** A lease is *at risk* when it has lapsed or is late
//! (less than a third of its length left: clients renew every third, so at
//! least one renewal is missing). When `threshold` or more of the live
//! leases are at risk *and* at least `preservation_min` of them, it is far
//! likelier that the registry lost its network (or was paused) than that most
//! services died together. Expiring them would empty every gateway's table, so
//! the sweeper instead pauses expiry, says so (log line, `/v1/services`,
//! `/readyz`), and keeps sweeping. As soon as renewals bring the share back
//! under the threshold, expiry resumes and whatever is still lapsed expires
//! then.
//!
//! Counting late leases, not only lapsed ones, is what makes the pause happen
//! *before* the first casualty: heartbeats are jittered, so in a partition the
//! leases lapse one by one over a third of a TTL, and a rule that only counted
//! lapsed leases would expire the first few before seeing the pattern. A
//! single dead instance among healthy ones is below both bounds and always
//! expires on time. The decision is recomputed every sweep from the store's
//! report, so the same rule works unchanged over a shared store such as etcd.
//!
//! The threshold is inclusive ("at or above"): with the default 0.5, exactly
//! half of the fleet going silent pauses expiry. Half is already the point
//! where a partition between two equal halves looks exactly like this, and
//! a rule that needed "more than half" expired all of them.
//!
//! **The expiry cap.** Below the threshold, expiry is rate-limited: at most
//! `expiry_cap` of the live leases (rounded up, and never less than one) may
//! expire within any `expiry_window`, like Eureka's 15% per eviction run.
//! Without it anything just under the threshold (say 45% of the fleet) is
//! expired in one sweep; with it, a larger wave is spread over time, and if
//! it grows, self-preservation sees it before it has emptied the tables.
//! The window is a sliding one over the expiries this replica made (not a
//! per-sweep quota: sweeps run every second, so a per-sweep cap of 15%
//! would let the whole fleet go in seven seconds). A lone death in a quiet
//! registry always finds the window with room for at least one, so it
//! expires on time; only deaths beyond the cap wait, and they are reported
//! (`held_back` in `/v1/services`, `portico_registry_expiry_held_back`).
//! Which lapsed leases go first is random, so no service's instances are
//! always the ones kept waiting.
//!
//! **Several replicas on etcd.** Each replica holds the leases whose
//! heartbeats reach it (`store::etcd`), so the store reports this
//! replica's lapsed and late leases, and the counts the other replicas
//! published ([`LeaseReport::elsewhere`]); the sweeper adds them up, so the
//! threshold and the minimum see the whole fleet, and it publishes its own
//! counts after each sweep. Only the holder expires a lease, with a write
//! fenced on still holding it.
//!
//! **A failing sweep is an alarm.** Expiry must never stop silently: every
//! failure is counted, the first (and one a minute after) is logged with
//! its error, and after [`FAILING_AFTER`] in a row the registry reports
//! `portico_registry_sweep_failing 1` and `/readyz` answers 503 naming the
//! error, until a sweep succeeds.
//!
//! **After a pause.** When renewals recover, they do not all come back in
//! the same sweep: clients renew on their own jittered schedules (and on
//! etcd a lease that expired meanwhile is granted again, one write each).
//! The moment the share at risk drops under the threshold, the stragglers
//! would be expired (up to the cap) although they are alive. So after a
//! release, a lapsed lease gets one more lease length to renew before it
//! can expire: a live client renews within a third of it. Those are
//! reported as held back too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use futures_util::StreamExt;

use crate::catalog::{Catalog, decode_instance};
use crate::model::Status;
use crate::store::{KeyValue, LeaseCounts, LeaseReport, StoreError};

/// Default time between sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a `critical` (expired) instance stays listed before removal.
pub const DEFAULT_CRITICAL_GRACE: Duration = Duration::from_secs(60);
/// Default share of live leases at risk (lapsed or late) at or above which
/// expiry pauses.
pub const DEFAULT_PRESERVATION_THRESHOLD: f64 = 0.5;
/// Default smallest number of lapsed leases that can pause expiry.
pub const DEFAULT_PRESERVATION_MIN: usize = 3;
/// Default share of live leases that may expire within one
/// [`DEFAULT_EXPIRY_WINDOW`] (Eureka's 15%).
pub const DEFAULT_EXPIRY_CAP: f64 = 0.15;
/// Default window of the expiry cap: a minute, twice the default lease
/// (30 s), so self-preservation has seen a whole wave of lapses by the time
/// the cap lets more than 15% go; and Eureka's eviction period.
pub const DEFAULT_EXPIRY_WINDOW: Duration = Duration::from_secs(60);

/// Failed sweeps in a row after which the registry reports them as failing
/// (metric, readiness): three, so one slow store answer is not an alarm,
/// and a real fault shows within a few seconds.
pub const FAILING_AFTER: u64 = 3;
/// Lapsed leases expired (or removed) concurrently, so a wave of them goes
/// to the store in a few batched transactions rather than one at a time.
const EXPIRING: usize = 64;

/// How leases are expired.
#[derive(Debug, Clone)]
pub struct LeasePolicy {
    /// Time between sweeps.
    pub sweep_interval: Duration,
    /// How long an expired instance stays listed as `critical` before removal.
    pub critical_grace: Duration,
    /// Share of live leases at risk at or above which expiry pauses (0.0..=1.0).
    pub preservation_threshold: f64,
    /// Fewest lapsed leases that can pause expiry.
    pub preservation_min: usize,
    /// Share of live leases that may expire within `expiry_window` (rounded
    /// up, at least one); 1.0 turns the cap off.
    pub expiry_cap: f64,
    /// The sliding window of the expiry cap.
    pub expiry_window: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            critical_grace: DEFAULT_CRITICAL_GRACE,
            preservation_threshold: DEFAULT_PRESERVATION_THRESHOLD,
            preservation_min: DEFAULT_PRESERVATION_MIN,
            expiry_cap: DEFAULT_EXPIRY_CAP,
            expiry_window: DEFAULT_EXPIRY_WINDOW,
        }
    }
}

/// Self-preservation as last decided by the sweeper; served by the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Preservation {
    /// Whether expiry is paused.
    pub active: bool,
    /// Unix milliseconds when expiry was paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Lapsed (not yet critical) leases at the last sweep.
    pub lapsed: usize,
    /// Late leases (a renewal missing, not yet lapsed) at the last sweep.
    pub late: usize,
    /// Live (not critical) leases at the last sweep.
    pub live: usize,
    /// Lapsed leases the expiry cap kept from expiring at the last sweep
    /// (they expire as the window makes room, unless renewed first).
    pub held_back: usize,
}

/// Shared, reportable self-preservation state.
#[derive(Debug, Default)]
pub struct PreservationState(Mutex<Preservation>);

impl PreservationState {
    /// A copy of the current state.
    pub fn get(&self) -> Preservation {
        self.0.lock().expect("preservation lock poisoned").clone()
    }

    fn set(&self, p: Preservation) {
        *self.0.lock().expect("preservation lock poisoned") = p;
    }
}

/// The expiries this replica made within the cap's window, oldest first,
/// and when self-preservation last released.
#[derive(Debug, Default)]
pub struct ExpiryLog(Mutex<ExpiryLogInner>);

#[derive(Debug, Default)]
struct ExpiryLogInner {
    recent: VecDeque<tokio::time::Instant>,
    released_at: Option<tokio::time::Instant>,
}

impl ExpiryLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExpiryLogInner> {
        self.0.lock().expect("expiry log lock poisoned")
    }

    /// Expiries since `now - window`; older ones are forgotten.
    fn recent(&self, now: tokio::time::Instant, window: Duration) -> usize {
        let mut log = self.lock();
        while log
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            log.recent.pop_front();
        }
        log.recent.len()
    }

    fn record(&self, at: tokio::time::Instant) {
        self.lock().recent.push_back(at);
    }

    fn released(&self, at: tokio::time::Instant) {
        self.lock().released_at = Some(at);
    }

    /// Whether a lease of `ttl` is still in its grace after the last
    /// release of self-preservation.
    fn in_release_grace(&self, now: tokio::time::Instant, ttl: Duration) -> bool {
        self.lock()
            .released_at
            .is_some_and(|t| now.duration_since(t) < ttl)
    }
}

/// Whether self-preservation pauses expiry: `at_risk` leases (lapsed or
/// late, `lapsed` of them lapsed) out of `live` reach the policy's share and
/// minimum. Inclusive: exactly the threshold pauses.
pub fn preservation_engaged(
    policy: &LeasePolicy,
    lapsed: usize,
    at_risk: usize,
    live: usize,
) -> bool {
    lapsed > 0
        && at_risk >= policy.preservation_min
        && at_risk as f64 >= policy.preservation_threshold * live as f64
}

/// How many leases the expiry cap lets expire now: `cap` of `live`, rounded
/// up and at least one, less the `recent` expiries still in the window.
pub fn expiry_allowance(cap: f64, live: usize, recent: usize) -> usize {
    // The tolerance keeps 0.15 x 100 at 15: in binary it is a hair over.
    let limit = ((cap * live as f64 - 1e-9).ceil().max(0.0) as usize).max(1);
    limit.saturating_sub(recent)
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Instances marked critical.
    pub expired: usize,
    /// Critical instances removed.
    pub removed: usize,
    /// Whether expiry was paused by self-preservation.
    pub paused: bool,
    /// Lapsed leases the expiry cap kept from expiring.
    pub held_back: usize,
}

/// Whether sweeps fail, for the alarm: counted in the catalog.
#[derive(Debug, Default)]
pub struct SweepHealth(Mutex<SweepHealthInner>);

#[derive(Debug, Default, Clone)]
struct SweepHealthInner {
    failures: u64,
    in_a_row: u64,
    since_ms: Option<u64>,
    error: Option<String>,
}

/// Sweep failures as reported by [`SweepHealth::get`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepFailures {
    /// Sweeps that failed since start.
    pub total: u64,
    /// Why sweeps are failing now, once [`FAILING_AFTER`] failed in a row.
    pub failing: Option<String>,
    /// Unix ms of the first failure of the current run of failures.
    pub since_ms: Option<u64>,
}

impl SweepHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, SweepHealthInner> {
        self.0.lock().expect("sweep health lock poisoned")
    }

    /// Notes a sweep's result, logging the first failure of a run, one a
    /// minute (at the default interval) while it lasts, and the recovery.
    pub fn record(&self, result: Result<(), &StoreError>) {
        let mut h = self.lock();
        match result {
            Ok(()) => {
                if h.in_a_row >= FAILING_AFTER {
                    tracing::info!(
                        failed = h.in_a_row,
                        "lease sweeps work again; expiry resumes"
                    );
                }
                h.in_a_row = 0;
                h.since_ms = None;
                h.error = None;
            }
            Err(e) => {
                h.failures += 1;
                h.in_a_row += 1;
                h.since_ms.get_or_insert_with(unix_ms);
                h.error = Some(e.to_string());
                if h.in_a_row == 1 || h.in_a_row.is_multiple_of(60) {
                    tracing::warn!(error = %e, in_a_row = h.in_a_row, "lease sweep failed: nothing expires while sweeps fail; retrying");
                }
            }
        }
    }

    /// The current state.
    pub fn get(&self) -> SweepFailures {
        let h = self.lock().clone();
        let failing = h.in_a_row >= FAILING_AFTER;
        SweepFailures {
            total: h.failures,
            failing: if failing { h.error } else { None },
            since_ms: if failing { h.since_ms } else { None },
        }
    }
}

/// Runs one sweep: expire, remove, or pause. See the module docs. The
/// result is also recorded for the alarm.
pub async fn sweep_once(catalog: &Catalog) -> Result<SweepOutcome, StoreError> {
    let outcome = sweep(catalog).await;
    catalog.count_sweep();
    catalog.sweep_health().record(outcome.as_ref().map(|_| ()));
    outcome
}

/// This replica's lapsed (not yet critical) and already-critical leases.
type Lapsed = Vec<(KeyValue, crate::model::Instance)>;

fn split_lapsed(report: &mut LeaseReport) -> (Lapsed, Lapsed) {
    let mut fresh = Vec::new();
    let mut critical = Vec::new();
    for kv in std::mem::take(&mut report.lapsed) {
        let Some(instance) = decode_instance(&kv) else {
            continue;
        };
        if instance.status == Status::Critical {
            critical.push((kv, instance));
        } else {
            fresh.push((kv, instance));
        }
    }
    (fresh, critical)
}

async fn sweep(catalog: &Catalog) -> Result<SweepOutcome, StoreError> {
    let policy = catalog.policy();
    let mut report = catalog.store().lapsed(crate::catalog::INSTANCES).await?;
    let now_ms = unix_ms();
    let (fresh, critical) = split_lapsed(&mut report);
    catalog.store().publish_lease_counts(LeaseCounts {
        lapsed: fresh.len(),
        late: report.late,
        critical: critical.len(),
    });
    let mut outcome = SweepOutcome::default();
    // Already out of rotation: removing them never empties a table, so this
    // runs whatever self-preservation says.
    let removal = remove_expired(catalog, &critical, now_ms).await;
    outcome.removed = removal.0;

    let elsewhere = report.elsewhere;
    let live = report
        .leased
        .saturating_sub(critical.len() + elsewhere.critical);
    let lapsed = fresh.len() + elsewhere.lapsed;
    let late = report.late + elsewhere.late;
    let at_risk = lapsed + late;
    let previous = catalog.preservation().get();
    let mut state = Preservation {
        active: false,
        since_ms: None,
        lapsed,
        late,
        live,
        held_back: 0,
    };
    if preservation_engaged(policy, lapsed, at_risk, live) {
        if !previous.active {
            tracing::warn!(
                lapsed,
                late,
                live,
                "self-preservation engaged: {at_risk} of {live} leases lapsed or late; expiry paused until renewals recover",
            );
        }
        state.active = true;
        state.since_ms = previous.since_ms.or(Some(now_ms));
        catalog.preservation().set(state);
        outcome.paused = true;
        return removal.1.map(|()| outcome);
    }
    if previous.active {
        tracing::info!(
            lapsed,
            live,
            "self-preservation released: renewals recovered; expiry resumes"
        );
        catalog.expiry_log().released(tokio::time::Instant::now());
    }
    let (expired, held_back, expiry) = expire_capped(catalog, fresh, live, now_ms).await;
    if held_back > 0 && previous.held_back == 0 {
        tracing::warn!(
            held_back,
            live,
            cap = policy.expiry_cap,
            window = ?policy.expiry_window,
            "expiry cap reached: lapsed leases wait for room in the window",
        );
    }
    state.held_back = held_back;
    catalog.preservation().set(state);
    outcome.expired = expired;
    outcome.held_back = held_back;
    removal.1.and(expiry).map(|()| outcome)
}

/// Removes critical instances past their grace; answers how many, and the
/// first store error (the others are still tried).
async fn remove_expired(
    catalog: &Catalog,
    critical: &[(KeyValue, crate::model::Instance)],
    now_ms: u64,
) -> (usize, Result<(), StoreError>) {
    let grace_ms = catalog.policy().critical_grace.as_millis() as u64;
    let due: Vec<(KeyValue, crate::model::Instance)> = critical
        .iter()
        .filter(|(_, i)| now_ms.saturating_sub(i.status_since_ms) >= grace_ms)
        .cloned()
        .collect();
    let results: Vec<Result<bool, StoreError>> =
        futures_util::stream::iter(due.into_iter().map(|(kv, i)| remove_one(catalog, kv, i)))
            .buffer_unordered(EXPIRING)
            .collect()
            .await;
    tally(results)
}

async fn remove_one(
    catalog: &Catalog,
    kv: KeyValue,
    instance: crate::model::Instance,
) -> Result<bool, StoreError> {
    let removed = catalog
        .store()
        .delete_if_lapsed(&kv.key, kv.mod_revision)
        .await?
        .is_some();
    if removed {
        tracing::info!(service = %instance.service, id = %instance.id, "removed expired instance");
    }
    Ok(removed)
}

/// How many of `results` are `Ok(true)`, and the first error.
fn tally(results: Vec<Result<bool, StoreError>>) -> (usize, Result<(), StoreError>) {
    let mut done = 0;
    let mut first = Ok(());
    for r in results {
        match r {
            Ok(true) => done += 1,
            Ok(false) => {}
            Err(e) => {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    }
    (done, first)
}

/// Marks lapsed instances `critical`, as many as the expiry cap allows now,
/// in random order, except those still in their release grace. Answers how
/// many expired, how many were held back, and the first store error (the
/// others are still tried).
async fn expire_capped(
    catalog: &Catalog,
    mut fresh: Vec<(KeyValue, crate::model::Instance)>,
    live: usize,
    now_ms: u64,
) -> (usize, usize, Result<(), StoreError>) {
    let policy = catalog.policy();
    let now = tokio::time::Instant::now();
    let log = catalog.expiry_log();
    let lapsed = fresh.len();
    fresh.retain(|(_, i)| {
        !log.in_release_grace(now, i.spec.ttl.unwrap_or(crate::model::DEFAULT_TTL))
    });
    let allowed = expiry_allowance(
        policy.expiry_cap,
        live,
        log.recent(now, policy.expiry_window),
    );
    fastrand::shuffle(&mut fresh);
    fresh.truncate(allowed);
    let held_back = lapsed - fresh.len();
    let results: Vec<Result<bool, StoreError>> = futures_util::stream::iter(
        fresh
            .into_iter()
            .map(|(kv, i)| expire_one(catalog, kv, i, now_ms)),
    )
    .buffer_unordered(EXPIRING)
    .collect()
    .await;
    let (expired, result) = tally(results);
    (expired, held_back, result)
}

async fn expire_one(
    catalog: &Catalog,
    kv: KeyValue,
    mut instance: crate::model::Instance,
    now_ms: u64,
) -> Result<bool, StoreError> {
    instance.status = Status::Critical;
    instance.status_since_ms = now_ms;
    let value = crate::catalog::encode_instance(&instance);
    // Conditional, and fenced on still holding the lapsed lease: a
    // re-registration, or a heartbeat elsewhere, that raced this sweep wins.
    let expired = catalog
        .store()
        .put_if_lapsed(&kv.key, value, kv.mod_revision)
        .await?
        .is_some();
    if expired {
        catalog.expiry_log().record(tokio::time::Instant::now());
        catalog.metrics().count_expiry();
        tracing::info!(service = %instance.service, id = %instance.id, "lease expired; instance is critical");
    }
    Ok(expired)
}

/// Sweeps forever at the policy's interval. Abort the handle to stop.
pub fn spawn_sweeper(catalog: Arc<Catalog>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(catalog.policy().sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Failures are logged, counted and reported by `sweep_once`.
            let _ = sweep_once(&catalog).await;
            // Gateway records: deleted when lapsed, no self-preservation
            // (see `catalog::gateways`); a failure is retried next tick.
            if let Err(e) = catalog.sweep_gateways().await {
                tracing::debug!(error = %e, "gateway lease sweep failed");
            }
        }
    })
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceSpec;
    use crate::store::embedded::EmbeddedStore;

    #[test]
    fn exactly_the_threshold_pauses_expiry() {
        let p = LeasePolicy::default();
        assert!(preservation_engaged(&p, 10, 10, 20), "half of 20");
        assert!(preservation_engaged(&p, 4, 10, 20), "lapsed plus late");
        assert!(!preservation_engaged(&p, 9, 9, 20));
        assert!(!preservation_engaged(&p, 0, 10, 20), "nothing lapsed yet");
        assert!(!preservation_engaged(&p, 2, 2, 3), "under the minimum");
        assert!(preservation_engaged(&p, 3, 3, 6));
    }

    #[test]
    fn the_cap_is_a_share_rounded_up_and_never_zero() {
        for (cap, live, recent, allowed) in [
            (0.15, 20, 0, 3),
            (0.15, 100, 0, 15),
            (0.15, 3, 0, 1),
            (0.15, 1, 0, 1),
            (0.15, 0, 0, 1),
            (0.15, 20, 2, 1),
            (0.15, 20, 3, 0),
            (0.15, 20, 9, 0),
            (1.0, 10, 0, 10),
        ] {
            assert_eq!(
                expiry_allowance(cap, live, recent),
                allowed,
                "{cap} of {live} with {recent} recent"
            );
        }
    }

    async fn fleet(n: usize) -> (Catalog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let catalog = Catalog::new(Arc::new(store), LeasePolicy::default());
        for i in 0..n {
            let mut spec = InstanceSpec::new("127.0.0.1", 1000 + i as u16);
            spec.ttl = Some(Duration::from_secs(10));
            catalog
                .register("fleet", &format!("i{i}"), spec)
                .await
                .unwrap();
        }
        (catalog, dir)
    }

    /// Lets the leases of instances `silent..` lapse while `..silent` renew:
    /// 11 s pass, with one renewal of the others at 6 s (they are then
    /// neither lapsed nor late).
    async fn go_silent(catalog: &Catalog, silent: usize) {
        tokio::time::advance(Duration::from_secs(6)).await;
        for i in 0..silent {
            catalog.heartbeat("fleet", &format!("i{i}")).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn half_of_twenty_lapsing_pauses_and_none_expires() {
        let (catalog, _dir) = fleet(20).await;
        go_silent(&catalog, 10).await;
        let outcome = sweep_once(&catalog).await.unwrap();
        assert!(outcome.paused, "{outcome:?}");
        assert_eq!(outcome.expired, 0);
        let p = catalog.preservation().get();
        assert!(p.active);
        assert_eq!((p.lapsed, p.live), (10, 20));
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_threshold_the_cap_spreads_expiry_over_the_window() {
        let (catalog, _dir) = fleet(20).await;
        go_silent(&catalog, 14).await;
        let first = sweep_once(&catalog).await.unwrap();
        assert_eq!(
            (first.paused, first.expired, first.held_back),
            (false, 3, 3)
        );
        // The window is full: later sweeps hold the rest back.
        let second = sweep_once(&catalog).await.unwrap();
        assert_eq!((second.expired, second.held_back), (0, 3));
        assert_eq!(catalog.preservation().get().held_back, 3);
        // Keep the others renewing while the window moves on.
        for _ in 0..7 {
            tokio::time::advance(Duration::from_secs(9)).await;
            for i in 0..14 {
                catalog.heartbeat("fleet", &format!("i{i}")).await.unwrap();
            }
        }
        let later = sweep_once(&catalog).await.unwrap();
        assert_eq!((later.expired, later.held_back), (3, 0));
        assert_eq!(catalog.preservation().get().held_back, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_stragglers_get_one_lease_length_to_come_back() {
        let (catalog, _dir) = fleet(20).await;
        go_silent(&catalog, 10).await;
        assert!(sweep_once(&catalog).await.unwrap().paused);
        // Renewals recover, but two instances are slower than the rest.
        for i in 0..18 {
            catalog.heartbeat("fleet", &format!("i{i}")).await.unwrap();
        }
        let released = sweep_once(&catalog).await.unwrap();
        assert_eq!(
            (released.paused, released.expired, released.held_back),
            (false, 0, 2)
        );
        // Within their lease length one comes back; nothing expired.
        tokio::time::advance(Duration::from_secs(5)).await;
        for i in 0..19 {
            catalog.heartbeat("fleet", &format!("i{i}")).await.unwrap();
        }
        let later = sweep_once(&catalog).await.unwrap();
        assert_eq!((later.expired, later.held_back), (0, 1));
        // One lease length after the release, the one still silent expires.
        tokio::time::advance(Duration::from_secs(6)).await;
        for i in 0..19 {
            catalog.heartbeat("fleet", &format!("i{i}")).await.unwrap();
        }
        let last = sweep_once(&catalog).await.unwrap();
        assert_eq!((last.expired, last.held_back), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_death_expires_at_the_first_sweep() {
        let (catalog, _dir) = fleet(3).await;
        go_silent(&catalog, 2).await;
        let outcome = sweep_once(&catalog).await.unwrap();
        assert_eq!(
            (outcome.paused, outcome.expired, outcome.held_back),
            (false, 1, 0)
        );
    }
}
