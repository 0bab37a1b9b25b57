//! The checks behind Portico's fuzz targets.
//!
//! Each target is a module with `check(data: &[u8])`, which panics when an
//! oracle does not hold. Two callers share it:
//!
//! - the cargo-fuzz crate around this one (`fuzz/fuzz_targets/*.rs`, nightly
//!   only), one line per target;
//! - `tests/replay.rs` (stable, part of `cargo test --workspace`), which runs
//!   every file under `fuzz/regressions/<target>/` and `fuzz/corpus/<target>/`.
//!
//! # Module map
//!
//! - [`http1_raw`]: raw HTTP/1.1 bytes into a real gateway over TCP, with a
//!   strict backend behind it (smuggling, Host, framing, lost responses).
//! - [`h1_codec`]: bytes into the downstream HTTP/1.1 codec (request head
//!   parser, chunked decoder and encoder), no sockets: framing never two
//!   ways, the same result however the bytes are split, round trips.
//! - [`h2_conn`]: bytes into an HTTP/2 connection's protocol state: what
//!   it writes parses, errors are final, stream limits and event order hold.
//! - [`h2_client`]: an upstream's bytes into the client side's HTTP/2
//!   protocol state: what it writes parses, errors are final, events only
//!   for streams it opened, in order.
//! - [`h2_frame`]: bytes into the HTTP/2 frame parser: frames taken off
//!   whole, the same in pieces, this side's writers parse back.
//! - [`hpack`]: bytes into the HPACK decoder (and Huffman strings against
//!   a bit-by-bit reference): tables within their limits, field sizes,
//!   decoded fields through the encoder and back unchanged.
//! - [`route_match`]: generated route sets and requests into the router,
//!   against a brute-force reading of the documented precedence.
//! - [`path_normalize`]: paths into the gateway's normaliser: idempotent,
//!   and nothing a lenient backend would resolve as a dot segment survives.
//! - [`registry_json`]: bytes into the registry's JSON decoders; accepted
//!   bodies must survive a round trip.
//! - `panics`: counts panics in every thread, so a panic that a tokio task
//!   swallowed still fails a check under `cargo test`.

// The workspace denies `unsafe`; only the gateway allows it, in one
// function (gateway/src/sockopt.rs).
#![forbid(unsafe_code)]

pub mod h1_codec;
pub mod h2_client;
pub mod h2_conn;
pub mod h2_frame;
pub mod hpack;
pub mod http1_raw;
mod panics;
pub mod path_normalize;
pub mod registry_json;
pub mod route_match;

/// A fuzz target: its name (the folder under `fuzz/corpus/` and
/// `fuzz/regressions/`, and the cargo-fuzz binary) and its check.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name, as in `cargo fuzz run NAME`.
    pub name: &'static str,
    /// Panics when an oracle does not hold.
    pub check: fn(&[u8]),
}

/// Every target; a new one is one line here (plus its file in
/// `fuzz/fuzz_targets/` and its `[[bin]]` in `fuzz/Cargo.toml`).
pub const TARGETS: &[Target] = &[
    Target {
        name: "http1_raw",
        check: http1_raw::check,
    },
    Target {
        name: "h1_codec",
        check: h1_codec::check,
    },
    Target {
        name: "h2_conn",
        check: h2_conn::check,
    },
    Target {
        name: "h2_client",
        check: h2_client::check,
    },
    Target {
        name: "h2_frame",
        check: h2_frame::check,
    },
    Target {
        name: "hpack",
        check: hpack::check,
    },
    Target {
        name: "route_match",
        check: route_match::check,
    },
    Target {
        name: "path_normalize",
        check: path_normalize::check,
    },
    Target {
        name: "registry_json",
        check: registry_json::check,
    },
];
