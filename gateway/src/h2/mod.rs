//! The pieces of a proxy-native HTTP/2 server (issue 15), built as the
//! HTTP/1.1 codec was ([`crate::h1`]): codecs with no I/O in them, unit
//! tested and fuzzed alone (`fuzz/fuzz_targets/hpack.rs`).
//!
//! hyper's HTTP/2 server (the h2 crate) serves the gateway's HTTP/2 today.
//! In the h2c profile (bench/RESULTS.md) the h2 crate's connection
//! machinery (frames moved between queues, a stream store behind a lock,
//! HPACK with a dynamic table and Huffman coding on both sides) is about
//! 19,000 of the 41,000 instructions a proxied request takes, more than
//! HAProxy's whole gap. This module is where its replacement is being
//! built, one tested piece at a time; nothing serves traffic through it yet.
//!
//! # Module map
//!
//! - [`hpack`]: header blocks decoded (the whole of RFC 7541) into checked
//!   fields, and response heads encoded without a dynamic table.
//! - [`table`]: HPACK's static table and a decoder's dynamic table.
//! - [`huffman`]: HPACK's Huffman code, decoding only.

pub mod hpack;
pub mod huffman;
pub mod table;
