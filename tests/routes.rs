//! Routes through the control plane: CRUD and validation on `/v1/routes`,
//! gateways applying changes live (and converging), tables swapped under a
//! streaming request, route-file reloads, and `/explain`.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use serde_json::{Value, json};
use support::*;

/// The registry's current revision, as `GET /v1/routes` reports it.
async fn revision(registry: &str) -> u64 {
    let r = get(&format!("{registry}/v1/routes")).await;
    assert_eq!(r.status, StatusCode::OK);
    r.headers["x-portico-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn put_route(registry: &str, name: &str, body: Value) -> Reply {
    put_json(&format!("{registry}/v1/routes/{name}"), body).await
}

async fn put_raw(url: &str, content_type: &str, body: &str) -> Reply {
    send(
        &http(),
        Method::PUT,
        url,
        &[("content-type", content_type)],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

fn quiet(mut options: GatewayOptions) -> GatewayOptions {
    options.proxy.access_log = false;
    options
}

/// A gateway following `registry` without auto routes: only API routes.
async fn api_gateway(registry: &str) -> TestGateway {
    TestGateway::start(quiet(GatewayOptions {
        registry: vec![registry.to_string()],
        ..GatewayOptions::default()
    }))
    .await
}

#[tokio::test]
async fn route_crud_and_every_validation_rule() {
    let reg = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/routes", reg.url);

    // Create: 201, the revision moves, GET gives back what was written.
    let r0 = revision(&reg.url).await;
    let body =
        json!({"path_prefix": "/a", "service": "web", "retry": {"attempts": 2, "on": ["503"]}});
    let created = put_route(&reg.url, "a", body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(created.json()["change"], "created");
    let r1 = created.json()["revision"].as_u64().unwrap();
    assert!(r1 > r0);
    let got = get(&format!("{base}/a")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["path_prefix"], "/a");
    assert_eq!(got.json()["name"], "a");
    assert_eq!(got.json()["retry"]["attempts"], 2);

    // The same body again: 200 unchanged, no new revision.
    let same = put_route(&reg.url, "a", body).await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.json()["change"], "unchanged");
    assert_eq!(revision(&reg.url).await, r1);

    // A dry run answers what would change and changes nothing.
    let dry = put_json(
        &format!("{base}/a?dry_run=true"),
        json!({"path_prefix": "/a2", "service": "web"}),
    )
    .await;
    assert_eq!(dry.status, StatusCode::OK);
    assert_eq!(dry.json()["change"], "updated");
    assert_eq!(dry.json()["dry_run"], true);
    assert_eq!(dry.json()["previous"]["path_prefix"], "/a");
    assert_eq!(revision(&reg.url).await, r1);
    assert_eq!(get(&format!("{base}/a")).await.json()["path_prefix"], "/a");

    // Update for real.
    let updated = put_route(
        &reg.url,
        "a",
        json!({"path_prefix": "/a2", "service": "web"}),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.json()["change"], "updated");
    let r2 = updated.json()["revision"].as_u64().unwrap();
    assert!(r2 > r1);

    // A second route, then the list in name order.
    let b = put_route(
        &reg.url,
        "b",
        json!({"path": "/b", "upstreams": ["127.0.0.1:9"]}),
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED);
    let list = get(&base).await.json();
    let names: Vec<&str> = list["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);

    // Every refusal: status, code, field, and the revision unchanged.
    let before = revision(&reg.url).await;
    let cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        (
            "c",
            json!({"service": "web", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "unknown_field",
            "colour",
        ),
        (
            "c",
            json!({"service": "web", "retry": {"attempts": 2, "on": ["503"], "tries": 1}}),
            StatusCode::BAD_REQUEST,
            "unknown_field",
            "retry.tries",
        ),
        (
            "c",
            json!({"service": "web", "path_regex": "/x/(["}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "path_regex",
        ),
        (
            "c",
            json!({"service": "web", "path_regex": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "path_regex",
        ),
        (
            "c",
            json!({"service": "web", "headers": [{"name": "x-v", "regex": "("}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "headers[0].regex",
        ),
        (
            "c",
            json!({"service": "web", "headers": [{"name": "x-v", "exact": "1", "present": true}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "headers[0].exact",
        ),
        (
            "c",
            json!({"service": "web", "query": [{"name": "", "present": true}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "query[0].name",
        ),
        (
            "c",
            json!({"service": "web", "retry": {"attempts": 9, "on": ["503"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "retry.attempts",
        ),
        (
            "c",
            json!({"service": "web", "timeout": "0s"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "timeout",
        ),
        (
            "c",
            json!({"service": "web", "timeout": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "timeout",
        ),
        (
            "c",
            json!({"service": "web", "breaker": {"open_for": "10s", "max_open": "1s"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "breaker.max_open",
        ),
        (
            "c",
            json!({"service": "web", "lb": "fastest"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "lb",
        ),
        (
            "c",
            json!({"service": "Web_"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "service",
        ),
        (
            "c",
            json!({"path": "/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "service",
        ),
        (
            "c",
            json!({"path": "/x", "strip_prefix": true, "service": "web"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "strip_prefix",
        ),
        (
            "c",
            json!({"name": "other", "service": "web"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "name",
        ),
        (
            "bad%20name",
            json!({"service": "web"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "name",
        ),
        // Same match as route "b" (an exact path), under another name.
        (
            "c",
            json!({"path": "/b", "service": "web"}),
            StatusCode::CONFLICT,
            "route_conflict",
            "path",
        ),
        // Same match as "a" once methods and hosts are normalised.
        (
            "c",
            json!({"path_prefix": "/a2", "service": "other"}),
            StatusCode::CONFLICT,
            "route_conflict",
            "path_prefix",
        ),
    ];
    for (name, body, status, code, field) in cases {
        let r = put_route(&reg.url, name, body.clone()).await;
        let j = r.json();
        assert_eq!(r.status, status, "{body}: {j}");
        assert_eq!(j["code"], code, "{body}: {j}");
        assert_eq!(j["field"], field, "{body}: {j}");
        assert_eq!(
            revision(&reg.url).await,
            before,
            "{body} moved the revision"
        );
    }
    let not_json = put_raw(&format!("{base}/c"), "text/plain", "{}").await;
    assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let malformed = put_raw(&format!("{base}/c"), "application/json", "{\"service\":").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["code"], "malformed_body");
    let bad_param = put_json(
        &format!("{base}/c?dry_run=maybe"),
        json!({"service": "web"}),
    )
    .await;
    assert_eq!(bad_param.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_param.json()["field"], "dry_run");
    let unknown_param = put_json(&format!("{base}/c?force=1"), json!({"service": "web"})).await;
    assert_eq!(unknown_param.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown_param.json()["field"], "force");
    assert_eq!(revision(&reg.url).await, before);
    assert_eq!(
        get(&format!("{base}/c")).await.status,
        StatusCode::NOT_FOUND
    );

    // Delete: dry run first, then for real; a second delete is a 404.
    let dry = call(Method::DELETE, &format!("{base}/b?dry_run=true")).await;
    assert_eq!(dry.status, StatusCode::OK);
    assert_eq!(dry.json()["change"], "deleted");
    assert_eq!(get(&format!("{base}/b")).await.status, StatusCode::OK);
    assert_eq!(revision(&reg.url).await, before);
    let gone = call(Method::DELETE, &format!("{base}/b")).await;
    assert_eq!(gone.status, StatusCode::OK);
    assert!(gone.json()["revision"].as_u64().unwrap() > before);
    assert_eq!(
        get(&format!("{base}/b")).await.status,
        StatusCode::NOT_FOUND
    );
    let again = call(Method::DELETE, &format!("{base}/b")).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // Routes survive a registry restart? They are plain keys in the durable
    // store; process.rs covers kill -9 for instances on the same store.
}

#[tokio::test]
async fn gateways_apply_route_changes_live() {
    let reg = TestRegistry::start(fast_leases()).await;
    let client = reg.client();
    let stable = TestEcho::start("stable").await;
    let canary = TestEcho::start("canary").await;
    client
        .register_once("stable", "s1", &stable.spec())
        .await
        .unwrap();
    client
        .register_once("canary", "c1", &canary.spec())
        .await
        .unwrap();
    let gw = api_gateway(&reg.url).await;
    let via = |path: &str| format!("{}{path}", gw.url);

    let r = put_route(
        &reg.url,
        "shop",
        json!({"path_prefix": "/shop", "service": "stable"}),
    )
    .await;
    gw.wait_revision(r.json()["revision"].as_u64().unwrap())
        .await;
    assert_eq!(get(&via("/shop/cart")).await.instance(), "stable");

    // A header route for the canary, a query route, a regex route, and a
    // catch-all with a higher priority that only takes one header.
    for (name, body) in [
        (
            "shop-canary",
            json!({"path_prefix": "/shop", "headers": [{"name": "x-canary", "exact": "1"}], "service": "canary"}),
        ),
        (
            "shop-v2",
            json!({"path_prefix": "/shop", "query": [{"name": "v", "exact": "2"}], "service": "canary"}),
        ),
        (
            "items",
            json!({"path_regex": "/items/[0-9]+", "service": "canary"}),
        ),
        (
            "urgent",
            json!({"headers": [{"name": "x-urgent", "present": true}], "priority": 5, "service": "canary"}),
        ),
    ] {
        let r = put_route(&reg.url, name, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
        gw.wait_revision(r.json()["revision"].as_u64().unwrap())
            .await;
    }
    let h = http();
    let ask = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let (h, url) = (h.clone(), via(path));
        async move {
            send(&h, Method::GET, &url, headers, Bytes::new())
                .await
                .unwrap()
        }
    };
    assert_eq!(
        ask("/shop/x", &[("x-canary", "1")]).await.instance(),
        "canary"
    );
    assert_eq!(
        ask("/shop/x", &[("x-canary", "0")]).await.instance(),
        "stable"
    );
    assert_eq!(ask("/shop/x?v=2", &[]).await.instance(), "canary");
    assert_eq!(ask("/shop/x?v=1", &[]).await.instance(), "stable");
    assert_eq!(ask("/items/42", &[]).await.instance(), "canary");
    assert_eq!(ask("/items/abc", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        ask("/shop/x", &[("x-urgent", "y")]).await.instance(),
        "canary"
    );

    // Move the route: the old path stops matching, the new one starts.
    let r = put_route(
        &reg.url,
        "shop",
        json!({"path_prefix": "/store", "service": "stable"}),
    )
    .await;
    gw.wait_revision(r.json()["revision"].as_u64().unwrap())
        .await;
    assert_eq!(get(&via("/store/x")).await.instance(), "stable");
    let old = get(&via("/shop/x")).await;
    assert_eq!(old.status, StatusCode::NOT_FOUND);
    assert_eq!(old.json()["code"], "no_route");

    // Delete it: gone from the gateway too.
    let r = call(Method::DELETE, &format!("{}/v1/routes/shop", reg.url)).await;
    gw.wait_revision(r.json()["revision"].as_u64().unwrap())
        .await;
    assert_eq!(get(&via("/store/x")).await.status, StatusCode::NOT_FOUND);

    // A gateway started now gets every route from its first snapshot.
    let late = api_gateway(&reg.url).await;
    late.wait_revision(revision(&reg.url).await).await;
    assert_eq!(
        get(&format!("{}/items/7", late.url)).await.instance(),
        "canary"
    );
    let status = get(&format!("{}/status", late.admin_url)).await.json();
    assert_eq!(status["applied_revision"], revision(&reg.url).await);
    assert_eq!(status["registry_connected"], true);

    // The registry goes away: the gateway says so, and keeps serving.
    reg.stop().await;
    eventually("the gateway to report the registry gone", || async {
        get(&format!("{}/status", late.admin_url)).await.json()["registry_connected"] == false
    })
    .await;
    assert_eq!(
        get(&format!("{}/items/7", late.url)).await.instance(),
        "canary"
    );
}

/// A response streamed from a backend keeps flowing, chunk by chunk, while
/// the gateway swaps its routing table 100 times (including changes to the
/// very route the request matched).
#[tokio::test]
async fn a_streaming_response_survives_100_table_swaps() {
    use http_body_util::channel::Channel;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let reg = TestRegistry::start(fast_leases()).await;
    // A backend whose one response body is fed by the test.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (body_tx, body_rx) = tokio::sync::oneshot::channel();
    let mut body_tx = Some(body_tx);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (sender, body) = Channel::<Bytes>::new(1);
        body_tx.take().unwrap().send(sender).ok().unwrap();
        let body = std::sync::Mutex::new(Some(body));
        let svc = service_fn(move |_req| {
            let body = body.lock().unwrap().take().expect("one request");
            async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
        });
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await
            .ok();
    });

    let gw = api_gateway(&reg.url).await;
    let r = put_route(
        &reg.url,
        "stream",
        json!({"path_prefix": "/stream", "upstreams": [backend.to_string()]}),
    )
    .await;
    gw.wait_revision(r.json()["revision"].as_u64().unwrap())
        .await;

    let resp = http()
        .request(
            http::Request::get(format!("{}/stream", gw.url))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut sender = body_rx.await.unwrap();
    let rebuilds_before = gw.status.rebuilds.load(Ordering::Relaxed);
    for i in 0..100u32 {
        // Change the table: alternately the streaming route's own timeout and
        // another route, so both kinds of swap happen under the request.
        let change = if i % 2 == 0 {
            put_route(
                &reg.url,
                "stream",
                json!({"path_prefix": "/stream", "upstreams": [backend.to_string()], "timeout": format!("{}s", 30 + i)}),
            )
            .await
        } else {
            put_route(
                &reg.url,
                "other",
                json!({"path": format!("/other/{i}"), "upstreams": ["127.0.0.1:9"]}),
            )
            .await
        };
        assert!(change.status.is_success(), "{}", change.json());
        gw.wait_revision(change.json()["revision"].as_u64().unwrap())
            .await;
        let chunk = format!("chunk {i}\n");
        sender.send_data(Bytes::from(chunk.clone())).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("chunk arrives")
            .expect("stream still open")
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(got, Bytes::from(chunk), "chunk {i}");
    }
    assert!(gw.status.rebuilds.load(Ordering::Relaxed) >= rebuilds_before + 100);
    drop(sender);
    assert!(
        tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap()
            .is_none(),
        "the stream ends cleanly"
    );
    server.abort();
}

#[tokio::test]
async fn three_gateways_converge_after_each_of_50_changes() {
    let reg = TestRegistry::start(fast_leases()).await;
    let echo = TestEcho::start("e").await;
    reg.client()
        .register_once("svc", "e1", &echo.spec())
        .await
        .unwrap();
    let gateways = [
        api_gateway(&reg.url).await,
        api_gateway(&reg.url).await,
        api_gateway(&reg.url).await,
    ];
    for i in 0..50u32 {
        // Move one route to a new path each time.
        let r = put_route(
            &reg.url,
            "moving",
            json!({"path": format!("/v{i}"), "service": "svc"}),
        )
        .await;
        assert!(r.status.is_success(), "{}", r.json());
        let rev = r.json()["revision"].as_u64().unwrap();
        for gw in &gateways {
            gw.wait_revision(rev).await;
            assert_eq!(
                get(&format!("{}/v{i}", gw.url)).await.instance(),
                "e",
                "change {i}"
            );
            if i > 0 {
                assert_eq!(
                    get(&format!("{}/v{}", gw.url, i - 1)).await.status,
                    StatusCode::NOT_FOUND
                );
            }
        }
        let applied: Vec<u64> = gateways.iter().map(|g| g.applied_revision()).collect();
        assert!(applied.iter().all(|&a| a == applied[0]), "{applied:?}");
    }
}

#[tokio::test]
async fn the_route_file_reloads_good_changes_and_refuses_bad_ones() {
    let echo_a = TestEcho::start("a").await;
    let echo_b = TestEcho::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let file = |upstream: std::net::SocketAddr, prefix: &str| {
        format!(
            "[[route]]\nname = \"r\"\npath_prefix = \"{prefix}\"\nupstreams = [\"{upstream}\"]\n"
        )
    };
    std::fs::write(&path, file(echo_a.addr, "/one")).unwrap();
    let gw = TestGateway::start(quiet(GatewayOptions {
        config: Config::load(&path).unwrap(),
        config_path: Some(path.clone()),
        config_poll: Some(Duration::from_millis(20)),
        ..GatewayOptions::default()
    }))
    .await;
    assert_eq!(get(&format!("{}/one", gw.url)).await.instance(), "a");

    // A good change applies.
    std::fs::write(&path, file(echo_b.addr, "/two")).unwrap();
    eventually("the new route file to apply", || async {
        get(&format!("{}/two", gw.url)).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(&format!("{}/two", gw.url)).await.instance(), "b");
    assert_eq!(
        get(&format!("{}/one", gw.url)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(gw.status.reloads.load(Ordering::Relaxed), 1);

    // A bad one is refused whole; the previous routes keep serving.
    std::fs::write(
        &path,
        format!("{}lb = \"fastest\"\n", file(echo_a.addr, "/three")),
    )
    .unwrap();
    eventually("the bad file to be refused", || async {
        gw.status.reload_failures.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(get(&format!("{}/two", gw.url)).await.instance(), "b");
    assert_eq!(
        get(&format!("{}/three", gw.url)).await.status,
        StatusCode::NOT_FOUND
    );
    let status = get(&format!("{}/status", gw.admin_url)).await.json();
    assert_eq!(status["route_file_reload_failures"], 1);

    // Fixed again: applies.
    std::fs::write(&path, file(echo_a.addr, "/three")).unwrap();
    eventually("the fixed file to apply", || async {
        get(&format!("{}/three", gw.url)).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(gw.status.reloads.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn explain_says_why_for_matched_unmatched_and_all_down() {
    let reg = TestRegistry::start(fast_leases()).await;
    let echo = TestEcho::start("e").await;
    reg.client()
        .register_once("web", "w1", &echo.spec())
        .await
        .unwrap();
    // A port with nothing listening: every request to it fails to connect.
    let dead = free_port();
    let gw = api_gateway(&reg.url).await;
    for (name, body) in [
        (
            "api",
            json!({"hosts": ["api.example.com"], "path_prefix": "/v1", "methods": ["GET"], "service": "web"}),
        ),
        (
            "api-canary",
            json!({"hosts": ["api.example.com"], "path_prefix": "/v1", "headers": [{"name": "x-canary", "exact": "1"}], "service": "web"}),
        ),
        (
            "empty",
            json!({"path_prefix": "/empty", "service": "nobody"}),
        ),
        (
            "dead",
            json!({"path_prefix": "/dead", "upstreams": [format!("127.0.0.1:{dead}")]}),
        ),
    ] {
        let r = put_route(&reg.url, name, body).await;
        gw.wait_revision(r.json()["revision"].as_u64().unwrap())
            .await;
    }
    let explain = |q: &str| {
        let url = format!("{}/explain?{q}", gw.admin_url);
        async move {
            let r = get(&url).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            r.json()
        }
    };

    // Matched: the route, the candidates passed over and why, the pick.
    let e = explain("method=GET&host=API.example.com:8080&path=/v1/users?x=1").await;
    assert_eq!(e["route"]["name"], "api", "{e}");
    let considered = e["considered"].as_array().unwrap();
    let canary = considered
        .iter()
        .find(|c| c["route"] == "api-canary")
        .expect("the canary route was considered");
    assert!(
        canary["result"].as_str().unwrap().contains("x-canary"),
        "{canary}"
    );
    assert_eq!(e["would_pick"]["id"], "w1");
    assert!(
        e["verdict"].as_str().unwrap().starts_with("proxied to"),
        "{e}"
    );
    assert_eq!(e["endpoints"][0]["in_rotation"], true);

    // The method excludes the only route: unmatched, and it says so.
    let e = explain("method=POST&host=api.example.com&path=/v1/users").await;
    assert_eq!(e["route"], Value::Null);
    assert!(e["verdict"].as_str().unwrap().starts_with("404 no_route"));
    let api = e["considered"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == "api")
        .unwrap();
    assert!(
        api["result"].as_str().unwrap().contains("method POST"),
        "{api}"
    );
    // Nothing covers the path at all.
    let e = explain("path=/nowhere").await;
    assert_eq!(e["considered"].as_array().unwrap().len(), 0);
    assert!(e["verdict"].as_str().unwrap().contains("no route"), "{e}");

    // A service with no instances: the 503 is named before a client sees it.
    let e = explain("path=/empty/x").await;
    assert_eq!(e["route"]["name"], "empty");
    assert!(
        e["verdict"]
            .as_str()
            .unwrap()
            .starts_with("503 no_healthy_upstream"),
        "{e}"
    );
    assert_eq!(e["would_pick"], Value::Null);

    // Every endpoint down: fail requests until outlier detection ejects the
    // only endpoint, then explain shows it out of rotation and why.
    eventually("the dead endpoint to be ejected", || async {
        let r = get(&format!("{}/dead", gw.url)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        let e = explain("path=/dead").await;
        e["endpoints"][0]["in_rotation"] == false
    })
    .await;
    let e = explain("path=/dead").await;
    assert_eq!(e["endpoints"][0]["ejection_reason"], "consecutive_failures");
    assert!(
        e["verdict"].as_str().unwrap().contains("out of rotation"),
        "{e}"
    );

    // Bad input is refused, naming the parameter.
    let r = get(&format!("{}/explain?path=nope", gw.admin_url)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["field"], "path");
    let r = get(&format!("{}/explain?colour=red", gw.admin_url)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// `GET {admin}/explain?{query}` with the query sent exactly as given.
async fn explain_raw(gw: &TestGateway, query: &str) -> Reply {
    send(
        &http(),
        Method::GET,
        &format!("{}/explain?{query}", gw.admin_url),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("/explain?{query}: {e}"))
}

/// Every byte but unreserved ones percent-encoded, for a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_never_panics_and_refuses_bad_input_by_name() {
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start(quiet(GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"by-path\"\nupstreams = [\"{0}\"]\nlb = \"consistent_hash\"\nhash_on = \"path\"\n\
             [[route]]\nname = \"by-cookie\"\npath_prefix = \"/c\"\nupstreams = [\"{0}\"]\nlb = \"consistent_hash\"\nhash_on = \"cookie:sid\"\n\
             [[route]]\nname = \"by-ip\"\npath_prefix = \"/ip\"\nupstreams = [\"{0}\"]\nlb = \"consistent_hash\"\nhash_on = \"client_ip\"\n",
            echo.addr
        ))
        .unwrap(),
        ..GatewayOptions::default()
    }))
    .await;

    // The reported input: a decoded path with a space is not a request path.
    let r = explain_raw(&gw, "path=/a%20b").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.json()["field"], "path");
    assert_eq!(r.headers["content-type"], "application/json");
    // Its encoded form is a valid path, hashed like the request would be.
    let r = explain_raw(&gw, "path=/a%2520b").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["route"]["name"], "by-path");

    let odd = [
        "",
        " ",
        "%",
        "%%",
        "%zz",
        "%ff",
        "%00",
        "\u{0}",
        "\r\n",
        "a b",
        "/a b",
        "/\t",
        "/é",
        "/\u{1F600}",
        "//",
        "/../..",
        "/?",
        "/??",
        "/a?b?c",
        "/a#b",
        "*",
        "http://x/y",
        "[::1]",
        "[",
        "]:80",
        ":",
        "x:",
        ":x",
        "a:b:c",
        "\u{7f}",
        "/%C3%28",
        "GET ",
        "\"",
        "{}",
        "\\",
        "/\\",
        "::",
        "999.1.1.1",
        "1.2.3.4:5",
    ];
    let long = format!("/{}", "x".repeat(20_000));
    let fields = ["method", "host", "path", "header", "client_ip"];
    let mut seen = std::collections::BTreeSet::new();
    for value in odd.iter().copied().chain([long.as_str()]) {
        for field in fields {
            for path in ["/", "/c", "/ip"] {
                let query = match field {
                    "path" => format!("path={}", encode(value)),
                    "header" => format!(
                        "path={path}&header={}&header=cookie:sid%3D{}",
                        encode(value),
                        encode(value)
                    ),
                    _ => format!("path={path}&{field}={}", encode(value)),
                };
                let r = explain_raw(&gw, &query).await;
                assert!(
                    r.status == StatusCode::OK || r.status == StatusCode::BAD_REQUEST,
                    "/explain?{query}: {} {:?}",
                    r.status,
                    r.body
                );
                if r.status == StatusCode::BAD_REQUEST {
                    let field = r.json()["field"].as_str().unwrap_or_default().to_string();
                    assert!(!field.is_empty(), "/explain?{query}: {:?}", r.body);
                    seen.insert(field);
                }
            }
        }
    }
    // Malformed encodings sent raw (valid URI characters, broken escapes).
    for raw in [
        "path=%",
        "path=/%",
        "path=/%z",
        "path=/%e2%82",
        "host=%ff%fe",
        "=",
        "&&",
        "path",
        "path==",
        "===",
        "&path=/&",
        "header=%3A",
        "header=x%3A%00",
    ] {
        let r = explain_raw(&gw, raw).await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::BAD_REQUEST,
            "/explain?{raw}: {} {:?}",
            r.status,
            r.body
        );
    }
    assert!(seen.contains("path") && seen.contains("host"), "{seen:?}");
    // The admin listener is still there.
    assert_eq!(
        get(&format!("{}/healthz", gw.admin_url)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_does_not_move_the_round_robin_cursor() {
    let echoes = [
        TestEcho::start("a").await,
        TestEcho::start("b").await,
        TestEcho::start("c").await,
    ];
    let list: Vec<String> = echoes.iter().map(|e| format!("\"{}\"", e.addr)).collect();
    let gw = TestGateway::start(quiet(GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"rr\"\nupstreams = [{}]\n",
            list.join(", ")
        ))
        .unwrap(),
        ..GatewayOptions::default()
    }))
    .await;
    // Static endpoints are ordered by id (`host:port`); round robin takes them
    // in that order, one step per request.
    let mut order: Vec<String> = echoes.iter().map(|e| e.addr.to_string()).collect();
    order.sort();
    let name_of = |addr: &str| {
        echoes
            .iter()
            .find(|e| e.addr.to_string() == addr)
            .unwrap()
            .id
            .clone()
    };
    let http = http();
    let mut previous: Option<String> = None;
    for i in 0..30 {
        // Explain calls between requests: each predicts the next pick and
        // must not take a turn of the balancer itself.
        let mut predicted = None;
        for _ in 0..=(i % 3) {
            let e = explain_raw(&gw, "path=/x").await;
            assert_eq!(e.status, StatusCode::OK);
            predicted = Some(
                e.json()["would_pick"]["address"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let r = send(
            &http,
            Method::GET,
            &format!("{}/x", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        let got = r.instance();
        assert_eq!(
            Some(name_of(predicted.as_deref().unwrap())),
            Some(got.clone()),
            "request {i}: explain predicted another endpoint"
        );
        if let Some(prev) = &previous {
            let at = order.iter().position(|a| name_of(a) == *prev).unwrap();
            let expected = name_of(&order[(at + 1) % order.len()]);
            assert_eq!(
                got, expected,
                "request {i}: the round-robin order was disturbed"
            );
        }
        previous = Some(got);
    }
}
