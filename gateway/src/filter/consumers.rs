//! The consumers a gateway knows, from the registry's watch stream: for
//! each API key's SHA-256, the consumer holding it.
//!
//! Read on every request of an `api_key` route, written only by the
//! discovery task when a consumer changes: an immutable index behind
//! `ArcSwap`, rebuilt whole on each change (consumers change rarely; a
//! lookup is one atomic load and one hash-map probe).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portico_registry::consumer::{api_key_hash, parse_hash};
use portico_registry::model::Consumer;

/// Key hash -> consumer name.
type Index = HashMap<[u8; 32], Arc<str>, foldhash::fast::RandomState>;

/// Every consumer this gateway knows, by API key hash.
#[derive(Debug, Default)]
pub struct ConsumerStore {
    index: ArcSwap<Index>,
    /// The consumers as received, by name (the writer's copy: a change
    /// rebuilds the index from it).
    known: Mutex<BTreeMap<String, Vec<[u8; 32]>>>,
}

impl ConsumerStore {
    /// The consumer holding `key`, if any.
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<str>> {
        self.index.load().get(&api_key_hash(key)).cloned()
    }

    /// Replaces every consumer (a snapshot).
    pub fn set(&self, consumers: Vec<Consumer>) {
        let mut known = self.known.lock().expect("consumer store poisoned");
        known.clear();
        for c in consumers {
            known.insert(c.name.clone(), hashes(&c));
        }
        self.publish(&known);
    }

    /// Adds or replaces one consumer.
    pub fn put(&self, consumer: &Consumer) {
        let mut known = self.known.lock().expect("consumer store poisoned");
        known.insert(consumer.name.clone(), hashes(consumer));
        self.publish(&known);
    }

    /// Forgets one consumer: its keys are refused from now on.
    pub fn remove(&self, name: &str) {
        let mut known = self.known.lock().expect("consumer store poisoned");
        if known.remove(name).is_some() {
            self.publish(&known);
        }
    }

    /// Builds and swaps in the index. Names in order, so a key two
    /// consumers hold (the registry refuses that, but not atomically: see
    /// its `catalog::consumers`) goes to the one whose name sorts last.
    fn publish(&self, known: &BTreeMap<String, Vec<[u8; 32]>>) {
        let mut index = Index::default();
        for (name, hashes) in known {
            let name: Arc<str> = Arc::from(name.as_str());
            for h in hashes {
                index.insert(*h, name.clone());
            }
        }
        self.index.store(Arc::new(index));
    }
}

fn hashes(consumer: &Consumer) -> Vec<[u8; 32]> {
    consumer
        .api_key_sha256
        .iter()
        .filter_map(|h| {
            let parsed = parse_hash(h);
            if parsed.is_none() {
                tracing::warn!(consumer = %consumer.name, "skipping a key hash that is not 64 hex digits");
            }
            parsed
        })
        .collect()
}
