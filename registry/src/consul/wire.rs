//! Consul's JSON shapes, built from Portico instances. Field names are
//! Consul's (PascalCase); only the fields clients read are filled, and
//! those Portico has no notion of are present with Consul's empty values
//! (clients written in Go decode into structs and tolerate either).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{DATACENTER, NODE};
use crate::model::{Instance, Status};

/// Consul's name for an instance's status. A draining instance is
/// `critical`: it must stop being returned by `passing` queries, and a
/// Consul client has no status meaning "finish what you have".
pub(super) fn status_name(status: Status) -> &'static str {
    match status {
        Status::Passing => "passing",
        Status::Warning => "warning",
        Status::Critical | Status::Draining => "critical",
    }
}

/// The check id Consul gives a service's check.
pub(super) fn check_id(instance_id: &str) -> String {
    format!("service:{instance_id}")
}

/// `Weights`: Portico's weight for passing; Consul's default 1 for warning.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Weights {
    pub passing: u32,
    pub warning: u32,
}

/// The node every instance is on.
#[derive(Serialize)]
pub(super) struct Node {
    #[serde(rename = "ID")]
    id: &'static str,
    #[serde(rename = "Node")]
    node: &'static str,
    #[serde(rename = "Address")]
    address: &'static str,
    #[serde(rename = "Datacenter")]
    datacenter: &'static str,
    #[serde(rename = "TaggedAddresses")]
    tagged_addresses: BTreeMap<String, String>,
    #[serde(rename = "Meta")]
    meta: BTreeMap<String, String>,
}

/// A fixed node id (Consul's are UUIDs; clients only compare them).
const NODE_ID: &str = "00000000-0000-0000-0000-706f72746963";
/// The node's address: the registry is reached by URL, not by this, and
/// every service carries its own `Address`, which clients prefer.
const NODE_ADDRESS: &str = "127.0.0.1";

pub(super) fn node() -> Node {
    Node {
        id: NODE_ID,
        node: NODE,
        address: NODE_ADDRESS,
        datacenter: DATACENTER,
        tagged_addresses: BTreeMap::new(),
        meta: BTreeMap::new(),
    }
}

/// A service as `/v1/agent/services` and `/v1/health/service` show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AgentService<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    port: u16,
    meta: &'a BTreeMap<String, String>,
    weights: Weights,
    enable_tag_override: bool,
    datacenter: &'static str,
    create_index: u64,
    modify_index: u64,
}

pub(super) fn agent_service(i: &Instance) -> AgentService<'_> {
    AgentService {
        id: &i.id,
        service: &i.service,
        tags: &i.spec.tags,
        address: &i.spec.address,
        port: i.spec.port,
        meta: &i.spec.meta,
        weights: Weights {
            passing: i.spec.weight,
            warning: 1,
        },
        enable_tag_override: false,
        datacenter: DATACENTER,
        create_index: i.revision,
        modify_index: i.revision,
    }
}

/// A health check, as `/v1/health/*` show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Check<'a> {
    node: &'static str,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: &'static str,
    notes: &'static str,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    kind: &'static str,
    create_index: u64,
    modify_index: u64,
}

/// The one check of an instance: `service:{id}`, its type what keeps the
/// instance (`http`/`grpc` for a registry-run check, else `ttl`), its
/// output saying why it has the status it has.
pub(super) fn check(i: &Instance) -> Check<'_> {
    let kind = match &i.spec.check {
        Some(c) if c.grpc_service.is_some() => "grpc",
        Some(c) if c.tcp => "tcp",
        Some(_) => "http",
        None => "ttl",
    };
    let output = match i.status {
        Status::Draining => "Portico: the instance is draining".to_string(),
        Status::Critical if !i.check_failing => "Portico: the lease lapsed".to_string(),
        status => format!("Portico: {status}"),
    };
    Check {
        node: NODE,
        check_id: check_id(&i.id),
        name: format!("Service '{}' check", i.service),
        status: status_name(i.status),
        notes: "",
        output,
        service_id: &i.id,
        service_name: &i.service,
        service_tags: &i.spec.tags,
        kind,
        create_index: i.revision,
        modify_index: i.revision,
    }
}

/// One entry of `/v1/health/service/{name}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceEntry<'a> {
    node: Node,
    service: AgentService<'a>,
    checks: [Check<'a>; 1],
}

pub(super) fn service_entry(i: &Instance) -> ServiceEntry<'_> {
    ServiceEntry {
        node: node(),
        service: agent_service(i),
        checks: [check(i)],
    }
}

/// One entry of `/v1/catalog/service/{name}`: node and service flattened.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CatalogEntry<'a> {
    #[serde(rename = "ID")]
    id: &'static str,
    node: &'static str,
    address: &'static str,
    datacenter: &'static str,
    tagged_addresses: BTreeMap<String, String>,
    node_meta: BTreeMap<String, String>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    service_port: u16,
    service_meta: &'a BTreeMap<String, String>,
    service_weights: Weights,
    service_enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

pub(super) fn catalog_entry(i: &Instance) -> CatalogEntry<'_> {
    CatalogEntry {
        id: NODE_ID,
        node: NODE,
        address: NODE_ADDRESS,
        datacenter: DATACENTER,
        tagged_addresses: BTreeMap::new(),
        node_meta: BTreeMap::new(),
        service_kind: "",
        service_id: &i.id,
        service_name: &i.service,
        service_tags: &i.spec.tags,
        service_address: &i.spec.address,
        service_port: i.spec.port,
        service_meta: &i.spec.meta,
        service_weights: Weights {
            passing: i.spec.weight,
            warning: 1,
        },
        service_enable_tag_override: false,
        create_index: i.revision,
        modify_index: i.revision,
    }
}
