//! Prometheus metrics of the control plane, served as `GET /metrics` on the
//! registry API (see `docs/api.md` for the list).
//!
//! Events are counted as they happen, in [`RegistryMetrics`] (lease expiries,
//! open watch streams): both are rare next to a store write, so an atomic is
//! all they cost. State is read at scrape time instead (instances by status,
//! self-preservation, store revision): one range read of the store per
//! scrape, which keeps the write path free of bookkeeping and the figures
//! exactly what the store holds. The scrape reads the store asynchronously
//! first, then hands a [`Snapshot`] to `prometheus_client`'s synchronous
//! [`Collector`] interface to encode.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::catalog::{Catalog, CatalogError};
use crate::model::{Revision, StatusCounts};
use crate::store::{Holding, WriteHealth};

/// `Content-Type` of `GET /metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Event counters of one registry, kept in its [`Catalog`].
#[derive(Debug, Default)]
pub struct RegistryMetrics {
    lease_expiries: AtomicU64,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    check_removals: AtomicU64,
    watch_subscribers: Arc<AtomicI64>,
}

impl RegistryMetrics {
    /// Counts one instance whose lease expired (marked `critical`).
    pub fn count_expiry(&self) {
        self.lease_expiries.fetch_add(1, Ordering::Relaxed);
    }

    /// Leases expired since start.
    pub fn lease_expiries(&self) -> u64 {
        self.lease_expiries.load(Ordering::Relaxed)
    }

    /// Counts one check this replica ran.
    pub fn count_check(&self, passed: bool) {
        match passed {
            true => &self.checks_passed,
            false => &self.checks_failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one instance removed by its check's `deregister_critical_after`.
    pub fn count_check_removal(&self) {
        self.check_removals.fetch_add(1, Ordering::Relaxed);
    }

    /// Checks this replica ran since start: `(passed, failed)`.
    pub fn checks(&self) -> (u64, u64) {
        (
            self.checks_passed.load(Ordering::Relaxed),
            self.checks_failed.load(Ordering::Relaxed),
        )
    }

    /// Counts an open `/v1/watch` stream until the guard drops (when the
    /// stream ends or its client goes away).
    pub fn watch_subscriber(&self) -> WatchSubscriber {
        self.watch_subscribers.fetch_add(1, Ordering::Relaxed);
        WatchSubscriber(self.watch_subscribers.clone())
    }

    /// `/v1/watch` streams open now.
    pub fn watch_subscribers(&self) -> i64 {
        self.watch_subscribers.load(Ordering::Relaxed)
    }
}

/// One open watch stream; see [`RegistryMetrics::watch_subscriber`].
#[derive(Debug)]
pub struct WatchSubscriber(Arc<AtomicI64>);

impl Drop for WatchSubscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything one scrape reports, read before encoding.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Instances by status, over every service.
    pub instances: StatusCounts,
    /// Services with at least one instance.
    pub services: usize,
    /// Store revision the counts were read at.
    pub revision: Revision,
    /// Whether self-preservation has lease expiry paused.
    pub self_preservation: bool,
    /// Lapsed leases the expiry cap held back at the last sweep.
    pub expiry_held_back: usize,
    /// Leases expired since start.
    pub lease_expiries: u64,
    /// Checks this replica ran since start: `(passed, failed)`.
    pub checks: (u64, u64),
    /// Instances removed by `deregister_critical_after` since start.
    pub check_removals: u64,
    /// Watch streams open now.
    pub watch_subscribers: i64,
    /// Whether the store takes writes, and its failure counters.
    pub store: WriteHealth,
    /// Lease sweeps that failed since start.
    pub sweep_failures: u64,
    /// Whether sweeps are failing now (several in a row).
    pub sweep_failing: bool,
    /// How a shared store (etcd) holds leases; None otherwise.
    pub holding: Option<Holding>,
}

impl Snapshot {
    /// Reads the catalog's current state and counters.
    pub async fn read(catalog: &Catalog) -> Result<Snapshot, CatalogError> {
        let (services, revision) = catalog.services().await?;
        let mut instances = StatusCounts::default();
        for s in &services {
            instances.passing += s.instances.passing;
            instances.warning += s.instances.warning;
            instances.critical += s.instances.critical;
            instances.draining += s.instances.draining;
        }
        let preservation = catalog.preservation().get();
        let sweeps = catalog.sweep_health().get();
        Ok(Snapshot {
            instances,
            services: services.len(),
            revision,
            self_preservation: preservation.active,
            expiry_held_back: preservation.held_back,
            lease_expiries: catalog.metrics().lease_expiries(),
            checks: catalog.metrics().checks(),
            check_removals: catalog.metrics().check_removals.load(Ordering::Relaxed),
            watch_subscribers: catalog.metrics().watch_subscribers(),
            store: catalog.store().write_health(),
            sweep_failures: sweeps.total,
            sweep_failing: sweeps.failing.is_some(),
            holding: catalog.store().holding(),
        })
    }

    /// The Prometheus text of this snapshot.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(2048);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads and renders the registry's metrics for `GET /metrics`.
pub async fn render(catalog: &Catalog) -> Result<String, CatalogError> {
    Ok(Snapshot::read(catalog).await?.render())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut e = encoder.encode_descriptor(
            "portico_registry_instances",
            "Registered instances by status.",
            None,
            MetricType::Gauge,
        )?;
        let c = &self.instances;
        for (status, n) in [
            ("passing", c.passing),
            ("warning", c.warning),
            ("critical", c.critical),
            ("draining", c.draining),
        ] {
            e.encode_family(&[("status", status)])?.encode_gauge(&n)?;
        }
        let gauges: [(&str, &str, i64); 7] = [
            (
                "portico_registry_sweep_failing",
                "1 while lease sweeps keep failing (nothing expires; /readyz says why).",
                i64::from(self.sweep_failing),
            ),
            (
                "portico_registry_store_writable",
                "1 while the store takes writes; 0 while it refuses them (a full disk) and recovers.",
                i64::from(self.store.refusing.is_none()),
            ),
            (
                "portico_registry_services",
                "Services with at least one registered instance.",
                i64::try_from(self.services).unwrap_or(i64::MAX),
            ),
            (
                "portico_registry_self_preservation",
                "1 while self-preservation has lease expiry paused.",
                i64::from(self.self_preservation),
            ),
            (
                "portico_registry_expiry_held_back",
                "Lapsed leases the expiry cap kept from expiring at the last sweep.",
                i64::try_from(self.expiry_held_back).unwrap_or(i64::MAX),
            ),
            (
                "portico_registry_watch_subscribers",
                "Open /v1/watch streams (gateways and other followers).",
                self.watch_subscribers,
            ),
            (
                "portico_registry_revision",
                "Current store revision.",
                i64::try_from(self.revision).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        encoder
            .encode_descriptor(
                "portico_registry_lease_expiries",
                "Instances whose lease expired (marked critical) since start.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&self.lease_expiries, None)?;
        let mut checks = encoder.encode_descriptor(
            "portico_registry_checks",
            "Registry-run checks this replica sent since start, by result (each check runs on one replica).",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [("pass", self.checks.0), ("fail", self.checks.1)] {
            checks
                .encode_family(&[("result", result)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let counters = [
            (
                "portico_registry_check_deregistrations",
                "Instances removed because their check stayed critical for its deregister_critical_after.",
                self.check_removals,
            ),
            (
                "portico_registry_sweep_failures",
                "Lease sweeps that failed since start.",
                self.sweep_failures,
            ),
            (
                "portico_registry_store_write_failures",
                "Store commits that failed (writes refused with 503 store_unavailable) since start.",
                self.store.failures,
            ),
            (
                "portico_registry_store_recoveries",
                "Times the store took writes again by itself after a failed commit.",
                self.store.recoveries,
            ),
        ];
        for (name, help, value) in counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        if let Some(h) = &self.holding {
            self.encode_holding(h, &mut encoder)?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// The metrics of a shared store's lease holding (etcd).
    fn encode_holding(&self, h: &Holding, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let gauges = [
            (
                "portico_registry_etcd_session",
                "1 while this replica has an etcd session it can vouch for (it takes heartbeats).",
                i64::from(h.session.is_some()),
            ),
            (
                "portico_registry_leases_held",
                "Leases this replica holds (their deadlines are in its memory).",
                i64::try_from(h.held).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        let counters = [
            (
                "portico_registry_lease_claims",
                "Leases this replica took over because a heartbeat for them came here.",
                h.claims,
            ),
            (
                "portico_registry_lease_adoptions",
                "Leases this replica adopted because their holder's session ended.",
                h.adopted,
            ),
            (
                "portico_registry_store_txns",
                "Write transactions this replica sent to etcd.",
                h.txns,
            ),
            (
                "portico_registry_store_txn_ops",
                "Operations in those transactions (at most 128 each).",
                h.txn_ops,
            ),
        ];
        for (name, help, value) in counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_renders_every_metric_once() {
        let text = Snapshot {
            instances: StatusCounts {
                passing: 2,
                warning: 0,
                critical: 1,
                draining: 0,
            },
            services: 1,
            revision: 7,
            self_preservation: true,
            expiry_held_back: 2,
            lease_expiries: 3,
            checks: (5, 6),
            check_removals: 1,
            watch_subscribers: 1,
            store: WriteHealth {
                refusing: Some("disk full".into()),
                since_ms: Some(1),
                failures: 2,
                recoveries: 1,
            },
            sweep_failures: 4,
            sweep_failing: true,
            holding: Some(Holding {
                session: Some(7),
                held: 5,
                claims: 1,
                adopted: 2,
                txns: 3,
                txn_ops: 9,
            }),
        }
        .render();
        for line in [
            "portico_registry_instances{status=\"passing\"} 2",
            "portico_registry_instances{status=\"critical\"} 1",
            "portico_registry_self_preservation 1",
            "portico_registry_expiry_held_back 2",
            "portico_registry_revision 7",
            "portico_registry_lease_expiries_total 3",
            "portico_registry_checks_total{result=\"pass\"} 5",
            "portico_registry_checks_total{result=\"fail\"} 6",
            "portico_registry_check_deregistrations_total 1",
            "portico_registry_watch_subscribers 1",
            "portico_registry_store_writable 0",
            "portico_registry_store_write_failures_total 2",
            "portico_registry_store_recoveries_total 1",
            "portico_registry_sweep_failing 1",
            "portico_registry_sweep_failures_total 4",
            "portico_registry_etcd_session 1",
            "portico_registry_leases_held 5",
            "portico_registry_lease_claims_total 1",
            "portico_registry_lease_adoptions_total 2",
            "portico_registry_store_txns_total 3",
            "portico_registry_store_txn_ops_total 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn a_watch_subscriber_counts_while_it_lives() {
        let m = RegistryMetrics::default();
        let a = m.watch_subscriber();
        let _b = m.watch_subscriber();
        assert_eq!(m.watch_subscribers(), 2);
        drop(a);
        assert_eq!(m.watch_subscribers(), 1);
    }
}
