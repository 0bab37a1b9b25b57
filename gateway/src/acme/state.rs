//! The ACME state directory (`--acme-dir`): what must survive a restart so
//! that a restart neither creates a new account nor orders again.
//!
//! - `account.json`: the ACME account (its URL and private key, as
//!   instant-acme serialises them) and the directory URL it belongs to; an
//!   account for another directory is not reused.
//! - `cert.pem`, `key.pem`: the last certificate issued and its key.
//!
//! Each file is written to a temporary name, synced, and renamed over the
//! old one, so a crash leaves the old file or the new one, never half of
//! one. Key files are created readable by the owner only (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("ACME state {path}: {reason}")]
pub struct StateError {
    /// The file.
    pub path: String,
    /// What failed.
    pub reason: String,
}

/// One state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct AccountFile {
    directory: String,
    credentials: AccountCredentials,
}

/// A certificate and key as PEM, as issued.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    /// The chain, leaf first.
    pub cert: String,
    /// The private key.
    pub key: String,
}

impl StateDir {
    /// The state kept under `dir` (created when missing).
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| error(dir, e))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The account saved for `directory`, if any (`None` also when the
    /// file belongs to another ACME directory).
    pub fn account(&self, directory: &str) -> Result<Option<AccountCredentials>, StateError> {
        let path = self.dir.join("account.json");
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        let file: AccountFile = serde_json::from_slice(&bytes).map_err(|e| error(&path, e))?;
        Ok((file.directory == directory).then_some(file.credentials))
    }

    /// Saves the account created on `directory`.
    pub fn save_account(
        &self,
        directory: &str,
        credentials: AccountCredentials,
    ) -> Result<(), StateError> {
        let path = self.dir.join("account.json");
        let file = AccountFile {
            directory: directory.to_string(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| error(&path, e))?;
        write_atomic(&path, &json)
    }

    /// The certificate saved last, if any.
    pub fn certificate(&self) -> Result<Option<IssuedPem>, StateError> {
        let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
        match (read_optional(&cert)?, read_optional(&key)?) {
            (Some(c), Some(k)) => Ok(Some(IssuedPem {
                cert: String::from_utf8_lossy(&c).into_owned(),
                key: String::from_utf8_lossy(&k).into_owned(),
            })),
            _ => Ok(None),
        }
    }

    /// Saves an issued certificate: the key first, so a crash between the
    /// two leaves a pair that fails to load (and is ordered again), never
    /// a new certificate beside an old key that is then served.
    pub fn save_certificate(&self, issued: &IssuedPem) -> Result<(), StateError> {
        write_atomic(&self.dir.join("key.pem"), issued.key.as_bytes())?;
        write_atomic(&self.dir.join("cert.pem"), issued.cert.as_bytes())
    }

    /// The certificate file (for messages).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
}

fn error(path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(path, e)),
    }
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600), syncs it
/// and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| error(&tmp, e))?;
    file.sync_all().map_err(|e| error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| error(path, e))
}
