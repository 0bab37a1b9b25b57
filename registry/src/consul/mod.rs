//! A Consul-compatible door onto the registry: enough of Consul's HTTP API
//! (agent, catalog, health, status) that unmodified Consul clients register,
//! heartbeat and discover against Portico. It is a second door onto the same
//! instances, not a second store: a Consul registration is an ordinary
//! Portico instance (routed by gateways, listed by `/v1/services`, expired
//! by the same lease rules), and every native instance shows in Consul reads.
//!
//! # Module map
//!
//! - [`register`]: a Consul registration body (`Name`, `ID`, `Check`,
//!   `Checks`, keys matched case-insensitively as Consul does) turned into
//!   the JSON of a native registration, which
//!   [`crate::model::InstanceSpec::from_json`] then validates.
//! - [`agent`]: the agent's writes (register, deregister, check
//!   pass/warn/fail/update) and reads (`/v1/agent/self`, `/v1/agent/services`).
//! - [`health`]: catalog, health and status reads.
//! - [`blocking`]: the query string (`index`, `wait`, `passing`, `tag`,
//!   what is ignored, what is refused) and the wait of a blocking query.
//! - [`wire`]: Consul's JSON shapes, built from [`crate::model::Instance`].
//!
//! # How it maps
//!
//! One synthetic node ([`NODE`], in datacenter [`DATACENTER`]) holds every
//! instance; Consul's service `ID` is the instance id, `Name` the service.
//! Each instance has one check, `service:{id}`, whose status is the
//! instance's (a draining instance is `critical`, so `passing` queries stop
//! returning it). `X-Consul-Index` is the store's revision (at least 1, so
//! it never goes backwards and never reads as "no index").
//!
//! Errors are plain text, as Consul's are. Tokens (`X-Consul-Token`,
//! `?token=`, `Authorization: Bearer`) are checked by [`crate::auth`] before
//! a handler runs; a `register` token limited to some services is checked
//! here, once the service is known.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use tokio::sync::watch;

use crate::catalog::{Catalog, CatalogError};
use crate::model::Revision;

mod agent;
mod blocking;
mod health;
mod register;
mod wire;

/// The datacenter every answer names: Portico has one.
pub const DATACENTER: &str = "dc1";
/// The one node every instance is shown on.
pub const NODE: &str = "portico";
/// `X-Consul-Index`: the revision a read reflects.
pub const INDEX_HEADER: &str = "x-consul-index";
/// Largest accepted registration body (as the native API).
const MAX_BODY: usize = 64 * 1024;

/// The address a connection comes from, put in each request's extensions
/// by the API server (`api::serve`; a registration without `Address` defaults to
/// it). Its own type because axum provides `SocketAddr` for its TCP
/// listener only, and the registry also serves through TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::https::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::https::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// What the handlers share.
#[derive(Clone)]
struct ConsulState {
    catalog: Arc<Catalog>,
    /// Ends blocking queries at shutdown.
    closing: watch::Receiver<bool>,
    /// Instance id -> service, learnt at registration and by lookups. Consul
    /// addresses a service by its id alone; Portico keys by service and id,
    /// so a `check/pass/service:{id}` would otherwise scan every instance.
    /// A hint only: every use is verified against the store.
    services_by_id: Arc<Mutex<HashMap<String, String>>>,
}

/// The Consul endpoints, to merge into the registry's router.
pub fn router(catalog: Arc<Catalog>, closing: watch::Receiver<bool>) -> Router {
    let state = ConsulState {
        catalog,
        closing,
        services_by_id: Arc::default(),
    };
    Router::new()
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/services", get(agent::services))
        .route(
            "/v1/agent/service/register",
            get(agent::register).put(agent::register),
        )
        .route(
            "/v1/agent/service/deregister/{id}",
            get(agent::deregister).put(agent::deregister),
        )
        .route(
            "/v1/agent/check/pass/{check}",
            get(agent::pass).put(agent::pass),
        )
        .route(
            "/v1/agent/check/warn/{check}",
            get(agent::warn).put(agent::warn),
        )
        .route(
            "/v1/agent/check/fail/{check}",
            get(agent::fail).put(agent::fail),
        )
        .route(
            "/v1/agent/check/update/{check}",
            get(agent::update).put(agent::update),
        )
        .route("/v1/catalog/services", get(health::catalog_services))
        .route("/v1/catalog/service/{name}", get(health::catalog_service))
        .route("/v1/health/service/{name}", get(health::health_service))
        .route("/v1/health/checks/{name}", get(health::health_checks))
        .route("/v1/health/state/{state}", get(health::health_state))
        .route("/v1/status/leader", get(health::leader))
        .route("/v1/status/peers", get(health::peers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            consul_headers,
        ))
        .with_state(state)
}

/// Adds what Consul puts on every answer: `X-Consul-Index` (the store's
/// revision when the handler did not set the one its read reflects; clients
/// such as python-consul read it even from a 404), `X-Consul-KnownLeader`
/// and `X-Consul-LastContact` (a Portico registry always knows its store).
async fn consul_headers(State(app): State<ConsulState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    if !response.headers().contains_key(INDEX_HEADER) {
        let revision = app.catalog.store().revision().await.unwrap_or(0);
        response
            .headers_mut()
            .insert(INDEX_HEADER, HeaderValue::from(consul_index(revision)));
    }
    let headers = response.headers_mut();
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

/// The index Consul clients see for `revision`: at least 1, since clients
/// treat 0 as "no index" (and Consul never answers 0).
fn consul_index(revision: Revision) -> Revision {
    revision.max(1)
}

/// A JSON answer with the index of the read it reflects.
fn json<T: serde::Serialize>(revision: Revision, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("Consul answers serialise");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static(INDEX_HEADER),
                HeaderValue::from(consul_index(revision)),
            ),
        ],
        body,
    )
        .into_response()
}

/// A refusal in Consul's style: a status and a line of plain text.
#[derive(Debug)]
struct ConsulError {
    status: StatusCode,
    message: String,
}

impl ConsulError {
    fn bad_request(message: impl Into<String>) -> Self {
        ConsulError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        ConsulError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            self.message,
        )
            .into_response()
    }
}

impl From<CatalogError> for ConsulError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound { id, .. } => ConsulError::not_found(format!("Unknown {id}")),
            CatalogError::Invalid(invalid) => ConsulError::bad_request(invalid.reason),
            other => ConsulError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: other.to_string(),
            },
        }
    }
}

impl From<crate::store::StoreError> for ConsulError {
    fn from(e: crate::store::StoreError) -> Self {
        CatalogError::from(e).into()
    }
}
