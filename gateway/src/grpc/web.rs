//! gRPC-Web, translated at the gateway for routes with `grpc_web = true`:
//! a browser cannot read HTTP trailers, so gRPC-Web carries them as a last
//! frame of the response body, and `grpc-web-text` base64-encodes the whole
//! body for clients that can only read text. The upstream speaks plain gRPC
//! and never knows (what Envoy's `grpc_web` filter and Traefik's middleware
//! do).
//!
//! Request: `content-type` becomes `application/grpc` (its `+proto` suffix
//! kept), `te: trailers` is added, a text body is decoded as it streams.
//! Response: `content-type` becomes the client's form again, the trailers
//! become a frame flagged `0x80` holding `name: value\r\n` lines, and for
//! text the body is encoded as it streams.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderValue};

use super::GrpcKind;

/// Rewrites a gRPC-Web request's headers for a gRPC upstream.
pub fn request_headers(headers: &mut HeaderMap, kind: GrpcKind) {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let native = rename(ct.as_bytes(), kind, GrpcKind::Native);
        headers.insert(header::CONTENT_TYPE, native);
    }
    if kind == GrpcKind::WebText {
        // The decoded body is shorter than the text the client sent.
        headers.remove(header::CONTENT_LENGTH);
    }
    // gRPC-Web clients use HTTP/1.1 framing; their `accept` says what they
    // read, not what a gRPC server must see.
    headers.remove(header::ACCEPT);
}

/// Rewrites a gRPC upstream's response headers for a gRPC-Web client.
pub fn response_headers(headers: &mut HeaderMap, kind: GrpcKind) {
    match headers.get(header::CONTENT_TYPE) {
        Some(ct) if GrpcKind::of_content_type(ct.as_bytes()) == Some(GrpcKind::Native) => {
            let web = rename(ct.as_bytes(), GrpcKind::Native, kind);
            headers.insert(header::CONTENT_TYPE, web);
        }
        Some(_) => {}
        None => {
            let web = rename(b"application/grpc", GrpcKind::Native, kind);
            headers.insert(header::CONTENT_TYPE, web);
        }
    }
    // The body the client gets is not the one the upstream measured.
    headers.remove(header::CONTENT_LENGTH);
}

/// `content-type` `ct` of kind `from` as kind `to`, its suffix kept.
fn rename(ct: &[u8], from: GrpcKind, to: GrpcKind) -> HeaderValue {
    let base = |k: GrpcKind| match k {
        GrpcKind::Native => "application/grpc",
        GrpcKind::Web => "application/grpc-web",
        GrpcKind::WebText => "application/grpc-web-text",
    };
    let suffix = ct.get(base(from).len()..).unwrap_or_default();
    let mut out = Vec::with_capacity(base(to).len() + suffix.len());
    out.extend_from_slice(base(to).as_bytes());
    out.extend_from_slice(suffix);
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("application/grpc"))
}

/// The trailers as gRPC-Web's last body frame: flag `0x80`, a 4-byte
/// big-endian length, then `name: value\r\n` per field (names lowercase,
/// as HTTP/2 already has them).
pub fn trailers_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in trailers {
        block.put_slice(name.as_str().as_bytes());
        block.put_slice(b": ");
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.put_slice(&block);
    frame.freeze()
}

/// Why a `grpc-web-text` body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("the grpc-web-text body is not valid base64")]
pub struct BadBase64;

/// Decodes a `grpc-web-text` body as it streams. Chunks may split a base64
/// quantum anywhere, and a client may send several padded segments one
/// after the other (one per message), so quanta are decoded as they
/// complete, each padded run on its own.
#[derive(Debug, Default)]
pub struct TextDecoder {
    carry: Vec<u8>,
}

impl TextDecoder {
    /// Decodes what `chunk` completes; keeps a partial quantum for later.
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Bytes, BadBase64> {
        let mut input = std::mem::take(&mut self.carry);
        input.extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
        let whole = input.len() - input.len() % 4;
        self.carry = input[whole..].to_vec();
        let mut out = Vec::with_capacity(whole / 4 * 3);
        let mut start = 0;
        for (i, quantum) in input[..whole].chunks_exact(4).enumerate() {
            let end = (i + 1) * 4;
            if quantum.contains(&b'=') || end == whole {
                STANDARD
                    .decode_vec(&input[start..end], &mut out)
                    .map_err(|_| BadBase64)?;
                start = end;
            }
        }
        Ok(Bytes::from(out))
    }

    /// The body ended: a partial quantum left over is an error.
    pub fn finish(&self) -> Result<(), BadBase64> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(BadBase64)
        }
    }
}

/// Encodes a response body as `grpc-web-text` as it streams: whole 3-byte
/// groups as they come, the rest (padded) at the end, so the client sees
/// one unbroken base64 text.
#[derive(Debug, Default)]
pub struct TextEncoder {
    carry: Vec<u8>,
}

impl TextEncoder {
    /// Encodes what `chunk` completes; keeps up to 2 bytes for later.
    pub fn encode(&mut self, chunk: &[u8]) -> Bytes {
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(chunk);
        let whole = input.len() - input.len() % 3;
        self.carry = input[whole..].to_vec();
        Bytes::from(STANDARD.encode(&input[..whole]))
    }

    /// The bytes held back, padded.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.carry);
        Bytes::from(STANDARD.encode(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_whatever_the_chunking() {
        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for split in [1, 2, 3, 4, 5, 7, 64, 1000] {
            let mut enc = TextEncoder::default();
            let mut text = Vec::new();
            for c in body.chunks(split) {
                text.extend_from_slice(&enc.encode(c));
            }
            text.extend_from_slice(&enc.finish());
            assert_eq!(text, STANDARD.encode(&body).into_bytes());
            let mut dec = TextDecoder::default();
            let mut back = Vec::new();
            for c in text.chunks(split) {
                back.extend_from_slice(&dec.decode(c).unwrap());
            }
            dec.finish().unwrap();
            assert_eq!(back, body, "split {split}");
        }
    }

    #[test]
    fn padded_segments_one_after_another_decode() {
        let text = format!("{}{}", STANDARD.encode(b"ab"), STANDARD.encode(b"cde"));
        let mut dec = TextDecoder::default();
        let mut out = dec.decode(&text.as_bytes()[..3]).unwrap().to_vec();
        out.extend_from_slice(&dec.decode(&text.as_bytes()[3..]).unwrap());
        assert_eq!(out, b"abcde");
        assert!(dec.decode(b"@@@@").is_err());
        let mut partial = TextDecoder::default();
        partial.decode(b"YW").unwrap();
        assert!(partial.finish().is_err());
    }

    #[test]
    fn trailers_become_a_flagged_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let f = trailers_frame(&t);
        assert_eq!(f[0], 0x80);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(&f[5..], b"grpc-status: 0\r\ngrpc-message: ok\r\n");
        assert_eq!(len, f.len() - 5);
    }

    #[test]
    fn content_types_are_renamed_with_their_suffix() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web-text+proto"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("8"));
        request_headers(&mut h, GrpcKind::WebText);
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc+proto");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        response_headers(&mut h, GrpcKind::Web);
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc-web+proto");
    }
}
