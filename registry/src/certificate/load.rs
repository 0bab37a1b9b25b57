//! Loading and checking one certificate: a PEM chain and its key.
//!
//! The same code checks a `PUT /v1/certificates/{name}` body in the
//! registry and the gateway's `--tls-cert` files and registry certificates,
//! so a certificate the registry accepts is one every gateway can serve.
//!
//! A certificate is refused whole, with a message naming where it came from
//! (a file, a body field, a registry entry), when: it holds no PEM
//! certificate or key; the key is of a kind rustls cannot sign with (ECDSA
//! P-256/P-384, RSA and Ed25519 are accepted); the key does not belong to
//! the leaf certificate; the leaf has expired; or the leaf names no DNS
//! subjectAltName (the names a certificate serves come only from there, as
//! browsers have required since 2017).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{Certificate, CertificateSpec, CertificateSummary, INVALID_CERTIFICATE, rfc3339};
use crate::model::Invalid;

/// The crypto provider keys are loaded with: the process default when
/// `main` installed one, else aws-lc-rs (rustls' default).
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Why a certificate was refused. Each names where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// No PEM `CERTIFICATE` block, or one that does not decode.
    #[error("{what}: no usable PEM certificate: {reason}")]
    NoCertificate {
        /// The file or registry entry.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// No PEM private key, or one that does not decode.
    #[error("{what}: no usable PEM private key: {reason}")]
    NoKey {
        /// The file or registry entry.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The certificate does not parse as X.509.
    #[error("{what}: not an X.509 certificate: {reason}")]
    BadCertificate {
        /// The file or registry entry.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The key does not belong to the leaf certificate.
    #[error("{what}: the private key does not match the certificate")]
    KeyMismatch {
        /// The key file or registry entry.
        what: String,
    },
    /// The leaf certificate's notAfter is in the past.
    #[error("{what}: the certificate expired {expired_s} s ago")]
    Expired {
        /// The file or registry entry.
        what: String,
        /// Seconds since it expired.
        expired_s: i64,
    },
    /// The leaf names no subjectAltName it could serve: no DNS name, and
    /// (where an IP address would do) no IP address either.
    #[error("{what}: the certificate names no DNS subjectAltName, so it would serve no name")]
    NoNames {
        /// The file or registry entry.
        what: String,
    },
}

impl CertError {
    /// Where the refused certificate came from (a file, a body field, a
    /// registry entry), as given to [`LoadedCert::from_pem`].
    pub fn what(&self) -> &str {
        match self {
            CertError::Read { path: what, .. }
            | CertError::NoCertificate { what, .. }
            | CertError::NoKey { what, .. }
            | CertError::BadCertificate { what, .. }
            | CertError::KeyMismatch { what }
            | CertError::Expired { what, .. }
            | CertError::NoNames { what } => what,
        }
    }
}

impl Certificate {
    /// Checks a `PUT /v1/certificates/{name}` body and describes it; a
    /// refusal names the body field at fault (`cert_pem` or `key_pem`).
    pub fn check(name: &str, spec: CertificateSpec, now_s: i64) -> Result<Certificate, Invalid> {
        let loaded = LoadedCert::from_pem(
            spec.cert_pem.as_bytes(),
            spec.key_pem.as_bytes(),
            "cert_pem",
            "key_pem",
            now_s,
        )
        .map_err(|e| Invalid {
            field: Some(e.what().to_string()),
            reason: e.to_string(),
            code: INVALID_CERTIFICATE,
        })?;
        // Gateways pick a registry certificate by SNI name only (the
        // default is always a file's), so one without a DNS name would
        // never be served.
        if loaded.names.is_empty() {
            return Err(Invalid {
                field: Some("cert_pem".into()),
                reason: CertError::NoNames {
                    what: "cert_pem".into(),
                }
                .to_string(),
                code: INVALID_CERTIFICATE,
            });
        }
        Ok(Certificate {
            summary: CertificateSummary {
                name: name.to_string(),
                names: loaded.names,
                not_after: rfc3339(loaded.not_after),
                not_after_unix: loaded.not_after,
                fingerprint_sha256: loaded.fingerprint,
                revision: 0,
            },
            cert_pem: Some(spec.cert_pem),
            key_pem: Some(spec.key_pem),
        })
    }
}

impl LoadedCert {
    /// Loads a certificate received from the registry, as `registry:NAME`
    /// (a `--tls-cert` path cannot hold a `:`, so the two never look
    /// alike). Refused like a file when it does not load here, or when the
    /// watch carried no key (the gateway's token may not read keys).
    pub fn from_registry(cert: &Certificate, now_s: i64) -> Result<LoadedCert, CertError> {
        let what = format!("{REGISTRY_SOURCE}{}", cert.summary.name);
        let (Some(chain), Some(key)) = (&cert.cert_pem, &cert.key_pem) else {
            return Err(CertError::NoKey {
                what,
                reason: "the registry sent no key material: the gateway's registry token \
                         needs the gateway or admin role"
                    .into(),
            });
        };
        LoadedCert::from_pem(chain.as_bytes(), key.as_bytes(), &what, &what, now_s)
    }

    /// The registry name when this certificate came from the registry.
    pub fn registry_name(&self) -> Option<&str> {
        self.source.strip_prefix(REGISTRY_SOURCE)
    }
}

/// How the source of a registry certificate starts.
pub const REGISTRY_SOURCE: &str = "registry:";

/// A certificate ready to serve, with what operators see of it.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// Where it came from (a file, or `registry:NAME`).
    pub source: String,
    /// The DNS names it serves (subjectAltNames, lowercase; `*.example.com`
    /// for a wildcard).
    pub names: Vec<String>,
    /// Its leaf's notAfter, in Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf certificate (DER), in lowercase hex.
    pub fingerprint: String,
    /// The chain and signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
}

impl LoadedCert {
    /// Loads a PEM chain and key. `cert_what` and `key_what` name where
    /// each came from in errors; `now_s` is the current Unix time.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_what: &str,
        key_what: &str,
        now_s: i64,
    ) -> Result<LoadedCert, CertError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::NoCertificate {
                what: cert_what.into(),
                reason: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::NoCertificate {
                what: cert_what.into(),
                reason: "the file holds no CERTIFICATE block".into(),
            });
        };
        let (names, ips, not_after) = describe(leaf, cert_what)?;
        if not_after <= now_s {
            return Err(CertError::Expired {
                what: cert_what.into(),
                expired_s: now_s - not_after,
            });
        }
        // Clients that dial an IP send no SNI and verify the IP's SAN: such
        // a certificate (a control port reached by address) is served as
        // the default, so it needs no DNS name.
        if names.is_empty() && ips == 0 {
            return Err(CertError::NoNames {
                what: cert_what.into(),
            });
        }
        let fingerprint = sha256_hex(leaf);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey {
            what: key_what.into(),
            reason: e.to_string(),
        })?;
        let provider = provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
                what: key_what.into(),
            },
            other => CertError::NoKey {
                what: key_what.into(),
                reason: other.to_string(),
            },
        })?;
        Ok(LoadedCert {
            source: cert_what.into(),
            names,
            not_after,
            fingerprint,
            key: Arc::new(key),
        })
    }

    /// Seconds until it expires (negative once it has).
    pub fn expires_in(&self, now_s: i64) -> i64 {
        self.not_after - now_s
    }
}

/// The leaf's DNS subjectAltNames (lowercase, deduplicated), how many IP
/// subjectAltNames it has, and its notAfter.
fn describe(leaf: &CertificateDer<'_>, what: &str) -> Result<(Vec<String>, usize, i64), CertError> {
    let bad = |reason: String| CertError::BadCertificate {
        what: what.into(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    let mut ips = 0;
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                    if !dns.is_empty() && !names.contains(&dns) {
                        names.push(dns);
                    }
                }
                x509_parser::extensions::GeneralName::IPAddress(_) => ips += 1,
                _ => {}
            }
        }
    }
    Ok((names, ips, cert.validity().not_after.timestamp()))
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_come_from_subject_alt_names() {
        let (cert, key) = make(&["A.example.com", "*.example.org"]);
        let c =
            LoadedCert::from_pem(cert.as_bytes(), key.as_bytes(), "c", "k", unix_now()).unwrap();
        assert_eq!(c.names, ["a.example.com", "*.example.org"]);
        assert_eq!(c.fingerprint.len(), 64);
        assert!(c.expires_in(unix_now()) > 0);
    }

    #[test]
    fn an_ip_only_certificate_loads_from_a_file_but_not_into_the_registry() {
        let (cert, key) = make(&["127.0.0.1"]);
        let c =
            LoadedCert::from_pem(cert.as_bytes(), key.as_bytes(), "c", "k", unix_now()).unwrap();
        assert!(c.names.is_empty());
        let spec = CertificateSpec {
            cert_pem: cert,
            key_pem: key,
        };
        let err = Certificate::check("ip", spec, unix_now()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("cert_pem"), "{err:?}");
    }

    #[test]
    fn refusals_name_the_file() {
        let (cert, key) = make(&["a.example.com"]);
        let (_, other_key) = make(&["b.example.com"]);
        let now = unix_now();
        let err = LoadedCert::from_pem(cert.as_bytes(), other_key.as_bytes(), "c", "k.pem", now)
            .unwrap_err();
        assert_eq!(
            err,
            CertError::KeyMismatch {
                what: "k.pem".into()
            }
        );
        let err = LoadedCert::from_pem(b"garbage", key.as_bytes(), "c.pem", "k", now).unwrap_err();
        assert!(err.to_string().starts_with("c.pem: "), "{err}");
        let err = LoadedCert::from_pem(cert.as_bytes(), b"garbage", "c", "k.pem", now).unwrap_err();
        assert!(err.to_string().starts_with("k.pem: "), "{err}");
        // In 2103, it has expired.
        let later = 4_200_000_000;
        let err =
            LoadedCert::from_pem(cert.as_bytes(), key.as_bytes(), "c.pem", "k", later).unwrap_err();
        assert!(matches!(err, CertError::Expired { .. }), "{err}");
    }
}
