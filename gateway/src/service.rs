//! The gateway's downstream side as a `tower::Service`, so an embedder can
//! wrap it in tower and tower-http layers ([`DownstreamLayer`]).
//!
//! The listeners still own the connections (caps, TLS, idle and drain);
//! a layer sees each request between hyper and the proxy. The connection a
//! request came on travels in its extensions as an `Arc<Peer>`, put there
//! by the listener only when a layer is configured: without one, requests
//! go to the proxy directly, as before, and pay nothing for this.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::proxy::{Peer, Proxy, ProxyBody};

/// An error a layer may fail a request with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a layered service's responses.
pub type DownstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// The downstream service after the embedder's layers.
pub type LayeredService =
    BoxCloneSyncService<Request<RequestBody>, Response<DownstreamBody>, BoxError>;

/// The proxy as a `tower::Service`: one request in, its response out; it
/// never fails (errors are responses).
#[derive(Debug, Clone)]
pub struct GatewayService {
    proxy: Arc<Proxy>,
}

impl GatewayService {
    /// The service over `proxy`.
    pub fn new(proxy: Arc<Proxy>) -> GatewayService {
        GatewayService { proxy }
    }
}

impl Service<Request<RequestBody>> for GatewayService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Reads the connection from the request's `Arc<Peer>` extension (the
    /// listener's); a request without one is treated as from an
    /// untrusted, unknown cleartext peer (`0.0.0.0:0`).
    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let proxy = self.proxy.clone();
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        Box::pin(async move {
            let peer = match peer {
                Some(p) => p,
                None => Arc::new(Peer::new(
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    false,
                )),
            };
            let (mut resp, beside) = proxy.handle(req, &peer).await;
            beside.fold(&mut resp);
            Ok(resp)
        })
    }
}

/// Layers an embedder puts around the gateway's downstream side
/// ([`crate::GatewayOptions::layer`]): any `tower::Layer` over
/// [`GatewayService`] whose service answers `http` responses, e.g.
/// `tower::ServiceBuilder::new().layer(tower_http::...)`.
#[derive(Clone)]
pub struct DownstreamLayer {
    wrap: Arc<dyn Fn(GatewayService) -> LayeredService + Send + Sync>,
}

impl std::fmt::Debug for DownstreamLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownstreamLayer(..)")
    }
}

impl DownstreamLayer {
    /// Wraps every downstream request in `layer`. A layer's error (a
    /// tower timeout, say) is answered 500 `internal` and logged; response
    /// bodies are boxed, which costs one allocation per request.
    pub fn new<L, S, B>(layer: L) -> DownstreamLayer
    where
        L: Layer<GatewayService, Service = S> + Send + Sync + 'static,
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let wrap = move |inner: GatewayService| {
            let service = layer
                .layer(inner)
                .map_response(|resp: Response<B>| {
                    resp.map(|b| b.map_err(Into::into).boxed_unsync())
                })
                .map_err(Into::into);
            BoxCloneSyncService::new(service)
        };
        DownstreamLayer {
            wrap: Arc::new(wrap),
        }
    }

    /// The layered service over `proxy` (its errors answered by
    /// [`answer_error`]).
    pub fn service(&self, proxy: Arc<Proxy>) -> LayeredService {
        (self.wrap)(GatewayService::new(proxy))
    }
}

/// The answer to a request a layer failed: 500 `internal`, logged.
pub fn answer_error(e: &BoxError) -> Response<DownstreamBody> {
    tracing::error!(error = %e, "a downstream layer failed a request");
    ProxyError::Internal(e.to_string())
        .to_response()
        .map(|b| b.map_err(|never| match never {}).boxed_unsync())
}
