//! Tokens with roles on the registry's API: every write refused without a
//! token (401), with an unknown one (401) and with a weaker role (403), each
//! refusal leaving the revision where it was; reads and the watch with a read
//! token; gateways (in-process, the binary with `PORTICO_TOKEN`, and the one
//! inside `up`) following a secured registry; the binary refusing an open
//! control plane off loopback; and the gateway's admin API never reachable
//! through its public port.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use portico::RegistryOptions;
use portico_gateway::GatewayOptions;
use portico_gateway::proxy::ProxySettings;
use portico_registry::auth::Tokens;
use portico_registry::client::ClientError;
use portico_registry::model::WatchEvent;
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;

const ADMIN: &str = "admin-secret-0123";
/// A register token for every service.
const REGISTER: &str = "register-any-0123";
/// A register token limited to `svc-a`.
const REGISTER_A: &str = "register-a-0123";
/// A register token limited to `svc-b`.
const REGISTER_B: &str = "register-b-0123";
const READ: &str = "read-secret-0123";
const CHALLENGE: &str = r#"Bearer realm="portico""#;

fn tokens() -> Tokens {
    let mut t = Tokens::default();
    for spec in [
        format!("admin:{ADMIN}"),
        format!("register:{REGISTER}"),
        format!("register[svc-a]:{REGISTER_A}"),
        format!("register[svc-b]:{REGISTER_B}"),
        format!("read:{READ}"),
    ] {
        t.add_flag("test", &spec).unwrap();
    }
    t
}

/// One request with an optional bearer token and an optional JSON body.
async fn authed(method: Method, url: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    send(&http(), method.clone(), url, &headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// The registry's revision, from the open readiness probe.
async fn revision(url: &str) -> u64 {
    get(&format!("{url}/readyz")).await.json()["revision"]
        .as_u64()
        .unwrap()
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(r.headers["www-authenticate"], CHALLENGE, "{what}");
    assert_eq!(r.json()["code"], "unauthorized", "{what}");
}

fn assert_forbidden(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}");
    assert_eq!(r.json()["code"], "forbidden", "{what}");
}

/// Every instance write of the API, in an order where each succeeds after
/// the one before: (name, method, path below the instance, body).
fn instance_writes() -> Vec<(&'static str, Method, &'static str, Option<Value>)> {
    vec![
        (
            "register",
            Method::PUT,
            "",
            Some(json!({"address": "127.0.0.1", "port": 9, "ttl": "30s"})),
        ),
        ("heartbeat", Method::PUT, "/heartbeat", None),
        ("drain", Method::POST, "/drain", None),
        ("deregister", Method::DELETE, "", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_refused_without_the_right_role_and_changes_nothing() {
    let registry = TestRegistry::start_secured(tokens()).await;
    let instance = format!("{}/v1/services/svc-a/instances/a-1", registry.url);
    for (name, method, suffix, body) in instance_writes() {
        let url = format!("{instance}{suffix}");
        let before = revision(&registry.url).await;
        let r = authed(method.clone(), &url, None, body.as_ref()).await;
        assert_unauthorized(&r, &format!("{name} without a token"));
        let r = authed(method.clone(), &url, Some("not-a-token"), body.as_ref()).await;
        assert_unauthorized(&r, &format!("{name} with an unknown token"));
        let r = authed(method.clone(), &url, Some(&READ[1..]), body.as_ref()).await;
        assert_unauthorized(&r, &format!("{name} with part of a token"));
        for (weak, role) in [(READ, "read"), (REGISTER_B, "register for svc-b")] {
            let r = authed(method.clone(), &url, Some(weak), body.as_ref()).await;
            assert_forbidden(&r, &format!("{name} with a {role} token"));
        }
        assert_eq!(
            revision(&registry.url).await,
            before,
            "a refused {name} moved the revision"
        );

        let r = authed(method.clone(), &url, Some(REGISTER_A), body.as_ref()).await;
        assert!(
            r.status.is_success(),
            "{name} with a register token for svc-a: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    // The refusals really were the only thing in the way: the writes moved
    // the revision (register, drain, deregister).
    assert_eq!(revision(&registry.url).await, 3);

    // Admin, and a register token for every service, may do all of them.
    for (token, service) in [(ADMIN, "svc-x"), (REGISTER, "svc-y")] {
        let instance = format!("{}/v1/services/{service}/instances/i", registry.url);
        for (name, method, suffix, body) in instance_writes() {
            let url = format!("{instance}{suffix}");
            let r = authed(method, &url, Some(token), body.as_ref()).await;
            assert!(
                r.status.is_success(),
                "{name} on {service}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_token_for_one_service_cannot_touch_another() {
    let registry = TestRegistry::start_secured(tokens()).await;
    let b1 = format!("{}/v1/services/svc-b/instances/b-1", registry.url);
    let spec = json!({"address": "127.0.0.1", "port": 9, "ttl": "30s"});
    let r = authed(Method::PUT, &b1, Some(REGISTER_B), Some(&spec)).await;
    assert_eq!(r.status, StatusCode::OK);
    let before = revision(&registry.url).await;

    // svc-a's token can neither add to svc-b nor heartbeat, drain or remove
    // svc-b's instance.
    let b2 = format!("{}/v1/services/svc-b/instances/b-2", registry.url);
    let r = authed(Method::PUT, &b2, Some(REGISTER_A), Some(&spec)).await;
    assert_forbidden(&r, "register in svc-b with svc-a's token");
    for (method, url) in [
        (Method::PUT, format!("{b1}/heartbeat")),
        (Method::POST, format!("{b1}/drain")),
        (Method::DELETE, b1.clone()),
    ] {
        let r = authed(method.clone(), &url, Some(REGISTER_A), None).await;
        assert_forbidden(&r, &format!("{method} {url} with svc-a's token"));
    }
    assert_eq!(revision(&registry.url).await, before);
    let list = authed(
        Method::GET,
        &format!("{}/v1/services/svc-b/instances", registry.url),
        Some(READ),
        None,
    )
    .await
    .json();
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    assert_eq!(list["instances"][0]["status"], "passing");

    // The same token can register in its own service, through the SDK too.
    let client = registry.client().with_token(REGISTER_A).unwrap();
    let answer = client
        .register_once(
            "svc-a",
            "a-1",
            &portico_registry::model::InstanceSpec::new("127.0.0.1", 9),
        )
        .await
        .unwrap();
    assert!(answer.revision > before);
    match client
        .register_once(
            "svc-b",
            "b-3",
            &portico_registry::model::InstanceSpec::new("127.0.0.1", 9),
        )
        .await
    {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("svc-a's token registered in svc-b: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_instances_need_admin() {
    let registry = TestRegistry::start_secured(tokens()).await;
    // Endpoints another branch adds (routes) and ones that do not exist at
    // all fall under admin without being listed anywhere.
    for (method, path) in [
        (Method::PUT, "/v1/routes/web"),
        (Method::DELETE, "/v1/routes/web"),
        (Method::POST, "/v1/services"),
        (Method::POST, "/v1/services/svc-a/instances"),
    ] {
        let url = format!("{}{path}", registry.url);
        let body = json!({});
        let what = format!("{method} {path}");
        let r = authed(method.clone(), &url, None, Some(&body)).await;
        assert_unauthorized(&r, &format!("{what} without a token"));
        for weak in [READ, REGISTER, REGISTER_A] {
            let r = authed(method.clone(), &url, Some(weak), Some(&body)).await;
            assert_forbidden(&r, &format!("{what} with {weak}"));
        }
        // Admin gets past authorisation to the router's own answer.
        let r = authed(method.clone(), &url, Some(ADMIN), Some(&body)).await;
        assert!(
            r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
            "{what} with admin: {}",
            r.status
        );
    }
    assert_eq!(revision(&registry.url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_lists_and_watches_and_probes_stay_open() {
    let registry = TestRegistry::start_secured(tokens()).await;
    let spec = json!({"address": "127.0.0.1", "port": 9});
    let r = authed(
        Method::PUT,
        &format!("{}/v1/services/svc-a/instances/a-1", registry.url),
        Some(ADMIN),
        Some(&spec),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    for path in ["/healthz", "/readyz"] {
        let r = get(&format!("{}{path}", registry.url)).await;
        assert_eq!(r.status, StatusCode::OK, "{path} without a token");
    }
    for path in [
        "/v1/services",
        "/v1/services/svc-a/instances",
        "/v1/services/svc-a/instances?index=0&wait=1s",
    ] {
        let url = format!("{}{path}", registry.url);
        assert_unauthorized(&authed(Method::GET, &url, None, None).await, path);
        for token in [READ, REGISTER_B, ADMIN] {
            let r = authed(Method::GET, &url, Some(token), None).await;
            assert_eq!(r.status, StatusCode::OK, "{path} with {token}");
            assert_eq!(r.headers["x-portico-index"], "1", "{path} with {token}");
        }
    }

    // The raw watch: refused without a token, streamed with one.
    let watch = format!("{}/v1/watch?index=0", registry.url);
    assert_unauthorized(&authed(Method::GET, &watch, None, None).await, "watch");
    let req = http::Request::get(&watch)
        .header("authorization", format!("Bearer {READ}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, http().request(req))
        .await
        .expect("watch answered in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("watch stream stalled")
        .expect("watch stream ended")
        .unwrap();
    let first = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
    assert!(first.starts_with(r#"{"type":"snapshot""#), "{first}");

    // The SDK's watcher sends its token too; without one it gets nothing.
    let mut watcher = registry.client().with_token(READ).unwrap().watch(0);
    match tokio::time::timeout(DEADLINE, watcher.next()).await {
        Ok(WatchEvent::Snapshot { instances, .. }) => assert_eq!(instances.len(), 1),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    match registry.client().instances("svc-a").await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("a tokenless SDK call was answered: {other:?}"),
    }
}

fn gateway_options(registry_url: &str, token: Option<&str>) -> GatewayOptions {
    GatewayOptions {
        registry: vec![registry_url.to_string()],
        registry_token: token.map(|t| t.to_string().into()),
        auto_routes: true,
        proxy: ProxySettings {
            access_log: false,
            ..Default::default()
        },
        ..GatewayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_registry_token_follows_a_secured_registry() {
    let registry = TestRegistry::start_secured(tokens()).await;
    let echo = TestEcho::start("e1").await;
    // Started first, so it has had every chance to follow if it could.
    let tokenless = TestGateway::start(gateway_options(&registry.url, None)).await;
    let options = gateway_options(&registry.url, Some(READ));
    let shown = format!("{options:?}");
    assert!(
        !shown.contains(READ),
        "options' Debug shows the token: {shown}"
    );
    let gateway = TestGateway::start(options).await;

    let client = registry.client().with_token(REGISTER_A).unwrap();
    let rev = client
        .register_once("svc-a", "e1", &echo.spec())
        .await
        .unwrap()
        .revision;
    gateway.wait_revision(rev).await;
    let r = get(&format!("{}/svc-a/hello", gateway.url)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.instance(), "e1");

    assert_eq!(
        tokenless.applied_revision(),
        0,
        "a gateway without a token followed a secured registry"
    );
    let r = get(&format!("{}/svc-a/hello", tokenless.url)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_tokens_keeps_its_own_gateway_following() {
    let (_dir, data) = data_dir();
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_url = format!("http://{}", control.local_addr().unwrap());
    let gateway_url = format!("http://{}", public.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let up = tokio::spawn(portico::run_up(
        control,
        portico::GatewayListeners::plain(public, None),
        RegistryOptions {
            data_dir: data,
            etcd: None,
            lease: fast_leases(),
            tokens: tokens(),
            tls: None,
            check_ca: Vec::new(),
        },
        gateway_options("http://unused.invalid:1", None),
        async {
            let _ = stop_rx.await;
        },
    ));
    wait_healthy(&control_url).await;
    let echo = TestEcho::start("e1").await;
    let client = portico_registry::client::RegistryClient::new(&[control_url.as_str()])
        .unwrap()
        .with_token(REGISTER_A)
        .unwrap();
    client
        .register_once("svc-a", "e1", &echo.spec())
        .await
        .unwrap();
    let url = format!("{gateway_url}/svc-a/hello");
    eventually("the in-process gateway to route to svc-a", || async {
        get(&url).await.status == StatusCode::OK
    })
    .await;
    // The minted token is a read token: it does not open the API to writes.
    assert_unauthorized(
        &authed(
            Method::DELETE,
            &format!("{control_url}/v1/services/svc-a/instances/e1"),
            None,
            None,
        )
        .await,
        "tokenless delete under up",
    );
    let _ = stop_tx.send(());
    up.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_paths_on_the_public_port_do_not_reach_the_admin_api() {
    let registry = TestRegistry::start(fast_leases()).await;
    let echo = TestEcho::start("e1").await;
    let gateway = TestGateway::following(&registry.url).await;
    let rev = registry
        .client()
        .register_once("web", "e1", &echo.spec())
        .await
        .unwrap()
        .revision;
    gateway.wait_revision(rev).await;
    // The admin API answers on its own listener ...
    let admin = get(&format!("{}/endpoints", gateway.admin_url)).await;
    assert_eq!(admin.status, StatusCode::OK);
    // ... and its paths on the public port get the gateway's routing answer.
    for path in ["/endpoints", "/healthz", "/metrics"] {
        let r = get(&format!("{}{path}", gateway.url)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path} on the public port");
        assert_eq!(r.json()["code"], "no_route", "{path} on the public port");
    }
    assert_eq!(
        get(&format!("{}/web/x", gateway.url)).await.status,
        StatusCode::OK
    );
}

/// Runs the binary to completion (it is expected to exit by itself), with
/// stderr captured.
async fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portico");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portico {args:?} did not exit within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_an_open_control_plane_off_loopback() {
    let (dir, _) = data_dir();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    for command in ["registry", "up"] {
        let (status, stderr) =
            run_to_exit(&[command, "--control", "0.0.0.0:0", "--data-dir", store_arg]).await;
        assert!(!status.success(), "{command}: started open on 0.0.0.0");
        assert!(stderr.contains("--insecure"), "{command}: {stderr}");
        // Refused before anything was opened: no store, so no socket either
        // (sockets are bound before the store is opened).
        assert!(!store.exists(), "{command}: the store was opened");
    }

    // A bad tokens file is refused naming the field.
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, "[[token]]\nsecret = \"s\"\nrole = \"writer\"\n").unwrap();
    let (status, stderr) = run_to_exit(&[
        "registry",
        "--control",
        "127.0.0.1:0",
        "--data-dir",
        store_arg,
        "--tokens-file",
        file.to_str().unwrap(),
    ])
    .await;
    assert!(!status.success());
    assert!(stderr.contains("token[0].role"), "{stderr}");

    // With --insecure it starts; with tokens (file and flag) it starts and
    // enforces them.
    let port = free_port();
    let control = format!("0.0.0.0:{port}");
    let _open = ChildProcess::spawn(&[
        "registry",
        "--control",
        &control,
        "--data-dir",
        store_arg,
        "--insecure",
    ]);
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    assert_eq!(
        get(&format!("{url}/v1/services")).await.status,
        StatusCode::OK
    );

    std::fs::write(
        &file,
        format!("[[token]]\nsecret = \"{ADMIN}\"\nrole = \"admin\"\n"),
    )
    .unwrap();
    let port = free_port();
    let control = format!("0.0.0.0:{port}");
    let store2 = dir.path().join("store2");
    let read_flag = format!("read:{READ}");
    let _secured = ChildProcess::spawn(&[
        "registry",
        "--control",
        &control,
        "--data-dir",
        store2.to_str().unwrap(),
        "--tokens-file",
        file.to_str().unwrap(),
        "--token",
        &read_flag,
    ]);
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    let services = format!("{url}/v1/services");
    assert_unauthorized(&authed(Method::GET, &services, None, None).await, "CLI");
    let r = authed(Method::GET, &services, Some(READ), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = authed(
        Method::DELETE,
        &format!("{url}/v1/services/web/instances/w"),
        Some(READ),
        None,
    )
    .await;
    assert_forbidden(&r, "read token deleting via the CLI-configured registry");
    let r = authed(
        Method::DELETE,
        &format!("{url}/v1/services/web/instances/w"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_follows_a_secured_registry_with_portico_token() {
    let registry = TestRegistry::start_secured(tokens()).await;
    let echo = TestEcho::start("e1").await;
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "gateway",
            "--registry",
            &registry.url,
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--auto-routes",
            "true",
            "--no-access-log",
        ])
        .env("PORTICO_TOKEN", READ)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn portico gateway");
    let _gateway = ChildProcess { child };
    registry
        .client()
        .with_token(REGISTER_A)
        .unwrap()
        .register_once("svc-a", "e1", &echo.spec())
        .await
        .unwrap();
    let url = format!("http://{listen}/svc-a/hello");
    let http = http();
    eventually("the gateway binary to route to svc-a", || async {
        send(&http, Method::GET, &url, &[], Bytes::new())
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_secret_is_read_only_by_tokens_that_may_hold_keys() {
    let registry = TestRegistry::start_secured(tokens()).await;
    const SECRET: &str = "0123456789abcdef0123456789abcdef-hmac";
    let route = json!({
        "path_prefix": "/api", "service": "svc-a",
        "filters": [{"type": "jwt", "algorithms": ["HS256"], "secret": SECRET}]
    });
    let url = format!("{}/v1/routes/api", registry.url);
    let r = authed(Method::PUT, &url, Some(ADMIN), Some(&route)).await;
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let list = format!("{}/v1/routes", registry.url);
    for (token, sees) in [(ADMIN, true), (READ, false), (REGISTER, false)] {
        for url in [&url, &list] {
            let r = authed(Method::GET, url, Some(token), None).await;
            assert_eq!(r.status, StatusCode::OK, "{url} with {token}");
            let body = String::from_utf8_lossy(&r.body);
            assert_eq!(body.contains(SECRET), sees, "{url} with {token}: {body}");
            assert!(body.contains("HS256"), "{body}");
        }
    }
    // The watch: the snapshot's copy of the route carries no secret either.
    let mut watcher = registry.client().with_token(READ).unwrap().watch(0);
    match tokio::time::timeout(DEADLINE, watcher.next()).await {
        Ok(WatchEvent::Snapshot { routes, .. }) => {
            assert_eq!(routes.len(), 1);
            assert_eq!(routes[0].filters[0].secret, None);
            assert_eq!(routes[0].filters[0].secret_withheld, Some(true));
            // A gateway given this copy still builds the route, with a jwt
            // filter that refuses every token: it fails closed, and no
            // broader route takes its requests.
            let route = portico_registry::route::compile(&routes[0], "").unwrap();
            match &route.filters[0] {
                portico_registry::filter::Filter::Jwt(jwt) => {
                    assert_eq!(jwt.keys, portico_registry::filter::JwtKeys::Withheld)
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

const GATEWAY: &str = "gateway-secret-0123";

/// Gateway records: a `gateway` token writes and deletes them (and still
/// may not write a route), a `read` token only reads them; a bad body or
/// id is refused naming the field and changes nothing; and a gateway
/// following the secured registry with its token registers itself.
#[tokio::test]
async fn gateway_records_are_written_with_a_gateway_token_only() {
    let mut t = tokens();
    t.add_flag("test", &format!("gateway:{GATEWAY}")).unwrap();
    let registry = TestRegistry::start_secured(t).await;
    let url = format!("{}/v1/gateways/edge-1", registry.url);
    let body = json!({"addresses": ["127.0.0.1:8080"], "version": "0.1.0", "ttl": "10s"});

    let before = revision(&registry.url).await;
    let read = authed(Method::PUT, &url, Some(READ), Some(&body)).await;
    assert_forbidden(&read, "a read token writing a gateway record");
    let register = authed(Method::PUT, &url, Some(REGISTER), Some(&body)).await;
    assert_forbidden(&register, "a register token writing a gateway record");
    for (bad, field) in [
        (
            json!({"addresses": ["nowhere"], "version": "0.1.0"}),
            "addresses[0]",
        ),
        (
            json!({"addresses": ["127.0.0.1:8080"], "version": "0.1.0", "ttl": "1ms"}),
            "ttl",
        ),
        (json!({"addresses": ["127.0.0.1:8080"]}), "version"),
        (
            json!({"addresses": ["127.0.0.1:8080"], "version": "1", "color": "red"}),
            "color",
        ),
    ] {
        let r = authed(Method::PUT, &url, Some(GATEWAY), Some(&bad)).await;
        assert!(r.status.is_client_error(), "{bad}: {}", r.status);
        assert_eq!(r.json()["field"], field, "{bad}: {}", r.json());
    }
    let r = authed(
        Method::PUT,
        &format!("{}/v1/gateways/a%20b", registry.url),
        Some(GATEWAY),
        Some(&body),
    )
    .await;
    assert_eq!(r.json()["field"], "id", "{}", r.json());
    assert_eq!(
        revision(&registry.url).await,
        before,
        "a refusal changed something"
    );

    let ok = authed(Method::PUT, &url, Some(GATEWAY), Some(&body)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json());
    assert_eq!(ok.json()["id"], "edge-1");
    let listed = authed(
        Method::GET,
        &format!("{}/v1/gateways", registry.url),
        Some(READ),
        None,
    )
    .await;
    assert_eq!(
        listed.json()["gateways"][0]["id"],
        "edge-1",
        "{}",
        listed.json()
    );
    let route = authed(
        Method::PUT,
        &format!("{}/v1/routes/r", registry.url),
        Some(GATEWAY),
        Some(&json!({"upstreams": ["127.0.0.1:9"]})),
    )
    .await;
    assert_forbidden(&route, "a gateway token writing a route");
    let gone = authed(Method::DELETE, &url, Some(READ), None).await;
    assert_forbidden(&gone, "a read token deleting a gateway record");
    let gone = authed(Method::DELETE, &url, Some(GATEWAY), None).await;
    assert_eq!(gone.json()["removed"], true, "{}", gone.json());

    let mut options = GatewayOptions {
        registry: vec![registry.url.clone()],
        registry_token: Some(GATEWAY.to_string().into()),
        announce: Some(portico_gateway::cluster::Announce::new("follower")),
        ..GatewayOptions::default()
    };
    options.proxy.access_log = false;
    let _gw = TestGateway::start(options).await;
    eventually(
        "the following gateway to register with its token",
        || async {
            let list = authed(
                Method::GET,
                &format!("{}/v1/gateways", registry.url),
                Some(READ),
                None,
            )
            .await;
            list.json()["gateways"][0]["id"] == "follower"
        },
    )
    .await;
}
