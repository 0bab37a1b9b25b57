//! The consumers a gateway knows, from the registry's watch stream: for
//! each API key's SHA-256, the consumer holding it.
//!
//! Read on every request of an `api_key` route, written only by the
//! discovery task when a consumer changes: an immutable index behind
//! `ArcSwap`, rebuilt whole on each change (consumers change rarely; a
//! lookup is one atomic load and one hash-map probe).
//!
//! In front of it, the keys found are remembered by their fingerprint
//! ([`super::fingerprint::CredentialCache`], per worker thread), with the
//! generation of the index they were found in: a repeated key costs a
//! keyed SipHash instead of SHA-256 (callgrind, `API_KEY=1
//! bench/callgrind.sh`, a 31-character key: 37,428 -> 35,549 instructions
//! per request). Each change of the consumers publishes a new generation,
//! so a key removed or moved is looked up afresh at once. Keys not found are not remembered: a miss costs both
//! hashes, and random keys cannot fill the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::fingerprint::CredentialCache;

use arc_swap::ArcSwap;
use portico_registry::consumer::{api_key_hash, parse_hash};
use portico_registry::model::Consumer;

/// Most keys remembered per shard of the cache of keys found.
const SEEN_MAX: usize = 10_000;

/// Key hash -> consumer name, as of one change of the consumers.
#[derive(Debug, Default)]
struct Index {
    /// Counts the changes published: what a remembered key was found in.
    generation: u64,
    by_hash: HashMap<[u8; 32], Arc<str>, foldhash::fast::RandomState>,
}

/// Every consumer this gateway knows, by API key hash.
#[derive(Debug)]
pub struct ConsumerStore {
    /// Stored only by `publish`, under `known`'s lock, so its generation
    /// only grows.
    index: ArcSwap<Index>,
    /// Keys found, by fingerprint: the consumer, and the generation of the
    /// index it was found in.
    seen: CredentialCache<(u64, Arc<str>)>,
    /// The consumers as received, by name (the writer's copy: a change
    /// rebuilds the index from it).
    known: Mutex<BTreeMap<String, Vec<[u8; 32]>>>,
}

impl Default for ConsumerStore {
    fn default() -> Self {
        ConsumerStore {
            index: ArcSwap::default(),
            seen: CredentialCache::new(SEEN_MAX),
            known: Mutex::default(),
        }
    }
}

impl ConsumerStore {
    /// The consumer holding `key`, if any.
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<str>> {
        let index = self.index.load();
        let generation = index.generation;
        let fingerprint = self.seen.fingerprint(key);
        let current = |(g, c): &(u64, Arc<str>)| (*g == generation).then(|| c.clone());
        if let Some(consumer) = self.seen.get(fingerprint, current) {
            return Some(consumer);
        }
        let consumer = index.by_hash.get(&api_key_hash(key)).cloned()?;
        let live = |(g, _): &(u64, Arc<str>)| *g == generation;
        self.seen
            .insert(fingerprint, (generation, consumer.clone()), live);
        Some(consumer)
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
        let mut index = Index {
            generation: self.index.load().generation + 1,
            by_hash: HashMap::default(),
        };
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
            name: name.into(),
            api_key_sha256: keys
                .iter()
                .map(|k| hex(&api_key_hash(k.as_bytes())))
                .collect(),
            metadata: Default::default(),
            revision: Default::default(),
        }
    }

    #[test]
    fn a_remembered_key_follows_every_change_of_the_consumers() {
        let store = ConsumerStore::default();
        store.set(vec![
            consumer("alice", &["key-a"]),
            consumer("bob", &["key-b"]),
        ]);
        assert_eq!(store.lookup(b"key-a").as_deref(), Some("alice"));
        assert_eq!(store.lookup(b"key-b").as_deref(), Some("bob"));
        assert_eq!(store.seen.len(), 2, "each found once, then remembered");
        assert_eq!(store.lookup(b"key-c"), None);
        assert_eq!(store.seen.len(), 2, "a key not found is not remembered");
        // A hit is answered from the cache: an index of the same generation
        // that no longer holds the key (no store does this; here it shows
        // the index is not asked) still answers alice.
        let generation = store.index.load().generation;
        let by_hash = HashMap::default();
        store.index.store(Arc::new(Index {
            generation,
            by_hash,
        }));
        assert_eq!(store.lookup(b"key-a").as_deref(), Some("alice"));
        store.set(vec![
            consumer("alice", &["key-a"]),
            consumer("bob", &["key-b"]),
        ]);
        // An answer remembered from an older index (a change published
        // while the lookup ran) is not used.
        let fingerprint = store.seen.fingerprint(b"key-b");
        store
            .seen
            .insert(fingerprint, (generation, "mallory".into()), |_| true);
        assert_eq!(store.lookup(b"key-b").as_deref(), Some("bob"));
        // The key moves to another consumer: the remembered answer is of
        // an older generation, so the index is asked again.
        store.put(&consumer("alice", &[]));
        store.put(&consumer("carol", &["key-a"]));
        assert_eq!(store.lookup(b"key-a").as_deref(), Some("carol"));
        // Removed: refused at once, though a shard remembered it.
        store.remove("carol");
        assert_eq!(store.lookup(b"key-a"), None);
        store.set(vec![]);
        assert_eq!(store.lookup(b"key-b"), None);
    }
}
