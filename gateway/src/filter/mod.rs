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
//!    `ip_filter` first (a 403 for an address not allowed: the cheapest
//!    check, so a refused client spends no authentication work), then
//!    [`cors`] preflights (answered here, before authentication: a browser
//!    sends them without credentials), then authentication ([`api_key`]: 401 without a known key, 403 for
//!    a consumer not allowed; the credential removed and the consumer
//!    named in a header; [`jwt`]: 401 without a valid token, claims copied
//!    to headers; [`basic_auth`]: 401 without a listed user's password,
//!    checked with bcrypt on the blocking pool and cached; [`forward_auth`]:
//!    an auth service asked, its non-2xx answer sent to the client as it
//!    is, 503 when it cannot be asked; each
//!    authentication filter listed must pass), then [`rate_limit`] (a refusal is a 429), whatever
//!    the order the route lists them in: a limit keyed by `consumer` needs
//!    the consumer known, and a request refused for its credential must
//!    not spend anyone's quota. Nothing refused reaches the upstream;
//! 2. **upstream request filter**: `request_headers`, on the request as it
//!    will leave (after the gateway's own forwarding headers, so a filter
//!    can override them);
//! 3. **response filter**: `response_headers`, on an upstream's response
//!    (the gateway's own error answers are left as they are), then
//!    [`compress`] (which sees the edited headers, so a `response_headers`
//!    filter can set the `Content-Type` it decides by).
//!
//! An embedder's own filters ([`custom`]: the public [`custom::Filter`]
//! trait, registered by name) run in the same phases: in the first at the
//! [`custom::Stage`] each declares (with `ip_filter`, with authentication in
//! list order, or after the rate limits), in the second after the built-in
//! edits and rewrite, in the third after the built-in header edits; and
//! each is told of the request as it ends.

pub mod api_key;
pub mod basic_auth;
pub mod compress;
pub mod consumers;
pub mod cors;
pub mod custom;
pub mod fingerprint;
pub mod forward_auth;
pub mod headers;
pub mod jwt;
pub mod rate_limit;
pub mod redirect;
pub mod rewrite;

use std::net::IpAddr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderValue, Uri};
use portico_registry::filter::{
    ApiKey, Filter as FilterConfig, HeaderEdits, IpFilter, LimitScope, Redirect, Rewrite,
};

use custom::{Filter, FilterRegistry, FilterRequest, Stage};

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
#[derive(Debug)]
pub enum Refusal {
    /// Authentication refused it.
    Auth(AuthRefusal),
    /// A rate limit refused it.
    Limited(Limited),
    /// An `ip_filter` refused the client's address: 403.
    AddressRefused(IpAddr),
    /// An answer for the client made by a filter (a `forward_auth`
    /// service's refusal), sent as it is.
    Answer(Box<http::Response<http_body_util::Full<bytes::Bytes>>>),
    /// A `forward_auth` service could not be asked: 503, nothing let through.
    AuthUnavailable(String),
    /// A CORS preflight for an origin, method or header the route's `cors`
    /// does not allow: 403.
    CorsRefused,
    /// A custom filter the route lists could not be built (this gateway
    /// lacks it, or it refused its settings): 503, nothing let through.
    Unavailable(Arc<str>),
}

/// What the request filter phase may read and edit of a request.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// The client's address: the peer's, or the one a trusted proxy
    /// forwarded (the proxy settles it before the chain runs).
    pub client: IpAddr,
    /// The request's headers (credentials are removed from them, the
    /// consumer's name added).
    pub headers: &'a mut HeaderMap,
    /// The request's URI (a credential in the query is removed from it).
    pub uri: &'a mut Uri,
    /// The request's method.
    pub method: &'a http::Method,
    /// Whether the client connection is TLS.
    pub secure: bool,
    /// The route's name (for custom filters).
    pub route: &'a str,
    /// The request's storage, kept for the later phases (custom filters).
    pub extensions: &'a mut Extensions,
}

impl RequestHead<'_> {
    /// Runs a custom filter's request phase on this head.
    async fn run_custom(
        &mut self,
        filter: &dyn Filter,
        consumer: &mut Option<Arc<str>>,
    ) -> Result<(), Refusal> {
        let mut req = FilterRequest {
            route: self.route,
            client: self.client,
            secure: self.secure,
            method: self.method,
            uri: self.uri,
            headers: self.headers,
            consumer,
            extensions: self.extensions,
        };
        filter
            .on_request(&mut req)
            .await
            .map_err(|answer| Refusal::Answer(Box::new(answer)))
    }
}

/// An authentication filter.
#[derive(Debug)]
enum Authenticator {
    ApiKey(ApiKey),
    Jwt(jwt::JwtFilter),
    Basic(basic_auth::BasicAuthFilter),
    Forward(forward_auth::ForwardAuthFilter),
    /// An embedder's filter at [`Stage::Authentication`].
    Custom(Arc<dyn Filter>),
}

impl Authenticator {
    /// Checks the request; answers the consumer it identified, if any.
    async fn run(
        &self,
        head: &mut RequestHead<'_>,
        consumers: &ConsumerStore,
        consumer: &mut Option<Arc<str>>,
    ) -> Result<(), Refusal> {
        let who = match self {
            Authenticator::Custom(filter) => return head.run_custom(&**filter, consumer).await,
            Authenticator::ApiKey(config) => {
                api_key::authenticate(config, consumers, head.headers, head.uri).map(Some)
            }
            Authenticator::Jwt(filter) => filter.authenticate(head.headers).await,
            Authenticator::Basic(filter) => filter.authenticate(head.headers).await.map(Some),
            Authenticator::Forward(filter) => {
                return match filter.authorize(head).await {
                    Ok(()) => Ok(()),
                    Err(forward_auth::Denied::Answer(a)) => Err(Refusal::Answer(Box::new(a))),
                    Err(forward_auth::Denied::Unavailable(why)) => {
                        Err(Refusal::AuthUnavailable(why))
                    }
                };
            }
        };
        if let Some(who) = who.map_err(Refusal::Auth)? {
            *consumer = Some(who);
        }
        Ok(())
    }
}

/// A route's filters, built from its checked configuration.
#[derive(Debug)]
pub struct FilterChain {
    /// What it was built from: a rebuild reuses the chain while it is equal.
    config: Vec<FilterConfig>,
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
    /// Phase 5: response compression.
    compression: Option<compress::Compressor>,
    /// Phase 1, before anything else: who may call, by address.
    ip_filter: Option<IpFilter>,
    /// Phase 1, before authentication: preflights answered; and every
    /// answer to an allowed origin marked readable.
    cors: Option<cors::CorsFilter>,
    /// Every custom filter, in route order (phases 2 to 4).
    custom: Vec<Arc<dyn Filter>>,
    /// Custom filters at [`Stage::Access`] and [`Stage::Request`].
    custom_access: Vec<Arc<dyn Filter>>,
    custom_request: Vec<Arc<dyn Filter>>,
    /// Why the chain cannot run (a custom filter that could not be built):
    /// every request is refused.
    unavailable: Option<Arc<str>>,
}

impl FilterChain {
    /// The chain for `filters`, with the custom filters `registry` builds;
    /// `None` when there are none. A custom filter that cannot be built
    /// makes a chain that refuses every request ([`FilterChain::unavailable`]).
    pub fn build(filters: &[FilterConfig], registry: &FilterRegistry) -> Option<FilterChain> {
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
            compression: None,
            ip_filter: None,
            cors: None,
            custom: Vec::new(),
            custom_access: Vec::new(),
            custom_request: Vec::new(),
            unavailable: None,
        };
        for (i, f) in filters.iter().enumerate() {
            match f {
                FilterConfig::Custom(c) => match registry.build(c) {
                    Ok(filter) => chain.add_custom(filter),
                    Err(e) => {
                        let why = format!("filters[{i}].{}: {}", e.field, e.reason);
                        chain.unavailable.get_or_insert(why.into());
                    }
                },
                FilterConfig::RateLimit(c) => chain.limits.push(match c.scope {
                    LimitScope::Gateway => RateLimiter::new(c, i),
                    LimitScope::Cluster => RateLimiter::cluster(c, i),
                }),
                FilterConfig::RequestHeaders(e) => chain.request_headers.push(e.clone()),
                FilterConfig::ResponseHeaders(e) => chain.response_headers.push(e.clone()),
                FilterConfig::ApiKey(a) => chain.auth.push(Authenticator::ApiKey(a.clone())),
                FilterConfig::Jwt(j) => chain.auth.push(Authenticator::Jwt(jwt::JwtFilter::new(j))),
                FilterConfig::Rewrite(r) => chain.rewrite = Some(r.clone()),
                FilterConfig::Redirect(r) => chain.redirect = Some(r.clone()),
                FilterConfig::BodyLimit(max) => chain.body_limit = Some(*max),
                FilterConfig::Compression(c) => {
                    chain.compression = Some(compress::Compressor::new(c))
                }
                FilterConfig::IpFilter(f) => chain.ip_filter = Some(f.clone()),
                FilterConfig::BasicAuth(b) => chain
                    .auth
                    .push(Authenticator::Basic(basic_auth::BasicAuthFilter::new(b))),
                FilterConfig::ForwardAuth(f) => chain.auth.push(Authenticator::Forward(
                    forward_auth::ForwardAuthFilter::new(f),
                )),
                FilterConfig::Cors(c) => chain.cors = Some(cors::CorsFilter::new(c)),
            }
        }
        Some(chain)
    }

    /// Places a built custom filter in the phases it takes part in.
    fn add_custom(&mut self, filter: Arc<dyn Filter>) {
        if filter.has_request_phase() {
            match filter.stage() {
                Stage::Access => self.custom_access.push(filter.clone()),
                Stage::Authentication => self.auth.push(Authenticator::Custom(filter.clone())),
                Stage::Request => self.custom_request.push(filter.clone()),
            }
        }
        self.custom.push(filter);
    }

    /// Whether this chain was built from `filters`.
    pub fn built_from(&self, filters: &[FilterConfig]) -> bool {
        self.config == filters
    }

    /// Why this chain refuses every request, if it does: which custom
    /// filter could not be built, and why.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// The custom filters, in route order (phases 2 to 4 call each).
    pub fn custom(&self) -> &[Arc<dyn Filter>] {
        &self.custom
    }

    /// Whether [`FilterChain::on_request`] may have to wait (for a key
    /// set fetched over the network, or a bcrypt check on the blocking
    /// pool). When not, its future completes on its first poll and the
    /// caller runs it in place, with no allocation.
    pub fn may_wait(&self) -> bool {
        self.auth.iter().any(|a| match a {
            Authenticator::Jwt(j) => j.may_wait(),
            Authenticator::Basic(_) | Authenticator::Forward(_) | Authenticator::Custom(_) => true,
            Authenticator::ApiKey(_) => false,
        }) || !self.custom_access.is_empty()
            || !self.custom_request.is_empty()
    }

    /// Phase 1: the address filter, authentication, then rate limits; may
    /// refuse the request. Answers the consumer identified, if any.
    pub async fn on_request(
        &self,
        mut head: RequestHead<'_>,
        consumers: &ConsumerStore,
    ) -> Result<Option<Arc<str>>, Refusal> {
        if let Some(why) = &self.unavailable {
            return Err(Refusal::Unavailable(why.clone()));
        }
        if let Some(filter) = &self.ip_filter
            && !filter.admits(head.client)
        {
            return Err(Refusal::AddressRefused(head.client));
        }
        let mut consumer = None;
        for filter in &self.custom_access {
            head.run_custom(&**filter, &mut consumer).await?;
        }
        if let Some(cors) = &self.cors
            && cors::CorsFilter::is_preflight(head.method, head.headers)
        {
            return Err(match cors.preflight(head.headers) {
                Some(answer) => Refusal::Answer(Box::new(answer)),
                None => Refusal::CorsRefused,
            });
        }
        for auth in &self.auth {
            auth.run(&mut head, consumers, &mut consumer).await?;
        }
        for limit in &self.limits {
            limit
                .check(head.client, head.headers, consumer.as_deref())
                .map_err(Refusal::Limited)?;
        }
        for filter in &self.custom_request {
            head.run_custom(&**filter, &mut consumer).await?;
        }
        Ok(consumer)
    }

    /// The request's `Origin`, when the route has a `cors` filter that
    /// allows it: every answer to the request is then marked readable
    /// ([`FilterChain::on_cors`]).
    pub fn cors_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        self.cors.as_ref()?.allowed_origin(headers)
    }

    /// Phase 6, on any answer (upstream's or the gateway's own) to a request
    /// from an allowed `origin`: the CORS response headers.
    pub fn on_cors(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if let Some(cors) = &self.cors {
            cors.decorate(origin, headers);
        }
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
            Authenticator::ApiKey(_)
            | Authenticator::Basic(_)
            | Authenticator::Forward(_)
            | Authenticator::Custom(_) => None,
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

    /// Phase 5: the route's response compression, if it has one.
    pub fn compression(&self) -> Option<&compress::Compressor> {
        self.compression.as_ref()
    }

    /// The rate limiters, in route order (for tests and operators).
    pub fn limiters(&self) -> &[RateLimiter] {
        &self.limits
    }
}
