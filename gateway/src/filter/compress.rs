//! The `compression` filter: an upstream's response compressed by the
//! client's `Accept-Encoding` (zstd, br, gzip), as it streams.
//!
//! Negotiation and the streaming encoders are tower-http's
//! `Compression`, run once per response around the response the proxy
//! already has: q-values decide, ties prefer zstd, then br, then gzip; a
//! response already encoded or answering a range is left alone; `Vary:
//! Accept-Encoding` is added to whatever could have been compressed, so a
//! cache never hands a compressed copy to a client that did not ask for one.
//! What is compressed (media types, sizes) is the route's settings, checked
//! in [`portico_registry::filter::Compression`]; this module adds what no
//! setting may change: never a response that must have no body (1xx, 204,
//! 304) or a part of one (206), and, since the bytes change, a strong `ETag` becomes weak
//! (RFC 9110 §8.8.1), as nginx does when it compresses.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use portico_registry::filter::{Compression, Encoding, Level};
use tower::ServiceExt as _;
use tower_http::compression::predicate::Predicate;
use tower_http::compression::{CompressionBody, CompressionLevel};

/// A route's compression, ready to wrap responses.
#[derive(Debug, Clone)]
pub struct Compressor(Arc<Compression>);

impl Compressor {
    /// The compressor for `config`.
    pub fn new(config: &Compression) -> Compressor {
        Compressor(Arc::new(config.clone()))
    }

    /// `resp`, compressed when the client `accept`s an encoding offered
    /// and the response is one to compress; as it is otherwise.
    pub fn wrap<B>(
        &self,
        accept: Option<&HeaderValue>,
        resp: Response<B>,
    ) -> Response<CompressionBody<B>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = &self.0;
        let had_encoding = resp.headers().contains_key(header::CONTENT_ENCODING);
        let mut slot = Some(resp);
        let inner = tower::service_fn(move |_: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(slot.take().expect("called once")))
        });
        let offers = |e: Encoding| config.encodings.contains(&e);
        let service = tower_http::compression::Compression::new(inner)
            .zstd(offers(Encoding::Zstd))
            .br(offers(Encoding::Brotli))
            .gzip(offers(Encoding::Gzip))
            .quality(match config.level {
                Level::Fastest => CompressionLevel::Fastest,
                Level::Default => CompressionLevel::Precise(4),
                Level::Best => CompressionLevel::Best,
            })
            .compress_when(self.clone());
        let mut req = Request::new(());
        if let Some(accept) = accept {
            req.headers_mut()
                .insert(header::ACCEPT_ENCODING, accept.clone());
        }
        let Some(Ok(mut resp)) = service.oneshot(req).now_or_never() else {
            unreachable!("the inner service answers at once and never fails");
        };
        if !had_encoding && resp.headers().contains_key(header::CONTENT_ENCODING) {
            weaken_etag(resp.headers_mut());
        }
        resp
    }
}

impl Predicate for Compressor {
    fn should_compress<B: Body>(&self, resp: &Response<B>) -> bool {
        let status = resp.status();
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return false;
        }
        let headers = resp.headers();
        let typed = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| self.0.compresses(t));
        let size = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| resp.body().size_hint().exact());
        typed && size.is_none_or(|n| n >= self.0.min_size)
    }
}

/// `ETag: "x"` becomes `W/"x"`: the compressed bytes are not the ones the
/// strong validator named.
fn weaken_etag(headers: &mut http::HeaderMap) {
    let Some(tag) = headers.get(header::ETAG) else {
        return;
    };
    if tag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(tag.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};

    fn compressor() -> Compressor {
        let spec = portico_registry::filter::FilterSpec {
            kind: "compression".into(),
            ..Default::default()
        };
        match portico_registry::filter::compile_filters(&[spec])
            .unwrap()
            .remove(0)
        {
            portico_registry::filter::Filter::Compression(c) => Compressor::new(&c),
            other => panic!("{other:?}"),
        }
    }

    fn response(body: &'static str, content_type: &str) -> Response<Full<Bytes>> {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::ETAG, "\"v1\"")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[tokio::test]
    async fn a_large_text_response_is_compressed_and_its_etag_weakened() {
        let text: &'static str = "hello portico ".repeat(200).leak();
        let accept = HeaderValue::from_static("gzip, br;q=0.5");
        let resp = compressor().wrap(Some(&accept), response(text, "text/plain"));
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(resp.headers()[header::VARY], "accept-encoding");
        assert_eq!(resp.headers()[header::ETAG], "W/\"v1\"");
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 10, "{} bytes", bytes.len());
    }

    #[test]
    fn small_binary_or_unasked_responses_are_left_alone() {
        let c = compressor();
        let accept = HeaderValue::from_static("gzip");
        let small = c.wrap(Some(&accept), response("short", "text/plain"));
        assert!(!small.headers().contains_key(header::CONTENT_ENCODING));
        let big: &'static str = "x".repeat(4096).leak();
        let image = c.wrap(Some(&accept), response(big, "image/png"));
        assert!(!image.headers().contains_key(header::CONTENT_ENCODING));
        let unasked = c.wrap(None, response(big, "text/plain"));
        assert!(!unasked.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(unasked.headers()[header::ETAG], "\"v1\"");
    }
}
