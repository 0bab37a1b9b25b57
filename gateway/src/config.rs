//! The route file: TOML with one `[[route]]` table per route. Each table is a
//! [`RouteSpec`] (the same model `PUT /v1/routes/{name}` takes as JSON), so
//! validation is the registry crate's [`portico_registry::route::compile`]:
//! a file and the API can never disagree on what a valid route is. Every
//! refusal names the key (`route[2].path_prefix`) and why.
//!
//! ```toml
//! [[route]]
//! name = "echo"
//! hosts = ["api.example.com", "*.example.com"]   # optional: any host
//! path_prefix = "/echo"                          # or: path = "/exact", path_regex = "/u/[0-9]+"
//! methods = ["GET", "POST"]                      # optional: any method
//! priority = 10                                  # optional: higher wins, default 0
//! headers = [{ name = "x-canary", exact = "1" }] # optional: also regex = "...", present = true|false
//! query = [{ name = "v", regex = "[12]" }]       # optional, same forms
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

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use portico_registry::model::Invalid;
pub use portico_registry::route::{
    Balance, DEFAULT_ROUTE_TIMEOUT, HashOn, HeaderMatch, HostMatch, MAX_ROUTE_TIMEOUT, PathMatch,
    QueryMatch, Route, RouteSpec, Target, ValueRule,
};

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
    #[error("{reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `route[0].path_prefix`.
        key: String,
        /// What is wrong, starting with the key.
        reason: String,
    },
}

impl From<Invalid> for ConfigError {
    fn from(e: Invalid) -> Self {
        ConfigError::Invalid {
            key: e.field.unwrap_or_default(),
            reason: e.reason,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    route: Vec<RouteSpec>,
}

/// The validated gateway configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Routes in file order.
    pub routes: Vec<Arc<Route>>,
    /// Digest of the text the routes came from ([`digest`]), so a reload
    /// can tell an unchanged file without parsing it again.
    pub digest: u64,
}

/// A digest of route-file text: equal texts, equal digests.
pub fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
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

    /// Parses and validates route-file text: every route on its own, then
    /// the set (unique names, no two routes matching the same requests).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (_, routes) = parse_routes(text)?;
        Ok(Config {
            routes: routes.into_iter().map(Arc::new).collect(),
            digest: digest(text),
        })
    }
}

/// Parses and validates route-file text as [`Config::parse`] does, keeping
/// each route as written beside its compiled form: `portico ctl apply`
/// sends the written specs to the registry, so a file it accepts is one the
/// gateway's `--config` accepts, and the other way round.
pub fn parse_routes(text: &str) -> Result<(Vec<RouteSpec>, Vec<Route>), ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let routes = file
        .route
        .iter()
        .enumerate()
        .map(|(i, spec)| portico_registry::route::compile(spec, &format!("route[{i}].")))
        .collect::<Result<Vec<Route>, Invalid>>()?;
    portico_registry::route::check_unique(
        routes
            .iter()
            .zip(&file.route)
            .enumerate()
            .map(|(i, (r, s))| (format!("route[{i}]"), r, s)),
    )?;
    Ok((file.route, routes))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;

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
