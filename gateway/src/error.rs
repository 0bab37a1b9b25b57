//! Errors the gateway itself answers with, and the one place they become
//! HTTP: a status, a JSON body `{"error": "...", "code": "..."}` and the
//! header `x-portico-error` carrying the code.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Header naming the error code on every response the gateway makes itself.
pub const ERROR_HEADER: &str = "x-portico-error";

/// A request the gateway could not proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route matches this request")]
    NoRoute,
    /// The route matched but has no endpoint to send to.
    #[error("route {route:?} has no healthy upstream")]
    NoHealthyUpstream {
        /// The matched route.
        route: String,
    },
    /// The upstream could not be connected to.
    #[error("could not connect to upstream {endpoint}")]
    UpstreamConnect {
        /// The endpoint tried.
        endpoint: String,
    },
    /// The upstream broke the protocol or the connection.
    #[error("upstream {endpoint} failed: {reason}")]
    UpstreamProtocol {
        /// The endpoint tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream {endpoint} did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// The endpoint tried.
        endpoint: String,
        /// The route's timeout.
        timeout: std::time::Duration,
    },
    /// The TLS handshake with an `https` upstream failed (or its TLS
    /// setting could not be loaded).
    #[error("upstream {endpoint}: TLS failed: {reason}")]
    UpstreamTls {
        /// The endpoint tried.
        endpoint: String,
        /// What the handshake or the setting refused.
        reason: String,
    },
    /// The route is at one of its overload limits.
    #[error("route {route:?} is at an overload limit ({limit} in flight)")]
    Overloaded {
        /// The route.
        route: String,
        /// The limit reached.
        limit: u32,
    },
    /// Every endpoint's circuit is open.
    #[error("every endpoint of route {route:?} has an open circuit")]
    CircuitOpen {
        /// The route.
        route: String,
    },
    /// The request is malformed in a way hyper let through.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request's Host (or `:authority`) is missing, repeated or invalid.
    #[error("{0}")]
    BadHost(#[from] crate::host::HostError),
    /// The request path cannot be normalised safely.
    #[error("{0}")]
    BadPath(#[from] crate::path::PathError),
    /// The request target is longer than the gateway accepts.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong {
        /// The limit.
        limit: usize,
    },
    /// A header name the gateway refuses (an underscore, by policy).
    #[error("header name {name:?} is refused: it contains an underscore")]
    HeaderName {
        /// The name.
        name: String,
    },
    /// A method a gateway does not proxy (`CONNECT`).
    #[error("method {0} is not allowed through this gateway")]
    MethodNotAllowed(http::Method),
    /// The request body is (or declares to be) larger than the route allows.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The client's body framing was broken, or it went away mid-body.
    #[error("the request body could not be read: {0}")]
    BadBody(&'static str),
    /// The client stopped sending its body for longer than allowed.
    #[error("the client sent no request body bytes for {timeout:?}")]
    BodyTimeout {
        /// The body read timeout.
        timeout: std::time::Duration,
    },
}

impl ProxyError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::UpstreamConnect { .. } => "upstream_connect",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::BadHost(_) => "bad_host",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::HeaderName { .. } => "bad_header_name",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadBody(_) => "bad_request_body",
            ProxyError::BodyTimeout { .. } => "body_timeout",
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_)
            | ProxyError::BadHost(_)
            | ProxyError::BadPath(_)
            | ProxyError::HeaderName { .. }
            | ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The response sent downstream.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header(ERROR_HEADER, HeaderValue::from_static(self.code()))
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("error responses are well-formed")
    }
}
