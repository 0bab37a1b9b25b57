//! The echo service: answers every request with JSON naming this instance,
//! the method, path, query and headers it received, and the length and FNV-1a
//! hash of the body (read as a stream, never buffered whole). `GET /ws` with a
//! WebSocket upgrade echoes every message back; `?delay_ms=N` answers late.
//!
//! Shared by `examples/echo` (the runnable service), `examples/quickstart`
//! and the end-to-end tests, which use it as a real backend.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portico_registry::client::InFlight;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Serves the echo service on `listener` as instance `id` until `shutdown`,
/// counting each request in `in_flight` while it runs (the SDK's graceful
/// shutdown waits on that count).
pub async fn serve_counted(
    listener: TcpListener,
    id: String,
    in_flight: InFlight,
    shutdown: impl Future<Output = ()>,
) {
    let id: Arc<str> = id.into();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            () = &mut shutdown => return,
        };
        let id = id.clone();
        let builder = builder.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let guard = in_flight.enter();
                let id = id.clone();
                async move {
                    let resp = handle(id, req).await;
                    drop(guard);
                    resp
                }
            });
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    id: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path().ends_with("/ws") && req.headers().contains_key(header::UPGRADE) {
        return Ok(websocket(req));
    }
    // `?delay_ms=N` answers after N ms: a slow backend for timeout and drain tests.
    if let Some(ms) = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(list)) => list.push(v),
            Some(prev) => *prev = serde_json::Value::Array(vec![prev.clone(), v]),
            None => {
                headers.insert(name.as_str().to_string(), v);
            }
        }
    }
    // Stream the body, hashing as it comes.
    let mut len: u64 = 0;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let body = req.body_mut();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            for b in data.iter() {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let answer = serde_json::json!({
        "instance": &*id,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body_len": len,
        "body_fnv1a": format!("{hash:016x}"),
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-echo-instance", &*id)
        .body(Full::new(Bytes::from(answer.to_string())))
        .expect("valid response"))
}

fn websocket(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::from_static(b"missing Sec-WebSocket-Key")))
            .expect("valid response");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}
