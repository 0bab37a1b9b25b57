//! W3C Trace Context (`traceparent`) at the gateway.
//!
//! The gateway is not a tracer: it never starts spans of its own. By default
//! `traceparent` and `tracestate` are ordinary end-to-end headers and reach
//! the upstream exactly as received. With `generate_traceparent` on, a
//! request without a valid `traceparent` gets a new one (random ids, sampled
//! flag), so the upstream's trace and the gateway's access-log line share a
//! trace id even when the client sent none.

use http::header::{HeaderMap, HeaderName, HeaderValue};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace id of the request's `traceparent`, if it has a valid one.
pub fn trace_id(headers: &HeaderMap) -> Option<[u8; 32]> {
    parse(headers.get(&TRACEPARENT)?.as_bytes())
}

/// The trace id of a valid W3C `traceparent` value
/// (`version-traceid-parentid-flags`, lowercase hex, ids not all zero).
fn parse(value: &[u8]) -> Option<[u8; 32]> {
    // Version 00 is exactly 55 bytes; a later version may append fields
    // after another dash, and version ff is forbidden.
    let valid_length = match value.get(..2)? {
        b"00" => value.len() == 55,
        b"ff" => false,
        _ => value.len() == 55 || value.get(55) == Some(&b'-'),
    };
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    if !valid_length
        || !hex(&value[..2])
        || value[2] != b'-'
        || value[35] != b'-'
        || value[52] != b'-'
    {
        return None;
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !(hex(trace) && hex(parent) && hex(flags) && nonzero(trace) && nonzero(parent)) {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(trace);
    Some(id)
}

/// Keeps a valid `traceparent`, or replaces a missing or malformed one with
/// a new sampled one (random trace and parent ids, never all zero); returns
/// the trace id the request now carries.
pub fn ensure_traceparent(headers: &mut HeaderMap) -> [u8; 32] {
    if let Some(id) = trace_id(headers) {
        return id;
    }
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&mut value[3..35], fastrand::u128(1..));
    hex_into(&mut value[36..52], u128::from(fastrand::u64(1..)));
    headers.insert(
        TRACEPARENT.clone(),
        HeaderValue::from_bytes(&value).expect("hex is a valid header value"),
    );
    let mut id = [0u8; 32];
    id.copy_from_slice(&value[3..35]);
    id
}

/// Writes the low `out.len()` hex digits of `n` into `out`, lowercase.
fn hex_into(out: &mut [u8], mut n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation_follows_the_w3c_rules() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(&parse(good).unwrap(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version may carry more fields after a dash.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"",
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_missing_or_malformed_traceparent_is_replaced_and_a_valid_one_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_traceparent(&mut h);
        let value = h.get(&TRACEPARENT).unwrap().as_bytes().to_vec();
        assert_eq!(parse(&value), Some(id), "generated value is valid");
        assert!(value.ends_with(b"-01"));

        h.insert(&TRACEPARENT, HeaderValue::from_static("garbage"));
        ensure_traceparent(&mut h);
        assert!(parse(h.get(&TRACEPARENT).unwrap().as_bytes()).is_some());

        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        h.insert(&TRACEPARENT, HeaderValue::from_static(good));
        ensure_traceparent(&mut h);
        assert_eq!(h.get(&TRACEPARENT).unwrap(), good);
    }
}
