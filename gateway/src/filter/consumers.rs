//! The consumers a gateway knows, from the registry's watch stream: for
//! each API key's SHA-256, the consumer holding it.
//!
//! Read on every request of an `api_key` route, written only by the
//! discovery task when a consumer changes: an immutable index behind
//! `ArcSwap`, rebuilt whole on each change (consumers change rarely; a
//! lookup is one atomic load and one hash-map probe).
//!
//! The index is keyed by SHA-256, what the registry stores, and SHA-256
//! of a key is most of a lookup's cost (about 2,000 instructions for a
//! key under 56 bytes). So each index carries a cache of the keys found
//! in it, by their fingerprint ([`super::fingerprint`]): a key seen before
//! costs a keyed hash and a probe. The cache belongs to its index, so a
//! changed consumer (a key revoked) starts an empty one. Keys not found
//! are not cached: a flood of wrong keys cannot evict the right ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portico_registry::consumer::{api_key_hash, parse_hash};
use portico_registry::model::Consumer;

use super::fingerprint::{ByFingerprint, Fingerprints};

/// Most keys remembered per index: a full cache is emptied (a key then
/// costs one SHA-256 again).
pub const SEEN_MAX: usize = 10_000;

/// Key hash -> consumer name, and the keys found so far.
#[derive(Debug, Default)]
struct Index {
    by_hash: HashMap<[u8; 32], Arc<str>, foldhash::fast::RandomState>,
    seen: Mutex<ByFingerprint<Arc<str>>>,
}

/// Every consumer this gateway knows, by API key hash.
#[derive(Debug, Default)]
pub struct ConsumerStore {
    index: ArcSwap<Index>,
    fingerprints: Fingerprints,
    /// The consumers as received, by name (the writer's copy: a change
    /// rebuilds the index from it).
    known: Mutex<BTreeMap<String, Vec<[u8; 32]>>>,
}

impl ConsumerStore {
    /// The consumer holding `key`, if any.
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<str>> {
        let index = self.index.load();
        let fingerprint = self.fingerprints.of(key);
        let mut seen = index.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(consumer) = seen.get(&fingerprint) {
            return Some(consumer.clone());
        }
        drop(seen);
        let consumer = index.by_hash.get(&api_key_hash(key))?.clone();
        seen = index.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert(fingerprint, consumer.clone());
        Some(consumer)
    }

    /// Keys remembered by the current index.
    #[cfg(test)]
    fn seen(&self) -> usize {
        self.index.load().seen.lock().unwrap().len()
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
                index.by_hash.insert(*h, name.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use portico_registry::consumer::hex;

    fn consumer(name: &str, keys: &[&str]) -> Consumer {
        Consumer {
            name: name.to_string(),
            api_key_sha256: keys
                .iter()
                .map(|k| hex(&api_key_hash(k.as_bytes())))
                .collect(),
            metadata: Default::default(),
            revision: Default::default(),
        }
    }

    #[test]
    fn a_key_found_is_remembered_until_its_consumer_changes() {
        let store = ConsumerStore::default();
        store.set(vec![
            consumer("alice", &["key-a"]),
            consumer("bob", &["key-b"]),
        ]);
        assert_eq!(store.lookup(b"key-a").as_deref(), Some("alice"));
        assert_eq!(store.lookup(b"key-a").as_deref(), Some("alice"));
        assert_eq!(store.seen(), 1, "found once, then from the cache");
        assert_eq!(store.lookup(b"key-x"), None);
        assert_eq!(store.seen(), 1, "a key not found is not remembered");

        // alice's key revoked: refused at once, cache or not.
        store.put(&consumer("alice", &["key-a2"]));
        assert_eq!(store.seen(), 0);
        assert_eq!(store.lookup(b"key-a"), None);
        assert_eq!(store.lookup(b"key-a2").as_deref(), Some("alice"));
        assert_eq!(store.lookup(b"key-b").as_deref(), Some("bob"));
        store.remove("bob");
        assert_eq!(store.lookup(b"key-b"), None);
    }

    #[test]
    fn a_full_cache_starts_again() {
        let keys: Vec<String> = (0..=SEEN_MAX).map(|i| format!("key-{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let store = ConsumerStore::default();
        store.set(vec![consumer("many", &refs)]);
        for k in &keys[..SEEN_MAX] {
            assert!(store.lookup(k.as_bytes()).is_some());
        }
        assert_eq!(store.seen(), SEEN_MAX);
        assert!(store.lookup(keys[SEEN_MAX].as_bytes()).is_some());
        assert_eq!(store.seen(), 1);
    }
}
