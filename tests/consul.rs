//! The Consul-compatible API: a real Consul client (Debian's
//! `python3-consul`, tests/consul/client.py) against the built `portico up`,
//! and, for clients that cannot run here, the exact requests they send
//! (paths, parameters, headers, bodies as their sources build them) with
//! the fields they parse checked. The registry tests run on the store under
//! test (`PORTICO_TEST_STORE=etcd` runs them on a real etcd).

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_registry::auth::Tokens;
use portico_registry::lease::LeasePolicy;
use serde_json::{Value, json};
use support::{
    ChildProcess, FaultyBackend, Reply, TestEcho, TestRegistry, data_dir, eventually, fast_leases,
    free_port, put_json, wait_healthy,
};

async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    support::send(
        &support::http(),
        method.clone(),
        url,
        headers,
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, "").await
}

/// A Consul write as clients send it: JSON without a `Content-Type`.
async fn put(url: &str, headers: &[(&str, &str)], body: Value) -> Reply {
    send(Method::PUT, url, headers, &body.to_string()).await
}

fn index(r: &Reply) -> u64 {
    r.headers
        .get("x-consul-index")
        .expect("X-Consul-Index on every answer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Service id -> check status, from `/v1/health/service/{name}`.
async fn statuses(url: &str, service: &str, query: &str) -> Vec<(String, String)> {
    let r = get(&format!("{url}/v1/health/service/{service}?{query}"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Service"]["ID"].as_str().unwrap().to_string(),
                e["Checks"][0]["Status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn status_of(url: &str, service: &str, id: &str) -> Option<String> {
    statuses(url, service, "")
        .await
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
}

/// `--store` for `portico up`: a fresh etcd when the registry suites run
/// there (`PORTICO_TEST_STORE=etcd`), kept alive by the returned handle.
async fn store_for_up() -> (String, Option<Box<dyn std::any::Any>>) {
    #[cfg(feature = "etcd")]
    if support::store_under_test() == "etcd" {
        let cluster = support::etcd::EtcdCluster::start(1).await;
        let store = format!("etcd:{}", cluster.endpoints().join(","));
        return (store, Some(Box::new(cluster)));
    }
    ("embedded".to_string(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consul_registers_passes_is_routed_lapses_and_deregisters() {
    let (_dir, data) = data_dir();
    let (gw_port, reg_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{gw_port}");
    let control = format!("127.0.0.1:{reg_port}");
    let (store, _etcd) = store_for_up().await;
    let _up = ChildProcess::spawn(&[
        "up",
        "--store",
        &store,
        "--listen",
        &listen,
        "--control",
        &control,
        "--data-dir",
        data.to_str().unwrap(),
        "--no-access-log",
        "--admin",
        "127.0.0.1:0",
        "--sweep-interval",
        "100ms",
    ]);
    wait_healthy(&format!("http://{control}")).await;
    let echo = TestEcho::start("consul-echo").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul/client.py");
    let args = [
        script.to_string(),
        reg_port.to_string(),
        format!("http://{listen}"),
        echo.addr.port().to_string(),
    ];
    // Debian's python3-consul is installed for the system Python (`python3`
    // on PATH may be another one without it); .ci/run installs it.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .args(&args)
            .output()
            .expect("/usr/bin/python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "python-consul failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("python-consul: all steps passed"),
        "{stdout}"
    );
}

/// Prometheus' `consul_sd` (discovery/consul/consul.go, through HashiCorp's
/// Go client): `/v1/agent/self` for `Config.Datacenter`, then
/// `/v1/catalog/services` and `/v1/health/service/{name}` as blocking
/// queries (`dc`, `index`, `stale`, `wait=120000ms`; Go sorts the
/// parameters), the token in `X-Consul-Token`. It keeps an answer only when
/// `X-Consul-Index` moved, and reads `Node.Node`, `Node.Address`,
/// `Service.{ID,Address,Port,Tags,Meta}` and the checks' `Status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_consul_sd_requests() {
    let mut tokens = Tokens::default();
    tokens.add_flag("--token #1", "read:prom").unwrap();
    tokens.add_flag("--token #2", "register:svc").unwrap();
    let registry = TestRegistry::start_secured(tokens).await;
    let url = &registry.url;
    let token = [("X-Consul-Token", "prom")];
    let r = get(&format!("{url}/v1/agent/self"), &token).await;
    assert_eq!(r.json()["Config"]["Datacenter"], "dc1");
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[("X-Consul-Token", "svc")],
        json!({"Name": "web", "ID": "web-1", "Address": "127.0.0.1", "Port": 8081,
            "Tags": ["prod"], "Meta": {"version": "1"}, "Check": {"TTL": "30s"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));

    let r = get(
        &format!("{url}/v1/catalog/services?dc=dc1&stale=&wait=120000ms"),
        &token,
    )
    .await;
    assert_eq!(r.json(), json!({"web": ["prod"]}));
    let services_index = index(&r);
    assert!(services_index >= 1);
    let r = get(
        &format!("{url}/v1/health/service/web?dc=dc1&stale=&wait=120000ms"),
        &token,
    )
    .await;
    let entry = &r.json()[0];
    assert_eq!(entry["Node"]["Node"], "portico");
    assert!(entry["Node"]["Address"].is_string());
    assert_eq!(entry["Service"]["ID"], "web-1");
    assert_eq!(entry["Service"]["Address"], "127.0.0.1");
    assert_eq!(entry["Service"]["Port"], 8081);
    assert_eq!(entry["Service"]["Tags"], json!(["prod"]));
    assert_eq!(entry["Service"]["Meta"], json!({"version": "1"}));
    assert_eq!(entry["Checks"][0]["Status"], "passing");
    let health_index = index(&r);

    // Both watches block until a registration wakes them, each with a
    // larger index.
    let blocked =
        |path: String| tokio::spawn(async move { get(&path, &[("X-Consul-Token", "prom")]).await });
    let services = blocked(format!(
        "{url}/v1/catalog/services?dc=dc1&index={services_index}&stale=&wait=120000ms"
    ));
    let health = blocked(format!(
        "{url}/v1/health/service/web?dc=dc1&index={health_index}&stale=&wait=120000ms"
    ));
    let r = put(
        &format!("{url}/v1/agent/service/register?token=svc"),
        &[],
        json!({"Name": "web", "ID": "web-2", "Address": "127.0.0.2", "Port": 8082,
            "Check": {"TTL": "30s"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let services = services.await.unwrap();
    assert!(index(&services) > services_index);
    let health = health.await.unwrap();
    assert!(index(&health) > health_index);
    assert_eq!(health.json().as_array().unwrap().len(), 2);

    // An index ahead of the store is answered at once (Consul resets).
    let ahead = index(&health) + 1000;
    let r = get(
        &format!("{url}/v1/health/service/web?index={ahead}&wait=120000ms"),
        &token,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(index(&r), index(&health), "never backwards");
    assert_eq!(r.headers["x-consul-knownleader"], "true");
    assert_eq!(r.headers["x-consul-lastcontact"], "0");
}

/// Spring Cloud Consul (ConsulAutoRegistration / TtlScheduler /
/// ConsulDiscoveryClient, through the Ecwid consul-api client, which puts
/// the token in `?token=`): registers `{ID, Name, Tags, Address, Meta,
/// Port, Check}` (an HTTP check with `Interval`, `Timeout` and
/// `DeregisterCriticalServiceAfter`, or a `TTL` check it heartbeats with
/// `PUT /v1/agent/check/pass/service:{id}`), lists instances with
/// `/v1/health/service/{name}?passing=false&tag=...`, and watches
/// `/v1/catalog/services?wait=55s&index=N`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_cloud_consul_requests() {
    let registry = TestRegistry::start(fast_leases()).await;
    let url = &registry.url;
    let backend = FaultyBackend::start("orders").await;
    let port = backend.addr.port();
    let r = put(
        &format!("{url}/v1/agent/service/register?token="),
        &[("Content-Type", "application/json")],
        json!({"ID": format!("orders-{port}"), "Name": "orders",
            "Tags": ["secure=false"], "Address": "127.0.0.1",
            "Meta": {"secure": "false"}, "Port": port, "EnableTagOverride": null,
            "Check": {"Interval": "200ms", "Timeout": "100ms",
                "HTTP": format!("http://127.0.0.1:{port}/actuator/health"),
                "DeregisterCriticalServiceAfter": "30m", "TLSSkipVerify": null}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let id = format!("orders-{port}");
    let r = get(
        &format!("{url}/v1/health/service/orders?passing=false&tag=secure%3Dfalse&token="),
        &[],
    )
    .await;
    let entries = r.json();
    assert_eq!(entries[0]["Service"]["ID"], id.as_str());
    assert_eq!(entries[0]["Service"]["Meta"]["secure"], "false");
    assert_eq!(entries[0]["Checks"][0]["Type"], "http");
    // Kept by its check alone (no lease): the check's failures show.
    let native = get(&format!("{url}/v1/services/orders/instances"), &[]).await;
    let instance = &native.json()["instances"][0];
    assert!(instance.get("ttl").is_none());
    assert!(instance["check"]["deregister_critical_after"].is_string());
    assert_eq!(instance["check"]["path"], "/actuator/health");
    backend.set_failing(true);
    eventually("the HTTP check to make orders critical", || async {
        status_of(url, "orders", &id).await.as_deref() == Some("critical")
    })
    .await;
    let passing_only = statuses(url, "orders", "passing=true").await;
    assert!(passing_only.is_empty(), "{passing_only:?}");
    backend.set_failing(false);
    eventually("the HTTP check to make orders passing again", || async {
        status_of(url, "orders", &id).await.as_deref() == Some("passing")
    })
    .await;

    // The TTL flavour: registered, heartbeated by check id.
    let r = get(&format!("{url}/v1/catalog/services?wait=55s&token="), &[]).await;
    let watched = index(&r);
    let watch = {
        let url = url.clone();
        tokio::spawn(async move {
            get(
                &format!("{url}/v1/catalog/services?wait=55s&index={watched}&token="),
                &[],
            )
            .await
        })
    };
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[],
        json!({"ID": "billing-8080", "Name": "billing", "Address": "127.0.0.1", "Port": 8080,
            "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1m"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let woken = watch.await.unwrap();
    assert!(index(&woken) > watched);
    assert!(woken.json()["billing"].is_array());
    let r = put(
        &format!("{url}/v1/agent/check/pass/service:billing-8080?token="),
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
}

/// Traefik's Consul catalog provider (pkg/provider/consulcatalog, through
/// HashiCorp's Go client): `/v1/catalog/services`, then for each service
/// `/v1/catalog/service/{name}` (reading `ServiceID`, `ServiceAddress`,
/// `ServicePort`, `ServiceTags`, `ServiceMeta`, `Address`, `Node`,
/// `Datacenter`) and `/v1/health/service/{name}` (the checks' `Status`);
/// with `watch`, blocking `/v1/catalog/services?index=N` (no `wait`: the
/// default) and `/v1/health/state/any?index=N`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_consul_catalog_requests() {
    let registry = TestRegistry::start(fast_leases()).await;
    let url = &registry.url;
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[],
        json!({"Name": "whoami", "ID": "whoami-1", "Address": "127.0.0.1", "Port": 9001,
            "Tags": ["traefik.enable=true"], "Meta": {"zone": "a"}, "Check": {"TTL": "30s"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = get(&format!("{url}/v1/catalog/services"), &[]).await;
    assert_eq!(r.json()["whoami"], json!(["traefik.enable=true"]));
    let r = get(&format!("{url}/v1/catalog/service/whoami"), &[]).await;
    let e = &r.json()[0];
    assert_eq!(e["ServiceID"], "whoami-1");
    assert_eq!(e["ServiceName"], "whoami");
    assert_eq!(e["ServiceAddress"], "127.0.0.1");
    assert_eq!(e["ServicePort"], 9001);
    assert_eq!(e["ServiceTags"], json!(["traefik.enable=true"]));
    assert_eq!(e["ServiceMeta"], json!({"zone": "a"}));
    assert_eq!(
        (e["Node"].as_str(), e["Datacenter"].as_str()),
        (Some("portico"), Some("dc1"))
    );
    assert!(e["Address"].is_string());
    let r = get(&format!("{url}/v1/health/service/whoami"), &[]).await;
    assert_eq!(r.json()[0]["Checks"][0]["Status"], "passing");

    let r = get(&format!("{url}/v1/health/state/any"), &[]).await;
    let state_index = index(&r);
    assert_eq!(r.json()[0]["CheckID"], "service:whoami-1");
    let watch = {
        let url = url.clone();
        tokio::spawn(async move {
            get(
                &format!("{url}/v1/health/state/any?index={state_index}"),
                &[],
            )
            .await
        })
    };
    let r = put(
        &format!("{url}/v1/agent/check/fail/service:whoami-1?note=down"),
        &[],
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let woken = watch.await.unwrap();
    assert!(index(&woken) > state_index);
    assert_eq!(woken.json()[0]["Status"], "critical");
    let r = get(&format!("{url}/v1/health/state/critical"), &[]).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = get(&format!("{url}/v1/health/state/passing"), &[]).await;
    assert_eq!(r.json(), json!([]));
}

/// Checks' statuses set by the client: warn and fail renew the lease (a
/// fail is not a lapse: native heartbeats still work), update sets any
/// status, a pass after a lapse brings the instance back; native
/// instances show with a synthesised `service:{id}` check, a draining one
/// as critical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_updates_and_native_instances() {
    // Lapsed instances stay listed long enough to be passed back.
    let registry = TestRegistry::start(LeasePolicy {
        critical_grace: std::time::Duration::from_secs(60),
        ..fast_leases()
    })
    .await;
    let url = &registry.url;
    let r = put_json(
        &format!("{url}/v1/services/api/instances/a1"),
        json!({"address": "127.0.0.1", "port": 7001, "ttl": "30s"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&format!("{url}/v1/health/checks/api"), &[]).await;
    assert_eq!(r.json()[0]["CheckID"], "service:a1");
    assert_eq!(r.json()[0]["Type"], "ttl");
    let check = |verb: &'static str| {
        let url = url.clone();
        async move {
            let r = send(
                Method::GET,
                &format!("{url}/v1/agent/check/{verb}/service:a1?note=n"),
                &[],
                "",
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{verb}: {}", text(&r));
        }
    };
    check("warn").await;
    assert_eq!(
        status_of(url, "api", "a1").await.as_deref(),
        Some("warning")
    );
    assert!(statuses(url, "api", "passing").await.is_empty());
    assert_eq!(statuses(url, "api", "passing=false").await.len(), 1);
    check("fail").await;
    assert_eq!(
        status_of(url, "api", "a1").await.as_deref(),
        Some("critical")
    );
    let hb = support::call(
        Method::PUT,
        &format!("{url}/v1/services/api/instances/a1/heartbeat"),
    )
    .await;
    assert_eq!(
        hb.status,
        StatusCode::OK,
        "a client-failed check keeps its lease"
    );
    let r = put(
        &format!("{url}/v1/agent/check/update/service:a1"),
        &[],
        json!({"Status": "passing", "Output": "fine"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(
        status_of(url, "api", "a1").await.as_deref(),
        Some("passing")
    );
    // A pass that changes nothing costs what a heartbeat costs: no write.
    let written_at = || async {
        let r = get(&format!("{url}/v1/services/api/instances"), &[]).await;
        r.json()["instances"][0]["revision"].as_u64().unwrap()
    };
    let before = written_at().await;
    check_verb(url, "pass", "service:a1").await;
    check_verb(url, "pass", "service:a1:2").await;
    assert_eq!(
        written_at().await,
        before,
        "a pass of a passing check wrote"
    );
    let r = put(
        &format!("{url}/v1/agent/check/update/service:a1"),
        &[],
        json!({"Status": "sideways"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(text(&r).contains("Status"));

    // Drained: critical to Consul, gone from passing queries.
    support::call(
        Method::POST,
        &format!("{url}/v1/services/api/instances/a1/drain"),
    )
    .await;
    assert_eq!(
        status_of(url, "api", "a1").await.as_deref(),
        Some("critical")
    );

    // A TTL lapses: critical; a pass brings it back.
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[],
        json!({"Name": "api", "ID": "a2", "Address": "127.0.0.1", "Port": 7002,
            "Check": {"TTL": "1s"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    eventually("a2's TTL to lapse", || async {
        status_of(url, "api", "a2").await.as_deref() == Some("critical")
    })
    .await;
    check_verb(url, "pass", "service:a2").await;
    assert_eq!(
        status_of(url, "api", "a2").await.as_deref(),
        Some("passing")
    );
    let r = send(
        Method::GET,
        &format!("{url}/v1/agent/check/pass/service:nope"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[],
        json!({"Name": "other", "ID": "a2", "Address": "127.0.0.1", "Port": 7002,
            "Check": {"TTL": "1s"}}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "an id moved to another service"
    );
    assert!(text(&r).contains("ID"), "{}", text(&r));
    let r = send(
        Method::PUT,
        &format!("{url}/v1/agent/service/deregister/a2"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(status_of(url, "api", "a2").await, None);
}

async fn check_verb(url: &str, verb: &str, check: &str) {
    let r = send(
        Method::PUT,
        &format!("{url}/v1/agent/check/{verb}/{check}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{verb} {check}: {}", text(&r));
}

/// A TCP check connects to the instance's own address and port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_follows_the_port() {
    let registry = TestRegistry::start(fast_leases()).await;
    let url = &registry.url;
    let mut backend = FaultyBackend::start("tcp").await;
    let port = backend.addr.port();
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[],
        json!({"Name": "tcp", "ID": "t1", "Address": "127.0.0.1", "Port": port,
            "Check": {"TCP": format!("127.0.0.1:{port}"), "Interval": "200ms"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(
        status_of(url, "tcp", "t1").await.as_deref(),
        Some("passing")
    );
    let r = get(&format!("{url}/v1/health/checks/tcp"), &[]).await;
    assert_eq!(r.json()[0]["Type"], "tcp");
    backend.kill().await;
    eventually("the TCP check to make t1 critical", || async {
        status_of(url, "tcp", "t1").await.as_deref() == Some("critical")
    })
    .await;
    let r = put(
        &format!("{url}/v1/agent/service/register"),
        &[],
        json!({"Name": "tcp", "ID": "t2", "Address": "127.0.0.1", "Port": port,
            "Check": {"TCP": "10.9.9.9:80", "Interval": "1s"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(text(&r).contains("Check.TCP"), "{}", text(&r));
}

/// Bad registrations: 400, plain text naming the field, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_naming_the_field() {
    let registry = TestRegistry::start(fast_leases()).await;
    let url = &registry.url;
    // On etcd, reads answer from the replica's mirror of etcd, which takes
    // in the replica's own session key a moment after start: count from
    // the store's revision once reads reflect it.
    eventually("reads to reflect the store's revision", || async {
        let store = get(&format!("{url}/readyz"), &[]).await.json()["revision"].as_u64();
        // The index is at least 1 (Consul clients read 0 as "no index").
        let store = store.map(|r| r.max(1));
        store
            == Some(index(
                &get(&format!("{url}/v1/catalog/services"), &[]).await,
            ))
    })
    .await;
    let before = index(&get(&format!("{url}/v1/catalog/services"), &[]).await);
    let ttl = json!({"TTL": "10s"});
    for (body, field) in [
        ("{\"Name\": ".to_string(), "decode"),
        (json!(["web"]).to_string(), "body"),
        (json!({"Address": "127.0.0.1", "Port": 80, "Check": ttl}).to_string(), "Name"),
        (json!({"Name": "web", "Address": "127.0.0.1", "Check": ttl}).to_string(), "Port"),
        (json!({"Name": "web", "Address": "127.0.0.1", "Port": "80", "Check": ttl}).to_string(), "Port"),
        (json!({"Name": 7, "Address": "127.0.0.1", "Port": 80, "Check": ttl}).to_string(), "Name"),
        (json!({"Name": "Web_Service", "Port": 80, "Address": "127.0.0.1", "Check": ttl}).to_string(), "Name"),
        (json!({"Name": "web", "ID": "Web:1", "Port": 80, "Address": "127.0.0.1", "Check": ttl}).to_string(), "ID"),
        (json!({"Name": "web", "Port": 80, "Address": "127.0.0.1", "Meta": {"a": 1}, "Check": ttl}).to_string(), "Meta"),
        (json!({"Name": "web", "Port": 80, "Address": "127.0.0.1", "Check": {"TTL": "1ms"}}).to_string(), "Check.TTL"),
        (json!({"Name": "web", "Port": 80, "Address": "127.0.0.1",
            "Check": {"HTTP": "http://example.com:80/h", "Interval": "10s"}}).to_string(), "Check.HTTP"),
    ] {
        let r = send(Method::PUT, &format!("{url}/v1/agent/service/register"), &[], &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", text(&r));
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
        assert!(text(&r).contains(field), "{body}: {}", text(&r));
    }
    let r = get(&format!("{url}/v1/catalog/services"), &[]).await;
    assert_eq!(r.json(), json!({}), "nothing stored");
    assert_eq!(index(&r), before, "no revision spent");
    let r = get(&format!("{url}/v1/health/service/Not_A_Name?filter=x"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(text(&r).contains("filter"));
}

/// Consul's three ways of sending a token map onto Portico's roles; the
/// writes need `register` (covering the service) or `admin`, even sent as
/// GET; refusals are 403 in plain text, as Consul's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_tokens_map_onto_portico_roles() {
    let mut tokens = Tokens::default();
    for (n, spec) in ["read:rd", "register[web]:regweb", "admin:adm"]
        .iter()
        .enumerate()
    {
        tokens.add_flag(&format!("--token #{n}"), spec).unwrap();
    }
    let registry = TestRegistry::start_secured(tokens).await;
    let url = &registry.url;
    let body = |name: &str| {
        json!({"Name": name, "ID": format!("{name}-1"), "Address": "127.0.0.1", "Port": 80,
            "Check": {"TTL": "30s"}})
    };
    let register = format!("{url}/v1/agent/service/register");
    let refused = |r: Reply, says: &str| {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert!(text(&r).contains(says), "{}", text(&r));
    };
    refused(
        get(&format!("{url}/v1/catalog/services"), &[]).await,
        "Permission denied",
    );
    refused(
        get(
            &format!("{url}/v1/catalog/services"),
            &[("X-Consul-Token", "bogus")],
        )
        .await,
        "ACL not found",
    );
    refused(
        put(&register, &[("X-Consul-Token", "rd")], body("web")).await,
        "Permission denied",
    );
    refused(
        put(&format!("{register}?token=regweb"), &[], body("api")).await,
        "Permission denied",
    );
    let r = put(&format!("{register}?token=regweb"), &[], body("web")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = put(&register, &[("Authorization", "Bearer adm")], body("api")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let pass = format!("{url}/v1/agent/check/pass/service:web-1");
    refused(
        get(&format!("{pass}?token=rd"), &[]).await,
        "Permission denied",
    );
    refused(
        get(
            &format!("{url}/v1/agent/check/pass/service:api-1?token=regweb"),
            &[],
        )
        .await,
        "api",
    );
    let r = get(&pass, &[("Authorization", "Bearer regweb")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = get(&format!("{url}/v1/health/service/web?token=rd"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // The native API keeps its one way: Authorization: Bearer.
    let r = get(&format!("{url}/v1/services"), &[("X-Consul-Token", "rd")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
