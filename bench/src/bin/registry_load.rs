//! Registry load: registrations/s and heartbeats/s against a running
//! registry, with a bounded number of concurrent clients for a bounded time.
//!
//! ```text
//! registry_load --registry http://127.0.0.1:9080 --instances 10000 --seconds 5
//! registry_load --registry http://127.0.0.1:9080,http://127.0.0.1:9081 \
//!     --instances 100000 --cpu-of etcd1=PID,etcd2=PID,replica1=PID
//! ```
//! Phase 1 registers `--instances` instances (as fast as the registry takes
//! them, `--concurrency` at a time) and reports registrations/s. Phase 2
//! heartbeats those instances round-robin for `--seconds` and reports
//! heartbeats/s. Every request must answer 200.
//!
//! `--registry` takes several replicas, comma-separated (replicas over
//! etcd): instance `i` registers with, and heartbeats, replica
//! `i % replicas`, as an SDK client sticks to the replica that answered
//! it. `--cpu-of name=PID,...` prints each process's CPU (user + system,
//! from `/proc/PID/stat`, in percent of one core) over each phase, so etcd
//! members and replicas are measured over exactly the measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use http::{Method, StatusCode};
use portico_bench::{call, client};

#[derive(Parser, Debug)]
struct Args {
    /// Registry base URL(s), comma-separated.
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
    /// Processes whose CPU to report per phase: `name=PID,...`.
    #[arg(long, default_value = "")]
    cpu_of: String,
}

/// Clock ticks of user + system CPU a process has used.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU readings of the `--cpu-of` processes.
struct Cpu {
    procs: Vec<(String, u32)>,
}

impl Cpu {
    fn parse(spec: &str) -> anyhow::Result<Cpu> {
        let procs = spec
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (name, pid) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--cpu-of: want name=PID, got {s:?}"))?;
                Ok((name.to_string(), pid.parse()?))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Cpu { procs })
    }

    fn read(&self) -> Vec<u64> {
        self.procs
            .iter()
            .map(|(_, pid)| cpu_ticks(*pid).unwrap_or(0))
            .collect()
    }

    /// Prints each process's CPU since `before`, over `elapsed`.
    fn report(&self, phase: &str, before: &[u64], elapsed: Duration) {
        if self.procs.is_empty() {
            return;
        }
        // Linux reports 100 ticks a second on every platform we run on.
        let shares: Vec<String> = self
            .procs
            .iter()
            .zip(self.read().iter().zip(before))
            .map(|((name, _), (after, before))| {
                let secs = (after - before) as f64 / 100.0;
                format!("{name} {:.0}%", 100.0 * secs / elapsed.as_secs_f64())
            })
            .collect();
        println!("cpu during {phase}: {}", shares.join(", "));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let registries: Arc<Vec<String>> =
        Arc::new(args.registry.split(',').map(str::to_string).collect());
    let cpu = Cpu::parse(&args.cpu_of)?;
    let http = client();
    let next = Arc::new(AtomicUsize::new(0));
    let before = cpu.read();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (http, next, registries) = (http.clone(), next.clone(), registries.clone());
        let (total, services) = (args.instances, args.services.max(1));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let registry = &registries[i % registries.len()];
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
    cpu.report("registrations", &before, elapsed);
    if args.no_heartbeats {
        return Ok(());
    }

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let before = cpu.read();
    let started = Instant::now();
    for t in 0..args.concurrency {
        let (http, done, registries) = (http.clone(), done.clone(), registries.clone());
        let (total, services, step) = (args.instances, args.services.max(1), args.concurrency);
        tasks.spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                let registry = &registries[i % registries.len()];
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
    let elapsed = started.elapsed();
    println!(
        "heartbeats: {n} in {elapsed:.2?} = {:.0}/s",
        n as f64 / elapsed.as_secs_f64()
    );
    cpu.report("heartbeats", &before, elapsed);
    Ok(())
}
