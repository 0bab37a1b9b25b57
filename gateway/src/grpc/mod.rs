//! gRPC on the request path: what makes a request gRPC, the protocol's
//! status codes, its deadline header, and how the gateway's own errors are
//! spoken to a gRPC client.
//!
//! A request is gRPC when its `content-type` is `application/grpc` (with an
//! optional `+proto`, `+json`, ... suffix), `application/grpc-web` or
//! `application/grpc-web-text` ([`GrpcKind::of`]). That one header check,
//! made once per request, is all a request that is not gRPC pays: every
//! other gRPC rule hangs off the kind it sets in the request context.
//!
//! - **Errors** the gateway makes itself become a *trailers-only* response
//!   (HTTP 200, `grpc-status`, `grpc-message`, no body; made where every
//!   gateway error becomes a response, in the error module), as Envoy answers: a
//!   gRPC client reads the status it was meant to get instead of "HTTP 502".
//! - **Deadlines**: `grpc-timeout` ([`parse_timeout`]) shortens the route
//!   timeout, never lengthens it, and what is left of it is sent upstream
//!   ([`encode_timeout`]) so the server gives up when the client does.
//! - **gRPC-Web** ([`web`]): on routes with `grpc_web = true`, browser calls
//!   are translated to gRPC for the upstream and back.
//! - **Responses** ([`body`]): the `grpc-status` of each call is counted per
//!   route and written to the access log, whether it came in the response
//!   head (trailers-only) or in the trailers at the end of the body.

pub mod body;
pub mod web;

use std::time::Duration;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// `grpc-status`.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Which flavour of gRPC a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcKind {
    /// `application/grpc`: HTTP/2, trailers carry the status.
    Native,
    /// `application/grpc-web`: the same messages, the trailers as a last
    /// frame of the body (any HTTP version).
    Web,
    /// `application/grpc-web-text`: gRPC-Web with the body in base64.
    WebText,
}

impl GrpcKind {
    /// The kind a request's `content-type` names, if it names one.
    pub fn of(headers: &HeaderMap) -> Option<GrpcKind> {
        GrpcKind::of_content_type(headers.get(header::CONTENT_TYPE)?.as_bytes())
    }

    /// The kind a `content-type` value names, if it names one.
    pub fn of_content_type(ct: &[u8]) -> Option<GrpcKind> {
        const PREFIX: &[u8] = b"application/grpc";
        if ct.len() < PREFIX.len() || !ct[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            return None;
        }
        let rest = &ct[PREFIX.len()..];
        let ends = |r: &[u8]| matches!(r.first(), None | Some(b'+' | b';' | b' '));
        if ends(rest) {
            return Some(GrpcKind::Native);
        }
        let lower = rest.to_ascii_lowercase();
        if let Some(r) = lower.strip_prefix(b"-web-text") {
            return ends(r).then_some(GrpcKind::WebText);
        }
        if let Some(r) = lower.strip_prefix(b"-web") {
            return ends(r).then_some(GrpcKind::Web);
        }
        None
    }

    /// Whether this is one of the gRPC-Web forms.
    pub fn is_web(self) -> bool {
        self != GrpcKind::Native
    }
}

/// A gRPC status code (the numbers are the protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u8);

impl Code {
    /// Success.
    pub const OK: Code = Code(0);
    /// The call was cancelled (typically by the caller).
    pub const CANCELLED: Code = Code(1);
    /// Unknown error.
    pub const UNKNOWN: Code = Code(2);
    /// The client gave an invalid argument.
    pub const INVALID_ARGUMENT: Code = Code(3);
    /// The deadline passed before the call completed.
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    /// The caller may not do this.
    pub const PERMISSION_DENIED: Code = Code(7);
    /// A resource (quota, a size limit) is exhausted.
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    /// No such method or service here.
    pub const UNIMPLEMENTED: Code = Code(12);
    /// An invariant broke.
    pub const INTERNAL: Code = Code(13);
    /// Transient: try again (gRPC clients retry it when configured to).
    pub const UNAVAILABLE: Code = Code(14);
    /// No valid credentials.
    pub const UNAUTHENTICATED: Code = Code(16);

    /// Codes 0 to 16 are defined.
    pub const COUNT: usize = 17;

    /// The code's name as the gRPC docs write it (`UNAVAILABLE`).
    pub fn name(self) -> &'static str {
        const NAMES: [&str; Code::COUNT] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES.get(usize::from(self.0)).copied().unwrap_or("UNKNOWN")
    }

    /// The status in a `grpc-status` header value, if it is one.
    pub fn from_header(value: &HeaderValue) -> Option<Code> {
        let n: u8 = std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()?;
        (usize::from(n) < Code::COUNT).then_some(Code(n))
    }

    /// The status of a response head: `Some` only for a trailers-only
    /// response, which carries `grpc-status` among its headers.
    pub fn in_headers(headers: &HeaderMap) -> Option<Code> {
        headers.get(&GRPC_STATUS).and_then(Code::from_header)
    }

    /// As a `grpc-status` header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from(u16::from(self.0))
    }
}

/// Why a `grpc-timeout` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grpc-timeout {0:?} is not 1 to 8 digits followed by a unit (H, M, S, m, u or n)")]
pub struct BadTimeout(pub String);

/// Parses `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H`ours,
/// `M`inutes, `S`econds, `m`illis, `u` micros, `n`anos), as the gRPC
/// protocol writes it.
pub fn parse_timeout(value: &HeaderValue) -> Result<Duration, BadTimeout> {
    let bad = || BadTimeout(String::from_utf8_lossy(value.as_bytes()).into_owned());
    let bytes = value.as_bytes();
    let (unit, digits) = bytes.split_last().ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(bad)?;
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

/// `d` as a `grpc-timeout` value: the finest unit whose count fits in the
/// protocol's 8 digits, rounded down (a server must not wait longer than
/// the gateway will).
///
/// Marked sensitive, so HPACK sends it as a never-indexed literal: the
/// value is new on every call, and indexed it filled an HTTP/2 upstream's
/// dynamic table with dead entries, evicting the ones that repeat and
/// lengthening the chain of `grpc-timeout` values h2 compares each call
/// against (about 2,000 instructions a call, callgrind). Written without
/// `fmt`: `format!` of the count cost 700 more.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let candidates = [
        (d.as_micros(), b'u'),
        (d.as_millis(), b'm'),
        (u128::from(d.as_secs()), b'S'),
        (u128::from(d.as_secs() / 60), b'M'),
    ];
    let (n, unit) = candidates
        .into_iter()
        .find(|(n, _)| *n <= MAX)
        .unwrap_or(((u128::from(d.as_secs() / 3600)).min(MAX), b'H'));
    let n = u64::try_from(n).expect("at most 8 digits");
    // Cut from the thread's chunk of small copies (`buffers::shared_copy`):
    // a vector of its own was an allocation per proxied gRPC call.
    let mut scratch = [0u8; 20];
    let digits = crate::h1::response::decimal(n, &mut scratch);
    let mut text = [0u8; 21];
    text[..digits.len()].copy_from_slice(digits);
    text[digits.len()] = unit;
    let bytes = crate::buffers::shared_copy(&text[..=digits.len()]);
    let mut value =
        HeaderValue::from_maybe_shared(bytes).expect("digits and a unit are a valid header value");
    value.set_sensitive(true);
    value
}

/// `grpc-message` as the protocol wants it: percent-encoded outside
/// printable ASCII, and `%` itself.
pub fn encode_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("percent-encoded ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ct: &str) -> Option<GrpcKind> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        GrpcKind::of(&h)
    }

    #[test]
    fn the_content_type_names_the_kind() {
        assert_eq!(kind("application/grpc"), Some(GrpcKind::Native));
        assert_eq!(kind("application/grpc+proto"), Some(GrpcKind::Native));
        assert_eq!(kind("Application/GRPC; charset=x"), Some(GrpcKind::Native));
        assert_eq!(kind("application/grpc-web"), Some(GrpcKind::Web));
        assert_eq!(kind("application/grpc-web+proto"), Some(GrpcKind::Web));
        assert_eq!(kind("application/grpc-web-text"), Some(GrpcKind::WebText));
        assert_eq!(
            kind("application/grpc-web-text+proto"),
            Some(GrpcKind::WebText)
        );
        assert_eq!(kind("application/grpcx"), None);
        assert_eq!(kind("application/grpc-webx"), None);
        assert_eq!(kind("application/json"), None);
        assert_eq!(GrpcKind::of(&HeaderMap::new()), None);
    }

    #[test]
    fn timeouts_parse_and_encode_in_the_protocol_form() {
        let t = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(t("100m"), Ok(Duration::from_millis(100)));
        assert_eq!(t("2S"), Ok(Duration::from_secs(2)));
        assert_eq!(t("1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(t("99999999n"), Ok(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789m", "1x", "-1S", "1.5S"] {
            assert!(t(bad).is_err(), "{bad:?}");
        }
        assert_eq!(encode_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(encode_timeout(Duration::ZERO), "0u");
        assert_eq!(
            encode_timeout(Duration::from_micros(99_999_999)),
            "99999999u"
        );
        assert!(encode_timeout(Duration::from_secs(1)).is_sensitive());
        assert_eq!(encode_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            encode_timeout(Duration::from_secs(7_000_000_000)),
            "1944444H"
        );
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route: 100%"), "no route: 100%25");
        assert_eq!(encode_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }
}
