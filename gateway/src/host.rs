//! Which host a request is for, decided once: the router matches on it and
//! the upstream receives exactly it.
//!
//! The rules (RFC 9112 §3.2, RFC 9113 §8.3.1), and what Portico answers:
//!
//! - HTTP/1.1: exactly one `Host` header, with a valid value, or 400
//!   (missing, repeated and invalid alike). An absolute-form target
//!   (`GET http://a.example/x`) carries the authority that counts: it
//!   replaces `Host` for routing and for the upstream.
//! - HTTP/1.0: `Host` is optional; when present the same rules hold.
//! - HTTP/2: `:authority` wins; a `host` header that names another host is
//!   refused (400), a matching one is dropped in favour of `:authority`.
//!
//! A valid value is `name[:port]` where the name is a DNS-style name
//! (letters, digits, `-`, `_`, `.`, no empty label), an IPv4 address, or a
//! bracketed IPv6 literal, and the port is 1 to 5 digits. Userinfo, paths,
//! spaces and anything else are refused: `Host: a b` and
//! `Host: internal.example/x` are not hosts.

use http::header::{self, HeaderValue};
use http::{Request, Version};

/// The request's host: the value forwarded upstream and the name routed on.
#[derive(Debug, Clone)]
pub struct RequestHost {
    /// As forwarded (`Host` for HTTP/1.1 upstreams, `:authority` for HTTP/2),
    /// port included when the client gave one.
    pub value: HeaderValue,
    /// Where the name is within `value`, when it needs no lower-casing (the
    /// common case: no copy per request).
    span: (usize, usize),
    /// The lower-cased name, when `value` has upper-case letters.
    lowered: Option<Box<str>>,
}

impl RequestHost {
    /// Lower-case, without port or trailing dot: what routes match.
    pub fn name(&self) -> &str {
        match &self.lowered {
            Some(l) => l,
            None => self
                .value
                .to_str()
                .ok()
                .and_then(|s| s.get(self.span.0..self.span.1))
                .expect("the host was checked to be ASCII"),
        }
    }
}

/// Why a request's host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// HTTP/1.1 without `Host`.
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    /// More than one `Host` header.
    #[error("the request has more than one Host header")]
    Repeated,
    /// Not a host name, address or port.
    #[error("the Host header is not a valid host")]
    Invalid,
    /// HTTP/2 `host` naming another host than `:authority`.
    #[error("the host header disagrees with :authority")]
    Conflict,
}

/// Decides the host of `req` (`None`: an HTTP/1.0 or HTTP/2 request that
/// names none; routes with hosts then do not match it).
pub fn request_host<B>(req: &Request<B>) -> Result<Option<RequestHost>, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    let authority = req.uri().authority().map(|a| a.as_str());
    let value = match (req.version(), authority, host) {
        (Version::HTTP_2, Some(a), Some(h)) if !a.eq_ignore_ascii_case(to_str(h)?) => {
            return Err(HostError::Conflict);
        }
        // HTTP/2 `:authority`, or an HTTP/1 absolute-form target, wins.
        (v, Some(a), h) => {
            if v == Version::HTTP_11 && h.is_none() {
                return Err(HostError::Missing);
            }
            // Shared from the start: the proxy clones it into the fields it
            // adds (`buffers::shared_copy`).
            let copy = crate::buffers::shared_copy(a.as_bytes());
            HeaderValue::from_maybe_shared(copy).map_err(|_| HostError::Invalid)?
        }
        (_, None, Some(h)) => h.clone(),
        (Version::HTTP_11, None, None) => return Err(HostError::Missing),
        (_, None, None) => return Ok(None),
    };
    let text = to_str(&value)?;
    let name = route_name(text)?;
    let start = usize::from(text.starts_with('['));
    let span = (start, start + name.len());
    let lowered = name
        .bytes()
        .any(|b| b.is_ascii_uppercase())
        .then(|| name.to_ascii_lowercase().into_boxed_str());
    Ok(Some(RequestHost {
        value,
        span,
        lowered,
    }))
}

fn to_str(v: &HeaderValue) -> Result<&str, HostError> {
    v.to_str().map_err(|_| HostError::Invalid)
}

/// Checks `authority` (`name[:port]`) and returns its name without port,
/// brackets or trailing dot (not yet lower-cased: routes match
/// [`RequestHost::name`], which is).
pub fn route_name(authority: &str) -> Result<&str, HostError> {
    let (name, port) = split_port(authority)?;
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(HostError::Invalid);
    }
    let name = if let Some(v6) = name.strip_prefix('[') {
        let inner = v6.strip_suffix(']').ok_or(HostError::Invalid)?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| HostError::Invalid)?;
        inner
    } else {
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if !is_dns_name(trimmed) {
            return Err(HostError::Invalid);
        }
        trimmed
    };
    Ok(name)
}

/// Splits `host[:port]`, minding IPv6 brackets.
fn split_port(authority: &str) -> Result<(&str, Option<&str>), HostError> {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (name, rest) = authority.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(port) => Ok((name, Some(port))),
                    None if rest.is_empty() => Ok((name, None)),
                    None => Err(HostError::Invalid),
                }
            }
            None => Err(HostError::Invalid),
        };
    }
    // A byte scan: a host is a few bytes, shorter than a searcher's set-up.
    Ok(match authority.bytes().position(|b| b == b':') {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    })
}

/// Letters, digits, `-` and `_` in non-empty labels of at most 63
/// characters, at most 253 in all (an IPv4 address passes as such a name).
///
/// One pass over the bytes (every request's host goes through here;
/// splitting on dots cost about three times as many instructions).
fn is_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let mut label = 0;
    for b in name.bytes() {
        if b == b'.' {
            if label == 0 {
                return false;
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return false;
            }
        } else {
            return false;
        }
    }
    label > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(version: Version, uri: &str, hosts: &[&str]) -> Result<Option<String>, HostError> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        let req = b.body(()).unwrap();
        request_host(&req).map(|h| h.map(|h| format!("{}|{}", h.value.to_str().unwrap(), h.name())))
    }

    /// The rule [`is_dns_name`] implements, written the plain way.
    fn dns_name_by_labels(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    }

    #[test]
    fn the_one_pass_name_check_agrees_with_the_rule() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let mut cases: Vec<String> = [
            "",
            ".",
            "a",
            "a.",
            ".a",
            "a..b",
            "a.b",
            "a-b_c.d9",
            "127.0.0.1",
            "a b",
            "a/b",
            "a:b",
            "\u{e9}.example",
            "A.EXAMPLE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push(format!("{long}.{long}"));
        cases.push(format!("{too_long}.a"));
        cases.push(format!("a.{too_long}"));
        cases.push([long.as_str(); 4].join("."));
        // 253 bytes, then 254.
        let three = [long.as_str(); 3].join(".");
        cases.push(format!("{three}.{}", "a".repeat(61)));
        cases.push(format!("{three}.{}", "a".repeat(62)));
        // Every string of up to four bytes over an alphabet with each kind
        // of byte the rule tells apart.
        let alphabet = ['a', 'Z', '0', '-', '_', '.', ' ', ':', '\u{e9}'];
        let mut short = vec![String::new()];
        for _ in 0..4 {
            short = short
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            cases.extend(short.iter().cloned());
        }
        for name in &cases {
            assert_eq!(is_dns_name(name), dns_name_by_labels(name), "{name:?}");
        }
    }

    #[test]
    fn http11_needs_one_valid_host() {
        let v = Version::HTTP_11;
        assert_eq!(host_of(v, "/x", &[]), Err(HostError::Missing));
        assert_eq!(host_of(v, "/x", &["a", "b"]), Err(HostError::Repeated));
        assert_eq!(host_of(v, "/x", &["a b"]), Err(HostError::Invalid));
        assert_eq!(
            host_of(v, "/x", &["internal.example/x"]),
            Err(HostError::Invalid)
        );
        assert_eq!(host_of(v, "/x", &["u@a.example"]), Err(HostError::Invalid));
        assert_eq!(host_of(v, "/x", &["a..b"]), Err(HostError::Invalid));
        assert_eq!(host_of(v, "/x", &["a:80:90"]), Err(HostError::Invalid));
        assert_eq!(host_of(v, "/x", &[""]), Err(HostError::Invalid));
        assert_eq!(
            host_of(v, "/x", &["API.Example.com.:8080"])
                .unwrap()
                .unwrap(),
            "API.Example.com.:8080|api.example.com"
        );
        assert_eq!(
            host_of(v, "/x", &["[::1]:80"]).unwrap().unwrap(),
            "[::1]:80|::1"
        );
        assert_eq!(host_of(v, "/x", &["[::1"]), Err(HostError::Invalid));
    }

    #[test]
    fn an_absolute_form_target_replaces_host() {
        let got = host_of(
            Version::HTTP_11,
            "http://internal.example/x",
            &["public.example"],
        );
        assert_eq!(got.unwrap().unwrap(), "internal.example|internal.example");
        assert_eq!(
            host_of(Version::HTTP_10, "http://a.example/x", &[])
                .unwrap()
                .unwrap(),
            "a.example|a.example"
        );
        assert_eq!(host_of(Version::HTTP_10, "/x", &[]), Ok(None));
    }

    #[test]
    fn http2_authority_wins_and_a_conflicting_host_is_refused() {
        let v = Version::HTTP_2;
        assert_eq!(
            host_of(v, "http://a.example/x", &["b.example"]),
            Err(HostError::Conflict)
        );
        assert_eq!(
            host_of(v, "http://a.example/x", &["A.example"])
                .unwrap()
                .unwrap(),
            "a.example|a.example"
        );
        assert_eq!(
            host_of(v, "/x", &["b.example"]).unwrap().unwrap(),
            "b.example|b.example"
        );
        assert_eq!(host_of(v, "/x", &[]), Ok(None));
    }
}
