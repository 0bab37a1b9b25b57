//! The answers an ACME server checks while it validates an order.
//!
//! HTTP-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/{token}` on
//! port 80 (the cleartext listener) must return the key authorization.
//! The proxy asks [`Http01Answers`] before routing, so no route can shadow
//! the path, and a request for a token not published is a 404 from the
//! gateway, never proxied.
//!
//! TLS-ALPN-01 (RFC 8737) is answered by the TLS listener: see
//! [`crate::tls::alpn`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use portico_registry::client::RegistryClient;
use tokio::sync::Semaphore;

/// The path prefix HTTP-01 validation requests use.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// Registry look-ups of unknown tokens in flight at once, per gateway: the
/// CA makes a handful of validation requests per order; anyone can send
/// challenge paths, and must not turn them into registry load.
pub const MAX_LOOKUPS: usize = 8;

/// HTTP-01 key authorizations by token, published while an order is being
/// validated. A std mutex: a few entries, held only to look one up or
/// change one, never across `.await`; only challenge requests take it.
///
/// With a registry ([`Http01Answers::look_up_in`]), a token not published
/// here is looked up there: another gateway may be ordering, and the CA
/// may reach this one (as Caddy's shared storage does).
#[derive(Debug, Default)]
pub struct Http01Answers {
    tokens: Mutex<HashMap<String, Arc<str>>>,
    registry: OnceLock<(RegistryClient, Semaphore)>,
}

impl Http01Answers {
    /// Publishes the key authorization for `token`.
    pub fn publish(&self, token: &str, key_authorization: &str) {
        self.lock()
            .insert(token.to_string(), Arc::from(key_authorization));
    }

    /// Withdraws `token` (its validation is over).
    pub fn withdraw(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Looks tokens not published here up in the registry `client`
    /// follows (set once, when the gateway follows a registry).
    pub fn look_up_in(&self, client: RegistryClient) {
        let _ = self.registry.set((client, Semaphore::new(MAX_LOOKUPS)));
    }

    /// The answer for a request to `path`: `None` when it is not a
    /// challenge path, `Some(None)` for a token not published (here, nor in
    /// the registry when there is one).
    pub async fn answer(&self, path: &str) -> Option<Option<Arc<str>>> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        if let Some(hit) = self.lock().get(token).cloned() {
            return Some(Some(hit));
        }
        Some(self.look_up(token).await)
    }

    /// A token from the registry: only well-formed HTTP-01 ones (a dot
    /// marks a TLS-ALPN-01 answer, which is not served over HTTP), only
    /// [`MAX_LOOKUPS`] at once (beyond, a 404: the CA retries).
    async fn look_up(&self, token: &str) -> Option<Arc<str>> {
        let (client, slots) = self.registry.get()?;
        portico_registry::lock::validate_token(token).ok()?;
        if token.contains('.') {
            return None;
        }
        let _slot = slots.try_acquire().ok()?;
        match client.challenge(token).await {
            Ok(found) => found.map(Arc::from),
            Err(e) => {
                tracing::warn!(error = %e, "HTTP-01 answer not read from the registry");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.tokens.lock().expect("HTTP-01 answers poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_published_tokens_are_answered() {
        let answers = Http01Answers::default();
        answers.publish("tok", "tok.thumb");
        let hit = answers
            .answer("/.well-known/acme-challenge/tok")
            .await
            .unwrap();
        assert_eq!(hit.as_deref(), Some("tok.thumb"));
        assert_eq!(
            answers.answer("/.well-known/acme-challenge/other").await,
            Some(None)
        );
        assert_eq!(answers.answer("/api/tok").await, None);
        answers.withdraw("tok");
        assert_eq!(
            answers.answer("/.well-known/acme-challenge/tok").await,
            Some(None)
        );
    }
}
