//! What a TLS client of Portico trusts: the web PKI roots plus CA bundles
//! an operator names, and the explicit opt-out that trusts any server
//! certificate. Shared by the gateway's upstream TLS and the registry's own
//! health checks of `https` instances, so both verify the same way.
//!
//! The roots are webpki-roots (Mozilla's set compiled in): verification is
//! the same on every host, including a scratch container with no CA bundle,
//! and does not change when the host's store does.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::load::CertError;

/// The web PKI roots plus every CA in the PEM bundles `ca_files`.
pub fn roots_with<P: AsRef<Path>>(ca_files: &[P]) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in ca_files {
        add_bundle(&mut roots, path.as_ref())?;
    }
    Ok(roots)
}

/// Adds the CA certificates of the PEM bundle at `path`; a file that cannot
/// be read or holds no certificate is refused, naming it.
pub fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), CertError> {
    let what = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| CertError::Read {
        path: what.clone(),
        reason: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::NoCertificate {
            what: what.clone(),
            reason: e.to_string(),
        })?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(CertError::NoCertificate {
            what,
            reason: "no CA certificate in the file".into(),
        });
    }
    Ok(())
}

/// Accepts any server certificate: only where an operator said so
/// explicitly. Handshake signatures are still checked, so the connection is
/// at least to whoever holds the key it showed.
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
