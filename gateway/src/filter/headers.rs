//! `request_headers` and `response_headers`: header edits checked when the
//! route was compiled (names and values valid, none the gateway manages),
//! so applying them cannot fail.

use http::HeaderMap;
use portico_registry::filter::HeaderEdits;

/// Applies `edits` to `headers`: removals, then replacements, then
/// additions, so a filter can replace a header and add a second value.
pub fn apply(edits: &HeaderEdits, headers: &mut HeaderMap) {
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, value) in &edits.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &edits.add {
        headers.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn remove_then_set_then_add() {
        let n = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        let edits = HeaderEdits {
            remove: vec![n("x-gone")],
            set: vec![(n("x-env"), v("prod"))],
            add: vec![(n("x-env"), v("eu")), (n("x-gone"), v("back"))],
        };
        let mut h = HeaderMap::new();
        h.insert("x-gone", v("1"));
        h.append("x-env", v("a"));
        h.append("x-env", v("b"));
        apply(&edits, &mut h);
        let all = |name: &str| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-env"), ["prod", "eu"]);
        assert_eq!(all("x-gone"), ["back"]);
    }
}
