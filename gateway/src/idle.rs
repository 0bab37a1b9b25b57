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
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

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
#[derive(Debug)]
pub struct IdleClock {
    active: Arc<Activity>,
    tick: Interval,
    quiet_ticks: u32,
}

impl IdleClock {
    /// A clock for `timeout`, starting now with the I/O counted active.
    pub fn new(timeout: Duration, active: Arc<Activity>) -> IdleClock {
        let half = (timeout / 2).max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        IdleClock {
            active,
            tick,
            quiet_ticks: 0,
        }
    }

    /// Completes once two checks in a row found no bytes moved. Cancel-safe
    /// (for `select!`): the count survives a dropped call.
    pub async fn expired(&mut self) {
        loop {
            self.tick.tick().await;
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

/// A timeout set again for each wait, each time later than the last, and
/// rarely reached: a connection's header read timeout. Setting it is a
/// field write; the timer under it stays registered at an earlier instant,
/// and when that passes it moves on to the deadline then in force. A tokio
/// timer per wait instead cost about 900 instructions per request to
/// create, register and cancel (callgrind); this costs a wake-up per
/// timeout period per connection.
#[derive(Debug)]
pub struct LazyDeadline {
    /// One allocation, so an optional deadline costs a response body a
    /// pointer (`ProxyBody` has a size guard).
    timer: Pin<Box<Timer>>,
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
    }
}

impl LazyDeadline {
    /// A deadline `timeout` from now.
    pub fn new(timeout: Duration) -> LazyDeadline {
        LazyDeadline::at(Instant::now() + timeout)
    }

    /// A deadline at `deadline` (armed: counting toward it).
    pub fn at(deadline: Instant) -> LazyDeadline {
        LazyDeadline {
            timer: Box::pin(Timer {
                sleep: tokio::time::sleep_until(deadline),
                deadline,
                armed: true,
            }),
        }
    }

    /// For a timeout per wait (a body's read timeout): sets the deadline to
    /// `timeout` from now unless this wait already did. The flag lives with
    /// the timer, not beside it, so an optional deadline with it costs its
    /// owner a pointer and nothing more (see `ProxyBody`'s size test).
    pub fn arm(&mut self, timeout: Duration) {
        if !self.timer.armed {
            self.restart(timeout);
        }
    }

    /// The wait ended (something arrived): the next [`LazyDeadline::arm`]
    /// sets the deadline afresh.
    pub fn disarm(&mut self) {
        *self.timer.as_mut().project().armed = false;
    }

    /// Sets the deadline to `timeout` from now.
    pub fn restart(&mut self, timeout: Duration) {
        self.set(Instant::now() + timeout);
    }

    /// Sets the deadline to `deadline`, earlier or later than the last.
    pub fn set(&mut self, deadline: Instant) {
        let timer = self.timer.as_mut().project();
        *timer.deadline = deadline;
        *timer.armed = true;
        if timer.sleep.deadline() > deadline {
            // Never later than the deadline (a shorter timeout than before).
            timer.sleep.reset(deadline);
        }
    }

    /// Ready once the deadline passed; wakes the task then.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut timer = self.timer.as_mut().project();
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
