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
    Ok(())
}
