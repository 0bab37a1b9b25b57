//! gRPC through the gateway with real implementations on both sides:
//! Python `grpcio` (gRPC's C core, whose server refuses a call without
//! `te: trailers`) and Node `@grpc/grpc-js` (pure JavaScript), as separate
//! processes (tests/grpc/peer.py and peer.js), behind a real registry and
//! gateway on 127.0.0.1:0.
//!
//! The peers' dependencies are installed by `.ci/run` (a venv under
//! `target/grpc-venv`, npm packages under `target/grpc-node`); run
//! `tests/grpc/install.sh` to get them on a developer machine.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_registry::model::{InstanceSpec, Scheme};
use serde_json::{Value, json};
use support::*;

/// Which gRPC implementation a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Python,
    Node,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn command(which: Impl) -> Command {
    let missing = |what: &str| -> ! {
        panic!(
            "{what} is missing: run tests/grpc/install.sh (.ci/run does) to install the gRPC test peers"
        )
    };
    match which {
        Impl::Python => {
            let python = root().join("target/grpc-venv/bin/python3");
            if !python.exists() {
                missing("target/grpc-venv");
            }
            let mut c = Command::new(python);
            c.arg(root().join("tests/grpc/peer.py"));
            c
        }
        Impl::Node => {
            let modules = root().join("target/grpc-node/node_modules");
            if !modules.join("@grpc/grpc-js").exists() {
                missing("target/grpc-node/node_modules/@grpc/grpc-js");
            }
            let mut c = Command::new("node");
            c.arg(root().join("tests/grpc/peer.js"))
                .env("NODE_PATH", modules);
            c
        }
    }
}

/// A gRPC server process serving test.Echo; killed on drop.
struct Server {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Server {
    fn start(which: Impl, name: &str, extra: &[&str]) -> Server {
        let mut child = command(which)
            .arg("server")
            .arg(name)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a gRPC peer");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Server {
            child,
            port: 0,
            lines,
            name: name.to_string(),
        };
        let line = server.wait_line("PORT ");
        server.port = line["PORT ".len()..].trim().parse().unwrap();
        server
    }

    /// Waits (up to the harness deadline) for an output line starting with `prefix`.
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!("{}: no line {prefix:?} within {DEADLINE:?}", self.name),
            }
        }
    }

    /// Lines printed so far starting with `prefix`.
    fn count_lines(&self, prefix: &str) -> usize {
        self.lines
            .try_iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    fn spec(&self) -> InstanceSpec {
        let mut spec = InstanceSpec::new("127.0.0.1", self.port);
        spec.scheme = Scheme::H2c;
        spec
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `calls` (see peer.py) from a client process of `which` through
/// `target`, and returns one outcome per call.
async fn calls(which: Impl, target: &str, calls: Value) -> Vec<Value> {
    let mut cmd = command(which);
    cmd.arg("client")
        .arg(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let input = calls.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("start a gRPC client");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success(), "client failed: {out}");
        serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    })
    .await
    .unwrap()
}

async fn call(which: Impl, target: &str, one: Value) -> Value {
    calls(which, target, json!([one])).await.remove(0)
}

fn unary(text: &str) -> Value {
    json!({"kind": "unary", "method": "/test.Echo/Unary", "requests": [text]})
}

/// A metadata value by key (initial or trailing, as the client saw them).
fn meta<'a>(outcome: &'a Value, part: &str, key: &str) -> Option<&'a str> {
    outcome[part]
        .as_array()?
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_str())
}

/// The gateway's `x-portico-error` as a client saw it: trailers-only
/// responses put the head among the trailing metadata (grpcio) or the
/// initial metadata (grpc-js).
fn portico_error(outcome: &Value) -> Option<&str> {
    meta(outcome, "trailing", "x-portico-error").or(meta(outcome, "initial", "x-portico-error"))
}

/// A registry and a gateway following it, with a route `/test.Echo` to
/// service `svc` (plus `extra` route fields).
async fn setup(extra: Value) -> (TestRegistry, TestGateway) {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    put_route(&registry, &gateway, "echo", "svc", extra).await;
    (registry, gateway)
}

async fn put_route(
    registry: &TestRegistry,
    gateway: &TestGateway,
    name: &str,
    service: &str,
    extra: Value,
) {
    let mut body = json!({"path_prefix": "/test.Echo", "service": service});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = put_json(&format!("{}/v1/routes/{name}", registry.url), body).await;
    assert!(r.status.is_success(), "{:?}", r.json());
    gateway
        .wait_revision(r.json()["revision"].as_u64().unwrap())
        .await;
}

async fn register(registry: &TestRegistry, gateway: &TestGateway, id: &str, spec: &InstanceSpec) {
    let r = registry
        .client()
        .register_once("svc", id, spec)
        .await
        .unwrap();
    gateway.wait_revision(r.revision).await;
}

fn target(gateway: &TestGateway) -> String {
    gateway.addr.to_string()
}

/// Every kind of call, from `client` through the gateway to `server`.
async fn every_kind_of_call(client: Impl, server: Impl) {
    let (registry, gateway) = setup(json!({})).await;
    let upstream = Server::start(server, &format!("{server:?}"), &[]);
    register(&registry, &gateway, "one", &upstream.spec()).await;
    let big = json!({"repeat": "z", "n": 1 << 20});
    let out = calls(
        client,
        &target(&gateway),
        json!([
            unary("echo:hello"),
            {"kind": "unary", "method": "/test.Echo/Unary", "requests": ["meta"],
             "metadata": [["x-ascii", "plain"], ["x-blob-bin", "AAH+/w=="]]},
            unary("status:5:no such thing"),
            {"kind": "server_stream", "method": "/test.Echo/ServerStream", "requests": ["count:100"]},
            {"kind": "client_stream", "method": "/test.Echo/ClientStream", "requests": ["a", "bb", "ccc"]},
            {"kind": "bidi", "method": "/test.Echo/Bidi", "requests": ["ping", "pong", "again"]},
            {"kind": "unary", "method": "/test.Echo/Unary", "requests": [big]},
            unary("big:1048576"),
            {"kind": "unary", "method": "/test.Echo/Unary", "requests": ["time"], "timeout": 600},
            {"kind": "unary", "method": "/test.Echo/Unary", "requests": ["wait"], "timeout": 0.5},
            {"kind": "unary", "method": "/test.Echo/Unary", "requests": ["wait"], "cancel_after": 0.5},
        ]),
    )
    .await;
    let pair = format!("{client:?} -> {server:?}");
    for (i, o) in out.iter().enumerate().take(9) {
        if i != 2 {
            assert_eq!(o["code"], 0, "{pair}: call {i}: {o}");
        }
    }
    assert_eq!(out[0]["responses"], json!(["hello"]), "{pair}");
    let seen: Value = serde_json::from_str(out[1]["responses"][0].as_str().unwrap()).unwrap();
    assert_eq!(seen["x-ascii"], "plain", "{pair}: {seen}");
    assert_eq!(seen["x-blob-bin"], "AAH+/w==", "{pair}: {seen}");
    // A status with details and trailing metadata, ASCII and binary.
    assert_eq!(out[2]["code"], 5, "{pair}: {}", out[2]);
    assert_eq!(out[2]["details"], "no such thing", "{pair}");
    assert_eq!(meta(&out[2], "trailing", "x-detail"), Some("ascii detail"));
    assert_eq!(
        meta(&out[2], "trailing", "x-detail-bin"),
        Some("b64:AAH+/w=="),
        "{pair}: {}",
        out[2]
    );
    let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(out[3]["responses"], json!(hundred), "{pair}: in order");
    assert_eq!(out[4]["responses"], json!(["3 6"]), "{pair}");
    assert_eq!(
        out[5]["responses"],
        json!(["ping", "pong", "again"]),
        "{pair}"
    );
    // 1 MiB each way.
    assert_eq!(out[6]["responses"][0]["len"], 1 << 20, "{pair}");
    assert_eq!(
        out[6]["responses"][0]["sum"],
        u64::from(b'z') << 20,
        "{pair}"
    );
    assert_eq!(out[7]["responses"][0]["len"], 1 << 20, "{pair}");
    // The server is told the gateway's budget: the client's 600 s deadline,
    // cut to the route's 30 s timeout, less what has passed.
    let left: i64 = out[8]["responses"][0].as_str().unwrap().parse().unwrap();
    assert!((1..=30_000).contains(&left), "{pair}: {left} ms left");
    // A deadline: DEADLINE_EXCEEDED, not before it.
    assert_eq!(out[9]["code"], 4, "{pair}: {}", out[9]);
    assert!(out[9]["elapsed_ms"].as_u64().unwrap() >= 500, "{pair}");
    // A client's cancel reaches the server.
    assert_eq!(out[10]["code"], 1, "{pair}: {}", out[10]);
    upstream.wait_line("CANCELLED");
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_node_server() {
    every_kind_of_call(Impl::Python, Impl::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_to_python_server() {
    every_kind_of_call(Impl::Node, Impl::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_python_server() {
    // gRPC's C core on both sides: the server refuses a call without `te: trailers`.
    let (registry, gateway) = setup(json!({})).await;
    let upstream = Server::start(Impl::Python, "py", &[]);
    register(&registry, &gateway, "one", &upstream.spec()).await;
    let o = call(Impl::Python, &target(&gateway), unary("echo:c-core")).await;
    assert_eq!(o["code"], 0, "{o}");
    assert_eq!(o["responses"], json!(["c-core"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_grpc_statuses() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let server = Server::start(Impl::Node, "node", &[]);
    // Routes, each set up for one error; the served ones are chosen by a
    // header (gRPC metadata `x-case`).
    let case = |name: &str| json!([{"name": "x-case", "exact": name}]);
    let routes = [
        ("empty", "nobody", json!({"path_prefix": "/empty.Svc"})),
        ("dead", "dead", json!({"path_prefix": "/dead.Svc"})),
        (
            "slow",
            "svc",
            json!({"path_prefix": "/test.Echo", "headers": case("slow"), "timeout": "300ms"}),
        ),
        (
            "small",
            "svc",
            json!({"path_prefix": "/test.Echo", "headers": case("small"), "max_request_body": 1024}),
        ),
        (
            "busy",
            "svc",
            json!({"path_prefix": "/test.Echo", "headers": case("busy"), "limits": {"max_requests": 1}}),
        ),
    ];
    let mut rev = 0;
    for (name, service, mut body) in routes {
        body["service"] = json!(service);
        let r = put_json(&format!("{}/v1/routes/{name}", registry.url), body).await;
        assert!(r.status.is_success(), "{:?}", r.json());
        rev = r.json()["revision"].as_u64().unwrap();
    }
    let client = registry.client();
    for (service, port) in [("svc", server.port), ("dead", free_port())] {
        let mut spec = InstanceSpec::new("127.0.0.1", port);
        spec.scheme = Scheme::H2c;
        rev = client
            .register_once(service, "i", &spec)
            .await
            .unwrap()
            .revision;
    }
    gateway.wait_revision(rev).await;
    let on = |path: &str, text: &str| json!({"kind": "unary", "method": format!("/{path}/Unary"), "requests": [text]});
    let echo = |case: &str, text: &str| {
        json!({"kind": "unary", "method": "/test.Echo/Unary", "requests": [text],
               "metadata": [["x-case", case]]})
    };
    for which in [Impl::Python, Impl::Node] {
        let out = calls(
            which,
            &target(&gateway),
            json!([
                on("nowhere.Svc", "x"),
                on("empty.Svc", "x"),
                on("dead.Svc", "x"),
                echo("slow", "wait"),
                echo("small", &"y".repeat(4096)),
            ]),
        )
        .await;
        let want = [
            (12, "no_route"),
            (14, "no_healthy_upstream"),
            (14, "upstream_connect"),
            (4, "upstream_timeout"),
            (8, "body_too_large"),
        ];
        for (o, (code, error)) in out.iter().zip(want) {
            assert_eq!(o["code"], code, "{which:?}: {o}");
            assert_eq!(portico_error(o), Some(error), "{which:?}: {o}");
            assert!(!o["details"].as_str().unwrap().is_empty(), "{o}");
        }
    }
    // Overloaded: one call in flight holds the only slot.
    let gw = target(&gateway);
    let held = tokio::spawn(async move {
        call(
            Impl::Python,
            &gw,
            json!({"kind": "unary", "method": "/test.Echo/Unary", "requests": ["wait"],
                   "metadata": [["x-case", "busy"]], "timeout": 10}),
        )
        .await
    });
    // Only once it holds the slot: a client process can take seconds to
    // start on a loaded machine, and calls before then are rightly served.
    eventually("the held call to take the route's only slot", || async {
        let endpoints = get(&format!("{}/endpoints", gateway.admin_url))
            .await
            .json();
        endpoints["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"] == "busy" && r["requests_in_flight"] == 1)
    })
    .await;
    let busy = target(&gateway);
    let mut refused = Value::Null;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        refused = call(Impl::Node, &busy, echo("busy", "echo:x")).await;
        if refused["code"] != 0 {
            break;
        }
    }
    assert_eq!(refused["code"], 14, "{refused}");
    assert_eq!(portico_error(&refused), Some("overloaded"), "{refused}");
    held.abort();
    // No gRPC client may ever see an HTTP status instead of a gRPC one.
    let metrics = get(&format!("{}/metrics", gateway.admin_url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"portico_grpc_calls_total{route="<none>",grpc_status="12"}"#),
        "{text}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_of_a_lone_instance_is_unavailable_then_served() {
    // The implicit /echo route of `portico up` (a package-less gRPC service).
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let first = Server::start(Impl::Python, "first", &[]);
    let r = client
        .register_once("echo", "first", &first.spec())
        .await
        .unwrap();
    gateway.wait_revision(r.revision).await;
    let echo = json!({"kind": "unary", "method": "/echo/Unary", "requests": ["echo:up"]});
    let o = call(Impl::Python, &target(&gateway), echo.clone()).await;
    assert_eq!(o["code"], 0, "{o}");
    // The only instance goes away (deregistered as it stops).
    client.deregister("echo", "first").await.unwrap();
    drop(first);
    let gw = target(&gateway);
    let mut o = Value::Null;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        o = call(Impl::Python, &gw, echo.clone()).await;
        if o["code"] != 0 {
            break;
        }
    }
    assert_eq!(
        o["code"], 14,
        "UNAVAILABLE while it restarts, not UNIMPLEMENTED: {o}"
    );
    assert_eq!(portico_error(&o), Some("no_healthy_upstream"), "{o}");
    // It comes back on another port.
    let second = Server::start(Impl::Python, "second", &[]);
    let r = client
        .register_once("echo", "second", &second.spec())
        .await
        .unwrap();
    gateway.wait_revision(r.revision).await;
    let o = call(Impl::Python, &target(&gateway), echo).await;
    assert_eq!(o["code"], 0, "{o}");
    assert_eq!(o["responses"], json!(["up"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_unary_calls_are_retried_on_another_instance() {
    let (registry, gateway) = setup(json!({
        "retry": {"attempts": 2, "on": ["unavailable"]},
    }))
    .await;
    let flaky = Server::start(Impl::Python, "flaky", &["--unavailable"]);
    let good = Server::start(Impl::Node, "good", &[]);
    register(&registry, &gateway, "flaky", &flaky.spec()).await;
    register(&registry, &gateway, "good", &good.spec()).await;
    let batch: Vec<Value> = (0..6).map(|i| unary(&format!("echo:{i}"))).collect();
    for which in [Impl::Python, Impl::Node] {
        let out = calls(which, &target(&gateway), json!(batch)).await;
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o["code"], 0, "{which:?} call {i}: {o}");
            assert_eq!(meta(o, "initial", "x-server"), Some("good"), "{o}");
        }
    }
    assert!(
        flaky.count_lines("CALL") > 0,
        "round robin sent some first tries to the flaky instance"
    );
    // A streaming call is not held back for a retry: it works as before.
    let o = call(
        Impl::Python,
        &target(&gateway),
        json!({"kind": "bidi", "method": "/test.Echo/Bidi", "requests": ["a", "b"]}),
    )
    .await;
    assert_eq!(o["code"], 0, "{o}");
}

async fn set_health(server: &Server, state: &str) {
    let o = call(
        Impl::Python,
        &format!("127.0.0.1:{}", server.port),
        json!({"kind": "unary", "method": "/test.Control/SetHealth", "requests": [format!("test.Echo={state}")]}),
    )
    .await;
    assert_eq!(o["code"], 0, "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_an_instance_out_of_rotation() {
    let (registry, gateway) = setup(json!({
        "health_check": {"grpc_service": "test.Echo", "interval": "200ms", "timeout": "200ms",
                          "unhealthy_threshold": 1, "healthy_threshold": 1},
    }))
    .await;
    let a = Server::start(Impl::Python, "a", &[]);
    let b = Server::start(Impl::Python, "b", &[]);
    register(&registry, &gateway, "a", &a.spec()).await;
    register(&registry, &gateway, "b", &b.spec()).await;
    let answered_by = |gw: String| async move {
        let out = calls(Impl::Node, &gw, json!([unary("echo:1"), unary("echo:2")])).await;
        out.iter()
            .map(|o| meta(o, "initial", "x-server").unwrap_or("-").to_string())
            .collect::<Vec<_>>()
    };
    set_health(&a, "NOT_SERVING").await;
    let gw = target(&gateway);
    eventually("a to be out of rotation", || {
        let gw = gw.clone();
        async move { answered_by(gw).await == ["b", "b"] }
    })
    .await;
    set_health(&a, "SERVING").await;
    eventually("a to be back", || {
        let gw = gw.clone();
        async move { answered_by(gw).await.contains(&"a".to_string()) }
    })
    .await;

    // The registry's own check: the instance turns critical, then passing.
    let c = Server::start(Impl::Python, "c", &[]);
    let mut spec = c.spec();
    spec.check = Some(Box::new(
        serde_json::from_value(json!({
            "path": "/grpc.health.v1.Health/Check", "grpc_service": "test.Echo",
            "interval": "200ms", "timeout": "200ms", "successes": 1, "failures": 1,
        }))
        .unwrap(),
    ));
    registry
        .client()
        .register_once("checked", "c", &spec)
        .await
        .unwrap();
    let url = format!("{}/v1/services/checked/instances", registry.url);
    let is = |want: &'static str| {
        let url = url.clone();
        move || {
            let url = url.clone();
            async move { get(&url).await.json()["instances"][0]["status"] == want }
        }
    };
    set_health(&c, "NOT_SERVING").await;
    eventually("the registry's check to make c critical", is("critical")).await;
    set_health(&c, "SERVING").await;
    eventually("the registry's check to make c passing", is("passing")).await;
}

/// A gRPC-Web message frame: flag, length, bytes.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Splits a gRPC-Web response body into its frames (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes after the last frame");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_are_translated_both_ways() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (registry, gateway) = setup(json!({"grpc_web": true})).await;
    let upstream = Server::start(Impl::Python, "py", &[]);
    register(&registry, &gateway, "one", &upstream.spec()).await;
    let url = format!("{}/test.Echo/Unary", gateway.url);
    let http = http();
    // Binary gRPC-Web over HTTP/1.1, as a browser's fetch sends it.
    let r = send(
        &http,
        Method::POST,
        &url,
        &[
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
        ],
        Bytes::from(frame(0, b"echo:web")),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // The upstream said `application/grpc`; the client gets its gRPC-Web form.
    assert_eq!(r.headers["content-type"], "application/grpc-web");
    let f = frames(&r.body);
    assert_eq!(f[0], (0, b"web".to_vec()), "{f:?}");
    assert_eq!(f[1].0, 0x80, "the trailers frame: {f:?}");
    let trailers = String::from_utf8(f[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
    assert!(trailers.contains("x-server: py\r\n"), "{trailers:?}");

    // Text: base64 both ways, an error status in the trailers frame.
    let r = send(
        &http,
        Method::POST,
        &url,
        &[
            ("content-type", "application/grpc-web-text"),
            ("accept", "application/grpc-web-text"),
        ],
        Bytes::from(b64.encode(frame(0, b"status:9:not now"))),
    )
    .await
    .unwrap();
    assert_eq!(r.headers["content-type"], "application/grpc-web-text");
    let raw = b64.decode(&r.body).unwrap();
    let f = frames(&raw);
    let trailers = String::from_utf8(f.last().unwrap().1.clone()).unwrap();
    assert!(trailers.contains("grpc-status: 9\r\n"), "{trailers:?}");
    assert!(
        trailers.contains("grpc-message: not now\r\n"),
        "{trailers:?}"
    );
    // Binary metadata travels in base64 (C core leaves out the padding).
    assert!(trailers.contains("x-detail-bin: AAH+/w"), "{trailers:?}");

    // The gateway's own error, to a gRPC-Web client: trailers-only.
    let r = send(
        &http,
        Method::POST,
        &format!("{}/nowhere.Svc/Unary", gateway.url),
        &[("content-type", "application/grpc-web")],
        Bytes::from(frame(0, b"x")),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "12");
    assert_eq!(r.headers["x-portico-error"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_what_a_grpc_call_gets() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let e = get(&format!(
        "{}/explain?method=POST&path=/pkg.Svc/Call&content_type=application/grpc",
        gateway.admin_url
    ))
    .await
    .json();
    assert!(
        e["grpc"]["answer"]
            .as_str()
            .unwrap()
            .contains("grpc-status 12 UNIMPLEMENTED"),
        "{e}"
    );
    let bad = get(&format!("{}/explain?content_type=%01", gateway.admin_url)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

/// An h2c upstream that answers with the request trailer `x-req-trailer`
/// it received (in the header `x-got`) and response trailers of its own
/// (`grpc-status`, `grpc-message` and `x-resp-trailer`).
async fn trailer_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let te = req
                            .headers()
                            .get("te")
                            .map(|v| v.to_str().unwrap().to_string());
                        // Every value of the fields the gateway adds, as
                        // hyper's HPACK decoder read them.
                        let seen: Vec<String> = [
                            "x-forwarded-for",
                            "x-forwarded-proto",
                            "x-forwarded-host",
                            "x-request-id",
                            "te",
                        ]
                        .iter()
                        .map(|name| {
                            let values: Vec<&str> = req
                                .headers()
                                .get_all(*name)
                                .iter()
                                .map(|v| v.to_str().unwrap())
                                .collect();
                            format!("{name}={}", values.join("|"))
                        })
                        .collect();
                        let seen = seen.join(";");
                        let body = req.into_body().collect().await.unwrap();
                        let got = body
                            .trailers()
                            .and_then(|t| t.get("x-req-trailer"))
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_else(|| "none".into());
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "fine".parse().unwrap());
                        trailers.insert("x-resp-trailer", "from-upstream".parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                body.to_bytes(),
                            )),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ];
                        let resp = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("x-got", got)
                            .header("x-te", te.unwrap_or_else(|| "none".into()))
                            .header("x-seen", seen)
                            .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                                frames,
                            )))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunked_trailers_and_an_h2_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (registry, gateway) = setup(json!({})).await;
    let (addr, upstream) = trailer_upstream().await;
    let mut spec = InstanceSpec::new("127.0.0.1", addr.port());
    spec.scheme = Scheme::H2c;
    register(&registry, &gateway, "t", &spec).await;
    let mut s = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    s.write_all(
        b"POST /test.Echo/Unary HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\
          content-type: application/grpc\r\n\
          te: trailers\r\ntrailer: x-req-trailer\r\nconnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-req-trailer: from-client\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    // The client's chunked trailers reach the HTTP/2 upstream, with te: trailers.
    assert!(text.contains("x-got: from-client"), "{text}");
    assert!(text.contains("x-te: trailers"), "{text}");
    // The forwarding fields and the request id, each once (the native
    // HTTP/2 client sends them encoded after the request's own fields).
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("{text}"));
    let seen = format!(
        "x-seen: x-forwarded-for=127.0.0.1;x-forwarded-proto=http;x-forwarded-host=gw;\
         x-request-id={id};te=trailers\r\n"
    );
    assert!(text.contains(&seen), "{seen} in {text}");
    // The call's status reaches an HTTP/1.1 client that said
    // `te: trailers`, in the chunked trailer section: the gateway declares
    // the gRPC status fields in `Trailer`, which hyper's HTTP/1.1 encoder
    // requires. Other trailing metadata cannot be declared before it is
    // seen, and is left out.
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains("trailer: grpc-status, grpc-message, grpc-status-details-bin"),
        "{text}"
    );
    let (_, trailer_section) = rest.rsplit_once("\r\n0\r\n").unwrap();
    assert!(trailer_section.contains("grpc-status: 0\r\n"), "{text}");
    assert!(trailer_section.contains("grpc-message: fine\r\n"), "{text}");
    assert!(!text.contains("x-resp-trailer"), "{text}");
    upstream.abort();
}
