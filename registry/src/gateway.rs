//! Gateways kept in the registry (`/v1/gateways/{id}`): each gateway that
//! follows the registry registers itself with a lease and renews it by
//! writing its record again, so the registry, the dashboard and every other
//! gateway know which gateways are alive, what they run, how far they have
//! applied the registry's changes, and what each one's cluster-scope rate
//! limits see (see `docs/architecture.md`, "Cluster rate limits").
//!
//! A renewal is a write (not a keep-alive like an instance heartbeat):
//! the record carries what changes between renewals (the applied revision,
//! the demand per cluster limit), and the write is what reaches the other
//! gateways over the watch stream. A lapsed lease is not marked critical
//! and kept, as an instance is: the record is deleted by the sweeper,
//! because a gateway record is only a statement that the gateway is alive.
//!
//! Always built: the gateway sends these records and reads them back from
//! the watch stream.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Invalid;
pub use crate::model::{DEFAULT_GATEWAY_TTL, GatewayRecord, GatewaySpec, RouteLoad};

/// The code of every refusal of a gateway body or id (answered 400).
pub const INVALID_GATEWAY: &str = "invalid_gateway";
/// Shortest gateway lease (tests use it to see a killed gateway go).
pub const MIN_GATEWAY_TTL: Duration = Duration::from_secs(1);
/// Longest gateway lease.
pub const MAX_GATEWAY_TTL: Duration = Duration::from_secs(300);
/// Longest gateway id (hostname and listen address fit).
pub const MAX_ID: usize = 128;
/// Most listen addresses per gateway.
pub const MAX_ADDRESSES: usize = 16;
/// Longest listen address or version string.
pub const MAX_TEXT: usize = 256;
/// Most cluster limits a gateway reports demand for: a bound on the record
/// (and so on every renewal's write), far above any real route table's
/// count of cluster-scope limits.
pub const MAX_DEMANDS: usize = 1024;
/// Most routes a gateway reports traffic for in one record (its busiest).
pub const MAX_ROUTE_LOADS: usize = 1024;

fn refuse(field: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid {
        field: Some(field.to_string()),
        reason: format!("{field}: {reason}"),
        code: INVALID_GATEWAY,
    }
}

/// The fields of a [`GatewaySpec`] body.
const FIELDS: &[&str] = &[
    "addresses",
    "version",
    "applied_revision",
    "started_at_ms",
    "ttl",
    "demand",
    "admin",
    "routes",
];

/// `GET /v1/gateways`: every live gateway, in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayList {
    /// The records.
    pub gateways: Vec<GatewayRecord>,
    /// Revision the list reflects.
    pub revision: u64,
}

impl GatewaySpec {
    /// Parses and checks a JSON body, naming the field of any refusal.
    pub fn from_json(body: &[u8]) -> Result<GatewaySpec, Invalid> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Invalid::malformed("body must be a JSON object"));
        }
        crate::model::reject_duplicate_keys(body)?;
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| Invalid::malformed(format!("body is not valid JSON: {e}")))?;
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Invalid::unknown_field(unknown));
        }
        let de = &mut serde_json::Deserializer::from_slice(body);
        let spec: GatewaySpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let message = message.split(" at line ").next().unwrap_or(&message);
            if let Some(rest) = message.strip_prefix("missing field `") {
                return refuse(rest.split('`').next().unwrap_or_default(), "is required");
            }
            if path == "." {
                return Invalid::malformed(format!("body is not a gateway record: {message}"));
            }
            refuse(&path, message)
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The checks serde cannot make.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(refuse(
                "addresses",
                format!("must list 1 to {MAX_ADDRESSES} addresses"),
            ));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            check_address(a).map_err(|r| refuse(&format!("addresses[{i}]"), r))?;
        }
        if self.version.is_empty()
            || self.version.len() > MAX_TEXT
            || !self.version.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(refuse(
                "version",
                format!("must be 1 to {MAX_TEXT} visible ASCII characters"),
            ));
        }
        if let Some(admin) = &self.admin {
            check_address(admin).map_err(|r| refuse("admin", r))?;
        }
        if !(MIN_GATEWAY_TTL..=MAX_GATEWAY_TTL).contains(&self.ttl) {
            return Err(refuse("ttl", "must be between 1s and 5m"));
        }
        if self.demand.len() > MAX_DEMANDS {
            return Err(refuse("demand", format!("at most {MAX_DEMANDS} limits")));
        }
        for (id, rate) in &self.demand {
            if id.is_empty() || id.len() > MAX_TEXT {
                return Err(refuse(
                    "demand",
                    format!("limit ids are 1 to {MAX_TEXT} bytes"),
                ));
            }
            if !rate.is_finite() || *rate < 0.0 {
                return Err(refuse(
                    &format!("demand.{id}"),
                    "must be a finite number of requests per second, at least 0",
                ));
            }
        }
        self.validate_routes()
    }

    fn validate_routes(&self) -> Result<(), Invalid> {
        if self.routes.len() > MAX_ROUTE_LOADS {
            return Err(refuse(
                "routes",
                format!("at most {MAX_ROUTE_LOADS} routes"),
            ));
        }
        for (name, load) in &self.routes {
            if name.is_empty() || name.len() > MAX_TEXT {
                return Err(refuse(
                    "routes",
                    format!("route names are 1 to {MAX_TEXT} bytes"),
                ));
            }
            let fields = [
                ("rps", load.rps, f64::MAX),
                ("error_rate", load.error_rate, 1.0),
                ("p99_ms", load.p99_ms, f64::MAX),
            ];
            for (field, value, max) in fields {
                if !value.is_finite() || !(0.0..=max).contains(&value) {
                    return Err(refuse(
                        &format!("routes.{name}.{field}"),
                        format!("must be a finite number from 0 to {max}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `host:port` with a port, no spaces: what a client could connect to.
fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() || address.len() > MAX_TEXT {
        return Err(format!("must be 1 to {MAX_TEXT} characters"));
    }
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or("must be host:port".to_string())?;
    port.parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port"))?;
    crate::model::validate_address(host).map_err(|e| e.reason)
}

/// Checks a gateway id: 1 to [`MAX_ID`] of `[A-Za-z0-9._-]`, not `.` or
/// `..`, so it travels in a URL path segment as it is (a hostname and a
/// listen address fit: `edge-1-127.0.0.1-8080`).
pub fn validate_gateway_id(id: &str) -> Result<(), Invalid> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(refuse(
            "id",
            format!("must be 1 to {MAX_ID} characters of [A-Za-z0-9._-]"),
        ));
    }
    if crate::model::is_dot_segment(id) {
        return Err(refuse("id", crate::model::DOT_SEGMENT_REASON));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_parses_with_defaults() {
        let spec = GatewaySpec::from_json(br#"{"addresses":["127.0.0.1:8080"],"version":"0.1.0"}"#)
            .unwrap();
        assert_eq!(spec.ttl, DEFAULT_GATEWAY_TTL);
        assert_eq!(spec.applied_revision, 0);
        assert_eq!(spec.admin, None);
        let spec = GatewaySpec::from_json(
            br#"{"addresses":["127.0.0.1:8080"],"version":"0.1.0","admin":"127.0.0.1:9180"}"#,
        )
        .unwrap();
        assert_eq!(spec.admin.as_deref(), Some("127.0.0.1:9180"));
    }

    #[test]
    fn refusals_name_the_field() {
        for (body, field) in [
            (r#"{"addresses":[],"version":"1"}"#, "addresses"),
            (r#"{"addresses":["nope"],"version":"1"}"#, "addresses[0]"),
            (r#"{"addresses":["a:1"],"version":""}"#, "version"),
            (r#"{"addresses":["a:1"],"version":"1","ttl":"10ms"}"#, "ttl"),
            (r#"{"addresses":["a:1"],"version":"1","ttl":"soon"}"#, "ttl"),
            (
                r#"{"addresses":["a:1"],"version":"1","demand":{"r/filters[0]":-1}}"#,
                "demand.r/filters[0]",
            ),
            (r#"{"addresses":["a:1"],"version":"1","extra":1}"#, "extra"),
            (
                r#"{"addresses":["a:1"],"version":"1","routes":{"r":{"rps":1,"error_rate":2,"p99_ms":1}}}"#,
                "routes.r.error_rate",
            ),
            (
                r#"{"addresses":["a:1"],"version":"1","routes":{"r":{"rps":-1,"error_rate":0,"p99_ms":1}}}"#,
                "routes.r.rps",
            ),
            (
                r#"{"addresses":["a:1"],"version":"1","admin":"nope"}"#,
                "admin",
            ),
            (r#"{"addresses":["a:1"],"version":"1","admin":7}"#, "admin"),
            (r#"{"addresses":["a:1"]}"#, "version"),
            (
                r#"{"addresses":["a:1"],"version":"1","applied_revision":"x"}"#,
                "applied_revision",
            ),
        ] {
            let e = GatewaySpec::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}: {}", e.reason);
        }
    }

    #[test]
    fn ids_travel_in_a_path_segment() {
        assert!(validate_gateway_id("edge-1-127.0.0.1-8080").is_ok());
        for bad in ["", "..", "a/b", "a b", &"x".repeat(MAX_ID + 1)] {
            assert!(validate_gateway_id(bad).is_err(), "{bad:?}");
        }
    }
}
