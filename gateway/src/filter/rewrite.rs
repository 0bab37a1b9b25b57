//! `rewrite` (and a redirect's `path_prefix`): the path a request is sent
//! (or sent back) with. The gateway normalises the result like any request
//! path before it leaves (`proxy::outgoing::rewrite`), so what captures
//! bring in can never make a path the edge would refuse.

use std::borrow::Cow;

use portico_registry::filter::PathRewrite;

/// `path` rewritten by `rule`; `prefix_len` bytes of it are the route's
/// matched prefix.
pub fn path<'a>(rule: &PathRewrite, path: &'a str, prefix_len: usize) -> Cow<'a, str> {
    match rule {
        PathRewrite::Prefix(with) => Cow::Owned(replace_prefix(path, prefix_len, with)),
        PathRewrite::Regex {
            pattern,
            replacement,
        } => pattern.0.replace(path, replacement.as_str()),
    }
}

/// The first `prefix_len` bytes of `path` replaced by `with`, joined with
/// exactly one `/` between the two parts (`/api` -> `/v2` turns `/api/x`
/// into `/v2/x`; `/api/` -> `/v2` turns `/api/x` into `/v2/x` too), so a
/// trailing slash written on either side does not double or lose one.
pub fn replace_prefix(path: &str, prefix_len: usize, with: &str) -> String {
    let rest = path.get(prefix_len..).unwrap_or("");
    let mut out = String::with_capacity(with.len() + rest.len() + 1);
    out.push_str(with);
    if rest.is_empty() {
        return out;
    }
    match (with.ends_with('/'), rest.starts_with('/')) {
        (true, true) => out.push_str(&rest[1..]),
        (false, false) => {
            out.push('/');
            out.push_str(rest);
        }
        _ => out.push_str(rest),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_registry::filter::RewritePattern;

    #[test]
    fn prefixes_join_with_one_slash() {
        assert_eq!(replace_prefix("/api/x", 4, "/v2"), "/v2/x");
        assert_eq!(replace_prefix("/api/x", 5, "/v2"), "/v2/x");
        assert_eq!(replace_prefix("/api/x", 4, "/v2/"), "/v2/x");
        assert_eq!(replace_prefix("/api/x", 5, "/v2/"), "/v2/x");
        assert_eq!(replace_prefix("/api", 4, "/v2"), "/v2");
        assert_eq!(replace_prefix("/api/x", 4, "/"), "/x");
        assert_eq!(replace_prefix("/api", 4, "/"), "/");
    }

    #[test]
    fn a_regex_expands_its_captures_in_its_first_match() {
        let rule = PathRewrite::Regex {
            pattern: RewritePattern::new("^/u/([0-9]+)/(?P<rest>.*)$").unwrap(),
            replacement: "/users/$1/${rest}".into(),
        };
        assert_eq!(path(&rule, "/u/42/p/q", 0), "/users/42/p/q");
        assert_eq!(path(&rule, "/other", 0), "/other");
    }
}
