//! From registry changes and route files to routing tables.
//!
//! [`TableBuilder`] turns routes plus known instances into an immutable
//! [`RouteTable`]. Routes come from three places, in this order: the route
//! file (static, reloaded on change), the registry's `/v1/routes`, and, with
//! auto routes on, one implicit `/{service}` route per discovered service.
//!
//! An implicit route outlives its service's last instance by
//! [`DEFAULT_AUTO_ROUTE_GRACE`] (`--auto-route-grace`): a service whose only
//! instance restarts (deregisters, then registers again) answers 503
//! `no_healthy_upstream` meanwhile, which clients retry (gRPC's
//! UNAVAILABLE), rather than 404 `no_route` (gRPC's UNIMPLEMENTED, which no
//! client retries). If no instance comes back within the grace, the route
//! goes. The grace lives in this gateway's memory: a gateway started while
//! the service has no instance does not know it.
//!
//! [`run`] (in `follow`) is the one task that owns the builder. It follows
//! the registry watch (when there is a registry; the watch itself runs on a
//! task of its own) and the route file (when there is one): it applies each
//! burst of events, rebuilds what changed (endpoint sets of changed services
//! only; the match index only when routes changed), and swaps the new table
//! in with one atomic store. Requests in flight keep the table they loaded.
//! When the registry is unreachable nothing is swapped, so the gateway keeps
//! serving its last table; with a cache directory, the registry state it
//! applied last is kept on disk and served by a gateway started while no
//! registry answers ([`crate::cache`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use portico_registry::model::Instance;
use portico_registry::route::RouteSpec;

use crate::balance::{Endpoint, EndpointSet};
use crate::breaker::RouteState;
use crate::check::{Checkers, Transport};
use crate::config::{PathMatch, Route, Target};
use crate::filter::FilterChain;
use crate::health::HealthRegistry;
use crate::router::Split;
use crate::router::{RouteEntry, RouteSource, RouteTable, Router};
use crate::split::SplitOrder;
use crate::tls::upstream::UpstreamTlsConfigs;
use portico_registry::route::{Subset, WeightedTarget};

mod follow;

pub use follow::{CACHE_DEBOUNCE, RegistryObjects, run};

/// How long an implicit `/{service}` route stays after the service's last
/// instance is gone: long enough for a restart or a redeploy of a lone
/// instance, short enough that a service taken away for good stops
/// answering 503 within minutes.
pub const DEFAULT_AUTO_ROUTE_GRACE: Duration = Duration::from_secs(300);

/// Builder maps are rebuilt or walked on every table build: a fast hash
/// (foldhash) instead of SipHash keeps a change cheap with many routes.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;
/// Subset endpoint sets by service and subset, each with the instance list
/// it was built from.
type SubsetSets = FastMap<(String, Subset), (Arc<[Instance]>, Arc<EndpointSet>)>;

/// Builds routing tables from routes and discovered instances.
///
/// Keeps everything a rebuild needs between builds: the endpoint set of every
/// service and the match index, which is rebuilt only when the set of routes
/// changes (a route written or deleted, a file reloaded, or a service
/// appearing or disappearing with auto routes on). An instance change
/// therefore costs one endpoint-set build for its service plus one pass over
/// the route list.
#[derive(Debug)]
pub struct TableBuilder {
    /// Routes from the route file.
    file_routes: Vec<Arc<Route>>,
    /// Routes from the registry, by name.
    api_routes: BTreeMap<String, Arc<Route>>,
    /// Give every discovered service an implicit `/{service}` route.
    auto_routes: bool,
    /// File routes, then registry routes, then implicit ones, as indexed by
    /// `router`.
    effective: Vec<Arc<Route>>,
    /// Where the implicit routes start in `effective` (they come last).
    implicit_from: usize,
    router: Arc<Router>,
    routes_changed: bool,
    /// Endpoint sets of static routes, by route name, with the upstream
    /// list they were built from (reused while it is unchanged).
    static_sets: FastMap<Arc<str>, (Arc<Route>, Arc<EndpointSet>)>,
    service_sets: FastMap<String, Arc<EndpointSet>>,
    /// Each service's routable instances, for the subsets of split routes.
    service_instances: FastMap<String, Arc<[Instance]>>,
    /// Endpoint sets of split-route targets with a subset, by service and
    /// subset, with the instance list they were built from (reused while
    /// it is the same, so a subset's round-robin turn carries on).
    subset_sets: SubsetSets,
    empty: Arc<EndpointSet>,
    health: Arc<HealthRegistry>,
    /// Retry budget and limit counters per route name, so a rebuild neither
    /// refills the budget nor forgets requests in flight.
    states: FastMap<Arc<str>, Arc<RouteState>>,
    /// Filter chains by route name, reused while a route's filters are
    /// unchanged so rate-limit counters survive rebuilds.
    chains: FastMap<Arc<str>, Arc<FilterChain>>,
    /// Active health-check tasks, matched to the endpoints at each build.
    checkers: Checkers,
    /// The gateway's zone: discovered instances there are preferred.
    zone: Option<String>,
    /// How long an implicit route outlives its service's last instance.
    auto_route_grace: Duration,
    /// Services without instances whose implicit route is kept, with when
    /// it goes.
    vanished: FastMap<String, Instant>,
    /// Where cluster-scope rate limits get their share.
    cluster: Arc<crate::cluster::Cluster>,
    /// The embedder's own filters, which routes may name.
    custom_filters: crate::filter::custom::FilterRegistry,
    /// A service's endpoints were replaced since the last build, so some
    /// passive-health states may have lost their last endpoint. A prune
    /// walks every state: once per service made a full re-list quadratic
    /// (1,000 services x 100,000 states), and once per build made every
    /// change cost a walk of all of them. It runs when the states may
    /// outnumber the endpoints in use ([`prune_needed`]), so unused states
    /// are bounded and a change costs the walk only now and then.
    prune_due: bool,
}

impl TableBuilder {
    /// A builder over file `routes`; with `auto_routes`, each discovered
    /// service `s` also gets a route `path_prefix = "/s"` with the prefix
    /// stripped, unless another route claims that path.
    ///
    /// `health` is shared with every other builder of the same gateway, so
    /// passive-health state follows an endpoint from table to table.
    pub fn new(
        routes: Vec<Arc<Route>>,
        auto_routes: bool,
        health: Arc<HealthRegistry>,
    ) -> TableBuilder {
        TableBuilder {
            file_routes: routes,
            api_routes: BTreeMap::new(),
            auto_routes,
            effective: Vec::new(),
            implicit_from: 0,
            router: Arc::new(Router::default()),
            routes_changed: true,
            static_sets: FastMap::default(),
            service_sets: FastMap::default(),
            service_instances: FastMap::default(),
            subset_sets: FastMap::default(),
            empty: Arc::new(EndpointSet::default()),
            health,
            states: FastMap::default(),
            chains: FastMap::default(),
            checkers: Checkers::default(),
            zone: None,
            auto_route_grace: DEFAULT_AUTO_ROUTE_GRACE,
            vanished: FastMap::default(),
            cluster: Arc::default(),
            custom_filters: Default::default(),
            prune_due: false,
        }
    }

    /// The custom filters routes may list (`type = "custom"`).
    pub fn with_filters(mut self, filters: crate::filter::custom::FilterRegistry) -> TableBuilder {
        self.custom_filters = filters;
        self
    }

    /// Divides cluster-scope rate limits with the peers `cluster` knows
    /// (without: each counts as if this gateway were alone).
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> TableBuilder {
        self.cluster = cluster;
        self
    }

    /// Keeps an implicit route for `grace` after its service's last
    /// instance is gone (zero: it goes with the instance).
    pub fn with_auto_route_grace(mut self, grace: Duration) -> TableBuilder {
        self.auto_route_grace = grace;
        self
    }

    /// When the next kept implicit route is due to go.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.vanished.values().min().copied()
    }

    /// Drops the implicit routes whose grace is over at `now`; true when
    /// any went (the table must be rebuilt).
    pub fn expire_vanished(&mut self, now: Instant) -> bool {
        let due: Vec<String> = self
            .vanished
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(s, _)| s.clone())
            .collect();
        for service in &due {
            self.vanished.remove(service);
            self.service_sets.remove(service);
        }
        if !due.is_empty() {
            self.routes_changed = true;
        }
        !due.is_empty()
    }

    /// Active checks of `https` endpoints connect as the data path does,
    /// with `configs` (without: such checks fail).
    pub fn with_upstream_tls(mut self, configs: Arc<UpstreamTlsConfigs>) -> TableBuilder {
        self.checkers = Checkers::with_upstream_tls(configs);
        self
    }

    /// Prefers instances registered in `zone` (the gateway's own).
    pub fn with_zone(mut self, zone: Option<String>) -> TableBuilder {
        self.zone = zone;
        self
    }

    /// Replaces the route file's routes (a reload).
    pub fn set_file_routes(&mut self, routes: Vec<Arc<Route>>) {
        if routes != self.file_routes {
            self.file_routes = routes;
            self.routes_changed = true;
        }
    }

    /// Applies a route written in the registry. A route the registry
    /// accepted always compiles here too (the same code validates both), so
    /// a failure means a registry of another version: it is logged and the
    /// previous version of the route, if any, is dropped rather than served
    /// stale.
    pub fn put_api_route(&mut self, spec: &RouteSpec) {
        match portico_registry::route::compile(spec, "") {
            Ok(route) => {
                let route = Arc::new(route);
                if self.api_routes.get(&spec.name) != Some(&route) {
                    self.api_routes.insert(spec.name.clone(), route);
                    self.routes_changed = true;
                }
            }
            Err(e) => {
                tracing::error!(route = %spec.name, error = %e.reason, "registry route refused");
                self.delete_api_route(&spec.name);
            }
        }
    }

    /// Removes a registry route.
    pub fn delete_api_route(&mut self, name: &str) {
        if self.api_routes.remove(name).is_some() {
            self.routes_changed = true;
        }
    }

    /// Forgets every registry route (before a snapshot re-lists them).
    pub fn clear_api_routes(&mut self) {
        if !self.api_routes.is_empty() {
            self.api_routes.clear();
            self.routes_changed = true;
        }
    }

    /// Replaces one service's routable endpoints (rebuilt from its instances).
    pub fn set_service(&mut self, service: &str, instances: &BTreeMap<String, Instance>) {
        let routable: Arc<[Instance]> = instances
            .values()
            .filter(|i| i.status.routable())
            .cloned()
            .collect();
        if routable.is_empty() {
            self.service_instances.remove(service);
        } else {
            self.service_instances.insert(service.to_string(), routable);
        }
        if instances.is_empty() {
            let known = self.service_sets.contains_key(service);
            if known && self.auto_routes && !self.auto_route_grace.is_zero() {
                // Its implicit route stays (answering 503) for the grace.
                self.service_sets
                    .insert(service.to_string(), self.empty.clone());
                self.vanished
                    .entry(service.to_string())
                    .or_insert_with(|| Instant::now() + self.auto_route_grace);
                return;
            }
            if self.service_sets.remove(service).is_some() && self.auto_routes {
                self.routes_changed = true;
            }
            return;
        }
        self.vanished.remove(service);
        let endpoints = instances
            .values()
            .filter(|i| i.status.routable())
            .filter_map(|i| Endpoint::from_instance(i, &self.health))
            .collect();
        let fresh = self
            .service_sets
            .insert(
                service.to_string(),
                Arc::new(EndpointSet::with_zone(endpoints, self.zone.as_deref())),
            )
            .is_none();
        self.prune_due = true;
        if fresh && self.auto_routes {
            self.routes_changed = true;
        }
    }

    /// The effective route list: file routes, registry routes whose name no
    /// file route uses, then implicit routes for paths nobody claims; and
    /// where the implicit ones start.
    fn effective_routes(&self) -> (Vec<Arc<Route>>, usize) {
        let names: FastSet<&str> = self.file_routes.iter().map(|r| &*r.name).collect();
        let mut out: Vec<Arc<Route>> =
            Vec::with_capacity(self.file_routes.len() + self.api_routes.len());
        out.extend(self.file_routes.iter().cloned());
        // The registry refuses two of its routes with the same match, but it
        // cannot see this gateway's file: a registry route that duplicates a
        // file route's match could never be reached, so it is left out, loudly.
        let file_matches: FastSet<String> = if self.api_routes.is_empty() {
            FastSet::default()
        } else {
            self.file_routes
                .iter()
                .map(|r| portico_registry::route::match_key(r))
                .collect()
        };
        for (name, route) in &self.api_routes {
            if names.contains(name.as_str()) {
                tracing::warn!(route = %name, "registry route ignored: the route file has one of that name");
            } else if file_matches.contains(&portico_registry::route::match_key(route)) {
                tracing::warn!(route = %name, "registry route ignored: a route in the route file matches exactly the same requests");
            } else {
                out.push(route.clone());
            }
        }
        if self.auto_routes {
            // Paths claimed for every request (no host, method, header or
            // query condition): an implicit route never shadows them.
            let claimed: HashSet<&str> = out
                .iter()
                .filter(|r| r.hosts.is_empty() && r.conditions() == 0)
                .filter_map(|r| match &r.path {
                    PathMatch::Prefix(p) => Some(p.as_str()),
                    _ => None,
                })
                .collect();
            let mut services: Vec<&String> = self.service_sets.keys().collect();
            services.sort();
            let auto: Vec<Arc<Route>> = services
                .into_iter()
                .filter(|s| !claimed.contains(format!("/{s}").as_str()))
                .map(|s| {
                    let mut r = Route::to_service(
                        &format!("auto:{s}"),
                        PathMatch::Prefix(format!("/{s}")),
                        s,
                    );
                    r.strip_prefix = true;
                    Arc::new(r)
                })
                .collect();
            let from = out.len();
            out.extend(auto);
            return (out, from);
        }
        let from = out.len();
        (out, from)
    }

    /// A new table reflecting the current routes and instances.
    pub fn build(&mut self, revision: u64) -> RouteTable {
        if self.routes_changed {
            (self.effective, self.implicit_from) = self.effective_routes();
            self.router = Arc::new(Router::new(&self.effective));
            self.routes_changed = false;
            // Every effective route has a state, so more states than routes
            // means some belong to routes that are gone.
            if self.states.len() > self.effective.len() {
                let names: FastSet<&Arc<str>> = self.effective.iter().map(|r| &r.name).collect();
                self.states.retain(|name, _| names.contains(name));
            }
            self.chains = filter_chains(
                &self.effective,
                std::mem::take(&mut self.chains),
                &self.cluster,
                &self.custom_filters,
            );
            let mut sets = FastMap::default();
            for r in &self.effective {
                if let Target::Static(list) = &r.target {
                    // Reused while the route is the same one (or has the same upstreams).
                    let set = match self.static_sets.remove(&r.name) {
                        Some((old, set)) if Arc::ptr_eq(&old, r) || old.target == r.target => set,
                        _ => Arc::new(EndpointSet::new(
                            list.iter()
                                .cloned()
                                .map(|a| Endpoint::from_static(a, &self.health))
                                .collect(),
                        )),
                    };
                    sets.insert(r.name.clone(), (r.clone(), set));
                }
            }
            self.static_sets = sets;
        }
        let mut subset_sets = std::mem::take(&mut self.subset_sets);
        let mut used_subsets = FastMap::default();
        let mut entries = Vec::with_capacity(self.effective.len());
        for (i, route) in self.effective.iter().enumerate() {
            let state = self.states.entry(route.name.clone()).or_default().clone();
            let mut entry = RouteEntry {
                route: route.clone(),
                endpoints: self.empty.clone(),
                state,
                source: if i >= self.implicit_from {
                    RouteSource::Implicit
                } else if i < self.file_routes.len() {
                    RouteSource::File
                } else {
                    RouteSource::Registry
                },
                filters: self.chains.get(&route.name).cloned(),
                split: None,
                mirror: route.mirror.as_ref().map(|m| {
                    self.service_sets
                        .get(&m.service)
                        .cloned()
                        .unwrap_or_else(|| self.empty.clone())
                }),
            };
            match &route.target {
                Target::Static(_) => {
                    if let Some((_, set)) = self.static_sets.get(&route.name) {
                        entry.endpoints = set.clone();
                    }
                }
                Target::Service(s) => {
                    if let Some(set) = self.service_sets.get(s) {
                        entry.endpoints = set.clone();
                    }
                }
                Target::Split(targets) => {
                    let sets = targets
                        .iter()
                        .map(|t| self.target_set(t, &mut subset_sets, &mut used_subsets))
                        .collect();
                    entry = split_entry(entry, targets, sets);
                }
            }
            entries.push(entry);
        }
        self.subset_sets = used_subsets;
        if self.prune_due {
            let in_use = self.service_sets.values().map(|s| s.len()).sum::<usize>()
                + self
                    .static_sets
                    .values()
                    .map(|(_, s)| s.len())
                    .sum::<usize>();
            if prune_needed(self.health.len(), in_use) {
                // States still held by the table being served survive this
                // prune and go at a later one.
                self.health.prune();
                self.prune_due = false;
            }
        }
        let table = RouteTable::new(self.router.clone(), entries, revision);
        let wanted = table
            .entries()
            .iter()
            .filter_map(|e| e.route.health_check.as_ref().map(|c| (e, c)))
            .flat_map(|(e, c)| {
                let tls = e.route.upstream_tls.as_ref();
                e.endpoints
                    .endpoints()
                    .iter()
                    .map(move |ep| (ep, c.clone(), Transport::of(ep, tls)))
            })
            .collect();
        self.checkers.reconcile(wanted);
        table
    }
}

impl TableBuilder {
    /// The endpoints of one split target: the service's set when the
    /// subset takes every instance, else the subset's own (reused from
    /// `old` while the service's instances are the same), noted in `used`.
    fn target_set(
        &self,
        target: &WeightedTarget,
        old: &mut SubsetSets,
        used: &mut SubsetSets,
    ) -> Arc<EndpointSet> {
        if target.subset.is_all() {
            return self
                .service_sets
                .get(&target.service)
                .cloned()
                .unwrap_or_else(|| self.empty.clone());
        }
        let Some(instances) = self.service_instances.get(&target.service) else {
            return self.empty.clone();
        };
        let key = (target.service.clone(), target.subset.clone());
        if let Some(found) = used.get(&key) {
            return found.1.clone();
        }
        let set = match old.remove(&key) {
            Some((from, set)) if Arc::ptr_eq(&from, instances) => set,
            _ => Arc::new(EndpointSet::with_zone(
                instances
                    .iter()
                    .filter(|i| target.subset.admits(&i.spec.tags, &i.spec.meta))
                    .filter_map(|i| Endpoint::from_instance(i, &self.health))
                    .collect(),
                self.zone.as_deref(),
            )),
        };
        used.insert(key, (instances.clone(), set.clone()));
        set
    }
}

/// Whether `held` passive-health states may hold many unused ones, with
/// `in_use` endpoints in the builder's sets (subsets share their service's
/// states): more than twice as many, plus some slack for small tables.
fn prune_needed(held: usize, in_use: usize) -> bool {
    held > 2 * in_use + 64
}

/// A split route's entry: one entry per target with the target's set,
/// the order of their turns, and as the route's own endpoints the union
/// of the targets' (each endpoint once), which health checks, metrics and
/// `/explain` go through.
fn split_entry(
    mut entry: RouteEntry,
    targets: &[WeightedTarget],
    sets: Vec<Arc<EndpointSet>>,
) -> RouteEntry {
    let mut union: Vec<Endpoint> = Vec::new();
    for set in &sets {
        for e in set.endpoints() {
            if !union.iter().any(|u| u.authority == e.authority) {
                union.push(e.clone());
            }
        }
    }
    entry.endpoints = Arc::new(EndpointSet::new(union));
    let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
    let per_target = sets
        .into_iter()
        .map(|endpoints| RouteEntry {
            endpoints,
            split: None,
            mirror: None,
            ..entry.clone()
        })
        .collect();
    entry.split = Some(Arc::new(Split {
        targets: per_target,
        order: SplitOrder::new(&weights),
    }));
    entry
}

/// The filter chains of `routes` (only those with filters), reusing from
/// `old` each chain whose route's filters did not change.
fn filter_chains(
    routes: &[Arc<Route>],
    mut old: FastMap<Arc<str>, Arc<FilterChain>>,
    cluster: &crate::cluster::Cluster,
    custom: &crate::filter::custom::FilterRegistry,
) -> FastMap<Arc<str>, Arc<FilterChain>> {
    let mut chains = FastMap::default();
    for r in routes.iter().filter(|r| !r.filters.is_empty()) {
        let chain = match old.remove(&r.name) {
            Some(c) if c.built_from(&r.filters) => c,
            _ => match FilterChain::build(&r.filters, custom) {
                Some(c) => {
                    if let Some(why) = c.unavailable() {
                        tracing::error!(route = %r.name, "route refuses every request (503 filter_unavailable): {why}");
                    }
                    // Its cluster-scope limits (id `{route}/filters[N]`) get
                    // their share of the limit from now on.
                    for limit in c.limiters().iter().filter(|l| l.is_cluster()) {
                        cluster
                            .register_limit(format!("{}/{}", r.name, limit.name()), limit.share());
                    }
                    Arc::new(c)
                }
                None => continue,
            },
        };
        chains.insert(r.name.clone(), chain);
    }
    chains
}

/// What a gateway knows about its registry feed and route file, for
/// operators (`/status` on the admin listener) and tests.
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    /// Registry revision of the table being served.
    pub applied_revision: AtomicU64,
    /// Highest registry revision heard of (a progress line may announce
    /// one before the table catches up).
    pub seen_revision: AtomicU64,
    /// Number of tables built.
    pub rebuilds: AtomicU64,
    /// Unix ms when the last table was swapped in.
    pub applied_at_ms: AtomicU64,
    /// Microseconds the last rebuild took, from the event burst's arrival to
    /// the swap.
    pub last_build_us: AtomicU64,
    /// Whether the registry watch is connected.
    pub connected: AtomicBool,
    /// Route file reloads applied, and refused.
    pub reloads: AtomicU64,
    /// Route file reloads refused (the previous routes kept serving).
    pub reload_failures: AtomicU64,
    /// Times the registry watch re-listed (a snapshot) after a line it could
    /// not decode.
    pub resyncs: AtomicU64,
    /// Whether the table is built from the registry-state cache: no
    /// registry has answered since start.
    pub serving_cache: AtomicBool,
    /// Unix ms when the cache being served was written (0: none served).
    pub cache_saved_at_ms: AtomicU64,
    /// Registry revision of the cache being served.
    pub cache_revision: AtomicU64,
    /// Unix ms of the last cache write (0: none yet).
    pub cache_written_at_ms: AtomicU64,
    /// Cache writes that failed.
    pub cache_write_failures: AtomicU64,
}

impl DiscoveryStatus {
    /// Age of the cached registry state being served, while one is.
    pub fn cache_age_ms(&self) -> Option<u64> {
        self.serving_cache.load(Ordering::Relaxed).then(|| {
            crate::cache::unix_ms().saturating_sub(self.cache_saved_at_ms.load(Ordering::Relaxed))
        })
    }

    /// The `cache` object of the admin `/status`.
    pub fn cache_json(&self) -> serde_json::Value {
        let written = self.cache_written_at_ms.load(Ordering::Relaxed);
        serde_json::json!({
            "serving_cached_state": self.serving_cache.load(Ordering::Relaxed),
            "revision": self.serving_cache.load(Ordering::Relaxed)
                .then(|| self.cache_revision.load(Ordering::Relaxed)),
            "age_ms": self.cache_age_ms(),
            "last_written_unix_ms": (written > 0).then_some(written),
            "write_failures": self.cache_write_failures.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use portico_registry::model::{InstanceSpec, Status};

    use super::*;
    use crate::config::Config;

    fn instances(ids: &[(&str, Status)]) -> BTreeMap<String, Instance> {
        ids.iter()
            .map(|(id, status)| {
                let i = Instance {
                    service: "svc".into(),
                    id: (*id).into(),
                    spec: InstanceSpec::new("127.0.0.1", 9000),
                    status: *status,
                    registered_at_ms: 0,
                    status_since_ms: 0,
                    revision: 1,
                    check_failing: false,
                };
                ((*id).to_string(), i)
            })
            .collect()
    }

    fn find<'t>(t: &'t RouteTable, path: &str) -> Option<crate::router::Matched<'t>> {
        let headers = http::HeaderMap::new();
        let req = crate::router::RequestView {
            host: None,
            path,
            query: None,
            method: &http::Method::GET,
            headers: &headers,
        };
        // The match borrows the table only; re-find to detach it from `req`.
        let index = t
            .lookup(&req)
            .map(|m| (m.entry.route.name.clone(), m.prefix_len))?;
        t.entries()
            .iter()
            .find(|e| e.route.name == index.0)
            .map(|entry| crate::router::Matched {
                entry,
                prefix_len: index.1,
            })
    }

    /// The table build a gateway does after a full re-list (issue 14):
    /// `services` services of `per_service` instances each, every address
    /// its own (as `bench/registry_load` registers them), auto routes on.
    /// Returns the time the first build took, then the time one more
    /// instance of one service took to reach a table, then a new service.
    fn relist_build(services: usize, per_service: usize) -> (Duration, Duration, Duration) {
        let instance = |s: usize, i: usize| {
            let n = s * per_service + i;
            let spec = InstanceSpec::new(
                format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255),
                8080,
            );
            Instance {
                service: format!("svc-{s}"),
                id: format!("i{n}"),
                spec,
                status: Status::Passing,
                registered_at_ms: 0,
                status_since_ms: 0,
                revision: 1,
                check_failing: false,
            }
        };
        let all: Vec<BTreeMap<String, Instance>> = (0..services)
            .map(|s| {
                (0..per_service)
                    .map(|i| (format!("i{i}"), instance(s, i)))
                    .collect()
            })
            .collect();
        let mut b = TableBuilder::new(Vec::new(), true, Arc::default());
        let started = std::time::Instant::now();
        for (s, instances) in all.iter().enumerate() {
            b.set_service(&format!("svc-{s}"), instances);
        }
        let table = b.build(1);
        let first = started.elapsed();
        assert_eq!(table.entries().len(), services);
        let mut grown = all[0].clone();
        grown.insert("new".into(), instance(services, 0));
        let started = std::time::Instant::now();
        b.set_service("svc-0", &grown);
        let table = b.build(2);
        let one = started.elapsed();
        assert_eq!(
            find(&table, "/svc-0/x").unwrap().entry.endpoints.len(),
            per_service + 1
        );
        // A new service (what bench/propagation registers): its implicit
        // route makes the route list change.
        let started = std::time::Instant::now();
        b.set_service(
            "new-svc",
            &[("x".to_string(), instance(services + 1, 0))].into(),
        );
        let table = b.build(3);
        let fresh = started.elapsed();
        assert!(find(&table, "/new-svc/x").is_some());
        (first, one, fresh)
    }

    /// Not a timed test (nothing is asserted about time): prints the build
    /// times at 10k, 50k and 100k instances over 1,000 services, so their
    /// growth can be read. Run with
    /// `cargo test --release -p portico-gateway --lib relist_build_scale -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a test: run by hand"]
    fn relist_build_scale() {
        for per_service in [10, 50, 100] {
            let (first, one, fresh) = relist_build(1000, per_service);
            println!(
                "{} instances over 1,000 services: full re-list build {:?}, one instance more {:?}, a new service {:?}",
                per_service * 1000,
                first,
                one,
                fresh
            );
        }
    }

    #[test]
    fn a_relisted_table_routes_every_service() {
        relist_build(20, 5);
    }

    #[test]
    fn unused_health_states_are_pruned_once_they_outnumber_the_used_ones() {
        let health: Arc<HealthRegistry> = Arc::default();
        let mut b = TableBuilder::new(Vec::new(), true, health.clone());
        let many: BTreeMap<String, Instance> = (0..200)
            .map(|n| {
                let mut i = instances(&[("x", Status::Passing)]).remove("x").unwrap();
                i.id = format!("i{n}");
                i.spec = InstanceSpec::new(format!("10.0.{}.{}", n / 256, n % 256), 80);
                (i.id.clone(), i)
            })
            .collect();
        b.set_service("svc", &many);
        drop(b.build(1));
        assert_eq!(health.len(), 200);
        let few: BTreeMap<String, Instance> = many.into_iter().take(150).collect();
        b.set_service("svc", &few);
        drop(b.build(2));
        assert_eq!(health.len(), 200, "50 unused of 200: kept for now");
        let one: BTreeMap<String, Instance> = few.into_iter().take(1).collect();
        b.set_service("svc", &one);
        drop(b.build(3));
        assert_eq!(health.len(), 1, "199 unused of 200: pruned");
    }

    #[test]
    fn auto_routes_follow_services_and_yield_to_configured_paths() {
        let config = Config::parse(
            "[[route]]\nname = \"claimed\"\npath_prefix = \"/taken\"\nupstreams = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let mut b = TableBuilder::new(config.routes, true, Arc::default());
        b.set_service(
            "svc",
            &instances(&[("a", Status::Passing), ("b", Status::Critical)]),
        );
        b.set_service("taken", &instances(&[("t", Status::Passing)]));
        let t = b.build(1);
        let m = find(&t, "/svc/x").unwrap();
        assert_eq!(&*m.entry.route.name, "auto:svc");
        assert_eq!(
            m.entry.endpoints.len(),
            1,
            "critical instances are not routable"
        );
        let m = find(&t, "/taken").unwrap();
        assert_eq!(&*m.entry.route.name, "claimed");
        assert_eq!(m.entry.source, RouteSource::File);
        assert_eq!(
            find(&t, "/svc/x").unwrap().entry.source,
            RouteSource::Implicit
        );

        b.set_service("svc", &BTreeMap::new());
        let t = b.build(2);
        let m = find(&t, "/svc/x").expect("the implicit route outlives the last instance");
        assert_eq!(m.entry.endpoints.len(), 0, "and answers 503");
        assert_eq!(t.revision, 2);
        let due = b.next_expiry().expect("its grace is running");
        assert!(!b.expire_vanished(due - Duration::from_millis(1)));
        b.set_service("svc", &instances(&[("c", Status::Passing)]));
        assert_eq!(b.next_expiry(), None, "an instance back ends the grace");
        b.set_service("svc", &BTreeMap::new());
        let due = b.next_expiry().unwrap();
        assert!(b.expire_vanished(due));
        let t = b.build(3);
        assert!(find(&t, "/svc/x").is_none(), "gone once the grace is over");
    }

    #[test]
    fn without_a_grace_the_implicit_route_goes_with_the_last_instance() {
        let mut b = TableBuilder::new(Vec::new(), true, Arc::default())
            .with_auto_route_grace(Duration::ZERO);
        b.set_service("svc", &instances(&[("a", Status::Passing)]));
        assert!(find(&b.build(1), "/svc/x").is_some());
        b.set_service("svc", &BTreeMap::new());
        assert!(find(&b.build(2), "/svc/x").is_none());
    }

    #[test]
    fn registry_routes_yield_to_file_routes_by_name_and_by_match() {
        let config = Config::parse(
            "[[route]]\nname = \"file\"\npath_prefix = \"/taken\"\nupstreams = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let mut b = TableBuilder::new(config.routes, false, Arc::default());
        let spec = |name: &str, path: &str| RouteSpec {
            name: name.into(),
            path_prefix: Some(path.into()),
            upstreams: Some(vec!["127.0.0.1:2".into()]),
            ..RouteSpec::default()
        };
        b.put_api_route(&spec("same-match", "/taken"));
        b.put_api_route(&spec("file", "/elsewhere"));
        b.put_api_route(&spec("fine", "/free"));
        let t = b.build(1);
        let names: Vec<&str> = t.entries().iter().map(|e| &*e.route.name).collect();
        assert_eq!(names, ["file", "fine"]);
        let sources: Vec<RouteSource> = t.entries().iter().map(|e| e.source).collect();
        assert_eq!(sources, [RouteSource::File, RouteSource::Registry]);
        assert_eq!(&*find(&t, "/taken/x").unwrap().entry.route.name, "file");
    }
}
