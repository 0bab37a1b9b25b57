//! Downstream connections as a whole: WebSocket tunnels counted, closed when
//! idle and drained at shutdown; connection caps (gateway-wide and per
//! client IP) with a clear answer past them; accept errors at the
//! file-descriptor limit backed off and logged once per interval.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::server::ServerSettings;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket echo server that reports each connection's end on `ended`.
async fn ws_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

fn gateway_options(backend: SocketAddr) -> GatewayOptions {
    GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"ws\"\nupstreams = [\"{backend}\"]\n"
        ))
        .unwrap(),
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    }
}

async fn echo_once(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("an echo")
        .expect("the tunnel is open")
        .unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

/// Waits for the client side of a tunnel to be closed by the gateway.
async fn closed_by_gateway(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Err(_) => panic!("the tunnel is still open after {DEADLINE:?}"),
            Ok(None | Some(Err(_))) => return,
            Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
        }
    }
}

async fn status(gw: &TestGateway) -> serde_json::Value {
    get(&format!("{}/status", gw.admin_url)).await.json()
}

async fn metric(gw: &TestGateway, line_start: &str) -> Option<String> {
    let text = get(&format!("{}/metrics", gw.admin_url)).await.body;
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_counted_and_closed_on_both_sides_when_idle() {
    let (backend, mut ended) = ws_backend().await;
    let mut opts = gateway_options(backend);
    opts.proxy.tunnel_idle_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(opts).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    echo_once(&mut ws, "hello").await;
    assert_eq!(status(&gw).await["tunnels_open"], 1);
    assert_eq!(
        metric(&gw, "portico_gateway_tunnels_open ")
            .await
            .as_deref(),
        Some("portico_gateway_tunnels_open 1")
    );

    // Silence: the gateway closes the client side and the upstream side.
    closed_by_gateway(&mut ws).await;
    tokio::time::timeout(DEADLINE, ended.recv())
        .await
        .expect("the upstream side to be closed")
        .unwrap();
    eventually("the tunnel to be counted closed", || async {
        status(&gw).await["tunnels_open"] == 0
    })
    .await;
    assert_eq!(
        metric(&gw, "portico_gateway_tunnels_closed_total{reason=\"idle\"}")
            .await
            .as_deref(),
        Some("portico_gateway_tunnels_closed_total{reason=\"idle\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_tunnels_up_to_the_drain_timeout_then_closes_them() {
    let (backend, mut ended) = ws_backend().await;
    let mut opts = gateway_options(backend);
    opts.server = ServerSettings {
        drain_timeout: Duration::from_secs(5),
        ..ServerSettings::default()
    };
    let gw = TestGateway::start(opts).await;
    let addr = gw.addr;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    echo_once(&mut ws, "before").await;

    let stop = tokio::spawn(gw.stop());
    eventually("the listener to close", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // Draining: the tunnel still carries traffic, and the gateway waits for it.
    echo_once(&mut ws, "during the drain").await;
    assert!(
        !stop.is_finished(),
        "shutdown did not wait for the open tunnel"
    );

    // The drain timeout runs out: both sides are closed and shutdown completes.
    tokio::time::timeout(DEADLINE, stop)
        .await
        .expect("shutdown to complete after the drain timeout")
        .unwrap();
    closed_by_gateway(&mut ws).await;
    tokio::time::timeout(DEADLINE, ended.recv())
        .await
        .expect("the upstream side to be closed")
        .unwrap();
}
