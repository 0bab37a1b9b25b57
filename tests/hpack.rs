//! Portico's HPACK codec (`portico_gateway::h2::hpack`) against another
//! implementation: Python's `hpack` (python-hyper's, which its h2 uses),
//! run as a process (tests/h2/hpack_peer.py) from the venv that
//! tests/grpc/install.sh fills (.ci/run calls it).
//!
//! Both directions, on one connection's worth of blocks each: request
//! blocks Python encodes (Huffman-coded, every field indexed, the table
//! resized twice on the way, so entries are evicted and referred to by
//! index) decoded by Portico, and response blocks Portico encodes decoded
//! by Python. Field values cover every octet a field value may hold.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use portico_gateway::h2::hpack::{Decoder, Encoder};
use portico_gateway::h2::table::Field;
use serde_json::{Value, json};

/// One field as the peer speaks it: name, value (code points 0-255 are the
/// octets), never indexed.
type Line = (String, String, bool);

fn text(octets: &[u8]) -> String {
    octets.iter().map(|&b| char::from(b)).collect()
}

/// A deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// A field value: visible ASCII, obs-text and inner spaces and tabs,
    /// never a space or tab at either end.
    fn value(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        let mut v: Vec<u8> = (0..len)
            .map(|_| match self.below(10) {
                0 => b' ',
                1 => b'\t',
                2 | 3 => 0x80 + self.below(128) as u8,
                _ => 0x21 + self.below(94) as u8,
            })
            .collect();
        for edge in [0, len.saturating_sub(1)] {
            if let Some(b) = v.get_mut(edge)
                && (*b == b' ' || *b == b'\t')
            {
                *b = b'x';
            }
        }
        v
    }
}

fn peer(request: &Value) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/grpc-venv/bin/python3");
    assert!(
        python.exists(),
        "target/grpc-venv is missing: run tests/grpc/install.sh (.ci/run does) to install the HPACK peer"
    );
    let mut child = Command::new(python)
        .arg(root.join("tests/h2/hpack_peer.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the HPACK peer");
    let input = serde_json::to_vec(request).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write");
    let out = child.wait_with_output().expect("the peer's output");
    assert!(
        out.status.success(),
        "the HPACK peer failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("the peer's JSON")
}

/// Request blocks as a browser might send them on one connection: the
/// same pseudo-headers and common fields again and again (indexed), new
/// values now and then, custom fields, a credential never indexed.
fn request_blocks(rng: &mut Rng, count: usize) -> Vec<Vec<Line>> {
    let pick = |rng: &mut Rng, options: &[&str]| options[rng.below(options.len())].to_owned();
    (0..count)
        .map(|n| {
            let mut block = vec![
                (":method".into(), pick(rng, &["GET", "POST", "PUT"]), false),
                (":scheme".into(), pick(rng, &["http", "https"]), false),
                (
                    ":authority".into(),
                    format!("host{}.example", rng.below(4)),
                    false,
                ),
                (
                    ":path".into(),
                    format!("/items/{}?q={}", n, rng.below(1000)),
                    false,
                ),
                ("user-agent".into(), "portico-test/1.0".into(), false),
                (
                    "accept".into(),
                    pick(rng, &["*/*", "text/html", "application/json"]),
                    false,
                ),
            ];
            for i in 0..rng.below(5) {
                let value = text(&rng.value(120));
                block.push((format!("x-custom-{}", (n + i) % 7), value, false));
            }
            if rng.below(3) == 0 {
                block.push(("authorization".into(), text(&rng.value(60)), true));
            }
            if rng.below(4) == 0 {
                block.push(("cookie".into(), text(&rng.value(300)), false));
            }
            block
        })
        .collect()
}

fn line(field: &Field, sensitive_of: impl Fn(&HeaderValue) -> bool) -> Line {
    let (name, value) = match field {
        Field::Pseudo(p, v) => {
            let name = p.as_str();
            (name.to_owned(), v)
        }
        Field::Header(n, v) => (n.as_str().to_owned(), v),
        Field::Malformed => panic!("a valid field decoded as malformed"),
    };
    (name, text(value.as_bytes()), sensitive_of(value))
}

#[test]
fn portico_decodes_what_python_hpack_encodes() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let blocks = request_blocks(&mut rng, 300);
    let sizes = json!({"100": 256, "200": 4096});
    let answer = peer(&json!({"encode": blocks, "table_sizes": sizes, "decode": []}));
    let encoded = answer["encoded"].as_array().expect("encoded blocks");
    assert_eq!(encoded.len(), blocks.len());
    let mut decoder = Decoder::new(4096);
    let mut max_seen = 0;
    for (n, (hex, expected)) in encoded.iter().zip(&blocks).enumerate() {
        let block = Bytes::from(unhex(hex.as_str().expect("hex")));
        let mut seen = Vec::new();
        decoder
            .decode(&block, |f, _| {
                seen.push(line(&f, HeaderValue::is_sensitive))
            })
            .unwrap_or_else(|e| panic!("block {n}: {e}"));
        assert_eq!(&seen, expected, "block {n}");
        max_seen = max_seen.max(decoder.table_size());
        let max = if (100..200).contains(&n) { 256 } else { 4096 };
        assert_eq!(
            decoder.table_max(),
            max,
            "block {n}: the size updates arrived"
        );
        assert!(decoder.table_size() <= max);
    }
    assert!(
        max_seen > 3000,
        "the table filled (and evicted): {max_seen}"
    );
}

#[test]
fn python_hpack_decodes_what_portico_encodes() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let statuses = [
        200, 204, 206, 304, 400, 404, 500, 101, 201, 302, 418, 503, 599,
    ];
    let names = [
        "content-type",
        "date",
        "server",
        "set-cookie",
        "x-request-id",
        "x-upstream",
        "etag",
    ];
    let mut encoder = Encoder::default();
    let mut blocks = Vec::new();
    let mut expected: Vec<Vec<Line>> = Vec::new();
    for n in 0..200 {
        let status = StatusCode::from_u16(statuses[n % statuses.len()]).expect("status");
        let mut headers = HeaderMap::new();
        for _ in 0..rng.below(8) {
            let name = HeaderName::from_static(names[rng.below(names.len())]);
            let mut value = HeaderValue::from_bytes(&rng.value(200)).expect("a valid value");
            value.set_sensitive(rng.below(4) == 0);
            headers.append(name, value);
        }
        if n == 100 {
            encoder.peer_table_size_changed();
        }
        let mut block = BytesMut::new();
        encoder.response(status, &headers, &mut block);
        blocks.push(block.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mut lines = vec![(":status".to_owned(), status.as_str().to_owned(), false)];
        lines.extend(
            headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), text(v.as_bytes()), v.is_sensitive())),
        );
        expected.push(lines);
    }
    let answer = peer(&json!({"encode": [], "decode": blocks}));
    let decoded: Vec<Vec<Line>> =
        serde_json::from_value(answer["decoded"].clone()).expect("decoded blocks");
    assert_eq!(decoded.len(), expected.len());
    for (n, (got, want)) in decoded.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "block {n}");
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
