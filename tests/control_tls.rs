//! The control plane over HTTPS (issue 12): the registry API served with
//! `--control-tls-cert`, followed by the SDK and gateways that trust its CA
//! (`--registry-ca`), refused by clients that do not; the watch over both
//! HTTP/1.1 and HTTP/2, and resumed after a registry restart; `portico up`'s
//! own gateway following its registry over HTTPS; refusals at startup.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portico::{GatewayListeners, RegistryOptions};
use portico_gateway::GatewayOptions;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::tls::cert::CertFiles;
use portico_gateway::tls::{ServerTls, TlsSettings};
use portico_registry::client::{ClientError, RegistryClient};
use support::tls::{TestCa, run};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// A registry serving HTTPS only, with the certificate in `files`.
struct TlsRegistry {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TlsRegistry {
    async fn start(listener: TcpListener, data_dir: &Path, files: &CertFiles, ca: &TestCa) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let options = RegistryOptions {
            data_dir: data_dir.to_path_buf(),
            etcd: None,
            lease: fast_leases(),
            tokens: Default::default(),
            tls: Some(control_tls(files)),
            check_ca: Vec::new(),
        };
        let task = tokio::spawn(portico::run_registry(listener, options, async {
            let _ = rx.await;
        }));
        let r = TlsRegistry {
            url: format!("https://{addr}"),
            stop: Some(tx),
            task,
        };
        let client = r.client(ca);
        eventually("the HTTPS registry to answer", || async {
            assert!(!r.task.is_finished(), "the registry stopped at startup");
            client.instances("probe").await.is_ok()
        })
        .await;
        r
    }

    fn client(&self, ca: &TestCa) -> RegistryClient {
        RegistryClient::builder(&[self.url.as_str()])
            .ca_file(&ca.path)
            .build()
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
    }
}

fn control_tls(files: &CertFiles) -> ServerTls {
    let settings = TlsSettings {
        certs: vec![files.clone()],
        ..TlsSettings::default()
    };
    ServerTls::new(&settings, Default::default()).unwrap()
}

fn quiet(options: GatewayOptions) -> GatewayOptions {
    GatewayOptions {
        auto_routes: true,
        proxy: ProxySettings {
            access_log: false,
            ..Default::default()
        },
        ..options
    }
}

/// The echo instance the gateway routes `/echo/` to, if any.
async fn routed_to(gateway: &TestGateway) -> String {
    let reply = get(&format!("{}/echo/", gateway.url)).await;
    match reply.status.is_success() {
        true => reply.instance(),
        false => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_over_https_serves_the_sdk_and_a_gateway_and_refuses_strangers() {
    let ca = TestCa::new();
    let files = ca.write("registry", &["localhost", "127.0.0.1"]);
    let (_dir, data) = data_dir();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let registry = TlsRegistry::start(listener, &data, &files, &ca).await;

    // The SDK registers and heartbeats over HTTPS.
    let sdk = registry.client(&ca);
    let echo = TestEcho::start("e1").await;
    let registration = sdk.register("echo", "e1", echo.spec()).await.unwrap();
    assert!(sdk.heartbeat("echo", "e1").await.unwrap());

    // A gateway trusting the CA follows the registry and routes.
    let registry_tls =
        portico_registry::client::tls::client_config(std::slice::from_ref(&ca.path)).unwrap();
    let gateway = TestGateway::start(quiet(GatewayOptions {
        registry: vec![registry.url.clone()],
        registry_tls: Some(registry_tls),
        ..GatewayOptions::default()
    }))
    .await;
    eventually(
        "the gateway to route to e1 over the HTTPS watch",
        || async { routed_to(&gateway).await == "e1" },
    )
    .await;

    // A client without the CA is refused, and told why.
    let stranger = RegistryClient::new(&[registry.url.as_str()]).unwrap();
    match stranger.instances("echo").await {
        Err(ClientError::Unreachable(why)) => assert!(
            why.contains("certificate") && why.contains("UnknownIssuer"),
            "the error should name the TLS problem: {why}"
        ),
        other => panic!("a client without the CA must be refused: {other:?}"),
    }
    // A cleartext request gets no HTTP answer from the TLS-only port.
    let plain = RegistryClient::new(&[format!("http://{addr}")]).unwrap();
    assert!(
        matches!(
            plain.instances("echo").await,
            Err(ClientError::Unreachable(_))
        ),
        "a cleartext request must not be served"
    );

    // The watch streams over HTTP/2 and HTTP/1.1 (curl, trusting the CA).
    let watch = format!("{}/v1/watch?index=0", registry.url);
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (_, out, err) = run(
            "curl",
            &[
                "-sSN",
                flag,
                "--cacert",
                ca.path.to_str().unwrap(),
                "--max-time",
                "1",
                "-w",
                "\nversion=%{http_version}\n",
                &watch,
            ],
            CMD_TIMEOUT,
        )
        .await;
        assert!(
            out.contains("\"snapshot\"") && out.contains("e1"),
            "{flag}: the watch should stream a snapshot naming e1: {out} {err}"
        );
        assert!(
            out.contains(&format!("version={version}\n")),
            "{flag}: {out}"
        );
    }

    // The registry restarts on the same address: the gateway's watch
    // resumes over TLS and sees what changed meanwhile.
    drop(registration);
    registry.stop().await;
    eventually("the gateway to see the registry gone", || async {
        !gateway
            .status
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let registry = TlsRegistry::start(listener, &data, &files, &ca).await;
    let echo2 = TestEcho::start("e2").await;
    let sdk = registry.client(&ca);
    sdk.deregister("echo", "e1").await.unwrap();
    sdk.register_once("echo", "e2", &echo2.spec())
        .await
        .unwrap();
    eventually("the gateway to route to e2 after the restart", || async {
        routed_to(&gateway).await == "e2"
    })
    .await;
    gateway.stop().await;
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_over_https_follows_its_own_registry() {
    let ca = TestCa::new();
    // Not the address the in-process gateway dials (127.0.0.1), and a CA
    // it was never given: it trusts the certificate it serves itself.
    let files = ca.write("control", &["localhost"]);
    let (_dir, data) = data_dir();
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = control.local_addr().unwrap();
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_url = format!("http://{}", public.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let up = tokio::spawn(portico::run_up(
        control,
        GatewayListeners::plain(public, None),
        RegistryOptions {
            data_dir: data,
            etcd: None,
            lease: fast_leases(),
            tokens: Default::default(),
            tls: Some(control_tls(&files)),
            check_ca: Vec::new(),
        },
        quiet(GatewayOptions::default()),
        async {
            let _ = rx.await;
        },
    ));
    // An outside client verifies the name and the CA as usual.
    let echo = TestEcho::start("e1").await;
    let sdk = RegistryClient::builder(&[format!("https://localhost:{}", control_addr.port())])
        .ca_file(&ca.path)
        .build()
        .unwrap();
    eventually("the SDK to register over HTTPS", || async {
        sdk.register_once("echo", "e1", &echo.spec()).await.is_ok()
    })
    .await;
    eventually("up's gateway to route to e1", || async {
        let reply = get(&format!("{public_url}/echo/")).await;
        reply.status.is_success() && reply.instance() == "e1"
    })
    .await;
    let _ = tx.send(());
    up.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_control_certificates_are_refused_at_startup_naming_the_file() {
    let ca = TestCa::new();
    let files = ca.write("registry", &["localhost"]);
    let garbage = ca.dir.join("garbage.pem");
    std::fs::write(&garbage, "not PEM").unwrap();
    let missing = ca.dir.join("missing.pem");
    let (_dir, data) = data_dir();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    for (cert, key, named) in [
        (path(&missing), path(&files.key), "missing.pem"),
        (path(&garbage), path(&files.key), "garbage.pem"),
        (path(&files.cert), path(&garbage), "garbage.pem"),
    ] {
        let args = [
            "registry",
            "--control",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--control-tls-cert",
            &cert,
            "--control-tls-key",
            &key,
        ];
        let (ok, _, err) = run(env!("CARGO_BIN_EXE_portico"), &args, CMD_TIMEOUT).await;
        assert!(!ok, "{args:?} must not start");
        assert!(
            err.contains(named) && err.contains("--control-tls-cert"),
            "{args:?}: the error should name {named}: {err}"
        );
    }
    // One without the other: refused by the argument parser.
    let args = ["registry", "--control-tls-cert", &path(&files.cert)];
    let (ok, _, err) = run(env!("CARGO_BIN_EXE_portico"), &args, CMD_TIMEOUT).await;
    assert!(!ok && err.contains("--control-tls-key"), "{err}");
}
