//! Certificates that renew themselves, end to end against Debian's `pebble`
//! ACME test server (installed by `.ci/run`): pebble really validates
//! HTTP-01 against the gateway's cleartext listener and TLS-ALPN-01 against
//! its TLS listener, resolving the test's names through
//! `pebble-challtestsrv` (a DNS server answering 127.0.0.1 for every name),
//! and its `httpPort`/`tlsPort` are set to the gateway's ports. Clients
//! then check that the certificate served chains to pebble's root, fetched
//! from its management endpoint.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portico_gateway::acme::{AcmeSettings, ChallengeKind};
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::tls::TlsSettings;
use portico_gateway::{Gateway, GatewayOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::tls::{TestCa, run};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const NAME: &str = "acme.portico.test";

/// pebble and its DNS server, killed on drop.
struct Pebble {
    /// The ACME directory URL.
    directory: String,
    /// The CA pebble's own HTTPS certificate chains to (for `--acme-ca`).
    tls_ca: PathBuf,
    /// pebble's management endpoint (roots, intermediates).
    management: SocketAddr,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` (the gateway's), issuing certificates valid for
    /// `validity_s` seconds; returns once its directory answers.
    async fn start(http_port: u16, tls_port: u16, validity_s: u64) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // pebble ships no certificate: one of ours for its HTTPS API.
        let ca = TestCa::new();
        let own = ca.issue("pebble", &["localhost", "127.0.0.1"]);
        let tls_ca = dir.path().join("pebble-ca.pem");
        std::fs::write(&tls_ca, &ca.pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &own.cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), &own.key).unwrap();
        let (dns, api, management) = distinct_ports();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_s,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble; .ci/run does)");
        let mut children = vec![dns_server];
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random validation delay, no refused nonces (a test of
            // instant-acme, not of us), and every order validated afresh.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pebble (apt-get install pebble; .ci/run does)");
        children.push(pebble);
        let p = Pebble {
            directory: format!("https://127.0.0.1:{api}/dir"),
            tls_ca,
            management: format!("127.0.0.1:{management}").parse().unwrap(),
            children,
            _dir: dir,
        };
        let client = trusting(&std::fs::read_to_string(&p.tls_ca).unwrap());
        let api_addr: SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
        eventually("pebble to answer its directory", || async {
            https_get(&client, api_addr, "localhost", "/dir")
                .await
                .is_ok()
        })
        .await;
        p
    }

    /// pebble's root (a new one each start), from its management endpoint.
    async fn root(&self) -> String {
        let client = trusting(&std::fs::read_to_string(&self.tls_ca).unwrap());
        let (_, body) = https_get(&client, self.management, "localhost", "/roots/0")
            .await
            .expect("pebble's root");
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Where pebble's log is, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three distinct free ports (free_port may hand one out twice).
fn distinct_ports() -> (u16, u16, u16) {
    loop {
        let (a, b, c) = (free_port(), free_port(), free_port());
        if a != b && b != c && a != c {
            return (a, b, c);
        }
    }
}

/// A rustls client trusting the roots in `pem`, full handshakes only (a
/// resumed session keeps the certificate it first saw), HTTP/1.1.
fn trusting(pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One GET over a new, verified TLS connection asking for `sni`: the
/// leaf's DER and the response body.
async fn https_get(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    path: &str,
) -> Result<(Vec<u8>, Bytes), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, sni)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((leaf, body.to_bytes()))
}

/// A gateway on listeners the test bound first (pebble must know the
/// ports before the gateway orders), with an echo route.
struct AcmeGateway {
    tls_addr: SocketAddr,
    admin_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AcmeGateway {
    async fn start(
        plain: Option<TcpListener>,
        tls: TcpListener,
        echo: &TestEcho,
        acme: AcmeSettings,
    ) -> AcmeGateway {
        Self::start_following(plain, tls, echo, acme, None).await
    }

    /// The same, following `registry` (ACME then ordered for the fleet).
    async fn start_following(
        plain: Option<TcpListener>,
        tls: TcpListener,
        echo: &TestEcho,
        acme: AcmeSettings,
        registry: Option<&str>,
    ) -> AcmeGateway {
        let tls_addr = tls.local_addr().unwrap();
        let routes = format!(
            "[[route]]\nname = \"echo\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
            echo.addr
        );
        let gateway = Gateway::new(GatewayOptions {
            config: Config::parse(&routes).unwrap(),
            tls: Some(TlsSettings {
                acme: true,
                ..TlsSettings::default()
            }),
            acme: Some(acme),
            registry: registry.map(String::from).into_iter().collect(),
            proxy: ProxySettings {
                access_log: false,
                ..Default::default()
            },
            ..GatewayOptions::default()
        })
        .unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let admin_task = gateway.serve_admin(admin);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let served = gateway
                .serve_on(plain, Some(tls), async {
                    let _ = rx.await;
                })
                .await;
            admin_task.abort();
            served
        });
        AcmeGateway {
            tls_addr,
            admin_url,
            stop: Some(tx),
            task,
        }
    }

    async fn acme_status(&self) -> serde_json::Value {
        get(&format!("{}/status", self.admin_url)).await.json()["acme"].clone()
    }

    /// Waits until `n` orders have succeeded; panics early on a failure.
    async fn wait_orders(&self, n: u64, pebble: &Pebble) {
        let mut last = serde_json::Value::Null;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            last = self.acme_status().await;
            assert_eq!(
                last["orders_failed"],
                0,
                "an order failed: {last}\npebble:\n{}",
                pebble.log()
            );
            if last["orders_ok"].as_u64() >= Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{n} ACME orders did not succeed within 60 s: {last}\npebble:\n{}",
            pebble.log()
        );
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

fn settings(pebble: &Pebble, dir: &Path, challenge: ChallengeKind) -> AcmeSettings {
    AcmeSettings {
        directory: pebble.directory.clone(),
        email: Some("ops@portico.test".into()),
        domains: vec![NAME.into()],
        ca: Some(pebble.tls_ca.clone()),
        dir: dir.to_path_buf(),
        challenge,
        retry_first: Duration::from_millis(500),
        retry_max: Duration::from_secs(2),
        lock_ttl: portico_gateway::acme::fleet::DEFAULT_LOCK_TTL,
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// HTTP-01 validated by pebble on the cleartext listener; the certificate
/// chains to pebble's root for rustls and curl; a restart with the same
/// state directory serves it again without ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_that_chains_to_the_ca_and_survives_a_restart() {
    let echo = TestEcho::start("e1").await;
    let (plain, tls) = (bind().await, bind().await);
    let plain_port = plain.local_addr().unwrap().port();
    let pebble = Pebble::start(plain_port, tls.local_addr().unwrap().port(), 3600).await;
    let (_state, state_dir) = data_dir();
    let gw = AcmeGateway::start(
        Some(plain),
        tls,
        &echo,
        settings(&pebble, &state_dir, ChallengeKind::Http01),
    )
    .await;
    gw.wait_orders(1, &pebble).await;
    let root = pebble.root().await;
    let client = trusting(&root);
    let (leaf, body) = https_get(&client, gw.tls_addr, NAME, "/hello")
        .await
        .expect("a certificate chaining to pebble's root");
    assert!(!body.is_empty());
    // curl over SNI, trusting only pebble's root.
    let root_path = state_dir.join("pebble-root.pem");
    std::fs::write(&root_path, &root).unwrap();
    let resolve = format!("{NAME}:{}:127.0.0.1", gw.tls_addr.port());
    let url = format!("https://{NAME}:{}/hello", gw.tls_addr.port());
    let (ok, _, err) = run(
        "curl",
        &[
            "-sS",
            "-f",
            "--cacert",
            root_path.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(ok, "curl: {err}");
    let status = gw.acme_status().await;
    assert!(
        status["next_renewal_unix"].as_i64().unwrap() > 0,
        "{status}"
    );
    // A challenge path for a token not published: the gateway's 404, not routed.
    let reply = get(&format!(
        "http://127.0.0.1:{plain_port}/.well-known/acme-challenge/nope"
    ))
    .await;
    assert_eq!(reply.status, 404);
    gw.stop().await;

    // Restarted with the same state: the same certificate at once, no order.
    let (plain, tls) = (bind().await, bind().await);
    let gw = AcmeGateway::start(
        Some(plain),
        tls,
        &echo,
        settings(&pebble, &state_dir, ChallengeKind::Http01),
    )
    .await;
    eventually("the saved certificate to be served", || async {
        https_get(&client, gw.tls_addr, NAME, "/").await.is_ok()
    })
    .await;
    let (again, _) = https_get(&client, gw.tls_addr, NAME, "/").await.unwrap();
    assert_eq!(again, leaf, "the saved certificate, not a new one");
    let status = gw.acme_status().await;
    assert_eq!(
        status["orders_ok"], 0,
        "no new order after a restart: {status}"
    );
    gw.stop().await;
}

/// TLS-ALPN-01 validated by pebble on the TLS listener, with no cleartext
/// listener at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_certificate_on_the_tls_listener_alone() {
    let echo = TestEcho::start("e1").await;
    let tls = bind().await;
    // pebble's httpPort points at a port nobody listens on: only
    // TLS-ALPN-01 can succeed.
    let pebble = Pebble::start(free_port(), tls.local_addr().unwrap().port(), 3600).await;
    let (_state, state_dir) = data_dir();
    let gw = AcmeGateway::start(
        None,
        tls,
        &echo,
        settings(&pebble, &state_dir, ChallengeKind::TlsAlpn01),
    )
    .await;
    gw.wait_orders(1, &pebble).await;
    let client = trusting(&pebble.root().await);
    https_get(&client, gw.tls_addr, NAME, "/")
        .await
        .expect("a certificate chaining to pebble's root");
    gw.stop().await;
}

/// Short-lived certificates (pebble's certificateValidityPeriod) are
/// renewed at two thirds of their lifetime, and the new one is served
/// while clients keep connecting, none failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_with_no_failed_request() {
    let echo = TestEcho::start("e1").await;
    let (plain, tls) = (bind().await, bind().await);
    let pebble = Pebble::start(
        plain.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
        9,
    )
    .await;
    let (_state, state_dir) = data_dir();
    let gw = AcmeGateway::start(
        Some(plain),
        tls,
        &echo,
        settings(&pebble, &state_dir, ChallengeKind::Http01),
    )
    .await;
    gw.wait_orders(1, &pebble).await;
    let client = trusting(&pebble.root().await);
    let (first, _) = https_get(&client, gw.tls_addr, NAME, "/").await.unwrap();
    // New connections (full handshakes) until a new certificate is served:
    // bounded by count and time; every one must succeed.
    let (mut requests, mut renewed) = (0, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while requests < 20_000 && tokio::time::Instant::now() < deadline {
        let (leaf, _) = https_get(&client, gw.tls_addr, NAME, "/")
            .await
            .unwrap_or_else(|e| panic!("request {requests} failed during renewal: {e}"));
        requests += 1;
        if leaf != first {
            renewed = true;
            break;
        }
    }
    assert!(
        renewed,
        "no renewal within 40 s ({requests} requests)\n{}",
        pebble.log()
    );
    let status = gw.acme_status().await;
    assert!(status["orders_ok"].as_u64() >= Some(2), "{status}");
    assert_eq!(status["orders_failed"], 0, "{status}");
    gw.stop().await;
}

/// With the ACME server unreachable, a certificate due for renewal keeps
/// serving; failed orders are counted and retried with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ca_keeps_the_old_certificate_and_backs_off() {
    let echo = TestEcho::start("e1").await;
    let (_state, state_dir) = data_dir();
    // A saved certificate that does not cover every name asked for: it is
    // served, and an order is due at once.
    let ca = TestCa::new();
    let issued = ca.issue("saved", &[NAME]);
    std::fs::write(state_dir.join("cert.pem"), &issued.cert).unwrap();
    std::fs::write(state_dir.join("key.pem"), &issued.key).unwrap();
    let tls = bind().await;
    let settings = AcmeSettings {
        // Nobody listens there.
        directory: format!("https://127.0.0.1:{}/dir", free_port()),
        email: None,
        domains: vec![NAME.into(), "other.portico.test".into()],
        ca: None,
        dir: state_dir.clone(),
        challenge: ChallengeKind::TlsAlpn01,
        retry_first: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        lock_ttl: portico_gateway::acme::fleet::DEFAULT_LOCK_TTL,
    };
    let gw = AcmeGateway::start(None, tls, &echo, settings).await;
    eventually("two failed orders", || async {
        gw.acme_status().await["orders_failed"].as_u64() >= Some(2)
    })
    .await;
    let status = gw.acme_status().await;
    assert_eq!(status["orders_ok"], 0, "{status}");
    assert!(status["last_error"].is_string(), "{status}");
    let (leaf, _) = https_get(&trusting(&ca.pem), gw.tls_addr, NAME, "/")
        .await
        .expect("the saved certificate still served");
    assert!(!leaf.is_empty());
    let metrics = get(&format!("{}/metrics", gw.admin_url)).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("portico_acme_orders_total{result=\"failed\"}"),
        "{text}"
    );
    assert!(
        text.contains("portico_acme_next_renewal_timestamp_seconds"),
        "{text}"
    );
    gw.stop().await;
}

/// The registry lock the gateways take for NAME, as the API shows it.
async fn lock_state(registry: &TestRegistry) -> Reply {
    get(&format!("{}/v1/locks/acme:{NAME}", registry.url)).await
}

/// Several gateways following one registry: the one holding the lock
/// orders, pebble validates HTTP-01 against the OTHER one (which answers
/// from the registry), exactly one order is made, both serve the
/// certificate over SNI; then a gateway killed while holding the lock
/// delays the next order only until the lock's TTL has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_following_a_registry_order_once_and_any_answers_the_ca() {
    let registry = TestRegistry::start(fast_leases()).await;
    let echo = TestEcho::start("e1").await;
    let (plain_a, tls_a, plain_b, tls_b) = (bind().await, bind().await, bind().await, bind().await);
    let b_port = plain_b.local_addr().unwrap().port();
    // pebble validates HTTP-01 on B's cleartext port only.
    let pebble = Pebble::start(b_port, tls_b.local_addr().unwrap().port(), 3600).await;
    let fleet_settings = |dir: &Path| AcmeSettings {
        lock_ttl: Duration::from_secs(2),
        ..settings(&pebble, dir, ChallengeKind::Http01)
    };
    let ((_sa, dir_a), (_sb, dir_b)) = (data_dir(), data_dir());
    // A starts alone, so A takes the lock and orders; B's listener is
    // bound, so pebble's validation request waits for B to serve it.
    let a = AcmeGateway::start_following(
        Some(plain_a),
        tls_a,
        &echo,
        fleet_settings(&dir_a),
        Some(&registry.url),
    )
    .await;
    eventually("gateway A to hold the ACME lock", || async {
        lock_state(&registry).await.status == 200
    })
    .await;
    let b = AcmeGateway::start_following(
        Some(plain_b),
        tls_b,
        &echo,
        fleet_settings(&dir_b),
        Some(&registry.url),
    )
    .await;
    a.wait_orders(1, &pebble).await;
    let client = trusting(&pebble.root().await);
    let mut leaves = Vec::new();
    for gw in [&a, &b] {
        eventually("both gateways to serve the certificate", || async {
            https_get(&client, gw.tls_addr, NAME, "/").await.is_ok()
        })
        .await;
        leaves.push(https_get(&client, gw.tls_addr, NAME, "/").await.unwrap().0);
    }
    assert_eq!(leaves[0], leaves[1], "one certificate, served by both");
    let status_b = b.acme_status().await;
    assert_eq!(status_b["orders_ok"], 0, "B did not order: {status_b}");
    assert_eq!(status_b["orders_failed"], 0, "{status_b}");
    // B plans the renewal from the stored certificate (not "now").
    eventually(
        "B to plan the renewal from the registry certificate",
        || async { b.acme_status().await["next_renewal_unix"].as_i64() > Some(unix_s() + 60) },
    )
    .await;
    assert_eq!(a.acme_status().await["orders_ok"], 1, "exactly one order");
    a.stop().await;
    b.stop().await;

    // A gateway holding the lock dies mid-order: its CA never answers
    // (a listener that never accepts), then it is stopped with no release.
    let deleted = call(
        http::Method::DELETE,
        &format!("{}/v1/certificates/acme-{NAME}", registry.url),
    )
    .await;
    assert_eq!(deleted.status, 200);
    let black_hole = bind().await;
    let (_sh, dir_h) = data_dir();
    let hung = AcmeGateway::start_following(
        Some(bind().await),
        bind().await,
        &echo,
        AcmeSettings {
            directory: format!("https://{}/dir", black_hole.local_addr().unwrap()),
            ..fleet_settings(&dir_h)
        },
        Some(&registry.url),
    )
    .await;
    eventually("the hung gateway to hold the ACME lock", || async {
        lock_state(&registry).await.status == 200
    })
    .await;
    hung.stop().await;
    let expires = lock_state(&registry).await.json()["expires_unix_ms"]
        .as_u64()
        .unwrap();
    // B again, on the port pebble validates.
    let plain_b = TcpListener::bind(("127.0.0.1", b_port)).await.unwrap();
    let b = AcmeGateway::start_following(
        Some(plain_b),
        bind().await,
        &echo,
        fleet_settings(&dir_b),
        Some(&registry.url),
    )
    .await;
    b.wait_orders(1, &pebble).await;
    assert!(
        unix_ms() >= expires,
        "B ordered only once the dead holder's lock had lapsed"
    );
    https_get(&client, b.tls_addr, NAME, "/")
        .await
        .expect("the certificate B ordered after taking over");
    b.stop().await;
    drop(black_hole);
}

/// TLS-ALPN-01 in a fleet: the gateway holding the lock orders, pebble
/// validates on the OTHER gateway's TLS listener, which holds no answer
/// and fetches it from the registry by name; the answer is withdrawn from
/// the registry when the order ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_in_a_fleet_is_answered_by_a_gateway_that_did_not_order() {
    let registry = TestRegistry::start(fast_leases()).await;
    let echo = TestEcho::start("e1").await;
    let (tls_a, tls_b) = (bind().await, bind().await);
    // pebble validates TLS-ALPN-01 on B's TLS port only; no HTTP-01.
    let pebble = Pebble::start(free_port(), tls_b.local_addr().unwrap().port(), 3600).await;
    let fleet_settings = |dir: &Path| settings(&pebble, dir, ChallengeKind::TlsAlpn01);
    let ((_sa, dir_a), (_sb, dir_b)) = (data_dir(), data_dir());
    let a = AcmeGateway::start_following(
        None,
        tls_a,
        &echo,
        fleet_settings(&dir_a),
        Some(&registry.url),
    )
    .await;
    eventually("gateway A to hold the ACME lock", || async {
        lock_state(&registry).await.status == 200
    })
    .await;
    let b = AcmeGateway::start_following(
        None,
        tls_b,
        &echo,
        fleet_settings(&dir_b),
        Some(&registry.url),
    )
    .await;
    a.wait_orders(1, &pebble).await;
    let client = trusting(&pebble.root().await);
    eventually("B to serve the certificate A ordered", || async {
        https_get(&client, b.tls_addr, NAME, "/").await.is_ok()
    })
    .await;
    let status_b = b.acme_status().await;
    assert_eq!(status_b["orders_ok"], 0, "B did not order: {status_b}");
    assert_eq!(status_b["orders_failed"], 0, "{status_b}");
    let answer = get(&format!(
        "{}/v1/challenges/tls-alpn-01.{NAME}",
        registry.url
    ))
    .await;
    assert_eq!(answer.status, 404, "withdrawn once the order ended");
    a.stop().await;
    b.stop().await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn unix_s() -> i64 {
    (unix_ms() / 1000) as i64
}
