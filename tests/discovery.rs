//! Registration → gateway: balancing over discovered instances, expiry of an
//! instance that stops heartbeating, deregistration, self-preservation.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_registry::lease::LeasePolicy;
use portico_registry::model::Status;
use support::*;

async fn count_instances(url: &str, n: usize) -> HashMap<String, usize> {
    let http = http();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = send(&http, Method::GET, url, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        *counts.entry(r.instance()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_self_registered_instances_share_traffic() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let mut echoes = Vec::new();
    let mut regs = Vec::new();
    let mut last = 0;
    for n in 1..=3 {
        let echo = TestEcho::start(&format!("echo-{n}")).await;
        let reg = client
            .register("echo", &echo.id, echo.spec())
            .await
            .unwrap();
        last = reg.revision();
        regs.push(reg);
        echoes.push(echo);
    }
    gateway.wait_revision(last).await;

    let counts = count_instances(&format!("{}/echo/hi", gateway.url), 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!((80..=120).contains(n), "{id} got {n} of 300: {counts:?}");
    }
    for r in regs {
        r.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_heartbeating_stops_receiving_traffic() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let live = TestEcho::start("live").await;
    let dead = TestEcho::start("dead").await;
    let mut live_spec = live.spec();
    live_spec.ttl = Some(Duration::from_secs(2));
    let _live = client.register("svc", "live", live_spec).await.unwrap();
    // Registered once, never renewed: its lease lapses after 1s.
    let mut dead_spec = dead.spec();
    dead_spec.ttl = Some(Duration::from_secs(1));
    let r = client
        .register_once("svc", "dead", &dead_spec)
        .await
        .unwrap();
    gateway.wait_revision(r.revision).await;
    let url = format!("{}/svc/", gateway.url);
    let counts = count_instances(&url, 10).await;
    assert_eq!(
        counts.get("dead"),
        Some(&5),
        "both serve at first: {counts:?}"
    );

    // After the TTL and one sweep the registry marks it critical and the gateway drops it.
    eventually("the dead instance to be marked critical", || async {
        let list = client.instances("svc").await.unwrap();
        list.instances
            .iter()
            .any(|i| i.id == "dead" && i.status == portico_registry::model::Status::Critical)
    })
    .await;
    let rev = client.instances("svc").await.unwrap().revision;
    gateway.wait_revision(rev).await;
    let counts = count_instances(&url, 50).await;
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert_eq!(counts.get("live"), Some(&50));

    // A heartbeat for an expired instance is refused: it must register again.
    assert!(!client.heartbeat("svc", "dead").await.unwrap());
    // And after the grace period it is removed altogether.
    eventually("the expired instance to be removed", || async {
        client
            .instances("svc")
            .await
            .unwrap()
            .instances
            .iter()
            .all(|i| i.id != "dead")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_instance_gets_no_new_requests() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let a = TestEcho::start("a").await;
    let b = TestEcho::start("b").await;
    client.register_once("svc", "a", &a.spec()).await.unwrap();
    let r = client.register_once("svc", "b", &b.spec()).await.unwrap();
    gateway.wait_revision(r.revision).await;
    let url = format!("{}/svc/", gateway.url);
    assert_eq!(count_instances(&url, 4).await.len(), 2);

    let reply = call(
        Method::DELETE,
        &format!("{}/v1/services/svc/instances/b", registry.url),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let rev = reply.json()["revision"].as_u64().unwrap();
    gateway.wait_revision(rev).await;
    let counts = count_instances(&url, 100).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");
    assert_eq!(counts.get("a"), Some(&100));

    // Deleting again is fine and changes nothing.
    let again = call(
        Method::DELETE,
        &format!("{}/v1/services/svc/instances/b", registry.url),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["removed"], false);
    assert_eq!(again.json()["revision"].as_u64().unwrap(), rev);
}

async fn readyz(url: &str) -> serde_json::Value {
    get(&format!("{url}/readyz")).await.json()
}

async fn wait_sweeps(url: &str, more: u64) {
    let start = readyz(url).await["lease_sweeps"].as_u64().unwrap();
    eventually(&format!("{more} more lease sweeps"), || async {
        readyz(url).await["lease_sweeps"].as_u64().unwrap() >= start + more
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_preservation_pauses_mass_expiry_but_not_a_lone_death() {
    let registry = TestRegistry::start(LeasePolicy {
        sweep_interval: Duration::from_millis(100),
        critical_grace: Duration::from_secs(60),
        ..LeasePolicy::default()
    })
    .await;
    let client = registry.client();
    let ids: Vec<String> = (0..10).map(|n| format!("i{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut spec = portico_registry::model::InstanceSpec::new("127.0.0.1", 10_000 + n as u16);
        spec.ttl = Some(Duration::from_secs(3));
        client.register_once("fleet", id, &spec).await.unwrap();
    }
    // Heartbeats for every live instance in one pass, so the ones taken out
    // of the list together stop together (as in a partition).
    let alive = std::sync::Arc::new(tokio::sync::Mutex::new(ids.clone()));
    let driver = drive_heartbeats(client.clone(), alive.clone());

    // One dies alone: 1 of 10 is far below the threshold, so it expires on time.
    alive.lock().await.retain(|id| id != "i9");
    eventually("the lone dead instance to expire", || async {
        let list = client.instances("fleet").await.unwrap();
        list.instances
            .iter()
            .any(|i| i.id == "i9" && i.status == Status::Critical)
    })
    .await;
    assert_eq!(fleet_by_status(&client).await, (9, 1));

    // Now eight of the nine live ones go silent at once: that looks like a
    // partition, not mass death. Expiry pauses.
    alive.lock().await.truncate(1);
    eventually("expiry to pause or another instance to expire", || async {
        preservation(&registry.url).await["active"] == true || fleet_by_status(&client).await.1 > 1
    })
    .await;
    assert_eq!(
        fleet_by_status(&client).await,
        (9, 1),
        "expiry must pause, not expire the silent eight"
    );
    assert_eq!(
        readyz(&registry.url).await["self_preservation"]["active"],
        true
    );
    wait_sweeps(&registry.url, 5).await;
    assert_eq!(
        fleet_by_status(&client).await,
        (9, 1),
        "expiry must stay paused"
    );

    // They come back and heartbeat again: renewals recover, the flag clears.
    *alive.lock().await = ids[..9].to_vec();
    eventually("self-preservation to release", || async {
        preservation(&registry.url).await["active"] == false
    })
    .await;
    assert_eq!(fleet_by_status(&client).await, (9, 1));
    driver.abort();
}

/// Renews every instance named in `alive` every 200 ms, all in one pass
/// while holding the list, so instances taken out of it between passes
/// stop renewing together (as in a partition) rather than one by one.
fn drive_heartbeats(
    client: portico_registry::client::RegistryClient,
    alive: std::sync::Arc<tokio::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            {
                let ids = alive.lock().await;
                for id in ids.iter() {
                    let _ = client.heartbeat("fleet", id).await;
                }
            }
            // The renewal period (well under a third of the lease), not a wait for anything.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn fleet_by_status(client: &portico_registry::client::RegistryClient) -> (usize, usize) {
    let list = client.instances("fleet").await.unwrap();
    let critical = list
        .instances
        .iter()
        .filter(|i| i.status == Status::Critical)
        .count();
    (list.instances.len() - critical, critical)
}

async fn preservation(url: &str) -> serde_json::Value {
    get(&format!("{url}/v1/services", url = url)).await.json()["self_preservation"].clone()
}

/// Item 11: exactly half of 20 leases lapsing together pauses expiry (the
/// threshold is "at or above"); below the threshold a cap spreads expiry
/// out (15% of the live leases per window), and what it holds back shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_fleet_silent_pauses_expiry_and_less_is_expired_at_a_capped_rate() {
    let registry = TestRegistry::start(LeasePolicy {
        sweep_interval: Duration::from_millis(100),
        critical_grace: Duration::from_secs(3600),
        // Nothing leaves the cap's window while the test runs.
        expiry_window: Duration::from_secs(3600),
        ..LeasePolicy::default()
    })
    .await;
    let client = registry.client();
    let ids: Vec<String> = (0..20).map(|n| format!("i{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut spec = portico_registry::model::InstanceSpec::new("127.0.0.1", 10_000 + n as u16);
        // Long enough that on etcd (whole-second leases) the "late" marker
        // (two thirds of the lease) lapses well before the lease itself.
        spec.ttl = Some(Duration::from_secs(6));
        client.register_once("fleet", id, &spec).await.unwrap();
    }
    let alive = std::sync::Arc::new(tokio::sync::Mutex::new(ids.clone()));
    let driver = drive_heartbeats(client.clone(), alive.clone());

    // Exactly ten of twenty go silent at once.
    alive.lock().await.truncate(10);
    eventually("expiry to pause or an instance to expire", || async {
        preservation(&registry.url).await["active"] == true || fleet_by_status(&client).await.1 > 0
    })
    .await;
    assert_eq!(
        fleet_by_status(&client).await,
        (20, 0),
        "half the fleet silent must pause expiry, not expire it"
    );
    wait_sweeps(&registry.url, 5).await;
    assert_eq!(fleet_by_status(&client).await, (20, 0));
    assert_eq!(preservation(&registry.url).await["active"], true);

    // They come back: renewals recover and expiry resumes.
    *alive.lock().await = ids.clone();
    eventually("self-preservation to release", || async {
        preservation(&registry.url).await["active"] == false
    })
    .await;

    // Six of twenty (30%, under the threshold) go silent: the cap lets 15%
    // of the live leases (3) expire, holds the other 3 back, and says so.
    alive.lock().await.truncate(14);
    eventually("three expiries and three held back", || async {
        fleet_by_status(&client).await.1 >= 3 && preservation(&registry.url).await["held_back"] == 3
    })
    .await;
    wait_sweeps(&registry.url, 5).await;
    assert_eq!(fleet_by_status(&client).await, (17, 3));
    let p = preservation(&registry.url).await;
    assert_eq!(
        (p["active"].clone(), p["held_back"].clone()),
        (false.into(), 3.into()),
        "{p}"
    );
    let metrics = get(&format!("{}/metrics", registry.url)).await;
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .any(|l| l == "portico_registry_expiry_held_back 3"),
        "{}",
        String::from_utf8_lossy(&metrics.body)
    );
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_checks_instances_registered_with_a_check() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let checked = FaultyBackend::start("checked").await;
    let other = TestEcho::start("other").await;
    let body = serde_json::json!({
        "address": "127.0.0.1", "port": checked.addr.port(), "ttl": "30s",
        "check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms", "failures": 2, "successes": 1}
    });
    let r = put_json(
        &format!("{}/v1/services/svc/instances/checked", registry.url),
        body,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["instance"]["check"]["interval"], "100ms");
    client
        .register_once("svc", "other", &other.spec())
        .await
        .unwrap();

    let status = |id: &'static str| {
        let client = client.clone();
        async move {
            let list = client.instances("svc").await.unwrap();
            (
                list.instances
                    .iter()
                    .find(|i| i.id == id)
                    .map(|i| (i.status, i.check_failing)),
                list.revision,
            )
        }
    };
    checked.set_failing(true);
    eventually(
        "the failing check to make the instance critical",
        || async { status("checked").await.0 == Some((Status::Critical, true)) },
    )
    .await;
    // Its lease still runs: a heartbeat is accepted, and it is not removed.
    assert!(client.heartbeat("svc", "checked").await.unwrap());
    gateway.wait_revision(status("checked").await.1).await;
    for _ in 0..10 {
        assert_eq!(
            get(&format!("{}/svc/", gateway.url)).await.instance(),
            "other"
        );
    }

    checked.set_failing(false);
    eventually("a passing check to bring it back", || async {
        status("checked").await.0 == Some((Status::Passing, false))
    })
    .await;
}

/// Consul's model: an instance registered with a check and no `ttl` has no
/// lease. It outlives instances that stop heartbeating, follows its check
/// (HTTP here, TCP below), and is removed once its check has been critical
/// for `deregister_critical_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_a_check_and_no_ttl_lives_by_its_check() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gateway = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let checked = FaultyBackend::start("kept").await;
    let url = |id: &str| format!("{}/v1/services/svc/instances/{id}", registry.url);
    let r = put_json(
        &url("kept"),
        serde_json::json!({
            "address": "127.0.0.1", "port": checked.addr.port(),
            "check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms",
                      "failures": 2, "deregister_critical_after": "1s"}
        }),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["instance"].get("ttl").is_none(), "{}", r.json());
    // A neighbour on a 1 s lease that never heartbeats: once it has expired,
    // a lease of any length the kept one might wrongly have had was tested.
    let mut short = TestEcho::start("short").await.spec();
    short.ttl = Some(Duration::from_secs(1));
    client.register_once("svc", "short", &short).await.unwrap();
    let status = |id: &'static str| {
        let client = client.clone();
        async move {
            let list = client.instances("svc").await.unwrap();
            let found = list.instances.iter().find(|i| i.id == id);
            (found.map(|i| (i.status, i.check_failing)), list.revision)
        }
    };
    eventually("the neighbour without heartbeats to expire", || async {
        status("short").await.0 == Some((Status::Critical, false))
    })
    .await;
    let (kept, revision) = status("kept").await;
    assert_eq!(kept, Some((Status::Passing, false)));
    assert!(checked.received() > 3, "the check ran");
    gateway.wait_revision(revision).await;
    // The only routable instance: the gateway sends to it (it answers its name).
    let routed = get(&format!("{}/svc/", gateway.url)).await;
    assert_eq!(routed.body, "kept");
    // A heartbeat is harmless: answered, no lease in the answer.
    let beat = call(Method::PUT, &format!("{}/heartbeat", url("kept"))).await;
    assert_eq!(beat.status, StatusCode::OK);
    assert!(beat.json().get("ttl").is_none(), "{}", beat.json());

    // Failing: critical (out of rotation), then removed after 1 s of it.
    checked.set_failing(true);
    eventually("the failing check to make it critical", || async {
        status("kept").await.0 == Some((Status::Critical, true))
    })
    .await;
    eventually("deregister_critical_after to remove it", || async {
        status("kept").await.0.is_none()
    })
    .await;
    // Counted once the removal's write returned (after the list saw it).
    eventually("the removal to be counted", || async {
        let metrics = get(&format!("{}/metrics", registry.url)).await;
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .any(|l| l == "portico_registry_check_deregistrations_total 1")
    })
    .await;
}

/// A TCP check passes while the instance accepts connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_follows_whether_the_port_accepts() {
    let registry = TestRegistry::start(fast_leases()).await;
    let client = registry.client();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = put_json(
        &format!("{}/v1/services/db/instances/db-1", registry.url),
        serde_json::json!({
            "address": "127.0.0.1", "port": port,
            "check": {"tcp": true, "interval": "100ms", "timeout": "100ms", "failures": 1}
        }),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["instance"]["check"]["tcp"], true);
    let status = || {
        let client = client.clone();
        async move {
            let list = client.instances("db").await.unwrap();
            list.instances.first().map(|i| i.status)
        }
    };
    let checks = || async {
        let text = get(&format!("{}/metrics", registry.url)).await;
        let text = String::from_utf8_lossy(&text.body).to_string();
        let count = |result: &str| {
            let name = format!("portico_registry_checks_total{{result=\"{result}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&name)?.parse::<u64>().ok())
                .unwrap()
        };
        (count("pass"), count("fail"))
    };
    eventually("three passing TCP checks", || async {
        checks().await.0 >= 3
    })
    .await;
    assert_eq!(status().await, Some(Status::Passing));
    drop(listener);
    eventually("a refused connection to make it critical", || async {
        status().await == Some(Status::Critical)
    })
    .await;
    assert!(checks().await.1 >= 1);
    // Nothing removes it (no deregister_critical_after): it is kept,
    // critical, until the port accepts again.
    let again = std::net::TcpListener::bind(("127.0.0.1", port));
    let Ok(_again) = again else {
        // Another process took the port meanwhile: the rest cannot be shown.
        panic!("port {port} was taken by another process before the test could listen again");
    };
    eventually("an accepting port to make it passing again", || async {
        status().await == Some(Status::Passing)
    })
    .await;
}
