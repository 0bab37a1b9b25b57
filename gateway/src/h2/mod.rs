//! A proxy-native HTTP/2 server (issue 15), built as the HTTP/1.1 one was
//! (the `h1` module): codecs and the protocol state with no I/O in them,
//! unit tested and fuzzed alone (`fuzz/` targets `hpack`, `h2_frame`,
//! `h2_conn`), and a connection loop around them.
//!
//! It replaced hyper's HTTP/2 server (the h2 crate) as the default in the
//! twenty-ninth pass. In the h2c profile (bench/RESULTS.md) the h2 crate's
//! connection machinery (frames moved between queues, a stream store
//! behind a lock, HPACK with a dynamic table and Huffman coding on both
//! sides) was about 19,000 of the 41,000 instructions a proxied request
//! took, more than HAProxy's whole gap. hyper's server stays a choice
//! (`--http2-server hyper`, `ServerSettings::http2`), to compare and to
//! fall back on. Both are held to an RFC 9113 catalogue
//! (`tests/h2_conformance.rs`).
//!
//! # Module map
//!
//! - [`server`]: the connection loop: the socket, the protocol state and
//!   the connection's streams in one task, responses within the client's
//!   windows, a client's reset dropping its request's work.
//! - [`client`]: the client side's connection loop, for upstreams: a
//!   handle requests go through, the connection's task with its streams'
//!   request bodies, a response no longer awaited reset.
//! - [`client_conn`]: the client side's protocol state with no I/O:
//!   streams opened within the upstream's limit, responses and trailers
//!   checked, both windows, the upstream's GOAWAY.
//! - [`tasks`]: the streams' work of a connection (the server's answers
//!   and response bodies, the client's request bodies): each piece polled
//!   when its own waker fires, dropped at once when its stream ends, in
//!   slots kept for the next streams (no allocation per piece of work).
//! - [`body`]: a body the connection receives (a request body on the
//!   server, a response body on the client), fed by the connection; what
//!   it hands on opens the peer's windows again.
//! - [`conn`]: one connection's protocol state with no I/O: the preface
//!   and settings, stream states, field blocks into requests, both
//!   directions' flow control, GOAWAY, and limits against floods; bytes in,
//!   events and frames to write out.
//! - [`frame`]: frames parsed off a read buffer and checked on their own
//!   (sizes, streams, padding, settings' values), and written.
//! - [`hpack`]: header blocks decoded (the whole of RFC 7541) into checked
//!   fields, and response heads encoded without a dynamic table.
//! - [`request`]: a request's head from its decoded fields, checked as
//!   RFC 9113 section 8 asks (pseudo-headers, connection-specific fields,
//!   `te`, `content-length`), made as hyper's server made it.
//! - [`response`]: a response's head (or trailers) from its decoded
//!   fields, checked as section 8 asks of a client.
//! - [`io`]: the socket side both connection loops share: reads, writes,
//!   and how much may wait unwritten before reading pauses.
//! - [`table`]: HPACK's static table and a decoder's dynamic table.
//! - [`huffman`]: HPACK's Huffman code, decoding only.

/// Maps keyed by stream: foldhash, not SipHash (hashing a stream id was
/// about 1,200 instructions a request in the h2c profile); a stream map
/// holds at most the concurrent stream limit.
type StreamMap<V> = std::collections::HashMap<u32, V, foldhash::fast::RandomState>;

pub mod body;
pub mod client;
pub mod client_conn;
pub mod conn;
pub mod frame;
pub mod hpack;
pub mod huffman;
pub mod io;
pub mod request;
pub mod response;
pub mod server;
pub mod table;
mod tasks;
