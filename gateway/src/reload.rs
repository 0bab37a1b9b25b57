//! Route-file reloads: the file given with `--config` is re-read when it
//! changes and on SIGHUP.
//!
//! Change detection polls the file's contents every [`POLL_INTERVAL`] rather
//! than relying on inotify: it sees edits in place, editors' write-and-rename
//! and the symlink swaps of mounted config maps alike, on every platform, at
//! the cost of reading a small file once a second. A file that does not
//! parse or validate is refused whole: the previous routes keep serving, and
//! the log says which key is wrong. The next change is tried again.
//!
//! A polled change is applied once two reads in a row agree, at least
//! [`SETTLE`] apart: a file being written in place can be read half-written
//! (an empty file is a valid file with no routes), and serving that for a
//! moment would drop every route. (Two reads one short poll apart could both
//! fall between the truncation and the write when the writer is descheduled.)
//! SIGHUP applies at once: the operator says the file is ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::discovery::DiscoveryStatus;

/// How often the route file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between the two agreeing reads that apply a polled change.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Watches `path`, sending each new valid config on `tx`. `tx` holds the
/// config the gateway started with. A zero `interval` turns polling off
/// (SIGHUP only).
pub fn spawn(
    path: PathBuf,
    filters: crate::filter::custom::FilterRegistry,
    tx: watch::Sender<Config>,
    status: Arc<DiscoveryStatus>,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let polling = !interval.is_zero();
        // Digest of the text last seen: the startup file's at first, so an
        // unchanged file is never parsed again.
        let mut last: Option<u64> = None;
        // A changed text seen first at this instant, applied when a read
        // at least SETTLE later agrees.
        let mut settling: Option<(u64, tokio::time::Instant)> = None;
        let startup = tx.borrow().digest;
        loop {
            #[cfg(unix)]
            let signalled = tokio::select! {
                _ = tick.tick(), if polling || last.is_none() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            #[cfg(not(unix))]
            let signalled = {
                if !polling && last.is_some() {
                    std::future::pending::<()>().await;
                }
                tick.tick().await;
                false
            };
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    if signalled || last.is_some() {
                        tracing::error!(path = %path.display(), error = %e, "route file unreadable; keeping the previous routes");
                    }
                    continue;
                }
            };
            let seen = crate::config::digest(&text);
            if !signalled && last.unwrap_or(startup) == seen {
                last = Some(seen);
                settling = None;
                continue;
            }
            // The first check too: a file rewritten while the watcher
            // starts can be read empty (truncated, not yet written).
            if !signalled {
                match settling {
                    Some((digest, since)) if digest == seen => {
                        if since.elapsed() < SETTLE {
                            continue;
                        }
                    }
                    _ => {
                        settling = Some((seen, tokio::time::Instant::now()));
                        continue;
                    }
                }
            }
            settling = None;
            let first = last.is_none();
            last = Some(seen);
            let checked = Config::parse(&text).and_then(|config| {
                // Custom filters this gateway cannot build refuse the file
                // too, as at startup.
                filters
                    .check_routes(&config.routes)
                    .map(|()| config)
                    .map_err(|(i, _, reason)| crate::config::ConfigError::Invalid {
                        key: format!("route[{i}]"),
                        reason: format!("route[{i}].{reason}"),
                    })
            });
            match checked {
                Ok(config) => {
                    if config.routes == tx.borrow().routes {
                        // Say so: after a refused file is fixed back, this is
                        // the only sign the fix was seen.
                        tracing::info!(path = %path.display(), "route file read: the routes being served are unchanged");
                        continue;
                    }
                    tracing::info!(path = %path.display(), routes = config.routes.len(), "route file reloaded");
                    status.reloads.fetch_add(1, Ordering::Relaxed);
                    tx.send_replace(config);
                }
                Err(e) => {
                    status.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %path.display(), error = %e, first_check = first, "route file refused; keeping the previous routes");
                }
            }
        }
    })
}
