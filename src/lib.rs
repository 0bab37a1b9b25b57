//! The `portico` program: wires the registry and the gateway into the three
//! process modes. `src/main.rs` only parses the command line and calls these.
//!
//! - [`run_registry`]: control plane only (`portico registry`).
//! - [`run_gateway`]: data plane only (`portico gateway`).
//! - [`run_up`]: both in one process (`portico up`); the gateway follows the
//!   in-process registry over its public watch API, the same path a separate
//!   gateway takes, so there is one propagation code path to trust.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use portico_gateway::{Gateway, GatewayOptions};
use portico_registry::auth::{Role, Tokens};
use portico_registry::catalog::Catalog;
use portico_registry::lease::{LeasePolicy, spawn_sweeper};
use portico_registry::store::Store;
use portico_registry::store::embedded::EmbeddedStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// An etcd cluster to keep the registry's state in, instead of the
/// embedded store.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix for everything the registry writes.
    pub prefix: String,
    /// This replica's session TTL (`--etcd-session-ttl`): how long after
    /// it dies the others adopt its leases.
    pub session_ttl: std::time::Duration,
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Directory of the embedded store (unused with `etcd`).
    pub data_dir: PathBuf,
    /// Keep state in etcd (needs the `etcd` feature); `None`: the embedded
    /// store under `data_dir`.
    pub etcd: Option<EtcdOptions>,
    /// Lease expiry policy.
    pub lease: LeasePolicy,
    /// Tokens the API accepts; none leaves it open.
    pub tokens: Tokens,
}

/// Runs the registry API on `listener` until `shutdown`.
pub async fn run_registry(
    listener: TcpListener,
    options: RegistryOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&options).await?;
    let catalog = Arc::new(Catalog::new(store, options.lease));
    let sweeper = spawn_sweeper(catalog.clone());
    let checker = portico_registry::check::spawn_checker(catalog.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "registry API listening");
    let result = portico_registry::api::serve(listener, catalog, options.tokens, shutdown).await;
    sweeper.abort();
    checker.abort();
    result.context("registry API server")
}

async fn open_store(options: &RegistryOptions) -> anyhow::Result<Arc<dyn Store>> {
    match &options.etcd {
        None => {
            let store = EmbeddedStore::open(&options.data_dir)
                .with_context(|| format!("opening the store in {}", options.data_dir.display()))?;
            tracing::info!(path = %store.path().display(), "embedded store open");
            Ok(Arc::new(store))
        }
        #[cfg(feature = "etcd")]
        Some(etcd) => {
            let store = portico_registry::store::etcd::EtcdStore::with_session_ttl(
                etcd.endpoints.clone(),
                &etcd.prefix,
                etcd.session_ttl,
            )?;
            // Starting against an unreachable cluster is allowed (the API
            // answers 503 until it is back), but say so now.
            match store.check().await {
                Ok(revision) => {
                    tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, revision, "etcd store connected")
                }
                Err(e) => {
                    tracing::warn!(endpoints = ?etcd.endpoints, error = %e, "etcd store not reachable yet")
                }
            }
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "etcd"))]
        Some(_) => anyhow::bail!(
            "this portico was built without etcd support: build with `cargo build --release --features etcd`"
        ),
    }
}

/// The sockets a gateway serves: the public cleartext one (`--listen`,
/// unless turned off), the HTTPS one (`--tls-listen`), the admin one.
#[derive(Debug, Default)]
pub struct GatewayListeners {
    /// Cleartext HTTP/1.1 and h2c.
    pub plain: Option<TcpListener>,
    /// HTTPS (needs `GatewayOptions::tls`).
    pub tls: Option<TcpListener>,
    /// The admin API.
    pub admin: Option<TcpListener>,
}

impl GatewayListeners {
    /// A cleartext public listener and, when given, an admin one.
    pub fn plain(listener: TcpListener, admin: Option<TcpListener>) -> GatewayListeners {
        GatewayListeners {
            plain: Some(listener),
            tls: None,
            admin,
        }
    }
}

/// Runs a gateway on `listeners` until `shutdown`, with its admin API when
/// an admin listener is given.
pub async fn run_gateway(
    listeners: GatewayListeners,
    options: GatewayOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let gateway = Gateway::new(options).context("gateway options")?;
    for (what, l) in [
        ("gateway", &listeners.plain),
        ("gateway HTTPS", &listeners.tls),
    ] {
        if let Some(l) = l {
            tracing::info!(addr = %l.local_addr()?, "{what} listening");
        }
    }
    let admin = match listeners.admin {
        Some(l) => {
            tracing::info!(addr = %l.local_addr()?, "gateway admin listening");
            Some(gateway.serve_admin(l))
        }
        None => None,
    };
    let served = gateway
        .serve_on(listeners.plain, listeners.tls, shutdown)
        .await;
    if let Some(a) = admin {
        a.abort();
    }
    served.context("gateway server")?;
    tracing::info!("gateway drained");
    Ok(())
}

/// Runs registry and gateway together until `shutdown`. The gateway's
/// `registry` option is replaced by the in-process registry's address, and,
/// when the registry requires tokens, its token by a `gateway` token (reads,
/// and the keys of registry certificates) minted for this run and never
/// shown.
pub async fn run_up(
    control: TcpListener,
    gateway: GatewayListeners,
    mut registry_options: RegistryOptions,
    mut gateway_options: GatewayOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let control_addr: SocketAddr = control.local_addr()?;
    gateway_options.registry = vec![format!("http://{control_addr}")];
    gateway_options.registry_token = (!registry_options.tokens.is_empty())
        .then(|| registry_options.tokens.mint(Role::Gateway).into());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let registry = tokio::spawn(run_registry(
        control,
        registry_options,
        stopped(stop_rx.clone()),
    ));
    let gateway = run_gateway(gateway, gateway_options, stopped(stop_rx));
    tokio::pin!(gateway);
    tokio::pin!(shutdown);
    let gateway_result = tokio::select! {
        r = &mut gateway => {
            // The gateway stopped on its own: bring the registry down too.
            let _ = stop_tx.send(true);
            r
        }
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            gateway.await
        }
    };
    let registry_result = registry.await.context("registry task")?;
    gateway_result.and(registry_result)
}
