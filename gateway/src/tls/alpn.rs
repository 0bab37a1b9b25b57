//! TLS-ALPN-01 (RFC 8737): the handshake an ACME CA makes to check that
//! this listener answers for a name.
//!
//! The validation connects to port 443 with the name as SNI and offers the
//! ALPN protocol `acme-tls/1` alone. It must get a self-signed certificate
//! for the name whose critical acmeIdentifier extension holds the SHA-256
//! of the key authorization; no HTTP follows.
//!
//! Two sources answer:
//! - the gateway that orders keeps the certificate for its own order in
//!   the certificate store, which the ordinary resolver reads;
//! - in a fleet following a registry, the CA may reach any gateway. The
//!   orderer publishes the key authorization in the registry under
//!   [`portico_registry::lock::alpn_token`]; a gateway asked for a name it
//!   holds no answer for looks it up there ([`FleetAnswers`]) and makes the
//!   certificate itself, with a key of its own. rustls resolves
//!   certificates synchronously, so such a listener reads the ClientHello
//!   first ([`accept`]) and fetches before the handshake goes on; only
//!   listeners of a fleet that validates by TLS-ALPN-01 do, every other
//!   listener keeps the plain acceptor.

use std::io;
use std::sync::Arc;

use portico_registry::client::RegistryClient;
use rustls::ServerConfig;
use rustls::server::{Acceptor, ClientHello};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Registry look-ups in flight at once, per gateway: a CA makes a few
/// validation handshakes per order, while anyone can offer `acme-tls/1`
/// and must not turn it into registry load.
pub const MAX_LOOKUPS: usize = 8;

/// Why a TLS-ALPN-01 certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("TLS-ALPN-01 certificate for {name}: {reason}")]
pub struct AlpnCertError {
    /// The DNS name validated.
    pub name: String,
    /// What failed.
    pub reason: String,
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, one DNS
/// subjectAltName, and the acmeIdentifier extension carrying
/// `key_authorization_sha256` (RFC 8737 §3). A fresh key each time: it
/// proves nothing but control of the listener, and lives for one order.
pub fn alpn_certificate(
    name: &str,
    key_authorization_sha256: &[u8],
) -> Result<Arc<CertifiedKey>, AlpnCertError> {
    let fail = |reason: String| AlpnCertError {
        name: name.to_string(),
        reason,
    };
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| fail(e.to_string()))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        key_authorization_sha256,
    )];
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| fail(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Whether a ClientHello is a TLS-ALPN-01 validation: `acme-tls/1` alone.
pub fn is_validation(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut alpn| alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none())
}

/// TLS-ALPN-01 answers another gateway of the fleet published in the
/// registry.
#[derive(Debug)]
pub struct FleetAnswers {
    client: RegistryClient,
    slots: Semaphore,
}

impl FleetAnswers {
    /// Looks answers up in the registry `client` follows.
    pub fn new(client: RegistryClient) -> FleetAnswers {
        FleetAnswers {
            client,
            slots: Semaphore::new(MAX_LOOKUPS),
        }
    }

    /// The validation certificate for `name`, if an answer is published
    /// (and a look-up slot is free: beyond [`MAX_LOOKUPS`], none, and the
    /// CA retries).
    pub async fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let token = portico_registry::lock::alpn_token(name);
        portico_registry::lock::validate_token(&token).ok()?;
        let _slot = self.slots.try_acquire().ok()?;
        let key_authorization = match self.client.challenge(&token).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(name, error = %e, "TLS-ALPN-01 answer not read from the registry");
                return None;
            }
        };
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
        alpn_certificate(name, digest.as_ref())
            .map_err(|e| tracing::warn!(error = %e, "TLS-ALPN-01 answer from the registry"))
            .ok()
    }
}

/// Completes a handshake on `io`. With `fleet`, the ClientHello is read
/// first: a validation for a name this gateway holds no answer for is
/// answered from the registry, with a config serving that certificate
/// alone; everything else continues with `acceptor`'s config.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    fleet: Option<&FleetAnswers>,
    held_locally: impl Fn(&str) -> bool,
    io: IO,
) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(fleet) = fleet else {
        return acceptor.accept(io).await;
    };
    let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
    let hello = start.client_hello();
    let wanted = match (is_validation(&hello), hello.server_name()) {
        (true, Some(name)) if !held_locally(name) => Some(name.to_string()),
        _ => None,
    };
    let mut config = acceptor.config().clone();
    if let Some(name) = wanted
        && let Some(cert) = fleet.certificate(&name).await
    {
        config = validation_config(cert)?;
    }
    start.into_stream(config).await
}

/// A config that answers one validation with `cert`.
fn validation_config(cert: Arc<CertifiedKey>) -> io::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(cert)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_certificate_carries_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let key = alpn_certificate("a.example", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[2..], &digest);
    }
}
