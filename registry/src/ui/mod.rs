//! The dashboard: a static page at `/ui/` that reads the registry's own JSON
//! API and follows its watch stream.
//!
//! - this file: the embedded files ([`ASSETS`]) and the router that serves
//!   them, with an ETag per file, `Cache-Control: no-cache` (the browser
//!   asks again each load and gets a 304 while the binary is unchanged) and
//!   a strict Content-Security-Policy ([`CSP`]): the page runs only its own
//!   script and style files and talks only to its own origin.
//! - [`relay`]: `GET /v1/explain?gateway=ID&...`, `/v1/endpoints?gateway=ID`
//!   and `/v1/gateway-routes?gateway=ID`, the registry asking a gateway's
//!   admin listener for its `/explain`, `/endpoints` or `/routes` answer on
//!   the page's behalf, since the page's CSP (and the
//!   admin listener's lack of CORS) keeps it from calling the gateway itself.
//!
//! The page is static and holds no data, so [`crate::auth::classify`] lets
//! anyone load it; every call it makes for data carries the token the user
//! gave it and goes through the same checks as any other client's.

pub mod relay;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The policy every dashboard file is served with: only this origin's
/// scripts, styles and connections, no inline code, not framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
form-action 'none'";

/// One embedded file and its validator.
#[derive(Debug)]
pub struct Asset {
    /// Path under `/ui/` (`""` is the page itself).
    pub path: &'static str,
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The file, compiled into the binary so there is nothing to install.
    pub body: &'static [u8],
    /// A strong ETag: a hash of `body`, computed at compile time.
    pub etag: &'static str,
}

/// FNV-1a over `bytes`: not cryptographic, but an ETag only has to change
/// when the file does, and a `const fn` computes it at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 hex digits of `hash` + `"`, built at compile time.
const fn etag_of(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $file));
        const TAG: [u8; 18] = etag_of(fnv1a(BODY));
        Asset {
            path: $path,
            content_type: $type,
            body: BODY,
            etag: match std::str::from_utf8(&TAG) {
                Ok(s) => s,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

/// Every file of the dashboard.
pub static ASSETS: &[Asset] = &[
    asset!("", "index.html", "text/html; charset=utf-8"),
    asset!("app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "style.css", "text/css; charset=utf-8"),
];

/// The dashboard's routes: `/ui` (a 308 to `/ui/`, so relative links
/// resolve under it) and one per embedded file.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route("/ui", get(|| async { Redirect::permanent("/ui/") }));
    for asset in ASSETS {
        router = router.route(
            &format!("/ui/{}", asset.path),
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        );
    }
    router
}

/// One file, or a bodiless 304 when the browser's copy is current.
pub fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| matches_etag(t.trim(), asset.etag)));
    let headers = [
        (header::ETAG, HeaderValue::from_static(asset.etag)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    )];
    (headers, content_type, asset.body).into_response()
}

/// `If-None-Match` compares weakly (RFC 9110 13.1.2): `W/"x"` matches `"x"`.
fn matches_etag(candidate: &str, etag: &str) -> bool {
    candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header_of(r: &Response, name: header::HeaderName) -> &str {
        r.headers().get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn page_is_served_with_csp_etag_and_no_cache() {
        let r = get("/ui/", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_of(&r, header::CONTENT_SECURITY_POLICY), CSP);
        assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
        assert_eq!(header_of(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(header_of(&r, header::CONTENT_TYPE).starts_with("text/html"));
        let etag = header_of(&r, header::ETAG);
        assert_eq!(etag.len(), 18);
        assert!(etag.starts_with('"') && etag.ends_with('"'));
    }

    #[tokio::test]
    async fn matching_if_none_match_answers_304_without_body() {
        for asset in ASSETS {
            let path = format!("/ui/{}", asset.path);
            let r = get(&path, Some(asset.etag)).await;
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
            assert_eq!(header_of(&r, header::ETAG), asset.etag);
            let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
            assert!(body.is_empty());
            let weak = format!("\"other\", W/{}", asset.etag);
            assert_eq!(
                get(&path, Some(&weak)).await.status(),
                StatusCode::NOT_MODIFIED
            );
        }
    }

    #[tokio::test]
    async fn stale_if_none_match_gets_the_file() {
        let r = get("/ui/app.js", Some("\"0000000000000000\"")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(header_of(&r, header::CONTENT_TYPE).starts_with("text/javascript"));
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], ASSETS[1].body);
    }

    #[tokio::test]
    async fn bare_ui_redirects_permanently_to_the_slash() {
        let r = get("/ui", None).await;
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header_of(&r, header::LOCATION), "/ui/");
    }

    #[test]
    fn etags_differ_between_files_and_follow_content() {
        let tags: std::collections::HashSet<_> = ASSETS.iter().map(|a| a.etag).collect();
        assert_eq!(tags.len(), ASSETS.len());
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("<style"), "inline style block");
        assert!(!html.contains(" style="), "inline style attribute");
        for tag in html.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap();
            assert!(open.contains("src="), "inline script: <script{open}>");
        }
        for (at, _) in html.match_indices(" on") {
            let name: String = html[at + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            let after = html[at + 3 + name.len()..].chars().next();
            assert!(after != Some('='), "inline event handler: on{name}=");
        }
    }
}
