//! Certificate-file reloads: the files given with `--tls-cert` are re-read
//! when they change and on SIGHUP.
//!
//! As for the route file (the gateway's `reload` module), change detection polls the
//! files' contents every [`POLL_INTERVAL`]: it sees writes in place,
//! write-and-rename, and the symlink swaps Kubernetes does for mounted
//! secrets alike. A polled change is applied once two reads in a row agree,
//! so a pair caught half-written (a new certificate beside the old key) is
//! not even tried. SIGHUP applies at once.
//!
//! Every pair is loaded before anything is swapped: one bad file refuses the
//! whole reload (logged with the file and the reason, counted in
//! `portico_gateway_tls_reloads_total{result="refused"}`), and the
//! certificates being served stay. Connections already open keep the
//! certificate they shook hands with; the next handshake reads the new set.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::cert::{CertError, CertFiles, LoadedCert, unix_now};
use super::store::CertStore;

/// How often the certificate files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Every file's bytes, certificate then key, pair by pair (`None`:
/// unreadable).
pub type Contents = Vec<Option<Vec<u8>>>;

async fn read_all(files: &[CertFiles]) -> Contents {
    let mut out = Vec::with_capacity(files.len() * 2);
    for f in files {
        out.push(tokio::fs::read(&f.cert).await.ok());
        out.push(tokio::fs::read(&f.key).await.ok());
    }
    out
}

/// Reads and loads every pair at startup: the certificates, and the bytes
/// they came from (what the watcher compares with, so a change made right
/// after startup is not missed).
pub fn load_all(files: &[CertFiles]) -> Result<(Vec<Arc<LoadedCert>>, Contents), CertError> {
    let now = unix_now();
    let mut loaded = Vec::with_capacity(files.len());
    let mut contents = Vec::with_capacity(files.len() * 2);
    for f in files {
        let cert = read(&f.cert)?;
        let key = read(&f.key)?;
        loaded.push(Arc::new(f.load_from(&cert, &key, now)?));
        contents.push(Some(cert));
        contents.push(Some(key));
    }
    Ok((loaded, contents))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Watches `files`, whose certificates being served were loaded from
/// `served`, and swaps what loads into `store`, until aborted.
pub fn spawn(
    files: Vec<CertFiles>,
    served: Contents,
    store: Arc<CertStore>,
    interval: Duration,
) -> JoinHandle<()> {
    // Registered before the task starts: a SIGHUP sent once the listener
    // answers finds the handler in place (the default action ends the
    // process).
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut served = served;
        let mut settling: Option<Contents> = None;
        loop {
            #[cfg(unix)]
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            #[cfg(not(unix))]
            let signalled = {
                tick.tick().await;
                false
            };
            let seen = read_all(&files).await;
            if !signalled {
                if seen == served {
                    settling = None;
                    continue;
                }
                if settling.as_ref() != Some(&seen) {
                    settling = Some(seen);
                    continue;
                }
            }
            settling = None;
            served = seen;
            apply(&files, &store);
        }
    })
}

/// Loads every pair; swaps them in only if all load.
fn apply(files: &[CertFiles], store: &CertStore) {
    let now = unix_now();
    match files
        .iter()
        .map(|f| f.load(now).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(loaded) => {
            let names: Vec<String> = loaded.iter().flat_map(|c| c.names.clone()).collect();
            store.set_files(loaded);
            store.count_applied();
            tracing::info!(
                certificates = files.len(),
                ?names,
                "TLS certificates reloaded"
            );
        }
        Err(e) => {
            store.count_refused();
            tracing::error!(error = %e, "TLS certificate reload refused; the previous certificates keep serving");
        }
    }
}
