//! Client TLS towards `scheme = "https"` upstreams.
//!
//! Verification is on by default, against the web PKI roots (webpki-roots:
//! the Mozilla set compiled in, so a gateway verifies the same way on every
//! host and in a scratch container with no CA bundle) plus the bundles given
//! with `--upstream-ca`, plus a route's own `upstream_tls.ca`. A route may
//! present a client certificate (mTLS), name the server to verify instead of
//! each instance's, or, explicitly, skip verification (logged when its
//! configuration is built).
//!
//! The name verified and sent as SNI: the route's `upstream_tls.server_name`,
//! else the instance's `tls_server_name` metadata, else the host of its
//! address (an IP is verified against the certificate's IP SANs).
//!
//! ALPN offers `h2` then `http/1.1`, so a gRPC service behind TLS is reached
//! over HTTP/2 and a plain web server over HTTP/1.1; a request that upgrades
//! (WebSocket) needs HTTP/1.1 and offers only that. Each configuration is
//! built once and shared, and rustls keeps its session cache in it, so
//! upstream sessions are resumed across connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portico_registry::certificate::trust::{self, AnyServerCert};
use portico_registry::route::UpstreamTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::TlsSetupError;
use super::cert::CertError;

/// Instance metadata naming the TLS server name to verify and send as SNI.
pub const SERVER_NAME_META: &str = "tls_server_name";

/// The client configurations of one TLS setting: one offering h2 and
/// http/1.1, one offering http/1.1 only (for upgrades).
#[derive(Debug)]
pub struct ClientTls {
    /// Distinguishes the setting in pool keys: connections made with one
    /// setting are never reused by a route with another.
    id: u64,
    any: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

/// Where and how one TLS connection is made.
#[derive(Debug, Clone)]
pub struct TlsDial {
    /// The pool key: setting, offered protocols and authority.
    pub key: Box<str>,
    /// The configuration to connect with.
    pub config: Arc<ClientConfig>,
    /// The name verified and sent as SNI.
    pub name: ServerName<'static>,
}

impl ClientTls {
    /// How to reach `authority` (`host:port`) with this setting; `name` is
    /// the instance's own server name, if it gave one.
    pub fn dial(
        &self,
        authority: &str,
        name: Option<&str>,
        upgrade: bool,
    ) -> Result<TlsDial, String> {
        let server_name = match (&self.server_name, name) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) => server_name(n)?,
            (None, None) => server_name(host_of(authority))?,
        };
        let (config, alpn) = match upgrade {
            true => (self.http1.clone(), "h1"),
            false => (self.any.clone(), "any"),
        };
        Ok(TlsDial {
            key: format!("https/{}/{alpn}/{authority}", self.id).into(),
            config,
            name: server_name,
        })
    }
}

/// The host of `host:port` (brackets of an IPv6 literal removed).
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a valid TLS server name"))
}

/// The gateway's upstream TLS settings: the default and each route's,
/// built once each.
#[derive(Debug)]
pub struct UpstreamTlsConfigs {
    roots: Arc<RootCertStore>,
    default: Arc<ClientTls>,
    routes: Mutex<HashMap<UpstreamTls, Arc<ClientTls>>>,
    next_id: AtomicU64,
}

impl UpstreamTlsConfigs {
    /// The web PKI roots plus the bundles in `extra_ca` (refused, naming
    /// the file, when one holds no certificate).
    pub fn new(extra_ca: &[PathBuf]) -> Result<UpstreamTlsConfigs, TlsSetupError> {
        let roots = Arc::new(trust::roots_with(extra_ca)?);
        let default = build(0, &roots, &UpstreamTls::default())?;
        Ok(UpstreamTlsConfigs {
            roots,
            default: Arc::new(default),
            routes: Mutex::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// The setting for a route (`None`: the gateway's default), built and
    /// checked on first use; an error names the file or setting at fault.
    pub fn for_route(&self, tls: Option<&UpstreamTls>) -> Result<Arc<ClientTls>, TlsSetupError> {
        let Some(tls) = tls else {
            return Ok(self.default.clone());
        };
        let mut routes = self.routes.lock().expect("upstream TLS configs poisoned");
        if let Some(found) = routes.get(tls) {
            return Ok(found.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let built = Arc::new(build(id, &self.roots, tls)?);
        if tls.insecure_skip_verify {
            tracing::warn!(
                server_name = ?tls.server_name,
                "upstream TLS verification is OFF for a route (upstream_tls.insecure_skip_verify = true)"
            );
        }
        routes.insert(tls.clone(), built.clone());
        Ok(built)
    }
}

/// Both configurations of one setting.
fn build(
    id: u64,
    roots: &Arc<RootCertStore>,
    tls: &UpstreamTls,
) -> Result<ClientTls, TlsSetupError> {
    let roots = match &tls.ca {
        None => roots.clone(),
        Some(path) => {
            let mut own = (**roots).clone();
            trust::add_bundle(&mut own, path)?;
            Arc::new(own)
        }
    };
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let builder = match tls.insecure_skip_verify {
        false => builder.with_root_certificates(roots),
        true => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
    };
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = client_cert(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError::Config(format!("{}: {e}", cert.display())))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http1 = Arc::new(config.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server_name = tls.server_name.as_deref().map(server_name).transpose();
    Ok(ClientTls {
        id,
        any: Arc::new(config),
        http1,
        server_name: server_name.map_err(TlsSetupError::Config)?,
    })
}

type Chain = Vec<CertificateDer<'static>>;

/// A client certificate chain and key, refused naming the file.
fn client_cert(cert: &Path, key: &Path) -> Result<(Chain, PrivateKeyDer<'static>), CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| CertError::Read {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CertError::NoCertificate {
            what: cert.display().to_string(),
            reason: "no PEM certificate".into(),
        })?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| CertError::NoKey {
        what: key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((chain, key_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_comes_from_the_route_then_the_instance_then_the_address() {
        let configs = UpstreamTlsConfigs::new(&[]).unwrap();
        let default = configs.for_route(None).unwrap();
        let d = default.dial("10.0.0.1:443", None, false).unwrap();
        assert_eq!(d.name, ServerName::try_from("10.0.0.1").unwrap());
        let d = default.dial("[::1]:443", None, false).unwrap();
        assert_eq!(d.name, ServerName::try_from("::1").unwrap());
        let d = default
            .dial("10.0.0.1:443", Some("api.test"), true)
            .unwrap();
        assert_eq!(d.name, ServerName::try_from("api.test").unwrap());
        assert_eq!(d.config.alpn_protocols, [b"http/1.1".to_vec()]);
        let route = UpstreamTls {
            server_name: Some("svc.internal".into()),
            ..UpstreamTls::default()
        };
        let own = configs.for_route(Some(&route)).unwrap();
        let d = own.dial("10.0.0.1:443", Some("api.test"), false).unwrap();
        assert_eq!(d.name, ServerName::try_from("svc.internal").unwrap());
        assert_eq!(d.config.alpn_protocols.len(), 2);
        // Built once, and its connections pooled apart from the default's.
        assert!(Arc::ptr_eq(&own, &configs.for_route(Some(&route)).unwrap()));
        assert_ne!(
            d.key,
            default.dial("10.0.0.1:443", None, false).unwrap().key
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = UpstreamTlsConfigs::new(&["/nonexistent/ca.pem".into()]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
