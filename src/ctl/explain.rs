//! `explain METHOD URL [-H 'name: value']`: asks a gateway's admin
//! listener (`GET /explain`) which route the request would take, which
//! endpoint would answer, and why; prints the verdict first.

use http::Method;
use portico_registry::client::RegistryClient;
use serde_json::Value;

use super::table::Table;
use super::{Ctl, CtlError, call_on};

/// The request to explain, as `/explain`'s query string.
#[derive(Debug)]
pub struct Query(String);

impl Query {
    /// From the command line: a method, a URL (`http://host/path?q`) or a
    /// bare path, and `name: value` headers. Refusals name the argument.
    pub fn parse(method: &str, url: &str, headers: &[String]) -> Result<Query, CtlError> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| CtlError::Usage(format!("METHOD: {method:?} is not an HTTP method")))?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| CtlError::Usage(format!("URL: {url:?}: {e}")))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        if !path.starts_with('/') {
            return Err(CtlError::Usage(format!(
                "URL: {url:?}: give http://host/path or a path starting with '/'"
            )));
        }
        let mut query = format!("method={}&path={}", method, encode(path));
        if let Some(host) = uri.authority() {
            query.push_str(&format!("&host={}", encode(host.as_str())));
        }
        for h in headers {
            let Some((name, value)) = h.split_once(':') else {
                return Err(CtlError::Usage(format!("-H {h:?}: expected 'name: value'")));
            };
            let header = format!("{}:{}", name.trim(), value.trim());
            query.push_str(&format!("&header={}", encode(&header)));
        }
        Ok(Query(query))
    }
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asks `admin` and prints its answer.
pub async fn show(ctl: &Ctl, admin: &RegistryClient, query: &Query) -> Result<(), CtlError> {
    let path = format!("/explain?{}", query.0);
    let raw = call_on(admin, Method::GET, &path, None, "gateway explain").await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|e| CtlError::Api(format!("gateway explain: undecodable answer: {e}")))?;
    println!("verdict: {}", v["verdict"].as_str().unwrap_or("-"));
    match v["route"]["name"].as_str() {
        Some(name) => println!("route:   {name}"),
        None => println!("route:   none"),
    }
    println!("table revision: {}", v["table_revision"]);
    let mut considered = Table::new(&["ROUTE", "AT", "PRIORITY", "RESULT"]);
    for c in v["considered"].as_array().into_iter().flatten() {
        considered.row(vec![
            text(&c["route"]),
            text(&c["at"]),
            text(&c["priority"]),
            text(&c["result"]),
        ]);
    }
    println!("\nconsidered:\n{}", considered.render(ctl.colour));
    let mut endpoints = Table::new(&["ID", "ADDRESS", "IN ROTATION", "IN FLIGHT", "HEALTH CHECK"]);
    for e in v["endpoints"].as_array().into_iter().flatten() {
        endpoints.row(vec![
            text(&e["id"]),
            text(&e["address"]),
            text(&e["in_rotation"]),
            text(&e["in_flight"]),
            text(&e["health_check"]),
        ]);
    }
    println!("endpoints:\n{}", endpoints.render(ctl.colour).trim_end());
    Ok(())
}

/// A JSON value as a cell: strings bare, null empty, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
