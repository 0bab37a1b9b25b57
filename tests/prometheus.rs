//! Prometheus discovers what the registry knows: a real Prometheus (Debian's
//! `prometheus` package, installed by .ci/run) with an `http_sd_configs`
//! block pointed at `/v1/prometheus/targets` sees instances come and go.

mod support;

use std::process::{Child, Command, Stdio};

use support::{TestRegistry, call, eventually, fast_leases, free_port, put_json};

/// Prometheus as a child process, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(registry_url: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n\
                 scrape_configs:\n  - job_name: portico\n    http_sd_configs:\n      \
                 - url: {registry_url}/v1/prometheus/targets\n        refresh_interval: 1s\n    \
                 relabel_configs:\n      - source_labels: [__meta_portico_service]\n        \
                 target_label: service\n      - source_labels: [__meta_portico_status]\n        \
                 regex: critical\n        action: drop\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; .ci/run installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The discovered labels of every active target Prometheus has.
    async fn targets(&self) -> Vec<serde_json::Value> {
        let url = format!("{}/api/v1/targets?state=active", self.url);
        match support::send(
            &support::http(),
            http::Method::GET,
            &url,
            &[],
            Default::default(),
        )
        .await
        {
            Ok(r) if r.status.is_success() => r.json()["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The `__meta_portico_instance_id` of every active target.
    async fn instance_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .targets()
            .await
            .iter()
            .filter_map(|t| t["discoveredLabels"]["__meta_portico_instance_id"].as_str())
            .map(str::to_string)
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_discovers_instances_as_they_come_and_go() {
    let registry = TestRegistry::start(fast_leases()).await;
    let instance = |port: u16, tags: &[&str]| {
        serde_json::json!({"address": "127.0.0.1", "port": port, "ttl": "1h", "tags": tags,
                           "zone": "eu-1", "meta": {"build.sha": "abc"}})
    };
    let url = |id: &str| format!("{}/v1/services/api/instances/{id}", registry.url);
    assert!(
        put_json(&url("api-1"), instance(free_port(), &["v1"]))
            .await
            .status
            .is_success()
    );
    // The answer itself, as Prometheus reads it.
    let answer = support::get(&format!(
        "{}/v1/prometheus/targets?service=api",
        registry.url
    ))
    .await;
    let groups = answer.json();
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    assert_eq!(groups[0]["labels"]["__meta_portico_tags"], ",v1,");
    assert_eq!(
        groups[0]["labels"]["__meta_portico_metadata_build_sha"],
        "abc"
    );

    let prometheus = Prometheus::start(&registry.url);
    eventually("prometheus to discover api-1", || async {
        prometheus.instance_ids().await == ["api-1"]
    })
    .await;
    let target = prometheus.targets().await.remove(0);
    assert_eq!(target["labels"]["service"], "api", "{target}");
    assert_eq!(target["discoveredLabels"]["__meta_portico_zone"], "eu-1");

    assert!(
        put_json(&url("api-2"), instance(free_port(), &["v2"]))
            .await
            .status
            .is_success()
    );
    eventually("prometheus to discover api-2", || async {
        prometheus.instance_ids().await == ["api-1", "api-2"]
    })
    .await;
    assert!(
        call(http::Method::DELETE, &url("api-1"))
            .await
            .status
            .is_success()
    );
    eventually("prometheus to drop api-1", || async {
        prometheus.instance_ids().await == ["api-2"]
    })
    .await;
}

#[tokio::test]
async fn a_bad_query_is_refused_naming_it() {
    let registry = TestRegistry::start(fast_leases()).await;
    let bad = support::get(&format!("{}/v1/prometheus/targets?job=x", registry.url)).await;
    assert_eq!(
        bad.status,
        http::StatusCode::BAD_REQUEST,
        "{:?}",
        bad.json()
    );
    let bad = support::get(&format!(
        "{}/v1/prometheus/targets?service=a%20b",
        registry.url
    ))
    .await;
    assert!(bad.status.is_client_error(), "{:?}", bad.json());
}
