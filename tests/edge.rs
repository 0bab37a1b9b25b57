//! The gateway's edge under hostile and broken peers (issue 10): Host and
//! path handling, body limits, clients with broken or slow bodies, upstreams
//! that break HTTP, and backends dying with requests in flight. Requests are
//! sent as raw bytes where a real client library would tidy them up first.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::{Cidr, EdgePolicy, ProxySettings, UnderscorePolicy};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn options(routes: &str, edge: EdgePolicy) -> GatewayOptions {
    GatewayOptions {
        config: Config::parse(routes).unwrap(),
        proxy: ProxySettings {
            access_log: false,
            edge,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    }
}

async fn gateway(routes: &str) -> TestGateway {
    TestGateway::start(options(routes, EdgePolicy::default())).await
}

/// A raw HTTP/1.1 exchange: what came back before the peer closed (or the
/// deadline passed).
async fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_answer(&mut s).await
}

async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    Answer(String::from_utf8_lossy(&out).into_owned())
}

/// A raw response (or several, pipelined).
#[derive(Debug)]
struct Answer(String);

impl Answer {
    fn status(&self) -> u16 {
        self.0
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {:?}", self.0))
    }

    fn header(&self, name: &str) -> Option<String> {
        let head = self.0.split("\r\n\r\n").next().unwrap_or_default();
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The first JSON object in the body.
    fn json(&self) -> serde_json::Value {
        let body = &self.0[self.0.find("\r\n\r\n").map_or(0, |i| i + 4)..];
        let start = body
            .find('{')
            .unwrap_or_else(|| panic!("no JSON in {:?}", self.0));
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    }
}

fn echo_route(name: &str, prefix: &str, echo: &TestEcho) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [\"{}\"]\n",
        echo.addr
    )
}

/// The endpoint state `/endpoints` shows for `addr` on the first route.
async fn endpoint_state(gw: &TestGateway, addr: SocketAddr) -> serde_json::Value {
    let v = get(&format!("{}/endpoints", gw.admin_url)).await.json();
    v["routes"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Item 1: one host, the one routed on, is the one forwarded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_routed_on_is_the_host_forwarded() {
    let internal = TestEcho::start("internal").await;
    let public = TestEcho::start("public").await;
    let gw = gateway(&format!(
        "[[route]]\nname = \"internal\"\nhosts = [\"internal.example\"]\nupstreams = [\"{}\"]\n\
         [[route]]\nname = \"public\"\nhosts = [\"public.example\"]\nupstreams = [\"{}\"]\n",
        internal.addr, public.addr
    ))
    .await;

    // Absolute form: its authority replaces Host, for routing and upstream alike.
    let a = raw(
        gw.addr,
        b"GET http://internal.example/x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 200, "{a:?}");
    let v = a.json();
    assert_eq!(v["instance"], "internal");
    assert_eq!(v["headers"]["host"], "internal.example");
    assert_eq!(v["headers"]["x-forwarded-host"], "internal.example");

    for (what, request) in [
        (
            "two Host headers",
            &b"GET /x HTTP/1.1\r\nHost: public.example\r\nHost: internal.example\r\nConnection: close\r\n\r\n"[..],
        ),
        ("no Host", b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("a space", b"GET /x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"),
        (
            "a path",
            b"GET /x HTTP/1.1\r\nHost: internal.example/x\r\nConnection: close\r\n\r\n",
        ),
        ("userinfo", b"GET /x HTTP/1.1\r\nHost: u@internal.example\r\nConnection: close\r\n\r\n"),
        ("a bad port", b"GET /x HTTP/1.1\r\nHost: internal.example:8x\r\nConnection: close\r\n\r\n"),
    ] {
        let a = raw(gw.addr, request).await;
        assert_eq!(a.status(), 400, "{what}: {a:?}");
        assert_eq!(a.header("x-portico-error").as_deref(), Some("bad_host"), "{what}");
    }

    // Upper case, a port and a trailing dot still route to the same host.
    let a = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: Internal.Example.:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.json()["instance"], "internal", "{a:?}");
    assert_eq!(a.json()["headers"]["host"], "Internal.Example.:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_authority_wins_and_a_conflicting_host_is_refused() {
    let internal = TestEcho::start("internal").await;
    let gw = gateway(&format!(
        "[[route]]\nname = \"internal\"\nhosts = [\"internal.example\"]\nupstreams = [\"{}\"]\n",
        internal.addr
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let send = |host: Option<&'static str>| {
        let mut b = http::Request::get("http://internal.example/x");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    };
    for (host, want) in [
        (None, StatusCode::OK),
        (Some("internal.example"), StatusCode::OK),
        (Some("public.example"), StatusCode::BAD_REQUEST),
    ] {
        let (resp, _) = client
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(send(host), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), want, "host header {host:?}");
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        if want == StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["headers"]["host"], "internal.example");
        }
    }
}

// ---------------------------------------------------------------------------
// Item 2: the path routed on is the normalised path, and it is what is sent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_never_reaches_a_backend_past_its_route() {
    let public = TestEcho::start("pub").await;
    let admin = TestEcho::start("admin").await;
    let routes = echo_route("pub", "/pub", &public) + &echo_route("admin", "/admin", &admin);
    let gw = gateway(&routes).await;
    for (path, want) in [
        ("/pub/../admin/x", Ok("/admin/x")),
        ("/pub/%2e%2e/admin/x", Ok("/admin/x")),
        ("/pub/.%2e/admin/x", Ok("/admin/x")),
        ("/pub/%2E%2E/admin/x", Ok("/admin/x")),
        ("/pub/./../admin/x", Ok("/admin/x")),
        ("//admin//x", Ok("/admin/x")),
        ("/pub/%61dmin", Ok("/pub/admin")),
        ("/pub/..%2fadmin/x", Err("bad_path")),
        ("/pub/..%5cadmin/x", Err("bad_path")),
        ("/pub/..\\admin/x", Err("bad_path")),
        ("/pub/..;/admin/x", Err("bad_path")),
        ("/pub/../../admin/x", Err("bad_path")),
        ("/..", Err("bad_path")),
        ("/pub/%zz", Err("bad_path")),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let a = raw(gw.addr, request.as_bytes()).await;
        match want {
            Ok(sent) => {
                assert_eq!(a.status(), 200, "{path}: {a:?}");
                let v = a.json();
                assert_eq!(v["path"], sent, "{path}");
                let expected = if sent.starts_with("/admin") {
                    "admin"
                } else {
                    "pub"
                };
                assert_eq!(v["instance"], expected, "{path}");
            }
            Err(code) => {
                assert_eq!(a.status(), 400, "{path}: {a:?}");
                assert_eq!(a.header("x-portico-error").as_deref(), Some(code), "{path}");
            }
        }
    }
    // `/pub/..` is `/`, which no route covers.
    let a = raw(
        gw.addr,
        b"GET /pub/.. HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 404, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_can_be_kept_as_data() {
    let echo = TestEcho::start("e").await;
    let edge = EdgePolicy {
        path: portico_gateway::path::PathPolicy {
            encoded_slashes: portico_gateway::path::SlashPolicy::Keep,
            merge_slashes: true,
        },
        ..EdgePolicy::default()
    };
    let gw = TestGateway::start(options(&echo_route("repos", "/repos", &echo), edge)).await;
    let a = raw(
        gw.addr,
        b"GET /repos/group%2fproject/tree HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.json()["path"], "/repos/group%2Fproject/tree", "{a:?}");
    let a = raw(
        gw.addr,
        b"GET /repos/..%2fadmin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 400, "{a:?}");
}

// ---------------------------------------------------------------------------
// Item 3: request body limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let backend = TestEcho::start("b").await;
    let gw = gateway(&format!(
        "[[route]]\nname = \"small\"\npath_prefix = \"/small\"\nmax_request_body = \"1k\"\nupstreams = [\"{0}\"]\n\
         [[route]]\nname = \"default\"\npath_prefix = \"/\"\nupstreams = [\"{0}\"]\n",
        backend.addr
    ))
    .await;

    // A declared length over the gateway default (32 MiB): refused before a
    // byte of the body is sent, and the connection is closed.
    let a = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2147483648\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 413, "{a:?}");
    assert_eq!(
        a.header("x-portico-error").as_deref(),
        Some("body_too_large")
    );
    assert_eq!(a.header("connection").as_deref(), Some("close"));

    // Over the route's own limit, declared.
    let a = raw(
        gw.addr,
        b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 413, "{a:?}");
    assert_eq!(a.header("connection").as_deref(), Some("close"));

    // Chunked, crossing the limit part way: cut with 413.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "x".repeat(0x200));
    let mut answer = None;
    for _ in 0..8 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        // Stop writing as soon as the gateway answers.
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.peek(&mut peek)).await
            && n > 0
        {
            answer = Some(read_answer(&mut s).await);
            break;
        }
    }
    let a = match answer {
        Some(a) => a,
        None => read_answer(&mut s).await,
    };
    assert_eq!(a.status(), 413, "{a:?}");
    assert_eq!(a.header("connection").as_deref(), Some("close"));

    // Within the limit: through.
    let r = send(
        &http(),
        Method::POST,
        &format!("{}/small", gw.url),
        &[],
        Bytes::from(vec![b'y'; 1000]),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------
// Item 4: a client's broken body is the client's fault.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_client_body_is_400_and_ejects_no_backend() {
    // Echo backends read the whole body before answering, as most do.
    let a = TestEcho::start("a").await;
    let b = TestEcho::start("b").await;
    let gw = gateway(&format!(
        "[[route]]\nname = \"both\"\nupstreams = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    ))
    .await;
    for i in 0..12 {
        let answer = raw(
            gw.addr,
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbroken\r\n",
        )
        .await;
        assert_eq!(answer.status(), 400, "request {i}: {answer:?}");
        assert_eq!(
            answer.header("x-portico-error").as_deref(),
            Some("bad_request_body")
        );
        assert_eq!(answer.header("connection").as_deref(), Some("close"));
    }
    for backend in [&a, &b] {
        let state = endpoint_state(&gw, backend.addr).await;
        assert_eq!(state["in_rotation"], true, "{state}");
        assert_eq!(state["consecutive_failures"], 0, "{state}");
        assert_eq!(state["ejections"], 0, "{state}");
    }
}

// ---------------------------------------------------------------------------
// Item 5: header hygiene.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_headers_and_forwarding_headers_follow_the_policy() {
    let echo = TestEcho::start("e").await;
    let route = echo_route("all", "/", &echo);
    let gw = gateway(&route).await;
    let r = send(
        &http(),
        Method::GET,
        &gw.url,
        &[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-ok", "1"),
            ("forwarded", "for=6.6.6.6"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let h = &r.json()["headers"];
    assert!(
        h.get("x_forwarded_for").is_none(),
        "dropped by default: {h}"
    );
    assert_eq!(h["x-ok"], "1");
    assert!(
        h.get("forwarded").is_none(),
        "an untrusted peer's Forwarded is dropped: {h}"
    );

    let reject = EdgePolicy {
        underscores: UnderscorePolicy::Reject,
        ..EdgePolicy::default()
    };
    let strict = TestGateway::start(options(&route, reject)).await;
    let r = send(
        &http(),
        Method::GET,
        &strict.url,
        &[("x_y", "1")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["x-portico-error"], "bad_header_name");

    // Behind a trusted hop, its forwarding headers are kept and extended.
    let trusting = EdgePolicy {
        trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap()],
        ..EdgePolicy::default()
    };
    let behind = TestGateway::start(options(&route, trusting)).await;
    let r = send(
        &http(),
        Method::GET,
        &behind.url,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9;proto=https"),
            ("x-forwarded-proto", "https"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["forwarded"],
        "for=203.0.113.9;proto=https, for=127.0.0.1;proto=http"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_over_the_limit_is_414() {
    let echo = TestEcho::start("e").await;
    let gw = gateway(&echo_route("all", "/", &echo)).await;
    let long = format!("/{}", "a".repeat(9 * 1024));
    let a = raw(
        gw.addr,
        format!("GET {long} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(a.status(), 414, "{:?}", &a.0[..a.0.len().min(200)]);
    let fits = format!("/{}", "a".repeat(7 * 1024));
    let a = raw(
        gw.addr,
        format!("GET {fits} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(a.status(), 200);
}

// ---------------------------------------------------------------------------
// Item 6: upstreams that break HTTP.

/// A backend that answers every request with `response` (raw bytes), then
/// keeps the connection open without a word more (`stall`) or closes it.
async fn scripted(response: &'static [u8], stall: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                if stall {
                    // Hold the connection until the gateway gives up on it.
                    let _ = s.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_breaking_http_is_a_502() {
    let upgrade = scripted(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        true,
    )
    .await;
    let both = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let gw = gateway(&format!(
        "[[route]]\nname = \"upgrade\"\npath_prefix = \"/upgrade\"\nupstreams = [\"{upgrade}\"]\n\
         [[route]]\nname = \"both\"\npath_prefix = \"/both\"\nupstreams = [\"{both}\"]\n"
    ))
    .await;
    for path in ["/upgrade", "/both"] {
        let r = send(
            &http(),
            Method::GET,
            &format!("{}{path}", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: no answer ({e})"));
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(r.headers["x-portico-error"], "upstream_protocol", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_ends_at_the_read_timeout() {
    let stalling = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        true,
    )
    .await;
    let gw = gateway(&format!(
        "[[route]]\nname = \"stall\"\nread_timeout = \"300ms\"\nupstreams = [\"{stalling}\"]\n"
    ))
    .await;
    // The head arrives; the body must end (with an error) instead of hanging.
    let result = tokio::time::timeout(
        DEADLINE,
        send(&http(), Method::GET, &gw.url, &[], Bytes::new()),
    )
    .await
    .expect("the stalled body never ended");
    assert!(
        result.is_err(),
        "a truncated body must not look complete: {result:?}"
    );
}

// ---------------------------------------------------------------------------
// Item 8: slow clients are the clients' problem, never an upstream's.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_blames_no_upstream() {
    let backend = TestEcho::start("b").await;
    let edge = EdgePolicy {
        body_read_timeout: Duration::from_millis(300),
        ..EdgePolicy::default()
    };
    let gw = TestGateway::start(options(
        &format!(
            "[[route]]\nname = \"r\"\ntimeout = \"20s\"\nupstreams = [\"{}\"]\n",
            backend.addr
        ),
        edge,
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let a = read_answer(&mut s).await;
    assert_eq!(a.status(), 408, "{a:?}");
    assert_eq!(a.header("x-portico-error").as_deref(), Some("body_timeout"));
    let state = endpoint_state(&gw, backend.addr).await;
    assert_eq!(state["consecutive_failures"], 0, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upload_is_not_an_upstream_timeout() {
    let echo = TestEcho::start("e").await;
    let edge = EdgePolicy {
        body_read_timeout: Duration::from_secs(5),
        ..EdgePolicy::default()
    };
    // The route timeout is shorter than the upload: it counts from the
    // body's last byte, not from the start. On a route that retries, the
    // body is read whole before the first try (to send it again), and the
    // timeout starts after that.
    let gw = TestGateway::start(options(
        &format!(
            "[[route]]\nname = \"r\"\ntimeout = \"300ms\"\nupstreams = [\"{0}\"]\n\
             [[route]]\nname = \"retried\"\npath_prefix = \"/retried\"\ntimeout = \"300ms\"\n\
             upstreams = [\"{0}\"]\n[route.retry]\nattempts = 2\non = [\"503\"]\n\
             non_idempotent = true\n",
            echo.addr
        ),
        edge,
    ))
    .await;
    for path in ["/x", "/retried/x"] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for b in b"trickled" {
            tokio::time::sleep(Duration::from_millis(120)).await; // the client's pace, not a wait for the gateway
            s.write_all(&[*b]).await.unwrap();
        }
        let a = read_answer(&mut s).await;
        assert_eq!(a.status(), 200, "{path}: {a:?}");
        assert_eq!(a.json()["body_len"], 8, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_on_a_retrying_route_holds_no_slot() {
    let backend = FaultyBackend::start("b").await;
    let edge = EdgePolicy {
        body_read_timeout: Duration::from_millis(500),
        ..EdgePolicy::default()
    };
    let gw = TestGateway::start(options(
        &format!(
            "[[route]]\nname = \"r\"\nupstreams = [\"{}\"]\n[route.retry]\nattempts = 2\non = [\"503\"]\nnon_idempotent = true\n[route.limits]\nmax_requests = 1\n",
            backend.addr
        ),
        edge,
    ))
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nten bytes.")
        .await
        .unwrap();
    // While the upload stalls, the route's only slot is free for others.
    for _ in 0..3 {
        let r = send(&http(), Method::GET, &gw.url, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let a = read_answer(&mut slow).await;
    assert_eq!(a.status(), 408, "{a:?}");
}

// ---------------------------------------------------------------------------
// Item 9: a backend dying with requests in flight.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_on_a_dying_backend_go_elsewhere() {
    let mut doomed = FaultyBackend::start("doomed").await;
    let b = FaultyBackend::start("b").await;
    let c = FaultyBackend::start("c").await;
    for backend in [&doomed, &b, &c] {
        backend.set_delay(Duration::from_millis(200));
    }
    let gw = gateway(&format!(
        "[[route]]\nname = \"r\"\nupstreams = [\"{}\", \"{}\", \"{}\"]\n",
        doomed.addr, b.addr, c.addr
    ))
    .await;
    let client = http();
    let url = gw.url.clone();
    let requests: Vec<_> = (0..60)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { send(&client, Method::GET, &url, &[], Bytes::new()).await })
        })
        .collect();
    // Kill it once it has requests in flight.
    eventually("the doomed backend to have requests in flight", || async {
        doomed.received() >= 5
    })
    .await;
    doomed.kill().await;
    let mut failed = Vec::new();
    for r in requests {
        match r.await.unwrap() {
            Ok(reply) if reply.status == StatusCode::OK => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 60 failed: {failed:?}",
        failed.len()
    );
}

// ---------------------------------------------------------------------------
// Item 16: an upstream's answer is never turned into a wrong error.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_answered_5xx_the_client_gets_the_answer() {
    let a = FaultyBackend::start("a").await;
    let b = FaultyBackend::start("b").await;
    a.set_failing(true);
    b.set_failing(true);
    let gw = gateway(&format!(
        "[[route]]\nname = \"r\"\nupstreams = [\"{}\", \"{}\"]\n\
         [route.retry]\nattempts = 3\non = [\"503\"]\nbackoff = \"1ms\"\n\
         [route.breaker]\nconsecutive_failures = 100\n",
        a.addr, b.addr
    ))
    .await;
    let r = send(&http(), Method::GET, &gw.url, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(
        r.headers.get("x-portico-error").is_none(),
        "the upstream's own answer: {:?}",
        r.headers
    );
    assert!(r.headers.contains_key("x-backend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_versions_other_than_1_0_and_1_1_get_505() {
    let echo = TestEcho::start("e").await;
    let gw = gateway(&echo_route("all", "/", &echo)).await;
    for version in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "HTTP/3"] {
        let a = raw(
            gw.addr,
            format!("GET / {version}\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(a.status(), 505, "{version}: {a:?}");
        assert_eq!(
            a.header("x-portico-error").as_deref(),
            Some("http_version_not_supported")
        );
        assert_eq!(a.json()["code"], "http_version_not_supported");
    }
    let a = raw(gw.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(a.status(), 200, "{a:?}");
}

// ---------------------------------------------------------------------------
// Item 8: clients that stop reading their responses.

/// A backend answering every request with `size` bytes.
async fn big_backend(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(vec![b'z'; size]);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Resident memory of `pid` in KiB: (now, peak).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn gauge(admin: &str, name: &str) -> f64 {
    let text = get(&format!("{admin}/metrics")).await.body;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_cut_off_and_their_memory_returned() {
    const CLIENTS: usize = 200;
    let backend = big_backend(4 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!("[[route]]\nname = \"big\"\nupstreams = [\"{backend}\"]\n"),
    )
    .unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let gw = ChildProcess::spawn(&[
        "gateway",
        "--config",
        routes.to_str().unwrap(),
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--idle-timeout",
        "2s",
        "--no-access-log",
        "--threads",
        "2",
    ]);
    let pid = gw.child.id();
    let admin_url = format!("http://{admin}");
    wait_healthy(&admin_url).await;
    // Warm up: a few whole responses, so the baseline has the pools and
    // buffers a working gateway has.
    for _ in 0..4 {
        let r = get(&format!("http://{listen}/")).await;
        assert_eq!(r.body.len(), 4 << 20);
    }
    let (baseline, _) = rss_kib(pid);

    let mut stalled = Vec::new();
    for _ in 0..CLIENTS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(listen.parse().unwrap()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s); // never read
    }
    eventually("every stalled client to be counted open", || async {
        gauge(&admin_url, "portico_downstream_connections").await >= CLIENTS as f64
    })
    .await;
    // Past the idle (send) timeout, the gateway closes them by itself.
    eventually(
        "the gateway to close every client that stopped reading",
        || async { gauge(&admin_url, "portico_downstream_connections").await == 0.0 },
    )
    .await;
    let (after, peak) = rss_kib(pid);
    let per_client = (peak.saturating_sub(baseline)) / CLIENTS as u64;
    eprintln!(
        "RSS baseline {baseline} KiB, peak {peak} KiB ({per_client} KiB per stalled client), after {after} KiB"
    );
    assert!(
        per_client <= 256,
        "{per_client} KiB buffered per client that stopped reading"
    );
    assert!(
        after <= baseline + 16 * 1024,
        "memory not returned: {baseline} KiB before, {after} KiB after the clients were cut off"
    );
    drop(stalled);
}

// ---------------------------------------------------------------------------
// Issue 15: the native HTTP/1.1 server keeps hyper's connection rules.

/// Reads from `s` until `needle` has arrived (or the deadline).
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let echo = TestEcho::start("e").await;
    let gw = gateway(&echo_route("all", "/", &echo)).await;
    let a = raw(
        gw.addr,
        b"GET /p/1 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /p/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          POST /p/3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n\
          HEAD /p/4 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /p/5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let at = |p: &str| {
        a.0.find(&format!("\"path\":\"{p}\""))
            .unwrap_or_else(|| panic!("{p} not answered: {a:?}"))
    };
    assert!(at("/p/1") < at("/p/2") && at("/p/2") < at("/p/3"), "{a:?}");
    assert!(at("/p/3") < at("/p/5"), "{a:?}");
    assert_eq!(a.0.matches("HTTP/1.1 200").count(), 5, "{a:?}");
    // The HEAD answer carried no body: the next response follows its head.
    let head = a.0.match_indices("HTTP/1.1 200").nth(3).unwrap().0;
    let next = a.0.match_indices("HTTP/1.1 200").nth(4).unwrap().0;
    assert!(a.0[head..next].ends_with("\r\n\r\n"), "{a:?}");
    assert!(a.0.contains("\"body_len\":3") && a.0.contains("\"body_len\":2"));
    assert_eq!(
        a.0.matches("\r\ndate: ").count(),
        5,
        "a Date on every response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keeps_alive_only_when_asked() {
    let echo = TestEcho::start("e").await;
    let gw = gateway(&echo_route("all", "/", &echo)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, "}").await;
    assert!(
        first
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{first}"
    );
    s.write_all(b"GET /b HTTP/1.0\r\n\r\n").await.unwrap();
    let second = read_answer(&mut s).await;
    assert_eq!(second.status(), 200, "{second:?}");
    assert_eq!(second.header("connection").as_deref(), Some("close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_is_sent_only_when_the_body_is_read() {
    let echo = TestEcho::start("e").await;
    let routes = format!(
        "{}[[route]]\nname = \"small\"\npath_prefix = \"/small\"\nupstreams = [\"{}\"]\nmax_request_body = \"1k\"\n",
        echo_route("all", "/", &echo),
        echo.addr
    );
    let gw = gateway(&routes).await;
    // Read by the upstream exchange: 100 first, then the answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut s, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(b"hello").await.unwrap();
    let a = read_answer(&mut s).await;
    assert_eq!(a.status(), 200, "{a:?}");
    assert_eq!(a.json()["body_len"], 5);
    // Refused before a byte is read: no 100.
    let a = raw(
        gw.addr,
        b"PUT /small HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(a.status(), 413, "{a:?}");
    assert!(!a.0.contains("100 Continue"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_request() {
    // A backend that takes a request, never answers, and reports when the
    // gateway gives up on it (closes the upstream connection).
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
            let _ = got_tx.send(());
        }
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        let _ = closed_tx.send(());
    });
    let gw = gateway(&format!(
        "[[route]]\nname = \"hold\"\npath_prefix = \"/\"\nupstreams = [\"{addr}\"]\ntimeout = \"60s\"\n"
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Once the request is at the backend, hang up.
    tokio::time::timeout(DEADLINE, got_rx)
        .await
        .expect("the request never reached the backend")
        .unwrap();
    drop(s);
    tokio::time::timeout(DEADLINE, closed_rx)
        .await
        .expect("the gateway kept the upstream request after its client left")
        .unwrap();
}
