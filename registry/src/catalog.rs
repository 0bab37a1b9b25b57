//! The catalog: registry operations on instances, written once against the
//! [`Store`] trait so every backend behaves the same.
//!
//! Keys are `instances/{service}/{id}`; values are the [`Instance`] as JSON.
//! The key order makes one service's instances a contiguous range, which is
//! what blocking queries and `GET /v1/services/{service}/instances` read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::lease::{LeasePolicy, PreservationState, unix_ms};
use crate::metrics::RegistryMetrics;
use crate::model::{
    Instance, InstanceList, InstanceSpec, RegisterResponse, Revision, Status, StatusCounts,
    WatchEvent,
};
use crate::store::{Change, KeyValue, Store, StoreError, Watch};

/// Key prefix of every instance.
pub const INSTANCES: &str = "instances/";

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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatResponse {
    /// Status of the instance.
    pub status: Status,
    /// Lease length that was renewed.
    #[serde(with = "crate::model::duration_str")]
    pub ttl: Duration,
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
    sweeps: std::sync::atomic::AtomicU64,
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
            sweeps: std::sync::atomic::AtomicU64::new(0),
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

    /// Self-preservation state.
    pub fn preservation(&self) -> &PreservationState {
        &self.preservation
    }

    /// Event counters for `GET /metrics`.
    pub fn metrics(&self) -> &RegistryMetrics {
        &self.metrics
    }

    /// Registers or updates an instance and (re)starts its lease.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        spec: InstanceSpec,
    ) -> Result<RegisterResponse, CatalogError> {
        let key = instance_key(service, id);
        let now = unix_ms();
        let previous = self
            .store
            .get(&key)
            .await?
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
            .put(&key, encode_instance(&instance), Some(ttl))
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
        let instance = self
            .store
            .get(&key)
            .await?
            .and_then(|kv| decode_instance(&kv))
            .ok_or_else(not_found)?;
        // Critical because the lease lapsed: gone, register again. Critical
        // because the registry's own check fails: the lease still runs.
        let expired = instance.status == Status::Critical && !instance.check_failing;
        if expired || !self.store.keep_alive(&key).await? {
            return Err(not_found());
        }
        Ok(HeartbeatResponse {
            status: instance.status,
            ttl: instance.spec.ttl,
            revision: self.store.revision().await?,
        })
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

    /// One service's instances, optionally only those with `status`.
    pub async fn list(
        &self,
        service: &str,
        status: Option<Status>,
    ) -> Result<InstanceList, CatalogError> {
        let range = self.store.range(&service_prefix(service)).await?;
        let instances = range
            .kvs
            .iter()
            .filter_map(decode_instance)
            .filter(|i| status.is_none_or(|s| i.status == s))
            .collect();
        Ok(InstanceList {
            service: service.to_string(),
            revision: range.revision,
            instances,
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
        let current = self.store.revision().await?;
        match self
            .store
            .watch(&service_prefix(service), index.min(current))
            .await
        {
            Ok(mut watch) => {
                // Either outcome (a change, or the wait running out) ends in a fresh list.
                let _ = tokio::time::timeout(wait, watch.next()).await;
            }
            Err(StoreError::Compacted { .. }) => {}
            Err(e) => return Err(e.into()),
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

    /// Starts a gateway feed after `after`: a snapshot first when `after` is 0
    /// or compacted, then every change.
    pub async fn feed(&self, after: Revision) -> Result<Feed, CatalogError> {
        if after > 0 {
            match self.store.watch(INSTANCES, after).await {
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
        let range = self.store.range(INSTANCES).await?;
        let watch = self.store.watch(INSTANCES, range.revision).await?;
        let snapshot = WatchEvent::Snapshot {
            revision: range.revision,
            instances: range.kvs.iter().filter_map(decode_instance).collect(),
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
                    if let Some(instance) = decode_instance(&kv) {
                        return Ok(WatchEvent::Put { revision, instance });
                    }
                }
                Change::Delete { key, .. } => {
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
