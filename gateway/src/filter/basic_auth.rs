//! `basic_auth`: HTTP Basic credentials (RFC 7617) checked against the
//! bcrypt hashes the route lists (what `htpasswd -B` writes).
//!
//! - **Where the users live**: on the filter, not among the registry's
//!   consumers. A consumer holds API keys, long random secrets checked
//!   with one SHA-256 lookup; a password is a human secret that needs a
//!   slow, salted hash, and an htpasswd line is what operators already
//!   have. The user's name is still passed upstream in `consumer_header`
//!   and counted by a `rate_limit` keyed by `consumer`, like a consumer's.
//! - **Cost**: bcrypt is slow by design (measured on a shared 2-core
//!   machine: 7 ms at cost 5, 190 ms at cost 10; `basic_auth_cost` below),
//!   so a check runs on tokio's blocking pool, at
//!   most [`VERIFYING_MAX`] at once per filter (a flood of wrong passwords
//!   queues rather than eating every core), and a success is cached for
//!   [`CACHE_TTL`], keyed by the fingerprint of the whole header value (a
//!   keyed hash: [`super::fingerprint`]): a
//!   keep-alive client pays one bcrypt per [`CACHE_TTL`], then a hash and
//!   a map lookup. Failures are never cached (the next attempt is checked
//!   in full). A changed route rebuilds the filter and empties its cache,
//!   so a removed user or a new hash takes effect at once.
//! - **Unknown users** are checked against a hash of the same filter, so a
//!   refusal takes as long whether or not the name exists.
//! - **Refusal**: 401 with `WWW-Authenticate: Basic realm="...",
//!   charset="UTF-8"`. The `Authorization` header is removed before the
//!   request goes upstream; the client's own copy of `consumer_header` is
//!   always removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use portico_registry::filter::BasicAuth;
use tokio::sync::Semaphore;

use super::AuthRefusal;
use super::fingerprint::{CredentialCache, Fingerprint};

/// How long a verified credential is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most credentials remembered per filter and shard (`crate::shard`): a
/// full shard drops the expired ones, then everything (checking again is
/// the only cost).
pub const CACHE_MAX: usize = 10_000;
/// Most bcrypt checks one filter runs at once.
pub const VERIFYING_MAX: usize = 4;

/// A verified credential: the user, and when the check was made.
type Verified = (Arc<str>, Instant);

/// One `basic_auth` filter, built with its route's chain.
pub struct BasicAuthFilter {
    config: BasicAuth,
    challenge: HeaderValue,
    cache: CredentialCache<Verified>,
    verifying: Semaphore,
}

impl std::fmt::Debug for BasicAuthFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthFilter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BasicAuthFilter {
    /// The filter for `config`.
    pub fn new(config: &BasicAuth) -> BasicAuthFilter {
        if config.withheld {
            tracing::error!(
                "basic_auth filter: the registry withheld its hashes from this gateway's token \
                 (give it a gateway token); every request refused"
            );
        }
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        BasicAuthFilter {
            config: config.clone(),
            challenge: HeaderValue::from_str(&challenge)
                .expect("a realm is checked to be printable ASCII without quotes"),
            cache: CredentialCache::new(CACHE_MAX),
            verifying: Semaphore::new(VERIFYING_MAX),
        }
    }

    /// Checks the request's credentials; on success the `Authorization`
    /// header is replaced by the user's name in `consumer_header`.
    pub async fn authenticate(&self, headers: &mut HeaderMap) -> Result<Arc<str>, AuthRefusal> {
        headers.remove(&self.config.consumer_header);
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| self.refusal("no credentials"))?;
        let fingerprint = self.cache.fingerprint(value.as_bytes());
        let user = match self.cached(fingerprint) {
            Some(user) => user,
            None => {
                let (name, password) =
                    credentials(value).ok_or_else(|| self.refusal("malformed credentials"))?;
                let user = self.verify(name, password).await?;
                self.remember(fingerprint, user.clone());
                user
            }
        };
        headers.remove(header::AUTHORIZATION);
        let named = HeaderValue::from_str(&user).expect("user names are checked header-safe");
        headers.insert(self.config.consumer_header.clone(), named);
        Ok(user)
    }

    fn refusal(&self, reason: &'static str) -> AuthRefusal {
        AuthRefusal::Unauthorized {
            reason,
            challenge: self.challenge.clone(),
        }
    }

    fn cached(&self, fingerprint: Fingerprint) -> Option<Arc<str>> {
        self.cache.get(fingerprint, |(user, at)| {
            (at.elapsed() < CACHE_TTL).then(|| user.clone())
        })
    }

    fn remember(&self, fingerprint: Fingerprint, user: Arc<str>) {
        let live = |(_, at): &Verified| at.elapsed() < CACHE_TTL;
        self.cache.insert(fingerprint, (user, Instant::now()), live);
    }

    /// The bcrypt check, on the blocking pool, within [`VERIFYING_MAX`].
    async fn verify(&self, name: String, password: String) -> Result<Arc<str>, AuthRefusal> {
        if self.config.withheld {
            return Err(self.refusal("this gateway was not given the route's passwords"));
        }
        let known = self.config.users.get(&name);
        // An unknown name is checked against a real hash all the same, so
        // its refusal takes as long as a wrong password's.
        let hash = match known {
            Some(h) => h.clone(),
            None => self
                .config
                .users
                .values()
                .next()
                .cloned()
                .unwrap_or_default(),
        };
        let _permit = self
            .verifying
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        match (known, matched) {
            (Some(_), true) => Ok(Arc::from(name)),
            _ => Err(self.refusal("unknown user or wrong password")),
        }
    }
}

/// `Basic base64(user:password)`, the scheme case-insensitive (RFC 9110
/// §11.1). The password may hold `:`; the name may not (RFC 7617 §2).
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn filter(hash: &str) -> BasicAuthFilter {
        BasicAuthFilter::new(&BasicAuth {
            users: BTreeMap::from([("alice".to_string(), hash.to_string())]),
            realm: "r".into(),
            consumer_header: http::HeaderName::from_static("x-consumer"),
            withheld: false,
        })
    }

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(user_pass);
        h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_verified_credential_is_served_from_the_cache() {
        let f = filter(&bcrypt::hash("pw:with:colons", 5).unwrap());
        let mut h = basic("alice:pw:with:colons");
        assert_eq!(&*f.authenticate(&mut h).await.unwrap(), "alice");
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h["x-consumer"], "alice");
        assert_eq!(f.cache.len(), 1);
        let mut wrong = basic("alice:nope");
        assert!(f.authenticate(&mut wrong).await.is_err());
        assert!(
            f.authenticate(&mut basic("bob:pw:with:colons"))
                .await
                .is_err()
        );
        assert_eq!(f.cache.len(), 1, "a failure was cached");
    }

    /// The figure the docs quote: one bcrypt check against a cached one.
    /// `cargo test -p portico-gateway --release --lib basic_auth_cost -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement, not a check"]
    async fn basic_auth_cost() {
        for cost in [5, 10] {
            let f = filter(&bcrypt::hash("secret", cost).unwrap());
            let started = Instant::now();
            f.authenticate(&mut basic("alice:secret")).await.unwrap();
            let first = started.elapsed();
            let n = 10_000;
            let started = Instant::now();
            for _ in 0..n {
                f.authenticate(&mut basic("alice:secret")).await.unwrap();
            }
            let cached = started.elapsed() / n;
            println!("cost {cost}: uncached {first:?}, cached {cached:?} per request");
        }
    }
}
