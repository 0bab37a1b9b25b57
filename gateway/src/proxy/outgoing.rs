//! Phase 3, the upstream request filter: the request as the upstream will
//! receive it. Hop-by-hop headers go, forwarding headers are set (replaced,
//! unless the peer is a trusted hop, then appended to), the path is the
//! normalised one (with the route's prefix stripped when it says so), and
//! the body gets its size limit and read timeout.
//!
//! The fields the proxy adds to every request are kept beside its map
//! ([`Added`]) until it is sent: the native HTTP/1.1 client writes them
//! after the map's own, the native HTTP/2 client over h2c sends them
//! encoded after the map's ([`Pairs::hpack`]), and everything else folds
//! them into the map.
//!
//! `TE` is hop-by-hop and goes like the others, with one exception: HTTP/2
//! allows exactly `te: trailers` (RFC 9113 §8.2.2), and gRPC servers built
//! on gRPC's C core refuse a call without it, so a request that carried it
//! has it when (and only when) it is sent to an HTTP/2 upstream
//! ([`target`]). A lone `te: trailers`, in lowercase, is left in the map
//! until then (a route's filters do not see it: it is taken out before
//! them). A gRPC-Web call translated here gets it too: its client spoke
//! HTTP/1.1 and could not send it. A mirrored copy sent to an h2c shadow
//! gets it as the request's own try would.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme, Uri};
use http::{Request, Version};
use http_body_util::{Either, Full};
use portico_registry::filter::Rewrite;
use portico_registry::model::Scheme;
use portico_registry::route::BodyLimit;

use super::edge::{EdgePolicy, Front, UnderscorePolicy};
use super::{BodyState, Peer, RequestCtx, X_REQUEST_ID};
use crate::balance::Endpoint;
use crate::body::{ClientBody, RequestBody};
use crate::error::ProxyError;
use crate::grpc::{GRPC_TIMEOUT, GrpcKind, parse_timeout};
use crate::h1::client::Field;
use crate::path::{PathPolicy, normalize};
use crate::pool::UpstreamBody;
use crate::router::Matched;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A request ready to be pointed at an endpoint.
pub(super) struct Outgoing {
    /// Method, headers and body (URI and version are set per endpoint).
    pub req: Request<UpstreamBody>,
    /// What the upstream receives as path and query.
    pub path_and_query: PathAndQuery,
    /// The host routed on, sent as `Host` or `:authority`.
    pub host: Option<HeaderValue>,
    /// The client's side of an upgrade it asked for.
    pub upgrade: Option<crate::tunnel::DownstreamUpgrade>,
    /// The request's `consistent_hash` key, on routes that balance by one.
    pub hash_key: Option<u64>,
    /// Send `te: trailers` to HTTP/2 upstreams (the client sent it, or the
    /// call is gRPC-Web translated here).
    pub te_trailers: bool,
    /// A gRPC call's `grpc-timeout`: its deadline, counted from arrival.
    pub grpc_timeout: Option<Duration>,
    /// The fields the proxy adds, not in `req`'s map yet.
    pub added: Added,
}

/// The fields the proxy adds to a request, kept beside its map instead of
/// inserted into it: `X-Forwarded-For`, `-Proto` and `-Host` (from an
/// untrusted peer, whose own were dropped) and `X-Request-Id` (when the
/// client sent none). The native HTTP/1.1 client writes them after the
/// map's fields ([`Added::pairs`]), and the native HTTP/2 client sends
/// them encoded after the map's ([`Pairs::hpack`]); four insertions into
/// the map, each hashing a custom name, were about 1,000 instructions a
/// request (callgrind), about 2,000 a unary gRPC call. Whatever reads the
/// request's headers or sends them another way gets them in the map first
/// ([`Added::fold`]): a route's filters, a mirror, hyper's clients, and
/// HTTP/2 over TLS.
///
/// The forwarding values are not copied here but read from their [`Hop`]
/// when listed: this stays small (it lives in each request's future).
#[derive(Debug, Default)]
pub(super) struct Added {
    /// This hop's `X-Forwarded-*` are added.
    forwarded: bool,
    /// The request id to add.
    request_id: Option<HeaderValue>,
}

/// Where the forwarding fields' values come from: the peer, and the host
/// routed on (`Outgoing::host` as prepared: a route with filters folds
/// the fields in before its rewrite may change that host).
#[derive(Clone, Copy)]
pub(super) struct Hop<'a> {
    pub peer: &'a Peer,
    pub host: Option<&'a HeaderValue>,
}

/// Stands in the unused places of [`Pairs`].
static NO_VALUE: HeaderValue = HeaderValue::from_static("");

/// [`Added`]'s fields as a list (no allocation).
pub(super) struct Pairs<'a> {
    list: [Field<'a>; 4],
    len: usize,
}

impl<'a> Pairs<'a> {
    /// No fields.
    pub fn none() -> Pairs<'static> {
        Pairs {
            list: [(&X_REQUEST_ID, &NO_VALUE); 4],
            len: 0,
        }
    }

    fn push(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        self.list[self.len] = (name, value);
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[Field<'a>] {
        &self.list[..self.len]
    }

    /// The fields encoded for the native HTTP/2 client to send after the
    /// map's ([`crate::h2::client::SendRequest::send_with`]); empty, with
    /// no copy, when there are none.
    pub fn hpack(&self) -> Bytes {
        let fields = self.as_slice();
        if fields.is_empty() {
            return Bytes::new();
        }
        // Each literal: a flags octet, and two lengths of at most 5 octets
        // for a name and value of at most a few kilobytes.
        let most = fields
            .iter()
            .map(|(n, v)| 11 + n.as_str().len() + v.len())
            .sum();
        crate::buffers::shared_written(most, |dst| {
            crate::h2::hpack::literal_fields(fields.iter().copied(), dst);
        })
    }
}

impl Added {
    /// The fields, in the order they are written.
    pub fn pairs<'a>(&'a self, hop: Hop<'a>) -> Pairs<'a> {
        let mut pairs = Pairs::none();
        if self.forwarded {
            pairs.push(&X_FORWARDED_FOR, &hop.peer.ip);
            pairs.push(&X_FORWARDED_PROTO, &hop.peer.proto);
            if let Some(host) = hop.host {
                pairs.push(&X_FORWARDED_HOST, host);
            }
        }
        if let Some(id) = &self.request_id {
            pairs.push(&X_REQUEST_ID, id);
        }
        pairs
    }

    /// What one try's client writes beside the map: every field for the
    /// native clients (`native`: HTTP/1.1, and HTTP/2 over h2c); none for
    /// another, which gets them in the map, once: `folded` remembers it
    /// for the later tries (which find them there, whatever their client).
    pub fn for_try<'a>(
        &'a self,
        hop: Hop<'a>,
        (native, folded): (bool, &mut bool),
        headers: &mut HeaderMap,
    ) -> Pairs<'a> {
        if *folded {
            return Pairs::none();
        }
        if native {
            return self.pairs(hop);
        }
        self.fold(hop, headers);
        *folded = true;
        Pairs::none()
    }

    /// Inserts the fields into `headers` (replacing any of those names).
    pub fn fold(&self, hop: Hop<'_>, headers: &mut HeaderMap) {
        for &(name, value) in self.pairs(hop).as_slice() {
            headers.insert(name, value.clone());
        }
    }
}

/// Phase 3: builds the upstream request from the client's.
pub(super) fn prepare(
    mut req: Request<RequestBody>,
    front: &Front,
    matched: &Matched<'_>,
    peer: &Peer,
    edge: &EdgePolicy,
    ctx: &mut RequestCtx<'_>,
) -> Result<Outgoing, ProxyError> {
    use http_body::Body as _;
    let route = &matched.entry.route;
    let limit = match route.max_request_body {
        BodyLimit::Default => edge.max_body,
        BodyLimit::Bytes(n) => Some(n),
        BodyLimit::Unlimited => None,
    };
    // A route's `body_limit` filter only ever lowers the limit.
    let limit = match matched.entry.filters.as_ref().and_then(|c| c.body_limit()) {
        Some(max) => Some(limit.map_or(max, |l| l.min(max))),
        None => limit,
    };
    if let Some(limit) = limit {
        // A declared length over the limit: refused before reading a byte.
        if req.body().size_hint().lower() > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
    }
    let hash_key =
        super::pick::hash_key(route, front.path(&req), req.headers(), peer.ip.as_bytes());
    // An implicit route never strips a gRPC call's path: its server routes
    // on the whole `/{service}/{method}`.
    let keep_path =
        matched.entry.source == crate::router::RouteSource::Implicit && ctx.grpc.is_some();
    let strip = (route.strip_prefix && !keep_path).then_some(matched.prefix_len);
    let path_and_query = upstream_path(req.uri(), front.path(&req), strip)?;
    let host = front.host.as_ref().map(|h| h.value.clone());
    let upgrade = is_upgrade(&req).then(|| crate::tunnel::DownstreamUpgrade::take(&mut req));
    let grpc_timeout = match ctx.grpc {
        Some(_) => req
            .headers()
            .get(&GRPC_TIMEOUT)
            .map(parse_timeout)
            .transpose()?,
        None => None,
    };
    let web = ctx.grpc.filter(|k| k.is_web() && route.grpc_web);
    if let Some(kind) = web {
        crate::grpc::web::request_headers(req.headers_mut(), kind);
    }
    let (te_trailers, mut added) = prepare_headers(
        req.headers_mut(),
        upgrade.is_some(),
        edge.underscores,
        peer,
        host.as_ref(),
    );
    let te_trailers = te_trailers || web.is_some();
    if ctx.request_id_received {
        // In the map already: one value, however many the client sent.
        req.headers_mut()
            .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    } else {
        added.request_id = Some(ctx.request_id.clone());
    }
    let (parts, body) = req.into_parts();
    let body = if body.is_end_stream() {
        Either::Right(Full::new(Bytes::new()))
    } else {
        let limit = limit.unwrap_or(u64::MAX);
        let (mut body, watch) = ClientBody::new(body, limit, edge.body_read_timeout, ctx.now());
        if web == Some(GrpcKind::WebText) {
            body.decode_web_text();
        }
        ctx.body = BodyState::Streaming(watch);
        Either::Left(body)
    };
    Ok(Outgoing {
        req: Request::from_parts(parts, body),
        path_and_query,
        host,
        upgrade,
        hash_key,
        te_trailers,
        grpc_timeout,
        added,
    })
}

/// The request's headers as the upstream gets them, and the forwarding
/// fields to add; true when the client sent `te: trailers`.
fn prepare_headers(
    headers: &mut HeaderMap,
    upgrade: bool,
    underscores: UnderscorePolicy,
    peer: &Peer,
    host: Option<&HeaderValue>,
) -> (bool, Added) {
    let proto = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let drop = Drop {
        underscores: underscores == UnderscorePolicy::Drop,
        forwarded: !peer.trusted,
        length_if_chunked: true,
        lone_te: true,
    };
    let te_trailers = strip_headers(headers, drop);
    if let Some(proto) = proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    (te_trailers, forwarded(headers, peer, host))
}

/// `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`. From an
/// untrusted peer, whatever the client sent in them (and in `Forwarded`)
/// was dropped with the hop-by-hop headers, and this hop's values are
/// returned to be added: an upstream must be able to believe them. From a
/// trusted hop, its values are kept and this hop is appended, in the map,
/// to `X-Forwarded-For` and, when the hop uses it, `Forwarded`.
fn forwarded(headers: &mut HeaderMap, peer: &Peer, host: Option<&HeaderValue>) -> Added {
    if !peer.trusted {
        return Added {
            forwarded: true,
            request_id: None,
        };
    }
    append(headers, &X_FORWARDED_FOR, &peer.ip);
    if headers.contains_key(header::FORWARDED) {
        append(headers, &header::FORWARDED, &peer.forwarded);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), peer.proto.clone());
    }
    if let (false, Some(h)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    Added::default()
}

/// Appends `value` to the list in `name` (all its lines joined by `, `).
fn append(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let mut prior = headers.get_all(name).iter().peekable();
    if prior.peek().is_none() {
        headers.insert(name.clone(), value.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for v in prior {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(name.clone(), v);
    }
}

/// The path and query the upstream receives: the normalised path, with
/// `strip` bytes of matched prefix removed, and the query as received.
fn upstream_path(uri: &Uri, path: &str, strip: Option<usize>) -> Result<PathAndQuery, ProxyError> {
    // An absolute-form target with a query and no path
    // (`http://host?q`) has the path `/` but `?q` as its path and query:
    // that one is built, with its `/`.
    if strip.is_none()
        && path == uri.path()
        && let Some(pq) = uri.path_and_query()
        && !pq.as_str().starts_with('?')
    {
        return Ok(pq.clone());
    }
    let rest = match strip {
        Some(n) => path.get(n..).unwrap_or(""),
        None => path,
    };
    let mut out = String::with_capacity(rest.len() + 1 + uri.query().map_or(0, |q| q.len() + 1));
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    PathAndQuery::from_maybe_shared(out).map_err(|_| ProxyError::BadRequest("path"))
}

/// Phase 3, the route's `rewrite`: the path (and query, kept as received)
/// and host the upstream receives. The new path is normalised like any
/// request path, so what a capture brought in can never make one the edge
/// would refuse: such a request is refused (400) instead.
pub(super) fn rewrite(
    out: &mut Outgoing,
    rule: &Rewrite,
    prefix_len: usize,
    policy: &PathPolicy,
) -> Result<(), ProxyError> {
    if let Some(path_rule) = &rule.path {
        let refused = || ProxyError::BadRequest("the rewritten path");
        let new = crate::filter::rewrite::path(path_rule, out.path_and_query.path(), prefix_len);
        let path = normalize(&new, policy).map_err(|_| refused())?;
        let query = out.path_and_query.query();
        let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        out.path_and_query = PathAndQuery::from_maybe_shared(pq).map_err(|_| refused())?;
    }
    if let Some(host) = &rule.host {
        out.host = Some(host.clone());
    }
    Ok(())
}

/// An HTTP/1.1 request asking to switch protocols.
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Points the request at `endpoint`: URI form, version, host and `te`
/// depend on the protocol the endpoint speaks.
pub(super) fn target(
    req: &mut Request<UpstreamBody>,
    endpoint: &Endpoint,
    path_and_query: &PathAndQuery,
    host: Option<&HeaderValue>,
    te_trailers: bool,
) -> Result<(), ProxyError> {
    if te_trailers {
        // The same request may go to an HTTP/1.1 endpoint after an HTTP/2
        // one refused its connection.
        if endpoint.scheme == Scheme::H2c {
            // Usually still there as the client sent it (see
            // `strip_headers`).
            if !lone_trailers(req.headers().get_all(header::TE).iter()) {
                req.headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
        } else {
            req.headers_mut().remove(header::TE);
        }
    }
    match endpoint.scheme {
        // `https` too: the pool turns the request into HTTP/2 form if the
        // handshake's ALPN chose h2.
        Scheme::Http | Scheme::Https => {
            // HTTP/1.1 upstreams get the origin form and one Host: the one
            // routed on, or the endpoint's own when the client named none.
            *req.uri_mut() = Uri::from(path_and_query.clone());
            *req.version_mut() = Version::HTTP_11;
            match host {
                // The common case: the client's own Host, already in place.
                Some(h) if req.headers().get(header::HOST) == Some(h) => {}
                Some(h) => {
                    req.headers_mut().insert(header::HOST, h.clone());
                }
                None => {
                    let value = HeaderValue::from_str(endpoint.authority.as_str())
                        .map_err(|_| ProxyError::BadRequest("host"))?;
                    req.headers_mut().insert(header::HOST, value);
                }
            }
        }
        Scheme::H2c => {
            // HTTP/2 carries the host in :authority and no Host header. An
            // HTTP/2 client's own :authority, when it is the host routed on
            // (the usual case), is kept as it is, not copied again.
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(UriScheme::HTTP);
            parts.authority = match (parts.authority.take(), host) {
                (Some(own), Some(h)) if own.as_str().as_bytes() == h.as_bytes() => Some(own),
                _ => Some(
                    host.and_then(|h| {
                        let copy = crate::buffers::shared_copy(h.as_bytes());
                        Authority::from_maybe_shared(copy).ok()
                    })
                    .unwrap_or_else(|| endpoint.authority.clone()),
                ),
            };
            parts.path_and_query = Some(path_and_query.clone());
            // Scheme, authority and path all set: `from_parts` cannot fail.
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("uri"))?;
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
        }
    }
    Ok(())
}

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-*`.
///
/// One pass over the names finds what is there; most messages carry at most
/// `Connection: keep-alive`, which then costs two removals and no parsing.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let _ = strip_headers(headers, Drop::default());
}

/// What a request also loses on its way upstream, besides hop-by-hop
/// headers.
#[derive(Debug, Clone, Copy, Default)]
struct Drop {
    /// Names containing `_`.
    underscores: bool,
    /// `Forwarded` and `X-Forwarded-For`, `-Proto` and `-Host` (sent by an
    /// untrusted peer: this hop's own are added instead).
    forwarded: bool,
    /// `Content-Length` beside `Transfer-Encoding`: never let a request
    /// reach a backend carrying both framings (found in the same pass).
    length_if_chunked: bool,
    /// A lone `te: trailers` (a request's: [`target`] keeps it for an
    /// HTTP/2 upstream and takes it out for an HTTP/1.1 one).
    lone_te: bool,
}

/// Whether `TE` names `trailers`, and whether it is exactly one
/// `te: trailers` (what HTTP/2 allows).
fn te_fields(headers: &HeaderMap) -> (bool, bool) {
    let all = headers.get_all(header::TE);
    let named = all.iter().any(|v| has_token(v, "trailers"));
    (named, lone_trailers(all.iter()))
}

/// Exactly one `te`, exactly `trailers`: in lowercase, as HTTP/2 servers
/// built on the h2 crate compare it (hyper's client drops any other).
fn lone_trailers<'a>(mut values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    matches!((values.next(), values.next()), (Some(v), None) if v == "trailers")
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// [`strip_hop_by_hop`], and what `drop` names. True when `TE` named
/// `trailers`: looked at only when there is a `TE`, so other requests pay
/// nothing for it. A request's lone `te: trailers`, as gRPC clients send
/// it, is left in place when `drop` says so, for [`target`]: it keeps the
/// field for an HTTP/2 upstream (saving a removal and an insertion a call)
/// and takes it out for an HTTP/1.1 one.
fn strip_headers(headers: &mut HeaderMap, drop: Drop) -> bool {
    let (mut connection, mut keep_alive, mut te, mut trailer, mut encoding, mut upgrade) =
        (false, false, false, false, false, false);
    let (mut forwarded, mut x_forwarded, mut scan) = (false, false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            te = true;
        } else if name == header::TRAILER {
            trailer = true;
        } else if name == header::TRANSFER_ENCODING {
            encoding = true;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if name == header::FORWARDED {
            forwarded = drop.forwarded;
        } else {
            let n = name.as_str().as_bytes();
            if n == b"keep-alive" {
                keep_alive = true;
            } else if n.starts_with(b"proxy-") || (drop.underscores && n.contains(&b'_')) {
                scan = true;
            }
            x_forwarded |= drop.forwarded && n.starts_with(b"x-forwarded-");
        }
    }
    // Before the fields `Connection` names go: an HTTP/1.1 client sends
    // `Connection: TE` with its `TE` (RFC 9110, 10.1.4).
    let (te_trailers, keep_te) = if te {
        te_fields(headers)
    } else {
        (false, false)
    };
    if connection {
        // Tokens other than the usual ones name extra headers to drop.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty()
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"upgrade")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
        for name in &named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if keep_alive {
        headers.remove(&KEEP_ALIVE);
    }
    if te && !(keep_te && drop.lone_te) {
        headers.remove(header::TE);
    }
    if trailer {
        headers.remove(header::TRAILER);
    }
    if encoding {
        headers.remove(header::TRANSFER_ENCODING);
        if drop.length_if_chunked {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
    if forwarded {
        headers.remove(header::FORWARDED);
    }
    if x_forwarded {
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            headers.remove(name);
        }
    }
    if scan {
        let gone: Vec<HeaderName> = headers
            .keys()
            .filter(|k| {
                let n = k.as_str().as_bytes();
                n.starts_with(b"proxy-") || (drop.underscores && n.contains(&b'_'))
            })
            .cloned()
            .collect();
        for name in gone {
            headers.remove(&name);
        }
    }
    te_trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-whatever", HeaderValue::from_static("1"));
        h.insert("x_under", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut with_underscores = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-keep") && h.contains_key("x_under"));
        assert!(
            strip_headers(
                &mut with_underscores,
                Drop {
                    underscores: true,
                    forwarded: true,
                    length_if_chunked: false,
                    lone_te: true,
                },
            ),
            "te: trailers seen"
        );
        // Left for `target` to keep or take out by the upstream's protocol.
        assert_eq!(with_underscores.len(), 2, "{with_underscores:?}");
        assert!(with_underscores.contains_key(header::TE));
    }

    /// A response keeps its length whatever else it says; a request with
    /// both framings reaches the backend with neither.
    #[test]
    fn a_request_loses_its_length_beside_a_transfer_encoding() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut response = h.clone();
        strip_hop_by_hop(&mut response);
        assert_eq!(response[header::CONTENT_LENGTH], "3");
        let peer = peer(false);
        prepare_headers(&mut h, false, UnderscorePolicy::Allow, &peer, None);
        assert!(!h.contains_key(header::CONTENT_LENGTH), "{h:?}");
        assert!(!h.contains_key(header::TRANSFER_ENCODING), "{h:?}");
        assert_eq!(h["x-keep"], "1");
    }

    fn peer(trusted: bool) -> Peer {
        let mut p = Peer::new("127.0.0.1:5".parse().unwrap(), false);
        p.trusted = trusted;
        p
    }

    /// The request's headers after phase 3, the added fields folded in;
    /// and the added fields' names, in the order the native client writes
    /// them.
    fn forwarded_headers(
        mut h: HeaderMap,
        peer: &Peer,
        host: Option<&HeaderValue>,
    ) -> (HeaderMap, Vec<String>) {
        let (_, added) = prepare_headers(&mut h, false, UnderscorePolicy::Allow, peer, host);
        let hop = Hop { peer, host };
        let pairs = added.pairs(hop);
        let names = pairs
            .as_slice()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        for (name, _) in pairs.as_slice() {
            assert!(!h.contains_key(*name), "{name} also in the map");
        }
        added.fold(hop, &mut h);
        (h, names)
    }

    #[test]
    fn forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-port", HeaderValue::from_static("8443"));
        let host = HeaderValue::from_static("a.example");
        let (untrusted, added) = forwarded_headers(h.clone(), &peer(false), Some(&host));
        assert_eq!(
            added,
            ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        );
        assert_eq!(untrusted.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(untrusted[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(untrusted[&X_FORWARDED_PROTO], "http");
        assert_eq!(untrusted[&X_FORWARDED_HOST], "a.example");
        assert!(!untrusted.contains_key(header::FORWARDED));
        assert_eq!(untrusted["x-forwarded-port"], "8443", "not one of ours");
        // No host routed on: the client's X-Forwarded-Host goes all the same.
        let (no_host, added) = forwarded_headers(h.clone(), &peer(false), None);
        assert_eq!(added, ["x-forwarded-for", "x-forwarded-proto"]);
        assert!(!no_host.contains_key(&X_FORWARDED_HOST));

        let (trusted, added) = forwarded_headers(h, &peer(true), Some(&host));
        assert!(added.is_empty(), "{added:?}");
        assert_eq!(trusted[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(
            trusted[header::FORWARDED],
            "for=1.1.1.1, for=127.0.0.1;proto=http"
        );
        assert_eq!(trusted[&X_FORWARDED_PROTO], "https");
        assert_eq!(trusted[&X_FORWARDED_HOST], "evil.example");
        // On the TLS listener: https, and a trusted hop's Forwarded is
        // appended to with proto=https; an untrusted peer gets none.
        let tls = Peer::new("127.0.0.1:5".parse().unwrap(), true);
        let (secure, _) = forwarded_headers(HeaderMap::new(), &tls, None);
        assert_eq!(secure[&X_FORWARDED_PROTO], "https");
        assert!(!secure.contains_key(header::FORWARDED));
        let mut hop = HeaderMap::new();
        hop.insert(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        let mut p = Peer::new("127.0.0.1:5".parse().unwrap(), true);
        p.trusted = true;
        let (hop, _) = forwarded_headers(hop, &p, None);
        assert_eq!(
            hop[header::FORWARDED],
            "for=1.1.1.1, for=127.0.0.1;proto=https"
        );
        assert_eq!(hop[&X_FORWARDED_PROTO], "https");
    }

    /// Tries that change client: each field reaches each try once, beside
    /// the map or in it, never both.
    #[test]
    fn each_try_gets_the_added_fields_once() {
        let host = HeaderValue::from_static("a.example");
        let peer = peer(false);
        let (_, added) = prepare_headers(
            &mut HeaderMap::new(),
            false,
            UnderscorePolicy::Allow,
            &peer,
            Some(&host),
        );
        let hop = Hop {
            peer: &peer,
            host: Some(&host),
        };
        for clients in [
            [true, false, true],
            [false, true, true],
            [true, true, false],
        ] {
            let (mut headers, mut folded) = (HeaderMap::new(), false);
            for native in clients {
                let pairs = added.for_try(hop, (native, &mut folded), &mut headers);
                let beside: Vec<_> = pairs.as_slice().iter().map(|(n, _)| *n).collect();
                for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
                    let in_map = headers.get_all(name).iter().count();
                    let written = beside.iter().filter(|n| *n == name).count();
                    assert_eq!(in_map + written, 1, "{name} for {clients:?}");
                }
            }
        }
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_query() {
        let uri: Uri = "/echo/a/b?x=1".parse().unwrap();
        assert_eq!(
            upstream_path(&uri, "/echo/a/b", Some(5)).unwrap(),
            "/a/b?x=1"
        );
        let uri: Uri = "/echo?x=1".parse().unwrap();
        assert_eq!(upstream_path(&uri, "/echo", Some(5)).unwrap(), "/?x=1");
        let uri: Uri = "/echo/".parse().unwrap();
        assert_eq!(upstream_path(&uri, "/echo/", Some(6)).unwrap(), "/");
        let uri: Uri = "/a/../b?q".parse().unwrap();
        assert_eq!(upstream_path(&uri, "/b", None).unwrap(), "/b?q");
        // No path before the query (found by the http1_raw fuzz target).
        let uri: Uri = "http://c.test?t/x".parse().unwrap();
        assert_eq!(upstream_path(&uri, "/", None).unwrap(), "/?t/x");
    }

    /// An h2c try carries the host routed on as `:authority`, and no Host:
    /// an HTTP/2 client's own `:authority` when it is that host (kept as it
    /// is), the host routed on when the client's differs or it sent Host
    /// alone (HTTP/1.1), the endpoint's own when it named none.
    #[test]
    fn an_h2c_try_carries_the_host_routed_on_as_its_authority() {
        let health = crate::health::HealthRegistry::default();
        let mut endpoint = Endpoint::from_static("127.0.0.1:9".parse().unwrap(), &health);
        endpoint.scheme = Scheme::H2c;
        let pq = PathAndQuery::from_static("/svc/Call?x=1");
        let host = HeaderValue::from_static("a.test");
        let cases = [
            ("http://a.test/svc/Call", Some(&host), "a.test"),
            ("https://b.test/svc/Call", Some(&host), "a.test"),
            ("http://A.test/svc/Call", Some(&host), "a.test"),
            ("/svc/Call", Some(&host), "a.test"),
            ("/svc/Call", None, "127.0.0.1:9"),
        ];
        for (uri, host, want) in cases {
            let mut req = Request::builder()
                .uri(uri)
                .header(header::HOST, "a.test")
                .body(Either::Right(Full::new(Bytes::new())))
                .unwrap();
            // A retry points the same request again.
            for _ in 0..2 {
                target(&mut req, &endpoint, &pq, host, false).unwrap();
                assert_eq!(req.uri(), &*format!("http://{want}/svc/Call?x=1"), "{uri}");
                assert_eq!(req.headers().get(header::HOST), None, "{uri}");
                assert_eq!(req.version(), Version::HTTP_2);
            }
        }
    }

    /// `te: trailers` reaches an HTTP/2 upstream exactly once and an
    /// HTTP/1.1 one never, whatever else the client's `TE` said, try after
    /// try on the same request (a retry may change protocol).
    #[test]
    fn te_trailers_goes_to_http2_upstreams_alone_and_to_http1_ones_not_at_all() {
        let health = crate::health::HealthRegistry::default();
        let mut h2c = Endpoint::from_static("127.0.0.1:9".parse().unwrap(), &health);
        h2c.scheme = Scheme::H2c;
        let h1 = Endpoint::from_static("127.0.0.1:9".parse().unwrap(), &health);
        let pq = PathAndQuery::from_static("/svc/Call");
        let drop = Drop {
            underscores: false,
            forwarded: true,
            length_if_chunked: true,
            lone_te: true,
        };
        let sent: [&[(&str, &str)]; 6] = [
            &[("te", "trailers")],
            &[("te", "Trailers")],
            &[("te", "trailers, deflate")],
            &[("te", "trailers"), ("te", "trailers")],
            // As RFC 9110 asks of an HTTP/1.1 client.
            &[("connection", "te"), ("te", "trailers")],
            &[("te", "deflate")],
        ];
        for fields in sent {
            let mut req = Request::builder().uri("/svc/Call");
            for (n, v) in fields {
                req = req.header(*n, *v);
            }
            let mut req = req.body(Either::Right(Full::new(Bytes::new()))).unwrap();
            let te_trailers = strip_headers(req.headers_mut(), drop);
            assert_eq!(te_trailers, fields != [("te", "deflate")], "{fields:?}");
            for endpoint in [&h2c, &h1, &h2c, &h2c, &h1] {
                target(&mut req, endpoint, &pq, None, te_trailers).unwrap();
                let got: Vec<_> = req.headers().get_all(header::TE).iter().collect();
                match (endpoint.scheme, te_trailers) {
                    // Exactly `trailers`, in lowercase: h2-based servers
                    // compare it byte for byte.
                    (Scheme::H2c, true) => assert_eq!(got, ["trailers"], "{fields:?}"),
                    _ => assert!(
                        got.is_empty(),
                        "{fields:?} to {:?}: {got:?}",
                        endpoint.scheme
                    ),
                }
                assert!(!req.headers().contains_key(header::CONNECTION));
            }
        }
    }
}
