//! Errors the gateway itself answers with, and the one place they become
//! HTTP: a status, a JSON body `{"error": "...", "code": "..."}` and the
//! header `x-portico-error` carrying the code. To a gRPC client the same
//! error is a trailers-only gRPC response instead ([`ProxyError::to_grpc_response`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::grpc::{Code, GRPC_MESSAGE, GRPC_STATUS, encode_message};

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
    /// A `rate_limit` filter refused the request.
    #[error("route {route:?}: rate limit exceeded, retry in {}s", limited.retry_after)]
    RateLimited {
        /// The route.
        route: String,
        /// What the 429 tells the client.
        limited: crate::filter::Limited,
    },
    /// An authentication filter found no valid credential (401).
    #[error("route {route:?}: authentication required: {reason}")]
    Unauthorized {
        /// The route.
        route: String,
        /// What was wrong (never the credential).
        reason: &'static str,
        /// The `WWW-Authenticate` challenge.
        challenge: HeaderValue,
    },
    /// A known consumer the route does not allow (403).
    #[error("route {route:?}: consumer {consumer:?} is not allowed")]
    Forbidden {
        /// The route.
        route: String,
        /// The consumer.
        consumer: std::sync::Arc<str>,
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
    /// A gRPC call's `grpc-timeout` header is malformed.
    #[error("{0}")]
    BadGrpcTimeout(#[from] crate::grpc::BadTimeout),
    /// A gRPC call's deadline (`grpc-timeout`) passed before an upstream
    /// answered.
    #[error(
        "the call's deadline ({timeout:?}, from grpc-timeout) passed before upstream {endpoint} answered"
    )]
    DeadlineExceeded {
        /// The endpoint of the last try.
        endpoint: String,
        /// The deadline the client gave.
        timeout: std::time::Duration,
    },
    /// A route's `ip_filter` does not allow the client's address (403).
    #[error("route {route:?} does not allow client address {client}")]
    AddressRefused {
        /// The route.
        route: String,
        /// The client's address (the one the gateway trusts).
        client: std::net::IpAddr,
    },
    /// A route's `forward_auth` service could not be asked (503): nothing
    /// is let through without its answer.
    #[error("route {route:?}: the auth service could not be asked: {reason}")]
    AuthUnavailable {
        /// The route.
        route: String,
        /// What went wrong.
        reason: String,
    },
    /// A CORS preflight the route's `cors` filter does not allow (403,
    /// without any `Access-Control-*` header).
    #[error("route {route:?} does not allow this cross-origin request")]
    CorsRefused {
        /// The route.
        route: String,
    },
    /// Something inside the gateway failed (an embedder's layer): 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// A custom filter the route lists could not be built on this gateway
    /// (not registered, or its settings refused): 503, nothing let through.
    #[error("route {route:?} cannot run its filters: {reason}")]
    FilterUnavailable {
        /// The route.
        route: String,
        /// Which filter and why.
        reason: String,
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
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Unauthorized { .. } => "unauthorized",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::BadHost(_) => "bad_host",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::HeaderName { .. } => "bad_header_name",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadBody(_) => "bad_request_body",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::BadGrpcTimeout(_) => "bad_grpc_timeout",
            ProxyError::DeadlineExceeded { .. } => "deadline_exceeded",
            ProxyError::AddressRefused { .. } => "address_refused",
            ProxyError::AuthUnavailable { .. } => "auth_unavailable",
            ProxyError::CorsRefused { .. } => "cors_refused",
            ProxyError::FilterUnavailable { .. } => "filter_unavailable",
            ProxyError::Internal(_) => "internal",
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
            ProxyError::UpstreamTimeout { .. } | ProxyError::DeadlineExceeded { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BadRequest(_)
            | ProxyError::BadGrpcTimeout(_)
            | ProxyError::BadHost(_)
            | ProxyError::BadPath(_)
            | ProxyError::HeaderName { .. }
            | ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::AddressRefused { .. } => StatusCode::FORBIDDEN,
            ProxyError::AuthUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::CorsRefused { .. } => StatusCode::FORBIDDEN,
            ProxyError::FilterUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status a gRPC client gets for this error, as Envoy maps
    /// them: a request that may succeed elsewhere or later is UNAVAILABLE
    /// (gRPC clients retry it when told to), time is DEADLINE_EXCEEDED, a
    /// limit is RESOURCE_EXHAUSTED, no route is UNIMPLEMENTED, and what is
    /// left follows gRPC's own mapping of HTTP statuses (401, 403, 429) or is
    /// INTERNAL.
    pub fn grpc_code(&self) -> Code {
        match self {
            ProxyError::NoRoute => Code::UNIMPLEMENTED,
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::UpstreamConnect { .. }
            // A failed handshake is a failed connect (Envoy says the same).
            | ProxyError::UpstreamTls { .. }
            // A reset or broken exchange: what a gRPC client reports when
            // its own connection breaks.
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::AuthUnavailable { .. }
            | ProxyError::FilterUnavailable { .. } => Code::UNAVAILABLE,
            ProxyError::UpstreamTimeout { .. } | ProxyError::DeadlineExceeded { .. } => {
                Code::DEADLINE_EXCEEDED
            }
            ProxyError::BodyTooLarge { .. } => Code::RESOURCE_EXHAUSTED,
            other => match other.status() {
                StatusCode::UNAUTHORIZED => Code::UNAUTHENTICATED,
                StatusCode::FORBIDDEN => Code::PERMISSION_DENIED,
                StatusCode::TOO_MANY_REQUESTS => Code::RESOURCE_EXHAUSTED,
                _ => Code::INTERNAL,
            },
        }
    }

    /// The response sent downstream: a gRPC client (`grpc`) gets
    /// [`ProxyError::to_grpc_response`], everyone else the JSON error.
    pub fn respond(&self, grpc: Option<crate::grpc::GrpcKind>) -> Response<Full<Bytes>> {
        match grpc {
            Some(kind) => self.to_grpc_response(kind),
            None => self.to_response(),
        }
    }

    /// A trailers-only gRPC response: HTTP 200 with `grpc-status`,
    /// `grpc-message` and `x-portico-error` in the head and no body, which
    /// every gRPC client reads as the call's status (gRPC-Web clients too).
    pub fn to_grpc_response(&self, kind: crate::grpc::GrpcKind) -> Response<Full<Bytes>> {
        let content_type = match kind {
            crate::grpc::GrpcKind::Native => "application/grpc",
            crate::grpc::GrpcKind::Web => "application/grpc-web",
            crate::grpc::GrpcKind::WebText => "application/grpc-web-text",
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(&GRPC_STATUS, self.grpc_code().header_value())
            .header(&GRPC_MESSAGE, encode_message(&self.to_string()))
            .header(ERROR_HEADER, HeaderValue::from_static(self.code()))
            .body(Full::new(Bytes::new()))
            .map(|mut resp| {
                self.add_headers(resp.headers_mut());
                resp
            })
            .expect("error responses are well-formed")
    }

    /// The response sent downstream.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        let mut resp = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header(ERROR_HEADER, HeaderValue::from_static(self.code()))
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("error responses are well-formed");
        self.add_headers(resp.headers_mut());
        resp
    }

    /// Headers an error carries beyond the code: a 429's `Retry-After` and
    /// `RateLimit-Policy` / `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09),
    /// a 401's `WWW-Authenticate` (RFC 9110 §11.6.1: a 401 must carry one).
    fn add_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            ProxyError::RateLimited { limited, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(limited.retry_after));
                headers.insert("ratelimit-policy", limited.policy.clone());
                headers.insert("ratelimit", limited.state.clone());
            }
            ProxyError::Unauthorized { challenge, .. } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::GrpcKind;
    use std::time::Duration;

    #[test]
    fn every_error_has_its_grpc_status() {
        let endpoint = || "e".to_string();
        let route = || "r".to_string();
        let cases: Vec<(ProxyError, Code)> = vec![
            (ProxyError::NoRoute, Code::UNIMPLEMENTED),
            (
                ProxyError::NoHealthyUpstream { route: route() },
                Code::UNAVAILABLE,
            ),
            (
                ProxyError::CircuitOpen { route: route() },
                Code::UNAVAILABLE,
            ),
            (
                ProxyError::Overloaded {
                    route: route(),
                    limit: 1,
                },
                Code::UNAVAILABLE,
            ),
            (
                ProxyError::UpstreamConnect {
                    endpoint: endpoint(),
                },
                Code::UNAVAILABLE,
            ),
            (
                ProxyError::UpstreamProtocol {
                    endpoint: endpoint(),
                    reason: "reset".into(),
                },
                Code::UNAVAILABLE,
            ),
            (
                ProxyError::UpstreamTimeout {
                    endpoint: endpoint(),
                    timeout: Duration::from_secs(1),
                },
                Code::DEADLINE_EXCEEDED,
            ),
            (
                ProxyError::DeadlineExceeded {
                    endpoint: endpoint(),
                    timeout: Duration::from_secs(1),
                },
                Code::DEADLINE_EXCEEDED,
            ),
            (
                ProxyError::BodyTooLarge { limit: 1 },
                Code::RESOURCE_EXHAUSTED,
            ),
            (ProxyError::BadRequest("path"), Code::INTERNAL),
            (ProxyError::BadBody("cut off"), Code::INTERNAL),
            (
                ProxyError::BodyTimeout {
                    timeout: Duration::from_secs(1),
                },
                Code::INTERNAL,
            ),
            (
                ProxyError::UpstreamTls {
                    endpoint: endpoint(),
                    reason: "unknown issuer".into(),
                },
                Code::UNAVAILABLE,
            ),
            (
                ProxyError::Unauthorized {
                    route: route(),
                    reason: "no API key",
                    challenge: HeaderValue::from_static("ApiKey"),
                },
                Code::UNAUTHENTICATED,
            ),
            (
                ProxyError::Forbidden {
                    route: route(),
                    consumer: "c".into(),
                },
                Code::PERMISSION_DENIED,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.grpc_code(), code, "{error}");
        }
    }

    #[test]
    fn a_grpc_client_gets_a_trailers_only_answer() {
        use http_body::Body as _;
        let r = ProxyError::NoRoute.respond(Some(GrpcKind::Native));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "no route matches this request");
        assert_eq!(r.headers()[ERROR_HEADER], "no_route");
        assert!(r.body().is_end_stream(), "no body: trailers-only");
        let web = ProxyError::NoRoute.respond(Some(GrpcKind::WebText));
        assert_eq!(web.headers()["content-type"], "application/grpc-web-text");
        let plain = ProxyError::NoRoute.respond(None);
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);
        // A 401 carries its challenge to gRPC clients too.
        let unauth = ProxyError::Unauthorized {
            route: "r".into(),
            reason: "no API key",
            challenge: HeaderValue::from_static("ApiKey realm=\"portico\""),
        };
        let r = unauth.respond(Some(GrpcKind::Native));
        assert_eq!(r.headers()["grpc-status"], "16");
        assert_eq!(r.headers()["www-authenticate"], "ApiKey realm=\"portico\"");
        assert_eq!(unauth.respond(None).status(), StatusCode::UNAUTHORIZED);
    }
}
