//! Route-change-to-routable latency across several gateways: from the
//! registry's answer to `PUT /v1/routes/{name}`, to the first request each
//! gateway routes by the new route.
//!
//! Needs a running registry and gateways following it. Each trial moves one
//! route to a new exact path (`/rp-N`, static upstream: a local name server)
//! and polls every gateway at that path concurrently until the name server
//! answers. Reports the per-gateway latency and the latency of the slowest
//! gateway of each trial (when the whole fleet has converged).

use std::time::{Duration, Instant};

use clap::Parser;
use http::{Method, StatusCode};
use portico_bench::{call, client, name_server, percentile};

#[derive(Parser, Debug)]
struct Args {
    /// Registry base URL.
    #[arg(long, default_value = "http://127.0.0.1:9080")]
    registry: String,
    /// Gateway base URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    gateways: Vec<String>,
    /// Measured route changes.
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// Routes to write before measuring (exact paths `/pre/N` to the same
    /// upstream), so the registry and every gateway carry a realistic table.
    #[arg(long, default_value_t = 0)]
    preload_routes: usize,
    /// Give up on one trial after this long.
    #[arg(long, default_value = "10")]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = client();
    let upstream = name_server("rp".to_string()).await?;
    if args.preload_routes > 0 {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = args.preload_routes.div_ceil(16);
        for t in 0..16 {
            let (http, registry, total) =
                (http.clone(), args.registry.clone(), args.preload_routes);
            tasks.spawn(async move {
                for i in (t * per_task)..((t + 1) * per_task).min(total) {
                    let url = format!("{registry}/v1/routes/pre-{i}");
                    let body = format!(r#"{{"path":"/pre/{i}","upstreams":["{upstream}"]}}"#);
                    let (status, _) = call(&http, Method::PUT, &url, Some(body)).await?;
                    anyhow::ensure!(status.is_success(), "preload answered {status}");
                }
                Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        println!(
            "preloaded {} routes in {:.1?}",
            args.preload_routes,
            started.elapsed()
        );
    }
    let route = format!("{}/v1/routes/route-propagation", args.registry);
    let mut each = Vec::with_capacity(args.trials * args.gateways.len());
    let mut fleet = Vec::with_capacity(args.trials);
    for n in 0..args.trials {
        let body = format!(r#"{{"path":"/rp-{n}","upstreams":["{upstream}"]}}"#);
        let (status, answer) = call(&http, Method::PUT, &route, Some(body)).await?;
        anyhow::ensure!(
            status.is_success(),
            "route write answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let written = Instant::now();
        let deadline = written + Duration::from_secs(args.timeout_secs);
        let mut polls = tokio::task::JoinSet::new();
        for gateway in &args.gateways {
            let (http, probe) = (http.clone(), format!("{gateway}/rp-{n}"));
            polls.spawn(async move {
                loop {
                    let (status, body) = call(&http, Method::GET, &probe, None).await?;
                    if status == StatusCode::OK && body == "rp".as_bytes() {
                        return Ok::<_, anyhow::Error>(written.elapsed());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "{probe} never became routable");
                }
            });
        }
        let mut slowest = Duration::ZERO;
        while let Some(r) = polls.join_next().await {
            let took = r??;
            slowest = slowest.max(took);
            each.push(took);
        }
        fleet.push(slowest);
    }
    call(&http, Method::DELETE, &route, None).await?;
    each.sort();
    fleet.sort();
    let line = |what: &str, s: &[Duration]| {
        println!(
            "{what} over {} samples: p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}",
            s.len(),
            percentile(s, 50.0),
            percentile(s, 90.0),
            percentile(s, 99.0),
            s.last().copied().unwrap_or_default()
        );
    };
    line("route-change-to-routable, per gateway", &each);
    line(
        &format!(
            "route-change-to-routable, all {} gateways",
            args.gateways.len()
        ),
        &fleet,
    );
    Ok(())
}
