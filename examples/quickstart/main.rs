//! The quickstart: Portico (registry + gateway, embedded store) and three echo
//! instances that register themselves, in one command.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//! Then `curl http://127.0.0.1:8080/echo/hello` a few times and watch the
//! `instance` field rotate. Ctrl-C deregisters the instances and stops.

#[path = "../echo/service.rs"]
mod service;

use std::time::Duration;

use portico::RegistryOptions;
use portico_gateway::GatewayOptions;
use portico_registry::client::RegistryClient;
use portico_registry::lease::LeasePolicy;
use portico_registry::model::InstanceSpec;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let gateway_addr = std::env::var("PORTICO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let control_addr = std::env::var("PORTICO_CONTROL").unwrap_or_else(|_| "127.0.0.1:9080".into());
    let control = TcpListener::bind(&control_addr).await?;
    let gateway = TcpListener::bind(&gateway_addr).await?;
    let control_url = format!("http://{}", control.local_addr()?);
    let gateway_url = format!("http://{}", gateway.local_addr()?);
    let data_dir = std::env::temp_dir().join(format!("portico-quickstart-{}", std::process::id()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let portico = tokio::spawn(portico::run_up(
        control,
        portico::GatewayListeners::plain(gateway, None),
        RegistryOptions {
            data_dir: data_dir.clone(),
            etcd: None,
            lease: LeasePolicy::default(),
            tokens: Default::default(),
            tls: None,
            check_ca: Vec::new(),
        },
        GatewayOptions {
            auto_routes: true,
            ..GatewayOptions::default()
        },
        stopped(stop_rx.clone()),
    ));

    // Three echo instances, each registering itself through the SDK.
    let client = RegistryClient::new(&[control_url.as_str()])?;
    let mut registrations = Vec::new();
    let mut servers = Vec::new();
    for n in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let id = format!("echo-{n}");
        let mut spec = InstanceSpec::new(addr.ip().to_string(), addr.port());
        spec.ttl = Some(Duration::from_secs(10));
        spec.zone = Some("local".into());
        // The registry may still be binding; retry briefly. The listener is
        // already bound, so connections queue until the server below runs.
        let mut attempt = 0;
        let registration = loop {
            match client.register("echo", &id, spec.clone()).await {
                Ok(r) => break r,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "registry not ready yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        servers.push(tokio::spawn(service::serve_counted(
            listener,
            id,
            registration.in_flight(),
            stopped(stop_rx.clone()),
        )));
        registrations.push(registration);
    }

    println!("Portico is up with three echo instances registered as service \"echo\".");
    println!();
    println!("  gateway:  {gateway_url}");
    println!("  registry: {control_url}");
    println!();
    println!("Try:");
    println!(
        "  for i in 1 2 3 4 5 6; do curl -s {gateway_url}/echo/hello | grep -o '\"instance\":\"[^\"]*\"'; done"
    );
    println!("  curl -s {control_url}/v1/services/echo/instances");
    println!();
    println!("Ctrl-C to stop.");

    tokio::signal::ctrl_c().await?;
    println!("stopping: draining and deregistering the instances");
    let mut drains = tokio::task::JoinSet::new();
    for r in registrations {
        drains.spawn(r.shutdown());
    }
    while drains.join_next().await.is_some() {}
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    portico.await??;
    let _ = std::fs::remove_dir_all(&data_dir);
    println!("stopped");
    Ok(())
}
