//! Per-route filters: the written form ([`FilterSpec`], one entry of a
//! route's `filters = [...]`) and the checked form ([`Filter`]) the gateway
//! builds its filter chain from.
//!
//! Like the rest of the route model, this lives in the registry crate so the
//! route file and `PUT /v1/routes/{name}` are checked by the very same code,
//! and every refusal names the field (`route[2].filters[0].rate`).
//!
//! A filter entry is one flat table with a `type` and the settings of that
//! type. Flat rather than one serde enum: serde's tagged enums lose the
//! field path of a type error, and the path is what tells an operator which
//! of ten filters is wrong. [`compile_filters`] then refuses any setting the
//! type does not take, so the flat form is as strict as an enum.

mod access;
mod auth;
mod compress;
mod transform;

pub use auth::{
    BasicAuth, DEFAULT_FORWARD_AUTH_TIMEOUT, DEFAULT_REALM, ForwardAuth, MAX_BASIC_USERS,
    MAX_BCRYPT_COST, MAX_FORWARD_AUTH_HEADERS, MAX_FORWARD_AUTH_TIMEOUT, MIN_BCRYPT_COST,
};

pub use access::{
    Cidr, Cors, DEFAULT_CORS_METHODS, IpFilter, MAX_CORS_ENTRIES, MAX_CORS_MAX_AGE, MAX_NETWORKS,
};

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub use compress::{Compression, Encoding, Level};
use serde::{Deserialize, Serialize};

/// Most filters on one route.
pub const MAX_FILTERS: usize = 16;
/// Most header edits (set + add + remove) in one header filter.
pub const MAX_HEADER_EDITS: usize = 64;
/// Largest `rate` and `burst` of a rate limit.
pub const MAX_RATE: u64 = 1_000_000;
/// Default `max_keys` of a keyed rate limit: about 3 MB of keys at most
/// (a key is a 64-bit hash and a 64-bit time).
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
/// Largest `max_keys`.
pub const MAX_MAX_KEYS: u64 = 10_000_000;
/// Default header of an `api_key` filter.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// Default header naming the consumer upstream.
pub const DEFAULT_CONSUMER_HEADER: &str = "x-consumer";
/// Default `leeway` of a `jwt` filter.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Largest `leeway`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// Default `jwks_refresh`.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Shortest HMAC secret: 32 bytes, the size of an HS256 output (RFC 7518
/// §3.2 requires a key at least as long as the hash).
pub const MIN_JWT_SECRET: usize = 32;
/// The algorithms a `jwt` filter may accept.
pub const JWT_ALGORITHMS: [&str; 6] = ["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"];
/// Most names in an `api_key` filter's `consumers`.
pub const MAX_ALLOWED_CONSUMERS: usize = 1024;
/// Default `per` of a rate limit.
pub const DEFAULT_PER: Duration = Duration::from_secs(1);
/// Longest `per`.
pub const MAX_PER: Duration = Duration::from_secs(24 * 3600);

/// One filter as written in a route's `filters` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// `rate_limit`, `request_headers` or `response_headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// rate_limit: `gateway` (each gateway counts alone; the default) or
    /// `cluster` (the limit holds across all live gateways, each admitting
    /// its share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// rate_limit: what is counted: `client_ip` (default), `header:NAME`,
    /// or `route` (one bucket for the whole route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// rate_limit: requests admitted per `per`, sustained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// rate_limit: the period of `rate` (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// rate_limit: requests a key at rest may send at once (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// rate_limit: most keys remembered (default 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u64>,
    /// Header filters: headers replaced (or created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<BTreeMap<String, String>>,
    /// Header filters: values appended beside any already there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<BTreeMap<String, String>>,
    /// Header filters: headers removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<String>>,
    /// api_key: the request header carrying the key (default `x-api-key`
    /// when `query` is not given either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// api_key: the query parameter carrying the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Authentication filters: the header naming the consumer upstream
    /// (default `x-consumer`); a client's own copy is always removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_header: Option<String>,
    /// api_key: the consumers allowed (default: every known consumer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<String>>,
    /// jwt: the algorithms accepted (required): HS256, HS384, HS512,
    /// RS256, ES256, EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// jwt: the HMAC secret (HS* algorithms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// jwt: set (instead of `secret`) in a copy read by a token that may not
    /// hold keys: the route has a secret this reader is not shown. A gateway
    /// given such a copy refuses every token (fails closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_withheld: Option<bool>,
    /// jwt: a PEM public key (RS256, ES256 or EdDSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// jwt: a JWKS URL, fetched in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// jwt: how often the JWKS is fetched again (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<String>,
    /// jwt: the `iss` required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// jwt: the `aud` values accepted (one is enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// jwt: clock skew allowed on `exp` and `nbf` (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<String>,
    /// jwt: claims copied into request headers (`{sub = "x-user"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_to_headers: Option<BTreeMap<String, String>>,
    /// jwt: a cookie holding the token when there is no `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// rewrite, redirect: what replaces the route's matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// rewrite: a regular expression searched in the path (its first match
    /// is replaced by `replacement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// rewrite: what replaces `path_regex`'s match; `$1`, `${name}` insert
    /// captures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// rewrite: the upstream's `Host` / `:authority`; redirect: the
    /// `Location`'s host (`name` or `name:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// redirect: 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// redirect: `http` or `https` (default: the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// redirect: the whole new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// body_limit: largest request body, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// compression: the encodings offered, preferred first (default
    /// `["zstd", "br", "gzip"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encodings: Option<Vec<String>>,
    /// compression: responses of a known size below this many bytes are
    /// sent as they are (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    /// compression: media types compressed (`type/subtype` or `type/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
    /// compression: `fastest`, `default` or `best`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// ip_filter: the networks allowed (CIDR or address); any other client
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// ip_filter: the networks refused (wins over `allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// basic_auth: user names and their bcrypt hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<BTreeMap<String, String>>,
    /// basic_auth: the realm of the `WWW-Authenticate` challenge (default
    /// `portico`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// forward_auth: the auth service asked about each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// forward_auth: time allowed for the auth service's answer (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// forward_auth: headers of a 2xx answer set on the upstream request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_headers: Option<Vec<String>>,
    /// forward_auth: the request headers sent to the auth service (default:
    /// all but hop-by-hop ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_headers: Option<Vec<String>>,
    /// cors: the origins allowed (`https://app.example`), or `["*"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    /// cors: the methods a preflight may ask for (default GET, HEAD, POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    /// cors: the request headers a preflight may ask for (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// cors: the response headers a script may read (default none beyond
    /// the safelisted ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    /// cors: whether credentialed requests may be read (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// cors: how long a browser may cache a preflight's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// custom: the name an embedder registered its filter under (see the
    /// gateway's `Filter` trait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// custom: the filter's own settings, checked by the filter itself when
    /// a gateway builds it (the registry cannot know them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
}

/// One checked filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Answer 429 past a rate.
    RateLimit(RateLimit),
    /// Edit the request's headers before it goes upstream.
    RequestHeaders(HeaderEdits),
    /// Edit the response's headers before it goes to the client.
    ResponseHeaders(HeaderEdits),
    /// Answer 401 without a known consumer's API key (403 for a consumer
    /// not allowed).
    ApiKey(ApiKey),
    /// Answer 401 without a valid JSON Web Token.
    Jwt(Jwt),
    /// Rewrite the path and/or host the upstream receives.
    Rewrite(Rewrite),
    /// Answer with a redirect instead of going upstream.
    Redirect(Redirect),
    /// Refuse request bodies over this many bytes (413).
    BodyLimit(u64),
    /// Compress responses by `Accept-Encoding`.
    Compression(Compression),
    /// Answer 403 to a client address not allowed.
    IpFilter(IpFilter),
    /// Answer 401 without a known user's password (HTTP Basic).
    BasicAuth(BasicAuth),
    /// Ask an auth service; anything but a 2xx is its answer to the client.
    ForwardAuth(ForwardAuth),
    /// Answer CORS preflights at the gateway and mark responses readable
    /// by the allowed origins.
    Cors(Cors),
    /// A filter an embedder wrote and registered by name in its gateway.
    Custom(Custom),
}

impl Filter {
    /// The `type` it was written with, for listings that show a filter
    /// chain without its settings (which may hold secrets).
    pub fn kind(&self) -> &'static str {
        match self {
            Filter::RateLimit(_) => "rate_limit",
            Filter::RequestHeaders(_) => "request_headers",
            Filter::ResponseHeaders(_) => "response_headers",
            Filter::ApiKey(_) => "api_key",
            Filter::Jwt(_) => "jwt",
            Filter::Rewrite(_) => "rewrite",
            Filter::Redirect(_) => "redirect",
            Filter::BodyLimit(_) => "body_limit",
            Filter::Compression(_) => "compression",
            Filter::IpFilter(_) => "ip_filter",
            Filter::BasicAuth(_) => "basic_auth",
            Filter::ForwardAuth(_) => "forward_auth",
            Filter::Cors(_) => "cors",
            Filter::Custom(_) => "custom",
        }
    }
}

/// A checked `custom` filter: which filter, and its settings as written.
///
/// Only their shape is checked here (a name, a table of bounded size):
/// the settings are the filter's own, checked by it when a gateway builds
/// the route; a gateway that does not have the filter refuses the route's
/// requests (503) rather than let them through unfiltered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Custom {
    /// The name it was registered under.
    pub name: String,
    /// Its settings (a table; empty when none were written).
    pub settings: serde_json::Value,
    /// Set in a copy read by a token that may not see keys: the settings
    /// were left out, and a gateway given it refuses the route's requests.
    pub withheld: bool,
}

/// Longest name of a custom filter.
pub const MAX_CUSTOM_NAME: usize = 64;
/// Largest `settings` of a custom filter, as JSON.
pub const MAX_CUSTOM_SETTINGS: usize = 64 * 1024;

/// A checked `jwt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    /// Algorithms accepted, as named in a token's `alg`.
    pub algorithms: Vec<String>,
    /// Where the verification keys come from.
    pub keys: JwtKeys,
    /// The `iss` required, if any.
    pub issuer: Option<String>,
    /// The `aud` values accepted, if any.
    pub audience: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Claims copied into request headers.
    pub claims_to_headers: Vec<(String, HeaderName)>,
    /// A cookie holding the token, if any.
    pub cookie: Option<String>,
}

/// Where a `jwt` filter's keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// An HMAC secret.
    Secret(String),
    /// A PEM public key.
    PublicKeyPem(String),
    /// A secret this reader was not shown ([`FilterSpec::secret_withheld`]):
    /// every token is refused.
    Withheld,
    /// A JWKS URL, fetched every `refresh`.
    Jwks {
        /// The URL (`http` or `https`).
        url: String,
        /// Time between fetches.
        refresh: Duration,
    },
}

impl std::fmt::Debug for JwtKeys {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKeys::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtKeys::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
            JwtKeys::Withheld => f.write_str("Withheld"),
            JwtKeys::Jwks { url, refresh } => f
                .debug_struct("Jwks")
                .field("url", url)
                .field("refresh", refresh)
                .finish(),
        }
    }
}

/// A checked `api_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The header carrying the key, if any.
    pub header: Option<HeaderName>,
    /// The query parameter carrying the key, if any (looked at when the
    /// header is absent).
    pub query: Option<String>,
    /// The header naming the consumer upstream.
    pub consumer_header: HeaderName,
    /// The consumers allowed; `None`: every known consumer.
    pub consumers: Option<Vec<String>>,
}

/// A checked `rewrite`: applied to the request as it leaves, after
/// `strip_prefix` would have been (the two never combine on a prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The new path, if it changes.
    pub path: Option<PathRewrite>,
    /// The new `Host` / `:authority`, if it changes.
    pub host: Option<HeaderValue>,
}

/// How a path is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The route's matched prefix replaced by this.
    Prefix(String),
    /// The first match of the pattern replaced (captures expanded).
    Regex {
        /// Searched in the path.
        pattern: RewritePattern,
        /// `$1` and `${name}` expanded.
        replacement: String,
    },
}

/// A rewrite's compiled regular expression: compiled once, when the route
/// is; equal when written the same.
#[derive(Debug, Clone)]
pub struct RewritePattern(pub regex::Regex);

impl PartialEq for RewritePattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for RewritePattern {}

impl RewritePattern {
    /// Compiles `source` (unanchored: it is searched in the path), within
    /// [`MAX_REWRITE_PATTERN_SIZE`].
    pub fn new(source: &str) -> Result<RewritePattern, String> {
        regex::RegexBuilder::new(source)
            .size_limit(MAX_REWRITE_PATTERN_SIZE)
            .build()
            .map(RewritePattern)
            .map_err(|e| format!("{source:?} is not a valid regular expression: {e}"))
    }
}

/// A checked `redirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// `http` or `https`; `None`: the request's.
    pub scheme: Option<&'static str>,
    /// `name` or `name:port`; `None`: the request's.
    pub host: Option<String>,
    /// The new path; `None`: the request's.
    pub path: Option<RedirectPath>,
}

/// A redirect's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectPath {
    /// This path, whatever the request's.
    Whole(String),
    /// The route's matched prefix replaced by this.
    Prefix(String),
}

/// Default `status` of a redirect: 301, as Envoy's route redirects.
pub const DEFAULT_REDIRECT_STATUS: u16 = 301;
/// Statuses a redirect may answer with.
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];
/// Largest compiled size of a rewrite's `path_regex`.
pub const MAX_REWRITE_PATTERN_SIZE: usize = 256 * 1024;

/// A checked `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// What is counted.
    pub key: LimitKey,
    /// Requests per `per`, sustained.
    pub rate: u32,
    /// The period of `rate`.
    pub per: Duration,
    /// Requests a key at rest may send at once.
    pub burst: u32,
    /// Most keys remembered.
    pub max_keys: usize,
    /// Where it is counted.
    pub scope: LimitScope,
}

/// Where a rate limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LimitScope {
    /// On each gateway alone: N gateways admit N times the limit.
    #[default]
    Gateway,
    /// Across every live gateway: each admits its share (see the
    /// gateway's `cluster` module).
    Cluster,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's IP (the connection's peer).
    ClientIp,
    /// A request header's value (requests without it share one bucket).
    Header(HeaderName),
    /// The whole route: one bucket.
    Route,
    /// The consumer an authentication filter of the route identified
    /// (authentication runs first, whatever the list order).
    Consumer,
}

/// Checked header edits, applied remove, then set, then add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Removed.
    pub remove: Vec<HeaderName>,
    /// Replaced or created.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
}

/// Headers the gateway manages itself (framing, hop-by-hop, the host it
/// routes on): a filter editing them would break the connection or the
/// routing, so they are refused.
const MANAGED: [&str; 10] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "host",
    "x-request-id",
];

/// Settings each filter type takes; anything else given is refused.
fn takes(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "rate_limit" => Some(&["scope", "key", "rate", "per", "burst", "max_keys"]),
        "request_headers" | "response_headers" => Some(&["set", "add", "remove"]),
        "api_key" => Some(&["header", "query", "consumer_header", "consumers"]),
        "jwt" => Some(&[
            "algorithms",
            "secret",
            "secret_withheld",
            "public_key_pem",
            "jwks_url",
            "jwks_refresh",
            "issuer",
            "audience",
            "leeway",
            "claims_to_headers",
            "cookie",
        ]),
        "rewrite" => Some(&["path_prefix", "path_regex", "replacement", "host"]),
        "redirect" => Some(&["status", "scheme", "host", "path", "path_prefix"]),
        "body_limit" => Some(&["max"]),
        "compression" => Some(&["encodings", "min_size", "content_types", "level"]),
        "ip_filter" => Some(&["allow", "deny"]),
        "basic_auth" => Some(&["users", "realm", "consumer_header", "secret_withheld"]),
        "forward_auth" => Some(&["url", "timeout", "copy_headers", "forward_headers"]),
        "cors" => Some(&[
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "allow_credentials",
            "max_age",
        ]),
        "custom" => Some(&["name", "settings", "secret_withheld"]),
        _ => None,
    }
}

/// A refused filter: the field (`filters[0].rate`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// The field, from `filters`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Checks a route's filters. The route module turns a refusal into its
/// `Invalid` with the route's prefix (this module stays below the model).
pub fn compile_filters(specs: &[FilterSpec]) -> Result<Vec<Filter>, FilterError> {
    if specs.len() > MAX_FILTERS {
        return Err(FilterError {
            field: "filters".into(),
            reason: format!("at most {MAX_FILTERS} filters per route"),
        });
    }
    let filters = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            compile_one(spec).map_err(|(f, reason)| FilterError {
                field: format!("filters[{i}].{f}"),
                reason,
            })
        })
        .collect::<Result<Vec<Filter>, FilterError>>()?;
    check_single(specs)?;
    check_consumer_keys(&filters)?;
    Ok(filters)
}

/// Whether `filter` identifies a consumer.
/// A custom filter may (its gateway checks it when building the route).
fn authenticates(filter: &Filter) -> bool {
    matches!(
        filter,
        Filter::ApiKey(_) | Filter::Jwt(_) | Filter::BasicAuth(_) | Filter::Custom(_)
    )
}

/// A rate limit keyed by `consumer` needs an authentication filter on the
/// same route, or every request would share one bucket unnoticed.
fn check_consumer_keys(filters: &[Filter]) -> Result<(), FilterError> {
    if filters.iter().any(authenticates) {
        return Ok(());
    }
    match filters
        .iter()
        .position(|f| matches!(f, Filter::RateLimit(r) if r.key == LimitKey::Consumer))
    {
        Some(i) => Err(FilterError {
            field: format!("filters[{i}].key"),
            reason: "\"consumer\" needs an authentication filter (api_key, jwt, basic_auth) on the route"
                .into(),
        }),
        None => Ok(()),
    }
}

/// Filter types a route may list once: two rewrites of one path, two
/// redirects or two body limits would only leave a reader guessing which wins.
fn check_single(specs: &[FilterSpec]) -> Result<(), FilterError> {
    for (i, spec) in specs.iter().enumerate() {
        let single = matches!(
            spec.kind.as_str(),
            "rewrite" | "redirect" | "body_limit" | "compression" | "ip_filter" | "cors"
        );
        if single && specs[..i].iter().any(|s| s.kind == spec.kind) {
            return Err(FilterError {
                field: format!("filters[{i}].type"),
                reason: format!("a route takes one {} filter", spec.kind),
            });
        }
    }
    Ok(())
}

/// Checks the filters against their route: a prefix replacement needs a
/// `path_prefix` route (the only kind with a matched prefix), and a
/// rewrite's `path_prefix` does not combine with `strip_prefix` (which is
/// the same thing as `path_prefix = "/"`).
pub fn check_against_route(
    filters: &[Filter],
    prefix_route: bool,
    strip_prefix: bool,
) -> Result<(), FilterError> {
    for (i, f) in filters.iter().enumerate() {
        let prefix = matches!(
            f,
            Filter::Rewrite(Rewrite {
                path: Some(PathRewrite::Prefix(_)),
                ..
            }) | Filter::Redirect(Redirect {
                path: Some(RedirectPath::Prefix(_)),
                ..
            })
        );
        let refuse = |reason: &str| FilterError {
            field: format!("filters[{i}].path_prefix"),
            reason: reason.to_string(),
        };
        if prefix && !prefix_route {
            return Err(refuse(
                "replaces the matched prefix: only on a path_prefix route",
            ));
        }
        if prefix && strip_prefix && matches!(f, Filter::Rewrite(_)) {
            return Err(refuse(
                "does not combine with strip_prefix (which is path_prefix = \"/\")",
            ));
        }
    }
    Ok(())
}

type Refusal = (&'static str, String);

use transform::{compile_redirect, compile_rewrite};

fn compile_one(spec: &FilterSpec) -> Result<Filter, Refusal> {
    let Some(allowed) = takes(&spec.kind) else {
        return Err((
            "type",
            format!(
                "{:?} is not a filter type (rate_limit, request_headers, response_headers, api_key, jwt, rewrite, redirect, body_limit, compression, ip_filter, basic_auth, forward_auth, cors, custom)",
                spec.kind
            ),
        ));
    };
    for (name, given) in given_settings(spec) {
        if given && !allowed.contains(&name) {
            return Err((name, format!("is not a setting of {}", spec.kind)));
        }
    }
    match spec.kind.as_str() {
        "rate_limit" => compile_rate_limit(spec).map(Filter::RateLimit),
        "request_headers" => compile_edits(spec).map(Filter::RequestHeaders),
        "api_key" => compile_api_key(spec).map(Filter::ApiKey),
        "jwt" => compile_jwt(spec).map(Filter::Jwt),
        "response_headers" => compile_edits(spec).map(Filter::ResponseHeaders),
        "rewrite" => compile_rewrite(spec).map(Filter::Rewrite),
        "redirect" => compile_redirect(spec).map(Filter::Redirect),
        "compression" => compress::compile_compression(spec).map(Filter::Compression),
        "ip_filter" => access::compile_ip_filter(spec).map(Filter::IpFilter),
        "basic_auth" => auth::compile_basic_auth(spec).map(Filter::BasicAuth),
        "forward_auth" => auth::compile_forward_auth(spec).map(Filter::ForwardAuth),
        "cors" => access::compile_cors(spec).map(Filter::Cors),
        "custom" => compile_custom(spec).map(Filter::Custom),
        _ => match spec.max {
            Some(0) => Err(("max", "must be at least 1 byte".into())),
            Some(n) => Ok(Filter::BodyLimit(n)),
            None => Err(("max", "is required (bytes)".into())),
        },
    }
}

/// Every setting and whether it is given. A `Vec` rather than an array:
/// each new setting is one line here, with no length to keep in step.
fn given_settings(s: &FilterSpec) -> Vec<(&'static str, bool)> {
    vec![
        ("scope", s.scope.is_some()),
        ("key", s.key.is_some()),
        ("rate", s.rate.is_some()),
        ("per", s.per.is_some()),
        ("burst", s.burst.is_some()),
        ("max_keys", s.max_keys.is_some()),
        ("set", s.set.is_some()),
        ("add", s.add.is_some()),
        ("remove", s.remove.is_some()),
        ("header", s.header.is_some()),
        ("query", s.query.is_some()),
        ("consumer_header", s.consumer_header.is_some()),
        ("consumers", s.consumers.is_some()),
        ("algorithms", s.algorithms.is_some()),
        ("secret", s.secret.is_some()),
        ("secret_withheld", s.secret_withheld.is_some()),
        ("public_key_pem", s.public_key_pem.is_some()),
        ("jwks_url", s.jwks_url.is_some()),
        ("jwks_refresh", s.jwks_refresh.is_some()),
        ("issuer", s.issuer.is_some()),
        ("audience", s.audience.is_some()),
        ("leeway", s.leeway.is_some()),
        ("claims_to_headers", s.claims_to_headers.is_some()),
        ("cookie", s.cookie.is_some()),
        ("path_prefix", s.path_prefix.is_some()),
        ("path_regex", s.path_regex.is_some()),
        ("replacement", s.replacement.is_some()),
        ("host", s.host.is_some()),
        ("status", s.status.is_some()),
        ("scheme", s.scheme.is_some()),
        ("path", s.path.is_some()),
        ("max", s.max.is_some()),
        ("encodings", s.encodings.is_some()),
        ("min_size", s.min_size.is_some()),
        ("content_types", s.content_types.is_some()),
        ("level", s.level.is_some()),
        ("allow", s.allow.is_some()),
        ("deny", s.deny.is_some()),
        ("users", s.users.is_some()),
        ("realm", s.realm.is_some()),
        ("url", s.url.is_some()),
        ("timeout", s.timeout.is_some()),
        ("copy_headers", s.copy_headers.is_some()),
        ("forward_headers", s.forward_headers.is_some()),
        ("allow_origins", s.allow_origins.is_some()),
        ("allow_methods", s.allow_methods.is_some()),
        ("allow_headers", s.allow_headers.is_some()),
        ("expose_headers", s.expose_headers.is_some()),
        ("allow_credentials", s.allow_credentials.is_some()),
        ("max_age", s.max_age.is_some()),
        ("name", s.name.is_some()),
        ("settings", s.settings.is_some()),
    ]
}

/// A custom filter's name and the shape of its settings.
fn compile_custom(spec: &FilterSpec) -> Result<Custom, Refusal> {
    let name = spec.name.as_deref().ok_or((
        "name",
        "is required (the name the filter was registered under)".to_string(),
    ))?;
    let good = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > MAX_CUSTOM_NAME || !name.chars().all(good) {
        return Err((
            "name",
            format!("{name:?} is not a filter name (1 to {MAX_CUSTOM_NAME} of a-z, 0-9, _ and -)"),
        ));
    }
    let settings = match &spec.settings {
        None => serde_json::Value::Object(serde_json::Map::new()),
        Some(v @ serde_json::Value::Object(_)) => v.clone(),
        Some(_) => return Err(("settings", "must be a table".into())),
    };
    if serde_json::to_vec(&settings).map_or(usize::MAX, |v| v.len()) > MAX_CUSTOM_SETTINGS {
        return Err((
            "settings",
            format!("are larger than {MAX_CUSTOM_SETTINGS} bytes"),
        ));
    }
    Ok(Custom {
        name: name.to_string(),
        settings,
        withheld: spec.secret_withheld == Some(true),
    })
}

fn compile_rate_limit(spec: &FilterSpec) -> Result<RateLimit, Refusal> {
    let scope = match spec.scope.as_deref() {
        None | Some("gateway") => LimitScope::Gateway,
        Some("cluster") => LimitScope::Cluster,
        Some(other) => {
            return Err((
                "scope",
                format!("{other:?} is not a scope (gateway, cluster)"),
            ));
        }
    };
    let key = match spec.key.as_deref() {
        None | Some("client_ip") => LimitKey::ClientIp,
        Some("route") => LimitKey::Route,
        Some("consumer") => LimitKey::Consumer,
        Some(k) => match k.strip_prefix("header:") {
            Some(name) => LimitKey::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ("key", format!("{name:?} is not a header name")))?,
            ),
            None => {
                return Err((
                    "key",
                    format!("{k:?} is not a key (client_ip, header:NAME, route, consumer)"),
                ));
            }
        },
    };
    let in_range = |field: &'static str, n: u64| {
        if (1..=MAX_RATE).contains(&n) {
            Ok(n as u32)
        } else {
            Err((field, format!("{n} is not within 1..={MAX_RATE}")))
        }
    };
    let rate = in_range(
        "rate",
        spec.rate.ok_or(("rate", "is required".to_string()))?,
    )?;
    let burst = match spec.burst {
        Some(b) => in_range("burst", b)?,
        None => rate,
    };
    let per = match &spec.per {
        None => DEFAULT_PER,
        Some(text) => {
            let d = humantime::parse_duration(text)
                .map_err(|e| ("per", format!("{e}: expected a duration such as \"1s\"")))?;
            if d < Duration::from_millis(1) || d > MAX_PER {
                return Err(("per", format!("{text:?} is not within 1ms..=24h")));
            }
            d
        }
    };
    let max_keys = spec.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(1..=MAX_MAX_KEYS).contains(&max_keys) {
        return Err((
            "max_keys",
            format!("{max_keys} is not within 1..={MAX_MAX_KEYS}"),
        ));
    }
    Ok(RateLimit {
        key,
        rate,
        per,
        burst,
        max_keys: max_keys as usize,
        scope,
    })
}

fn compile_edits(spec: &FilterSpec) -> Result<HeaderEdits, Refusal> {
    let count = spec.set.as_ref().map_or(0, BTreeMap::len)
        + spec.add.as_ref().map_or(0, BTreeMap::len)
        + spec.remove.as_ref().map_or(0, Vec::len);
    if count == 0 {
        return Err(("set", "give at least one of set, add, remove".into()));
    }
    if count > MAX_HEADER_EDITS {
        return Err((
            "set",
            format!("at most {MAX_HEADER_EDITS} edits per filter"),
        ));
    }
    let mut edits = HeaderEdits::default();
    for (j, name) in spec.remove.iter().flatten().enumerate() {
        edits
            .remove
            .push(header_name(name).map_err(|r| ("remove", format!("[{j}] {r}")))?);
    }
    for (field, map, out) in [
        ("set", &spec.set, &mut edits.set),
        ("add", &spec.add, &mut edits.add),
    ] {
        for (name, value) in map.iter().flatten() {
            let n = header_name(name).map_err(|r| (field, r))?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                (
                    field,
                    format!("{value:?} (for {name:?}) is not a header value"),
                )
            })?;
            out.push((n, v));
        }
    }
    Ok(edits)
}

fn compile_api_key(spec: &FilterSpec) -> Result<ApiKey, Refusal> {
    let header = match (&spec.header, &spec.query) {
        (Some(h), _) => Some(header_name(h).map_err(|r| ("header", r))?),
        (None, Some(_)) => None,
        (None, None) => Some(HeaderName::from_static(DEFAULT_API_KEY_HEADER)),
    };
    if let Some(q) = &spec.query
        && (q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)))
    {
        return Err((
            "query",
            format!("{q:?} is not a parameter name (letters, digits, -_.~)"),
        ));
    }
    let consumer_header = compile_consumer_header(spec)?;
    if header.as_ref() == Some(&consumer_header) {
        return Err((
            "consumer_header",
            "must differ from the header carrying the key".into(),
        ));
    }
    let consumers = match &spec.consumers {
        None => None,
        Some(list) => Some(compile_consumer_list(list)?),
    };
    Ok(ApiKey {
        header,
        query: spec.query.clone(),
        consumer_header,
        consumers,
    })
}

fn compile_jwt(spec: &FilterSpec) -> Result<Jwt, Refusal> {
    let algorithms = compile_algorithms(spec.algorithms.as_deref())?;
    let keys = compile_jwt_keys(spec, &algorithms)?;
    let leeway = match &spec.leeway {
        None => DEFAULT_LEEWAY,
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| {
                (
                    "leeway",
                    format!("{e}: expected a duration such as \"30s\""),
                )
            })?;
            if d > MAX_LEEWAY {
                return Err(("leeway", format!("{text:?} is over 10m")));
            }
            d
        }
    };
    if let Some(aud) = &spec.audience
        && (aud.is_empty() || aud.iter().any(String::is_empty))
    {
        return Err(("audience", "give one or more non-empty values".into()));
    }
    if spec.issuer.as_deref() == Some("") {
        return Err(("issuer", "is empty".into()));
    }
    let mut claims_to_headers = Vec::new();
    for (claim, header) in spec.claims_to_headers.iter().flatten() {
        if claim.is_empty() {
            return Err(("claims_to_headers", "a claim name is empty".into()));
        }
        let name = header_name(header).map_err(|r| ("claims_to_headers", r))?;
        claims_to_headers.push((claim.clone(), name));
    }
    if let Some(c) = &spec.cookie
        && (c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(("cookie", format!("{c:?} is not a cookie name")));
    }
    Ok(Jwt {
        algorithms,
        keys,
        issuer: spec.issuer.clone(),
        audience: spec.audience.clone(),
        leeway,
        claims_to_headers,
        cookie: spec.cookie.clone(),
    })
}

fn compile_algorithms(list: Option<&[String]>) -> Result<Vec<String>, Refusal> {
    let list = list.ok_or(("algorithms", "is required".to_string()))?;
    if list.is_empty() {
        return Err(("algorithms", "name at least one algorithm".into()));
    }
    for a in list {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            return Err((
                "algorithms",
                format!("{a:?} is not one of {}", JWT_ALGORITHMS.join(", ")),
            ));
        }
    }
    Ok(list.to_vec())
}

fn compile_jwt_keys(spec: &FilterSpec, algorithms: &[String]) -> Result<JwtKeys, Refusal> {
    let hmac = algorithms.iter().filter(|a| a.starts_with("HS")).count();
    if spec.secret_withheld == Some(true) && spec.secret.is_none() {
        return Ok(JwtKeys::Withheld);
    }
    let given = [
        spec.secret.is_some(),
        spec.public_key_pem.is_some(),
        spec.jwks_url.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err((
            "secret",
            "give exactly one of secret, public_key_pem, jwks_url".into(),
        ));
    }
    if spec.jwks_refresh.is_some() && spec.jwks_url.is_none() {
        return Err(("jwks_refresh", "is only for jwks_url".into()));
    }
    if let Some(secret) = &spec.secret {
        if hmac != algorithms.len() {
            return Err(("algorithms", "a secret verifies HS256/384/512 only".into()));
        }
        if secret.len() < MIN_JWT_SECRET {
            return Err(("secret", format!("must be at least {MIN_JWT_SECRET} bytes")));
        }
        return Ok(JwtKeys::Secret(secret.clone()));
    }
    if hmac > 0 {
        return Err((
            "algorithms",
            "HS256/384/512 need a secret (a public key cannot verify them)".into(),
        ));
    }
    if let Some(pem) = &spec.public_key_pem {
        if algorithms.len() != 1 {
            return Err((
                "algorithms",
                "a public_key_pem verifies one algorithm: name exactly one".into(),
            ));
        }
        if !pem.contains("-----BEGIN PUBLIC KEY-----")
            && !pem.contains("-----BEGIN RSA PUBLIC KEY-----")
        {
            return Err(("public_key_pem", "holds no PEM public key".into()));
        }
        return Ok(JwtKeys::PublicKeyPem(pem.clone()));
    }
    let url = spec.jwks_url.clone().unwrap_or_default();
    let parsed: http::Uri = url
        .parse()
        .map_err(|_| ("jwks_url", format!("{url:?} is not a URL")))?;
    if !matches!(parsed.scheme_str(), Some("http") | Some("https")) || parsed.host().is_none() {
        return Err(("jwks_url", format!("{url:?} is not an http(s) URL")));
    }
    let refresh = match &spec.jwks_refresh {
        None => DEFAULT_JWKS_REFRESH,
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| {
                (
                    "jwks_refresh",
                    format!("{e}: expected a duration such as \"5m\""),
                )
            })?;
            if d < Duration::from_secs(1) || d > MAX_PER {
                return Err(("jwks_refresh", format!("{text:?} is not within 1s..=24h")));
            }
            d
        }
    };
    Ok(JwtKeys::Jwks { url, refresh })
}

fn compile_consumer_header(spec: &FilterSpec) -> Result<HeaderName, Refusal> {
    let name = spec
        .consumer_header
        .as_deref()
        .unwrap_or(DEFAULT_CONSUMER_HEADER);
    header_name(name).map_err(|r| ("consumer_header", r))
}

fn compile_consumer_list(list: &[String]) -> Result<Vec<String>, Refusal> {
    if list.is_empty() || list.len() > MAX_ALLOWED_CONSUMERS {
        return Err((
            "consumers",
            format!("give 1 to {MAX_ALLOWED_CONSUMERS} consumer names (omit it to allow all)"),
        ));
    }
    // The consumer name rule (the route name rule), checked here so this
    // module stays below `route`.
    for (j, name) in list.iter().enumerate() {
        let valid = (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid {
            return Err((
                "consumers",
                format!("[{j}] {name:?} is not a consumer name (1 to 128 of [A-Za-z0-9-_.:])"),
            ));
        }
    }
    Ok(list.to_vec())
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if MANAGED.contains(&n.as_str()) {
        return Err(format!(
            "{name:?} is managed by the gateway and cannot be edited"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> FilterSpec {
        serde_json::from_str(json).unwrap()
    }

    fn refusal(json: &str) -> String {
        let field = compile_filters(&[spec(json)]).unwrap_err().field;
        format!("route[2].{field}")
    }

    #[test]
    fn a_rate_limit_takes_its_defaults() {
        let f = compile_filters(&[spec(r#"{"type":"rate_limit","rate":10}"#)]).unwrap();
        assert_eq!(
            f,
            [Filter::RateLimit(RateLimit {
                key: LimitKey::ClientIp,
                rate: 10,
                per: DEFAULT_PER,
                burst: 10,
                max_keys: DEFAULT_MAX_KEYS as usize,
                scope: LimitScope::Gateway,
            })]
        );
    }

    #[test]
    fn an_api_key_takes_its_defaults_and_counts_consumers() {
        let f = compile_filters(&[
            spec(r#"{"type":"rate_limit","rate":1,"key":"consumer"}"#),
            spec(r#"{"type":"api_key"}"#),
        ])
        .unwrap();
        assert_eq!(
            f[1],
            Filter::ApiKey(ApiKey {
                header: Some(HeaderName::from_static("x-api-key")),
                query: None,
                consumer_header: HeaderName::from_static("x-consumer"),
                consumers: None,
            })
        );
        let f = compile_filters(&[spec(r#"{"type":"api_key","query":"key"}"#)]).unwrap();
        assert!(matches!(&f[0], Filter::ApiKey(a) if a.header.is_none()));
    }

    #[test]
    fn a_custom_filter_is_named_and_its_settings_kept_as_written() {
        let f = compile_filters(&[spec(
            r#"{"type":"custom","name":"tenant","settings":{"allowed":["a"]}}"#,
        )])
        .unwrap();
        let Filter::Custom(c) = &f[0] else {
            panic!("{f:?}")
        };
        assert_eq!((c.name.as_str(), c.withheld), ("tenant", false));
        assert_eq!(c.settings, serde_json::json!({"allowed": ["a"]}));
        let f = compile_filters(&[spec(r#"{"type":"custom","name":"t"}"#)]).unwrap();
        assert!(matches!(&f[0], Filter::Custom(c) if c.settings == serde_json::json!({})));
        // It may identify a consumer, so a consumer-keyed limit beside it is taken.
        compile_filters(&[
            spec(r#"{"type":"rate_limit","rate":1,"key":"consumer"}"#),
            spec(r#"{"type":"custom","name":"t"}"#),
        ])
        .unwrap();
        for (json, field) in [
            (r#"{"type":"custom"}"#, "name"),
            (r#"{"type":"custom","name":"Tenant"}"#, "name"),
            (r#"{"type":"custom","name":""}"#, "name"),
            (r#"{"type":"custom","name":"t","settings":[1]}"#, "settings"),
            (r#"{"type":"custom","name":"t","rate":1}"#, "rate"),
            (
                r#"{"type":"rate_limit","rate":1,"settings":{}}"#,
                "settings",
            ),
        ] {
            assert_eq!(
                refusal(json),
                format!("route[2].filters[0].{field}"),
                "{json}"
            );
        }
        let big = "x".repeat(MAX_CUSTOM_SETTINGS);
        let json = format!(r#"{{"type":"custom","name":"t","settings":{{"a":"{big}"}}}}"#);
        assert_eq!(refusal(&json), "route[2].filters[0].settings");
    }

    #[test]
    fn basic_auth_takes_bcrypt_hashes_and_withheld_copies() {
        let hash = "$2y$05$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        let f = compile_filters(&[spec(&format!(
            r#"{{"type":"basic_auth","users":{{"alice":"{hash}"}}}}"#
        ))])
        .unwrap();
        let Filter::BasicAuth(b) = &f[0] else {
            panic!("{f:?}")
        };
        assert_eq!(b.realm, DEFAULT_REALM);
        assert_eq!(b.consumer_header, DEFAULT_CONSUMER_HEADER);
        assert!(!format!("{b:?}").contains(hash), "Debug shows a hash");
        let withheld = compile_filters(&[spec(
            r#"{"type":"basic_auth","users":{"alice":""},"secret_withheld":true}"#,
        )])
        .unwrap();
        assert!(matches!(&withheld[0], Filter::BasicAuth(b) if b.withheld));
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, field) in [
            (
                r#"{"type":"rate_limit","rate":0}"#,
                "route[2].filters[0].rate",
            ),
            (r#"{"type":"rate_limit"}"#, "route[2].filters[0].rate"),
            (
                r#"{"type":"rate_limit","rate":5,"burst":0}"#,
                "route[2].filters[0].burst",
            ),
            (
                r#"{"type":"rate_limit","rate":5,"per":"soon"}"#,
                "route[2].filters[0].per",
            ),
            (
                r#"{"type":"rate_limit","rate":5,"key":"ip"}"#,
                "route[2].filters[0].key",
            ),
            (
                r#"{"type":"rate_limit","rate":5,"scope":"fleet"}"#,
                "route[2].filters[0].scope",
            ),
            (
                r#"{"type":"rate_limit","rate":5,"set":{}}"#,
                "route[2].filters[0].set",
            ),
            (r#"{"type":"rate_limited"}"#, "route[2].filters[0].type"),
            (r#"{"type":"request_headers"}"#, "route[2].filters[0].set"),
            (
                r#"{"type":"request_headers","set":{"bad name":"x"}}"#,
                "route[2].filters[0].set",
            ),
            (
                r#"{"type":"request_headers","remove":["content-length"]}"#,
                "route[2].filters[0].remove",
            ),
            (
                r#"{"type":"response_headers","add":{"x":"a\nb"}}"#,
                "route[2].filters[0].add",
            ),
            (
                r#"{"type":"response_headers","add":{"x":"1"},"rate":3}"#,
                "route[2].filters[0].rate",
            ),
            (
                r#"{"type":"api_key","header":"bad name"}"#,
                "route[2].filters[0].header",
            ),
            (
                r#"{"type":"api_key","query":"a&b"}"#,
                "route[2].filters[0].query",
            ),
            (
                r#"{"type":"api_key","consumer_header":"x-api-key"}"#,
                "route[2].filters[0].consumer_header",
            ),
            (
                r#"{"type":"api_key","consumer_header":"host"}"#,
                "route[2].filters[0].consumer_header",
            ),
            (
                r#"{"type":"api_key","consumers":[]}"#,
                "route[2].filters[0].consumers",
            ),
            (
                r#"{"type":"api_key","consumers":["a b"]}"#,
                "route[2].filters[0].consumers",
            ),
            (r#"{"type":"api_key","rate":1}"#, "route[2].filters[0].rate"),
            (
                r#"{"type":"rate_limit","rate":1,"key":"consumer"}"#,
                "route[2].filters[0].key",
            ),
            (
                r#"{"type":"jwt","secret":"0123456789abcdef0123456789abcdef"}"#,
                "route[2].filters[0].algorithms",
            ),
            (
                r#"{"type":"jwt","algorithms":["none"],"secret":"0123456789abcdef0123456789abcdef"}"#,
                "route[2].filters[0].algorithms",
            ),
            (
                r#"{"type":"jwt","algorithms":["HS256"],"secret":"short"}"#,
                "route[2].filters[0].secret",
            ),
            (
                r#"{"type":"jwt","algorithms":["HS256"]}"#,
                "route[2].filters[0].secret",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"secret":"0123456789abcdef0123456789abcdef"}"#,
                "route[2].filters[0].algorithms",
            ),
            (
                r#"{"type":"jwt","algorithms":["HS256"],"public_key_pem":"-----BEGIN PUBLIC KEY-----"}"#,
                "route[2].filters[0].algorithms",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"public_key_pem":"nope"}"#,
                "route[2].filters[0].public_key_pem",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"ftp://x/k"}"#,
                "route[2].filters[0].jwks_url",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"http://x/k","jwks_refresh":"0s"}"#,
                "route[2].filters[0].jwks_refresh",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"http://x/k","leeway":"1h"}"#,
                "route[2].filters[0].leeway",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"http://x/k","audience":[]}"#,
                "route[2].filters[0].audience",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"http://x/k","claims_to_headers":{"sub":"host"}}"#,
                "route[2].filters[0].claims_to_headers",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"http://x/k","cookie":"a b"}"#,
                "route[2].filters[0].cookie",
            ),
            (
                r#"{"type":"jwt","algorithms":["ES256"],"jwks_url":"http://x/k","header":"x"}"#,
                "route[2].filters[0].header",
            ),
            (r#"{"type":"ip_filter"}"#, "route[2].filters[0].allow"),
            (
                r#"{"type":"ip_filter","allow":["10.0.0.0/8","10.0.0.0/33"]}"#,
                "route[2].filters[0].allow",
            ),
            (
                r#"{"type":"ip_filter","deny":["::1","nope"]}"#,
                "route[2].filters[0].deny",
            ),
            (
                r#"{"type":"ip_filter","deny":[]}"#,
                "route[2].filters[0].deny",
            ),
            (
                r#"{"type":"ip_filter","allow":["::1"],"rate":1}"#,
                "route[2].filters[0].rate",
            ),
            (r#"{"type":"basic_auth"}"#, "route[2].filters[0].users"),
            (
                r#"{"type":"basic_auth","users":{"alice":"secret"}}"#,
                "route[2].filters[0].users",
            ),
            (
                r#"{"type":"basic_auth","users":{"alice":"$apr1$abc$defghijklmnopqrstuvwx1"}}"#,
                "route[2].filters[0].users",
            ),
            (
                r#"{"type":"basic_auth","users":{"a:b":"$2y$05$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234"}}"#,
                "route[2].filters[0].users",
            ),
            (
                r#"{"type":"basic_auth","users":{"a":"$2y$04$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234"}}"#,
                "route[2].filters[0].users",
            ),
            (
                r#"{"type":"basic_auth","users":{"a":"$2y$05$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234"},"realm":"a\"b"}"#,
                "route[2].filters[0].realm",
            ),
            (r#"{"type":"forward_auth"}"#, "route[2].filters[0].url"),
            (
                r#"{"type":"forward_auth","url":"ftp://a/b"}"#,
                "route[2].filters[0].url",
            ),
            (
                r#"{"type":"forward_auth","url":"http://a/b","timeout":"2m"}"#,
                "route[2].filters[0].timeout",
            ),
            (
                r#"{"type":"forward_auth","url":"http://a/b","copy_headers":["x-ok","host"]}"#,
                "route[2].filters[0].copy_headers",
            ),
            (
                r#"{"type":"forward_auth","url":"http://a/b","forward_headers":["bad name"]}"#,
                "route[2].filters[0].forward_headers",
            ),
            (r#"{"type":"cors"}"#, "route[2].filters[0].allow_origins"),
            (
                r#"{"type":"cors","allow_origins":["https://a.example/"]}"#,
                "route[2].filters[0].allow_origins",
            ),
            (
                r#"{"type":"cors","allow_origins":["https://a.example","*"]}"#,
                "route[2].filters[0].allow_origins",
            ),
            (
                r#"{"type":"cors","allow_origins":["*"],"allow_credentials":true}"#,
                "route[2].filters[0].allow_credentials",
            ),
            (
                r#"{"type":"cors","allow_origins":["https://a.example"],"allow_methods":["get"]}"#,
                "route[2].filters[0].allow_methods",
            ),
            (
                r#"{"type":"cors","allow_origins":["https://a.example"],"max_age":"2d"}"#,
                "route[2].filters[0].max_age",
            ),
        ] {
            assert_eq!(refusal(json), field, "{json}");
        }
    }
}
