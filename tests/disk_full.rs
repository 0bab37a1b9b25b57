//! The registry on a disk that fills up, for real: a size-limited tmpfs is
//! mounted, a filler file takes the last byte, writes are refused with a
//! clear 503 while readiness says why, and once the filler is deleted writes
//! succeed again without a restart. Every acknowledged registration survives
//! a `kill -9` and restart of the `portico registry` process.
//!
//! Mounting needs root (CI runs as root). Where the mount is impossible this
//! test fails, saying so: it never passes without having filled a disk.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;
use serde_json::json;
use support::*;

/// A size-limited tmpfs mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}; this test needs root"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} ({}): this test needs root to fill a real disk",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not leave the mount behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the filesystem refuses another byte; returns its size.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let block = vec![0u8; chunk];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = file.sync_all();
    written
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(url: &str) -> String {
    String::from_utf8_lossy(&get(&format!("{url}/metrics")).await.body).into_owned()
}

fn registration(port: u16, n: usize) -> serde_json::Value {
    // A few KiB each, so the store file has to grow soon after the disk is full.
    let mut meta: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|k| (format!("pad{k}"), "x".repeat(500).into()))
        .collect();
    meta.insert("n".into(), n.to_string().into());
    json!({"address": "127.0.0.1", "port": port, "ttl": "1h", "meta": meta})
}

/// Registers `svc/i{n}`; records it when acknowledged.
async fn register(url: &str, n: usize, acknowledged: &mut Vec<(String, u16)>) -> Reply {
    let id = format!("i{n}");
    let port = 1000 + n as u16;
    let r = put_json(
        &format!("{url}/v1/services/svc/instances/{id}"),
        registration(port, n),
    )
    .await;
    if r.status == StatusCode::OK {
        acknowledged.push((id, port));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_then_recovers_without_a_restart_and_loses_nothing() {
    let disk = SmallDisk::mount("8m");
    let data: PathBuf = disk.path().join("data");
    let control = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{control}");
    let args = [
        "registry",
        "--control",
        &control,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut registry = ChildProcess::spawn(&args);
    wait_healthy(&url).await;

    let mut acked: Vec<(String, u16)> = Vec::new();
    for n in 0..20 {
        let r = register(&url, n, &mut acked).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    // The disk fills up. The store may still have free pages inside its
    // file; keep registering until it has to grow and cannot.
    let filler = disk.path().join("filler");
    assert!(fill(&filler) > 0, "the filler took no space");
    let mut n = 20;
    let refusal = loop {
        assert!(n < 2000, "2000 writes on a full disk were all accepted");
        let r = register(&url, n, &mut acked).await;
        n += 1;
        if r.status != StatusCode::OK {
            break r;
        }
    };
    assert_eq!(
        refusal.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a write on a full disk: {}",
        String::from_utf8_lossy(&refusal.body)
    );
    assert_eq!(refusal.json()["code"], "store_unavailable");
    // It stays refused (not a one-off), and readiness and metrics say why.
    let again = register(&url, n, &mut acked).await;
    n += 1;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = get(&format!("{url}/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let why = ready.json();
    assert!(
        why["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{why}"
    );
    let text = scrape(&url).await;
    assert_eq!(
        metric(&text, "portico_registry_store_writable"),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "portico_registry_store_write_failures_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    // Reads still answer from the working set.
    let list = get(&format!("{url}/v1/services/svc/instances")).await;
    assert_eq!(list.status, StatusCode::OK);

    // Space comes back: writes recover by themselves, no restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = register(&url, n, &mut acked).await;
        n += 1;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write succeeded within {DEADLINE:?} of space coming back: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let r = register(&url, n, &mut acked).await;
        n += 1;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(get(&format!("{url}/readyz")).await.status, StatusCode::OK);
    let text = scrape(&url).await;
    assert_eq!(
        metric(&text, "portico_registry_store_writable"),
        Some(1.0),
        "{text}"
    );

    // Nothing acknowledged is lost across a kill -9 and restart.
    registry.kill9();
    let _registry = ChildProcess::spawn(&args);
    wait_healthy(&url).await;
    let list = get(&format!("{url}/v1/services/svc/instances"))
        .await
        .json();
    let stored: std::collections::HashMap<&str, u64> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["port"].as_u64().unwrap()))
        .collect();
    for (id, port) in &acked {
        assert_eq!(
            stored.get(id.as_str()),
            Some(&u64::from(*port)),
            "acknowledged registration {id} lost ({} acknowledged, {} stored)",
            acked.len(),
            stored.len()
        );
    }
}
