//! Registry load: registrations/s and heartbeats/s against a running
//! registry, with a bounded number of concurrent clients for a bounded time.
//!
//! ```text
//! registry_load --registry http://127.0.0.1:9080 --instances 10000 --seconds 5
//! ```
//! Phase 1 registers `--instances` instances (as fast as the registry takes
//! them, `--concurrency` at a time) and reports registrations/s. Phase 2
//! heartbeats those instances round-robin for `--seconds` and reports
//! heartbeats/s. Every request must answer 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use http::{Method, StatusCode};
use portico_bench::{call, client};

#[derive(Parser, Debug)]
struct Args {
    /// Registry base URL.
    #[arg(long, default_value = "http://127.0.0.1:9080")]
    registry: String,
    /// Instances to register.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Services the instances are spread over.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Duration of the heartbeat phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Skip the heartbeat phase.
    #[arg(long)]
    no_heartbeats: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = client();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, next, registry) = (http.clone(), next.clone(), args.registry.clone());
        let (total, services) = (args.instances, args.services.max(1));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let url = format!(
                    "{registry}/v1/services/load-{}/instances/i{i}",
                    i % services
                );
                let body = format!(
                    r#"{{"address":"10.{}.{}.{}","port":8080,"ttl":"1h"}}"#,
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                );
                let (status, _) = call(&http, Method::PUT, &url, Some(body)).await?;
                anyhow::ensure!(status == StatusCode::OK, "registration answered {status}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    println!(
        "registrations: {} in {:.2?} = {:.0}/s",
        args.instances,
        elapsed,
        args.instances as f64 / elapsed.as_secs_f64()
    );
    if args.no_heartbeats {
        return Ok(());
    }

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    for t in 0..args.concurrency {
        let (http, done, registry) = (http.clone(), done.clone(), args.registry.clone());
        let (total, services, step) = (args.instances, args.services.max(1), args.concurrency);
        tasks.spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                let url = format!(
                    "{registry}/v1/services/load-{}/instances/i{i}/heartbeat",
                    i % services
                );
                let (status, _) = call(&http, Method::PUT, &url, None).await?;
                anyhow::ensure!(status == StatusCode::OK, "heartbeat answered {status}");
                done.fetch_add(1, Ordering::Relaxed);
                i = (i + step) % total;
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "heartbeats: {n} in {:.2?} = {:.0}/s",
        started.elapsed(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
