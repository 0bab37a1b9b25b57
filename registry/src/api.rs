//! The registry's REST API (axum). This is the public contract; see
//! `docs/api.md`.
//!
//! Every error leaves through [`ApiError`], which renders
//! `{"error": "...", "code": "...", "field": "..."}` with the right status, so
//! the HTTP mapping of failures lives in exactly one place.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use tokio::sync::watch;

pub use crate::api_error::ApiError;
use crate::auth::Tokens;
use crate::catalog::{Catalog, Feed, ServiceSummary};
use crate::lease::Preservation;
use crate::model::{
    InstanceSpec, Invalid, Revision, Status, WatchEvent, validate_instance_id,
    validate_service_name,
};
use crate::store::StoreError;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Header carrying the revision a read reflects.
pub const INDEX_HEADER: &str = "x-portico-index";
/// Header on a read the store could only answer from possibly stale data
/// (etcd without quorum): milliseconds since its last current read.
pub const STALE_HEADER: &str = "x-portico-stale-ms";
/// Default `wait` of a blocking query.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest `wait` of a blocking query.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How often an idle watch stream says it is alive.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct AppState {
    catalog: Arc<Catalog>,
    /// Flips to `true` at shutdown so long-lived watch streams end and the
    /// server can drain.
    closing: watch::Receiver<bool>,
}

/// Builds the API router over `catalog`. `closing` ends watch streams when it
/// turns `true`.
pub fn router(catalog: Arc<Catalog>, closing: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}/instances", get(list_instances))
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route(
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route(
            "/v1/services/{service}/instances/{id}/drain",
            axum::routing::post(drain),
        )
        .route("/v1/routes", get(list_routes))
        .route(
            "/v1/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/v1/certificates", get(list_certificates))
        .route(
            "/v1/certificates/{name}",
            get(get_certificate)
                .put(put_certificate)
                .delete(delete_certificate),
        )
        .route("/v1/consumers", get(list_consumers))
        .route(
            "/v1/consumers/{name}",
            get(get_consumer).put(put_consumer).delete(delete_consumer),
        )
        .route(
            "/v1/locks/{name}",
            get(get_lock).put(take_lock).delete(release_lock),
        )
        .route(
            "/v1/challenges/{token}",
            get(get_challenge)
                .put(put_challenge)
                .delete(delete_challenge),
        )
        .route("/v1/gateways", get(list_gateways))
        .route("/v1/prometheus/targets", get(prometheus_targets))
        .route(
            "/v1/gateways/{id}",
            get(get_gateway).put(put_gateway).delete(delete_gateway),
        )
        .route("/v1/watch", get(watch_changes))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .with_state(AppState {
            catalog: catalog.clone(),
            closing: closing.clone(),
        })
        .merge(crate::consul::router(catalog.clone(), closing))
        .merge(crate::ui::router().merge(crate::ui::relay::router(catalog)))
}

/// Serves the API on `listener` until `shutdown` completes, then ends watch
/// streams and lets in-flight requests finish. Every request is checked
/// against `tokens` first (none: open).
pub async fn serve<L>(
    listener: L,
    catalog: Arc<Catalog>,
    tokens: Tokens,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    crate::consul::Peer:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let (closing_tx, closing_rx) = watch::channel(false);
    let app = crate::auth::protect(router(catalog, closing_rx), tokens);
    // The peer address: a Consul registration without an `Address` defaults to it.
    let app = app.into_make_service_with_connect_info::<crate::consul::Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        })
        .await
}

fn json<T: Serialize>(revision: Revision, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("API responses serialise");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(INDEX_HEADER),
                HeaderValue::from(revision),
            ),
        ],
        body,
    )
        .into_response()
}

fn check_names(service: &str, id: Option<&str>) -> Result<(), ApiError> {
    validate_service_name(service)?;
    if let Some(id) = id {
        validate_instance_id(id)?;
    }
    Ok(())
}

/// Reads a JSON body: `application/json` only (415), at most [`MAX_BODY`] (413).
async fn read_json_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON with Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_failed",
            format!("could not read request body: {e}"),
        )),
    }
}

async fn register(
    State(app): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_instance_call(&service, &id, raw.as_deref())?;
    let body = read_json_body(&headers, body).await?;
    let spec = InstanceSpec::from_json(&body)?;
    let answer = app.catalog.register(&service, &id, spec).await?;
    Ok(json(answer.revision, &answer))
}

async fn heartbeat(
    State(app): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_instance_call(&service, &id, raw.as_deref())?;
    let answer = app.catalog.heartbeat(&service, &id).await?;
    Ok(json(answer.revision, &answer))
}

async fn drain(
    State(app): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_instance_call(&service, &id, raw.as_deref())?;
    let answer = app.catalog.drain(&service, &id).await?;
    Ok(json(answer.revision, &answer))
}

async fn deregister(
    State(app): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_instance_call(&service, &id, raw.as_deref())?;
    let answer = app.catalog.deregister(&service, &id).await?;
    Ok(json(answer.revision, &answer))
}

/// The checks every call on one instance makes: valid names, and no query
/// parameters (none of these calls takes one).
fn check_instance_call(service: &str, id: &str, raw: Option<&str>) -> Result<(), ApiError> {
    check_names(service, Some(id))?;
    query_pairs(raw, &[])?;
    Ok(())
}

fn check_route_name(name: &str) -> Result<(), ApiError> {
    crate::route::validate_route_name(name).map_err(|reason| Invalid::field("name", reason).into())
}

/// A route name a write may create: also not `.` or `..`, which clients
/// that normalise paths could not address. Reads and deletes accept them,
/// so a route stored before this rule can still be seen and removed.
fn check_new_route_name(name: &str) -> Result<(), ApiError> {
    check_route_name(name)?;
    if crate::model::is_dot_segment(name) {
        return Err(Invalid::field("name", crate::model::DOT_SEGMENT_REASON).into());
    }
    Ok(())
}

/// `?dry_run=true|false`, the only parameter route writes take.
fn dry_run(raw: Option<&str>) -> Result<bool, ApiError> {
    let mut dry = false;
    for (_, value) in query_pairs(raw, &["dry_run"])? {
        dry = match value.as_str() {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            _ => return Err(Invalid::field("dry_run", "must be true or false").into()),
        };
    }
    Ok(dry)
}

/// Routes are read by anyone with a token; their JWT secrets only by
/// callers that may hold key material (as certificate keys).
async fn list_routes(
    State(app): State<AppState>,
    key_access: Option<axum::Extension<crate::auth::KeyAccess>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    query_pairs(raw.as_deref(), &[])?;
    let mut list = app.catalog.routes().await?;
    if !may_hold_keys(key_access) {
        list.routes = list
            .routes
            .into_iter()
            .map(crate::route::RouteSpec::without_secrets)
            .collect();
    }
    Ok(json(list.revision, &list))
}

async fn get_route(
    State(app): State<AppState>,
    key_access: Option<axum::Extension<crate::auth::KeyAccess>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_route_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let (mut route, revision) = app.catalog.route(&name).await?;
    if !may_hold_keys(key_access) {
        route = route.without_secrets();
    }
    Ok(json(revision, &route))
}

/// No extension: no tokens configured, the API is open (keys included).
fn may_hold_keys(key_access: Option<axum::Extension<crate::auth::KeyAccess>>) -> bool {
    key_access.is_none_or(|k| k.0.0)
}

/// Creates or replaces a route. The body is the route without its name (or
/// with the same name as the URL); 201 when created, 200 otherwise.
async fn put_route(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_new_route_name(&name)?;
    let dry = dry_run(raw.as_deref())?;
    let body = read_json_body(&headers, body).await?;
    let mut spec = crate::route::RouteSpec::from_json(&body)?;
    if spec.name.is_empty() {
        spec.name = name;
    } else if spec.name != name {
        return Err(Invalid::field(
            "name",
            format!("{:?} differs from the URL's {name:?}", spec.name),
        )
        .into());
    }
    let answer = app.catalog.put_route(spec, dry).await?;
    let mut response = json(answer.revision, &answer);
    if answer.change == crate::catalog::RouteChange::Created && !dry {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

async fn delete_route(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_route_name(&name)?;
    let dry = dry_run(raw.as_deref())?;
    let answer = app.catalog.delete_route(&name, dry).await?;
    Ok(json(answer.revision, &answer))
}

async fn list_certificates(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    query_pairs(raw.as_deref(), &[])?;
    let list = app.catalog.certificates().await?;
    Ok(json(list.revision, &list))
}

async fn get_certificate(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::certificate::validate_certificate_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let (summary, revision) = app.catalog.certificate(&name).await?;
    Ok(json(revision, &summary))
}

/// Stores a certificate after the checks the gateway makes of its files;
/// answers its summary (never the key).
async fn put_certificate(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::certificate::validate_certificate_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let body = read_json_body(&headers, body).await?;
    let spec = crate::certificate::CertificateSpec::from_json(&body)?;
    let now = crate::certificate::load::unix_now();
    let summary = app.catalog.put_certificate(&name, spec, now).await?;
    Ok(json(summary.revision, &summary))
}

async fn delete_certificate(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::certificate::validate_certificate_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let revision = app.catalog.delete_certificate(&name).await?;
    Ok(json(
        revision,
        &serde_json::json!({"deleted": name, "revision": revision}),
    ))
}

async fn list_consumers(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    query_pairs(raw.as_deref(), &[])?;
    let list = app.catalog.consumers().await?;
    Ok(json(list.revision, &list))
}

async fn get_consumer(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::consumer::validate_consumer_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let (summary, revision) = app.catalog.consumer(&name).await?;
    Ok(json(revision, &summary))
}

/// Stores a consumer, its API keys hashed; answers its summary (the
/// number of keys, never a key nor a hash).
async fn put_consumer(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::consumer::validate_consumer_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let body = read_json_body(&headers, body).await?;
    let spec = crate::consumer::ConsumerSpec::from_json(&body)?;
    let summary = app.catalog.put_consumer(&name, spec).await?;
    Ok(json(summary.revision, &summary))
}

async fn delete_consumer(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::consumer::validate_consumer_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let revision = app.catalog.delete_consumer(&name).await?;
    Ok(json(
        revision,
        &serde_json::json!({"deleted": name, "revision": revision}),
    ))
}

/// Takes or renews a lock: 200 with the lock when this holder has it now,
/// 409 `lock_held` (holder, expires_unix_ms) when another one does.
async fn take_lock(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::lock::validate_lock_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let body = read_json_body(&headers, body).await?;
    let spec = crate::lock::LockSpec::from_json(&body)?;
    let lock = app
        .catalog
        .take_lock(&name, &spec, crate::lease::unix_ms())
        .await?;
    Ok(json(lock.revision, &lock))
}

/// Releases a lock, `?holder=` naming who releases: only its holder may.
async fn release_lock(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::lock::validate_lock_name(&name)?;
    let pairs = query_pairs(raw.as_deref(), &["holder"])?;
    let holder = pairs
        .into_iter()
        .find_map(|(k, v)| (k == "holder").then_some(v))
        .ok_or_else(|| Invalid {
            field: Some("holder".into()),
            reason: "holder: the query parameter is missing".into(),
            code: crate::lock::INVALID_LOCK,
        })?;
    crate::lock::validate_holder(&holder)?;
    let revision = app.catalog.release_lock(&name, &holder).await?;
    Ok(json(
        revision,
        &serde_json::json!({"released": name, "revision": revision}),
    ))
}

async fn get_lock(
    State(app): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::lock::validate_lock_name(&name)?;
    query_pairs(raw.as_deref(), &[])?;
    let lock = app.catalog.lock(&name).await?;
    let held = lock.held_at(crate::lease::unix_ms());
    let mut body = serde_json::to_value(&lock).expect("a Lock serialises");
    body["held"] = held.into();
    Ok(json(lock.revision, &body))
}

async fn put_challenge(
    State(app): State<AppState>,
    Path(token): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::lock::validate_token(&token)?;
    query_pairs(raw.as_deref(), &[])?;
    let body = read_json_body(&headers, body).await?;
    let spec = crate::lock::ChallengeSpec::from_json(&token, &body)?;
    let (challenge, revision) = app
        .catalog
        .put_challenge(&token, spec, crate::lease::unix_ms())
        .await?;
    Ok(json(revision, &challenge))
}

async fn get_challenge(
    State(app): State<AppState>,
    Path(token): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::lock::validate_token(&token)?;
    query_pairs(raw.as_deref(), &[])?;
    let challenge = app
        .catalog
        .challenge(&token, crate::lease::unix_ms())
        .await?;
    Ok(json(0, &challenge))
}

async fn delete_challenge(
    State(app): State<AppState>,
    Path(token): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::lock::validate_token(&token)?;
    query_pairs(raw.as_deref(), &[])?;
    let revision = app.catalog.delete_challenge(&token).await?;
    Ok(json(
        revision,
        &serde_json::json!({"deleted": token, "revision": revision}),
    ))
}

async fn list_gateways(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    query_pairs(raw.as_deref(), &[])?;
    let list = app.catalog.gateways().await?;
    Ok(json(list.revision, &list))
}

async fn get_gateway(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::gateway::validate_gateway_id(&id)?;
    query_pairs(raw.as_deref(), &[])?;
    let (record, revision) = app.catalog.gateway(&id).await?;
    Ok(json(revision, &record))
}

/// Registers or renews a gateway (a write with a fresh lease).
async fn put_gateway(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::gateway::validate_gateway_id(&id)?;
    query_pairs(raw.as_deref(), &[])?;
    let body = read_json_body(&headers, body).await?;
    let spec = crate::gateway::GatewaySpec::from_json(&body)?;
    let record = app.catalog.put_gateway(&id, spec).await?;
    Ok(json(record.revision, &record))
}

async fn delete_gateway(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    crate::gateway::validate_gateway_id(&id)?;
    query_pairs(raw.as_deref(), &[])?;
    let (removed, revision) = app.catalog.delete_gateway(&id).await?;
    Ok(json(
        revision,
        &serde_json::json!({"removed": removed, "revision": revision}),
    ))
}

#[derive(Serialize)]
struct ServicesBody {
    revision: Revision,
    self_preservation: Preservation,
    services: Vec<ServiceSummary>,
}

async fn list_services(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // No blocking query here: an `index` would be silently ignored, so refuse it.
    query_pairs(raw.as_deref(), &[])?;
    let (services, revision) = app.catalog.services().await?;
    Ok(json(
        revision,
        &ServicesBody {
            revision,
            self_preservation: app.catalog.preservation().get(),
            services,
        },
    ))
}

/// Parses a query string into pairs, refusing names not in `known`.
fn query_pairs(raw: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded_pairs(raw.unwrap_or("")).map_err(|reason| {
            ApiError::from(Invalid::malformed(format!("bad query string: {reason}")))
        })?;
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(Invalid {
            field: Some(name.clone()),
            reason: format!("unknown query parameter {name:?}"),
            code: "unknown_parameter",
        }
        .into());
    }
    Ok(pairs)
}

/// Minimal `application/x-www-form-urlencoded` decoding via axum's own decoder.
fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

fn parse_revision(field: &str, value: &str) -> Result<Revision, ApiError> {
    value
        .parse::<Revision>()
        .map_err(|_| Invalid::field(field, "must be a non-negative integer revision").into())
}

fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    let wait = humantime::parse_duration(value)
        .map_err(|e| Invalid::field("wait", format!("{e}: expected a duration such as \"30s\"")))?;
    if wait > MAX_WAIT {
        return Err(Invalid::field("wait", "must be at most 10m").into());
    }
    Ok(wait)
}

/// Prometheus HTTP service discovery: every instance (or one service's) as
/// a target group, in `http_sd_configs`' format.
async fn prometheus_targets(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut service = None;
    for (k, v) in query_pairs(raw.as_deref(), &["service"])? {
        check_names(&v, None)?;
        debug_assert_eq!(k, "service");
        service = Some(v);
    }
    let (instances, revision) = app.catalog.instances(service.as_deref()).await?;
    let groups: Vec<_> = instances
        .iter()
        .map(crate::prometheus::target_group)
        .collect();
    Ok(json(revision, &groups))
}

async fn list_instances(
    State(app): State<AppState>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_names(&service, None)?;
    let mut status = None;
    let mut index = None;
    let mut wait = DEFAULT_WAIT;
    for (k, v) in query_pairs(raw.as_deref(), &["status", "index", "wait"])? {
        match k.as_str() {
            "status" => {
                status = Some(Status::parse(&v).ok_or_else(|| {
                    Invalid::field(
                        "status",
                        "must be one of passing, warning, critical, draining",
                    )
                })?);
            }
            "index" => index = Some(parse_revision("index", &v)?),
            "wait" => wait = parse_wait(&v)?,
            _ => unreachable!("query_pairs refused unknown names"),
        }
    }
    let list = match index {
        Some(index) => {
            app.catalog
                .list_after(&service, status, index, wait)
                .await?
        }
        None => app.catalog.list(&service, status).await?,
    };
    let mut response = json(list.revision, &list);
    if let Some(ms) = list.stale_ms {
        // The store could only answer from a member without quorum.
        response
            .headers_mut()
            .insert(STALE_HEADER, HeaderValue::from(ms));
    }
    Ok(response)
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Ndjson,
    Sse,
}

impl Format {
    fn render(self, event: &WatchEvent) -> Bytes {
        let json = serde_json::to_string(event).expect("watch events serialise");
        Bytes::from(match self {
            Format::Ndjson => format!("{json}\n"),
            Format::Sse => {
                let kind = match event {
                    WatchEvent::Snapshot { .. } => "snapshot",
                    WatchEvent::Put { .. } => "put",
                    WatchEvent::Delete { .. } => "delete",
                    WatchEvent::RoutePut { .. } => "route_put",
                    WatchEvent::RouteDelete { .. } => "route_delete",
                    WatchEvent::CertificatePut { .. } => "certificate_put",
                    WatchEvent::CertificateDelete { .. } => "certificate_delete",
                    WatchEvent::ConsumerPut { .. } => "consumer_put",
                    WatchEvent::ConsumerDelete { .. } => "consumer_delete",
                    WatchEvent::GatewayPut { .. } => "gateway_put",
                    WatchEvent::GatewayDelete { .. } => "gateway_delete",
                    WatchEvent::Progress { .. } => "progress",
                };
                // The id is where to resume. Several changes can share a
                // revision (one etcd transaction), so a change's id is the
                // revision before it: a stream cut inside a revision
                // resumes with that whole revision again.
                let id = match event {
                    WatchEvent::Snapshot { .. } | WatchEvent::Progress { .. } => event.revision(),
                    _ => event.revision().saturating_sub(1),
                };
                format!("id: {id}\nevent: {kind}\ndata: {json}\n\n")
            }
        })
    }
}

struct WatchStreamState {
    app: AppState,
    feed: Feed,
    format: Format,
    /// The caller may receive certificate keys (see [`crate::auth::KeyAccess`]).
    keys: bool,
    progress: tokio::time::Interval,
    /// Counts the stream as open until it ends or its client goes away.
    _subscriber: crate::metrics::WatchSubscriber,
}

/// Renders one watch event for this caller: certificates reduced to their
/// summaries unless its token may hold keys.
fn render_for(format: Format, keys: bool, event: WatchEvent) -> Bytes {
    match keys {
        true => format.render(&event),
        false => format.render(&event.without_keys()),
    }
}

async fn watch_changes(
    State(app): State<AppState>,
    key_access: Option<axum::Extension<crate::auth::KeyAccess>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let keys = may_hold_keys(key_access);
    let mut index = 0;
    let mut format = if headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
    {
        Format::Sse
    } else {
        Format::Ndjson
    };
    // SSE clients resume with Last-Event-ID, which carries the revision.
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        index = parse_revision("Last-Event-ID", last)?;
    }
    for (k, v) in query_pairs(raw.as_deref(), &["index", "format"])? {
        match k.as_str() {
            "index" => index = parse_revision("index", &v)?,
            "format" => {
                format = match v.as_str() {
                    "ndjson" => Format::Ndjson,
                    "sse" => Format::Sse,
                    _ => return Err(Invalid::field("format", "must be ndjson or sse").into()),
                }
            }
            _ => unreachable!("query_pairs refused unknown names"),
        }
    }
    let mut feed = app.catalog.feed(index).await?;
    let start = match &feed.snapshot {
        Some(s) => s.revision(),
        None => index,
    };
    let first = feed.snapshot.take().map(|s| render_for(format, keys, s));
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.reset();
    let state = WatchStreamState {
        _subscriber: app.catalog.metrics().watch_subscriber(),
        app,
        feed,
        format,
        keys,
        progress,
    };
    let rest = stream::unfold(state, |mut st| async move {
        let mut closing = st.app.closing.clone();
        if *closing.borrow() {
            return None;
        }
        let event = tokio::select! {
            next = st.feed.next() => match next {
                Ok(event) => event,
                Err(StoreError::Compacted { .. }) => {
                    // Fell behind the retained history: start over with a snapshot, in-stream.
                    let mut feed = st.app.catalog.feed(0).await.ok()?;
                    let snapshot = feed.snapshot.take()?;
                    st.feed = feed;
                    snapshot
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch stream ended by store error");
                    return None;
                }
            },
            _ = st.progress.tick() => WatchEvent::Progress {
                revision: st.app.catalog.store().revision().await.ok()?,
            },
            _ = closing.changed() => return None,
        };
        st.progress.reset();
        let bytes = render_for(st.format, st.keys, event);
        Some((Ok::<_, Infallible>(bytes), st))
    });
    let body = match first {
        Some(first) => Body::from_stream(stream::iter([Ok::<_, Infallible>(first)]).chain(rest)),
        None => Body::from_stream(rest),
    };
    let content_type = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static(INDEX_HEADER),
                HeaderValue::from(start),
            ),
        ],
        body,
    )
        .into_response())
}

async fn healthz() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let body = crate::metrics::render(&app.catalog).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response())
}

/// Ready when the store answers and takes writes and leases expire. Not
/// ready (503) while it cannot be read, refuses writes (a full disk, no
/// etcd session), or lease sweeps keep failing: `error` says why.
async fn readyz(State(app): State<AppState>) -> Response {
    let preservation = app.catalog.preservation().get();
    let health = app.catalog.store().write_health();
    let mut store = serde_json::json!({
        "writable": health.refusing.is_none(),
        "refusing_since_ms": health.since_ms,
        "write_failures": health.failures,
        "recoveries": health.recoveries,
    });
    if let Some(h) = app.catalog.store().holding() {
        // The etcd session as a string: ids use all 64 bits.
        store["session"] = h.session.map(|s| s.to_string()).into();
        store["leases_held"] = h.held.into();
    }
    let sweeps = app.catalog.sweep_health().get();
    let revision = app.catalog.store().revision().await;
    let error = match (&revision, &health.refusing, &sweeps.failing) {
        (Err(e), _, _) => Some(e.to_string()),
        (Ok(_), Some(reason), _) => Some(format!("the store refuses writes: {reason}")),
        (Ok(_), None, Some(reason)) => Some(format!(
            "lease sweeps are failing (nothing expires): {reason}"
        )),
        (Ok(_), None, None) => None,
    };
    let revision = revision.unwrap_or(0);
    match error {
        None => json(
            revision,
            &serde_json::json!({
                "status": "ready",
                "revision": revision,
                "self_preservation": preservation,
                "lease_sweeps": app.catalog.sweeps(),
                "lease_sweep_failures": sweeps.total,
                "store": store,
            }),
        ),
        Some(error) => {
            let mut resp = json(
                revision,
                &serde_json::json!({
                    "status": "unavailable",
                    "error": error,
                    "self_preservation": preservation,
                    "store": store,
                }),
            );
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        }
    }
}
