//! `api_key`: a consumer's key, from a header or a query parameter, looked
//! up by its SHA-256 among the consumers the registry delivered (a key
//! found is then remembered by its fingerprint: see [`ConsumerStore`]).
//!
//! The key is removed from the request before it goes upstream (the
//! upstream never learns a credential it did not issue), and the
//! consumer's name is passed in `consumer_header` instead, after removing
//! whatever the client sent in it.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Uri};
use portico_registry::filter::ApiKey;

use super::{AuthRefusal, ConsumerStore};

/// `WWW-Authenticate` of a 401: there is no registered scheme for API
/// keys, so the challenge names one (`ApiKey`) with where the key goes,
/// as RFC 9110 §11.6.1 lets a server do.
fn challenge(config: &ApiKey) -> HeaderValue {
    let mut text = String::from("ApiKey realm=\"portico\"");
    if let Some(h) = &config.header {
        text.push_str(&format!(", header=\"{h}\""));
    }
    if let Some(q) = &config.query {
        text.push_str(&format!(", query=\"{q}\""));
    }
    HeaderValue::from_str(&text).expect("header and parameter names are valid in a header")
}

/// Checks the request's key; on success the request carries the
/// consumer's name instead of the key.
pub fn authenticate(
    config: &ApiKey,
    consumers: &ConsumerStore,
    headers: &mut HeaderMap,
    uri: &mut Uri,
) -> Result<Arc<str>, AuthRefusal> {
    headers.remove(&config.consumer_header);
    let from_header = config.header.as_ref().and_then(|h| headers.remove(h));
    let from_query = config.query.as_deref().and_then(|q| take_query(uri, q));
    let key = match (&from_header, &from_query) {
        (Some(v), _) => v.as_bytes(),
        (None, Some(k)) => k.as_bytes(),
        (None, None) => return Err(unauthorized(config, "no API key")),
    };
    let consumer = consumers
        .lookup(key)
        .ok_or_else(|| unauthorized(config, "unknown API key"))?;
    if let Some(allowed) = &config.consumers
        && !allowed.iter().any(|a| **a == *consumer)
    {
        return Err(AuthRefusal::Forbidden { consumer });
    }
    let value = HeaderValue::from_str(&consumer)
        .expect("a consumer name (the route name rule) is a valid header value");
    headers.insert(config.consumer_header.clone(), value);
    Ok(consumer)
}

fn unauthorized(config: &ApiKey, reason: &'static str) -> AuthRefusal {
    AuthRefusal::Unauthorized {
        reason,
        challenge: challenge(config),
    }
}

/// Removes every `name=value` pair from the query, answering the first
/// value (percent-decoded; `+` is kept as is: keys have no spaces).
fn take_query(uri: &mut Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    let mut found = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_none() {
                found = Some(percent_decode(v));
            }
        } else {
            kept.push(pair);
        }
    }
    let found = found?;
    let path = uri.path();
    let rebuilt = match kept.is_empty() {
        true => path.to_string(),
        false => format!("{path}?{}", kept.join("&")),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        rebuilt
            .parse()
            .expect("a path and query cut from a valid URI are valid"),
    );
    *uri = Uri::from_parts(parts).expect("a valid URI with a shorter query is valid");
    found
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_parameter_is_cut_from_the_query() {
        let mut uri: Uri = "/a/b?x=1&key=abc%2Fdef&y=2&key=other".parse().unwrap();
        assert_eq!(take_query(&mut uri, "key").as_deref(), Some("abc/def"));
        assert_eq!(uri, "/a/b?x=1&y=2");
        let mut uri: Uri = "/a?key=k".parse().unwrap();
        assert_eq!(take_query(&mut uri, "key").as_deref(), Some("k"));
        assert_eq!(uri, "/a");
        let mut uri: Uri = "/a?keys=k".parse().unwrap();
        assert_eq!(take_query(&mut uri, "key"), None);
        assert_eq!(uri, "/a?keys=k");
    }
}
