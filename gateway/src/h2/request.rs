//! A request's head from its decoded fields, checked as RFC 9113 (section
//! 8) asks of a server.
//!
//! A request that breaks a rule is malformed: its stream is reset with
//! `PROTOCOL_ERROR`, nothing of it reaches the proxy. A field section over
//! this side's `SETTINGS_MAX_HEADER_LIST_SIZE` is answered 431, as hyper's
//! server (the h2 crate) answers it. The head comes out as hyper's server
//! made it, so the proxy sees no difference: the URI in absolute form from
//! `:scheme`, `:authority` and `:path`, version HTTP/2, the regular fields
//! in a header map as they arrived (`cookie` crumbs not joined, `host` kept
//! beside `:authority`; the proxy's own checks compare them).

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::table::{Field, Pseudo};

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed (section 8.1.1): the stream is reset, `PROTOCOL_ERROR`.
    Malformed(&'static str),
    /// Larger than `SETTINGS_MAX_HEADER_LIST_SIZE`: answered 431.
    TooLarge,
}

/// A checked request head.
#[derive(Debug)]
pub struct Head {
    pub parts: http::request::Parts,
    /// The `content-length` every such field gave, if any: the stream's
    /// DATA must add up to it (section 8.1.1).
    pub content_length: Option<u64>,
    /// The (first) `expect` field asks for `100 Continue` (RFC 9110,
    /// section 10.1.1).
    pub expects_continue: bool,
}

/// Collects a request's fields as the decoder gives them.
#[derive(Debug)]
pub struct HeadBuilder {
    method: Option<HeaderValue>,
    scheme: Option<HeaderValue>,
    authority: Option<HeaderValue>,
    path: Option<HeaderValue>,
    headers: HeaderMap,
    /// The section's size as `SETTINGS_MAX_HEADER_LIST_SIZE` counts it.
    size: usize,
    max_size: usize,
    regular_seen: bool,
    malformed: Option<&'static str>,
    /// Read as the fields come: a lookup in the map afterwards hashes
    /// the name again.
    length: Length,
    expect: Option<bool>,
}

impl HeadBuilder {
    /// A builder that refuses a section over `max_size` octets.
    pub fn new(max_size: usize) -> HeadBuilder {
        HeadBuilder {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            // A kept map: no allocation, and room for the fields the
            // proxy adds before forwarding.
            headers: crate::buffers::map(crate::buffers::HEAD_ROOM),
            size: 0,
            max_size,
            regular_seen: false,
            malformed: None,
            length: Length::default(),
            expect: None,
        }
    }

    /// One decoded field, with its size.
    pub fn field(&mut self, field: Field, size: usize) {
        self.size = self.size.saturating_add(size);
        if self.size > self.max_size || self.malformed.is_some() {
            // Refused either way: keep nothing more.
            return;
        }
        if let Err(why) = self.add(field) {
            self.malformed = Some(why);
        }
    }

    fn add(&mut self, field: Field) -> Result<(), &'static str> {
        match field {
            Field::Malformed => Err("a field's name or value is not allowed"),
            Field::Pseudo(pseudo, value) => {
                if self.regular_seen {
                    return Err("a pseudo-header after a regular field");
                }
                let slot = match pseudo {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status => return Err(":status in a request"),
                    // Extended CONNECT is not announced (RFC 8441).
                    Pseudo::Protocol => return Err(":protocol without extended CONNECT"),
                };
                match slot.replace(value) {
                    Some(_) => Err("a pseudo-header twice"),
                    None => Ok(()),
                }
            }
            Field::Header(name, value) => {
                self.regular_seen = true;
                check_regular(&name, &value)?;
                if name == CONTENT_LENGTH {
                    self.length.add(&value);
                } else if name == EXPECT && self.expect.is_none() {
                    self.expect = Some(value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                }
                // Past the most names a map holds: over any sane limit too.
                if self.headers.try_append(name, value).is_err() {
                    self.size = usize::MAX;
                }
                Ok(())
            }
        }
    }

    /// The head, or why it is refused.
    pub fn finish(self) -> Result<Head, Refusal> {
        if self.size > self.max_size {
            return Err(Refusal::TooLarge);
        }
        if let Some(why) = self.malformed {
            return Err(Refusal::Malformed(why));
        }
        self.build().map_err(Refusal::Malformed)
    }

    fn build(self) -> Result<Head, &'static str> {
        let method = self.method.ok_or("no :method")?;
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| "an invalid :method")?;
        let mut uri = http::uri::Parts::default();
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err("CONNECT with :scheme or :path");
            }
        } else {
            let scheme = self.scheme.ok_or("no :scheme")?;
            let scheme = Scheme::try_from(scheme.as_bytes()).map_err(|_| "an invalid :scheme")?;
            // A URI cannot have a scheme without an authority: checked, then
            // left out when there is no `:authority` (as hyper's server does;
            // the proxy takes the host from `host` then).
            uri.scheme = self.authority.is_some().then_some(scheme);
            let path = self.path.ok_or("no :path")?;
            uri.path_and_query = Some(path_and_query(&method, &path)?);
        }
        match self.authority {
            Some(authority) => uri.authority = Some(authority_of(&method, &authority)?),
            None if method == Method::CONNECT => return Err("CONNECT without :authority"),
            // Section 8.3.1: a target host, from one field or the other.
            None if !self.headers.contains_key(http::header::HOST) => {
                return Err("neither :authority nor host");
            }
            None => {}
        }
        let uri = Uri::from_parts(uri).map_err(|_| "an invalid URI")?;
        let content_length = self.length.get()?;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        Ok(Head {
            parts,
            content_length,
            expects_continue: self.expect.unwrap_or(false),
        })
    }
}

/// `:authority`: a host and port, no user information (8.3.1); a port for
/// CONNECT (RFC 9110, 9.3.6).
fn authority_of(method: &Method, value: &HeaderValue) -> Result<Authority, &'static str> {
    if value.as_bytes().contains(&b'@') {
        return Err(":authority with user information");
    }
    let bytes = crate::buffers::shared_copy(value.as_bytes());
    let authority = Authority::from_maybe_shared(bytes).map_err(|_| "an invalid :authority")?;
    if method == Method::CONNECT && authority.port().is_none() {
        return Err("CONNECT to an authority without a port");
    }
    Ok(authority)
}

/// `:path`: not empty; a path from the root, or `*` for OPTIONS (8.3.1);
/// no fragment (not part of a request target).
fn path_and_query(method: &Method, path: &HeaderValue) -> Result<PathAndQuery, &'static str> {
    let raw = path.as_bytes();
    let asterisk = raw == b"*" && method == Method::OPTIONS;
    if !asterisk && raw.first() != Some(&b'/') {
        return Err("a :path that is empty or not from the root");
    }
    if raw.contains(&b'#') {
        return Err("a :path with a fragment");
    }
    PathAndQuery::from_maybe_shared(crate::buffers::shared_copy(raw))
        .map_err(|_| "an invalid :path")
}

/// Whether a regular field is allowed in a request's fields or trailers.
pub(crate) fn allowed(name: &HeaderName, value: &HeaderValue) -> bool {
    check_regular(name, value).is_ok()
}

/// Connection-specific fields, and `te` other than `trailers` (8.2.2).
/// The name's text is looked at once (comparing a name with a string
/// spells the name out for each comparison).
fn check_regular(name: &HeaderName, value: &HeaderValue) -> Result<(), &'static str> {
    if name == TE {
        return match value.as_bytes().eq_ignore_ascii_case(b"trailers") {
            true => Ok(()),
            false => Err("te other than trailers"),
        };
    }
    match connection_specific(name) {
        true => Err("a connection-specific field"),
        false => Ok(()),
    }
}

/// The connection-specific fields HTTP/2 forbids in any message (section
/// 8.2.2), `te` aside (allowed in a request as `trailers`). Compared as
/// known names first; the others' text once.
pub(crate) fn connection_specific(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// The one length every `content-length` field of a section gives, read
/// field by field as they are decoded.
#[derive(Debug, Default)]
pub(crate) struct Length {
    value: Option<u64>,
    /// The first fault, which stands.
    fault: Option<&'static str>,
}

impl Length {
    /// One more `content-length` field.
    pub fn add(&mut self, value: &HeaderValue) {
        if self.fault.is_some() {
            return;
        }
        let raw = value.as_bytes();
        let valid = !raw.is_empty() && raw.len() <= 19 && raw.iter().all(u8::is_ascii_digit);
        let n: Option<u64> = match valid {
            true => std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()),
            false => None,
        };
        match n {
            None => self.fault = Some("an invalid content-length"),
            Some(n) if self.value.is_some_and(|l| l != n) => {
                self.fault = Some("content-length fields that differ");
            }
            Some(n) => self.value = Some(n),
        }
    }

    /// The length, if any field gave one, or the first fault.
    pub fn get(&self) -> Result<Option<u64>, &'static str> {
        match self.fault {
            Some(fault) => Err(fault),
            None => Ok(self.value),
        }
    }
}

#[cfg(test)]
mod tests;
