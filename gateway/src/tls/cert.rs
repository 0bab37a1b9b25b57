//! One certificate: a PEM chain and its key, loaded, checked and described.
//!
//! A certificate is refused whole, with a message naming the file (or the
//! registry entry) it came from, when: a file cannot be read or holds no
//! PEM certificate or key; the key is of a kind rustls cannot sign with
//! (ECDSA P-256/P-384, RSA and Ed25519 are accepted); the key does not
//! belong to the leaf certificate; the leaf has expired; or the leaf names
//! no DNS subjectAltName (the names a certificate serves come only from
//! there, as browsers have required since 2017).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
    /// The leaf names no DNS subjectAltName.
    #[error("{what}: the certificate names no DNS subjectAltName, so it would serve no name")]
    NoNames {
        /// The file or registry entry.
        what: String,
    },
}

/// Where a certificate comes from: a pair of files (`--tls-cert
/// CERT.pem:KEY.pem`), re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The PEM chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl CertFiles {
    /// Parses `CERT.pem:KEY.pem`.
    pub fn parse(s: &str) -> Result<CertFiles, String> {
        match s.split_once(':') {
            Some((cert, key)) if !cert.is_empty() && !key.is_empty() => Ok(CertFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            _ => Err(format!("{s:?}: expected CERT.pem:KEY.pem")),
        }
    }

    /// Reads both files and loads the pair.
    pub fn load(&self, now_s: i64) -> Result<LoadedCert, CertError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        self.load_from(&cert, &key, now_s)
    }

    /// Loads the pair from bytes read from these files.
    pub fn load_from(&self, cert: &[u8], key: &[u8], now_s: i64) -> Result<LoadedCert, CertError> {
        LoadedCert::from_pem(
            cert,
            key,
            &self.cert.display().to_string(),
            &self.key.display().to_string(),
            now_s,
        )
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

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
        let (names, not_after) = describe(leaf, cert_what)?;
        if not_after <= now_s {
            return Err(CertError::Expired {
                what: cert_what.into(),
                expired_s: now_s - not_after,
            });
        }
        if names.is_empty() {
            return Err(CertError::NoNames {
                what: cert_what.into(),
            });
        }
        let fingerprint = sha256_hex(leaf);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey {
            what: key_what.into(),
            reason: e.to_string(),
        })?;
        let provider = super::provider();
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

/// The leaf's DNS subjectAltNames (lowercase, deduplicated) and notAfter.
fn describe(leaf: &CertificateDer<'_>, what: &str) -> Result<(Vec<String>, i64), CertError> {
    let bad = |reason: String| CertError::BadCertificate {
        what: what.into(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                if !dns.is_empty() && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
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
