//! One clock reading per wake-up of a connection's task, for deadlines.
//!
//! A proxied request read the monotonic clock six times (a small GET):
//! its start, the route timeout's, the pool's idle check, its answer's
//! arrival, its connection's return to the pool and the wait for the next
//! request's head. A read costs about 20 ns here (`Instant::now` through
//! the vDSO): a percent of the gateway's CPU a request. nginx reads the
//! clock once per turn of its event loop for every connection the turn
//! serves; this is narrower. Within one poll of one connection's task (a
//! [`Turns`]), [`now`] gives the poll's last reading, made by [`fresh`] or
//! by the poll's first [`now`].
//!
//! A poll is the work one wake-up found: a few microseconds for an
//! HTTP/1.1 connection, and up to milliseconds for an HTTP/2 connection
//! serving hundreds of streams at once. So [`now`] may be that much early,
//! which suits deadlines of seconds (they fall that much sooner) and an
//! idle connection's age. A latency's two ends (a request's start, its
//! answer's arrival) take [`fresh`] readings: on an HTTP/2 connection a
//! call may start and be answered within one poll, and would read zero.
//!
//! Each accepted connection's task is a [`Turns`], and so is each upstream
//! HTTP/2 connection's (it reads the request bodies it sends).
//!
//! Outside a [`Turns`] (other tasks, tests, the blocking pool) both read
//! the clock every time. A panic in a poll leaves nothing cached behind:
//! the turn's guard puts the thread's state back as it unwinds.

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

/// The thread's state: outside any connection's poll, or inside one with
/// the clock not read yet, or read at this instant.
#[derive(Clone, Copy)]
enum Turn {
    Outside,
    Unread,
    Read(Instant),
}

thread_local! {
    static TURN: Cell<Turn> = const { Cell::new(Turn::Outside) };
}

/// A new reading, which the rest of the poll's [`now`]s then share: for
/// the ends of a latency.
pub fn fresh() -> Instant {
    let at = Instant::now();
    TURN.with(|turn| {
        if !matches!(turn.get(), Turn::Outside) {
            turn.set(Turn::Read(at));
        }
    });
    at
}

/// The time now, for deadlines: within a connection's poll, the poll's
/// last reading (see the module's doc).
pub fn now() -> Instant {
    TURN.with(|turn| match turn.get() {
        Turn::Read(at) => at,
        Turn::Unread => {
            let at = Instant::now();
            turn.set(Turn::Read(at));
            at
        }
        Turn::Outside => Instant::now(),
    })
}

pin_project_lite::pin_project! {
    /// A connection's future whose every poll shares one clock reading
    /// (see the module's doc).
    pub struct Turns<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Turns<F> {
    /// `inner`, polled in turns.
    pub fn new(inner: F) -> Turns<F> {
        Turns { inner }
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _turn = TurnGuard::begin();
        self.project().inner.poll(cx)
    }
}

/// Starts a turn, and puts back what was before when dropped (after the
/// poll, or while a panic unwinds through it): a turn inside another
/// leaves the outer one as it was.
struct TurnGuard {
    outer: Turn,
}

impl TurnGuard {
    fn begin() -> TurnGuard {
        TurnGuard {
            outer: TURN.with(|turn| turn.replace(Turn::Unread)),
        }
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        TURN.with(|turn| turn.set(self.outer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the clock has moved past `since`, so two readings
    /// differ (the clock's resolution is far finer, but not guaranteed).
    fn after(since: Instant) {
        while Instant::now() <= since {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn outside_a_turn_every_reading_is_new() {
        let first = now();
        after(first);
        assert!(now() > first);
    }

    #[tokio::test]
    async fn a_poll_shares_its_first_reading_and_the_next_poll_reads_again() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Turns::new(async move {
            let first = now();
            after(first);
            let again = now();
            rx.await.unwrap();
            let next_poll = now();
            (first, again, next_poll)
        }));
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        let (first, again, next_poll) = task.await.unwrap();
        assert_eq!(again, first, "a second reading in the same poll was new");
        assert!(
            next_poll > first,
            "the next poll kept the last one's reading"
        );
    }

    /// `fut`'s output after one poll, for futures that end in one.
    fn poll_once<F: Future>(fut: F) -> F::Output {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(fut).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the turn did not finish in one poll"),
        }
    }

    #[test]
    fn a_fresh_reading_is_new_and_the_polls_later_readings_share_it() {
        let (first, renewed, later) = poll_once(Turns::new(async {
            let first = now();
            after(first);
            let renewed = fresh();
            (first, renewed, now())
        }));
        assert!(renewed > first, "a fresh reading was the poll's cached one");
        assert_eq!(
            later, renewed,
            "the poll's later reading was not the fresh one"
        );
        after(renewed);
        let outside = fresh();
        assert!(outside > renewed, "a fresh reading outside a turn was old");
        after(outside);
        assert!(now() > outside, "a fresh reading outside a turn was kept");
    }

    #[test]
    fn a_turn_leaves_nothing_behind_even_when_its_poll_panics() {
        let unwound = std::panic::catch_unwind(|| {
            poll_once(Turns::new(async {
                let _ = now();
                panic!("in the poll");
            }))
        });
        assert!(unwound.is_err());
        let first = now();
        after(first);
        assert!(now() > first, "a reading stayed cached outside any turn");
    }

    #[test]
    fn a_turn_inside_another_leaves_the_outer_reading_as_it_was() {
        let (first, inner, last) = poll_once(Turns::new(async {
            let first = now();
            after(first);
            let inner = Turns::new(async { now() }).await;
            (first, inner, now())
        }));
        assert!(inner > first, "the inner turn did not read for itself");
        assert_eq!(
            last, first,
            "the inner turn changed the outer one's reading"
        );
    }
}
