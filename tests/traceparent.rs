//! W3C Trace Context through a real gateway to the echo backend (which
//! answers with the headers it received): a valid `traceparent` and its
//! `tracestate` arrive unchanged; with `generate_traceparent` a request
//! without a valid one gets a new valid one; without it nothing is added.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use support::*;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

async fn gateway(echo: &TestEcho, generate: bool) -> TestGateway {
    TestGateway::start(GatewayOptions {
        config: Config::parse(&format!(
            "[[route]]\nname = \"echo\"\nupstreams = [\"{}\"]\n",
            echo.addr
        ))
        .unwrap(),
        proxy: ProxySettings {
            // On, so the trace-id logging path runs too.
            access_log: true,
            generate_traceparent: generate,
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    })
    .await
}

/// The `traceparent` and `tracestate` the backend received.
async fn received(gw: &TestGateway, headers: &[(&str, &str)]) -> (Option<String>, Option<String>) {
    let r = send(
        &http(),
        Method::GET,
        &format!("{}/x", gw.url),
        headers,
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let h = |name: &str| v["headers"][name].as_str().map(str::to_string);
    (h("traceparent"), h("tracestate"))
}

/// Checks the W3C shape: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids
/// not all zero.
fn assert_valid(tp: &str) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    assert_eq!(parts[0], "00", "{tp}");
    assert!(parts[1].len() == 32 && lower_hex(parts[1]), "{tp}");
    assert!(parts[2].len() == 16 && lower_hex(parts[2]), "{tp}");
    assert!(parts[3].len() == 2 && lower_hex(parts[3]), "{tp}");
    assert!(parts[1].bytes().any(|b| b != b'0'), "zero trace id: {tp}");
    assert!(parts[2].bytes().any(|b| b != b'0'), "zero parent id: {tp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_traceparent_and_tracestate_pass_unchanged() {
    let echo = TestEcho::start("e").await;
    for generate in [false, true] {
        let gw = gateway(&echo, generate).await;
        let (tp, ts) = received(&gw, &[("traceparent", VALID), ("tracestate", STATE)]).await;
        assert_eq!(tp.as_deref(), Some(VALID), "generate = {generate}");
        assert_eq!(ts.as_deref(), Some(STATE), "generate = {generate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_option_a_missing_or_malformed_traceparent_is_generated() {
    let echo = TestEcho::start("e").await;
    let gw = gateway(&echo, true).await;
    let (first, _) = received(&gw, &[]).await;
    let first = first.expect("a traceparent was added");
    assert_valid(&first);
    let (second, _) = received(&gw, &[]).await;
    assert_ne!(
        first[3..35],
        second.unwrap()[3..35],
        "each request gets its own trace id"
    );
    let malformed = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let (tp, _) = received(&gw, &[("traceparent", malformed)]).await;
    let tp = tp.unwrap();
    assert_valid(&tp);
    assert_ne!(tp, malformed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_nothing_is_added_or_changed() {
    let echo = TestEcho::start("e").await;
    let gw = gateway(&echo, false).await;
    assert_eq!(received(&gw, &[]).await, (None, None));
    // Not ours to fix: a malformed header passes as the client sent it.
    let (tp, _) = received(&gw, &[("traceparent", "garbage")]).await;
    assert_eq!(tp.as_deref(), Some("garbage"));
}
