//! `redirect`: the route answers with a redirect and sends nothing
//! upstream. What the filter does not name (scheme, host, path) stays the
//! request's; the query string is always kept.

use http::HeaderValue;
use portico_registry::filter::{Redirect, RedirectPath};

use crate::host::RequestHost;

/// What the redirected request was.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Whether it came over TLS.
    pub secure: bool,
    /// Its host, if it named one.
    pub host: Option<&'a RequestHost>,
    /// Its normalised path.
    pub path: &'a str,
    /// Bytes of `path` the route's prefix covered.
    pub prefix_len: usize,
    /// Its query string, as received.
    pub query: Option<&'a str>,
}

/// The `Location` of `redirect` for a request; `None` when it needs the
/// request's host and the request named none.
///
/// When only the scheme changes, the request's port is dropped (the new
/// scheme's default port is meant, as Envoy's `https_redirect` does); name
/// a `host` with a port to keep one.
pub fn location(redirect: &Redirect, from: &Origin<'_>) -> Option<HeaderValue> {
    let own = if from.secure { "https" } else { "http" };
    let scheme = redirect.scheme.unwrap_or(own);
    let host = match &redirect.host {
        Some(h) => h.as_str(),
        None if scheme != own => from.host?.name(),
        None => from.host?.value.to_str().ok()?,
    };
    let path = match &redirect.path {
        Some(RedirectPath::Whole(p)) => p.clone(),
        Some(RedirectPath::Prefix(p)) => {
            super::rewrite::replace_prefix(from.path, from.prefix_len, p)
        }
        None => from.path.to_string(),
    };
    let mut url = String::with_capacity(scheme.len() + host.len() + path.len() + 8);
    url.push_str(scheme);
    url.push_str("://");
    if host.contains(':') && !host.starts_with('[') && host.matches(':').count() > 1 {
        // A bare IPv6 name (the request's, port dropped).
        url.push('[');
        url.push_str(host);
        url.push(']');
    } else {
        url.push_str(host);
    }
    url.push_str(&path);
    if let Some(q) = from.query {
        url.push('?');
        url.push_str(q);
    }
    HeaderValue::try_from(url).ok()
}
