//! The certificates a TLS listener serves, and how a handshake picks one.
//!
//! [`CertSet`] is an immutable snapshot: every certificate, an index of
//! exact names and one of wildcard names. [`CertStore`] keeps the sources
//! (files from `--tls-cert`, certificates from the registry) and swaps a new
//! set in whole when one changes, so a handshake reads one consistent set
//! with one atomic load, and open connections keep the key they shook
//! hands with.
//!
//! Picking, for a client's SNI name (case-insensitive): the certificate
//! naming it exactly; else one naming the wildcard of its parent
//! (`*.example.com` covers `a.example.com`, not `example.com` nor
//! `a.b.example.com`, as RFC 6125 says); else the default, the first
//! certificate, which also answers clients that send no SNI. When two
//! certificates claim one name, the first claims it: files in flag order,
//! then the ACME certificate, then registry certificates by name.
//!
//! A client that offers only the ALPN protocol `acme-tls/1` is an ACME
//! server validating a TLS-ALPN-01 challenge (RFC 8737): it gets the
//! challenge certificate published for its SNI name, or no certificate at
//! all (the handshake fails), never a served one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::cert::LoadedCert;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every certificate served, indexed by name.
#[derive(Debug, Default)]
pub struct CertSet {
    certs: Vec<Arc<LoadedCert>>,
    exact: FastMap<String, usize>,
    /// By the parent name a wildcard covers (`example.com` for
    /// `*.example.com`).
    wildcard: FastMap<String, usize>,
}

impl CertSet {
    /// Indexes `certs`; the first is the default.
    pub fn new(certs: Vec<Arc<LoadedCert>>) -> CertSet {
        let mut exact = FastMap::default();
        let mut wildcard = FastMap::default();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        CertSet {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for a client that asked for `sni` (see the module
    /// docs); `None` only when the set is empty.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<LoadedCert>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(&i) = self.exact.get(&name) {
                return Some(&self.certs[i]);
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(&i) = self.wildcard.get(parent)
            {
                return Some(&self.certs[i]);
            }
        }
        self.certs.first()
    }

    /// Every certificate, the default first.
    pub fn certs(&self) -> &[Arc<LoadedCert>] {
        &self.certs
    }
}

/// The sources of a listener's certificates and the set built from them.
#[derive(Debug, Default)]
pub struct CertStore {
    set: ArcSwap<CertSet>,
    sources: Mutex<Sources>,
    reloads_applied: AtomicU64,
    reloads_refused: AtomicU64,
    /// TLS-ALPN-01 challenge certificates by lowercase DNS name. A std
    /// mutex: held only to clone an `Arc` out, never across `.await`, and
    /// only by `acme-tls/1` handshakes (a few per order), not by clients.
    alpn_challenges: Mutex<FastMap<String, Arc<CertifiedKey>>>,
}

#[derive(Debug, Default)]
struct Sources {
    files: Vec<Arc<LoadedCert>>,
    /// The certificate the ACME client obtained, when it has one.
    acme: Option<Arc<LoadedCert>>,
    registry: BTreeMap<String, Arc<LoadedCert>>,
}

impl CertStore {
    /// The set handshakes read now.
    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    /// Replaces the certificates loaded from files.
    pub fn set_files(&self, files: Vec<Arc<LoadedCert>>) {
        self.update(|s| s.files = files);
    }

    /// Serves `cert` as the ACME certificate (replacing the previous one).
    pub fn set_acme(&self, cert: Arc<LoadedCert>) {
        self.update(|s| s.acme = Some(cert));
    }

    /// Publishes (`Some`) or withdraws (`None`) the TLS-ALPN-01 challenge
    /// certificate for `name`.
    pub fn set_alpn_challenge(&self, name: &str, cert: Option<Arc<CertifiedKey>>) {
        let mut map = self
            .alpn_challenges
            .lock()
            .expect("challenge certificates poisoned");
        let name = name.to_ascii_lowercase();
        match cert {
            Some(cert) => map.insert(name, cert),
            None => map.remove(&name),
        };
    }

    /// Whether a TLS-ALPN-01 certificate for `name` is published here.
    pub fn has_alpn_challenge(&self, name: &str) -> bool {
        self.alpn_challenge(Some(name)).is_some()
    }

    fn alpn_challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.alpn_challenges
            .lock()
            .expect("challenge certificates poisoned")
            .get(&name)
            .cloned()
    }

    /// Adds or replaces a certificate kept in the registry.
    pub fn put_registry(&self, name: &str, cert: Arc<LoadedCert>) {
        self.update(|s| {
            s.registry.insert(name.to_string(), cert);
        });
    }

    /// Removes a registry certificate.
    pub fn remove_registry(&self, name: &str) {
        self.update(|s| {
            s.registry.remove(name);
        });
    }

    /// The registry certificates served now, by name.
    pub fn registry_certs(&self) -> BTreeMap<String, Arc<LoadedCert>> {
        self.sources
            .lock()
            .expect("certificate sources poisoned")
            .registry
            .clone()
    }

    /// Replaces every registry certificate (a registry snapshot).
    pub fn set_registry(&self, certs: BTreeMap<String, Arc<LoadedCert>>) {
        self.update(|s| s.registry = certs);
    }

    fn update(&self, change: impl FnOnce(&mut Sources)) {
        let mut sources = self.sources.lock().expect("certificate sources poisoned");
        change(&mut sources);
        let all = sources
            .files
            .iter()
            .chain(sources.acme.iter())
            .chain(sources.registry.values())
            .cloned()
            .collect();
        self.set.store(Arc::new(CertSet::new(all)));
    }

    /// Counts a certificate (re)loaded from its files or the registry.
    pub fn count_applied(&self) {
        self.reloads_applied.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a certificate refused, from its files or the registry (the
    /// previous one kept).
    pub fn count_refused(&self) {
        self.reloads_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads applied and refused so far.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_applied.load(Ordering::Relaxed),
            self.reloads_refused.load(Ordering::Relaxed),
        )
    }
}

/// What rustls asks during a handshake: the store's current set, picked by
/// the client's SNI.
#[derive(Debug)]
pub struct StoreResolver(pub Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if super::alpn::is_validation(&hello) {
            return self.0.alpn_challenge(hello.server_name());
        }
        self.0
            .set
            .load()
            .pick(hello.server_name())
            .map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(source: &str, names: &[&str]) -> Arc<LoadedCert> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["x.invalid".to_string()]).unwrap();
        let c = params.self_signed(&key).unwrap();
        let loaded = LoadedCert::from_pem(
            c.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            source,
            source,
            super::super::cert::unix_now(),
        )
        .unwrap();
        Arc::new(LoadedCert {
            names: names.iter().map(|s| s.to_string()).collect(),
            ..loaded
        })
    }

    #[test]
    fn exact_beats_wildcard_and_the_first_is_the_default() {
        let set = CertSet::new(vec![
            cert("default", &["default.example"]),
            cert("wild", &["*.example.com"]),
            cert("exact", &["api.example.com"]),
        ]);
        let pick = |sni: Option<&str>| set.pick(sni).unwrap().source.clone();
        assert_eq!(pick(Some("api.example.com")), "exact");
        assert_eq!(pick(Some("API.Example.com.")), "exact");
        assert_eq!(pick(Some("www.example.com")), "wild");
        assert_eq!(pick(Some("example.com")), "default");
        assert_eq!(pick(Some("a.b.example.com")), "default");
        assert_eq!(pick(Some("unknown.test")), "default");
        assert_eq!(pick(None), "default");
        assert!(CertSet::default().pick(None).is_none());
    }
}
