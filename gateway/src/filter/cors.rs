//! `cors`: Cross-Origin Resource Sharing (the Fetch standard's CORS
//! protocol), answered at the gateway.
//!
//! - A **preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) is answered here and never reaches
//!   the upstream, before authentication (a browser sends no credentials
//!   with it). Allowed: 204 with `Access-Control-Allow-Methods`,
//!   `-Allow-Headers` and `-Max-Age`. Refused (an origin, method or header
//!   not listed): 403 `cors_refused` without any `Access-Control-*`
//!   header, which the browser reads as a refusal; a 403 rather than a bare
//!   204 so the access log says which preflights were turned away.
//! - Any other request from an allowed origin gets
//!   `Access-Control-Allow-Origin` (the origin, or `*` when every origin is
//!   allowed without credentials), `-Allow-Credentials`, `-Expose-Headers`
//!   and `Vary: Origin` (unless `*`) on whatever answers it: the
//!   upstream's response, and the gateway's own refusals too (a 401 or 429
//!   a script cannot read is an opaque network error to it). A disallowed
//!   origin gets none of them.
//!
//! Why not tower-http's `CorsLayer`: it wraps a whole service, while a
//! route's filters run inside the proxy's phases per route (and must
//! answer preflights before authentication, and decorate the gateway's
//! own errors); the protocol itself is a few comparisons.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use portico_registry::filter::Cors;

/// One `cors` filter, its header values made once.
#[derive(Debug)]
pub struct CorsFilter {
    config: Cors,
    methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

fn joined<T: AsRef<str>>(list: &[T]) -> Option<HeaderValue> {
    let text = list
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    (!text.is_empty())
        .then(|| HeaderValue::from_str(&text).expect("checked names join into a value"))
}

impl CorsFilter {
    /// The filter for `config`.
    pub fn new(config: &Cors) -> CorsFilter {
        let wild = || Some(HeaderValue::from_static("*"));
        CorsFilter {
            config: config.clone(),
            methods: config.methods.as_deref().and_then(joined),
            allow_headers: config.allow_headers.as_deref().and_then(joined),
            expose_headers: match &config.expose_headers {
                Some(list) => joined(list),
                None => wild(),
            },
            max_age: config.max_age.map(HeaderValue::from),
        }
    }

    /// Whether the request is a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The request's `Origin`, when it is one the route allows.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        match &self.config.origins {
            None => Some(origin.clone()),
            Some(list) => {
                let text = origin.to_str().ok()?;
                list.iter()
                    .any(|o| o.eq_ignore_ascii_case(text))
                    .then(|| origin.clone())
            }
        }
    }

    /// The answer to a preflight, or `None` to refuse it. The
    /// `Access-Control-Allow-Origin` side is added with every answer's
    /// ([`CorsFilter::decorate`]).
    pub fn preflight(&self, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        self.allowed_origin(headers)?;
        let method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let method_ok = match &self.config.methods {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| m.as_str().as_bytes() == method.as_bytes()),
        };
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers_ok = match (&self.config.allow_headers, asked) {
            (_, None) | (None, Some(_)) => true,
            (Some(list), Some(asked)) => asked.to_str().ok().is_some_and(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .all(|n| list.iter().any(|h| h.as_str().eq_ignore_ascii_case(n)))
            }),
        };
        if !method_ok || !headers_ok {
            return None;
        }
        let mut resp = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(
                header::VARY,
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            )
            .body(Full::new(Bytes::new()))
            .expect("a preflight answer is well-formed");
        let out = resp.headers_mut();
        // A wildcard list answers with what was asked: `*` would not cover
        // `Authorization`, and echoing is what the wildcard means.
        let methods = self.methods.clone().unwrap_or_else(|| method.clone());
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        let allowed = match &self.config.allow_headers {
            None => asked.cloned(),
            Some(_) => self.allow_headers.clone(),
        };
        if let Some(h) = allowed {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h);
        }
        if let Some(age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        Some(resp)
    }

    /// Marks an answer to an allowed `origin` readable by its script.
    /// Replaces what an upstream set in the same headers: the route's
    /// policy is the gateway's.
    pub fn decorate(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        let any = self.config.origins.is_none() && !self.config.credentials;
        let value = match any {
            true => HeaderValue::from_static("*"),
            false => origin.clone(),
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if !any {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.config.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}
