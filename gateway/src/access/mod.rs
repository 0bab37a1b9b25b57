//! The access log: one line per request (target `portico::access`).
//!
//! Most requests are logged when their response head leaves, with the
//! request's latency to that head. A gRPC call's outcome is only known at
//! the end of its body (`grpc-status` in the trailers), so its line is kept
//! by the call's response body (the gRPC module's `GrpcBody`) and written
//! when the call ends, with the status it ended with.
//!
//! - [`format`]: the line as bytes, text or JSON, formatted on the request's
//!   thread into a reused per-thread buffer.
//! - [`writer`]: the queue those bytes go to and the thread that writes
//!   them in batches; lines are dropped and counted rather than making a
//!   request wait.
//!
//! The `portico` binary installs the writer ([`writer::install`]). Without
//! one (a library user, an in-process test) lines go to `tracing` as
//! events, formatted by whatever subscriber is installed.

pub mod format;
pub mod writer;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};

/// What one access-log line says.
#[derive(Debug)]
pub struct AccessLine {
    /// Method as received.
    pub method: Method,
    /// URI as received (only its path is logged).
    pub uri: Uri,
    /// HTTP status sent.
    pub status: u16,
    /// The route's name, if one matched.
    pub route: Option<Arc<str>>,
    /// The endpoint of the last try, if one was tried.
    pub upstream: Option<Arc<str>>,
    /// Arrival to response head.
    pub duration: Duration,
    /// The request id sent upstream and back.
    pub request_id: HeaderValue,
    /// The W3C trace id, when known.
    pub trace_id: Option<[u8; 32]>,
}

impl AccessLine {
    /// Writes the line; `grpc` for gRPC calls (`Some(None)`: the call
    /// ended without a status, e.g. cut off).
    pub fn emit(&self, grpc: Option<Option<u8>>) {
        emit(
            &LineRef {
                method: &self.method,
                path: self.uri.path(),
                status: self.status,
                route: self.route.as_deref(),
                upstream: self.upstream.as_deref(),
                duration: self.duration,
                request_id: &self.request_id,
                trace_id: self.trace_id.as_ref(),
            },
            grpc,
        );
    }
}

/// An access-log line borrowed from the request that is ending: what most
/// requests log, with no copy made.
#[derive(Debug)]
pub struct LineRef<'a> {
    /// Method as received.
    pub method: &'a Method,
    /// Path as received.
    pub path: &'a str,
    /// HTTP status sent.
    pub status: u16,
    /// The route's name, if one matched.
    pub route: Option<&'a str>,
    /// The endpoint of the last try, if one was tried.
    pub upstream: Option<&'a str>,
    /// Arrival to response head.
    pub duration: Duration,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// The W3C trace id, when known.
    pub trace_id: Option<&'a [u8; 32]>,
}

thread_local! {
    /// Each thread's line buffer, reused: formatting allocates nothing once
    /// it has grown to the longest line.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes one line; `grpc` as for [`AccessLine::emit`].
pub fn emit(line: &LineRef<'_>, grpc: Option<Option<u8>>) {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    // Absent from the line for other requests; "-" for a call that ended
    // without a status.
    let grpc_status: Option<&str> = grpc.map(|c| {
        c.and_then(|c| CODES.get(usize::from(c)).copied())
            .unwrap_or("-")
    });
    let Some(sink) = writer::sink() else {
        return emit_event(line, grpc_status);
    };
    let fields = format::Fields {
        line,
        grpc_status,
        now: SystemTime::now(),
    };
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        format::write_line(buf, sink.format, &fields);
        sink.push(buf);
    });
}

/// The line as a `tracing` event, when no writer is installed.
fn emit_event(line: &LineRef<'_>, grpc_status: Option<&str>) {
    tracing::info!(
        target: "portico::access",
        method = %line.method,
        path = %line.path,
        status = line.status,
        grpc_status,
        route = line.route.unwrap_or("-"),
        upstream = line.upstream.unwrap_or("-"),
        duration_us = line.duration.as_micros() as u64,
        request_id = line.request_id.to_str().unwrap_or("-"),
        trace_id = line
            .trace_id
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("-"),
    );
}
