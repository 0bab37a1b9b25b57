//! Fingerprints of credentials, the keys of the authentication filters'
//! caches of verified credentials (`jwt` and `basic_auth`).
//!
//! A cache hit lets a request through without checking its credential, so
//! two credentials must never share a fingerprint. The fingerprint is
//! SipHash-2-4 with a 128-bit output, keyed with 16 random bytes drawn when
//! the filter is built: a pseudorandom function, so without the key nobody
//! can choose a credential that lands on another's fingerprint (a guess
//! matches one of `n` cached entries with probability `n / 2^128`).
//!
//! Why not SHA-256, which these caches used before: collision resistance
//! without a key is more than a key private to one process needs, and it
//! was the largest single cost of a policed request (callgrind: 6,466
//! instructions per request for the harness's 132-byte token, against about
//! 750 for SipHash-2-4). Why not the credential itself as the key:
//! then the cache would hold up to `CACHE_MAX` live bearer tokens or
//! passwords, which a core dump would carry.

use siphasher::sip128::SipHasher24;

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
}
