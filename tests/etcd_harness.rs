#![cfg(feature = "etcd")]
//! The etcd test harness itself: a 3-member cluster starts and elects a
//! leader, replicates writes, survives kill -9 of its leader and takes the
//! killed member back.

mod support;

use std::time::Instant;

use support::etcd::{EtcdCluster, b64, unb64};

#[test]
fn base64_round_trips() {
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg==");
    assert_eq!(b64(b"fo"), "Zm8=");
    assert_eq!(b64(b"foo"), "Zm9v");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64(&[0]), "AA==");
    for n in 0..=300usize {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        assert_eq!(unb64(&b64(&data)).unwrap(), data);
    }
    assert!(unb64("Zm9v!").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_fail_over_and_rejoin() {
    let t = Instant::now();
    let mut cluster = EtcdCluster::start(3).await;
    assert_eq!(cluster.endpoints().len(), 3);
    assert!(cluster.pids().iter().all(Option::is_some));
    let leader = cluster.leader().await;
    assert!(leader < 3);
    eprintln!("started, leader m{leader}, after {:?}", t.elapsed());

    // A write on one member is read (linearizably) on another.
    let rev = cluster.put_on(0, b"/portico/k", b"v1").await.unwrap();
    assert!(rev > 1);
    assert_eq!(
        cluster.get_on(2, b"/portico/k").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert!(cluster.current_revision().await >= rev);

    // kill -9 the leader: the other two elect one of themselves and take writes.
    let t_kill = Instant::now();
    cluster.kill9(leader);
    assert_eq!(cluster.endpoints().len(), 2);
    assert_eq!(cluster.all_endpoints().len(), 3);
    assert!(cluster.pids()[leader].is_none());
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    assert!(cluster.is_running(new_leader));
    eprintln!(
        "new leader m{new_leader} {:?} after kill -9 of m{leader}",
        t_kill.elapsed()
    );
    let rev2 = cluster.put(b"/portico/k", b"v2").await;
    assert!(rev2 > rev);
    let other = (0..3).find(|&i| i != leader && i != new_leader).unwrap();
    assert_eq!(
        cluster
            .get_on(other, b"/portico/k")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v2"[..])
    );

    // The killed member comes back with its data and catches up.
    let t_restart = Instant::now();
    cluster.restart(leader).await;
    assert_eq!(cluster.endpoints().len(), 3);
    for i in 0..3 {
        let s = cluster.status(i).await.unwrap();
        assert!(s.leader.is_some(), "m{i} has a leader");
    }
    assert_eq!(
        cluster
            .get_on(leader, b"/portico/k")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v2"[..])
    );
    eprintln!("m{leader} rejoined after {:?}", t_restart.elapsed());

    // Compaction helpers: compact to the current revision, then again is refused.
    let now = cluster.current_revision().await;
    cluster.compact(now).await.unwrap();
    assert!(cluster.compact(now).await.is_err());
    eprintln!("total {:?}", t.elapsed());
}
