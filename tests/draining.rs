//! Graceful shutdown of instances: `POST .../drain` and the SDK's
//! `shutdown()` take an instance out of rotation at once, let in-flight
//! requests finish, then deregister.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_registry::client::DrainOptions;
use portico_registry::model::Status;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_endpoint_marks_the_instance_and_is_idempotent() {
    let registry = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/services/web/instances", registry.url);
    put_json(
        &format!("{base}/a"),
        serde_json::json!({"address": "h", "port": 1}),
    )
    .await;
    let drain = |id: &str| {
        let url = format!("{base}/{id}/drain");
        async move { call(Method::POST, &url).await }
    };
    let r = drain("a").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["instance"]["status"], "draining");
    let rev = r.json()["revision"].as_u64().unwrap();
    let again = drain("a").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.json()["revision"].as_u64().unwrap(),
        rev,
        "a repeat changes nothing"
    );
    assert_eq!(drain("nobody").await.status, StatusCode::NOT_FOUND);
    // A draining instance still heartbeats (its lease keeps running).
    let hb = call(Method::PUT, &format!("{base}/a/heartbeat")).await;
    assert_eq!(hb.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_shutdown_drains_in_flight_requests_then_deregisters() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();

    // Instance "old", serving through the SDK's in-flight counter.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let old = client
        .register(
            "svc",
            "old",
            portico_registry::model::InstanceSpec::new("127.0.0.1", addr.port()),
        )
        .await
        .unwrap()
        .with_drain(DrainOptions {
            settle: Duration::from_millis(200),
            timeout: Duration::from_secs(20),
        });
    let in_flight = old.in_flight();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(echo::serve_counted(
        listener,
        "old".into(),
        in_flight.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    gateway.wait_revision(old.revision()).await;

    // A slow request is in flight on "old".
    let slow_url = format!("{}/svc/slow?delay_ms=1500", gateway.url);
    let slow = tokio::spawn(async move { get(&slow_url).await });
    eventually("the slow request to reach the old instance", || async {
        in_flight.count() == 1
    })
    .await;

    // The replacement comes up, then the old one shuts down gracefully.
    let new = TestEcho::start("new").await;
    let r = client
        .register_once("svc", "new", &new.spec())
        .await
        .unwrap();
    gateway.wait_revision(r.revision).await;
    let shutdown = tokio::spawn(old.shutdown());
    eventually("the old instance to be draining at the gateway", || async {
        let list = client.instances("svc").await.unwrap();
        let draining = list
            .instances
            .iter()
            .find(|i| i.id == "old")
            .map(|i| i.status);
        draining == Some(Status::Draining) && gateway.applied_revision() >= list.revision
    })
    .await;

    // No new request reaches it; the in-flight one finishes normally.
    for _ in 0..20 {
        assert_eq!(
            get(&format!("{}/svc/x", gateway.url)).await.instance(),
            "new"
        );
    }
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.instance(), "old");

    // shutdown() returns once nothing is in flight, having deregistered.
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let list = client.instances("svc").await.unwrap();
    assert!(list.instances.iter().all(|i| i.id != "old"), "{list:?}");
    let _ = stop_tx.send(());
    server.await.unwrap();
}

/// One instance of the rolling-restart test: an echo server counting its
/// in-flight requests, registered through the SDK.
async fn start_instance(
    client: &portico_registry::client::RegistryClient,
    id: &str,
) -> (
    portico_registry::client::Registration,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reg = client
        .register(
            "svc",
            id,
            portico_registry::model::InstanceSpec::new("127.0.0.1", port),
        )
        .await
        .unwrap()
        .with_drain(DrainOptions {
            settle: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
        });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(echo::serve_counted(
        listener,
        id.into(),
        reg.in_flight(),
        async {
            let _ = rx.await;
        },
    ));
    (reg, tx, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_request() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(start_instance(&client, &format!("v1-{n}")).await);
    }
    let list = client.instances("svc").await.unwrap();
    gateway.wait_revision(list.revision).await;

    // Steady load from four clients until the restart is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (stop, url) = (stop.clone(), format!("{}/svc/x?delay_ms=5", gateway.url));
        load.spawn(async move {
            let http = http();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && ok < 20_000 {
                match send(&http, Method::GET, &url, &[], Bytes::new()).await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) => {
                        failed.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
                    }
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        });
    }

    // Replace each v1 instance with a v2 one: start the new, then drain the old.
    for n in 0..3 {
        let (reg, _tx, _server) = start_instance(&client, &format!("v2-{n}")).await;
        gateway.wait_revision(reg.revision()).await;
        let (old, old_stop, old_server) = instances.remove(0);
        old.shutdown().await.unwrap();
        let _ = old_stop.send(());
        old_server.await.unwrap();
        instances.push((reg, _tx, _server));
    }
    let list = client.instances("svc").await.unwrap();
    gateway.wait_revision(list.revision).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = load.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 40, "the load ran through the restart ({ok} requests)");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let ids: Vec<String> = list.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, vec!["v2-0", "v2-1", "v2-2"]);
}
