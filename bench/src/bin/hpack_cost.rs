//! The HPACK work of one proxied h2c request, N times over, for callgrind:
//! Portico's decoder on the request block h2load sends once its fields are
//! in the dynamic table (five indexed fields), the fields collected as the
//! h2 crate collects them (a header map, the pseudo-headers aside), and
//! Portico's encoder on the response head the h2c benchmark's origin gives
//! (`server`, `date`, `content-length`, and the gateway's sensitive
//! `x-request-id`).
//!
//! ```text
//! cargo build --release -p portico-bench --bin hpack_cost
//! for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/hp.$n target/release/hpack_cost $n
//! done
//! # (instructions at 11000 - at 1000) / 10000 = instructions per request
//! ```

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use portico_gateway::h2::hpack::{Decoder, Encoder};
use portico_gateway::h2::table::Field;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("usage: hpack_cost ROUNDS");
    let mut decoder = Decoder::new(4096);
    // h2load's first request: :authority, :path and user-agent added to the
    // table (literals with incremental indexing, name by static index).
    let mut first = vec![0x82, 0x86];
    for (index, value) in [
        (1, "127.0.0.1:18080"),
        (4, "/small"),
        (58, "h2load nghttp2/1.52.0"),
    ] {
        first.push(0x40 | index);
        first.push(value.len() as u8);
        first.extend_from_slice(value.as_bytes());
    }
    decode(&mut decoder, &Bytes::from(first));
    // Every later request: all five fields by index.
    let steady = Bytes::from_static(&[0x82, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62]);
    let mut encoder = Encoder::default();
    let headers = response_headers();
    let mut out = BytesMut::with_capacity(256);
    for _ in 0..rounds {
        black_box(decode(&mut decoder, black_box(&steady)));
        out.clear();
        encoder.response(StatusCode::OK, black_box(&headers), &mut out);
        black_box(&out);
    }
}

/// The request's fields: pseudo-headers counted aside, the rest in a map.
fn decode(decoder: &mut Decoder, block: &Bytes) -> (usize, HeaderMap) {
    let mut map = HeaderMap::new();
    let mut pseudo = 0;
    decoder
        .decode(block, |field, _| match field {
            Field::Header(name, value) => {
                map.append(name, value);
            }
            Field::Pseudo(_, value) => pseudo += value.len(),
            Field::Malformed => panic!("malformed"),
        })
        .expect("a valid block");
    (pseudo, map)
}

fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "server",
        HeaderValue::from_static("BaseHTTP/0.6 Python/3.11.7"),
    );
    headers.insert(
        "date",
        HeaderValue::from_static("Fri, 04 Dec 2026 23:59:59 GMT"),
    );
    headers.insert("content-length", HeaderValue::from_static("2"));
    let mut id = HeaderValue::from_static("3fed84f607067c85bff4b1f5849f0faf");
    id.set_sensitive(true);
    headers.insert("x-request-id", id);
    headers
}
