//! Request mirroring (`mirror = {service, percent, max_in_flight}`): a copy
//! of a share of a route's requests goes to another service, and its
//! answer is read and thrown away.
//!
//! The real request never waits for its copy: the copy is made from the
//! upstream request's head (after the route's filters and rewrites, so
//! the shadow sees what the real upstream sees) and sent from a task of
//! its own. What that rules out, by choice:
//!
//! - **Bodies.** Only requests without a body are copied. Copying a body
//!   means holding the real request back until it is read, or buffering
//!   it beside the stream; neither is worth a shadow's answer. A request
//!   with a body is not counted by the sampler either, so `percent` is the
//!   share of the body-less requests that are copied.
//! - **Upgrades** (WebSocket) are not copied.
//!
//! Sampling is by count, not chance: of the first `n` requests the sampler
//! sees, exactly `floor(n x percent / 100)` are copied, evenly spread.
//! At most `max_in_flight` copies are outstanding per route on one
//! gateway; a copy over that is dropped and counted, so a shadow that
//! hangs costs a bounded number of tasks and connections, never the real
//! traffic. A copy that gets no answer head within the route's `timeout`
//! is abandoned.
//!
//! As Envoy does, the copy's `Host` (or `:authority`) gets `-shadow`
//! appended to its host name (`api.example.com:8080` becomes
//! `api.example.com-shadow:8080`), so the shadow (and its logs) can tell
//! copies from real traffic. The copy goes to one endpoint of the mirror
//! service by round robin, without retries, outlier detection or breaker:
//! a shadow's failures must not steer anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Either, Full};
use portico_registry::model::Scheme;

use super::outgoing::{Hop, Outgoing, target};
use super::{Peer, Proxy};
use crate::balance::{Endpoint, EndpointSet};
use crate::breaker::RouteState;
use crate::pool::UpstreamBody;
use crate::router::RouteEntry;

/// Whether the sampler's `n`th request (from 0) is copied at `percent`:
/// the count of copies steps up exactly when `n x percent / 100` does.
pub fn sampled(n: u64, percent: u32) -> bool {
    let p = u64::from(percent);
    (n + 1) * p / 100 > n * p / 100
}

/// `host` with `-shadow` after its name, before any port.
pub fn shadow_host(host: &str) -> String {
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal keeps its brackets: `[::1]:80` has a port,
        // `[::1]` does not.
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    match port {
        Some(port) => format!("{name}-shadow:{port}"),
        None => format!("{host}-shadow"),
    }
}

/// A copy counted as in flight until dropped (the task ends).
struct InFlight(Arc<RouteState>);

impl InFlight {
    fn enter(state: &Arc<RouteState>, max: u32) -> Option<InFlight> {
        crate::breaker::acquire(&state.mirror.in_flight, max).map(|slot| {
            // The slot borrows the state; the task needs to own it.
            std::mem::forget(slot);
            InFlight(state.clone())
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mirror.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// Sends a copy of `out` to the route's mirror service when the
    /// sampler says so and the in-flight bound allows; returns at once.
    pub(super) fn mirror(
        &self,
        entry: &RouteEntry,
        set: &EndpointSet,
        out: &Outgoing,
        peer: &Peer,
    ) {
        use http_body::Body as _;
        let Some(mirror) = &entry.route.mirror else {
            return;
        };
        if !out.req.body().is_end_stream() || out.upgrade.is_some() {
            return;
        }
        let counters = &entry.state.mirror;
        if !sampled(
            counters.seen.fetch_add(1, Ordering::Relaxed),
            mirror.percent,
        ) {
            return;
        }
        let Some(guard) = InFlight::enter(&entry.state, mirror.max_in_flight) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(copy) = copy_of(out, set, peer) else {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (req, endpoint) = copy;
        let dial = match endpoint.scheme {
            Scheme::Https => {
                let client = self
                    .upstream_tls
                    .for_route(entry.route.upstream_tls.as_deref());
                match client.map(|c| {
                    c.dial(
                        endpoint.authority.as_str(),
                        endpoint.tls_name.as_deref(),
                        false,
                    )
                }) {
                    Ok(Ok(dial)) => Some(dial),
                    _ => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            _ => None,
        };
        let pool = self.pool.clone();
        let timeout = entry.route.timeout;
        tokio::spawn(async move {
            let state = guard.0.clone();
            let send = async {
                let resp = match (&endpoint.scheme, &dial) {
                    (Scheme::H2c, _) => pool
                        .send_h2c(&endpoint, req, Bytes::new())
                        .await
                        .map(|r| r.map(Either::Right)),
                    (Scheme::Https, Some(dial)) => pool.send_tls(&endpoint, dial, req, None).await,
                    _ => pool
                        .send_http1(
                            &endpoint,
                            req,
                            (None, crate::clock::now()),
                            (false, &[], false),
                        )
                        .await
                        .map(|r| r.map(Either::Left)),
                };
                let mut body = resp.ok()?.into_body();
                // Read to the end (and dropped), so the connection can be
                // used again.
                while let Some(frame) = body.frame().await {
                    frame.ok()?;
                }
                Some(())
            };
            let outcome = tokio::time::timeout(timeout, send).await.ok().flatten();
            let counter = match outcome {
                Some(()) => &state.mirror.sent,
                None => &state.mirror.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(guard);
        });
    }
}

/// The copy of `out` for one endpoint of the mirror set: method, headers,
/// path and query, no body, the host marked `-shadow`.
fn copy_of(
    out: &Outgoing,
    set: &EndpointSet,
    peer: &Peer,
) -> Option<(Request<UpstreamBody>, Endpoint)> {
    let (_, endpoint) = set.pick(&[])?;
    let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
    *req.method_mut() = out.req.method().clone();
    *req.headers_mut() = copy_headers(out.req.headers());
    let hop = Hop {
        peer,
        host: out.host.as_ref(),
    };
    out.added.fold(hop, req.headers_mut());
    let host = match &out.host {
        Some(h) => h.to_str().ok()?.to_string(),
        None => endpoint.authority.as_str().to_string(),
    };
    let shadow = HeaderValue::from_str(&shadow_host(&host)).ok()?;
    // `te: trailers` as the request's own try gets it: to an h2c shadow
    // only (the copy's headers may hold a lone one, left for `target`).
    target(
        &mut req,
        endpoint,
        &out.path_and_query,
        Some(&shadow),
        out.te_trailers,
    )
    .ok()?;
    Some((req, endpoint.clone()))
}

/// The request's headers for its copy, without body framing (the copy has
/// no body).
fn copy_headers(headers: &HeaderMap) -> HeaderMap {
    let mut copy = headers.clone();
    copy.remove(http::header::CONTENT_LENGTH);
    copy.remove(http::header::TRANSFER_ENCODING);
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_copies_exactly_the_share_evenly() {
        let copied: Vec<u64> = (0..20).filter(|&n| sampled(n, 10)).collect();
        assert_eq!(copied, [9, 19]);
        assert_eq!((0..1000).filter(|&n| sampled(n, 37)).count(), 370);
        assert!((0..100).all(|n| sampled(n, 100)));
    }

    #[test]
    fn the_shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("api.example.com"), "api.example.com-shadow");
        assert_eq!(shadow_host("api:8080"), "api-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }
}
