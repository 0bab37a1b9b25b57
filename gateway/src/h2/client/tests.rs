//! The client against a real HTTP/2 server (hyper's, the h2 crate) on a
//! loopback socket.

use super::*;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type TestBody = http_body_util::Either<Full<Bytes>, StreamBody<BodyStream>>;
type BodyStream = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, io::Error>>;

/// What the server saw: each request's path, and each service future that
/// was dropped before it answered (the client reset the stream).
#[derive(Debug)]
enum Seen {
    Request(String),
    Dropped(String),
}

/// Drops with its path reported, unless disarmed.
struct Guard(Option<(String, mpsc::UnboundedSender<Seen>)>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((path, tx)) = self.0.take() {
            let _ = tx.send(Seen::Dropped(path));
        }
    }
}

/// An h2c server: `/echo` answers with the request body, `/hang` never
/// answers, `/big` answers 1 MiB, `/relay` answers each part of the request
/// body as it comes and ends with a trailer counting its bytes; each request is
/// reported.
async fn server(max_streams: u32) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move { answer(req, tx).await }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(io), service),
            );
        }
    });
    (addr, rx)
}

async fn answer(
    req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Seen>,
) -> Result<Response<TestBody>, hyper::Error> {
    let path = req.uri().path().to_owned();
    let _ = tx.send(Seen::Request(path.clone()));
    let mut guard = Guard(Some((path.clone(), tx)));
    let resp = match path.as_str() {
        "/hang" => std::future::pending().await,
        "/big" => Response::new(full(vec![b'b'; 1 << 20])),
        "/relay" => Response::new(relayed(req.into_body())),
        _ => {
            let authority = req.uri().authority().map(|a| a.to_string());
            let body = req.into_body().collect().await?.to_bytes();
            let mut resp = Response::new(full(body));
            let authority = authority.unwrap_or_default();
            resp.headers_mut()
                .insert("x-authority", authority.parse().unwrap());
            resp
        }
    };
    guard.0 = None;
    Ok(resp)
}

/// The request body's parts as they come, then a trailer with their bytes.
fn relayed(body: Incoming) -> TestBody {
    let start = Some((body.into_data_stream(), 0u32));
    let frames = futures_util::stream::unfold(start, |state| async move {
        let (mut parts, n) = state?;
        Some(match parts.next().await {
            Some(Ok(part)) => {
                let n = n + part.len() as u32;
                (Ok(Frame::data(part)), Some((parts, n)))
            }
            Some(Err(e)) => (Err(io::Error::other(e)), None),
            None => {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-bytes", n.into());
                (Ok(Frame::trailers(trailers)), None)
            }
        })
    });
    http_body_util::Either::Right(StreamBody::new(Box::pin(frames)))
}

async fn connect_to(addr: std::net::SocketAddr) -> SendRequest<TestBody> {
    let io = TcpStream::connect(addr).await.unwrap();
    connect(io, Config::default(), KEEP_ALIVE)
}

fn request(path: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method("POST")
        .uri(format!("http://origin.test{path}"))
        .body(body)
        .unwrap()
}

fn full(bytes: impl Into<Bytes>) -> TestBody {
    http_body_util::Either::Left(Full::new(bytes.into()))
}

/// A call for the 1 MiB answer, answered.
async fn big(client: &SendRequest<TestBody>) -> Response<H2Body> {
    let resp = client.send(request("/big", full(""))).await;
    resp.map_err(|f| f.error).unwrap()
}

/// Waits for what the server reports next, within a deadline.
async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the server reports within 10 s")
        .expect("the server is running")
}

#[tokio::test]
async fn concurrent_requests_share_the_connection_and_bodies_pass_the_windows() {
    let (addr, _seen) = server(4).await;
    let client = connect_to(addr).await;
    // Bodies over the server's 64 KiB initial windows, more streams at
    // once than it allows: windows and the stream limit are both waited on.
    let calls = (0..12u8).map(|n| {
        let client = client.clone();
        async move {
            let sent = Bytes::from(vec![n; 200_000 + usize::from(n)]);
            let resp = client.send(request("/echo", full(sent.clone()))).await;
            let resp = resp.unwrap_or_else(|f| panic!("call {n}: {:?}", f.error));
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-authority"], "origin.test");
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, sent, "call {n}");
        }
    });
    futures_util::future::join_all(calls).await;
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_large_response_is_read_through_the_windows_this_side_gives() {
    let (addr, _seen) = server(4).await;
    let client = connect_to(addr).await;
    let resp = big(&client).await;
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), 1 << 20);
}

#[tokio::test]
async fn a_response_no_longer_awaited_has_its_stream_reset() {
    let (addr, mut seen) = server(4).await;
    let client = connect_to(addr).await;
    let call = client.send(request("/hang", full("")));
    // The request reaches the server; then its future is dropped.
    let mut call = Box::pin(call);
    tokio::select! {
        _ = &mut call => panic!("a hanging request answered"),
        seen = next_seen(&mut seen) => assert!(matches!(seen, Seen::Request(ref p) if p == "/hang")),
    }
    drop(call);
    assert!(matches!(next_seen(&mut seen).await, Seen::Dropped(ref p) if p == "/hang"));
    // The connection goes on.
    let resp = client
        .send(request("/echo", full("after")))
        .await
        .map_err(|f| f.error)
        .unwrap();
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, "after");
}

#[tokio::test]
async fn a_streamed_request_body_that_fails_resets_its_stream() {
    let (addr, mut seen) = server(4).await;
    let client = connect_to(addr).await;
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err(io::Error::other("client went away")),
    ];
    let stream: BodyStream = Box::pin(futures_util::stream::iter(frames));
    let body = http_body_util::Either::Right(StreamBody::new(stream));
    let failure = client.send(request("/echo", body)).await.unwrap_err();
    assert!(
        matches!(&failure.error, ClientError::RequestBody(why) if why.contains("client went away")),
        "{:?}",
        failure.error
    );
    assert!(matches!(next_seen(&mut seen).await, Seen::Request(_)));
    assert!(matches!(next_seen(&mut seen).await, Seen::Dropped(_)));
}

#[tokio::test]
async fn requests_fail_when_the_upstream_closes_and_unsent_ones_come_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = connect_to(addr).await;
    let (mut io, _) = listener.accept().await.unwrap();
    // Read the client's preface and first request, then close.
    let call = client.send(request("/echo", full("x")));
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"/ech") {
        let mut buf = [0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut io, &mut buf)
            .await
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(io);
    let failure = call.await.unwrap_err();
    assert!(failure.request.is_none(), "sent: not given back");
    assert!(matches!(
        failure.error,
        ClientError::Gone(_) | ClientError::Io(_)
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.is_closed() {
        assert!(tokio::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failure = client.send(request("/echo", full("y"))).await.unwrap_err();
    assert!(matches!(failure.error, ClientError::Closed));
    assert!(failure.request.is_some(), "never sent: given back");
}

#[tokio::test]
async fn a_response_body_dropped_midway_resets_its_stream() {
    let (addr, _seen) = server(4).await;
    let client = connect_to(addr).await;
    let resp = big(&client).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    // The stream is reset: the connection serves the next at once, and
    // the big body's unread bytes no longer hold its window.
    for n in 0..4 {
        let resp = big(&client).await;
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 1 << 20, "call {n}");
    }
}

#[tokio::test]
async fn an_upstream_that_stops_answering_is_found_dead_by_its_pings() {
    // A server that sends its SETTINGS and then reads without ever
    // answering anything, PINGs included.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        let mut settings = BytesMut::new();
        super::super::frame::Settings::default().write(&mut settings);
        tokio::io::AsyncWriteExt::write_all(&mut io, &settings)
            .await
            .unwrap();
        let mut sink = vec![0u8; 4096];
        while tokio::io::AsyncReadExt::read(&mut io, &mut sink)
            .await
            .unwrap_or(0)
            > 0
        {}
    });
    let io = TcpStream::connect(addr).await.unwrap();
    let client: SendRequest<TestBody> = connect(io, Config::default(), Duration::from_millis(50));
    let call = client.send(request("/echo", full("x")));
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the dead connection is given up within 10 s");
    let failure = outcome.unwrap_err();
    let ClientError::Io(e) = &failure.error else {
        panic!("{:?}", failure.error);
    };
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(client.is_closed());
}

/// A response whose head, message and trailers come in one read (a unary
/// call's) and one whose parts come one at a time give the same frames.
#[tokio::test]
async fn a_response_read_whole_and_one_read_in_parts_give_the_same_frames() {
    let (addr, _seen) = server(100).await;
    let client = connect_to(addr).await;

    // The request body is all there, so the answer is made all at once.
    let resp = client.send(request("/relay", full("abc"))).await;
    let body = resp.map_err(|f| f.error).unwrap().into_body();
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-bytes"], "3");
    assert_eq!(&collected.to_bytes()[..], b"abc");

    // Each part is sent once the one before came back.
    let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, io::Error>>();
    let parts = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|part| (part, rx))
    });
    let streamed = http_body_util::Either::Right(StreamBody::new(Box::pin(parts) as BodyStream));
    tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
        .unwrap();
    let resp = client.send(request("/relay", streamed)).await;
    let mut body = resp.map_err(|f| f.error).unwrap().into_body();
    let data = |frame: Option<Result<Frame<Bytes>, H2BodyError>>| {
        frame
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("data")
    };
    assert_eq!(&data(body.frame().await)[..], b"one");
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .unwrap();
    assert_eq!(&data(body.frame().await)[..], b"two");
    drop(tx);
    let last = body.frame().await.expect("the trailers").unwrap();
    assert_eq!(last.into_trailers().unwrap()["x-bytes"], "6");
    assert!(body.frame().await.is_none());
}

/// A connection with no request in flight gives its read buffer back to
/// the thread's pool while it waits, and takes one again for the next
/// request: a pooled upstream connection between bursts holds none
/// (bench/RESULTS.md, thirty-sixth pass). Each request's 200 kB body and
/// its echo go through the buffers on the way.
#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let (addr, _seen) = server(100).await;
    let before = crate::buffers::kept_any();
    let client = connect_to(addr).await;
    for round in 0..3 {
        let resp = client.send(request("/echo", full(vec![b'x'; 200_000])));
        let resp = resp.await.map_err(|f| f.error).unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 200_000);
        let what = format!("round {round}");
        crate::buffers::until_kept(crate::buffers::kept_any, before + 1, &what).await;
    }
    assert!(!client.is_closed(), "the connection stays open while idle");
}

/// A connection idle at its keep-alive interval lets go of its room (the
/// write buffer a 200 kB request body grew, its events'): the letting go
/// itself is `client_conn`'s test; this shows the connection's task does
/// it while idle, and only then.
#[tokio::test]
async fn an_idle_connection_lets_go_of_its_room_at_the_interval() {
    let (addr, _seen) = server(100).await;
    let io = TcpStream::connect(addr).await.unwrap();
    let client: SendRequest<TestBody> = connect(io, Config::default(), Duration::from_millis(50));
    let hang = client.send(request("/hang", full("")));
    let hang = tokio::spawn(hang);
    // Intervals pass with a stream open: nothing is let go of.
    let ticks = || client.shared.ticks.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ticks() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} intervals passed",
            ticks()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        client.shared.shed.load(Ordering::Relaxed),
        0,
        "shed while busy"
    );
    hang.abort();
    let resp = client.send(request("/echo", full(vec![b'x'; 200_000])));
    let body = resp.await.map_err(|f| f.error).unwrap().into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes().len(), 200_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.shared.shed.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never let go while idle"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What HTTP/2 forbids in a request goes, and nothing else: `te` stays
/// only as exactly `trailers`.
#[test]
fn a_request_loses_the_fields_http2_forbids_and_no_others() {
    let map = |fields: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(*n, http::HeaderValue::from_static(v));
        }
        h
    };
    let names = |h: &HeaderMap| {
        let mut n: Vec<_> = h.iter().map(|(n, v)| format!("{n}: {v:?}")).collect();
        n.sort();
        n
    };
    let kept = [("te", "trailers"), ("x-ok", "1")];
    let mut h = map(&kept);
    super::strip_connection_fields(&mut h);
    assert_eq!(names(&h), names(&map(&kept)));
    let mut h = map(&[
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "trailers"),
        ("x-ok", "1"),
    ]);
    super::strip_connection_fields(&mut h);
    assert_eq!(names(&h), names(&map(&kept)));
    for te in [&[("te", "gzip")][..], &[("te", "trailers"), ("te", "gzip")]] {
        let mut h = map(te);
        h.append("x-ok", http::HeaderValue::from_static("1"));
        super::strip_connection_fields(&mut h);
        assert_eq!(names(&h), names(&map(&[("x-ok", "1")])), "{te:?}");
    }
}
