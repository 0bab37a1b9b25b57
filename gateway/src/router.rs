//! The routing table: an immutable snapshot matching a request to a route and
//! that route's endpoints.
//!
//! Precedence, documented for operators in `docs/configuration.md`:
//!
//! 1. Host: exact host, then wildcard host (longest suffix first), then routes
//!    with no host. A level is only left when none of its routes match.
//! 2. Within a host level, the highest `priority` among matching routes wins
//!    (default 0).
//! 3. At equal priority the most specific route wins: exact path, then the
//!    longest prefix (a `path_regex` route counts as a prefix route of its
//!    literal prefix, ahead of a plain prefix of that length), then the route
//!    with more conditions (methods, headers, query), then the earlier route.
//!
//! A route whose methods, headers, query or regex do not hold lets the search
//! fall through to the next candidate.
//!
//! Lookup cost depends on the request, not on the table: a hash lookup per
//! host label and per path segment, whatever the number of routes. A regex is
//! only tried for requests whose host and path already reach its literal
//! prefix, and with every priority at its default the first matching
//! candidate ends the search.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::balance::EndpointSet;
use crate::config::{HostMatch, PathMatch, Route};

/// Route maps hash request input on every lookup: a fast hash with a
/// per-process random seed (foldhash) instead of SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A route with the endpoints it currently resolves to.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The route.
    pub route: Arc<Route>,
    /// Its endpoints as of this table.
    pub endpoints: Arc<EndpointSet>,
    /// Its retry budget and limit counters, kept across tables.
    pub state: Arc<crate::breaker::RouteState>,
    /// Where the route came from. An implicit `/{service}` route (auto
    /// routes) is written by no one: it strips its prefix from HTTP requests
    /// but never from a gRPC call, whose server routes on the full
    /// `/{service}/{method}`.
    pub source: RouteSource,
    /// The route's filter chain, kept across tables while its filters stay
    /// the same; `None` (no filters, the common case) costs one branch.
    pub filters: Option<Arc<crate::filter::FilterChain>>,
    /// A route with `targets`: one entry per target, each with the
    /// target's own endpoints (the route, state and filters are the
    /// route's). `endpoints` above is then the union of theirs, for
    /// health checks, metrics and `/explain`; requests are sent through
    /// the target a turn chooses ([`RouteEntry::target`]).
    pub split: Option<Arc<Split>>,
    /// A route with `mirror`: the mirror service's endpoints (empty while
    /// it has none).
    pub mirror: Option<Arc<EndpointSet>>,
}

/// Who wrote a route: the admin listener's `/routes` says so, since a
/// gateway's file routes are visible nowhere else (the registry never sees
/// the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// The gateway's own route file (`--config`).
    File,
    /// The registry's `/v1/routes`.
    Registry,
    /// An implicit `/{service}` route for a discovered service.
    Implicit,
}

impl RouteSource {
    /// The name `/routes` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::File => "file",
            RouteSource::Registry => "registry",
            RouteSource::Implicit => "implicit",
        }
    }
}

/// A split route's targets and their weighted order.
#[derive(Debug)]
pub struct Split {
    /// One entry per target, in the route's order.
    pub targets: Vec<RouteEntry>,
    /// Which target each turn goes to.
    pub order: crate::split::SplitOrder,
}

impl RouteEntry {
    /// The entry a request is sent through: the route itself, or for a
    /// split route the target its next turn chooses (`take`: a request's
    /// turn; otherwise a look that moves nothing, for `/explain`).
    #[inline]
    pub fn target(&self, take: bool) -> (&RouteEntry, Option<crate::split::Chosen>) {
        let Some(split) = &self.split else {
            return (self, None);
        };
        let now = crate::health::now_ms();
        let targets = &split.targets;
        let chosen = split.order.choose(
            &self.state.split_turn,
            take,
            |i| targets[i].endpoints.any_in_rotation(now),
            |i| !targets[i].endpoints.is_empty(),
        );
        match chosen {
            Some(c) => (&targets[c.index], Some(c)),
            None => (self, None),
        }
    }
}

/// What the router looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host, lowercase without a port.
    pub host: Option<&'a str>,
    /// Path, without the query.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// Why a candidate route did not match a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The method is not among the route's methods.
    Method,
    /// The path does not match the route's `path_regex`.
    PathRegex,
    /// Header condition number `n` does not hold.
    Header(usize),
    /// Query condition number `n` does not hold.
    Query(usize),
}

/// Checks everything but host and path position (which the index decides).
pub fn check(route: &Route, req: &RequestView<'_>) -> Result<(), Mismatch> {
    if !route.methods.is_empty() && !route.methods.contains(req.method) {
        return Err(Mismatch::Method);
    }
    if let PathMatch::Regex(p) = &route.path
        && !p.is_match(req.path)
    {
        return Err(Mismatch::PathRegex);
    }
    if let Some(n) = route.headers.iter().position(|h| !h.matches(req.headers)) {
        return Err(Mismatch::Header(n));
    }
    if let Some(n) = route.query.iter().position(|q| !q.matches(req.query)) {
        return Err(Mismatch::Query(n));
    }
    Ok(())
}

/// Which host level a candidate was considered at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level<'a> {
    /// Routes naming this exact host.
    ExactHost(&'a str),
    /// Routes naming `*` + this suffix.
    WildcardHost(&'a str),
    /// Routes naming no host.
    AnyHost,
}

/// One candidate the search looked at, for `/explain`.
#[derive(Debug, Clone, Copy)]
pub struct Considered<'a> {
    /// Index of the route in [`RouteTable::entries`].
    pub index: usize,
    /// Host level.
    pub level: Level<'a>,
    /// The path key that led to it: the exact path or a prefix.
    pub path_key: &'a str,
    /// Whether it matched, or why not.
    pub outcome: Result<(), Mismatch>,
}

#[derive(Debug, Default)]
struct PathTable {
    exact: FastMap<String, Vec<usize>>,
    /// Prefix routes by prefix, and regex routes by their literal prefix.
    prefix: FastMap<String, Vec<usize>>,
    /// Highest priority of any route here: a match at this priority ends
    /// the search at once.
    max_priority: i32,
}

impl PathTable {
    fn insert(&mut self, path: &PathMatch, idx: usize) {
        let (map, key) = match path {
            PathMatch::Exact(p) => (&mut self.exact, p.as_str()),
            PathMatch::Prefix(p) => (&mut self.prefix, p.as_str()),
            PathMatch::Regex(p) => (&mut self.prefix, p.literal_prefix()),
        };
        map.entry(key.to_string()).or_default().push(idx);
    }

    /// Orders each candidate list (priority, then regex before plain
    /// prefix, then more conditions, then route order).
    fn finish(&mut self, routes: &[Arc<Route>]) {
        let mut max = i32::MIN;
        for list in self.exact.values_mut().chain(self.prefix.values_mut()) {
            list.sort_by_key(|&i| {
                let r = &routes[i];
                (
                    Reverse(r.priority),
                    !matches!(r.path, PathMatch::Regex(_)),
                    Reverse(r.conditions()),
                    i,
                )
            });
            max = max.max(
                list.iter()
                    .map(|&i| routes[i].priority)
                    .max()
                    .unwrap_or(max),
            );
        }
        self.max_priority = max;
    }

    fn lookup<'t, F>(
        &'t self,
        req: &RequestView<'_>,
        level: Level<'t>,
        entries: &'t [RouteEntry],
        exhaustive: bool,
        observe: &mut F,
    ) -> Option<(&'t RouteEntry, usize)>
    where
        F: FnMut(Considered<'t>),
    {
        let mut best: Option<(&'t RouteEntry, usize)> = None;
        // Visits one candidate list; true when the search can stop.
        let mut visit = |ids: &[usize], path_key: &'t str, prefix_len: usize| -> bool {
            for &index in ids {
                let entry = &entries[index];
                let outcome = check(&entry.route, req);
                observe(Considered {
                    index,
                    level,
                    path_key,
                    outcome,
                });
                if outcome.is_ok() {
                    let p = entry.route.priority;
                    if best.is_none_or(|(b, _)| p > b.route.priority) {
                        best = Some((entry, prefix_len));
                    }
                    // Lists are in priority order: the first match is the list's best.
                    if !exhaustive {
                        return p >= self.max_priority;
                    }
                }
            }
            false
        };
        let path = req.path;
        // Empty maps are skipped before hashing: most tables have no exact
        // paths, and most requests no host routes.
        if !self.exact.is_empty()
            && let Some((key, ids)) = self.exact.get_key_value(path)
            && visit(ids, key, 0)
        {
            return best;
        }
        if self.prefix.is_empty() {
            return best;
        }
        if let Some((key, ids)) = self.prefix.get_key_value(path)
            && visit(ids, key, path.len())
        {
            return best;
        }
        // Walk segment boundaries from the longest: for "/a/b" try "/a/", "/a", "/".
        let bytes = path.as_bytes();
        let mut end = path.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if slash + 1 < path.len()
                && let Some((key, ids)) = self.prefix.get_key_value(&path[..=slash])
                && visit(ids, key, slash + 1)
            {
                return best;
            }
            if slash > 0
                && let Some((key, ids)) = self.prefix.get_key_value(&path[..slash])
                && visit(ids, key, slash)
            {
                return best;
            }
            end = slash;
        }
        best
    }
}

/// The match index over a set of routes; rebuilt only when routes change.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: FastMap<String, PathTable>,
    /// Keyed by suffix such as `.example.com`.
    wildcard_hosts: FastMap<String, PathTable>,
    any_host: PathTable,
}

impl Router {
    /// Indexes `routes` (positions are the indices returned by lookups).
    pub fn new(routes: &[Arc<Route>]) -> Router {
        let mut router = Router::default();
        for (i, route) in routes.iter().enumerate() {
            if route.hosts.is_empty() {
                router.any_host.insert(&route.path, i);
            }
            for host in &route.hosts {
                let table = match host {
                    HostMatch::Exact(h) => router.exact_hosts.entry(h.clone()).or_default(),
                    HostMatch::Wildcard(s) => router.wildcard_hosts.entry(s.clone()).or_default(),
                };
                table.insert(&route.path, i);
            }
        }
        for table in router
            .exact_hosts
            .values_mut()
            .chain(router.wildcard_hosts.values_mut())
        {
            table.finish(routes);
        }
        router.any_host.finish(routes);
        router
    }
}

/// A routing snapshot: swapped whole, read by each request once.
#[derive(Debug, Default)]
pub struct RouteTable {
    router: Arc<Router>,
    entries: Vec<RouteEntry>,
    /// Registry revision this table reflects (0 for static configs).
    pub revision: u64,
}

/// A successful match.
#[derive(Debug)]
pub struct Matched<'a> {
    /// The matching route and its endpoints.
    pub entry: &'a RouteEntry,
    /// Bytes of the path covered by the route's prefix (for `strip_prefix`).
    pub prefix_len: usize,
}

impl RouteTable {
    /// A table over `entries`, indexed by `router` (built from the same routes
    /// in the same order).
    pub fn new(router: Arc<Router>, entries: Vec<RouteEntry>, revision: u64) -> RouteTable {
        RouteTable {
            router,
            entries,
            revision,
        }
    }

    /// The shared match index.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Every route with its endpoints.
    pub fn entries(&self) -> &[RouteEntry] {
        &self.entries
    }

    /// Finds the route for a request.
    pub fn lookup(&self, req: &RequestView<'_>) -> Option<Matched<'_>> {
        self.lookup_observed(req, false, &mut |_| {})
    }

    /// [`RouteTable::lookup`], reporting every candidate considered to
    /// `observe` (for `/explain`; the request path passes a no-op that the
    /// compiler removes). With `exhaustive`, the search goes on past the
    /// match to report every route covering the request's host and path
    /// (the answer is the same).
    pub fn lookup_observed<'t, F>(
        &'t self,
        req: &RequestView<'_>,
        exhaustive: bool,
        observe: &mut F,
    ) -> Option<Matched<'t>>
    where
        F: FnMut(Considered<'t>),
    {
        let r = &self.router;
        let entries = &self.entries[..];
        let mut found = None;
        // Keeps the first level's match; goes on only when exhaustive.
        let mut take = |hit: Option<(&'t RouteEntry, usize)>| {
            if found.is_none() {
                found = hit;
            }
            found.is_some() && !exhaustive
        };
        'search: {
            if let Some(host) = req.host {
                if let Some((key, t)) = (!r.exact_hosts.is_empty())
                    .then(|| r.exact_hosts.get_key_value(host))
                    .flatten()
                {
                    let hit = t.lookup(req, Level::ExactHost(key), entries, exhaustive, observe);
                    if take(hit) {
                        break 'search;
                    }
                }
                if !r.wildcard_hosts.is_empty() {
                    // ".b.example.com" before ".example.com" before ".com".
                    let mut rest = host;
                    while let Some(dot) = rest.find('.') {
                        if let Some((key, t)) = r.wildcard_hosts.get_key_value(&rest[dot..]) {
                            let level = Level::WildcardHost(key);
                            if take(t.lookup(req, level, entries, exhaustive, observe)) {
                                break 'search;
                            }
                        }
                        rest = &rest[dot + 1..];
                    }
                }
            }
            take(
                r.any_host
                    .lookup(req, Level::AnyHost, entries, exhaustive, observe),
            );
        }
        found.map(|(entry, prefix_len)| Matched { entry, prefix_len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(text: &str) -> RouteTable {
        let config = Config::parse(text).unwrap();
        let router = Arc::new(Router::new(&config.routes));
        let entries = config
            .routes
            .iter()
            .map(|r| RouteEntry {
                route: r.clone(),
                endpoints: Arc::new(EndpointSet::default()),
                state: Arc::default(),
                source: RouteSource::File,
                filters: None,
                split: None,
                mirror: None,
            })
            .collect();
        RouteTable::new(router, entries, 0)
    }

    /// The matched route's name and the prefix length.
    fn find(
        t: &RouteTable,
        host: Option<&str>,
        target: &str,
        method: &Method,
        headers: &[(&str, &str)],
    ) -> Option<(String, usize)> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let req = RequestView {
            host,
            path,
            query,
            method,
            headers: &map,
        };
        t.lookup(&req)
            .map(|m| (m.entry.route.name.to_string(), m.prefix_len))
    }

    fn name(t: &RouteTable, host: Option<&str>, path: &str, method: &Method) -> Option<String> {
        find(t, host, path, method, &[]).map(|(n, _)| n)
    }

    const ROUTES: &str = r#"
        [[route]]
        name = "root"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "api"
        path_prefix = "/api"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "api-v1"
        path_prefix = "/api/v1/"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "api-exact"
        path = "/api/v1/status"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "api-post"
        path_prefix = "/api"
        methods = ["POST"]
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "wild"
        hosts = ["*.example.com"]
        path_prefix = "/api"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "exact-host"
        hosts = ["a.example.com"]
        upstreams = ["127.0.0.1:1"]
    "#;

    #[test]
    fn most_specific_match_wins() {
        let t = table(ROUTES);
        let g = Method::GET;
        assert_eq!(name(&t, None, "/", &g).as_deref(), Some("root"));
        assert_eq!(name(&t, None, "/apix", &g).as_deref(), Some("root"));
        assert_eq!(name(&t, None, "/api", &g).as_deref(), Some("api"));
        assert_eq!(name(&t, None, "/api/x", &g).as_deref(), Some("api"));
        assert_eq!(name(&t, None, "/api/v1", &g).as_deref(), Some("api"));
        assert_eq!(name(&t, None, "/api/v1/x", &g).as_deref(), Some("api-v1"));
        assert_eq!(
            name(&t, None, "/api/v1/status", &g).as_deref(),
            Some("api-exact")
        );
        assert_eq!(
            name(&t, None, "/api/x", &Method::POST).as_deref(),
            Some("api-post")
        );
        // Host: exact beats wildcard beats none, even with a shorter path.
        assert_eq!(
            name(&t, Some("a.example.com"), "/api/x", &g).as_deref(),
            Some("exact-host")
        );
        assert_eq!(
            name(&t, Some("b.example.com"), "/api/x", &g).as_deref(),
            Some("wild")
        );
        assert_eq!(
            name(&t, Some("c.b.example.com"), "/api", &g).as_deref(),
            Some("wild")
        );
        // Wildcard does not match the apex; falls through to host-less routes.
        assert_eq!(
            name(&t, Some("example.com"), "/api", &g).as_deref(),
            Some("api")
        );
        assert_eq!(
            name(&t, Some("b.example.com"), "/other", &g).as_deref(),
            Some("root")
        );
    }

    #[test]
    fn prefix_length_is_reported_for_stripping() {
        let t = table(ROUTES);
        let m = find(&t, None, "/api/v1/x/y", &Method::GET, &[]).unwrap();
        assert_eq!(m.1, "/api/v1/".len());
        let m = find(&t, None, "/api/x", &Method::GET, &[]).unwrap();
        assert_eq!(m.1, "/api".len());
    }

    #[test]
    fn no_match_without_a_catch_all() {
        let t = table(
            "[[route]]\nname=\"a\"\npath_prefix=\"/a\"\nmethods=[\"GET\"]\nupstreams=[\"127.0.0.1:1\"]",
        );
        assert!(name(&t, None, "/b", &Method::GET).is_none());
        assert!(name(&t, None, "/a", &Method::DELETE).is_none());
    }

    const RICH: &str = r#"
        [[route]]
        name = "users-prefix"
        path_prefix = "/users/"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "users-id"
        path_regex = "/users/[0-9]+"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "users-admin"
        path_prefix = "/users/admin/"
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "canary"
        path_prefix = "/users/"
        headers = [{ name = "x-canary", exact = "1" }]
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "v2"
        path_prefix = "/users/"
        query = [{ name = "v", regex = "2|3" }]
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "no-debug"
        path_prefix = "/p"
        headers = [{ name = "x-debug", present = false }]
        upstreams = ["127.0.0.1:1"]
        [[route]]
        name = "root-urgent"
        path_prefix = "/"
        headers = [{ name = "x-urgent", present = true }]
        priority = 10
        upstreams = ["127.0.0.1:1"]
    "#;

    #[test]
    fn regex_headers_query_and_priority() {
        let t = table(RICH);
        let g = &Method::GET;
        let n =
            |path: &str, headers: &[(&str, &str)]| find(&t, None, path, g, headers).map(|m| m.0);
        assert_eq!(n("/users/42", &[]).as_deref(), Some("users-id"));
        assert_eq!(n("/users/abc", &[]).as_deref(), Some("users-prefix"));
        // A longer literal prefix beats a regex on a shorter one.
        assert_eq!(n("/users/admin/1", &[]).as_deref(), Some("users-admin"));
        // Conditions rank ahead of a bare prefix on the same path; the regex still first.
        assert_eq!(
            n("/users/abc", &[("x-canary", "1")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            n("/users/abc", &[("x-canary", "2")]).as_deref(),
            Some("users-prefix")
        );
        assert_eq!(
            n("/users/42", &[("x-canary", "1")]).as_deref(),
            Some("users-id")
        );
        assert_eq!(n("/users/abc?v=3", &[]).as_deref(), Some("v2"));
        assert_eq!(n("/users/abc?v=4", &[]).as_deref(), Some("users-prefix"));
        assert_eq!(n("/p/x", &[]).as_deref(), Some("no-debug"));
        assert_eq!(n("/p/x", &[("x-debug", "")]), None);
        // Priority beats specificity within the host level.
        assert_eq!(
            n("/users/42", &[("x-urgent", "y")]).as_deref(),
            Some("root-urgent")
        );
    }

    #[test]
    fn explain_sees_every_candidate_tried() {
        let t = table(RICH);
        let mut seen = Vec::new();
        let mut map = HeaderMap::new();
        map.insert("x-canary", "2".parse().unwrap());
        let req = RequestView {
            host: None,
            path: "/users/abc",
            query: None,
            method: &Method::GET,
            headers: &map,
        };
        let m = t.lookup_observed(&req, false, &mut |c: Considered<'_>| {
            seen.push((t.entries()[c.index].route.name.to_string(), c.outcome));
        });
        assert_eq!(&*m.unwrap().entry.route.name, "users-prefix");
        // The priority-10 route is in this level, so the search runs on past
        // the first match to make sure nothing outranks it.
        assert!(
            seen.contains(&("canary".to_string(), Err(Mismatch::Header(0)))),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("users-id".to_string(), Err(Mismatch::PathRegex))),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("root-urgent".to_string(), Err(Mismatch::Header(0)))),
            "{seen:?}"
        );

        // Exhaustive search reports more but never changes the answer.
        for (host, path) in [
            (None, "/users/abc"),
            (None, "/users/42"),
            (Some("x.com"), "/p/q"),
        ] {
            let req = RequestView {
                host,
                path,
                query: None,
                method: &Method::GET,
                headers: &map,
            };
            let fast = t.lookup(&req).map(|m| m.entry.route.name.clone());
            let full = t
                .lookup_observed(&req, true, &mut |_| {})
                .map(|m| m.entry.route.name.clone());
            assert_eq!(fast, full, "{path}");
        }

        // A regex is never run for a request outside its literal prefix.
        let req = RequestView {
            host: None,
            path: "/p/users/42",
            query: None,
            method: &Method::GET,
            headers: &map,
        };
        let mut tried = Vec::new();
        t.lookup_observed(&req, true, &mut |c: Considered<'_>| {
            tried.push(t.entries()[c.index].route.name.to_string());
        });
        assert!(!tried.iter().any(|n| n == "users-id"), "{tried:?}");
    }
}
