//! `hpack`: bytes into Portico's HPACK decoder (`portico_gateway::h2`), no
//! sockets.
//!
//! The first byte chooses: bit 0 set, the rest is one Huffman-coded
//! string; clear, bits 1-2 choose the table limit this side announced (4096,
//! 256, 0 or 65,536) and the rest is a connection's header blocks, each one
//! length octet and then that many octets.
//!
//! Oracles:
//! - nothing panics;
//! - the Huffman decoder agrees with a reference that walks the code bit by
//!   bit (built from the same code lengths, RFC 7541 Appendix B's): the
//!   same octets, or both refuse;
//! - after every block, decoded or refused, the dynamic table holds no more
//!   than its maximum, and that maximum no more than the announced limit;
//! - a block that fails ends the connection (nothing after it is decoded);
//! - each field comes with its size as HPACK counts it (name and value
//!   octets plus 32);
//! - the regular fields of a decoded block, encoded by Portico's encoder
//!   and decoded by a fresh decoder, come back the same, in the same order,
//!   with the same values marked sensitive.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use portico_gateway::h2::hpack::{Decoder, Encoder};
use portico_gateway::h2::huffman;
use portico_gateway::h2::table::Field;

/// Runs one input; panics when an oracle does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        check_huffman(rest);
        return;
    }
    let limit = [4096, 256, 0, 65_536][usize::from(mode >> 1 & 3)];
    let mut decoder = Decoder::new(limit);
    let mut rest = rest;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (block, tail) = tail.split_at(len);
        rest = tail;
        let outcome = check_block(&mut decoder, &Bytes::copy_from_slice(block));
        assert!(decoder.table_size() <= decoder.table_max());
        assert!(decoder.table_max() <= limit);
        if outcome.is_err() {
            return;
        }
    }
}

/// Decodes one block and checks what it gave.
fn check_block(decoder: &mut Decoder, block: &Bytes) -> Result<(), ()> {
    let mut headers = HeaderMap::new();
    let outcome = decoder.decode(block, |field, size| match field {
        Field::Header(name, value) => {
            assert_eq!(size, name.as_str().len() + value.len() + 32);
            headers.append(name, value);
        }
        Field::Pseudo(_, value) => assert!(size > value.len() + 32),
        Field::Malformed => assert!(size >= 32),
    });
    if outcome.is_ok() {
        round_trip(&headers);
    }
    outcome.map_err(|_| ())
}

/// `headers` through Portico's encoder and a fresh decoder.
fn round_trip(headers: &HeaderMap) {
    let mut block = BytesMut::new();
    Encoder::default().response(StatusCode::OK, headers, &mut block);
    let mut again = HeaderMap::new();
    let mut status = None;
    Decoder::new(4096)
        .decode(&block.freeze(), |field, _| match field {
            Field::Header(name, value) => {
                again.append(name, value);
            }
            Field::Pseudo(_, value) => status = Some(value),
            Field::Malformed => panic!("the encoder wrote a malformed field"),
        })
        .expect("the encoder's block decodes");
    assert_eq!(status.as_ref().map(|v| v.as_bytes()), Some(&b"200"[..]));
    let flags = |map: &HeaderMap| -> Vec<(String, Vec<u8>, bool)> {
        map.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
            .collect()
    };
    assert_eq!(flags(headers), flags(&again));
}

fn check_huffman(src: &[u8]) {
    let mut fast = Vec::new();
    let fast = huffman::decode(src, &mut fast).map(|()| fast).ok();
    assert_eq!(fast, reference_huffman(src), "input {src:02x?}");
}

/// Decodes bit by bit against the canonical code built from the lengths.
fn reference_huffman(src: &[u8]) -> Option<Vec<u8>> {
    let codes = canonical_codes();
    let (mut out, mut code, mut len) = (Vec::new(), 0u32, 0u8);
    for byte in src {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            len += 1;
            if let Some(&symbol) = codes.get(&(len, code)) {
                if symbol == 256 {
                    return None;
                }
                out.push(symbol as u8);
                (code, len) = (0, 0);
            } else if len > 30 {
                return None;
            }
        }
    }
    // What is left must be padding: under 8 bits, all ones.
    (len < 8 && code == (1u32 << len) - 1).then_some(out)
}

/// (length, code) to symbol: each code the one before plus one, shifted
/// left as the length grows, in order of (length, symbol).
fn canonical_codes() -> HashMap<(u8, u32), u16> {
    let mut order: Vec<u16> = (0..257).collect();
    order.sort_by_key(|&s| (huffman::LENGTHS[usize::from(s)], s));
    let mut codes = HashMap::new();
    let (mut code, mut prev) = (0u32, huffman::LENGTHS[usize::from(order[0])]);
    for (i, &symbol) in order.iter().enumerate() {
        let len = huffman::LENGTHS[usize::from(symbol)];
        if i > 0 {
            code = (code + 1) << (len - prev);
        }
        prev = len;
        codes.insert((len, code), symbol);
    }
    codes
}
