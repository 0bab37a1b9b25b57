//! gRPC health checks (`grpc.health.v1.Health/Check`), shared by the
//! gateway's active checks and the registry's own.
//!
//! The two messages of the protocol are tiny: a request with one string
//! (`service = 1`) and a response with one enum (`status = 1`). They are
//! encoded here by hand, a dozen lines of protobuf wire format, rather than
//! generated: code generation would put `protoc` (or a build script and a
//! protobuf runtime) in every build of both crates for two fields. The
//! encoding is tested against a real gRPC health server (Python's
//! `grpcio-health-checking`) in `tests/grpc.rs`.
//!
//! A check is healthy when the call ends with `grpc-status` 0 and the
//! response says `SERVING`; anything else (another status, `NOT_SERVING`,
//! `SERVICE_UNKNOWN`, UNIMPLEMENTED because the server has no health
//! service, a broken connection) is a failure.

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioExecutor;

use crate::route::GRPC_HEALTH_PATH;

/// Largest health-check response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    /// `UNKNOWN` (0).
    Unknown,
    /// `SERVING` (1): healthy.
    Serving,
    /// `NOT_SERVING` (2).
    NotServing,
    /// `SERVICE_UNKNOWN` (3): the server does not know the service asked about.
    ServiceUnknown,
    /// A value this code does not know.
    Other(u64),
}

impl ServingStatus {
    fn from_wire(n: u64) -> ServingStatus {
        match n {
            0 => ServingStatus::Unknown,
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            3 => ServingStatus::ServiceUnknown,
            n => ServingStatus::Other(n),
        }
    }
}

/// The framed request message: gRPC's 5-byte prefix (not compressed,
/// length), then `HealthCheckRequest { service }`.
pub fn request_message(service: &str) -> Bytes {
    let mut msg = BytesMut::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Reads the status from a framed `HealthCheckResponse` (unknown fields
/// skipped; a missing status is `UNKNOWN`, protobuf's default).
pub fn parse_response(body: &[u8]) -> Result<ServingStatus, String> {
    let (prefix, rest) = body
        .split_at_checked(5)
        .ok_or("response shorter than a gRPC message prefix")?;
    if prefix[0] != 0 {
        return Err("compressed health response (none was offered)".into());
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let mut msg = rest.get(..len).ok_or("response message truncated")?;
    let mut status = ServingStatus::Unknown;
    while !msg.is_empty() {
        let tag = varint(&mut msg)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = ServingStatus::from_wire(varint(&mut msg)?),
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..).ok_or("truncated fixed64")?,
            (_, 2) => {
                let n = varint(&mut msg)? as usize;
                msg = msg.get(n..).ok_or("truncated field")?;
            }
            (_, 5) => msg = msg.get(4..).ok_or("truncated fixed32")?,
            (_, w) => return Err(format!("unsupported wire type {w}")),
        }
    }
    Ok(status)
}

/// One gRPC health check about `service` over a connection the caller
/// opened: `io` is a TLS stream that negotiated `h2` (then `scheme` is
/// `https`) or a cleartext one (`http`, h2c). `Ok(())` when it answers
/// SERVING, the reason otherwise. The caller bounds it with its timeout.
pub async fn probe_on<T>(
    io: T,
    scheme: &str,
    authority: &str,
    service: &str,
    user_agent: &str,
) -> Result<(), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let uri = format!("{scheme}://{authority}{GRPC_HEALTH_PATH}");
    let result = call(&mut sender, &uri, service, user_agent).await;
    drop(sender);
    conn.abort();
    result
}

async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    uri: &str,
    service: &str,
    user_agent: &str,
) -> Result<(), String> {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, user_agent)
        .body(Full::new(request_message(service)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    match status.as_ref().map(|v| v.as_bytes()) {
        Some(b"0") => {}
        Some(code) => {
            return Err(format!("grpc-status {}", String::from_utf8_lossy(code)));
        }
        None => return Err("no grpc-status".into()),
    }
    match parse_response(&body.to_bytes())? {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_protobuf() {
        assert_eq!(&request_message("")[..], b"\0\0\0\0\0");
        assert_eq!(&request_message("a.B")[..], b"\0\0\0\0\x05\x0a\x03a.B");
        let long = "x".repeat(200);
        let m = request_message(&long);
        assert_eq!(&m[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(m.len(), 5 + 3 + 200);
    }

    #[test]
    fn responses_give_their_status() {
        assert_eq!(
            parse_response(b"\0\0\0\0\x02\x08\x01"),
            Ok(ServingStatus::Serving)
        );
        assert_eq!(
            parse_response(b"\0\0\0\0\x02\x08\x02"),
            Ok(ServingStatus::NotServing)
        );
        // Empty message: the default, UNKNOWN. Unknown fields are skipped.
        assert_eq!(parse_response(b"\0\0\0\0\0"), Ok(ServingStatus::Unknown));
        assert_eq!(
            parse_response(b"\0\0\0\0\x08\x12\x02hi\x08\x03\x18\x05"),
            Ok(ServingStatus::ServiceUnknown)
        );
        assert!(parse_response(b"\0\0\0").is_err());
        assert!(parse_response(b"\0\0\0\0\x02\x08").is_err());
    }
}
