//! Safe defaults with no policy written: a refused connection is retried on
//! another endpoint, and passive outlier detection ejects an endpoint that
//! fails in a row, with a cap and panic mode.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::health::OutlierPolicy;
use portico_gateway::proxy::ProxySettings;
use support::*;

fn options(backends: &[&FaultyBackend], outlier: OutlierPolicy) -> GatewayOptions {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"svc\"\nupstreams = [{}]\n",
            list.join(", ")
        ))
        .unwrap(),
        proxy: ProxySettings {
            access_log: false,
            outlier,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    }
}

/// The health state the gateway keeps for the endpoint at `addr`.
fn health_of(
    gw: &TestGateway,
    addr: std::net::SocketAddr,
) -> Option<std::sync::Arc<portico_gateway::health::EndpointHealth>> {
    let table = gw.table.load();
    table.entries()[0]
        .endpoints
        .endpoints()
        .iter()
        .find(|e| e.addr == Some(addr))
        .map(|e| e.health.clone())
}

fn is_ejected(gw: &TestGateway, addr: std::net::SocketAddr) -> bool {
    health_of(gw, addr).is_some_and(|h| h.is_ejected_now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_costs_no_errors_and_is_ejected() {
    let a = FaultyBackend::start("a").await;
    let b = FaultyBackend::start("b").await;
    let mut dead = FaultyBackend::start("dead").await;
    let gw = TestGateway::start(options(&[&a, &b, &dead], OutlierPolicy::default())).await;
    let http = http();
    let url = format!("{}/x", gw.url);
    for _ in 0..30 {
        let r = send(&http, Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    assert!(dead.received() > 0, "the third backend served before dying");

    // It dies: new connections are refused and the pooled ones reset.
    dead.kill().await;
    let mut errors = 0;
    let mut ejected_after = None;
    for i in 0..2000 {
        let r = send(&http, Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap();
        if r.status != StatusCode::OK {
            errors += 1;
        }
        if ejected_after.is_none() && is_ejected(&gw, dead.addr) {
            ejected_after = Some(i);
        }
    }
    // Refused connections are retried on another endpoint; only a request
    // already written to a connection the kill reset can fail (at most 0.1%).
    assert!(errors <= 2, "{errors} errors of 2000");
    let after = ejected_after.expect("the dead backend was never ejected");
    assert!(after < 100, "ejected only after {after} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_until_the_ejection_ends() {
    let sick = FaultyBackend::start("sick").await;
    let well = FaultyBackend::start("well").await;
    let policy = OutlierPolicy {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(400),
        ..OutlierPolicy::default()
    };
    let gw = TestGateway::start(options(&[&sick, &well], policy)).await;
    sick.set_failing(true);
    let http = http();
    let url = format!("{}/x", gw.url);
    let mut failures = 0;
    for _ in 0..40 {
        let r = send(&http, Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap();
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            // The backend's own 503, passed through (not one made by the gateway).
            assert!(!r.headers.contains_key("x-portico-error"));
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "exactly the three failures that eject it reach the client"
    );
    assert!(is_ejected(&gw, sick.addr));
    assert_eq!(sick.received(), 3);

    // Healthy again: once the ejection ends it gets traffic back.
    sick.set_failing(false);
    eventually("the ejected backend to receive traffic again", || async {
        send(&http, Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap();
        sick.received() > 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_and_panic_mode_keep_traffic_flowing() {
    let one = FaultyBackend::start("one").await;
    let two = FaultyBackend::start("two").await;
    let policy = OutlierPolicy {
        consecutive_failures: 2,
        ..OutlierPolicy::default()
    };
    let gw = TestGateway::start(options(&[&one, &two], policy)).await;
    one.set_failing(true);
    two.set_failing(true);
    let http = http();
    let url = format!("{}/x", gw.url);
    for _ in 0..20 {
        let r = send(&http, Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap();
        // Backends' 503s, never the gateway's no_healthy_upstream.
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!r.headers.contains_key("x-portico-error"));
    }
    // At most half of two endpoints may be ejected: one stays in.
    let ejected = [one.addr, two.addr]
        .iter()
        .filter(|a| is_ejected(&gw, **a))
        .count();
    assert_eq!(ejected, 1);
    assert_eq!(one.received() + two.received(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_get_an_immediate_503() {
    let slow = FaultyBackend::start("slow").await;
    slow.set_delay(Duration::from_millis(800));
    let mut opts = options(&[&slow], OutlierPolicy::default());
    opts.config = Config::parse(&format!(
        "[[route]]\nname = \"svc\"\nupstreams = [\"{}\"]\n[route.limits]\nmax_requests = 3\n",
        slow.addr
    ))
    .unwrap();
    let gw = TestGateway::start(opts).await;
    let url = format!("{}/x", gw.url);
    let mut held = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        held.push(tokio::spawn(async move { get(&url).await }));
    }
    eventually("three requests in flight at the backend", || async {
        slow.received() == 3
    })
    .await;
    // max_requests + 2: exactly two fast refusals.
    for _ in 0..2 {
        let r = get(&url).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers["x-portico-error"], "overloaded");
    }
    assert_eq!(
        slow.received(),
        3,
        "refused requests never reached the backend"
    );
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    // Slots are returned: the route serves again.
    assert_eq!(get(&url).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_probes_and_closes() {
    let only = FaultyBackend::start("only").await;
    let mut opts = options(
        &[&only],
        OutlierPolicy {
            consecutive_failures: 0,
            ..OutlierPolicy::default()
        },
    );
    opts.config = Config::parse(&format!(
        "[[route]]\nname = \"svc\"\nupstreams = [\"{}\"]\n[route.breaker]\nconsecutive_failures = 3\nopen_for = \"300ms\"\n",
        only.addr
    ))
    .unwrap();
    let gw = TestGateway::start(opts).await;
    let url = format!("{}/x", gw.url);
    only.set_failing(true);
    for _ in 0..3 {
        let r = get(&url).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !r.headers.contains_key("x-portico-error"),
            "the backend's own 503"
        );
    }
    // Open: answered at once by the gateway, the backend is spared.
    for _ in 0..5 {
        let r = get(&url).await;
        assert_eq!(r.headers["x-portico-error"], "circuit_open");
    }
    assert_eq!(only.received(), 3);

    // Recovered: after the open period a probe goes through and closes it.
    only.set_failing(false);
    eventually("the circuit to close again", || async {
        get(&url).await.status == StatusCode::OK
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&url).await.status, StatusCode::OK);
    }
}

fn is_checked_down(gw: &TestGateway, addr: std::net::SocketAddr) -> bool {
    health_of(gw, addr).is_some_and(|h| h.is_checked_down())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let flaky = FaultyBackend::start("flaky").await;
    let steady = FaultyBackend::start("steady").await;
    let mut opts = options(&[&flaky, &steady], OutlierPolicy::default());
    opts.config = Config::parse(&format!(
        "[[route]]\nname = \"svc\"\nupstreams = [\"{}\", \"{}\"]\n[route.health_check]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"40ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
        flaky.addr, steady.addr
    ))
    .unwrap();
    let gw = TestGateway::start(opts).await;
    let url = format!("{}/x", gw.url);

    // Its checks start failing: it goes out without any client traffic failing.
    flaky.set_failing(true);
    eventually("the failing endpoint to be checked down", || async {
        is_checked_down(&gw, flaky.addr)
    })
    .await;
    for _ in 0..30 {
        let r = get(&url).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-backend"], "steady");
    }

    // Passing again: back in rotation after the healthy threshold.
    flaky.set_failing(false);
    eventually("the endpoint to come back", || async {
        !is_checked_down(&gw, flaky.addr)
    })
    .await;
    let mut seen_flaky = false;
    for _ in 0..10 {
        seen_flaky |= get(&url).await.headers["x-backend"] == "flaky";
    }
    assert!(seen_flaky);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_pending_requests_waiting_for_a_connection_get_503() {
    // A listener that never accepts, with a backlog of one: once the queue is
    // full, new connections hang in the handshake.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = socket.listen(1).unwrap();
    let addr = stuck.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let gw = TestGateway::start(GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"svc\"\nupstreams = [\"{addr}\"]\n[route.limits]\nmax_pending = 2\n"
        ))
        .unwrap(),
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    })
    .await;
    let url = format!("{}/x", gw.url);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        waiting.push(tokio::spawn(async move { get(&url).await }));
    }
    eventually("two requests waiting for a connection", || async {
        get(&format!("{}/endpoints", gw.admin_url)).await.json()["routes"][0]["requests_pending"]
            == 2
    })
    .await;
    let r = get(&url).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["x-portico-error"], "overloaded");
    for w in waiting {
        w.abort();
    }
    drop(fillers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_health_check_puts_the_endpoint_it_failed_back_in_rotation() {
    let flaky = FaultyBackend::start("flaky").await;
    let steady = FaultyBackend::start("steady").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let route = format!(
        "[[route]]\nname = \"svc\"\nupstreams = [\"{}\", \"{}\"]\n",
        flaky.addr, steady.addr
    );
    let check = "[route.health_check]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"40ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n";
    std::fs::write(&path, format!("{route}{check}")).unwrap();
    let mut opts = options(&[&flaky, &steady], OutlierPolicy::default());
    opts.config = Config::load(&path).unwrap();
    opts.config_path = Some(path.clone());
    opts.config_poll = Some(Duration::from_millis(20));
    let gw = TestGateway::start(opts).await;
    let url = format!("{}/x", gw.url);

    flaky.set_failing(true);
    eventually("the failing endpoint to be checked down", || async {
        is_checked_down(&gw, flaky.addr)
    })
    .await;

    // The check goes away with a route-file reload; nothing checks the
    // endpoint any more, so nothing may keep it out.
    std::fs::write(&path, &route).unwrap();
    eventually("the route file without the check to apply", || async {
        gw.table.load().entries()[0].route.health_check.is_none()
    })
    .await;
    // Only now does the backend recover, so no checker could have seen it.
    flaky.set_failing(false);
    eventually("the endpoint to be back in rotation", || async {
        !is_checked_down(&gw, flaky.addr)
    })
    .await;
    let mut seen_flaky = false;
    for _ in 0..10 {
        let r = get(&url).await;
        assert_eq!(r.status, StatusCode::OK);
        seen_flaky |= r.headers["x-backend"] == "flaky";
    }
    assert!(seen_flaky, "the endpoint got no traffic");
    let endpoints = get(&format!("{}/endpoints", gw.admin_url)).await.json();
    for e in endpoints["routes"][0]["endpoints"].as_array().unwrap() {
        assert_eq!(e["in_rotation"], true, "{e}");
    }
}

/// A backend whose `/slow` requests wait until the test releases each one
/// with the status it should answer; any other path answers 503 while
/// `failing`, else 200.
struct GatedBackend {
    addr: std::net::SocketAddr,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waiting: std::sync::Arc<std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<StatusCode>>>>,
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl GatedBackend {
    async fn start() -> GatedBackend {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = GatedBackend {
            addr: listener.local_addr().unwrap(),
            failing: Default::default(),
            waiting: Default::default(),
            received: Default::default(),
        };
        let (failing, waiting, received) = (
            backend.failing.clone(),
            backend.waiting.clone(),
            backend.received.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (failing, waiting, received) =
                    (failing.clone(), waiting.clone(), received.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        received.fetch_add(1, Ordering::SeqCst);
                        let gate = (req.uri().path() == "/slow").then(|| {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            waiting.lock().unwrap().push(tx);
                            rx
                        });
                        let failing = failing.load(Ordering::SeqCst);
                        async move {
                            let status = match gate {
                                Some(rx) => rx.await.unwrap_or(StatusCode::OK),
                                None if failing => StatusCode::SERVICE_UNAVAILABLE,
                                None => StatusCode::OK,
                            };
                            let resp = http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        backend
    }

    /// Lets one waiting `/slow` request go with `status`.
    fn release(&self, status: StatusCode) {
        let tx = self
            .waiting
            .lock()
            .unwrap()
            .pop()
            .expect("a waiting request");
        tx.send(status).unwrap();
    }

    fn waiting(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_admitted_before_the_circuit_opened_do_not_move_it() {
    use std::sync::atomic::Ordering;
    let backend = GatedBackend::start().await;
    // A long open period: nothing but the stragglers could end it in this test.
    let config = Config::parse(&format!(
        "[[route]]\nname = \"svc\"\nupstreams = [\"{}\"]\ntimeout = \"60s\"\n[route.breaker]\nconsecutive_failures = 3\nopen_for = \"60s\"\nmax_open = \"600s\"\n",
        backend.addr
    ))
    .unwrap();
    let gw = TestGateway::start(GatewayOptions {
        config,
        proxy: ProxySettings {
            access_log: false,
            outlier: OutlierPolicy {
                consecutive_failures: 0,
                ..OutlierPolicy::default()
            },
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    })
    .await;
    let slow_url = format!("{}/slow", gw.url);

    // Four slow requests are admitted while the circuit is closed.
    let stragglers: Vec<_> = (0..4)
        .map(|_| {
            let url = slow_url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    eventually("four slow requests to reach the backend", || async {
        backend.waiting() == 4
    })
    .await;

    // Three quick failures open it.
    backend.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let r = get(&format!("{}/x", gw.url)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!r.headers.contains_key("x-portico-error"));
    }
    let r = get(&format!("{}/x", gw.url)).await;
    assert_eq!(r.headers["x-portico-error"], "circuit_open");
    let open_for = || async {
        let e = get(&format!("{}/endpoints", gw.admin_url)).await.json();
        let ep = e["routes"][0]["endpoints"][0].clone();
        (
            ep["breaker"].as_str().unwrap().to_string(),
            ep["breaker_open_for_ms"].as_u64().unwrap(),
        )
    };
    let (state, first) = open_for().await;
    assert_eq!(state, "open");
    assert!(first <= 72_000, "first opening is 60 s +-20%: {first} ms");

    // Two stragglers fail late: no reopening, no doubled period.
    for _ in 0..2 {
        backend.release(StatusCode::SERVICE_UNAVAILABLE);
    }
    eventually("the two failed stragglers to be answered", || async {
        stragglers.iter().filter(|s| s.is_finished()).count() == 2
    })
    .await;
    let (state, after_failures) = open_for().await;
    assert_eq!(state, "open");
    assert!(
        after_failures <= first,
        "a late failure reopened it for longer: {first} ms, then {after_failures} ms"
    );
    // Two succeed late: the circuit stays open.
    for _ in 0..2 {
        backend.release(StatusCode::OK);
    }
    let mut statuses: Vec<u16> = Vec::new();
    for s in stragglers {
        statuses.push(s.await.unwrap().status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503]);
    let (state, after) = open_for().await;
    assert_eq!(
        state, "open",
        "a request admitted before the opening closed it"
    );
    assert!(
        after <= first,
        "a late failure reopened it for longer: {first} ms, then {after} ms"
    );
    let before = backend.received.load(Ordering::SeqCst);
    let r = get(&format!("{}/x", gw.url)).await;
    assert_eq!(r.headers["x-portico-error"], "circuit_open");
    assert_eq!(backend.received.load(Ordering::SeqCst), before);
}
