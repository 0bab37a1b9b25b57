//! The registry's REST contract: every validation rule (status, field, and the
//! revision left unchanged), heartbeats, blocking queries and the watch stream.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use support::*;

async fn revision(url: &str) -> u64 {
    get(&format!("{url}/readyz")).await.json()["revision"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_answers_with_the_stored_instance_and_revision() {
    let registry = TestRegistry::start(fast_leases()).await;
    // etcd starts at revision 1, the embedded store at 0: count from here.
    let r0 = revision(&registry.url).await;
    let url = format!("{}/v1/services/web/instances/web-1", registry.url);
    let r = put_json(
        &url,
        json!({"address": "10.0.0.1", "port": 8080, "scheme": "h2c", "weight": 5,
               "zone": "a", "tags": ["x"], "meta": {"v": "1"}, "ttl": "10s"}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["revision"], r0 + 1);
    assert_eq!(r.headers["x-portico-index"], (r0 + 1).to_string().as_str());
    assert_eq!(v["instance"]["address"], "10.0.0.1");
    assert_eq!(v["instance"]["scheme"], "h2c");
    assert_eq!(v["instance"]["weight"], 5);
    assert_eq!(v["instance"]["ttl"], "10s");
    assert_eq!(v["instance"]["status"], "passing");

    let list = get(&format!("{}/v1/services/web/instances", registry.url)).await;
    assert_eq!(list.json()["instances"].as_array().unwrap().len(), 1);
    let services = get(&format!("{}/v1/services", registry.url)).await.json();
    assert_eq!(services["services"][0]["name"], "web");
    assert_eq!(services["services"][0]["instances"]["passing"], 1);

    // Heartbeat: 200 for a known instance, 404 for an unknown one.
    let hb = call(Method::PUT, &format!("{url}/heartbeat")).await;
    assert_eq!(hb.status, StatusCode::OK);
    let hb = call(
        Method::PUT,
        &format!("{}/v1/services/web/instances/nope/heartbeat", registry.url),
    )
    .await;
    assert_eq!(hb.status, StatusCode::NOT_FOUND);
    assert_eq!(hb.json()["code"], "not_found");
    // A heartbeat does not move the revision.
    assert_eq!(revision(&registry.url).await, r0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_refuses_and_changes_nothing() {
    let registry = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/services", registry.url);
    // One good registration so there is a revision to protect.
    let ok = put_json(
        &format!("{base}/web/instances/a"),
        json!({"address": "h", "port": 1}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let before = revision(&registry.url).await;

    let good = json!({"address": "127.0.0.1", "port": 80});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let long = "a".repeat(64);
    // (path service, path id, body, status, code, field)
    type Case<'a> = (
        &'a str,
        &'a str,
        serde_json::Value,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "Web",
            "a",
            good.clone(),
            422,
            "invalid_value",
            Some("service"),
        ),
        (
            "-web",
            "a",
            good.clone(),
            422,
            "invalid_value",
            Some("service"),
        ),
        (
            &long,
            "a",
            good.clone(),
            422,
            "invalid_value",
            Some("service"),
        ),
        ("web", "A", good.clone(), 422, "invalid_value", Some("id")),
        (
            "web",
            "a%2Fb",
            good.clone(),
            422,
            "invalid_value",
            Some("id"),
        ),
        ("web", &long, good.clone(), 422, "invalid_value", Some("id")),
        (
            "web",
            "a",
            without("address"),
            422,
            "invalid_value",
            Some("address"),
        ),
        (
            "web",
            "a",
            with("address", json!("bad host!")),
            422,
            "invalid_value",
            Some("address"),
        ),
        (
            "web",
            "a",
            with("address", json!(7)),
            422,
            "invalid_value",
            Some("address"),
        ),
        (
            "web",
            "a",
            without("port"),
            422,
            "invalid_value",
            Some("port"),
        ),
        (
            "web",
            "a",
            with("port", json!(0)),
            422,
            "invalid_value",
            Some("port"),
        ),
        (
            "web",
            "a",
            with("port", json!(65536)),
            422,
            "invalid_value",
            Some("port"),
        ),
        (
            "web",
            "a",
            with("port", json!("80")),
            422,
            "invalid_value",
            Some("port"),
        ),
        (
            "web",
            "a",
            with("scheme", json!("ftp")),
            422,
            "invalid_value",
            Some("scheme"),
        ),
        (
            "web",
            "a",
            with("weight", json!(0)),
            422,
            "invalid_value",
            Some("weight"),
        ),
        (
            "web",
            "a",
            with("weight", json!(1001)),
            422,
            "invalid_value",
            Some("weight"),
        ),
        (
            "web",
            "a",
            with("ttl", json!("500ms")),
            422,
            "invalid_value",
            Some("ttl"),
        ),
        (
            "web",
            "a",
            with("ttl", json!("2h")),
            422,
            "invalid_value",
            Some("ttl"),
        ),
        (
            "web",
            "a",
            with("ttl", json!("often")),
            422,
            "invalid_value",
            Some("ttl"),
        ),
        (
            "web",
            "a",
            with("tags", json!("x")),
            422,
            "invalid_value",
            Some("tags"),
        ),
        (
            "web",
            "a",
            with("meta", json!({"k": 1})),
            422,
            "invalid_value",
            Some("meta"),
        ),
        (
            "web",
            "a",
            with("zone", json!(["a"])),
            422,
            "invalid_value",
            Some("zone"),
        ),
        (
            "web",
            "a",
            with("colour", json!("red")),
            400,
            "unknown_field",
            Some("colour"),
        ),
        ("web", "a", json!([1, 2]), 400, "malformed_body", None),
    ];
    for (service, id, body, status, code, field) in cases {
        let r = put_json(&format!("{base}/{service}/instances/{id}"), body.clone()).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{service}/{id} {body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["code"], code, "{body}: {v}");
        assert_eq!(v["field"].as_str(), field, "{body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(
            revision(&registry.url).await,
            before,
            "{body} moved the revision"
        );
    }

    let http = http();
    let url = format!("{base}/web/instances/a");
    // Not JSON at all.
    let r = send(
        &http,
        Method::PUT,
        &url,
        &[("content-type", "application/json")],
        Bytes::from_static(b"{nope"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["code"], "malformed_body");
    // Wrong or missing content type.
    for headers in [&[("content-type", "text/plain")][..], &[][..]] {
        let r = send(
            &http,
            Method::PUT,
            &url,
            headers,
            Bytes::from(good.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(r.json()["code"], "unsupported_media_type");
    }
    // Over 64 KiB, declared and streamed.
    let big = json!({"address": "h", "port": 1, "meta": {"k": "x".repeat(70 * 1024)}});
    let r = put_json(&url, big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["code"], "body_too_large");
    // Unknown query parameters and bad values on reads.
    let r = get(&format!("{base}/web/instances?colour=red")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["field"], "colour");
    let r = get(&format!("{base}/web/instances?status=sleepy")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["field"], "status");
    let r = get(&format!("{base}/web/instances?index=-1")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = get(&format!("{base}/web/instances?index=1&wait=1h")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["field"], "wait");
    // Unknown endpoint and wrong method: JSON errors too.
    let r = get(&format!("{}/v2/nothing", registry.url)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["code"], "not_found");
    let r = send(&http, Method::POST, &base, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["code"], "method_not_allowed");
    // Every endpoint refuses a query parameter it does not know, even those
    // that take none (an `index` on /v1/services would otherwise look like
    // a blocking query and silently not be one).
    for (method, path) in [
        (Method::GET, "/v1/services?index=1".to_string()),
        (Method::GET, "/v1/services/web/instances?foo=1".to_string()),
        (
            Method::PUT,
            "/v1/services/web/instances/a?foo=1".to_string(),
        ),
        (
            Method::PUT,
            "/v1/services/web/instances/a/heartbeat?foo=1".to_string(),
        ),
        (
            Method::POST,
            "/v1/services/web/instances/a/drain?foo=1".to_string(),
        ),
        (
            Method::DELETE,
            "/v1/services/web/instances/a?foo=1".to_string(),
        ),
        (Method::GET, "/v1/routes/r?foo=1".to_string()),
        (Method::GET, "/v1/routes?foo=1".to_string()),
        (Method::GET, "/v1/watch?index=0&foo=1".to_string()),
    ] {
        let r = send(
            &http,
            method.clone(),
            &format!("{}{path}", registry.url),
            &[("content-type", "application/json")],
            Bytes::from(good.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path}");
        assert_eq!(r.json()["code"], "unknown_parameter", "{method} {path}");
    }

    assert_eq!(revision(&registry.url).await, before);
    let list = get(&format!("{base}/web/instances")).await.json();
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    assert_eq!(list["instances"][0]["address"], "h");
}

/// Item 13: names a client that normalises paths would rewrite (`.`, `..`,
/// in any spelling) are refused, and so is a body naming a key twice, at
/// any depth, with 400 naming the key. Nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_duplicate_keys_are_refused() {
    let registry = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/services", registry.url);
    let before = revision(&registry.url).await;
    let good = json!({"address": "127.0.0.1", "port": 80});
    for id in [".", "..", "%2e", "%2E%2e", ".%2e"] {
        let r = put_json(&format!("{base}/web/instances/{id}"), good.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "id {id:?}");
        assert_eq!(r.json()["field"], "id", "id {id:?}");
    }
    for name in [".", "..", "%2e%2e"] {
        let r = put_json(
            &format!("{}/v1/routes/{name}", registry.url),
            json!({"path_prefix": "/x", "service": "web"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "route {name:?}");
        assert_eq!(r.json()["field"], "name", "route {name:?}");
    }
    // Ids that merely contain dots stay valid.
    let r = put_json(&format!("{base}/web/instances/a..b"), good.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    let before_dupes = revision(&registry.url).await;
    assert!(before_dupes > before);

    let http = http();
    let cases: [(&str, &str, &str); 5] = [
        (
            "/v1/services/web/instances/d",
            r#"{"address":"h","port":80,"port":81}"#,
            "port",
        ),
        (
            "/v1/services/web/instances/d",
            r#"{"address":"h","port":80,"meta":{"a":"1","b":"2","a":"3"}}"#,
            "meta.a",
        ),
        (
            "/v1/services/web/instances/d",
            r#"{"address":"h","port":80,"check":{"path":"/h","path":"/i"}}"#,
            "check.path",
        ),
        (
            "/v1/routes/r",
            r#"{"path":"/x","service":"web","path":"/y"}"#,
            "path",
        ),
        (
            "/v1/routes/r",
            r#"{"path":"/x","service":"web","headers":[{"name":"a","name":"b","exact":"1"}]}"#,
            "headers[0].name",
        ),
    ];
    for (path, body, field) in cases {
        let r = send(
            &http,
            Method::PUT,
            &format!("{}{path}", registry.url),
            &[("content-type", "application/json")],
            Bytes::from_static(body.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        let v = r.json();
        assert_eq!(v["code"], "duplicate_field", "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    assert_eq!(revision(&registry.url).await, before_dupes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_filter_and_blocking_query() {
    let registry = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/services", registry.url);
    put_json(
        &format!("{base}/web/instances/a"),
        json!({"address": "h", "port": 1, "ttl": "1s"}),
    )
    .await;
    let r = put_json(
        &format!("{base}/web/instances/b"),
        json!({"address": "h", "port": 2, "ttl": "1h"}),
    )
    .await;
    let index = r.json()["revision"].as_u64().unwrap();

    // "a" is never renewed: it goes critical; the filter sees that.
    eventually("a to go critical", || async {
        let v = get(&format!("{base}/web/instances?status=critical"))
            .await
            .json();
        v["instances"].as_array().unwrap().len() == 1
    })
    .await;
    let passing = get(&format!("{base}/web/instances?status=passing"))
        .await
        .json();
    assert_eq!(passing["instances"][0]["id"], "b");

    // A blocking query on an index already passed answers at once.
    let r = get(&format!("{base}/web/instances?index={index}&wait=10s")).await;
    assert!(
        r.headers["x-portico-index"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > index
    );

    // A blocking query at the current index waits for a change to *this* service.
    let now = r.headers["x-portico-index"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let base2 = base.clone();
    let waiter =
        tokio::spawn(
            async move { get(&format!("{base2}/web/instances?index={now}&wait=20s")).await },
        );
    // A change to another service must not wake it...
    put_json(
        &format!("{base}/other/instances/x"),
        json!({"address": "h", "port": 3, "ttl": "1h"}),
    )
    .await;
    // ...a change to this one must.
    let c = put_json(
        &format!("{base}/web/instances/c"),
        json!({"address": "h", "port": 4, "ttl": "1h"}),
    )
    .await;
    let crev = c.json()["revision"].as_u64().unwrap();
    let answered = waiter.await.unwrap();
    let ids: Vec<String> = answered.json()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&"c".to_string()), "{ids:?}");
    let answered_index: u64 = answered.headers["x-portico-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(answered_index >= crev);

    // With nothing changing, it answers at the wait. "a" is removed
    // `critical_grace` after it went critical, a change to this service
    // that would (rightly) end the wait: wait for it to be gone first. The
    // index is the one the last answer carried, as a client passes it: on
    // etcd `/readyz` reads the replica's mirror, which may not have applied
    // the latest change yet, and a watch from before it would answer at once.
    let cur = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(answered_index));
    eventually("a to be removed", || {
        let (url, cur) = (format!("{base}/web/instances"), cur.clone());
        async move {
            let r = get(&url).await;
            let index = r.headers["x-portico-index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            cur.fetch_max(index, std::sync::atomic::Ordering::SeqCst);
            let ids = r.json()["instances"].as_array().unwrap().clone();
            !ids.iter().any(|i| i["id"] == "a")
        }
    })
    .await;
    let cur = cur.load(std::sync::atomic::Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let r = get(&format!("{base}/web/instances?index={cur}&wait=300ms")).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, StatusCode::OK);
}

async fn read_lines(
    body: &mut hyper::body::Incoming,
    buf: &mut Vec<u8>,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push(serde_json::from_slice(&line[..line.len() - 1]).unwrap());
            continue;
        }
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("watch stream stalled")
            .expect("watch stream ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_a_snapshot_then_deltas_and_resumes() {
    let registry = TestRegistry::start(fast_leases()).await;
    let r0 = revision(&registry.url).await;
    let base = format!("{}/v1/services", registry.url);
    put_json(
        &format!("{base}/web/instances/a"),
        json!({"address": "h", "port": 1, "ttl": "1h"}),
    )
    .await;

    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::get(format!("{}/v1/watch?index=0", registry.url))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = http.request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let first = read_lines(&mut body, &mut buf, 1).await;
    assert_eq!(first[0]["type"], "snapshot");
    assert_eq!(first[0]["revision"], r0 + 1);
    assert_eq!(first[0]["instances"][0]["id"], "a");

    put_json(
        &format!("{base}/web/instances/b"),
        json!({"address": "h", "port": 2, "ttl": "1h"}),
    )
    .await;
    send(
        &http_client(),
        Method::DELETE,
        &format!("{base}/web/instances/a"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    let next = read_lines(&mut body, &mut buf, 2).await;
    assert_eq!(next[0]["type"], "put");
    assert_eq!(next[0]["revision"], r0 + 2);
    assert_eq!(next[0]["instance"]["id"], "b");
    assert_eq!(next[1]["type"], "delete");
    assert_eq!(next[1]["revision"], r0 + 3);
    assert_eq!(next[1]["id"], "a");
    drop(body);

    // Resuming from the first write replays exactly what came after it, no snapshot.
    let req = http::Request::get(format!("{}/v1/watch?index={}", registry.url, r0 + 1))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let mut body = http.request(req).await.unwrap().into_body();
    let mut buf = Vec::new();
    let replay = read_lines(&mut body, &mut buf, 2).await;
    assert_eq!(replay[0]["type"], "put");
    assert_eq!(replay[1]["type"], "delete");

    // SSE on request.
    let req = http::Request::get(format!("{}/v1/watch?index=0&format=sse", registry.url))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = http.request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = String::from_utf8_lossy(&frame);
    assert!(
        text.starts_with(&format!("id: {}\nevent: snapshot\ndata: {{", r0 + 3)),
        "{text}"
    );
}

fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
> {
    http()
}

/// A gateway following `registry` and registering as `id` with a lease of `ttl`.
async fn announcing(registry: &TestRegistry, id: &str, ttl: Duration) -> TestGateway {
    let mut options = portico_gateway::GatewayOptions {
        registry: vec![registry.url.clone()],
        announce: Some(portico_gateway::cluster::Announce {
            ttl,
            ..portico_gateway::cluster::Announce::new(id)
        }),
        ..Default::default()
    };
    options.proxy.access_log = false;
    TestGateway::start(options).await
}

async fn gateway_list(registry: &TestRegistry) -> Vec<serde_json::Value> {
    let list = get(&format!("{}/v1/gateways", registry.url)).await.json();
    list["gateways"].as_array().cloned().unwrap_or_default()
}

/// `/v1/gateways` lists each started gateway with its addresses, version
/// and applied revision; every gateway learns of the others; a clean stop
/// deletes the record at once, a record deleted under a live gateway comes
/// back at its next renewal, and a killed gateway's record goes when its
/// lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_register_with_their_revision_and_leave_cleanly_or_by_lease() {
    let registry = TestRegistry::start(fast_leases()).await;
    let long = Duration::from_secs(10);
    let clean = announcing(&registry, "clean", long).await;
    let killed = announcing(&registry, "killed", Duration::from_secs(1)).await;
    let backend = FaultyBackend::start("b").await;
    let route = put_json(
        &format!("{}/v1/routes/r", registry.url),
        json!({"upstreams": [backend.addr.to_string()]}),
    )
    .await;
    let revision = route.json()["revision"].as_u64().unwrap();
    eventually(
        "both gateways listed with the route's revision applied",
        || async {
            let list = gateway_list(&registry).await;
            list.len() == 2
                && list
                    .iter()
                    .all(|g| g["applied_revision"].as_u64().unwrap_or(0) >= revision)
        },
    )
    .await;
    let list = gateway_list(&registry).await;
    let record = list.iter().find(|g| g["id"] == "clean").unwrap();
    assert_eq!(
        record["addresses"],
        json!([clean.addr.to_string()]),
        "{record}"
    );
    assert_eq!(record["version"], env!("CARGO_PKG_VERSION"), "{record}");
    assert_eq!(record["ttl"], "10s", "{record}");
    for field in ["started_at_ms", "registered_at_ms", "renewed_at_ms"] {
        assert!(record[field].as_u64().unwrap() > 0, "{field}: {record}");
    }
    eventually("each gateway to know the other", || async {
        clean.cluster.peers() == 1 && killed.cluster.peers() == 1
    })
    .await;

    // Deleted under a live gateway (as after a lapse or a registry that
    // lost it): the next renewal, a third of a second later, writes it again.
    let deleted = call(
        Method::DELETE,
        &format!("{}/v1/gateways/killed", registry.url),
    )
    .await;
    assert_eq!(deleted.json()["removed"], true, "{}", deleted.json());
    eventually("the deleted record to come back", || async {
        gateway_list(&registry)
            .await
            .iter()
            .any(|g| g["id"] == "killed")
    })
    .await;

    // A clean stop deletes the record before it returns: no lease to wait for.
    clean.stop().await;
    let ids: Vec<_> = gateway_list(&registry)
        .await
        .iter()
        .map(|g| g["id"].clone())
        .collect();
    assert_eq!(ids, [json!("killed")]);
    eventually("the other gateway to see it leave", || async {
        killed.cluster.peers() == 0
    })
    .await;

    // Killed: nothing deletes it, its 1 s lease lapses.
    drop(killed);
    eventually("the killed gateway's record to lapse", || async {
        gateway_list(&registry).await.is_empty()
    })
    .await;
}

/// A gateway's record carries, per route, what the route saw since the
/// previous record: requests per second, 5xx share and p99, for the
/// dashboard; routes without requests are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_record_reports_each_routes_load() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = announcing(&registry, "busy", Duration::from_secs(1)).await;
    let backend = FaultyBackend::start("b").await;
    for name in ["used", "idle"] {
        let r = put_json(
            &format!("{}/v1/routes/{name}", registry.url),
            json!({"path_prefix": format!("/{name}"), "upstreams": [backend.addr.to_string()]}),
        )
        .await;
        gateway
            .wait_revision(r.json()["revision"].as_u64().unwrap())
            .await;
    }
    backend.set_failing(true);
    let http = http();
    // Requests until a record reports them (a renewal every third of a
    // second): the backend answers 503, so the 5xx share is above 0.
    eventually("a record with the route's load", || async {
        for _ in 0..10 {
            let _ = send(
                &http,
                Method::GET,
                &format!("{}/used", gateway.url),
                &[],
                Bytes::new(),
            )
            .await;
        }
        let list = gateway_list(&registry).await;
        let Some(record) = list.iter().find(|g| g["id"] == "busy") else {
            return false;
        };
        let load = &record["routes"]["used"];
        load["rps"].as_f64().unwrap_or(0.0) > 0.0
            && load["error_rate"].as_f64().unwrap_or(0.0) > 0.0
            && load["p99_ms"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    let list = gateway_list(&registry).await;
    let record = list.iter().find(|g| g["id"] == "busy").unwrap();
    assert!(record["routes"].get("idle").is_none(), "{record}");
    assert!(
        record["routes"]["used"]["error_rate"].as_f64().unwrap() <= 1.0,
        "{record}"
    );
}

/// An instance list says how long each lease has left (what the dashboard
/// and `portico ctl instances` show); an instance kept alive by its check
/// has no lease and is not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_list_says_how_long_each_lease_has_left() {
    let registry = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/services/svc/instances", registry.url);
    let leased = put_json(
        &format!("{base}/leased"),
        json!({"address": "127.0.0.1", "port": 9000, "ttl": "30s"}),
    )
    .await;
    assert_eq!(leased.status, StatusCode::OK);
    let kept = put_json(
        &format!("{base}/kept"),
        json!({"address": "127.0.0.1", "port": 9001, "check": {"tcp": true, "interval": "1h"}}),
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.json());
    let list = get(&base).await.json();
    let left = &list["lease_left_ms"];
    let ms = left["leased"].as_u64().unwrap_or_else(|| panic!("{list}"));
    assert!(ms > 0 && ms <= 30_000, "{list}");
    assert!(left.get("kept").is_none(), "{list}");
}
