//! Phase 1, the request filter at the edge: refuse what is malformed or over
//! a limit before routing, and settle the host and the normalised path that
//! the router and the upstream will both see.
//!
//! The policies, their defaults and why (documented for operators in
//! docs/configuration.md):
//!
//! - Host: [`crate::host`] (400 for missing, repeated or invalid).
//! - Path: [`crate::path`] (400 for what cannot be normalised safely).
//! - Request target longer than [`DEFAULT_MAX_URI`] (8 KiB, nginx's
//!   default buffer for a request line): 414.
//! - Header names with an underscore: dropped by default, as nginx does
//!   (`underscores_in_headers off`). A CGI-style backend maps `X_Forwarded_For`
//!   and `X-Forwarded-For` to the same variable, so a client could otherwise
//!   pass a header the gateway is meant to set. `reject` answers 400 (Envoy's
//!   edge setting); `allow` passes them.
//! - Request bodies over [`DEFAULT_MAX_BODY`] (32 MiB; a route may set its
//!   own): 413, before reading when `Content-Length` says so, and as soon as
//!   a body without one crosses it. Bodies stream, so the gateway's memory
//!   does not grow with the limit; the limit protects upstreams.
//! - The client's body: at most [`DEFAULT_BODY_READ_TIMEOUT`] (60 s,
//!   nginx's `client_body_timeout`) without a byte, then 408.
//! - `CONNECT`: 405 (a reverse proxy is not a tunnel service).

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, Method, Request};

use crate::error::ProxyError;
use crate::host::{RequestHost, request_host};
use crate::path::{PathPolicy, normalize};
use crate::router::RequestView;

/// Default longest request target (path and query, or absolute URI).
pub const DEFAULT_MAX_URI: usize = 8 * 1024;
/// Default largest request body.
pub const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;
/// Default longest wait for the client's next body bytes.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do with request header names that contain `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscorePolicy {
    /// Remove them before forwarding (the default, like nginx).
    #[default]
    Drop,
    /// Refuse the request with 400.
    Reject,
    /// Pass them on.
    Allow,
}

impl UnderscorePolicy {
    /// Parses a flag value (`drop`, `reject`, `allow`).
    pub fn parse(s: &str) -> Result<UnderscorePolicy, String> {
        match s {
            "drop" => Ok(UnderscorePolicy::Drop),
            "reject" => Ok(UnderscorePolicy::Reject),
            "allow" => Ok(UnderscorePolicy::Allow),
            other => Err(format!("{other:?}: expected drop, reject or allow")),
        }
    }
}

/// An IP network: the registry's type, so `--trusted-proxies` and a
/// route's `ip_filter` read networks the same way.
pub use portico_registry::filter::Cidr;

/// What the gateway accepts at its edge.
#[derive(Debug, Clone)]
pub struct EdgePolicy {
    /// Path normalisation.
    pub path: PathPolicy,
    /// Longest request target in bytes.
    pub max_uri: usize,
    /// Header names with underscores.
    pub underscores: UnderscorePolicy,
    /// Peers whose forwarding headers are kept (appended to): load
    /// balancers or proxies in front of the gateway. Everyone else's are
    /// replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// Largest request body for routes that set none (`None`: unlimited).
    pub max_body: Option<u64>,
    /// Longest wait for the client's next request body bytes.
    pub body_read_timeout: Duration,
}

impl Default for EdgePolicy {
    fn default() -> Self {
        EdgePolicy {
            path: PathPolicy::default(),
            max_uri: DEFAULT_MAX_URI,
            underscores: UnderscorePolicy::default(),
            trusted_proxies: Vec::new(),
            max_body: Some(DEFAULT_MAX_BODY),
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

impl EdgePolicy {
    /// Whether `ip` is a trusted hop.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// What the request filter settled: the host and path routed on and sent.
#[derive(Debug)]
pub(crate) struct Front {
    /// The request's host, if it names one.
    pub host: Option<RequestHost>,
    /// The normalised path, when it differs from the request's.
    pub path: Option<String>,
}

impl Front {
    /// The path to route on and send: normalised.
    pub fn path<'a, B>(&'a self, req: &'a Request<B>) -> &'a str {
        self.path.as_deref().unwrap_or_else(|| req.uri().path())
    }

    /// What the router looks at.
    pub fn view<'a, B>(&'a self, req: &'a Request<B>) -> RequestView<'a> {
        RequestView {
            host: self.host.as_ref().map(RequestHost::name),
            path: self.path(req),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        }
    }
}

/// Where a cleartext request is sent to be made again over HTTPS: the same
/// host, path and query, on `port` (left out when it is 443, or `None`).
pub(crate) fn https_location<B>(
    front: &Front,
    req: &Request<B>,
    port: Option<u16>,
) -> Result<http::HeaderValue, ProxyError> {
    let host = front
        .host
        .as_ref()
        .map(RequestHost::name)
        .ok_or(ProxyError::BadRequest("a redirect to HTTPS needs a Host"))?;
    let mut url = String::with_capacity(16 + host.len() + req.uri().path().len());
    url.push_str("https://");
    if host.contains(':') && !host.starts_with('[') {
        url.push('[');
        url.push_str(host);
        url.push(']');
    } else {
        url.push_str(host);
    }
    if let Some(port) = port.filter(|p| *p != 443) {
        url.push(':');
        url.push_str(&port.to_string());
    }
    // As received: the client asks again for exactly what it asked.
    url.push_str(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    http::HeaderValue::try_from(url).map_err(|_| ProxyError::BadRequest("path"))
}

/// Phase 1: refuses what the edge does not accept; settles host and path.
pub(crate) fn check<B>(req: &Request<B>, policy: &EdgePolicy) -> Result<Front, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    let uri = req.uri();
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target_len > policy.max_uri {
        return Err(ProxyError::UriTooLong {
            limit: policy.max_uri,
        });
    }
    let host = request_host(req)?;
    let path = normalize(uri.path(), &policy.path)?;
    if policy.underscores == UnderscorePolicy::Reject
        && let Some(name) = req.headers().keys().find(|k| k.as_str().contains('_'))
    {
        return Err(ProxyError::HeaderName {
            name: name.as_str().to_string(),
        });
    }
    Ok(Front {
        host,
        path: match path {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(p) => Some(p),
        },
    })
}

/// The client's address as the gateway trusts it: the peer's own, unless
/// the peer is a trusted hop (`--trusted-proxies`); then the nearest
/// address in `X-Forwarded-For`, read from the right, that is not a
/// trusted hop itself (nginx's `real_ip_recursive on`). Every hop to the
/// right of it was trusted to append truthfully; anything to its left
/// was written by the client and is not believed. An entry that is not an
/// address stops the walk at the last hop believed, and a list of trusted
/// hops only answers its leftmost.
pub fn client_ip(
    policy: &EdgePolicy,
    peer: IpAddr,
    peer_trusted: bool,
    headers: &HeaderMap,
) -> IpAddr {
    if !peer_trusted {
        return peer;
    }
    let mut believed = peer;
    let values = headers.get_all(&X_FORWARDED_FOR).iter().rev();
    for entry in values.flat_map(|v| v.to_str().unwrap_or("").rsplit(',')) {
        let Ok(addr) = entry.trim().parse::<IpAddr>() else {
            return believed;
        };
        if !policy.is_trusted(addr) {
            return addr;
        }
        believed = addr;
    }
    believed
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_untrusted_forwarded_address() {
        let policy = EdgePolicy {
            trusted_proxies: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            ..EdgePolicy::default()
        };
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.7".parse().unwrap());
        assert_eq!(
            client_ip(&policy, peer, true, &h),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // From an untrusted peer, the header is not read.
        assert_eq!(client_ip(&policy, peer, false, &h), peer);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.9, 10.0.0.8".parse().unwrap());
        assert_eq!(
            client_ip(&policy, peer, true, &h),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, junk, 10.0.0.8".parse().unwrap(),
        );
        assert_eq!(
            client_ip(&policy, peer, true, &h),
            "10.0.0.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&policy, peer, true, &HeaderMap::new()), peer);
    }
}
