//! HPACK's Huffman code (RFC 7541, Appendix B): decoding only.
//!
//! The code is canonical: ordered by length, then by symbol, each code is
//! the one before plus one, shifted left when the length grows. So the
//! whole table follows from each symbol's code length ([`LENGTHS`]). A
//! code of up to 9 bits (every letter, digit and common punctuation mark)
//! is found in one look-up by the string's next 9 bits; a longer one by
//! finding the shortest length `n` whose first `n` bits fall below that
//! length's last code. No tree and no 4-bit state machine.
//!
//! Portico's encoder sends strings as they are (see [`super::hpack`]), so
//! there is no encoding half.

/// The code length of each symbol: bytes 0-255, then EOS (256). Public
/// for the fuzz check's reference decoder.
pub const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// The shortest and longest code.
const MIN_LEN: usize = 5;
const MAX_LEN: usize = 30;
/// Codes up to this long are decoded by one look-up ([`Canonical::fast`]).
/// Some clients send `:path` Huffman-coded and unindexed on every request
/// (nghttp2's h2load does): in the unary gRPC profile, decoding a call's
/// strings took 1,628 instructions searching by length for every symbol,
/// 1,131 with the look-up.
const FAST_BITS: usize = 9;
/// The end-of-string symbol: never valid inside a string.
const EOS: u16 = 256;

/// The canonical code, derived from [`LENGTHS`] at compile time.
struct Canonical {
    /// Per length: one past the last code of that length (the first code
    /// of that length is the previous length's limit, shifted left once).
    limit: [u32; MAX_LEN + 1],
    /// Per length: where that length's symbols start in `symbols`, less
    /// its first code (so `symbols[base + code]` is the symbol).
    base: [i64; MAX_LEN + 1],
    /// Symbols ordered by (length, symbol).
    symbols: [u16; 257],
    /// By the next [`FAST_BITS`] bits: the symbol a code of up to that
    /// length gives, and the length above it (`len << 8 | symbol`); 0 when
    /// the code is longer.
    fast: [u16; 1 << FAST_BITS],
}

const CANONICAL: Canonical = canonical();

const fn canonical() -> Canonical {
    let mut table = Canonical {
        limit: [0; MAX_LEN + 1],
        base: [0; MAX_LEN + 1],
        symbols: [0; 257],
        fast: [0; 1 << FAST_BITS],
    };
    let (mut code, mut placed, mut len) = (0u32, 0usize, MIN_LEN);
    while len <= MAX_LEN {
        table.base[len] = placed as i64 - code as i64;
        let mut symbol = 0;
        while symbol < LENGTHS.len() {
            if LENGTHS[symbol] as usize == len {
                table.symbols[placed] = symbol as u16;
                if len <= FAST_BITS {
                    // Every 9-bit window this code starts.
                    let spare = FAST_BITS - len;
                    let mut at = (code as usize) << spare;
                    while at < ((code as usize + 1) << spare) {
                        table.fast[at] = ((len as u16) << 8) | symbol as u16;
                        at += 1;
                    }
                }
                placed += 1;
                code += 1;
            }
            symbol += 1;
        }
        table.limit[len] = code;
        code <<= 1;
        len += 1;
    }
    table
}

/// A string that is not a valid Huffman encoding: it holds EOS, or ends in
/// padding longer than 7 bits or not made of the EOS code's leading ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHuffman;

/// Appends the decoding of `src` to `dst`.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), InvalidHuffman> {
    dst.reserve(src.len() * 8 / 5);
    // Bits not yet decoded, right-aligned in `acc`; `bits` of them.
    let (mut acc, mut bits, mut next) = (0u64, 0u32, 0usize);
    loop {
        while bits <= 56 && next < src.len() {
            acc = (acc << 8) | u64::from(src[next]);
            bits += 8;
            next += 1;
        }
        if bits == 0 || (bits < 8 && next == src.len() && ones(acc, bits)) {
            return Ok(());
        }
        let (symbol, len) = symbol(peek(acc, bits));
        if len > bits || symbol == EOS {
            return Err(InvalidHuffman);
        }
        dst.push(symbol as u8);
        bits -= len;
        acc &= (1u64 << bits) - 1;
    }
}

/// Whether the low `bits` bits of `acc` are all ones (valid padding).
fn ones(acc: u64, bits: u32) -> bool {
    let mask = (1u64 << bits) - 1;
    acc & mask == mask
}

/// The next 30 bits, padded with ones past the end (EOS's bits: a string
/// that ends there decodes to EOS or to a code longer than what is left,
/// both refused).
fn peek(acc: u64, bits: u32) -> u32 {
    let window = if bits >= MAX_LEN as u32 {
        acc >> (bits - MAX_LEN as u32)
    } else {
        let pad = MAX_LEN as u32 - bits;
        (acc << pad) | ((1u64 << pad) - 1)
    };
    (window & ((1u64 << MAX_LEN) - 1)) as u32
}

/// The symbol the 30-bit `window` starts with, and its code length.
fn symbol(window: u32) -> (u16, u32) {
    let table = &CANONICAL;
    let fast = table.fast[(window >> (MAX_LEN - FAST_BITS)) as usize];
    if fast != 0 {
        return (fast & 0xff, u32::from(fast >> 8));
    }
    for len in FAST_BITS + 1..=MAX_LEN {
        let code = window >> (MAX_LEN - len);
        if code < table.limit[len] {
            let at = (table.base[len] + i64::from(code)) as usize;
            return (table.symbols[at], len as u32);
        }
    }
    // Thirty ones is EOS's code, the last of length 30: always found above.
    unreachable!("every 30-bit window starts with a code")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(hex: &str) -> Result<Vec<u8>, InvalidHuffman> {
        let src: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut out = Vec::new();
        decode(&src, &mut out).map(|()| out)
    }

    /// The Huffman-coded strings of RFC 7541's examples (C.4 and C.6).
    #[test]
    fn decodes_the_rfc_examples() {
        let cases = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
            ("9bd9ab", "gzip"),
            (
                "94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ];
        for (hex, text) in cases {
            assert_eq!(decoded(hex).as_deref(), Ok(text.as_bytes()), "{hex}");
        }
        assert_eq!(decoded(""), Ok(Vec::new()));
    }

    /// Every byte value decodes, alone and after others (so each code's
    /// length and bits are right, not only the common ones').
    #[test]
    fn every_symbol_decodes_from_its_canonical_code() {
        let mut codes = [0u32; 257];
        let (mut code, mut prev) = (0u32, MIN_LEN);
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (LENGTHS[s], s));
        for (i, &s) in order.iter().enumerate() {
            let len = LENGTHS[s] as usize;
            if i > 0 {
                code = (code + 1) << (len - prev);
            }
            prev = len;
            codes[s] = code;
        }
        for byte in 0..=255u8 {
            let mut bits: Vec<bool> = Vec::new();
            for s in [b'a', byte, b'z'] {
                let len = LENGTHS[usize::from(s)];
                bits.extend((0..len).rev().map(|i| codes[usize::from(s)] >> i & 1 == 1));
            }
            while !bits.len().is_multiple_of(8) {
                bits.push(true);
            }
            let src: Vec<u8> = bits
                .chunks(8)
                .map(|c| c.iter().fold(0u8, |b, &bit| b << 1 | u8::from(bit)))
                .collect();
            let mut out = Vec::new();
            decode(&src, &mut out).unwrap_or_else(|_| panic!("byte {byte}"));
            assert_eq!(out, [b'a', byte, b'z']);
        }
        assert_eq!(codes[usize::from(EOS)], (1 << 30) - 1, "EOS is thirty ones");
    }

    #[test]
    fn refuses_bad_padding_and_eos() {
        // "0" is 00000: padded with zeros, not ones.
        assert_eq!(decoded("00"), Err(InvalidHuffman));
        // A whole byte of ones after a complete symbol: padding over 7 bits.
        assert_eq!(decoded("07ff"), Err(InvalidHuffman));
        // EOS itself (thirty ones, then two of padding).
        assert_eq!(decoded("ffffffff"), Err(InvalidHuffman));
        // A code cut short: the first 8 bits of a 13-bit code.
        assert_eq!(decoded("ff"), Err(InvalidHuffman));
        // "0" then three bits of ones: valid padding.
        assert_eq!(decoded("07"), Ok(b"0".to_vec()));
    }
}
