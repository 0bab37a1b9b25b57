//! Lease expiry with self-preservation.
//!
//! Every `sweep_interval` the sweeper asks the store which instance leases have
//! lapsed. Normally each lapsed instance is marked `critical` (gateways stop
//! routing to it at once) and removed `critical_grace` later.
//!
//! **Self-preservation.** A lease is *at risk* when it has lapsed or is late
//! (less than a third of its length left: clients renew every third, so at
//! least one renewal is missing). When more than `threshold` of the live
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

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::catalog::{Catalog, decode_instance};
use crate::model::Status;
use crate::store::StoreError;

/// Default time between sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a `critical` (expired) instance stays listed before removal.
pub const DEFAULT_CRITICAL_GRACE: Duration = Duration::from_secs(60);
/// Default share of live leases that must lapse in one sweep to pause expiry.
pub const DEFAULT_PRESERVATION_THRESHOLD: f64 = 0.5;
/// Default smallest number of lapsed leases that can pause expiry.
pub const DEFAULT_PRESERVATION_MIN: usize = 3;

/// How leases are expired.
#[derive(Debug, Clone)]
pub struct LeasePolicy {
    /// Time between sweeps.
    pub sweep_interval: Duration,
    /// How long an expired instance stays listed as `critical` before removal.
    pub critical_grace: Duration,
    /// Lapsed share of live leases above which expiry pauses (0.0..=1.0).
    pub preservation_threshold: f64,
    /// Fewest lapsed leases that can pause expiry.
    pub preservation_min: usize,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            critical_grace: DEFAULT_CRITICAL_GRACE,
            preservation_threshold: DEFAULT_PRESERVATION_THRESHOLD,
            preservation_min: DEFAULT_PRESERVATION_MIN,
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

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Instances marked critical.
    pub expired: usize,
    /// Critical instances removed.
    pub removed: usize,
    /// Whether expiry was paused by self-preservation.
    pub paused: bool,
}

/// Runs one sweep: expire, remove, or pause. See the module docs.
pub async fn sweep_once(catalog: &Catalog) -> Result<SweepOutcome, StoreError> {
    let outcome = sweep(catalog).await;
    catalog.count_sweep();
    outcome
}

async fn sweep(catalog: &Catalog) -> Result<SweepOutcome, StoreError> {
    let policy = catalog.policy();
    let report = catalog.store().lapsed(crate::catalog::INSTANCES).await?;
    let now_ms = unix_ms();
    let mut fresh = Vec::new();
    let mut critical = Vec::new();
    for kv in report.lapsed {
        let Some(instance) = decode_instance(&kv) else {
            continue;
        };
        if instance.status == Status::Critical {
            critical.push((kv, instance));
        } else {
            fresh.push((kv, instance));
        }
    }
    let mut outcome = SweepOutcome::default();

    // Already out of rotation: removing them never empties a table, so this
    // runs whatever self-preservation says.
    let grace_ms = policy.critical_grace.as_millis() as u64;
    for (kv, instance) in &critical {
        if now_ms.saturating_sub(instance.status_since_ms) >= grace_ms
            && catalog
                .store()
                .delete_if(&kv.key, kv.mod_revision)
                .await?
                .is_some()
        {
            outcome.removed += 1;
            tracing::info!(service = %instance.service, id = %instance.id, "removed expired instance");
        }
    }

    let live = report.leased.saturating_sub(critical.len());
    let at_risk = fresh.len() + report.late;
    let engaged = !fresh.is_empty()
        && at_risk >= policy.preservation_min
        && (at_risk as f64) > policy.preservation_threshold * live as f64;
    let previous = catalog.preservation().get();
    if engaged {
        if !previous.active {
            tracing::warn!(
                lapsed = fresh.len(),
                late = report.late,
                live,
                "self-preservation engaged: {at_risk} of {live} leases lapsed or late; expiry paused until renewals recover",
            );
        }
        catalog.preservation().set(Preservation {
            active: true,
            since_ms: previous.since_ms.or(Some(now_ms)),
            lapsed: fresh.len(),
            late: report.late,
            live,
        });
        outcome.paused = true;
        return Ok(outcome);
    }
    if previous.active {
        tracing::info!(
            lapsed = fresh.len(),
            live,
            "self-preservation released: renewals recovered; expiry resumes"
        );
    }
    catalog.preservation().set(Preservation {
        active: false,
        since_ms: None,
        lapsed: fresh.len(),
        late: report.late,
        live,
    });
    for (kv, mut instance) in fresh {
        instance.status = Status::Critical;
        instance.status_since_ms = now_ms;
        let value = crate::catalog::encode_instance(&instance);
        // Conditional: a re-registration that raced this sweep wins.
        if catalog
            .store()
            .put_if(&kv.key, value, kv.mod_revision)
            .await?
            .is_some()
        {
            outcome.expired += 1;
            catalog.metrics().count_expiry();
            tracing::info!(service = %instance.service, id = %instance.id, "lease expired; instance is critical");
        }
    }
    Ok(outcome)
}

/// Sweeps forever at the policy's interval. Abort the handle to stop.
pub fn spawn_sweeper(catalog: Arc<Catalog>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(catalog.policy().sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep_once(&catalog).await {
                tracing::warn!(error = %e, "lease sweep failed; will retry");
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
