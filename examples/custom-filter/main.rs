//! A gateway with a filter of its own and a tower-http layer around its
//! downstream side: Portico embedded as a library.
//!
//! ```text
//! cargo run --example custom-filter
//! curl -i -H 'x-tenant: acme' http://127.0.0.1:8080/anything
//! ```
//!
//! It starts an echo backend in the process and routes to it through the
//! example's own filter (`tenant.rs`: every request must name a known
//! tenant, who becomes the consumer) and a built-in rate limit keyed by
//! that consumer (5 requests per second per tenant). Give a route file as
//! the first argument to use your own routes instead. A route naming a
//! filter this binary did not register, or settings the filter refuses,
//! stops the gateway at startup with the field named. Every response
//! carries `server: portico-example`, set by tower-http's
//! `SetResponseHeaderLayer`. Tested by tests/custom_filter.rs.

#[path = "../echo/service.rs"]
mod echo;
mod tenant;

use portico_gateway::Gateway;
use portico_gateway::config::Config;
use tokio::net::TcpListener;

/// The routes used without a route file; `{echo}` is the echo backend.
const ROUTES: &str = r#"
[[route]]
name = "tenants"
path_prefix = "/"
upstreams = ["{echo}"]

[[route.filters]]
type = "custom"
name = "tenant"
settings = { allowed = ["acme", "globex"] }

[[route.filters]]
type = "rate_limit"
key = "consumer"
rate = 5
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match std::env::args().nth(1) {
        Some(path) => Config::load(path.as_ref())?,
        None => {
            let backend = TcpListener::bind("127.0.0.1:0").await?;
            let echo_addr = backend.local_addr()?;
            tokio::spawn(echo::serve_counted(
                backend,
                "echo-1".into(),
                Default::default(),
                std::future::pending(),
            ));
            Config::parse(&ROUTES.replace("{echo}", &echo_addr.to_string()))?
        }
    };
    let listen = std::env::var("PORTICO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    Gateway::new(tenant::gateway_options(config, Default::default()))?
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
