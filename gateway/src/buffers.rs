//! A per-thread pool of I/O buffers and header maps for the native
//! HTTP/1 server and client, and of header maps for the native HTTP/2
//! server and client.
//!
//! A connection holds no buffer while it waits for its next request (that
//! is what keeps an idle connection small), so without a pool every request
//! would allocate and free its read and write buffers: about 1,500
//! instructions of `malloc` and `free` per small request, measured. With
//! it, a connection takes a buffer when it has bytes to read or write and
//! gives it back when the request is done.
//!
//! Only buffers of at most `LARGEST` bytes are kept (a head or a
//! response that grew its buffer past that frees it), and only `KEPT` per
//! thread: 256 KiB per worker thread when they are of the usual size, 1 MiB
//! at most, however many connections come and go.
//!
//! Header maps ([`map`], [`give_map`]): each head the native codecs parse
//! or decode becomes a `HeaderMap`, two per proxied request (three for a
//! gRPC call: its trailers). A map's entries are 104 bytes each, so a map
//! with room for the dozen fields of a usual head (1,248 bytes) is larger
//! than glibc's per-thread cache takes (1,032 bytes): each one went through
//! `malloc`'s slow path and, under load, its consolidation of freed small
//! chunks. A map whose head has been written out (or encoded, for HTTP/2)
//! is cleared and kept here for the next head instead (`KEPT_MAPS` per
//! thread, each of at most `LARGEST_MAP` fields' room). The HTTP/2 server
//! gives back the response maps it encodes and takes maps for the requests
//! it decodes; its client does the reverse, so a thread proxying gRPC
//! calls keeps reusing the same few maps.
//!
//! A buffer given back while a slice of it is still on its way (a
//! response's header values and small body, queued by HTTP/2 until its
//! connection writes them after the exchange gave the buffer back) is kept
//! aside (`KEPT_SHARED` per thread, the oldest let go first) and taken
//! again once nothing shares it: dropped instead, every HTTP/2 request
//! freed a 4 KiB buffer and allocated another, both on glibc's slow path.
//! Only a thread whose free list is empty looks there, at its oldest few.
//!
//! Small copies ([`shared_copy`]): an HTTP/2 request's `:path` and
//! `:authority` and its Huffman-decoded field values are copied out of the
//! frame they came in, and the `Host` value made from `:authority` and the
//! `grpc-timeout` sent upstream are made per request. Each one made with
//! `Bytes::copy_from_slice` (or from a vector) was an allocation, and its
//! first clone (the proxy clones the path and host it forwards) a second
//! one, to make the vector shared: nine per proxied gRPC call in
//! callgrind. They are cut from a per-thread chunk instead, shared from
//! the start: an allocation per `COPIES_CHUNK` bytes of copies, and a
//! clone costs a reference count. A chunk is freed once every copy cut
//! from it is gone (an HTTP/2 connection's last Huffman-decoded string,
//! kept while it is busy, holds one).
//!
//! Body buffers ([`take_body`], [`give_body`]): a request body is read up
//! to [`BODY_SIZE`] at a time, and each piece read goes upstream as a slice
//! of the buffer it was read into, so the next read needs another buffer
//! while that piece is on its way. Allocated afresh each time, glibc gave
//! the freed ones back to the kernel (`madvise`) and every new one faulted
//! its pages in again: 14 page faults per 1 MiB upload, a tenth of its CPU.
//! Kept here instead, `KEPT_BODIES` per thread (2 MiB at most, held only
//! after that many were in use at once), each taken again once the pieces
//! read into it are gone.
//!
//! Relay buffers ([`take_relay`], [`give_relay`]): the same for response
//! bodies, read up to [`RELAY_SIZE`] at a time (with their head, on an
//! upstream connection whose last response was larger than a usual
//! buffer), each piece written to the client as a slice of the buffer it
//! was read into, and given back whenever the body waits for more.
//! `KEPT_RELAYS` per thread (1 MiB at most).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::thread::LocalKey;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

/// Capacity of a pooled buffer: one read's worth.
pub const SIZE: usize = 4096;
/// Largest buffer given back; a larger one is freed.
const LARGEST: usize = 4 * SIZE;
/// Buffers kept per thread.
const KEPT: usize = 64;

/// Buffers kept aside while still shared, per thread.
const KEPT_SHARED: usize = 512;
/// Shared buffers looked at by a `take` that finds no free one.
const SHARED_SCAN: usize = 8;

/// Capacity of a body buffer: one large read of a request body, and so
/// the largest piece written upstream at once. 63 KiB, not 64: a TCP
/// segment over the loopback carries at most 65,483 bytes (an IPv4
/// packet's 65,535 less the IP header and the TCP header with its
/// timestamps), so each 64 KiB write went as a full segment and a 53-byte
/// one, and a 1 MiB upload to an upstream on the same machine cost the
/// gateway twice the CPU (bench/ab.sh UPLOAD=1: 600-650 us against 275-330
/// at 63 KiB). Smaller pieces fit as well but take more system calls
/// (16 KiB: 1.4 times the CPU of 63 KiB). Over a network the segments are
/// far smaller than either, and the size makes no such difference.
pub const BODY_SIZE: usize = 63 * 1024;
/// Body buffers kept per thread, idle or still shared with a piece of a
/// body on its way upstream: enough for ten uploads at once on one
/// thread, each with up to three (a piece in the body's slot, one being
/// written upstream, one being read into).
const KEPT_BODIES: usize = 32;

/// Capacity of a relay buffer ([`take_relay`]): one read of a response
/// body, 32 KiB and the byte more that shows a read took all that was
/// waiting (`h1::client`'s `room_for_the_rest`). Each read after a
/// response's head went into a buffer allocated for it, on glibc's slow
/// path, and freed once written: 0.3 us of a 16 KiB response's 5.2 us of
/// user time (perf, 2-16k); a chunked body was read 4 KiB at a time, an
/// allocation each.
///
/// 32 KiB, not 16: on a connection whose last response was large, a
/// response's head is read into one of these too, and a 16 KiB body then
/// comes with its head in one read, not a 4 KiB read and a second for the
/// rest. A proxied 16 KiB GET then takes two `recvfrom` (the client's
/// request, the whole response), not three: 3% less CPU (`BIG=1
/// bench/ab.sh`). Larger bodies take half the reads; a client that stops
/// reading can make the gateway hold up to this much per piece on its
/// way.
pub const RELAY_SIZE: usize = 32 * 1024 + 1;
/// Relay buffers kept per thread, idle or still shared with a piece on its
/// way to a client: 1 MiB at most.
const KEPT_RELAYS: usize = 32;

/// Header maps kept per thread: an HTTP/2 connection's read can bring
/// hundreds of heads at once, and with 32 (then 256) the maps a burst gave
/// back overflowed and the next burst allocated anyway (callgrind, unary
/// gRPC over 512 streams). At most 2.6 MB per thread, 1.3 MB when the maps
/// have a usual head's room.
const KEPT_MAPS: usize = 1024;
/// Room an HTTP/2 head's map is given: its fields are decoded one by one,
/// their number unknown until the end, and a usual request's dozen (with
/// the fields the proxy adds) then fit without growing. A kept map that
/// served a small head (trailers) grows to it once, not on every reuse.
pub const HEAD_ROOM: usize = 12;
/// Largest map kept, in fields it has room for (a map of 24 is 2.5 kB); a
/// map grown past it by a head of many fields is freed.
const LARGEST_MAP: usize = 24;

/// Room of a chunk that small copies are cut from.
const COPIES_CHUNK: usize = 4096;
/// Larger copies get an allocation of their own (a long value would use
/// up a chunk, and pin it for as long as it lives).
const LARGEST_SHARED_COPY: usize = 512;

thread_local! {
    static COPIES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static BODIES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static RELAYS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static SHARED: RefCell<VecDeque<BytesMut>> = const { RefCell::new(VecDeque::new()) };
}

/// Keeps `item` in this thread's `list` unless it holds `most` already
/// (then `item` is dropped).
fn keep<T: 'static>(list: &'static LocalKey<RefCell<Vec<T>>>, item: T, most: usize) {
    list.with(|list| {
        let mut list = list.borrow_mut();
        if list.len() < most {
            list.push(item);
        }
    });
}

/// An empty header map with room for at least `fields` fields: a kept one
/// when there is one.
pub fn map(fields: usize) -> HeaderMap {
    match MAPS.with(|maps| maps.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives `map` back once its head is written: its fields are dropped now
/// (and with them the read buffer they were slices of is released), its
/// room kept for the next head unless the thread keeps enough already or
/// it grew large. A map that never had room (a relayed response's) is not
/// kept: the next head would take it and allocate all the same.
pub fn give_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > LARGEST_MAP {
        return;
    }
    map.clear();
    keep(&MAPS, map, KEPT_MAPS);
}

/// A copy of `src`, shared from the start (see the module doc): cut from
/// this thread's chunk of small copies when it is small.
pub fn shared_copy(src: &[u8]) -> Bytes {
    shared_written(src.len(), |dst| dst.extend_from_slice(src))
}

/// Bytes written by `write` (at most `most` of them), shared from the
/// start as [`shared_copy`]'s: written straight into this thread's chunk
/// of small copies when they fit, else into a buffer of their own.
pub fn shared_written(most: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut write = Some(write);
    if most <= LARGEST_SHARED_COPY {
        let cut = COPIES.try_with(|chunk| {
            let mut chunk = chunk.borrow_mut();
            if chunk.capacity() < most {
                *chunk = BytesMut::with_capacity(COPIES_CHUNK);
            }
            (write.take().expect("written once"))(&mut chunk);
            chunk.split().freeze()
        });
        if let Ok(bytes) = cut {
            return bytes;
        }
    }
    // Large, or the thread's chunk is gone (the thread is ending).
    let mut own = BytesMut::with_capacity(most);
    (write.take().expect("not written yet"))(&mut own);
    own.freeze()
}

/// An empty buffer with room for at least [`SIZE`] bytes.
pub fn take() -> BytesMut {
    FREE.with(|free| free.borrow_mut().pop())
        .or_else(take_unshared)
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// One of the oldest buffers kept aside while shared, if nothing shares it
/// now; those still shared go to the back.
fn take_unshared() -> Option<BytesMut> {
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        for _ in 0..SHARED_SCAN.min(shared.len()) {
            let mut buf = shared.pop_front()?;
            // `try_reclaim` succeeds only for the sole owner: it moves the
            // start back to the allocation's first byte.
            if !buf.try_reclaim(SIZE) {
                shared.push_back(buf);
            } else if buf.capacity() <= LARGEST {
                return Some(buf);
            }
        }
        None
    })
}

/// Gives `buf` back when it is empty and of the usual size, to be taken
/// again at once or, while a slice of it is still alive (a head's header
/// value, say), once that slice is gone; leaves an empty, unallocated
/// buffer in its place either way.
pub fn give(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return;
    }
    let mut buf = std::mem::take(buf);
    if buf.capacity() == 0 {
        return;
    }
    // `try_reclaim` succeeds only for the sole owner: it moves the start
    // back to the allocation's first byte, so the whole capacity is free.
    if !buf.try_reclaim(SIZE) {
        keep_shared(buf);
        return;
    }
    if buf.capacity() <= LARGEST {
        keep(&FREE, buf, KEPT);
    }
}

/// Keeps a buffer that a slice still shares, letting the oldest go when
/// the thread keeps enough. (How large it is shows only once it is
/// reclaimed: one grown past [`LARGEST`] is let go then.)
fn keep_shared(buf: BytesMut) {
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        if shared.len() == KEPT_SHARED {
            shared.pop_front();
        }
        shared.push_back(buf);
    });
}

/// An empty buffer with room for [`BODY_SIZE`] bytes: a kept one whose
/// pieces are all gone, when there is one.
pub fn take_body() -> BytesMut {
    take_sized(&BODIES, BODY_SIZE, 2 * BODY_SIZE)
}

/// Keeps a buffer from [`take_body`] when it is empty, even while pieces
/// read into it are still on their way (it is taken again once they are
/// gone); leaves an empty, unallocated buffer in its place either way. One
/// that grew past twice [`BODY_SIZE`] is freed.
pub fn give_body(buf: &mut BytesMut) {
    give_sized(&BODIES, buf, 2 * BODY_SIZE, KEPT_BODIES);
}

/// An empty buffer with room for [`RELAY_SIZE`] bytes, for one read of a
/// response body: a kept one whose pieces are all gone, when there is one.
pub fn take_relay() -> BytesMut {
    take_sized(&RELAYS, RELAY_SIZE, RELAY_SIZE)
}

/// Keeps a buffer from [`take_relay`] as [`give_body`] keeps a body
/// buffer: while its pieces are on their way to the client too. One grown
/// past [`RELAY_SIZE`] (by trailers moved into it) is freed.
pub fn give_relay(buf: &mut BytesMut) {
    give_sized(&RELAYS, buf, RELAY_SIZE, KEPT_RELAYS);
}

/// A buffer of `size` from `list` that no piece shares any more (one
/// found grown past `largest` is freed), or a new one.
fn take_sized(
    list: &'static LocalKey<RefCell<Vec<BytesMut>>>,
    size: usize,
    largest: usize,
) -> BytesMut {
    list.with(|kept| {
        let mut kept = kept.borrow_mut();
        // `try_reclaim` succeeds only once no piece shares the buffer.
        while let Some(free) = kept.iter_mut().position(|buf| buf.try_reclaim(size)) {
            let buf = kept.swap_remove(free);
            if buf.capacity() <= largest {
                return Some(buf);
            }
        }
        None
    })
    .unwrap_or_else(|| BytesMut::with_capacity(size))
}

/// Keeps `buf` in `list` (at most `most`) when it is empty, shared or not;
/// one whose allocation is past `largest` is freed (one still shared, once
/// [`take_sized`] finds it so). Never given one that was not allocated:
/// with no room (a full buffer whose bytes were all split off has none
/// either) it would be kept, and never taken again.
fn give_sized(
    list: &'static LocalKey<RefCell<Vec<BytesMut>>>,
    buf: &mut BytesMut,
    largest: usize,
    most: usize,
) {
    if !buf.is_empty() {
        return;
    }
    let mut buf = std::mem::take(buf);
    if buf.try_reclaim(1) && buf.capacity() > largest {
        return;
    }
    keep(list, buf, most);
}

/// Body buffers this thread keeps now.
#[cfg(test)]
pub(crate) fn kept_bodies() -> usize {
    BODIES.with(|kept| kept.borrow().len())
}

/// Relay buffers this thread keeps now.
#[cfg(test)]
pub(crate) fn kept_relays() -> usize {
    RELAYS.with(|kept| kept.borrow().len())
}

/// Buffers this thread keeps now.
#[cfg(test)]
pub(crate) fn kept() -> usize {
    FREE.with(|free| free.borrow().len())
}

/// Buffers this thread keeps now, free or still shared by a slice.
#[cfg(test)]
pub(crate) fn kept_any() -> usize {
    kept() + SHARED.with(|shared| shared.borrow().len())
}

/// Waits (10 s at most) until `count` (one of the counts above) reads
/// `want`: a connection's task gives its buffer back on a later turn than
/// the one that ended its work. `what` names the wait in the failure.
#[cfg(test)]
pub(crate) async fn until_kept(count: fn() -> usize, want: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while count() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} buffers kept while idle, {want} expected",
            count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written comes back whole, small (from the thread's chunk,
    /// beside earlier copies that stay as they were) or large (its own).
    #[test]
    fn written_bytes_come_back_as_written_whatever_their_size() {
        let before = shared_copy(b"before");
        let small = shared_written(16, |dst| dst.extend_from_slice(b"small"));
        let large = vec![b'x'; LARGEST_SHARED_COPY * 3];
        let big = shared_written(large.len(), |dst| dst.extend_from_slice(&large));
        let after = shared_copy(b"after");
        assert_eq!(&before[..], b"before");
        assert_eq!(&small[..], b"small");
        assert_eq!(&big[..], &large[..]);
        assert_eq!(&after[..], b"after");
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_whole() {
        let mut buf = take();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        let before = kept();
        give(&mut buf);
        assert_eq!(kept(), before, "still shared with the head: not pooled");
        drop(head);

        let mut buf = take();
        buf.extend_from_slice(b"abc");
        buf.clear();
        let ptr2 = buf.as_ptr();
        give(&mut buf);
        let again = take();
        assert_eq!(again.as_ptr(), ptr2, "the same allocation comes back");
        assert!(again.is_empty() && again.capacity() >= SIZE);
    }

    #[test]
    fn a_buffer_given_back_while_shared_is_taken_once_the_slice_is_gone() {
        FREE.with(|free| free.borrow_mut().clear());
        let mut buf = take();
        let first = buf.as_ptr();
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nok");
        let response = buf.split().freeze();
        let before = kept_shared();
        give(&mut buf);
        assert_eq!(buf.capacity(), 0, "the connection holds none of it");
        assert_eq!(kept_shared(), before + 1, "kept aside while shared");
        let other = take();
        assert_ne!(other.as_ptr(), first, "still shared: not taken");
        assert_eq!(kept_shared(), before + 1);
        drop(response);
        let again = take();
        assert_eq!(kept_shared(), before, "taken again once the slice is gone");
        assert_eq!(again.as_ptr(), first, "the same allocation, from its start");
        assert!(again.is_empty() && again.capacity() >= SIZE);
    }

    #[test]
    fn a_buffer_with_bytes_or_grown_large_is_not_pooled() {
        let mut pending = take();
        pending.extend_from_slice(b"pipelined");
        give(&mut pending);
        assert_eq!(&pending[..], b"pipelined", "bytes still to read stay");

        let before = kept();
        let mut large = BytesMut::with_capacity(LARGEST * 2);
        give(&mut large);
        assert_eq!(kept(), before, "a grown buffer is freed, not kept");
        let mut usual = BytesMut::with_capacity(SIZE);
        give(&mut usual);
        assert_eq!(kept(), before + 1);
    }

    #[test]
    fn a_body_buffer_is_taken_again_once_its_pieces_are_gone() {
        let mut buf = take_body();
        assert!(buf.capacity() >= BODY_SIZE);
        let first = buf.as_ptr();
        buf.extend_from_slice(&[7; 1000]);
        let piece = buf.split_to(1000).freeze();
        give_body(&mut buf);
        assert_eq!(buf.capacity(), 0, "the connection holds none of it");

        let other = take_body();
        assert_ne!(
            other.as_ptr(),
            first,
            "still shared with a piece: not taken"
        );
        drop(piece);
        let again = take_body();
        assert_eq!(again.as_ptr(), first, "the same allocation, from its start");
        assert!(again.is_empty() && again.capacity() >= BODY_SIZE);

        let before = kept_bodies();
        give_body(&mut BytesMut::with_capacity(4 * BODY_SIZE));
        assert_eq!(kept_bodies(), before, "a grown buffer is freed");
        let mut pending = again;
        pending.extend_from_slice(b"next request");
        give_body(&mut pending);
        assert_eq!(&pending[..], b"next request", "bytes still to read stay");
        assert_eq!(kept_bodies(), before);
    }

    #[test]
    fn small_copies_share_a_chunk_and_clone_without_allocating() {
        let a = shared_copy(b"/bench.Echo/Unary");
        let b = shared_copy(b"origin.test");
        assert_eq!(&a[..], b"/bench.Echo/Unary");
        assert_eq!(&b[..], b"origin.test");
        let gap = (b.as_ptr() as usize).wrapping_sub(a.as_ptr() as usize);
        assert_eq!(gap, a.len(), "cut one after the other from one chunk");
        // A clone of a shared copy points at the same bytes (a reference
        // count), where a vector's first clone would have moved nothing
        // but allocated its shared header.
        assert_eq!(a.clone().as_ptr(), a.as_ptr());

        let long = vec![b'x'; LARGEST_SHARED_COPY + 1];
        assert_eq!(
            &shared_copy(&long)[..],
            &long[..],
            "a long one is copied alone"
        );
        let many: Vec<Bytes> = (0..COPIES_CHUNK / 100 + 2)
            .map(|i| shared_copy(&[i as u8; 100]))
            .collect();
        for (i, copy) in many.iter().enumerate() {
            assert_eq!(
                &copy[..],
                &[i as u8; 100],
                "a full chunk gives way to a new one"
            );
        }
    }

    fn kept_shared() -> usize {
        SHARED.with(|shared| shared.borrow().len())
    }

    fn kept_maps() -> usize {
        MAPS.with(|maps| maps.borrow().len())
    }

    #[test]
    fn a_map_given_back_is_cleared_and_its_values_released() {
        let head = bytes::Bytes::from_static(b"x-one: 1");
        let mut used = map(8);
        let value = http::HeaderValue::from_maybe_shared(head.slice(7..)).unwrap();
        used.insert("x-one", value);
        let room = used.capacity();
        let before = kept_maps();
        give_map(used);
        assert_eq!(kept_maps(), before + 1);
        let again = map(4);
        assert!(again.is_empty(), "no field of the last head is left");
        assert_eq!(again.capacity(), room, "its room is kept");
        let more = map(100);
        assert!(more.capacity() >= 100, "room is made for a larger head");
        give_map(more);
        assert_eq!(kept_maps(), before, "a map grown past the limit is freed");
        give_map(HeaderMap::new());
        assert_eq!(kept_maps(), before, "a map with no room is not kept");
    }
}
