//! Consumer operations: put, get, list, delete under `consumers/`.
//!
//! A consumer has no lease (it stays until deleted). One rule spans keys:
//! an API key belongs to one consumer only, or a gateway could not say who
//! called. The check reads every consumer before the put, so two admins
//! writing the same new key to two consumers at the same instant could both
//! pass it (the store has no cross-key transaction on every backend); a
//! gateway then counts the key for the consumer whose name sorts last, and
//! the next write of either consumer is refused until one lets it go.

use bytes::Bytes;

use super::{Catalog, CatalogError};
use crate::consumer::{CONSUMER_CONFLICT, Consumer, ConsumerSpec, ConsumerSummary};
use crate::model::{Invalid, Revision};
use crate::store::KeyValue;

/// Key prefix of every consumer.
pub const CONSUMERS: &str = "consumers/";

/// `consumers/{name}`.
pub fn consumer_key(name: &str) -> String {
    format!("{CONSUMERS}{name}")
}

/// Reads a consumer record, stamping the revision it was written at.
pub fn decode_consumer(kv: &KeyValue) -> Option<Consumer> {
    match serde_json::from_slice::<Consumer>(&kv.value) {
        Ok(mut consumer) => {
            consumer.revision = kv.mod_revision;
            Some(consumer)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "skipping undecodable consumer record");
            None
        }
    }
}

/// Every consumer's summary, in name order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConsumerList {
    /// The summaries (never a key or a hash).
    pub consumers: Vec<ConsumerSummary>,
    /// Revision the list reflects.
    pub revision: Revision,
}

impl Catalog {
    /// Stores a consumer (created or replaced), its keys hashed; answers
    /// its summary at the revision of the write. A refused one changes
    /// nothing.
    pub async fn put_consumer(
        &self,
        name: &str,
        spec: ConsumerSpec,
    ) -> Result<ConsumerSummary, CatalogError> {
        let mut consumer = Consumer::from_spec(name, spec);
        self.refuse_shared_keys(&consumer).await?;
        let value = Bytes::from(serde_json::to_vec(&consumer).expect("a Consumer serialises"));
        let revision = self.store().put(&consumer_key(name), value, None).await?;
        consumer.revision = revision;
        Ok(consumer.summary())
    }

    /// Refuses a key another consumer already holds (409, naming the key's
    /// index, never the key).
    async fn refuse_shared_keys(&self, consumer: &Consumer) -> Result<(), CatalogError> {
        let range = self.store().range(CONSUMERS).await?;
        for other in range.kvs.iter().filter_map(decode_consumer) {
            if other.name == consumer.name {
                continue;
            }
            let shared = consumer
                .api_key_sha256
                .iter()
                .position(|h| other.api_key_sha256.contains(h));
            if let Some(i) = shared {
                return Err(CatalogError::Invalid(Invalid {
                    field: Some(format!("api_keys[{i}]")),
                    reason: format!(
                        "api_keys[{i}]: is already a key of consumer {:?}",
                        other.name
                    ),
                    code: CONSUMER_CONFLICT,
                }));
            }
        }
        Ok(())
    }

    /// One consumer's summary and the revision of the read.
    pub async fn consumer(&self, name: &str) -> Result<(ConsumerSummary, Revision), CatalogError> {
        let key = consumer_key(name);
        let range = self.store().range(&key).await?;
        range
            .kvs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(decode_consumer)
            .map(|c| (c.summary(), range.revision))
            .ok_or_else(|| CatalogError::NotFound {
                kind: "consumer",
                id: name.to_string(),
            })
    }

    /// Every consumer's summary.
    pub async fn consumers(&self) -> Result<ConsumerList, CatalogError> {
        let range = self.store().range(CONSUMERS).await?;
        Ok(ConsumerList {
            consumers: range
                .kvs
                .iter()
                .filter_map(decode_consumer)
                .map(|c| c.summary())
                .collect(),
            revision: range.revision,
        })
    }

    /// Deletes a consumer; `NotFound` when there is none of that name.
    pub async fn delete_consumer(&self, name: &str) -> Result<Revision, CatalogError> {
        self.store()
            .delete(&consumer_key(name))
            .await?
            .ok_or_else(|| CatalogError::NotFound {
                kind: "consumer",
                id: name.to_string(),
            })
    }
}
