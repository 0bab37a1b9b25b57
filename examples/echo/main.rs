//! A small service that registers itself with Portico and echoes requests.
//!
//! ```text
//! cargo run --example echo -- --service echo --id echo-1 --port 0
//! ```
//! It heartbeats in the background through the SDK; on Ctrl-C it drains
//! (gateways stop sending, in-flight requests finish) and deregisters.
//! Against a registry that requires tokens, set `PORTICO_TOKEN` (or
//! `--token`) to a `register` token.

mod service;

use clap::Parser;
use portico_registry::client::RegistryClient;
use portico_registry::model::InstanceSpec;

#[derive(Parser, Debug)]
struct Args {
    /// Service name to register under.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Instance id (unique within the service).
    #[arg(long, default_value = "echo-1")]
    id: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Registry URL.
    #[arg(long, default_value = "http://127.0.0.1:9080")]
    registry: String,
    /// Lease TTL.
    #[arg(long, default_value = "10s")]
    ttl: String,
    /// Bearer token for a registry that requires one (a register token).
    #[arg(long, env = "PORTICO_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    let mut client = RegistryClient::new(&[args.registry.as_str()])?;
    if let Some(token) = &args.token {
        client = client.with_token(token)?;
    }
    let mut spec = InstanceSpec::new(addr.ip().to_string(), addr.port());
    spec.ttl = Some(humantime::parse_duration(&args.ttl)?);
    let registration = client.register(&args.service, &args.id, spec).await?;
    println!(
        "echo {}/{} listening on http://{addr}",
        args.service, args.id
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service::serve_counted(
        listener,
        args.id.clone(),
        registration.in_flight(),
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::signal::ctrl_c().await?;
    // Drain while still serving: gateways stop sending, in-flight requests
    // finish, then the instance deregisters and the server stops.
    println!("echo {}/{} draining", args.service, args.id);
    registration.shutdown().await?;
    let _ = stop_tx.send(());
    let _ = server.await;
    println!("echo {}/{} deregistered", args.service, args.id);
    Ok(())
}
