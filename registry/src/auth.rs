//! Bearer tokens with roles on the registry's REST API.
//!
//! The control plane decides where traffic goes, so anyone who can write to it
//! can redirect or black-hole a service. A [`Tokens`] table, built from
//! `--token` flags and a tokens file, gives each secret a [`Grant`]: a
//! [`Role`] and, for `register`, optionally the services it may touch.
//! [`protect`] wraps the API router in a middleware that checks
//! `Authorization: Bearer <token>` before any handler runs, so a refused call
//! changes nothing.
//!
//! The middleware classifies a request by its method and path alone
//! ([`classify`]), not by the route that matched, so an endpoint added later
//! is covered without being listed here: reads need any token, writes on an
//! instance need `register` (or `admin`), every other write needs `admin`.
//!
//! With no tokens configured [`protect`] adds nothing and the API is open, as
//! it always was; [`check_exposure`] refuses to run it that way on a
//! non-loopback address unless asked to.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::lock::ACME_CERTIFICATE_PREFIX;
use crate::model::validate_service_name;

/// The `WWW-Authenticate` challenge sent with every 401.
pub const CHALLENGE: &str = r#"Bearer realm="portico""#;

/// Random bytes in a minted secret (hex-encoded, so twice as many characters).
const MINTED_BYTES: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every read: lists, blocking queries, the watch stream (with
    /// certificates reduced to their summaries: no key material).
    Read,
    /// What a gateway needs: every read, and the watch stream with the
    /// certificates' PEM chains and keys, which gateways serve; the only
    /// writes are ACME coordination and gateway records
    /// ([`Need::Coordination`]).
    Gateway,
    /// Reads, plus register, heartbeat, drain and deregister instances
    /// (of the grant's services only, when it names some).
    Register,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses a role name as written in flags and the tokens file.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "read" => Some(Role::Read),
            "gateway" => Some(Role::Gateway),
            "register" => Some(Role::Register),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name, as it is written in flags and the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Gateway => "gateway",
            Role::Register => "register",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one token is allowed: a role, and for `register` the services it is
/// limited to (empty: every service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's role.
    pub role: Role,
    /// Services a `register` token may write to; empty means all of them.
    pub services: Vec<String>,
}

impl Grant {
    /// Whether this grant covers a request that needs `need`.
    pub fn allows(&self, need: &Need<'_>) -> bool {
        match need {
            Need::Nothing | Need::Read => true,
            Need::Instance { service } => match self.role {
                Role::Admin => true,
                Role::Register => {
                    self.services.is_empty() || self.services.iter().any(|s| s == service)
                }
                Role::Read | Role::Gateway => false,
            },
            Need::SomeInstance => matches!(self.role, Role::Register | Role::Admin),
            Need::Coordination => matches!(self.role, Role::Gateway | Role::Admin),
            Need::Admin => self.role == Role::Admin,
        }
    }

    /// Whether the watch stream may carry certificate keys to this token:
    /// gateways serve them, admins wrote them; `read` and `register`
    /// tokens (dashboards, services) never see one.
    pub fn may_hold_keys(&self) -> bool {
        matches!(self.role, Role::Gateway | Role::Admin)
    }
}

/// A secret and what it grants.
#[derive(Clone)]
struct Token {
    secret: Box<[u8]>,
    grant: Grant,
}

/// The token table: every secret the registry accepts.
///
/// `Debug` shows roles only, never secrets, so the table can sit in options
/// structs that get logged.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tokens.iter().map(|t| &t.grant))
            .finish()
    }
}

/// Why a token table could not be built. Each names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The tokens file could not be read.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// The tokens file is not valid TOML or has unknown keys.
    #[error("{0}")]
    Syntax(String),
    /// A token is impossible.
    #[error("{field}: {reason}")]
    Invalid {
        /// Where: `token[1].role`, `--token #2`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TokensError {
    TokensError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A service name rule broken, reported under `field`.
fn check_service(field: String, name: &str) -> Result<(), TokensError> {
    validate_service_name(name).map_err(|e| {
        let reason = e.reason.strip_prefix("service: ").unwrap_or(&e.reason);
        invalid(field, reason)
    })
}

/// The tokens file: `[[token]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    secret: String,
    // A string, not `Role`, so an unknown role is reported by field name
    // rather than by serde's position-only message.
    role: String,
    #[serde(default)]
    services: Option<Vec<String>>,
}

impl Tokens {
    /// Whether no token is configured (the API is then open).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Reads a tokens file (see [`Tokens::from_toml`]).
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        Self::from_toml(&std::fs::read_to_string(path)?)
    }

    /// Parses a tokens file:
    ///
    /// ```toml
    /// [[token]]
    /// secret = "..."
    /// role = "register"      # admin | register | gateway | read
    /// services = ["web"]     # optional, register only
    /// ```
    ///
    /// A file with no token is refused: it is far more likely a mistake than
    /// a wish to run open, which is what no tokens means.
    pub fn from_toml(text: &str) -> Result<Tokens, TokensError> {
        let file: TokensFile =
            toml::from_str(text).map_err(|e| TokensError::Syntax(e.to_string()))?;
        if file.token.is_empty() {
            return Err(invalid("token", "the file holds no [[token]] table"));
        }
        let mut tokens = Tokens::default();
        for (i, entry) in file.token.into_iter().enumerate() {
            let field = |key: &str| format!("token[{i}].{key}");
            let role = Role::parse(&entry.role).ok_or_else(|| {
                invalid(
                    field("role"),
                    format!(
                        "unknown role {:?}: expected admin, register, gateway or read",
                        entry.role
                    ),
                )
            })?;
            let services = match entry.services {
                None => Vec::new(),
                Some(list) => {
                    if list.is_empty() {
                        return Err(invalid(
                            field("services"),
                            "an empty list would allow nothing; leave it out to allow every service",
                        ));
                    }
                    for (j, s) in list.iter().enumerate() {
                        check_service(format!("token[{i}].services[{j}]"), s)?;
                    }
                    list
                }
            };
            tokens.insert(&field("secret"), entry.secret, Grant { role, services })?;
        }
        Ok(tokens)
    }

    /// Adds a token given on the command line as `ROLE:SECRET`, or
    /// `register[web,api]:SECRET` to limit a register token to services.
    /// `field` names the flag in errors (`--token #2`). The secret is
    /// everything after the first `:`, so it may itself hold colons.
    pub fn add_flag(&mut self, field: &str, spec: &str) -> Result<(), TokensError> {
        let (role_part, secret) = spec.split_once(':').ok_or_else(|| {
            invalid(
                field,
                "expected ROLE:SECRET or register[SERVICE,...]:SECRET",
            )
        })?;
        let (name, services) = match role_part.split_once('[') {
            None => (role_part, Vec::new()),
            Some((name, rest)) => {
                let list = rest.strip_suffix(']').ok_or_else(|| {
                    invalid(field, "a service list must end with ']' before the ':'")
                })?;
                let services: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
                for s in &services {
                    check_service(format!("{field}: service {s:?}"), s)?;
                }
                (name, services)
            }
        };
        let role = Role::parse(name).ok_or_else(|| {
            invalid(
                field,
                format!("unknown role {name:?}: expected admin, register, gateway or read"),
            )
        })?;
        self.insert(field, secret.to_string(), Grant { role, services })
    }

    /// Adds a fresh random token with `role` and returns its secret.
    ///
    /// `portico up` mints a read token for its in-process gateway, which
    /// follows the registry over HTTP like any other gateway; the secret
    /// lives only in this process's memory.
    pub fn mint(&mut self, role: Role) -> String {
        let mut bytes = [0u8; MINTED_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.insert(
            "minted token",
            secret.clone(),
            Grant {
                role,
                services: Vec::new(),
            },
        )
        .expect("256 random bits are a valid, unique secret");
        secret
    }

    fn insert(&mut self, field: &str, secret: String, grant: Grant) -> Result<(), TokensError> {
        if secret.is_empty() {
            return Err(invalid(field, "the secret is empty"));
        }
        // Visible ASCII only: anything else cannot travel in a header reliably,
        // and a stray space or newline from a copy-paste would never match.
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                field,
                "the secret must be visible ASCII without spaces",
            ));
        }
        if grant.role != Role::Register && !grant.services.is_empty() {
            return Err(invalid(
                field,
                format!(
                    "only a register token can be limited to services, not {}",
                    grant.role
                ),
            ));
        }
        // Configuration time, not request time: no need for constant time here.
        if self.tokens.iter().any(|t| *t.secret == *secret.as_bytes()) {
            return Err(invalid(field, "the same secret is given twice"));
        }
        self.tokens.push(Token {
            secret: secret.into_bytes().into_boxed_slice(),
            grant,
        });
        Ok(())
    }

    /// The grant of the token whose secret is `presented`, if any.
    ///
    /// Every secret is compared in full, without stopping at the first
    /// mismatching byte or the first match, so the time taken does not tell
    /// an attacker how much of a guess was right. Lengths are compared
    /// openly: a secret's length is not what keeps it secret.
    pub fn find(&self, presented: &[u8]) -> Option<&Grant> {
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&token.secret, presented) {
                found = Some(&token.grant);
            }
        }
        found
    }
}

/// Byte equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// What a request needs, decided from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Health probes: open, so orchestrators need no secret.
    Nothing,
    /// Any valid token.
    Read,
    /// A write on an instance of `service`: `register` (covering it) or `admin`.
    Instance {
        /// The service segment of the path, exactly as sent.
        service: &'a str,
    },
    /// What gateways do to coordinate (ACME locks, challenge answers, the
    /// `acme-*` certificates they order, and their own gateway records):
    /// `gateway` or `admin`.
    Coordination,
    /// A write on an instance whose service the path does not name (the
    /// Consul API: `/v1/agent/service/register`, `/v1/agent/check/pass/{id}`):
    /// `register` or `admin`. The handler checks a `register` grant limited
    /// to some services once it knows the service (the grant is handed to
    /// it in the request's extensions).
    SomeInstance,
    /// `admin` only.
    Admin,
}

/// Classifies a request. Generic on purpose: an endpoint added later falls
/// into a class without being named here.
///
/// - any method on the Consul API's writes (`/v1/agent/service/register`,
///   `/v1/agent/service/deregister/{id}`, `/v1/agent/check/...`), which
///   older Consul clients send as GET: [`Need::SomeInstance`].
/// - `GET`/`HEAD` on `/healthz` or `/readyz`, or on the dashboard's static
///   files (`/ui`, `/ui/...`): [`Need::Nothing`].
/// - `GET`/`HEAD` on `/v1/consumers` or below: [`Need::Admin`] (who may
///   call which routes, and their metadata, is an operator's business).
/// - any other `GET`/`HEAD` (lists, blocking queries, `/v1/watch`): [`Need::Read`].
/// - any other method on `/v1/services/{service}/instances/{id}` or below it:
///   [`Need::Instance`].
/// - any other method on `/v1/gateways/{id}` (a gateway's own record):
///   [`Need::Coordination`]. A token names a role, not a gateway, so a
///   gateway token may write any gateway's record, and nothing else new.
/// - any other method on `/v1/locks/{name}`, `/v1/challenges/{token}` or
///   `/v1/certificates/acme-{name}`: [`Need::Coordination`] (a gateway
///   ordering an ACME certificate for the fleet writes these, and only
///   these: the `acme-` prefix keeps operators' certificates out of its
///   reach).
/// - any other method anywhere else: [`Need::Admin`].
///
/// The service is taken from the raw path. A percent-encoded name never
/// equals a configured one (names are `[a-z0-9-]`), so it is refused rather
/// than decoded.
pub fn classify<'a>(method: &Method, path: &'a str) -> Need<'a> {
    if path == "/v1/agent/service/register"
        || path.starts_with("/v1/agent/service/deregister/")
        || path.starts_with("/v1/agent/check/")
    {
        return Need::SomeInstance;
    }
    if *method == Method::GET || *method == Method::HEAD {
        return match path {
            "/healthz" | "/readyz" => Need::Nothing,
            // The dashboard's static files hold no data; its data calls
            // carry the token like any client's.
            p if p == "/ui" || p.starts_with("/ui/") => Need::Nothing,
            p if p == "/v1/consumers" || p.starts_with("/v1/consumers/") => Need::Admin,
            _ => Need::Read,
        };
    }
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("v1"), Some("services"), Some(service), Some("instances"), Some(id))
            if !service.is_empty() && !id.is_empty() =>
        {
            Need::Instance { service }
        }
        (Some("v1"), Some("locks" | "challenges" | "gateways"), Some(name), None, _)
            if !name.is_empty() =>
        {
            Need::Coordination
        }
        (Some("v1"), Some("certificates"), Some(name), None, _)
            if name.len() > ACME_CERTIFICATE_PREFIX.len()
                && name.starts_with(ACME_CERTIFICATE_PREFIX) =>
        {
            Need::Coordination
        }
        _ => Need::Admin,
    }
}

/// Whether `path` is on the Consul API, whose clients send their token as
/// `X-Consul-Token` or `?token=` and read refusals as plain text.
fn is_consul(path: &str) -> bool {
    ["/v1/agent/", "/v1/catalog/", "/v1/health/", "/v1/status/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The secret a request presents: `Authorization: Bearer`, and on the
/// Consul API also `X-Consul-Token` or `?token=` (Consul's own ways; not
/// elsewhere, so the native API keeps one way and tokens stay out of its
/// URLs and logs).
fn presented(req: &Request) -> Option<Cow<'_, [u8]>> {
    if let Some(secret) = bearer(req.headers()) {
        return Some(Cow::Borrowed(secret));
    }
    if !is_consul(req.uri().path()) {
        return None;
    }
    if let Some(v) = req.headers().get("x-consul-token") {
        return Some(Cow::Borrowed(v.as_bytes()));
    }
    let query = req.uri().query()?;
    let uri: axum::http::Uri = format!("/?{query}").parse().ok()?;
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs
        .0
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| Cow::Owned(v.into_bytes()))
}

/// A refusal on the Consul API: 403 and a line of plain text, as Consul
/// answers every ACL refusal (its clients read 401 as "ACLs disabled").
fn consul_refusal(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        message,
    )
        .into_response()
}

/// The secret of an `Authorization: Bearer <secret>` header.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

/// Wraps `router` so every request is authorised against `tokens` before a
/// handler sees it. With no tokens it returns `router` unchanged: no layer,
/// no cost, the API open as before.
///
/// The layer goes around the whole router, fallbacks included, so an unknown
/// path or method is refused (401/403) before the caller can learn anything
/// from a 404 or 405.
pub fn protect(router: Router, tokens: Tokens) -> Router {
    if tokens.is_empty() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(tokens),
        authorize,
    ))
}

async fn authorize(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    let need = classify(req.method(), req.uri().path());
    if need == Need::Nothing {
        return next.run(req).await;
    }
    let consul = is_consul(req.uri().path());
    let Some(presented) = presented(&req) else {
        tracing::debug!(method = %req.method(), path = req.uri().path(), "refused: no bearer token");
        if consul {
            return consul_refusal(
                "Permission denied: no token (send X-Consul-Token, ?token= or \
                 Authorization: Bearer)"
                    .into(),
            );
        }
        return unauthorized("missing bearer token: send Authorization: Bearer <token>");
    };
    let Some(grant) = tokens.find(&presented) else {
        tracing::debug!(method = %req.method(), path = req.uri().path(), "refused: unknown token");
        if consul {
            return consul_refusal("ACL not found".into());
        }
        return unauthorized("unknown token");
    };
    let keys = KeyAccess(grant.may_hold_keys());
    if !grant.allows(&need) {
        // A known client doing what it may not is worth an operator's eye,
        // unlike the unauthenticated noise above.
        tracing::info!(method = %req.method(), path = req.uri().path(), role = %grant.role, "refused: role too weak");
        let needed = match need {
            Need::Instance { service } => {
                format!("a register token for service {service:?} or an admin token")
            }
            Need::SomeInstance => "a register or an admin token".to_string(),
            Need::Coordination => "a gateway or an admin token".to_string(),
            _ => "an admin token".to_string(),
        };
        if consul {
            return consul_refusal(format!(
                "Permission denied: this {} token may not do this: it needs {needed}",
                grant.role
            ));
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this {} token may not do this: it needs {needed}",
                grant.role
            ),
        )
        .into_response();
    }
    let hand_grant = need == Need::SomeInstance;
    let mut req = req;
    req.extensions_mut().insert(keys);
    if hand_grant {
        req.extensions_mut().insert(grant.clone());
    }
    next.run(req).await
}

/// Whether the caller's token may receive certificate keys, put in the
/// request's extensions once it is authorised. Absent when the API runs
/// without tokens: it is then open, to keys as to writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAccess(pub bool);

fn unauthorized(message: &'static str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    resp
}

/// A control plane that would be open to the network.
#[derive(Debug, thiserror::Error)]
#[error(
    "the control address {addr} is not loopback and no token is configured: anyone who can reach it \
     could register, drain or remove instances. Give tokens (--token ROLE:SECRET or --tokens-file), \
     or pass --insecure to run it open anyway"
)]
pub struct OpenControlPlane {
    /// The address it would listen on.
    pub addr: SocketAddr,
}

/// Decides whether a control plane on `addr` may start with `tokens`. Call it
/// before binding anything, so a refused start leaves no socket behind.
///
/// Open on loopback is allowed with a warning (only local processes can
/// reach it: the single-machine `portico up` case); open on any other
/// address needs `insecure`.
pub fn check_exposure(
    addr: SocketAddr,
    tokens: &Tokens,
    insecure: bool,
) -> Result<(), OpenControlPlane> {
    if !tokens.is_empty() {
        return Ok(());
    }
    if addr.ip().is_loopback() {
        tracing::warn!(%addr, "registry API is open (no tokens): any local process can change it");
    } else if insecure {
        tracing::warn!(%addr, "registry API is open to the network (no tokens, --insecure)");
    } else {
        return Err(OpenControlPlane { addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Tokens, TokensError>) -> String {
        r.expect_err("should be refused").to_string()
    }

    #[test]
    fn tokens_file_parses_roles_and_services() {
        let t = Tokens::from_toml(
            r#"
            [[token]]
            secret = "adm"
            role = "admin"
            [[token]]
            secret = "reg"
            role = "register"
            services = ["web", "api"]
            [[token]]
            secret = "rd"
            role = "read"
            "#,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.find(b"adm").unwrap().role, Role::Admin);
        let reg = t.find(b"reg").unwrap();
        assert_eq!(reg.role, Role::Register);
        assert_eq!(reg.services, ["web", "api"]);
        assert_eq!(t.find(b"rd").unwrap().role, Role::Read);
        assert!(t.find(b"nope").is_none());
        assert!(t.find(b"ad").is_none(), "a prefix is not the secret");
        assert!(t.find(b"").is_none());
    }

    #[test]
    fn tokens_file_errors_name_the_field() {
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"a\"\nrole = \"admin\"\n[[token]]\nsecret = \"b\"\nrole = \"writer\"\n",
        ));
        assert!(
            e.starts_with("token[1].role: unknown role \"writer\""),
            "{e}"
        );
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"\"\nrole = \"read\"\n",
        ));
        assert_eq!(e, "token[0].secret: the secret is empty");
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"s\"\nrole = \"read\"\n[[token]]\nsecret = \"s\"\nrole = \"admin\"\n",
        ));
        assert_eq!(e, "token[1].secret: the same secret is given twice");
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"s\"\nrole = \"read\"\nroles = \"x\"\n",
        ));
        assert!(e.contains("unknown field `roles`"), "{e}");
        let e = err(Tokens::from_toml("[[tokens]]\nsecret = \"s\"\n"));
        assert!(e.contains("unknown field `tokens`"), "{e}");
        let e = err(Tokens::from_toml("[[token]]\nrole = \"read\"\n"));
        assert!(e.contains("missing field `secret`"), "{e}");
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"s\"\nrole = \"read\"\nservices = [\"web\"]\n",
        ));
        assert!(
            e.starts_with("token[0].secret: only a register token can be limited"),
            "{e}"
        );
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"s\"\nrole = \"register\"\nservices = [\"web\", \"Bad\"]\n",
        ));
        assert!(e.starts_with("token[0].services[1]: "), "{e}");
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"s\"\nrole = \"register\"\nservices = []\n",
        ));
        assert!(e.starts_with("token[0].services: "), "{e}");
        let e = err(Tokens::from_toml(
            "[[token]]\nsecret = \"with space\"\nrole = \"read\"\n",
        ));
        assert!(e.starts_with("token[0].secret: "), "{e}");
        let e = err(Tokens::from_toml(""));
        assert!(e.contains("no [[token]]"), "{e}");
    }

    #[test]
    fn flag_form_parses_and_refuses_naming_the_flag() {
        let mut t = Tokens::default();
        t.add_flag("--token #1", "admin:a:b:c").unwrap();
        t.add_flag("--token #2", "register[web, api]:r").unwrap();
        t.add_flag("--token #3", "register:any").unwrap();
        t.add_flag("--token #4", "read:rd").unwrap();
        assert_eq!(t.find(b"a:b:c").unwrap().role, Role::Admin);
        assert_eq!(t.find(b"r").unwrap().services, ["web", "api"]);
        assert!(t.find(b"any").unwrap().services.is_empty());
        assert_eq!(t.find(b"rd").unwrap().role, Role::Read);

        let bad = |spec: &str| {
            let mut t = Tokens::default();
            t.add_flag("--token #1", "admin:taken").unwrap();
            t.add_flag("--token #2", spec).unwrap_err().to_string()
        };
        assert!(bad("nosecret").starts_with("--token #2: expected ROLE:SECRET"));
        assert!(bad("writer:x").starts_with("--token #2: unknown role \"writer\""));
        assert_eq!(bad("read:"), "--token #2: the secret is empty");
        assert_eq!(
            bad("read:taken"),
            "--token #2: the same secret is given twice"
        );
        assert!(bad("register[web:x").starts_with("--token #2: a service list must end"));
        assert!(bad("register[Web]:x").starts_with("--token #2: service \"Web\""));
        assert!(bad("register[]:x").starts_with("--token #2: service \"\""));
        assert!(bad("admin[web]:x").starts_with("--token #2: only a register token"));
    }

    #[test]
    fn minted_tokens_are_long_random_and_distinct() {
        let mut t = Tokens::default();
        let a = t.mint(Role::Read);
        let b = t.mint(Role::Read);
        assert_eq!(a.len(), 2 * MINTED_BYTES);
        assert_ne!(a, b);
        assert_eq!(t.find(a.as_bytes()).unwrap().role, Role::Read);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut t = Tokens::default();
        t.add_flag("--token", "admin:hunter2hunter2").unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Admin"), "{shown}");
    }

    #[test]
    fn classification_is_by_method_and_path_shape() {
        let c = |m: Method, p| classify(&m, p);
        assert_eq!(c(Method::GET, "/healthz"), Need::Nothing);
        assert_eq!(c(Method::HEAD, "/readyz"), Need::Nothing);
        assert_eq!(c(Method::GET, "/ui/"), Need::Nothing);
        assert_eq!(c(Method::GET, "/ui/app.js"), Need::Nothing);
        assert_eq!(c(Method::GET, "/uix"), Need::Read);
        assert_eq!(c(Method::GET, "/v1/explain"), Need::Read);
        assert_eq!(c(Method::POST, "/ui/"), Need::Admin);
        assert_eq!(c(Method::POST, "/healthz"), Need::Admin);
        assert_eq!(c(Method::GET, "/v1/services"), Need::Read);
        assert_eq!(c(Method::GET, "/v1/watch"), Need::Read);
        assert_eq!(c(Method::GET, "/v1/routes/x"), Need::Read);
        assert_eq!(c(Method::GET, "/v1/consumers/x"), Need::Admin);
        assert_eq!(c(Method::GET, "/v1/consumers"), Need::Admin);
        assert_eq!(c(Method::GET, "/v1/services/web/instances/a"), Need::Read);
        let web = Need::Instance { service: "web" };
        assert_eq!(c(Method::PUT, "/v1/services/web/instances/a"), web);
        assert_eq!(c(Method::DELETE, "/v1/services/web/instances/a"), web);
        assert_eq!(
            c(Method::PUT, "/v1/services/web/instances/a/heartbeat"),
            web
        );
        assert_eq!(c(Method::POST, "/v1/services/web/instances/a/drain"), web);
        assert_eq!(
            c(Method::PATCH, "/v1/services/web/instances/a/anything/new"),
            web
        );
        assert_eq!(c(Method::PUT, "/v1/routes/r"), Need::Admin);
        assert_eq!(c(Method::DELETE, "/v1/routes/r"), Need::Admin);
        assert_eq!(c(Method::POST, "/v1/services"), Need::Admin);
        assert_eq!(c(Method::POST, "/v1/services/web/instances"), Need::Admin);
        assert_eq!(c(Method::PUT, "/v1/services/web/instances/"), Need::Admin);
        assert_eq!(c(Method::PUT, "/v1/services//instances/a"), Need::Admin);
        assert_eq!(c(Method::PUT, "/v2/services/web/instances/a"), Need::Admin);
        assert_eq!(c(Method::OPTIONS, "/"), Need::Admin);
        let co = Need::Coordination;
        assert_eq!(c(Method::PUT, "/v1/locks/acme:a.example"), co);
        assert_eq!(c(Method::DELETE, "/v1/locks/acme:a.example"), co);
        assert_eq!(c(Method::PUT, "/v1/challenges/tok"), co);
        assert_eq!(c(Method::PUT, "/v1/certificates/acme-a.example"), co);
        assert_eq!(c(Method::PUT, "/v1/certificates/acme-"), Need::Admin);
        assert_eq!(c(Method::PUT, "/v1/certificates/web"), Need::Admin);
        assert_eq!(c(Method::PUT, "/v1/locks/a/b"), Need::Admin);
        assert_eq!(c(Method::GET, "/v1/locks/a"), Need::Read);
        assert_eq!(c(Method::PUT, "/v1/gateways/edge-1"), co);
        assert_eq!(c(Method::DELETE, "/v1/gateways/edge-1"), co);
        assert_eq!(c(Method::PUT, "/v1/gateways"), Need::Admin);
        assert_eq!(c(Method::GET, "/v1/gateways"), Need::Read);
    }

    #[test]
    fn consul_writes_need_a_register_token_whatever_the_method() {
        for (method, path) in [
            (Method::PUT, "/v1/agent/service/register"),
            (Method::GET, "/v1/agent/service/deregister/web-1"),
            (Method::GET, "/v1/agent/check/pass/service:web-1"),
            (Method::PUT, "/v1/agent/check/update/service:web-1"),
        ] {
            assert_eq!(
                classify(&method, path),
                Need::SomeInstance,
                "{method} {path}"
            );
        }
        assert_eq!(classify(&Method::GET, "/v1/agent/services"), Need::Read);
        assert_eq!(classify(&Method::GET, "/v1/health/service/web"), Need::Read);
        let g = |role| Grant {
            role,
            services: vec!["web".into()],
        };
        assert!(g(Role::Register).allows(&Need::SomeInstance));
        assert!(!g(Role::Read).allows(&Need::SomeInstance));
        assert!(!g(Role::Gateway).allows(&Need::SomeInstance));
    }

    #[test]
    fn grants_allow_by_role_and_service() {
        let g = |role, services: &[&str]| Grant {
            role,
            services: services.iter().map(|s| s.to_string()).collect(),
        };
        let web = Need::Instance { service: "web" };
        let api = Need::Instance { service: "api" };
        for any in [
            g(Role::Read, &[]),
            g(Role::Register, &["x"]),
            g(Role::Admin, &[]),
        ] {
            assert!(any.allows(&Need::Read) && any.allows(&Need::Nothing));
        }
        assert!(!g(Role::Read, &[]).allows(&web));
        assert!(!g(Role::Read, &[]).allows(&Need::Admin));
        assert!(g(Role::Register, &[]).allows(&web));
        assert!(g(Role::Register, &["web"]).allows(&web));
        assert!(!g(Role::Register, &["web"]).allows(&api));
        assert!(!g(Role::Register, &[]).allows(&Need::Admin));
        assert!(g(Role::Admin, &[]).allows(&api));
        assert!(g(Role::Admin, &[]).allows(&Need::Admin));
        assert!(g(Role::Gateway, &[]).allows(&Need::Coordination));
        assert!(g(Role::Admin, &[]).allows(&Need::Coordination));
        assert!(!g(Role::Register, &[]).allows(&Need::Coordination));
        assert!(!g(Role::Read, &[]).allows(&Need::Coordination));
        assert!(!g(Role::Gateway, &[]).allows(&Need::Admin));
    }

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&h("bearer  abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn an_open_control_plane_must_be_loopback_or_insecure() {
        let open = Tokens::default();
        let mut secured = Tokens::default();
        secured.add_flag("--token", "read:r").unwrap();
        let lo: SocketAddr = "127.0.0.1:9080".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9080".parse().unwrap();
        assert!(check_exposure(lo, &open, false).is_ok());
        assert!(check_exposure(lo6, &open, false).is_ok());
        let e = check_exposure(any, &open, false).unwrap_err().to_string();
        assert!(
            e.contains("--insecure") && e.contains("0.0.0.0:9080"),
            "{e}"
        );
        assert!(check_exposure(any, &open, true).is_ok());
        assert!(check_exposure(any, &secured, false).is_ok());
    }
}
