//! Idle detection for downstream connections and tunnels: "no bytes in
//! either direction for the idle timeout" without a timer reset per read.
//!
//! [`ActivityIo`] wraps the I/O and sets a flag whenever bytes move (one
//! relaxed store per read or write); [`IdleClock`] checks and clears the
//! flag every half timeout, and calls the I/O idle after two quiet checks
//! in a row. So a silence is noticed between one and one and a half idle
//! timeouts after it began, at the cost of one tick per connection instead
//! of one timer reset per read.
//!
//! It also notes when a write could not proceed (the peer stopped reading
//! and its socket buffer is full): an idle connection in that state is a
//! client that stopped reading its response, and is closed at once rather
//! than asked to finish (which it never would). That makes the idle timeout
//! the send timeout too, as nginx's `send_timeout` (60 s) is.
//!
//! [`LazyDeadline`] applies the same economy to a deadline set anew for
//! each request on a connection (the header read timeout): the timer stays
//! registered where it was and is moved only when it fires early.
//!
//! [`WakeGate`] spares the watchers of a connection (its idle clock, the
//! drain signal) a poll on each of the connection's wake-ups: they are
//! polled only when one of their own wakers fired.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What an [`ActivityIo`] reports to its clock.
#[derive(Debug)]
pub struct Activity {
    moved: AtomicBool,
    write_blocked: AtomicBool,
}

impl Activity {
    /// Counted active from the start.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            moved: AtomicBool::new(true),
            write_blocked: AtomicBool::new(false),
        })
    }

    /// Marks bytes moved (for tests and wrappers of other I/O).
    pub fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Whether the last write could not proceed: the peer is not reading.
    pub fn write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }
}

/// I/O that marks `active` whenever it moves bytes. `guard` lives exactly as
/// long as the I/O does: a connection's slot held in it stays held while the
/// socket is open, through an upgrade into a tunnel too.
#[derive(Debug)]
pub struct ActivityIo<T, G = ()> {
    inner: T,
    active: Arc<Activity>,
    /// Whether the last write returned `Pending` (mirrored in `active`,
    /// written there only when it changes).
    blocked: bool,
    _guard: G,
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`, marking `active`.
    pub fn new(inner: T, active: Arc<Activity>) -> ActivityIo<T> {
        ActivityIo::with_guard(inner, active, ())
    }
}

impl<T, G> ActivityIo<T, G> {
    /// Wraps `inner`, marking `active`, and keeps `guard` until dropped.
    pub fn with_guard(inner: T, active: Arc<Activity>, guard: G) -> ActivityIo<T, G> {
        ActivityIo {
            inner,
            active,
            blocked: false,
            _guard: guard,
        }
    }

    /// The wrapped I/O.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped I/O, mutably (bytes moved through it directly are not
    /// marked).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn wrote(&mut self, res: &Poll<io::Result<usize>>) {
        match res {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.active.moved.store(true, Ordering::Relaxed);
                if self.blocked {
                    self.blocked = false;
                    self.active.write_blocked.store(false, Ordering::Relaxed);
                }
            }
            Poll::Pending if !self.blocked => {
                self.blocked = true;
                self.active.write_blocked.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin, G: Unpin> AsyncRead for ActivityIo<T, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.active.moved.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin, G: Unpin> AsyncWrite for ActivityIo<T, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Says when the I/O marking `active` has been quiet for the idle timeout.
///
/// Its check every half timeout waits on a [`LazyDeadline`]: a new
/// connection takes a spare timer, already registered, and gives it back
/// when it ends. A tokio `Interval` per connection instead was allocated,
/// registered and cancelled each time: about 800 instructions per
/// connection (callgrind, a new connection per request).
#[derive(Debug)]
pub struct IdleClock {
    active: Arc<Activity>,
    check: LazyDeadline,
    half: Duration,
    quiet_ticks: u32,
}

impl IdleClock {
    /// A clock for `timeout`, starting now with the I/O counted active.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as a tokio timer would.
    pub fn new(timeout: Duration, active: Arc<Activity>) -> IdleClock {
        let half = (timeout / 2).max(Duration::from_millis(1));
        IdleClock {
            active,
            check: LazyDeadline::new(half),
            half,
            quiet_ticks: 0,
        }
    }

    /// Completes once two checks in a row found no bytes moved. Cancel-safe
    /// (for `select!`): the count and the next check's instant survive a
    /// dropped call.
    pub async fn expired(&mut self) {
        loop {
            std::future::poll_fn(|cx| self.check.poll_expired(cx)).await;
            // The next check a half timeout from now, however late this
            // one ran: checks drift later, never closer together.
            self.check.restart(self.half);
            if self.active.moved.swap(false, Ordering::Relaxed) {
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
                if self.quiet_ticks >= 2 {
                    return;
                }
            }
        }
    }
}

/// `fut`, or `None` once `timeout` passed first: `tokio::time::timeout` on
/// a [`LazyDeadline`], set only if `fut` is not ready at its first poll.
/// For a new connection's first bytes and its TLS handshake, where a tokio
/// timer made and cancelled per connection cost about 600 instructions
/// (callgrind) whenever the bytes were not in at once.
pub fn timeout<F: Future>(timeout: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        deadline: LazyDeadline::default(),
        timeout,
    }
}

pin_project_lite::pin_project! {
    /// See [`timeout`]. A type, not an `async fn`: that would keep `fut`
    /// twice (as its argument and pinned), and a TLS handshake's future is
    /// kilobytes.
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        deadline: LazyDeadline,
        timeout: Duration,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let had_budget = tokio::task::coop::has_budget_remaining();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !this.deadline.is_set() {
            this.deadline.restart(*this.timeout);
        }
        if had_budget && !tokio::task::coop::has_budget_remaining() {
            // `fut` used up the task's budget, and the timer's poll would
            // be refused for it: as tokio's `timeout` does, the deadline is
            // checked regardless, or a future that is always busy would
            // never time out.
            let deadline = &mut *this.deadline;
            let expired = tokio::task::coop::unconstrained(std::future::poll_fn(|cx| {
                deadline.poll_expired(cx)
            }));
            return std::pin::pin!(expired).poll(cx).map(|()| None);
        }
        this.deadline.poll_expired(cx).map(|()| None)
    }
}

/// A timeout set again for each wait, each time later than the last, and
/// rarely reached: a connection's header read timeout, a request's route
/// timeout. Setting it is a field write; the timer under it stays
/// registered at an earlier instant, and when that passes it moves on to
/// the deadline then in force. A tokio timer per wait instead cost about
/// 900 instructions per request to create, register and cancel
/// (callgrind); this costs a wake-up per timeout period per connection
/// (and per kept spare, below).
///
/// A dropped deadline gives its timer, still registered, to the next one
/// made on the same thread and runtime (see [`spare`]): a request's
/// deadline is a few fields set, not a timer made and cancelled.
#[derive(Debug, Default)]
pub struct LazyDeadline {
    /// One allocation, made (or taken from the spares) when the deadline
    /// is first set: a deadline costs its owner a pointer, and one never
    /// set costs nothing more (`ProxyBody` has a size guard).
    timer: Option<Pin<Box<Timer>>>,
}

pin_project_lite::pin_project! {
    /// `sleep` is registered (once polled) at or before `deadline`.
    #[derive(Debug)]
    struct Timer {
        #[pin]
        sleep: Sleep,
        deadline: Instant,
        // A wait is counting toward `deadline` (see `LazyDeadline::arm`).
        armed: bool,
        // The runtime whose timer wheel holds `sleep`: a spare timer is
        // only handed to a deadline made in the same one.
        runtime: tokio::runtime::Id,
    }
}

impl LazyDeadline {
    /// A deadline `timeout` from now.
    pub fn new(timeout: Duration) -> LazyDeadline {
        LazyDeadline::at(from_now(timeout))
    }

    /// A deadline at `deadline` (armed: counting toward it).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as a tokio timer would (so does any first
    /// setting of a deadline made with `default`).
    pub fn at(deadline: Instant) -> LazyDeadline {
        let mut made = LazyDeadline::default();
        made.set(deadline);
        made
    }

    /// Whether the deadline was ever set (it has a timer).
    pub fn is_set(&self) -> bool {
        self.timer.is_some()
    }

    /// For a timeout per wait (a body's read timeout): sets the deadline to
    /// `timeout` from now unless this wait already did. The flag lives with
    /// the timer, not beside it, so a deadline with it costs its owner a
    /// pointer and nothing more (see `ProxyBody`'s size test).
    pub fn arm(&mut self, timeout: Duration) {
        if !self.timer.as_ref().is_some_and(|t| t.armed) {
            self.restart(timeout);
        }
    }

    /// The wait ended (something arrived): the next [`LazyDeadline::arm`]
    /// sets the deadline afresh.
    pub fn disarm(&mut self) {
        if let Some(timer) = &mut self.timer {
            *timer.as_mut().project().armed = false;
        }
    }

    /// Sets the deadline to `timeout` from now.
    pub fn restart(&mut self, timeout: Duration) {
        self.set(from_now(timeout));
    }

    /// Sets the deadline to `deadline`, earlier or later than the last, on
    /// a spare timer of this thread's when it has none yet.
    pub fn set(&mut self, deadline: Instant) {
        let timer = self
            .timer
            .get_or_insert_with(|| spare::take_or_make(deadline));
        let timer = timer.as_mut().project();
        *timer.deadline = deadline;
        *timer.armed = true;
        if timer.sleep.deadline() > deadline {
            // Never later than the deadline (a shorter timeout than before).
            timer.sleep.reset(deadline);
        }
    }

    /// Ready once the deadline passed; wakes the task then. Pending for
    /// ever on a deadline never set.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        let mut timer = timer.as_mut().project();
        loop {
            std::task::ready!(timer.sleep.as_mut().poll(cx));
            if timer.sleep.deadline() >= *timer.deadline {
                return Poll::Ready(());
            }
            // An earlier deadline's instant: wait on for this one.
            timer.sleep.as_mut().reset(*timer.deadline);
        }
    }
}

/// `timeout` from now, or about 30 years for a timeout past what an
/// `Instant` holds (a configured `300000000000y`), as tokio's `timeout`
/// does, instead of a panic.
fn from_now(timeout: Duration) -> Instant {
    let now = crate::clock::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

impl Drop for LazyDeadline {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            spare::give(timer);
        }
    }
}

/// Timers of dropped deadlines, kept per thread for the next deadline.
///
/// A kept timer stays registered where it was and keeps the waker of the
/// task that last waited on it: when its instant passes while it is kept,
/// that task (or none, if it ended) is woken once for nothing, and an
/// ended task's memory (the size of its future) is held until then. That
/// is bounded (1,024 timers per thread, each until at most the longest
/// timeout configured) and is the price of a request not registering and
/// cancelling a timer of its own.
/// The timers belong to one runtime's wheel; those of another runtime on
/// the same thread (tests make one after another) are not mixed in.
mod spare {
    use std::cell::RefCell;
    use std::pin::Pin;

    use tokio::time::Instant;

    use super::Timer;

    /// At most this many per thread: enough for the requests in flight on
    /// a busy thread. HTTP/2 clients finish and begin their streams in
    /// bursts: with 512 streams in flight (`5-h2c`, `10-grpc-unary`) and
    /// 64 kept, 87% of gRPC calls made a timer and dropped one (malloc,
    /// registration, cancellation: about 700 instructions each; callgrind).
    /// The list grows only as far as a burst needs; each timer is about
    /// 150 bytes.
    const MOST: usize = 1024;

    struct Spare {
        runtime: Option<tokio::runtime::Id>,
        timers: Vec<Pin<Box<Timer>>>,
    }

    thread_local! {
        static SPARE: RefCell<Spare> = const {
            RefCell::new(Spare { runtime: None, timers: Vec::new() })
        };
    }

    /// A kept timer of this runtime's, or a new one registered (once
    /// polled) at `deadline`. Out of line, as `give` is: the callers are
    /// the request's hot futures, which this would otherwise grow.
    #[inline(never)]
    pub(super) fn take_or_make(deadline: Instant) -> Pin<Box<Timer>> {
        let runtime = tokio::runtime::Handle::current().id();
        let kept = SPARE.try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            if spare.runtime == Some(runtime) {
                spare.timers.pop()
            } else {
                None
            }
        });
        kept.ok().flatten().unwrap_or_else(|| {
            Box::pin(Timer {
                sleep: tokio::time::sleep_until(deadline),
                deadline,
                armed: true,
                runtime,
            })
        })
    }

    /// Keeps `timer` for the next deadline (dropped when the thread keeps
    /// enough, or is ending). A timer of another runtime than the kept
    /// ones replaces them: that runtime is the one in use now.
    #[inline(never)]
    pub(super) fn give(timer: Pin<Box<Timer>>) {
        let _ = SPARE.try_with(|spare| {
            let Ok(mut spare) = spare.try_borrow_mut() else {
                return;
            };
            let mut stale = Vec::new();
            if spare.runtime != Some(timer.runtime) {
                spare.runtime = Some(timer.runtime);
                stale = std::mem::take(&mut spare.timers);
            }
            if spare.timers.len() < MOST {
                spare.timers.push(timer);
            }
            // Dropped after the borrow ends.
            drop(spare);
            drop(stale);
        });
    }

    /// How many timers this thread keeps (for tests).
    #[cfg(test)]
    pub(super) fn kept() -> usize {
        SPARE.with(|spare| spare.borrow().timers.len())
    }
}

/// Futures polled only when their own wakers fired (or when asked to with
/// [`WakeGate::open`]), not on every wake-up of the task that owns them.
///
/// A connection's task wakes two or three times per request for its
/// socket; polling its idle clock and its drain signal each time cost about
/// 500 instructions per wake-up (a timer poll, a lock; callgrind), for
/// events that come once per idle period or once per shutdown.
#[derive(Debug)]
pub struct WakeGate {
    shared: Arc<Gate>,
    /// Wakes the gate, then the task.
    waker: Waker,
}

#[derive(Debug, Default)]
struct Gate {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for WakeGate {
    fn default() -> WakeGate {
        let shared = Arc::new(Gate::default());
        WakeGate {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl WakeGate {
    /// The next [`WakeGate::poll`] polls: for futures not polled yet.
    pub fn open(&self) {
        self.shared.woken.store(true, Ordering::Release);
    }

    /// Runs `poll` (with the gate's waker) if a gated future's waker fired
    /// since the last time, or the gate was opened; `Pending` otherwise.
    /// The task is woken whenever a gated future's waker fires.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.shared.task.register(cx.waker());
        if !self.shared.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn activity_keeps_it_alive_and_silence_expires_it() {
        let active = Activity::new();
        let mut clock = IdleClock::new(Duration::from_secs(10), active.clone());
        let start = tokio::time::Instant::now();
        // Bytes every 4 s for a minute: never idle.
        for _ in 0..15 {
            tokio::select! {
                () = clock.expired() => panic!("expired while active"),
                () = tokio::time::sleep(Duration::from_secs(4)) => active.touch(),
            }
        }
        // Then silence: expired between 10 and 15 s later.
        let quiet_from = tokio::time::Instant::now();
        clock.expired().await;
        let quiet = quiet_from.elapsed();
        assert!(
            quiet >= Duration::from_secs(10) && quiet <= Duration::from_secs(15),
            "{quiet:?}"
        );
        assert!(start.elapsed() >= Duration::from_secs(60));
    }

    /// Waits on `deadline` for at most `limit`: `true` if it expired.
    async fn expires_within(deadline: &mut LazyDeadline, limit: Duration) -> bool {
        tokio::select! {
            () = std::future::poll_fn(|cx| deadline.poll_expired(cx)) => true,
            () = tokio::time::sleep(limit) => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lazy_deadline_fires_at_the_deadline_in_force() {
        let timeout = Duration::from_secs(10);
        let mut deadline = LazyDeadline::new(timeout);
        // Waits of 6 s, each restarting the deadline: the timer registered
        // for the first one fires inside the second wait, and must not end it.
        for _ in 0..5 {
            deadline.restart(timeout);
            assert!(!expires_within(&mut deadline, Duration::from_secs(6)).await);
        }
        // Then a wait to the end: exactly the timeout after its restart.
        deadline.restart(timeout);
        let from = Instant::now();
        assert!(expires_within(&mut deadline, Duration::from_secs(60)).await);
        assert_eq!(from.elapsed(), timeout);
        // A shorter timeout than the registered one is kept too.
        deadline.restart(Duration::from_secs(30));
        assert!(!expires_within(&mut deadline, Duration::from_secs(1)).await);
        deadline.restart(Duration::from_secs(2));
        let from = Instant::now();
        assert!(expires_within(&mut deadline, Duration::from_secs(60)).await);
        assert_eq!(from.elapsed(), Duration::from_secs(2));
    }

    /// Polls `deadline` once, so its timer is registered.
    fn register(deadline: &mut LazyDeadline) {
        let waker = futures_util::task::noop_waker();
        assert!(
            deadline
                .poll_expired(&mut Context::from_waker(&waker))
                .is_pending()
        );
    }

    /// Leaves this thread one spare timer, registered `timeout` from now.
    fn keep_a_timer(timeout: Duration) {
        let mut deadline = LazyDeadline::new(timeout);
        register(&mut deadline);
        drop(deadline);
        assert_eq!(spare::kept(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_s_timer_serves_the_next_at_its_own_instant() {
        keep_a_timer(Duration::from_secs(30));
        // Registered 30 s out; a 2 s deadline on it fires at 2 s.
        let mut shorter = LazyDeadline::new(Duration::from_secs(2));
        assert_eq!(spare::kept(), 0, "the kept timer was taken");
        let from = Instant::now();
        assert!(expires_within(&mut shorter, Duration::from_secs(60)).await);
        assert_eq!(from.elapsed(), Duration::from_secs(2));
        drop(shorter);
        // Its instant has passed; a 10 s deadline on it waits the 10 s.
        let mut longer = LazyDeadline::new(Duration::from_secs(10));
        assert_eq!(spare::kept(), 0);
        let from = Instant::now();
        assert!(!expires_within(&mut longer, Duration::from_secs(9)).await);
        assert!(expires_within(&mut longer, Duration::from_secs(60)).await);
        assert_eq!(from.elapsed(), Duration::from_secs(10));
    }

    /// A burst of 512 requests ending, then 512 beginning (an HTTP/2
    /// client's streams): every new deadline takes a kept timer.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_deadlines_is_served_by_the_timers_of_the_last() {
        let burst = |n| {
            (0..n)
                .map(|_| {
                    let mut d = LazyDeadline::new(Duration::from_secs(30));
                    register(&mut d);
                    d
                })
                .collect::<Vec<_>>()
        };
        drop(burst(512));
        assert_eq!(spare::kept(), 512);
        let next = burst(512);
        assert_eq!(spare::kept(), 0, "a deadline made a timer of its own");
        drop(next);
    }

    #[test]
    fn a_timer_of_one_runtime_is_not_handed_to_another() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        runtime().block_on(async {
            let mut deadline = LazyDeadline::new(Duration::from_secs(5));
            register(&mut deadline);
        });
        // The runtime is gone; its timer is kept, and must not be used.
        assert_eq!(spare::kept(), 1);
        runtime().block_on(async {
            let mut deadline = LazyDeadline::new(Duration::from_secs(5));
            assert_eq!(spare::kept(), 1, "the other runtime's timer was taken");
            let from = Instant::now();
            assert!(expires_within(&mut deadline, Duration::from_secs(60)).await);
            assert_eq!(from.elapsed(), Duration::from_secs(5));
            drop(deadline);
            // This runtime's timer replaces the other's.
            assert_eq!(spare::kept(), 1);
            let _again = LazyDeadline::new(Duration::from_secs(5));
            assert_eq!(spare::kept(), 0);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_ends_a_slow_future_at_its_instant_and_not_a_quick_one() {
        // Ready at once: no timer is taken for it.
        keep_a_timer(Duration::from_secs(30));
        assert_eq!(timeout(Duration::from_secs(1), async { 7 }).await, Some(7));
        assert_eq!(spare::kept(), 1, "a ready future took a timer");
        // Done before the timeout, after a wait: its answer.
        let quick = tokio::time::sleep(Duration::from_secs(3));
        assert_eq!(timeout(Duration::from_secs(5), quick).await, Some(()));
        // Not done: `None` exactly at the timeout, on the kept timer
        // (registered 30 s out, earlier than that).
        let from = Instant::now();
        let slow = std::future::pending::<()>();
        assert_eq!(timeout(Duration::from_secs(5), slow).await, None);
        assert_eq!(from.elapsed(), Duration::from_secs(5));
        assert_eq!(spare::kept(), 1, "the timer was given back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_clock_checks_on_a_kept_timer() {
        keep_a_timer(Duration::from_secs(3));
        let active = Activity::new();
        let mut clock = IdleClock::new(Duration::from_secs(10), active.clone());
        assert_eq!(spare::kept(), 0, "the clock made a timer of its own");
        // Its timer fires at 3 s for the earlier deadline: not a check.
        // The checks are at 5 s (counted active when made), 10 and 15 s.
        let from = Instant::now();
        clock.expired().await;
        assert_eq!(from.elapsed(), Duration::from_secs(15));
        drop(clock);
        assert_eq!(spare::kept(), 1);
    }

    /// A future that uses up its task's budget on every poll still times
    /// out (the timer's own poll would be refused for want of budget).
    /// Real time: with time paused, a runtime that is never idle never
    /// moves its clock.
    #[test]
    fn a_timeout_ends_a_future_that_uses_up_the_budget() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async move {
                let hog = async {
                    loop {
                        tokio::task::consume_budget().await;
                    }
                };
                let _ = tx.send(timeout(Duration::from_millis(50), hog).await.is_none());
            });
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Ok(true),
            "still waiting 30 s after a 50 ms timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_timeout_is_far_off_not_a_panic() {
        let mut deadline = LazyDeadline::new(Duration::MAX);
        assert!(!expires_within(&mut deadline, Duration::from_secs(86_400)).await);
        deadline.restart(Duration::MAX);
        assert_eq!(timeout(Duration::MAX, async { 1 }).await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_future_is_polled_when_its_waker_fires() {
        use futures_util::FutureExt as _;
        use std::sync::atomic::AtomicUsize;
        let gate = WakeGate::default();
        let polls = AtomicUsize::new(0);
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(5)));
        gate.open();
        let mut gated = std::pin::pin!(std::future::poll_fn(|cx| {
            gate.poll(cx, |gcx| {
                polls.fetch_add(1, Ordering::Relaxed);
                timer.as_mut().poll(gcx)
            })
        }));
        // Many wake-ups of the task that are not the timer's: no poll.
        for _ in 0..10 {
            assert!(gated.as_mut().now_or_never().is_none());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, when opened");
        // The timer fires: the gate lets the next poll through, which ends.
        gated.await;
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
