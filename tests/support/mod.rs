//! Shared harness for the end-to-end tests: real registry, real gateway and
//! real echo backends on `127.0.0.1:0`, a plain HTTP client, and `eventually`
//! for waiting on a condition with a deadline instead of sleeping.

#![allow(dead_code)]

#[path = "../../examples/echo/service.rs"]
pub mod echo;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portico::RegistryOptions;
use portico_gateway::discovery::DiscoveryStatus;
use portico_gateway::{Gateway, GatewayOptions};
use portico_registry::auth::Tokens;
use portico_registry::lease::LeasePolicy;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` every 20 ms until it returns true; panics with `what` after `DEADLINE`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lease policy fast enough for tests.
/// FNV-1a of `data`, as the echo backend reports a body it read
/// (`body_fnv1a`).
pub fn fnv1a(data: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub fn fast_leases() -> LeasePolicy {
    LeasePolicy {
        sweep_interval: Duration::from_millis(100),
        critical_grace: Duration::from_millis(500),
        ..LeasePolicy::default()
    }
}

/// A registry running in this process.
pub struct TestRegistry {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    /// An etcd cluster this registry alone uses, stopped with it.
    _etcd: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// Which store `TestRegistry::start` uses: `PORTICO_TEST_STORE=etcd` (with
/// `--features etcd`) runs the same registry tests against a real etcd.
pub fn store_under_test() -> &'static str {
    match std::env::var("PORTICO_TEST_STORE").as_deref() {
        Ok("etcd") if cfg!(feature = "etcd") => "etcd",
        Ok("etcd") => panic!("PORTICO_TEST_STORE=etcd needs `--features etcd`"),
        _ => "embedded",
    }
}

/// The HTTP/2 server the gateways under test run, when chosen:
/// `PORTICO_TEST_HTTP2_SERVER=native` (or `hyper`); unset, each test's own
/// setting (the default unless it says otherwise).
pub fn http2_server_under_test() -> Option<portico_gateway::server::Http2Server> {
    use portico_gateway::server::Http2Server;
    match std::env::var("PORTICO_TEST_HTTP2_SERVER").as_deref() {
        Ok("native") => Some(Http2Server::Native),
        Ok("hyper") => Some(Http2Server::Hyper),
        Ok(other) => panic!("PORTICO_TEST_HTTP2_SERVER={other}: native or hyper"),
        Err(_) => None,
    }
}

/// The HTTP/2 client the gateways under test speak to upstreams with,
/// when chosen: `PORTICO_TEST_HTTP2_CLIENT=native` (or `hyper`); unset,
/// each test's own setting.
pub fn http2_client_under_test() -> Option<portico_gateway::pool::Http2Client> {
    use portico_gateway::pool::Http2Client;
    match std::env::var("PORTICO_TEST_HTTP2_CLIENT").as_deref() {
        Ok("native") => Some(Http2Client::Native),
        Ok("hyper") => Some(Http2Client::Hyper),
        Ok(other) => panic!("PORTICO_TEST_HTTP2_CLIENT={other}: native or hyper"),
        Err(_) => None,
    }
}

impl TestRegistry {
    /// A registry on the store under test (see [`store_under_test`]).
    pub async fn start(lease: LeasePolicy) -> TestRegistry {
        #[cfg(feature = "etcd")]
        if store_under_test() == "etcd" {
            let cluster = etcd::EtcdCluster::start(1).await;
            let mut r = Self::start_on_etcd(cluster.endpoints(), "/portico/", lease).await;
            r._etcd = Some(Box::new(cluster));
            // Ready once its etcd session is open: writing the session's key
            // spends a revision, and a test that counts revisions (bad
            // input "changes nothing") must not see that write land late.
            wait_ready(&r.url).await;
            return r;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut r = Self::start_in(dir.path(), lease).await;
        r._dir = Some(dir);
        r
    }

    /// A registry replica over an etcd cluster someone else owns.
    pub async fn start_on_etcd(
        endpoints: Vec<String>,
        prefix: &str,
        lease: LeasePolicy,
    ) -> TestRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on_etcd_with(listener, endpoints, prefix, lease).await
    }

    /// [`TestRegistry::start_on_etcd`] on a given listener (to come back on
    /// the address a gateway already follows).
    pub async fn start_on_etcd_with(
        listener: TcpListener,
        endpoints: Vec<String>,
        prefix: &str,
        lease: LeasePolicy,
    ) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Self::launch_on(
            listener,
            RegistryOptions {
                data_dir: dir.path().to_path_buf(),
                etcd: Some(portico::EtcdOptions {
                    endpoints,
                    prefix: prefix.to_string(),
                    session_ttl: std::time::Duration::from_secs(10),
                    tls: None,
                }),
                lease,
                tokens: Default::default(),
                tls: None,
                check_ca: Vec::new(),
            },
        )
        .await;
        r._dir = Some(dir);
        r
    }

    pub async fn start_in(data_dir: &Path, lease: LeasePolicy) -> TestRegistry {
        Self::launch(RegistryOptions {
            data_dir: data_dir.to_path_buf(),
            etcd: None,
            lease,
            tokens: Default::default(),
            tls: None,
            check_ca: Vec::new(),
        })
        .await
    }

    /// [`TestRegistry::start_in`] on a given listener (to come back on the
    /// address a gateway already follows).
    pub async fn start_in_on(
        listener: TcpListener,
        data_dir: &Path,
        lease: LeasePolicy,
    ) -> TestRegistry {
        Self::launch_on(
            listener,
            RegistryOptions {
                data_dir: data_dir.to_path_buf(),
                etcd: None,
                lease,
                tokens: Default::default(),
                tls: None,
                check_ca: Vec::new(),
            },
        )
        .await
    }

    /// A registry whose own checks of `https` instances also trust the CAs
    /// in `check_ca` (`--check-ca`).
    pub async fn start_checking(check_ca: Vec<PathBuf>) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Self::launch(RegistryOptions {
            data_dir: dir.path().to_path_buf(),
            etcd: None,
            lease: fast_leases(),
            tokens: Default::default(),
            tls: None,
            check_ca,
        })
        .await;
        r._dir = Some(dir);
        r
    }

    /// A registry that requires `tokens` (its health probes stay open).
    pub async fn start_secured(tokens: Tokens) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Self::launch(RegistryOptions {
            data_dir: dir.path().to_path_buf(),
            etcd: None,
            lease: fast_leases(),
            tokens,
            tls: None,
            check_ca: Vec::new(),
        })
        .await;
        r._dir = Some(dir);
        r
    }

    async fn launch(options: RegistryOptions) -> TestRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::launch_on(listener, options).await
    }

    async fn launch_on(listener: TcpListener, options: RegistryOptions) -> TestRegistry {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(portico::run_registry(listener, options, async {
            let _ = rx.await;
        }));
        let r = TestRegistry {
            addr,
            url: format!("http://{addr}"),
            stop: Some(tx),
            task: Some(task),
            _dir: None,
            _etcd: None,
        };
        wait_healthy(&r.url).await;
        r
    }

    pub fn client(&self) -> portico_registry::client::RegistryClient {
        portico_registry::client::RegistryClient::new(&[self.url.as_str()]).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Waits for `GET {url}/healthz` to answer 200.
pub async fn wait_healthy(url: &str) {
    wait_ok(&format!("{url}/healthz")).await;
}

/// Waits for `GET {url}/readyz` to answer 200: the store answers and
/// takes writes.
pub async fn wait_ready(url: &str) {
    wait_ok(&format!("{url}/readyz")).await;
}

/// Waits for `GET url` to answer 200.
async fn wait_ok(url: &str) {
    let http = http();
    eventually(&format!("{url} to answer 200"), || {
        let http = http.clone();
        let url = url.to_string();
        async move {
            send(&http, Method::GET, &url, &[], Bytes::new())
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
        }
    })
    .await;
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub url: String,
    /// The admin API (a separate listener).
    pub admin_url: String,
    pub status: Arc<DiscoveryStatus>,
    pub table: Arc<arc_swap::ArcSwap<portico_gateway::router::RouteTable>>,
    /// The HTTPS listener, when started with one.
    pub tls_addr: Option<SocketAddr>,
    /// Its peers and cluster-limit shares.
    pub cluster: Arc<portico_gateway::cluster::Cluster>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn start(options: GatewayOptions) -> TestGateway {
        Self::launch(options, false).await
    }

    /// A gateway with an HTTPS listener beside the cleartext one
    /// (`options.tls` must be set); redirects name its port.
    pub async fn start_tls(options: GatewayOptions) -> TestGateway {
        Self::launch(options, true).await
    }

    /// A gateway with one route ("up") to `upstream`, no access log, and
    /// `server`'s settings, HTTP/2 server included (whatever
    /// `PORTICO_TEST_HTTP2_SERVER` says): for the HTTP/2 servers' own tests.
    pub async fn to_upstream_on(
        upstream: SocketAddr,
        server: portico_gateway::server::ServerSettings,
    ) -> TestGateway {
        let route = format!("[[route]]\nname = \"up\"\nupstreams = [\"{upstream}\"]\n");
        Self::start_own_http2(GatewayOptions {
            config: portico_gateway::config::Config::parse(&route).unwrap(),
            proxy: portico_gateway::proxy::ProxySettings {
                access_log: false,
                ..Default::default()
            },
            server,
            ..GatewayOptions::default()
        })
        .await
    }

    /// A gateway on the HTTP/2 server `options` name, whatever
    /// `PORTICO_TEST_HTTP2_SERVER` says: for a test of one server by name.
    pub async fn start_own_http2(options: GatewayOptions) -> TestGateway {
        Self::launch_as(options, false).await
    }

    async fn launch(mut options: GatewayOptions, with_tls: bool) -> TestGateway {
        if let Some(server) = http2_server_under_test() {
            options.server.http2 = server;
        }
        if let Some(client) = http2_client_under_test() {
            options.proxy.http2_client = client;
        }
        Self::launch_as(options, with_tls).await
    }

    async fn launch_as(mut options: GatewayOptions, with_tls: bool) -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = match with_tls {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let tls_addr = tls.as_ref().map(|l| l.local_addr().unwrap());
        options.proxy.https_port = tls_addr.map(|a| a.port());
        let gateway = Gateway::new(options).unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let admin_task = gateway.serve_admin(admin);
        let status = gateway.status().clone();
        let table = gateway.table().clone();
        let cluster = gateway.cluster().clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let served = gateway
                .serve_on(Some(listener), tls, async {
                    let _ = rx.await;
                })
                .await;
            admin_task.abort();
            served
        });
        TestGateway {
            addr,
            url: format!("http://{addr}"),
            admin_url,
            status,
            table,
            tls_addr,
            cluster,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A gateway following `registry` with auto routes (`/{service}`), no access log.
    pub async fn following(registry_url: &str) -> TestGateway {
        Self::start(GatewayOptions {
            registry: vec![registry_url.to_string()],
            auto_routes: true,
            proxy: portico_gateway::proxy::ProxySettings {
                access_log: false,
                ..Default::default()
            },
            ..GatewayOptions::default()
        })
        .await
    }

    pub fn applied_revision(&self) -> u64 {
        self.status.applied_revision.load(Ordering::Relaxed)
    }

    /// Waits until the gateway has applied registry revision `rev` or later.
    pub async fn wait_revision(&self, rev: u64) {
        eventually(&format!("gateway to apply revision {rev}"), || async {
            self.applied_revision() >= rev
        })
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An echo backend.
pub struct TestEcho {
    pub addr: SocketAddr,
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestEcho {
    pub async fn start(id: &str) -> TestEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(echo::serve_counted(
            listener,
            id.to_string(),
            portico_registry::client::InFlight::default(),
            async {
                let _ = rx.await;
            },
        ));
        TestEcho {
            addr,
            id: id.to_string(),
            stop: Some(tx),
            task,
        }
    }

    pub fn spec(&self) -> portico_registry::model::InstanceSpec {
        portico_registry::model::InstanceSpec::new("127.0.0.1", self.addr.port())
    }

    /// Stops accepting (existing connections may linger until closed).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1.1 client with pooling.
pub fn http() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The echo instance that answered.
    pub fn instance(&self) -> String {
        self.json()["instance"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub async fn send(
    http: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), http.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub async fn get(url: &str) -> Reply {
    send(&http(), Method::GET, url, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A body-less request (DELETE, a heartbeat PUT, a drain POST), read whole.
pub async fn call(method: Method, url: &str) -> Reply {
    send(&http(), method.clone(), url, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub async fn put_json(url: &str, body: serde_json::Value) -> Reply {
    send(
        &http(),
        Method::PUT,
        url,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap_or_else(|e| panic!("PUT {url}: {e}"))
}

/// The log filter of a child process whose stderr the test shows: `warn`,
/// or `PORTICO_TEST_CHILD_LOG` (a `RUST_LOG` filter) to see more of a
/// failing run, e.g. `portico_registry::store=info,warn`.
fn child_log_level() -> String {
    std::env::var("PORTICO_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into())
}

/// The `portico` binary as a child process, killed on drop.
pub struct ChildProcess {
    pub child: Child,
}

impl ChildProcess {
    pub fn spawn(args: &[&str]) -> ChildProcess {
        let child = Self::command(args, &child_log_level())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn portico");
        ChildProcess { child }
    }

    /// Like [`ChildProcess::spawn`], logging at `level` to a pipe the test
    /// reads after [`ChildProcess::terminate`] (as `portico ... >
    /// portico.log` would; `NO_COLOR` removed, so colour is off only because
    /// the log is not a terminal).
    pub fn spawn_logged(args: &[&str], level: &str) -> ChildProcess {
        let child = Self::command(args, level)
            .env_remove("NO_COLOR")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portico");
        ChildProcess { child }
    }

    /// `portico ARGS`, logging at `level`, with no input and its output
    /// dropped.
    fn command(args: &[&str], level: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portico"));
        command
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// SIGTERM, then waits (within [`DEADLINE`]) for a successful exit;
    /// returns what it wrote to stderr when that was piped
    /// ([`ChildProcess::spawn_logged`]), else nothing.
    pub async fn terminate(&mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.unwrap().success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "exit status {status:?}");
        let mut log = String::new();
        if let Some(stderr) = self.child.stderr.as_mut() {
            std::io::Read::read_to_string(stderr, &mut log).unwrap();
        }
        log
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a child process to bind (checked free by
/// binding it, then released).
///
/// Drawn from below the kernel's ephemeral range, not from `bind(:0)`: a
/// port from that range, once released, can be taken as the source port
/// of any outgoing connection on the machine (the suite makes thousands)
/// before the child binds it, and the child then fails to start. Below
/// the range only another `free_port` can take it, and the draw is random.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let (low, high) = below_ephemeral_range();
    for _ in 0..1000 {
        let draw = RandomState::new().hash_one(SEQ.fetch_add(1, Ordering::Relaxed));
        let port = low + (draw % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The ports between 10000 and the start of the kernel's ephemeral range
/// (`ip_local_port_range`; 32768 when it cannot be read).
fn below_ephemeral_range() -> (u16, u16) {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        first > 12000,
        "ephemeral range starts at {first}: too low for free_port"
    );
    (10000, first)
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// A backend whose behaviour a test controls: answer 200 with its name, or
/// 503; count what it receives; die (refuse new connections and reset the
/// open ones) on demand.
pub struct FaultyBackend {
    pub addr: SocketAddr,
    pub name: String,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<std::sync::atomic::AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl FaultyBackend {
    pub async fn start(name: &str) -> FaultyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (f, r, n) = (
            failing.clone(),
            received.clone(),
            Bytes::from(name.to_string()),
        );
        let d = delay_ms.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the task kills them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (f, r, n, d) = (f.clone(), r.clone(), n.clone(), d.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let delay = Duration::from_millis(d.load(Ordering::SeqCst));
                        let status = if f.load(Ordering::SeqCst) {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("x-backend", n.as_ref())
                            .body(Full::new(n.clone()))
                            .unwrap();
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        FaultyBackend {
            addr,
            name: name.to_string(),
            delay_ms,
            failing,
            received,
            task: Some(task),
        }
    }

    /// Answer 503 (true) or 200 (false) from now on.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Answer every request after `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
