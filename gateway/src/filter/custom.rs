//! Filters written in Rust by an embedder: the [`Filter`] trait, the
//! [`FilterRegistry`] a gateway is given, and what each phase may see.
//!
//! A route lists one as `{ type = "custom", name = "NAME", settings = {...} }`.
//! The registry checks only the shape (a name, a table); the filter checks
//! its own settings when a gateway builds the route ([`FilterRegistry::build`]).
//! A route file naming a filter the gateway lacks, or settings it refuses,
//! is refused at startup and at reload with the field named; a registry
//! route in that state answers 503 `filter_unavailable` to every request
//! (fail closed: a filter an operator asked for is never skipped).
//!
//! The phases, each optional, in request-path order:
//!
//! 1. [`Filter::on_request`] (async): may answer by itself. Where it runs
//!    among the built-in request filters is its [`Stage`]: with the
//!    address filter (before anything else), with authentication (in the
//!    route's list order, and may name the consumer), or after the rate
//!    limits (the default: request checks and transforms);
//! 2. [`Filter::on_upstream_request`]: the request as it will leave, after
//!    the built-in header edits and rewrite;
//! 3. [`Filter::on_response`]: an upstream's response head, after the
//!    built-in header edits (the gateway's own error answers are left as
//!    they are);
//! 4. [`Filter::on_log`]: once per request, when its response head leaves.
//!
//! Each phase gets the request's [`Extensions`], where a filter keeps what
//! it learned in one phase for the next. Bodies are streamed and not shown
//! to filters.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use serde::de::DeserializeOwned;

/// An answer a filter sends to the client instead of the upstream's.
pub type FilterAnswer = Response<Full<Bytes>>;

/// Where a filter's [`Filter::on_request`] runs among the built-in
/// request filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// First, with `ip_filter`: before CORS preflights and authentication,
    /// so a refused client costs nothing more.
    Access,
    /// With the authentication filters, in the route's list order; it may
    /// name the consumer ([`FilterRequest::consumer`]), which rate limits
    /// keyed by `consumer` then count.
    Authentication,
    /// After authentication and rate limits: request checks and edits.
    #[default]
    Request,
}

/// What [`Filter::on_request`] may read and change of a request.
#[derive(Debug)]
pub struct FilterRequest<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The client's address (the peer's, or the one a trusted proxy
    /// forwarded).
    pub client: IpAddr,
    /// Whether the client connection is TLS.
    pub secure: bool,
    /// The method.
    pub method: &'a Method,
    /// The URI as received (normalised path).
    pub uri: &'a mut Uri,
    /// The headers as received (the gateway's forwarding headers are added
    /// later).
    pub headers: &'a mut HeaderMap,
    /// The consumer an authentication filter named so far; an
    /// [`Stage::Authentication`] filter may set it.
    pub consumer: &'a mut Option<Arc<str>>,
    /// The request's own storage, kept for the later phases.
    pub extensions: &'a mut Extensions,
}

/// What [`Filter::on_upstream_request`] may change of the request about
/// to be sent.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The URI the upstream gets (path and query).
    pub uri: &'a mut Uri,
    /// The headers the upstream gets.
    pub headers: &'a mut HeaderMap,
    /// The request's storage.
    pub extensions: &'a mut Extensions,
}

/// What [`Filter::on_response`] may change of an upstream's response.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The status the client gets.
    pub status: &'a mut StatusCode,
    /// The headers the client gets.
    pub headers: &'a mut HeaderMap,
    /// The request's storage.
    pub extensions: &'a mut Extensions,
}

/// What [`Filter::on_log`] is told of a request that is ending.
#[derive(Debug)]
pub struct LogEntry<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The status sent (the gateway's own answers too).
    pub status: StatusCode,
    /// Arrival to response head.
    pub duration: Duration,
    /// The endpoint of the last try, if one was tried.
    pub upstream: Option<&'a str>,
    /// The request's storage.
    pub extensions: &'a Extensions,
}

/// A filter an embedder writes: every phase is optional (the defaults do
/// nothing). One value serves every request of a route, from every thread,
/// so per-request state goes in the request's extensions.
#[async_trait::async_trait]
pub trait Filter: Send + Sync + fmt::Debug + 'static {
    /// Where [`Filter::on_request`] runs (default [`Stage::Request`]).
    fn stage(&self) -> Stage {
        Stage::Request
    }

    /// Phase 1: `Err(answer)` sends `answer` to the client and nothing
    /// upstream. Called on a boxed future: a filter that has nothing to do
    /// here should say so with [`Filter::has_request_phase`].
    async fn on_request(&self, _req: &mut FilterRequest<'_>) -> Result<(), FilterAnswer> {
        Ok(())
    }

    /// Whether [`Filter::on_request`] is implemented (default `true`);
    /// `false` spares a request the boxed call.
    fn has_request_phase(&self) -> bool {
        true
    }

    /// Phase 2: the request as it will leave.
    fn on_upstream_request(&self, _req: &mut UpstreamRequest<'_>) {}

    /// Phase 3: an upstream's response head on its way back.
    fn on_response(&self, _resp: &mut ResponseHead<'_>) {}

    /// Phase 4: once per request, as its response head leaves.
    fn on_log(&self, _entry: &LogEntry<'_>) {}
}

/// Why a filter refused its settings: the field within `settings` and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The setting (`allowed[2]`), or empty for the settings as a whole.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl SettingsError {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> SettingsError {
        SettingsError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Builds a filter from a route's settings for it.
type Factory = dyn Fn(&serde_json::Value) -> Result<Arc<dyn Filter>, SettingsError> + Send + Sync;

/// The custom filters a gateway knows, by name.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    factories: BTreeMap<String, Arc<Factory>>,
}

impl fmt::Debug for FilterRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl FilterRegistry {
    /// An empty registry.
    pub fn new() -> FilterRegistry {
        FilterRegistry::default()
    }

    /// Registers `build` under `name` (replacing any filter of that name):
    /// routes then list it as `{ type = "custom", name = NAME, settings }`.
    /// `build` reads the settings into its own type `S` (unknown or
    /// mistyped settings are refused with their path, by serde) and may
    /// refuse them itself with a [`SettingsError`].
    pub fn register<S, F, B>(&mut self, name: &str, build: B) -> &mut FilterRegistry
    where
        S: DeserializeOwned,
        F: Filter,
        B: Fn(S) -> Result<F, SettingsError> + Send + Sync + 'static,
    {
        let factory = move |value: &serde_json::Value| {
            let settings: S = serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                SettingsError::new(
                    if path == "." { String::new() } else { path },
                    e.into_inner().to_string(),
                )
            })?;
            build(settings).map(|f| Arc::new(f) as Arc<dyn Filter>)
        };
        self.factories.insert(name.to_string(), Arc::new(factory));
        self
    }

    /// Whether a filter is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Builds the filter a route's `custom` entry names, with its settings.
    pub fn build(
        &self,
        custom: &portico_registry::filter::Custom,
    ) -> Result<Arc<dyn Filter>, SettingsError> {
        if custom.withheld {
            return Err(SettingsError::new(
                "settings",
                "were withheld from this gateway's registry token (it needs one that may read keys)",
            ));
        }
        let Some(factory) = self.factories.get(&custom.name) else {
            return Err(SettingsError {
                field: "name".into(),
                reason: format!(
                    "no filter {:?} is registered in this gateway (registered: {:?})",
                    custom.name,
                    self.factories.keys().collect::<Vec<_>>()
                ),
            });
        };
        factory(&custom.settings).map_err(|e| SettingsError {
            field: match e.field.as_str() {
                "" | "settings" => "settings".into(),
                f => format!("settings.{f}"),
            },
            reason: e.reason,
        })
    }
}

impl FilterRegistry {
    /// Checks that every custom filter `routes` list can be built here:
    /// `Err((index, route, "filters[N].FIELD: why"))` for the first that
    /// cannot. A route file is checked with it at startup and at each
    /// reload.
    pub fn check_routes(
        &self,
        routes: &[Arc<crate::config::Route>],
    ) -> Result<(), (usize, String, String)> {
        use portico_registry::filter::Filter as FilterConfig;
        for (r, route) in routes.iter().enumerate() {
            for (i, f) in route.filters.iter().enumerate() {
                if let FilterConfig::Custom(custom) = f {
                    self.build(custom).map_err(|e| {
                        let why = format!("filters[{i}].{}: {}", e.field, e.reason);
                        (r, route.name.to_string(), why)
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_registry::filter::Custom;

    #[derive(Debug)]
    struct Nothing;

    impl Filter for Nothing {
        fn has_request_phase(&self) -> bool {
            false
        }
    }

    fn custom(name: &str, settings: serde_json::Value, withheld: bool) -> Custom {
        Custom {
            name: name.into(),
            settings,
            withheld,
        }
    }

    #[test]
    fn settings_are_read_into_the_filters_own_type_and_refusals_name_the_field() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            level: u8,
        }
        let mut registry = FilterRegistry::new();
        registry.register("nothing", |s: Settings| match s.level {
            0..=3 => Ok(Nothing),
            _ => Err(SettingsError::new("level", "at most 3")),
        });
        let field = |v: serde_json::Value| {
            registry
                .build(&custom("nothing", v, false))
                .map(|_| ())
                .map_err(|e| e.field)
        };
        assert_eq!(field(serde_json::json!({"level": 2})), Ok(()));
        assert_eq!(
            field(serde_json::json!({"level": 9})),
            Err("settings.level".into())
        );
        assert_eq!(
            field(serde_json::json!({"level": "x"})),
            Err("settings.level".into())
        );
        assert_eq!(field(serde_json::json!({})), Err("settings".into()));
        assert_eq!(
            field(serde_json::json!({"level": 1, "x": 1})),
            Err("settings.x".into())
        );
        // Withheld settings and unknown names never build.
        let withheld = custom("nothing", serde_json::json!({}), true);
        assert_eq!(
            registry.build(&withheld).map(|_| ()).unwrap_err().field,
            "settings"
        );
        let unknown = custom("other", serde_json::json!({}), false);
        assert_eq!(
            registry.build(&unknown).map(|_| ()).unwrap_err().field,
            "name"
        );
    }
}
