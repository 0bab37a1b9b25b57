//! The client SDK: self-registration with background heartbeats, and the
//! watch client gateways follow.
//!
//! Built on hyper-util's pooled client (no heavier HTTP stack) so the gateway
//! can depend on it without pulling a second HTTP implementation. Every call
//! tries the configured registry URLs in turn, starting from the last one that
//! answered, so a client given several replicas fails over by itself.
//!
//! [`coordination`]: the calls gateways make to order ACME certificates
//! for the fleet (locks, challenge answers, the certificate stored).
//!
//! Registry URLs may be `https://`: [`tls`] says how the registry is
//! verified (web PKI roots plus CA bundles given to the builder).

pub mod coordination;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::model::{InstanceList, InstanceSpec, RegisterResponse, Revision, WatchEvent};

/// Time allowed for a unary registry call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch stream silent for this long is presumed dead (the registry sends
/// progress every 5 s).
const WATCH_IDLE: Duration = Duration::from_secs(20);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest line accepted from a watch stream (a snapshot of a large registry
/// is one line).
const MAX_LINE: usize = 256 * 1024 * 1024;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A registry URL could not be parsed.
    #[error("invalid registry URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No registry URL answered.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// The registry answered with an error.
    #[error("registry answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The JSON error body, as text.
        body: String,
    },
    /// The registry's answer could not be decoded.
    #[error("undecodable registry answer: {0}")]
    Decode(String),
    /// A bearer token that cannot be sent in a header.
    #[error("invalid registry token: must be visible ASCII without spaces")]
    BadToken,
    /// The TLS settings could not be built (a CA bundle that does not load,
    /// named in the message).
    #[error("registry TLS: {0}")]
    Tls(String),
}

/// A registry bearer token held in options. Its `Debug` shows no secret, so
/// structs that carry it (gateway options) can be debug-printed safely.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// The secret, to send.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for BearerToken {
    fn from(secret: String) -> Self {
        BearerToken(secret)
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A handle on one or more registry replicas.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bases: Vec<Uri>,
    /// Index of the replica that last answered; calls start there.
    preferred: AtomicUsize,
    http: Client<tls::Connector, Full<Bytes>>,
    /// `Bearer <token>` for a secured registry, sent on every call (the
    /// watch included). Marked sensitive so it never shows in `Debug`.
    authorization: Option<http::HeaderValue>,
}

impl RegistryClient {
    /// A client for the given base URLs (`http://127.0.0.1:9080`,
    /// `https://registry.example:9080`, ...), with the default TLS settings.
    pub fn new<S: AsRef<str>>(urls: &[S]) -> Result<RegistryClient, ClientError> {
        RegistryClient::builder(urls).build()
    }

    /// A builder, for a token or TLS settings.
    pub fn builder<S: AsRef<str>>(urls: &[S]) -> RegistryClientBuilder {
        RegistryClientBuilder {
            urls: urls.iter().map(|u| u.as_ref().to_string()).collect(),
            token: None,
            ca_files: Vec::new(),
            tls: None,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>` on every
    /// call, for a registry that requires tokens.
    pub fn with_token(self, token: &str) -> Result<RegistryClient, ClientError> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::BadToken);
        }
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ClientError::BadToken)?;
        value.set_sensitive(true);
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                bases: self.inner.bases.clone(),
                preferred: AtomicUsize::new(self.inner.preferred.load(Ordering::Relaxed)),
                http: self.inner.http.clone(),
                authorization: Some(value),
            }),
        })
    }

    fn uri(&self, base: usize, path_and_query: &str) -> Uri {
        let base = &self.inner.bases[base];
        Uri::builder()
            .scheme(base.scheme_str().expect("validated in build"))
            .authority(base.authority().expect("validated in new").clone())
            .path_and_query(path_and_query)
            .build()
            .expect("registry paths are valid URIs")
    }

    /// Sends one request, trying each replica in turn from the preferred one.
    /// Returns the first HTTP answer (of any status).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let n = self.inner.bases.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for step in 0..n {
            let i = (start + step) % n;
            let mut req = Request::builder()
                .method(method.clone())
                .uri(self.uri(i, path));
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            if let Some(auth) = &self.inner.authorization {
                req = req.header(http::header::AUTHORIZATION, auth.clone());
            }
            let req = req
                .body(Full::new(body.clone().unwrap_or_default()))
                .expect("request parts are valid");
            let fut = self.inner.http.request(req);
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        last_error = format!("{}: timed out", self.inner.bases[i]);
                        continue;
                    }
                },
                None => fut.await,
            };
            match result {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && step + 1 < n => {
                    last_error = format!("{}: 503", self.inner.bases[i]);
                }
                Ok(resp) => {
                    self.inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => last_error = format!("{}: {}", self.inner.bases[i], causes(&e)),
            }
        }
        Err(ClientError::Unreachable(last_error))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let resp = self.send(method, path, body, Some(CALL_TIMEOUT)).await?;
        let status = resp.status();
        let body = tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| ClientError::Unreachable("timed out reading answer".into()))?
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    fn expect_ok<T: serde::de::DeserializeOwned>(
        status: StatusCode,
        body: &Bytes,
    ) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
        serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Registers (or updates) an instance once, with no background heartbeat.
    pub async fn register_once(
        &self,
        service: &str,
        id: &str,
        spec: &InstanceSpec,
    ) -> Result<RegisterResponse, ClientError> {
        let body = Bytes::from(serde_json::to_vec(spec).expect("specs serialise"));
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/v1/services/{service}/instances/{id}"),
                Some(body),
            )
            .await?;
        Self::expect_ok(status, &body)
    }

    /// Renews a lease once. `Ok(false)` when the registry no longer knows the
    /// instance (it must register again).
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<bool, ClientError> {
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/v1/services/{service}/instances/{id}/heartbeat"),
                None,
            )
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            s => Err(ClientError::Status {
                status: s,
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    /// Removes an instance. Succeeds when it was already gone.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        let (status, body) = self
            .call(
                Method::DELETE,
                &format!("/v1/services/{service}/instances/{id}"),
                None,
            )
            .await?;
        Self::expect_ok::<serde_json::Value>(status, &body).map(|_| ())
    }

    /// Lists one service's instances.
    pub async fn instances(&self, service: &str) -> Result<InstanceList, ClientError> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/v1/services/{service}/instances"),
                None,
            )
            .await?;
        Self::expect_ok(status, &body)
    }

    /// Marks an instance draining: gateways stop sending it new requests.
    pub async fn drain(&self, service: &str, id: &str) -> Result<RegisterResponse, ClientError> {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/services/{service}/instances/{id}/drain"),
                None,
            )
            .await?;
        Self::expect_ok(status, &body)
    }

    /// Registers an instance and keeps its lease alive in the background until
    /// [`Registration::shutdown`].
    ///
    /// Heartbeats go out about every TTL/3, jittered by ±10% so a fleet
    /// started together does not beat in lockstep. A 404 (the lease expired,
    /// or the registry lost it) triggers a fresh registration.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        spec: InstanceSpec,
    ) -> Result<Registration, ClientError> {
        let first = self.register_once(service, id, &spec).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(heartbeat_loop(
            self.clone(),
            service.to_string(),
            id.to_string(),
            spec,
            stop_rx,
        ));
        Ok(Registration {
            client: self.clone(),
            service: service.to_string(),
            id: id.to_string(),
            revision: first.revision,
            stop: stop_tx,
            task,
            in_flight: InFlight::default(),
            drain: DrainOptions::default(),
        })
    }

    /// Follows every registry change from `after` (0 for a snapshot first).
    pub fn watch(&self, after: Revision) -> Watcher {
        Watcher {
            client: self.clone(),
            revision: after,
            complete: after,
            body: None,
            buf: BytesMut::new(),
            scanned: 0,
            backoff: Duration::from_millis(50),
            state: watch::Sender::new(WatchState::default()),
        }
    }
}

async fn heartbeat_loop(
    client: RegistryClient,
    service: String,
    id: String,
    spec: InstanceSpec,
    mut stop: watch::Receiver<bool>,
) {
    // Kept alive by its check: the registry needs nothing from it.
    let Some(ttl) = spec.ttl else { return };
    let period = ttl / 3;
    loop {
        let jitter = 0.9 + fastrand::f64() * 0.2;
        let wait = period.mul_f64(jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        match client.heartbeat(&service, &id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(%service, %id, "registry no longer knows this instance; registering again");
                if let Err(e) = client.register_once(&service, &id, &spec).await {
                    tracing::warn!(%service, %id, error = %e, "re-registration failed; will retry");
                }
            }
            Err(e) => tracing::warn!(%service, %id, error = %e, "heartbeat failed; will retry"),
        }
    }
}

/// Counts the requests an instance is serving, so that shutdown can wait for
/// them. Clone it into the request handler and hold an [`InFlight::enter`]
/// guard for each request.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<InFlightInner>);

#[derive(Debug, Default)]
struct InFlightInner {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Counts one request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }

    /// Completes when no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request in flight; see [`InFlight::enter`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlightInner>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How [`Registration::shutdown`] drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOptions {
    /// Time after marking the instance draining before in-flight requests
    /// are counted, so every gateway has seen the change and stopped sending.
    pub settle: Duration,
    /// Longest wait for in-flight requests to finish before deregistering anyway.
    pub timeout: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            settle: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A live registration; dropping it stops heartbeats without deregistering
/// (the lease then expires on its own).
#[derive(Debug)]
pub struct Registration {
    client: RegistryClient,
    service: String,
    id: String,
    revision: Revision,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    in_flight: InFlight,
    drain: DrainOptions,
}

impl Registration {
    /// Revision of the initial registration.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The in-flight counter [`Registration::shutdown`] waits on; hold an
    /// [`InFlight::enter`] guard per request.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Changes how [`Registration::shutdown`] drains.
    pub fn with_drain(mut self, drain: DrainOptions) -> Registration {
        self.drain = drain;
        self
    }

    /// Graceful shutdown: marks the instance draining (gateways stop sending
    /// new requests), waits `settle`, waits for in-flight requests to finish
    /// (at most `timeout`), then stops heartbeating and deregisters. Keep
    /// serving until this returns.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        match self.client.drain(&self.service, &self.id).await {
            Ok(_) => {
                tokio::time::sleep(self.drain.settle).await;
                if tokio::time::timeout(self.drain.timeout, self.in_flight.idle())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        service = %self.service,
                        id = %self.id,
                        in_flight = self.in_flight.count(),
                        "drain timeout reached with requests in flight; deregistering anyway"
                    );
                }
            }
            Err(e) => tracing::warn!(service = %self.service, id = %self.id, error = %e,
                "could not mark the instance draining; deregistering"),
        }
        let _ = self.stop.send(true);
        // Wait for an in-flight heartbeat so it cannot re-register after we deregister.
        let _ = (&mut self.task).await;
        self.client.deregister(&self.service, &self.id).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Where a [`Watcher`] stands, published on a `watch` channel
/// ([`Watcher::state`], [`WatchFeed::state`]) so a consumer can report it
/// without polling the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchState {
    /// Whether a stream is open now.
    pub connected: bool,
    /// Whether a stream was ever opened.
    pub ever_connected: bool,
    /// Connection attempts (each over every registry URL) that failed since
    /// the last stream opened.
    pub failed_attempts: u64,
    /// Why the last attempt failed or the last stream ended.
    pub last_error: Option<String>,
    /// Times the watcher re-listed (a snapshot) because a line did not decode.
    pub resyncs: u64,
}

/// An error with its causes, `outer: inner: ...`: hyper's own message
/// ("client error (Connect)") says nothing of a refused certificate; its
/// sources do.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Builds a [`RegistryClient`]: registry URLs, a bearer token, TLS trust.
#[derive(Debug, Clone)]
pub struct RegistryClientBuilder {
    urls: Vec<String>,
    token: Option<String>,
    ca_files: Vec<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl RegistryClientBuilder {
    /// Sends `Authorization: Bearer <token>` on every call.
    pub fn token(mut self, token: &str) -> RegistryClientBuilder {
        self.token = Some(token.to_string());
        self
    }

    /// Trusts the CAs in this PEM bundle for `https` registries, beside the
    /// web PKI roots (a registry with a private CA); repeatable.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> RegistryClientBuilder {
        self.ca_files.push(path.into());
        self
    }

    /// Connects to `https` registries with this configuration instead
    /// (its ALPN is replaced by `http/1.1`); [`RegistryClientBuilder::ca_file`]
    /// is then ignored.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> RegistryClientBuilder {
        self.tls = Some(config);
        self
    }

    /// The client; refuses a URL that is not `http(s)://host[:port]`, a
    /// token that cannot be sent, or a CA bundle that does not load.
    pub fn build(self) -> Result<RegistryClient, ClientError> {
        if self.urls.is_empty() {
            return Err(ClientError::BadUrl {
                url: String::new(),
                reason: "at least one registry URL is required".into(),
            });
        }
        let bases = self
            .urls
            .iter()
            .map(String::as_str)
            .map(base_url)
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match self.tls {
            Some(config) => config,
            None => tls::client_config(&self.ca_files)?,
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(tls::connector(tls));
        let client = RegistryClient {
            inner: Arc::new(Inner {
                bases,
                preferred: AtomicUsize::new(0),
                http,
                authorization: None,
            }),
        };
        match &self.token {
            Some(token) => client.with_token(token),
            None => Ok(client),
        }
    }
}

/// Parses one registry base URL: `http://` or `https://` with a host.
fn base_url(url: &str) -> Result<Uri, ClientError> {
    let url = url.trim_end_matches('/');
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(ClientError::BadUrl {
            url: url.to_string(),
            reason: "expected http://host:port or https://host:port".into(),
        });
    }
    Ok(uri)
}

/// Follows `/v1/watch`, reconnecting (with jittered backoff, across replicas)
/// and resuming from the last revision it saw whole. Never gives up.
///
/// Several changes can share one revision (the etcd store commits writes in
/// batches), so a stream that breaks after some of a revision's changes is
/// resumed from the revision before it, and that revision's changes come
/// again (applying a put or a delete twice changes nothing).
///
/// A line that does not decode means a change may have been missed, so the
/// watcher does not go on after it: it drops the stream and re-lists from a
/// snapshot (`index=0`), logs it and counts it ([`WatchState::resyncs`]).
#[derive(Debug)]
pub struct Watcher {
    client: RegistryClient,
    revision: Revision,
    /// Every change up to this revision has been returned: where to resume.
    complete: Revision,
    body: Option<Incoming>,
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no newline: a snapshot of a large
    /// registry is one long line arriving in many frames, and rescanning it
    /// from the start for every frame would be quadratic.
    scanned: usize,
    backoff: Duration,
    state: watch::Sender<WatchState>,
}

impl Watcher {
    /// Revision of the last event returned.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether a stream is currently open.
    pub fn is_connected(&self) -> bool {
        self.state.borrow().connected
    }

    /// The watcher's state, updated as it connects, fails and re-lists.
    pub fn state(&self) -> watch::Receiver<WatchState> {
        self.state.subscribe()
    }

    /// An event already received and buffered, without waiting; lets a
    /// consumer apply a burst of changes before rebuilding anything.
    pub fn next_buffered(&mut self) -> Option<WatchEvent> {
        loop {
            let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                return None;
            };
            let line = self.buf.split_to(self.scanned + pos).freeze();
            self.buf.advance(1);
            self.scanned = 0;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<WatchEvent>(&line) {
                Ok(event) => {
                    self.note(&event);
                    return Some(event);
                }
                Err(e) => {
                    self.resync(&e);
                    return None;
                }
            }
        }
    }

    /// Moves the resume point: a snapshot or a progress line covers its
    /// revision whole; a change at a new revision completes the previous one.
    fn note(&mut self, event: &WatchEvent) {
        let revision = event.revision();
        match event {
            WatchEvent::Snapshot { .. } | WatchEvent::Progress { .. } => self.complete = revision,
            _ if revision > self.revision => self.complete = self.revision,
            _ => {}
        }
        self.revision = revision;
    }

    /// Drops the stream after an undecodable line and starts over from a
    /// snapshot: the line may have been a change, and every line after it
    /// would apply on top of a state that is missing it.
    fn resync(&mut self, error: &serde_json::Error) {
        tracing::warn!(error = %error, revision = self.revision,
            "undecodable registry watch line: re-listing from a snapshot");
        self.state.send_modify(|s| s.resyncs += 1);
        self.disconnect("undecodable line");
        self.revision = 0;
        self.complete = 0;
    }

    fn disconnect(&mut self, why: &str) {
        if self.is_connected() {
            tracing::warn!(
                reason = why,
                revision = self.revision,
                "registry watch disconnected; reconnecting"
            );
        }
        self.state.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(why.to_string());
        });
        self.body = None;
        self.buf.clear();
        self.scanned = 0;
    }

    fn connect_failed(&mut self, why: String) {
        self.state.send_modify(|s| {
            s.failed_attempts += 1;
            s.last_error = Some(why);
        });
    }

    /// The next event, reconnecting as often as needed.
    ///
    /// Not cancel-safe while connecting: dropping the future mid-connect
    /// starts the connection over (and costs the registry another snapshot).
    /// Poll it to completion, or run it with [`Watcher::spawn`].
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            if let Some(event) = self.next_buffered() {
                return event;
            }
            let Some(body) = self.body.as_mut() else {
                self.connect().await;
                continue;
            };
            match tokio::time::timeout(WATCH_IDLE, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > MAX_LINE {
                            self.disconnect("line too long");
                        }
                    }
                }
                Ok(Some(Err(e))) => self.disconnect(&e.to_string()),
                Ok(None) => self.disconnect("stream ended"),
                Err(_) => self.disconnect("no data within the idle limit"),
            }
        }
    }

    /// One attempt to open the stream (over every registry URL), pausing
    /// after a failure.
    async fn connect(&mut self) {
        let path = format!("/v1/watch?index={}", self.complete);
        match self
            .client
            .send(Method::GET, &path, None, Some(CALL_TIMEOUT))
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                tracing::debug!(revision = self.revision, "registry watch connected");
                self.body = Some(resp.into_body());
                self.backoff = Duration::from_millis(50);
                self.state.send_modify(|s| {
                    s.connected = true;
                    s.ever_connected = true;
                    s.failed_attempts = 0;
                });
            }
            Ok(resp) => {
                let hint = match resp.status().as_u16() {
                    401 => "the registry requires a token: pass --registry-token or PORTICO_TOKEN",
                    403 => "the token is not allowed to read",
                    _ => "",
                };
                tracing::warn!(status = %resp.status(), hint, "registry refused watch");
                self.connect_failed(format!("registry answered {}", resp.status()));
                self.pause().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "registry watch connect failed");
                self.connect_failed(e.to_string());
                self.pause().await;
            }
        }
    }

    async fn pause(&mut self) {
        let jitter = 0.5 + fastrand::f64() * 0.5;
        tokio::time::sleep(self.backoff.mul_f64(jitter)).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Runs the watcher on its own task, so that nothing the consumer does
    /// (a timer, a `select!` on other work) can cancel a connection in
    /// progress: a first answer that takes long (a big snapshot) is waited
    /// for, not retried. Events arrive on a channel of `buffer` (the task
    /// stops reading the stream while it is full), the state on a `watch`
    /// channel. The task ends when the [`WatchFeed`] is dropped.
    pub fn spawn(mut self, buffer: usize) -> WatchFeed {
        let (tx, events) = mpsc::channel(buffer.max(1));
        let state = self.state();
        let task = tokio::spawn(async move {
            loop {
                let event = self.next().await;
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        WatchFeed {
            events,
            state,
            task,
        }
    }
}

/// A [`Watcher`] running on its own task; see [`Watcher::spawn`].
#[derive(Debug)]
pub struct WatchFeed {
    events: mpsc::Receiver<WatchEvent>,
    state: watch::Receiver<WatchState>,
    task: JoinHandle<()>,
}

impl WatchFeed {
    /// The next event, in order.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.events.recv().await
    }

    /// An event already received, without waiting: lets a consumer apply a
    /// burst before rebuilding anything.
    pub fn try_recv(&mut self) -> Option<WatchEvent> {
        self.events.try_recv().ok()
    }

    /// The watcher's connection state.
    pub fn state(&self) -> watch::Receiver<WatchState> {
        self.state.clone()
    }
}

impl Drop for WatchFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}
