//! The access log of the `portico` binary, with a real backend: lines carry
//! every field in text (stderr) and JSON (`--access-log FILE`); a stderr
//! pipe nobody reads does not stall requests, and the lines it cannot take
//! are counted on `/metrics`; SIGTERM writes every queued line before exit.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use support::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A `portico gateway` process routing everything to `echo`.
struct Gateway {
    child: ChildProcess,
    url: String,
    admin: String,
}

impl Gateway {
    /// Starts one with `extra` flags (global flags first, then the
    /// gateway's), its stderr piped, and waits until it serves.
    async fn start(echo: &TestEcho, dir: &Path, global: &[&str], extra: &[&str]) -> Gateway {
        let routes = dir.join("routes.toml");
        std::fs::write(
            &routes,
            format!("[[route]]\nname = \"e\"\nupstreams = [\"{}\"]\n", echo.addr),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(global)
            .args([
                "gateway", "--listen", &listen, "--admin", &admin, "--config",
            ])
            .arg(&routes)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portico");
        let gw = Gateway {
            child: ChildProcess { child },
            url: format!("http://{listen}"),
            admin: format!("http://{admin}"),
        };
        eventually("gateway to serve", || async {
            send(&http(), Method::GET, &gw.url, &[], Bytes::new())
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
        })
        .await;
        gw
    }

    /// Its stderr, read to the end on a thread of its own (so the gateway
    /// never waits on the pipe); the thread returns the text.
    fn read_stderr(&mut self) -> std::thread::JoinHandle<String> {
        let mut stderr = self.child.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            stderr.read_to_string(&mut text).unwrap();
            text
        })
    }

    /// SIGTERM, then waits for a successful exit.
    async fn terminate(&mut self) {
        self.child.terminate().await;
    }

    /// `portico_access_log_dropped_total` from the admin listener.
    async fn dropped(&self) -> u64 {
        let body = get(&format!("{}/metrics", self.admin)).await.body;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix("portico_access_log_dropped_total "))
            .unwrap_or_else(|| panic!("no dropped counter in /metrics: {text}"))
            .parse()
            .unwrap()
    }

    async fn get_with_id(&self, http: &Client<HttpConnector, Full<Bytes>>, path: &str, id: &str) {
        let headers = [("x-request-id", id), ("traceparent", TRACEPARENT)];
        let url = format!("{}{path}", self.url);
        let r = send(http, Method::GET, &url, &headers, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(r.status, StatusCode::OK);
    }
}

/// The lines of `log` written by the access log.
fn access_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("portico::access"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_on_stderr_carry_every_field() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&echo, dir.path(), &[], &[]).await;
    let stderr = gw.read_stderr();
    gw.get_with_id(&http(), "/x?q=1", "text-1").await;
    gw.terminate().await;
    let log = stderr.join().unwrap();
    let line = access_lines(&log)
        .into_iter()
        .find(|l| l.contains("text-1"))
        .unwrap_or_else(|| panic!("no access line for text-1 in {log}"));
    let upstream = format!(" upstream=\"{}\" duration_us=", echo.addr);
    for field in [
        "Z  INFO portico::access: method=GET path=/x status=200 route=\"e\"",
        &upstream,
        " request_id=\"text-1\" trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"",
    ] {
        assert!(line.contains(field), "{field:?} not in {line:?}");
    }
    assert!(!line.contains('\x1b'), "colour codes in a pipe: {line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_in_an_access_log_file_carry_every_field() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let extra = ["--access-log", file.to_str().unwrap()];
    let mut gw = Gateway::start(&echo, dir.path(), &["--log-format", "json"], &extra).await;
    let stderr = gw.read_stderr();
    gw.get_with_id(&http(), "/y", "json-1").await;
    gw.terminate().await;
    let log = std::fs::read_to_string(&file).unwrap();
    let line: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["request_id"] == "json-1")
        .unwrap_or_else(|| panic!("no access line for json-1 in {log}"));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "portico::access");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/y");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "e");
    assert_eq!(line["upstream"], echo.addr.to_string());
    assert!(line["duration_us"].is_u64(), "{line}");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    // The file has the access lines; stderr keeps the other log lines.
    let stderr = stderr.join().unwrap();
    assert!(access_lines(&stderr).is_empty(), "{stderr}");
    assert!(stderr.contains("gateway listening"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_pipe_nobody_reads_does_not_stall_requests() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&echo, dir.path(), &[], &[]).await;
    // Held open and never read: the pipe fills and the writer blocks.
    let _unread: ChildStderr = gw.child.child.stderr.take().unwrap();
    assert_eq!(gw.dropped().await, 0);
    // 2 KiB lines: 2,000 of them are more than the pipe and the writer's
    // queue hold. Each request has `send`'s own time limit: a stalled one
    // fails the test.
    let http = http();
    let pad = "p".repeat(2048);
    for n in 0..2000 {
        gw.get_with_id(&http, "/stall", &format!("{n}-{pad}")).await;
    }
    assert!(gw.dropped().await > 0, "no line counted as dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_queued_line() {
    let echo = TestEcho::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&echo, dir.path(), &[], &[]).await;
    let stderr = gw.read_stderr();
    let http = http();
    for n in 0..500 {
        gw.get_with_id(&http, "/flush", &format!("flush-{n}")).await;
    }
    // At once: the last lines are still queued (a batch waits up to 100 ms).
    gw.terminate().await;
    let log = stderr.join().unwrap();
    let lines = access_lines(&log);
    for n in 0..500 {
        let id = format!("request_id=\"flush-{n}\"");
        let found = lines.iter().filter(|l| l.contains(&id)).count();
        assert_eq!(found, 1, "{id} written {found} times");
    }
    assert!(!log.contains("dropped"), "{log}");
}
