//! Futures boxed where they are made, for the servers and the proxy: a
//! module of its own so the HTTP/1.1 and HTTP/2 servers share it without
//! depending on each other.

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
