//! `path_normalize`: bytes into the gateway's path normaliser, the step that
//! decides which route a request matches and what its upstream receives.
//!
//! The first byte picks the policy (encoded slashes refused or kept, slashes
//! merged or not); the rest is the path, `/` added in front when missing so
//! that most inputs reach the interesting part.
//!
//! Oracles, for every path that is accepted:
//! - normalising again changes nothing (the router and the upstream can
//!   never disagree by one more pass);
//! - the result is an absolute path with no `.` or `..` segment, no
//!   backslash, and, when merging, no empty segment;
//! - every remaining escape is two upper-case hex digits for a byte that is
//!   not unreserved (unreserved ones are decoded);
//! - a backend that decodes *every* escape and treats `\` as a separator
//!   still sees no dot segment (`..`, `.`, `..;x`), so it cannot climb out
//!   of the route the gateway matched.

use portico_gateway::path::{PathPolicy, SlashPolicy, normalize};

/// Runs one input; panics when an oracle does not hold.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let policy = PathPolicy {
        encoded_slashes: if flags & 1 == 0 {
            SlashPolicy::Reject
        } else {
            SlashPolicy::Keep
        },
        merge_slashes: flags & 2 == 0,
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let path = if text.starts_with('/') {
        text.to_string()
    } else {
        format!("/{text}")
    };
    let Ok(normal) = normalize(&path, &policy) else {
        return;
    };
    let again = normalize(&normal, &policy)
        .unwrap_or_else(|e| panic!("{path:?} normalised to {normal:?}, which is refused: {e}"));
    assert_eq!(again, normal, "normalising {path:?} twice differs");
    shape(&path, &normal, &policy);
    no_climb_after_full_decoding(&path, &normal);
}

fn shape(path: &str, normal: &str, policy: &PathPolicy) {
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
    for segment in normal[1..].split('/') {
        assert!(
            segment != "." && segment != "..",
            "{path:?} -> {normal:?} keeps a dot segment"
        );
    }
    if policy.merge_slashes {
        assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
    }
    let bytes = normal.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).expect("a complete escape");
            assert!(
                hex.iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
                "{path:?} -> {normal:?}: escape not in upper-case hex"
            );
            let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            assert!(
                !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
                "{path:?} -> {normal:?}: unreserved %{byte:02X} left encoded"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
}

/// Decodes every escape (as a lenient backend would) and splits on both
/// separators: no segment may then be a dot segment.
fn no_climb_after_full_decoding(path: &str, normal: &str) {
    let mut decoded = Vec::with_capacity(normal.len());
    let bytes = normal.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            decoded.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    for segment in decoded.split(|&b| b == b'/' || b == b'\\') {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        assert!(
            name != b"." && name != b"..",
            "{path:?} -> {normal:?}: a backend decoding everything sees a dot segment"
        );
    }
}
