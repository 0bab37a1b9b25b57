//! Routes: `routes` (a table) and `route get NAME` (the route as a
//! route-file table, so it can be pasted into a file `apply -f` takes).

use portico_registry::catalog::RouteList;
use portico_registry::route::RouteSpec;
use serde::Serialize;

use super::table::Table;
use super::{Ctl, CtlError, segment};

/// `GET /v1/routes`.
pub async fn list(ctl: &Ctl) -> Result<(), CtlError> {
    let (list, raw): (RouteList, _) = ctl.get("/v1/routes", "routes").await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "MATCH", "TARGET", "PRIORITY"]);
    for r in &list.routes {
        table.row(vec![
            r.name.clone(),
            describe_match(r),
            describe_target(r),
            r.priority.unwrap_or(0).to_string(),
        ]);
    }
    print!("{}", table.render(ctl.colour));
    Ok(())
}

/// What a route matches, in brief: `api.example.com /api* GET,POST +2 conditions`.
pub fn describe_match(r: &RouteSpec) -> String {
    let mut parts = Vec::new();
    if !r.hosts.is_empty() {
        parts.push(r.hosts.join(","));
    }
    if let Some(p) = &r.path_prefix {
        parts.push(format!("{p}*"));
    } else if let Some(p) = &r.path {
        parts.push(format!("={p}"));
    } else if let Some(p) = &r.path_regex {
        parts.push(format!("~{p}"));
    }
    if !r.methods.is_empty() {
        parts.push(r.methods.join(","));
    }
    let conditions = r.headers.len() + r.query.len();
    if conditions > 0 {
        parts.push(format!("+{conditions} conditions"));
    }
    parts.join(" ")
}

/// Where a route sends requests, in brief.
pub fn describe_target(r: &RouteSpec) -> String {
    if let Some(s) = &r.service {
        return format!("service {s}");
    }
    if let Some(u) = &r.upstreams {
        return u.join(",");
    }
    match &r.targets {
        Some(t) => t
            .iter()
            .map(|t| format!("{}:{}", t.service, t.weight.unwrap_or(1)))
            .collect::<Vec<_>>()
            .join(","),
        None => String::new(),
    }
}

/// The shape of a route file, for printing one route as `[[route]]`.
#[derive(Serialize)]
struct RouteFile<'a> {
    route: [&'a RouteSpec; 1],
}

/// `GET /v1/routes/{name}`: TOML by default, the API's JSON with `-o json`.
pub async fn get(ctl: &Ctl, name: &str) -> Result<(), CtlError> {
    let path = format!("/v1/routes/{}", segment(name));
    let (mut route, raw): (RouteSpec, _) = ctl.get(&path, &format!("route {name:?}")).await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
        return Ok(());
    }
    if route.name.is_empty() {
        route.name = name.to_string();
    }
    let text = toml::to_string(&RouteFile { route: [&route] })
        .map_err(|e| CtlError::Api(format!("route {name:?}: cannot write it as TOML: {e}")))?;
    print!("{text}");
    Ok(())
}
