//! RFC 9113's server-side requirements, checked against both of Portico's
//! HTTP/2 servers: the native one (`gateway/src/h2/`) and hyper's. Before
//! the native server becomes the default it has to do at least what the
//! catalogue asks; hyper's results are the yardstick beside it.
//!
//! The catalogue is tests/h2/conformance.py, an HTTP/2 client written
//! apart from both servers (Python's hyperframe and hpack over a raw
//! socket, h2c with prior knowledge), one fresh connection per case, in
//! the spirit of h2spec (which cannot be installed here). It runs from the
//! venv tests/grpc/install.sh fills (.ci/run calls it) and prints one JSON
//! line per case, which this test reads.
//!
//! Each server has a list of known failures, each with its reason. The
//! test fails on a failure outside the list, and also on a listed case
//! that now passes, so the list says what is true today: when a fix lands,
//! its entry goes.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portico_gateway::server::{Http2Server, ServerSettings};
use serde_json::Value;
use support::*;

/// The native server's known failures: (case id, why).
const NATIVE_KNOWN: &[(&str, &str)] = &[];

/// hyper's (the h2 crate's) known failures: (case id, why).
const HYPER_KNOWN: &[(&str, &str)] = &[
    (
        "3.4/2",
        "a PING before the client's SETTINGS is answered (ACK), not refused",
    ),
    (
        "4.3/1",
        "an undecodable field block ends the connection with PROTOCOL_ERROR, not COMPRESSION_ERROR",
    ),
    (
        "5.1/5",
        "DATA on a half-closed (remote) stream: connection error PROTOCOL_ERROR, not STREAM_CLOSED",
    ),
    (
        "5.1/6",
        "HEADERS on a half-closed (remote) stream: connection error PROTOCOL_ERROR, not STREAM_CLOSED",
    ),
    (
        "5.1/9",
        "HEADERS on a stream the client reset: connection error PROTOCOL_ERROR, not STREAM_CLOSED",
    ),
    (
        "5.1/12",
        "HEADERS on a closed stream: connection error PROTOCOL_ERROR, not STREAM_CLOSED",
    ),
    (
        "6.1/2",
        "DATA on a half-closed (remote) stream: connection error PROTOCOL_ERROR, not STREAM_CLOSED",
    ),
    (
        "6.3/2",
        "a PRIORITY frame of the wrong length: connection error PROTOCOL_ERROR, not FRAME_SIZE_ERROR",
    ),
    (
        "6.4/3",
        "an RST_STREAM frame of the wrong length: PROTOCOL_ERROR, not FRAME_SIZE_ERROR",
    ),
    (
        "6.5/1",
        "a SETTINGS ACK with a payload: PROTOCOL_ERROR, not FRAME_SIZE_ERROR",
    ),
    (
        "6.5/3",
        "a SETTINGS frame not a multiple of 6 long: PROTOCOL_ERROR, not FRAME_SIZE_ERROR",
    ),
    (
        "6.5.2/2",
        "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1: PROTOCOL_ERROR, not FLOW_CONTROL_ERROR",
    ),
    (
        "6.7/4",
        "a PING frame of the wrong length: PROTOCOL_ERROR, not FRAME_SIZE_ERROR",
    ),
    (
        "6.9/3",
        "a WINDOW_UPDATE frame of the wrong length: PROTOCOL_ERROR, not FRAME_SIZE_ERROR",
    ),
    (
        "8.1/3",
        "a pseudo-header in trailers is not refused: the request is forwarded",
    ),
    (
        "8.2.1/6",
        "a field value with leading whitespace is not refused: the request is forwarded",
    ),
];

/// The streams a gateway here allows at once: few, so case 5.1.2/1 opens
/// one more than that without a crowd of upstream requests.
const MAX_STREAMS: u32 = 8;

async fn gateway(server: Http2Server, upstream: SocketAddr) -> TestGateway {
    let settings = ServerSettings {
        http2: server,
        max_concurrent_streams: MAX_STREAMS,
        ..ServerSettings::default()
    };
    TestGateway::to_upstream_on(upstream, settings).await
}

/// One case's line.
struct Outcome {
    id: String,
    title: String,
    ok: bool,
    expected: String,
    got: String,
}

/// Runs the catalogue against `addr`; its lines, in catalogue order.
async fn catalogue(addr: SocketAddr) -> Vec<Outcome> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/grpc-venv/bin/python3");
    assert!(
        python.exists(),
        "target/grpc-venv is missing: run tests/grpc/install.sh (.ci/run does) to install the conformance client"
    );
    let run = tokio::process::Command::new(python)
        .arg(root.join("tests/h2/conformance.py"))
        .arg(addr.to_string())
        .arg("localhost")
        .arg("/conformance?case=1")
        .kill_on_drop(true)
        .output();
    // The script bounds every wait itself; this only stops a hang.
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the conformance client finished within 300 s")
        .expect("start the conformance client");
    assert!(
        out.status.success(),
        "the conformance client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            Outcome {
                id: field("id"),
                title: field("title"),
                ok: v["ok"].as_bool().expect("ok is a boolean"),
                expected: field("expected"),
                got: field("got"),
            }
        })
        .collect()
}

/// Fails listing every failure outside `known`, and every entry of `known`
/// that passed (or did not run).
fn judge(server: &str, outcomes: &[Outcome], known: &[(&str, &str)]) {
    assert!(
        outcomes.len() > 80,
        "{server}: only {} cases ran",
        outcomes.len()
    );
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    eprintln!(
        "{server}: {} cases, {} passed, {} failed",
        outcomes.len(),
        outcomes.len() - failed.len(),
        failed.len()
    );
    for o in outcomes.iter().filter(|o| o.ok) {
        eprintln!("{server}: pass {} {}: {}", o.id, o.title, o.got);
    }
    let mut problems = Vec::new();
    for o in &failed {
        let listed = known.iter().any(|(id, _)| *id == o.id);
        eprintln!(
            "{server}: FAIL{} {} {}: expected {}; got {}",
            if listed { " (known)" } else { "" },
            o.id,
            o.title,
            o.expected,
            o.got
        );
        if !listed {
            problems.push(format!(
                "{} {}: expected {}; got {}",
                o.id, o.title, o.expected, o.got
            ));
        }
    }
    for (id, why) in known {
        match outcomes.iter().find(|o| o.id == *id) {
            Some(o) if o.ok => problems.push(format!(
                "{id} is listed as a known failure ({why}) but passes now: take it off the list"
            )),
            Some(_) => {}
            None => problems.push(format!("{id} is listed as a known failure but did not run")),
        }
    }
    assert!(
        problems.is_empty(),
        "{server}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

async fn conformance(server: Http2Server, name: &str, known: &[(&str, &str)]) {
    let echo = TestEcho::start("e").await;
    let gw = gateway(server, echo.addr).await;
    let outcomes = catalogue(gw.addr).await;
    judge(name, &outcomes, known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_server_meets_the_catalogue() {
    conformance(Http2Server::Native, "native", NATIVE_KNOWN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_meets_the_catalogue_but_for_its_known_failures() {
    conformance(Http2Server::Hyper, "hyper", HYPER_KNOWN).await;
}
