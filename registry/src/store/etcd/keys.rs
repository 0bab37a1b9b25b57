//! Where everything lives under the prefix (`--etcd-prefix`), and the lease
//! record's format. See the table in `docs/architecture.md` ("The etcd
//! store").

use serde::{Deserialize, Serialize};

use crate::store::LeaseCounts;

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// What each sub-prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `kv/`: the registry's own keys.
    Data,
    /// `lease/`: who holds a key's lease, and its length.
    Record,
    /// `session/`: one per replica process, attached to its etcd lease.
    Session,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `kv/{key}`.
    pub(super) fn data(&self, key: &str) -> String {
        format!("{}kv/{key}", self.prefix)
    }

    /// `lease/{key}`.
    pub(super) fn record(&self, key: &str) -> String {
        format!("{}lease/{key}", self.prefix)
    }

    /// `session/{id}`.
    pub(super) fn session(&self, id: i64) -> String {
        format!("{}session/{id}", self.prefix)
    }

    /// `routematch/{unique}`: the unique index of route matches.
    pub(super) fn unique(&self, unique: &str) -> String {
        format!("{}routematch/{unique}", self.prefix)
    }

    /// `writes/`: every process's batch slot keys.
    pub(super) fn writers(&self) -> String {
        format!("{}writes/", self.prefix)
    }

    /// `writes/{writer}/`: the slot keys of one process's batches.
    pub(super) fn writer(&self, writer: u64) -> String {
        format!("{}writes/{writer:016x}/", self.prefix)
    }

    /// A key that never exists, read to learn etcd's current revision.
    pub(super) fn probe(&self) -> String {
        format!("{}revision", self.prefix)
    }

    /// Which sub-prefix `key` (a full etcd key) is under, and the key
    /// within it.
    pub(super) fn split<'k>(&self, key: &'k str) -> Option<(Kind, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?;
        if let Some(k) = rest.strip_prefix("kv/") {
            Some((Kind::Data, k))
        } else if let Some(k) = rest.strip_prefix("lease/") {
            Some((Kind::Record, k))
        } else {
            rest.strip_prefix("session/").map(|k| (Kind::Session, k))
        }
    }
}

/// The record at `lease/{key}`. Records written before leases were held by
/// replicas carry etcd lease ids instead of an owner; they read as held by
/// no one (owner 0) and are adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseRecord {
    /// The session (etcd lease id of a replica process) holding the lease;
    /// 0: no one.
    #[serde(default)]
    pub owner: i64,
    /// The lease length.
    pub ttl_ms: u64,
}

impl LeaseRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease record serialises")
    }

    pub(super) fn decode(raw: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(raw).ok()
    }

    pub(super) fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ttl_ms)
    }
}

/// The value of `session/{id}`: what that replica publishes for the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SessionValue {
    /// The process's writer id (its batches' slot keys), so a survivor can
    /// remove them when the session ends.
    #[serde(default)]
    pub writer: u64,
    /// At-risk counts of the leases it holds, as of its last sweep.
    #[serde(default)]
    pub counts: LeaseCounts,
}

impl SessionValue {
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a session value serialises")
    }

    pub(super) fn decode(raw: &[u8]) -> SessionValue {
        serde_json::from_slice(raw).unwrap_or_default()
    }
}

/// Stable 64-bit FNV-1a of `key` and `session`: every replica, whatever
/// its version, ranks the sessions for a key the same way (std's hasher is
/// not guaranteed stable across Rust releases).
pub(super) fn rank(key: &str, session: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(session.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_records_read_as_held_by_no_one() {
        let old = br#"{"alive":7587,"fresh":7588,"ttl_ms":30000}"#;
        assert_eq!(
            LeaseRecord::decode(old),
            Some(LeaseRecord {
                owner: 0,
                ttl_ms: 30_000
            })
        );
        let new = LeaseRecord {
            owner: -42,
            ttl_ms: 10,
        };
        assert_eq!(LeaseRecord::decode(&new.encode()), Some(new));
    }

    #[test]
    fn keys_split_by_kind() {
        let k = Keys::new("/p");
        assert_eq!(k.data("instances/a/b"), "/p/kv/instances/a/b");
        assert_eq!(k.split(&k.data("x")), Some((Kind::Data, "x")));
        assert_eq!(k.split(&k.record("x")), Some((Kind::Record, "x")));
        assert_eq!(k.split(&k.session(-3)), Some((Kind::Session, "-3")));
        assert_eq!(k.split("/p/writes/1/0"), None);
        assert_eq!(k.split("/q/kv/x"), None);
    }

    #[test]
    fn the_rank_is_fixed() {
        // Pinned: changing it would make replicas of two versions disagree.
        assert_eq!(rank("", 0), 0xa8c7_f832_281a_39c5);
        assert_ne!(rank("a", 1), rank("a", 2));
    }
}
