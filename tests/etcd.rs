//! Registry replicas over a real 3-member etcd cluster, with faults: replicas
//! and gateways failing over, the etcd leader killed under writes, compaction
//! while a gateway is behind, and leases across a replica restart.
//!
//! The registry API, routes and discovery suites also run on etcd with
//! `PORTICO_TEST_STORE=etcd cargo test --features etcd --test registry_api
//! --test routes --test discovery` (as `.ci/run` does).

#![cfg(feature = "etcd")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_registry::model::InstanceSpec;
use serde_json::json;
use support::etcd::EtcdCluster;
use support::*;

const PREFIX: &str = "/portico/";

async fn replica(cluster: &EtcdCluster) -> TestRegistry {
    TestRegistry::start_on_etcd(cluster.all_endpoints(), PREFIX, fast_leases()).await
}

fn gateway_options(registries: &[&str]) -> GatewayOptions {
    let mut options = GatewayOptions {
        registry: registries.iter().map(|r| r.to_string()).collect(),
        auto_routes: true,
        ..GatewayOptions::default()
    };
    options.proxy.access_log = false;
    options
}

/// Ids of the instances the gateway routes `svc` to.
fn gateway_ids(gw: &TestGateway, route: &str) -> BTreeSet<String> {
    gw.table
        .load()
        .entries()
        .iter()
        .filter(|e| &*e.route.name == route)
        .flat_map(|e| e.endpoints.endpoints().iter().map(|ep| ep.id.to_string()))
        .collect()
}

async fn registry_ids(registry: &str, service: &str) -> BTreeSet<String> {
    get(&format!("{registry}/v1/services/{service}/instances"))
        .await
        .json()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_history_and_a_gateway_fails_over() {
    let cluster = EtcdCluster::start(3).await;
    let (r1, r2) = (replica(&cluster).await, replica(&cluster).await);
    let (a, b) = (TestEcho::start("a").await, TestEcho::start("b").await);

    // Register on one replica, heartbeat on the other, watch on a third view.
    let first = r1
        .client()
        .register_once("svc", "a", &a.spec())
        .await
        .unwrap();
    let hb = call(
        Method::PUT,
        &format!("{}/v1/services/svc/instances/a/heartbeat", r2.url),
    )
    .await;
    assert_eq!(hb.status, StatusCode::OK);
    assert_eq!(registry_ids(&r2.url, "svc").await, ["a".to_string()].into());
    // Both replicas report the same (etcd) revision.
    let rev = |url: String| async move {
        get(&format!("{url}/readyz")).await.json()["revision"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rev(r1.url.clone()).await, rev(r2.url.clone()).await);

    // A gateway following r2 first, r1 second.
    let gw = TestGateway::start(gateway_options(&[&r2.url, &r1.url])).await;
    gw.wait_revision(first.revision).await;
    assert_eq!(get(&format!("{}/svc/x", gw.url)).await.instance(), "a");

    // r2 goes away: the gateway keeps serving and follows r1 instead.
    r2.stop().await;
    assert_eq!(get(&format!("{}/svc/x", gw.url)).await.instance(), "a");
    let second = r1
        .client()
        .register_once("svc", "b", &b.spec())
        .await
        .unwrap();
    gw.wait_revision(second.revision).await;
    assert_eq!(
        gateway_ids(&gw, "auto:svc"),
        ["a".to_string(), "b".to_string()].into()
    );
    let h = http();
    eventually("the gateway to route to b", || {
        let (h, url) = (h.clone(), format!("{}/svc/x", gw.url));
        async move {
            send(&h, Method::GET, &url, &[], Bytes::new())
                .await
                .is_ok_and(|r| r.instance() == "b")
        }
    })
    .await;
}

/// Kill -9 the etcd leader ten times while registrations run: every
/// acknowledged registration is there afterwards, and writes resume after
/// each election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_registrations_loses_no_acknowledged_write() {
    let mut cluster = EtcdCluster::start(3).await;
    let registry = replica(&cluster).await;
    let url = registry.url.clone();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut n = 0u32;
    let h = http();
    let register = |n: u32| {
        let (h, url) = (h.clone(), format!("{url}/v1/services/svc/instances/i{n}"));
        async move {
            let body = json!({"address": "127.0.0.1", "port": 9, "ttl": "1h"}).to_string();
            let r = send(
                &h,
                Method::PUT,
                &url,
                &[("content-type", "application/json")],
                Bytes::from(body),
            )
            .await;
            match r {
                Ok(r) if r.status == StatusCode::OK => true,
                // Refused during the election: a clear 503, never a wrong answer.
                Ok(r) => {
                    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
                    assert_eq!(r.json()["code"], "store_unavailable");
                    false
                }
                Err(_) => false,
            }
        }
    };
    for cycle in 0..10 {
        // A few writes before the kill.
        for _ in 0..5 {
            n += 1;
            if register(n).await {
                acknowledged.insert(format!("i{n}"));
            }
        }
        let leader = cluster.leader().await;
        cluster.kill9(leader);
        // Keep writing until one is acknowledged after the election.
        let deadline = Instant::now() + DEADLINE;
        loop {
            n += 1;
            if register(n).await {
                acknowledged.insert(format!("i{n}"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: writes did not resume after the leader was killed"
            );
        }
        cluster.restart(leader).await;
    }
    let present = registry_ids(&url, "svc").await;
    let lost: Vec<&String> = acknowledged.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        acknowledged.len() >= 60,
        "{} acknowledged",
        acknowledged.len()
    );
}

/// A gateway that was away while etcd compacted past its revision gets a
/// fresh snapshot and ends with exactly the registry's state: no missed
/// deregistration, no phantom instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_a_gateway_is_behind_ends_in_the_exact_state() {
    let cluster = EtcdCluster::start(3).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r1 =
        TestRegistry::start_on_etcd_with(listener, cluster.all_endpoints(), PREFIX, fast_leases())
            .await;
    let writer = replica(&cluster).await;
    let spec = |port| InstanceSpec {
        ttl: Some(Duration::from_secs(3600)),
        ..InstanceSpec::new("127.0.0.1", port)
    };
    let c = writer.client();
    c.register_once("svc", "a", &spec(1)).await.unwrap();
    let b = c.register_once("svc", "b", &spec(2)).await.unwrap();
    let gw = TestGateway::start(gateway_options(&[&r1.url])).await;
    gw.wait_revision(b.revision).await;
    assert_eq!(
        gateway_ids(&gw, "auto:svc"),
        ["a".to_string(), "b".to_string()].into()
    );

    // The gateway's registry goes away; meanwhile a leaves, c and d come,
    // and etcd compacts everything up to now.
    r1.stop().await;
    c.deregister("svc", "a").await.unwrap();
    c.register_once("svc", "c", &spec(3)).await.unwrap();
    c.register_once("svc", "d", &spec(4)).await.unwrap();
    c.deregister("svc", "d").await.unwrap();
    let now = cluster.current_revision().await;
    cluster.compact(now).await.unwrap();

    // The registry comes back on the same address; the gateway resumes from
    // a compacted revision and must re-list.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _r1 =
        TestRegistry::start_on_etcd_with(listener, cluster.all_endpoints(), PREFIX, fast_leases())
            .await;
    gw.wait_revision(now as u64).await;
    let want = registry_ids(&writer.url, "svc").await;
    assert_eq!(want, ["b".to_string(), "c".to_string()].into());
    eventually(
        "the gateway to hold exactly the registry's instances",
        || async { gateway_ids(&gw, "auto:svc") == want },
    )
    .await;
}

/// Leases live in etcd: a replica restart neither drops them early (the
/// SDK renews through the other replica) nor keeps them forever (with no
/// renewals the instance expires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_replica_restart_and_still_expire() {
    let cluster = EtcdCluster::start(3).await;
    // An expired instance stays listed `critical` for a minute, not
    // fast_leases' 500 ms: the expiry is seen by polling another replica,
    // and a state that short is one a poll can step over. The grace counts
    // from the sweep that decided the expiry, so an etcd stall under the
    // expiring write is taken from it: with etcd stopped 800 ms (CI's
    // leader logged an 810 ms stall when this failed) the instance was
    // critical for 17 ms, between a poll that answered `passing` and the
    // next, which found it removed; the wait then ran out on `gone`.
    let lease = portico_registry::lease::LeasePolicy {
        critical_grace: Duration::from_secs(60),
        ..fast_leases()
    };
    let start = || TestRegistry::start_on_etcd(cluster.all_endpoints(), PREFIX, lease.clone());
    let (r1, r2) = (start().await, start().await);
    let client =
        portico_registry::client::RegistryClient::new(&[r1.url.as_str(), r2.url.as_str()]).unwrap();
    let spec = InstanceSpec {
        ttl: Some(Duration::from_secs(3)),
        ..InstanceSpec::new("127.0.0.1", 9)
    };
    let registration = client.register("svc", "a", spec).await.unwrap();
    let status = |url: String| async move {
        get(&format!("{url}/v1/services/svc/instances"))
            .await
            .json()["instances"][0]["status"]
            .as_str()
            .unwrap_or("gone")
            .to_string()
    };

    // r1, where heartbeats went, restarts (on a new address, so the
    // client goes on through r2); for two lease lengths the instance must
    // stay passing.
    r1.stop().await;
    let r1 = start().await;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(status(r2.url.clone()).await, "passing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No more renewals: it expires within its lease and a sweep or two.
    drop(registration);
    let stopped = Instant::now();
    eventually("the instance to expire", || async {
        status(r1.url.clone()).await == "critical"
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(1),
        "expired {:?} after the last renewal: too early",
        stopped.elapsed()
    );
}

/// A lease etcd expired while self-preservation held its instance is granted
/// again by the instance's next heartbeat. (etcd-client reports a keep-alive
/// of an expired lease as an error, which was taken for a failing member:
/// the heartbeat answered 503 for as long as the instance lived, so a
/// partition that healed could never end the pause.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_revives_a_lease_etcd_expired_during_a_pause() {
    let cluster = EtcdCluster::start(1).await;
    let registry = replica(&cluster).await;
    let client = registry.client();
    let spec = InstanceSpec {
        // Whole seconds on etcd: the late marker (2 s) lapses before the lease.
        ttl: Some(Duration::from_secs(3)),
        ..InstanceSpec::new("127.0.0.1", 9)
    };
    for id in ["a", "b", "c", "d"] {
        client.register_once("svc", id, &spec).await.unwrap();
    }
    let services = format!("{}/v1/services", registry.url);
    eventually("expiry to pause with every lease lapsed", || async {
        let p = get(&services).await.json()["self_preservation"].clone();
        p["active"] == true && p["lapsed"] == 4
    })
    .await;
    for id in ["a", "b", "c", "d"] {
        assert!(
            client.heartbeat("svc", id).await.unwrap(),
            "heartbeat of {id}"
        );
    }
    eventually("renewals to end the pause", || async {
        get(&services).await.json()["self_preservation"]["active"] == false
    })
    .await;
    let list = client.instances("svc").await.unwrap();
    assert!(
        list.instances
            .iter()
            .all(|i| i.status == portico_registry::model::Status::Passing),
        "{:?}",
        list.instances
    );
}

/// Without quorum: writes answer 503 `store_unavailable`, instance lists are
/// served from a surviving member and say how stale they may be, and a
/// gateway keeps serving its last table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_clearly_reads_say_how_stale_gateways_serve() {
    let mut cluster = EtcdCluster::start(3).await;
    let registry = replica(&cluster).await;
    let echo = TestEcho::start("e").await;
    let first = registry
        .client()
        .register_once("svc", "e", &echo.spec())
        .await
        .unwrap();
    let gw = TestGateway::start(gateway_options(&[&registry.url])).await;
    gw.wait_revision(first.revision).await;
    let fresh = get(&format!("{}/v1/services/svc/instances", registry.url)).await;
    assert!(!fresh.headers.contains_key("x-portico-stale-ms"));

    let leader = cluster.leader().await;
    cluster.kill9(leader);
    cluster.kill9((leader + 1) % 3);

    let write = put_json(
        &format!("{}/v1/services/svc/instances/f", registry.url),
        json!({"address": "127.0.0.1", "port": 9}),
    )
    .await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(write.json()["code"], "store_unavailable");

    let stale = get(&format!("{}/v1/services/svc/instances", registry.url)).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(
        stale.headers.contains_key("x-portico-stale-ms"),
        "{:?}",
        stale.headers
    );
    assert!(stale.json()["stale_ms"].as_u64().is_some());
    assert_eq!(stale.json()["instances"][0]["id"], "e", "{}", stale.json());

    for _ in 0..20 {
        assert_eq!(get(&format!("{}/svc/x", gw.url)).await.instance(), "e");
    }
    // The failed write changed nothing once the cluster is whole again.
    cluster.restart(leader).await;
    cluster.restart((leader + 1) % 3).await;
    eventually("writes to work again", || async {
        get(&format!("{}/readyz", registry.url)).await.status == StatusCode::OK
    })
    .await;
    let list = get(&format!("{}/v1/services/svc/instances", registry.url)).await;
    assert!(!list.headers.contains_key("x-portico-stale-ms"));
    assert_eq!(list.json()["instances"].as_array().unwrap().len(), 1);
}

/// Registers `n` instances of `service` through `registry`, `width` at a time.
async fn register_many(registry: &str, service: &str, n: usize, body: serde_json::Value) {
    let h = http();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (h, body) = (h.clone(), body.to_string());
        let base = format!("{registry}/v1/services/{service}/instances");
        tasks.spawn(async move {
            for i in (t..n).step_by(16) {
                let url = format!("{base}/i{i}");
                let r = send(
                    &h,
                    Method::PUT,
                    &url,
                    &[("content-type", "application/json")],
                    Bytes::from(body.clone()),
                )
                .await
                .unwrap();
                assert_eq!(r.status, StatusCode::OK, "{url}: {:?}", r.body);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// More instance data than one gRPC message holds (etcd-client's limit is
/// 4 MiB; here about 5 MB): the registry still lists it, gateways still get
/// their snapshot, and leases still expire. (Reading it as one etcd range
/// made `GET /v1/services` answer 500 and every lease sweep fail, so nothing
/// expired any more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_larger_than_one_grpc_message_is_read_in_pages() {
    let cluster = EtcdCluster::start(1).await;
    let registry = replica(&cluster).await;
    // 16 metadata values of 500 bytes: about 8.5 KB per instance.
    let meta: serde_json::Map<String, serde_json::Value> = (0..16)
        .map(|k| (format!("k{k}"), json!("x".repeat(500))))
        .collect();
    let big = json!({"address": "127.0.0.1", "port": 9, "ttl": "1h", "meta": meta});
    register_many(&registry.url, "big", 600, big).await;
    let dying = InstanceSpec {
        ttl: Some(Duration::from_secs(1)),
        ..InstanceSpec::new("127.0.0.1", 9)
    };
    let last = registry
        .client()
        .register_once("dies", "d", &dying)
        .await
        .unwrap();

    let services = get(&format!("{}/v1/services", registry.url)).await;
    assert_eq!(services.status, StatusCode::OK, "{:?}", services.body);
    assert_eq!(services.json()["services"][0]["name"], "big");
    assert_eq!(services.json()["services"][0]["instances"]["passing"], 600);
    let gw = TestGateway::start(gateway_options(&[&registry.url])).await;
    gw.wait_revision(last.revision).await;
    assert_eq!(gateway_ids(&gw, "auto:big").len(), 600);

    // Nobody renews "d": the sweeps, which read every lease, expire it.
    let status = format!("{}/v1/services/dies/instances", registry.url);
    eventually("the unrenewed instance to expire", || async {
        get(&status).await.json()["instances"][0]["status"] == "critical"
    })
    .await;
}

/// Sums the requests etcd's members received that cost etcd work per
/// heartbeat under the old design: reads, writes and lease keep-alives.
async fn etcd_requests(cluster: &EtcdCluster) -> u64 {
    let by_method = cluster.grpc_messages().await;
    [
        "Range",
        "Txn",
        "Put",
        "DeleteRange",
        "LeaseGrant",
        "LeaseKeepAlive",
        "LeaseRevoke",
    ]
    .iter()
    .map(|m| by_method.get(*m).copied().unwrap_or(0))
    .sum()
}

/// A heartbeat costs etcd nothing: a thousand of them send etcd no request
/// at all (what etcd receives meanwhile is the replica's own session
/// keep-alive, a few messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_send_etcd_nothing() {
    let cluster = EtcdCluster::start(1).await;
    // Sweeps read every lease (a Range every 100 ms with the fast test
    // policy): that is the sweeper's cost, counted by the tests above, not
    // the heartbeats'. Here sweeps are a minute apart so only what the
    // heartbeats cause is counted, however long the loop takes.
    let lease = portico_registry::lease::LeasePolicy {
        sweep_interval: Duration::from_secs(60),
        ..fast_leases()
    };
    let registry = TestRegistry::start_on_etcd(cluster.all_endpoints(), PREFIX, lease).await;
    register_many(
        &registry.url,
        "svc",
        50,
        json!({"address": "127.0.0.1", "port": 9, "ttl": "1h"}),
    )
    .await;
    let h = http();
    let round = |round: usize| {
        let h = h.clone();
        let base = registry.url.clone();
        async move {
            for i in 0..50 {
                let url = format!("{base}/v1/services/svc/instances/i{i}/heartbeat");
                let r = send(&h, Method::PUT, &url, &[], Bytes::new())
                    .await
                    .unwrap();
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "round {round}, i{i}: {:?}",
                    r.body
                );
            }
        }
    };
    // A heartbeat for an instance the replica's mirror has not seen yet
    // (its registration's watch event still on its way) reads etcd once:
    // read-your-writes. Warm up until a whole round costs etcd nothing.
    eventually("a round of heartbeats that costs etcd nothing", || async {
        let before = etcd_requests(&cluster).await;
        round(0).await;
        etcd_requests(&cluster).await == before
    })
    .await;
    let before_map = cluster.grpc_messages().await;
    let before = etcd_requests(&cluster).await;
    for r in 1..=20 {
        round(r).await;
    }
    let sent = etcd_requests(&cluster).await - before;
    let after = cluster.grpc_messages().await;
    let delta: BTreeMap<&String, u64> = after
        .iter()
        .map(|(k, v)| (k, v - before_map.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert!(
        sent <= 20,
        "1,000 heartbeats sent etcd {sent} requests (by method: {delta:?})"
    );
}

/// Two replicas asked at the same instant for two routes with one match:
/// exactly one is accepted, every time. (The check read the routes, then
/// wrote, under a lock each replica held only for itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_both_accept_one_match() {
    let cluster = EtcdCluster::start(1).await;
    let (r1, r2) = (replica(&cluster).await, replica(&cluster).await);
    for round in 0..40 {
        let body = json!({"path_prefix": format!("/race{round}"), "upstreams": ["127.0.0.1:9"]});
        let (url_a, url_b) = (
            format!("{}/v1/routes/a{round}", r1.url),
            format!("{}/v1/routes/b{round}", r2.url),
        );
        let (a, b) = tokio::join!(put_json(&url_a, body.clone()), put_json(&url_b, body));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}: {:?} / {:?}",
            a.body,
            b.body
        );
    }
    let routes = get(&format!("{}/v1/routes", r1.url)).await.json();
    assert_eq!(routes["routes"].as_array().unwrap().len(), 40);
}

/// A write whose answer is lost (the member committed it, then went
/// silent) is tried again on the next member and applied exactly once: the
/// key's version says how many times it was written, and the answer is the
/// revision of that one write. A conditional write in the same situation
/// reports that it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_applied_once() {
    use portico_registry::store::Store;
    use portico_registry::store::etcd::EtcdStore;
    use support::etcd::HoldingProxy;

    let cluster = EtcdCluster::start(3).await;
    let key = "routes/once";
    let etcd_key = b"/once/kv/routes/once";
    let mut last = None;
    for phase in ["put", "put_if"] {
        // A store whose first member is reached through a proxy we can silence.
        let proxy = HoldingProxy::start(&cluster.endpoint(0)).await;
        let endpoints = vec![proxy.url.clone(), cluster.endpoint(1), cluster.endpoint(2)];
        let store = EtcdStore::new(endpoints, "/once/").unwrap();
        store.check().await.unwrap();
        proxy.hold();
        let started = Instant::now();
        let value = Bytes::from(format!("{{\"phase\":\"{phase}\"}}"));
        let revision = match last {
            None => store.put(key, value, None).await.unwrap(),
            Some(expected) => store
                .put_if(key, value, expected)
                .await
                .unwrap()
                .expect("the conditional write applied and says so"),
        };
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{phase}: the write did not go through the silenced member first"
        );
        let stored = cluster.range(etcd_key).await;
        assert_eq!(stored.len(), 1);
        let expected_version = if last.is_none() { 1 } else { 2 };
        assert_eq!(
            stored[0].version,
            expected_version,
            "{phase}: applied {} times",
            stored[0].version - expected_version + 1
        );
        assert_eq!(stored[0].mod_revision as u64, revision, "{phase}");
        last = Some(revision);
    }
}

/// A store closed while it is still opening its session gives the session
/// back all the same. etcd has granted the lease and written
/// `session/{id}`, but the answer to that write has not arrived (the proxy
/// holds every answer from that request on), so the store has no session
/// it vouches for yet. Closing must revoke the lease anyway: a `session/`
/// key left behind says the replica is alive, and the others would not
/// adopt its leases for the whole session TTL (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_closed_while_opening_its_session_gives_it_back() {
    use portico_registry::store::Store;
    use portico_registry::store::etcd::EtcdStore;
    use support::etcd::HoldingProxy;

    let cluster = EtcdCluster::start(1).await;
    let sessions = b"/opening/session/";
    let proxy = HoldingProxy::holding_from(&cluster.endpoint(0), sessions).await;
    let endpoints = vec![proxy.url.clone()];
    let store =
        EtcdStore::with_session_ttl(endpoints, "/opening/", Duration::from_secs(60)).unwrap();
    eventually("etcd to hold the store's session key", || async {
        cluster.range(sessions).await.len() == 1
    })
    .await;
    let holding = store.holding().expect("the etcd store reports its session");
    assert_eq!(holding.session, None, "the session's setup is not over");
    store.close().await;
    eventually(
        "the session key to be gone with the closed store",
        || async { cluster.range(sessions).await.is_empty() },
    )
    .await;
}

/// A session write that fails may still have been applied (its answer lost):
/// the store revokes that lease before it grants another, so the key it may
/// have left does not outlive the attempt. Here etcd applies the write and
/// every answer from then on is held; before, `session/{id}` stayed for its
/// whole TTL (60 s, beyond the test's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_write_that_failed_leaves_no_session_key() {
    use portico_registry::store::Store;
    use portico_registry::store::etcd::EtcdStore;
    use support::etcd::HoldingProxy;

    let cluster = EtcdCluster::start(1).await;
    let sessions = b"/unanswered/session/";
    let proxy = HoldingProxy::holding_from(&cluster.endpoint(0), sessions).await;
    let store = EtcdStore::with_session_ttl(
        vec![proxy.url.clone()],
        "/unanswered/",
        Duration::from_secs(60),
    )
    .unwrap();
    eventually("etcd to hold the store's session key", || async {
        cluster.range(sessions).await.len() == 1
    })
    .await;
    eventually(
        "the key of the session whose write went unanswered to be revoked",
        || async { cluster.range(sessions).await.is_empty() },
    )
    .await;
    let holding = store.holding().expect("the etcd store reports its session");
    assert_eq!(holding.session, None, "no session was ever confirmed");
    store.close().await;
}

/// A sweep that fails is an alarm: logged, counted, and after a few in a
/// row `/readyz` answers 503 naming it, until sweeps work again. Here etcd
/// is full (its NOSPACE alarm refuses writes, reads go on), so marking a
/// lapsed instance critical fails. (It used to fail every second, silently,
/// while the registry reported ready.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sweep_is_an_alarm() {
    let cluster = EtcdCluster::start_with_quota(1, 4 << 20).await;
    let registry = replica(&cluster).await;
    // The lease must lapse only once etcd refuses writes, or the sweep
    // would mark it critical before (and removing it needs no room).
    let spec = InstanceSpec {
        ttl: Some(Duration::from_secs(5)),
        ..InstanceSpec::new("127.0.0.1", 9)
    };
    registry
        .client()
        .register_once("svc", "a", &spec)
        .await
        .unwrap();
    // Fill etcd past its quota.
    let junk = vec![b'x'; 512 * 1024];
    for i in 0.. {
        if cluster
            .put_on(0, format!("/junk/{i}").as_bytes(), &junk)
            .await
            .is_err()
        {
            break;
        }
        assert!(i < 64, "etcd never refused a write");
    }
    assert_eq!(cluster.alarms().await, ["NOSPACE"]);
    let list = format!("{}/v1/services/svc/instances", registry.url);
    assert_eq!(
        get(&list).await.json()["instances"][0]["status"],
        "passing",
        "the machine was too slow: the lease lapsed before etcd was full"
    );

    let readyz = format!("{}/readyz", registry.url);
    eventually("readiness to report the failing sweep", || async {
        let r = get(&readyz).await;
        r.status == StatusCode::SERVICE_UNAVAILABLE
            && r.json()["error"].as_str().unwrap_or("").contains("sweep")
    })
    .await;
    let metrics = get(&format!("{}/metrics", registry.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l == "portico_registry_sweep_failing 1"),
        "{text}"
    );
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix("portico_registry_sweep_failures_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 3, "{text}");

    // The operator makes room: sweeps work again, the instance expires.
    cluster.free_space(b"/junk/").await;
    eventually("readiness to recover", || async {
        get(&readyz).await.status == StatusCode::OK
    })
    .await;
    eventually("the lapsed instance to expire", || async {
        get(&list).await.json()["instances"][0]["status"] == "critical"
    })
    .await;
}

/// Self-preservation sees the whole fleet whichever replica holds which
/// lease: 6 silent instances held by one replica and 4 held by the other
/// are half of 20, so both pause and nothing expires (each replica alone
/// sees less than the threshold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_preservation_counts_the_leases_other_replicas_hold() {
    use support::etcd::{Fleet, FleetMember, register_fleet};

    let cluster = EtcdCluster::start(1).await;
    let (r1, r2) = (replica(&cluster).await, replica(&cluster).await);
    let replicas = [r1.url.clone(), r2.url.clone()];
    let members: Vec<FleetMember> = (0..20)
        .map(|i| FleetMember {
            service: "svc".into(),
            id: format!("i{i}"),
            home: i / 10,
            failover_after: Duration::ZERO,
        })
        .collect();
    register_fleet(&replicas, &members, "3s").await;
    // Silent: i0..i5 (held by r1) and i10..i13 (held by r2).
    let alive: Vec<FleetMember> = members
        .iter()
        .filter(|m| {
            let i: usize = m.id[1..].parse().unwrap();
            !(i < 6 || (10..14).contains(&i))
        })
        .cloned()
        .collect();
    let fleet = Fleet::start(
        &replicas,
        &alive,
        "3s",
        Duration::from_millis(900),
        2,
        Duration::from_secs(2),
    );
    for r in &replicas {
        let services = format!("{r}/v1/services");
        eventually("expiry to pause with ten leases lapsed", || async {
            let p = get(&services).await.json()["self_preservation"].clone();
            p["active"] == true && p["lapsed"] == 10
        })
        .await;
    }
    for r in &replicas {
        let list = get(&format!("{r}/v1/services/svc/instances")).await.json();
        let critical = list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "critical")
            .count();
        assert_eq!(critical, 0, "{list}");
    }
    assert_eq!(fleet.stats.not_found(), 0);
    fleet.stop().await;
}
