//! Per-route load balancing through a real gateway: load-aware algorithms
//! steer away from a slow backend; consistent hashing keeps a key on one
//! backend.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use support::*;

fn gateway_options(lb: &str, backends: &[&FaultyBackend]) -> GatewayOptions {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"svc\"\nupstreams = [{}]\n{lb}\n",
            list.join(", ")
        ))
        .unwrap(),
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    }
}

/// Eight concurrent clients, `per_client` requests each.
async fn load(url: &str, per_client: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = url.to_string();
        tasks.spawn(async move {
            let http = http();
            for _ in 0..per_client {
                let r = send(&http, Method::GET, &url, &[], Bytes::new())
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::OK);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

async fn slow_backend_share(lb: &str) -> (usize, usize) {
    let fast1 = FaultyBackend::start("fast1").await;
    let fast2 = FaultyBackend::start("fast2").await;
    let slow = FaultyBackend::start("slow").await;
    fast1.set_delay(Duration::from_millis(1));
    fast2.set_delay(Duration::from_millis(1));
    slow.set_delay(Duration::from_millis(100));
    let gw = TestGateway::start(gateway_options(lb, &[&fast1, &fast2, &slow])).await;
    load(&format!("{}/x", gw.url), 40).await;
    (slow.received(), fast1.received() + fast2.received())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_backend() {
    let (slow, fast) = slow_backend_share("lb = \"least_request\"").await;
    assert!(slow * 3 < fast, "slow got {slow}, the two fast ones {fast}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_less_to_a_slow_backend() {
    let (slow, fast) = slow_backend_share("lb = \"peak_ewma\"").await;
    assert!(slow * 3 < fast, "slow got {slow}, the two fast ones {fast}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_does_not_look_at_latency() {
    // The control: without a load-aware algorithm the slow backend gets its third.
    let (slow, fast) = slow_backend_share("").await;
    assert!(
        slow * 3 >= fast - 8,
        "slow got {slow}, the two fast ones {fast}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_key_on_one_backend() {
    let backends = [
        FaultyBackend::start("a").await,
        FaultyBackend::start("b").await,
        FaultyBackend::start("c").await,
    ];
    let refs: Vec<&FaultyBackend> = backends.iter().collect();
    let gw = TestGateway::start(gateway_options(
        "lb = \"consistent_hash\"\nhash_on = \"header:x-user\"",
        &refs,
    ))
    .await;
    let http = http();
    let url = format!("{}/x", gw.url);
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let first = send(&http, Method::GET, &url, &[("x-user", &user)], Bytes::new())
            .await
            .unwrap();
        let backend = first.headers["x-backend"].clone();
        seen.insert(backend.clone());
        for _ in 0..5 {
            let again = send(&http, Method::GET, &url, &[("x-user", &user)], Bytes::new())
                .await
                .unwrap();
            assert_eq!(again.headers["x-backend"], backend, "{user} moved");
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "30 users should spread over all three backends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_prefers_its_own_zone_and_spills_over() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gw = TestGateway::start(GatewayOptions {
        registry: vec![registry.url.clone()],
        auto_routes: true,
        zone: Some("zone-a".into()),
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    })
    .await;
    let client = registry.client();
    let near = TestEcho::start("near").await;
    let far = TestEcho::start("far").await;
    let mut spec = near.spec();
    spec.zone = Some("zone-a".into());
    client.register_once("svc", "near", &spec).await.unwrap();
    let mut spec = far.spec();
    spec.zone = Some("zone-b".into());
    let r = client.register_once("svc", "far", &spec).await.unwrap();
    gw.wait_revision(r.revision).await;
    for _ in 0..20 {
        assert_eq!(get(&format!("{}/svc/", gw.url)).await.instance(), "near");
    }
    // The only instance in its zone drains: traffic spills to the other zone.
    let d = client.drain("svc", "near").await.unwrap();
    gw.wait_revision(d.revision).await;
    for _ in 0..20 {
        assert_eq!(get(&format!("{}/svc/", gw.url)).await.instance(), "far");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_instance_up() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gw = TestGateway::start(GatewayOptions {
        config: Config::parse(
            "[[route]]\nname = \"svc\"\npath_prefix = \"/svc\"\nservice = \"svc\"\nslow_start = \"1s\"\n",
        )
        .unwrap(),
        registry: vec![registry.url.clone()],
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    })
    .await;
    let client = registry.client();
    let old = TestEcho::start("old").await;
    let new = TestEcho::start("new").await;
    let r = client
        .register_once("svc", "old", &old.spec())
        .await
        .unwrap();
    gw.wait_revision(r.revision).await;
    let age = |gw: &TestGateway, id: &str| {
        let table = gw.table.load();
        let now = portico_gateway::health::now_ms();
        table.entries()[0]
            .endpoints
            .endpoints()
            .iter()
            .find(|e| &*e.id == id)
            .map(|e| now - e.health.in_rotation_since(now))
    };
    eventually("the old instance to be past its slow start", || async {
        age(&gw, "old").is_some_and(|a| a > 1_000)
    })
    .await;

    let r = client
        .register_once("svc", "new", &new.spec())
        .await
        .unwrap();
    gw.wait_revision(r.revision).await;
    let share = |gw_url: String| async move {
        let http = http();
        let mut new = 0;
        for _ in 0..100 {
            let r = send(
                &http,
                Method::GET,
                &format!("{gw_url}/svc/"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
            if r.instance() == "new" {
                new += 1;
            }
        }
        new
    };
    let early = share(gw.url.clone()).await;
    let early_age = age(&gw, "new").unwrap();
    eprintln!("slow start: new got {early} of 100 in its first {early_age} ms");
    if early_age < 500 {
        // Still in the first half of its window: well under its equal share.
        assert!(early < 35, "new got {early} of 100 at age {early_age} ms");
    }
    eventually("the new instance to reach its equal share", || {
        let url = gw.url.clone();
        async move { share(url).await >= 40 }
    })
    .await;
}
