//! How a gateway follows its registry when the path is not clean: a
//! registry whose first answer is slow, a watch line that does not decode,
//! and a gateway restarted while the registry is down (the state cache).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::StatusCode;
use http_body_util::StreamBody;
use hyper::body::Frame;
use portico_gateway::GatewayOptions;
use portico_registry::model::WatchEvent;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP relay in front of a registry that holds back the first bytes of
/// every answer for `delay` (a registry slow to send its first snapshot
/// line) and counts the watch requests that pass through it.
struct SlowRelay {
    addr: SocketAddr,
    watch_requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SlowRelay {
    async fn start(target: SocketAddr, delay: Duration) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let watch_requests = Arc::new(AtomicUsize::new(0));
        let count = watch_requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let count = count.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            let seen = buf[..n]
                                .windows(13)
                                .filter(|w| w == b"GET /v1/watch")
                                .count();
                            count.fetch_add(seen, Ordering::SeqCst);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut first = true;
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            if first {
                                // The injected fault: a slow first answer.
                                tokio::time::sleep(delay).await;
                                first = false;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        SlowRelay {
            addr,
            watch_requests,
            task,
        }
    }

    fn watch_requests(&self) -> usize {
        self.watch_requests.load(Ordering::SeqCst)
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Item 14: a watch whose first answer takes longer than a second connects
/// on its first try (it used to be cancelled by a 1 s tick and retried
/// forever, each retry costing the registry a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_slow_to_answer_the_watch_is_followed_on_the_first_try() {
    let registry = TestRegistry::start(fast_leases()).await;
    let echo = TestEcho::start("slow-path").await;
    let r = put_json(
        &format!("{}/v1/services/svc/instances/e1", registry.url),
        json!({"address": "127.0.0.1", "port": echo.addr.port(), "ttl": "1h"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let revision = r.json()["revision"].as_u64().unwrap();

    let relay = SlowRelay::start(registry.addr, Duration::from_millis(1500)).await;
    let gateway = TestGateway::following(&format!("http://{}", relay.addr)).await;
    gateway.wait_revision(revision).await;
    let reply = get(&format!("{}/svc/x", gateway.url)).await;
    assert_eq!(reply.instance(), "slow-path");
    assert_eq!(
        relay.watch_requests(),
        1,
        "the gateway must connect on its first watch request"
    );
    assert!(gateway.status.connected.load(Ordering::Relaxed));
}

/// What the fake registry of [`a_watch_line_that_does_not_decode_makes_the_sdk_re_list`]
/// was asked for: the `index` of each watch request.
type Asked = Arc<Mutex<Vec<String>>>;

fn watch_line(event: &WatchEvent) -> Bytes {
    Bytes::from(format!("{}\n", serde_json::to_string(event).unwrap()))
}

fn snapshot(revision: u64, ids: &[&str]) -> WatchEvent {
    WatchEvent::Snapshot {
        revision,
        instances: ids
            .iter()
            .map(|id| portico_registry::model::Instance {
                service: "svc".into(),
                id: (*id).into(),
                spec: portico_registry::model::InstanceSpec::new("127.0.0.1", 9),
                status: portico_registry::model::Status::Passing,
                registered_at_ms: 0,
                status_since_ms: 0,
                revision,
                check_failing: false,
            })
            .collect(),
        routes: Vec::new(),
        certificates: Vec::new(),
        consumers: Vec::new(),
        gateways: Vec::new(),
    }
}

/// A registry stand-in: its first watch answer is a snapshot, a line that
/// does not decode, then a valid change; every later answer is a snapshot
/// at revision 5. Streams stay open.
async fn serve_bad_line_registry(listener: TcpListener, asked: Asked) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((s, _)) = listener.accept().await {
        let asked = asked.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                let index = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("index=")))
                    .unwrap_or("")
                    .to_string();
                let first = {
                    let mut asked = asked.lock().unwrap();
                    asked.push(index);
                    asked.len() == 1
                };
                let lines = if first {
                    vec![
                        watch_line(&snapshot(1, &["a"])),
                        Bytes::from_static(
                            b"{\"type\":\"put\",\"revision\":2,\"instance\":{oops\n",
                        ),
                        watch_line(&WatchEvent::Progress { revision: 3 }),
                    ]
                } else {
                    vec![watch_line(&snapshot(5, &["a", "c"]))]
                };
                let body = StreamBody::new(
                    stream::iter(
                        lines
                            .into_iter()
                            .map(|b| Ok::<_, Infallible>(Frame::data(b))),
                    )
                    .chain(stream::pending()),
                );
                async move {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/x-ndjson")
                            .body(body)
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Item 21: a line the SDK cannot decode may hide a change, so the watcher
/// re-lists from a snapshot instead of going on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_line_that_does_not_decode_makes_the_sdk_re_list() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked: Asked = Arc::default();
    let server = tokio::spawn(serve_bad_line_registry(listener, asked.clone()));

    let client = portico_registry::client::RegistryClient::new(&[url.as_str()]).unwrap();
    let mut watcher = client.watch(0);
    let first = tokio::time::timeout(DEADLINE, watcher.next())
        .await
        .expect("a first event");
    assert_eq!(first.revision(), 1);
    let second = tokio::time::timeout(DEADLINE, watcher.next())
        .await
        .expect("a second event");
    assert!(
        matches!(second, WatchEvent::Snapshot { revision: 5, .. }),
        "after a line it cannot decode the watcher must re-list, got {second:?}"
    );
    assert_eq!(
        *asked.lock().unwrap(),
        ["0", "0"],
        "the re-list must start from a snapshot (index 0), not from the revision after the bad line"
    );
    assert_eq!(
        watcher.state().borrow().resyncs,
        1,
        "the re-list is counted"
    );
    server.abort();
}

fn cached_gateway_options(registry: &str, cache: &std::path::Path) -> GatewayOptions {
    GatewayOptions {
        registry: vec![registry.to_string()],
        cache_dir: Some(cache.to_path_buf()),
        auto_routes: true,
        proxy: portico_gateway::proxy::ProxySettings {
            access_log: false,
            ..Default::default()
        },
        ..GatewayOptions::default()
    }
}

async fn admin_status(gateway: &TestGateway) -> serde_json::Value {
    get(&format!("{}/status", gateway.admin_url)).await.json()
}

/// Item 12: a gateway started while its registry is unreachable serves the
/// state it last applied (from its cache) at once, then converges on the
/// registry's own state when the registry answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_without_its_registry_serves_the_cached_state() {
    let (_data, data) = data_dir();
    let (_cache, cache) = data_dir();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_addr = listener.local_addr().unwrap();
    let registry_url = format!("http://{registry_addr}");
    let registry = TestRegistry::start_in_on(listener, &data, fast_leases()).await;
    let echo = TestEcho::start("cached").await;
    let r = put_json(
        &format!("{registry_url}/v1/services/svc/instances/e1"),
        json!({"address": "127.0.0.1", "port": echo.addr.port(), "ttl": "1h"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = put_json(
        &format!("{registry_url}/v1/routes/by-route"),
        json!({"path_prefix": "/by-route", "service": "svc", "strip_prefix": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let revision = r.json()["revision"].as_u64().unwrap();

    let gateway = TestGateway::start(cached_gateway_options(&registry_url, &cache)).await;
    gateway.wait_revision(revision).await;
    assert_eq!(
        get(&format!("{}/by-route/x", gateway.url)).await.instance(),
        "cached"
    );
    let file = cache.join(portico_gateway::cache::FILE_NAME);
    eventually("the cache to hold the applied revision", || async {
        std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["revision"].as_u64() >= Some(revision))
    })
    .await;
    gateway.stop().await;
    registry.stop().await;

    // The registry is down: a new gateway with the same cache serves the
    // cached routes and instances without ever reaching a registry.
    let gateway = TestGateway::start(cached_gateway_options(&registry_url, &cache)).await;
    eventually(
        "the restarted gateway to serve its cached routes",
        || async {
            send(
                &http(),
                http::Method::GET,
                &format!("{}/by-route/x", gateway.url),
                &[],
                Bytes::new(),
            )
            .await
            .is_ok_and(|r| r.status == StatusCode::OK && r.instance() == "cached")
        },
    )
    .await;
    assert_eq!(
        get(&format!("{}/svc/y", gateway.url)).await.instance(),
        "cached"
    );
    let status = admin_status(&gateway).await;
    assert_eq!(status["registry_connected"], false, "{status}");
    assert_eq!(status["cache"]["serving_cached_state"], true, "{status}");
    assert_eq!(
        status["cache"]["revision"].as_u64(),
        Some(revision),
        "{status}"
    );
    assert!(status["cache"]["age_ms"].as_u64().is_some(), "{status}");
    let metrics = get(&format!("{}/metrics", gateway.admin_url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("portico_gateway_cache_age_seconds ")),
        "{text}"
    );

    // A registry answers again, with other state (a fresh data directory):
    // its snapshot replaces the cached state rather than merging with it.
    let (_data2, data2) = data_dir();
    let listener = TcpListener::bind(registry_addr).await.unwrap();
    let registry = TestRegistry::start_in_on(listener, &data2, fast_leases()).await;
    let other = TestEcho::start("fresh").await;
    let r = put_json(
        &format!("{registry_url}/v1/services/other/instances/o1"),
        json!({"address": "127.0.0.1", "port": other.addr.port(), "ttl": "1h"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    eventually(
        "the gateway to converge on the registry's state",
        || async {
            let http = http();
            let fresh = send(
                &http,
                http::Method::GET,
                &format!("{}/other/x", gateway.url),
                &[],
                Bytes::new(),
            )
            .await
            .is_ok_and(|r| r.status == StatusCode::OK && r.instance() == "fresh");
            let gone = send(
                &http,
                http::Method::GET,
                &format!("{}/by-route/x", gateway.url),
                &[],
                Bytes::new(),
            )
            .await
            .is_ok_and(|r| r.status == StatusCode::NOT_FOUND);
            fresh && gone
        },
    )
    .await;
    let status = admin_status(&gateway).await;
    assert_eq!(status["registry_connected"], true, "{status}");
    assert_eq!(status["cache"]["serving_cached_state"], false, "{status}");
    drop(registry);
}
