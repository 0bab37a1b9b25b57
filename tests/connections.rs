//! Downstream connections as a whole: WebSocket tunnels counted, closed when
//! idle and drained at shutdown; connection caps (gateway-wide and per
//! client IP) with a clear answer past them; accept errors at the
//! file-descriptor limit backed off and logged once per interval; a
//! client that connects and says nothing held by the kernel, not the
//! gateway, until it speaks (`TCP_DEFER_ACCEPT`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};

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
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Err(_) => panic!("the tunnel is still open after {DEADLINE:?}"),
        Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => {}
        Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
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

/// At shutdown a connection waiting for its next request, and one that
/// has sent nothing yet, are closed at once: the drain signal reaches
/// every connection, so shutdown does not wait out the drain timeout
/// (here a minute, three times the test's own deadline) for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_and_silent_connections_without_waiting() {
    use tokio::io::AsyncReadExt;
    let echo = TestEcho::start("e").await;
    // Accepted at once, silent or not (by default the kernel would hold
    // the silent one until it speaks: the test below).
    let gw = TestGateway::start(capped(
        &echo,
        ServerSettings {
            drain_timeout: Duration::from_secs(60),
            defer_accept: None,
            ..ServerSettings::default()
        },
    ))
    .await;
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    assert!(request(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // The silent connection is accepted and waiting for its first bytes.
    eventually("both connections to be open", || async {
        metric(&gw, "portico_downstream_connections ")
            .await
            .as_deref()
            == Some("portico_downstream_connections 2")
    })
    .await;

    tokio::time::timeout(DEADLINE, gw.stop())
        .await
        .expect("shutdown not held up by idle connections");
    for (name, conn) in [("idle", &mut idle), ("silent", &mut silent)] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(DEADLINE, conn.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection is still open"));
        assert!(matches!(read, Ok(0) | Err(_)), "{name}: {read:?}");
    }
}

/// A new connection is taken from the kernel with its first bytes: one
/// that connects and says nothing stays a pending entry of the listener's
/// (`SYN_RECV` on the gateway's side, though the client's connect
/// succeeded), using no descriptor, task or place under the caps; once it
/// sends a request it is accepted and answered. (A 30 s deferral, so the
/// pending state outlasts the checks; the default is 1 s.)
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_says_nothing_is_held_by_the_kernel_until_it_speaks() {
    let echo = TestEcho::start("e").await;
    let settings = ServerSettings {
        defer_accept: Some(Duration::from_secs(30)),
        ..ServerSettings::default()
    };
    let gw = TestGateway::start(capped(&echo, settings)).await;
    // Answered first, so the listener is set up (the option holds back the
    // handshakes completed after it is set).
    let mut other = TcpStream::connect(gw.addr).await.unwrap();
    assert!(request(&mut other).await.starts_with("HTTP/1.1 200"));
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let client = silent.local_addr().unwrap();
    eventually("the gateway's side to be pending in the kernel", || async {
        tcp_state(gw.addr, client).as_deref() == Some("03")
    })
    .await;
    // The accept loop has had every chance to take it meanwhile.
    assert!(request(&mut other).await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        metric(&gw, "portico_downstream_connections ")
            .await
            .as_deref(),
        Some("portico_downstream_connections 1"),
        "only the connection that spoke was accepted"
    );
    assert_eq!(tcp_state(gw.addr, client).as_deref(), Some("03"));
    assert!(request(&mut silent).await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        tcp_state(gw.addr, client).as_deref(),
        Some("01"),
        "established once it spoke"
    );
}

/// The state (`/proc/net/tcp`'s hex code: `01` established, `03`
/// `SYN_RECV`) of the IPv4 socket at `local` whose peer is `remote`.
#[cfg(target_os = "linux")]
fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    // The address as the kernel's u32 in memory order, printed in hex.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("the gateway listens on 127.0.0.1"),
    };
    let (local, remote) = (hex(local), hex(remote));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[1] == local && f[2] == remote)
        .map(|f| f[3].to_string())
}

/// Sends one keep-alive GET on `s` and reads its response whole.
async fn request(s: &mut TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

/// Sends a GET on a new connection from `local` and reads until the
/// gateway closes it.
async fn refused_answer(gw: SocketAddr, local: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(gw, local).await;
    let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("the refused connection to be closed")
        .unwrap();
    String::from_utf8_lossy(&buf).to_string()
}

/// A connection to `gw` from the loopback address `local` (Linux answers
/// on all of 127.0.0.0/8).
async fn connect_from(gw: SocketAddr, local: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(gw).await.unwrap()
}

fn capped(echo: &TestEcho, server: ServerSettings) -> GatewayOptions {
    GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"e\"\nupstreams = [\"{}\"]\n",
            echo.addr
        ))
        .unwrap(),
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        server,
        ..GatewayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_answers_429_and_leaves_other_clients_alone() {
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start(capped(
        &echo,
        ServerSettings {
            max_connections_per_ip: Some(2),
            ..ServerSettings::default()
        },
    ))
    .await;
    let mut c1 = connect_from(gw.addr, "127.0.0.1").await;
    let mut c2 = connect_from(gw.addr, "127.0.0.1").await;
    assert!(request(&mut c1).await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut c2).await.starts_with("HTTP/1.1 200"));

    // A third from the same address: told why, then closed.
    let answer = refused_answer(gw.addr, "127.0.0.1").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.contains("x-portico-error: too_many_client_connections"),
        "{answer}"
    );
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "too_many_client_connections");

    // The open ones keep working; another address is not affected.
    assert!(request(&mut c1).await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut c2).await.starts_with("HTTP/1.1 200"));
    let mut other = connect_from(gw.addr, "127.0.0.2").await;
    assert!(request(&mut other).await.starts_with("HTTP/1.1 200"));

    // A freed slot is reusable.
    drop(c1);
    eventually("the freed slot to be reusable", || async {
        let mut s = connect_from(gw.addr, "127.0.0.1").await;
        request(&mut s).await.starts_with("HTTP/1.1 200")
    })
    .await;
    let refused = metric(
        &gw,
        "portico_downstream_connections_refused_total{reason=\"client_ip_limit\"}",
    )
    .await
    .unwrap();
    assert!(!refused.ends_with(" 0"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_wide_cap_answers_503_and_keeps_open_connections_working() {
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start(capped(
        &echo,
        ServerSettings {
            max_connections: Some(2),
            ..ServerSettings::default()
        },
    ))
    .await;
    let mut c1 = connect_from(gw.addr, "127.0.0.1").await;
    let mut c2 = connect_from(gw.addr, "127.0.0.2").await;
    assert!(request(&mut c1).await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut c2).await.starts_with("HTTP/1.1 200"));

    for local in ["127.0.0.1", "127.0.0.3"] {
        let answer = refused_answer(gw.addr, local).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(
            answer.contains("x-portico-error: too_many_connections"),
            "{answer}"
        );
        assert!(
            answer.contains("\"code\":\"too_many_connections\""),
            "{answer}"
        );
    }
    assert!(request(&mut c1).await.starts_with("HTTP/1.1 200"));

    drop(c2);
    eventually("the freed slot to be reusable", || async {
        let mut s = connect_from(gw.addr, "127.0.0.3").await;
        request(&mut s).await.starts_with("HTTP/1.1 200")
    })
    .await;
    assert_eq!(
        metric(&gw, "portico_downstream_connections_max ")
            .await
            .as_deref(),
        Some("portico_downstream_connections_max 2")
    );
    let refused = metric(
        &gw,
        "portico_downstream_connections_refused_total{reason=\"gateway_limit\"}",
    )
    .await
    .unwrap();
    assert!(!refused.ends_with(" 0"), "{refused}");
}

/// Lines of the gateway's log that are about failed accepts.
fn accept_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("accept"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_accept_errors_back_off_log_rarely_and_recover() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!("[[route]]\nname = \"e\"\nupstreams = [\"{}\"]\n", echo.addr),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let (port, admin) = (free_port(), free_port());
    // 64 descriptors, and a cap set far above what they allow, so accepting
    // runs out of descriptors before the cap says no.
    let command = format!(
        "ulimit -n 64 && exec '{}' gateway --listen 127.0.0.1:{port} --admin 127.0.0.1:{admin} --config '{}' --no-access-log --max-connections 10000",
        env!("CARGO_BIN_EXE_portico"),
        routes.display()
    );
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _child = ChildProcess { child };
    let url = format!("http://127.0.0.1:{port}/x");
    eventually("the gateway to serve", || async {
        send(&http(), http::Method::GET, &url, &[], bytes::Bytes::new())
            .await
            .is_ok_and(|r| r.status == http::StatusCode::OK)
    })
    .await;

    // Hold connections until accepting fails: the kernel completes the
    // handshakes the gateway can no longer accept, so connecting succeeds.
    // Each says its first byte, so it is ready to accept at once (a silent
    // one would be held back by the kernel for a second: `TCP_DEFER_ACCEPT`).
    let mut held = Vec::new();
    for _ in 0..120 {
        use tokio::io::AsyncWriteExt;
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        conn.write_all(b"G").await.unwrap();
        held.push(conn);
    }
    eventually("accepting to fail", || async {
        !accept_lines(&log).is_empty()
    })
    .await;
    // Keep the descriptors exhausted until the gateway has summarised its
    // failures once (one log interval), or has logged far more than that.
    eventually("a summary of the accept failures", || async {
        let lines = accept_lines(&log);
        lines.iter().any(|l| l.contains("still failing")) || lines.len() > 10
    })
    .await;
    let lines = accept_lines(&log);
    assert!(
        lines.len() <= 3,
        "{} log lines about accepting in one log interval:\n{}",
        lines.len(),
        lines.join("\n")
    );

    // Descriptors free up: the gateway serves again, and says so once.
    drop(held);
    eventually("the gateway to serve again", || async {
        send(&http(), http::Method::GET, &url, &[], bytes::Bytes::new())
            .await
            .is_ok_and(|r| r.status == http::StatusCode::OK)
    })
    .await;
    eventually("the recovery to be logged", || async {
        accept_lines(&log).iter().any(|l| l.contains("again"))
    })
    .await;
    let errors = get(&format!("http://127.0.0.1:{admin}/metrics")).await.body;
    let errors = String::from_utf8_lossy(&errors)
        .lines()
        .find(|l| l.starts_with("portico_accept_errors_total "))
        .unwrap()
        .to_string();
    assert!(!errors.ends_with(" 0"), "{errors}");
    let lines = accept_lines(&log);
    eprintln!("{errors}\n{}", lines.join("\n"));
    assert!(lines.len() <= 5, "{}", lines.join("\n"));
}
