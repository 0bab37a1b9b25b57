//! Futures boxed where they are made, for the servers and the proxy: a
//! module of its own so the HTTP/1.1 and HTTP/2 servers share it without
//! depending on each other.

use std::mem::MaybeUninit;
use std::pin::Pin;

/// A future boxed where it is made: the box is allocated first and `make`'s
/// future is written into it. `Box::pin(fut)` makes the future on the stack
/// first and then copies all of it into the box, however little of it is
/// set yet: for a request's exchange (6.5 kB) that copy was the largest
/// single `memcpy` of a proxied GET, and most of its cache misses
/// (callgrind's cache simulation). With the box allocated first, the
/// compiler has the future's constructor write into the box itself.
#[inline(always)]
pub(crate) fn box_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// A future boxed where it is made ([`box_in_place`]), whose box goes back
/// to its thread when the future is done or dropped, for the next one of its
/// type: see [`recycled`].
///
/// The way back is kept with the box (a function of the future's type, made
/// where that type is known to be `'static`), so the types holding one need
/// no `'static` bound of their own.
pub(crate) struct Recycled<F> {
    fut: Option<Pin<Box<F>>>,
    give_back: fn(Box<MaybeUninit<F>>),
}

/// Boxes `make`'s future as [`box_in_place`] does, in a box an earlier one
/// of its type left on this thread if there is one.
///
/// For the futures that carry an HTTP/2 request's exchange (about 4 kB,
/// one per stream): past glibc's per-thread cache (1,032 bytes) every box
/// went through its shared bins, and with many streams in flight each
/// `free` merged the box with its freed neighbours and each `malloc` split
/// one off again: `_int_malloc`, `_int_free` and `unlink_chunk` under these
/// boxes were about 2% of a unary gRPC call's CPU.
#[inline(always)]
pub(crate) fn recycled<F: 'static>(make: impl FnOnce() -> F) -> Recycled<F> {
    let room = spares::take::<F>().unwrap_or_else(Box::new_uninit);
    Recycled {
        fut: Some(Box::into_pin(Box::write(room, make()))),
        give_back: spares::give::<F>,
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let fut = self.fut.as_mut().expect("a future until dropped");
        fut.as_mut().poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else {
            return;
        };
        // SAFETY: the future is dropped where it is, as pinning requires, and
        // never touched again; what is left is its room, which
        // `MaybeUninit<F>` describes exactly (same size and alignment). Should
        // the future's drop panic, the room is leaked, not freed twice.
        let room = unsafe {
            let raw = Box::into_raw(Pin::into_inner_unchecked(fut));
            std::ptr::drop_in_place(raw);
            Box::from_raw(raw.cast::<MaybeUninit<F>>())
        };
        (self.give_back)(room);
    }
}

/// Each thread's boxes kept for reuse, of whatever types [`recycled`] made
/// (one or two in practice: a lookup passes over the others).
mod spares {
    use std::any::Any;
    use std::cell::RefCell;
    use std::mem::{MaybeUninit, size_of};

    /// The most a thread keeps, in bytes (of every type together): about
    /// 260 exchanges. Under load a thread's streams end and start in bursts
    /// as large as one upstream read's answers: with room for 32, four in
    /// five streams still allocated theirs (a uprobe on `malloc`, h2load
    /// with 512 calls in flight). What is left after a burst stays with the
    /// thread (not with any connection) until it is used again, as glibc's
    /// own free lists keep what it is given back.
    pub(super) const MOST: usize = 1 << 20;

    #[derive(Default)]
    struct Spares {
        boxes: Vec<Box<dyn Any>>,
        bytes: usize,
    }

    thread_local! {
        static SPARES: RefCell<Spares> = RefCell::default();
    }

    /// What keeping one box counts for: its room and its place in the list
    /// (so that even boxes of nothing are kept in bounded numbers).
    pub(super) const fn cost<F>() -> usize {
        size_of::<F>() + size_of::<Box<dyn Any>>()
    }

    pub(super) fn take<F: 'static>() -> Option<Box<MaybeUninit<F>>> {
        SPARES
            .try_with(|spares| {
                let mut spares = spares.borrow_mut();
                let at = spares
                    .boxes
                    .iter()
                    .rposition(|s| s.is::<MaybeUninit<F>>())?;
                spares.bytes -= cost::<F>();
                spares.boxes.swap_remove(at).downcast().ok()
            })
            .ok()
            .flatten()
    }

    /// Keeps `room` unless the thread has its fill (or is ending): then it
    /// is freed.
    pub(super) fn give<F: 'static>(room: Box<MaybeUninit<F>>) {
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.bytes + cost::<F>() <= MOST {
                spares.bytes += cost::<F>();
                spares.boxes.push(room);
            }
        });
    }

    #[cfg(test)]
    pub(super) fn count() -> usize {
        SPARES.with(|s| s.borrow().boxes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    /// A future that counts its drops and answers its number.
    struct Counted<const N: usize>(Arc<AtomicUsize>, [u8; N]);

    impl<const N: usize> Future for Counted<N> {
        type Output = usize;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            Poll::Ready(N)
        }
    }

    impl<const N: usize> Drop for Counted<N> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn at<F>(r: &Recycled<F>) -> *const F {
        &**r.fut.as_ref().expect("a future")
    }

    #[test]
    fn a_dropped_future_leaves_its_box_for_the_next_of_its_type() {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = recycled(|| Counted::<4096>(drops.clone(), [0; 4096]));
        let where_first = at(&first);
        drop(first);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "dropped once, in place");
        assert_eq!(spares::count(), 1);
        // Another type does not take it.
        let other = recycled(|| Counted::<2048>(drops.clone(), [0; 2048]));
        assert_eq!(spares::count(), 1);
        let mut second = recycled(|| Counted::<4096>(drops.clone(), [1; 4096]));
        assert_eq!(at(&second), where_first, "the same box");
        assert_eq!(spares::count(), 0);
        assert_eq!(
            second.fut.as_ref().unwrap().1[4095],
            1,
            "the new future in it"
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut second).poll(&mut cx), Poll::Ready(4096));
        drop((second, other));
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert_eq!(spares::count(), 2);
    }

    #[test]
    fn a_thread_keeps_at_most_its_fill() {
        const SIZE: usize = 64 * 1024;
        let fill = spares::MOST / spares::cost::<Counted<SIZE>>();
        let drops = Arc::new(AtomicUsize::new(0));
        let many: Vec<_> = (0..fill + 5)
            .map(|_| recycled(|| Counted::<SIZE>(drops.clone(), [0; SIZE])))
            .collect();
        drop(many);
        assert_eq!(drops.load(Ordering::Relaxed), fill + 5);
        assert_eq!(spares::count(), fill);
    }

    /// Futures of no size cost no room, but each kept box still counts: a
    /// thread keeps them in bounded numbers.
    #[test]
    fn boxes_of_nothing_are_kept_in_bounded_numbers() {
        struct Nothing;
        impl Future for Nothing {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Ready(())
            }
        }
        let fill = spares::MOST / spares::cost::<Nothing>();
        drop(
            (0..fill + 5)
                .map(|_| recycled(|| Nothing))
                .collect::<Vec<_>>(),
        );
        assert_eq!(spares::count(), fill);
    }
}
