//! The catalog: registry operations on instances, written once against the
//! [`Store`] trait so every backend behaves the same.
//!
//! Keys are `instances/{service}/{id}`; values are the [`Instance`] as JSON.
//! The key order makes one service's instances a contiguous range, which is
//! what blocking queries and `GET /v1/services/{service}/instances` read.
//! Routes live at `routes/{name}` as the [`RouteSpec`] that was written, with
//! no lease: they stay until deleted. Certificates live at
//! `certificates/{name}` (see [`certificates`]), also without a lease.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::lease::{ExpiryLog, LeasePolicy, PreservationState, SweepHealth, unix_ms};
use crate::metrics::RegistryMetrics;
use crate::model::{
    Instance, InstanceList, InstanceSpec, RegisterResponse, Revision, Status, StatusCounts,
    WatchEvent,
};
use crate::route::{RouteSpec, compile, match_field, match_key};
use crate::store::{Change, KeyValue, Store, StoreError, UniquePut, Watch};

mod certificates;
mod consumers;
mod gateways;
mod locks;

pub use certificates::{CERTIFICATES, CertificateList, certificate_key, decode_certificate};
pub use consumers::{CONSUMERS, ConsumerList, consumer_key, decode_consumer};
pub use gateways::{GATEWAYS, decode_gateway, gateway_key};
pub use locks::{CHALLENGES, LOCKS};

/// Key prefix of every instance.
pub const INSTANCES: &str = "instances/";
/// Key prefix of every route.
pub const ROUTES: &str = "routes/";

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The instance does not exist (or its lease already expired).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What was looked for.
        kind: &'static str,
        /// Its name.
        id: String,
    },
    /// The write is invalid (a route rule, or a conflict with another route).
    #[error("{}", .0.reason)]
    Invalid(crate::model::Invalid),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The lock is held by another holder and has not lapsed.
    #[error("lock {:?} is held by {:?}", .0.name, .0.holder)]
    LockHeld(Box<crate::lock::Lock>),
}

/// What a route write did (or, on a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteChange {
    /// A new route.
    Created,
    /// An existing route replaced by a different one.
    Updated,
    /// The same route written again: nothing changed, no new revision.
    Unchanged,
    /// The route was removed.
    Deleted,
}

/// Answer to a route write.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RouteWrite {
    /// What happened, or would on a dry run.
    pub change: RouteChange,
    /// True when nothing was written.
    pub dry_run: bool,
    /// The route as now stored (absent after a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// The route it replaced or removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<RouteSpec>,
    /// Registry revision after the write (the current one on a dry run or
    /// when unchanged).
    pub revision: Revision,
}

/// Every route, in name order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RouteList {
    /// The routes as written.
    pub routes: Vec<RouteSpec>,
    /// Revision the list reflects.
    pub revision: Revision,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatResponse {
    /// Status of the instance.
    pub status: Status,
    /// Lease length that was renewed; `None` for an instance kept alive by
    /// its check (no lease: the heartbeat renewed nothing).
    #[serde(
        with = "crate::model::duration_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Registry revision (a heartbeat does not bump it).
    pub revision: Revision,
}

/// Answer to a deregistration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeregisterResponse {
    /// Whether an instance was removed (false when it was already gone).
    pub removed: bool,
    /// Registry revision after the call.
    pub revision: Revision,
}

/// One service in `GET /v1/services`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Instance counts by status.
    pub instances: StatusCounts,
}

/// The registry's instance operations.
#[derive(Debug)]
pub struct Catalog {
    store: Arc<dyn Store>,
    policy: LeasePolicy,
    preservation: PreservationState,
    /// Expiries within the cap's window (per replica: each one sweeps).
    expiry_log: ExpiryLog,
    sweeps: std::sync::atomic::AtomicU64,
    /// Whether sweeps fail (the alarm).
    sweep_health: SweepHealth,
    /// Serialises route writes on this replica, so two concurrent writes
    /// cannot both pass the conflict check against the same route set.
    /// Held while a route write runs; maps each stored route key to the
    /// revision it was read at and its match key, so a write compiles only
    /// routes that changed since the last write instead of all of them.
    route_writes: tokio::sync::Mutex<HashMap<String, (Revision, String)>>,
    metrics: RegistryMetrics,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// `instances/{service}/{id}`.
pub fn instance_key(service: &str, id: &str) -> String {
    format!("{INSTANCES}{service}/{id}")
}

fn service_prefix(service: &str) -> String {
    format!("{INSTANCES}{service}/")
}

/// Reads an instance record, stamping the revision it was written at.
pub fn decode_instance(kv: &KeyValue) -> Option<Instance> {
    match serde_json::from_slice::<Instance>(&kv.value) {
        Ok(mut instance) => {
            instance.revision = kv.mod_revision;
            Some(instance)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "skipping undecodable instance record");
            None
        }
    }
}

/// Serialises an instance record.
pub fn encode_instance(instance: &Instance) -> Bytes {
    Bytes::from(serde_json::to_vec(instance).expect("an Instance always serialises"))
}

/// `routes/{name}`.
pub fn route_key(name: &str) -> String {
    format!("{ROUTES}{name}")
}

/// Reads a route record.
pub fn decode_route(kv: &KeyValue) -> Option<RouteSpec> {
    match serde_json::from_slice::<RouteSpec>(&kv.value) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "skipping undecodable route record");
            None
        }
    }
}

/// The 409 for a route whose match another route already has.
fn route_conflict(spec: &RouteSpec, other: &str) -> CatalogError {
    CatalogError::Invalid(crate::model::Invalid {
        code: "route_conflict",
        ..crate::model::Invalid::field(
            match_field(spec),
            format!("matches exactly the same requests as route {other:?}"),
        )
    })
}

fn split_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(INSTANCES)?.split_once('/')
}

impl Catalog {
    /// A catalog over `store` with the given lease policy.
    pub fn new(store: Arc<dyn Store>, policy: LeasePolicy) -> Catalog {
        Catalog {
            store,
            policy,
            preservation: PreservationState::default(),
            expiry_log: ExpiryLog::default(),
            sweeps: std::sync::atomic::AtomicU64::new(0),
            sweep_health: SweepHealth::default(),
            route_writes: tokio::sync::Mutex::new(HashMap::new()),
            metrics: RegistryMetrics::default(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The lease policy.
    pub fn policy(&self) -> &LeasePolicy {
        &self.policy
    }

    /// Lease sweeps completed since start (shows the sweeper is alive).
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_sweep(&self) {
        self.sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether lease sweeps fail.
    pub fn sweep_health(&self) -> &SweepHealth {
        &self.sweep_health
    }

    /// Self-preservation state.
    pub fn preservation(&self) -> &PreservationState {
        &self.preservation
    }

    /// Expiries the sweeper made within the expiry cap's window.
    pub fn expiry_log(&self) -> &ExpiryLog {
        &self.expiry_log
    }

    /// Event counters for `GET /metrics`.
    pub fn metrics(&self) -> &RegistryMetrics {
        &self.metrics
    }

    /// Registers or updates an instance and (re)starts its lease (or, with
    /// a check and no ttl, removes any lease: the check keeps it).
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        spec: InstanceSpec,
    ) -> Result<RegisterResponse, CatalogError> {
        let key = instance_key(service, id);
        let now = unix_ms();
        // The previous record only carries timestamps forward: the copy in
        // memory is good enough (on etcd it may miss another replica's
        // registration of a moment ago: that registration's time is lost).
        let previous = match self.store.peek(&key) {
            Some(kv) => kv,
            None => self.store.get(&key).await?,
        }
        .and_then(|kv| decode_instance(&kv));
        let (registered_at_ms, status_since_ms) = match &previous {
            Some(p) if p.status == Status::Passing => (p.registered_at_ms, p.status_since_ms),
            Some(p) => (p.registered_at_ms, now),
            None => (now, now),
        };
        let ttl = spec.ttl;
        let mut instance = Instance {
            service: service.to_string(),
            id: id.to_string(),
            spec,
            status: Status::Passing,
            registered_at_ms,
            status_since_ms,
            revision: 0,
            check_failing: false,
        };
        let revision = self
            .store
            .put(&key, encode_instance(&instance), ttl)
            .await?;
        instance.revision = revision;
        Ok(RegisterResponse { instance, revision })
    }

    /// Renews an instance's lease. `NotFound` when it is unknown or already
    /// expired: the client must register again.
    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
    ) -> Result<HeartbeatResponse, CatalogError> {
        let key = instance_key(service, id);
        let not_found = || CatalogError::NotFound {
            kind: "instance",
            id: format!("{service}/{id}"),
        };
        // The local view: a heartbeat must cost the store nothing. A status
        // a moment old is what a heartbeat racing a sweep sees anyway.
        let instance = self
            .store
            .get_cached(&key)
            .await?
            .and_then(|kv| decode_instance(&kv))
            .ok_or_else(not_found)?;
        // Critical because the lease lapsed: gone, register again. Critical
        // because the registry's own check fails: the lease still runs.
        if instance.status == Status::Critical && !instance.check_failing {
            return Err(not_found());
        }
        // No lease to renew: the check keeps it; the heartbeat is harmless.
        let revision = match instance.spec.ttl {
            Some(_) => self.store.keep_alive(&key).await?.ok_or_else(not_found)?,
            None => instance.revision,
        };
        Ok(HeartbeatResponse {
            status: instance.status,
            ttl: instance.spec.ttl,
            revision,
        })
    }

    /// A heartbeat that also carries the status the client reports (a
    /// Consul TTL check's pass, warn or fail): renews the lease and sets
    /// `status` (`passing`, `warning` or `critical`).
    ///
    /// A status the instance already has costs what a heartbeat costs (a
    /// cached read and a lease renewal, no write). A change is one
    /// conditional write that keeps the lease, then the renewal. A client
    /// failing its own check is `critical` with `check_failing` set: that
    /// flag already means "critical because a check says so, not because
    /// the lease lapsed", which is what keeps heartbeats (and this call)
    /// accepted and the lease running, so no second flag is needed. An
    /// instance whose lease did lapse is written again with a fresh lease,
    /// as a re-registration would, because a Consul client passing a lapsed
    /// TTL check expects it back. A draining instance stays draining (an
    /// operator's decision outranks a client's report); its lease is renewed.
    pub async fn heartbeat_with_status(
        &self,
        service: &str,
        id: &str,
        status: Status,
    ) -> Result<HeartbeatResponse, CatalogError> {
        let key = instance_key(service, id);
        let not_found = || CatalogError::NotFound {
            kind: "instance",
            id: format!("{service}/{id}"),
        };
        let failing = status == Status::Critical;
        let mut kv = self.store.get_cached(&key).await?.ok_or_else(not_found)?;
        for _ in 0..8 {
            let mut instance = decode_instance(&kv).ok_or_else(not_found)?;
            let lapsed = instance.status == Status::Critical && !instance.check_failing;
            let same = instance.status == status && instance.check_failing == failing;
            if instance.status == Status::Draining || same {
                let revision = self.renew(&key, &instance).await?.ok_or_else(not_found)?;
                return Ok(HeartbeatResponse {
                    status: instance.status,
                    ttl: instance.spec.ttl,
                    revision,
                });
            }
            instance.status = status;
            instance.check_failing = failing;
            instance.status_since_ms = unix_ms();
            let value = encode_instance(&instance);
            let written = if lapsed {
                Some(self.store.put(&key, value, instance.spec.ttl).await?)
            } else {
                self.store.put_if(&key, value, kv.mod_revision).await?
            };
            if let Some(revision) = written {
                if !lapsed {
                    self.renew(&key, &instance).await?;
                }
                return Ok(HeartbeatResponse {
                    status,
                    ttl: instance.spec.ttl,
                    revision,
                });
            }
            // Changed meanwhile (a sweep, a check, another replica): read again.
            kv = self.store.get(&key).await?.ok_or_else(not_found)?;
        }
        Err(CatalogError::Store(StoreError::Unavailable(
            "instance kept changing while its status was being set".into(),
        )))
    }

    /// Renews `instance`'s lease, if it has one: the store's revision, or
    /// the instance's own when the check alone keeps it. `None`: gone.
    async fn renew(&self, key: &str, instance: &Instance) -> Result<Option<Revision>, StoreError> {
        match instance.spec.ttl {
            Some(_) => self.store.keep_alive(key).await,
            None => Ok(Some(instance.revision)),
        }
    }

    /// Marks an instance `draining`: gateways stop sending it new requests
    /// and let in-flight ones finish; its lease keeps running. Idempotent: an
    /// instance already draining is answered as it is, without a new revision.
    pub async fn drain(&self, service: &str, id: &str) -> Result<RegisterResponse, CatalogError> {
        let key = instance_key(service, id);
        let not_found = || CatalogError::NotFound {
            kind: "instance",
            id: format!("{service}/{id}"),
        };
        // A concurrent write (heartbeat-driven expiry, re-registration) makes
        // the conditional write fail; read again and retry a few times.
        for _ in 0..8 {
            let kv = self.store.get(&key).await?.ok_or_else(not_found)?;
            let mut instance = decode_instance(&kv).ok_or_else(not_found)?;
            match instance.status {
                Status::Critical if !instance.check_failing => return Err(not_found()),
                Status::Draining => {
                    let revision = instance.revision;
                    return Ok(RegisterResponse { instance, revision });
                }
                Status::Passing | Status::Warning | Status::Critical => {}
            }
            instance.status = Status::Draining;
            instance.check_failing = false;
            instance.status_since_ms = unix_ms();
            if let Some(revision) = self
                .store
                .put_if(&key, encode_instance(&instance), kv.mod_revision)
                .await?
            {
                instance.revision = revision;
                return Ok(RegisterResponse { instance, revision });
            }
        }
        Err(CatalogError::Store(StoreError::Unavailable(
            "instance kept changing while being drained".into(),
        )))
    }

    /// Removes an instance. Idempotent.
    pub async fn deregister(
        &self,
        service: &str,
        id: &str,
    ) -> Result<DeregisterResponse, CatalogError> {
        let key = instance_key(service, id);
        Ok(match self.store.delete(&key).await? {
            Some(revision) => DeregisterResponse {
                removed: true,
                revision,
            },
            None => DeregisterResponse {
                removed: false,
                revision: self.store.revision().await?,
            },
        })
    }

    /// Every instance of every service, or of `service` only.
    pub async fn instances(
        &self,
        service: Option<&str>,
    ) -> Result<(Vec<Instance>, Revision), CatalogError> {
        let prefix = match service {
            Some(s) => service_prefix(s),
            None => INSTANCES.to_string(),
        };
        let range = self.store.range(&prefix).await?;
        let instances = range.kvs.iter().filter_map(decode_instance).collect();
        Ok((instances, range.revision))
    }

    /// One service's instances, optionally only those with `status`.
    pub async fn list(
        &self,
        service: &str,
        status: Option<Status>,
    ) -> Result<InstanceList, CatalogError> {
        let range = self.store.range(&service_prefix(service)).await?;
        let instances: Vec<Instance> = range
            .kvs
            .iter()
            .filter_map(decode_instance)
            .filter(|i| status.is_none_or(|s| i.status == s))
            .collect();
        let lease_left_ms = instances
            .iter()
            .filter_map(|i| {
                let left = self.store.lease_left(&instance_key(&i.service, &i.id))?;
                Some((
                    i.id.clone(),
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                ))
            })
            .collect();
        Ok(InstanceList {
            service: service.to_string(),
            revision: range.revision,
            instances,
            stale_ms: range.stale_ms,
            lease_left_ms,
        })
    }

    /// Blocking query: waits until `service` changes after `index` (or `wait`
    /// passes), then lists it. Answers at once when the change already happened
    /// or when `index` is older than the retained history.
    pub async fn list_after(
        &self,
        service: &str,
        status: Option<Status>,
        index: Revision,
        wait: Duration,
    ) -> Result<InstanceList, CatalogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = self.store.revision().await?;
            let mut watch = match self
                .store
                .watch(&service_prefix(service), index.min(current))
                .await
            {
                Ok(watch) => watch,
                // The history is gone: only a fresh list can tell.
                Err(StoreError::Compacted { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            match tokio::time::timeout_at(deadline, watch.next()).await {
                // A change, or the wait ran out: a fresh list either way.
                Ok(Ok(_)) | Err(_) => break,
                // The watch itself failed (a lost stream, a reloaded
                // mirror): watch again from the same index rather than
                // answer early with nothing changed.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                    )
                    .await;
                }
            }
        }
        self.list(service, status).await
    }

    /// Every service with its instance counts by status.
    pub async fn services(&self) -> Result<(Vec<ServiceSummary>, Revision), CatalogError> {
        let range = self.store.range(INSTANCES).await?;
        let mut by_service: BTreeMap<String, StatusCounts> = BTreeMap::new();
        for instance in range.kvs.iter().filter_map(decode_instance) {
            let counts = by_service.entry(instance.service).or_default();
            match instance.status {
                Status::Passing => counts.passing += 1,
                Status::Warning => counts.warning += 1,
                Status::Critical => counts.critical += 1,
                Status::Draining => counts.draining += 1,
            }
        }
        let services = by_service
            .into_iter()
            .map(|(name, instances)| ServiceSummary { name, instances })
            .collect();
        Ok((services, range.revision))
    }

    /// Every route, in name order.
    pub async fn routes(&self) -> Result<RouteList, CatalogError> {
        let range = self.store.range(ROUTES).await?;
        Ok(RouteList {
            routes: range.kvs.iter().filter_map(decode_route).collect(),
            revision: range.revision,
        })
    }

    /// One route and the revision of the read.
    pub async fn route(&self, name: &str) -> Result<(RouteSpec, Revision), CatalogError> {
        let not_found = || CatalogError::NotFound {
            kind: "route",
            id: name.to_string(),
        };
        let range = self.store.range(&route_key(name)).await?;
        let kv = range
            .kvs
            .iter()
            .find(|kv| kv.key == route_key(name))
            .ok_or_else(not_found)?;
        Ok((decode_route(kv).ok_or_else(not_found)?, range.revision))
    }

    /// Creates or replaces a route after validating it and checking it
    /// against every other route (no two may match the same requests).
    /// Writing the same route again changes nothing and keeps the revision.
    pub async fn put_route(
        &self,
        spec: RouteSpec,
        dry_run: bool,
    ) -> Result<RouteWrite, CatalogError> {
        let route = compile(&spec, "").map_err(CatalogError::Invalid)?;
        let key = match_key(&route);
        let mut cache = self.route_writes.lock().await;
        let range = self.store.range(ROUTES).await?;
        // Rebuilt on every write from the previous one: deleted routes drop out.
        let mut match_keys = HashMap::with_capacity(range.kvs.len());
        let own = route_key(&spec.name);
        let mut previous = None;
        let mut conflict = None;
        for kv in &range.kvs {
            if kv.key == own {
                previous = decode_route(kv);
                continue;
            }
            let other_key = match cache.remove(&kv.key) {
                Some((rev, k)) if rev == kv.mod_revision => k,
                _ => {
                    // Stored routes were valid when written; one that no
                    // longer compiles conflicts with nothing the gateway serves.
                    decode_route(kv)
                        .and_then(|o| compile(&o, "").ok())
                        .map(|o| match_key(&o))
                        .unwrap_or_default()
                }
            };
            if other_key == key && conflict.is_none() {
                conflict = Some(kv.key.strip_prefix(ROUTES).unwrap_or(&kv.key).to_string());
            }
            match_keys.insert(kv.key.clone(), (kv.mod_revision, other_key));
        }
        *cache = match_keys;
        if let Some(other) = conflict {
            return Err(route_conflict(&spec, &other));
        }
        let change = match &previous {
            None => RouteChange::Created,
            Some(p) if *p == spec => RouteChange::Unchanged,
            Some(_) => RouteChange::Updated,
        };
        let revision = if dry_run || change == RouteChange::Unchanged {
            range.revision
        } else {
            self.write_route(&spec, &key, previous.as_ref()).await?
        };
        Ok(RouteWrite {
            change,
            dry_run,
            route: Some(spec),
            previous,
            revision,
        })
    }

    /// Writes a route that passed the conflict check, with its entry in the
    /// store's unique index of matches: on a store several replicas share,
    /// the check above ran under this replica's lock only, and the index
    /// entry is what stops two replicas accepting one match at once. An
    /// entry naming a route that no longer has this match is stale (the
    /// route changed without releasing it) and is taken over.
    async fn write_route(
        &self,
        spec: &RouteSpec,
        key: &str,
        previous: Option<&RouteSpec>,
    ) -> Result<Revision, CatalogError> {
        let own = route_key(&spec.name);
        let value = Bytes::from(serde_json::to_vec(spec).expect("a RouteSpec serialises"));
        let release = previous
            .and_then(|p| compile(p, "").ok())
            .map(|p| match_key(&p))
            .filter(|k| k != key);
        let mut holder: Option<String> = None;
        for _ in 0..4 {
            let answer = self
                .store
                .put_unique(
                    &own,
                    value.clone(),
                    key,
                    release.as_deref(),
                    holder.as_deref(),
                )
                .await?;
            let by = match answer {
                UniquePut::Written(revision) => return Ok(revision),
                UniquePut::Held { by } => by,
            };
            if by.is_empty() || by == own {
                holder = (!by.is_empty()).then_some(by);
                continue;
            }
            let same = self
                .store
                .get(&by)
                .await?
                .and_then(|kv| decode_route(&kv))
                .and_then(|o| compile(&o, "").ok())
                .is_some_and(|o| match_key(&o) == key);
            if same {
                return Err(route_conflict(spec, by.strip_prefix(ROUTES).unwrap_or(&by)));
            }
            holder = Some(by);
        }
        Err(CatalogError::Store(StoreError::Unavailable(
            "the route match index kept changing while writing; try again".into(),
        )))
    }

    /// Deletes a route; `NotFound` when there is none of that name.
    pub async fn delete_route(
        &self,
        name: &str,
        dry_run: bool,
    ) -> Result<RouteWrite, CatalogError> {
        let _writing = self.route_writes.lock().await;
        let (previous, current) = self.route(name).await?;
        let revision = if dry_run {
            current
        } else {
            let unique = compile(&previous, "").ok().map(|r| match_key(&r));
            match self
                .store
                .delete_unique(&route_key(name), unique.as_deref())
                .await?
            {
                Some(r) => r,
                None => {
                    return Err(CatalogError::NotFound {
                        kind: "route",
                        id: name.to_string(),
                    });
                }
            }
        };
        Ok(RouteWrite {
            change: RouteChange::Deleted,
            dry_run,
            route: None,
            previous: Some(previous),
            revision,
        })
    }

    /// Starts a gateway feed after `after`: a snapshot first when `after` is 0
    /// or compacted, then every change.
    pub async fn feed(&self, after: Revision) -> Result<Feed, CatalogError> {
        // One watch over the whole keyspace: instances and routes share one
        // revision order, so a gateway applies them in the order they happened.
        if after > 0 {
            match self.store.watch("", after).await {
                Ok(watch) => {
                    return Ok(Feed {
                        snapshot: None,
                        watch,
                    });
                }
                Err(StoreError::Compacted { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let range = self.store.range("").await?;
        let watch = self.store.watch("", range.revision).await?;
        let snapshot = WatchEvent::Snapshot {
            revision: range.revision,
            instances: range
                .kvs
                .iter()
                .filter(|kv| kv.key.starts_with(INSTANCES))
                .filter_map(decode_instance)
                .collect(),
            routes: range
                .kvs
                .iter()
                .filter(|kv| kv.key.starts_with(ROUTES))
                .filter_map(decode_route)
                .collect(),
            certificates: range
                .kvs
                .iter()
                .filter(|kv| kv.key.starts_with(CERTIFICATES))
                .filter_map(decode_certificate)
                .collect(),
            consumers: range
                .kvs
                .iter()
                .filter(|kv| kv.key.starts_with(CONSUMERS))
                .filter_map(decode_consumer)
                .collect(),
            gateways: range
                .kvs
                .iter()
                .filter(|kv| kv.key.starts_with(GATEWAYS))
                .filter_map(decode_gateway)
                .collect(),
        };
        Ok(Feed {
            snapshot: Some(snapshot),
            watch,
        })
    }
}

/// A gateway feed: an optional snapshot, then changes.
pub struct Feed {
    /// Sent first when present.
    pub snapshot: Option<WatchEvent>,
    watch: Box<dyn Watch>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("snapshot", &self.snapshot.is_some())
            .finish()
    }
}

impl Feed {
    /// The next change as a watch event. `Compacted` means the consumer fell
    /// behind and must start a new feed from 0.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            let change = self.watch.next().await?;
            let revision = change.revision();
            match change {
                Change::Put(kv) => {
                    if kv.key.starts_with(GATEWAYS) {
                        if let Some(gateway) = decode_gateway(&kv) {
                            return Ok(WatchEvent::GatewayPut {
                                revision,
                                gateway: Box::new(gateway),
                            });
                        }
                    } else if kv.key.starts_with(CONSUMERS) {
                        if let Some(consumer) = decode_consumer(&kv) {
                            return Ok(WatchEvent::ConsumerPut {
                                revision,
                                consumer: Box::new(consumer),
                            });
                        }
                    } else if kv.key.starts_with(CERTIFICATES) {
                        if let Some(certificate) = decode_certificate(&kv) {
                            return Ok(WatchEvent::CertificatePut {
                                revision,
                                certificate: Box::new(certificate),
                            });
                        }
                    } else if kv.key.starts_with(ROUTES) {
                        if let Some(route) = decode_route(&kv) {
                            return Ok(WatchEvent::RoutePut {
                                revision,
                                route: Box::new(route),
                            });
                        }
                    } else if let Some(instance) = kv
                        .key
                        .starts_with(INSTANCES)
                        .then(|| decode_instance(&kv))
                        .flatten()
                    {
                        return Ok(WatchEvent::Put { revision, instance });
                    }
                }
                Change::Delete { key, .. } => {
                    if let Some(id) = key.strip_prefix(GATEWAYS) {
                        return Ok(WatchEvent::GatewayDelete {
                            revision,
                            id: id.to_string(),
                        });
                    }
                    if let Some(name) = key.strip_prefix(CONSUMERS) {
                        return Ok(WatchEvent::ConsumerDelete {
                            revision,
                            name: name.to_string(),
                        });
                    }
                    if let Some(name) = key.strip_prefix(CERTIFICATES) {
                        return Ok(WatchEvent::CertificateDelete {
                            revision,
                            name: name.to_string(),
                        });
                    }
                    if let Some(name) = key.strip_prefix(ROUTES) {
                        return Ok(WatchEvent::RouteDelete {
                            revision,
                            name: name.to_string(),
                        });
                    }
                    if let Some((service, id)) = split_key(&key) {
                        return Ok(WatchEvent::Delete {
                            revision,
                            service: service.to_string(),
                            id: id.to_string(),
                        });
                    }
                }
            }
        }
    }
}
