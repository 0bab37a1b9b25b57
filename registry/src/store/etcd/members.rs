//! The etcd members a replica talks to: one client per member, used in
//! turn, and the reads that must never hold the whole keyspace in one
//! message.
//!
//! An operation that fails with a transport error, `Unavailable` or "no
//! leader" is tried again on the next member (every member twice at most,
//! with a short pause before the second round), so a dead member costs one
//! failed attempt, not a share of all traffic. Range reads go in pages of
//! [`PAGE_KEYS`] keys at one revision: etcd-client refuses messages over
//! 4 MiB by default, and 20,000 instances are already about 5 MB.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse, Txn, TxnResponse};

use crate::model::Revision;
use crate::store::StoreError;

/// How long one etcd request may take before the next member is tried.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before a second round over the members.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Keys per page of a range read. With values bounded by the API's 64 KiB
/// body limit a page is at most 32 MiB, and typically 200 KB.
pub(super) const PAGE_KEYS: i64 = 512;
/// Largest message we accept from etcd: a page of [`PAGE_KEYS`] values of
/// the largest size, or a watch response catching up on many revisions.
pub(super) const MAX_MESSAGE: usize = 256 << 20;

/// One client per member; see the module docs.
pub(super) struct Members {
    endpoints: Vec<String>,
    clients: Vec<tokio::sync::OnceCell<Client>>,
    current: AtomicUsize,
    /// Clients that do not require a leader, for reads when there is none.
    stale_clients: Vec<tokio::sync::OnceCell<Client>>,
    /// Unix ms of the last operation a quorum answered.
    last_ok_ms: AtomicU64,
    /// TLS to the members, when their URLs are `https://`.
    tls: Option<etcd_client::TlsOptions>,
}

/// Whether another member might succeed: everything but the errors a
/// request earns by itself (bad argument, missing permission, ...). A
/// connection cut by a dying member surfaces as `Unknown` or `Internal`, an
/// election as `Unavailable` ("leader changed", "no leader", "request timed
/// out"), an overloaded member as `ResourceExhausted`.
fn retriable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::AlreadyExists
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange
                | tonic::Code::Unimplemented
        ),
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::LeaseKeepAliveError(_)
        | etcd_client::Error::WatchError(_) => true,
        _ => false,
    }
}

/// An error with its causes: tonic's transport error says only "transport
/// error"; a refused certificate is in its sources.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Milliseconds since the Unix epoch.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The revision a response header reports.
pub(super) fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as Revision)
}

/// The end of the key range that holds every key starting with `prefix`.
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Members {
    pub(super) fn new(endpoints: Vec<String>, tls: Option<etcd_client::TlsOptions>) -> Members {
        Members {
            clients: endpoints.iter().map(|_| Default::default()).collect(),
            stale_clients: endpoints.iter().map(|_| Default::default()).collect(),
            endpoints,
            current: AtomicUsize::new(0),
            last_ok_ms: AtomicU64::new(0),
            tls,
        }
    }

    fn with_tls(&self, options: ConnectOptions) -> ConnectOptions {
        match &self.tls {
            Some(tls) => options.with_tls(tls.clone()),
            None => options,
        }
    }

    pub(super) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Unix ms of the last request a quorum answered.
    pub(super) fn last_ok_ms(&self) -> u64 {
        self.last_ok_ms.load(Ordering::Relaxed)
    }

    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let endpoint = self.endpoints[i].clone();
        self.clients[i]
            .get_or_try_init(|| async move {
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
                    .with_require_leader(true);
                Client::connect([endpoint], Some(self.with_tls(options))).await
            })
            .await
            .cloned()
    }

    /// Runs `op` on the current member, moving to the next one on errors a
    /// live member would not give.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for attempt in 0..2 * n {
            if attempt == n {
                tokio::time::sleep(ROUND_PAUSE).await;
            }
            let i = (start + attempt) % n;
            let result = match self.client(i).await {
                Ok(client) => op(client).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    self.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
                    if i != start {
                        self.current.store(i, Ordering::Relaxed);
                        tracing::info!(endpoint = %self.endpoints[i], "etcd: using another member");
                    }
                    return Ok(v);
                }
                Err(e) if retriable(&e) => {
                    tracing::debug!(endpoint = %self.endpoints[i], error = %e, "etcd member failed; trying the next");
                    last = format!("{}: {}", self.endpoints[i], causes(&e));
                }
                Err(e) => return Err(StoreError::Failed(e.to_string())),
            }
        }
        Err(StoreError::Unavailable(format!(
            "etcd unavailable: no member could serve the request, or the cluster has no quorum (last error: {last})"
        )))
    }

    /// Runs a transaction on a live member.
    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.run(|mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    /// One key (linearizable), optionally as of `revision`.
    pub(super) async fn get(
        &self,
        key: &str,
        revision: Option<i64>,
    ) -> Result<Option<etcd_client::KeyValue>, StoreError> {
        let mut resp = self
            .run(|mut c| {
                let k = key.to_string();
                let options = revision.map(|r| GetOptions::new().with_revision(r));
                async move { c.get(k, options).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// etcd's current revision: a linearizable read of one key that never
    /// exists, so etcd does no work beyond the read index.
    pub(super) async fn revision(&self, probe: &str) -> Result<Revision, StoreError> {
        let resp = self
            .run(|mut c| {
                let k = probe.to_string();
                async move { c.get(k, None).await }
            })
            .await?;
        Ok(revision_of(resp.header()))
    }

    /// The highest revision of any key under `prefix` (0: none), read
    /// linearizably; for small prefixes (the batch slot keys).
    pub(super) async fn last_write(&self, prefix: &str) -> Result<Revision, StoreError> {
        let (kvs, _) = self.range_paged(prefix, None, true).await?;
        Ok(kvs
            .iter()
            .map(|kv| kv.mod_revision().max(0) as Revision)
            .max()
            .unwrap_or(0))
    }

    /// Every key under `prefix`, in pages, all at one revision (`at`, or
    /// the first page's). Answers the keys and that revision.
    pub(super) async fn range_paged(
        &self,
        prefix: &str,
        at: Option<i64>,
        keys_only: bool,
    ) -> Result<(Vec<etcd_client::KeyValue>, i64), StoreError> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut at = at;
        let mut out = Vec::new();
        loop {
            let page = self
                .run(|c| page(c, from.clone(), end.clone(), at, keys_only, false))
                .await?;
            let (kvs, more, revision) = page;
            at.get_or_insert(revision);
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            out.extend(kvs);
            if !more {
                return Ok((out, at.unwrap_or(revision)));
            }
        }
    }

    /// Without quorum no current read exists; a member that is still up can
    /// answer from its own copy (a serializable read, paged at one
    /// revision). The answer says how long since the last current one.
    pub(super) async fn stale_range_paged(
        &self,
        prefix: &str,
    ) -> Option<(Vec<etcd_client::KeyValue>, i64, u64)> {
        let end = prefix_end(prefix);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let client = self.stale_clients[i]
                .get_or_try_init(|| async {
                    let options = ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(1))
                        .with_timeout(Duration::from_secs(1));
                    Client::connect([endpoint.clone()], Some(self.with_tls(options))).await
                })
                .await;
            let Ok(client) = client.cloned() else {
                continue;
            };
            let mut from = prefix.as_bytes().to_vec();
            let mut at = None;
            let mut out = Vec::new();
            let complete = loop {
                let Ok((kvs, more, revision)) =
                    page(client.clone(), from.clone(), end.clone(), at, false, true).await
                else {
                    break false;
                };
                at.get_or_insert(revision);
                if let Some(last) = kvs.last() {
                    from = last.key().to_vec();
                    from.push(0);
                }
                out.extend(kvs);
                if !more {
                    break true;
                }
            };
            if complete {
                let stale_ms = unix_ms().saturating_sub(self.last_ok_ms());
                return Some((out, at.unwrap_or(0), stale_ms));
            }
        }
        None
    }
}

/// One page of `[from, end)`: its keys, whether more follow, and the
/// revision it was read at.
async fn page(
    client: Client,
    from: Vec<u8>,
    end: Vec<u8>,
    at: Option<i64>,
    keys_only: bool,
    serializable: bool,
) -> Result<(Vec<etcd_client::KeyValue>, bool, i64), etcd_client::Error> {
    let mut options = GetOptions::new().with_range(end).with_limit(PAGE_KEYS);
    if let Some(r) = at {
        options = options.with_revision(r);
    }
    if keys_only {
        options = options.with_keys_only();
    }
    if serializable {
        options = options.with_serializable();
    }
    let mut resp: GetResponse = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE)
        .get(from, Some(options))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let more = resp.more();
    Ok((resp.take_kvs(), more, revision))
}
