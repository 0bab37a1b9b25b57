//! Services and instances: `services`, `instances SERVICE`, `drain`,
//! `deregister`.

use http::Method;
use serde_json::Value;

use super::table::Table;
use super::{Ctl, CtlError, segment};

/// `GET /v1/services`: one row per service, instance counts by status.
pub async fn services(ctl: &Ctl) -> Result<(), CtlError> {
    let (list, raw): (Value, _) = ctl.get("/v1/services", "services").await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
        return Ok(());
    }
    let mut table = Table::new(&["SERVICE", "PASSING", "WARNING", "CRITICAL", "DRAINING"]);
    for s in list["services"].as_array().into_iter().flatten() {
        let count = |k: &str| s["instances"][k].as_u64().unwrap_or(0).to_string();
        table.row(vec![
            s["name"].as_str().unwrap_or_default().to_string(),
            count("passing"),
            count("warning"),
            count("critical"),
            count("draining"),
        ]);
    }
    print!("{}", table.render(ctl.colour));
    if list["self_preservation"]["active"].as_bool() == Some(true) {
        println!("self-preservation is on: lease expiry is paused");
    }
    Ok(())
}

/// `GET /v1/services/{service}/instances`. Read as JSON values, not the
/// model's types: a table of what the API says needs no more, and an
/// older or newer registry's fields then cannot fail the decoding.
pub async fn instances(ctl: &Ctl, service: &str) -> Result<(), CtlError> {
    let path = format!("/v1/services/{}/instances", segment(service));
    let (list, raw): (Value, _) = ctl.get(&path, &format!("service {service:?}")).await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "ADDRESS",
        "STATUS",
        "ZONE",
        "WEIGHT",
        "TAGS",
        "LEASE/CHECK",
    ]);
    for i in list["instances"].as_array().into_iter().flatten() {
        let tags: Vec<&str> = i["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        table.row(vec![
            text(&i["id"]),
            address(i),
            status(i),
            text(&i["zone"]),
            text(&i["weight"]),
            tags.join(","),
            keeper(i, &list["lease_left_ms"]),
        ]);
    }
    print!("{}", table.render(ctl.colour));
    Ok(())
}

/// A JSON value as a cell: strings bare, null or absent empty.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The status, and why when a registry check (not the lease) put it there.
fn status(i: &Value) -> String {
    match i["check_failing"].as_bool() {
        Some(true) => format!("{} (check failing)", text(&i["status"])),
        _ => text(&i["status"]),
    }
}

/// `host:port` (IPv6 bracketed), with the scheme in front when it is not
/// plain `http`.
fn address(i: &Value) -> String {
    let host = text(&i["address"]);
    let authority = match host.contains(':') {
        true => format!("[{host}]:{}", i["port"]),
        false => format!("{host}:{}", i["port"]),
    };
    match i["scheme"].as_str() {
        None | Some("http") => authority,
        Some(other) => format!("{other}://{authority}"),
    }
}

/// What keeps the instance listed: its lease (renewed by heartbeats), its
/// registry check, or both. The lease's time left is shown when the
/// registry knows it (`left`: the list's `lease_left_ms`; on etcd, only the
/// answering replica's own leases).
fn keeper(i: &Value, left: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(ttl) = i["ttl"].as_str() {
        match left[text(&i["id"])].as_u64() {
            Some(ms) => parts.push(format!("ttl {ttl} ({}s left)", ms.div_ceil(1000))),
            None => parts.push(format!("ttl {ttl}")),
        }
    }
    let check = &i["check"];
    if check.is_object() {
        let kind = if check["tcp"].as_bool() == Some(true) {
            "tcp".to_string()
        } else if let Some(s) = check["grpc_service"].as_str() {
            format!("grpc {s}").trim_end().to_string()
        } else {
            format!("http {}", text(&check["path"]))
        };
        parts.push(format!("check {kind} every {}", text(&check["interval"])));
    }
    parts.join(", ")
}

/// `POST .../drain`.
pub async fn drain(ctl: &Ctl, service: &str, id: &str) -> Result<(), CtlError> {
    let path = format!(
        "/v1/services/{}/instances/{}/drain",
        segment(service),
        segment(id)
    );
    let what = format!("instance {service}/{id}");
    let raw = ctl.call(Method::POST, &path, None, &what).await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
    } else {
        println!("draining {service}/{id}: gateways send it no new requests");
    }
    Ok(())
}

/// `DELETE .../instances/{id}`; an instance that was not there is a
/// not-found (exit 3), though the API answers 200 for it.
pub async fn deregister(ctl: &Ctl, service: &str, id: &str) -> Result<(), CtlError> {
    let path = format!(
        "/v1/services/{}/instances/{}",
        segment(service),
        segment(id)
    );
    let what = format!("instance {service}/{id}");
    let raw = ctl.call(Method::DELETE, &path, None, &what).await?;
    let answer: Value = serde_json::from_slice(&raw).unwrap_or_default();
    if ctl.json() {
        Ctl::print_raw(&raw);
    }
    if answer["removed"].as_bool() == Some(false) {
        return Err(CtlError::NotFound(format!("{what}: not found")));
    }
    if !ctl.json() {
        println!("deregistered {service}/{id}");
    }
    Ok(())
}
