//! Portico's data plane: an HTTP/1.1 and h2c gateway that routes by host,
//! path and method to discovered or static upstreams.
//!
//! # Module map
//!
//! - [`config`]: the TOML route file, validated into typed [`config::Route`]s.
//! - [`router`]: the immutable [`router::RouteTable`] and its match index.
//! - [`balance`]: endpoint sets and lock-free smooth weighted round robin.
//! - [`health`]: passive outlier detection (ejection, cap, panic mode).
//! - [`breaker`]: per-route overload limits and per-endpoint circuit breakers.
//! - [`check`]: active health checks of endpoints.
//! - [`cluster`]: this gateway's record in the registry, its peers, and the
//!   share of each cluster-scope rate limit it admits.
//! - [`discovery`]: registry watch (instances and routes) and route-file
//!   reloads → new table, swapped in atomically.
//! - [`cache`]: the last applied registry state on disk, served by a
//!   gateway started while no registry answers.
//! - [`reload`]: re-reads the route file on change and on SIGHUP.
//! - [`proxy`]: the request path (match, pick, rewrite headers, stream).
//! - [`split`]: a route's weighted split across its `targets` (smooth
//!   weighted round robin, passing over targets with nothing in rotation).
//! - [`pool`]: upstream connections (HTTP/1.1 stacks, one shared HTTP/2
//!   connection per h2c endpoint).
//! - [`retry`]: per-route retry policies and retry budgets.
//! - [`buffers`]: the per-thread pool of I/O buffers and header maps both
//!   native codecs take from while a connection has work.
//! - [`h1`]: the native HTTP/1.1 server: a strict codec (request heads, body
//!   framing) fuzzed alone, and the connection loop the listeners run.
//! - [`h2`]: the native HTTP/2 server and the native HTTP/2 client for
//!   upstreams: protocol states with no I/O (fuzzed alone), HPACK, and a
//!   connection loop for each side.
//! - [`conn_io`]: a downstream connection's I/O as both native servers read
//!   it: readable before a buffer is put up (so an idle connection holds
//!   none), cleartext and TLS; accepted out of tokio's event loop, which it
//!   joins only when it must wait (`LazyTcp`).
//! - [`server`]: the listeners (cleartext and HTTPS), connection limits and
//!   graceful drain.
//! - `sockopt`: two of the gateway's three `unsafe` calls, on the listeners
//!   (Linux): `TCP_DEFER_ACCEPT`, which no maintained crate sets, and a
//!   listener's registration as a tokio `AsyncFd`.
//! - `drain`: the shutdown signal every connection waits on, registered
//!   cheaply (a waker in a sharded slab).
//! - `shard`: state split into per-thread shards, each behind its own lock
//!   (the drain's waiters, the authentication filters' caches): a leaf.
//! - `streams`: an HTTP/2 connection's streams, run in the connection's own
//!   task instead of a task each.
//! - [`service`]: the downstream side as a `tower::Service`, and the
//!   embedder's tower layers around it.
//! - [`tls`]: certificates (files and registry, picked by SNI, reloaded),
//!   the HTTPS listener's settings, and client TLS to upstreams.
//! - [`acme`]: certificates ordered and renewed from an ACME CA, with the
//!   HTTP-01 and TLS-ALPN-01 answers.
//! - [`caps`]: downstream connection caps (gateway-wide, per client IP)
//!   and the backoff on accept errors at the descriptor limit.
//! - [`clock`]: one clock reading per poll of a connection's task, shared by
//!   the request work that poll does.
//! - [`idle`]: "no bytes either way for the idle timeout", for connections
//!   and tunnels.
//! - `inplace`: futures boxed where they are made (no copy off the stack),
//!   and HTTP/2 exchanges' boxes kept per thread for the next stream (the
//!   gateway's third `unsafe` block).
//! - [`tunnel`]: upgraded connections (WebSocket): counted, closed when
//!   idle, drained at shutdown.
//! - [`trace`]: W3C `traceparent` checks and, when asked, generation.
//! - [`error`]: the gateway's own errors and their single HTTP mapping
//!   (JSON, or trailers-only gRPC for gRPC calls).
//! - [`grpc`]: what makes a request gRPC, its status codes and deadline,
//!   gRPC-Web translation, and the response body that notes each call's
//!   `grpc-status`.
//! - [`filter`]: per-route filter chains (authentication, rate limits,
//!   transforms, and the embedder's own [`Filter`]s), built once per route
//!   and run in the request path's phases.
//! - [`access`]: the access-log line, formatted on the request's thread and
//!   written in batches by a thread of its own (dropped, never waited for,
//!   when the writer is behind).
//! - [`metrics`]: the request-side counters (per-route atomics kept in the
//!   route state, latency histograms): a leaf, importing no routing module.
//! - [`collector`]: the scrape-time Prometheus collector, above everything:
//!   reads the counters, the current table and the discovery status.
//! - [`admin`]: the separate admin listener (`/endpoints`: why each endpoint
//!   is in or out of rotation; `/explain`: why a request goes where it goes;
//!   `/status`: the applied revision; `/metrics`: Prometheus text).
//!
//! # The request path
//!
//! accept ([`server`]) → [`h1`] or [`h2`] connection → [`proxy::Proxy::handle`] →
//! load the current [`router::RouteTable`] once → host → path → method →
//! route → [`balance::EndpointSet::pick`] → [`pool::Pool`] → stream
//! the response back; failures become JSON errors in [`error`].

pub mod access;
pub mod acme;
pub mod admin;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod buffers;
pub mod cache;
pub mod caps;
pub mod check;
pub mod clock;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod conn_io;
pub mod discovery;
mod drain;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod health;
pub mod host;
pub mod idle;
mod inplace;
pub mod metrics;
pub mod path;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod router;
pub mod server;
pub mod service;
mod shard;
#[cfg(target_os = "linux")]
mod sockopt;
pub mod split;
mod streams;
pub mod tls;
pub mod trace;
pub mod tunnel;

pub use filter::custom::{
    Filter, FilterAnswer, FilterRegistry, FilterRequest, LogEntry, ResponseHead, SettingsError,
    Stage, UpstreamRequest,
};

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::discovery::{DiscoveryStatus, TableBuilder};
use crate::health::HealthRegistry;
use crate::proxy::{Proxy, ProxySettings};
use crate::router::RouteTable;
use crate::server::ServerSettings;
use crate::tls::upstream::UpstreamTlsConfigs;
use crate::tls::{ServerTls, TlsSettings, TlsSetupError};

/// Everything a gateway needs to run.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// Routes from the route file.
    pub config: Config,
    /// The route file, re-read on change and on SIGHUP; none: routes are
    /// fixed at `config`.
    pub config_path: Option<PathBuf>,
    /// How often the route file is checked for changes; `None` for the
    /// default ([`reload::POLL_INTERVAL`]), zero for SIGHUP only.
    pub config_poll: Option<std::time::Duration>,
    /// Registry base URLs to follow; none for a static-only gateway.
    pub registry: Vec<String>,
    /// Directory of the registry-state cache: the last applied registry
    /// state, served at startup when no registry answers. `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Bearer token for a registry that requires one (a `read` token is
    /// enough to follow it).
    pub registry_token: Option<portico_registry::client::BearerToken>,
    /// How `https` registries are verified (`--registry-ca`); `None`: the
    /// web PKI roots.
    pub registry_tls: Option<Arc<rustls::ClientConfig>>,
    /// Give each discovered service an implicit `/{service}` route.
    pub auto_routes: bool,
    /// How long an implicit route outlives its service's last instance
    /// (`None`: [`discovery::DEFAULT_AUTO_ROUTE_GRACE`]).
    pub auto_route_grace: Option<std::time::Duration>,
    /// This gateway's zone: instances registered there are preferred while
    /// at least half of them are in rotation.
    pub zone: Option<String>,
    /// Listener limits.
    pub server: ServerSettings,
    /// The HTTPS listener's certificates and HSTS; `None`: no HTTPS.
    pub tls: Option<TlsSettings>,
    /// Certificates ordered from an ACME CA for the HTTPS listener (which
    /// it needs); `None`: no ACME.
    pub acme: Option<acme::AcmeSettings>,
    /// Upstream and logging settings.
    pub proxy: ProxySettings,
    /// Register this gateway in the registry it follows (`/v1/gateways`),
    /// which cluster-scope rate limits need; `None`: it does not register
    /// (and divides no limit with anyone). The CLI registers by default.
    pub announce: Option<cluster::Announce>,
    /// The embedder's own filters, by name: routes list them as
    /// `{ type = "custom", name = NAME, settings = {...} }`.
    pub filters: filter::custom::FilterRegistry,
    /// tower / tower-http layers around the downstream side (each request
    /// between hyper and the proxy); `None`: requests go to the proxy
    /// directly.
    pub layer: Option<service::DownstreamLayer>,
}

/// A configured gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    table: Arc<ArcSwap<RouteTable>>,
    proxy: Arc<Proxy>,
    status: Arc<DiscoveryStatus>,
    /// Builds every table; owns the active health-check tasks, so it lives
    /// as long as the gateway serves (in the discovery task when following
    /// a registry).
    builder: TableBuilder,
    options: GatewayOptions,
    config: tokio::sync::watch::Sender<Config>,
    /// The HTTPS listener's TLS side, when configured.
    tls: Option<ServerTls>,
    /// The ACME client, when configured.
    acme: Option<acme::Acme>,
    /// The peers and the division of cluster limits.
    cluster: Arc<cluster::Cluster>,
}

/// Why a gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A registry URL or token is unusable.
    #[error(transparent)]
    Registry(#[from] portico_registry::client::ClientError),
    /// A certificate or the TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// ACME was asked for without an HTTPS listener, or its state
    /// directory is unusable.
    #[error(transparent)]
    Acme(#[from] acme::AcmeError),
    /// The gateway id to register under is unusable.
    #[error("gateway id: {0}")]
    Announce(String),
    /// A route file's custom filter is not registered, or refused its
    /// settings.
    #[error("route {route:?}: {reason}")]
    Filter {
        /// The route.
        route: String,
        /// The field (`filters[0].settings.allowed`) and why.
        reason: String,
    },
}

impl Gateway {
    /// Builds the initial table from the configured routes, and loads the
    /// certificates (refusing one that does not load, naming its file).
    pub fn new(mut options: GatewayOptions) -> Result<Gateway, GatewayError> {
        if !options.registry.is_empty() {
            // Validate the URLs and token now so a typo fails at startup, not in a background task.
            registry_client(&options)?;
        }
        let upstream_tls = Arc::new(UpstreamTlsConfigs::new(&options.proxy.upstream_ca)?);
        if let Some(a) = &options.announce {
            portico_registry::gateway::validate_gateway_id(&a.id)
                .map_err(|e| GatewayError::Announce(e.reason))?;
        }
        let cluster = Arc::new(cluster::Cluster::new(
            options.announce.as_ref().map_or("", |a| a.id.as_str()),
        ));
        let mut builder = TableBuilder::new(
            options.config.routes.clone(),
            options.auto_routes,
            Arc::new(HealthRegistry::default()),
        )
        .with_upstream_tls(upstream_tls.clone())
        .with_zone(options.zone.clone())
        .with_cluster(cluster.clone())
        .with_filters(options.filters.clone())
        .with_auto_route_grace(
            options
                .auto_route_grace
                .unwrap_or(discovery::DEFAULT_AUTO_ROUTE_GRACE),
        );
        // A mistake in the route file stops the gateway at startup rather
        // than leaving a route that refuses every request.
        options
            .filters
            .check_routes(&options.config.routes)
            .map_err(|(_, route, reason)| GatewayError::Filter { route, reason })?;
        let table = Arc::new(ArcSwap::from_pointee(builder.build(0)));
        // Routes from the file: their TLS files are checked (and an
        // insecure one logged) now, not at their first request.
        for route in &options.config.routes {
            upstream_tls.for_route(route.upstream_tls.as_deref())?;
        }
        let http01 = Arc::new(acme::challenge::Http01Answers::default());
        if options.acme.is_some() {
            options.proxy.acme_http01 = Some(http01.clone());
        }
        let proxy = Arc::new(Proxy::new(table.clone(), &options.proxy, upstream_tls));
        let mut tls = match &options.tls {
            Some(settings) => Some(ServerTls::new(settings, proxy.metrics().tls().clone())?),
            None => None,
        };
        let acme = match (&options.acme, &mut tls) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(acme::AcmeError::Order("ACME needs an HTTPS listener".into()).into());
            }
            (Some(settings), Some(tls)) => {
                // Following a registry: order for the fleet through it.
                let fleet = match options.registry.is_empty() {
                    true => None,
                    false => {
                        let client = registry_client(&options)?;
                        http01.look_up_in(client.clone());
                        if settings.challenge == acme::ChallengeKind::TlsAlpn01 {
                            tls.fleet_alpn =
                                Some(Arc::new(tls::alpn::FleetAnswers::new(client.clone())));
                        }
                        Some(acme::fleet::Fleet::new(client, settings.lock_ttl))
                    }
                };
                Some(acme::Acme::new(
                    settings.clone(),
                    http01,
                    tls.stats.store().clone(),
                    proxy.metrics().acme().clone(),
                    fleet,
                )?)
            }
        };
        let config = tokio::sync::watch::Sender::new(options.config.clone());
        Ok(Gateway {
            table,
            proxy,
            status: Arc::new(DiscoveryStatus::default()),
            builder,
            options,
            config,
            tls,
            acme,
            cluster,
        })
    }

    /// The peers this gateway knows and its cluster limits' shares.
    pub fn cluster(&self) -> &Arc<cluster::Cluster> {
        &self.cluster
    }

    /// The live table handle (for inspection).
    pub fn table(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.table
    }

    /// Discovery progress.
    pub fn status(&self) -> &Arc<DiscoveryStatus> {
        &self.status
    }

    /// Serves the admin API on `listener` (a separate address from the
    /// public one) until the returned task is aborted.
    pub fn serve_admin(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        admin::spawn(
            listener,
            self.table.clone(),
            self.status.clone(),
            self.proxy.metrics().clone(),
            self.options.proxy.edge.path,
        )
    }

    /// Serves on one cleartext `listener` until `shutdown`; see
    /// [`Gateway::serve_on`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.serve_on(Some(listener), None, shutdown).await
    }

    /// Serves cleartext on `plain` and HTTPS on `tls` (which needs
    /// [`GatewayOptions::tls`]) until `shutdown`, following the registry if
    /// one is configured and reloading certificate files; then drains.
    pub async fn serve_on(
        self,
        plain: Option<TcpListener>,
        tls: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let tls = match (tls, &self.tls) {
            (Some(l), Some(t)) => Some((l, t.clone())),
            (None, _) => None,
            (Some(_), None) => {
                return Err(std::io::Error::other(
                    "an HTTPS listener needs TLS settings (--tls-cert)",
                ));
            }
        };
        let cert_reloader = tls.as_ref().map(|(_, t)| t.watch_files());
        let acme = self.acme.as_ref().map(acme::Acme::spawn);
        let client = (!self.options.registry.is_empty()).then(|| {
            registry_client(&self.options)
                .expect("registry URLs and token were validated in Gateway::new")
        });
        let reloader = self.options.config_path.clone().map(|path| {
            reload::spawn(
                path,
                self.options.filters.clone(),
                self.config.clone(),
                self.status.clone(),
                self.options.config_poll.unwrap_or(reload::POLL_INTERVAL),
            )
        });
        // Owns the builder (and with it the health-check tasks) while serving.
        let cache = self
            .options
            .cache_dir
            .clone()
            .filter(|_| client.is_some())
            .map(|dir| cache::StateCache::new(dir, self.options.registry.clone()));
        let announcer = spawn_announcer(
            client.as_ref(),
            &self.options,
            &self.cluster,
            (&self.status, &self.table),
            (&plain, &tls),
        );
        let follower = tokio::spawn(discovery::run(
            client,
            cache,
            self.builder,
            self.config.subscribe(),
            self.table.clone(),
            self.status.clone(),
            discovery::RegistryObjects {
                certs: tls
                    .as_ref()
                    .map(|(_, t)| tls::registry::RegistryCerts::new(t.stats.store().clone())),
                consumers: self.proxy.consumers().clone(),
                cluster: self.cluster.clone(),
            },
        ));
        let listeners = server::Listeners { plain, tls };
        let result = server::serve(
            listeners,
            self.proxy,
            self.options.layer.as_ref(),
            self.options.server,
            shutdown,
        )
        .await;
        if let Some(announcer) = announcer {
            announcer.leave().await;
        }
        follower.abort();
        // Waited for, not only told: an abort takes effect when the runtime
        // next reaches the task, and until then its registry watch is open.
        // `portico up` stops its registry right after this returns; a watch
        // still open then saw the registry go and logged a disconnect (2 in
        // 48 loaded runs of tests/process.rs). Once the follower is gone,
        // its watch's task has been told to stop too.
        let _ = follower.await;
        if let Some(r) = cert_reloader {
            r.abort();
        }
        if let Some(a) = acme {
            a.abort();
        }
        if let Some(r) = reloader {
            r.abort();
        }
        result
    }
}

/// Starts writing this gateway's record, when it follows a registry and
/// registers.
fn spawn_announcer(
    client: Option<&portico_registry::client::RegistryClient>,
    options: &GatewayOptions,
    cluster: &Arc<cluster::Cluster>,
    (status, table): (&Arc<DiscoveryStatus>, &Arc<ArcSwap<RouteTable>>),
    (plain, tls): (&Option<TcpListener>, &Option<(TcpListener, ServerTls)>),
) -> Option<cluster::Announcer> {
    let (client, settings) = (client?.clone(), options.announce.clone()?);
    let mut addresses = settings.addresses.clone();
    if addresses.is_empty() {
        let bound = plain.iter().chain(tls.iter().map(|(l, _)| l));
        addresses = bound
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
    }
    let facts = cluster::RecordFacts {
        admin: settings.admin.clone(),
        addresses,
        started_at_ms: cache::unix_ms(),
    };
    let status = status.clone();
    let table = table.clone();
    Some(cluster::Announcer::spawn(
        client,
        cluster.clone(),
        settings,
        facts,
        move || {
            status
                .applied_revision
                .load(std::sync::atomic::Ordering::Relaxed)
        },
        move || {
            let table = table.load();
            table
                .entries()
                .iter()
                .map(|e| (e.route.name.to_string(), e.state.metrics.totals()))
                .collect()
        },
    ))
}

fn registry_client(
    options: &GatewayOptions,
) -> Result<portico_registry::client::RegistryClient, portico_registry::client::ClientError> {
    let mut client = portico_registry::client::RegistryClient::builder(&options.registry);
    if let Some(token) = &options.registry_token {
        client = client.token(token.secret());
    }
    if let Some(tls) = &options.registry_tls {
        client = client.tls_config(tls.clone());
    }
    client.build()
}
