//! Catalog, health and status reads. Every list read may block (`index`,
//! `wait`) on the keys it reads: one service's instances, or all of them.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::blocking::{Query, wait_for_change};
use super::{ConsulError, ConsulState, json, wire};
use crate::catalog::INSTANCES;
use crate::model::{Instance, Revision, Status, validate_service_name};

/// One service's instances after a blocking wait, those with every `tag`
/// (and passing ones only with `passing`). A name Portico cannot hold has
/// no instances, as an unknown name in Consul.
async fn service_instances(
    app: &ConsulState,
    name: &str,
    query: &Query,
) -> Result<(Vec<Instance>, Revision), ConsulError> {
    if validate_service_name(name).is_err() {
        let revision = app.catalog.store().revision().await?;
        return Ok((Vec::new(), revision));
    }
    let unchanged = wait_for_change(app, &format!("{INSTANCES}{name}/"), query).await?;
    let (mut instances, revision) = app.catalog.instances(Some(name)).await?;
    instances.retain(|i| {
        query.tags.iter().all(|t| i.spec.tags.contains(t))
            && (!query.passing || i.status == Status::Passing)
    });
    Ok((instances, unchanged.unwrap_or(revision)))
}

/// `GET /v1/catalog/services`: service name -> its instances' tags.
pub(super) async fn catalog_services(
    State(app): State<ConsulState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    let query = Query::parse(raw.as_deref())?;
    let unchanged = wait_for_change(&app, INSTANCES, &query).await?;
    let (instances, revision) = app.catalog.instances(None).await?;
    let revision = unchanged.unwrap_or(revision);
    let mut services: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in &instances {
        let tags = services.entry(&i.service).or_default();
        tags.extend(i.spec.tags.iter().map(String::as_str));
    }
    Ok(json(revision, &services))
}

/// `GET /v1/catalog/service/{name}`: every instance, whatever its health.
pub(super) async fn catalog_service(
    State(app): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    let mut query = Query::parse(raw.as_deref())?;
    query.passing = false;
    let (instances, revision) = service_instances(&app, &name, &query).await?;
    let entries: Vec<_> = instances.iter().map(wire::catalog_entry).collect();
    Ok(json(revision, &entries))
}

/// `GET /v1/health/service/{name}`: instances with their node and check.
pub(super) async fn health_service(
    State(app): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    let query = Query::parse(raw.as_deref())?;
    let (instances, revision) = service_instances(&app, &name, &query).await?;
    let entries: Vec<_> = instances.iter().map(wire::service_entry).collect();
    Ok(json(revision, &entries))
}

/// `GET /v1/health/checks/{name}`: the check of each of a service's instances.
pub(super) async fn health_checks(
    State(app): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    let query = Query::parse(raw.as_deref())?;
    let (instances, revision) = service_instances(&app, &name, &query).await?;
    let checks: Vec<_> = instances.iter().map(wire::check).collect();
    Ok(json(revision, &checks))
}

/// `GET /v1/health/state/{state}`: every check in `state` (`any`: all).
pub(super) async fn health_state(
    State(app): State<ConsulState>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsulError> {
    if !matches!(state.as_str(), "any" | "passing" | "warning" | "critical") {
        return Err(ConsulError::bad_request(format!(
            "Invalid state {state:?}: must be any, passing, warning or critical"
        )));
    }
    let query = Query::parse(raw.as_deref())?;
    let unchanged = wait_for_change(&app, INSTANCES, &query).await?;
    let (instances, revision) = app.catalog.instances(None).await?;
    let revision = unchanged.unwrap_or(revision);
    let checks: Vec<_> = instances
        .iter()
        .filter(|i| state == "any" || wire::status_name(i.status) == state)
        .map(wire::check)
        .collect();
    Ok(json(revision, &checks))
}

/// The address clients reach this registry at (its `Host`), standing in
/// for Consul's server RPC address: Portico has no separate one.
fn own_address(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string()
}

/// `GET /v1/status/leader`: this registry (its store elects, not it).
pub(super) async fn leader(
    State(app): State<ConsulState>,
    headers: HeaderMap,
) -> Result<Response, ConsulError> {
    let revision = app.catalog.store().revision().await?;
    Ok(json(revision, &own_address(&headers)))
}

/// `GET /v1/status/peers`: this registry alone.
pub(super) async fn peers(
    State(app): State<ConsulState>,
    headers: HeaderMap,
) -> Result<Response, ConsulError> {
    let revision = app.catalog.store().revision().await?;
    Ok(json(revision, &[own_address(&headers)]))
}
