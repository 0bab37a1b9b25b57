//! Certificates from the registry's watch stream, applied to the store the
//! HTTPS listener serves from.
//!
//! The registry checked each certificate when it was written; the gateway
//! checks it again, because what holds there may not hold here (a clock
//! ahead of the registry's sees it expired; a token without the `gateway`
//! role receives no key). One that does not load is refused here alone:
//! logged, counted in `portico_gateway_tls_reloads{result="refused"}`, and
//! the certificate this gateway served under that name before (if any)
//! goes on serving, as with a bad certificate file. The others serve.

use std::collections::BTreeMap;
use std::sync::Arc;

use portico_registry::certificate::Certificate;

use super::cert::{LoadedCert, unix_now};
use super::store::CertStore;

/// Applies registry certificate events to one [`CertStore`].
#[derive(Debug, Clone)]
pub struct RegistryCerts {
    store: Arc<CertStore>,
}

impl RegistryCerts {
    /// Applies to `store`.
    pub fn new(store: Arc<CertStore>) -> RegistryCerts {
        RegistryCerts { store }
    }

    /// A snapshot: exactly these certificates (a refused one keeps the
    /// one served under its name, if any).
    pub fn set(&self, certs: Vec<Certificate>) {
        let before = self.store.registry_certs();
        let mut next = BTreeMap::new();
        for cert in certs {
            let name = cert.summary.name.clone();
            match self.load(&cert) {
                Some(loaded) => {
                    next.insert(name, loaded);
                }
                None => {
                    if let Some(old) = before.get(&name) {
                        next.insert(name, old.clone());
                    }
                }
            }
        }
        self.store.set_registry(next);
    }

    /// A certificate stored or replaced.
    pub fn put(&self, cert: &Certificate) {
        if let Some(loaded) = self.load(cert) {
            self.store.put_registry(&cert.summary.name, loaded);
        }
    }

    /// A certificate deleted: handshakes for its names fall back to
    /// another certificate naming them, else the default.
    pub fn remove(&self, name: &str) {
        self.store.remove_registry(name);
        tracing::info!(certificate = name, "registry certificate deleted");
    }

    fn load(&self, cert: &Certificate) -> Option<Arc<LoadedCert>> {
        match LoadedCert::from_registry(cert, unix_now()) {
            Ok(loaded) => {
                self.store.count_applied();
                tracing::info!(
                    certificate = %cert.summary.name,
                    names = ?loaded.names,
                    fingerprint = %loaded.fingerprint,
                    "registry certificate loaded"
                );
                Some(Arc::new(loaded))
            }
            Err(e) => {
                self.store.count_refused();
                tracing::error!(
                    certificate = %cert.summary.name,
                    error = %e,
                    "registry certificate refused; the previous one (if any) keeps serving"
                );
                None
            }
        }
    }
}
