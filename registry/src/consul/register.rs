//! A Consul registration (`PUT /v1/agent/service/register`) turned into a
//! native one: the JSON body of `PUT /v1/services/{Name}/instances/{ID}`,
//! which [`InstanceSpec::from_json`] validates like any other. Building JSON
//! rather than an [`InstanceSpec`] keeps one validation path (and this code
//! independent of how the spec stores a check).
//!
//! Keys are matched as Consul matches them: case-insensitively, `_`
//! ignored (`Name`, `name`, `deregister_critical_service_after`). A `null`
//! is an absent key. A key that would change what is registered but that
//! Portico cannot honour (`Connect`, `Proxy`, script checks) is refused by
//! name; a few that change nothing here (`EnableTagOverride`,
//! `TaggedAddresses`, check `Name`/`Notes`/`Header`) are ignored.
//!
//! Checks: a `TTL` check becomes the instance's lease (several: the
//! shortest); one `HTTP`, `TCP` or `GRPC` check becomes the registry-run
//! `check`, which must probe the instance itself (Portico checks the
//! address it routes to, taking only the path from an HTTP URL). At least
//! one check is required: without one nothing would tell Portico the
//! instance is gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::ConsulError;
use crate::model::{
    InstanceSpec, Invalid, MAX_WEIGHT, Status, validate_instance_id, validate_service_name,
};

/// A Consul registration, translated.
#[derive(Debug)]
pub(super) struct Registration {
    /// `Name`.
    pub service: String,
    /// `ID`, else `Name`.
    pub id: String,
    /// What to register, validated.
    pub spec: InstanceSpec,
    /// A check's `Status` to start with (Portico otherwise starts passing).
    pub status: Option<Status>,
}

/// An object's keys in Consul's matching, with the path used in errors.
struct Fields {
    path: String,
    map: BTreeMap<String, (String, Value)>,
}

fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Fields {
    fn new(path: &str, value: Value) -> Result<Fields, ConsulError> {
        let Value::Object(object) = value else {
            let what = if path.is_empty() { "body" } else { path };
            return Err(bad(format!("{what}: must be a JSON object")));
        };
        let mut map = BTreeMap::new();
        for (key, value) in object {
            if value.is_null() {
                continue;
            }
            if let Some((first, _)) = map.insert(fold(&key), (key.clone(), value)) {
                return Err(bad(format!(
                    "{}: given twice (as {first:?} and {key:?})",
                    join(path, &key)
                )));
            }
        }
        Ok(Fields {
            path: path.to_string(),
            map,
        })
    }

    /// The Consul name of field `name` here, for errors.
    fn name(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn take(&mut self, folded: &str) -> Option<Value> {
        self.map.remove(folded).map(|(_, v)| v)
    }

    fn string(&mut self, folded: &str, name: &str) -> Result<Option<String>, ConsulError> {
        match self.take(folded) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("{}: must be a string", self.name(name)))),
        }
    }

    fn uint(&mut self, folded: &str, name: &str) -> Result<Option<u64>, ConsulError> {
        match self.take(folded) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                bad(format!(
                    "{}: must be a non-negative integer",
                    self.name(name)
                ))
            }),
        }
    }

    fn flag(&mut self, folded: &str, name: &str) -> Result<bool, ConsulError> {
        match self.take(folded) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(_) => Err(bad(format!("{}: must be true or false", self.name(name)))),
        }
    }

    /// Refuses what is left, unless it is in `ignored` (folded names).
    fn finish(self, ignored: &[&str]) -> Result<(), ConsulError> {
        for (folded, (key, value)) in &self.map {
            let empty = value.as_str() == Some("") || value.as_bool() == Some(false);
            if !ignored.contains(&folded.as_str()) && !empty {
                return Err(bad(format!(
                    "{}: not supported by Portico's Consul API",
                    self.name(key)
                )));
            }
        }
        Ok(())
    }
}

fn join(path: &str, name: &str) -> String {
    match path {
        "" => name.to_string(),
        p => format!("{p}.{name}"),
    }
}

fn bad(message: impl std::fmt::Display) -> ConsulError {
    ConsulError::bad_request(format!("Invalid service registration: {message}"))
}

/// Top-level keys accepted and ignored: they change nothing Portico keeps.
const IGNORED: [&str; 6] = [
    "enabletagoverride",
    "taggedaddresses",
    "namespace",
    "partition",
    "locality",
    "kind",
];

/// Translates a registration body; `caller` is the address an absent
/// `Address` defaults to (a Consul agent would use its own, which is the
/// machine the service runs on: here, the machine that called).
pub(super) fn translate(body: &[u8], caller: Option<IpAddr>) -> Result<Registration, ConsulError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ConsulError::bad_request(format!("Request decode failed: {e}")))?;
    let mut f = Fields::new("", value)?;
    let service = f
        .string("name", "Name")?
        .ok_or_else(|| bad("Name: is required (the service's name)"))?;
    validate_service_name(&service).map_err(|e| name_refused("Name", &e))?;
    let id = f.string("id", "ID")?.unwrap_or_else(|| service.clone());
    validate_instance_id(&id).map_err(|e| name_refused("ID", &e))?;
    let address = match f.string("address", "Address")? {
        Some(a) if !a.is_empty() => a,
        _ => caller
            .map(|ip| ip.to_string())
            .ok_or_else(|| bad("Address: is required"))?,
    };
    let port = match f.take("port") {
        None => {
            return Err(bad("Port: is required (Portico routes to Address:Port)"));
        }
        Some(p) => p,
    };
    let mut native = Map::new();
    native.insert("address".into(), Value::String(address.clone()));
    native.insert("port".into(), port.clone());
    for (folded, key) in [("tags", "tags"), ("meta", "meta")] {
        if let Some(v) = f.take(folded) {
            native.insert(key.into(), v);
        }
    }
    if let Some(w) = f.take("weights") {
        native.insert("weight".into(), weight(w)?.into());
    }
    let instance = (address.as_str(), port.as_u64().unwrap_or(0));
    let checks = checks(&mut f, &id)?;
    f.finish(&IGNORED)?;
    let status = checks.apply(&mut native, instance)?;
    let body = serde_json::to_vec(&Value::Object(native)).expect("JSON serialises");
    let spec = InstanceSpec::from_json(&body).map_err(|e| native_refused(&e, &checks))?;
    Ok(Registration {
        service,
        id,
        spec,
        status,
    })
}

/// A Consul name Portico cannot store: refused, never renamed.
fn name_refused(field: &str, e: &Invalid) -> ConsulError {
    let reason = e.reason.split_once(": ").map_or(&*e.reason, |(_, r)| r);
    bad(format!(
        "{field}: {reason} (Portico keeps service names and ids as DNS-style labels \
         and does not rename them)"
    ))
}

/// `Weights.Passing` -> weight: at least 1; above Portico's maximum, cut to it.
fn weight(value: Value) -> Result<u64, ConsulError> {
    let mut w = Fields::new("Weights", value)?;
    let passing = w.uint("passing", "Passing")?.unwrap_or(1);
    w.finish(&["warning"])?;
    if passing == 0 {
        return Err(bad("Weights.Passing: must be at least 1"));
    }
    Ok(passing.min(u64::from(MAX_WEIGHT)))
}

/// The checks of a registration, sorted into what Portico keeps.
#[derive(Default)]
struct Checks {
    /// The shortest TTL, and the check that gave it.
    ttl: Option<(Duration, String)>,
    /// The one registry-run check: its native JSON and its Consul path.
    active: Option<(Map<String, Value>, String)>,
    /// An `https`/`h2c` scheme an HTTP or gRPC check implies.
    scheme: Option<&'static str>,
    status: Option<Status>,
    /// Checks given at all.
    count: usize,
}

fn checks(f: &mut Fields, id: &str) -> Result<Checks, ConsulError> {
    let mut given = Vec::new();
    if let Some(c) = f.take("check") {
        given.push(("Check".to_string(), c));
    }
    match f.take("checks") {
        None => {}
        Some(Value::Array(items)) => {
            for (n, c) in items.into_iter().enumerate() {
                given.push((format!("Checks[{n}]"), c));
            }
        }
        Some(_) => return Err(bad("Checks: must be a list of checks")),
    }
    if given.is_empty() {
        return Err(bad(
            "Check: a TTL, HTTP, TCP or GRPC check is required (without one Portico \
             could not tell when the instance is gone)",
        ));
    }
    let mut checks = Checks {
        count: given.len(),
        ..Checks::default()
    };
    for (n, (path, value)) in given.into_iter().enumerate() {
        // Consul numbers the checks of a service from 1 when it has several.
        let default_id = match checks.count {
            1 => format!("service:{id}"),
            _ => format!("service:{id}:{}", n + 1),
        };
        checks.add(Fields::new(&path, value)?, &default_id)?;
    }
    Ok(checks)
}

/// Check keys accepted and ignored.
const CHECK_IGNORED: [&str; 6] = [
    "name",
    "notes",
    "header",
    "tlsservername",
    "outputmaxsize",
    "serviceid",
];

impl Checks {
    fn add(&mut self, mut c: Fields, default_id: &str) -> Result<(), ConsulError> {
        for key in ["checkid", "id"] {
            if let Some(given) = c.string(key, "CheckID")?
                && given != default_id
            {
                return Err(bad(format!(
                    "{}: Portico names this check {default_id:?} (as Consul does by \
                         default) and cannot keep another id",
                    c.name("CheckID")
                )));
            }
        }
        if let Some(s) = c.string("status", "Status")? {
            self.status = Some(match s.as_str() {
                "passing" => Status::Passing,
                "warning" => Status::Warning,
                "critical" => Status::Critical,
                _ => {
                    return Err(bad(format!(
                        "{}: must be passing, warning or critical",
                        c.name("Status")
                    )));
                }
            });
        }
        if let Some(ttl) = c.string("ttl", "TTL")? {
            let d = duration(&c, "TTL", &ttl)?;
            if self.ttl.as_ref().is_none_or(|(t, _)| d < *t) {
                self.ttl = Some((d, c.name("TTL")));
            }
            // A lapsed TTL check is removed after Portico's grace period.
            c.take("deregistercriticalserviceafter");
            return c.finish(&CHECK_IGNORED);
        }
        self.add_active(c)
    }

    fn add_active(&mut self, mut c: Fields) -> Result<(), ConsulError> {
        let mut native = Map::new();
        if let Some(url) = c.string("http", "HTTP")? {
            native.insert("path".into(), Value::String(url));
            if let Some(m) = c.string("method", "Method")?
                && !m.eq_ignore_ascii_case("GET")
            {
                return Err(bad(format!(
                    "{}: Portico checks with GET",
                    c.name("Method")
                )));
            }
        } else if let Some(target) = c.string("tcp", "TCP")? {
            native.insert("tcp".into(), Value::String(target));
        } else if let Some(target) = c.string("grpc", "GRPC")? {
            let tls = c.flag("grpcusetls", "GRPCUseTLS")?;
            self.scheme = Some(if tls { "https" } else { "h2c" });
            native.insert("grpc_service".into(), Value::String(target));
        } else {
            return Err(bad(format!(
                "{}: needs TTL, HTTP (+Interval), TCP (+Interval) or GRPC (+Interval); \
                 script, Docker, alias, H2PING, UDP and OS-service checks are not supported",
                c.path
            )));
        }
        if self.active.is_some() {
            return Err(bad(format!(
                "{}: Portico runs at most one HTTP, TCP or GRPC check per instance",
                c.path
            )));
        }
        let interval = c
            .string("interval", "Interval")?
            .ok_or_else(|| bad(format!("{}: is required", c.name("Interval"))))?;
        let every = duration(&c, "Interval", &interval)?;
        let timeout = match c.string("timeout", "Timeout")? {
            Some(t) => duration(&c, "Timeout", &t)?,
            None => every.min(Duration::from_secs(2)),
        };
        native.insert("interval".into(), millis(every));
        native.insert("timeout".into(), millis(timeout));
        if let Some(after) = c.string(
            "deregistercriticalserviceafter",
            "DeregisterCriticalServiceAfter",
        )? {
            let d = duration(&c, "DeregisterCriticalServiceAfter", &after)?;
            native.insert("deregister_critical_after".into(), millis(d));
        }
        if c.flag("tlsskipverify", "TLSSkipVerify")? {
            native.insert("tls_skip_verify".into(), Value::Bool(true));
        }
        for (folded, name, key) in [
            ("successbeforepassing", "SuccessBeforePassing", "successes"),
            (
                "failuresbeforecritical",
                "FailuresBeforeCritical",
                "failures",
            ),
        ] {
            // Consul's 0 (the default) means at the first result.
            let n = c.uint(folded, name)?.unwrap_or(0).clamp(1, 10);
            native.insert(key.into(), n.into());
        }
        let path = c.path.clone();
        c.finish(&CHECK_IGNORED)?;
        self.active = Some((native, path));
        Ok(())
    }

    /// Writes the checks into the native body; the check's target must be
    /// the instance itself.
    fn apply(
        &self,
        native: &mut Map<String, Value>,
        instance: (&str, u64),
    ) -> Result<Option<Status>, ConsulError> {
        if let Some((ttl, _)) = &self.ttl {
            native.insert("ttl".into(), millis(*ttl));
        }
        if let Some((check, path)) = &self.active {
            let mut check = check.clone();
            if let Some(Value::String(url)) = check.remove("path") {
                let (path_and_query, https) = http_target(&url, instance, path)?;
                check.insert("path".into(), Value::String(path_and_query));
                if https {
                    native.insert("scheme".into(), "https".into());
                }
            }
            if let Some(Value::String(target)) = check.remove("tcp") {
                same_target(&target, instance, &format!("{path}.TCP"))?;
                check.insert("tcp".into(), Value::Bool(true));
            }
            if let Some(Value::String(target)) = check.remove("grpc_service") {
                let (addr, service) = target.split_once('/').unwrap_or((&target, ""));
                same_target(addr, instance, &format!("{path}.GRPC"))?;
                check.insert("grpc_service".into(), service.into());
            }
            if let Some(scheme) = self.scheme {
                native.insert("scheme".into(), scheme.into());
            }
            native.insert("check".into(), Value::Object(check));
        }
        Ok(self.status)
    }
}

fn duration(c: &Fields, name: &str, value: &str) -> Result<Duration, ConsulError> {
    humantime::parse_duration(value).map_err(|e| {
        bad(format!(
            "{}: {value:?} is not a duration ({e}); expected e.g. \"10s\"",
            c.name(name)
        ))
    })
}

/// A duration as the native API reads one.
fn millis(d: Duration) -> Value {
    json!(format!("{}ms", d.as_millis()))
}

/// An HTTP check URL: its path (and query) and whether it is `https`, once
/// its host and port are the instance's.
fn http_target(
    url: &str,
    instance: (&str, u64),
    path: &str,
) -> Result<(String, bool), ConsulError> {
    let field = format!("{path}.HTTP");
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(format!("{field}: {url:?} is not a URL ({e})")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad(format!("{field}: must be an http:// or https:// URL"))),
    };
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    same_target(&format!("{host}:{port}"), instance, &field)?;
    let rest = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok((rest.to_string(), https))
}

/// Refuses a check target (`host:port`) that is not the instance's
/// `Address:Port`. Loopback names count as one host.
fn same_target(target: &str, instance: (&str, u64), field: &str) -> Result<(), ConsulError> {
    let refuse = || {
        bad(format!(
            "{field}: {target:?} must point at the instance's own address and port \
             ({}:{}); Portico checks the instance it routes to",
            instance.0, instance.1
        ))
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(refuse)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = |h: &str| {
        h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    let same_host =
        host.eq_ignore_ascii_case(instance.0) || (loopback(host) && loopback(instance.0));
    if !same_host || port.parse::<u64>().ok() != Some(instance.1) {
        return Err(refuse());
    }
    Ok(())
}

/// A refusal of the native validation, named as the Consul field it came from.
fn native_refused(e: &Invalid, checks: &Checks) -> ConsulError {
    let field = e.field.as_deref().unwrap_or("");
    let active = checks.active.as_ref().map_or("Check", |(_, p)| p.as_str());
    let ttl = checks.ttl.as_ref().map_or("Check.TTL", |(_, p)| p.as_str());
    let consul = match field.split_once('.') {
        Some(("check", sub)) => format!(
            "{active}.{}",
            match sub {
                "interval" => "Interval",
                "timeout" => "Timeout",
                "successes" => "SuccessBeforePassing",
                "failures" => "FailuresBeforeCritical",
                "tls_skip_verify" => "TLSSkipVerify",
                "deregister_critical_after" => "DeregisterCriticalServiceAfter",
                "grpc_service" => "GRPC",
                "tcp" => "TCP",
                _ => "HTTP",
            }
        ),
        _ => match field {
            "address" => "Address".into(),
            "port" => "Port".into(),
            "tags" => "Tags".into(),
            "meta" => "Meta".into(),
            "weight" => "Weights.Passing".into(),
            "ttl" => ttl.into(),
            other => other.into(),
        },
    };
    let reason = e
        .reason
        .strip_prefix(&format!("{field}: "))
        .unwrap_or(&e.reason);
    let reason = if e.code == "unknown_field" {
        "not supported by this registry".to_string()
    } else {
        reason.to_string()
    };
    bad(format!("{consul}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &Value) -> Registration {
        translate(body.to_string().as_bytes(), Some([10, 0, 0, 7].into())).unwrap()
    }

    fn refused(body: &Value) -> String {
        translate(body.to_string().as_bytes(), None)
            .unwrap_err()
            .message
    }

    #[test]
    fn keys_match_as_consul_matches_them() {
        let r = ok(&json!({"name": "web", "ID": "web-1", "PORT": 80,
            "Tags": ["a"], "meta": {"k": "v"}, "weights": {"Passing": 5000, "Warning": 1},
            "EnableTagOverride": true, "Connect": null,
            "check": {"ttl": "10s", "deregister_critical_service_after": "1m"}}));
        assert_eq!((r.service.as_str(), r.id.as_str()), ("web", "web-1"));
        assert_eq!(
            r.spec.address, "10.0.0.7",
            "the caller's address by default"
        );
        assert_eq!(r.spec.weight, MAX_WEIGHT, "cut to Portico's maximum");
        assert_eq!(r.spec.ttl, Some(Duration::from_secs(10)));
        assert_eq!(r.spec.tags, ["a"]);
        assert_eq!(
            ok(&json!({"Name": "api", "Port": 1, "Check": {"TTL": "5s"}})).id,
            "api"
        );
    }

    #[test]
    fn an_http_check_probes_the_instance_itself() {
        let r = ok(&json!({"Name": "web", "Address": "127.0.0.1", "Port": 8080,
            "Check": {"HTTP": "http://localhost:8080/actuator/health?x=1", "Interval": "10s"}}));
        let check = r.spec.check.expect("a registry-run check");
        assert_eq!(check.path, "/actuator/health?x=1");
        assert_eq!(check.interval, Duration::from_secs(10));
        let e = refused(&json!({"Name": "web", "Address": "127.0.0.1", "Port": 8080,
            "Check": {"HTTP": "http://10.1.1.1:8080/h", "Interval": "10s"}}));
        assert!(e.contains("Check.HTTP"), "{e}");
    }

    #[test]
    fn refusals_name_the_consul_field() {
        for (body, field) in [
            (json!({"Port": 80, "Check": {"TTL": "5s"}}), "Name"),
            (
                json!({"Name": "Web_1", "Port": 80, "Check": {"TTL": "5s"}}),
                "Name",
            ),
            (
                json!({"Name": "web", "ID": "Web", "Port": 80, "Check": {"TTL": "5s"}}),
                "ID",
            ),
            (
                json!({"Name": "web", "Address": "h", "Check": {"TTL": "5s"}}),
                "Port",
            ),
            (
                json!({"Name": "web", "Address": "h", "Port": "80", "Check": {"TTL": "5s"}}),
                "Port",
            ),
            (json!({"Name": "web", "Address": "h", "Port": 80}), "Check"),
            (
                json!({"Name": "web", "Address": "h", "Port": 80, "Check": {"TTL": "soon"}}),
                "Check.TTL",
            ),
            (
                json!({"Name": "web", "Address": "h", "Port": 80, "Checks": [{"TTL": "5s"}, {"Args": ["x"]}]}),
                "Checks[1]",
            ),
            (
                json!({"Name": "web", "Address": "h", "Port": 80, "Tags": "a", "Check": {"TTL": "5s"}}),
                "Tags",
            ),
            (
                json!({"Name": "web", "Address": "h", "Port": 80, "Weights": {"Passing": 0}, "Check": {"TTL": "5s"}}),
                "Weights.Passing",
            ),
            (
                json!({"Name": "web", "Address": "h", "Port": 80, "Connect": {"Native": true}, "Check": {"TTL": "5s"}}),
                "Connect",
            ),
            (
                json!({"Name": "web", "Address": "h", "Port": 80, "Check": {"TTL": "5s", "CheckID": "mine"}}),
                "Check.CheckID",
            ),
        ] {
            let e = refused(&body);
            assert!(e.contains(field), "{body}: {e}");
        }
        assert!(
            translate(b"{not json", None)
                .unwrap_err()
                .message
                .contains("decode")
        );
    }
}
