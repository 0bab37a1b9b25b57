//! State split into per-thread shards, so that worker threads touching it on
//! every request or connection do not meet on one lock.
//!
//! A thread is given a shard in turn the first time it asks
//! ([`Sharded::index`]) and keeps it for its life: with up to [`SHARDS`]
//! worker threads, each has a shard of its own and its lock is never
//! contended (an uncontended lock is two atomic operations on a line that
//! stays in this core's cache). More threads than shards share them (and
//! the threads that are not workers, the blocking pool's say, take turns
//! too), which costs contention, never correctness. Each shard sits on its own cache
//! line, since threads lock neighbouring shards at the same moment.
//!
//! Used by the drain signal's waiter lists and by the authentication
//! filters' caches of verified credentials (`jwt`, `basic_auth`, and the
//! API keys found among the consumers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Shards per [`Sharded`] value: one per worker thread on machines up to
/// this many cores.
pub const SHARDS: usize = 8;

/// One shard, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded<T>(Mutex<T>);

/// A `T` per shard, each behind its own lock.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: [Padded<T>; SHARDS],
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded {
            shards: std::array::from_fn(|_| Padded::default()),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard of the calling thread.
    pub fn index(&self) -> usize {
        this_threads_turn() % SHARDS
    }

    /// Shard `index`, locked. A lock poisoned by a panic under it still
    /// guards a good value for every user of this module, so it is used as
    /// it is: a slab or hash map is left valid by a panic in a closure or
    /// a `drop` it runs (`retain`, `clear`), and what the users keep (a
    /// waker, a credential already verified) is good in any subset.
    pub fn lock(&self, index: usize) -> MutexGuard<'_, T> {
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The calling thread's shard, locked.
    pub fn local(&self) -> MutexGuard<'_, T> {
        self.lock(self.index())
    }

    /// Every shard in turn, each locked only while the iterator holds it.
    pub fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        (0..SHARDS).map(|i| self.lock(i))
    }
}

/// This thread's turn among the threads that asked: assigned at its first
/// call, the same for its whole life.
fn this_threads_turn() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static TURN: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TURN.with(|t| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_threads_in_turn_get_their_own() {
        let sharded = Sharded::<Vec<usize>>::default();
        let mine = sharded.index();
        assert_eq!(sharded.index(), mine, "a thread keeps its shard");
        // SHARDS - 1 more threads, one after another: with this one they
        // take SHARDS consecutive turns, so distinct shards, unless other
        // tests' threads take turns in between (then some may share: the
        // check below allows it, the test only asks for more than one).
        let others: Vec<usize> = (1..SHARDS)
            .map(|_| std::thread::scope(|s| s.spawn(|| sharded.index()).join().unwrap()))
            .collect();
        let mut all = others.clone();
        all.push(mine);
        all.sort_unstable();
        all.dedup();
        assert!(
            all.len() > 1,
            "threads spread over shards: {others:?} and {mine}"
        );
        sharded.local().push(1);
        assert_eq!(sharded.lock(mine).as_slice(), [1]);
        assert_eq!(sharded.each().map(|s| s.len()).sum::<usize>(), 1);
    }
}
