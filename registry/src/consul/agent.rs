//! The agent endpoints: a service registering, heartbeating and leaving,
//! and the agent's own reads. Writes answer 200 with an empty body, as
//! Consul's do; older clients send them as GET, which is accepted too.

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};

use super::blocking::{Query, wait_for_change};
use super::{ConsulError, ConsulState, DATACENTER, MAX_BODY, NODE, json, wire};
use crate::auth::{Grant, Need};
use crate::catalog::{INSTANCES, instance_key};
use crate::model::Status;

type Caller = Option<Extension<ConnectInfo<super::Peer>>>;
type Granted = Option<Extension<Grant>>;

/// `PUT /v1/agent/service/register`.
pub(super) async fn register(
    State(app): State<ConsulState>,
    caller: Caller,
    grant: Granted,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ConsulError> {
    Query::parse(raw.as_deref())?;
    let body = read_body(body).await?;
    let caller = caller.map(|c| c.0.0.0.ip());
    let r = super::register::translate(&body, caller)?;
    allowed(grant, &r.service)?;
    refuse_moved_id(&app, &r.id, &r.service).await?;
    app.catalog.register(&r.service, &r.id, r.spec).await?;
    if let Some(status) = r.status.filter(|s| *s != Status::Passing) {
        app.catalog
            .heartbeat_with_status(&r.service, &r.id, status)
            .await?;
    }
    remember(&app, &r.id, &r.service);
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/deregister/{id}`.
pub(super) async fn deregister(
    State(app): State<ConsulState>,
    grant: Granted,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    Query::parse(raw.as_deref())?;
    let service = lookup(&app, &id).await?;
    allowed(grant, &service)?;
    app.catalog.deregister(&service, &id).await?;
    forget(&app, &id);
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/pass/{check}`: renews the lease, sets passing.
pub(super) async fn pass(
    app: State<ConsulState>,
    grant: Granted,
    check: Path<String>,
    raw: RawQuery,
) -> Result<Response, ConsulError> {
    set_check(app, grant, check, raw, Status::Passing).await
}

/// `PUT /v1/agent/check/warn/{check}`: renews the lease, sets warning.
pub(super) async fn warn(
    app: State<ConsulState>,
    grant: Granted,
    check: Path<String>,
    raw: RawQuery,
) -> Result<Response, ConsulError> {
    set_check(app, grant, check, raw, Status::Warning).await
}

/// `PUT /v1/agent/check/fail/{check}`: renews the lease, sets critical
/// (the lease keeps running: a failed check is not a lapse).
pub(super) async fn fail(
    app: State<ConsulState>,
    grant: Granted,
    check: Path<String>,
    raw: RawQuery,
) -> Result<Response, ConsulError> {
    set_check(app, grant, check, raw, Status::Critical).await
}

/// `PUT /v1/agent/check/update/{check}` with `{"Status": ..., "Output": ...}`.
pub(super) async fn update(
    app: State<ConsulState>,
    grant: Granted,
    check: Path<String>,
    raw: RawQuery,
    body: Body,
) -> Result<Response, ConsulError> {
    let body = read_body(body).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ConsulError::bad_request(format!("Request decode failed: {e}")))?;
    let status = value
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("status")))
        .and_then(|(_, v)| v.as_str());
    let status = match status {
        Some("passing") => Status::Passing,
        Some("warning") => Status::Warning,
        Some("critical") => Status::Critical,
        _ => {
            return Err(ConsulError::bad_request(
                "Invalid check status: Status must be passing, warning or critical",
            ));
        }
    };
    set_check(app, grant, check, raw, status).await
}

async fn set_check(
    State(app): State<ConsulState>,
    grant: Granted,
    Path(check): Path<String>,
    RawQuery(raw): RawQuery,
    status: Status,
) -> Result<Response, ConsulError> {
    // The note is accepted but not kept: it would cost a write per pass.
    Query::parse(raw.as_deref())?;
    let id = instance_of_check(&check)?;
    let service = lookup(&app, id).await?;
    allowed(grant, &service)?;
    app.catalog
        .heartbeat_with_status(&service, id, status)
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// The instance id in a check id: `service:{id}` or `service:{id}:{n}`
/// (ids cannot contain `:`, so the split is unambiguous).
fn instance_of_check(check: &str) -> Result<&str, ConsulError> {
    let unknown = || {
        ConsulError::not_found(format!(
            "Unknown check ID {check:?}: Portico's checks are named service:{{id}}"
        ))
    };
    let rest = check.strip_prefix("service:").ok_or_else(unknown)?;
    match rest.split_once(':') {
        None => Ok(rest),
        Some((id, n)) if n.parse::<u32>().is_ok() => Ok(id),
        Some(_) => Err(unknown()),
    }
}

/// Whether the caller's token may write instances of `service`. No grant:
/// tokens are off, or the middleware already required an unrestricted one.
fn allowed(grant: Granted, service: &str) -> Result<(), ConsulError> {
    match grant {
        Some(Extension(g)) if !g.allows(&Need::Instance { service }) => Err(ConsulError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "Permission denied: this {} token may not write service {service:?}",
                g.role
            ),
        }),
        _ => Ok(()),
    }
}

/// The service an instance id belongs to: the remembered one if it still
/// holds that id, else found by reading every instance (and remembered).
async fn lookup(app: &ConsulState, id: &str) -> Result<String, ConsulError> {
    let hint = app
        .services_by_id
        .lock()
        .expect("poisoned")
        .get(id)
        .cloned();
    if let Some(service) = hint {
        let key = instance_key(&service, id);
        if app.catalog.store().get_cached(&key).await?.is_some() {
            return Ok(service);
        }
    }
    let (instances, _) = app.catalog.instances(None).await?;
    let mut owners = instances.iter().filter(|i| i.id == id).map(|i| &i.service);
    match (owners.next(), owners.next()) {
        (None, _) => Err(ConsulError::not_found(format!("Unknown service ID {id:?}"))),
        (Some(service), None) => {
            remember(app, id, service);
            Ok(service.clone())
        }
        (Some(a), Some(b)) => Err(ConsulError::bad_request(format!(
            "ID {id:?} names instances of several services ({a:?}, {b:?}): use the native \
             API, which names the service"
        ))),
    }
}

/// Refuses an `ID` this registry knows under another service that still
/// has it. Consul would move the id to the new name; Portico keys instances
/// by service and id, so it would keep both, and the checks of the id could
/// no longer tell which one they renew.
async fn refuse_moved_id(app: &ConsulState, id: &str, service: &str) -> Result<(), ConsulError> {
    let hint = app
        .services_by_id
        .lock()
        .expect("poisoned")
        .get(id)
        .cloned();
    let Some(other) = hint.filter(|s| s != service) else {
        return Ok(());
    };
    if app
        .catalog
        .store()
        .get_cached(&instance_key(&other, id))
        .await?
        .is_none()
    {
        return Ok(());
    }
    Err(ConsulError::bad_request(format!(
        "Invalid service registration: ID: {id:?} is registered for service {other:?}; \
         deregister it first (Portico keys instances by service and id)"
    )))
}

fn remember(app: &ConsulState, id: &str, service: &str) {
    app.services_by_id
        .lock()
        .expect("poisoned")
        .insert(id.to_string(), service.to_string());
}

fn forget(app: &ConsulState, id: &str) {
    app.services_by_id.lock().expect("poisoned").remove(id);
}

/// A body of at most [`MAX_BODY`], whatever its `Content-Type` (Consul
/// clients often send none).
async fn read_body(body: Body) -> Result<bytes::Bytes, ConsulError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ConsulError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("Request body too large: at most {MAX_BODY} bytes"),
        }),
        Err(e) => Err(ConsulError::bad_request(format!(
            "Request body could not be read: {e}"
        ))),
    }
}

/// `GET /v1/agent/self`: the datacenter and node clients ask for first.
pub(super) async fn agent_self(State(app): State<ConsulState>) -> Result<Response, ConsulError> {
    let revision = app.catalog.store().revision().await?;
    let body = json!({
        "Config": {
            "Datacenter": DATACENTER,
            "PrimaryDatacenter": DATACENTER,
            "NodeName": NODE,
            "NodeID": "00000000-0000-0000-0000-706f72746963",
            "Server": true,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": {
            "Name": NODE,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Status": 1,
            "Tags": {"dc": DATACENTER, "role": "consul"},
        },
        "Meta": {},
    });
    Ok(json(revision, &body))
}

/// `GET /v1/agent/services`: every instance (one node holds them all), by id.
pub(super) async fn services(
    State(app): State<ConsulState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    let query = Query::parse(raw.as_deref())?;
    let unchanged = wait_for_change(&app, INSTANCES, &query).await?;
    let (instances, revision) = app.catalog.instances(None).await?;
    let revision = unchanged.unwrap_or(revision);
    let map: BTreeMap<&str, wire::AgentService<'_>> = instances
        .iter()
        .map(|i| (i.id.as_str(), wire::agent_service(i)))
        .collect();
    Ok(json(revision, &map))
}
