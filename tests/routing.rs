//! Targets beyond one service, through real servers: subsets of a
//! service's instances by tag and by metadata, a weighted split (10,000
//! requests within ±2% of the weights, weights changed live through
//! `/v1/routes`, a target with nothing up passed over), and mirroring (the
//! sampled share reaches the shadow, the primary answers while the shadow
//! hangs, the in-flight bound drops copies). Configuration mistakes are
//! refused with the field named and nothing changed.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use portico_gateway::GatewayOptions;
use portico_gateway::config::{Config, ConfigError};
use portico_registry::model::InstanceSpec;
use serde_json::{Value, json};
use support::*;

async fn api_gateway(registry: &str) -> TestGateway {
    let mut options = GatewayOptions {
        registry: vec![registry.to_string()],
        ..GatewayOptions::default()
    };
    options.proxy.access_log = false;
    TestGateway::start(options).await
}

/// Registers `backend` as instance `id` of `service` with `tags` and
/// `meta`; returns the registry revision of the write.
async fn register(
    reg: &TestRegistry,
    service: &str,
    id: &str,
    backend: &FaultyBackend,
    tags: &[&str],
    meta: &[(&str, &str)],
) -> u64 {
    let mut spec = InstanceSpec::new("127.0.0.1", backend.addr.port());
    spec.tags = tags.iter().map(|t| t.to_string()).collect();
    spec.meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    reg.client()
        .register_once(service, id, &spec)
        .await
        .unwrap()
        .revision
}

/// Puts a route; asserts it was accepted and waits until `gw` applies it.
async fn put_route(reg: &TestRegistry, gw: &TestGateway, name: &str, body: Value) {
    let r = put_json(&format!("{}/v1/routes/{name}", reg.url), body).await;
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    gw.wait_revision(r.json()["revision"].as_u64().unwrap())
        .await;
}

/// Sends `n` GETs to `url` over `clients` keep-alive connections at once;
/// asserts every one was answered 200.
async fn load(url: &str, n: usize, clients: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let url = url.to_string();
        let share = n / clients + usize::from(c < n % clients);
        tasks.spawn(async move {
            let client = http();
            for _ in 0..share {
                let r = send(&client, http::Method::GET, &url, &[], Default::default())
                    .await
                    .unwrap();
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&r.body)
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn subsets_choose_instances_by_tag_and_by_metadata() {
    let reg = TestRegistry::start(fast_leases()).await;
    let gw = api_gateway(&reg.url).await;
    let (a, b, c) = (
        FaultyBackend::start("a").await,
        FaultyBackend::start("b").await,
        FaultyBackend::start("c").await,
    );
    register(&reg, "api", "a", &a, &["v1"], &[("version", "1")]).await;
    register(&reg, "api", "b", &b, &["v1", "beta"], &[("version", "2")]).await;
    register(&reg, "api", "c", &c, &["v2"], &[("version", "2")]).await;
    put_route(
        &reg,
        &gw,
        "by-tag",
        json!({"path_prefix": "/tag", "targets": [{"service": "api", "subset": {"tags": ["v1"]}}]}),
    )
    .await;
    put_route(
        &reg,
        &gw,
        "by-meta",
        json!({"path_prefix": "/meta", "targets": [{"service": "api", "subset": {"metadata": {"version": "2"}}}]}),
    )
    .await;
    put_route(
        &reg,
        &gw,
        "both",
        json!({"path_prefix": "/both", "targets": [{"service": "api", "subset": {"tags": ["v1"], "metadata": {"version": "2"}}}]}),
    )
    .await;

    load(&format!("{}/tag", gw.url), 20, 1).await;
    assert_eq!((a.received(), b.received(), c.received()), (10, 10, 0));
    load(&format!("{}/meta", gw.url), 20, 1).await;
    assert_eq!((a.received(), b.received(), c.received()), (10, 20, 10));
    load(&format!("{}/both", gw.url), 5, 1).await;
    assert_eq!((a.received(), b.received(), c.received()), (10, 25, 10));

    // An instance that gains the tag joins the subset.
    let rev = register(&reg, "api", "c", &c, &["v1"], &[]).await;
    gw.wait_revision(rev).await;
    load(&format!("{}/tag", gw.url), 30, 1).await;
    assert_eq!((a.received(), b.received(), c.received()), (20, 35, 20));
}

#[tokio::test]
async fn a_split_follows_its_weights_and_their_live_changes() {
    let reg = TestRegistry::start(fast_leases()).await;
    let gw = api_gateway(&reg.url).await;
    let (v1, v2) = (
        FaultyBackend::start("v1").await,
        FaultyBackend::start("v2").await,
    );
    register(&reg, "api", "one", &v1, &["v1"], &[]).await;
    register(&reg, "api", "two", &v2, &[], &[("version", "2")]).await;
    let split = |w1: u32, w2: u32| {
        json!({"path_prefix": "/s", "targets": [
            {"service": "api", "weight": w1, "subset": {"tags": ["v1"]}},
            {"service": "api", "weight": w2, "subset": {"metadata": {"version": "2"}}},
        ]})
    };
    put_route(&reg, &gw, "split", split(90, 10)).await;

    let url = format!("{}/s", gw.url);
    load(&url, 10_000, 4).await;
    let (one, two) = (v1.received(), v2.received());
    assert_eq!(one + two, 10_000);
    assert!(
        one.abs_diff(9_000) <= 200,
        "v1 got {one} of 10000 at weight 90"
    );
    assert!(
        two.abs_diff(1_000) <= 200,
        "v2 got {two} of 10000 at weight 10"
    );

    // A new weight through the API, no restart: the next requests follow it.
    put_route(&reg, &gw, "split", split(25, 75)).await;
    load(&url, 1_000, 4).await;
    let (one, two) = (v1.received() - one, v2.received() - two);
    assert!(one.abs_diff(250) <= 20, "v1 got {one} of 1000 at weight 25");
    assert!(two.abs_diff(750) <= 20, "v2 got {two} of 1000 at weight 75");

    // Weight 0 takes a target out altogether.
    put_route(&reg, &gw, "split", split(0, 1)).await;
    let before = v1.received();
    load(&url, 50, 1).await;
    assert_eq!(v1.received(), before);
}

#[tokio::test]
async fn a_target_with_nothing_up_is_passed_over_and_explain_says_so() {
    let reg = TestRegistry::start(fast_leases()).await;
    let gw = api_gateway(&reg.url).await;
    let (v1, v2) = (
        FaultyBackend::start("v1").await,
        FaultyBackend::start("v2").await,
    );
    register(&reg, "api", "one", &v1, &["v1"], &[]).await;
    register(&reg, "api", "two", &v2, &["v2"], &[]).await;
    put_route(
        &reg,
        &gw,
        "split",
        json!({"path_prefix": "/s", "targets": [
            {"service": "api", "weight": 1, "subset": {"tags": ["v1"]}},
            {"service": "api", "weight": 3, "subset": {"tags": ["v2"]}},
        ]}),
    )
    .await;
    let url = format!("{}/s", gw.url);

    // Its only instance drained: none passing, so the target has no
    // endpoint and every turn goes to the other.
    let drained = reg.client().drain("api", "two").await.unwrap();
    gw.wait_revision(drained.revision).await;
    load(&url, 40, 1).await;
    assert_eq!((v1.received(), v2.received()), (40, 0));
    let explain = get(&format!("{}/explain?path=/s", gw.admin_url))
        .await
        .json();
    let verdict = explain["verdict"].as_str().unwrap();
    assert!(verdict.contains("targets[0]"), "{explain}");
    assert_eq!(
        explain["route"]["target"]["split"][1]["in_rotation"], false,
        "{explain}"
    );

    // A passing registration whose backend is dead: once outlier
    // detection ejects it, its target's turns go to the other again.
    let mut dead = FaultyBackend::start("dead").await;
    let rev = register(&reg, "api", "three", &dead, &["v2"], &[]).await;
    dead.kill().await;
    gw.wait_revision(rev).await;
    eventually("the dead target to be passed over", || async {
        let mut all_ok = true;
        for _ in 0..8 {
            all_ok &= get(&url).await.status == StatusCode::OK;
        }
        all_ok
    })
    .await;
    let explain = get(&format!("{}/explain?path=/s", gw.admin_url))
        .await
        .json();
    assert_eq!(explain["route"]["target"]["would_choose"], 0, "{explain}");
    drop(v2);
}

#[tokio::test]
async fn mirroring_copies_the_sampled_share_and_never_holds_the_primary() {
    let reg = TestRegistry::start(fast_leases()).await;
    let gw = api_gateway(&reg.url).await;
    let (primary, shadow) = (
        FaultyBackend::start("primary").await,
        FaultyBackend::start("shadow").await,
    );
    register(&reg, "api", "p", &primary, &[], &[]).await;
    register(&reg, "shadow", "s", &shadow, &[], &[]).await;
    put_route(
        &reg,
        &gw,
        "mirrored",
        json!({"path_prefix": "/m", "service": "api",
               "mirror": {"service": "shadow", "percent": 10, "max_in_flight": 4}}),
    )
    .await;
    let url = format!("{}/m", gw.url);

    let copies = |outcome: &'static str| {
        let url = format!("{}/metrics", gw.admin_url);
        async move {
            let text = String::from_utf8_lossy(&get(&url).await.body).into_owned();
            let series =
                format!("portico_mirror_copies_total{{route=\"mirrored\",outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map_or(0, |n| n.parse::<u64>().unwrap())
        }
    };
    load(&url, 200, 1).await;
    assert_eq!(primary.received(), 200);
    eventually("20 copies answered by the shadow", || async {
        copies("sent").await == 20
    })
    .await;
    assert_eq!(shadow.received(), 20);

    // The shadow stops answering: every primary request still completes,
    // only max_in_flight copies are outstanding, and the rest are dropped.
    shadow.set_delay(Duration::from_secs(3600));
    load(&url, 200, 1).await;
    assert_eq!(primary.received(), 400);
    eventually("the 4 copies in flight to reach the shadow", || async {
        shadow.received() == 24
    })
    .await;
    assert_eq!(copies("dropped").await, 16);
    assert_eq!(copies("sent").await, 20);
}

#[tokio::test]
async fn target_mistakes_are_refused_naming_the_field_and_change_nothing() {
    let reg = TestRegistry::start(fast_leases()).await;
    let url = format!("{}/v1/routes/r", reg.url);
    let ok = json!({"path_prefix": "/r", "targets": [{"service": "api", "weight": 1}]});
    assert_eq!(put_json(&url, ok).await.status, StatusCode::CREATED);
    let before = get(&url).await;
    let seventeen: Vec<Value> = (0..17)
        .map(|i| json!({"service": format!("s{i}")}))
        .collect();
    for (body, field) in [
        (
            json!({"service": "api", "targets": [{"service": "api"}]}),
            "targets",
        ),
        (json!({"targets": []}), "targets"),
        (json!({"targets": seventeen}), "targets"),
        (
            json!({"targets": [{"service": "a", "weight": 0}, {"service": "b", "weight": 0}]}),
            "targets",
        ),
        (
            json!({"targets": [{"service": "a"}, {"service": "b", "weight": 10001}]}),
            "targets[1].weight",
        ),
        (
            json!({"targets": [{"service": "Not_A_Name"}]}),
            "targets[0].service",
        ),
        (
            json!({"targets": [{"service": "a", "subset": {"tagz": ["v1"]}}]}),
            "targets[0].subset.tagz",
        ),
        (
            json!({"targets": [{"service": "a", "subset": {"tags": [""]}}]}),
            "targets[0].subset.tags[0]",
        ),
        (
            json!({"targets": [{"service": "a"}, {"service": "a"}]}),
            "targets[1]",
        ),
        (
            json!({"service": "a", "mirror": {"service": "b", "percent": 0}}),
            "mirror.percent",
        ),
        (
            json!({"service": "a", "mirror": {"service": "b", "max_in_flight": 0}}),
            "mirror.max_in_flight",
        ),
        // A missing key is named at its object, the reason names the key.
        (json!({"service": "a", "mirror": {"percent": 5}}), "mirror"),
    ] {
        let r = put_json(&url, body.clone()).await;
        // 400 for an unknown key, 422 for a bad value, as for any route.
        assert!(
            matches!(r.status.as_u16(), 400 | 422),
            "{body}: {}",
            r.status
        );
        assert_eq!(r.json()["field"], field, "{body}: {}", r.json());
    }
    let after = get(&url).await;
    assert_eq!(before.body, after.body, "a refused write changed the route");
    assert_eq!(
        before.headers["x-portico-index"],
        after.headers["x-portico-index"]
    );

    // The route file is checked by the same code.
    let text = "[[route]]\nname = \"a\"\nservice = \"x\"\n\
                [[route]]\nname = \"b\"\npath_prefix = \"/b\"\n\
                targets = [{service = \"x\", weight = 1}, {service = \"y\", weight = 10001}]\n";
    match Config::parse(text) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "route[1].targets[1].weight"),
        other => panic!("{other:?}"),
    }
}
