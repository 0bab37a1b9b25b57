//! The authentication filters' caches of verified credentials (`jwt`,
//! `basic_auth`, and `api_key`'s keys found among the consumers:
//! [`CredentialCache`]), and the fingerprints that key them.
//!
//! A cache hit lets a request through without checking its credential, so
//! two credentials must never share a fingerprint. The fingerprint is
//! SipHash-2-4 with a 128-bit output, keyed with 16 random bytes drawn when
//! the filter (or, for `api_key`, the consumer store) is built: a
//! pseudorandom function, so without the key nobody can choose a credential
//! that lands on another's fingerprint (a guess matches one of `n` cached
//! entries with probability `n / 2^128`).
//!
//! Why not SHA-256, which these caches used before: collision resistance
//! without a key is more than a key private to one process needs, and it
//! was the largest single cost of a policed request (callgrind: 6,466
//! instructions per request for the harness's 132-byte token, against about
//! 750 for SipHash-2-4). Why not the credential itself as the key:
//! then the cache would hold up to `CACHE_MAX` live bearer tokens or
//! passwords per shard, which a core dump would carry.
//!
//! A cache is split into per-thread shards (`crate::shard`): a worker
//! thread looks up and remembers credentials in its own map, behind a lock
//! other workers rarely take (up to 8 workers have a shard each). One map
//! behind one lock put every worker's every policed request on the same
//! lock and cache line. The price: a credential is verified once per
//! shard that sees it rather than once (a `basic_auth` user's bcrypt up to
//! 8 times a minute), and the bound on entries holds per shard (8 times
//! `CACHE_MAX` per filter in all). A task that moved to another thread
//! while verifying remembers in that thread's shard: a later miss, no
//! more.

use siphasher::sip128::SipHasher24;

use crate::shard::Sharded;

/// A credential's fingerprint under one filter's key.
pub type Fingerprint = u128;

/// The hash maps keyed by fingerprints: the keys are already uniform, so
/// the map's own hash only has to be cheap.
pub type ByFingerprint<V> = std::collections::HashMap<Fingerprint, V, foldhash::fast::FixedState>;

/// One filter's fingerprinting key.
pub struct Fingerprints(SipHasher24);

impl Fingerprints {
    /// A fresh random key.
    pub fn new() -> Fingerprints {
        let mut key = [0u8; 16];
        // The kernel's generator: aws-lc's would seed its own generator
        // first (jitter entropy, about 400 million instructions under
        // callgrind) in a process that may never need it.
        // It fails only on a kernel without `getrandom(2)` and an unreadable
        // `/dev/urandom`, where no TLS handshake could work either.
        getrandom::fill(&mut key).expect("the system's random source works");
        Fingerprints(SipHasher24::new_with_key(&key))
    }

    /// The fingerprint of `credential`.
    pub fn of(&self, credential: &[u8]) -> Fingerprint {
        self.0.hash(credential).as_u128()
    }
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs and panics.
        f.write_str("Fingerprints(..)")
    }
}

impl Default for Fingerprints {
    fn default() -> Self {
        Fingerprints::new()
    }
}

/// One filter's cache of verified credentials: what each fingerprint was
/// verified as (`V`, with whatever the filter needs to judge it still
/// good), in the calling thread's shard.
pub struct CredentialCache<V> {
    fingerprints: Fingerprints,
    shards: Sharded<ByFingerprint<V>>,
    /// Most entries per shard.
    max: usize,
}

impl<V> CredentialCache<V> {
    /// An empty cache of at most `max` entries per shard, under a fresh key.
    pub fn new(max: usize) -> CredentialCache<V> {
        CredentialCache {
            fingerprints: Fingerprints::new(),
            shards: Sharded::default(),
            max,
        }
    }

    /// The fingerprint of `credential` under this cache's key.
    pub fn fingerprint(&self, credential: &[u8]) -> Fingerprint {
        self.fingerprints.of(credential)
    }

    /// What `read` makes of this thread's entry for `fingerprint`: `None`
    /// when there is none, or when `read` finds it no longer good. `read`
    /// runs under the shard's lock: it must not use this cache.
    pub fn get<R>(
        &self,
        fingerprint: Fingerprint,
        read: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R> {
        self.shards.local().get(&fingerprint).and_then(read)
    }

    /// Remembers `verified` in this thread's shard. A full shard first
    /// drops the entries `live` refuses, then, if still full, everything
    /// (verifying again is the only cost). `live` runs under the shard's
    /// lock: it must not use this cache.
    pub fn insert(&self, fingerprint: Fingerprint, verified: V, mut live: impl FnMut(&V) -> bool) {
        let mut shard = self.shards.local();
        if shard.len() >= self.max {
            shard.retain(|_, v| live(v));
            if shard.len() >= self.max {
                shard.clear();
            }
        }
        shard.insert(fingerprint, verified);
    }

    /// Entries remembered now, over every shard.
    pub fn len(&self) -> usize {
        self.shards.each().map(|s| s.len()).sum()
    }

    /// Whether no shard remembers anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> std::fmt::Debug for CredentialCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("len", &self.len())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_has_one_fingerprint_per_key() {
        let a = Fingerprints::new();
        let b = Fingerprints::new();
        let token = b"eyJhbGciOiJIUzI1NiJ9.e30.signature";
        assert_eq!(a.of(token), a.of(token));
        assert_ne!(a.of(token), b.of(token), "two filters draw two keys");
        assert_ne!(a.of(token), a.of(b"eyJhbGciOiJIUzI1NiJ9.e30.signaturf"));
        // Length is part of the input: a prefix differs from the whole.
        assert_ne!(a.of(b"abc"), a.of(b"abc\0"));
    }

    #[test]
    fn each_thread_remembers_in_its_own_shard_within_its_bound() {
        let cache = CredentialCache::<u32>::new(2);
        let token = cache.fingerprint(b"token");
        cache.insert(token, 7, |_| true);
        assert_eq!(cache.get(token, |v| Some(*v)), Some(7));
        assert_eq!(cache.get(token, |_| None::<u32>), None, "refused by read");
        // Another thread with a shard of its own (the first new thread
        // given one: threads of other tests running in this process may
        // take turns in between): the token is unknown there until that
        // thread verifies it, and then both hold it.
        let mine = cache.shards.index();
        let other = (0..64).find(|_| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    if cache.shards.index() == mine {
                        return false;
                    }
                    assert_eq!(cache.get(token, |v| Some(*v)), None);
                    cache.insert(token, 8, |_| true);
                    assert_eq!(cache.get(token, |v| Some(*v)), Some(8));
                    true
                })
                .join()
                .unwrap()
            })
        });
        assert!(other.is_some(), "64 threads all given this thread's shard");
        assert_eq!(cache.get(token, |v| Some(*v)), Some(7));
        assert_eq!(cache.len(), 2);
        // A full shard drops what `live` refuses first, then everything.
        cache.insert(cache.fingerprint(b"old"), 1, |_| true);
        cache.insert(cache.fingerprint(b"new"), 9, |v| *v != 1);
        assert_eq!(cache.get(token, |v| Some(*v)), Some(7), "live entry kept");
        assert_eq!(cache.get(cache.fingerprint(b"old"), |v| Some(*v)), None);
        cache.insert(cache.fingerprint(b"newer"), 10, |_| true);
        assert_eq!(
            cache.get(token, |v| Some(*v)),
            None,
            "all dropped when all live"
        );
        assert_eq!(
            cache.get(cache.fingerprint(b"newer"), |v| Some(*v)),
            Some(10)
        );
    }
}
