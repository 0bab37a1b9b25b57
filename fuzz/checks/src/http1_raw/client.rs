//! The client side: sends the input over one TCP connection, reads every
//! byte the gateway answers until it closes, and reads that stream back as
//! HTTP/1.1 responses, strictly.
//!
//! The client never closes first: a half-close makes hyper drop the request
//! in flight (by design, to stop work for a client that left), and a
//! response lost that way would look like smuggling. The gateway closes by
//! itself soon enough: the fuzz gateway's header-read timeout ends an idle
//! keep-alive connection and its route timeout a request whose body never
//! comes.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use super::backend::SEQ_HEADER;
use super::framing::{self, Body};

/// How long an HTTP/2 exchange is watched. An HTTP/2 connection closes
/// gracefully only once the peer acknowledges a PING, which this client
/// never does, so it would stay open until hyper's keep-alive gives up (tens
/// of seconds); and its answer is not read anyway (see [`H2_PREFACE`]).
const H2_WINDOW: Duration = Duration::from_millis(300);

/// Sends `data`, returns everything read until the gateway closed the
/// connection; `Err` when it did not within `deadline`.
///
/// The connection is opened and as much of the input as the socket takes is
/// written before `rt` runs again: the gateway, frozen meanwhile, finds the
/// bytes there on its first read, so its short header-read timeout can never
/// fire between the connect and the write, however loaded the machine.
pub fn exchange(
    rt: &Runtime,
    gateway: SocketAddr,
    data: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>, ()> {
    let Ok(stream) = std::net::TcpStream::connect(gateway) else {
        return Ok(Vec::new());
    };
    let sent = write_now(&stream, data);
    rt.block_on(async {
        let Ok(mut stream) = TcpStream::from_std(stream) else {
            return Ok(Vec::new());
        };
        finish(
            &mut stream,
            &data[sent..],
            data.starts_with(H2_PREFACE),
            deadline,
        )
        .await
    })
}

/// Writes what fits without blocking (the gateway is not reading yet);
/// returns how much.
fn write_now(stream: &std::net::TcpStream, data: &[u8]) -> usize {
    let _ = stream.set_nodelay(true);
    if stream.set_nonblocking(true).is_err() {
        return 0;
    }
    let mut sent = 0;
    while sent < data.len() {
        match (&*stream).write(&data[sent..]) {
            Ok(n) if n > 0 => sent += n,
            // Full (WouldBlock), closed or failed: the async half goes on.
            _ => break,
        }
    }
    sent
}

/// Writes the rest and reads until the gateway closes.
async fn finish(
    stream: &mut TcpStream,
    rest: &[u8],
    h2: bool,
    deadline: Duration,
) -> Result<Vec<u8>, ()> {
    // Borrowed halves: dropping the write half must not half-close.
    let (mut reader, mut writer) = stream.split();
    let write = async {
        // The gateway may answer and close before reading it all: fine.
        let _ = writer.write_all(rest).await;
    };
    let read = async {
        let mut out = Vec::new();
        // A reset after the last response is an ending like any other.
        while let Ok(n) = reader.read_buf(&mut out).await {
            if n == 0 {
                break;
            }
        }
        out
    };
    let both = async { tokio::join!(write, read).1 };
    if h2 {
        // The client closing after the window ends it; the answer is not read.
        let _ = tokio::time::timeout(H2_WINDOW, both).await;
        return Ok(Vec::new());
    }
    tokio::time::timeout(deadline, both).await.map_err(|_| ())
}

/// The start of an HTTP/2 connection preface: such inputs are answered in
/// HTTP/2 frames, which this reader does not decode.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client read, response by response.
#[derive(Debug, Default)]
pub struct Answer {
    /// Backend sequence numbers, in order.
    pub seqs: Vec<u64>,
    /// 502, 503 and 504 answers the gateway made itself: each may stand
    /// for a backend exchange it gave up on (a route timeout that fired as
    /// the backend answered, on a stalled machine).
    pub gateway_errors: usize,
}

/// Reads `bytes` as consecutive responses. `methods` gives the method of
/// each backend request by sequence number (a `HEAD` response has no body).
pub fn responses(
    bytes: &[u8],
    token: &str,
    methods: &HashMap<u64, String>,
) -> Result<Answer, String> {
    let mut answer = Answer::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err(format!("truncated head: {}", show(rest))),
            Err(e) => return Err(format!("head does not parse ({e}): {}", show(rest))),
        };
        let status = resp.code.unwrap_or_default();
        let seq = backend_seq(resp.headers, token)?;
        match seq {
            Some(seq) => answer.seqs.push(seq),
            None if (502..=504).contains(&status) => answer.gateway_errors += 1,
            None => {}
        }
        let declared =
            framing::declared(resp.headers).map_err(|why| format!("{why}: {}", show(rest)))?;
        let after = &rest[head_len..];
        let head_request = seq
            .and_then(|s| methods.get(&s))
            .is_some_and(|m| m == "HEAD");
        let body = body_of(status, declared, head_request, after);
        let body_len = match body {
            Body::Empty => 0,
            Body::UntilClose => after.len(),
            Body::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= after.len() => n,
                _ => {
                    return Err(format!(
                        "body shorter than its Content-Length: {}",
                        show(rest)
                    ));
                }
            },
            Body::Chunked => framing::chunked_len(after)
                .map_err(|why| format!("chunked body: {why}: {}", show(rest)))?
                .ok_or_else(|| format!("truncated chunked body: {}", show(rest)))?,
        };
        pos += head_len + body_len;
    }
    Ok(answer)
}

/// How long a response body is (RFC 9112 §6.3). The request method is only
/// known for backend responses; for the gateway's own, a `Content-Length`
/// followed at once by the next status line (or by the end) is a `HEAD`
/// answer: the gateway's own bodies are JSON, never a status line.
fn body_of(status: u16, declared: Option<Body>, head_request: bool, after: &[u8]) -> Body {
    if (100..200).contains(&status) || status == 204 || status == 304 || head_request {
        return Body::Empty;
    }
    match declared {
        Some(Body::Length(n)) if n > 0 && (after.is_empty() || after.starts_with(b"HTTP/1.")) => {
            Body::Empty
        }
        Some(body) => body,
        None => Body::UntilClose,
    }
}

/// The sequence number in a response the backend sent, if it is one.
fn backend_seq(headers: &[httparse::Header<'_>], token: &str) -> Result<Option<u64>, String> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(SEQ_HEADER))
    {
        let value = std::str::from_utf8(h.value).unwrap_or_default();
        let Some(seq) = value
            .strip_prefix(token)
            .and_then(|v| v.strip_prefix('-'))
            .and_then(|v| v.parse().ok())
        else {
            continue;
        };
        if found.replace(seq).is_some() {
            return Err("a response with two backend sequence numbers".to_string());
        }
    }
    Ok(found)
}

fn show(bytes: &[u8]) -> String {
    format!(
        "{:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    )
}
