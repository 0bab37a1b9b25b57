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
//!    authentication when it comes, then [`rate_limit`]: a refusal is a
//!    429, and nothing reaches the upstream;
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

pub mod headers;
pub mod rate_limit;
pub mod redirect;
pub mod rewrite;

use std::net::IpAddr;

use http::HeaderMap;
use portico_registry::filter::{Filter, HeaderEdits, Redirect, Rewrite};

pub use rate_limit::{Limited, RateLimiter};

/// A route's filters, built from its checked configuration.
#[derive(Debug)]
pub struct FilterChain {
    /// What it was built from: a rebuild reuses the chain while it is equal.
    config: Vec<Filter>,
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
            limits: Vec::new(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            rewrite: None,
            redirect: None,
            body_limit: None,
        };
        for (i, f) in filters.iter().enumerate() {
            match f {
                Filter::RateLimit(c) => chain.limits.push(RateLimiter::new(c, i)),
                Filter::RequestHeaders(e) => chain.request_headers.push(e.clone()),
                Filter::ResponseHeaders(e) => chain.response_headers.push(e.clone()),
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

    /// Phase 1: may refuse the request (from `client`, with `headers`).
    pub fn on_request(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), Limited> {
        self.limits
            .iter()
            .try_for_each(|limit| limit.check(client, headers))
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
