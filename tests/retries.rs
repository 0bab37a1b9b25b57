//! Per-route retries: conditions, idempotency, per-try timeouts and the
//! retry budget, against real failing backends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::health::OutlierPolicy;
use portico_gateway::proxy::ProxySettings;
use support::*;

/// Without the access log, and with outlier detection off so each try's
/// outcome (and each retry) is seen alone.
fn settings() -> ProxySettings {
    ProxySettings {
        access_log: false,
        outlier: OutlierPolicy {
            consecutive_failures: 0,
            ..OutlierPolicy::default()
        },
        ..ProxySettings::default()
    }
}

/// A gateway over `backends` with `retry` as the route's `[route.retry]`
/// table ([`settings`]).
async fn gateway(backends: &[&FaultyBackend], retry: &str) -> TestGateway {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    TestGateway::start(GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"svc\"\nupstreams = [{}]\n[route.retry]\n{retry}\n",
            list.join(", ")
        ))
        .unwrap(),
        proxy: settings(),
        ..GatewayOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_another_endpoint() {
    let sick = FaultyBackend::start("sick").await;
    let well = FaultyBackend::start("well").await;
    sick.set_failing(true);
    let gw = gateway(
        &[&sick, &well],
        "attempts = 2\non = [\"503\"]\nbudget_percent = 100",
    )
    .await;
    let http = http();
    for _ in 0..40 {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/x", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-backend"], "well");
    }
    assert!(
        sick.received() > 0,
        "round robin sent some first tries to the sick one"
    );

    // A body that fits is kept and sent again whole.
    let r = send(
        &http,
        Method::PUT,
        &format!("{}/x", gw.url),
        &[],
        Bytes::from_static(b"payload"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_unless_the_route_says_so() {
    let only = FaultyBackend::start("only").await;
    only.set_failing(true);
    let gw = gateway(
        &[&only],
        "attempts = 3\non = [\"503\"]\nbudget_min_per_second = 100",
    )
    .await;
    let r = send(
        &http(),
        Method::POST,
        &format!("{}/x", gw.url),
        &[],
        Bytes::from_static(b"order"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(only.received(), 1, "the backend saw the POST once");

    let gw = gateway(
        &[&only],
        "attempts = 3\non = [\"503\"]\nbudget_min_per_second = 100\nnon_idempotent = true",
    )
    .await;
    let before = only.received();
    send(
        &http(),
        Method::POST,
        &format!("{}/x", gw.url),
        &[],
        Bytes::from_static(b"order"),
    )
    .await
    .unwrap();
    assert_eq!(only.received() - before, 3, "allowed: three tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_retries_when_everything_fails() {
    let a = FaultyBackend::start("a").await;
    let b = FaultyBackend::start("b").await;
    a.set_failing(true);
    b.set_failing(true);
    let gw = gateway(
        &[&a, &b],
        "attempts = 3\non = [\"503\"]\nbudget_percent = 20\nbudget_min_per_second = 0",
    )
    .await;
    let http = http();
    for _ in 0..200 {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/x", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let seen = a.received() + b.received();
    // 200 first tries plus at most 20% of them as retries (not 2 x 200).
    assert!((200..=240).contains(&seen), "backends saw {seen} requests");
    assert!(seen > 200, "the budget allows some retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_try_is_abandoned_for_another_endpoint() {
    let slow = FaultyBackend::start("slow").await;
    let fast = FaultyBackend::start("fast").await;
    slow.set_delay(Duration::from_secs(5));
    let gw = gateway(
        &[&slow, &fast],
        "attempts = 2\non = [\"timeout\"]\nper_try_timeout = \"100ms\"\nbudget_min_per_second = 100",
    )
    .await;
    let http = http();
    for _ in 0..6 {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/x", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-backend"], "fast");
    }
    assert!(slow.received() > 0);
}

/// An HTTP/2 backend that refuses every stream (RST_STREAM REFUSED_STREAM).
async fn refusing_h2_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http2_stream_is_retried_elsewhere() {
    let registry = TestRegistry::start(fast_leases()).await;
    let (refusing, refused) = refusing_h2_backend().await;
    let echo = TestEcho::start("echo").await;
    let gw = TestGateway::start(GatewayOptions {
        config: Config::parse(
            "[[route]]\nname = \"svc\"\npath_prefix = \"/svc\"\nservice = \"svc\"\n[route.retry]\nattempts = 2\non = [\"refused_stream\"]\nbudget_min_per_second = 100\n",
        )
        .unwrap(),
        registry: vec![registry.url.clone()],
        proxy: settings(),
        ..GatewayOptions::default()
    })
    .await;
    let client = registry.client();
    let mut spec = portico_registry::model::InstanceSpec::new("127.0.0.1", refusing.port());
    spec.scheme = portico_registry::model::Scheme::H2c;
    client
        .register_once("svc", "refusing", &spec)
        .await
        .unwrap();
    let r = client
        .register_once("svc", "echo", &echo.spec())
        .await
        .unwrap();
    gw.wait_revision(r.revision).await;
    for _ in 0..10 {
        let r = get(&format!("{}/svc/x", gw.url)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.instance(), "echo");
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "some first tries went to the refusing backend"
    );
}

/// A backend that reads each request's head and closes the connection
/// without a byte of answer; counts the request lines it read.
async fn hanging_up_backend() -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let line = line.lines().next().unwrap_or_default().to_string();
                log.lock().unwrap().push(line);
                // Dropped: closed with no answer.
            });
        }
    });
    (addr, seen, task)
}

/// With no retry policy, an idempotent request without a body whose new
/// upstream connection ends before any answer goes once to another
/// endpoint (nginx's `proxy_next_upstream error`), with either HTTP/1.1
/// client; a POST is not sent again. The native client hands the request
/// back for this; hyper's client needs a copy kept before it is sent. The
/// second try carries the fields the gateway adds, as the first did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_connection_ends_unanswered_goes_once_elsewhere() {
    use portico_gateway::pool::Http1Client;
    for client in [Http1Client::Native, Http1Client::Hyper] {
        let (hang_up, seen, task) = hanging_up_backend().await;
        let good = TestEcho::start("good").await;
        let gw = TestGateway::start(GatewayOptions {
            config: Config::parse(&format!(
                "[[route]]\nname = \"svc\"\nupstreams = [\"{hang_up}\", \"{}\"]\n",
                good.addr
            ))
            .unwrap(),
            proxy: ProxySettings {
                http1_client: client,
                ..settings()
            },
            ..GatewayOptions::default()
        })
        .await;
        let http = http();
        for i in 0..8 {
            let url = format!("{}/get/{i}", gw.url);
            let r = send(&http, Method::GET, &url, &[], Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{client:?} GET {i}: {:?}", r.body);
            // Sent again with the fields the gateway adds, whichever client
            // sent it first.
            let echoed = &r.json()["headers"];
            assert_eq!(
                echoed["x-forwarded-for"], "127.0.0.1",
                "{client:?} GET {i}: {echoed}"
            );
            assert!(
                echoed.get("x-request-id").is_some(),
                "{client:?} GET {i}: {echoed}"
            );
        }
        let gets = seen.lock().unwrap().len();
        assert!(
            gets > 0,
            "{client:?}: some GETs went to the hanging-up backend first"
        );
        let mut refused = 0;
        for i in 0..8 {
            let url = format!("{}/post/{i}", gw.url);
            let r = send(&http, Method::POST, &url, &[], Bytes::new())
                .await
                .unwrap();
            match r.status {
                StatusCode::OK => {}
                StatusCode::BAD_GATEWAY => refused += 1,
                other => panic!("{client:?} POST {i}: {other} {:?}", r.body),
            }
        }
        let posts = seen.lock().unwrap().len() - gets;
        assert!(
            posts > 0,
            "{client:?}: some POSTs went to the hanging-up backend"
        );
        assert_eq!(
            refused, posts,
            "{client:?}: every such POST failed, none was sent again"
        );
        task.abort();
    }
}
