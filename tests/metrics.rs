//! `GET /metrics` on the gateway's admin listener and on the registry API:
//! the text parses strictly as the Prometheus exposition format, and the
//! figures move with real traffic, registrations and watch streams.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::health::OutlierPolicy;
use portico_gateway::proxy::ProxySettings;
use serde_json::json;
use support::*;

/// One sample line: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strictly parsed scrape.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
}

/// Parses the Prometheus text format, refusing anything loose: every line is
/// a comment or `name{labels} value`; every sample belongs to a family
/// declared by an earlier `# TYPE` (a histogram `h` owns `h_bucket`, `h_sum`
/// and `h_count`); every value parses as `f64`; no family is declared twice.
fn parse(text: &str) -> Scrape {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let family = words.next().unwrap_or_else(|| panic!("{}", at()));
                let kind = words.next().unwrap_or_else(|| panic!("{}", at()));
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "unknown type at {}",
                    at()
                );
                assert!(
                    types.insert(family.to_string(), kind.to_string()).is_none(),
                    "family declared twice at {}",
                    at()
                );
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value at {}", at()));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
                && !name.as_bytes()[0].is_ascii_digit(),
            "bad metric name at {}",
            at()
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (parsed, tail) = parse_labels(after).unwrap_or_else(|e| panic!("{e} at {}", at()));
            labels = parsed;
            rest = tail;
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value at {}", at()));
        assert!(
            !value.contains(' '),
            "timestamps are not expected at {}",
            at()
        );
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value is not a number at {}", at())),
        };
        let declared = types.get(name).map(String::as_str).or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let family = name.strip_suffix(suffix)?;
                (types.get(family)? == "histogram").then_some("histogram")
            })
        });
        assert!(declared.is_some(), "sample without a # TYPE at {}", at());
        if name.ends_with("_bucket") {
            assert!(labels.contains_key("le"), "bucket without le at {}", at());
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    assert!(!samples.is_empty(), "no samples in:\n{text}");
    Scrape { samples }
}

/// Parses `k="v",k2="v2"}` (the opening brace already consumed); returns
/// the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let key = &s[..eq];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        s = &s[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], 0 when absent (a series not created yet).
    fn or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples))
    }
}

async fn scrape(base: &str) -> Scrape {
    let r = get(&format!("{base}/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    let content_type = r.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(std::str::from_utf8(&r.body).expect("metrics are UTF-8"))
}

fn gateway_options(routes: &str) -> GatewayOptions {
    GatewayOptions {
        config: Config::parse(routes).unwrap(),
        proxy: ProxySettings {
            access_log: false,
            outlier: OutlierPolicy {
                consecutive_failures: 0,
                ..OutlierPolicy::default()
            },
            ..ProxySettings::default()
        },
        ..GatewayOptions::default()
    }
}

#[test]
fn the_test_parser_refuses_what_prometheus_would() {
    let s = parse("# TYPE h histogram\nh_bucket{le=\"+Inf\",x=\"a\\\"b\"} 2\nh_count 2\n");
    assert_eq!(s.must("h_bucket", &[("le", "+Inf"), ("x", "a\"b")]), 2.0);
    for bad in [
        "undeclared 1\n",
        "# TYPE g gauge\ng{l=\"v\" 1\n",
        "# TYPE g gauge\ng{l=v} 1\n",
        "# TYPE g gauge\ng one\n",
        "# TYPE g gauge\ng\n",
        "# TYPE g gauge\n# TYPE g gauge\ng 1\n",
        "# TYPE h histogram\nh_bucket 1\n",
    ] {
        let caught = std::panic::catch_unwind(|| parse(bad));
        assert!(caught.is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_counters_move_with_traffic() {
    let echo = TestEcho::start("e").await;
    // "ghost" follows a service no registry provides: no endpoint, so 503.
    let gw = TestGateway::start(gateway_options(&format!(
        "[[route]]\nname = \"echo\"\npath_prefix = \"/echo\"\nupstreams = [\"{}\"]\n\
         [[route]]\nname = \"ghost\"\npath_prefix = \"/ghost\"\nservice = \"ghost\"\n",
        echo.addr
    )))
    .await;
    let endpoint = echo.addr.to_string();
    let echo_2xx = [("route", "echo"), ("class", "2xx")];
    let ghost_5xx = [("route", "ghost"), ("class", "5xx")];
    let none_4xx = [("route", "<none>"), ("class", "4xx")];
    let upstream = [("route", "echo"), ("endpoint", endpoint.as_str())];

    let before = scrape(&gw.admin_url).await;
    assert_eq!(before.must("portico_routing_table_revision", &[]), 0.0);
    assert_eq!(
        before.must("portico_endpoint_in_rotation", &upstream),
        1.0,
        "a fresh static endpoint is in rotation"
    );

    const N: usize = 7;
    let http = http();
    for i in 0..N {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/echo/{i}", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = send(
        &http,
        Method::GET,
        &format!("{}/ghost", gw.url),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = send(
        &http,
        Method::GET,
        &format!("{}/nowhere", gw.url),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let after = scrape(&gw.admin_url).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.or_zero(name, labels) - before.or_zero(name, labels)
    };
    assert_eq!(moved("portico_requests_total", &echo_2xx), N as f64);
    assert_eq!(
        moved(
            "portico_request_duration_seconds_count",
            &[("route", "echo")]
        ),
        N as f64
    );
    assert_eq!(
        moved(
            "portico_request_duration_seconds_bucket",
            &[("route", "echo"), ("le", "+Inf")]
        ),
        N as f64
    );
    assert!(moved("portico_request_duration_seconds_sum", &[("route", "echo")]) > 0.0);
    assert_eq!(
        moved("portico_upstream_duration_seconds_count", &upstream),
        N as f64
    );
    assert_eq!(moved("portico_requests_total", &ghost_5xx), 1.0);
    assert_eq!(
        moved(
            "portico_request_duration_seconds_count",
            &[("route", "ghost")]
        ),
        1.0
    );
    assert_eq!(moved("portico_requests_total", &none_4xx), 1.0);
    assert_eq!(
        moved(
            "portico_requests_total",
            &[("route", "echo"), ("class", "5xx")]
        ),
        0.0
    );
    // Buckets are cumulative: never decreasing with `le`.
    let mut buckets: Vec<(f64, f64)> = after
        .samples
        .iter()
        .filter(|s| {
            s.name == "portico_request_duration_seconds_bucket"
                && s.labels.get("route").map(String::as_str) == Some("echo")
        })
        .map(|s| {
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    // The pooled client keeps its connection to the gateway open.
    assert!(after.must("portico_downstream_connections", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reports_retries_budget_and_endpoint_state() {
    let sick = FaultyBackend::start("sick").await;
    let well = FaultyBackend::start("well").await;
    sick.set_failing(true);
    let gw = TestGateway::start(gateway_options(&format!(
        "[[route]]\nname = \"svc\"\nupstreams = [\"{}\", \"{}\"]\n\
         [route.retry]\nattempts = 2\non = [\"503\"]\nbudget_percent = 100\n\
         [route.breaker]\nconsecutive_failures = 1000\n",
        sick.addr, well.addr
    )))
    .await;
    let http = http();
    for _ in 0..10 {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/x", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let s = scrape(&gw.admin_url).await;
    let retries = s.must("portico_retries_total", &[("route", "svc")]);
    assert!(
        retries >= 1.0 && retries as usize == sick.received(),
        "every try the sick endpoint got was retried: {retries} vs {}",
        sick.received()
    );
    assert!(s.must("portico_retry_budget_tokens", &[("route", "svc")]) >= 0.0);
    // Every request ends 2xx, and the sick endpoint's 503s show in its latency.
    assert_eq!(
        s.must(
            "portico_requests_total",
            &[("route", "svc"), ("class", "2xx")]
        ),
        10.0
    );
    let sick_id = sick.addr.to_string();
    let sick_labels = [("route", "svc"), ("endpoint", sick_id.as_str())];
    assert_eq!(
        s.must("portico_upstream_duration_seconds_count", &sick_labels),
        sick.received() as f64
    );
    assert_eq!(s.must("portico_endpoint_ejected", &sick_labels), 0.0);
    let state = |st: &str| {
        s.must(
            "portico_endpoint_breaker_state",
            &[("route", "svc"), ("endpoint", &sick_id), ("state", st)],
        )
    };
    assert_eq!(
        (state("closed"), state("open"), state("half_open")),
        (1.0, 0.0, 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_metrics_follow_registrations_expiry_and_watches() {
    let registry = TestRegistry::start(fast_leases()).await;
    let base = format!("{}/v1/services", registry.url);
    let s = scrape(&registry.url).await;
    assert_eq!(
        s.must("portico_registry_instances", &[("status", "passing")]),
        0.0
    );
    assert_eq!(s.must("portico_registry_self_preservation", &[]), 0.0);
    assert_eq!(s.must("portico_registry_watch_subscribers", &[]), 0.0);
    let revision0 = s.must("portico_registry_revision", &[]);

    for id in ["a", "b"] {
        let r = put_json(
            &format!("{base}/web/instances/{id}"),
            json!({"address": "127.0.0.1", "port": 1}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = call(Method::POST, &format!("{base}/web/instances/b/drain")).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = scrape(&registry.url).await;
    assert_eq!(
        s.must("portico_registry_instances", &[("status", "passing")]),
        1.0
    );
    assert_eq!(
        s.must("portico_registry_instances", &[("status", "draining")]),
        1.0
    );
    assert_eq!(s.must("portico_registry_services", &[]), 1.0);
    assert!(s.must("portico_registry_revision", &[]) >= revision0 + 3.0);

    // A lease left to lapse expires (one instance is far below the
    // self-preservation minimum) and is counted.
    let r = put_json(
        &format!("{base}/short/instances/s"),
        json!({"address": "127.0.0.1", "port": 2, "ttl": "1s"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // (Only the counter: the critical instance itself is removed 500 ms later.)
    eventually("the short lease to expire", || async {
        let s = scrape(&registry.url).await;
        s.must("portico_registry_lease_expiries_total", &[]) >= 1.0
    })
    .await;

    // An open watch stream is a subscriber until its client goes away.
    let req = Request::get(format!("{}/v1/watch", registry.url))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(10), http().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    eventually("the watch to count as a subscriber", || async {
        scrape(&registry.url)
            .await
            .must("portico_registry_watch_subscribers", &[])
            == 1.0
    })
    .await;
    drop(stream);
    eventually("the closed watch to stop counting", || async {
        scrape(&registry.url)
            .await
            .must("portico_registry_watch_subscribers", &[])
            == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_counters_survive_a_table_rebuild() {
    let registry = TestRegistry::start(fast_leases()).await;
    let gw = TestGateway::following(&registry.url).await;
    let client = registry.client();
    let (a, b) = (TestEcho::start("a").await, TestEcho::start("b").await);
    let first = client.register_once("svc", "a", &a.spec()).await.unwrap();
    gw.wait_revision(first.revision).await;
    let http = http();
    for _ in 0..3 {
        let r = send(
            &http,
            Method::GET,
            &format!("{}/svc/x", gw.url),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    // A second instance: a new endpoint set and a new table.
    let second = client.register_once("svc", "b", &b.spec()).await.unwrap();
    gw.wait_revision(second.revision).await;
    let s = scrape(&gw.admin_url).await;
    assert_eq!(
        s.must("portico_routing_table_revision", &[]),
        gw.applied_revision() as f64
    );
    // Propagation state: connected, current, and the rebuilds counted.
    assert_eq!(s.must("portico_gateway_registry_connected", &[]), 1.0);
    assert!(s.must("portico_gateway_seen_revision", &[]) >= second.revision as f64);
    assert!(s.must("portico_gateway_table_rebuilds_total", &[]) >= 2.0);
    assert!(s.must("portico_gateway_table_age_seconds", &[]) >= 0.0);
    assert_eq!(
        s.must("portico_route_file_reloads_total", &[("result", "refused")]),
        0.0
    );
    assert_eq!(
        s.must(
            "portico_requests_total",
            &[("route", "auto:svc"), ("class", "2xx")]
        ),
        3.0
    );
    let upstream = |id: &str| {
        s.must(
            "portico_upstream_duration_seconds_count",
            &[("route", "auto:svc"), ("endpoint", id)],
        )
    };
    assert_eq!((upstream("a"), upstream("b")), (3.0, 0.0));
}
