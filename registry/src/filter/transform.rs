//! Checking the transforms: `rewrite` and `redirect`.
//!
//! Every path they can produce is checked here as far as it can be without
//! a request: it starts with `/`, holds only characters a request target
//! may carry (no space, control character, `?`, `#` or `\`), and has no
//! dot segment. What captures bring in is checked again on each request
//! (the gateway normalises the result like any path), so a rewrite can
//! never send what the edge would refuse.

use http::HeaderValue;
use http::uri::Authority;

use super::{
    DEFAULT_REDIRECT_STATUS, FilterSpec, PathRewrite, REDIRECT_STATUSES, Redirect, RedirectPath,
    Refusal, Rewrite, RewritePattern,
};

pub(super) fn compile_rewrite(spec: &FilterSpec) -> Result<Rewrite, Refusal> {
    let path = match (&spec.path_prefix, &spec.path_regex, &spec.replacement) {
        (Some(_), Some(_), _) => {
            return Err((
                "path_regex",
                "give path_prefix or path_regex, not both".into(),
            ));
        }
        (Some(p), None, _) => Some(PathRewrite::Prefix(
            check_path(p).map_err(|r| ("path_prefix", r))?,
        )),
        (None, Some(re), Some(with)) => Some(compile_regex(re, with)?),
        (None, Some(_), None) => return Err(("replacement", "is required with path_regex".into())),
        (None, None, Some(_)) => return Err(("path_regex", "is required with replacement".into())),
        (None, None, None) => None,
    };
    let host = match &spec.host {
        Some(h) => Some(
            check_host(h)
                .and_then(|h| HeaderValue::from_str(&h).map_err(|_| format!("{h:?} is not a host")))
                .map_err(|r| ("host", r))?,
        ),
        None => None,
    };
    if path.is_none() && host.is_none() {
        return Err((
            "path_prefix",
            "give at least one of path_prefix, path_regex (with replacement), host".into(),
        ));
    }
    Ok(Rewrite { path, host })
}

pub(super) fn compile_redirect(spec: &FilterSpec) -> Result<Redirect, Refusal> {
    let status = spec.status.unwrap_or(DEFAULT_REDIRECT_STATUS);
    if !REDIRECT_STATUSES.contains(&status) {
        return Err((
            "status",
            format!("{status} is not a redirect status (301, 302, 303, 307, 308)"),
        ));
    }
    let scheme = match spec.scheme.as_deref() {
        None => None,
        Some("http") => Some("http"),
        Some("https") => Some("https"),
        Some(other) => return Err(("scheme", format!("{other:?} is not http or https"))),
    };
    let host = spec
        .host
        .as_deref()
        .map(check_host)
        .transpose()
        .map_err(|r| ("host", r))?;
    let path = match (&spec.path, &spec.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(("path_prefix", "give path or path_prefix, not both".into()));
        }
        (Some(p), None) => Some(RedirectPath::Whole(check_path(p).map_err(|r| ("path", r))?)),
        (None, Some(p)) => Some(RedirectPath::Prefix(
            check_path(p).map_err(|r| ("path_prefix", r))?,
        )),
        (None, None) => None,
    };
    if scheme.is_none() && host.is_none() && path.is_none() {
        return Err((
            "path",
            "give at least one of scheme, host, path, path_prefix (a redirect to the same URL loops)"
                .into(),
        ));
    }
    Ok(Redirect {
        status,
        scheme,
        host,
        path,
    })
}

fn compile_regex(source: &str, replacement: &str) -> Result<PathRewrite, Refusal> {
    let pattern = RewritePattern::new(source).map_err(|r| ("path_regex", r))?;
    check_captures(&pattern.0, replacement).map_err(|r| ("replacement", r))?;
    // The literal parts of the replacement must be a path already; what a
    // capture inserts is checked on each request.
    let literal = strip_captures(replacement);
    if !literal.starts_with('/') && !replacement.starts_with('$') {
        return Err((
            "replacement",
            format!("{replacement:?} must start with '/'"),
        ));
    }
    check_chars(&literal).map_err(|r| ("replacement", r))?;
    if has_dot_segment(replacement) {
        return Err((
            "replacement",
            format!("{replacement:?} has a dot segment (. or ..)"),
        ));
    }
    Ok(PathRewrite::Regex {
        pattern,
        replacement: replacement.to_string(),
    })
}

/// Every `$N` / `${name}` / `$name` of `replacement` names a group of
/// `regex` (the regex crate would quietly insert nothing for one that does
/// not); `$$` is a literal `$`.
fn check_captures(regex: &regex::Regex, replacement: &str) -> Result<(), String> {
    let names: Vec<&str> = regex.capture_names().flatten().collect();
    let bytes = replacement.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            match replacement[i + 2..].find('}') {
                Some(end) => (&replacement[i + 2..i + 2 + end], i + 3 + end),
                None => return Err(format!("{replacement:?}: an unclosed ${{")),
            }
        } else {
            let len = replacement[i + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(replacement.len() - i - 1);
            (&replacement[i + 1..i + 1 + len], i + 1 + len)
        };
        let known = match name.parse::<usize>() {
            Ok(n) => n < regex.captures_len(),
            Err(_) => names.contains(&name),
        };
        if !known {
            return Err(format!(
                "{replacement:?}: ${name} is not a group of path_regex (write $$ for a '$')"
            ));
        }
        i = next;
    }
    Ok(())
}

/// `replacement` with its capture references taken out.
fn strip_captures(replacement: &str) -> String {
    let mut out = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
            }
            _ => {
                while chars
                    .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .is_some()
                {}
            }
        }
    }
    out
}

/// A literal path a transform writes: absolute, characters a path may
/// carry, no dot segment.
fn check_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    check_chars(p)?;
    if has_dot_segment(p) {
        return Err(format!("{p:?} has a dot segment (. or ..)"));
    }
    Ok(p.to_string())
}

fn check_chars(p: &str) -> Result<(), String> {
    match p
        .bytes()
        .find(|b| !b.is_ascii_graphic() || matches!(b, b'?' | b'#' | b'\\'))
    {
        Some(b) => Err(format!(
            "{p:?} holds {:?}, which a path cannot (no space, control character, '?', '#' or '\\\\')",
            char::from(b)
        )),
        None => Ok(()),
    }
}

fn has_dot_segment(p: &str) -> bool {
    p.split('/').any(|s| {
        let lower = s.to_ascii_lowercase();
        matches!(
            lower.as_str(),
            "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
        )
    })
}

/// A host a transform names: `name` or `name:port`, nothing else (no
/// user info, no path).
fn check_host(h: &str) -> Result<String, String> {
    let bad = || format!("{h:?} is not a host (name or name:port)");
    let a: Authority = h.parse().map_err(|_| bad())?;
    if h.is_empty() || h.contains('@') || a.as_str() != h {
        return Err(bad());
    }
    if !is_host_name(a.host()) {
        return Err(bad());
    }
    Ok(h.to_ascii_lowercase())
}

/// An IP (IPv6 in brackets) or DNS name: labels of `[A-Za-z0-9-]`, at most
/// 253 characters. Checked here rather than with the model's address
/// check, which would tie this module into the model's import circle.
fn is_host_name(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
