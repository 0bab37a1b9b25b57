//! The routing table: an immutable snapshot matching a request to a route and
//! that route's endpoints.
//!
//! Precedence (most specific wins): exact host, then wildcard host (longest
//! suffix first), then routes with no host; within a host, exact path, then
//! longer prefix before shorter; within one host and path, a route that names
//! methods before one that accepts any, then file order. A route whose methods
//! do not match lets the search fall through to the next candidate.
//!
//! Lookup cost depends on the request, not on the table: a hash lookup per
//! host label and per path segment, whatever the number of routes.

use std::collections::HashMap;

/// Route maps hash request input on every lookup: a fast hash with a
/// per-process random seed (foldhash) instead of SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use http::Method;

use crate::balance::EndpointSet;
use crate::config::{HostMatch, PathMatch, Route};

/// A route with the endpoints it currently resolves to.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The route.
    pub route: Arc<Route>,
    /// Its endpoints as of this table.
    pub endpoints: Arc<EndpointSet>,
    /// Its retry budget and limit counters, kept across tables.
    pub state: Arc<crate::breaker::RouteState>,
}

#[derive(Debug, Default)]
struct PathTable {
    exact: FastMap<String, Vec<usize>>,
    prefix: FastMap<String, Vec<usize>>,
}

impl PathTable {
    fn insert(&mut self, path: &PathMatch, idx: usize) {
        let (map, key) = match path {
            PathMatch::Exact(p) => (&mut self.exact, p),
            PathMatch::Prefix(p) => (&mut self.prefix, p),
        };
        map.entry(key.clone()).or_default().push(idx);
    }

    fn lookup<'a>(
        &self,
        path: &str,
        method: &Method,
        entries: &'a [RouteEntry],
    ) -> Option<(&'a RouteEntry, usize)> {
        let pick = |ids: Option<&Vec<usize>>| {
            ids?.iter()
                .map(|&i| &entries[i])
                .find(|e| e.route.methods.is_empty() || e.route.methods.contains(method))
        };
        if let Some(e) = pick(self.exact.get(path)) {
            return Some((e, 0));
        }
        if self.prefix.is_empty() {
            return None;
        }
        if let Some(e) = pick(self.prefix.get(path)) {
            return Some((e, path.len()));
        }
        // Walk segment boundaries from the longest: for "/a/b" try "/a/", "/a", "/".
        let bytes = path.as_bytes();
        let mut end = path.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if slash + 1 < path.len() {
                if let Some(e) = pick(self.prefix.get(&path[..=slash])) {
                    return Some((e, slash + 1));
                }
            }
            if slash > 0 {
                if let Some(e) = pick(self.prefix.get(&path[..slash])) {
                    return Some((e, slash));
                }
            }
            end = slash;
        }
        None
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
        let mut order: Vec<usize> = (0..routes.len()).collect();
        // Routes naming methods go first within a bucket; stable, so file order breaks ties.
        order.sort_by_key(|&i| routes[i].methods.is_empty());
        let mut router = Router::default();
        for i in order {
            let route = &routes[i];
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

    /// Finds the route for a request. `host` is lowercase without a port.
    pub fn lookup(&self, host: Option<&str>, path: &str, method: &Method) -> Option<Matched<'_>> {
        let found = self.lookup_host(host, path, method);
        found.map(|(entry, prefix_len)| Matched { entry, prefix_len })
    }

    fn lookup_host(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<(&RouteEntry, usize)> {
        let r = &self.router;
        if let Some(host) = host {
            if let Some(found) = r
                .exact_hosts
                .get(host)
                .and_then(|t| t.lookup(path, method, &self.entries))
            {
                return Some(found);
            }
            if !r.wildcard_hosts.is_empty() {
                // ".b.example.com" before ".example.com" before ".com".
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    let suffix = &rest[dot..];
                    if let Some(found) = r
                        .wildcard_hosts
                        .get(suffix)
                        .and_then(|t| t.lookup(path, method, &self.entries))
                    {
                        return Some(found);
                    }
                    rest = &rest[dot + 1..];
                }
            }
        }
        r.any_host.lookup(path, method, &self.entries)
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
            })
            .collect();
        RouteTable::new(router, entries, 0)
    }

    fn name(t: &RouteTable, host: Option<&str>, path: &str, method: &Method) -> Option<String> {
        t.lookup(host, path, method)
            .map(|m| m.entry.route.name.to_string())
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
        let m = t.lookup(None, "/api/v1/x/y", &Method::GET).unwrap();
        assert_eq!(m.prefix_len, "/api/v1/".len());
        let m = t.lookup(None, "/api/x", &Method::GET).unwrap();
        assert_eq!(m.prefix_len, "/api".len());
    }

    #[test]
    fn no_match_without_a_catch_all() {
        let t = table(
            "[[route]]\nname=\"a\"\npath_prefix=\"/a\"\nmethods=[\"GET\"]\nupstreams=[\"127.0.0.1:1\"]",
        );
        assert!(t.lookup(None, "/b", &Method::GET).is_none());
        assert!(t.lookup(None, "/a", &Method::DELETE).is_none());
    }
}
