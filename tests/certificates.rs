//! Certificates kept in the registry (`/v1/certificates`): checked like
//! certificate files, listed without their key, and served by every gateway
//! following the registry; a watch with a `read` token never carries a key.
//!
//! The registry here is the store under test, so these run on etcd too
//! (`PORTICO_TEST_STORE=etcd`, in `.ci/run`).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::GatewayOptions;
use portico_gateway::config::Config;
use portico_gateway::proxy::ProxySettings;
use portico_gateway::tls::TlsSettings;
use portico_registry::auth::Tokens;
use portico_registry::model::WatchEvent;
use serde_json::{Value, json};
use support::tls::{TestCa, get_tls};
use support::*;

const ADMIN: &str = "admin-secret-0123";
const GATEWAY: &str = "gateway-secret-0123";
const READ: &str = "read-secret-0123";
const DEADLINE: Duration = Duration::from_secs(20);

/// A gateway with an HTTPS listener serving one file certificate (CN
/// `default`, for `default.test` and `*.example.com`: what a name falls
/// back to when no registry certificate names it exactly), following
/// `registry` with `token`.
async fn tls_gateway(ca: &TestCa, registry: &str, token: Option<&str>) -> TestGateway {
    TestGateway::start_tls(GatewayOptions {
        config: Config::parse("").unwrap(),
        registry: vec![registry.to_string()],
        registry_token: token.map(|t| t.to_string().into()),
        auto_routes: true,
        tls: Some(TlsSettings {
            certs: vec![ca.write("default", &["default.test", "*.example.com"])],
            hsts: None,
            client_auth: None,
            acme: false,
        }),
        proxy: ProxySettings {
            access_log: false,
            ..Default::default()
        },
        ..GatewayOptions::default()
    })
    .await
}

/// The CN of the certificate `gw` presents for `sni`, on a full handshake.
async fn served_cn(ca: &TestCa, gw: &TestGateway, sni: &str) -> String {
    let client = ca.client_full(&[b"http/1.1"]);
    match get_tls(&client, gw.tls_addr.unwrap(), sni, "/").await {
        Ok(reply) => reply.cn,
        Err(e) => format!("error: {e}"),
    }
}

async fn wait_served(ca: &TestCa, gateways: &[&TestGateway], sni: &str, cn: &str) {
    for (i, gw) in gateways.iter().enumerate() {
        eventually(&format!("gateway {i} to serve {cn} for {sni}"), || async {
            served_cn(ca, gw, sni).await == cn
        })
        .await;
    }
}

fn body(cert: &str, key: &str) -> Value {
    json!({"cert_pem": cert, "key_pem": key})
}

async fn put_cert(url: &str, name: &str, body: Value, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send(
        &http(),
        Method::PUT,
        &format!("{url}/v1/certificates/{name}"),
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The base64 body of a PEM key: what must never be read back.
fn key_material(key_pem: &str) -> String {
    key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_certificate_is_served_by_every_gateway_replaced_and_deleted() {
    let ca = TestCa::new();
    let registry = TestRegistry::start(fast_leases()).await;
    let (a, b) = (
        tls_gateway(&ca, &registry.url, None).await,
        tls_gateway(&ca, &registry.url, None).await,
    );
    let sni = "api.example.com";
    wait_served(&ca, &[&a, &b], sni, "default").await;

    // Stored: both gateways serve it for its name, the file one elsewhere.
    let first = ca.issue("registry-1", &[sni]);
    let r = put_cert(&registry.url, "api", body(&first.cert, &first.key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let summary = r.json();
    assert_eq!(summary["name"], "api");
    assert_eq!(summary["names"], json!([sni]));
    assert_eq!(summary["fingerprint_sha256"].as_str().unwrap().len(), 64);
    assert!(summary["not_after"].as_str().unwrap().ends_with('Z'));
    assert!(summary["not_after_unix"].as_i64().unwrap() > 0);
    assert!(!text(&r).contains(&key_material(&first.key)));
    wait_served(&ca, &[&a, &b], sni, "registry-1").await;
    assert_eq!(served_cn(&ca, &a, "default.test").await, "default");

    // Seen in /status and the expiry metric, as a registry certificate.
    let status = get(&format!("{}/status", a.admin_url)).await.json();
    let certs = status["tls"]["certificates"].as_array().unwrap();
    assert!(
        certs.iter().any(|c| c["source"] == "registry:api"
            && c["fingerprint_sha256"] == summary["fingerprint_sha256"]),
        "{certs:?}"
    );
    let metrics = text(&get(&format!("{}/metrics", b.admin_url)).await);
    assert!(
        metrics.contains(r#"portico_certificate_expiry_seconds{source="registry",name="api",names="api.example.com"}"#),
        "{metrics}"
    );

    // Replaced: a new fingerprint, served by both.
    let second = ca.issue("registry-2", &[sni]);
    let r = put_cert(&registry.url, "api", body(&second.cert, &second.key), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_ne!(
        r.json()["fingerprint_sha256"],
        summary["fingerprint_sha256"]
    );
    assert!(r.json()["revision"].as_u64() > summary["revision"].as_u64());
    wait_served(&ca, &[&a, &b], sni, "registry-2").await;

    // Deleted: back to the file certificate (the default); gone from reads.
    let url = format!("{}/v1/certificates/api", registry.url);
    assert_eq!(call(Method::DELETE, &url).await.status, StatusCode::OK);
    wait_served(&ca, &[&a, &b], sni, "default").await;
    let r = get(&url).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["code"], "not_found");
    assert_eq!(
        call(Method::DELETE, &url).await.status,
        StatusCode::NOT_FOUND
    );
}

/// An expired self-signed certificate for `name`, and its key.
fn expired(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_naming_the_field_and_store_nothing() {
    let ca = TestCa::new();
    let registry = TestRegistry::start(fast_leases()).await;
    let good = ca.issue("good", &["good.example.com"]);
    let other = ca.issue("other", &["other.example.com"]);
    let (old_cert, old_key) = expired("old.example.com");
    let index = |r: &Reply| r.headers["x-portico-index"].to_str().unwrap().to_string();
    let before = get(&format!("{}/v1/certificates", registry.url)).await;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "garbage chain",
            body("not a pem", &good.key),
            "cert_pem",
            "",
        ),
        ("garbage key", body(&good.cert, "not a pem"), "key_pem", ""),
        (
            "key of another certificate",
            body(&good.cert, &other.key),
            "key_pem",
            "does not match",
        ),
        ("expired", body(&old_cert, &old_key), "cert_pem", "expired"),
        (
            "no key",
            json!({"cert_pem": good.cert}),
            "key_pem",
            "missing",
        ),
        (
            "not a string",
            json!({"cert_pem": good.cert, "key_pem": 7}),
            "key_pem",
            "string",
        ),
        (
            "unknown field",
            json!({"cert_pem": good.cert, "key_pem": good.key, "chain": "x"}),
            "chain",
            "unknown",
        ),
    ];
    for (what, body, field, reason) in cases {
        let r = put_cert(&registry.url, "good", body, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", text(&r));
        let v = r.json();
        assert_eq!(v["field"], field, "{what}: {v}");
        assert!(v["error"].as_str().unwrap().contains(reason), "{what}: {v}");
        assert!(!text(&r).contains(&key_material(&good.key)), "{what}");
    }
    for name in ["bad%20name", "..", &"x".repeat(129)] {
        let r = put_cert(&registry.url, name, body(&good.cert, &good.key), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", text(&r));
        assert_eq!(r.json()["field"], "name", "{name}");
    }
    let r = send(
        &http(),
        Method::PUT,
        &format!("{}/v1/certificates/good", registry.url),
        &[("content-type", "application/json")],
        Bytes::from_static(b"{not json"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));

    // Nothing stored, nothing changed.
    let after = get(&format!("{}/v1/certificates", registry.url)).await;
    assert_eq!(after.json()["certificates"], json!([]));
    assert_eq!(index(&after), index(&before));
    let one = get(&format!("{}/v1/certificates/good", registry.url)).await;
    assert_eq!(one.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_return_the_key() {
    let ca = TestCa::new();
    let registry = TestRegistry::start(fast_leases()).await;
    let a = ca.issue("a", &["a.example.com", "*.a.example.com"]);
    let b = ca.issue("b", &["b.example.com"]);
    for (name, issued) in [("b", &b), ("a", &a)] {
        let r = put_cert(&registry.url, name, body(&issued.cert, &issued.key), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    }
    let list = get(&format!("{}/v1/certificates", registry.url)).await;
    let one = get(&format!("{}/v1/certificates/a", registry.url)).await;
    for r in [&list, &one] {
        assert_eq!(r.status, StatusCode::OK);
        let raw = text(r);
        for secret in [key_material(&a.key), key_material(&b.key)] {
            assert!(!raw.contains(&secret), "{raw}");
        }
        assert!(
            !raw.contains("PRIVATE KEY") && !raw.contains("key_pem"),
            "{raw}"
        );
    }
    let listed = list.json();
    let names: Vec<&str> = listed["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "name order");
    assert_eq!(
        one.json()["names"],
        json!(["a.example.com", "*.a.example.com"])
    );
}

/// The first event of a watch from `index` with `token`, raw.
async fn first_watch_line(url: &str, index: u64, token: &str) -> String {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("{url}/v1/watch?index={index}"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, http().request(req))
        .await
        .expect("watch answered in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("watch stream stalled")
            .expect("watch stream ended")
            .unwrap();
        line.extend_from_slice(frame.data_ref().unwrap());
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn tokens() -> Tokens {
    let mut t = Tokens::default();
    t.add_flag("--token #1", &format!("admin:{ADMIN}")).unwrap();
    t.add_flag("--token #2", &format!("gateway:{GATEWAY}"))
        .unwrap();
    t.add_flag("--token #3", &format!("read:{READ}")).unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_never_receives_key_material() {
    let ca = TestCa::new();
    let registry = TestRegistry::start_secured(tokens()).await;
    let issued = ca.issue("secured", &["secure.example.com"]);
    let secret = key_material(&issued.key);
    let body = body(&issued.cert, &issued.key);
    // Only an admin writes certificates.
    for token in [None, Some(READ), Some(GATEWAY)] {
        let r = put_cert(&registry.url, "s", body.clone(), token).await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN,
            "{token:?}: {}",
            r.status
        );
    }
    let r = put_cert(&registry.url, "s", body, Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let revision = r.json()["revision"].as_u64().unwrap();

    // The snapshot and the change event: summaries only for a read token.
    for index in [0, revision - 1] {
        let line = first_watch_line(&registry.url, index, READ).await;
        assert!(line.contains(r#""name":"s""#), "{line}");
        assert!(line.contains("fingerprint_sha256"), "{line}");
        assert!(
            !line.contains(&secret) && !line.contains("key_pem"),
            "{line}"
        );
        assert!(!line.contains("cert_pem"), "{line}");
        let line = first_watch_line(&registry.url, index, GATEWAY).await;
        assert!(
            line.contains(&secret),
            "a gateway token gets the key: {line}"
        );
    }
    // The SDK's typed watch, too.
    let mut watcher = registry.client().with_token(READ).unwrap().watch(0);
    match tokio::time::timeout(DEADLINE, watcher.next()).await {
        Ok(WatchEvent::Snapshot { certificates, .. }) => {
            assert_eq!(certificates.len(), 1);
            assert!(certificates[0].key_pem.is_none());
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }

    // A gateway following with a read token refuses the certificate (no
    // key: counted) and serves its file one; with a gateway token it serves
    // the registry's.
    let reader = tls_gateway(&ca, &registry.url, Some(READ)).await;
    let server = tls_gateway(&ca, &registry.url, Some(GATEWAY)).await;
    wait_served(&ca, &[&server], "secure.example.com", "secured").await;
    eventually(
        "the read-token gateway to refuse the certificate",
        || async {
            let s = get(&format!("{}/status", reader.admin_url)).await.json();
            s["tls"]["reloads_refused"].as_u64() >= Some(1)
        },
    )
    .await;
    assert_eq!(
        served_cn(&ca, &reader, "secure.example.com").await,
        "default"
    );
}

/// A JSON request with an optional bearer token.
async fn json_call(method: Method, url: &str, body: Option<Value>, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    send(&http(), method, url, &headers, body).await.unwrap()
}

async fn take(url: &str, name: &str, holder: &str, ttl: &str) -> Reply {
    json_call(
        Method::PUT,
        &format!("{url}/v1/locks/{name}"),
        Some(json!({"holder": holder, "ttl": ttl})),
        None,
    )
    .await
}

/// Locks (`/v1/locks/{name}`) on the store under test (etcd in `.ci/run`):
/// held by one, renewed by it, refused to others with who holds it until
/// when, released only by its holder, lapsed by time; of eight takers
/// racing for an absent lock exactly one wins (create-if-absent is exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_has_one_holder_at_a_time_and_lapses_by_itself() {
    let registry = TestRegistry::start(fast_leases()).await;
    let url = registry.url.as_str();
    let a = take(url, "acme:a.example", "gw-a", "30s").await;
    assert_eq!(a.status, StatusCode::OK, "{}", text(&a));
    let first = a.json();
    assert_eq!(first["holder"], "gw-a");
    let b = take(url, "acme:a.example", "gw-b", "30s").await;
    assert_eq!(b.status, StatusCode::CONFLICT, "{}", text(&b));
    assert_eq!(b.json()["code"], "lock_held");
    assert_eq!(b.json()["holder"], "gw-a");
    assert_eq!(b.json()["expires_unix_ms"], first["expires_unix_ms"]);
    let renewed = take(url, "acme:a.example", "gw-a", "60s").await;
    assert_eq!(renewed.status, StatusCode::OK);
    assert!(renewed.json()["expires_unix_ms"].as_u64() > first["expires_unix_ms"].as_u64());
    let lock_url = format!("{url}/v1/locks/acme:a.example");
    let other = call(Method::DELETE, &format!("{lock_url}?holder=gw-b")).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", text(&other));
    assert_eq!(get(&lock_url).await.json()["held"], true);
    let mine = call(Method::DELETE, &format!("{lock_url}?holder=gw-a")).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", text(&mine));
    assert_eq!(get(&lock_url).await.status, StatusCode::NOT_FOUND);
    let b = take(url, "acme:a.example", "gw-b", "30s").await;
    assert_eq!(b.status, StatusCode::OK, "{}", text(&b));

    // A holder that never renews lets go when its TTL passes.
    let short = take(url, "short", "dead", "1s").await;
    assert_eq!(short.status, StatusCode::OK);
    assert_eq!(
        take(url, "short", "heir", "30s").await.status,
        StatusCode::CONFLICT
    );
    eventually("the lapsed lock to be taken by another", || async {
        take(url, "short", "heir", "30s").await.status == StatusCode::OK
    })
    .await;

    // Racing takers of an absent lock: exactly one 200.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let url = url.to_string();
            tokio::spawn(async move { take(&url, "race", &format!("r{i}"), "30s").await.status })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            StatusCode::OK => won += 1,
            StatusCode::CONFLICT => {}
            other => panic!("a racer got {other}"),
        }
    }
    assert_eq!(won, 1, "exactly one racer holds the lock");
}

/// Bad lock and challenge input: 400 naming the field, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lock_and_challenge_input_is_refused_naming_the_field() {
    let registry = TestRegistry::start(fast_leases()).await;
    let url = registry.url.as_str();
    for (name, body, field) in [
        ("l", json!({"ttl": "3s"}), "holder"),
        ("l", json!({"holder": "a b", "ttl": "3s"}), "holder"),
        ("l", json!({"holder": "a", "ttl": "0s"}), "ttl"),
        ("l", json!({"holder": "a", "ttl": "soon"}), "ttl"),
        ("l", json!({"holder": "a", "ttl": "3s", "x": 1}), "x"),
        ("a%2Fb", json!({"holder": "a", "ttl": "3s"}), "name"),
    ] {
        let r = json_call(
            Method::PUT,
            &format!("{url}/v1/locks/{name}"),
            Some(body),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));
        assert_eq!(r.json()["field"], field, "{}", text(&r));
    }
    assert_eq!(
        get(&format!("{url}/v1/locks/l")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = call(Method::DELETE, &format!("{url}/v1/locks/l")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["field"], "holder");

    let challenge = format!("{url}/v1/challenges/tok_1");
    let bad = json!({"key_authorization": "other.thumb", "ttl": "1m"});
    let r = json_call(Method::PUT, &challenge, Some(bad), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));
    assert_eq!(r.json()["field"], "key_authorization");
    assert_eq!(get(&challenge).await.status, StatusCode::NOT_FOUND);
    let good = json!({"key_authorization": "tok_1.thumb", "ttl": "1m"});
    let r = json_call(Method::PUT, &challenge, Some(good), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(
        get(&challenge).await.json()["key_authorization"],
        "tok_1.thumb"
    );
    assert_eq!(
        call(Method::DELETE, &challenge).await.status,
        StatusCode::OK
    );
    assert_eq!(get(&challenge).await.status, StatusCode::NOT_FOUND);
}

/// A gateway token may take locks, publish challenge answers and write
/// `acme-*` certificates (what ordering for the fleet needs), and nothing
/// else; a read token none of these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_token_may_coordinate_acme_and_write_only_acme_certificates() {
    let ca = TestCa::new();
    let registry = TestRegistry::start_secured(tokens()).await;
    let url = registry.url.as_str();
    let lock = format!("{url}/v1/locks/acme:x.example");
    let lock_body = json!({"holder": "gw", "ttl": "30s"});
    let r = json_call(Method::PUT, &lock, Some(lock_body.clone()), Some(READ)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = json_call(Method::PUT, &lock, Some(lock_body), Some(GATEWAY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let issued = ca.issue("acme", &["x.example"]);
    let r = put_cert(
        url,
        "acme-x.example",
        body(&issued.cert, &issued.key),
        Some(GATEWAY),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = put_cert(url, "web", body(&issued.cert, &issued.key), Some(GATEWAY)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let challenge = format!("{url}/v1/challenges/t");
    let answer = json!({"key_authorization": "t.k", "ttl": "1m"});
    let r = json_call(Method::PUT, &challenge, Some(answer.clone()), Some(READ)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = json_call(Method::PUT, &challenge, Some(answer), Some(GATEWAY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = json_call(Method::GET, &challenge, None, Some(READ)).await;
    assert_eq!(r.json()["key_authorization"], "t.k");
}
