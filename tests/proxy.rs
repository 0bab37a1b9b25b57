//! Proxy semantics through a real gateway to real backends: header rewriting,
//! request ids, streaming bodies, WebSocket, h2c, request smuggling framing,
//! the gateway's own error codes, listener limits and graceful drain.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::server::ServerSettings;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn options(routes: &str) -> GatewayOptions {
    GatewayOptions {
        config: Config::parse(routes).unwrap(),
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    }
}

async fn gateway_to(echo: &TestEcho) -> TestGateway {
    TestGateway::start(options(&format!(
        "[[route]]\nname = \"echo\"\nupstreams = [\"{}\"]\n",
        echo.addr
    )))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let echo = TestEcho::start("e").await;
    let gw = gateway_to(&echo).await;
    let r = send(
        &http(),
        Method::GET,
        &format!("{}/x?q=1", gw.url),
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "h2c-not-really"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-foo", "1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-end-to-end", "kept"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let h = &v["headers"];
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-foo",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }
    assert_eq!(h["x-end-to-end"], "kept");
    // The client is not a trusted hop: what it claims is replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h.get("forwarded").is_none(), "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    // Host is kept as the client sent it.
    assert_eq!(h["host"], gw.addr.to_string());
    assert_eq!(v["path"], "/x");
    assert_eq!(v["query"], "q=1");

    // A request id is generated, sent upstream, and echoed to the client.
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(h["x-request-id"], id.as_str());
    // A client's own id is kept.
    let r = send(
        &http(),
        Method::GET,
        &gw.url,
        &[("x-request-id", "abc-123")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert_eq!(r.json()["headers"]["x-request-id"], "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_body_streams_through_intact() {
    let echo = TestEcho::start("e").await;
    let gw = gateway_to(&echo).await;
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let expected = fnv1a(&data);

    // Fixed length.
    let r = send(
        &http(),
        Method::POST,
        &format!("{}/upload", gw.url),
        &[],
        Bytes::from(data.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.json()["body_len"], 1024 * 1024);
    assert_eq!(r.json()["body_fnv1a"], expected.as_str());

    // Chunked, in 64 KiB frames produced one at a time.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::post(format!("{}/upload", gw.url))
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["body_len"], 1024 * 1024);
    assert_eq!(v["body_fnv1a"], expected.as_str());
    assert_eq!(v["headers"]["transfer-encoding"], "chunked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let echo = TestEcho::start("e").await;
    let gw = gateway_to(&echo).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for msg in ["hello", "through", "portico"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let back = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_is_served_over_http1_upstream() {
    let echo = TestEcho::start("e").await;
    let gw = gateway_to(&echo).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    for i in 0..5 {
        let req = http::Request::post(format!("{}/h2/{i}", gw.url))
            .body(Full::new(Bytes::from_static(b"ping")))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert!(resp.headers().contains_key("x-request-id"));
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["path"], format!("/h2/{i}"));
        assert_eq!(v["body_len"], 4);
        // :authority became Host for the HTTP/1.1 upstream.
        assert_eq!(v["headers"]["host"], gw.addr.to_string());
    }
}

/// One h2c connection, many streams in flight at once (they run in the
/// connection's task, not a task each): every one is answered, each with
/// its own request id, and a shutdown while they wait on the backend
/// lets them finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_h2c_streams_on_one_connection_finish_through_a_shutdown() {
    const STREAMS: usize = 20;
    let backend = FaultyBackend::start("slow").await;
    backend.set_delay(Duration::from_millis(500));
    let gw = TestGateway::start(options(&format!(
        "[[route]]\nname = \"slow\"\nupstreams = [\"{}\"]\n",
        backend.addr
    )))
    .await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let calls: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut sender = sender.clone();
            let req = http::Request::get(format!("{}/s/{i}", gw.url))
                .body(Full::new(Bytes::new()))
                .unwrap();
            tokio::spawn(async move {
                let resp = sender.send_request(req).await.unwrap();
                let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, id, body)
            })
        })
        .collect();
    eventually("every stream reached the backend", || async {
        backend.received() == STREAMS
    })
    .await;
    let stopping = tokio::spawn(gw.stop());
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        let (status, id, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "slow");
        assert!(ids.insert(id), "request ids are unique");
    }
    stopping.await.unwrap();
}

/// Sends raw bytes and reads until the peer closes or `deadline`.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_transfer_encoding_never_both_reach_a_backend() {
    let echo = TestEcho::start("e").await;
    let gw = gateway_to(&echo).await;
    let answer = raw_exchange(
        gw.addr,
        b"POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let status_line = answer.lines().next().unwrap_or_default().to_string();
    if status_line.contains(" 400 ") {
        return; // refused outright: nothing reached the backend
    }
    assert!(status_line.contains(" 200 "), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let json_start = body.find('{').unwrap();
    let json_end = body.rfind('}').unwrap();
    let v: serde_json::Value = serde_json::from_str(&body[json_start..=json_end]).unwrap();
    let h = &v["headers"];
    assert!(
        !(h.get("content-length").is_some() && h.get("transfer-encoding").is_some()),
        "backend saw both framings: {h}"
    );
    // The chunked framing won: the backend got the 5 chunked bytes.
    assert_eq!(v["body_len"], 5, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_json_with_a_code() {
    // A port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    // A backend that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    // A backend that answers garbage.
    let garbage = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    let _garbage_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
        }
    });
    let gw = TestGateway::start(options(&format!(
        r#"
        [[route]]
        name = "dead"
        path_prefix = "/dead"
        upstreams = ["{dead_addr}"]
        [[route]]
        name = "silent"
        path_prefix = "/silent"
        upstreams = ["{silent_addr}"]
        timeout = "300ms"
        [[route]]
        name = "garbage"
        path_prefix = "/garbage"
        upstreams = ["{garbage_addr}"]
        [[route]]
        name = "nobody"
        path_prefix = "/nobody"
        service = "nobody"
        "#
    )))
    .await;
    for (path, status, code) in [
        ("/elsewhere", 404, "no_route"),
        ("/nobody", 503, "no_healthy_upstream"),
        ("/dead", 502, "upstream_connect"),
        ("/garbage", 502, "upstream_protocol"),
        ("/silent", 504, "upstream_timeout"),
    ] {
        let r = get(&format!("{}{path}", gw.url)).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.headers["x-portico-error"], code, "{path}");
        assert_eq!(r.json()["code"], code, "{path}");
        assert!(r.json()["error"].as_str().is_some(), "{path}");
        assert!(r.headers.contains_key("x-request-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_by_host_path_and_method_and_strip_prefixes() {
    let a = TestEcho::start("a").await;
    let b = TestEcho::start("b").await;
    let c = TestEcho::start("c").await;
    let gw = TestGateway::start(options(&format!(
        r#"
        [[route]]
        name = "api"
        path_prefix = "/api"
        strip_prefix = true
        upstreams = ["{a}"]
        [[route]]
        name = "api-writes"
        path_prefix = "/api"
        methods = ["POST"]
        upstreams = ["{b}"]
        [[route]]
        name = "wild"
        hosts = ["*.example.test"]
        upstreams = ["{c}"]
        "#,
        a = a.addr,
        b = b.addr,
        c = c.addr
    )))
    .await;
    let http = http();
    let r = send(
        &http,
        Method::GET,
        &format!("{}/api/users?x=1", gw.url),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.instance(), "a");
    assert_eq!(r.json()["path"], "/users");
    let r = send(
        &http,
        Method::POST,
        &format!("{}/api/users", gw.url),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.instance(), "b");
    assert_eq!(r.json()["path"], "/api/users");
    let r = send(
        &http,
        Method::GET,
        &format!("{}/api", gw.url),
        &[("host", "x.Example.test:80")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.instance(), "c");
    let r = send(
        &http,
        Method::GET,
        &format!("{}/apis", gw.url),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_request_heads_are_cut_off() {
    let echo = TestEcho::start("e").await;
    let mut opts = options(&format!(
        "[[route]]\nname = \"e\"\nupstreams = [\"{}\"]\n",
        echo.addr
    ));
    opts.server = ServerSettings {
        header_read_timeout: Duration::from_millis(300),
        max_header_size: 16 * 1024,
        ..ServerSettings::default()
    };
    let gw = TestGateway::start(opts).await;

    // Slowloris: half a head, then silence. The gateway closes the connection.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection was not closed by the header read timeout"
    );

    // A head over the limit is refused with 431.
    let big = "x".repeat(64 * 1024);
    let answer = raw_exchange(
        gw.addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
}

/// A backend that reports each request as it arrives, then answers after `delay`.
async fn notifying_backend(
    delay: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(());
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"finished"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let (backend, mut arrived) = notifying_backend(Duration::from_millis(500)).await;
    let gw = TestGateway::start(options(&format!(
        "[[route]]\nname = \"slow\"\nupstreams = [\"{backend}\"]\n"
    )))
    .await;
    let url = format!("{}/slow", gw.url);
    let in_flight = tokio::spawn(async move { get(&url).await });
    // The backend has the request: it is in flight through the gateway.
    tokio::time::timeout(DEADLINE, arrived.recv())
        .await
        .unwrap()
        .unwrap();
    let addr = gw.addr;
    gw.stop().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, Bytes::from_static(b"finished"));
    // After the drain the listener is gone.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_still_answers_the_client_in_http11() {
    // A backend that answers in HTTP/1.0 and closes, like a minimal server.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .await;
            });
        }
    });
    let gw = TestGateway::start(options(&format!(
        "[[route]]\nname = \"old\"\nupstreams = [\"{addr}\"]\n"
    )))
    .await;
    let answer = raw_exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
}

/// Answers each connection's first request with `answer`, then closes.
async fn scripted_backend(answer: &'static [u8]) -> std::net::SocketAddr {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_interim_answers_close_delimited_bodies_and_bad_lengths() {
    // Interim answers are read past; a body with no length runs to the close.
    let hints = scripted_backend(
        b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-up: 1\r\n\r\nall until the close",
    )
    .await;
    // Two lengths: the upstream's framing is ambiguous, so the gateway refuses it.
    let ambiguous = scripted_backend(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    )
    .await;
    let gw = TestGateway::start(options(&format!(
        "[[route]]\nname = \"hints\"\npath_prefix = \"/hints\"\nupstreams = [\"{hints}\"]\n\
         [[route]]\nname = \"bad\"\npath_prefix = \"/bad\"\nupstreams = [\"{ambiguous}\"]\n"
    )))
    .await;
    let answer = raw_exchange(
        gw.addr,
        b"GET /hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Looked for by its status line and header: the answer also carries a
    // random request id, whose hex digits may spell "103".
    assert!(
        !answer.contains("HTTP/1.1 103") && !answer.contains("link:"),
        "an interim answer was relayed: {answer}"
    );
    assert!(answer.contains("x-up: 1"), "{answer}");
    // Relayed chunked (its length was unknown), and whole.
    assert!(
        answer.contains("\r\n\r\n13\r\nall until the close\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n0\r\n\r\n"), "{answer}");
    let answer = raw_exchange(
        gw.addr,
        b"GET /bad HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.contains("\"code\":\"upstream_protocol\""),
        "{answer}"
    );
    assert!(!answer.contains("hello"), "{answer}");
}

/// A keep-alive backend written on raw sockets that counts the connections
/// it accepts. Its answers alternate between a `Content-Length` body and a
/// chunked one; with `close_after_answer` it closes each connection once
/// it has answered (without saying so, as an upstream's own idle timeout
/// does), so the gateway's pooled connection is dead when next used.
async fn counting_backend(
    close_after_answer: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = n;
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        answered += 1;
                        let answer: &[u8] = if answered.is_multiple_of(2) {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength"
                        } else {
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n"
                        };
                        if s.write_all(answer).await.is_err() || close_after_answer {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => pending.extend_from_slice(&buf[..k]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_a_closed_one_is_replaced() {
    use std::sync::atomic::Ordering;
    for close_after_answer in [false, true] {
        let (addr, accepted) = counting_backend(close_after_answer).await;
        let gw = TestGateway::start(options(&format!(
            "[[route]]\nname = \"counted\"\nupstreams = [\"{addr}\"]\n"
        )))
        .await;
        for i in 0..20 {
            let r = get(&format!("http://{}/{i}", gw.addr)).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "request {i}, close {close_after_answer}"
            );
            assert!(
                r.body == "length" || r.body == "chunked",
                "request {i}: {:?}",
                r.body
            );
        }
        let connections = accepted.load(Ordering::SeqCst);
        if close_after_answer {
            assert_eq!(
                connections, 20,
                "one connection per request when the upstream closes each"
            );
        } else {
            assert_eq!(
                connections, 1,
                "20 sequential requests should share one upstream connection"
            );
        }
        gw.stop().await;
    }
}

/// A keep-alive backend that answers every request with `answer`; the
/// count is of the connections it accepted.
async fn keep_alive_backend(
    answer: &'static [u8],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Reads one response with a `Content-Length` body: its head's lines and
/// its body.
async fn read_response(s: &mut TcpStream) -> (Vec<String>, Vec<u8>) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(seen[..end].to_vec()).unwrap();
    let lines: Vec<String> = head.split("\r\n").map(str::to_owned).collect();
    let length: usize = lines
        .iter()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a content-length")
        .parse()
        .unwrap();
    let mut body = seen[end + 4..].to_vec();
    while body.len() < length {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    (lines, body)
}

/// The lines of `head` whose field name is `name` (any case).
fn fields<'a>(head: &'a [String], name: &str) -> Vec<&'a str> {
    head.iter()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// An upstream's fields reach the client as it sent them (the native
/// server relays them in one copy when no filter reads them), less the
/// hop-by-hop ones (`Proxy-*` too) and with the gateway's own request id;
/// a route with a response filter and an HTTP/2 client get the same fields
/// through the header map. The upstream connection is reused throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fields_reach_the_client_as_sent_less_the_hop_by_hop_ones() {
    let (backend, accepted) = keep_alive_backend(
        b"HTTP/1.1 200 OK\r\nServer: origin/1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
          Date: Thu, 03 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n\
          Content-Length: 5\r\nConnection: keep-alive\r\n\
          Keep-Alive: timeout=5\r\nX-Request-Id: theirs\r\n\r\nhello",
    )
    .await;
    // A `Proxy-*` field is this hop's: never passed on.
    let (proxied, _) = keep_alive_backend(
        b"HTTP/1.1 200 OK\r\nProxy-Authenticate: Basic realm=x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let gw = TestGateway::start(options(&format!(
        "[[route]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstreams = [\"{backend}\"]\n\
         [[route]]\nname = \"filtered\"\npath_prefix = \"/filtered\"\nupstreams = [\"{backend}\"]\n\
         [[route.filters]]\ntype = \"response_headers\"\nset = {{ \"x-served-by\" = \"portico\" }}\n\
         [[route]]\nname = \"proxied\"\npath_prefix = \"/proxied\"\nupstreams = [\"{proxied}\"]\n"
    )))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /proxied HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(body, b"hello");
    assert!(fields(&head, "proxy-authenticate").is_empty(), "{head:?}");
    for path in ["/plain", "/plain", "/filtered"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert_eq!(head[0], "HTTP/1.1 200 OK", "{head:?}");
        assert_eq!(body, b"hello");
        assert_eq!(fields(&head, "server"), ["origin/1"], "{head:?}");
        assert_eq!(fields(&head, "set-cookie"), ["a=1", "b=2"], "{head:?}");
        assert_eq!(fields(&head, "content-type"), ["text/plain"], "{head:?}");
        assert_eq!(fields(&head, "content-length"), ["5"], "{head:?}");
        assert_eq!(
            fields(&head, "date"),
            ["Thu, 03 Dec 2026 07:00:00 GMT"],
            "the upstream's date, once: {head:?}"
        );
        // Relayed, the lines are as the upstream wrote them; a filtered
        // route's go through the map (names lowercased).
        let server = if path == "/plain" {
            "Server: origin/1"
        } else {
            "server: origin/1"
        };
        assert!(head.iter().any(|l| l == server), "{head:?}");
        assert!(fields(&head, "connection").is_empty(), "{head:?}");
        assert!(fields(&head, "keep-alive").is_empty(), "{head:?}");
        let ids = fields(&head, "x-request-id");
        assert!(ids.len() == 1 && ids[0] != "theirs", "{head:?}");
        let filtered = fields(&head, "x-served-by");
        assert_eq!(filtered.len(), usize::from(path == "/filtered"), "{head:?}");
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = client
        .request(
            http::Request::get(format!("{}/plain", gw.url))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let h = resp.headers();
    assert_eq!(h["server"], "origin/1");
    assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
    assert_ne!(h["x-request-id"], "theirs");
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"hello"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one upstream connection carried every request"
    );
}
