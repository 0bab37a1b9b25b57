//! The route file: TOML with one `[[route]]` table per route, parsed into
//! file structs with `deny_unknown_fields`, then validated into typed
//! [`Route`]s. Every refusal names the key (`route[2].path_prefix`) and why.
//!
//! ```toml
//! [[route]]
//! name = "echo"
//! hosts = ["api.example.com", "*.example.com"]   # optional: any host
//! path_prefix = "/echo"                          # or: path = "/exact"
//! methods = ["GET", "POST"]                      # optional: any method
//! service = "echo"                               # or: upstreams = ["127.0.0.1:9001"]
//! strip_prefix = true                            # optional, default false
//! timeout = "30s"                                # optional, default 30s
//! lb = "least_request"                           # optional, default round_robin
//! slow_start = "30s"                             # optional: ramp new endpoints up
//! # hash_on = "header:x-user"                    # with lb = "consistent_hash"
//!
//! [route.retry]                                  # optional
//! attempts = 3                                   # tries in all, 2..=5
//! on = ["reset", "502", "503", "504", "timeout"]
//! per_try_timeout = "1s"                         # needed by "timeout"
//! backoff = "25ms"                               # base of the jittered exponential backoff
//! budget_percent = 20                            # retries at most 20% of requests ...
//! budget_min_per_second = 10                     # ... plus 10 a second
//! non_idempotent = false                         # also retry POST and PATCH
//!
//! [route.limits]                                 # optional
//! max_requests = 1000                            # in flight at once, else 503 overloaded
//! max_retries = 50                               # retries in flight at once
//! max_pending = 100                              # waiting for a new upstream connection
//!
//! [route.breaker]                                # optional, per endpoint
//! consecutive_failures = 5
//! failure_rate_percent = 50                      # optional, over `window`
//! window = "10s"
//! min_requests = 20
//! open_for = "5s"                                # doubled per reopening, jittered
//! max_open = "60s"
//! half_open_probes = 1
//!
//! [route.health_check]                           # optional, active checks
//! path = "/healthz"
//! interval = "5s"
//! timeout = "1s"
//! healthy_threshold = 2
//! unhealthy_threshold = 3
//! expected_statuses = [200]                      # default: any 2xx
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::uri::Authority;
use serde::Deserialize;

use crate::breaker::{BreakerPolicy, Limits};
use crate::check::HealthCheck;
use crate::retry::{RetryOn, RetryPolicy};

/// Default time allowed for an upstream to answer with response headers.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted route timeout.
pub const MAX_ROUTE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A route file refused, naming the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The TOML does not parse, or names an unknown key, or has a wrong type.
    #[error("{0}")]
    Parse(String),
    /// A key holds a value that cannot work.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `route[0].path_prefix`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    route: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    path_prefix: Option<String>,
    path: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    service: Option<String>,
    upstreams: Option<Vec<String>>,
    #[serde(default)]
    strip_prefix: bool,
    timeout: Option<String>,
    lb: Option<String>,
    hash_on: Option<String>,
    retry: Option<RetryFile>,
    limits: Option<LimitsFile>,
    breaker: Option<BreakerFile>,
    health_check: Option<HealthCheckFile>,
    slow_start: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFile {
    path: String,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
    #[serde(default)]
    expected_statuses: Vec<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    consecutive_failures: Option<u32>,
    failure_rate_percent: Option<u32>,
    window: Option<String>,
    min_requests: Option<u32>,
    open_for: Option<String>,
    max_open: Option<String>,
    half_open_probes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_requests: Option<u32>,
    max_retries: Option<u32>,
    max_pending: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    attempts: u32,
    #[serde(default)]
    on: Vec<String>,
    per_try_timeout: Option<String>,
    backoff: Option<String>,
    budget_percent: Option<u32>,
    budget_min_per_second: Option<u32>,
    #[serde(default)]
    non_idempotent: bool,
}

/// The validated gateway configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Routes in file order.
    pub routes: Vec<Arc<Route>>,
}

/// How a route matches the request host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// One exact host name (lowercase, no port).
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`: any subdomain at
    /// any depth, not the apex.
    Wildcard(String),
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A prefix on segment boundaries: `/api` matches `/api` and `/api/x`,
    /// never `/apix`; `/api/` matches `/api/x` but not `/api`.
    Prefix(String),
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Instances of a discovered service.
    Service(String),
    /// A fixed list of `host:port` upstreams.
    Static(Vec<Authority>),
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique name, used in logs and errors.
    pub name: Arc<str>,
    /// Hosts it answers for; empty means any host.
    pub hosts: Vec<HostMatch>,
    /// Path it answers for.
    pub path: PathMatch,
    /// Methods it answers for; empty means any method.
    pub methods: Vec<Method>,
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

/// What `consistent_hash` hashes (`hash_on = "..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value (`header:NAME`).
    Header(http::HeaderName),
    /// A cookie's value (`cookie:NAME`).
    Cookie(String),
    /// The client's IP address (`client_ip`).
    ClientIp,
    /// The request path (`path`).
    Path,
}

impl Config {
    /// Reads and validates a route file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text)
    }

    /// Parses and validates route-file text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut routes = Vec::with_capacity(file.route.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut matches: HashMap<(Vec<HostMatch>, PathMatch, Vec<Method>), usize> = HashMap::new();
        for (i, raw) in file.route.into_iter().enumerate() {
            let route = validate_route(i, raw)?;
            if let Some(first) = names.insert(route.name.to_string(), i) {
                return Err(invalid(
                    format!("route[{i}].name"),
                    format!("{:?} is already used by route[{first}]", route.name),
                ));
            }
            let mut hosts = route.hosts.clone();
            hosts.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            let mut methods = route.methods.clone();
            methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            if let Some(first) = matches.insert((hosts, route.path.clone(), methods), i) {
                return Err(invalid(
                    format!("route[{i}]"),
                    format!("matches exactly the same requests as route[{first}]"),
                ));
            }
            routes.push(Arc::new(route));
        }
        Ok(Config { routes })
    }
}

fn validate_route(i: usize, raw: RouteFile) -> Result<Route, ConfigError> {
    let key = |field: &str| format!("route[{i}].{field}");
    if raw.name.is_empty()
        || raw.name.len() > 128
        || !raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(invalid(
            key("name"),
            "must be 1 to 128 characters of [A-Za-z0-9-_.:]",
        ));
    }

    let mut hosts = Vec::with_capacity(raw.hosts.len());
    for (j, host) in raw.hosts.iter().enumerate() {
        hosts.push(
            parse_host(host).map_err(|reason| invalid(format!("{}[{j}]", key("hosts")), reason))?,
        );
    }

    let path = match (raw.path_prefix, raw.path) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("path"),
                "give either path (exact) or path_prefix, not both",
            ));
        }
        (Some(p), None) => {
            PathMatch::Prefix(check_path(&p).map_err(|r| invalid(key("path_prefix"), r))?)
        }
        (None, Some(p)) => PathMatch::Exact(check_path(&p).map_err(|r| invalid(key("path"), r))?),
        (None, None) => PathMatch::Prefix("/".to_string()),
    };
    if raw.strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
        return Err(invalid(
            key("strip_prefix"),
            "only applies to a path_prefix route",
        ));
    }

    let mut methods = Vec::with_capacity(raw.methods.len());
    for (j, m) in raw.methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
            invalid(
                format!("{}[{j}]", key("methods")),
                format!("{m:?} is not an HTTP method"),
            )
        })?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }

    let target = match (raw.service, raw.upstreams) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("service"),
                "give either service or upstreams, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                key("service"),
                "a route needs a target: service = \"name\" or upstreams = [\"host:port\"]",
            ));
        }
        (Some(s), None) => {
            portico_registry::model::validate_service_name(&s)
                .map_err(|e| invalid(key("service"), e.reason))?;
            Target::Service(s)
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(invalid(
                    key("upstreams"),
                    "must list at least one host:port",
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, u) in list.iter().enumerate() {
                out.push(
                    parse_upstream(u)
                        .map_err(|r| invalid(format!("{}[{j}]", key("upstreams")), r))?,
                );
            }
            Target::Static(out)
        }
    };

    let timeout = match raw.timeout {
        None => DEFAULT_ROUTE_TIMEOUT,
        Some(t) => {
            let d = humantime::parse_duration(&t).map_err(|e| {
                invalid(
                    key("timeout"),
                    format!("{e}: expected a duration such as \"30s\""),
                )
            })?;
            if d.is_zero() || d > MAX_ROUTE_TIMEOUT {
                return Err(invalid(
                    key("timeout"),
                    "must be more than 0 and at most 1h",
                ));
            }
            d
        }
    };

    let hash_on = match raw.hash_on.as_deref() {
        None => None,
        Some("client_ip") => Some(HashOn::ClientIp),
        Some("path") => Some(HashOn::Path),
        Some(other) => {
            let parsed = if let Some(name) = other.strip_prefix("header:") {
                http::HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(HashOn::Header)
            } else if let Some(name) = other.strip_prefix("cookie:") {
                (!name.is_empty() && !name.contains([';', '=', ' ']))
                    .then(|| HashOn::Cookie(name.to_string()))
            } else {
                None
            };
            Some(parsed.ok_or_else(|| {
                invalid(
                    key("hash_on"),
                    format!("{other:?}: expected \"header:NAME\", \"cookie:NAME\", \"client_ip\" or \"path\""),
                )
            })?)
        }
    };
    let lb = match raw.lb.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_request") => Balance::LeastRequest,
        Some("peak_ewma") => Balance::PeakEwma,
        Some("random") => Balance::Random,
        Some("consistent_hash") => Balance::ConsistentHash(hash_on.clone().ok_or_else(|| {
            invalid(
                key("hash_on"),
                "consistent_hash needs hash_on (header:NAME, cookie:NAME, client_ip or path)",
            )
        })?),
        Some(other) => {
            return Err(invalid(
                key("lb"),
                format!(
                    "{other:?}: expected round_robin, least_request, peak_ewma, random or consistent_hash"
                ),
            ));
        }
    };
    if hash_on.is_some() && !matches!(lb, Balance::ConsistentHash(_)) {
        return Err(invalid(
            key("hash_on"),
            "only applies with lb = \"consistent_hash\"",
        ));
    }

    let retry = raw
        .retry
        .map(|r| validate_retry(&r, &|field| key(&format!("retry.{field}"))))
        .transpose()?;

    let limits = match raw.limits {
        None => Limits::default(),
        Some(l) => {
            if l.max_requests == Some(0) {
                return Err(invalid(key("limits.max_requests"), "must be at least 1"));
            }
            Limits {
                max_requests: l.max_requests,
                max_retries: l.max_retries,
                max_pending: l.max_pending,
            }
        }
    };

    let breaker = raw
        .breaker
        .map(|b| validate_breaker(&b, &|field| key(&format!("breaker.{field}"))))
        .transpose()?;

    let health_check = match raw.health_check {
        None => None,
        Some(h) => {
            let k = |field: &str| key(&format!("health_check.{field}"));
            let path = check_path(&h.path).map_err(|r| invalid(k("path"), r))?;
            let duration = |field: &str, v: &Option<String>, default: Duration| match v {
                None => Ok(default),
                Some(v) => match humantime::parse_duration(v) {
                    Ok(x) if !x.is_zero() => Ok(x),
                    Ok(_) => Err(invalid(k(field), "must be more than 0")),
                    Err(e) => Err(invalid(
                        k(field),
                        format!("{e}: expected a duration such as \"5s\""),
                    )),
                },
            };
            let interval = duration("interval", &h.interval, Duration::from_secs(5))?;
            let timeout = duration("timeout", &h.timeout, Duration::from_secs(1))?;
            if timeout > interval {
                return Err(invalid(k("timeout"), "must not exceed interval"));
            }
            if let Some(bad) = h
                .expected_statuses
                .iter()
                .find(|s| !(100..=599).contains(*s))
            {
                return Err(invalid(
                    k("expected_statuses"),
                    format!("{bad} is not an HTTP status"),
                ));
            }
            let threshold = |field: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
                0 => Err(invalid(k(field), "must be at least 1")),
                n => Ok(n),
            };
            Some(Arc::new(HealthCheck {
                path,
                interval,
                timeout,
                healthy_threshold: threshold("healthy_threshold", h.healthy_threshold, 2)?,
                unhealthy_threshold: threshold("unhealthy_threshold", h.unhealthy_threshold, 3)?,
                expected_statuses: h.expected_statuses,
            }))
        }
    };

    let slow_start = match raw.slow_start.as_deref() {
        None => None,
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => None,
            Ok(d) if d <= Duration::from_secs(3600) => Some(d),
            Ok(_) => return Err(invalid(key("slow_start"), "must be at most 1h")),
            Err(e) => {
                return Err(invalid(
                    key("slow_start"),
                    format!("{e}: expected a duration such as \"30s\""),
                ));
            }
        },
    };

    Ok(Route {
        name: raw.name.into(),
        hosts,
        path,
        methods,
        target,
        strip_prefix: raw.strip_prefix,
        timeout,
        lb,
        retry,
        limits,
        breaker,
        health_check,
        slow_start,
    })
}

fn validate_retry(
    raw: &RetryFile,
    key: &dyn Fn(&str) -> String,
) -> Result<RetryPolicy, ConfigError> {
    if !(2..=5).contains(&raw.attempts) {
        return Err(invalid(
            key("attempts"),
            "must be 2 to 5 (tries in all, the first included)",
        ));
    }
    let mut on = RetryOn::default();
    if raw.on.is_empty() {
        return Err(invalid(
            key("on"),
            "name at least one condition: reset, refused_stream, 502, 503, 504, timeout",
        ));
    }
    for (j, c) in raw.on.iter().enumerate() {
        match c.as_str() {
            "reset" => on.reset = true,
            "502" => on.status_502 = true,
            "503" => on.status_503 = true,
            "504" => on.status_504 = true,
            "timeout" => on.timeout = true,
            "refused_stream" => on.refused_stream = true,
            other => {
                return Err(invalid(
                    format!("{}[{j}]", key("on")),
                    format!("{other:?}: expected reset, refused_stream, 502, 503, 504 or timeout"),
                ));
            }
        }
    }
    let duration = |field: &str, v: &str| {
        humantime::parse_duration(v).map_err(|e| {
            invalid(
                key(field),
                format!("{e}: expected a duration such as \"1s\""),
            )
        })
    };
    let per_try_timeout = raw
        .per_try_timeout
        .as_deref()
        .map(|v| duration("per_try_timeout", v))
        .transpose()?;
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        return Err(invalid(key("per_try_timeout"), "must be more than 0"));
    }
    if on.timeout && per_try_timeout.is_none() {
        return Err(invalid(
            key("per_try_timeout"),
            "the timeout condition needs a per_try_timeout",
        ));
    }
    let backoff = match raw.backoff.as_deref() {
        Some(v) => duration("backoff", v)?,
        None => crate::retry::DEFAULT_BACKOFF,
    };
    let budget_percent = raw.budget_percent.unwrap_or(20);
    if budget_percent > 100 {
        return Err(invalid(key("budget_percent"), "must be 0 to 100"));
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

fn validate_breaker(
    raw: &BreakerFile,
    key: &dyn Fn(&str) -> String,
) -> Result<BreakerPolicy, ConfigError> {
    let d = BreakerPolicy::default();
    let duration = |field: &str, v: &Option<String>, default: std::time::Duration| match v {
        None => Ok(default),
        Some(v) => match humantime::parse_duration(v) {
            Ok(x) if !x.is_zero() => Ok(x),
            Ok(_) => Err(invalid(key(field), "must be more than 0")),
            Err(e) => Err(invalid(
                key(field),
                format!("{e}: expected a duration such as \"5s\""),
            )),
        },
    };
    let policy = BreakerPolicy {
        consecutive_failures: raw.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate_percent: raw.failure_rate_percent,
        window: duration("window", &raw.window, d.window)?,
        min_requests: raw.min_requests.unwrap_or(d.min_requests).max(1),
        open_for: duration("open_for", &raw.open_for, d.open_for)?,
        max_open: duration("max_open", &raw.max_open, d.max_open)?,
        half_open_probes: raw.half_open_probes.unwrap_or(d.half_open_probes),
    };
    if policy
        .failure_rate_percent
        .is_some_and(|p| p == 0 || p > 100)
    {
        return Err(invalid(key("failure_rate_percent"), "must be 1 to 100"));
    }
    if policy.consecutive_failures == 0 && policy.failure_rate_percent.is_none() {
        return Err(invalid(
            key("consecutive_failures"),
            "0 needs failure_rate_percent, or the breaker could never open",
        ));
    }
    if policy.half_open_probes == 0 {
        return Err(invalid(key("half_open_probes"), "must be at least 1"));
    }
    if policy.max_open < policy.open_for {
        return Err(invalid(key("max_open"), "must be at least open_for"));
    }
    Ok(policy)
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
    portico_registry::model::validate_address(name)
        .map_err(|_| format!("{host:?} is not a valid host name"))?;
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
    portico_registry::model::validate_address(host).map_err(|_| format!("{u:?}: bad host"))?;
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_route_parses() {
        let c = Config::parse(
            r#"
            [[route]]
            name = "a"
            hosts = ["Example.com", "*.example.com"]
            path_prefix = "/api"
            methods = ["get", "POST"]
            service = "web"
            strip_prefix = true
            timeout = "5s"
            "#,
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.hosts[0], HostMatch::Exact("example.com".into()));
        assert_eq!(r.hosts[1], HostMatch::Wildcard(".example.com".into()));
        assert_eq!(r.methods, vec![Method::GET, Method::POST]);
        assert_eq!(r.timeout, Duration::from_secs(5));
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            (
                "[[route]]\nname=\"a\"\npathprefix=\"/x\"\nservice=\"s\"",
                "pathprefix",
            ),
            (
                "[[route]]\nname=\"a\"\npath_prefix=\"x\"\nservice=\"s\"",
                "route[0].path_prefix",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nupstreams=[\"h:1\"]",
                "route[0].service",
            ),
            ("[[route]]\nname=\"a\"", "route[0].service"),
            (
                "[[route]]\nname=\"a\"\nupstreams=[\"nohost\"]",
                "route[0].upstreams[0]",
            ),
            ("[[route]]\nname=\"a\"\nservice=\"S_\"", "route[0].service"),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nmethods=[\"G T\"]",
                "route[0].methods[0]",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nhosts=[\"a.*.com\"]",
                "route[0].hosts[0]",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\ntimeout=\"0s\"",
                "route[0].timeout",
            ),
            (
                "[[route]]\nname=\"a\"\npath=\"/x\"\nstrip_prefix=true\nservice=\"s\"",
                "route[0].strip_prefix",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\n[[route]]\nname=\"a\"\npath=\"/b\"\nservice=\"s\"",
                "route[1].name",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\n[[route]]\nname=\"b\"\nservice=\"t\"",
                "route[1]",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\ncolour=\"red\"",
                "colour",
            ),
            ("[[rout]]\nname=\"a\"", "rout"),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nlb=\"fastest\"",
                "route[0].lb",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nlb=\"consistent_hash\"",
                "route[0].hash_on",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nlb=\"consistent_hash\"\nhash_on=\"body\"",
                "route[0].hash_on",
            ),
            (
                "[[route]]\nname=\"a\"\nservice=\"s\"\nhash_on=\"path\"",
                "route[0].hash_on",
            ),
        ];
        for (text, key) in cases {
            let msg = err(text);
            assert!(
                msg.contains(key),
                "{text:?} gave {msg:?}, expected it to name {key:?}"
            );
        }
    }
}
