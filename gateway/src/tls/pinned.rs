//! Trusting exactly the certificates a listener of this process serves.
//!
//! `portico up` runs the registry and its gateway in one process, and the
//! gateway follows the registry over its public API, over HTTPS when the
//! control port has a certificate. That certificate may be issued for a
//! name other than the address the gateway dials (`127.0.0.1`), or by a
//! private CA the process was never told about; yet the process knows the
//! certificate itself. So the in-process client accepts a server
//! certificate only when it is byte for byte one the control listener is
//! serving now (read from its store at each handshake, so a reloaded
//! certificate is trusted at once), and still checks the handshake
//! signature: only the holder of that certificate's key passes.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::store::CertStore;

/// Accepts a server certificate iff `store` serves it now.
#[derive(Debug)]
pub struct ServedCertVerifier {
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServedCertVerifier {
    /// A client configuration (TLS 1.3 and 1.2) that trusts only what
    /// `store` serves.
    pub fn client_config(store: Arc<CertStore>) -> Arc<ClientConfig> {
        let provider = super::provider();
        let verifier = Arc::new(ServedCertVerifier {
            store,
            provider: provider.clone(),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl ServerCertVerifier for ServedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let served = self.store.current();
        let ours = served
            .certs()
            .iter()
            .any(|c| c.key.cert.first() == Some(end_entity));
        match ours {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
