//! Portico's service registry: where backend instances register with a lease,
//! and where gateways learn of every change.
//!
//! # Module map
//!
//! - [`model`]: instances, statuses, validation, watch events. Always built;
//!   shared with the SDK and the gateway.
//! - [`filter`]: per-route filters, written and checked (rate limits, header
//!   edits); part of the route model, always built.
//! - [`route`]: the route model (written form, validation, compiled form)
//!   shared by route files, the `/v1/routes` API and the gateway. Always built.
//! - [`certificate`]: certificates kept in the registry (what is written,
//!   stored and read; the key never read back). Always built; its `load`
//!   (feature `tls`, part of `server`) checks a PEM chain and key, for the
//!   registry's API and the gateway's certificate files alike.
//! - [`consumer`]: consumers kept in the registry (who may call routes that
//!   ask for an API key; keys stored as SHA-256 hashes, never read back).
//!   Always built; the hashing needs feature `tls`.
//! - [`gateway`]: gateways kept in the registry with a lease (who is
//!   alive, what it runs, how far it applied the registry, its demand per
//!   cluster-scope rate limit). Always built: gateways send them.
//! - [`lock`]: locks and ACME challenge answers kept in the registry (so
//!   one of several gateways orders a certificate, and any answers the CA).
//!   Always built: the SDK sends them.
//! - [`grpc_health`] (`client` or `server`): the gRPC health-check call
//!   (`grpc.health.v1.Health/Check`) both the gateway's and the registry's
//!   checks make, with its two messages encoded by hand.
//! - [`store`] (`server`): the storage contract (ordered keys, one revision,
//!   leases, watch from a revision), the embedded redb backend and, with the
//!   `etcd` feature, the etcd backend for registry replicas.
//! - [`catalog`] (`server`): instance operations written once over any store.
//! - [`lease`] (`server`): the sweeper that expires lapsed leases, with
//!   self-preservation.
//! - [`check`] (`server`): HTTP checks the registry runs for instances
//!   registered with one.
//! - [`metrics`] (`server`): Prometheus metrics (`GET /metrics`): event
//!   counters kept in the catalog, state read from the store at scrape time.
//! - [`api`] (`server`): the REST API's handlers.
//! - [`consul`] (`server`): a Consul-compatible door (agent, catalog,
//!   health, status endpoints) onto the same instances, for unmodified
//!   Consul clients.
//! - [`prometheus`] (`server`): instances as Prometheus `http_sd` targets.
//! - [`api_error`] (`server`): [`api_error::ApiError`], the one place errors
//!   become HTTP answers (used by `api` and by `auth`'s refusals).
//! - [`https`] (`server`): the API served over TLS (handshakes off the
//!   accept loop, then the same axum service).
//! - [`auth`] (`server`): bearer tokens with roles (`admin`, `register`,
//!   `read`) and the middleware that checks them before any handler runs.
//! - [`ui`] (`server`): the dashboard at `/ui/` (static files embedded,
//!   served with ETags and a strict CSP) and `/v1/explain` and
//!   `/v1/endpoints`, which relay a gateway's admin answers to the page.
//! - [`client`] (`client`): the SDK (self-registration with heartbeats) and the
//!   watch client gateways follow.
//!
//! # How a change flows
//!
//! `PUT /v1/services/web/instances/web-1` → [`api`] validates the body
//! ([`model::InstanceSpec::from_json`]) → [`catalog::Catalog::register`] →
//! [`store::Store::put`] (durable before it returns, new revision) → the
//! store's watch → every `/v1/watch` stream → each gateway's
//! [`client::Watcher`] → the gateway rebuilds its routing table.

// The workspace denies `unsafe`; only the gateway allows it, in one
// function (gateway/src/sockopt.rs).
#![forbid(unsafe_code)]

pub mod certificate;
pub mod consumer;
pub mod filter;
pub mod gateway;
pub mod lock;
pub mod model;
pub mod route;

#[cfg(any(feature = "client", feature = "server"))]
pub mod grpc_health;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod api_error;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod catalog;
#[cfg(feature = "server")]
pub mod check;
#[cfg(feature = "server")]
pub mod consul;
#[cfg(feature = "server")]
pub mod https;
#[cfg(feature = "server")]
pub mod lease;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod prometheus;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod ui;

#[cfg(feature = "client")]
pub mod client;
