//! Lock and challenge operations under `locks/` and `challenges/` (see
//! [`crate::lock`] for why they lapse by a time in their value).
//!
//! Taking a lock is compare-and-swap on its record: created only if absent
//! ([`Store::put_if`] with revision 0), replaced only if unchanged since it
//! was read (lapsed, or held by the same holder, who renews). Two takers
//! racing for an absent or lapsed lock both read the same revision, and the
//! store lets exactly one write land; the other reads again and sees the
//! winner. The same holds on etcd, where replicas race through one etcd.
//!
//! [`Store::put_if`]: crate::store::Store::put_if

use bytes::Bytes;

use super::{Catalog, CatalogError};
use crate::lock::{Challenge, ChallengeSpec, Lock, LockSpec};
use crate::model::Revision;
use crate::store::KeyValue;

/// Key prefix of every lock.
pub const LOCKS: &str = "locks/";
/// Key prefix of every challenge answer.
pub const CHALLENGES: &str = "challenges/";
/// Compare-and-swap rounds before a take gives up (each lost round means
/// another taker wrote: after a few, it holds the lock).
const CAS_ROUNDS: usize = 8;

fn lock_key(name: &str) -> String {
    format!("{LOCKS}{name}")
}

fn challenge_key(token: &str) -> String {
    format!("{CHALLENGES}{token}")
}

fn decode_lock(kv: &KeyValue) -> Option<Lock> {
    match serde_json::from_slice::<Lock>(&kv.value) {
        Ok(mut lock) => {
            lock.revision = kv.mod_revision;
            Some(lock)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "undecodable lock record: treated as lapsed");
            None
        }
    }
}

fn not_found(kind: &'static str, id: &str) -> CatalogError {
    CatalogError::NotFound {
        kind,
        id: id.to_string(),
    }
}

impl Catalog {
    /// Takes or renews lock `name` for `spec.holder` until `now_ms` + TTL.
    /// `LockHeld` when another holder has it and it has not lapsed.
    pub async fn take_lock(
        &self,
        name: &str,
        spec: &LockSpec,
        now_ms: u64,
    ) -> Result<Lock, CatalogError> {
        let key = lock_key(name);
        let mut lock = Lock {
            name: name.to_string(),
            holder: spec.holder.clone(),
            expires_unix_ms: now_ms.saturating_add(spec.ttl.as_millis() as u64),
            revision: 0,
        };
        let value = Bytes::from(serde_json::to_vec(&lock).expect("a Lock serialises"));
        for _ in 0..CAS_ROUNDS {
            // 0: absent, so the write creates it only if still absent.
            let expected = match self.store().get(&key).await? {
                None => 0,
                Some(kv) => match decode_lock(&kv) {
                    Some(held) if held.holder != spec.holder && held.held_at(now_ms) => {
                        return Err(CatalogError::LockHeld(Box::new(held)));
                    }
                    _ => kv.mod_revision,
                },
            };
            if let Some(revision) = self.store().put_if(&key, value.clone(), expected).await? {
                lock.revision = revision;
                return Ok(lock);
            }
        }
        Err(CatalogError::Store(crate::store::StoreError::Unavailable(
            format!("lock {name:?}: lost {CAS_ROUNDS} compare-and-swap rounds in a row"),
        )))
    }

    /// Releases lock `name` if `holder` holds it (lapsed or not): other
    /// holders' locks are never removed. `NotFound` when absent,
    /// `LockHeld` when another holder's.
    pub async fn release_lock(&self, name: &str, holder: &str) -> Result<Revision, CatalogError> {
        let key = lock_key(name);
        for _ in 0..CAS_ROUNDS {
            let kv = self
                .store()
                .get(&key)
                .await?
                .ok_or_else(|| not_found("lock", name))?;
            if let Some(held) = decode_lock(&kv).filter(|l| l.holder != holder) {
                return Err(CatalogError::LockHeld(Box::new(held)));
            }
            if let Some(revision) = self.store().delete_if(&key, kv.mod_revision).await? {
                return Ok(revision);
            }
        }
        Err(not_found("lock", name))
    }

    /// Lock `name` as stored (lapsed or not).
    pub async fn lock(&self, name: &str) -> Result<Lock, CatalogError> {
        self.store()
            .get(&lock_key(name))
            .await?
            .as_ref()
            .and_then(decode_lock)
            .ok_or_else(|| not_found("lock", name))
    }

    /// Publishes the answer to `token` until `now_ms` + TTL, first
    /// removing answers that have lapsed (an orderer that died never
    /// withdrew its own: without this they would stay stored forever).
    pub async fn put_challenge(
        &self,
        token: &str,
        spec: ChallengeSpec,
        now_ms: u64,
    ) -> Result<(Challenge, Revision), CatalogError> {
        self.remove_lapsed_challenges(now_ms).await?;
        let challenge = Challenge {
            token: token.to_string(),
            key_authorization: spec.key_authorization,
            expires_unix_ms: now_ms.saturating_add(spec.ttl.as_millis() as u64),
        };
        let value = Bytes::from(serde_json::to_vec(&challenge).expect("a Challenge serialises"));
        let revision = self.store().put(&challenge_key(token), value, None).await?;
        Ok((challenge, revision))
    }

    /// The answer to `token`; `NotFound` when absent or lapsed.
    pub async fn challenge(&self, token: &str, now_ms: u64) -> Result<Challenge, CatalogError> {
        self.store()
            .get(&challenge_key(token))
            .await?
            .and_then(|kv| serde_json::from_slice::<Challenge>(&kv.value).ok())
            .filter(|c| now_ms < c.expires_unix_ms)
            .ok_or_else(|| not_found("challenge", token))
    }

    /// Removes every answer lapsed at `now_ms`. Each removal is
    /// conditional on the record being the one read, so an answer written
    /// again meanwhile is never lost. Answers are few (one per name being
    /// validated), so reading them all costs nothing that matters.
    async fn remove_lapsed_challenges(&self, now_ms: u64) -> Result<(), CatalogError> {
        let range = self.store().range(CHALLENGES).await?;
        for kv in &range.kvs {
            let lapsed = serde_json::from_slice::<Challenge>(&kv.value)
                .map_or(true, |c| now_ms >= c.expires_unix_ms);
            if lapsed {
                self.store().delete_if(&kv.key, kv.mod_revision).await?;
            }
        }
        Ok(())
    }

    /// Withdraws the answer to `token`; `NotFound` when absent.
    pub async fn delete_challenge(&self, token: &str) -> Result<Revision, CatalogError> {
        self.store()
            .delete(&challenge_key(token))
            .await?
            .ok_or_else(|| not_found("challenge", token))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::lease::LeasePolicy;
    use crate::store::embedded::EmbeddedStore;

    fn spec(holder: &str, ttl_s: u64) -> LockSpec {
        LockSpec {
            holder: holder.into(),
            ttl: Duration::from_secs(ttl_s),
        }
    }

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, Catalog::new(Arc::new(store), LeasePolicy::default()))
    }

    #[tokio::test]
    async fn a_lock_is_held_renewed_lapses_and_is_released_by_its_holder_only() {
        let (_dir, c) = catalog();
        let a = c.take_lock("acme:x", &spec("a", 10), 1_000).await.unwrap();
        assert_eq!(a.expires_unix_ms, 11_000);
        let held = c.take_lock("acme:x", &spec("b", 10), 5_000).await;
        match held {
            Err(CatalogError::LockHeld(l)) => assert_eq!(l.holder, "a"),
            other => panic!("{other:?}"),
        }
        let renewed = c.take_lock("acme:x", &spec("a", 10), 5_000).await.unwrap();
        assert_eq!(renewed.expires_unix_ms, 15_000);
        // Lapsed: another holder takes it.
        let b = c.take_lock("acme:x", &spec("b", 10), 15_000).await.unwrap();
        assert_eq!(b.holder, "b");
        assert!(matches!(
            c.release_lock("acme:x", "a").await,
            Err(CatalogError::LockHeld(_))
        ));
        c.release_lock("acme:x", "b").await.unwrap();
        assert!(matches!(
            c.release_lock("acme:x", "b").await,
            Err(CatalogError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn racing_takers_of_an_absent_lock_get_exactly_one_winner() {
        let (_dir, c) = catalog();
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.take_lock("l", &spec(&format!("h{i}"), 10), 1).await })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => winners += 1,
                Err(CatalogError::LockHeld(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn challenges_lapse_by_their_time() {
        let (_dir, c) = catalog();
        let s = ChallengeSpec {
            key_authorization: "t.k".into(),
            ttl: Duration::from_secs(1),
        };
        c.put_challenge("t", s, 1_000).await.unwrap();
        assert_eq!(
            c.challenge("t", 1_999).await.unwrap().key_authorization,
            "t.k"
        );
        assert!(c.challenge("t", 2_000).await.is_err());
        c.delete_challenge("t").await.unwrap();
        assert!(c.delete_challenge("t").await.is_err());
    }

    #[tokio::test]
    async fn publishing_an_answer_removes_the_lapsed_ones() {
        let (_dir, c) = catalog();
        let spec = |ttl_s| ChallengeSpec {
            key_authorization: "t.k".into(),
            ttl: Duration::from_secs(ttl_s),
        };
        c.put_challenge("old", spec(1), 1_000).await.unwrap();
        c.put_challenge("live", spec(60), 1_000).await.unwrap();
        // At 5 s "old" has lapsed, "live" has not.
        c.put_challenge("new", spec(60), 5_000).await.unwrap();
        let stored = c.store().range(CHALLENGES).await.unwrap().kvs;
        let keys: Vec<&str> = stored.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["challenges/live", "challenges/new"]);
    }
}
