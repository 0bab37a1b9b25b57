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
}

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
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            compile_one(spec).map_err(|(f, reason)| FilterError {
                field: format!("filters[{i}].{f}"),
                reason,
            })
        })
        .collect()
}

type Refusal = (&'static str, String);

fn compile_one(spec: &FilterSpec) -> Result<Filter, Refusal> {
    let Some(allowed) = takes(&spec.kind) else {
        return Err((
            "type",
            format!(
                "{:?} is not a filter type (rate_limit, request_headers, response_headers)",
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
        _ => compile_edits(spec).map(Filter::ResponseHeaders),
    }
}

fn given_settings(s: &FilterSpec) -> [(&'static str, bool); 9] {
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
