//! The `portico` binary as users run it: the registry survives `kill -9` with
//! every acknowledged registration while a gateway keeps serving; `portico
//! up` works with defaults; a bad route file is refused naming the key.

mod support;

use std::process::Command;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_kill9_restart_keeps_registrations_and_gateway_serves_throughout() {
    let (_dir, data) = data_dir();
    let port = free_port();
    let control = format!("127.0.0.1:{port}");
    let url = format!("http://{control}");
    let args = [
        "registry",
        "--control",
        &control,
        "--data-dir",
        data.to_str().unwrap(),
        "--sweep-interval",
        "100ms",
    ];
    let mut registry = ChildProcess::spawn(&args);
    wait_healthy(&url).await;

    let echo = TestEcho::start("e0").await;
    let gateway = TestGateway::following(&url).await;
    // Twenty acknowledged registrations and a route, the last answered just before the kill.
    for n in 0..20 {
        let r = put_json(
            &format!("{url}/v1/services/svc/instances/i{n}"),
            json!({"address": "127.0.0.1", "port": echo.addr.port(), "ttl": "30s"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // A route is acknowledged data too.
    let route = put_json(
        &format!("{url}/v1/routes/kept"),
        json!({"path": "/kept", "service": "svc"}),
    )
    .await;
    assert_eq!(route.status, StatusCode::CREATED);
    let last = route.json()["revision"].as_u64().unwrap();
    gateway.wait_revision(last).await;
    registry.kill9();

    // The registry is gone; the gateway keeps serving its last table.
    let http = http();
    for _ in 0..20 {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/svc/x", gateway.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            r.status,
            StatusCode::OK,
            "gateway stopped serving without its registry"
        );
    }
    assert!(
        send(
            &http,
            Method::GET,
            &format!("{url}/healthz"),
            &[],
            Bytes::new()
        )
        .await
        .is_err(),
        "registry should be down"
    );

    // Restart on the same data dir and port.
    let _registry = ChildProcess::spawn(&args);
    wait_healthy(&url).await;
    let list = get(&format!("{url}/v1/services/svc/instances"))
        .await
        .json();
    assert_eq!(list["instances"].as_array().unwrap().len(), 20, "{list}");
    assert_eq!(list["revision"].as_u64().unwrap(), last);
    let kept = get(&format!("{url}/v1/routes/kept")).await;
    assert_eq!(kept.status, StatusCode::OK);
    assert_eq!(kept.json()["path"], "/kept");
    // Every lease got a fresh TTL of grace: all still passing.
    assert!(
        list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "passing")
    );

    // The gateway reconnects and catches up with changes made after the restart.
    let other = TestEcho::start("after-restart").await;
    let r = put_json(
        &format!("{url}/v1/services/fresh/instances/f1"),
        json!({"address": "127.0.0.1", "port": other.addr.port()}),
    )
    .await;
    let rev = r.json()["revision"].as_u64().unwrap();
    assert!(rev > last, "revisions continue after a restart");
    gateway.wait_revision(rev).await;
    let r = get(&format!("{}/fresh/", gateway.url)).await;
    assert_eq!(r.instance(), "after-restart");
}

/// A loopback address with a free port.
fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// `portico up` on these addresses and data directory, without the access
/// log, its admin listener on a port of the system's choosing.
fn up_args<'a>(listen: &'a str, control: &'a str, data: &'a str) -> [&'a str; 10] {
    [
        "up",
        "--listen",
        listen,
        "--control",
        control,
        "--data-dir",
        data,
        "--no-access-log",
        "--admin",
        "127.0.0.1:0",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_up_routes_to_a_service_registered_by_hand() {
    let (_dir, data) = data_dir();
    let (listen, control) = (free_addr(), free_addr());
    let _up = ChildProcess::spawn(&up_args(&listen, &control, data.to_str().unwrap()));
    let reg = format!("http://{control}");
    wait_healthy(&reg).await;
    let echo = TestEcho::start("by-hand").await;
    let r = put_json(
        &format!("{reg}/v1/services/hello/instances/h1"),
        json!({"address": "127.0.0.1", "port": echo.addr.port(), "ttl": "10s"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let gw = format!("http://{listen}");
    eventually("portico up to route /hello to the new instance", || async {
        send(
            &http(),
            Method::GET,
            &format!("{gw}/hello/there"),
            &[],
            Bytes::new(),
        )
        .await
        .is_ok_and(|r| r.status == StatusCode::OK && r.instance() == "by-hand")
    })
    .await;
    let r = get(&format!("{gw}/hello/there")).await;
    assert_eq!(r.json()["path"], "/there");
}

/// SIGTERM to `portico up` stops its gateway while its registry still
/// answers: the gateway's record is deleted, not left for its lease to
/// lapse, and neither side logs the other going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_up_stops_its_gateway_before_its_registry() {
    let (_dir, data) = data_dir();
    let (listen, control) = (free_addr(), free_addr());
    let data = data.to_str().unwrap();
    let mut up = ChildProcess::spawn_logged(&up_args(&listen, &control, data), "warn");
    let reg = format!("http://{control}");
    wait_healthy(&reg).await;
    let gateways = format!("{reg}/v1/gateways");
    eventually("the gateway to register", || async {
        let list = get(&gateways).await.json();
        list["gateways"].as_array().is_some_and(|g| g.len() == 1)
    })
    .await;
    let log = up.terminate().await;
    for line in [
        "could not remove this gateway's record",
        "registry watch disconnected",
    ] {
        assert!(!log.contains(line), "{line:?} logged at shutdown: {log}");
    }
    // The store, opened again, holds no record of the gateway.
    let _registry = ChildProcess::spawn(&["registry", "--control", &control, "--data-dir", data]);
    wait_healthy(&reg).await;
    let list = get(&gateways).await.json();
    assert_eq!(list["gateways"], json!([]), "{list}");
}

#[test]
fn a_bad_route_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[route]]\nname = \"a\"\npath_prefx = \"/a\"\nservice = \"s\"\n",
            "path_prefx",
        ),
        (
            "[[route]]\nname = \"a\"\npath_prefix = \"a\"\nservice = \"s\"\n",
            "route[0].path_prefix",
        ),
        (
            "[[route]]\nname = \"a\"\nupstreams = [\"127.0.0.1\"]\n",
            "route[0].upstreams[0]",
        ),
    ];
    for (text, key) in cases {
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--config",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "{text:?}: stderr does not name {key:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        format!("[[route]]\nname = \"e\"\nupstreams = [\"{}\"]\n", echo.addr),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Its log goes to a pipe, as in `portico gateway > portico.log`.
    let file = file.to_str().unwrap();
    let mut gw =
        ChildProcess::spawn_logged(&["gateway", "--listen", &listen, "--config", file], "info");
    let url = format!("http://{listen}");
    eventually("gateway to serve", || async {
        send(&http(), Method::GET, &url, &[], Bytes::new())
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    let log = gw.terminate().await;
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log written to a pipe: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_route_file_and_a_bad_file_keeps_the_old_routes() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    let routes = |prefix: &str| {
        format!(
            "[[route]]\nname = \"e\"\npath_prefix = \"{prefix}\"\nupstreams = [\"{}\"]\n",
            echo.addr
        )
    };
    std::fs::write(&file, routes("/one")).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin_port}");
    // Polling off: only SIGHUP reloads.
    let gw = ChildProcess::spawn(&[
        "gateway",
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--config",
        file.to_str().unwrap(),
        "--config-poll-interval",
        "0s",
    ]);
    let url = format!("http://{listen}");
    let status = || async { get(&format!("http://{admin}/status")).await.json() };
    eventually("gateway to serve", || async {
        send(
            &http(),
            Method::GET,
            &format!("{url}/one"),
            &[],
            Bytes::new(),
        )
        .await
        .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    let hangup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &gw.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };

    std::fs::write(&file, routes("/two")).unwrap();
    assert_eq!(status().await["route_file_reloads"], 0);
    hangup();
    eventually("SIGHUP to apply the new file", || async {
        status().await["route_file_reloads"] == 1
    })
    .await;
    assert_eq!(get(&format!("{url}/two")).await.status, StatusCode::OK);
    assert_eq!(
        get(&format!("{url}/one")).await.status,
        StatusCode::NOT_FOUND
    );

    std::fs::write(&file, "[[route]]\nname = \"e\"\npath_prefix = \"nope\"\n").unwrap();
    hangup();
    eventually("SIGHUP to refuse the bad file", || async {
        status().await["route_file_reload_failures"] == 1
    })
    .await;
    assert_eq!(get(&format!("{url}/two")).await.status, StatusCode::OK);
}

/// `portico gateway` starts itself again, once, with glibc's per-thread
/// allocation cache raised (docs/configuration.md), keeping the tunables it
/// was given and its name; a `GLIBC_TUNABLES` that sets the cache itself is
/// left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_raises_glibcs_allocation_cache_once() {
    let cases = [
        (None, true),
        (Some("glibc.malloc.mxfast=64"), true),
        (Some("glibc.malloc.tcache_count=7"), false),
    ];
    for (preset, again) in cases {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_portico"));
        command
            .args(["gateway", "--listen", &listen, "--no-admin"])
            .env("RUST_LOG", "warn")
            .env_remove("GLIBC_TUNABLES")
            .env_remove("PORTICO_ALLOCATOR_CACHE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if let Some(tunables) = preset {
            command.env("GLIBC_TUNABLES", tunables);
        }
        let mut gateway = ChildProcess {
            child: command.spawn().expect("spawn portico"),
        };
        // It binds only once started again, so an answer means it was.
        let url = format!("http://{listen}/");
        eventually("the gateway to answer", || async {
            send(&http(), Method::GET, &url, &[], Bytes::new())
                .await
                .is_ok()
        })
        .await;
        // The environment it was started with (glibc may have cut the
        // tunables' string at each `:` in place, so look for each part).
        let environ = std::fs::read(format!("/proc/{}/environ", gateway.child.id())).unwrap();
        let has = |s: &str| environ.windows(s.len()).any(|w| w == s.as_bytes());
        assert_eq!(has("PORTICO_ALLOCATOR_CACHE=1"), again, "{preset:?}");
        assert_eq!(has("glibc.malloc.tcache_count=512"), again, "{preset:?}");
        if let Some(tunables) = preset {
            assert!(has(tunables), "{preset:?}: its own tunables lost");
        }
        // Its name too (`ps`, `pkill portico`): started again by its path.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", gateway.child.id())).unwrap();
        assert_eq!(comm.trim(), "portico", "{preset:?}");
        gateway.terminate().await;
    }
}
