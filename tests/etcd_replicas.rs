//! Registry replicas as real processes over a real 3-member etcd, under
//! heartbeat load, with faults: a replica killed with `kill -9`, a replica
//! stopped (SIGSTOP) for longer than a lease, the etcd leader killed.
//!
//! The numbers are chosen so that the faults would expire instances if
//! leases were not held and handed over as designed (docs/architecture.md,
//! "The etcd store"): a client that fails over late misses more than a
//! lease length since its last heartbeat, but less than the session TTL
//! plus a lease length, which is the grace an adopted lease gets.

#![cfg(feature = "etcd")]

mod support;

use http::StatusCode;
use std::time::Duration;

use support::etcd::{EtcdCluster, Fleet, FleetMember, RegistryProcess};
use support::*;

/// These tests each run a 3-member etcd, replicas and thousands of
/// clients: one at a time, so that none starves another on a 2-core CI
/// machine (a starved client would prove nothing about the registry).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A counter or gauge from a registry's `/metrics`.
async fn metric(registry: &str, name: &str) -> u64 {
    let text = get(&format!("{registry}/metrics")).await;
    String::from_utf8_lossy(&text.body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} missing from {registry}/metrics")) as u64
}

/// Passing and critical instances over every service, as `registry` lists them.
async fn counts(registry: &str) -> (u64, u64) {
    let v = get(&format!("{registry}/v1/services")).await.json();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(p, c), s| {
            (
                p + s["instances"]["passing"].as_u64().unwrap(),
                c + s["instances"]["critical"].as_u64().unwrap(),
            )
        })
}

/// Waits until every member is registered and renewed once. Registering
/// thousands takes a while on a loaded machine: a longer deadline than
/// `eventually`'s, still bounded.
async fn first_round(fleet: &Fleet, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while fleet.stats.registered() < n || fleet.stats.ok() < 2 * n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a first round: {} of {n} registered, {} answered",
            fleet.stats.registered(),
            fleet.stats.ok()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Leases lapsed during the first round because the clients could not
    // keep their own schedule would prove nothing about the registry.
    kept_schedule(fleet, Duration::from_secs(5));
    fleet
        .stats
        .max_lag_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);
}

/// The fleet's answers so far, for failure messages.
fn tally(fleet: &Fleet) -> String {
    let s = &fleet.stats;
    format!(
        "clients: {} ok, {} failed, {} refused, {} not found, {:?} max lag",
        s.ok(),
        s.failed(),
        s.refused(),
        s.not_found(),
        s.max_lag()
    )
}

/// The clients kept their schedule (within `slack`): otherwise an expiry
/// would be the test's fault, not the registry's.
fn kept_schedule(fleet: &Fleet, slack: Duration) {
    assert!(
        fleet.stats.max_lag() < slack,
        "the test's clients fell {:?} behind their heartbeat schedule (machine too loaded)",
        fleet.stats.max_lag()
    );
}

/// Polls `check` until `window` has passed, failing at the first error.
async fn holds_for(
    what: &str,
    window: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        if let Err(e) = check().await {
            panic!("{what} stopped holding: {e}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `Ok` when `registry` lists exactly `n` instances, all passing.
async fn all_passing(registry: &str, n: u64) -> Result<(), String> {
    match counts(registry).await {
        (p, 0) if p == n => Ok(()),
        (p, c) => Err(format!(
            "{registry}: {p} passing, {c} critical, want {n} passing"
        )),
    }
}

/// A replica stopped with SIGTERM gives its etcd session back before it
/// exits, so the others adopt its leases at once. (It was given back by a
/// task spawned as the store was dropped, which died with the runtime: the
/// session, and the leases it held, stayed for its whole TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_with_sigterm_gives_its_session_back() {
    let cluster = EtcdCluster::start(1).await;
    let mut replica = RegistryProcess::start(&cluster.all_endpoints(), "60s").await;
    let sessions = b"/portico/session/";
    assert_eq!(
        cluster.range(sessions).await.len(),
        1,
        "the replica's session, before it stops"
    );
    let status = replica.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let left = cluster.range(sessions).await;
    assert!(
        left.is_empty(),
        "a session outlived its replica (its TTL is a minute): {:?}",
        left.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect::<Vec<_>>()
    );
}

/// `kill -9` of a replica holding 30% of 10,000 heartbeating instances:
/// its clients that fail over at once keep working at once on the other
/// replica, those that come back late (more than a lease length after
/// their last heartbeat) find their lease adopted with a full lease of
/// grace, and no instance expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_10000_heartbeating_instances_expires_none() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let mut a = RegistryProcess::start(&cluster.all_endpoints(), "6s").await;
    let b = RegistryProcess::start(&cluster.all_endpoints(), "6s").await;
    let replicas = [a.url.clone(), b.url.clone()];
    // Lease 60 s, heartbeats every 20 s (500 a second: debug builds of two
    // replicas and of these clients share 2 cores with etcd). Half of A's
    // clients try B at once; the other half wait 21 s first: they skip a
    // turn and come back a lease after their last heartbeat, less than A's
    // session TTL (6 s) plus a lease, the grace an adopted lease gets.
    let members: Vec<FleetMember> = (0..10_000)
        .map(|i| FleetMember {
            service: format!("svc{}", i % 50),
            id: format!("i{i}"),
            home: usize::from(i % 10 >= 3),
            failover_after: if i % 10 < 3 && (i / 10) % 2 == 1 {
                Duration::from_secs(21)
            } else {
                Duration::ZERO
            },
        })
        .collect();
    let fleet = Fleet::start(
        &replicas,
        &members,
        "60s",
        Duration::from_secs(20),
        64,
        Duration::from_secs(5),
    );
    first_round(&fleet, 10_000).await;
    if let Err(e) = all_passing(&b.url, 10_000).await {
        panic!("before the kill: {e}; {}", tally(&fleet));
    }
    assert_eq!(
        metric(&a.url, "portico_registry_lease_expiries_total").await,
        0
    );

    a.kill9();
    let (failed_before, refused_before) = (fleet.stats.failed(), fleet.stats.refused());
    holds_for(
        "every instance passing on the surviving replica",
        Duration::from_secs(64),
        async || all_passing(&b.url, 10_000).await,
    )
    .await;
    kept_schedule(&fleet, Duration::from_secs(5));
    assert_eq!(
        metric(&b.url, "portico_registry_lease_expiries_total").await,
        0
    );
    assert!(metric(&b.url, "portico_registry_lease_adoptions_total").await > 0);
    // Claims (clients that failed over before the adoption) are not
    // asserted: on a starved machine, clients may all have moved to B
    // before the kill, or A's session may have ended and been adopted.
    // Every heartbeat B got was answered 200; the only failures were the
    // one attempt each of A's clients made on the dead replica.
    assert_eq!(fleet.stats.not_found(), 0);
    assert_eq!(
        fleet.stats.refused() - refused_before,
        0,
        "{}",
        tally(&fleet)
    );
    let failed = fleet.stats.failed() - failed_before;
    assert!(failed <= 3_000, "{failed} heartbeats failed after the kill");
    fleet.stop().await;
}

/// A replica stopped (SIGSTOP) for longer than a lease: its clients move
/// to the other replica (at once, or late), the leases nobody renews while
/// it is stopped are adopted, none expires; when it runs again it neither
/// expires what it held nor takes it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_longer_than_a_lease_is_adopted_from_and_does_not_fight() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let a = RegistryProcess::start(&cluster.all_endpoints(), "2s").await;
    let b = RegistryProcess::start(&cluster.all_endpoints(), "2s").await;
    let replicas = [a.url.clone(), b.url.clone()];
    // Lease 9 s, heartbeats every 3 s, a call gives up after 0.5 s; 30% of
    // the clients wait 3.5 s more before trying B (up to 10 s of silence).
    let members: Vec<FleetMember> = (0..1_000)
        .map(|i| FleetMember {
            service: "svc".into(),
            id: format!("i{i}"),
            home: 0,
            failover_after: if i % 10 < 3 {
                Duration::from_millis(3_500)
            } else {
                Duration::ZERO
            },
        })
        .collect();
    let fleet = Fleet::start(
        &replicas,
        &members,
        "9s",
        Duration::from_secs(3),
        16,
        Duration::from_millis(500),
    );
    first_round(&fleet, 1_000).await;

    a.pause();
    holds_for(
        "every instance passing while A is stopped",
        Duration::from_secs(11),
        async || all_passing(&b.url, 1_000).await,
    )
    .await;
    a.resume();
    let b_session = get(&format!("{}/readyz", b.url)).await.json()["store"]["session"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    holds_for(
        "every instance passing and held by B after A came back",
        Duration::from_secs(6),
        async || {
            let records = cluster.range(b"/portico/lease/instances/svc/").await;
            let elsewhere = records
                .iter()
                .filter(|kv| {
                    let record: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
                    record["owner"].as_i64() != Some(b_session)
                })
                .count();
            if elsewhere > 0 {
                let claims = metric(&a.url, "portico_registry_lease_claims_total").await;
                return Err(format!(
                    "{elsewhere} leases held elsewhere than B (A made {claims} claims)"
                ));
            }
            all_passing(&b.url, 1_000).await
        },
    )
    .await;
    kept_schedule(&fleet, Duration::from_millis(1_500));
    for r in &replicas {
        assert_eq!(
            metric(r, "portico_registry_lease_expiries_total").await,
            0,
            "{r}"
        );
    }
    assert_eq!(fleet.stats.not_found(), 0);
    fleet.stop().await;
}

/// The etcd leader killed three times under heartbeat load: heartbeats do
/// not touch etcd, so every one is answered 200 and no lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_killed_under_heartbeat_load_fails_no_heartbeat() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = EtcdCluster::start(3).await;
    let r = RegistryProcess::start(&cluster.all_endpoints(), "10s").await;
    let replicas = [r.url.clone()];
    let members: Vec<FleetMember> = (0..2_000)
        .map(|i| FleetMember {
            service: format!("svc{}", i % 20),
            id: format!("i{i}"),
            home: 0,
            failover_after: Duration::ZERO,
        })
        .collect();
    let fleet = Fleet::start(
        &replicas,
        &members,
        "15s",
        Duration::from_secs(5),
        32,
        Duration::from_secs(5),
    );
    first_round(&fleet, 2_000).await;
    for _ in 0..3 {
        let leader = cluster.leader().await;
        let before = fleet.stats.ok();
        cluster.kill9(leader);
        // The survivors elect a leader; heartbeats meanwhile keep flowing.
        let _ = cluster.leader().await;
        eventually("a round of heartbeats after the kill", || async {
            fleet.stats.ok() >= before + 2_000
        })
        .await;
        cluster.restart(leader).await;
    }
    kept_schedule(&fleet, Duration::from_secs(5));
    assert_eq!(
        metric(&r.url, "portico_registry_lease_expiries_total").await,
        0
    );
    assert_eq!(fleet.stats.refused(), 0, "heartbeats refused");
    assert_eq!(fleet.stats.failed(), 0, "heartbeats unanswered");
    assert_eq!(fleet.stats.not_found(), 0, "instances expired");
    all_passing(&r.url, 2_000).await.unwrap();
    assert_eq!(
        metric(&r.url, "portico_registry_lease_expiries_total").await,
        0
    );
    fleet.stop().await;
}

/// The registry's own checks run once across the replicas, not once per
/// replica: a checked instance is probed by one replica (the ranking
/// adoption uses, over the live sessions), and when that replica dies its
/// checks move to a survivor. An instance registered with a check and no
/// `ttl` has no lease: the dead replica takes nothing with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_check_runs_on_one_replica_and_moves_when_it_dies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::start(1).await;
    let mut replicas = [
        RegistryProcess::start(&cluster.all_endpoints(), "2s").await,
        RegistryProcess::start(&cluster.all_endpoints(), "2s").await,
    ];
    let backend = FaultyBackend::start("checked").await;
    let r = put_json(
        &format!("{}/v1/services/svc/instances/checked", replicas[0].url),
        serde_json::json!({"address": "127.0.0.1", "port": backend.addr.port(),
                           "check": {"path": "/healthz", "interval": "200ms", "timeout": "200ms"}}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let checks = async |url: &str| {
        metric(url, "portico_registry_checks_total{result=\"pass\"}").await
            + metric(url, "portico_registry_checks_total{result=\"fail\"}").await
    };
    // A moment after start each replica knows the other's session; from
    // then on one of them probes and the other's count stands still.
    eventually("three checks", || async { backend.received() >= 3 }).await;
    let before = [
        checks(&replicas[0].url).await,
        checks(&replicas[1].url).await,
    ];
    let got_before = backend.received();
    eventually("10 more checks", || async {
        backend.received() >= got_before + 10
    })
    .await;
    let after = [
        checks(&replicas[0].url).await,
        checks(&replicas[1].url).await,
    ];
    let moved: Vec<usize> = (0..2).filter(|&i| after[i] > before[i]).collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one replica checks the instance: {before:?} -> {after:?}"
    );
    let (owner, other) = (moved[0], 1 - moved[0]);
    assert!(
        after[owner] - before[owner] >= 10,
        "{before:?} -> {after:?}"
    );

    // The checking replica dies: the survivor takes the check over once
    // the dead one's session ends.
    replicas[owner].kill9();
    let survivor = replicas[other].url.clone();
    let at_kill = checks(&survivor).await;
    eventually("the survivor to take the check over", || async {
        checks(&survivor).await >= at_kill + 3
    })
    .await;
    let v = get(&format!("{survivor}/v1/services/svc/instances"))
        .await
        .json();
    assert_eq!(v["instances"][0]["status"], "passing", "{v}");
    assert!(v["instances"][0].get("ttl").is_none(), "{v}");
}
