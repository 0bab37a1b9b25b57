//! Downstream HTTPS: SNI, ALPN, protocol versions, resumption, certificate
//! reloads under load, redirects and HSTS, metrics; with real clients
//! (curl, openssl s_client, python's ssl, h2load) where the issue asks.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::tls::TlsSettings;
use portico_gateway::tls::cert::CertFiles;
use support::tls::{TestCa, get_tls, replace_file, run};
use support::*;

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

fn options(routes: &str, certs: Vec<CertFiles>) -> GatewayOptions {
    GatewayOptions {
        config: Config::parse(routes).unwrap(),
        tls: Some(TlsSettings {
            certs,
            hsts: Some(http::HeaderValue::from_static("max-age=600")),
            client_auth: None,
            acme: false,
        }),
        proxy: ProxySettings {
            access_log: false,
            ..Default::default()
        },
        ..GatewayOptions::default()
    }
}

fn echo_route(echo: &TestEcho) -> String {
    format!(
        "[[route]]\nname = \"echo\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        echo.addr
    )
}

/// Three certificates: a default, a wildcard, an exact name under it.
fn three_certs(ca: &TestCa) -> Vec<CertFiles> {
    vec![
        ca.write("default", &["default.test"]),
        ca.write("wildcard", &["*.example.com"]),
        ca.write("exact", &["api.example.com"]),
    ]
}

async fn admin_json(gw: &TestGateway, path: &str) -> serde_json::Value {
    get(&format!("{}{path}", gw.admin_url)).await.json()
}

/// The CN python's ssl module sees for `sni` (None: no SNI sent).
async fn python_cn(ca: &TestCa, addr: std::net::SocketAddr, sni: Option<&str>) -> String {
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.check_hostname = False
sni = sys.argv[3] or None
with socket.create_connection(("127.0.0.1", int(sys.argv[2]))) as s:
    with ctx.wrap_socket(s, server_hostname=sni) as t:
        subject = dict(x[0] for x in t.getpeercert()["subject"])
        print(subject["commonName"], t.version())
"#;
    let port = addr.port().to_string();
    let ca_path = ca.path.display().to_string();
    let (ok, out, err) = run(
        "python3",
        &["-c", script, &ca_path, &port, sni.unwrap_or("")],
        CMD_TIMEOUT,
    )
    .await;
    assert!(ok, "python ssl failed: {err}");
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_over_wildcard_and_unknown_names_get_the_default() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start_tls(options(&echo_route(&echo), three_certs(&ca))).await;
    let addr = gw.tls_addr.unwrap();
    for (sni, want) in [
        (Some("api.example.com"), "exact"),
        (Some("www.example.com"), "wildcard"),
        (Some("WWW.Example.COM"), "wildcard"),
        (Some("example.com"), "default"),
        (Some("unknown.test"), "default"),
        (None, "default"),
    ] {
        let got = python_cn(&ca, addr, sni).await;
        assert!(got.starts_with(want), "SNI {sni:?}: got {got}, want {want}");
    }
    // openssl s_client agrees, and the handshake is TLS 1.3 by default.
    let connect = addr.to_string();
    let ca_path = ca.path.display().to_string();
    let (_, out, _) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "api.example.com",
            "-CAfile",
            &ca_path,
            "-verify_return_error",
        ],
        CMD_TIMEOUT,
    )
    .await;
    assert!(
        out.contains("CN = exact") || out.contains("CN=exact"),
        "{out}"
    );
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http1_and_tls_1_1_is_refused() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start_tls(options(&echo_route(&echo), three_certs(&ca))).await;
    let connect = gw.tls_addr.unwrap().to_string();
    for (offer, want) in [("h2,http/1.1", "h2"), ("http/1.1", "http/1.1")] {
        let (_, out, _) = run(
            "openssl",
            &["s_client", "-connect", &connect, "-alpn", offer],
            CMD_TIMEOUT,
        )
        .await;
        assert!(
            out.contains(&format!("ALPN protocol: {want}")),
            "offered {offer}: {out}"
        );
    }
    for old in ["-tls1_1", "-tls1"] {
        // SECLEVEL=0 so the client itself is willing: the refusal is the server's.
        let (ok, out, err) = run(
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect,
                old,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
            CMD_TIMEOUT,
        )
        .await;
        // rustls answers a ClientHello without TLS 1.2 or 1.3 with an alert.
        assert!(!ok, "{old} was accepted: {out}");
        assert!(
            out.contains("no peer certificate available"),
            "{old}: {out}"
        );
        assert!(err.contains("alert"), "{old}: {err}");
    }
    // The refusals were counted as failed handshakes.
    let status = admin_json(&gw, "/status").await;
    assert!(
        status["tls"]["handshakes"]["failed"].as_u64().unwrap() >= 2,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2_reaches_the_upstream_as_https() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start_tls(options(&echo_route(&echo), three_certs(&ca))).await;
    let port = gw.tls_addr.unwrap().port();
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/hello?x=1");
    let ca_path = ca.path.display().to_string();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, out, err) = run(
            "curl",
            &[
                "-sS",
                flag,
                "--cacert",
                &ca_path,
                "--resolve",
                &resolve,
                "-H",
                "Forwarded: for=9.9.9.9;proto=http",
                "-D",
                "-",
                "-w",
                "\n%{http_version}",
                &url,
            ],
            CMD_TIMEOUT,
        )
        .await;
        assert!(ok, "curl {flag}: {err}");
        let (head_and_body, got_version) = out.rsplit_once('\n').unwrap();
        assert_eq!(got_version, version, "{out}");
        assert!(
            head_and_body
                .to_ascii_lowercase()
                .contains("strict-transport-security: max-age=600"),
            "{out}"
        );
        let body = head_and_body.split("\r\n\r\n").nth(1).unwrap();
        let echoed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");
        // An untrusted client's Forwarded is dropped, none started.
        assert!(echoed["headers"].get("forwarded").is_none(), "{echoed}");
    }
    // The cleartext listener still says http and sends no HSTS.
    let plain = get(&format!("{}/x", gw.url)).await;
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
    assert!(!plain.headers.contains_key("strict-transport-security"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_tls_completes_every_request() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start_tls(options(&echo_route(&echo), three_certs(&ca))).await;
    let url = format!("https://127.0.0.1:{}/load", gw.tls_addr.unwrap().port());
    let (ok, out, err) = run(
        "h2load",
        &["-n", "400", "-c", "4", "-m", "8", &url],
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "h2load: {err}{out}");
    assert!(out.contains("Application protocol: h2"), "{out}");
    assert!(out.contains("400 succeeded, 0 failed, 0 errored"), "{out}");
    assert!(out.contains("status codes: 400 2xx"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_by_ticket() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start_tls(options(&echo_route(&echo), three_certs(&ca))).await;
    let addr = gw.tls_addr.unwrap();
    // One client config keeps its tickets between connections.
    let client = ca.client(&[b"http/1.1"]);
    let first = get_tls(&client, addr, "api.example.com", "/")
        .await
        .unwrap();
    assert!(!first.resumed);
    let second = get_tls(&client, addr, "api.example.com", "/")
        .await
        .unwrap();
    assert!(second.resumed, "the second connection did a full handshake");
    assert_eq!(second.status, 200);
    let status = admin_json(&gw, "/status").await;
    assert!(status["tls"]["handshakes"]["resumed"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_under_load_drops_nothing_and_a_bad_one_is_refused() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let certs = three_certs(&ca);
    let exact = certs[2].clone();
    let gw = TestGateway::start_tls(options(&echo_route(&echo), certs)).await;
    let addr = gw.tls_addr.unwrap();
    let client = ca.client_full(&[b"h2", b"http/1.1"]);

    // Load: four clients, each a new connection (so a new handshake) per
    // request, bounded in count and time.
    let failures = Arc::new(AtomicUsize::new(0));
    let served_new = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, failures, served_new, done) = (
            client.clone(),
            failures.clone(),
            served_new.clone(),
            done.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) && n < 5_000 {
                n += 1;
                match get_tls(&client, addr, "api.example.com", "/").await {
                    Ok(r) if r.status == 200 => {
                        if r.cn == "exact-v2" {
                            served_new.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => panic!("status {}", r.status),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            n
        }));
    }
    // Renamed over, as a deploy tool does: key first, then the certificate.
    let v2 = ca.issue("exact-v2", &["api.example.com"]);
    replace_file(&exact.key, &v2.key);
    replace_file(&exact.cert, &v2.cert);
    eventually("new handshakes to get the new certificate", || async {
        served_new.load(Ordering::Relaxed) >= 20
    })
    .await;

    // A bad replacement: refused whole, the v2 certificate keeps serving.
    replace_file(&exact.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n");
    eventually("the bad certificate to be refused", || async {
        admin_json(&gw, "/status").await["tls"]["reloads_refused"]
            .as_u64()
            .unwrap()
            >= 1
    })
    .await;
    let after = get_tls(&client, addr, "api.example.com", "/")
        .await
        .unwrap();
    assert_eq!(after.cn, "exact-v2");
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests out of {total}"
    );
    let metrics = get(&format!("{}/metrics", gw.admin_url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("portico_gateway_tls_reloads_total{result=\"refused\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("portico_gateway_tls_reloads_total{result=\"applied\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_is_redirected_with_308_per_route_or_whole_listener() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let routes = format!(
        "{}\n[[route]]\nname = \"secure\"\npath_prefix = \"/secure\"\nhttps_redirect = true\nupstreams = [\"{}\"]\n",
        echo_route(&echo),
        echo.addr
    );
    let gw = TestGateway::start_tls(options(&routes, three_certs(&ca))).await;
    let port = gw.tls_addr.unwrap().port();
    let reply = send(
        &http(),
        http::Method::POST,
        &format!("{}/secure/a?b=c", gw.url),
        &[("host", "api.example.com:8080")],
        bytes::Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        format!("https://api.example.com:{port}/secure/a?b=c")
    );
    // Other routes are proxied; over HTTPS the redirecting route is too.
    assert_eq!(get(&format!("{}/open", gw.url)).await.status, 200);
    let client = ca.client(&[b"http/1.1"]);
    let secure = get_tls(
        &client,
        gw.tls_addr.unwrap(),
        "api.example.com",
        "/secure/a",
    )
    .await
    .unwrap();
    assert_eq!(secure.status, 200);

    // The whole cleartext listener.
    let mut all = options(&echo_route(&echo), three_certs(&ca));
    all.proxy.https_redirect = true;
    let gw = TestGateway::start_tls(all).await;
    let port = gw.tls_addr.unwrap().port();
    let reply = get(&format!("{}/any/path", gw.url)).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        format!("https://127.0.0.1:{port}/any/path")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_show_in_metrics_and_status() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let gw = TestGateway::start_tls(options(&echo_route(&echo), three_certs(&ca))).await;
    let client = ca.client(&[b"h2"]);
    let r = get_tls(&client, gw.tls_addr.unwrap(), "api.example.com", "/")
        .await
        .unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    let status = admin_json(&gw, "/status").await;
    let certs = status["tls"]["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 3);
    assert_eq!(certs[1]["names"][0], "*.example.com");
    assert!(certs[0]["expires_in_seconds"].as_i64().unwrap() > 86_400);
    assert_eq!(certs[0]["fingerprint_sha256"].as_str().unwrap().len(), 64);
    assert!(!status.to_string().contains("PRIVATE KEY"));
    assert_eq!(status["tls"]["handshakes"]["h2"], 1);
    let metrics = get(&format!("{}/metrics", gw.admin_url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("portico_certificate_expiry_seconds{source=")
            && text.contains("names=\"*.example.com\"}"),
        "{text}"
    );
    assert!(
        text.contains("portico_gateway_tls_handshakes_total{result=\"ok\",protocol=\"h2\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_certificates_are_refused_at_startup_naming_the_file() {
    let ca = TestCa::new();
    let good = ca.write("good", &["a.test"]);
    let other = ca.write("other", &["b.test"]);
    let garbage = ca.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let mismatched = CertFiles {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let bad_cert = CertFiles {
        cert: garbage.clone(),
        key: good.key.clone(),
    };
    for (files, named) in [(mismatched, &other.key), (bad_cert, &garbage)] {
        let err = portico_gateway::Gateway::new(options("", vec![files])).unwrap_err();
        assert!(
            err.to_string().contains(&named.display().to_string()),
            "{err}"
        );
    }
    // The real binary refuses to start, naming the file.
    let spec = format!("{}:{}", garbage.display(), good.key.display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--no-admin",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &spec,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&garbage.display().to_string()), "{stderr}");
}

/// An HTTPS upstream: a second gateway's TLS listener (certificate for
/// `api.example.com` from `ca`) in front of an echo, registered in
/// `registry` as service `svc` with `scheme = "https"`. Returns it and the
/// registry revision of the registration.
async fn https_upstream(
    ca: &TestCa,
    echo: &TestEcho,
    registry: &TestRegistry,
) -> (TestGateway, u64) {
    let upstream = TestGateway::start_tls(options(
        &echo_route(echo),
        vec![ca.write("upstream", &["api.example.com"])],
    ))
    .await;
    let mut spec =
        portico_registry::model::InstanceSpec::new("127.0.0.1", upstream.tls_addr.unwrap().port());
    spec.scheme = portico_registry::model::Scheme::Https;
    spec.meta
        .insert("tls_server_name".into(), "api.example.com".into());
    let r = registry
        .client()
        .register_once("svc", "tls-1", &spec)
        .await
        .unwrap();
    (upstream, r.revision)
}

fn following(
    registry: &TestRegistry,
    routes: &str,
    upstream_ca: Vec<std::path::PathBuf>,
) -> GatewayOptions {
    GatewayOptions {
        registry: vec![registry.url.clone()],
        auto_routes: true,
        config: Config::parse(routes).unwrap(),
        proxy: ProxySettings {
            access_log: false,
            upstream_ca,
            ..Default::default()
        },
        ..GatewayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_and_a_tls_failure_is_a_502_of_its_own() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let registry = TestRegistry::start(fast_leases()).await;
    let (upstream, rev) = https_upstream(&ca, &echo, &registry).await;
    let ca_path = ca.path.display().to_string();
    let routes = format!(
        r#"
[[route]]
name = "own-ca"
path_prefix = "/own-ca"
service = "svc"
[route.upstream_tls]
ca = "{ca_path}"

[[route]]
name = "wrong-name"
path_prefix = "/wrong-name"
service = "svc"
[route.upstream_tls]
ca = "{ca_path}"
server_name = "other.example.com"

[[route]]
name = "insecure"
path_prefix = "/insecure"
service = "svc"
[route.upstream_tls]
insecure_skip_verify = true
"#
    );
    // Only the web PKI roots by default: the test CA is not among them.
    let gw = TestGateway::start(following(&registry, &routes, Vec::new())).await;
    gw.wait_revision(rev).await;
    let refused = get(&format!("{}/svc/x", gw.url)).await;
    assert_eq!(refused.status, 502);
    assert_eq!(refused.headers["x-portico-error"], "upstream_tls");
    let wrong = get(&format!("{}/wrong-name/x", gw.url)).await;
    assert_eq!(wrong.status, 502);
    assert_eq!(wrong.headers["x-portico-error"], "upstream_tls");
    for path in ["/own-ca/x", "/insecure/x"] {
        let ok = get(&format!("{}{path}", gw.url)).await;
        assert_eq!(ok.status, 200, "{path}: {:?}", ok.body);
        // The upstream gateway saw it arrive over TLS.
        assert_eq!(ok.json()["headers"]["x-forwarded-proto"], "https");
    }
    // --upstream-ca: every route trusts the bundle.
    let trusting = TestGateway::start(following(&registry, "", vec![ca.path.clone()])).await;
    trusting.wait_revision(rev).await;
    let ok = get(&format!("{}/svc/x", trusting.url)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    // ALPN chose HTTP/2 towards the upstream; the refusals were failed
    // handshakes there.
    let status = admin_json(&upstream, "/status").await;
    assert!(
        status["tls"]["handshakes"]["h2"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["tls"]["handshakes"]["failed"].as_u64().unwrap() >= 2,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_reach_an_https_upstream_over_h2() {
    // What gRPC over TLS needs: an HTTP/2 request with trailers allowed,
    // carried over an h2 connection chosen by ALPN.
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let registry = TestRegistry::start(fast_leases()).await;
    let (upstream, rev) = https_upstream(&ca, &echo, &registry).await;
    let gw = TestGateway::start(following(&registry, "", vec![ca.path.clone()])).await;
    gw.wait_revision(rev).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for _ in 0..3 {
        let req = http::Request::post(format!("{}/svc/pkg.Service/Method", gw.url))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let status = admin_json(&upstream, "/status").await;
    // One shared HTTP/2 connection carried all three.
    assert_eq!(status["tls"]["handshakes"]["h2"], 1, "{status}");
    assert_eq!(status["tls"]["handshakes"]["http/1.1"], 0, "{status}");
}

/// `n` gRPC-shaped HTTP/2 requests at once, over one connection to
/// `url`; the statuses they got.
async fn burst_of_h2_requests(url: &str, n: usize) -> Vec<u16> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let calls = (0..n).map(|_| {
        let req = http::Request::post(url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .unwrap();
        let client = client.clone();
        async move { client.request(req).await.unwrap().status().as_u16() }
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_requests_to_an_https_upstream_shares_one_handshake() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let registry = TestRegistry::start(fast_leases()).await;
    let (upstream, rev) = https_upstream(&ca, &echo, &registry).await;
    let gw = TestGateway::start(following(&registry, "", vec![ca.path.clone()])).await;
    gw.wait_revision(rev).await;
    // 32 requests reach the gateway together, none finding a connection:
    // they wait for the one on its way (it opened one apiece).
    let url = format!("{}/svc/pkg.Service/Method", gw.url);
    assert_eq!(burst_of_h2_requests(&url, 32).await, [200; 32]);
    let status = admin_json(&upstream, "/status").await;
    assert_eq!(status["tls"]["handshakes"]["h2"], 1, "{status}");
    assert_eq!(status["tls"]["handshakes"]["http/1.1"], 0, "{status}");
}

/// A gateway whose route `with-cert` presents a client certificate to an
/// mTLS upstream registered as `svc`'s one `https` instance (its other
/// routes, `/svc`, present none); the registry is kept with it.
async fn gateway_to_mtls_upstream(
    ca: &TestCa,
    upstream: &support::tls::MtlsServer,
) -> (TestRegistry, TestGateway) {
    let registry = TestRegistry::start(fast_leases()).await;
    let mut spec = portico_registry::model::InstanceSpec::new("127.0.0.1", upstream.addr.port());
    spec.scheme = portico_registry::model::Scheme::Https;
    spec.meta
        .insert("tls_server_name".into(), "mtls.example.com".into());
    let rev = registry
        .client()
        .register_once("svc", "mtls-1", &spec)
        .await
        .unwrap()
        .revision;
    let client = ca.write_client("gateway");
    let routes = format!(
        "[[route]]\nname = \"with-cert\"\npath_prefix = \"/with-cert\"\nservice = \"svc\"\n\
         [route.upstream_tls]\nclient_cert = \"{}:{}\"\n",
        client.cert.display(),
        client.key.display()
    );
    let gw = TestGateway::start(following(&registry, &routes, vec![ca.path.clone()])).await;
    gw.wait_revision(rev).await;
    (registry, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_to_an_http1_https_upstream_each_get_a_connection() {
    // ALPN chooses HTTP/1.1 here: the first burst waits for one handshake,
    // then each request has a connection of its own; later ones do not wait.
    let ca = TestCa::new();
    let upstream = support::tls::MtlsServer::start(&ca, "mtls.example.com").await;
    let (_registry, gw) = gateway_to_mtls_upstream(&ca, &upstream).await;
    let url = format!("{}/with-cert/x", gw.url);
    for _ in 0..2 {
        assert_eq!(burst_of_h2_requests(&url, 16).await, [200; 16]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_presents_its_client_certificate_to_an_mtls_upstream() {
    let ca = TestCa::new();
    let upstream = support::tls::MtlsServer::start(&ca, "mtls.example.com").await;
    let (_registry, gw) = gateway_to_mtls_upstream(&ca, &upstream).await;
    let ok = get(&format!("{}/with-cert/x", gw.url)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(&ok.body[..], b"client certificate verified");
    // Without a client certificate the upstream refuses the connection.
    let refused = get(&format!("{}/svc/x", gw.url)).await;
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    assert_eq!(refused.headers["x-portico-error"], "upstream_tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_or_optional_and_the_subject_passed_upstream() {
    let ca = TestCa::new();
    let echo = TestEcho::start("e").await;
    let client = ca.write_client("alice");
    // A certificate from another CA is refused in both modes.
    let stranger = TestCa::new().write_client("mallory");
    let port_of = |gw: &TestGateway| gw.tls_addr.unwrap().port();
    let curl = |port: u16, cert: Option<&CertFiles>| {
        let resolve = format!("api.example.com:{port}:127.0.0.1");
        let url = format!("https://api.example.com:{port}/who");
        let ca_path = ca.path.display().to_string();
        let cert = cert.map(|c| (c.cert.display().to_string(), c.key.display().to_string()));
        async move {
            let mut args = vec![
                "-sS".to_string(),
                "--cacert".into(),
                ca_path,
                "--resolve".into(),
                resolve,
                "-H".into(),
                "x-client-subject: CN=forged".into(),
            ];
            if let Some((c, k)) = cert {
                args.extend(["--cert".into(), c, "--key".into(), k]);
            }
            args.push(url);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("curl", &args, CMD_TIMEOUT).await
        }
    };
    for required in [true, false] {
        let mut opts = options(&echo_route(&echo), three_certs(&ca));
        opts.tls.as_mut().unwrap().client_auth = Some(portico_gateway::tls::ClientAuth {
            ca: ca.path.clone(),
            required,
        });
        opts.proxy.client_subject_header = Some(http::HeaderName::from_static("x-client-subject"));
        let gw = TestGateway::start_tls(opts).await;
        let (ok, out, err) = curl(port_of(&gw), Some(&client)).await;
        assert!(ok, "required={required}: {err}");
        let echoed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            echoed["headers"]["x-client-subject"], "CN=alice",
            "{echoed}"
        );
        let (ok, _, err) = curl(port_of(&gw), Some(&stranger)).await;
        assert!(
            !ok,
            "required={required}: a stranger's certificate was accepted"
        );
        assert!(err.contains("alert") || err.contains("SSL"), "{err}");
        let (ok, out, err) = curl(port_of(&gw), None).await;
        if required {
            assert!(!ok, "no client certificate was accepted: {out}");
        } else {
            assert!(ok, "{err}");
            let echoed: serde_json::Value = serde_json::from_str(&out).unwrap();
            // No certificate: no subject, and the client's forgery removed.
            assert!(
                echoed["headers"].get("x-client-subject").is_none(),
                "{echoed}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_files() {
    let ca = TestCa::new();
    let files = ca.write("only", &["api.example.com"]);
    let (tls_port, admin_port) = (free_port(), free_port());
    let spec = format!("{}:{}", files.cert.display(), files.key.display());
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let child = ChildProcess::spawn(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &admin,
        "--no-cache",
        "--tls-listen",
        &tls_listen,
        "--tls-cert",
        &spec,
    ]);
    let addr: std::net::SocketAddr = tls_listen.parse().unwrap();
    let client = ca.client_full(&[b"http/1.1"]);
    // Serving (so the certificate watcher, and its SIGHUP handler, run).
    eventually("the HTTPS listener to answer", || async {
        get_tls(&client, addr, "api.example.com", "/").await.is_ok()
    })
    .await;
    let reloads = || async {
        get(&format!("http://{admin}/status")).await.json()["tls"]["reloads_applied"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(reloads().await, 0);
    // The files are unchanged: only the signal makes this reload.
    let pid = child.child.id().to_string();
    let (ok, _, err) = run("kill", &["-HUP", &pid], CMD_TIMEOUT).await;
    assert!(ok, "{err}");
    eventually("SIGHUP to reload the certificates", || async {
        reloads().await == 1
    })
    .await;
    let r = get_tls(&client, addr, "api.example.com", "/")
        .await
        .unwrap();
    assert_eq!(r.cn, "only");
}

/// Whether the endpoint at `port` of route `route` is out by its active
/// check.
fn checked_down(gw: &TestGateway, route: &str, port: u16) -> Option<bool> {
    let table = gw.table.load();
    let entry = table.entries().iter().find(|e| &*e.route.name == route)?;
    let endpoint = entry
        .endpoints
        .endpoints()
        .iter()
        .find(|e| e.authority.port_u16() == Some(port))?;
    Some(endpoint.health.is_checked_down())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_reach_https_instances_over_tls_as_requests_do() {
    let ca = TestCa::new();
    let stranger = TestCa::new();
    let echo = TestEcho::start("e").await;
    let registry = TestRegistry::start(fast_leases()).await;
    // Two https instances of one service: one with a certificate from the
    // CA the route trusts, one from a CA it does not know.
    let (good, _) = https_upstream(&ca, &echo, &registry).await;
    let wrong = TestGateway::start_tls(options(
        &echo_route(&echo),
        vec![stranger.write("wrong", &["api.example.com"])],
    ))
    .await;
    let mut spec =
        portico_registry::model::InstanceSpec::new("127.0.0.1", wrong.tls_addr.unwrap().port());
    spec.scheme = portico_registry::model::Scheme::Https;
    spec.meta
        .insert("tls_server_name".into(), "api.example.com".into());
    let rev = registry
        .client()
        .register_once("svc", "tls-2", &spec)
        .await
        .unwrap()
        .revision;
    let routes = format!(
        r#"
[[route]]
name = "checked"
path_prefix = "/checked"
service = "svc"
[route.upstream_tls]
ca = "{}"
[route.health_check]
path = "/healthz"
interval = "300ms"
timeout = "300ms"
unhealthy_threshold = 2
healthy_threshold = 2
"#,
        ca.path.display()
    );
    let gw = TestGateway::start(following(&registry, &routes, Vec::new())).await;
    gw.wait_revision(rev).await;
    let (good_port, wrong_port) = (
        good.tls_addr.unwrap().port(),
        wrong.tls_addr.unwrap().port(),
    );

    // The unknown CA fails the handshake: a failed check, out of rotation.
    eventually(
        "the instance with the wrong certificate to fail its check",
        || async { checked_down(&gw, "checked", wrong_port) == Some(true) },
    )
    .await;
    // The other passes, over TLS: its listener completed the checks'
    // handshakes (HTTP/1.1, the only protocol a check offers).
    eventually(
        "checks to complete TLS handshakes with the good instance",
        || async {
            admin_json(&good, "/status").await["tls"]["handshakes"]["http/1.1"]
                .as_u64()
                .unwrap_or(0)
                >= 3
        },
    )
    .await;
    assert_eq!(checked_down(&gw, "checked", good_port), Some(false));
    for _ in 0..10 {
        let r = get(&format!("{}/checked/x", gw.url)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let failed = admin_json(&wrong, "/status").await["tls"]["handshakes"]["failed"]
        .as_u64()
        .unwrap();
    assert!(failed >= 2, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_checks_https_instances_over_tls() {
    let ca = TestCa::new();
    let stranger = TestCa::new();
    let echo = TestEcho::start("e").await;
    let registry = TestRegistry::start_checking(vec![ca.path.clone()]).await;
    let trusted = TestGateway::start_tls(options(
        &echo_route(&echo),
        vec![ca.write("trusted", &["api.example.com"])],
    ))
    .await;
    let unknown = TestGateway::start_tls(options(
        &echo_route(&echo),
        vec![stranger.write("unknown", &["api.example.com"])],
    ))
    .await;
    // One failure makes an instance critical, and coming back takes ten
    // passes: a check that failed even once would show.
    let register = |id: &'static str, port: u16, skip_verify: bool| {
        let url = format!("{}/v1/services/svc/instances/{id}", registry.url);
        let body = serde_json::json!({
            "address": "127.0.0.1", "port": port, "scheme": "https", "ttl": "30s",
            "meta": {"tls_server_name": "api.example.com"},
            "check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms",
                      "failures": 1, "successes": 10, "tls_skip_verify": skip_verify}
        });
        async move {
            let r = put_json(&url, body).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    };
    register("trusted", trusted.tls_addr.unwrap().port(), false).await;
    register("unknown", unknown.tls_addr.unwrap().port(), false).await;
    let client = registry.client();
    let status = |id: &'static str| {
        let client = client.clone();
        async move {
            let list = client.instances("svc").await.unwrap();
            list.instances.iter().find(|i| i.id == id).map(|i| i.status)
        }
    };
    eventually(
        "the instance with a certificate the registry does not trust to turn critical",
        || async { status("unknown").await == Some(portico_registry::model::Status::Critical) },
    )
    .await;
    // The trusted one passes over TLS: its listener completed the checks'
    // handshakes, on HTTP/1.1 (what an HTTP check offers).
    eventually(
        "checks to complete handshakes with the trusted instance",
        || async { http1_handshakes(&trusted).await >= 3 },
    )
    .await;
    assert_eq!(
        status("trusted").await,
        Some(portico_registry::model::Status::Passing)
    );

    // tls_skip_verify: the same untrusted listener, checked without
    // verification, passes.
    register("unknown", unknown.tls_addr.unwrap().port(), true).await;
    let before = http1_handshakes(&unknown).await;
    eventually(
        "checks without verification to complete handshakes",
        || async { http1_handshakes(&unknown).await >= before + 12 },
    )
    .await;
    assert_eq!(
        status("unknown").await,
        Some(portico_registry::model::Status::Passing)
    );
}

/// TLS handshakes completed on HTTP/1.1 by `gw`'s HTTPS listener.
async fn http1_handshakes(gw: &TestGateway) -> u64 {
    admin_json(gw, "/status").await["tls"]["handshakes"]["http/1.1"]
        .as_u64()
        .unwrap_or(0)
}
