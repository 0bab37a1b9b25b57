//! Strict HTTP/1.1 message framing (RFC 9112 §6), shared by the backend
//! (reading what the gateway sent) and the client (reading what the gateway
//! answered). Strict on purpose: anything a lenient parser would guess at is
//! an error here, because a guess is where two parsers start to disagree.

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// The framing the headers declare: at most one `Content-Length` of digits
/// only, a `Transfer-Encoding` of exactly `chunked`, never both. `None` when
/// neither is there (the caller decides what that means).
pub fn declared(headers: &[httparse::Header<'_>]) -> Result<Option<Body>, String> {
    let mut length = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("more than one Content-Length".to_string());
            }
            length = Some(content_length(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(format!(
                    "Transfer-Encoding {:?}: only one, exactly `chunked`",
                    String::from_utf8_lossy(h.value)
                ));
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err("both Content-Length and Transfer-Encoding".to_string()),
        (Some(n), false) => Ok(Some(Body::Length(n))),
        (None, true) => Ok(Some(Body::Chunked)),
        (None, false) => Ok(None),
    }
}

fn content_length(value: &[u8]) -> Result<u64, String> {
    let bad = || format!("Content-Length {:?}", String::from_utf8_lossy(value));
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// The length of the chunked body at the start of `buf`, trailers and final
/// CRLF included: `Ok(None)` while incomplete.
pub fn chunked_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(line_end) = find_crlf(buf, pos)? else {
            return Ok(None);
        };
        let size = chunk_size(&buf[pos..line_end])?;
        pos = line_end + 2;
        if size == 0 {
            return trailers_len(buf, pos);
        }
        let data_end = pos
            .checked_add(size)
            .and_then(|e| e.checked_add(2))
            .ok_or("chunk size overflows")?;
        if buf.len() < data_end {
            return Ok(None);
        }
        if &buf[data_end - 2..data_end] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_string());
        }
        pos = data_end;
    }
}

/// `1*HEXDIG [ chunk-ext ]`; extensions are allowed (RFC 9112 §7.1.1) but
/// must be printable.
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let bad = || format!("chunk size line {:?}", String::from_utf8_lossy(line));
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(bad());
    }
    let ext = &line[digits..];
    if !ext.is_empty() && (ext[0] != b';' || ext.iter().any(|b| b.is_ascii_control())) {
        return Err(bad());
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| bad())?;
    usize::from_str_radix(hex, 16).map_err(|_| bad())
}

/// Trailer fields after the last chunk, then the empty line.
fn trailers_len(buf: &[u8], mut pos: usize) -> Result<Option<usize>, String> {
    loop {
        let Some(line_end) = find_crlf(buf, pos)? else {
            return Ok(None);
        };
        if line_end == pos {
            return Ok(Some(pos + 2));
        }
        let line = &buf[pos..line_end];
        let colon = line.iter().position(|&b| b == b':');
        let name_ok = colon.is_some_and(|c| c > 0 && line[..c].iter().all(|&b| is_tchar(b)));
        if !name_ok {
            return Err(format!("trailer line {:?}", String::from_utf8_lossy(line)));
        }
        pos = line_end + 2;
    }
}

/// The next CRLF at or after `from`; a bare CR or LF before it is an error.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, String> {
    for i in from..buf.len() {
        match buf[i] {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err("bare CR".to_string()),
                    None => Ok(None),
                };
            }
            b'\n' => return Err("bare LF".to_string()),
            _ => {}
        }
    }
    Ok(None)
}

/// A token character (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
