//! Why a registry on etcd over TLS could not start: its own handshake.
//!
//! etcd-client retries a refused TLS connection like a member that is down
//! (the request only times out), so an etcd that refuses this registry's
//! certificate, or whose certificate this registry does not trust, looked
//! like an outage. When the store does not answer at startup, one handshake
//! per member with the same CA and client certificate tells the two apart:
//! a member that is down is waited for; a TLS refusal (with TLS 1.3 the
//! server's "certificate required" alert only arrives on the first read,
//! hence the HTTP/2 preface written and one read) stops the start, naming
//! the member and the reason. Waiting would not mend it.

use std::sync::Arc;
use std::time::Duration;

use portico_registry::store::etcd::EtcdTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// The HTTP/2 client preface and an empty SETTINGS frame, as gRPC sends.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// An error when a member refuses (or is refused by) TLS; `Ok` when every
/// member is unreachable or shakes hands.
pub async fn refused(endpoints: &[String], tls: &EtcdTls) -> anyhow::Result<()> {
    let config = Arc::new(client_config(tls)?);
    for endpoint in endpoints {
        if let Err(why) = handshake(endpoint, config.clone()).await {
            anyhow::bail!("etcd refused this registry's TLS connection: {endpoint}: {why}");
        }
    }
    Ok(())
}

fn client_config(tls: &EtcdTls) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(portico_gateway::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match &tls.identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `Err` only for a TLS failure; an unreachable member is `Ok`.
async fn handshake(endpoint: &str, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let Some((host, port)) = host_port(endpoint) else {
        return Ok(());
    };
    let Ok(Ok(tcp)) =
        tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect((host.as_str(), port))).await
    else {
        return Ok(());
    };
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream = match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Ok(()),
    };
    if stream.write_all(PREFACE).await.is_err() {
        return Ok(());
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut buf)).await {
        Ok(Err(e)) => Err(e.to_string()),
        _ => Ok(()),
    }
}

fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let uri: http::Uri = endpoint.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), uri.port_u16()?))
}
