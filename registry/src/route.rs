//! Routes: the one route model shared by the route file, the registry's
//! `/v1/routes` API and the gateway.
//!
//! A route travels in two forms:
//!
//! - [`RouteSpec`]: what people write, as TOML (`[[route]]` in a route file)
//!   or JSON (`PUT /v1/routes/{name}`). Unknown keys are refused. The registry
//!   stores routes in this form, so a `GET` gives back what was written.
//! - [`Route`]: the validated, compiled form the gateway matches with (regexes
//!   compiled, durations parsed, policies filled with their defaults).
//!
//! [`compile`] turns one into the other and is the only place route rules
//! live: the registry runs it before it accepts a route and the gateway runs
//! it again when it applies one, so both always agree on what is valid.
//! Every refusal names the field (`retry.attempts`, `headers[1].regex`).
//!
//! [`match_key`] gives two routes that match exactly the same requests the
//! same key; both the file loader and the registry refuse such pairs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderMap, HeaderName, Method};
use serde::{Deserialize, Serialize};

use crate::filter::{Filter, FilterSpec, check_against_route, compile_filters};
use crate::model::{Invalid, validate_address, validate_service_name};

/// Default time allowed for an upstream to answer with response headers.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted route timeout.
pub const MAX_ROUTE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default longest wait for an upstream's next response body bytes (nginx's
/// `proxy_read_timeout`).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default base backoff between retries.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Largest compiled size of one pattern: bounds what a route can cost the
/// gateway's memory, whoever wrote it.
pub const MAX_PATTERN_SIZE: usize = 256 * 1024;
/// Most header or query conditions on one route.
pub const MAX_CONDITIONS: usize = 32;
/// Most entries in a route's `targets`.
pub const MAX_TARGETS: usize = 16;
/// Largest weight of one target (weights are relative: 10000 gives a
/// share to a hundredth of a percent).
pub const MAX_TARGET_WEIGHT: u32 = 10_000;
/// Most tags or metadata keys in one subset.
pub const MAX_SUBSET_KEYS: usize = 32;
/// Default of `mirror.max_in_flight`.
pub const DEFAULT_MIRROR_IN_FLIGHT: u32 = 64;
/// Largest `mirror.max_in_flight`.
pub const MAX_MIRROR_IN_FLIGHT: u32 = 10_000;

// ---------------------------------------------------------------------------
// The written form.

/// A route as written in a route file or sent to `PUT /v1/routes/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name (in the API it comes from the URL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Hosts it answers for (`api.example.com`, `*.example.com`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefix, on segment boundaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regular expression the whole path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Methods it answers for; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
    /// Query-parameter conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatchSpec>,
    /// Higher wins when several routes of the same host level match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Target: a discovered service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Target: fixed `host:port` upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<String>>,
    /// Remove the matched prefix before forwarding.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_prefix: bool,
    /// Time to the upstream's response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Load-balancing algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// What `consistent_hash` hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Ramp new endpoints up over this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Overload limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Per-endpoint circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSpec>,
    /// Active health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Largest request body: a number of bytes, a size (`"10MiB"`, `"512k"`)
    /// or `"unlimited"`; absent: the gateway's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<SizeSpec>,
    /// Longest wait for the upstream's next response body bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    /// Translate gRPC-Web (`application/grpc-web`, `-web-text`) from
    /// browsers to gRPC for the upstream, and back.
    #[serde(default, skip_serializing_if = "is_false")]
    pub grpc_web: bool,
    /// Answer cleartext requests with a 308 to the same URL over HTTPS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub https_redirect: bool,
    /// TLS towards the route's `https` upstreams, beyond the gateway's
    /// defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsSpec>,
    /// Per-route filters (rate limits, header edits), run in the phases of
    /// the request path; see [`crate::filter`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterSpec>,
    /// Target: several services (or subsets of one), each with a weight;
    /// instead of `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<TargetSpec>>,
    /// Copy a sampled share of requests to another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
}

/// One entry of a route's `targets` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The discovered service.
    pub service: String,
    /// Relative share of requests, 0..=[`MAX_TARGET_WEIGHT`]; absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Only the service's instances that carry these tags and metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<SubsetSpec>,
}

/// A subset of a service's instances as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetSpec {
    /// Tags every instance of the subset has (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Metadata every instance of the subset has, each key with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `mirror` as written: where copies of requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The discovered service that gets the copies.
    pub service: String,
    /// Share of requests copied, 1..=100; absent: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Most copies outstanding at once on one gateway; absent:
    /// [`DEFAULT_MIRROR_IN_FLIGHT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// `[route.upstream_tls]` as written: TLS towards the route's upstreams.
/// File paths are read on each gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// PEM bundle of CAs trusted for this route's upstreams, in addition to
    /// the web PKI roots and `--upstream-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Client certificate for mTLS to upstreams: `CERT.pem:KEY.pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The name to verify (and send as SNI) instead of each instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Skip verifying the upstream's certificate. Explicit and logged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

/// A size as written: a number of bytes or a string with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// Bytes.
    Bytes(u64),
    /// `"10MiB"`, `"512k"`, `"unlimited"`.
    Text(String),
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One header or query-parameter condition: give `exact`, `regex` or
/// `present` (true: must be there, false: must be absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// Header or parameter name.
    pub name: String,
    /// The value, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Presence (true) or absence (false), whatever the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// `[route.retry]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Tries in all, 2..=5.
    pub attempts: u32,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    /// Time allowed for one try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Base of the jittered exponential backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Retries as a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<u32>,
    /// Retries always allowed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_min_per_second: Option<u32>,
    /// Also retry POST and PATCH.
    #[serde(default, skip_serializing_if = "is_false")]
    pub non_idempotent: bool,
}

/// `[route.limits]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Requests waiting for a new upstream connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
}

/// `[route.breaker]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Failures in a row that open the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure share over `window` that opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_percent: Option<u32>,
    /// Window of the failure rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Fewest requests before the rate counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// First open period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<String>,
    /// Longest open period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open: Option<String>,
    /// Probes let through while half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

/// `[route.health_check]` as written: an HTTP check (`path`) or a gRPC
/// one (`grpc_service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path requested (HTTP checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Service name asked about with `grpc.health.v1.Health/Check` (gRPC
    /// checks; `""` asks about the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Time allowed per check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Successes that bring an endpoint back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failures that take it down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Healthy statuses; empty: any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

impl RouteSpec {
    /// The route as a reader without access to key material sees it: a
    /// `jwt` filter's HMAC `secret` left out and a `basic_auth` filter's
    /// hashes emptied, a `custom` filter's settings left out, each marked withheld. A gateway
    /// given that copy builds a filter that refuses every token: the route
    /// fails closed, never falling through to a broader route nor verifying
    /// with a wrong key.
    pub fn without_secrets(mut self) -> RouteSpec {
        for filter in &mut self.filters {
            if filter.secret.take().is_some() {
                filter.secret_withheld = Some(true);
            }
            // basic_auth: the names stay, the bcrypt hashes go (a hash is
            // what an offline guesser needs).
            if let Some(users) = &mut filter.users {
                users.values_mut().for_each(String::clear);
                filter.secret_withheld = Some(true);
            }
            // custom: its settings are the filter's own, and may hold
            // anything (an upstream credential): none are shown.
            if filter.kind == "custom" && filter.settings.take().is_some() {
                filter.secret_withheld = Some(true);
            }
        }
        self
    }

    /// Parses a JSON route body, naming the field of any refusal (serde's own
    /// messages do not say where in a nested body the problem is).
    pub fn from_json(body: &[u8]) -> Result<RouteSpec, Invalid> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Invalid::malformed("body must be a JSON object"));
        }
        crate::model::reject_duplicate_keys(body)?;
        let de = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            if inner.is_syntax() || inner.is_eof() {
                return Invalid::malformed(format!("body is not valid JSON: {message}"));
            }
            let at = |field: &str| {
                if path == "." || path.is_empty() {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                }
            };
            if let Some(rest) = message.strip_prefix("unknown field `") {
                // The path already ends at the unknown key, except at the top.
                let field = rest.split('`').next().unwrap_or_default();
                let named = if path.ends_with(field) {
                    path
                } else {
                    at(field)
                };
                return Invalid::unknown_field(&named);
            }
            if path == "." {
                return Invalid::malformed(format!("body must be a route object: {message}"));
            }
            let message = message.split(" at line ").next().unwrap_or(&message);
            Invalid::field(&path, message)
        })
    }
}

// ---------------------------------------------------------------------------
// The compiled form.

/// How a route matches the request host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// One exact host name (lowercase, no port).
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`: any subdomain at
    /// any depth, not the apex.
    Wildcard(String),
}

impl fmt::Display for HostMatch {
    /// As written: `api.example.com` or `*.example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A prefix on segment boundaries: `/api` matches `/api` and `/api/x`,
    /// never `/apix`; `/api/` matches `/api/x` but not `/api`.
    Prefix(String),
    /// A regular expression over the whole path. The gateway files it under
    /// its literal prefix ([`Pattern::literal_prefix`]) so requests outside
    /// that prefix never run it.
    Regex(Pattern),
}

/// A compiled regular expression, anchored at both ends. Equal when written
/// the same.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
    literal_prefix: String,
}

impl Pattern {
    /// Compiles `source`, anchored to match a whole value.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(MAX_PATTERN_SIZE)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => {
                    format!("{source:?} is too large (over {MAX_PATTERN_SIZE} bytes compiled)")
                }
                other => format!("{source:?} is not a valid regular expression: {other}"),
            })?;
        Ok(Pattern {
            source: source.to_string(),
            literal_prefix: literal_prefix(source),
            regex,
        })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    /// The literal start every matching path has, cut back to its last `/`
    /// (`/users/[0-9]+` gives `/users/`, `(?i)/a` gives `/`): the segment
    /// prefix under which the gateway indexes a regex route.
    pub fn literal_prefix(&self) -> &str {
        &self.literal_prefix
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.source.hash(state);
    }
}

/// The literal text every match of a path pattern starts with, cut back to
/// the last `/`. Conservative: anything it cannot be sure of ends the literal.
fn literal_prefix(source: &str) -> String {
    if source.contains('|') {
        return "/".to_string();
    }
    let body = source.strip_prefix('^').unwrap_or(source);
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if "\\.+*?()[]{}^$|".contains(c) {
            break;
        }
        // A quantifier after this character makes it optional.
        if matches!(chars.get(i + 1), Some('?' | '*' | '{')) {
            break;
        }
        out.push(c);
    }
    match out.rfind('/') {
        Some(slash) => out[..=slash].to_string(),
        None => "/".to_string(),
    }
}

/// A condition on one value (a header or a query parameter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueRule {
    /// Equal to this, exactly.
    Exact(String),
    /// The whole value matches.
    Regex(Pattern),
    /// Present, whatever its value.
    Present,
    /// Absent.
    Absent,
}

impl ValueRule {
    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match self {
            ValueRule::Exact(want) => values.any(|v| v == want),
            ValueRule::Regex(p) => values.any(|v| p.is_match(v)),
            ValueRule::Present => values.next().is_some(),
            ValueRule::Absent => values.next().is_none(),
        }
    }

    /// A short description for operators (`= "1"`, `~ "^v[0-9]$"`, ...).
    pub fn describe(&self) -> String {
        match self {
            ValueRule::Exact(v) => format!("= {v:?}"),
            ValueRule::Regex(p) => format!("~ {:?}", p.source()),
            ValueRule::Present => "present".to_string(),
            ValueRule::Absent => "absent".to_string(),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Header name (lowercase).
    pub name: HeaderName,
    /// What its value must be.
    pub rule: ValueRule,
}

impl HeaderMatch {
    /// Whether `headers` satisfy the condition (any one value may match).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.rule.holds(
            headers
                .get_all(&self.name)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    }
}

/// A query-parameter condition. Values are compared percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// What its value must be.
    pub rule: ValueRule,
}

impl QueryMatch {
    /// Whether the raw query string satisfies the condition.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let decoded: Vec<String> = query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (!pair.is_empty() && percent_decode(name) == self.name)
                    .then(|| percent_decode(value))
            })
            .collect();
        self.rule.holds(decoded.iter().map(String::as_str))
    }
}

/// Form decoding of one query component: `%XX` and `+` for a space. Invalid
/// escapes stay as written.
pub fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Instances of a discovered service.
    Service(String),
    /// A fixed list of `host:port` upstreams.
    Static(Vec<Authority>),
    /// Several services or subsets (`targets`), each request going to one
    /// of them by weight. Never empty; at least one weight is above 0.
    Split(Vec<WeightedTarget>),
}

/// One target of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTarget {
    /// The discovered service.
    pub service: String,
    /// Relative share of requests (0: none, while the others have any).
    pub weight: u32,
    /// Which of the service's instances belong to the target.
    pub subset: Subset,
}

/// A subset of a service's instances: those with every tag listed and
/// every metadata key equal to the value given. Empty: all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Subset {
    /// Tags required, all of them.
    pub tags: Vec<String>,
    /// Metadata required, each key with exactly this value.
    pub metadata: BTreeMap<String, String>,
}

impl Subset {
    /// Whether an instance with `tags` and `meta` belongs to the subset.
    pub fn admits(&self, tags: &[String], meta: &BTreeMap<String, String>) -> bool {
        self.tags.iter().all(|t| tags.contains(t))
            && self.metadata.iter().all(|(k, v)| meta.get(k) == Some(v))
    }

    /// Whether every instance belongs (no condition).
    pub fn is_all(&self) -> bool {
        self.tags.is_empty() && self.metadata.is_empty()
    }
}

/// A route's request mirroring (`mirror`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The service that gets the copies.
    pub service: String,
    /// Share of requests copied, 1..=100.
    pub percent: u32,
    /// Most copies outstanding at once; more are dropped (and counted).
    pub max_in_flight: u32,
}

/// A route's load-balancing algorithm (`lb = "..."`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin (the default).
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests, weighted.
    LeastRequest,
    /// Power of two choices over latency EWMA x (in-flight + 1), weighted.
    PeakEwma,
    /// Weighted random.
    Random,
    /// A hash ring: one key always reaches the same endpoint while it is in.
    ConsistentHash(HashOn),
}

impl Balance {
    /// The name as written in `lb`.
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::PeakEwma => "peak_ewma",
            Balance::Random => "random",
            Balance::ConsistentHash(_) => "consistent_hash",
        }
    }
}

/// What `consistent_hash` hashes (`hash_on = "..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value (`header:NAME`).
    Header(HeaderName),
    /// A cookie's value (`cookie:NAME`).
    Cookie(String),
    /// The client's IP address (`client_ip`).
    ClientIp,
    /// The request path (`path`).
    Path,
}

/// What makes a failed try worth another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// The connection failed or was reset after the request was sent.
    pub reset: bool,
    /// The upstream answered 502.
    pub status_502: bool,
    /// The upstream answered 503.
    pub status_503: bool,
    /// The upstream answered 504.
    pub status_504: bool,
    /// The try exceeded the per-try timeout.
    pub timeout: bool,
    /// An HTTP/2 upstream refused the stream (it did not process it).
    pub refused_stream: bool,
    /// A gRPC upstream answered trailers-only with `grpc-status` CANCELLED (1).
    pub grpc_cancelled: bool,
    /// ... with DEADLINE_EXCEEDED (4).
    pub grpc_deadline_exceeded: bool,
    /// ... with RESOURCE_EXHAUSTED (8).
    pub grpc_resource_exhausted: bool,
    /// ... with UNAVAILABLE (14).
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// Whether an upstream HTTP status is a condition.
    pub fn retries_status(&self, status: u16) -> bool {
        match status {
            502 => self.status_502,
            503 => self.status_503,
            504 => self.status_504,
            _ => false,
        }
    }

    /// Whether any gRPC status is a condition.
    pub fn any_grpc(&self) -> bool {
        self.grpc_cancelled
            || self.grpc_deadline_exceeded
            || self.grpc_resource_exhausted
            || self.grpc_unavailable
    }

    /// Whether a gRPC status (`grpc-status` of a trailers-only answer) is a
    /// condition.
    pub fn retries_grpc(&self, code: u8) -> bool {
        match code {
            1 => self.grpc_cancelled,
            4 => self.grpc_deadline_exceeded,
            8 => self.grpc_resource_exhausted,
            14 => self.grpc_unavailable,
            _ => false,
        }
    }

    /// Only the conditions that are safe for any request: the gRPC
    /// statuses (the route named them for its gRPC calls) and a refused
    /// stream (never processed). What a gRPC call without
    /// `non_idempotent` may be retried on.
    pub fn grpc_safe(&self) -> RetryOn {
        RetryOn {
            refused_stream: self.refused_stream,
            grpc_cancelled: self.grpc_cancelled,
            grpc_deadline_exceeded: self.grpc_deadline_exceeded,
            grpc_resource_exhausted: self.grpc_resource_exhausted,
            grpc_unavailable: self.grpc_unavailable,
            ..RetryOn::default()
        }
    }
}

/// A route's retry policy (`[route.retry]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included (2..=5).
    pub attempts: u32,
    /// Conditions.
    pub on: RetryOn,
    /// Time allowed for one try, up to the response head.
    pub per_try_timeout: Option<Duration>,
    /// Base backoff; try `n` waits a random time up to base x 2^(n-1), capped.
    pub backoff: Duration,
    /// Retries allowed as a percentage of requests.
    pub budget_percent: u32,
    /// Retries always allowed per second, whatever the traffic.
    pub budget_min_per_second: u32,
    /// Also retry methods that are not idempotent (POST, PATCH).
    pub non_idempotent: bool,
}

impl RetryPolicy {
    /// Whether an upstream status is a retry condition.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on.retries_status(status)
    }
}

/// A route's limits (`[route.limits]`); `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Most requests in flight on the route at once.
    pub max_requests: Option<u32>,
    /// Most retries in flight on the route at once.
    pub max_retries: Option<u32>,
    /// Most requests waiting for a new upstream connection at once.
    pub max_pending: Option<u32>,
}

/// A route's per-endpoint circuit breaker (`[route.breaker]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure share (percent) over `window` that opens it, if set.
    pub failure_rate_percent: Option<u32>,
    /// The window of the failure rate.
    pub window: Duration,
    /// Fewest requests in the window before the rate counts.
    pub min_requests: u32,
    /// First open period; doubled each time it opens again, jittered, capped.
    pub open_for: Duration,
    /// Longest open period.
    pub max_open: Duration,
    /// Probe requests let through while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            failure_rate_percent: None,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(5),
            max_open: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

/// A route's active health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// Path requested, e.g. `/healthz` (for a gRPC check,
    /// `/grpc.health.v1.Health/Check`).
    pub path: String,
    /// A gRPC check: the service name sent in the `HealthCheckRequest`.
    pub grpc_service: Option<String>,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Time allowed for connecting and the response head.
    pub timeout: Duration,
    /// Consecutive successes that bring a down endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take an endpoint down.
    pub unhealthy_threshold: u32,
    /// Statuses that count as healthy; empty means any 2xx.
    pub expected_statuses: Vec<u16>,
}

impl HealthCheck {
    /// Whether a check's answer counts as healthy.
    pub fn healthy(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique name, used in logs, errors and metrics.
    pub name: Arc<str>,
    /// Hosts it answers for; empty means any host.
    pub hosts: Vec<HostMatch>,
    /// Path it answers for.
    pub path: PathMatch,
    /// Methods it answers for; empty means any method.
    pub methods: Vec<Method>,
    /// Header conditions, all required.
    pub headers: Vec<HeaderMatch>,
    /// Query conditions, all required.
    pub query: Vec<QueryMatch>,
    /// Higher wins among matching routes of one host level (default 0).
    pub priority: i32,
    /// Where it sends traffic.
    pub target: Target,
    /// Remove the matched prefix from the path before forwarding.
    pub strip_prefix: bool,
    /// Time allowed for the upstream to answer with headers.
    pub timeout: Duration,
    /// How an endpoint is chosen.
    pub lb: Balance,
    /// Retries beyond the connect-failure default, if any.
    pub retry: Option<RetryPolicy>,
    /// Overload limits.
    pub limits: Limits,
    /// Per-endpoint circuit breaker, if any.
    pub breaker: Option<BreakerPolicy>,
    /// Active health check of the route's endpoints, if any.
    pub health_check: Option<Arc<HealthCheck>>,
    /// Ramp a new or recovered endpoint's share up over this window.
    pub slow_start: Option<Duration>,
    /// Largest request body.
    pub max_request_body: BodyLimit,
    /// Longest wait for the upstream's next response body bytes.
    pub read_timeout: Duration,
    /// Translate gRPC-Web to gRPC and back.
    pub grpc_web: bool,
    /// Answer cleartext requests with a 308 to HTTPS.
    pub https_redirect: bool,
    /// TLS towards `https` upstreams beyond the gateway's defaults.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    /// Checked filters, in the order written; empty for most routes.
    pub filters: Vec<Filter>,
    /// Copies of a share of the requests to another service, if any.
    pub mirror: Option<Mirror>,
}

/// A route's upstream TLS settings, checked (the gateway loads the files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// Extra CA bundle file.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key files.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Name verified and sent as SNI instead of the instance's.
    pub server_name: Option<String>,
    /// Verification off (explicitly asked for).
    pub insecure_skip_verify: bool,
}

/// A route's request body limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyLimit {
    /// The gateway's default (`--max-request-body`).
    #[default]
    Default,
    /// At most this many bytes.
    Bytes(u64),
    /// No limit.
    Unlimited,
}

impl Route {
    /// A route to a discovered service with every policy at its default.
    pub fn to_service(name: &str, path: PathMatch, service: &str) -> Route {
        Route {
            name: name.into(),
            hosts: Vec::new(),
            path,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            priority: 0,
            target: Target::Service(service.to_string()),
            strip_prefix: false,
            timeout: DEFAULT_ROUTE_TIMEOUT,
            lb: Balance::default(),
            retry: None,
            limits: Limits::default(),
            breaker: None,
            health_check: None,
            slow_start: None,
            max_request_body: BodyLimit::Default,
            read_timeout: DEFAULT_READ_TIMEOUT,
            grpc_web: false,
            https_redirect: false,
            upstream_tls: None,
            filters: Vec::new(),
            mirror: None,
        }
    }

    /// How many conditions beyond host and path the route sets: among routes
    /// on the same path, more conditions is more specific.
    pub fn conditions(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }
}

// ---------------------------------------------------------------------------
// Validation.

/// Validates and compiles a route. Field names in refusals are prefixed with
/// `prefix` (`route[2].` for a route file, nothing for the API).
pub fn compile(spec: &RouteSpec, prefix: &str) -> Result<Route, Invalid> {
    let key = |field: &str| format!("{prefix}{field}");
    let bad = |field: &str, reason: String| Invalid::field(&key(field), reason);
    validate_route_name(&spec.name).map_err(|r| bad("name", r))?;

    let mut hosts = Vec::with_capacity(spec.hosts.len());
    for (j, host) in spec.hosts.iter().enumerate() {
        hosts.push(parse_host(host).map_err(|r| bad(&format!("hosts[{j}]"), r))?);
    }

    let given = [
        spec.path_prefix.is_some(),
        spec.path.is_some(),
        spec.path_regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(bad(
            "path",
            "give one of path (exact), path_prefix or path_regex".into(),
        ));
    }
    let path = if let Some(p) = &spec.path_prefix {
        PathMatch::Prefix(check_path(p).map_err(|r| bad("path_prefix", r))?)
    } else if let Some(p) = &spec.path {
        PathMatch::Exact(check_path(p).map_err(|r| bad("path", r))?)
    } else if let Some(p) = &spec.path_regex {
        let body = p.strip_prefix('^').unwrap_or(p);
        if !body.starts_with('/') && !body.starts_with("(?") {
            return Err(bad(
                "path_regex",
                format!("{p:?} must start with '/' (paths always do)"),
            ));
        }
        PathMatch::Regex(Pattern::new(p).map_err(|r| bad("path_regex", r))?)
    } else {
        PathMatch::Prefix("/".to_string())
    };
    if spec.strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
        return Err(bad(
            "strip_prefix",
            "only applies to a path_prefix route".into(),
        ));
    }

    let mut methods = Vec::with_capacity(spec.methods.len());
    for (j, m) in spec.methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
            bad(
                &format!("methods[{j}]"),
                format!("{m:?} is not an HTTP method"),
            )
        })?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }

    if spec.headers.len() > MAX_CONDITIONS {
        return Err(bad(
            "headers",
            format!("at most {MAX_CONDITIONS} conditions"),
        ));
    }
    let mut headers = Vec::with_capacity(spec.headers.len());
    for (j, h) in spec.headers.iter().enumerate() {
        let k = format!("headers[{j}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            bad(
                &format!("{k}.name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        let rule = value_rule(h).map_err(|(f, r)| bad(&format!("{k}.{f}"), r))?;
        headers.push(HeaderMatch { name, rule });
    }
    if spec.query.len() > MAX_CONDITIONS {
        return Err(bad("query", format!("at most {MAX_CONDITIONS} conditions")));
    }
    let mut query = Vec::with_capacity(spec.query.len());
    for (j, q) in spec.query.iter().enumerate() {
        let k = format!("query[{j}]");
        if q.name.is_empty() || q.name.contains(['&', '=', '#', ' ']) {
            return Err(bad(
                &format!("{k}.name"),
                format!("{:?} is not a query parameter name", q.name),
            ));
        }
        let rule = value_rule(q).map_err(|(f, r)| bad(&format!("{k}.{f}"), r))?;
        query.push(QueryMatch {
            name: q.name.clone(),
            rule,
        });
    }

    let target = match &spec.targets {
        Some(_) if spec.service.is_some() || spec.upstreams.is_some() => {
            return Err(bad(
                "targets",
                "give either targets or service (or upstreams), not both".into(),
            ));
        }
        Some(list) => {
            Target::Split(compile_targets(list).map_err(|(f, r)| bad(&format!("targets{f}"), r))?)
        }
        None => compile_target(spec).map_err(|(f, r)| bad(&f, r))?,
    };
    let mirror = spec
        .mirror
        .as_ref()
        .map(|m| compile_mirror(m).map_err(|(f, r)| bad(&format!("mirror.{f}"), r)))
        .transpose()?;

    let timeout = match &spec.timeout {
        None => DEFAULT_ROUTE_TIMEOUT,
        Some(t) => {
            let d = parse_duration(t).map_err(|r| bad("timeout", r))?;
            if d.is_zero() || d > MAX_ROUTE_TIMEOUT {
                return Err(bad("timeout", "must be more than 0 and at most 1h".into()));
            }
            d
        }
    };

    let hash_on = match spec.hash_on.as_deref() {
        None => None,
        Some("client_ip") => Some(HashOn::ClientIp),
        Some("path") => Some(HashOn::Path),
        Some(other) => {
            let parsed = if let Some(name) = other.strip_prefix("header:") {
                HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(HashOn::Header)
            } else if let Some(name) = other.strip_prefix("cookie:") {
                (!name.is_empty() && !name.contains([';', '=', ' ']))
                    .then(|| HashOn::Cookie(name.to_string()))
            } else {
                None
            };
            Some(parsed.ok_or_else(|| {
                bad(
                    "hash_on",
                    format!("{other:?}: expected \"header:NAME\", \"cookie:NAME\", \"client_ip\" or \"path\""),
                )
            })?)
        }
    };
    let lb = match spec.lb.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_request") => Balance::LeastRequest,
        Some("peak_ewma") => Balance::PeakEwma,
        Some("random") => Balance::Random,
        Some("consistent_hash") => Balance::ConsistentHash(hash_on.clone().ok_or_else(|| {
            bad(
                "hash_on",
                "consistent_hash needs hash_on (header:NAME, cookie:NAME, client_ip or path)"
                    .into(),
            )
        })?),
        Some(other) => {
            return Err(bad(
                "lb",
                format!(
                    "{other:?}: expected round_robin, least_request, peak_ewma, random or consistent_hash"
                ),
            ));
        }
    };
    if hash_on.is_some() && !matches!(lb, Balance::ConsistentHash(_)) {
        return Err(bad(
            "hash_on",
            "only applies with lb = \"consistent_hash\"".into(),
        ));
    }

    let retry = spec
        .retry
        .as_ref()
        .map(|r| compile_retry(r).map_err(|(f, r)| bad(&format!("retry.{f}"), r)))
        .transpose()?;

    let limits = match &spec.limits {
        None => Limits::default(),
        Some(l) => {
            if l.max_requests == Some(0) {
                return Err(bad("limits.max_requests", "must be at least 1".into()));
            }
            Limits {
                max_requests: l.max_requests,
                max_retries: l.max_retries,
                max_pending: l.max_pending,
            }
        }
    };

    let breaker = spec
        .breaker
        .as_ref()
        .map(|b| compile_breaker(b).map_err(|(f, r)| bad(&format!("breaker.{f}"), r)))
        .transpose()?;

    let health_check = spec
        .health_check
        .as_ref()
        .map(|h| {
            compile_health_check(h)
                .map(Arc::new)
                .map_err(|(f, r)| bad(&format!("health_check.{f}"), r))
        })
        .transpose()?;

    let slow_start = match spec.slow_start.as_deref() {
        None => None,
        Some(v) => match parse_duration(v).map_err(|r| bad("slow_start", r))? {
            d if d.is_zero() => None,
            d if d <= Duration::from_secs(3600) => Some(d),
            _ => return Err(bad("slow_start", "must be at most 1h".into())),
        },
    };

    let max_request_body = match &spec.max_request_body {
        None => BodyLimit::Default,
        Some(SizeSpec::Text(t)) if t == "unlimited" => BodyLimit::Unlimited,
        Some(SizeSpec::Bytes(n)) => {
            BodyLimit::Bytes(positive_size(*n).map_err(|r| bad("max_request_body", r))?)
        }
        Some(SizeSpec::Text(t)) => BodyLimit::Bytes(
            parse_size(t)
                .and_then(positive_size)
                .map_err(|r| bad("max_request_body", r))?,
        ),
    };
    let read_timeout = positive_duration("read_timeout", &spec.read_timeout, DEFAULT_READ_TIMEOUT)
        .map_err(|(f, r)| bad(f, r))?;
    if read_timeout > MAX_ROUTE_TIMEOUT {
        return Err(bad("read_timeout", "must be at most 1h".into()));
    }

    let filters = compile_filters(&spec.filters)
        .and_then(|f| {
            let prefix_route = matches!(path, PathMatch::Prefix(_));
            check_against_route(&f, prefix_route, spec.strip_prefix).map(|()| f)
        })
        .map_err(|e| bad(&e.field, e.reason))?;
    Ok(Route {
        name: spec.name.as_str().into(),
        hosts,
        path,
        methods,
        headers,
        query,
        priority: spec.priority.unwrap_or(0),
        target,
        strip_prefix: spec.strip_prefix,
        timeout,
        lb,
        retry,
        limits,
        breaker,
        health_check,
        slow_start,
        max_request_body,
        read_timeout,
        grpc_web: spec.grpc_web,
        https_redirect: spec.https_redirect,
        upstream_tls: match &spec.upstream_tls {
            Some(t) => Some(Arc::new(
                compile_upstream_tls(t).map_err(|(f, r)| bad(f, r))?,
            )),
            None => None,
        },
        filters,
        mirror,
    })
}

/// The target of a route without `targets`: `service` or `upstreams`.
fn compile_target(spec: &RouteSpec) -> Result<Target, (String, String)> {
    let refuse = |f: &str, r: String| Err((f.to_string(), r));
    match (&spec.service, &spec.upstreams) {
        (Some(_), Some(_)) => refuse(
            "service",
            "give either service or upstreams, not both".into(),
        ),
        (None, None) => refuse(
            "service",
            "a route needs a target: service = \"name\", upstreams = [\"host:port\"] or targets = [{service = \"name\", weight = N}]".into(),
        ),
        (Some(s), None) => {
            validate_service_name(s).map_err(|e| ("service".to_string(), strip_field(e)))?;
            Ok(Target::Service(s.clone()))
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return refuse("upstreams", "must list at least one host:port".into());
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, u) in list.iter().enumerate() {
                out.push(parse_upstream(u).map_err(|r| (format!("upstreams[{j}]"), r))?);
            }
            Ok(Target::Static(out))
        }
    }
}

/// Checks `targets`: 1..=16 entries, weights within bounds and not all 0,
/// each service a valid name, each subset within bounds, no two entries
/// alike. Fields are named from `[j]` on (the caller adds `targets`).
fn compile_targets(list: &[TargetSpec]) -> Result<Vec<WeightedTarget>, (String, String)> {
    if list.is_empty() || list.len() > MAX_TARGETS {
        return Err((
            String::new(),
            format!("must list 1 to {MAX_TARGETS} targets"),
        ));
    }
    let mut out: Vec<WeightedTarget> = Vec::with_capacity(list.len());
    for (j, t) in list.iter().enumerate() {
        let at = |f: &str| format!("[{j}].{f}");
        validate_service_name(&t.service).map_err(|e| (at("service"), strip_field(e)))?;
        let weight = t.weight.unwrap_or(1);
        if weight > MAX_TARGET_WEIGHT {
            return Err((at("weight"), format!("must be 0 to {MAX_TARGET_WEIGHT}")));
        }
        let subset = match &t.subset {
            None => Subset::default(),
            Some(s) => compile_subset(s).map_err(|(f, r)| (at(&format!("subset.{f}")), r))?,
        };
        if let Some(i) = out
            .iter()
            .position(|o| o.service == t.service && o.subset == subset)
        {
            return Err((
                format!("[{j}]"),
                format!("the same service and subset as targets[{i}]"),
            ));
        }
        out.push(WeightedTarget {
            service: t.service.clone(),
            weight,
            subset,
        });
    }
    if out.iter().all(|t| t.weight == 0) {
        return Err((
            String::new(),
            "at least one target needs a weight above 0".into(),
        ));
    }
    Ok(out)
}

/// Checks a subset: at most [`MAX_SUBSET_KEYS`] tags and keys, none empty.
fn compile_subset(spec: &SubsetSpec) -> Result<Subset, (String, String)> {
    if spec.tags.len() > MAX_SUBSET_KEYS {
        return Err(("tags".into(), format!("at most {MAX_SUBSET_KEYS} tags")));
    }
    if spec.metadata.len() > MAX_SUBSET_KEYS {
        return Err(("metadata".into(), format!("at most {MAX_SUBSET_KEYS} keys")));
    }
    if let Some(j) = spec.tags.iter().position(String::is_empty) {
        return Err((format!("tags[{j}]"), "must not be empty".into()));
    }
    if spec.metadata.contains_key("") {
        return Err(("metadata".into(), "keys must not be empty".into()));
    }
    Ok(Subset {
        tags: spec.tags.clone(),
        metadata: spec.metadata.clone(),
    })
}

/// Checks `mirror`: a valid service name, `percent` 1..=100,
/// `max_in_flight` 1..=[`MAX_MIRROR_IN_FLIGHT`].
fn compile_mirror(spec: &MirrorSpec) -> Result<Mirror, (&'static str, String)> {
    validate_service_name(&spec.service).map_err(|e| ("service", strip_field(e)))?;
    let percent = spec.percent.unwrap_or(100);
    if !(1..=100).contains(&percent) {
        return Err(("percent", "must be 1 to 100".into()));
    }
    let max_in_flight = spec.max_in_flight.unwrap_or(DEFAULT_MIRROR_IN_FLIGHT);
    if !(1..=MAX_MIRROR_IN_FLIGHT).contains(&max_in_flight) {
        return Err((
            "max_in_flight",
            format!("must be 1 to {MAX_MIRROR_IN_FLIGHT}"),
        ));
    }
    Ok(Mirror {
        service: spec.service.clone(),
        percent,
        max_in_flight,
    })
}

/// Checks `[route.upstream_tls]`: paths given are not empty, a client
/// certificate is `CERT:KEY`, a server name is a DNS name or an IP.
fn compile_upstream_tls(spec: &UpstreamTlsSpec) -> Result<UpstreamTls, (&'static str, String)> {
    let ca = match spec.ca.as_deref() {
        Some("") => return Err(("upstream_tls.ca", "must be a file path".into())),
        other => other.map(std::path::PathBuf::from),
    };
    let client_cert = match spec.client_cert.as_deref() {
        None => None,
        Some(pair) => match pair.split_once(':') {
            Some((c, k)) if !c.is_empty() && !k.is_empty() => Some((c.into(), k.into())),
            _ => {
                return Err((
                    "upstream_tls.client_cert",
                    "expected CERT.pem:KEY.pem".into(),
                ));
            }
        },
    };
    if let Some(name) = &spec.server_name
        && crate::model::validate_address(name).is_err()
    {
        return Err((
            "upstream_tls.server_name",
            "must be a DNS name or an IP address".into(),
        ));
    }
    Ok(UpstreamTls {
        ca,
        client_cert,
        server_name: spec.server_name.clone(),
        insecure_skip_verify: spec.insecure_skip_verify,
    })
}

fn positive_size(n: u64) -> Result<u64, String> {
    if n == 0 {
        return Err("must be more than 0 (or \"unlimited\")".into());
    }
    Ok(n)
}

/// Parses a size: a number with an optional unit. `k`, `m`, `g` (as nginx
/// writes them) and `KiB`, `MiB`, `GiB` are powers of 1024; `kB`, `KB`,
/// `MB`, `GB` powers of 1000; `B` or none, bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 1048576, \"512k\" or \"10MiB\")"))?;
    let scale: u64 = match unit.trim() {
        "" | "b" | "B" => 1,
        "k" | "K" | "KiB" | "kib" => 1 << 10,
        "m" | "M" | "MiB" | "mib" => 1 << 20,
        "g" | "G" | "GiB" | "gib" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use k, m, g, KiB, MiB, GiB, kB, MB or GB)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A key equal for two routes exactly when they match the same requests
/// (hosts, path, methods, headers and query, in any order; priority aside,
/// since of two such routes one would never be reached).
pub fn match_key(route: &Route) -> String {
    let mut hosts: Vec<String> = route.hosts.iter().map(HostMatch::to_string).collect();
    hosts.sort();
    let path = match &route.path {
        PathMatch::Exact(p) => format!("={p}"),
        PathMatch::Prefix(p) => format!("^{p}"),
        PathMatch::Regex(p) => format!("~{}", p.source()),
    };
    let mut methods: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
    methods.sort_unstable();
    let mut headers: Vec<String> = route
        .headers
        .iter()
        .map(|h| format!("{}{}", h.name, h.rule.describe()))
        .collect();
    headers.sort();
    let mut query: Vec<String> = route
        .query
        .iter()
        .map(|q| format!("{}{}", q.name, q.rule.describe()))
        .collect();
    query.sort();
    format!("{hosts:?} {path} {methods:?} {headers:?} {query:?}")
}

/// The field that best names where a route's match is written, for conflict
/// errors.
pub fn match_field(spec: &RouteSpec) -> &'static str {
    if spec.path_prefix.is_some() {
        "path_prefix"
    } else if spec.path.is_some() {
        "path"
    } else if spec.path_regex.is_some() {
        "path_regex"
    } else {
        "hosts"
    }
}

/// Checks a set of routes has unique names and no two identical matches;
/// `label` names route `i` in the error (`route[2]`, `"api"`).
pub fn check_unique<'a>(
    routes: impl IntoIterator<Item = (String, &'a Route, &'a RouteSpec)>,
) -> Result<(), Invalid> {
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut matches: BTreeMap<String, String> = BTreeMap::new();
    for (label, route, spec) in routes {
        if let Some(first) = names.insert(&route.name, label.clone()) {
            return Err(Invalid::field(
                &format!("{label}.name"),
                format!("{:?} is already used by {first}", &*route.name),
            ));
        }
        if let Some(first) = matches.insert(match_key(route), label.clone()) {
            return Err(Invalid {
                code: "route_conflict",
                ..Invalid::field(
                    &format!("{label}.{}", match_field(spec)),
                    format!("matches exactly the same requests as {first}"),
                )
            });
        }
    }
    Ok(())
}

fn value_rule(spec: &ValueMatchSpec) -> Result<ValueRule, (&'static str, String)> {
    match (&spec.exact, &spec.regex, spec.present) {
        (Some(v), None, None) => Ok(ValueRule::Exact(v.clone())),
        (None, Some(r), None) => Pattern::new(r)
            .map(ValueRule::Regex)
            .map_err(|e| ("regex", e)),
        (None, None, Some(true)) => Ok(ValueRule::Present),
        (None, None, Some(false)) => Ok(ValueRule::Absent),
        (None, None, None) => Err(("exact", "give one of exact, regex or present".to_string())),
        _ => Err((
            "exact",
            "give only one of exact, regex or present".to_string(),
        )),
    }
}

/// The retry conditions, as `[route.retry] on` names them.
const RETRY_CONDITIONS: &str = "reset, refused_stream, 502, 503, 504, timeout, \
     and for gRPC calls unavailable, resource_exhausted, cancelled, deadline_exceeded";

fn compile_retry(raw: &RetrySpec) -> Result<RetryPolicy, (&'static str, String)> {
    if !(2..=5).contains(&raw.attempts) {
        return Err((
            "attempts",
            "must be 2 to 5 (tries in all, the first included)".into(),
        ));
    }
    let mut on = RetryOn::default();
    if raw.on.is_empty() {
        return Err((
            "on",
            format!("name at least one condition: {RETRY_CONDITIONS}"),
        ));
    }
    for c in &raw.on {
        match c.as_str() {
            "reset" => on.reset = true,
            "502" => on.status_502 = true,
            "503" => on.status_503 = true,
            "504" => on.status_504 = true,
            "timeout" => on.timeout = true,
            "refused_stream" => on.refused_stream = true,
            "cancelled" => on.grpc_cancelled = true,
            "deadline_exceeded" => on.grpc_deadline_exceeded = true,
            "resource_exhausted" => on.grpc_resource_exhausted = true,
            "unavailable" => on.grpc_unavailable = true,
            other => {
                return Err((
                    "on",
                    format!("{other:?}: expected one of {RETRY_CONDITIONS}"),
                ));
            }
        }
    }
    let per_try_timeout = raw
        .per_try_timeout
        .as_deref()
        .map(|v| parse_duration(v).map_err(|r| ("per_try_timeout", r)))
        .transpose()?;
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        return Err(("per_try_timeout", "must be more than 0".into()));
    }
    if on.timeout && per_try_timeout.is_none() {
        return Err((
            "per_try_timeout",
            "the timeout condition needs a per_try_timeout".into(),
        ));
    }
    let backoff = match raw.backoff.as_deref() {
        Some(v) => parse_duration(v).map_err(|r| ("backoff", r))?,
        None => DEFAULT_BACKOFF,
    };
    let budget_percent = raw.budget_percent.unwrap_or(20);
    if budget_percent > 100 {
        return Err(("budget_percent", "must be 0 to 100".into()));
    }
    Ok(RetryPolicy {
        attempts: raw.attempts,
        on,
        per_try_timeout,
        backoff,
        budget_percent,
        budget_min_per_second: raw.budget_min_per_second.unwrap_or(10),
        non_idempotent: raw.non_idempotent,
    })
}

fn positive_duration(
    field: &'static str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, (&'static str, String)> {
    match v {
        None => Ok(default),
        Some(v) => match parse_duration(v) {
            Ok(x) if !x.is_zero() => Ok(x),
            Ok(_) => Err((field, "must be more than 0".into())),
            Err(r) => Err((field, r)),
        },
    }
}

fn compile_breaker(raw: &BreakerSpec) -> Result<BreakerPolicy, (&'static str, String)> {
    let d = BreakerPolicy::default();
    let policy = BreakerPolicy {
        consecutive_failures: raw.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate_percent: raw.failure_rate_percent,
        window: positive_duration("window", &raw.window, d.window)?,
        min_requests: raw.min_requests.unwrap_or(d.min_requests).max(1),
        open_for: positive_duration("open_for", &raw.open_for, d.open_for)?,
        max_open: positive_duration("max_open", &raw.max_open, d.max_open)?,
        half_open_probes: raw.half_open_probes.unwrap_or(d.half_open_probes),
    };
    if policy
        .failure_rate_percent
        .is_some_and(|p| p == 0 || p > 100)
    {
        return Err(("failure_rate_percent", "must be 1 to 100".into()));
    }
    if policy.consecutive_failures == 0 && policy.failure_rate_percent.is_none() {
        return Err((
            "consecutive_failures",
            "0 needs failure_rate_percent, or the breaker could never open".into(),
        ));
    }
    if policy.half_open_probes == 0 {
        return Err(("half_open_probes", "must be at least 1".into()));
    }
    if policy.max_open < policy.open_for {
        return Err(("max_open", "must be at least open_for".into()));
    }
    Ok(policy)
}

fn compile_health_check(h: &HealthCheckSpec) -> Result<HealthCheck, (&'static str, String)> {
    let (path, grpc_service) = match (&h.path, &h.grpc_service) {
        (Some(p), None) => (check_path(p).map_err(|r| ("path", r))?, None),
        (None, Some(service)) => {
            if !h.expected_statuses.is_empty() {
                return Err((
                    "expected_statuses",
                    "a gRPC check is healthy when the service answers SERVING".into(),
                ));
            }
            (
                GRPC_HEALTH_PATH.to_string(),
                Some(check_grpc_service(service).map_err(|r| ("grpc_service", r))?),
            )
        }
        (Some(_), Some(_)) => {
            return Err((
                "path",
                "give path (an HTTP check) or grpc_service (a gRPC check), not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                "path",
                "give path (an HTTP check) or grpc_service (a gRPC check)".into(),
            ));
        }
    };
    let interval = positive_duration("interval", &h.interval, Duration::from_secs(5))?;
    let timeout = positive_duration("timeout", &h.timeout, Duration::from_secs(1))?;
    if timeout > interval {
        return Err(("timeout", "must not exceed interval".into()));
    }
    if let Some(bad) = h
        .expected_statuses
        .iter()
        .find(|s| !(100..=599).contains(*s))
    {
        return Err(("expected_statuses", format!("{bad} is not an HTTP status")));
    }
    let threshold = |field: &'static str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
        0 => Err((field, "must be at least 1".to_string())),
        n => Ok(n),
    };
    Ok(HealthCheck {
        path,
        grpc_service,
        interval,
        timeout,
        healthy_threshold: threshold("healthy_threshold", h.healthy_threshold, 2)?,
        unhealthy_threshold: threshold("unhealthy_threshold", h.unhealthy_threshold, 3)?,
        expected_statuses: h.expected_statuses.clone(),
    })
}

/// The method a gRPC health check calls.
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// A gRPC service name as a health check asks about it: empty (the server
/// as a whole) or up to 200 printable ASCII characters, as protobuf full
/// names (`package.Service`) are.
pub fn check_grpc_service(service: &str) -> Result<String, String> {
    if service.len() > 200 || !service.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{service:?} must be empty or up to 200 printable ASCII characters (a name like \"pkg.Service\")"
        ));
    }
    Ok(service.to_string())
}

/// A route name: 1 to 128 of `[A-Za-z0-9-_.:]`.
pub fn validate_route_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err("must be 1 to 128 characters of [A-Za-z0-9-_.:]".into());
    }
    Ok(())
}

fn strip_field(e: Invalid) -> String {
    match &e.field {
        Some(f) => e
            .reason
            .strip_prefix(&format!("{f}: "))
            .unwrap_or(&e.reason)
            .to_string(),
        None => e.reason,
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{e}: expected a duration such as \"5s\""))
}

fn check_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
    {
        return Err(format!("{p:?} must not contain spaces, '?' or '#'"));
    }
    Ok(p.to_string())
}

fn parse_host(host: &str) -> Result<HostMatch, String> {
    let lower = host.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if name.contains('*') {
        return Err(format!("{host:?}: '*' is only allowed as a leading \"*.\""));
    }
    if name.contains(':') {
        return Err(format!("{host:?}: give the host without a port"));
    }
    validate_address(name).map_err(|_| format!("{host:?} is not a valid host name"))?;
    Ok(if wild {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn parse_upstream(u: &str) -> Result<Authority, String> {
    let authority: Authority = u.parse().map_err(|_| format!("{u:?} is not host:port"))?;
    if authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!("{u:?} needs a port in 1..=65535"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    validate_address(host).map_err(|_| format!("{u:?}: bad host"))?;
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RouteSpec {
        RouteSpec::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_reader_without_keys_sees_no_basic_auth_hash_and_the_copy_fails_closed() {
        let hash = "$2y$05$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234";
        let full = spec(&format!(
            r#"{{"name":"r","upstreams":["127.0.0.1:1"],"filters":[{{"type":"basic_auth","users":{{"alice":"{hash}"}}}}]}}"#
        ));
        let seen = full.without_secrets();
        let text = serde_json::to_string(&seen).unwrap();
        assert!(!text.contains(hash), "{text}");
        let route = compile(&seen, "").unwrap();
        assert!(
            matches!(&route.filters[0], crate::filter::Filter::BasicAuth(b) if b.withheld),
            "{:?}",
            route.filters
        );
    }

    #[test]
    fn a_reader_without_keys_sees_no_custom_filter_settings_and_the_copy_fails_closed() {
        let full = spec(
            r#"{"name":"r","upstreams":["127.0.0.1:1"],"filters":[{"type":"custom","name":"audit","settings":{"token":"s3cret"}}]}"#,
        );
        let seen = full.without_secrets();
        let text = serde_json::to_string(&seen).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let route = compile(&seen, "").unwrap();
        assert!(
            matches!(&route.filters[0], crate::filter::Filter::Custom(c) if c.withheld),
            "{:?}",
            route.filters
        );
    }

    fn refusal(json: &str) -> Invalid {
        RouteSpec::from_json(json.as_bytes())
            .and_then(|s| compile(&s, ""))
            .unwrap_err()
    }

    #[test]
    fn literal_prefixes_are_conservative() {
        for (pattern, prefix) in [
            ("/users/[0-9]+", "/users/"),
            ("^/users/[0-9]+$", "/users/"),
            ("/api/v[12]/x", "/api/"),
            ("/files/.*\\.png", "/files/"),
            ("/a/b?", "/a/"),
            ("/a/bc", "/a/"),
            ("/a|/b", "/"),
            ("(?i)/admin", "/"),
            ("/x*", "/"),
        ] {
            assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
        }
    }

    #[test]
    fn patterns_match_whole_values() {
        let p = Pattern::new("/users/[0-9]+").unwrap();
        assert!(p.is_match("/users/42"));
        assert!(!p.is_match("/users/42/x"));
        assert!(!p.is_match("/x/users/42"));
    }

    #[test]
    fn query_conditions_decode_values() {
        let q = QueryMatch {
            name: "q".into(),
            rule: ValueRule::Exact("a b".into()),
        };
        assert!(q.matches(Some("x=1&q=a%20b")));
        assert!(q.matches(Some("q=a+b")));
        assert!(!q.matches(Some("q=ab")));
        assert!(!q.matches(None));
        let absent = QueryMatch {
            name: "debug".into(),
            rule: ValueRule::Absent,
        };
        assert!(absent.matches(Some("x=1")));
        assert!(!absent.matches(Some("debug")));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn json_refusals_name_the_field() {
        let cases: [(&str, &str, &str); 9] = [
            (
                r#"{"name":"a","service":"s","colour":1}"#,
                "colour",
                "unknown_field",
            ),
            (
                r#"{"name":"a","service":"s","retry":{"attempts":3,"onn":[]}}"#,
                "retry.onn",
                "unknown_field",
            ),
            (
                r#"{"name":"a","service":"s","retry":{"attempts":9,"on":["reset"]}}"#,
                "retry.attempts",
                "invalid_value",
            ),
            (
                r#"{"name":"a","service":"s","path_regex":"/(x"}"#,
                "path_regex",
                "invalid_value",
            ),
            (
                r#"{"name":"a","service":"s","headers":[{"name":"x","regex":"(("}]}"#,
                "headers[0].regex",
                "invalid_value",
            ),
            (
                r#"{"name":"a","service":"s","headers":[{"name":"x"}]}"#,
                "headers[0].exact",
                "invalid_value",
            ),
            (
                r#"{"name":"a","service":"s","timeout":5}"#,
                "timeout",
                "invalid_value",
            ),
            (
                r#"{"name":"a","service":"s","path":"/a","path_regex":"/b"}"#,
                "path",
                "invalid_value",
            ),
            (
                r#"{"name":"a","service":"s","priority":"high"}"#,
                "priority",
                "invalid_value",
            ),
        ];
        for (body, field, code) in cases {
            let e = refusal(body);
            assert_eq!(e.field.as_deref(), Some(field), "{body}: {e:?}");
            assert_eq!(e.code, code, "{body}: {e:?}");
        }
        assert_eq!(refusal("{").code, "malformed_body");
        assert_eq!(refusal("[1]").code, "malformed_body");
    }

    #[test]
    fn grpc_options_compile_and_refusals_name_the_field() {
        let r = compile(
            &spec(
                r#"{"name":"g","service":"s","grpc_web":true,
                    "retry":{"attempts":2,"on":["unavailable","resource_exhausted","cancelled","deadline_exceeded"]},
                    "health_check":{"grpc_service":"pkg.Svc"}}"#,
            ),
            "",
        )
        .unwrap();
        assert!(r.grpc_web);
        let on = r.retry.unwrap().on;
        assert!(on.any_grpc() && !on.status_503);
        assert!(on.retries_grpc(14) && on.retries_grpc(8) && on.retries_grpc(1));
        assert!(on.retries_grpc(4) && !on.retries_grpc(13));
        let check = r.health_check.unwrap();
        assert_eq!(check.path, GRPC_HEALTH_PATH);
        assert_eq!(check.grpc_service.as_deref(), Some("pkg.Svc"));
        for (body, field) in [
            (
                r#"{"name":"g","service":"s","health_check":{"path":"/h","grpc_service":"x"}}"#,
                "health_check.path",
            ),
            (
                r#"{"name":"g","service":"s","health_check":{}}"#,
                "health_check.path",
            ),
            (
                r#"{"name":"g","service":"s","health_check":{"grpc_service":"a b"}}"#,
                "health_check.grpc_service",
            ),
            (
                r#"{"name":"g","service":"s","health_check":{"grpc_service":"x","expected_statuses":[200]}}"#,
                "health_check.expected_statuses",
            ),
            (
                r#"{"name":"g","service":"s","retry":{"attempts":2,"on":["unavailabel"]}}"#,
                "retry.on",
            ),
        ] {
            assert_eq!(refusal(body).field.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn specs_round_trip_through_json() {
        let s = spec(
            r#"{"name":"a","hosts":["x.com"],"path_regex":"/u/[0-9]+","priority":5,
                "headers":[{"name":"x-canary","exact":"1"},{"name":"x-debug","present":false}],
                "query":[{"name":"v","regex":"[12]"}],"service":"web",
                "retry":{"attempts":2,"on":["503"]}}"#,
        );
        let again = spec(&serde_json::to_string(&s).unwrap());
        assert_eq!(s, again);
        let r = compile(&s, "").unwrap();
        assert_eq!(r.priority, 5);
        assert_eq!(r.conditions(), 3);
        let PathMatch::Regex(p) = &r.path else {
            panic!("regex path")
        };
        assert_eq!(p.literal_prefix(), "/u/");
    }

    #[test]
    fn identical_matches_share_a_key() {
        let a = compile(
            &spec(
                r#"{"name":"a","methods":["GET","POST"],"hosts":["b.com","a.com"],"service":"s"}"#,
            ),
            "",
        )
        .unwrap();
        let b = compile(
            &spec(r#"{"name":"b","methods":["post","get"],"hosts":["a.com","b.com"],"service":"t","priority":3}"#),
            "",
        )
        .unwrap();
        let c = compile(
            &spec(r#"{"name":"c","methods":["GET"],"hosts":["a.com","b.com"],"service":"t"}"#),
            "",
        )
        .unwrap();
        assert_eq!(match_key(&a), match_key(&b));
        assert_ne!(match_key(&a), match_key(&c));
    }
}
