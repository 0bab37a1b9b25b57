//! `GET /routes`: every route of the live table, each with where it came
//! from (`file`, `registry` or `implicit`) and its match and target in the
//! field names of a route spec (`hosts`, `path_prefix`, `service`, ...).
//!
//! Why: a gateway's route file is seen by no one else. The registry lists
//! its own routes, but what this gateway routes by also includes its file
//! (whose routes win over registry routes of the same name or match) and
//! its implicit `/{service}` routes; the dashboard relays this listing to
//! show them. Filters are listed by type only: their settings can hold
//! secrets (passwords, keys), and this listener has no auth.

use serde_json::{Map, Value, json};

use crate::config::{PathMatch, Route, Target, ValueRule};
use crate::router::RouteTable;

/// The listing: the table's revision and its routes in table order (file,
/// then registry, then implicit).
pub(super) fn routes(table: &RouteTable) -> Value {
    let routes: Vec<Value> = table
        .entries()
        .iter()
        .map(|entry| {
            let mut r = route_json(&entry.route);
            r["source"] = json!(entry.source.as_str());
            r
        })
        .collect();
    json!({ "revision": table.revision, "routes": routes })
}

/// One route's match, target and filter types, leaving out what is unset.
fn route_json(route: &Route) -> Value {
    let mut r = Map::new();
    r.insert("name".into(), json!(&*route.name));
    if !route.hosts.is_empty() {
        let hosts: Vec<String> = route.hosts.iter().map(|h| h.to_string()).collect();
        r.insert("hosts".into(), json!(hosts));
    }
    let (key, path) = match &route.path {
        PathMatch::Exact(p) => ("path", p.as_str()),
        PathMatch::Prefix(p) => ("path_prefix", p.as_str()),
        PathMatch::Regex(p) => ("path_regex", p.source()),
    };
    r.insert(key.into(), json!(path));
    if !route.methods.is_empty() {
        let methods: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
        r.insert("methods".into(), json!(methods));
    }
    let headers: Vec<Value> = route
        .headers
        .iter()
        .map(|h| value_match(h.name.as_str(), &h.rule))
        .collect();
    let query: Vec<Value> = route
        .query
        .iter()
        .map(|q| value_match(&q.name, &q.rule))
        .collect();
    for (key, list) in [("headers", headers), ("query", query)] {
        if !list.is_empty() {
            r.insert(key.into(), Value::Array(list));
        }
    }
    if route.priority != 0 {
        r.insert("priority".into(), json!(route.priority));
    }
    insert_target(&mut r, &route.target);
    if route.strip_prefix {
        r.insert("strip_prefix".into(), json!(true));
    }
    if let Some(m) = &route.mirror {
        r.insert(
            "mirror".into(),
            json!({"service": m.service, "percent": m.percent}),
        );
    }
    if !route.filters.is_empty() {
        let kinds: Vec<Value> = route
            .filters
            .iter()
            .map(|f| json!({"type": f.kind()}))
            .collect();
        r.insert("filters".into(), Value::Array(kinds));
    }
    Value::Object(r)
}

/// A header or query condition as a spec writes it.
fn value_match(name: &str, rule: &ValueRule) -> Value {
    match rule {
        ValueRule::Exact(v) => json!({"name": name, "exact": v}),
        ValueRule::Regex(p) => json!({"name": name, "regex": p.source()}),
        ValueRule::Present => json!({"name": name, "present": true}),
        ValueRule::Absent => json!({"name": name, "present": false}),
    }
}

/// `service`, `upstreams` or `targets`, as a spec writes them.
fn insert_target(r: &mut Map<String, Value>, target: &Target) {
    let (key, value) = match target {
        Target::Service(s) => ("service", json!(s)),
        Target::Static(list) => (
            "upstreams",
            json!(list.iter().map(|a| a.as_str()).collect::<Vec<_>>()),
        ),
        Target::Split(targets) => (
            "targets",
            targets
                .iter()
                .map(|t| {
                    let mut v = json!({"service": t.service, "weight": t.weight});
                    if !t.subset.is_all() {
                        v["subset"] = json!({"tags": t.subset.tags, "metadata": t.subset.metadata});
                    }
                    v
                })
                .collect(),
        ),
    };
    r.insert(key.into(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_route_lists_in_spec_field_names_with_filter_types_only() {
        let config = Config::parse(
            r#"
[[route]]
name = "api"
hosts = ["api.example.com"]
path_prefix = "/api"
methods = ["GET"]
priority = 5
headers = [{ name = "x-canary", exact = "1" }]
query = [{ name = "v", regex = "[12]" }]
upstreams = ["127.0.0.1:9001"]
strip_prefix = true
filters = [{ type = "request_headers", set = { "x-key" = "secret-value" } }]
"#,
        )
        .unwrap();
        let v = route_json(&config.routes[0]);
        assert_eq!(v["name"], "api");
        assert_eq!(v["hosts"], json!(["api.example.com"]));
        assert_eq!(v["path_prefix"], "/api");
        assert_eq!(v["methods"], json!(["GET"]));
        assert_eq!(v["priority"], 5);
        assert_eq!(v["headers"], json!([{"name": "x-canary", "exact": "1"}]));
        assert_eq!(v["query"], json!([{"name": "v", "regex": "[12]"}]));
        assert_eq!(v["upstreams"], json!(["127.0.0.1:9001"]));
        assert_eq!(v["strip_prefix"], true);
        assert_eq!(v["filters"], json!([{"type": "request_headers"}]));
        assert!(!v.to_string().contains("secret-value"), "{v}");
    }

    #[test]
    fn exact_and_regex_paths_and_a_service_target() {
        let config = Config::parse(
            r#"
[[route]]
name = "a"
path = "/exact"
service = "web"

[[route]]
name = "b"
path_regex = "/u/[0-9]+"
service = "users"
"#,
        )
        .unwrap();
        let a = route_json(&config.routes[0]);
        assert_eq!(
            (&a["path"], &a["service"]),
            (&json!("/exact"), &json!("web"))
        );
        assert!(
            a.get("priority").is_none() && a.get("hosts").is_none(),
            "{a}"
        );
        let b = route_json(&config.routes[1]);
        assert_eq!(b["path_regex"], "/u/[0-9]+");
    }
}
