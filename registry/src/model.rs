//! The registry's data model: what an instance is, how it is validated, and the
//! events a watcher receives.
//!
//! This module is shared by the server, the SDK and the gateway, so it depends
//! on nothing but serde. Validation lives here too: the server refuses bad input
//! with the same rules a client can check before sending.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A position in the registry's single, monotonic history. Every change bumps it.
pub type Revision = u64;

/// Default lease length when a registration names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Shortest lease a registration may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lease a registration may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Longest `check.deregister_critical_after`: a week.
pub const MAX_DEREGISTER_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Weight when a registration names none.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest accepted weight; the smallest is 1.
pub const MAX_WEIGHT: u32 = 1000;
/// Most tags one instance may carry (keeps watch snapshots bounded).
pub const MAX_TAGS: usize = 64;
/// Most metadata entries one instance may carry.
pub const MAX_META: usize = 64;
/// Longest tag, metadata key or value, or zone.
pub const MAX_LABEL_LEN: usize = 512;

/// How the gateway talks to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// HTTP/1.1 over cleartext TCP.
    #[default]
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over cleartext TCP with prior knowledge.
    H2c,
}

impl Scheme {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::H2c => "h2c",
        }
    }
}

/// The health of an instance as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Lease current: eligible for traffic.
    #[default]
    Passing,
    /// Degraded but still eligible (set by health checks in a later release).
    Warning,
    /// Lease lapsed (or a check failed): receives no traffic, removed after a grace period.
    Critical,
    /// Shutting down: receives no new requests.
    Draining,
}

impl Status {
    /// The name used on the wire and in `?status=` filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Draining => "draining",
        }
    }

    /// Parses a `?status=` filter value.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            "draining" => Some(Status::Draining),
            _ => None,
        }
    }

    /// Whether a gateway may send new requests to an instance in this state.
    pub fn routable(self) -> bool {
        matches!(self, Status::Passing | Status::Warning)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a service sends to register itself: the body of
/// `PUT /v1/services/{service}/instances/{id}`.
///
/// Deserialising this type alone does not validate it; use
/// [`InstanceSpec::from_json`], which names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// IP address or DNS hostname the gateway connects to.
    pub address: String,
    /// TCP port, 1..=65535.
    pub port: u16,
    /// Protocol spoken by the instance.
    #[serde(default)]
    pub scheme: Scheme,
    /// Relative share of traffic, 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure domain, for zone-aware balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Free-form string metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Lease length: the instance must heartbeat within this or expire.
    /// `None`: no lease, the instance is kept alive by its `check` alone
    /// (registered with a check and no `ttl`) until it is deregistered or
    /// its check's `deregister_critical_after` runs out.
    #[serde(
        with = "duration_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// A check the registry runs itself, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Box<InstanceCheck>>,
}

/// A health check run by the registry (`"check"` at registration): `GET
/// path` every `interval`, with `grpc_service` a gRPC
/// `grpc.health.v1.Health/Check` about that service, or with `tcp` a bare
/// TCP connect; `failures` failures in a row make the instance `critical`,
/// `successes` passes in a row make it `passing` again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCheck {
    /// Path requested on the instance, e.g. `/healthz` (a gRPC check:
    /// `/grpc.health.v1.Health/Check`; a TCP check: empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// A TCP check: passes when a connection to the instance's address
    /// opens within the timeout (Consul's `TCP` check), nothing is sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
    /// A gRPC check: the service name asked about (`""`: the whole server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// Time between checks.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// Time allowed for connecting and the response head.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Passes in a row that make a failing instance passing.
    pub successes: u32,
    /// Failures in a row that make a passing instance critical.
    pub failures: u32,
    /// An `https` instance's certificate is not verified (Consul's
    /// `TLSSkipVerify`): for instances with self-signed certificates the
    /// registry has no CA for. Off unless set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    /// An instance critical because of this check for this long is removed
    /// (Consul's `DeregisterCriticalServiceAfter`): what ends an instance
    /// that has no lease and will never pass again. `None`: kept.
    #[serde(
        with = "duration_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_after: Option<Duration>,
}

impl InstanceCheck {
    fn from_json(value: &serde_json::Value) -> Result<InstanceCheck, Invalid> {
        let serde_json::Value::Object(map) = value else {
            return Err(Invalid::field("check", "must be an object"));
        };
        const KNOWN: [&str; 9] = [
            "path",
            "grpc_service",
            "tcp",
            "interval",
            "timeout",
            "successes",
            "failures",
            "tls_skip_verify",
            "deregister_critical_after",
        ];
        if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(Invalid::unknown_field(&format!("check.{unknown}")));
        }
        let (path, grpc_service, tcp) = check_kind(map)?;
        let interval = check_duration(map, "interval")?.unwrap_or(Duration::from_secs(10));
        let timeout = check_duration(map, "timeout")?.unwrap_or(Duration::from_secs(2));
        if timeout > interval {
            return Err(Invalid::field(
                "check.timeout",
                "must not exceed the interval",
            ));
        }
        let deregister_critical_after = check_duration(map, "deregister_critical_after")?;
        if deregister_critical_after.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(Invalid::field(
                "check.deregister_critical_after",
                "must be between 1s and 168h",
            ));
        }
        Ok(InstanceCheck {
            path,
            tcp,
            grpc_service,
            interval,
            timeout,
            successes: check_count(map, "successes", 1)?,
            failures: check_count(map, "failures", 3)?,
            tls_skip_verify: match map.get("tls_skip_verify") {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(Invalid::field(
                        "check.tls_skip_verify",
                        "must be true or false",
                    ));
                }
            },
            deregister_critical_after,
        })
    }
}

type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Which check: `(path, grpc_service, tcp)`, exactly one kind given.
fn check_kind(map: &JsonMap) -> Result<(String, Option<String>, bool), Invalid> {
    let tcp = match map.get("tcp") {
        None | Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => false,
        Some(serde_json::Value::Bool(true)) => true,
        Some(_) => return Err(Invalid::field("check.tcp", "must be true or false")),
    };
    let grpc_service = match map.get("grpc_service") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(
            crate::route::check_grpc_service(s)
                .map_err(|r| Invalid::field("check.grpc_service", r))?,
        ),
        Some(_) => {
            return Err(Invalid::field(
                "check.grpc_service",
                "must be a string (a gRPC service name, or \"\" for the whole server)",
            ));
        }
    };
    const ONE_KIND: &str =
        "give one of path (an HTTP check), grpc_service (a gRPC check) or tcp (a TCP check)";
    if tcp && grpc_service.is_some() {
        return Err(Invalid::field("check.tcp", ONE_KIND));
    }
    let path = match (map.get("path"), &grpc_service) {
        (None | Some(serde_json::Value::Null), Some(_)) => {
            crate::route::GRPC_HEALTH_PATH.to_string()
        }
        // As the check is written back (the method a gRPC check calls).
        (Some(serde_json::Value::String(p)), Some(_)) if p == crate::route::GRPC_HEALTH_PATH => {
            p.clone()
        }
        (None | Some(serde_json::Value::Null), None) if tcp => String::new(),
        (Some(_), _) if tcp || grpc_service.is_some() => {
            return Err(Invalid::field("check.path", ONE_KIND));
        }
        (Some(serde_json::Value::String(p)), None)
            if p.starts_with('/') && !p.chars().any(char::is_whitespace) =>
        {
            p.clone()
        }
        _ => {
            return Err(Invalid::field(
                "check.path",
                "must be a path starting with '/' (or give grpc_service for a gRPC check, or tcp: true for a TCP check)",
            ));
        }
    };
    Ok((path, grpc_service, tcp))
}

/// A check's duration field (`None` when absent): 100ms..=1h, or up to a
/// week for `deregister_critical_after`.
fn check_duration(map: &JsonMap, name: &str) -> Result<Option<Duration>, Invalid> {
    let (max, says) = match name {
        "deregister_critical_after" => (MAX_DEREGISTER_AFTER, "must be between 1s and 168h"),
        _ => (MAX_TTL, "must be between 100ms and 1h"),
    };
    let field = || format!("check.{name}");
    match map.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            let d = humantime::parse_duration(s).map_err(|e| {
                Invalid::field(
                    &field(),
                    format!("{e}: expected a duration such as \"10s\""),
                )
            })?;
            if !(Duration::from_millis(100)..=max).contains(&d) {
                return Err(Invalid::field(&field(), says));
            }
            Ok(Some(d))
        }
        Some(_) => Err(Invalid::field(&field(), "must be a duration string")),
    }
}

/// A check's count field: 1..=10.
fn check_count(map: &JsonMap, name: &str, default: u32) -> Result<u32, Invalid> {
    match map.get(name) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=10).contains(&n) => Ok(n as u32),
            _ => Err(Invalid::field(
                &format!("check.{name}"),
                "must be an integer in 1..=10",
            )),
        },
    }
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl InstanceSpec {
    /// A spec with defaults for everything but the address and port.
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        InstanceSpec {
            address: address.into(),
            port,
            scheme: Scheme::Http,
            weight: DEFAULT_WEIGHT,
            zone: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            ttl: Some(DEFAULT_TTL),
            check: None,
        }
    }

    /// Parses and validates a registration body.
    ///
    /// Done field by field rather than through `#[derive(Deserialize)]` so that
    /// every refusal names the field and the reason, which serde's messages do
    /// not do reliably for unknown fields and nested type errors.
    pub fn from_json(body: &[u8]) -> Result<InstanceSpec, Invalid> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Invalid::malformed(format!("body is not valid JSON: {e}")))?;
        reject_duplicate_keys(body)?;
        let serde_json::Value::Object(map) = value else {
            return Err(Invalid::malformed("body must be a JSON object"));
        };
        const KNOWN: [&str; 9] = [
            "address", "port", "scheme", "weight", "zone", "tags", "meta", "ttl", "check",
        ];
        if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(Invalid::unknown_field(unknown));
        }

        let address = match map.get("address") {
            None | Some(serde_json::Value::Null) => {
                return Err(Invalid::field("address", "is required"));
            }
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(Invalid::field("address", "must be a string")),
        };
        validate_address(&address)?;

        let port = match map.get("port") {
            None | Some(serde_json::Value::Null) => {
                return Err(Invalid::field("port", "is required"));
            }
            Some(v) => match v.as_u64() {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                _ => return Err(Invalid::field("port", "must be an integer in 1..=65535")),
            },
        };

        let scheme = match map.get("scheme") {
            None | Some(serde_json::Value::Null) => Scheme::Http,
            Some(serde_json::Value::String(s)) => match s.as_str() {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                "h2c" => Scheme::H2c,
                _ => {
                    return Err(Invalid::field(
                        "scheme",
                        "must be one of \"http\", \"https\", \"h2c\"",
                    ));
                }
            },
            Some(_) => return Err(Invalid::field("scheme", "must be a string")),
        };

        let weight = match map.get("weight") {
            None | Some(serde_json::Value::Null) => DEFAULT_WEIGHT,
            Some(v) => match v.as_u64() {
                Some(w) if (1..=u64::from(MAX_WEIGHT)).contains(&w) => w as u32,
                _ => {
                    return Err(Invalid::field(
                        "weight",
                        format!("must be an integer in 1..={MAX_WEIGHT}"),
                    ));
                }
            },
        };

        let zone = match map.get("zone") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => {
                validate_label("zone", s)?;
                Some(s.clone())
            }
            Some(_) => return Err(Invalid::field("zone", "must be a string")),
        };

        let tags = match map.get("tags") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => {
                if items.len() > MAX_TAGS {
                    return Err(Invalid::field(
                        "tags",
                        format!("at most {MAX_TAGS} tags are allowed"),
                    ));
                }
                let mut tags = Vec::with_capacity(items.len());
                for item in items {
                    let serde_json::Value::String(s) = item else {
                        return Err(Invalid::field("tags", "must be a list of strings"));
                    };
                    validate_label("tags", s)?;
                    tags.push(s.clone());
                }
                tags
            }
            Some(_) => return Err(Invalid::field("tags", "must be a list of strings")),
        };

        let meta = match map.get("meta") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(entries)) => {
                if entries.len() > MAX_META {
                    return Err(Invalid::field(
                        "meta",
                        format!("at most {MAX_META} entries are allowed"),
                    ));
                }
                let mut meta = BTreeMap::new();
                for (k, v) in entries {
                    let serde_json::Value::String(v) = v else {
                        return Err(Invalid::field(
                            "meta",
                            format!("value of {k:?} must be a string"),
                        ));
                    };
                    if k.is_empty() {
                        return Err(Invalid::field("meta", "keys must not be empty"));
                    }
                    validate_label("meta", k)?;
                    validate_label("meta", v)?;
                    meta.insert(k.clone(), v.clone());
                }
                meta
            }
            Some(_) => return Err(Invalid::field("meta", "must be an object of strings")),
        };

        let check = match map.get("check") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(Box::new(InstanceCheck::from_json(v)?)),
        };
        // No ttl with a check: no lease, the check alone keeps the instance.
        let ttl = match map.get("ttl") {
            None | Some(serde_json::Value::Null) if check.is_some() => None,
            None | Some(serde_json::Value::Null) => Some(DEFAULT_TTL),
            Some(serde_json::Value::String(s)) => Some(parse_ttl(s)?),
            Some(_) => {
                return Err(Invalid::field(
                    "ttl",
                    "must be a duration string such as \"10s\"",
                ));
            }
        };

        Ok(InstanceSpec {
            address,
            port,
            scheme,
            weight,
            zone,
            tags,
            meta,
            ttl,
            check,
        })
    }
}

fn parse_ttl(s: &str) -> Result<Duration, Invalid> {
    let ttl = humantime::parse_duration(s).map_err(|e| {
        Invalid::field(
            "ttl",
            format!("{e}: expected a duration string such as \"10s\""),
        )
    })?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(Invalid::field("ttl", "must be between 1s and 1h"));
    }
    Ok(ttl)
}

/// One registered instance of a service, as stored and as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Service this instance belongs to.
    pub service: String,
    /// Unique within the service.
    pub id: String,
    /// What the instance registered.
    #[serde(flatten)]
    pub spec: InstanceSpec,
    /// Current health.
    pub status: Status,
    /// Unix milliseconds of the first registration of this id.
    pub registered_at_ms: u64,
    /// Unix milliseconds of the last status change (used to time removal of
    /// critical instances).
    pub status_since_ms: u64,
    /// Revision at which this instance was last written.
    #[serde(default)]
    pub revision: Revision,
    /// Set when the status is `critical` because a check failed (the
    /// registry's own check, or a Consul TTL check its client failed with
    /// `check/fail`), not because the lease lapsed: heartbeats are still
    /// accepted and the lease keeps running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_failing: bool,
}

impl Instance {
    /// `address:port`, bracketing IPv6 literals, as used in URIs and `Host`.
    pub fn authority(&self) -> String {
        authority(&self.spec.address, self.spec.port)
    }
}

/// Formats `host:port`, bracketing IPv6 literals.
pub fn authority(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// What anyone with a read token may see of a certificate. Never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// The certificate's name in the registry (its URL segment).
    pub name: String,
    /// The DNS subjectAltNames of the leaf (lowercase; `*.example.com` for a
    /// wildcard): the names it serves.
    pub names: Vec<String>,
    /// The leaf's notAfter, RFC 3339 (UTC).
    pub not_after: String,
    /// The leaf's notAfter, Unix seconds.
    pub not_after_unix: i64,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub fingerprint_sha256: String,
    /// Revision at which it was last written (stamped when read).
    #[serde(default)]
    pub revision: Revision,
}

/// A certificate kept in the registry (`/v1/certificates`; see
/// the `certificate` module) as stored, and as the watch stream carries it: the
/// summary, plus the PEM chain and key for watchers allowed to hold keys
/// (both absent for the others).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// What anyone may see.
    #[serde(flatten)]
    pub summary: CertificateSummary,
    /// The PEM chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// The PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for Certificate {
    /// Never the key: a `Debug` of an event or a record may end up in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("summary", &self.summary)
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "<pem>"))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Certificate {
    /// The summary only: what a watcher without access to keys receives.
    /// The chain goes too, as the summary says all a reader needs of it.
    pub fn without_pem(self) -> Certificate {
        Certificate {
            cert_pem: None,
            key_pem: None,
            ..self
        }
    }
}

/// A consumer kept in the registry (`/v1/consumers`; see the `consumer`
/// module) as stored, and as the watch stream carries it to gateways: the
/// SHA-256 of each API key, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// The consumer's name (its URL segment, and what routes pass upstream).
    pub name: String,
    /// SHA-256 of each API key, lowercase hex (empty for a watcher not
    /// allowed to hold key material).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_sha256: Vec<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Revision at which it was last written (stamped when read).
    #[serde(default)]
    pub revision: Revision,
}

/// What `GET /v1/consumers/{name}` answers: no key, no hash, only how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerSummary {
    /// The consumer's name.
    pub name: String,
    /// How many API keys it has.
    pub api_keys: usize,
    /// Free-form metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Revision at which it was last written.
    pub revision: Revision,
}

impl Consumer {
    /// What readers see of it.
    pub fn summary(&self) -> ConsumerSummary {
        ConsumerSummary {
            name: self.name.clone(),
            api_keys: self.api_key_sha256.len(),
            metadata: self.metadata.clone(),
            revision: self.revision,
        }
    }

    /// Without its key hashes: what a watcher without access to key
    /// material receives.
    pub fn without_hashes(self) -> Consumer {
        Consumer {
            api_key_sha256: Vec::new(),
            ..self
        }
    }
}

/// One line of the `/v1/watch` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The whole state at `revision`: sent first when the watcher starts from 0
    /// or from a revision older than the registry's retained history.
    Snapshot {
        /// Revision the snapshot reflects.
        revision: Revision,
        /// Every instance, in key order.
        instances: Vec<Instance>,
        /// Every route kept in the registry, by name.
        #[serde(default)]
        routes: Vec<crate::route::RouteSpec>,
        /// Every certificate kept in the registry, by name (key material
        /// only for a watcher allowed to hold it).
        #[serde(default)]
        certificates: Vec<Certificate>,
        /// Every consumer kept in the registry, by name (key hashes only
        /// for a watcher allowed to hold key material).
        #[serde(default)]
        consumers: Vec<Consumer>,
        /// Every live gateway record, by id.
        #[serde(default)]
        gateways: Vec<GatewayRecord>,
    },
    /// An instance was registered or changed.
    Put {
        /// Revision of the change.
        revision: Revision,
        /// The instance as it now is.
        instance: Instance,
    },
    /// An instance was removed (deregistered or expired).
    Delete {
        /// Revision of the change.
        revision: Revision,
        /// Service of the removed instance.
        service: String,
        /// Id of the removed instance.
        id: String,
    },
    /// A route was created or replaced.
    RoutePut {
        /// Revision of the change.
        revision: Revision,
        /// The route as written (validated).
        route: Box<crate::route::RouteSpec>,
    },
    /// A route was deleted.
    RouteDelete {
        /// Revision of the change.
        revision: Revision,
        /// Name of the deleted route.
        name: String,
    },
    /// A certificate was stored or replaced.
    CertificatePut {
        /// Revision of the change.
        revision: Revision,
        /// The certificate (key material only for a watcher allowed to
        /// hold it).
        certificate: Box<Certificate>,
    },
    /// A certificate was deleted.
    CertificateDelete {
        /// Revision of the change.
        revision: Revision,
        /// Name of the deleted certificate.
        name: String,
    },
    /// A consumer was stored or replaced.
    ConsumerPut {
        /// Revision of the change.
        revision: Revision,
        /// The consumer (key hashes only for a watcher allowed to hold
        /// key material).
        consumer: Box<Consumer>,
    },
    /// A consumer was deleted.
    ConsumerDelete {
        /// Revision of the change.
        revision: Revision,
        /// Name of the deleted consumer.
        name: String,
    },
    /// A gateway registered or renewed its record.
    GatewayPut {
        /// Revision of the change.
        revision: Revision,
        /// The record as written.
        gateway: Box<GatewayRecord>,
    },
    /// A gateway record was removed (clean shutdown or lapsed lease).
    GatewayDelete {
        /// Revision of the change.
        revision: Revision,
        /// Id of the removed gateway.
        id: String,
    },
    /// Nothing changed: the stream is alive and current at `revision`.
    Progress {
        /// The registry's revision when this was sent.
        revision: Revision,
    },
}

impl WatchEvent {
    /// Revision this event brings a watcher to.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Snapshot { revision, .. }
            | WatchEvent::Put { revision, .. }
            | WatchEvent::Delete { revision, .. }
            | WatchEvent::RoutePut { revision, .. }
            | WatchEvent::RouteDelete { revision, .. }
            | WatchEvent::CertificatePut { revision, .. }
            | WatchEvent::CertificateDelete { revision, .. }
            | WatchEvent::ConsumerPut { revision, .. }
            | WatchEvent::ConsumerDelete { revision, .. }
            | WatchEvent::GatewayPut { revision, .. }
            | WatchEvent::GatewayDelete { revision, .. }
            | WatchEvent::Progress { revision } => *revision,
        }
    }

    /// The event as a watcher that may not hold keys receives it: every
    /// certificate reduced to its summary, every consumer without its key
    /// hashes, every route without its JWT secrets. Everything else as it is.
    pub fn without_keys(self) -> WatchEvent {
        match self {
            WatchEvent::Snapshot {
                revision,
                instances,
                routes,
                certificates,
                consumers,
                gateways,
            } => WatchEvent::Snapshot {
                revision,
                instances,
                routes: routes
                    .into_iter()
                    .map(crate::route::RouteSpec::without_secrets)
                    .collect(),
                certificates: certificates
                    .into_iter()
                    .map(Certificate::without_pem)
                    .collect(),
                consumers: consumers
                    .into_iter()
                    .map(Consumer::without_hashes)
                    .collect(),
                gateways,
            },
            WatchEvent::RoutePut { revision, route } => WatchEvent::RoutePut {
                revision,
                route: Box::new(route.without_secrets()),
            },
            WatchEvent::ConsumerPut { revision, consumer } => WatchEvent::ConsumerPut {
                revision,
                consumer: Box::new(consumer.without_hashes()),
            },
            WatchEvent::CertificatePut {
                revision,
                certificate,
            } => WatchEvent::CertificatePut {
                revision,
                certificate: Box::new(certificate.without_pem()),
            },
            other => other,
        }
    }
}

/// Answer to a registration: the stored instance and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The instance as stored.
    pub instance: Instance,
    /// Revision of the write.
    pub revision: Revision,
}

/// Answer to `GET /v1/services/{service}/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    /// Service asked for.
    pub service: String,
    /// Registry revision the list reflects.
    pub revision: Revision,
    /// Matching instances, ordered by id.
    pub instances: Vec<Instance>,
    /// Present when the store could not give a current read (etcd without
    /// quorum) and this list may be stale: milliseconds since the last
    /// current read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_ms: Option<u64>,
    /// Milliseconds until each listed instance's lease lapses unless it is
    /// renewed, by instance id, for the leases the answering registry
    /// knows the deadline of: every lease on the embedded store; on etcd,
    /// the leases this replica holds (a deadline lives in the memory of the
    /// replica holding it, which is why a heartbeat costs etcd nothing).
    /// Instances without a lease, or whose lease lapsed, are absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lease_left_ms: BTreeMap<String, u64>,
}

/// Counts of one service's instances by status, in `GET /v1/services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Instances with a current lease.
    pub passing: usize,
    /// Degraded instances.
    pub warning: usize,
    /// Expired or failing instances.
    pub critical: usize,
    /// Instances shutting down.
    pub draining: usize,
}

/// Why input was refused. The API turns this into a 400 or 422 with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    /// The offending field, when there is one.
    pub field: Option<String>,
    /// What is wrong, for a human.
    pub reason: String,
    /// Stable machine-readable code.
    pub code: &'static str,
}

impl Invalid {
    /// A field holds a value the registry cannot accept.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Invalid {
            field: Some(field.to_string()),
            reason: format!("{field}: {reason}"),
            code: "invalid_value",
        }
    }

    /// The body names a field the registry does not know.
    pub fn unknown_field(field: &str) -> Self {
        Invalid {
            field: Some(field.to_string()),
            reason: format!("unknown field {field:?}"),
            code: "unknown_field",
        }
    }

    /// The body names the same key twice in one object (`path` is where).
    pub fn duplicate_field(path: &str) -> Self {
        Invalid {
            field: Some(path.to_string()),
            reason: format!("duplicate field {path:?}: a key may appear only once in an object"),
            code: "duplicate_field",
        }
    }

    /// The body is not parseable at all.
    pub fn malformed(reason: impl Into<String>) -> Self {
        Invalid {
            field: None,
            reason: reason.into(),
            code: "malformed_body",
        }
    }
}

/// Checks a service name: a DNS label, `[a-z0-9-]`, 1..=63, no leading or trailing `-`.
pub fn validate_service_name(name: &str) -> Result<(), Invalid> {
    validate_name("service", name, false)
}

/// Checks an instance id: like a service name, but `.` and `_` are allowed
/// too, except for the ids `.` and `..` (see [`is_dot_segment`]).
pub fn validate_instance_id(id: &str) -> Result<(), Invalid> {
    validate_name("id", id, true)?;
    if is_dot_segment(id) {
        return Err(Invalid::field("id", DOT_SEGMENT_REASON));
    }
    Ok(())
}

/// Why a `.` or `..` name is refused.
pub const DOT_SEGMENT_REASON: &str =
    "must not be \".\" or \"..\": clients that normalise URL paths could not address it";

/// Whether a name is a dot segment (`.` or `..`). A name that travels as a
/// URL path segment must not be one: RFC 3986 clients (browsers, curl,
/// most HTTP libraries, proxies that normalise) remove or resolve it before
/// sending, so an instance called `..` could be registered by one client and
/// then never heartbeated or deleted by another.
pub fn is_dot_segment(name: &str) -> bool {
    name == "." || name == ".."
}

fn validate_name(field: &str, name: &str, id_chars: bool) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 63 {
        return Err(Invalid::field(field, "must be 1 to 63 characters"));
    }
    let ok = name.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'-'
            || (id_chars && (b == b'.' || b == b'_'))
    });
    if !ok {
        let allowed = if id_chars { "[a-z0-9-._]" } else { "[a-z0-9-]" };
        return Err(Invalid::field(field, format!("may only contain {allowed}")));
    }
    if !id_chars && (name.starts_with('-') || name.ends_with('-')) {
        return Err(Invalid::field(field, "must not start or end with '-'"));
    }
    Ok(())
}

/// Checks that an address is an IP literal or a syntactically valid hostname.
pub fn validate_address(address: &str) -> Result<(), Invalid> {
    if address.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        Invalid::field(
            "address",
            "must be an IP address or a hostname (labels of [A-Za-z0-9-], at most 253 characters)",
        )
    };
    if address.is_empty() || address.len() > 253 {
        return Err(bad());
    }
    let host = address.strip_suffix('.').unwrap_or(address);
    for label in host.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
    }
    // A dotted all-numeric name that did not parse as an IP is a typo, not a host.
    if host
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

fn validate_label(field: &str, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_LABEL_LEN {
        return Err(Invalid::field(
            field,
            format!("values must be at most {MAX_LABEL_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::field(
            field,
            "values must not contain control characters",
        ));
    }
    Ok(())
}

/// Refuses a JSON body that names a key twice in one object, at any depth.
///
/// serde keeps one of the two values without a word, so
/// `{"port":80,"port":81}` or a `meta` object with a repeated key would be
/// stored as whichever the parser saw last, and two readers of the same body
/// (a proxy, an audit log, the registry) could disagree on what it says. The
/// error names the key by its path (`port`, `meta.a`, `headers[0].name`). A
/// body that is not JSON at all passes: the real parser then says what is
/// wrong with it.
pub fn reject_duplicate_keys(body: &[u8]) -> Result<(), Invalid> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    match (UniqueKeys { path: "" }).deserialize(&mut de) {
        Ok(Some(path)) => Err(Invalid::duplicate_field(&path)),
        _ => Ok(()),
    }
}

/// Walks one JSON value, answering the path of the first key repeated in an
/// object (`None`: every object's keys are distinct).
struct UniqueKeys<'p> {
    path: &'p str,
}

impl UniqueKeys<'_> {
    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut i = 0;
        loop {
            let path = format!("{}[{i}]", self.path);
            let next = if found.is_some() {
                seq.next_element::<serde::de::IgnoredAny>()?.map(|_| None)
            } else {
                seq.next_element_seed(UniqueKeys { path: &path })?
            };
            match next {
                Some(dup) => found = found.or(dup),
                None => return Ok(found),
            }
            i += 1;
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut found = None;
        // `String` keys: escapes are decoded, so `"a"` and `"\u0061"` are the same key.
        while let Some(key) = map.next_key::<String>()? {
            let path = self.child(&key);
            if found.is_some() {
                map.next_value::<serde::de::IgnoredAny>()?;
            } else if !seen.insert(key) {
                found = Some(path);
                map.next_value::<serde::de::IgnoredAny>()?;
            } else {
                found = map.next_value_seed(UniqueKeys { path: &path })?;
            }
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------
// Gateway records (`/v1/gateways/{id}`; checks in the `gateway` module). Here,
// not there, because watch events carry them.

/// Lease of a gateway record when the body names none: renewed every
/// third of it, and a dead gateway's share of cluster limits goes back to
/// the others within it.
pub const DEFAULT_GATEWAY_TTL: Duration = Duration::from_secs(10);

/// The body of `PUT /v1/gateways/{id}`.
///
/// Not `deny_unknown_fields`: it is flattened into [`GatewayRecord`],
/// which serde could then not read back; [`GatewaySpec::from_json`]
/// refuses unknown fields itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewaySpec {
    /// Where the gateway listens for clients (`ip:port` or `host:port`).
    pub addresses: Vec<String>,
    /// The gateway's version (`portico --version`).
    pub version: String,
    /// The registry revision whose changes the gateway has applied to its
    /// routing table: compare with the registry's to see propagation lag.
    #[serde(default)]
    pub applied_revision: u64,
    /// Unix milliseconds when the gateway process started.
    #[serde(default)]
    pub started_at_ms: u64,
    /// The lease: the record is removed when not written again within it.
    #[serde(with = "duration_str", default = "default_gateway_ttl")]
    pub ttl: Duration,
    /// Requests per second this gateway saw lately for each cluster-scope
    /// rate limit, by limit id (`{route}/filters[{index}]`): what the
    /// other gateways divide the limit by.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub demand: std::collections::BTreeMap<String, f64>,
    /// The gateway's admin listener (`host:port`), when it runs one: where
    /// the registry asks for `/explain` on the dashboard's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// What each route saw on this gateway since its previous record, by
    /// route name (routes without requests left out): what the dashboard
    /// shows per gateway and route, as fresh as the renewal period.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub routes: std::collections::BTreeMap<String, RouteLoad>,
}

/// One route's traffic on one gateway over one renewal period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLoad {
    /// Responses per second.
    pub rps: f64,
    /// Share of those responses that were 5xx (the gateway's own included), 0..=1.
    pub error_rate: f64,
    /// 99th percentile of arrival to response head, in milliseconds (from
    /// the route's latency histogram: linear within the bucket it falls in).
    pub p99_ms: f64,
}

/// Demand values are checked finite ([`GatewaySpec::validate`]), so
/// equality is an equivalence, as watch events (which are `Eq`) need.
impl Eq for GatewaySpec {}

fn default_gateway_ttl() -> Duration {
    DEFAULT_GATEWAY_TTL
}

/// A gateway as stored and answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// The gateway's id (the URL's).
    pub id: String,
    /// What the gateway wrote.
    #[serde(flatten)]
    pub spec: GatewaySpec,
    /// Unix milliseconds when the registry first saw this id (carried over
    /// renewals; a record that lapsed and came back starts again).
    pub registered_at_ms: u64,
    /// Unix milliseconds of the last write (registration or renewal).
    pub renewed_at_ms: u64,
    /// Revision of the last write (stamped when read).
    #[serde(default)]
    pub revision: u64,
}

/// [`duration_str`] for an optional duration (absent or `null`: `None`).
pub mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration in humantime's format (`None` is skipped by the field).
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde adapter for durations written as strings such as `"10s"` or `"1m 30s"`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration in humantime's format.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Reads a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_without_a_ttl_means_no_lease() {
        let kept = InstanceSpec::from_json(
            br#"{"address":"a","port":1,"check":{"tcp":true,"deregister_critical_after":"90m"}}"#,
        )
        .unwrap();
        assert_eq!(kept.ttl, None);
        let check = kept.check.as_ref().unwrap();
        assert!(check.tcp && check.path.is_empty());
        assert_eq!(
            check.deregister_critical_after,
            Some(Duration::from_secs(5400))
        );
        let json = serde_json::to_string(&kept).unwrap();
        assert!(!json.contains("\"ttl\""), "{json}");
        assert_eq!(InstanceSpec::from_json(json.as_bytes()).unwrap(), kept);
        // A stored record reads back the same through serde.
        assert_eq!(serde_json::from_str::<InstanceSpec>(&json).unwrap(), kept);
        // With a ttl, the lease stays; without a check, the default lease.
        let both = br#"{"address":"a","port":1,"ttl":"5s","check":{"path":"/h"}}"#;
        assert_eq!(
            InstanceSpec::from_json(both).unwrap().ttl,
            Some(Duration::from_secs(5))
        );
        let plain = br#"{"address":"a","port":1}"#;
        assert_eq!(
            InstanceSpec::from_json(plain).unwrap().ttl,
            Some(DEFAULT_TTL)
        );
        for (body, field) in [
            (r#"{"tcp":true,"path":"/h"}"#, "check.path"),
            (r#"{"tcp":true,"grpc_service":"x"}"#, "check.tcp"),
            (r#"{"tcp":"yes"}"#, "check.tcp"),
            (r#"{"tcp":false}"#, "check.path"),
            (
                r#"{"tcp":true,"deregister_critical_after":"500ms"}"#,
                "check.deregister_critical_after",
            ),
            (
                r#"{"tcp":true,"deregister_critical_after":"200h"}"#,
                "check.deregister_critical_after",
            ),
            (
                r#"{"tcp":true,"deregister_critical_after":5}"#,
                "check.deregister_critical_after",
            ),
        ] {
            let body = format!(r#"{{"address":"a","port":1,"check":{body}}}"#);
            let e = InstanceSpec::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn a_grpc_check_names_its_service_and_round_trips() {
        let spec = InstanceSpec::from_json(
            br#"{"address":"127.0.0.1","port":9000,"scheme":"h2c","check":{"grpc_service":"pkg.Svc"}}"#,
        )
        .unwrap();
        let check = spec.check.as_ref().unwrap();
        assert_eq!(check.grpc_service.as_deref(), Some("pkg.Svc"));
        assert_eq!(check.path, crate::route::GRPC_HEALTH_PATH);
        // What the registry stores and serves is accepted back.
        let again = InstanceSpec::from_json(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
        for (body, field) in [
            (
                r#"{"address":"a","port":1,"check":{"path":"/h","grpc_service":"x"}}"#,
                "check.path",
            ),
            (
                r#"{"address":"a","port":1,"check":{"grpc_service":7}}"#,
                "check.grpc_service",
            ),
        ] {
            let e = InstanceSpec::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = InstanceSpec::from_json(br#"{"address":"10.0.0.1","port":8080}"#).unwrap();
        assert_eq!(spec.weight, DEFAULT_WEIGHT);
        assert_eq!(spec.ttl, Some(DEFAULT_TTL));
        assert_eq!(spec.scheme, Scheme::Http);
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let cases: &[(&str, &str)] = &[
            (r#"{"port":1}"#, "address"),
            (r#"{"address":"a..b","port":1}"#, "address"),
            (r#"{"address":"300.1.1.1","port":1}"#, "address"),
            (r#"{"address":"h","port":0}"#, "port"),
            (r#"{"address":"h","port":65536}"#, "port"),
            (r#"{"address":"h","port":"80"}"#, "port"),
            (r#"{"address":"h","port":1,"weight":0}"#, "weight"),
            (r#"{"address":"h","port":1,"weight":1001}"#, "weight"),
            (r#"{"address":"h","port":1,"scheme":"ftp"}"#, "scheme"),
            (r#"{"address":"h","port":1,"ttl":"0s"}"#, "ttl"),
            (r#"{"address":"h","port":1,"ttl":"2h"}"#, "ttl"),
            (r#"{"address":"h","port":1,"ttl":"soon"}"#, "ttl"),
            (r#"{"address":"h","port":1,"ttl":10}"#, "ttl"),
            (r#"{"address":"h","port":1,"tags":[1]}"#, "tags"),
            (r#"{"address":"h","port":1,"meta":{"a":1}}"#, "meta"),
            (r#"{"address":"h","port":1,"colour":"red"}"#, "colour"),
            (
                r#"{"address":"h","port":1,"check":{"path":"x"}}"#,
                "check.path",
            ),
            (
                r#"{"address":"h","port":1,"check":{"path":"/h","tls_skip_verify":"yes"}}"#,
                "check.tls_skip_verify",
            ),
            (
                r#"{"address":"h","port":1,"check":{"path":"/h","failures":0}}"#,
                "check.failures",
            ),
            (
                r#"{"address":"h","port":1,"check":{"path":"/h","interval":"1s","timeout":"5s"}}"#,
                "check.timeout",
            ),
            (
                r#"{"address":"h","port":1,"check":{"path":"/h","method":"HEAD"}}"#,
                "check.method",
            ),
        ];
        for (body, field) in cases {
            let err = InstanceSpec::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(*field), "{body}: {err}");
        }
    }

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(validate_service_name("web-1").is_ok());
        assert!(validate_service_name("Web").is_err());
        assert!(validate_service_name("-web").is_err());
        assert!(validate_service_name(&"a".repeat(64)).is_err());
        assert!(validate_service_name("a.b").is_err());
        assert!(validate_instance_id("web_1.a").is_ok());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("...").is_ok());
        for dots in [".", ".."] {
            let err = validate_instance_id(dots).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("id"), "{dots}");
        }
    }

    #[test]
    fn a_key_given_twice_is_named_by_its_path() {
        for (body, path) in [
            (r#"{"port":80,"port":81}"#, Some("port")),
            (r#"{"a":{"b":1,"c":{"d":1,"d":2}}}"#, Some("a.c.d")),
            (r#"{"h":[{"n":1},{"n":1,"n":2}]}"#, Some("h[1].n")),
            (r#"{"a":1,"\u0061":2}"#, Some("a")),
            (r#"{"a":{"x":1},"b":{"x":1}}"#, None),
            (r#"[{"x":1},{"x":2}]"#, None),
            (r#"{"a":1,"a""#, None),
        ] {
            let got = reject_duplicate_keys(body.as_bytes()).err();
            assert_eq!(
                got.as_ref().and_then(|e| e.field.as_deref()),
                path,
                "{body}"
            );
            if let Some(e) = got {
                assert_eq!(e.code, "duplicate_field");
            }
        }
        let err = InstanceSpec::from_json(br#"{"address":"h","port":1,"meta":{"k":"a","k":"b"}}"#)
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("meta.k"));
    }

    #[test]
    fn instance_round_trips_through_json() {
        let inst = Instance {
            service: "web".into(),
            id: "a".into(),
            spec: InstanceSpec::new("::1", 80),
            status: Status::Passing,
            registered_at_ms: 1,
            status_since_ms: 2,
            revision: 3,
            check_failing: false,
        };
        let json = serde_json::to_string(&inst).unwrap();
        assert!(json.contains("\"ttl\":\"30s\""), "{json}");
        let back: Instance = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inst);
        assert_eq!(inst.authority(), "[::1]:80");
    }
}
