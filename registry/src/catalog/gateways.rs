//! Gateway records under `gateways/`, each with a store lease (see
//! [`crate::gateway`]). Lapsed ones are deleted by [`Catalog::sweep_gateways`],
//! which the lease sweeper runs after each instance sweep.
//!
//! No self-preservation here, unlike instances: a gateway record only
//! tells the others how many gateways share a cluster limit. If the
//! registry loses its network, the gateways cannot see the deletions
//! either (they keep the shares they last computed), and a gateway that
//! comes back writes its record again within a third of its lease.

use bytes::Bytes;

use super::{Catalog, CatalogError};
use crate::gateway::{GatewayList, GatewayRecord, GatewaySpec};
use crate::lease::unix_ms;
use crate::model::Revision;
use crate::store::{KeyValue, StoreError};

/// Key prefix of every gateway record.
pub const GATEWAYS: &str = "gateways/";

/// `gateways/{id}`.
pub fn gateway_key(id: &str) -> String {
    format!("{GATEWAYS}{id}")
}

/// Reads a gateway record, stamping the revision it was written at.
pub fn decode_gateway(kv: &KeyValue) -> Option<GatewayRecord> {
    match serde_json::from_slice::<GatewayRecord>(&kv.value) {
        Ok(mut gateway) => {
            gateway.revision = kv.mod_revision;
            Some(gateway)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "skipping undecodable gateway record");
            None
        }
    }
}

impl Catalog {
    /// Registers or renews a gateway: writes its record with a fresh lease.
    pub async fn put_gateway(
        &self,
        id: &str,
        spec: GatewaySpec,
    ) -> Result<GatewayRecord, CatalogError> {
        let key = gateway_key(id);
        let now = unix_ms();
        // Only the first-seen time is carried over: the copy in memory is
        // enough (a renewal racing another replica's loses nothing else).
        let previous = match self.store().peek(&key) {
            Some(kv) => kv,
            None => self.store().get_cached(&key).await?,
        }
        .and_then(|kv| decode_gateway(&kv));
        let ttl = spec.ttl;
        let mut record = GatewayRecord {
            id: id.to_string(),
            spec,
            registered_at_ms: previous.map_or(now, |p| p.registered_at_ms),
            renewed_at_ms: now,
            revision: 0,
        };
        let value = Bytes::from(serde_json::to_vec(&record).expect("a gateway record serialises"));
        record.revision = self.store().put(&key, value, Some(ttl)).await?;
        Ok(record)
    }

    /// Every live gateway.
    pub async fn gateways(&self) -> Result<GatewayList, CatalogError> {
        let range = self.store().range(GATEWAYS).await?;
        Ok(GatewayList {
            gateways: range.kvs.iter().filter_map(decode_gateway).collect(),
            revision: range.revision,
        })
    }

    /// One gateway and the revision of the read.
    pub async fn gateway(&self, id: &str) -> Result<(GatewayRecord, Revision), CatalogError> {
        let not_found = || CatalogError::NotFound {
            kind: "gateway",
            id: id.to_string(),
        };
        let kv = self
            .store()
            .get(&gateway_key(id))
            .await?
            .ok_or_else(not_found)?;
        let record = decode_gateway(&kv).ok_or_else(not_found)?;
        Ok((record, self.store().revision().await?))
    }

    /// Removes a gateway record (a clean shutdown). Idempotent: answers
    /// whether one was removed, and the revision after the call.
    pub async fn delete_gateway(&self, id: &str) -> Result<(bool, Revision), CatalogError> {
        Ok(match self.store().delete(&gateway_key(id)).await? {
            Some(revision) => (true, revision),
            None => (false, self.store().revision().await?),
        })
    }

    /// Deletes the gateway records whose lease lapsed (each only if not
    /// written again meanwhile, and on a shared store only by the replica
    /// holding its lease); answers how many went.
    pub async fn sweep_gateways(&self) -> Result<usize, StoreError> {
        let report = self.store().lapsed(GATEWAYS).await?;
        let mut removed = 0;
        for kv in report.lapsed {
            if self
                .store()
                .delete_if_lapsed(&kv.key, kv.mod_revision)
                .await?
                .is_some()
            {
                tracing::info!(gateway = %kv.key.trim_start_matches(GATEWAYS), "gateway lease lapsed; record removed");
                removed += 1;
            }
        }
        Ok(removed)
    }
}
