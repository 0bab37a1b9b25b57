//! Request paths normalised before routing, so that the route a request
//! matches is the resource the upstream serves.
//!
//! Without this, `/pub/../admin/x` matches a `/pub` route and reaches its
//! backend verbatim, and any backend that resolves dot segments serves
//! `/admin/x` past the rules of the `/admin` route. The same holds for every
//! spelling a server may resolve: `%2e%2e`, `.%2e`, `..%2f`, `..\`, `..;`.
//!
//! [`normalize`] applies, in one pass:
//!
//! 1. Percent-decoding of unreserved characters (`A-Z a-z 0-9 - . _ ~`,
//!    RFC 3986 §6.2.2.2) and upper-case hex digits for every other escape
//!    (§6.2.2.1). A `%` not followed by two hex digits is refused.
//! 2. Dot-segment removal (§5.2.4) on the decoded segments; a path that
//!    climbs above the root is refused.
//! 3. Encoded slashes (`%2F`) and backslashes (`%5C`) by [`SlashPolicy`]:
//!    refused by default; kept encoded (never a separator) when the gateway
//!    is told to, and even then refused when decoding them would form a dot
//!    segment (`..%2F`). A raw backslash is not a URI character: refused.
//! 4. A segment that is a dot segment followed by parameters (`..;x`, `.;`),
//!    which servlet containers resolve as `..`, is refused, also with the
//!    `;` encoded (`..%3Bx`).
//! 5. Optionally (on by default, like nginx's `merge_slashes`), runs of `/`
//!    merged into one, so `//admin` cannot pass for something other than
//!    `/admin`.
//!
//! The result is what the router matches and what the upstream receives;
//! normalising it again changes nothing. Paths that need none of this (the
//! common case) are checked in one scan and borrowed, not copied.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlashPolicy {
    /// Refuse the request (400): the default, because a backend that decodes
    /// them can be led to a different resource than the one routed on.
    #[default]
    Reject,
    /// Keep them encoded, as data within a segment (for APIs that put
    /// `group%2Fproject` in one segment). Never a separator for routing.
    Keep,
}

impl SlashPolicy {
    /// Parses a flag value (`reject` or `keep`).
    pub fn parse(s: &str) -> Result<SlashPolicy, String> {
        match s {
            "reject" => Ok(SlashPolicy::Reject),
            "keep" => Ok(SlashPolicy::Keep),
            other => Err(format!("{other:?}: expected reject or keep")),
        }
    }
}

/// How request paths are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Encoded slashes and backslashes.
    pub encoded_slashes: SlashPolicy,
    /// Merge runs of `/` into one.
    pub merge_slashes: bool,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            encoded_slashes: SlashPolicy::Reject,
            merge_slashes: true,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is not a path (`*`, an authority, empty).
    #[error("the request target is not an absolute path")]
    NotAPath,
    /// `%` not followed by two hex digits.
    #[error("the path has an invalid percent-encoding")]
    BadEscape,
    /// More `..` segments than there are segments to remove.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// `%2F` or `%5C` under [`SlashPolicy::Reject`], or one that would form a
    /// dot segment once decoded.
    #[error("the path contains an encoded slash or backslash")]
    EncodedSlash,
    /// A raw `\`.
    #[error("the path contains a backslash")]
    Backslash,
    /// `..;` or `.;`: a dot segment with parameters.
    #[error("the path has a dot segment with parameters")]
    DotParameter,
}

/// The normalised form of `path` (the path component only, without the
/// query), borrowed when it is already normal.
pub fn normalize<'a>(path: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAPath);
    }
    if is_normal(path.as_bytes(), policy.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let out = rebuild(path, policy)?;
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// The fast check: no escape, no backslash, no segment starting with a dot,
/// and (when merging) no empty segment. Such a path is its own normal form.
fn is_normal(path: &[u8], merge: bool) -> bool {
    let mut previous = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return false,
            b'.' if previous == b'/' => return false,
            b'/' if merge && previous == b'/' => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

/// The slow path: decode each segment, resolve dot segments, join.
fn rebuild(path: &str, policy: &PathPolicy) -> Result<String, PathError> {
    let mut segments: Vec<String> = Vec::new();
    let raw: Vec<&str> = path[1..].split('/').collect();
    let last = raw.len() - 1;
    // Whether the output ends in `/` (a final empty segment).
    let mut trailing = false;
    for (i, raw_segment) in raw.iter().enumerate() {
        let segment = decode_segment(raw_segment, policy.encoded_slashes)?;
        match segment.as_str() {
            "." => trailing = i == last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = i == last;
            }
            "" if i == last => trailing = true,
            "" if policy.merge_slashes => {}
            _ => {
                if is_dot_with_parameters(&segment) {
                    return Err(PathError::DotParameter);
                }
                segments.push(segment);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `.;x` or `..;x`, also with the `;` encoded (`..%3Bx`): a backend that
/// decodes before it strips parameters sees the same dot segment.
fn is_dot_with_parameters(segment: &str) -> bool {
    let rest = segment
        .strip_prefix("..")
        .or_else(|| segment.strip_prefix('.'));
    rest.is_some_and(|r| r.starts_with(';') || r.starts_with("%3B"))
}

/// Decodes unreserved escapes of one segment and upper-cases the others.
fn decode_segment(raw: &str, slashes: SlashPolicy) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut has_encoded_slash = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                if is_unreserved(byte) {
                    out.push(byte as char);
                } else {
                    if byte == b'/' || byte == b'\\' {
                        if slashes == SlashPolicy::Reject {
                            return Err(PathError::EncodedSlash);
                        }
                        has_encoded_slash = true;
                    }
                    out.push('%');
                    out.push(hex_digit(byte >> 4));
                    out.push(hex_digit(byte & 0xf));
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        // Copy the run up to the next escape or backslash whole (UTF-8 safe:
        // both stops are ASCII).
        let end = bytes[i..]
            .iter()
            .position(|&b| b == b'%' || b == b'\\')
            .map_or(bytes.len(), |p| i + p);
        out.push_str(&raw[i..end]);
        i = end;
    }
    if has_encoded_slash && hides_dot_segment(&out) {
        return Err(PathError::EncodedSlash);
    }
    Ok(out)
}

/// Whether splitting a kept segment at its encoded slashes would give a dot
/// segment: a backend that decodes `%2F` would then resolve it.
fn hides_dot_segment(segment: &str) -> bool {
    segment
        .split("%2F")
        .flat_map(|s| s.split("%5C"))
        .any(|part| part == "." || part == ".." || is_dot_with_parameters(part))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, &PathPolicy::default()).map(Cow::into_owned)
    }

    fn keep(p: &str) -> Result<String, PathError> {
        let policy = PathPolicy {
            encoded_slashes: SlashPolicy::Keep,
            ..PathPolicy::default()
        };
        normalize(p, &policy).map(Cow::into_owned)
    }

    #[test]
    fn traversal_spellings_resolve_or_are_refused() {
        for (input, want) in [
            ("/pub/../admin/x", Ok("/admin/x")),
            ("/pub/%2e%2e/admin/x", Ok("/admin/x")),
            ("/pub/.%2e/admin/x", Ok("/admin/x")),
            ("/pub/%2E./admin/x", Ok("/admin/x")),
            ("/pub/./../admin", Ok("/admin")),
            ("/pub/..", Ok("/")),
            ("/pub/.", Ok("/pub/")),
            ("/pub/x/..", Ok("/pub/")),
            ("/..", Err(PathError::AboveRoot)),
            ("/pub/../../admin", Err(PathError::AboveRoot)),
            ("/pub/..%2fadmin/x", Err(PathError::EncodedSlash)),
            ("/pub/..%5cadmin/x", Err(PathError::EncodedSlash)),
            ("/pub/..\\admin/x", Err(PathError::Backslash)),
            ("/pub/..;/admin/x", Err(PathError::DotParameter)),
            ("/pub/..%3bx/admin/x", Err(PathError::DotParameter)),
            ("/pub/.%3B/x", Err(PathError::DotParameter)),
            ("/pub/.;x/admin", Err(PathError::DotParameter)),
            ("/pub/%zz", Err(PathError::BadEscape)),
            ("/pub/%2", Err(PathError::BadEscape)),
            ("*", Err(PathError::NotAPath)),
            ("", Err(PathError::NotAPath)),
        ] {
            assert_eq!(norm(input).as_deref(), want.as_deref(), "{input}");
        }
    }

    #[test]
    fn escapes_are_decoded_only_when_unreserved() {
        assert_eq!(norm("/a%41%7e%2D").unwrap(), "/aA~-");
        assert_eq!(norm("/caf%c3%a9?").unwrap(), "/caf%C3%A9?");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn slashes_merge_and_a_trailing_slash_stays() {
        assert_eq!(norm("//admin//x/").unwrap(), "/admin/x/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("///").unwrap(), "/");
        let no_merge = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(normalize("/a//b", &no_merge).unwrap(), "/a//b");
    }

    #[test]
    fn kept_encoded_slashes_stay_data() {
        assert_eq!(
            keep("/repos/group%2fproject/x").unwrap(),
            "/repos/group%2Fproject/x"
        );
        assert_eq!(keep("/a/..%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(keep("/a/x%2F..%2Fy"), Err(PathError::EncodedSlash));
        assert_eq!(keep("/a\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/users.json", &PathPolicy::default()),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize("/.well-known/x", &PathPolicy::default()),
            Ok(Cow::Borrowed(_))
        ));
    }

    /// A random path from the pieces that matter (separators, dots,
    /// escapes, parameters), with a fixed seed so a failure reproduces.
    fn generated(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &[
            "/", "/", "/", ".", "..", "a", "b", "%2e", "%2E", "%2f", "%5c", "%41", "%7e", "%20",
            ";", ";x", "~", "-", "%c3%a9", "%", "%z", "\\", "x.y", "//",
        ];
        let mut p = String::from("/");
        for _ in 0..rng.usize(0..12) {
            p.push_str(PIECES[rng.usize(..PIECES.len())]);
        }
        p
    }

    #[test]
    fn normalising_twice_changes_nothing_and_leaves_no_dot_segment() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let policies = [
            PathPolicy::default(),
            PathPolicy {
                encoded_slashes: SlashPolicy::Keep,
                merge_slashes: false,
            },
        ];
        let mut accepted = 0;
        for _ in 0..200_000 {
            let p = generated(&mut rng);
            for policy in &policies {
                let Ok(once) = normalize(&p, policy) else {
                    continue;
                };
                accepted += 1;
                let twice = normalize(&once, policy);
                assert_eq!(twice.as_deref(), Ok(&*once), "{p:?}");
                assert!(once.starts_with('/'), "{p:?} -> {once:?}");
                for segment in once.split('/') {
                    assert!(
                        segment != "." && segment != "..",
                        "{p:?} -> {once:?} keeps a dot segment"
                    );
                }
                if policy.merge_slashes {
                    assert!(!once.contains("//"), "{p:?} -> {once:?}");
                }
            }
        }
        assert!(
            accepted > 50_000,
            "the generator mostly makes refused paths: {accepted}"
        );
    }
}
