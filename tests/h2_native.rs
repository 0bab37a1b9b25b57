//! The native HTTP/2 server (the default, `gateway/src/h2/`) with real
//! clients: curl and h2load (nghttp2) over h2c, and the h2 crate's client
//! for bodies larger than every window, both ways, and for a stream reset
//! mid-upload; curl waiting for `100 Continue`. These gateways run the
//! native server whatever `PORTICO_TEST_HTTP2_SERVER` says (.ci/run runs
//! the HTTP/2 suites again on hyper's with it).

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use portico_gateway::server::{Http2Server, ServerSettings};
use support::*;
use tokio::net::{TcpListener, TcpStream};

async fn native_gateway(upstream: SocketAddr) -> TestGateway {
    let settings = ServerSettings {
        http2: Http2Server::Native,
        ..ServerSettings::default()
    };
    TestGateway::to_upstream_on(upstream, settings).await
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed (.ci/run installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_h2load_through_the_native_server() {
    let echo = TestEcho::start("e").await;
    let gw = native_gateway(echo.addr).await;
    let url = format!("{}/hello?x=1", gw.url);
    let answer = tokio::task::spawn_blocking(move || {
        run("curl", &["-sS", "--http2-prior-knowledge", "-D", "-", &url])
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/2 200"), "{answer}");
    assert!(answer.contains("x-request-id: "), "{answer}");
    assert!(answer.contains("\"path\":\"/hello\""), "{answer}");
    let url = format!("{}/load", gw.url);
    let report = tokio::task::spawn_blocking(move || {
        run("h2load", &["-n", "2000", "-c", "2", "-m", "32", &url])
    })
    .await
    .unwrap();
    assert!(
        report.contains("2000 total, 2000 started, 2000 done, 2000 succeeded"),
        "{report}"
    );
    assert!(report.contains("status codes: 2000 2xx"), "{report}");
}

/// An h2c client connection to `addr`.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Sends a request with no body on `client` and waits for its head.
async fn request(
    client: &h2::client::SendRequest<Bytes>,
    method: http::Method,
    path: &str,
) -> http::Response<h2::RecvStream> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(())
        .unwrap();
    let ready = client.clone().ready().await.unwrap();
    let (resp, _) = ready.clone().send_request(req, true).unwrap();
    resp.await.unwrap()
}

/// Reads a response body whole, giving each piece's window back.
async fn read_all(mut body: h2::RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_larger_than_every_window_arrives_whole() {
    let echo = TestEcho::start("e").await;
    let gw = native_gateway(echo.addr).await;
    let client = h2_client(gw.addr).await;
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let req = http::Request::post("http://localhost/up")
        .header("content-length", data.len())
        .body(())
        .unwrap();
    let (resp, mut send) = client
        .ready()
        .await
        .unwrap()
        .send_request(req, false)
        .unwrap();
    // Sent as the gateway's windows allow: 3 MiB against 1 MiB windows.
    let mut rest = Bytes::from(data.clone());
    while !rest.is_empty() {
        send.reserve_capacity(rest.len().min(64 * 1024));
        let room = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        let piece = rest.split_to(room.min(rest.len()));
        send.send_data(piece, rest.is_empty()).unwrap();
    }
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = read_all(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_len"], data.len());
    assert_eq!(v["body_fnv1a"], fnv1a(&data).as_str());
}

/// An upstream that answers every request with `size` bytes.
async fn big_origin(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from((0..size).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_larger_than_the_clients_window_arrive_whole() {
    downloads(false).await;
}

/// The same with windows far larger than the bodies: the gateway's write
/// buffer, not the client's windows, holds the responses back, and reading
/// goes on once it drains (the client's requests and WINDOW_UPDATEs are
/// still read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_to_a_client_with_huge_windows_arrive_whole() {
    downloads(true).await;
}

async fn downloads(huge_windows: bool) {
    let size = 5 * 1024 * 1024;
    let origin = big_origin(size).await;
    let gw = native_gateway(origin).await;
    let client = match huge_windows {
        false => h2_client(gw.addr).await,
        true => {
            let tcp = TcpStream::connect(gw.addr).await.unwrap();
            let (client, conn) = h2::client::Builder::new()
                .initial_window_size(64 * 1024 * 1024)
                .initial_connection_window_size(256 * 1024 * 1024)
                .handshake(tcp)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
        }
    };
    // Three at once on one connection: each is held to the client's 64 KiB
    // stream window, and all share its connection window.
    let mut pending = Vec::new();
    for n in 0..3 {
        let client = client.clone();
        pending.push(tokio::spawn(async move {
            let resp = request(&client, http::Method::GET, &format!("/big/{n}")).await;
            assert_eq!(resp.status(), StatusCode::OK);
            read_all(resp.into_body()).await
        }));
    }
    let expected: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    for p in pending {
        let body = p.await.unwrap();
        assert_eq!(body.len(), size);
        assert!(body == expected, "the body arrived intact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_mid_upload_leaves_the_connection_serving() {
    let echo = TestEcho::start("e").await;
    let gw = native_gateway(echo.addr).await;
    let client = h2_client(gw.addr).await;
    let req = http::Request::post("http://localhost/slow")
        .body(())
        .unwrap();
    let (_resp, mut send) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(req, false)
        .unwrap();
    send.send_data(Bytes::from(vec![1u8; 100_000]), false)
        .unwrap();
    send.send_reset(h2::Reason::CANCEL);
    for n in 0..20 {
        let resp = request(&client, http::Method::GET, &format!("/after/{n}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value =
            serde_json::from_slice(&read_all(resp.into_body()).await).unwrap();
        assert_eq!(v["path"], format!("/after/{n}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_has_no_body() {
    let echo = TestEcho::start("e").await;
    let gw = native_gateway(echo.addr).await;
    let client = h2_client(gw.addr).await;
    let resp = request(&client, http::Method::HEAD, "/h").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("date"));
    // The stream ended with the head: no DATA frame (one would be a
    // protocol error to the client).
    assert!(resp.body().is_end_stream(), "HEADERS carried END_STREAM");
    assert!(read_all(resp.into_body()).await.is_empty());
}

/// HEAD answered by the gateway itself (an upstream that refuses): its
/// JSON error body is not sent, as the HEAD has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answer_to_head_has_no_body() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let gw = native_gateway(dead).await;
    let client = h2_client(gw.addr).await;
    for method in [http::Method::HEAD, http::Method::GET] {
        let resp = request(&client, method.clone(), "/h").await;
        assert!(
            resp.status().is_server_error(),
            "{method}: {}",
            resp.status()
        );
        let body = read_all(resp.into_body()).await;
        assert_eq!(body.is_empty(), method == http::Method::HEAD, "{method}");
    }
}

/// `Expect: 100-continue` from curl: the gateway invites the body once the
/// proxy reads it (the upstream asked for it), and the body arrives whole.
/// curl waits up to a minute for the invitation, so a missing `100` shows
/// as its absence from curl's trace, not as a slow test passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_expects_100_continue_is_invited() {
    let echo = TestEcho::start("e").await;
    let gw = native_gateway(echo.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let url = format!("{}/upload", gw.url);
    let data = format!("@{}", file.display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-v", "--http2-prior-knowledge"])
            .args(["-H", "Expect: 100-continue", "--expect100-timeout", "60"])
            .args(["--data-binary", &data, &url])
            .output()
            .expect("curl is needed (.ci/run installs it)")
    })
    .await
    .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert!(trace.contains("< HTTP/2 100"), "no 100 Continue: {trace}");
    assert!(trace.contains("< HTTP/2 200"), "{trace}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body_fnv1a"], fnv1a(&body));
}

/// An HTTP/1.1 upstream that answers every request with its own
/// `x-request-id` and, in `x-got-id`, the one it was sent.
async fn upstream_with_its_own_request_id() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                        let got = req.headers().get("x-request-id").cloned();
                        async move {
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from_static(b"ok")));
                            resp.headers_mut()
                                .insert("x-request-id", "from-upstream".parse().unwrap());
                            if let Some(got) = got {
                                resp.headers_mut().insert("x-got-id", got);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
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

/// An HTTP/2 client gets one `x-request-id`, the gateway's (the one the
/// upstream was sent), in place of the upstream's own: the native server
/// writes it after the response's other fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_the_gateways_request_id_alone() {
    let upstream = upstream_with_its_own_request_id().await;
    let gw = native_gateway(upstream).await;
    let client = h2_client(gw.addr).await;
    for n in 0..3 {
        let resp = request(&client, http::Method::GET, &format!("/id/{n}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let ids: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{:?}", resp.headers());
        assert_ne!(ids[0], "from-upstream");
        assert_eq!(
            Some(ids[0]),
            resp.headers().get("x-got-id"),
            "{:?}",
            resp.headers()
        );
        assert_eq!(read_all(resp.into_body()).await, b"ok");
    }
}
