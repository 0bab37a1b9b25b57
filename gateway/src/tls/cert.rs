//! Certificate files (`--tls-cert CERT.pem:KEY.pem`), loaded by the
//! registry crate's checks ([`portico_registry::certificate::load`]): the
//! same code that checks a `PUT /v1/certificates` body, so both refuse the
//! same certificates for the same reasons.

use std::path::{Path, PathBuf};

pub use portico_registry::certificate::load::{CertError, LoadedCert, sha256_hex, unix_now};

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
