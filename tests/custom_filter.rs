//! examples/custom-filter end to end: the example's own filter (a public
//! `Filter` registered by name) in every phase beside built-in filters, a
//! tower-http layer around the downstream side, and the refusals: at
//! startup for a route file, fail-closed for a registry route.

#[path = "../examples/custom-filter/tenant.rs"]
mod tenant;

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::config::Config;
use portico_gateway::{Gateway, GatewayError, GatewayOptions};
use support::{FaultyBackend, Reply, TestEcho, TestGateway, TestRegistry, fast_leases, http, send};

fn routes(upstream: &str, settings: &str) -> Config {
    Config::parse(&format!(
        r#"
[[route]]
name = "tenants"
path_prefix = "/"
upstreams = ["{upstream}"]

[[route.filters]]
type = "rate_limit"
key = "consumer"
rate = 1
per = "1h"
burst = 2

[[route.filters]]
type = "custom"
name = "tenant"
settings = {settings}
"#
    ))
    .unwrap()
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(&http(), Method::GET, url, headers, Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[tokio::test]
async fn a_custom_filter_runs_in_every_phase_beside_the_built_in_ones() {
    let echo = TestEcho::start("e1").await;
    let served = tenant::Served::default();
    let config = routes(
        &echo.addr.to_string(),
        r#"{ allowed = ["acme", "globex"] }"#,
    );
    let gw = TestGateway::start(tenant::gateway_options(config, served.clone())).await;
    let url = format!("{}/hello", gw.url);

    // Phase 1 answers by itself: no tenant, unknown tenant. The layer
    // wraps these answers too.
    let none = get_with(&url, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json()["code"], "no_tenant");
    assert_eq!(none.headers["server"], "portico-example");
    let unknown = get_with(&url, &[("x-tenant", "initech")]).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert_eq!(unknown.json()["code"], "unknown_tenant");

    // A known tenant: the upstream gets the gateway's x-tenant-id (never
    // the client's own), and so does the client, through the layer.
    for _ in 0..2 {
        let ok = get_with(&url, &[("x-tenant", "acme"), ("x-tenant-id", "globex")]).await;
        assert_eq!(ok.status, StatusCode::OK);
        let seen = &ok.json()["headers"];
        assert_eq!(seen["x-tenant-id"], "acme", "{seen}");
        assert_eq!(ok.headers["x-tenant-id"], "acme");
        assert_eq!(ok.headers["server"], "portico-example");
    }
    // The tenant is the consumer the built-in rate limit counts: acme's
    // burst of 2 is spent, globex has its own.
    let limited = get_with(&url, &[("x-tenant", "acme")]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.json()["code"], "rate_limited");
    let other = get_with(&url, &[("x-tenant", "globex")]).await;
    assert_eq!(other.status, StatusCode::OK);

    // Phase 4 saw each request once, with what phase 1 stored.
    let seen = served.lock().unwrap().clone();
    let expected = [
        (("-".to_string(), 401), 1),
        (("-".to_string(), 403), 1),
        (("acme".to_string(), 200), 2),
        (("acme".to_string(), 429), 1),
        (("globex".to_string(), 200), 1),
    ];
    assert_eq!(seen, expected.into_iter().collect());
}

#[tokio::test]
async fn a_route_file_with_a_filter_it_cannot_build_is_refused_naming_the_field() {
    let cases = [
        (r#"{ allowed = [] }"#, "filters[1].settings.allowed"),
        (r#"{ allowed = [3] }"#, "filters[1].settings.allowed[0]"),
        (
            r#"{ allowed = ["a"], colour = "red" }"#,
            "filters[1].settings.colour: unknown field",
        ),
        (
            r#"{ allowed = ["a"], header = "x y" }"#,
            "filters[1].settings.header",
        ),
    ];
    for (settings, field) in cases {
        let options = tenant::gateway_options(routes("127.0.0.1:9", settings), Default::default());
        match Gateway::new(options) {
            Err(GatewayError::Filter { route, reason }) => {
                assert_eq!(route, "tenants");
                assert!(reason.starts_with(field), "{settings}: {reason}");
            }
            other => panic!("{settings}: {other:?}"),
        }
    }
    // A gateway that never registered the filter.
    let config = routes("127.0.0.1:9", r#"{ allowed = ["a"] }"#);
    match Gateway::new(GatewayOptions {
        config,
        ..GatewayOptions::default()
    }) {
        Err(GatewayError::Filter { reason, .. }) => {
            assert!(
                reason.starts_with("filters[1].name: no filter \"tenant\""),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_registry_route_with_a_filter_the_gateway_lacks_refuses_every_request() {
    let registry = TestRegistry::start(fast_leases()).await;
    let backend = FaultyBackend::start("b").await;
    let route = serde_json::json!({
        "path_prefix": "/",
        "upstreams": [backend.addr.to_string()],
        "filters": [{"type": "custom", "name": "audit", "settings": {"level": 2}}],
    });
    let put = support::put_json(&format!("{}/v1/routes/audited", registry.url), route).await;
    assert!(put.status.is_success(), "{:?}", put.json());
    let gw = TestGateway::following(&registry.url).await;
    support::eventually("the route to be applied", || async {
        gw.table
            .load()
            .entries()
            .iter()
            .any(|e| &*e.route.name == "audited")
    })
    .await;
    let refused = get_with(&format!("{}/x", gw.url), &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["code"], "filter_unavailable");
    assert_eq!(backend.received(), 0, "a request went through unfiltered");
    // Settings the registry cannot check are still bounded in shape.
    let bad = serde_json::json!({
        "path_prefix": "/b",
        "upstreams": [backend.addr.to_string()],
        "filters": [{"type": "custom", "name": "audit", "settings": [1]}],
    });
    let put = support::put_json(&format!("{}/v1/routes/bad", registry.url), bad).await;
    assert_eq!(put.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        put.json()["field"],
        "filters[0].settings",
        "{:?}",
        put.json()
    );
}

#[tokio::test]
async fn a_reloaded_route_file_with_bad_filter_settings_is_refused_and_the_old_routes_serve() {
    use std::sync::atomic::Ordering;
    let echo = TestEcho::start("e1").await;
    let upstream = echo.addr.to_string();
    let file = |settings: &str| {
        format!(
            "[[route]]\nname = \"tenants\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\n\n\
             [[route.filters]]\ntype = \"custom\"\nname = \"tenant\"\nsettings = {settings}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, file(r#"{ allowed = ["acme"] }"#)).unwrap();
    let mut options = tenant::gateway_options(Config::load(&path).unwrap(), Default::default());
    options.config_path = Some(path.clone());
    options.config_poll = Some(std::time::Duration::from_millis(20));
    let gw = TestGateway::start(options).await;
    let url = format!("{}/x", gw.url);
    assert_eq!(
        get_with(&url, &[("x-tenant", "acme")]).await.status,
        StatusCode::OK
    );

    std::fs::write(&path, file(r#"{ allowed = [] }"#)).unwrap();
    support::eventually("the bad file to be refused", || async {
        gw.status.reload_failures.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        get_with(&url, &[("x-tenant", "acme")]).await.status,
        StatusCode::OK
    );
    assert_eq!(get_with(&url, &[]).await.status, StatusCode::UNAUTHORIZED);
}
