//! A proxy-native HTTP/1.1 codec for the downstream side (issue 15).
//!
//! hyper's HTTP/1 server is general machinery: it keeps its read and write
//! buffers and its connection state for a connection's whole life (about
//! 26 kB per idle keep-alive connection) and runs a generic dispatcher per
//! request. A proxy needs less: parse a request head strictly, frame its
//! body, and stream bytes. This module is that codec, with no I/O in it,
//! so the parser and the framing (all but [`server`]) can be unit-tested and fuzzed alone
//! (`fuzz/fuzz_targets/h1_codec.rs`).
//!
//! # Module map
//!
//! - [`head`]: the request head, parsed with `httparse` (hyper's own
//!   parser) into an `http` request head, then checked strictly: framing
//!   (Content-Length and Transfer-Encoding), version, connection options.
//! - [`framing`]: body framing: a Content-Length body, strict chunked
//!   decoding with limits on size lines and trailers, and chunked encoding
//!   for responses of unknown length.
//! - [`response`]: the response head and its body framing.
//! - [`relay`]: an upstream response's field lines written downstream as
//!   they arrived, for a response nothing on the way reads.
//! - [`outbox`]: what a connection has to write, large body frames
//!   written from where they are (no copy).
//! - [`body`]: the request body the proxy reads, fed by the connection.
//! - Buffers and header maps come from [`crate::buffers`], the per-thread
//!   pool the HTTP/2 codec shares, while a connection has work.
//! - [`server`]: the connection loop: heads, bodies, responses, pipelined
//!   requests in order, upgrades handed to a tunnel, no buffer held idle.
//!
//! Bytes flow one way: a connection reads into a `BytesMut`;
//! [`head::parse`] takes the head off its front, and the
//! [`framing::BodyDecoder`] the head chose takes body frames off it, each
//! a slice of the same buffer (no copy).

pub mod body;
pub mod client;
pub mod framing;
pub mod head;
pub mod outbox;
pub mod relay;
pub mod response;
pub mod server;
