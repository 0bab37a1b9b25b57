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
        async move {
            send(&http(), Method::POST, &url, &[], Bytes::new())
                .await
                .unwrap()
        }
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
    let hb = send(
        &http(),
        Method::PUT,
        &format!("{base}/a/heartbeat"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
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
