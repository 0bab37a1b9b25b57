//! HTTPS to the registry: the rustls configuration the SDK and gateways
//! connect with, and the connector that speaks either scheme.
//!
//! Verification is always on. The trust anchors are the web PKI roots
//! (webpki-roots: the Mozilla set compiled in, as the gateway's upstream TLS
//! uses, so a client verifies the same way on every host and in a scratch
//! container) plus the CA bundles the caller names (`--registry-ca`), which
//! is what a registry with a private CA needs. The name verified is the host
//! of the registry URL (an IP literal is checked against the certificate's IP
//! subjectAltNames). ALPN offers `http/1.1` only: the SDK's calls and the
//! watch stream behave exactly as over cleartext, one pooled connection per
//! call in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::ClientError;

/// The connector of the SDK's pooled client: TCP, then TLS for `https`.
pub type Connector = HttpsConnector<HttpConnector>;

/// A client configuration trusting the web PKI roots plus every CA in the
/// PEM bundles `ca_files`. A file that cannot be read or holds no
/// certificate is refused, naming it.
pub fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in ca_files {
        add_bundle(&mut roots, path)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), ClientError> {
    let refused = |reason: String| ClientError::Tls(format!("{}: {reason}", path.display()));
    let pem = std::fs::read(path).map_err(|e| refused(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("not a PEM bundle: {e}")))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(refused("no CA certificate in the file".into()));
    }
    Ok(())
}

/// The process's crypto provider when one is installed (the `portico`
/// binary installs aws-lc-rs), else aws-lc-rs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A connector for `http` and `https` registry URLs; `https` ones verify
/// with `config` (its ALPN is set here to `http/1.1`).
pub fn connector(config: Arc<ClientConfig>) -> Connector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    http.set_nodelay(true);
    // The TLS connector takes the URL's scheme, so TCP must not refuse https.
    http.enforce_http(false);
    HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
