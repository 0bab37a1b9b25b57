//! `portico ctl`: the operator's command line over the registry's HTTP API.
//!
//! Every subcommand is one or a few calls through the registry SDK's client
//! ([`portico_registry::client::RegistryClient::request`]), so `https://`
//! registries, CA bundles and bearer tokens work the way they do for
//! gateways. The modules:
//!
//! - [`table`]: aligned, uncoloured-when-piped columns for human output.
//! - [`catalog`]: `services`, `instances`, `drain`, `deregister`.
//! - [`routes`]: `routes`, `route get`.
//! - [`apply`]: `apply -f FILE`, a route file synced as one change set.
//! - [`gateways`]: `gateways`, with each one's propagation lag.
//! - [`watch`]: `watch`, one line per registry event.
//! - [`explain`]: `explain`, a gateway admin listener's `/explain`.
//!
//! A failure is a [`CtlError`]; its kind is the exit code scripts test
//! (see [`CtlError::exit_code`] and docs/ctl.md).

pub mod apply;
pub mod catalog;
pub mod explain;
pub mod gateways;
pub mod routes;
pub mod table;
pub mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http::{Method, StatusCode};
use portico_registry::client::{ClientError, RegistryClient};

/// The registry `portico up` and `portico registry` listen on by default.
pub const DEFAULT_REGISTRY: &str = "http://127.0.0.1:9080";
/// The gateway admin listener's default address, for `explain`.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9180";

/// `portico ctl`'s flags.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Registry URL (`http://` or `https://`).
    #[arg(long, global = true, env = "PORTICO_REGISTRY", default_value = DEFAULT_REGISTRY)]
    pub registry: String,
    /// A PEM bundle of CAs trusted for an `https://` registry, beside the
    /// web PKI roots; repeatable.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Vec<PathBuf>,
    /// Output: aligned tables for people, or the API's JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// How results are printed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns (colour only on a terminal without `NO_COLOR`).
    Table,
    /// The registry's JSON answer, one document per line.
    Json,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Services with their instance counts by status.
    Services,
    /// One service's instances.
    Instances {
        /// The service.
        service: String,
    },
    /// Every route in the registry.
    Routes,
    /// One route.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Gateways following the registry, with how far behind each one is.
    Gateways,
    /// Follows registry events until Ctrl-C, one line each.
    Watch {
        /// Start after this revision instead of with a snapshot.
        #[arg(long, default_value_t = 0)]
        index: u64,
    },
    /// Asks a gateway which route a request would take and why.
    Explain {
        /// The gateway's admin listener.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        gateway: String,
        /// The request's method.
        method: String,
        /// The request's URL (`http://host/path?query`) or path (`/path`).
        url: String,
        /// A request header, `name: value`; repeatable.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Marks an instance draining: gateways send it no new requests.
    Drain {
        /// The service.
        service: String,
        /// The instance id.
        id: String,
    },
    /// Removes an instance.
    Deregister {
        /// The service.
        service: String,
        /// The instance id.
        id: String,
    },
    /// Syncs a route file (the gateway's `--config` TOML) to the registry.
    Apply {
        /// The route file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the differences and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove registry routes the file does not have (else they are kept).
        #[arg(long)]
        prune: bool,
    },
}

/// `route` subcommands.
#[derive(Subcommand, Debug)]
pub enum RouteCommand {
    /// One route as a route-file table (TOML), or its JSON with `-o json`.
    Get {
        /// The route's name.
        name: String,
    },
}

/// Why a subcommand failed; the kind decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The registry (or gateway) refused, failed, or could not be reached.
    #[error("{0}")]
    Api(String),
    /// A bad argument or a bad file: nothing was sent that changes anything.
    #[error("{0}")]
    Usage(String),
    /// The named resource does not exist.
    #[error("{0}")]
    NotFound(String),
}

impl CtlError {
    /// 1: API or network error; 2: usage or bad file; 3: not found. (0 is
    /// success; clap's own usage errors are 2 as well.)
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Api(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::NotFound(_) => 3,
        }
    }
}

/// What every subcommand works with: the client and how to print.
#[derive(Debug)]
pub struct Ctl {
    client: RegistryClient,
    output: Output,
    colour: bool,
}

impl Ctl {
    /// A client on `url` with the CA bundles and the token in
    /// `PORTICO_TOKEN`, if any.
    fn connect(url: &str, ca: &[PathBuf], token: Option<&str>) -> Result<RegistryClient, CtlError> {
        let mut builder = RegistryClient::builder(&[url]);
        for file in ca {
            builder = builder.ca_file(file);
        }
        if let Some(token) = token {
            builder = builder.token(token);
        }
        builder.build().map_err(|e| match e {
            ClientError::BadToken => CtlError::Usage(format!("PORTICO_TOKEN: {e}")),
            ClientError::Tls(_) => CtlError::Usage(format!("--ca: {e}")),
            _ => CtlError::Usage(format!("--registry: {e}")),
        })
    }

    /// Sends one call; a non-2xx answer becomes the error that names
    /// `what` (404: [`CtlError::NotFound`]).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        what: &str,
    ) -> Result<Bytes, CtlError> {
        call_on(&self.client, method, path, body, what).await
    }

    /// GETs `path` and decodes its JSON.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<(T, Bytes), CtlError> {
        let body = self.call(Method::GET, path, None, what).await?;
        let value = serde_json::from_slice(&body)
            .map_err(|e| CtlError::Api(format!("{what}: undecodable answer: {e}")))?;
        Ok((value, body))
    }

    /// Prints an API answer as it came (`-o json`).
    fn print_raw(body: &[u8]) {
        println!("{}", String::from_utf8_lossy(body).trim_end());
    }

    fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// [`Ctl::call`] on any client (the gateway admin listener's too).
async fn call_on(
    client: &RegistryClient,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    what: &str,
) -> Result<Bytes, CtlError> {
    let (status, answer) = client
        .request(method, path, body)
        .await
        .map_err(|e| CtlError::Api(format!("{what}: {e}")))?;
    if status.is_success() {
        return Ok(answer);
    }
    Err(refusal(status, &answer, what))
}

/// The error for a refused call, from the API's `{"error", "code",
/// "field"}` body.
fn refusal(status: StatusCode, body: &[u8], what: &str) -> CtlError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v[k].as_str())
            .map(str::to_string)
    };
    let reason = text("error").unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let field = text("field")
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    let mut message = format!("{what}: {status}: {reason}{field}");
    if status == StatusCode::UNAUTHORIZED {
        message.push_str("; set PORTICO_TOKEN to a token the registry accepts");
    }
    match status {
        StatusCode::NOT_FOUND => CtlError::NotFound(message),
        _ => CtlError::Api(message),
    }
}

/// Percent-encodes one path segment (names are validated by the API; this
/// keeps a stray `/` or `?` from addressing something else).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Colour only for a person at a terminal who has not asked for none
/// (<https://no-color.org>).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs one `portico ctl` command; the caller exits with the code of the
/// error, if any, after printing it.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let token = std::env::var("PORTICO_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let ctl = Ctl {
        client: Ctl::connect(&args.registry, &args.ca, token.as_deref())?,
        output: args.output,
        colour: colour(),
    };
    match args.command {
        CtlCommand::Services => catalog::services(&ctl).await,
        CtlCommand::Instances { service } => catalog::instances(&ctl, &service).await,
        CtlCommand::Drain { service, id } => catalog::drain(&ctl, &service, &id).await,
        CtlCommand::Deregister { service, id } => catalog::deregister(&ctl, &service, &id).await,
        CtlCommand::Routes => routes::list(&ctl).await,
        CtlCommand::Route {
            command: RouteCommand::Get { name },
        } => routes::get(&ctl, &name).await,
        CtlCommand::Gateways => gateways::list(&ctl).await,
        CtlCommand::Watch { index } => watch::follow(&ctl, index).await,
        CtlCommand::Explain {
            gateway,
            method,
            url,
            headers,
        } => {
            let query = explain::Query::parse(&method, &url, &headers)?;
            let admin = Ctl::connect(&gateway, &args.ca, None)
                .map_err(|e| CtlError::Usage(e.to_string().replace("--registry", "--gateway")))?;
            explain::show(&ctl, &admin, &query).await
        }
        CtlCommand::Apply {
            file,
            dry_run,
            prune,
        } => apply::run(&ctl, &file, apply::Mode { dry_run, prune }).await,
    }
}
