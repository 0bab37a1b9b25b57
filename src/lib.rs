//! The `portico` program: wires the registry and the gateway into the three
//! process modes. `src/main.rs` only parses the command line and calls these.
//!
//! - [`run_registry`]: control plane only (`portico registry`).
//! - [`run_gateway`]: data plane only (`portico gateway`).
//! - [`run_up`]: both in one process (`portico up`); the gateway follows the
//!   in-process registry over its public watch API, the same path a separate
//!   gateway takes, so there is one propagation code path to trust.
//! - [`ctl`]: `portico ctl`, the operator's command line over the
//!   registry's HTTP API (a client only: it links none of the above).
//!
//! With `--control-tls-cert`, the registry API speaks HTTPS only: the
//! certificate is loaded and re-read on change by the gateway's TLS module
//! (`portico_gateway::tls`), the handshakes run in the registry's
//! [`portico_registry::https`] listener.

// The workspace denies `unsafe`; only the gateway allows it, in one
// function (gateway/src/sockopt.rs).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use portico_gateway::tls::ServerTls;
use portico_gateway::{Gateway, GatewayOptions};
use portico_registry::auth::{Role, Tokens};
use portico_registry::catalog::Catalog;
use portico_registry::check::CheckTls;
use portico_registry::https::TlsListener;
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
    /// TLS to the members (`https://` endpoints): the CA and, for a cluster
    /// with `--client-cert-auth`, a client certificate.
    pub tls: Option<EtcdTlsFiles>,
}

/// The files of TLS to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// PEM bundle of the CAs the members' certificates chain to.
    pub ca: PathBuf,
    /// This replica's client certificate (PEM chain) and key.
    pub client: Option<(PathBuf, PathBuf)>,
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
    /// Serve the API over HTTPS only, with this certificate
    /// (`--control-tls-cert`, `--control-tls-key`); `None`: cleartext.
    pub tls: Option<ServerTls>,
    /// CA bundles the registry's own checks of `https` instances trust,
    /// beside the web PKI roots (`--check-ca`).
    pub check_ca: Vec<PathBuf>,
}

/// Runs the registry API on `listener` until `shutdown`.
pub async fn run_registry(
    listener: TcpListener,
    options: RegistryOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let check_tls = CheckTls::new(&options.check_ca).context("--check-ca")?;
    let store = open_store(&options).await?;
    let catalog = Arc::new(Catalog::new(store.clone(), options.lease));
    let sweeper = spawn_sweeper(catalog.clone());
    let checker = portico_registry::check::spawn_checker(catalog.clone(), check_tls);
    let addr = listener.local_addr()?;
    let result = match &options.tls {
        None => {
            tracing::info!(%addr, "registry API listening");
            portico_registry::api::serve(listener, catalog, options.tokens, shutdown).await
        }
        Some(tls) => {
            tracing::info!(%addr, "registry API listening (HTTPS only)");
            let reloads = tls.watch_files();
            let listener = TlsListener::new(listener, tls.acceptor.clone())?;
            let served =
                portico_registry::api::serve(listener, catalog, options.tokens, shutdown).await;
            reloads.abort();
            served
        }
    };
    // Wait for both to be gone, so the store is released (its file unlocked)
    // soon after this returns and the registry can start again in place.
    sweeper.abort();
    checker.abort();
    let _ = sweeper.await;
    let _ = checker.await;
    store.close().await;
    result.context("registry API server")
}

async fn open_store(options: &RegistryOptions) -> anyhow::Result<Arc<dyn Store>> {
    match &options.etcd {
        None => {
            let dir = options.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await?
                .with_context(|| format!("opening the store in {}", options.data_dir.display()))?;
            tracing::info!(path = %store.path().display(), "embedded store open");
            Ok(Arc::new(store))
        }
        #[cfg(feature = "etcd")]
        Some(etcd) => {
            let tls = etcd.tls.as_ref().map(etcd_tls).transpose()?;
            let store = portico_registry::store::etcd::EtcdStore::with_tls(
                etcd.endpoints.clone(),
                &etcd.prefix,
                etcd.session_ttl,
                tls.clone(),
            )?;
            // Starting against an unreachable cluster is allowed (the API
            // answers 503 until it is back), but say so now.
            match store.check().await {
                Ok(revision) => {
                    tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, revision, "etcd store connected")
                }
                // A handshake etcd refuses (no client certificate, a CA that
                // does not match) is a configuration error, not an outage:
                // waiting will not fix it.
                Err(e) => {
                    if let Some(tls) = &tls {
                        etcd_tls_probe::refused(&etcd.endpoints, tls).await?;
                    }
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

/// Reads the TLS files for etcd, refusing (naming the file) one that cannot
/// be read or holds no PEM certificate or key.
#[cfg(feature = "etcd")]
fn etcd_tls(files: &EtcdTlsFiles) -> anyhow::Result<portico_registry::store::etcd::EtcdTls> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &PathBuf, what: &str| -> anyhow::Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("{what} {}: cannot read", path.display()))
    };
    let certs = |pem: &[u8], path: &PathBuf, what: &str| -> anyhow::Result<()> {
        let n = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{what} {}: not PEM: {e}", path.display()))?
            .len();
        anyhow::ensure!(n > 0, "{what} {}: no PEM certificate", path.display());
        Ok(())
    };
    let ca_pem = read(&files.ca, "--etcd-ca")?;
    certs(&ca_pem, &files.ca, "--etcd-ca")?;
    let identity = match &files.client {
        Some((cert, key)) => {
            let cert_pem = read(cert, "--etcd-cert")?;
            certs(&cert_pem, cert, "--etcd-cert")?;
            let key_pem = read(key, "--etcd-key")?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                anyhow::anyhow!("--etcd-key {}: no PEM private key: {e}", key.display())
            })?;
            Some((cert_pem, key_pem))
        }
        None => None,
    };
    Ok(portico_registry::store::etcd::EtcdTls { ca_pem, identity })
}

pub mod ctl;
#[cfg(feature = "etcd")]
mod etcd_tls_probe;

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
    mut options: GatewayOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The record names the admin listener so the registry can ask it for
    // `/explain` on the dashboard's behalf.
    if let (Some(announce), Some(admin)) = (options.announce.as_mut(), &listeners.admin) {
        announce.admin = Some(admin.local_addr()?.to_string());
    }
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
/// shown. At `shutdown` the gateway drains and leaves first (its record
/// deleted, its watch closed), then the registry stops.
pub async fn run_up(
    control: TcpListener,
    gateway: GatewayListeners,
    mut registry_options: RegistryOptions,
    mut gateway_options: GatewayOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let control_addr: SocketAddr = control.local_addr()?;
    // Over HTTPS, the gateway trusts exactly the certificate the control
    // listener serves (whatever names it carries): see
    // `portico_gateway::tls::pinned`.
    let scheme = match &registry_options.tls {
        Some(tls) => {
            gateway_options.registry_tls = Some(tls.pinned_client_config());
            "https"
        }
        None => "http",
    };
    gateway_options.registry = vec![format!("{scheme}://{control_addr}")];
    gateway_options.registry_token = (!registry_options.tokens.is_empty())
        .then(|| registry_options.tokens.mint(Role::Gateway).into());
    // Two signals, sent in turn: the gateway stops first, so it drains,
    // removes its record and closes its watch while the registry still
    // answers; then the registry.
    let (stop_registry, registry_rx) = watch::channel(false);
    let (stop_gateway, gateway_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let registry = tokio::spawn(run_registry(
        control,
        registry_options,
        stopped(registry_rx),
    ));
    let gateway = run_gateway(gateway, gateway_options, stopped(gateway_rx));
    tokio::pin!(gateway);
    tokio::pin!(shutdown);
    let gateway_result = tokio::select! {
        // The gateway stopped on its own: bring the registry down too.
        r = &mut gateway => r,
        () = &mut shutdown => {
            let _ = stop_gateway.send(true);
            gateway.await
        }
    };
    let _ = stop_registry.send(true);
    let registry_result = registry.await.context("registry task")?;
    gateway_result.and(registry_result)
}
