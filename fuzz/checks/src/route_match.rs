//! `route_match`: generated route sets and requests into the gateway's router
//! ([`portico_gateway::router`], routes compiled by
//! [`portico_registry::route::compile`]).
//!
//! The input bytes are read as a small route set and a few requests, drawn
//! mostly from short alphabets (`/a`, `/a/`, `*.a.test`, `x-a: 1`) so that
//! routes and requests overlap often, with now and then a raw string from
//! the fuzzer to reach odd paths and regexes. For each request:
//!
//! - the router's answer equals a brute-force reading of the precedence
//!   documented in `router.rs` and `docs/configuration.md` (host level, then
//!   priority, exact path, longest prefix, regex ahead of a plain prefix of
//!   its literal prefix, more conditions, earlier route). This catches a
//!   route missed as surely as a route wrongly taken;
//! - the route it picks really matches: its host, path, methods, headers and
//!   query conditions all hold, and the prefix length it reports is the
//!   route's own, on a character boundary of the path;
//! - the exhaustive search (`/explain`) gives the same answer as the fast one;
//! - no regex route matches a path outside its literal prefix (the router
//!   only tries a regex under that prefix, so such a path would be missed);
//! - a path that is not in origin form (`*` of `OPTIONS *`, the empty path
//!   of an authority-form target) matches no route at all: every path
//!   condition is about paths starting with `/`, a regex such as `(?s).*`
//!   included (it is filed under `/`, so the router never tries it there,
//!   just as a `/` prefix does not cover `*`).
//!
//! Lookup never panicking is checked by running it at all.

use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portico_gateway::balance::EndpointSet;
use portico_gateway::config::{HostMatch, PathMatch, Route, RouteSpec};
use portico_gateway::router::{self, RequestView, RouteEntry, RouteTable, Router};
use portico_registry::route::ValueMatchSpec;

/// Most routes in one generated set.
const MAX_ROUTES: usize = 10;
/// Most requests tried against one set.
const MAX_REQUESTS: usize = 8;

const SEGMENTS: &[&str] = &["a", "b", "ab", "", "a.b", "%2e", "..", "B"];
const ROUTE_HOSTS: &[&str] = &[
    "a.test",
    "b.a.test",
    "*.a.test",
    "*.test",
    "A.Test",
    "*.b.a.test",
    "x",
];
const REQUEST_HOSTS: &[&str] = &[
    "a.test",
    "b.a.test",
    "c.b.a.test",
    "test",
    "x",
    ".a.test",
    "a..test",
    "",
    "y.x",
];
const REGEX_TAILS: &[&str] = &[
    "[0-9]+", ".*", "b?", "(x|y)", "", "/?", "[a-z]*", "\\.b", "a+", "b{2}", "b*", "/.*", "|/b",
];
const METHODS: &[&str] = &["GET", "POST", "HEAD", "DELETE"];
const VALUES: &[&str] = &["1", "2", "", "a b", "1,2"];
const VALUE_REGEXES: &[&str] = &["[12]", "1|2", ".*", "a+", "(?i)A B"];
const QUERIES: &[&str] = &[
    "q=1", "q=2&v=1", "v=a%20b", "q", "q=1&q=2", "v=a+b", "q=%31", "",
];

/// Runs one input; panics when an invariant does not hold.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::generate(&mut u) else {
        return;
    };
    let table = case.table();
    for request in &case.requests {
        request.check_against(&case.routes, &table);
    }
}

/// A compiled route set and the requests to try on it.
struct Case {
    routes: Vec<Arc<Route>>,
    requests: Vec<Request>,
}

impl Case {
    fn generate(u: &mut Unstructured<'_>) -> Result<Case> {
        let n = u.int_in_range(0..=MAX_ROUTES)?;
        let mut routes = Vec::with_capacity(n);
        for i in 0..n {
            // A spec the registry would refuse is not a route: skip it.
            if let Ok(route) = portico_registry::route::compile(&route_spec(u, i)?, "") {
                routes.push(Arc::new(route));
            }
        }
        let m = u.int_in_range(1..=MAX_REQUESTS)?;
        let mut requests = Vec::with_capacity(m);
        for _ in 0..m {
            requests.push(Request::generate(u)?);
        }
        Ok(Case { routes, requests })
    }

    fn table(&self) -> RouteTable {
        let router = Arc::new(Router::new(&self.routes));
        let entries = self
            .routes
            .iter()
            .map(|route| RouteEntry {
                route: route.clone(),
                endpoints: Arc::new(EndpointSet::default()),
                state: Arc::default(),
                source: portico_gateway::router::RouteSource::File,
                filters: None,
                split: None,
                mirror: None,
            })
            .collect();
        RouteTable::new(router, entries, 0)
    }
}

fn route_spec(u: &mut Unstructured<'_>, i: usize) -> Result<RouteSpec> {
    let mut spec = RouteSpec {
        name: format!("r{i}"),
        upstreams: Some(vec!["127.0.0.1:1".to_string()]),
        ..RouteSpec::default()
    };
    for _ in 0..u.int_in_range(0..=2)? {
        spec.hosts.push(u.choose(ROUTE_HOSTS)?.to_string());
    }
    match u.int_in_range(0..=3)? {
        0 => {}
        1 => spec.path_prefix = Some(path(u)?),
        2 => spec.path = Some(path(u)?),
        _ => spec.path_regex = Some(regex(u)?),
    }
    for _ in 0..u.int_in_range(0..=2)? {
        spec.methods.push(u.choose(METHODS)?.to_string());
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let name = *u.choose(&["x-a", "x-b"])?;
        spec.headers.push(value_match(u, name)?);
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let name = *u.choose(&["q", "v"])?;
        spec.query.push(value_match(u, name)?);
    }
    spec.priority = *u.choose(&[None, Some(0), Some(1), Some(-1), Some(5)])?;
    Ok(spec)
}

fn value_match(u: &mut Unstructured<'_>, name: &str) -> Result<ValueMatchSpec> {
    let mut spec = ValueMatchSpec {
        name: name.to_string(),
        ..ValueMatchSpec::default()
    };
    match u.int_in_range(0..=3)? {
        0 => spec.exact = Some(u.choose(VALUES)?.to_string()),
        1 => spec.regex = Some(u.choose(VALUE_REGEXES)?.to_string()),
        2 => spec.present = Some(true),
        _ => spec.present = Some(false),
    }
    Ok(spec)
}

/// A path from the small alphabet (`/a/b`, `/ab/`, `//`), or now and then
/// whatever the fuzzer wrote.
fn path(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 16)? {
        return Ok(<&str as arbitrary::Arbitrary>::arbitrary(u)?.to_string());
    }
    let mut p = String::new();
    for _ in 0..u.int_in_range(1..=3)? {
        p.push('/');
        p.push_str(u.choose(SEGMENTS)?);
    }
    if u.ratio(1, 4)? {
        p.push('/');
    }
    Ok(p)
}

/// A path regex: a literal path and a tail from a list of shapes (the cases
/// the literal-prefix extraction must be careful with), or raw text.
fn regex(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 8)? {
        return Ok(<&str as arbitrary::Arbitrary>::arbitrary(u)?.to_string());
    }
    let mut r = String::new();
    match u.int_in_range(0..=5)? {
        0 => r.push('^'),
        1 => r.push_str("(?i)"),
        _ => {}
    }
    r.push_str(&path(u)?);
    r.push_str(u.choose(REGEX_TAILS)?);
    if u.ratio(1, 4)? {
        r.push('$');
    }
    Ok(r)
}

/// A request as the gateway hands it to the router: host lowercase without
/// a port, path without the query.
#[derive(Debug)]
struct Request {
    host: Option<String>,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
}

impl Request {
    fn generate(u: &mut Unstructured<'_>) -> Result<Request> {
        let host = if u.ratio(1, 4)? {
            None
        } else {
            Some(u.choose(REQUEST_HOSTS)?.to_string())
        };
        let path = match u.int_in_range(0..=31)? {
            // Asterisk-form (`OPTIONS *`) and an empty path also reach the router.
            0 => "*".to_string(),
            1 => String::new(),
            _ => path(u)?,
        };
        let query = if u.ratio(1, 2)? {
            None
        } else {
            Some(u.choose(QUERIES)?.to_string())
        };
        let method = Method::from_bytes(u.choose(METHODS)?.as_bytes()).expect("a valid method");
        let mut headers = HeaderMap::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let name = HeaderName::from_static(u.choose(&["x-a", "x-b"])?);
            let value = HeaderValue::from_static(u.choose(VALUES)?);
            headers.append(name, value);
        }
        Ok(Request {
            host,
            path,
            query,
            method,
            headers,
        })
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
        }
    }

    fn check_against(&self, routes: &[Arc<Route>], table: &RouteTable) {
        let view = self.view();
        if self.path.starts_with('/') {
            for route in routes {
                regex_stays_under_its_prefix(route, &self.path);
            }
        }
        let fast = table.lookup(&view);
        let full = table.lookup_observed(&view, true, &mut |_| {});
        let name = |m: &Option<router::Matched<'_>>| m.as_ref().map(|m| m.entry.route.name.clone());
        assert_eq!(
            name(&fast),
            name(&full),
            "the exhaustive search disagrees with the fast one for {self:?}"
        );
        let expected = reference(routes, &view).map(|i| routes[i].name.clone());
        assert_eq!(
            name(&fast),
            expected,
            "router and the documented precedence disagree for {self:?} over {routes:#?}"
        );
        if let Some(m) = fast {
            self.holds(&m.entry.route, m.prefix_len);
        }
    }

    /// Every condition of `route` holds for this request.
    fn holds(&self, route: &Route, prefix_len: usize) {
        let view = self.view();
        assert!(
            host_level(route, self.host.as_deref()).is_some(),
            "{} matched {self:?} but names other hosts",
            route.name
        );
        assert!(
            covers(&route.path, &self.path),
            "{} matched {self:?} but its path does not cover it",
            route.name
        );
        assert_eq!(
            router::check(route, &view),
            Ok(()),
            "{} matched {self:?} but its conditions do not hold",
            route.name
        );
        if let PathMatch::Prefix(p) = &route.path {
            assert_eq!(
                prefix_len,
                p.len(),
                "{} reported a wrong prefix",
                route.name
            );
        }
        assert!(
            self.path.is_char_boundary(prefix_len),
            "{}: prefix length {prefix_len} splits {:?}",
            route.name,
            self.path
        );
    }
}

/// A regex route is filed under its literal prefix: any path it matches must
/// start with that prefix, or the router never tries it there.
fn regex_stays_under_its_prefix(route: &Route, path: &str) {
    if let PathMatch::Regex(p) = &route.path
        && p.is_match(path)
    {
        assert!(
            path.starts_with(p.literal_prefix()),
            "{:?} matches {path:?}, outside its literal prefix {:?}",
            p.source(),
            p.literal_prefix()
        );
    }
}

/// Whether a path condition holds, read from the route model's docs: exact
/// equality, a prefix on segment boundaries, a whole-path regex.
fn covers(path_match: &PathMatch, path: &str) -> bool {
    match path_match {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => {
            path == p
                || (path.starts_with(p.as_str())
                    && (p.ends_with('/') || path.as_bytes().get(p.len()) == Some(&b'/')))
        }
        PathMatch::Regex(p) => p.is_match(path),
    }
}

/// The host level at which `route` applies to `host`: 0 for an exact host,
/// 1 + position for a wildcard suffix (longest first), `usize::MAX` for a
/// route with no hosts; `None` when it does not apply.
fn host_level(route: &Route, host: Option<&str>) -> Option<usize> {
    if route.hosts.is_empty() {
        return Some(usize::MAX);
    }
    let host = host?;
    route
        .hosts
        .iter()
        .filter_map(|h| match h {
            HostMatch::Exact(e) => (e == host).then_some(0),
            HostMatch::Wildcard(suffix) => host
                .ends_with(suffix.as_str())
                .then(|| 1 + host.len() - suffix.len()),
        })
        // A longer suffix starts earlier in the host: a smaller, more specific level.
        .min()
}

/// The winner by brute force: the most specific host level with any match,
/// then within it the highest (priority, path rank, regex first, more
/// conditions, earlier route). Only origin-form paths are routed.
fn reference(routes: &[Arc<Route>], view: &RequestView<'_>) -> Option<usize> {
    if !view.path.starts_with('/') {
        return None;
    }
    let matching: Vec<(usize, usize)> = routes
        .iter()
        .enumerate()
        .filter(|(_, r)| covers(&r.path, view.path) && router::check(r, view).is_ok())
        .filter_map(|(i, r)| host_level(r, view.host).map(|level| (i, level)))
        .collect();
    let best_level = matching.iter().map(|&(_, level)| level).min()?;
    matching
        .into_iter()
        .filter(|&(_, level)| level == best_level)
        .map(|(i, _)| i)
        .max_by_key(|&i| {
            let r = &routes[i];
            let (rank, regex) = match &r.path {
                PathMatch::Exact(_) => (usize::MAX, false),
                PathMatch::Prefix(p) => (p.len(), false),
                PathMatch::Regex(p) => (p.literal_prefix().len(), true),
            };
            (
                r.priority,
                rank,
                regex,
                r.conditions(),
                std::cmp::Reverse(i),
            )
        })
}
