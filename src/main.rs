//! The `portico` command line: subcommands only; the work is in `lib.rs`.

// The workspace denies `unsafe`; only the gateway allows it, in one
// function (gateway/src/sockopt.rs).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use portico::{GatewayListeners, RegistryOptions, run_gateway, run_registry, run_up};
use portico_gateway::GatewayOptions;
use portico_gateway::access::writer::{AccessLog, Destination};
use portico_gateway::acme::{AcmeSettings, ChallengeKind};
use portico_gateway::config::Config;
use portico_gateway::health::OutlierPolicy;
use portico_gateway::path::{PathPolicy, SlashPolicy};
use portico_gateway::pool::{Http1Client, Http2Client};
use portico_gateway::proxy::{Cidr, EdgePolicy, ProxySettings, UnderscorePolicy};
use portico_gateway::server::{DEFAULT_LISTEN_BACKLOG, Http1Server, Http2Server, ServerSettings};
use portico_gateway::tls::cert::CertFiles;
use portico_gateway::tls::{ClientAuth, TlsSettings};
use portico_registry::auth::{Tokens, check_exposure};
use portico_registry::lease::LeasePolicy;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "portico",
    version,
    about = "API gateway and service-discovery control plane"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Worker threads (default: one per CPU core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// `--http1-server`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Http1ServerArg {
    Native,
    Hyper,
}

/// `--http2-server`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Http2ServerArg {
    Native,
    Hyper,
}

/// `--http1-client`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Http1ClientArg {
    Native,
    Hyper,
}

/// `--http2-client`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Http2ClientArg {
    Native,
    Hyper,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl Command {
    /// The gateway's flags, for the commands that run a gateway.
    fn gateway_args(&self) -> Option<&GatewayArgs> {
        match self {
            Command::Up { gateway, .. } | Command::Gateway { gateway, .. } => Some(gateway),
            _ => None,
        }
    }
}

// Parsed once at startup and moved into `run`: the size difference between
// the variants (the TLS paths made `Up` the largest) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Registry and gateway in one process, on the embedded store.
    Up {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// The control plane only.
    Registry {
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// The data plane only.
    Gateway {
        /// Registry URLs to follow, comma-separated (none: static routes only).
        #[arg(long, value_delimiter = ',')]
        registry: Vec<String>,
        /// Bearer token for a registry that requires one: a `gateway` token
        /// (a `read` token follows routes and instances but receives no
        /// certificate keys, so registry certificates are not served).
        #[arg(long, env = "PORTICO_TOKEN", hide_env_values = true)]
        registry_token: Option<String>,
        /// A PEM bundle of CAs trusted for `https://` registry URLs, beside
        /// the web PKI roots; repeatable.
        #[arg(long = "registry-ca", value_name = "FILE")]
        registry_ca: Vec<PathBuf>,
        /// Directory of the registry-state cache: the registry state this
        /// gateway applied last, served when it starts while no registry
        /// answers.
        #[arg(long, default_value = "portico-cache")]
        cache_dir: PathBuf,
        /// Keep no registry-state cache (a gateway started while no registry
        /// answers then has no registry routes until one does).
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// The operator's command line: lists, watch, explain, drain, apply
    /// (docs/ctl.md).
    Ctl(portico::ctl::CtlArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
struct RegistryArgs {
    /// Registry API address.
    #[arg(long, default_value = "127.0.0.1:9080")]
    control: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, default_value = "portico-data")]
    data_dir: PathBuf,
    /// Where state lives: `embedded` (under --data-dir) or
    /// `etcd:http://h1:2379,http://h2:2379,...` (a build with the `etcd` feature).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Key prefix in etcd (with --store etcd:...).
    #[arg(long, default_value = "/portico/")]
    etcd_prefix: String,
    /// How long this replica's etcd session outlives it: after a replica
    /// dies, the others adopt the leases it held this much later (with
    /// --store etcd:...).
    #[arg(long, default_value = "10s", value_parser = duration)]
    etcd_session_ttl: Duration,
    /// Time between lease sweeps.
    #[arg(long, default_value = "1s", value_parser = duration)]
    sweep_interval: Duration,
    /// How long an expired (critical) instance stays listed before removal.
    #[arg(long, default_value = "60s", value_parser = duration)]
    critical_grace: Duration,
    /// Share of live leases lapsed or late at or above which expiry pauses.
    #[arg(long, default_value_t = 0.5)]
    preservation_threshold: f64,
    /// Fewest lapsed leases that can pause expiry.
    #[arg(long, default_value_t = 3)]
    preservation_min: usize,
    /// Share of live leases that may expire within --expiry-cap-window
    /// (rounded up, at least one); 1 turns the cap off.
    #[arg(long, default_value_t = 0.15)]
    expiry_cap: f64,
    /// The sliding window of --expiry-cap.
    #[arg(long, default_value = "60s", value_parser = duration)]
    expiry_cap_window: Duration,
    /// An API token, `ROLE:SECRET` (admin, register, gateway, read) or
    /// `register[SERVICE,...]:SECRET`; repeatable. Prefer --tokens-file: flags
    /// show in the process list.
    #[arg(long = "token", value_name = "ROLE:SECRET")]
    tokens: Vec<String>,
    /// API tokens from a TOML file of `[[token]]` tables (secret, role, services).
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Allow a control address that is not loopback to run without tokens.
    #[arg(long)]
    insecure: bool,
    /// Serve the control port (registry API) over HTTPS only, with this PEM
    /// certificate chain (leaf first); needs --control-tls-key. Re-read when
    /// the files change and on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "control_tls_key")]
    control_tls_cert: Option<PathBuf>,
    /// The private key of --control-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "control_tls_cert")]
    control_tls_key: Option<PathBuf>,
    /// PEM bundle of CAs the registry's own checks of `https` instances
    /// trust, beside the web PKI roots; repeatable.
    #[arg(long, value_name = "FILE")]
    check_ca: Vec<PathBuf>,
    /// PEM bundle of the CAs etcd's certificates chain to (with
    /// `--store etcd:https://...`).
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM chain) for an etcd cluster that requires
    /// one (`--client-cert-auth`); needs --etcd-key and --etcd-ca.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl RegistryArgs {
    fn etcd(&self) -> anyhow::Result<Option<portico::EtcdOptions>> {
        if self.store.starts_with("etcd:") && !cfg!(feature = "etcd") {
            anyhow::bail!(
                "--store etcd:...: this portico was built without etcd support; build it with `cargo build --release --features etcd`"
            );
        }
        let Some(urls) = self.store.strip_prefix("etcd:") else {
            anyhow::ensure!(
                self.etcd_ca.is_none() && self.etcd_cert.is_none(),
                "--etcd-ca and --etcd-cert need --store etcd:https://..."
            );
            anyhow::ensure!(
                self.store == "embedded",
                "--store {:?}: expected `embedded` or `etcd:http://host:2379[,...]`",
                self.store
            );
            return Ok(None);
        };
        let endpoints: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            anyhow::bail!("--store etcd: needs at least one member URL");
        }
        let tls = self.etcd_tls(&endpoints)?;
        if !self.etcd_prefix.starts_with('/') {
            anyhow::bail!("--etcd-prefix must start with '/'");
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&self.etcd_session_ttl) {
            anyhow::bail!(
                "--etcd-session-ttl must be between 2s (etcd's shortest lease with its default timing) and 5m"
            );
        }
        Ok(Some(portico::EtcdOptions {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            session_ttl: self.etcd_session_ttl,
            tls,
        }))
    }

    /// TLS to etcd: every member URL `https://` with --etcd-ca, or every one
    /// `http://` without it; never a mix.
    fn etcd_tls(&self, endpoints: &[String]) -> anyhow::Result<Option<portico::EtcdTlsFiles>> {
        let mut schemes = Vec::new();
        for url in endpoints {
            let uri: http::Uri = url
                .parse()
                .with_context(|| format!("--store: {url:?} is not a URL"))?;
            match (uri.scheme_str(), uri.port_u16()) {
                (Some(s @ ("http" | "https")), Some(_)) => schemes.push(s == "https"),
                _ => anyhow::bail!(
                    "--store: {url:?}: expected http://host:port or https://host:port"
                ),
            }
        }
        let tls = schemes.iter().all(|&https| https);
        anyhow::ensure!(
            tls || schemes.iter().all(|&https| !https),
            "--store: every etcd URL must have the same scheme (all http:// or all https://)"
        );
        match (tls, &self.etcd_ca) {
            (false, None) => {
                anyhow::ensure!(
                    self.etcd_cert.is_none(),
                    "--etcd-cert needs https:// etcd URLs and --etcd-ca"
                );
                Ok(None)
            }
            (false, Some(_)) => anyhow::bail!("--etcd-ca needs https:// etcd URLs in --store"),
            (true, None) => anyhow::bail!(
                "--store etcd:https://...: give the CA of etcd's certificates with --etcd-ca FILE"
            ),
            (true, Some(ca)) => Ok(Some(portico::EtcdTlsFiles {
                ca: ca.clone(),
                client: self.etcd_cert.clone().zip(self.etcd_key.clone()),
            })),
        }
    }

    /// The control port's certificate, loaded now so a bad file stops the
    /// start (naming it) before any socket is bound.
    fn control_tls(&self) -> anyhow::Result<Option<portico_gateway::tls::ServerTls>> {
        let (Some(cert), Some(key)) = (&self.control_tls_cert, &self.control_tls_key) else {
            return Ok(None);
        };
        let settings = TlsSettings {
            certs: vec![CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }],
            ..TlsSettings::default()
        };
        let tls = portico_gateway::tls::ServerTls::new(&settings, Default::default())
            .context("--control-tls-cert/--control-tls-key")?;
        Ok(Some(tls))
    }

    fn options(&self) -> anyhow::Result<RegistryOptions> {
        if !(0.0..=1.0).contains(&self.preservation_threshold) {
            anyhow::bail!("--preservation-threshold must be between 0 and 1");
        }
        if self.sweep_interval.is_zero() {
            anyhow::bail!("--sweep-interval must be more than 0");
        }
        if !(self.expiry_cap > 0.0 && self.expiry_cap <= 1.0) {
            anyhow::bail!("--expiry-cap must be more than 0 and at most 1");
        }
        if self.expiry_cap_window.is_zero() {
            anyhow::bail!("--expiry-cap-window must be more than 0");
        }
        let mut tokens = match &self.tokens_file {
            Some(path) => {
                Tokens::load(path).with_context(|| format!("tokens file {}", path.display()))?
            }
            None => Tokens::default(),
        };
        for (i, spec) in self.tokens.iter().enumerate() {
            tokens.add_flag(&format!("--token #{}", i + 1), spec)?;
        }
        // Before any socket is bound: a refused start leaves nothing behind.
        check_exposure(self.control, &tokens, self.insecure)?;
        portico_registry::check::CheckTls::new(&self.check_ca).context("--check-ca")?;
        Ok(RegistryOptions {
            data_dir: self.data_dir.clone(),
            etcd: self.etcd()?,
            lease: LeasePolicy {
                sweep_interval: self.sweep_interval,
                critical_grace: self.critical_grace,
                preservation_threshold: self.preservation_threshold,
                preservation_min: self.preservation_min,
                expiry_cap: self.expiry_cap,
                expiry_window: self.expiry_cap_window,
            },
            tokens,
            tls: self.control_tls()?,
            check_ca: self.check_ca.clone(),
        })
    }

    /// `http` or `https`, for the start-up line.
    fn control_scheme(&self) -> &'static str {
        match self.control_tls_cert {
            Some(_) => "https",
            None => "http",
        }
    }
}

#[derive(Args, Debug)]
struct GatewayArgs {
    /// Gateway (public traffic) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Gateway admin address (`/explain`, `/status`, `/endpoints`, `/metrics`,
    /// `/healthz`); never the public one.
    #[arg(long, default_value = "127.0.0.1:9180")]
    admin: SocketAddr,
    /// Do not open the admin listener.
    #[arg(long)]
    no_admin: bool,
    /// Route file (TOML, `[[route]]` tables); re-read when it changes and on
    /// SIGHUP (an invalid file is refused and the previous routes kept).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How often the route file is checked for changes; 0s: only on SIGHUP.
    #[arg(long, default_value = "1s", value_parser = duration)]
    config_poll_interval: Duration,
    /// Give each discovered service an implicit `/{service}` route (prefix
    /// stripped). Default: on for `up` without --config, off otherwise.
    #[arg(long)]
    auto_routes: Option<bool>,
    /// How long an implicit `/{service}` route outlives the service's last
    /// instance, answering 503 no_healthy_upstream (gRPC: UNAVAILABLE) so a
    /// restart is not a 404 (UNIMPLEMENTED); 0s: it goes with the instance.
    #[arg(long, default_value = "5m", value_parser = duration)]
    auto_route_grace: Duration,
    /// Turn off the per-request access log.
    #[arg(long)]
    no_access_log: bool,
    /// Append access-log lines to this file instead of stderr (other log
    /// lines stay on stderr).
    #[arg(long, value_name = "FILE", conflicts_with = "no_access_log")]
    access_log: Option<PathBuf>,
    /// Give requests without a valid W3C `traceparent` header a new one, so
    /// the upstream and the access log share a trace id.
    #[arg(long)]
    generate_traceparent: bool,
    /// Time allowed for a client to send a complete request head.
    #[arg(long, default_value = "30s", value_parser = duration)]
    header_read_timeout: Duration,
    /// Largest request head in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_size: usize,
    /// Close downstream connections idle for this long.
    #[arg(long, default_value = "60s", value_parser = duration)]
    idle_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long, default_value = "5s", value_parser = duration)]
    connect_timeout: Duration,
    /// Time in-flight requests and open tunnels get to finish at shutdown.
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// Most client connections open at once (tunnels included); past it a
    /// new connection is answered 503 too_many_connections and closed.
    /// Default: derived from the file-descriptor limit (two per proxied
    /// connection, after a reserve of a tenth of the limit, at least 32).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most client connections from one IP address; past it 429
    /// too_many_client_connections. Default: no per-IP cap.
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Take a new connection from the kernel as soon as its handshake
    /// completes, not when its first bytes arrive (Linux's
    /// TCP_DEFER_ACCEPT, on by default: a silent client is held about a
    /// second; other systems have no such option).
    #[arg(long)]
    no_defer_accept: bool,
    /// Connections the kernel holds for the gateway's listeners while they
    /// wait to be accepted (and, deferred, for their first bytes); Linux
    /// caps it at net.core.somaxconn. Beyond it a new client's SYN is
    /// dropped or answered with a SYN cookie.
    #[arg(long, default_value_t = DEFAULT_LISTEN_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..))]
    listen_backlog: u32,
    /// Which server speaks HTTP/1.1 on the gateway's listeners: `native`
    /// (Portico's own, holding no buffer while a connection is idle) or
    /// `hyper` (hyper's, as before; kept to compare and to fall back on).
    #[arg(long, value_enum, default_value = "native")]
    http1_server: Http1ServerArg,
    /// Which server speaks HTTP/2 on the gateway's listeners: `native`
    /// (Portico's own) or `hyper` (hyper's, the h2 crate, as before; kept
    /// to compare and to fall back on).
    #[arg(long, value_enum, default_value = "native")]
    http2_server: Http2ServerArg,
    /// Which client speaks HTTP/1.1 to cleartext upstreams: `native`
    /// (Portico's own, run by the request's task, an idle connection a
    /// socket alone) or `hyper` (a task per connection, as before; kept to
    /// compare and to fall back on). Upgrades and `https` upstreams use
    /// hyper's either way.
    #[arg(long, value_enum, default_value = "native")]
    http1_client: Http1ClientArg,
    /// Which client speaks HTTP/2 to upstreams (h2c, and `https` where ALPN
    /// chooses HTTP/2): `native` (Portico's own, HPACK without a dynamic
    /// table or Huffman coding, no task per request) or `hyper` (the h2
    /// crate, as before; kept to compare and to fall back on).
    #[arg(long, value_enum, default_value = "native")]
    http2_client: Http2ClientArg,
    /// Close a WebSocket (upgraded) tunnel that carried no bytes either way
    /// for this long, both sides.
    #[arg(long, default_value = "60s", value_parser = duration)]
    tunnel_idle_timeout: Duration,
    /// Consecutive failures (connect errors, timeouts, 5xx) that eject an
    /// endpoint; 0 turns outlier detection off.
    #[arg(long, default_value_t = 5)]
    outlier_failures: u32,
    /// First ejection length (multiplied by the times ejected, capped at 10x).
    #[arg(long, default_value = "30s", value_parser = duration)]
    outlier_ejection: Duration,
    /// Largest share of a service's endpoints ejected at once, in percent.
    #[arg(long, default_value_t = 50)]
    outlier_max_ejected_percent: u32,
    /// This gateway's zone: instances registered in it are preferred while
    /// at least half of them are in rotation.
    #[arg(long)]
    zone: Option<String>,
    /// Do not register this gateway in the registry it follows
    /// (`/v1/gateways`); its cluster-scope rate limits then count as if
    /// it were the only gateway.
    #[arg(long)]
    no_register: bool,
    /// The id this gateway registers under; default: the host name and
    /// the first bound listen address (`edge-1-127.0.0.1-8080`).
    #[arg(long)]
    gateway_id: Option<String>,
    /// The lease of this gateway's record (1s to 5m), renewed every third
    /// of it (every second at most while it has cluster limits).
    #[arg(long, default_value = "10s", value_parser = duration)]
    gateway_ttl: Duration,
    /// Largest request body for routes that set no `max_request_body`
    /// (`32MiB`, `512k`, bytes, or `unlimited`); over it, 413.
    #[arg(long, default_value = "32MiB", value_parser = body_limit)]
    max_request_body: BodyLimitArg,
    /// Longest wait for a client's next request body bytes; then 408.
    #[arg(long, default_value = "60s", value_parser = duration)]
    body_read_timeout: Duration,
    /// Longest request target (path and query) in bytes; over it, 414.
    #[arg(long, default_value_t = portico_gateway::proxy::edge::DEFAULT_MAX_URI)]
    max_uri_size: usize,
    /// Request header names with `_`: `drop` them (as nginx does), `reject`
    /// the request (400), or `allow` them through.
    #[arg(long, default_value = "drop", value_parser = UnderscorePolicy::parse)]
    underscore_headers: UnderscorePolicy,
    /// Peers (CIDR or address, comma-separated) trusted to set forwarding
    /// headers: theirs are kept and appended to. Everyone else's
    /// X-Forwarded-* are replaced and Forwarded dropped.
    #[arg(long, value_delimiter = ',', value_parser = Cidr::parse)]
    trusted_proxies: Vec<Cidr>,
    /// `%2F` and `%5C` in request paths: `reject` (400) or `keep` them
    /// encoded as data (never a path separator).
    #[arg(long, default_value = "reject", value_parser = SlashPolicy::parse)]
    encoded_slashes: SlashPolicy,
    /// Do not merge runs of `/` in request paths before routing.
    #[arg(long)]
    no_merge_slashes: bool,
    /// HTTPS listener address (beside the cleartext --listen); needs
    /// --tls-cert or --acme-directory. ALPN offers h2 and http/1.1.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// A certificate for the HTTPS listener: `CERT.pem:KEY.pem` (PEM chain,
    /// leaf first, and its key); repeatable. The handshake picks by SNI,
    /// exact name over wildcard; the first answers everything else. Re-read
    /// when the files change and on SIGHUP.
    #[arg(long = "tls-cert", value_name = "CERT.pem:KEY.pem", value_parser = CertFiles::parse)]
    tls_certs: Vec<CertFiles>,
    /// Do not open the cleartext listener (--listen): HTTPS only.
    #[arg(long)]
    no_cleartext: bool,
    /// Answer every request on the cleartext listener with a 308 to the
    /// same URL over HTTPS (routes can ask for it one by one with
    /// `https_redirect = true`).
    #[arg(long)]
    https_redirect: bool,
    /// `Strict-Transport-Security` value for responses on the HTTPS
    /// listener, e.g. `max-age=31536000; includeSubDomains`. Default: not sent.
    #[arg(long, value_parser = hsts)]
    hsts: Option<http::HeaderValue>,
    /// A PEM bundle of CAs trusted for `https` upstreams, beside the web
    /// PKI roots; repeatable. Routes can add their own
    /// (`[route.upstream_tls] ca`).
    #[arg(long = "upstream-ca", value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
    /// Ask HTTPS clients for a certificate chaining to a CA in this PEM
    /// bundle (mTLS on the listener); see --tls-client-auth.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: `required` refuses a handshake without a
    /// valid client certificate; `optional` lets a client send none.
    #[arg(long, value_enum, default_value = "required")]
    tls_client_auth: ClientAuthMode,
    /// Request header that carries the verified client certificate's
    /// subject upstream (e.g. `x-client-subject`); a client's own is always
    /// removed. Default: not sent.
    #[arg(long, value_name = "NAME")]
    tls_client_subject_header: Option<http::HeaderName>,
    /// ACME directory URL to order the HTTPS listener's certificate from
    /// (e.g. Let's Encrypt's); needs --tls-listen, --acme-domain and
    /// --acme-dir. Renewed at two thirds of its lifetime.
    #[arg(long, value_name = "URL")]
    acme_directory: Option<String>,
    /// Contact address for the ACME account.
    #[arg(long, value_name = "ADDRESS")]
    acme_email: Option<String>,
    /// A DNS name the ACME certificate covers; repeatable (one certificate
    /// for all of them).
    #[arg(long = "acme-domain", value_name = "NAME", value_parser = acme_domain)]
    acme_domains: Vec<String>,
    /// PEM root the ACME server's own HTTPS certificate chains to (a test
    /// CA such as pebble); default: the system's roots.
    #[arg(long, value_name = "FILE")]
    acme_ca: Option<PathBuf>,
    /// Directory for the ACME account key and the issued certificate, so a
    /// restart neither re-registers nor re-orders.
    #[arg(long, value_name = "DIR")]
    acme_dir: Option<PathBuf>,
    /// The ACME challenge answered: `http-01` (on the cleartext listener,
    /// the default when it is open) or `tls-alpn-01` (on the HTTPS one).
    #[arg(long, value_name = "KIND", value_parser = ChallengeKind::parse)]
    acme_challenge: Option<ChallengeKind>,
    /// With --registry: TTL of the registry lock a gateway takes before
    /// ordering (renewed every third of it), so one gateway orders at a
    /// time; a gateway that dies holding it delays the next order by at
    /// most this. 1s to 1h.
    #[arg(long, value_name = "DURATION", value_parser = acme_lock_ttl, default_value = "30s")]
    acme_lock_ttl: std::time::Duration,
}

/// `--acme-lock-ttl`: what the registry's locks take (1s to 1h).
fn acme_lock_ttl(s: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    let range = portico_registry::lock::MIN_TTL..=portico_registry::lock::MAX_TTL;
    if !range.contains(&ttl) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(ttl)
}

/// `--acme-domain`: a DNS name (no wildcard: HTTP-01 and TLS-ALPN-01
/// cannot validate one).
fn acme_domain(s: &str) -> Result<String, String> {
    let name = s.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.starts_with("*.") {
        return Err("wildcard names need DNS-01, which is not supported".into());
    }
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
        return Err(format!("{s:?} is not a DNS name with at least two labels"));
    }
    Ok(name)
}

/// `--tls-client-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientAuthMode {
    Required,
    Optional,
}

/// `--hsts`: a header value that starts with `max-age=`.
fn hsts(s: &str) -> Result<http::HeaderValue, String> {
    if !s.trim_start().to_ascii_lowercase().starts_with("max-age=") {
        return Err("expected a Strict-Transport-Security value starting with max-age=".into());
    }
    http::HeaderValue::from_str(s).map_err(|e| e.to_string())
}

/// `--max-request-body`: a size, or no limit.
#[derive(Debug, Clone, Copy)]
struct BodyLimitArg(Option<u64>);

fn body_limit(s: &str) -> Result<BodyLimitArg, String> {
    if s == "unlimited" {
        return Ok(BodyLimitArg(None));
    }
    match portico_registry::route::parse_size(s)? {
        0 => Err("must be more than 0 (or `unlimited`)".into()),
        n => Ok(BodyLimitArg(Some(n))),
    }
}

impl GatewayArgs {
    /// On unless `--no-access-log`, or `RUST_LOG` leaves out
    /// `portico::access` at `info` (as when lines went through `tracing`)
    /// and no `--access-log FILE` asks for them.
    fn access_log_on(&self) -> bool {
        !self.no_access_log
            && (self.access_log.is_some()
                || tracing::enabled!(target: "portico::access", tracing::Level::INFO))
    }

    /// Starts the access log's writer thread (lines to stderr, or appended
    /// to `--access-log FILE`), when the log is on.
    fn install_access_log(&self, format: LogFormat) -> anyhow::Result<Option<AccessLog>> {
        use portico_gateway::access::format::Format;
        if !self.access_log_on() {
            return Ok(None);
        }
        let out: Destination = match &self.access_log {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("--access-log: opening {}", path.display()))?,
            ),
            None => Box::new(std::io::stderr()),
        };
        let format = match format {
            // Colour only where the lines go to a terminal.
            LogFormat::Text => Format::Text {
                colour: self.access_log.is_none() && colour(),
            },
            LogFormat::Json => Format::Json,
        };
        Ok(portico_gateway::access::writer::install(format, out))
    }

    fn edge(&self) -> EdgePolicy {
        EdgePolicy {
            path: PathPolicy {
                encoded_slashes: self.encoded_slashes,
                merge_slashes: !self.no_merge_slashes,
            },
            max_uri: self.max_uri_size,
            underscores: self.underscore_headers,
            trusted_proxies: self.trusted_proxies.clone(),
            max_body: self.max_request_body.0,
            body_read_timeout: self.body_read_timeout,
        }
    }

    fn acme(&self) -> anyhow::Result<Option<AcmeSettings>> {
        let Some(directory) = self.acme_directory.clone() else {
            anyhow::ensure!(
                self.acme_domains.is_empty()
                    && self.acme_dir.is_none()
                    && self.acme_email.is_none()
                    && self.acme_ca.is_none()
                    && self.acme_challenge.is_none(),
                "--acme-domain, --acme-dir, --acme-email, --acme-ca and --acme-challenge need --acme-directory"
            );
            return Ok(None);
        };
        anyhow::ensure!(
            self.tls_listen.is_some(),
            "--acme-directory needs --tls-listen (the certificate is served there)"
        );
        anyhow::ensure!(
            !self.acme_domains.is_empty(),
            "--acme-directory needs at least one --acme-domain"
        );
        let dir = self.acme_dir.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "--acme-directory needs --acme-dir (where the account key and certificate are kept)"
            )
        })?;
        let challenge = match (self.acme_challenge, self.no_cleartext) {
            (Some(ChallengeKind::Http01), true) => {
                anyhow::bail!(
                    "--acme-challenge http-01 needs the cleartext listener (not --no-cleartext)"
                )
            }
            (Some(kind), _) => kind,
            (None, false) => ChallengeKind::Http01,
            (None, true) => ChallengeKind::TlsAlpn01,
        };
        Ok(Some(AcmeSettings {
            directory,
            email: self.acme_email.clone(),
            domains: self.acme_domains.clone(),
            ca: self.acme_ca.clone(),
            dir,
            challenge,
            retry_first: portico_gateway::acme::DEFAULT_RETRY_FIRST,
            retry_max: portico_gateway::acme::DEFAULT_RETRY_MAX,
            lock_ttl: self.acme_lock_ttl,
        }))
    }

    fn tls(&self) -> anyhow::Result<Option<TlsSettings>> {
        let acme = self.acme_directory.is_some();
        anyhow::ensure!(
            !acme || self.tls_listen.is_some(),
            "--acme-directory needs --tls-listen (the certificate is served there)"
        );
        match (self.tls_listen, self.tls_certs.is_empty() && !acme) {
            (None, true) => {
                anyhow::ensure!(
                    self.hsts.is_none(),
                    "--hsts needs --tls-listen: the header is only sent over HTTPS"
                );
                anyhow::ensure!(!self.no_cleartext, "--no-cleartext needs --tls-listen");
                anyhow::ensure!(
                    self.tls_client_ca.is_none(),
                    "--tls-client-ca needs --tls-listen"
                );
                Ok(None)
            }
            (None, false) => anyhow::bail!("--tls-cert needs --tls-listen"),
            (Some(_), true) => {
                anyhow::bail!("--tls-listen needs at least one --tls-cert (or --acme-directory)")
            }
            (Some(_), false) => Ok(Some(TlsSettings {
                acme,
                certs: self.tls_certs.clone(),
                hsts: self.hsts.clone(),
                client_auth: self.tls_client_ca.clone().map(|ca| ClientAuth {
                    ca,
                    required: self.tls_client_auth == ClientAuthMode::Required,
                }),
            })),
        }
    }

    /// Binds the public listeners (cleartext unless turned off, HTTPS when
    /// asked) and the admin one; sets the HTTPS port redirects name.
    fn listeners(&self, options: &mut GatewayOptions) -> anyhow::Result<GatewayListeners> {
        let plain = match self.no_cleartext {
            true => None,
            false => Some(bind(self.listen, "gateway", self.listen_backlog)?),
        };
        let tls = match self.tls_listen {
            Some(addr) => {
                let l = bind(addr, "gateway HTTPS", self.listen_backlog)?;
                options.proxy.https_port = Some(l.local_addr()?.port());
                Some(l)
            }
            None => None,
        };
        Ok(GatewayListeners {
            plain,
            tls,
            admin: self.admin_listener()?,
        })
    }

    /// What the gateway serves, for the start-up line.
    fn announce(listeners: &GatewayListeners) -> String {
        let mut out = Vec::new();
        if let Some(Ok(a)) = listeners.plain.as_ref().map(TcpListener::local_addr) {
            out.push(format!("http://{a}"));
        }
        if let Some(Ok(a)) = listeners.tls.as_ref().map(TcpListener::local_addr) {
            out.push(format!("https://{a}"));
        }
        out.join(" ")
    }

    /// How this gateway registers, once its listeners are bound (the
    /// default id names the bound address, not a port 0).
    fn registration(
        &self,
        listeners: &GatewayListeners,
    ) -> Option<portico_gateway::cluster::Announce> {
        if self.no_register {
            return None;
        }
        let bound = listeners
            .plain
            .iter()
            .chain(listeners.tls.iter())
            .find_map(|l| l.local_addr().ok())
            .map_or_else(|| self.listen.to_string(), |a| a.to_string());
        let id = self
            .gateway_id
            .clone()
            .unwrap_or_else(|| portico_gateway::cluster::default_id(&bound));
        Some(portico_gateway::cluster::Announce {
            ttl: self.gateway_ttl,
            ..portico_gateway::cluster::Announce::new(id)
        })
    }

    fn admin_listener(&self) -> anyhow::Result<Option<TcpListener>> {
        if self.no_admin {
            return Ok(None);
        }
        anyhow::ensure!(
            self.admin != self.listen,
            "--admin must differ from --listen: the admin API is never served on the public listener"
        );
        Ok(Some(bind(self.admin, "admin", DEFAULT_LISTEN_BACKLOG)?))
    }

    fn options(
        &self,
        registry: Vec<String>,
        registry_token: Option<String>,
        auto_default: bool,
    ) -> anyhow::Result<GatewayOptions> {
        let config = match &self.config {
            Some(path) => {
                Config::load(path).with_context(|| format!("route file {}", path.display()))?
            }
            None => Config::default(),
        };
        for (flag, d) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--connect-timeout", self.connect_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--tunnel-idle-timeout", self.tunnel_idle_timeout),
        ] {
            if d.is_zero() {
                anyhow::bail!("{flag} must be more than 0");
            }
        }
        use portico_registry::gateway::{MAX_GATEWAY_TTL, MIN_GATEWAY_TTL, validate_gateway_id};
        anyhow::ensure!(
            (MIN_GATEWAY_TTL..=MAX_GATEWAY_TTL).contains(&self.gateway_ttl),
            "--gateway-ttl must be between 1s and 5m"
        );
        if let Some(id) = &self.gateway_id {
            validate_gateway_id(id).map_err(|e| anyhow::anyhow!("--gateway-id: {}", e.reason))?;
        }
        for (flag, n) in [
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
        ] {
            if n == Some(0) {
                anyhow::bail!("{flag} must be at least 1");
            }
        }
        Ok(GatewayOptions {
            tls: self.tls()?,
            acme: self.acme()?,
            config,
            config_path: self.config.clone(),
            config_poll: Some(self.config_poll_interval),
            registry,
            cache_dir: None,
            registry_token: registry_token.map(Into::into),
            registry_tls: None,
            auto_routes: self
                .auto_routes
                .unwrap_or(auto_default && self.config.is_none()),
            auto_route_grace: Some(self.auto_route_grace),
            zone: self.zone.clone(),
            server: ServerSettings {
                header_read_timeout: self.header_read_timeout,
                max_header_size: self.max_header_size,
                idle_timeout: self.idle_timeout,
                drain_timeout: self.drain_timeout,
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                defer_accept: (!self.no_defer_accept)
                    .then_some(portico_gateway::server::DEFAULT_DEFER_ACCEPT),
                http1: match self.http1_server {
                    Http1ServerArg::Native => Http1Server::Native,
                    Http1ServerArg::Hyper => Http1Server::Hyper,
                },
                http2: match self.http2_server {
                    Http2ServerArg::Native => Http2Server::Native,
                    Http2ServerArg::Hyper => Http2Server::Hyper,
                },
                ..ServerSettings::default()
            },
            proxy: ProxySettings {
                access_log: self.access_log_on(),
                generate_traceparent: self.generate_traceparent,
                connect_timeout: self.connect_timeout,
                http1_client: match self.http1_client {
                    Http1ClientArg::Native => Http1Client::Native,
                    Http1ClientArg::Hyper => Http1Client::Hyper,
                },
                http2_client: match self.http2_client {
                    Http2ClientArg::Native => Http2Client::Native,
                    Http2ClientArg::Hyper => Http2Client::Hyper,
                },
                tunnel_idle_timeout: self.tunnel_idle_timeout,
                edge: self.edge(),
                https_redirect: self.https_redirect,
                upstream_ca: self.upstream_ca.clone(),
                client_subject_header: self.tls_client_subject_header.clone(),
                outlier: OutlierPolicy {
                    consecutive_failures: self.outlier_failures,
                    base_ejection: self.outlier_ejection,
                    max_ejection: self.outlier_ejection * 10,
                    max_ejected_percent: self.outlier_max_ejected_percent.min(100),
                },
                ..ProxySettings::default()
            },
            announce: None,
            // Custom filters and layers are for embedders (examples/custom-filter).
            filters: Default::default(),
            layer: None,
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Colour codes in the log only for a person at a terminal: never in a file
/// or a pipe (`portico up > portico.log`), and never with `NO_COLOR` set to
/// anything but the empty string (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
}

/// A listener on `addr` (within the runtime) with room for `backlog`
/// connections waiting to be accepted.
fn bind(addr: SocketAddr, what: &str, backlog: u32) -> anyhow::Result<TcpListener> {
    portico_gateway::server::listen(addr, backlog)
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// How long shutdown waits for the access log's last lines to be written.
const ACCESS_LOG_CLOSE: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Ctl(args) = cli.command {
        return ctl(args);
    }
    if cli.command.gateway_args().is_some() {
        allocator_cache();
    }
    init_logging(cli.log_format);
    let access_log = match cli.command.gateway_args() {
        Some(gateway) => gateway.install_access_log(cli.log_format)?,
        None => None,
    };
    // Once, before any TLS configuration is built.
    portico_gateway::tls::install_provider();
    // Before any socket: the default connection cap is derived from it.
    if let Some((soft, hard)) = portico_gateway::caps::raise_fd_limit() {
        tracing::debug!(?soft, ?hard, "file-descriptor limit");
    }
    // One thread: the current-thread scheduler, which skips the work-stealing
    // machinery a single worker cannot use.
    let mut runtime = match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let result = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli.command));
    if let Some(log) = access_log
        && !log.close(ACCESS_LOG_CLOSE)
    {
        tracing::warn!("the access log's last lines were not written: its output is stalled");
    }
    result
}

/// Blocks of each size glibc's per-thread cache keeps for reuse (its
/// default is 7).
const TCACHE_COUNT: u32 = 512;

/// Starts the program again with glibc's per-thread cache of freed blocks
/// raised to [`TCACHE_COUNT`] blocks a size, unless `GLIBC_TUNABLES`
/// already sets it (glibc reads it only when a process starts; nothing
/// can change it later). The process keeps its id, name, arguments and
/// files; its environment gains `PORTICO_ALLOCATOR_CACHE=1`, so it is
/// started again at most once (and not at all when that is set, to any
/// value, beforehand: for tools that do not follow an `exec`, such as
/// valgrind).
///
/// Why: an HTTP/2 connection's burst (32 unary gRPC calls at once) makes
/// 32 blocks of each size a call needs before any is freed. Past the
/// cache's 7, glibc's slower bins served them: unary gRPC took 3-4% less
/// CPU a call with 512 (`bench/ab.sh`, three sets of 8 pairs; small GETs
/// level), bench/RESULTS.md, fortieth pass. The cache holds only freed
/// blocks of up to 1,032 bytes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator_cache() {
    use std::os::unix::process::CommandExt as _;
    const MARKER: &str = "PORTICO_ALLOCATOR_CACHE";
    let mut tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    let set = tunables
        .to_string_lossy()
        .contains("glibc.malloc.tcache_count");
    if set || std::env::var_os(MARKER).is_some() {
        return;
    }
    // The program's own path, so the process keeps its name (started as
    // `/proc/self/exe` it would be called `exe`); and only when that path
    // is this program's: started through the dynamic loader, it is the
    // loader's, and a file replaced since the start reads as deleted.
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("ld-") || name.starts_with("ld.so") || !exe.is_file() {
        return;
    }
    if !tunables.is_empty() {
        tunables.push(":");
    }
    tunables.push(format!("glibc.malloc.tcache_count={TCACHE_COUNT}"));
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let failed = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(MARKER, "1")
        .exec();
    // Before trying, `exec` reset the signal mask and SIGPIPE to their
    // defaults, and a failed one leaves them so: running on, a peer's
    // reset would kill the process. So it stops, naming the way round.
    eprintln!(
        "portico: could not start again with glibc's allocation cache raised \
         ({failed}); set {MARKER}=1 to run without it"
    );
    std::process::exit(1);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocator_cache() {}

/// `portico ctl`: no logging (its output is the answer), one thread, and
/// the exit code its error names (docs/ctl.md).
fn ctl(args: portico::ctl::CtlArgs) -> anyhow::Result<()> {
    portico_gateway::tls::install_provider();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(portico::ctl::run(args));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code().into());
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up { registry, gateway } => {
            let reg = registry.options()?;
            let mut gw = gateway.options(Vec::new(), None, true)?;
            let control = bind(registry.control, "control", DEFAULT_LISTEN_BACKLOG)?;
            let listeners = gateway.listeners(&mut gw)?;
            gw.announce = gateway.registration(&listeners);
            println!(
                "portico up: gateway {} , registry {}://{}",
                GatewayArgs::announce(&listeners),
                registry.control_scheme(),
                control.local_addr()?
            );
            run_up(control, listeners, reg, gw, shutdown_signal()).await
        }
        Command::Registry { registry } => {
            let reg = registry.options()?;
            let control = bind(registry.control, "control", DEFAULT_LISTEN_BACKLOG)?;
            println!(
                "portico registry: {}://{}",
                registry.control_scheme(),
                control.local_addr()?
            );
            run_registry(control, reg, shutdown_signal()).await
        }
        Command::Ctl(_) => unreachable!("main runs ctl before the server runtime"),
        Command::Gateway {
            registry,
            registry_token,
            registry_ca,
            cache_dir,
            no_cache,
            gateway,
        } => {
            let mut gw = gateway.options(registry, registry_token, false)?;
            if !registry_ca.is_empty() {
                let tls = portico_registry::client::tls::client_config(&registry_ca)
                    .context("--registry-ca")?;
                gw.registry_tls = Some(tls);
            }
            gw.cache_dir = (!no_cache).then_some(cache_dir);
            let listeners = gateway.listeners(&mut gw)?;
            gw.announce = gateway.registration(&listeners);
            println!("portico gateway: {}", GatewayArgs::announce(&listeners));
            run_gateway(listeners, gw, shutdown_signal()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server settings `portico gateway ARGS` runs with.
    fn server(args: &[&str]) -> ServerSettings {
        let cli = Cli::try_parse_from([&["portico", "gateway"], args].concat()).unwrap();
        let Command::Gateway { gateway, .. } = cli.command else {
            unreachable!("parsed as gateway")
        };
        gateway.options(Vec::new(), None, false).unwrap().server
    }

    #[test]
    fn listeners_defer_accept_unless_told_not_to() {
        assert_eq!(
            server(&[]).defer_accept,
            Some(portico_gateway::server::DEFAULT_DEFER_ACCEPT)
        );
        assert_eq!(server(&["--no-defer-accept"]).defer_accept, None);
    }

    /// The backlog the gateway's listeners are bound with.
    fn backlog(args: &[&str]) -> Result<u32, clap::Error> {
        let cli = Cli::try_parse_from([&["portico", "gateway"], args].concat())?;
        let Command::Gateway { gateway, .. } = cli.command else {
            unreachable!("parsed as gateway")
        };
        Ok(gateway.listen_backlog)
    }

    #[test]
    fn listeners_ask_for_a_backlog_of_4096_unless_told() {
        assert_eq!(backlog(&[]).unwrap(), 4096);
        assert_eq!(backlog(&["--listen-backlog", "511"]).unwrap(), 511);
        let zero = backlog(&["--listen-backlog", "0"]).unwrap_err().to_string();
        assert!(zero.contains("--listen-backlog"), "{zero}");
    }
}
