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

mod transform;

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
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
    /// rate_limit: `gateway` (each gateway counts alone; the default).
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
    /// Rewrite the path and/or host the upstream receives.
    Rewrite(Rewrite),
    /// Answer with a redirect instead of going upstream.
    Redirect(Redirect),
    /// Refuse request bodies over this many bytes (413).
    BodyLimit(u64),
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
        "rewrite" => Some(&["path_prefix", "path_regex", "replacement", "host"]),
        "redirect" => Some(&["status", "scheme", "host", "path", "path_prefix"]),
        "body_limit" => Some(&["max"]),
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
    Ok(filters)
}

/// Filter types a route may list once: two rewrites of one path, two
/// redirects or two body limits would only leave a reader guessing which wins.
fn check_single(specs: &[FilterSpec]) -> Result<(), FilterError> {
    for (i, spec) in specs.iter().enumerate() {
        let single = matches!(spec.kind.as_str(), "rewrite" | "redirect" | "body_limit");
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
                "{:?} is not a filter type (rate_limit, request_headers, response_headers, rewrite, redirect, body_limit)",
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
        "response_headers" => compile_edits(spec).map(Filter::ResponseHeaders),
        "rewrite" => compile_rewrite(spec).map(Filter::Rewrite),
        "redirect" => compile_redirect(spec).map(Filter::Redirect),
        _ => match spec.max {
            Some(0) => Err(("max", "must be at least 1 byte".into())),
            Some(n) => Ok(Filter::BodyLimit(n)),
            None => Err(("max", "is required (bytes)".into())),
        },
    }
}

fn given_settings(s: &FilterSpec) -> [(&'static str, bool); 17] {
    [
        ("scope", s.scope.is_some()),
        ("key", s.key.is_some()),
        ("rate", s.rate.is_some()),
        ("per", s.per.is_some()),
        ("burst", s.burst.is_some()),
        ("max_keys", s.max_keys.is_some()),
        ("set", s.set.is_some()),
        ("add", s.add.is_some()),
        ("remove", s.remove.is_some()),
        ("path_prefix", s.path_prefix.is_some()),
        ("path_regex", s.path_regex.is_some()),
        ("replacement", s.replacement.is_some()),
        ("host", s.host.is_some()),
        ("status", s.status.is_some()),
        ("scheme", s.scheme.is_some()),
        ("path", s.path.is_some()),
        ("max", s.max.is_some()),
    ]
}

fn compile_rate_limit(spec: &FilterSpec) -> Result<RateLimit, Refusal> {
    match spec.scope.as_deref() {
        None | Some("gateway") => {}
        Some("cluster") => {
            return Err((
                "scope",
                "\"cluster\" is not supported yet; \"gateway\" counts on each gateway alone".into(),
            ));
        }
        Some(other) => return Err(("scope", format!("{other:?} is not a scope (gateway)"))),
    }
    let key = match spec.key.as_deref() {
        None | Some("client_ip") => LimitKey::ClientIp,
        Some("route") => LimitKey::Route,
        Some(k) => match k.strip_prefix("header:") {
            Some(name) => LimitKey::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ("key", format!("{name:?} is not a header name")))?,
            ),
            None => {
                return Err((
                    "key",
                    format!("{k:?} is not a key (client_ip, header:NAME, route)"),
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
            })]
        );
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
                r#"{"type":"rate_limit","rate":5,"scope":"cluster"}"#,
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
        ] {
            assert_eq!(refusal(json), field, "{json}");
        }
    }
}
