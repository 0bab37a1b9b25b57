//! The registry-state cache: the last registry state this gateway applied
//! (instances, routes and their revision), kept in one file so a gateway
//! restarted while its registry is unreachable serves what it served
//! before instead of 404 for everything, as Eureka clients do.
//!
//! What is kept is the registry's state, not the compiled table: the table
//! is rebuilt from it by the same code that applies a registry snapshot, and
//! stays true when route-file routes or the gateway's own settings change.
//!
//! Written atomically (a temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old file or the new one, never half of
//! one. `discovery` decides when (debounced). A file that cannot be read,
//! does not parse, is of another format version, or was written for other
//! registries (no URL in common) is logged and ignored.

use std::io::Write;
use std::path::PathBuf;

use portico_registry::model::{Instance, Revision, WatchEvent};
use portico_registry::route::RouteSpec;
use serde::{Deserialize, Serialize};

/// File name of the cache inside the cache directory.
pub const FILE_NAME: &str = "registry-state.json";
/// Format version written; other versions are ignored.
const VERSION: u32 = 1;

/// The registry state as read back from the cache.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CachedState {
    /// Unix ms when the file was written.
    pub saved_at_ms: u64,
    /// The registry URLs the gateway followed.
    pub registry: Vec<String>,
    /// Registry revision of the state.
    pub revision: Revision,
    /// Every instance, as the registry sent it.
    pub instances: Vec<Instance>,
    /// Every registry route, as written.
    pub routes: Vec<RouteSpec>,
    version: u32,
}

impl CachedState {
    /// The state as a registry snapshot, to apply like one.
    pub fn into_snapshot(self) -> WatchEvent {
        WatchEvent::Snapshot {
            revision: self.revision,
            instances: self.instances,
            routes: self.routes,
            // Not cached: the cache file would hold private keys. A gateway
            // serving its cache serves its certificate files until a
            // registry answers.
            certificates: Vec::new(),
            // Not cached either: key hashes stay off the disk. A gateway
            // serving its cache refuses API keys (401) until a registry
            // answers.
            consumers: Vec::new(),
            // Not cached: a gateway cached as alive may be long dead.
            gateways: Vec::new(),
        }
    }
}

/// The state to write, borrowed from what the gateway holds.
#[derive(Debug, Serialize)]
pub struct StateRef<'a> {
    /// Registry revision of the state.
    pub revision: Revision,
    /// Every instance.
    pub instances: Vec<&'a Instance>,
    /// Every registry route.
    pub routes: Vec<&'a RouteSpec>,
}

/// Why the cache could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a cache this version writes.
    #[error("{path}: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// One gateway's cache file.
#[derive(Debug, Clone)]
pub struct StateCache {
    dir: PathBuf,
    registry: Vec<String>,
}

#[derive(Serialize)]
struct OnDisk<'a> {
    version: u32,
    saved_at_ms: u64,
    registry: &'a [String],
    #[serde(flatten)]
    state: &'a StateRef<'a>,
}

impl StateCache {
    /// The cache in `dir` of a gateway following `registry`.
    pub fn new(dir: PathBuf, registry: Vec<String>) -> StateCache {
        StateCache { dir, registry }
    }

    /// The cache file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The bytes to write for `state`, stamped `now_ms`.
    pub fn encode(&self, state: &StateRef<'_>, now_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&OnDisk {
            version: VERSION,
            saved_at_ms: now_ms,
            registry: &self.registry,
            state,
        })
        .expect("instances and routes serialise")
    }

    /// Replaces the file with `bytes`, atomically. Blocking: run it off the
    /// async threads.
    pub fn write(&self, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.path();
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        // Per process: two gateways sharing a directory never share a temp file.
        let tmp = self
            .dir
            .join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        // The rename is durable once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// Reads the cache. `Ok(None)` when there is none.
    pub fn read(&self) -> Result<Option<CachedState>, CacheError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let unusable = |reason: String| CacheError::Unusable {
            path: path.clone(),
            reason,
        };
        let state: CachedState =
            serde_json::from_slice(&bytes).map_err(|e| unusable(format!("not a cache: {e}")))?;
        if state.version != VERSION {
            return Err(unusable(format!("format version {}", state.version)));
        }
        if !state.registry.iter().any(|u| self.registry.contains(u)) {
            return Err(unusable(format!(
                "written for other registries ({})",
                state.registry.join(",")
            )));
        }
        Ok(Some(state))
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use portico_registry::model::{InstanceSpec, Status};

    use super::*;

    fn instance(id: &str) -> Instance {
        Instance {
            service: "svc".into(),
            id: id.into(),
            spec: InstanceSpec::new("127.0.0.1", 9000),
            status: Status::Passing,
            registered_at_ms: 1,
            status_since_ms: 2,
            revision: 3,
            check_failing: false,
        }
    }

    #[test]
    fn a_written_state_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StateCache::new(dir.path().join("sub"), vec!["http://r:9080".into()]);
        assert!(cache.read().unwrap().is_none());
        let (a, route) = (
            instance("a"),
            RouteSpec {
                name: "r".into(),
                path_prefix: Some("/r".into()),
                service: Some("svc".into()),
                ..RouteSpec::default()
            },
        );
        let state = StateRef {
            revision: 7,
            instances: vec![&a],
            routes: vec![&route],
        };
        cache.write(&cache.encode(&state, 42)).unwrap();
        let back = cache.read().unwrap().unwrap();
        assert_eq!(
            (
                back.revision,
                back.saved_at_ms,
                back.instances[0].id.as_str()
            ),
            (7, 42, "a")
        );
        assert_eq!(back.routes, vec![route]);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn a_corrupt_or_foreign_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StateCache::new(dir.path().into(), vec!["http://r:9080".into()]);
        std::fs::write(cache.path(), b"{\"version\":1, trunc").unwrap();
        assert!(matches!(cache.read(), Err(CacheError::Unusable { .. })));

        let other = StateCache::new(dir.path().into(), vec!["http://elsewhere:9080".into()]);
        let state = StateRef {
            revision: 1,
            instances: Vec::new(),
            routes: Vec::new(),
        };
        other.write(&other.encode(&state, 1)).unwrap();
        assert!(matches!(cache.read(), Err(CacheError::Unusable { .. })));
        // Sharing one URL is enough (a replica added or removed).
        let both = StateCache::new(
            dir.path().into(),
            vec!["http://r:9080".into(), "http://elsewhere:9080".into()],
        );
        assert!(both.read().unwrap().is_some());
    }
}
