//! Per-route filters, as one chain per route: what a route's `filters`
//! list (checked by the registry crate's [`portico_registry::filter`])
//! becomes on the request path.
//!
//! A chain is built once per route when a table is built, and kept across
//! rebuilds while the route's filters stay the same (so a rate limit's
//! counters survive every registry change). A route without filters has no
//! chain at all (`RouteEntry::filters` is `None`): the request path pays
//! one branch for the feature, nothing more.
//!
//! Each filter runs in the phase of the request path it belongs to
//! (see the `proxy` module), in the order the route lists them within a phase:
//!
//! 1. **request filter** (may answer by itself, before anything is sent):
//!    authentication first ([`api_key`]: 401 without a known key, 403 for
//!    a consumer not allowed; the credential removed and the consumer
//!    named in a header; [`jwt`]: 401 without a valid token, claims copied
//!    to headers; each authentication filter listed must pass), then [`rate_limit`] (a refusal is a 429), whatever
//!    the order the route lists them in: a limit keyed by `consumer` needs
//!    the consumer known, and a request refused for its credential must
//!    not spend anyone's quota. Nothing refused reaches the upstream;
//! 2. **upstream request filter**: `request_headers`, on the request as it
//!    will leave (after the gateway's own forwarding headers, so a filter
//!    can override them);
//! 3. **response filter**: `response_headers`, on an upstream's response
//!    (the gateway's own error answers are left as they are).
//!
//! Kinds to come slot into the same three lists: an authentication filter
//! into the first (before rate limits, so a consumer key can be counted),
//! a traffic split or subset into the pick, which already takes the
//! route's endpoint set; an embedder's own filter as a trait object with
//! the same three optional phases.

pub mod api_key;
pub mod consumers;
pub mod headers;
pub mod jwt;
pub mod rate_limit;
pub mod redirect;
pub mod rewrite;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Uri};
use portico_registry::filter::{ApiKey, Filter, HeaderEdits, LimitScope, Redirect, Rewrite};

pub use consumers::ConsumerStore;
pub use rate_limit::{Limited, RateLimiter};

/// Why an authentication filter refused a request.
#[derive(Debug, Clone)]
pub enum AuthRefusal {
    /// No credential, or a bad one: 401 with `challenge` as
    /// `WWW-Authenticate`.
    Unauthorized {
        /// What was wrong, for the client (never the credential).
        reason: &'static str,
        /// The `WWW-Authenticate` value.
        challenge: HeaderValue,
    },
    /// A known consumer the route does not allow: 403.
    Forbidden {
        /// Who it was.
        consumer: Arc<str>,
    },
}

/// Why the request filter phase refused a request.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Authentication refused it.
    Auth(AuthRefusal),
    /// A rate limit refused it.
    Limited(Limited),
}

/// What the request filter phase may read and edit of a request.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The request's headers (credentials are removed from them, the
    /// consumer's name added).
    pub headers: &'a mut HeaderMap,
    /// The request's URI (a credential in the query is removed from it).
    pub uri: &'a mut Uri,
}

/// An authentication filter.
#[derive(Debug)]
enum Authenticator {
    ApiKey(ApiKey),
    Jwt(jwt::JwtFilter),
}

/// A route's filters, built from its checked configuration.
#[derive(Debug)]
pub struct FilterChain {
    /// What it was built from: a rebuild reuses the chain while it is equal.
    config: Vec<Filter>,
    auth: Vec<Authenticator>,
    limits: Vec<RateLimiter>,
    request_headers: Vec<HeaderEdits>,
    response_headers: Vec<HeaderEdits>,
    /// Phase 3: the path and host the upstream gets.
    rewrite: Option<Rewrite>,
    /// Phase 2: answer with a redirect instead of going upstream.
    redirect: Option<Redirect>,
    /// Phase 3: the body limit, when below the route's own.
    body_limit: Option<u64>,
}

impl FilterChain {
    /// The chain for `filters`; `None` when there are none.
    pub fn build(filters: &[Filter]) -> Option<FilterChain> {
        if filters.is_empty() {
            return None;
        }
        let mut chain = FilterChain {
            config: filters.to_vec(),
            auth: Vec::new(),
            limits: Vec::new(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            rewrite: None,
            redirect: None,
            body_limit: None,
        };
        for (i, f) in filters.iter().enumerate() {
            match f {
                Filter::RateLimit(c) => chain.limits.push(match c.scope {
                    LimitScope::Gateway => RateLimiter::new(c, i),
                    LimitScope::Cluster => RateLimiter::cluster(c, i),
                }),
                Filter::RequestHeaders(e) => chain.request_headers.push(e.clone()),
                Filter::ResponseHeaders(e) => chain.response_headers.push(e.clone()),
                Filter::ApiKey(a) => chain.auth.push(Authenticator::ApiKey(a.clone())),
                Filter::Jwt(j) => chain.auth.push(Authenticator::Jwt(jwt::JwtFilter::new(j))),
                Filter::Rewrite(r) => chain.rewrite = Some(r.clone()),
                Filter::Redirect(r) => chain.redirect = Some(r.clone()),
                Filter::BodyLimit(max) => chain.body_limit = Some(*max),
            }
        }
        Some(chain)
    }

    /// Whether this chain was built from `filters`.
    pub fn built_from(&self, filters: &[Filter]) -> bool {
        self.config == filters
    }

    /// Whether [`FilterChain::on_request`] may have to wait (for a key
    /// set fetched over the network). When not, its future completes on its
    /// first poll and the caller runs it in place, with no allocation.
    pub fn may_wait(&self) -> bool {
        self.auth
            .iter()
            .any(|a| matches!(a, Authenticator::Jwt(j) if j.may_wait()))
    }

    /// Phase 1: authentication, then rate limits; may refuse the request.
    /// Answers the consumer identified, if any.
    pub async fn on_request(
        &self,
        head: RequestHead<'_>,
        consumers: &ConsumerStore,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let mut consumer = None;
        for auth in &self.auth {
            let who = match auth {
                Authenticator::ApiKey(config) => {
                    api_key::authenticate(config, consumers, head.headers, head.uri).map(Some)
                }
                Authenticator::Jwt(filter) => filter.authenticate(head.headers).await,
            };
            consumer = who.map_err(Refusal::Auth)?.or(consumer);
        }
        for limit in &self.limits {
            limit
                .check(head.client, head.headers, consumer.as_deref())
                .map_err(Refusal::Limited)?;
        }
        Ok(consumer)
    }

    /// Phase 3: edits the request about to go upstream.
    pub fn on_upstream_request(&self, headers: &mut HeaderMap) {
        for edits in &self.request_headers {
            headers::apply(edits, headers);
        }
    }

    /// Phase 5: edits an upstream's response on its way back.
    pub fn on_response(&self, headers: &mut HeaderMap) {
        for edits in &self.response_headers {
            headers::apply(edits, headers);
        }
    }

    /// The `jwt` filters, in route order (for tests and operators).
    pub fn jwt_filters(&self) -> impl Iterator<Item = &jwt::JwtFilter> {
        self.auth.iter().filter_map(|a| match a {
            Authenticator::Jwt(j) => Some(j),
            Authenticator::ApiKey(_) => None,
        })
    }

    /// Phase 2: the redirect the route answers with, if it has one.
    pub fn redirect(&self) -> Option<&Redirect> {
        self.redirect.as_ref()
    }

    /// Phase 3: the route's rewrite, if it has one.
    pub fn rewrite(&self) -> Option<&Rewrite> {
        self.rewrite.as_ref()
    }

    /// Phase 3: the `body_limit` filter's maximum, if it has one.
    pub fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// The rate limiters, in route order (for tests and operators).
    pub fn limiters(&self) -> &[RateLimiter] {
        &self.limits
    }
}
