//! The one task that owns the [`TableBuilder`]: it follows the registry and
//! route-file reloads, and keeps the registry-state cache.
//!
//! The registry watch runs on a task of its own ([`Watcher::spawn`]): this
//! task only receives its events and its connection state, so nothing here
//! (a reload, a cache write) can cancel a connection in progress, and a
//! registry slow to send its first snapshot is waited for rather than asked
//! again. Each burst of events is applied whole before one table is built.
//!
//! **The cache.** With a cache directory, the registry state applied last
//! (instances, routes, revision) is written to it: at once after the first
//! snapshot, then at most once per [`CACHE_DEBOUNCE`], so a burst of changes
//! costs one write. At startup the cached state is held back until a
//! registry either answers (its snapshot then replaces it, unseen) or the
//! first attempt to reach every registry URL fails: the cached state is then
//! served at once, and replaced by the registry's snapshot when one answers.
//!
//! [`Watcher::spawn`]: portico_registry::client::Watcher::spawn

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use portico_registry::client::{RegistryClient, WatchFeed, WatchState};
use portico_registry::model::{Instance, WatchEvent};
use portico_registry::route::RouteSpec;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{DiscoveryStatus, TableBuilder};
use crate::cache::{CachedState, StateCache, StateRef, unix_ms};
use crate::config::Config;
use crate::filter::ConsumerStore;
use crate::router::RouteTable;
use crate::tls::registry::RegistryCerts;

/// Events the watch task may read ahead of this one.
const WATCH_BUFFER: usize = 1024;
/// Least time between two cache writes.
pub const CACHE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Where the registry's objects other than instances and routes go.
#[derive(Debug, Default)]
pub struct RegistryObjects {
    /// Certificates: an HTTPS listener's store (none: ignored).
    pub certs: Option<RegistryCerts>,
    /// Consumers: the proxy's, for `api_key` filters.
    pub consumers: Arc<ConsumerStore>,
    /// Gateway records: the peers cluster limits are divided with.
    pub cluster: Arc<crate::cluster::Cluster>,
}

/// The task that owns `builder`: follows the registry (when `client` is
/// given) and route-file reloads (`config`), swapping a new table into
/// `table` after each burst of changes, and keeps `cache` (when given).
/// Registry certificates and consumers go to `objects`. Runs until aborted.
pub async fn run(
    client: Option<RegistryClient>,
    cache: Option<StateCache>,
    builder: TableBuilder,
    mut config: watch::Receiver<Config>,
    table: Arc<ArcSwap<RouteTable>>,
    status: Arc<DiscoveryStatus>,
    objects: RegistryObjects,
) {
    let mut feed = client.map(|c| c.watch(0).spawn(WATCH_BUFFER));
    let mut state = feed.as_ref().map(WatchFeed::state);
    let mut follower = Follower::new(builder, table, status, cache).await;
    follower.applied.certs = objects.certs;
    follower.applied.consumers = objects.consumers;
    follower.applied.cluster = objects.cluster;
    let mut config_open = true;
    loop {
        tokio::select! {
            event = next_event(&mut feed) => match event {
                Some(event) => follower.events(event, feed.as_mut()),
                None => {
                    tracing::error!("registry watch task ended; the table stays as it is");
                    feed = None;
                }
            },
            changed = state_changed(&mut state) => match changed {
                Some(s) => follower.watch_state(&s),
                None => state = None,
            },
            changed = config.changed(), if config_open => {
                if changed.is_err() {
                    config_open = false;
                    continue;
                }
                let routes = config.borrow_and_update().routes.clone();
                follower.file_routes(routes);
            }
            () = follower.cache_due() => follower.save_cache(),
            () = follower.grace_due() => follower.expire_vanished(),
        }
    }
}

async fn next_event(feed: &mut Option<WatchFeed>) -> Option<WatchEvent> {
    match feed {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

async fn state_changed(state: &mut Option<watch::Receiver<WatchState>>) -> Option<WatchState> {
    match state {
        Some(s) => match s.changed().await {
            Ok(()) => Some(s.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// The registry state as last applied: what a rebuild reads and what the
/// cache keeps.
#[derive(Debug, Default)]
struct Applied {
    services: HashMap<String, BTreeMap<String, Instance>>,
    routes: BTreeMap<String, RouteSpec>,
    revision: u64,
    /// Where registry certificates go (not cached: see `cache`).
    certs: Option<RegistryCerts>,
    /// Where registry consumers go (not cached either).
    consumers: Arc<ConsumerStore>,
    /// Where gateway records go (not cached: a cached peer may be dead).
    cluster: Arc<crate::cluster::Cluster>,
}

/// What one burst of inputs changed.
#[derive(Debug, Default)]
struct Burst {
    services: HashSet<String>,
    routes: bool,
    /// The registry state changed (the cache is behind).
    registry: bool,
    /// A snapshot started a (possibly new) registry history.
    snapshot: bool,
    progressed: bool,
}

impl Applied {
    fn apply(&mut self, event: WatchEvent, builder: &mut TableBuilder, burst: &mut Burst) {
        self.revision = event.revision();
        // Gateway records are not cached: their renewals must not cost a
        // cache write each.
        burst.registry |= !matches!(
            event,
            WatchEvent::Progress { .. }
                | WatchEvent::GatewayPut { .. }
                | WatchEvent::GatewayDelete { .. }
        );
        match event {
            WatchEvent::Snapshot {
                instances,
                routes,
                certificates,
                consumers,
                gateways,
                ..
            } => {
                self.cluster.set_peers(gateways);
                if let Some(c) = &self.certs {
                    c.set(certificates);
                }
                self.consumers.set(consumers);
                burst.services.extend(self.services.keys().cloned());
                self.services.clear();
                for i in instances {
                    burst.services.insert(i.service.clone());
                    self.put(i);
                }
                builder.clear_api_routes();
                self.routes.clear();
                for r in routes {
                    builder.put_api_route(&r);
                    self.routes.insert(r.name.clone(), r);
                }
                burst.routes = true;
                burst.snapshot = true;
            }
            WatchEvent::Put { instance, .. } => {
                burst.services.insert(instance.service.clone());
                self.put(instance);
            }
            WatchEvent::Delete { service, id, .. } => {
                if let Some(s) = self.services.get_mut(&service) {
                    s.remove(&id);
                    if s.is_empty() {
                        self.services.remove(&service);
                    }
                }
                burst.services.insert(service);
            }
            WatchEvent::RoutePut { route, .. } => {
                builder.put_api_route(&route);
                self.routes.insert(route.name.clone(), *route);
                burst.routes = true;
            }
            WatchEvent::RouteDelete { name, .. } => {
                builder.delete_api_route(&name);
                self.routes.remove(&name);
                burst.routes = true;
            }
            WatchEvent::CertificatePut { certificate, .. } => {
                if let Some(c) = &self.certs {
                    c.put(&certificate);
                }
            }
            WatchEvent::CertificateDelete { name, .. } => {
                if let Some(c) = &self.certs {
                    c.remove(&name);
                }
            }
            WatchEvent::ConsumerPut { consumer, .. } => self.consumers.put(&consumer),
            WatchEvent::ConsumerDelete { name, .. } => self.consumers.remove(&name),
            WatchEvent::Progress { .. } => burst.progressed = true,
            WatchEvent::GatewayPut { gateway, .. } => {
                self.cluster.put_peer(*gateway);
                burst.progressed = true;
            }
            WatchEvent::GatewayDelete { id, .. } => {
                self.cluster.remove_peer(&id);
                burst.progressed = true;
            }
        }
    }

    fn put(&mut self, instance: Instance) {
        self.services
            .entry(instance.service.clone())
            .or_default()
            .insert(instance.id.clone(), instance);
    }

    fn state_ref(&self) -> StateRef<'_> {
        StateRef {
            revision: self.revision,
            instances: self.services.values().flat_map(BTreeMap::values).collect(),
            routes: self.routes.values().collect(),
        }
    }
}

/// When the cache is written next, and the write in progress.
#[derive(Debug)]
struct CacheWriter {
    cache: StateCache,
    /// The applied state is newer than the file.
    dirty: bool,
    last: Option<Instant>,
    writing: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Follower {
    builder: TableBuilder,
    table: Arc<ArcSwap<RouteTable>>,
    status: Arc<DiscoveryStatus>,
    applied: Applied,
    cache: Option<CacheWriter>,
    /// The cached state, held back until it is served or a registry answers.
    cached: Option<CachedState>,
    /// A registry has sent something since start.
    heard: bool,
}

impl Follower {
    async fn new(
        builder: TableBuilder,
        table: Arc<ArcSwap<RouteTable>>,
        status: Arc<DiscoveryStatus>,
        cache: Option<StateCache>,
    ) -> Follower {
        let cached = match &cache {
            Some(c) => load(c.clone()).await,
            None => None,
        };
        Follower {
            builder,
            table,
            status,
            applied: Applied::default(),
            cache: cache.map(|cache| CacheWriter {
                cache,
                dirty: false,
                last: None,
                writing: None,
            }),
            cached,
            heard: false,
        }
    }

    /// Applies `first` and every event already received, then rebuilds once.
    fn events(&mut self, first: WatchEvent, mut feed: Option<&mut WatchFeed>) {
        let started = std::time::Instant::now();
        if !self.heard {
            self.heard = true;
            self.cached = None;
            if self.status.serving_cache.swap(false, Ordering::Relaxed) {
                tracing::info!("registry answered: its state replaces the cached one");
            }
        }
        let mut burst = Burst::default();
        let mut event = Some(first);
        while let Some(e) = event {
            self.applied.apply(e, &mut self.builder, &mut burst);
            event = feed.as_mut().and_then(|f| f.try_recv());
        }
        if burst.registry
            && let Some(c) = &mut self.cache
        {
            c.dirty = true;
        }
        self.finish(&burst, started);
    }

    fn file_routes(&mut self, routes: Vec<Arc<crate::config::Route>>) {
        self.builder.set_file_routes(routes);
        let burst = Burst {
            routes: true,
            ..Burst::default()
        };
        self.finish(&burst, std::time::Instant::now());
    }

    fn watch_state(&mut self, state: &WatchState) {
        self.status
            .connected
            .store(state.connected, Ordering::Relaxed);
        self.status.resyncs.store(state.resyncs, Ordering::Relaxed);
        if !self.heard && state.failed_attempts > 0 {
            self.serve_cached();
        }
    }

    /// No registry answered the first attempt: serve the cached state.
    fn serve_cached(&mut self) {
        let Some(cached) = self.cached.take() else {
            return;
        };
        let age_s = unix_ms().saturating_sub(cached.saved_at_ms) / 1000;
        let age = humantime::format_duration(Duration::from_secs(age_s));
        tracing::warn!(
            revision = cached.revision,
            instances = cached.instances.len(),
            routes = cached.routes.len(),
            age_s,
            "no registry answers: serving the registry state cached {age} ago until one does",
        );
        let s = &self.status;
        s.cache_saved_at_ms
            .store(cached.saved_at_ms, Ordering::Relaxed);
        s.cache_revision.store(cached.revision, Ordering::Relaxed);
        s.serving_cache.store(true, Ordering::Relaxed);
        let mut burst = Burst::default();
        self.applied
            .apply(cached.into_snapshot(), &mut self.builder, &mut burst);
        self.finish(&burst, std::time::Instant::now());
    }

    /// Rebuilds what `burst` changed and swaps the table in.
    fn finish(&mut self, burst: &Burst, started: std::time::Instant) {
        let revision = self.applied.revision;
        let s = &self.status;
        if burst.snapshot {
            // A snapshot may start another registry's history, lower or higher.
            s.seen_revision.store(revision, Ordering::Relaxed);
        } else {
            s.seen_revision.fetch_max(revision, Ordering::Relaxed);
        }
        if burst.services.is_empty() && !burst.routes {
            if burst.progressed {
                s.applied_revision.store(revision, Ordering::Relaxed);
            }
            return;
        }
        let empty = BTreeMap::new();
        for service in &burst.services {
            let instances = self.applied.services.get(service).unwrap_or(&empty);
            self.builder.set_service(service, instances);
        }
        self.table.store(Arc::new(self.builder.build(revision)));
        s.last_build_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        s.applied_revision.store(revision, Ordering::Relaxed);
        s.applied_at_ms.store(unix_ms(), Ordering::Relaxed);
        s.rebuilds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            revision,
            services = burst.services.len(),
            routes = burst.routes,
            "routing table rebuilt"
        );
    }

    /// Completes when a kept implicit route's grace is over.
    async fn grace_due(&self) {
        match self.builder.next_expiry() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Drops the implicit routes whose grace is over, and rebuilds.
    fn expire_vanished(&mut self) {
        if self.builder.expire_vanished(Instant::now()) {
            let burst = Burst {
                routes: true,
                ..Burst::default()
            };
            self.finish(&burst, std::time::Instant::now());
        }
    }

    /// Completes when the cache should be written; never without a cache
    /// or while it is current.
    async fn cache_due(&self) {
        match &self.cache {
            Some(c) if c.dirty => {
                let due = c.last.map_or_else(Instant::now, |t| t + CACHE_DEBOUNCE);
                tokio::time::sleep_until(due).await;
            }
            _ => std::future::pending().await,
        }
    }

    /// Writes the applied state, off this task (the write waits for fsync).
    fn save_cache(&mut self) {
        let Some(c) = &mut self.cache else {
            return;
        };
        c.last = Some(Instant::now());
        if c.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return; // Still writing the previous state: try again a debounce later.
        }
        c.dirty = false;
        let bytes = c.cache.encode(&self.applied.state_ref(), unix_ms());
        let (cache, status) = (c.cache.clone(), self.status.clone());
        c.writing = Some(tokio::task::spawn_blocking(move || {
            match cache.write(&bytes) {
                Ok(()) => status
                    .cache_written_at_ms
                    .store(unix_ms(), Ordering::Relaxed),
                Err(e) => {
                    status.cache_write_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "could not write the registry-state cache");
                }
            }
        }));
    }
}

/// Reads the cache; an unusable one is logged and ignored.
async fn load(cache: StateCache) -> Option<CachedState> {
    let path = cache.path();
    match tokio::task::spawn_blocking(move || cache.read()).await {
        Ok(Ok(Some(state))) => {
            tracing::info!(path = %path.display(), revision = state.revision,
                "registry-state cache found; it is served if no registry answers");
            Some(state)
        }
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "ignoring the registry-state cache");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the registry-state cache failed");
            None
        }
    }
}
