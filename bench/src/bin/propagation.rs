//! Registration-to-routable latency: from the registry's answer to a
//! registration, to the first request a gateway routes to that instance.
//!
//! Needs a running `portico up` (auto routes on): each trial registers a new
//! instance of a new service `prop-N`, then polls `GATEWAY/prop-N/` until the
//! instance answers. Optionally preloads services and instances first so the
//! registry and gateway carry a realistic table.

use std::time::{Duration, Instant};

use clap::Parser;
use http::{Method, StatusCode};
use portico_bench::{call, client, name_server, percentile};

#[derive(Parser, Debug)]
struct Args {
    /// Registry base URL.
    #[arg(long, default_value = "http://127.0.0.1:9080")]
    registry: String,
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// Measured registrations.
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// Services to register before measuring.
    #[arg(long, default_value_t = 0)]
    preload_services: usize,
    /// Instances to register before measuring (spread over the services).
    #[arg(long, default_value_t = 0)]
    preload_instances: usize,
    /// Give up on one trial after this long.
    #[arg(long, default_value = "10")]
    timeout_secs: u64,
    /// The gateway's admin URL: with it, each trial also reads the
    /// gateway's own build time (`last_build_us` of `/status`), so a slow
    /// trial can be told apart from a slow table build.
    #[arg(long)]
    admin: Option<String>,
}

/// The gateway's last table build, from its admin `/status`.
async fn last_build(http: &portico_bench::HttpClient, admin: &str) -> anyhow::Result<Duration> {
    let (_, body) = call(http, Method::GET, &format!("{admin}/status"), None).await?;
    let status: serde_json::Value = serde_json::from_slice(&body)?;
    let us = status["last_build_us"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no last_build_us in the gateway's /status"))?;
    Ok(Duration::from_micros(us))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = client();
    if args.preload_instances > 0 {
        let services = args.preload_services.max(1);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = args.preload_instances.div_ceil(32);
        for t in 0..32 {
            let http = http.clone();
            let registry = args.registry.clone();
            let total = args.preload_instances;
            tasks.spawn(async move {
                for i in (t * per_task)..((t + 1) * per_task).min(total) {
                    let url = format!(
                        "{registry}/v1/services/preload-{}/instances/i{i}",
                        i % services
                    );
                    let body = format!(
                        r#"{{"address":"127.0.0.1","port":{},"ttl":"1h"}}"#,
                        20000 + i % 10000
                    );
                    let (status, _) = call(&http, Method::PUT, &url, Some(body)).await?;
                    anyhow::ensure!(status == StatusCode::OK, "preload answered {status}");
                }
                Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        println!(
            "preloaded {} instances over {services} services in {:.1?}",
            args.preload_instances,
            started.elapsed()
        );
    }

    let mut samples = Vec::with_capacity(args.trials);
    let mut builds = Vec::with_capacity(args.trials);
    let run = std::process::id();
    for n in 0..args.trials {
        let service = format!("prop-{run}-{n}");
        let addr = name_server(service.clone()).await?;
        let url = format!("{}/v1/services/{service}/instances/x", args.registry);
        let body = format!(
            r#"{{"address":"127.0.0.1","port":{},"ttl":"1h"}}"#,
            addr.port()
        );
        let (status, _) = call(&http, Method::PUT, &url, Some(body)).await?;
        anyhow::ensure!(status == StatusCode::OK, "registration answered {status}");
        let registered = Instant::now();
        let deadline = registered + Duration::from_secs(args.timeout_secs);
        let probe = format!("{}/{service}/", args.gateway);
        loop {
            let (status, body) = call(&http, Method::GET, &probe, None).await?;
            if status == StatusCode::OK && body == service.as_bytes() {
                samples.push(registered.elapsed());
                if let Some(admin) = &args.admin {
                    builds.push(last_build(&http, admin).await?);
                }
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{service} never became routable");
        }
        // Clean up so the table does not grow with the trials.
        call(&http, Method::DELETE, &url, None).await?;
    }
    samples.sort();
    println!(
        "registration-to-routable over {} trials: p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or_default()
    );
    if !builds.is_empty() {
        builds.sort();
        println!(
            "the gateway's table build in those trials: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
            percentile(&builds, 50.0),
            percentile(&builds, 99.0),
            builds.last().copied().unwrap_or_default()
        );
    }
    Ok(())
}
