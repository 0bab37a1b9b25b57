//! From registry changes to routing tables.
//!
//! [`TableBuilder`] turns routes plus known instances into an immutable
//! [`RouteTable`]. [`follow`] runs the registry watch: it applies each burst of
//! events to its instance map, rebuilds the endpoint sets of the services that
//! changed (and only those), and swaps the new table in with one atomic store.
//! Requests in flight keep the table they loaded. When the registry is
//! unreachable nothing is swapped, so the gateway keeps serving its last table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use portico_registry::model::{Instance, WatchEvent};

use crate::balance::{Endpoint, EndpointSet};
use crate::breaker::RouteState;
use crate::check::Checkers;
use crate::config::{PathMatch, Route, Target};
use crate::health::HealthRegistry;
use crate::router::{RouteEntry, RouteTable, Router};

/// Builds routing tables from routes and discovered instances.
///
/// Keeps everything a rebuild needs between builds: the endpoint set of every
/// service, the implicit route of every service, and the match index, which
/// is rebuilt only when the set of routes changes (a service appearing or
/// disappearing with auto routes on). An instance change therefore costs one
/// endpoint-set build for its service plus one pass over the route list.
#[derive(Debug)]
pub struct TableBuilder {
    routes: Vec<Arc<Route>>,
    /// Give every discovered service an implicit `/{service}` route.
    auto_routes: bool,
    /// Implicit route per discovered service, when `auto_routes`.
    auto: BTreeMap<String, Arc<Route>>,
    /// Paths that configured routes already claim without host or method
    /// restrictions; an implicit route never shadows them.
    claimed: HashSet<PathMatch>,
    /// Configured routes then implicit ones, as indexed by `router`.
    effective: Vec<Arc<Route>>,
    router: Arc<Router>,
    routes_changed: bool,
    static_sets: HashMap<String, Arc<EndpointSet>>,
    service_sets: HashMap<String, Arc<EndpointSet>>,
    empty: Arc<EndpointSet>,
    health: Arc<HealthRegistry>,
    /// Retry budget and limit counters per route name, so a rebuild neither
    /// refills the budget nor forgets requests in flight.
    states: HashMap<Arc<str>, Arc<RouteState>>,
    /// Active health-check tasks, matched to the endpoints at each build.
    checkers: Checkers,
    /// The gateway's zone: discovered instances there are preferred.
    zone: Option<String>,
}

impl TableBuilder {
    /// A builder over configured `routes`; with `auto_routes`, each
    /// discovered service `s` also gets a route `path_prefix = "/s"` with the
    /// prefix stripped, unless a configured route claims that path.
    ///
    /// `health` is shared with every other builder of the same gateway, so
    /// passive-health state follows an endpoint from table to table.
    pub fn new(
        routes: Vec<Arc<Route>>,
        auto_routes: bool,
        health: Arc<HealthRegistry>,
    ) -> TableBuilder {
        let static_sets = routes
            .iter()
            .filter_map(|r| match &r.target {
                Target::Static(list) => Some((
                    r.name.to_string(),
                    Arc::new(EndpointSet::new(
                        list.iter()
                            .cloned()
                            .map(|a| Endpoint::from_static(a, &health))
                            .collect(),
                    )),
                )),
                Target::Service(_) => None,
            })
            .collect();
        let claimed = routes
            .iter()
            .filter(|r| r.hosts.is_empty() && r.methods.is_empty())
            .map(|r| r.path.clone())
            .collect();
        TableBuilder {
            routes,
            auto_routes,
            auto: BTreeMap::new(),
            claimed,
            effective: Vec::new(),
            router: Arc::new(Router::default()),
            routes_changed: true,
            static_sets,
            service_sets: HashMap::new(),
            empty: Arc::new(EndpointSet::default()),
            health,
            states: HashMap::new(),
            checkers: Checkers::default(),
            zone: None,
        }
    }

    /// Prefers instances registered in `zone` (the gateway's own).
    pub fn with_zone(mut self, zone: Option<String>) -> TableBuilder {
        self.zone = zone;
        self
    }

    /// Replaces one service's routable endpoints (rebuilt from its instances).
    pub fn set_service(&mut self, service: &str, instances: &BTreeMap<String, Instance>) {
        if instances.is_empty() {
            self.service_sets.remove(service);
            if self.auto.remove(service).is_some() {
                self.routes_changed = true;
            }
            return;
        }
        let endpoints = instances
            .values()
            .filter(|i| i.status.routable())
            .filter_map(|i| Endpoint::from_instance(i, &self.health))
            .collect();
        self.service_sets.insert(
            service.to_string(),
            Arc::new(EndpointSet::with_zone(endpoints, self.zone.as_deref())),
        );
        self.health.prune();
        if self.auto_routes && !self.auto.contains_key(service) {
            let path = PathMatch::Prefix(format!("/{service}"));
            if !self.claimed.contains(&path) {
                self.auto.insert(
                    service.to_string(),
                    Arc::new(Route {
                        name: format!("auto:{service}").into(),
                        hosts: Vec::new(),
                        path,
                        methods: Vec::new(),
                        target: Target::Service(service.to_string()),
                        strip_prefix: true,
                        timeout: crate::config::DEFAULT_ROUTE_TIMEOUT,
                        lb: crate::config::Balance::default(),
                        retry: None,
                        limits: crate::breaker::Limits::default(),
                        breaker: None,
                        health_check: None,
                        slow_start: None,
                    }),
                );
                self.routes_changed = true;
            }
        }
    }

    /// A new table reflecting the current routes and instances.
    pub fn build(&mut self, revision: u64) -> RouteTable {
        if self.routes_changed {
            self.effective = self
                .routes
                .iter()
                .chain(self.auto.values())
                .cloned()
                .collect();
            self.router = Arc::new(Router::new(&self.effective));
            self.routes_changed = false;
            let names: HashSet<&Arc<str>> = self.effective.iter().map(|r| &r.name).collect();
            self.states.retain(|name, _| names.contains(name));
        }
        let (static_sets, service_sets, empty, states) = (
            &self.static_sets,
            &self.service_sets,
            &self.empty,
            &mut self.states,
        );
        let entries = self
            .effective
            .iter()
            .map(|route| {
                let endpoints = match &route.target {
                    Target::Static(_) => static_sets.get(route.name.as_ref()),
                    Target::Service(s) => service_sets.get(s),
                }
                .cloned()
                .unwrap_or_else(|| empty.clone());
                let state = states.entry(route.name.clone()).or_default().clone();
                RouteEntry {
                    route: route.clone(),
                    endpoints,
                    state,
                }
            })
            .collect();
        let table = RouteTable::new(self.router.clone(), entries, revision);
        let wanted = table
            .entries()
            .iter()
            .filter_map(|e| e.route.health_check.as_ref().map(|c| (e, c)))
            .flat_map(|(e, c)| {
                e.endpoints
                    .endpoints()
                    .iter()
                    .map(move |ep| (ep, c.clone()))
            })
            .collect();
        self.checkers.reconcile(wanted);
        table
    }
}

/// What a gateway knows about its registry feed, for operators and tests.
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    /// Registry revision of the table being served.
    pub applied_revision: AtomicU64,
    /// Number of tables built from the feed.
    pub rebuilds: AtomicU64,
}

/// Follows the registry forever, swapping a new table into `table` after each
/// burst of changes.
pub async fn follow(
    client: portico_registry::client::RegistryClient,
    mut builder: TableBuilder,
    table: Arc<ArcSwap<RouteTable>>,
    status: Arc<DiscoveryStatus>,
) {
    let mut watcher = client.watch(0);
    let mut services: HashMap<String, BTreeMap<String, Instance>> = HashMap::new();
    loop {
        let first = watcher.next().await;
        let mut changed: HashSet<String> = HashSet::new();
        let mut event = Some(first);
        let mut progressed = false;
        // Apply everything already received before building anything.
        while let Some(e) = event {
            match e {
                WatchEvent::Snapshot { instances, .. } => {
                    changed.extend(services.keys().cloned());
                    services.clear();
                    for i in instances {
                        changed.insert(i.service.clone());
                        services
                            .entry(i.service.clone())
                            .or_default()
                            .insert(i.id.clone(), i);
                    }
                }
                WatchEvent::Put { instance, .. } => {
                    changed.insert(instance.service.clone());
                    services
                        .entry(instance.service.clone())
                        .or_default()
                        .insert(instance.id.clone(), instance);
                }
                WatchEvent::Delete { service, id, .. } => {
                    if let Some(s) = services.get_mut(&service) {
                        s.remove(&id);
                        if s.is_empty() {
                            services.remove(&service);
                        }
                    }
                    changed.insert(service);
                }
                WatchEvent::Progress { .. } => progressed = true,
            }
            event = watcher.next_buffered();
        }
        let revision = watcher.revision();
        if changed.is_empty() {
            if progressed {
                status.applied_revision.store(revision, Ordering::Relaxed);
            }
            continue;
        }
        let empty = BTreeMap::new();
        for service in &changed {
            builder.set_service(service, services.get(service).unwrap_or(&empty));
        }
        table.store(Arc::new(builder.build(revision)));
        status.applied_revision.store(revision, Ordering::Relaxed);
        status.rebuilds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(revision, services = changed.len(), "routing table rebuilt");
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
        let m = t.lookup(None, "/svc/x", &http::Method::GET).unwrap();
        assert_eq!(&*m.entry.route.name, "auto:svc");
        assert_eq!(
            m.entry.endpoints.len(),
            1,
            "critical instances are not routable"
        );
        let m = t.lookup(None, "/taken", &http::Method::GET).unwrap();
        assert_eq!(&*m.entry.route.name, "claimed");

        b.set_service("svc", &BTreeMap::new());
        let t = b.build(2);
        assert!(t.lookup(None, "/svc/x", &http::Method::GET).is_none());
        assert_eq!(t.revision, 2);
    }
}
