//! The drain signal: one flag, set once at shutdown, that every connection
//! of a server waits on while it waits for anything else.
//!
//! Every connection waits on it from its first read to its end, so its cost
//! is paid per connection. tokio's `watch` channel did this with an
//! intrusive waiter list behind a sharded `Notify`: a version check, a
//! random shard, the list's lock and state machine to register, the same
//! again to leave; and a connection whose first bytes were not in yet
//! registered twice (detection, then serving). Callgrind put it at about
//! 670 instructions per new connection.
//!
//! Here a waiter is a [`Waker`] in a [`Slab`], in its thread's shard
//! ([`crate::shard`]) so that worker threads do not meet on one lock:
//! registering is a lock, an insert and a waker clone; leaving is a lock
//! and a remove. Closing sets the flag, then copies each shard's wakers
//! under its lock and wakes them after releasing it (leaving the entries
//! in place: each waiter removes its own entry when it is dropped, so a
//! key is never reused under a waiter that still holds it).
//!
//! No wake-up is lost: a waiter checks the flag again after it has
//! registered. Either its registration (or a later poll's new waker) took
//! the shard's lock before [`Drain::close`] did (and is in the copy woken),
//! or after (and then the lock orders the flag's store before that second
//! check).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::shard::Sharded;

/// Tells every waiting connection that the server is shutting down.
#[derive(Debug, Default)]
pub struct Drain {
    closing: AtomicBool,
    /// The waiters: each thread registers in its own shard.
    waiters: Sharded<Slab<Waker>>,
}

impl Drain {
    /// Sets the signal and wakes everyone waiting on it; futures made
    /// afterwards are ready at once. Closing twice is harmless.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let mut wakers = Vec::new();
        for shard in self.waiters.each() {
            // Woken outside the lock: a wake may schedule a task on another
            // thread, and connections ending meanwhile lock the shard to
            // leave it. The entries stay for their futures to remove.
            wakers.extend(shard.iter().map(|(_, w)| w.clone()));
            drop(shard);
            wakers.drain(..).for_each(Waker::wake);
        }
    }

    /// Whether [`Drain::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Ready once the signal is set. Registers with the signal only when
    /// polled while it is not (and leaves when dropped).
    pub fn closing(&self) -> Closing<'_> {
        Closing {
            drain: self,
            waiting: None,
        }
    }

    /// Wakers registered now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.each().map(|s| s.len()).sum()
    }
}

/// Closes its signal when dropped: a server holds one, so its connections
/// are told to finish when it ends, and also when its future is dropped
/// before it got there (a cancelled server), as a channel's sender going
/// away would tell them.
#[derive(Debug)]
pub struct CloseOnDrop(pub Arc<Drain>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The future of [`Drain::closing`].
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct Closing<'a> {
    drain: &'a Drain,
    /// The shard and key of this future's waker, once registered.
    waiting: Option<(usize, usize)>,
}

impl Future for Closing<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_closing() {
            return Poll::Ready(());
        }
        let this = &mut *self;
        match this.waiting {
            None => {
                let shard = this.drain.waiters.index();
                let key = this.drain.waiters.lock(shard).insert(cx.waker().clone());
                this.waiting = Some((shard, key));
            }
            Some((shard, key)) => {
                let mut waiters = this.drain.waiters.lock(shard);
                if let Some(waker) = waiters.get_mut(key)
                    && !waker.will_wake(cx.waker())
                {
                    waker.clone_from(cx.waker());
                }
            }
        }
        // Checked again once registered (see the module docs).
        if this.drain.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        if let Some((shard, key)) = self.waiting {
            self.drain.waiters.lock(shard).try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_is_woken_by_close_and_a_later_one_is_ready_at_once() {
        let drain = Arc::new(Drain::default());
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.closing().await }
        });
        // Registered: the spawned task has polled its future once.
        while drain.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        drain.close();
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("woken by close")
            .unwrap();
        assert_eq!(drain.waiting(), 0, "a finished waiter leaves");
        // After the close: ready at the first poll, nothing registered.
        let mut later = std::pin::pin!(drain.closing());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(later.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(drain.waiting(), 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_and_a_new_waker_replaces_its_old_one() {
        let drain = Drain::default();
        let woken = Arc::new(AtomicUsize::new(0));
        let counting = Waker::from(Arc::new(Counting(woken.clone())));
        let mut first = Box::pin(drain.closing());
        let mut second = Box::pin(drain.closing());
        assert!(
            first
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
        assert!(
            second
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
        assert_eq!(drain.waiting(), 2);
        // Polled again with another waker: it replaces the first, in place.
        assert!(
            first
                .as_mut()
                .poll(&mut Context::from_waker(&counting))
                .is_pending()
        );
        assert_eq!(drain.waiting(), 2);
        drop(second);
        assert_eq!(drain.waiting(), 1);
        drain.close();
        assert_eq!(woken.load(Ordering::Relaxed), 1, "the newest waker woken");
        drain.close();
        assert_eq!(
            woken.load(Ordering::Relaxed),
            2,
            "closing twice is harmless"
        );
        drop(first);
        assert_eq!(drain.waiting(), 0);
    }

    #[test]
    fn a_dropped_guard_closes_its_signal() {
        let drain = Arc::new(Drain::default());
        let guard = CloseOnDrop(drain.clone());
        assert!(!drain.is_closing());
        drop(guard);
        assert!(drain.is_closing());
    }

    /// Waiters registering on several threads while the signal closes: each
    /// one either sees the close at once or is woken by it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_registering_as_it_closes_all_finish() {
        for _ in 0..50 {
            let drain = Arc::new(Drain::default());
            let waiters: Vec<_> = (0..64)
                .map(|_| {
                    let drain = drain.clone();
                    tokio::spawn(async move { drain.closing().await })
                })
                .collect();
            tokio::task::yield_now().await;
            drain.close();
            for waiter in waiters {
                tokio::time::timeout(Duration::from_secs(30), waiter)
                    .await
                    .expect("no waiter missed the close")
                    .unwrap();
            }
            assert_eq!(drain.waiting(), 0);
        }
    }

    struct Counting(Arc<AtomicUsize>);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
