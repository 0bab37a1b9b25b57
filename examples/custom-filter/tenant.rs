//! A custom filter an embedder might write: every request must name a known
//! tenant in a header. The tenant becomes the request's consumer (so a
//! built-in `rate_limit` keyed by `consumer` counts each tenant apart), is
//! passed upstream in a header, named on the response, and counted.
//!
//! ```toml
//! [[route.filters]]
//! type = "custom"
//! name = "tenant"
//! settings = { allowed = ["acme", "globex"], header = "x-tenant" }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use portico_gateway::config::Config;
use portico_gateway::service::DownstreamLayer;
use portico_gateway::{
    Filter, FilterAnswer, FilterRegistry, FilterRequest, GatewayOptions, LogEntry, ResponseHead,
    SettingsError, Stage, UpstreamRequest,
};
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

/// The name routes use for this filter.
pub const NAME: &str = "tenant";

/// The header naming the tenant upstream and on the response.
pub const TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");

/// The filter's settings, as a route writes them. Unknown settings are
/// refused (with their name) by `deny_unknown_fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The tenants allowed.
    pub allowed: Vec<String>,
    /// The request header naming the tenant (default `x-tenant`).
    #[serde(default)]
    pub header: Option<String>,
}

/// The filter built from one route's settings.
#[derive(Debug)]
pub struct TenantFilter {
    header: HeaderName,
    allowed: Vec<String>,
    /// Requests answered, by tenant and status (what `on_log` saw).
    pub served: Served,
}

/// What the request phase learned, kept for the later phases.
#[derive(Debug, Clone)]
struct Tenant(HeaderValue);

impl TenantFilter {
    /// Checks the settings: at least one tenant, each a valid header value,
    /// and a valid header name.
    pub fn new(settings: Settings) -> Result<TenantFilter, SettingsError> {
        if settings.allowed.is_empty() {
            return Err(SettingsError::new(
                "allowed",
                "must name at least one tenant",
            ));
        }
        for (i, t) in settings.allowed.iter().enumerate() {
            if t.is_empty() || HeaderValue::from_str(t).is_err() {
                return Err(SettingsError::new(
                    format!("allowed[{i}]"),
                    format!("{t:?} is not a tenant name"),
                ));
            }
        }
        let name = settings.header.as_deref().unwrap_or("x-tenant");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SettingsError::new("header", format!("{name:?} is not a header name")))?;
        Ok(TenantFilter {
            header,
            allowed: settings.allowed,
            served: Arc::default(),
        })
    }
}

/// A JSON answer, in the gateway's own error shape.
fn answer(status: StatusCode, code: &str, message: &str) -> FilterAnswer {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a well-formed answer")
}

#[async_trait::async_trait]
impl Filter for TenantFilter {
    /// With authentication: the tenant is who calls.
    fn stage(&self) -> Stage {
        Stage::Authentication
    }

    async fn on_request(&self, req: &mut FilterRequest<'_>) -> Result<(), FilterAnswer> {
        let Some(value) = req.headers.get(&self.header) else {
            let message = format!("the {} header is required", self.header);
            return Err(answer(StatusCode::UNAUTHORIZED, "no_tenant", &message));
        };
        let tenant = value.to_str().unwrap_or_default();
        if !self.allowed.iter().any(|t| t == tenant) {
            return Err(answer(
                StatusCode::FORBIDDEN,
                "unknown_tenant",
                "tenant not allowed",
            ));
        }
        *req.consumer = Some(tenant.into());
        req.extensions.insert(Tenant(value.clone()));
        // The upstream learns the tenant from the header the gateway sets,
        // never from the client's own.
        req.headers.remove(&TENANT_ID);
        Ok(())
    }

    fn on_upstream_request(&self, req: &mut UpstreamRequest<'_>) {
        if let Some(Tenant(t)) = req.extensions.get::<Tenant>() {
            req.headers.insert(TENANT_ID, t.clone());
        }
    }

    fn on_response(&self, resp: &mut ResponseHead<'_>) {
        if let Some(Tenant(t)) = resp.extensions.get::<Tenant>() {
            resp.headers.insert(TENANT_ID, t.clone());
        }
    }

    fn on_log(&self, entry: &LogEntry<'_>) {
        let tenant = match entry.extensions.get::<Tenant>() {
            Some(Tenant(t)) => t.to_str().unwrap_or("-").to_string(),
            None => "-".to_string(),
        };
        let mut served = self.served.lock().expect("not poisoned");
        *served.entry((tenant, entry.status.as_u16())).or_default() += 1;
    }
}

/// Requests answered, by tenant (`-` when none was accepted) and status.
pub type Served = Arc<Mutex<BTreeMap<(String, u16), u64>>>;

/// The example's gateway: `config`'s routes, the tenant filter registered
/// (counting into `served`), and tower-http's `SetResponseHeaderLayer`
/// around every request (`server: portico-example`).
pub fn gateway_options(config: Config, served: Served) -> GatewayOptions {
    let mut filters = FilterRegistry::new();
    register(&mut filters, served);
    GatewayOptions {
        config,
        filters,
        layer: Some(DownstreamLayer::new(SetResponseHeaderLayer::overriding(
            header::SERVER,
            HeaderValue::from_static("portico-example"),
        ))),
        ..GatewayOptions::default()
    }
}

/// Registers the filter in `registry` under [`NAME`]; every filter built
/// adds its counts to `served`.
pub fn register(registry: &mut FilterRegistry, served: Served) {
    registry.register(NAME, move |settings: Settings| {
        let mut filter = TenantFilter::new(settings)?;
        filter.served = served.clone();
        Ok(filter)
    });
}
