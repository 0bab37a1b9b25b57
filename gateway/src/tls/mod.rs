//! TLS on the gateway's listeners (downstream) and towards upstreams.
//!
//! - [`alpn`]: TLS-ALPN-01 validation handshakes, answered here or, in a
//!   fleet, from the registry.
//! - [`cert`]: one certificate (PEM chain and key) loaded and checked, with
//!   the names, expiry and fingerprint operators see.
//! - [`store`]: the certificates a listener serves, picked per handshake by
//!   SNI (exact over wildcard, the first as default), swapped whole.
//! - [`watch`]: re-reads the certificate files when they change and on
//!   SIGHUP; a bad new file is refused whole and the old one kept.
//! - [`registry`]: certificates from the registry's watch, loaded into
//!   the store (a refused one logged and counted, the rest serving).
//! - [`upstream`]: client TLS for `scheme = "https"` instances.
//! - [`pinned`]: a client that trusts exactly what a listener of this
//!   process serves (`portico up`'s gateway following its own registry).
//!
//! Settings and why (documented for operators in docs/configuration.md):
//! TLS 1.2 and 1.3 only, rustls' default cipher suites (AEAD only, forward
//! secret only); ALPN offers `h2` then `http/1.1`; resumption by stateless
//! tickets (rotating keys, as nginx's `ssl_session_tickets on`) and a
//! session cache for TLS 1.2 clients without tickets; no 0-RTT (replayable).
//!
//! The crypto provider is aws-lc-rs, rustls' default (why, in
//! docs/configuration.md, "Crypto provider": about 25% less server time
//! per handshake than ring, measured with bench's `tls_providers`).

pub mod alpn;
pub mod cert;
pub mod pinned;
pub mod registry;
pub mod store;
pub mod upstream;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use tokio_rustls::TlsAcceptor;

use self::cert::CertFiles;
use self::store::{CertStore, StoreResolver};

/// TLS 1.2 sessions remembered for resumption by clients that do not take
/// tickets (about 100 bytes each).
pub const SESSION_CACHE: usize = 10_000;

/// The crypto provider every TLS config is built with: the process default
/// when `main` installed one, else aws-lc-rs (the one certificates are
/// checked with, in the registry crate).
pub use portico_registry::certificate::load::provider;

/// Installs aws-lc-rs as the process's crypto provider; call once, before
/// any TLS config is built. A second call changes nothing.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Why a TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate was refused.
    #[error(transparent)]
    Cert(#[from] cert::CertError),
    /// `--tls-listen` without any certificate.
    #[error("--tls-listen needs at least one --tls-cert CERT.pem:KEY.pem")]
    NoCertificate,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What an HTTPS listener serves.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Certificate files, the first being the default.
    pub certs: Vec<CertFiles>,
    /// `Strict-Transport-Security` value added to responses on the TLS
    /// listener (`None`: not sent).
    pub hsts: Option<http::HeaderValue>,
    /// Client certificates asked for (mTLS), when set.
    pub client_auth: Option<ClientAuth>,
    /// ACME supplies a certificate (the `acme` module), so the listener may
    /// start with no file (handshakes fail until the first is issued).
    pub acme: bool,
}

/// Client-certificate verification on the HTTPS listener
/// (`--tls-client-ca`).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: std::path::PathBuf,
    /// Refuse a handshake without a valid client certificate; `false`: a
    /// client may send none (a certificate sent must still verify).
    pub required: bool,
}

/// Handshake outcomes, by what a metric label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed, the client chose HTTP/2.
    H2 = 0,
    /// Completed, HTTP/1.1 (by ALPN or without it).
    Http1 = 1,
    /// Failed: a protocol version, cipher or certificate the client and the
    /// gateway do not share, or a client that is not speaking TLS.
    Failed = 2,
    /// The client did not finish within the header read timeout.
    Timeout = 3,
}

impl Handshake {
    /// Every outcome with its `result` and `protocol` labels.
    pub const ALL: [(Handshake, &'static str, &'static str); 4] = [
        (Handshake::H2, "ok", "h2"),
        (Handshake::Http1, "ok", "http/1.1"),
        (Handshake::Failed, "failed", "none"),
        (Handshake::Timeout, "timeout", "none"),
    ];
}

/// TLS counters of the gateway, read by the metrics collector and
/// `/status`; the certificates are read from `store` when scraped.
#[derive(Debug, Default)]
pub struct TlsStats {
    handshakes: [AtomicU64; 4],
    resumed: AtomicU64,
    store: Arc<CertStore>,
}

impl TlsStats {
    /// Counts a handshake outcome.
    pub fn count(&self, outcome: Handshake, resumed: bool) {
        self.handshakes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handshakes with this outcome so far.
    pub fn handshakes(&self, outcome: Handshake) -> u64 {
        self.handshakes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Completed handshakes that resumed a session.
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    /// The certificates served.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }
}

/// An HTTPS listener's TLS side: the acceptor (its certificate resolver
/// reads the store) and what the connections report to.
#[derive(Clone)]
pub struct ServerTls {
    /// Performs handshakes.
    pub acceptor: TlsAcceptor,
    /// Counters.
    pub stats: Arc<TlsStats>,
    /// The HSTS header value, if sent.
    pub hsts: Option<http::HeaderValue>,
    /// The certificate files and the bytes being served came from, for
    /// the reload watcher.
    files: Arc<(Vec<CertFiles>, watch::Contents)>,
    /// In a fleet validating by TLS-ALPN-01: answers published in the
    /// registry by the gateway that orders ([`alpn`]).
    pub fleet_alpn: Option<Arc<alpn::FleetAnswers>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("hsts", &self.hsts)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `settings.certs` into `stats`' store and builds the acceptor.
    /// Refuses a certificate that does not load, naming its file.
    pub fn new(settings: &TlsSettings, stats: Arc<TlsStats>) -> Result<ServerTls, TlsSetupError> {
        if settings.certs.is_empty() && !settings.acme {
            return Err(TlsSetupError::NoCertificate);
        }
        let (loaded, contents) = watch::load_all(&settings.certs)?;
        stats.store.set_files(loaded);
        let config = server_config(stats.store.clone(), settings.client_auth.as_ref())?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            stats,
            hsts: settings.hsts.clone(),
            files: Arc::new((settings.certs.clone(), contents)),
            fleet_alpn: None,
        })
    }

    /// Completes a handshake on `io` (see [`alpn::accept`] for what a
    /// fleet's listener does first).
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let store = &self.stats.store;
        let held = |name: &str| store.has_alpn_challenge(name);
        alpn::accept(&self.acceptor, self.fleet_alpn.as_deref(), held, io).await
    }

    /// A client configuration trusting exactly the certificates this
    /// listener serves ([`pinned`]).
    pub fn pinned_client_config(&self) -> Arc<rustls::ClientConfig> {
        pinned::ServedCertVerifier::client_config(self.stats.store.clone())
    }

    /// Starts re-reading the certificate files on change and SIGHUP
    /// ([`watch`]); the task runs until aborted.
    pub fn watch_files(&self) -> tokio::task::JoinHandle<()> {
        let (files, served) = &*self.files;
        watch::spawn(
            files.clone(),
            served.clone(),
            self.stats.store.clone(),
            watch::POLL_INTERVAL,
        )
    }
}

/// The server config: TLS 1.3 and 1.2, ALPN h2 and http/1.1, resumption
/// by tickets and a session cache, certificates from `store` per handshake.
fn server_config(
    store: Arc<CertStore>,
    client_auth: Option<&ClientAuth>,
) -> Result<ServerConfig, TlsSetupError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, provider)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(StoreResolver(store)));
    // `acme-tls/1` last: rustls picks by the server's order, and only an
    // ACME validation offers it (then alone); see [`store`].
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        alpn::ACME_TLS_ALPN.to_vec(),
    ];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    Ok(config)
}

/// Verifies client certificates against `auth.ca` (refused at startup,
/// naming the file, when it holds no CA certificate).
fn client_verifier(
    auth: &ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsSetupError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let what = auth.ca.display().to_string();
    let pem = std::fs::read(&auth.ca).map_err(|e| cert::CertError::Read {
        path: what.clone(),
        reason: e.to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert::CertError::NoCertificate {
            what: what.clone(),
            reason: e.to_string(),
        })?;
    if roots.add_parsable_certificates(certs).0 == 0 {
        return Err(cert::CertError::NoCertificate {
            what,
            reason: "no CA certificate in the file".into(),
        }
        .into());
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth.required {
        true => builder,
        false => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| TlsSetupError::Config(format!("{what}: {e}")))
}

/// The subject of the verified client certificate on `session`, as a
/// header value (RFC 4514 style, e.g. `CN=alice, O=Example`).
pub fn client_subject(session: &rustls::ServerConnection) -> Option<http::HeaderValue> {
    let leaf = session.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    http::HeaderValue::from_str(&cert.subject().to_string()).ok()
}
