//! A watch of etcd itself, for a watcher resuming from before the mirror's
//! ring (a gateway that followed another replica, or this one before a
//! restart): it replays etcd's own history, or reports `Compacted` when
//! etcd no longer has it. On a broken stream it reopens on a live member
//! from the revision after the last change it delivered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{EventType, WatchOptions};

use super::keys::Keys;
use super::members::{MAX_MESSAGE, Members};
use crate::model::Revision;
use crate::store::{Change, KeyValue, StoreError, Watch};

/// See the module docs.
pub(super) struct EtcdWatch {
    members: Arc<Members>,
    keys: Keys,
    /// The full etcd prefix watched (`{prefix}kv/{prefix the caller asked}`).
    prefix: String,
    /// First revision not yet delivered.
    next: i64,
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<Change>,
}

impl EtcdWatch {
    /// Opens a watch of data keys under `prefix` after `after`; fails with
    /// `Compacted` at once when etcd no longer has that history.
    pub(super) async fn open(
        members: Arc<Members>,
        keys: Keys,
        prefix: &str,
        after: Revision,
    ) -> Result<EtcdWatch, StoreError> {
        let mut watch = EtcdWatch {
            prefix: keys.data(prefix),
            members,
            keys,
            next: after as i64 + 1,
            stream: None,
            pending: VecDeque::new(),
        };
        watch.reopen().await?;
        Ok(watch)
    }

    async fn reopen(&mut self) -> Result<(), StoreError> {
        let (prefix, start) = (self.prefix.clone(), self.next);
        let mut stream = self
            .members
            .run(|c| {
                let p = prefix.clone();
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start)
                    .with_progress_notify();
                async move {
                    c.watch_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .watch(p, Some(options))
                        .await
                }
            })
            .await?;
        // The first message says whether the watch was created or refused
        // because `start` is compacted.
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.compact_revision() > 0 {
                    return Err(StoreError::Compacted {
                        requested: (start - 1).max(0) as Revision,
                        compacted: (resp.compact_revision() - 1).max(0) as Revision,
                    });
                }
                self.absorb(&resp);
                self.stream = Some(stream);
                Ok(())
            }
            Ok(None) => Err(StoreError::Unavailable("etcd closed the watch".into())),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    fn absorb(&mut self, resp: &etcd_client::WatchResponse) {
        let data = self.keys.data("");
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            if revision < self.next {
                continue;
            }
            let Some(key) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&data))
            else {
                continue;
            };
            self.pending.push_back(match event.event_type() {
                EventType::Put => Change::Put(KeyValue {
                    key: key.to_string(),
                    value: Bytes::copy_from_slice(kv.value()),
                    mod_revision: revision.max(0) as Revision,
                }),
                EventType::Delete => Change::Delete {
                    key: key.to_string(),
                    revision: revision.max(0) as Revision,
                },
            });
        }
        // Several events of one transaction share a revision: only move on
        // once the whole response is queued.
        if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
            self.next = self.next.max(last.mod_revision() + 1);
        }
    }
}

#[async_trait]
impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Change, StoreError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            if self.stream.is_none() {
                match self.reopen().await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(e @ StoreError::Compacted { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch lost; reconnecting");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            }
            let stream = self.stream.as_mut().expect("checked above");
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        let start = self.next;
                        self.stream = None;
                        return Err(StoreError::Compacted {
                            requested: (start - 1).max(0) as Revision,
                            compacted: (resp.compact_revision() - 1).max(0) as Revision,
                        });
                    }
                    if resp.canceled() {
                        self.stream = None;
                        continue;
                    }
                    self.absorb(&resp);
                }
                Ok(None) | Err(_) => self.stream = None,
            }
        }
    }
}
