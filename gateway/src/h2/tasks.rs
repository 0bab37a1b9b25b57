//! The work of one HTTP/2 connection's streams: a set of futures, each
//! polled when its own waker fires, any stream's work dropped at once when
//! the stream ends. The server keeps its streams' answers and response
//! bodies here (a client's reset stops its request's upstream work); the
//! client, its streams' request bodies waiting for their next frame.
//!
//! It replaced a `FuturesUnordered` of `Abortable` futures on both sides.
//! That cost two allocations per piece of work (the queue's node and the
//! abort handle's shared state) and about 2,300 instructions of a unary
//! gRPC call, which puts two pieces of work on the server's set (its
//! answer, then its response's trailers) and often one on the client's. Here the slots, and the
//! waker each slot has, are kept and reused: a connection allocates them
//! once for as many streams as it has had at once. While it is idle it
//! keeps only the wakers, of at most [`IDLE_WAKERS`] slots ([`Tasks::shed`]).
//!
//! A waker outliving its work (kept by something the work registered
//! with) may later wake whatever work took its slot: that work is polled
//! once for nothing, which every future allows.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use super::StreamMap;

/// Marks a stream whose work is not in the set right now (its response
/// body parked, or being polled in place by the connection).
const NO_SLOT: usize = usize::MAX;

/// The most slots whose wakers an idle connection keeps (about 90 bytes
/// each). Under load a connection goes idle between bursts of streams
/// (each time its client has its answers and has not yet sent more), and
/// making the wakers again each burst cost an allocation per stream.
const IDLE_WAKERS: usize = 32;

/// The connection's streams' work.
pub(super) struct Tasks<T> {
    /// Each slot's work; emptied (no room kept) while the set is idle.
    work: Vec<Option<T>>,
    /// Each slot's stream and waker.
    slots: Vec<Slot>,
    /// Slots without work, the last freed first.
    free: Vec<usize>,
    /// Every stream still open, and the slot of its work (or [`NO_SLOT`]).
    streams: StreamMap<usize>,
    /// Slots holding work.
    working: usize,
    /// Slots due a poll, taken from [`Shared::woken`] (and new work).
    due: VecDeque<usize>,
    shared: Arc<Shared>,
}

struct Slot {
    stream: u32,
    wake: Arc<SlotWake>,
    /// `wake` as a `Waker`, made once.
    waker: Waker,
}

/// What wakers reach: the slots woken since the last pass, and the
/// connection's own task.
#[derive(Default)]
struct Shared {
    woken: Mutex<Vec<usize>>,
    conn: AtomicWaker,
}

struct SlotWake {
    index: usize,
    /// Set while the slot waits in a queue to be polled: a slot woken many
    /// times before its poll is queued once.
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let mut woken = self
                .shared
                .woken
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            woken.push(self.index);
            drop(woken);
            self.shared.conn.wake();
        }
    }
}

impl<T> Default for Tasks<T> {
    fn default() -> Self {
        Tasks {
            work: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            streams: StreamMap::default(),
            working: 0,
            due: VecDeque::new(),
            shared: Arc::default(),
        }
    }
}

impl<T: Future + Unpin> Tasks<T> {
    /// Adds `stream`'s work (a stream has one piece at a time); it is
    /// polled in the next pass.
    pub(super) fn push(&mut self, stream: u32, work: T) {
        if self.work.len() < self.slots.len() {
            // The first work since the set was idle: room for the slots
            // kept, in one allocation.
            self.work.reserve_exact(self.slots.len());
            self.work.resize_with(self.slots.len(), || None);
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => self.add_slot(),
        };
        let slot = &mut self.slots[index];
        slot.stream = stream;
        if !slot.wake.queued.swap(true, Ordering::AcqRel) {
            self.due.push_back(index);
        }
        self.work[index] = Some(work);
        self.working += 1;
        if let Some(old) = self.streams.insert(stream, index) {
            // A stream's earlier work is done before more is pushed; were
            // it not, it is dropped here rather than left in a slot that
            // nothing could end.
            debug_assert_eq!(old, NO_SLOT, "stream {stream} had work running");
            if old != NO_SLOT {
                self.drop_work(old);
            }
        }
    }

    fn add_slot(&mut self) -> usize {
        let index = self.slots.len();
        let wake = Arc::new(SlotWake {
            index,
            queued: AtomicBool::new(false),
            shared: self.shared.clone(),
        });
        let waker = Waker::from(wake.clone());
        self.slots.push(Slot {
            stream: 0,
            wake,
            waker,
        });
        self.work.push(None);
        index
    }

    /// Starts a pass: from now on a wake of any slot wakes the task of
    /// `cx`; the slots woken so far are due.
    pub(super) fn start_pass(&mut self, cx: &Context<'_>) {
        self.shared.conn.register(cx.waker());
        let mut woken = self
            .shared
            .woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.due.extend(woken.drain(..));
    }

    /// Polls the due slots in order until one's work finishes, and gives
    /// its output; `None` once none is due. The stream stays open.
    pub(super) fn next_done(&mut self) -> Option<T::Output> {
        while let Some(index) = self.due.pop_front() {
            // An index from before the slots were shed: nothing to poll.
            let Some(slot) = self.slots.get(index) else {
                continue;
            };
            // Cleared before the poll, so a wake during it queues again;
            // and cleared with no work to poll too, or the slot's next work
            // would find it set and never be queued.
            slot.wake.queued.swap(false, Ordering::AcqRel);
            let Some(work) = self.work.get_mut(index) else {
                continue;
            };
            let Some(running) = work.as_mut() else {
                continue;
            };
            let mut cx = Context::from_waker(&slot.waker);
            if let Poll::Ready(out) = Pin::new(running).poll(&mut cx) {
                let stream = slot.stream;
                *work = None;
                self.free.push(index);
                self.working -= 1;
                if let Some(at) = self.streams.get_mut(&stream) {
                    *at = NO_SLOT;
                }
                return Some(out);
            }
        }
        None
    }
}

impl<T> Tasks<T> {
    /// Whether `stream` is still open (not ended, reset or failed).
    pub(super) fn is_open(&self, stream: u32) -> bool {
        self.streams.contains_key(&stream)
    }

    /// Whether `stream` was open; its work, if any, is dropped now.
    pub(super) fn end(&mut self, stream: u32) -> bool {
        match self.streams.remove(&stream) {
            Some(NO_SLOT) => true,
            Some(index) => {
                self.drop_work(index);
                true
            }
            None => false,
        }
    }

    /// Ends every stream, dropping all work.
    pub(super) fn end_all(&mut self) {
        for (_, index) in std::mem::take(&mut self.streams) {
            if index != NO_SLOT {
                self.drop_work(index);
            }
        }
    }

    fn drop_work(&mut self, index: usize) {
        // Dropped after the slot is freed: dropping it may wake others.
        let work = self.work[index].take();
        debug_assert!(work.is_some(), "slot {index} had no work");
        self.free.push(index);
        self.working -= 1;
        drop(work);
    }

    /// Whether no work is in the set (streams may still be open).
    pub(super) fn is_idle(&self) -> bool {
        self.working == 0
    }

    /// With no work in the set, gives back the room for work, and the
    /// slots too if there are more than [`IDLE_WAKERS`]. (Every slot is
    /// free then, so the free list stays true.)
    pub(super) fn shed(&mut self) {
        if self.working > 0 {
            return;
        }
        self.work = Vec::new();
        if self.slots.len() > IDLE_WAKERS {
            self.slots = Vec::new();
            self.free = Vec::new();
            self.due = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that finishes once `go` is set, keeping the last waker it
    /// was polled with; counts its polls.
    struct Gate {
        go: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
        out: u32,
    }

    impl Future for Gate {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.go.load(Ordering::Acquire) {
                return Poll::Ready(self.out);
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Handle {
        go: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
    }

    impl Handle {
        fn open(&self) {
            self.go.store(true, Ordering::Release);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
        fn polls(&self) -> usize {
            self.polls.load(Ordering::Relaxed)
        }
    }

    fn gate(out: u32) -> (Gate, Handle) {
        let (go, waker, polls) = (Arc::default(), Arc::default(), Arc::default());
        let h = Handle {
            go: Arc::clone(&go),
            waker: Arc::clone(&waker),
            polls: Arc::clone(&polls),
        };
        (
            Gate {
                go,
                waker,
                polls,
                out,
            },
            h,
        )
    }

    /// The connection's task: counts how often it is woken.
    #[derive(Default)]
    struct Conn(AtomicUsize);
    impl Wake for Conn {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pass(tasks: &mut Tasks<Gate>, conn: &Arc<Conn>) -> Vec<u32> {
        let waker = Waker::from(Arc::clone(conn));
        tasks.start_pass(&Context::from_waker(&waker));
        std::iter::from_fn(|| tasks.next_done()).collect()
    }

    #[test]
    fn work_is_polled_once_pushed_and_again_only_when_woken() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let (a, ha) = gate(1);
        let (b, hb) = gate(2);
        tasks.push(1, a);
        tasks.push(3, b);
        assert!(pass(&mut tasks, &conn).is_empty());
        assert_eq!((ha.polls(), hb.polls()), (1, 1));
        // Nothing woken: nothing polled.
        assert!(pass(&mut tasks, &conn).is_empty());
        assert_eq!((ha.polls(), hb.polls()), (1, 1));
        hb.open();
        assert_eq!(conn.0.load(Ordering::Relaxed), 1, "the connection is woken");
        assert_eq!(pass(&mut tasks, &conn), vec![2]);
        assert_eq!((ha.polls(), hb.polls()), (1, 2));
        assert!(!tasks.is_idle());
        assert!(tasks.is_open(3), "a stream stays open after its work");
        ha.open();
        assert_eq!(pass(&mut tasks, &conn), vec![1]);
        assert!(tasks.is_idle());
    }

    #[test]
    fn ending_a_stream_drops_its_work_at_once_and_frees_its_slot() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let (a, ha) = gate(1);
        tasks.push(5, a);
        assert!(pass(&mut tasks, &conn).is_empty());
        assert!(tasks.end(5));
        assert!(!tasks.is_open(5));
        assert!(tasks.is_idle());
        assert_eq!(Arc::strong_count(&ha.go), 1, "the work was dropped");
        assert!(!tasks.end(5), "ended once");
        // The slot is reused, with no allocation of a new one.
        let (b, hb) = gate(2);
        tasks.push(7, b);
        assert_eq!(tasks.slots.len(), 1);
        hb.open();
        assert_eq!(pass(&mut tasks, &conn), vec![2]);
    }

    #[test]
    fn a_stale_waker_costs_the_slots_next_work_one_poll_and_nothing_else() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let (a, ha) = gate(1);
        tasks.push(1, a);
        assert!(pass(&mut tasks, &conn).is_empty());
        let stale = ha.waker.lock().unwrap().clone().expect("registered");
        tasks.end(1);
        let (b, hb) = gate(2);
        tasks.push(3, b);
        assert!(pass(&mut tasks, &conn).is_empty());
        stale.wake();
        assert!(pass(&mut tasks, &conn).is_empty());
        assert_eq!(hb.polls(), 2);
        hb.open();
        assert_eq!(pass(&mut tasks, &conn), vec![2]);
    }

    #[test]
    fn woken_many_times_before_a_pass_a_slot_is_polled_once() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let (a, ha) = gate(1);
        tasks.push(1, a);
        assert!(pass(&mut tasks, &conn).is_empty());
        let w = ha.waker.lock().unwrap().clone().expect("registered");
        for _ in 0..5 {
            w.wake_by_ref();
        }
        assert!(pass(&mut tasks, &conn).is_empty());
        assert_eq!(ha.polls(), 2);
    }

    #[test]
    fn an_idle_set_sheds_its_slots_and_old_wakers_stay_harmless() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let (a, ha) = gate(1);
        let (b, _hb) = gate(2);
        tasks.push(1, a);
        tasks.push(3, b);
        assert!(pass(&mut tasks, &conn).is_empty());
        tasks.shed();
        assert_eq!(tasks.work.len(), 2, "not while work runs");
        let stale = ha.waker.lock().unwrap().clone().expect("registered");
        tasks.end_all();
        assert!(tasks.is_idle() && !tasks.is_open(1) && !tasks.is_open(3));
        tasks.shed();
        assert_eq!(tasks.work.capacity(), 0, "no room for work while idle");
        assert_eq!(tasks.slots.len(), 2, "a few slots' wakers are kept");
        stale.wake();
        assert!(pass(&mut tasks, &conn).is_empty());
        let (c, hc) = gate(4);
        tasks.push(9, c);
        assert_eq!(tasks.work.capacity(), 2, "room made again in one go");
        hc.open();
        assert_eq!(pass(&mut tasks, &conn), vec![4]);
        assert_eq!(hc.polls(), 1, "the stale wake cost the new work no poll");
    }

    #[test]
    fn an_idle_set_with_many_slots_gives_them_all_back() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let handles: Vec<Handle> = (0..IDLE_WAKERS as u32 + 1)
            .map(|i| {
                let (g, h) = gate(i);
                tasks.push(i * 2 + 1, g);
                h
            })
            .collect();
        assert!(pass(&mut tasks, &conn).is_empty());
        handles.iter().for_each(Handle::open);
        assert_eq!(pass(&mut tasks, &conn).len(), IDLE_WAKERS + 1);
        tasks.shed();
        assert_eq!((tasks.slots.capacity(), tasks.free.capacity()), (0, 0));
        let (g, h) = gate(7);
        tasks.push(1, g);
        h.open();
        assert_eq!(pass(&mut tasks, &conn), vec![7]);
    }

    #[test]
    fn wakes_from_other_threads_reach_the_connection() {
        let conn = Arc::new(Conn::default());
        let mut tasks = Tasks::default();
        let handles: Vec<Handle> = (0..8)
            .map(|i| {
                let (g, h) = gate(i);
                tasks.push(i * 2 + 1, g);
                h
            })
            .collect();
        assert!(pass(&mut tasks, &conn).is_empty());
        std::thread::scope(|s| {
            for h in &handles {
                s.spawn(|| h.open());
            }
        });
        let mut done = pass(&mut tasks, &conn);
        done.sort_unstable();
        assert_eq!(done, (0..8).collect::<Vec<_>>());
        assert!(tasks.is_idle());
    }
}
