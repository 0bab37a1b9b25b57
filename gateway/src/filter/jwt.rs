//! `jwt`: a JSON Web Token from `Authorization: Bearer` (or a cookie),
//! verified with the `jsonwebtoken` crate against an inline key or a JWKS.
//!
//! - **Algorithms**: only those the route lists; a token's `alg` outside
//!   them is refused before any key is touched (no `none`, no HS/RS
//!   confusion: a token is checked with the one algorithm its header names,
//!   and that algorithm must be in the list).
//! - **JWKS**: fetched in the background every `jwks_refresh`; a token
//!   whose `kid` is unknown triggers one fetch at once, at most once per
//!   [`REFETCH_EVERY`] per filter, so forged `kid`s cannot make the gateway
//!   hammer the key server. Requests before the first fetch completes wait
//!   for it. A key set that changes invalidates every cached verification,
//!   so a key removed from the set stops working at once.
//! - **Cache**: a verified token is remembered, keyed by its fingerprint
//!   (a keyed hash: [`super::fingerprint`]), until its `exp` (plus leeway),
//!   so a repeated token costs a hash and a map lookup, not a signature
//!   check. At most [`CACHE_MAX`] tokens: a full
//!   cache first drops expired entries, then everything (verifying again is
//!   the only cost).
//! - **Refusal**: 401 with `WWW-Authenticate: Bearer realm="portico"`, plus
//!   `error="invalid_token"` and a description when a token was presented
//!   (RFC 6750 §3). The token (the `Authorization` header) is removed
//!   before the request goes upstream, as Envoy does by default; chosen
//!   claims are copied into headers, after removing the client's copies.
//!   A token must carry `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portico_registry::filter::{Jwt, JwtKeys};

use super::AuthRefusal;
use super::fingerprint::{CredentialCache, Fingerprint};

/// Least time between two fetches of a JWKS caused by an unknown `kid`.
pub const REFETCH_EVERY: Duration = Duration::from_secs(30);
/// Most verified tokens remembered per filter and shard (`crate::shard`).
pub const CACHE_MAX: usize = 10_000;
/// Largest JWKS document read.
const JWKS_MAX_BYTES: usize = 1 << 20;
/// Time allowed for one JWKS fetch.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

type Client =
    hyper_util::client::legacy::Client<portico_registry::client::tls::Connector, Empty<Bytes>>;

/// One `jwt` filter, built with its route's chain.
pub struct JwtFilter {
    config: Jwt,
    keys: Keys,
    cache: CredentialCache<Verified>,
}

impl std::fmt::Debug for JwtFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtFilter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Keys {
    /// An inline secret or public key.
    Inline(DecodingKey),
    /// An inline key the crate could not read: every token is refused
    /// (logged once when the chain was built).
    Unusable,
    /// A JWKS.
    Jwks(Arc<Jwks>),
}

/// What a verified token lets through.
#[derive(Clone)]
struct Verified {
    /// `exp` plus leeway, Unix seconds.
    until: u64,
    /// The key set generation it was verified with.
    generation: u64,
    subject: Option<Arc<str>>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl JwtFilter {
    /// The filter for `config` (a JWKS starts fetching at once when a
    /// runtime is running).
    pub fn new(config: &Jwt) -> JwtFilter {
        let keys = match &config.keys {
            JwtKeys::Secret(s) => Keys::Inline(DecodingKey::from_secret(s.as_bytes())),
            JwtKeys::PublicKeyPem(pem) => match inline_pem(&config.algorithms[0], pem) {
                Ok(k) => Keys::Inline(k),
                Err(e) => {
                    tracing::error!(error = %e, "jwt filter: public_key_pem unusable; every token refused");
                    Keys::Unusable
                }
            },
            JwtKeys::Withheld => {
                tracing::error!(
                    "jwt filter: the registry withheld its secret from this gateway's token \
                     (give it a gateway token); every token refused"
                );
                Keys::Unusable
            }
            JwtKeys::Jwks { url, refresh } => Keys::Jwks(Jwks::start(url, *refresh)),
        };
        JwtFilter {
            config: config.clone(),
            keys,
            cache: CredentialCache::new(CACHE_MAX),
        }
    }

    /// Whether checking a token may wait for a JWKS fetch.
    pub fn may_wait(&self) -> bool {
        matches!(self.keys, Keys::Jwks(_))
    }

    /// Verifies the request's token; on success the token is removed and
    /// the chosen claims set as headers. Answers the `sub` claim.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Option<Arc<str>>, AuthRefusal> {
        for (_, name) in &self.config.claims_to_headers {
            headers.remove(name);
        }
        let Some((token, from_bearer)) = self.token(headers) else {
            return Err(refusal(None));
        };
        let verified = self.verified(token).await.map_err(|r| refusal(Some(r)))?;
        if from_bearer {
            headers.remove(header::AUTHORIZATION);
        }
        for (name, value) in verified.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        Ok(verified.subject)
    }

    /// The token, and whether it came from `Authorization: Bearer` (not
    /// the cookie). Borrowed: nothing is copied per request.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Option<(&'h str, bool)> {
        if let Some(t) = bearer(headers) {
            return Some((t, true));
        }
        let name = self.config.cookie.as_deref()?;
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some((v, false))
            })
    }

    /// From the cache, or checked (and then cached).
    async fn verified(&self, token: &str) -> Result<Verified, &'static str> {
        let fingerprint = self.cache.fingerprint(token.as_bytes());
        let generation = self.generation();
        let now = unix_now();
        let good = |v: &Verified| (v.generation == generation && now <= v.until).then(|| v.clone());
        if let Some(v) = self.cache.get(fingerprint, good) {
            return Ok(v);
        }
        let head = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if !self
            .config
            .algorithms
            .iter()
            .any(|a| alg_name(head.alg) == a)
        {
            return Err("algorithm not accepted");
        }
        let (key, generation) = self.key(head.kid.as_deref()).await?;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &self.validation(head.alg),
        )
        .map_err(|e| reason(e.kind()))?
        .claims;
        let verified = self.admit(&claims, generation);
        self.remember(fingerprint, verified.clone(), now);
        Ok(verified)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        match &self.config.audience {
            Some(aud) => v.set_audience(aud),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
        }
        v
    }

    fn admit(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        generation: u64,
    ) -> Verified {
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let headers = self
            .config
            .claims_to_headers
            .iter()
            .filter_map(|(claim, name)| {
                let text = match claims.get(claim)? {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((name.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        Verified {
            until: exp.saturating_add(self.config.leeway.as_secs()),
            generation,
            subject: claims
                .get("sub")
                .and_then(serde_json::Value::as_str)
                .map(Arc::from),
            headers,
        }
    }

    fn remember(&self, fingerprint: Fingerprint, verified: Verified, now: u64) {
        self.cache.insert(fingerprint, verified, |v| v.until >= now);
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Jwks(j) => j.current.load().generation,
            _ => 0,
        }
    }

    async fn key(&self, kid: Option<&str>) -> Result<(DecodingKey, u64), &'static str> {
        match &self.keys {
            Keys::Inline(k) => Ok((k.clone(), 0)),
            Keys::Unusable => Err("no usable key"),
            Keys::Jwks(j) => j.key(kid.unwrap_or("")).await,
        }
    }

    /// Verified tokens remembered now (for tests and operators).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl Drop for JwtFilter {
    fn drop(&mut self) {
        if let Keys::Jwks(j) = &self.keys {
            j.stop();
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn refusal(error: Option<&'static str>) -> AuthRefusal {
    let challenge = match error {
        None => HeaderValue::from_static("Bearer realm=\"portico\""),
        Some(description) => HeaderValue::from_str(&format!(
            "Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"{description}\""
        ))
        .expect("descriptions are fixed ASCII"),
    };
    AuthRefusal::Unauthorized {
        reason: error.unwrap_or("no bearer token"),
        challenge,
    }
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "issuer not accepted",
        ErrorKind::InvalidAudience => "audience not accepted",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "invalid token",
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "",
    }
}

fn inline_pem(alg: &str, pem: &str) -> Result<DecodingKey, jsonwebtoken::errors::Error> {
    match alg {
        "RS256" => DecodingKey::from_rsa_pem(pem.as_bytes()),
        "ES256" => DecodingKey::from_ec_pem(pem.as_bytes()),
        _ => DecodingKey::from_ed_pem(pem.as_bytes()),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JWKS kept fresh by a background task.
struct Jwks {
    url: Uri,
    client: Client,
    current: ArcSwap<KeySet>,
    /// Set once the first fetch ended (well or not): requests wait for it.
    loaded: tokio::sync::watch::Sender<bool>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// When a `kid` miss last caused a fetch.
    last_miss_fetch: Mutex<Option<Instant>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    /// Bumped on each change of the set: cached verifications of another
    /// generation no longer count.
    generation: u64,
    /// The document it was built from, to see whether a fetch changed it.
    source: Bytes,
}

impl Jwks {
    fn start(url: &str, refresh: Duration) -> Arc<Jwks> {
        let config = portico_registry::client::tls::client_config(&[])
            .expect("the web PKI roots alone always make a client config");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(portico_registry::client::tls::connector(config));
        let jwks = Arc::new(Jwks {
            url: url.parse().expect("jwks_url was checked as a URL"),
            client,
            current: ArcSwap::default(),
            loaded: tokio::sync::watch::Sender::new(false),
            fetching: tokio::sync::Mutex::new(()),
            last_miss_fetch: Mutex::new(None),
            task: Mutex::new(None),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(refresh_loop(Arc::downgrade(&jwks), refresh));
            *jwks.task.lock().expect("jwks task poisoned") = Some(task.abort_handle());
        }
        jwks
    }

    fn stop(&self) {
        if let Some(t) = self.task.lock().expect("jwks task poisoned").take() {
            t.abort();
        }
    }

    async fn key(&self, kid: &str) -> Result<(DecodingKey, u64), &'static str> {
        if let Some(found) = self.lookup(kid) {
            return Ok(found);
        }
        let mut loaded = self.loaded.subscribe();
        if !*loaded.borrow() {
            let _ = tokio::time::timeout(JWKS_TIMEOUT, loaded.wait_for(|l| *l)).await;
            if let Some(found) = self.lookup(kid) {
                return Ok(found);
            }
        }
        if !self.may_refetch() {
            return Err("unknown key id");
        }
        let _one = self.fetching.lock().await;
        if let Some(found) = self.lookup(kid) {
            return Ok(found);
        }
        self.fetch().await;
        self.lookup(kid).ok_or("unknown key id")
    }

    fn lookup(&self, kid: &str) -> Option<(DecodingKey, u64)> {
        let set = self.current.load();
        set.keys.get(kid).map(|k| (k.clone(), set.generation))
    }

    /// Whether a `kid` miss may fetch now (and, if so, counts it).
    fn may_refetch(&self) -> bool {
        let mut last = self.last_miss_fetch.lock().expect("jwks clock poisoned");
        if last.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Fetches the set; on failure the previous one stays.
    async fn fetch(&self) {
        match tokio::time::timeout(JWKS_TIMEOUT, self.get()).await {
            Ok(Ok(body)) => self.install(body),
            Ok(Err(e)) => tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed"),
            Err(_) => tracing::warn!(url = %self.url, "JWKS fetch timed out"),
        }
        self.loaded.send_replace(true);
    }

    async fn get(&self) -> Result<Bytes, String> {
        let resp = self
            .client
            .get(self.url.clone())
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        Limited::new(resp.into_body(), JWKS_MAX_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string())
    }

    fn install(&self, body: Bytes) {
        let old = self.current.load();
        if old.source == body {
            return;
        }
        let set: JwkSet = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS is not a key set");
                return;
            }
        };
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone().unwrap_or_default(), key))
            })
            .collect();
        self.current.store(Arc::new(KeySet {
            keys,
            generation: old.generation + 1,
            source: body,
        }));
    }
}

async fn refresh_loop(jwks: Weak<Jwks>, every: Duration) {
    loop {
        let Some(j) = jwks.upgrade() else { return };
        {
            let _one = j.fetching.lock().await;
            j.fetch().await;
        }
        drop(j);
        tokio::time::sleep(every).await;
    }
}
