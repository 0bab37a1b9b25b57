use super::*;

fn hex(s: &str) -> Bytes {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>()
        .into()
}

/// Each field as `name: value` text, pseudo-headers with their colon.
fn text(field: &Field) -> String {
    match field {
        Field::Pseudo(p, v) => {
            let name = p.as_str();
            format!("{name}: {}", String::from_utf8_lossy(v.as_bytes()))
        }
        Field::Header(n, v) => format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())),
        Field::Malformed => "malformed".to_owned(),
    }
}

fn decode(decoder: &mut Decoder, block: &str) -> Result<Vec<String>, DecodeError> {
    let mut out = Vec::new();
    decoder.decode(&hex(block), |f, _| out.push(text(&f)))?;
    Ok(out)
}

/// RFC 7541, C.3 and C.4: three requests on one connection, without and
/// with Huffman coding; the same fields, and the same table sizes after
/// each.
#[test]
fn decodes_the_rfc_request_examples() {
    let plain = [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ];
    let huffman = [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ];
    let expected: [&[&str]; 3] = [
        &[
            ":method: GET",
            ":scheme: http",
            ":path: /",
            ":authority: www.example.com",
        ],
        &[
            ":method: GET",
            ":scheme: http",
            ":path: /",
            ":authority: www.example.com",
            "cache-control: no-cache",
        ],
        &[
            ":method: GET",
            ":scheme: https",
            ":path: /index.html",
            ":authority: www.example.com",
            "custom-key: custom-value",
        ],
    ];
    for blocks in [plain, huffman] {
        let mut decoder = Decoder::new(4096);
        for ((block, fields), size) in blocks.iter().zip(expected).zip([57, 110, 164]) {
            assert_eq!(decode(&mut decoder, block).unwrap(), fields);
            assert_eq!(decoder.table_size(), size);
        }
    }
}

/// RFC 7541, C.6: three responses with a 256-octet table (set here by a
/// size update in the first block), so entries are evicted; Huffman-coded.
#[test]
fn decodes_the_rfc_response_examples_with_eviction() {
    let date1 = "date: Mon, 21 Oct 2013 20:13:21 GMT";
    let location = "location: https://www.example.com";
    let blocks = [
        "3fe101 488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ];
    let expected: [&[&str]; 3] = [
        &[":status: 302", "cache-control: private", date1, location],
        &[":status: 307", "cache-control: private", date1, location],
        &[
            ":status: 200",
            "cache-control: private",
            "date: Mon, 21 Oct 2013 20:13:22 GMT",
            location,
            "content-encoding: gzip",
            "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ],
    ];
    let mut decoder = Decoder::new(4096);
    for ((block, fields), size) in blocks.iter().zip(expected).zip([222, 222, 215]) {
        assert_eq!(decode(&mut decoder, block).unwrap(), fields);
        assert_eq!((decoder.table_size(), decoder.table_max()), (size, 256));
    }
}

/// RFC 7541, C.1, and the limit.
#[test]
fn integers() {
    let read = |bytes: &[u8], prefix| integer(bytes, &mut 0, prefix);
    assert_eq!(read(&[0x0a], 5), Ok(10));
    assert_eq!(read(&[0x1f, 0x9a, 0x0a], 5), Ok(1337));
    assert_eq!(read(&[0x2a], 8), Ok(42));
    assert_eq!(read(&[0x1f, 0x9a], 5), Err(DecodeError::Truncated));
    assert_eq!(
        read(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], 5),
        Err(DecodeError::IntegerOverflow)
    );
    assert_eq!(
        read(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], 5),
        Err(DecodeError::IntegerOverflow)
    );
    for value in [0, 14, 15, 16, 127, 128, 1337, 65_535, 1 << 20] {
        let mut out = BytesMut::new();
        put_integer(value, 4, 0x10, &mut out);
        assert_eq!(out[0] & 0xf0, 0x10, "flags kept");
        let mut at = 0;
        assert_eq!(integer(&out, &mut at, 4), Ok(value));
        assert_eq!(at, out.len());
    }
}

#[test]
fn encoding_errors_end_the_connection() {
    let cases = [
        ("80", DecodeError::BadIndex(0)),
        ("be", DecodeError::BadIndex(62)),
        ("40", DecodeError::Truncated),
        ("4003616263", DecodeError::Truncated),
        ("0f", DecodeError::Truncated),
        ("4081ff0161", DecodeError::Huffman),
        // A size update after a field.
        ("82 20", DecodeError::SizeUpdate(0)),
        // A size update above the announced 4096.
        ("3fe21f", DecodeError::SizeUpdate(4097)),
    ];
    for (block, error) in cases {
        assert_eq!(
            decode(&mut Decoder::new(4096), block),
            Err(error),
            "{block}"
        );
    }
    // Two size updates at the start are allowed (the smallest, then the new).
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        decode(&mut decoder, "20 3f3d 82").unwrap(),
        [":method: GET"]
    );
    assert_eq!(decoder.table_max(), 92);
}

/// Malformed fields are reported as such, and still take their place in
/// the table: a later reference to them is malformed too, and the entries
/// after them keep their indexes.
#[test]
fn malformed_fields_keep_the_table_in_step() {
    let mut decoder = Decoder::new(4096);
    let literal = |name: &str, value: &str| {
        let mut block = vec![0x40, name.len() as u8];
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
        block.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let cases = [
        (literal("X-Upper", "v"), false),
        (literal(":unknown", "v"), false),
        (literal("bad name", "v"), false),
        (literal("", "v"), false),
        (literal("x-cr", "a\rb"), false),
        (literal("x-nul", "a\0b"), false),
        (literal("x-lead", " a"), false),
        (literal("x-trail", "a\t"), false),
        (literal("x-ok", "a b"), true),
        (literal("x-obs", "caf\u{e9}"), true),
    ];
    for (block, ok) in &cases {
        let fields = decode(&mut decoder, block).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0] != "malformed", *ok, "{block}: {fields:?}");
    }
    // Newest first: index 62 is "x-obs", 63 "x-ok", 71 "X-Upper".
    assert_eq!(decode(&mut decoder, "bf").unwrap(), ["x-ok: a b"]);
    assert_eq!(decode(&mut decoder, "c7").unwrap(), ["malformed"]);
    let sizes: usize = cases
        .iter()
        .map(|(b, _)| b.len() / 2 - 3 + ENTRY_OVERHEAD)
        .sum();
    assert_eq!(decoder.table_size(), sizes);
}

#[test]
fn never_indexed_values_stay_sensitive_and_out_of_the_table() {
    let mut decoder = Decoder::new(4096);
    let mut seen = Vec::new();
    // authorization (index 23) never indexed; then x-a: b without indexing.
    let block = hex("1f08 06 736563726574 00 03782d61 0162");
    decoder
        .decode(&block, |f, size| seen.push((f, size)))
        .unwrap();
    match &seen[..] {
        [(Field::Header(n1, v1), s1), (Field::Header(n2, v2), s2)] => {
            assert_eq!(
                (n1.as_str(), v1.as_bytes(), *s1),
                ("authorization", &b"secret"[..], 51)
            );
            assert!(v1.is_sensitive());
            assert_eq!((n2.as_str(), v2.as_bytes(), *s2), ("x-a", &b"b"[..], 36));
            assert!(!v2.is_sensitive());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decoder.table_size(), 0);
}

/// What the encoder writes, decoded again: every field, in order, the
/// sensitive ones never indexed, nothing added to the peer's table.
#[test]
fn the_encoder_round_trips_through_the_decoder() {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.append("set-cookie", HeaderValue::from_static("a=1"));
    headers.append("set-cookie", HeaderValue::from_static("b=2"));
    let mut id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    id.set_sensitive(true);
    headers.insert("x-request-id", id);
    let long = "v".repeat(300);
    headers.insert("x-long", HeaderValue::from_str(&long).unwrap());
    let mut encoder = Encoder::default();
    let mut decoder = Decoder::new(4096);
    for (status, first) in [(200, "20 88"), (302, "08 03 333032"), (200, "88")] {
        let mut block = BytesMut::new();
        encoder.response(StatusCode::from_u16(status).unwrap(), &headers, &mut block);
        let block = block.freeze();
        assert!(block.starts_with(&hex(first)), "{status}: {block:x?}");
        let mut seen = Vec::new();
        decoder.decode(&block, |f, _| seen.push(f)).unwrap();
        let mut expected = vec![Field::Pseudo(
            Pseudo::Status,
            HeaderValue::from_str(&status.to_string()).unwrap(),
        )];
        expected.extend(
            headers
                .iter()
                .map(|(n, v)| Field::Header(n.clone(), v.clone())),
        );
        assert_eq!(seen, expected);
        let sensitive: Vec<bool> = seen[1..]
            .iter()
            .map(|f| matches!(f, Field::Header(_, v) if v.is_sensitive()))
            .collect();
        assert_eq!(sensitive, [false, false, false, true, false]);
        assert_eq!(decoder.table_size(), 0);
    }
    encoder.peer_table_size_changed();
    let mut block = BytesMut::new();
    encoder.trailers(&HeaderMap::new(), &mut block);
    assert_eq!(&block[..], [0x20]);
}

/// A request head round-trips, with the static entries for the common
/// pseudo-header values and literals for the others.
#[test]
fn request_heads_round_trip_through_the_decoder() {
    let mut headers = HeaderMap::new();
    headers.insert("te", HeaderValue::from_static("trailers"));
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    let cases = [
        (("GET", "http", Some("a.test:80"), "/"), 0x82),
        (("POST", "https", None, "/pkg.Svc/Call"), 0x83),
        (("DELETE", "http", Some("b"), "/x?y=1"), 0x02),
    ];
    for ((method, scheme, authority, path), first) in cases {
        let target = Target {
            method,
            scheme,
            authority,
            path,
        };
        let mut encoder = Encoder::default();
        let mut block = BytesMut::new();
        encoder.request(&target, &headers, &mut block);
        assert_eq!(block[0], 0x20, "the table set to 0 first");
        assert_eq!(block[1], first);
        let mut out = Vec::new();
        Decoder::new(4096)
            .decode(&block.freeze(), |f, _| out.push(text(&f)))
            .unwrap();
        let mut want = vec![format!(":method: {method}"), format!(":scheme: {scheme}")];
        want.extend(authority.map(|a| format!(":authority: {a}")));
        want.push(format!(":path: {path}"));
        want.push("te: trailers".to_owned());
        want.push("content-type: application/grpc".to_owned());
        assert_eq!(out, want);
    }
}

/// gRPC's fixed names and values come out of the decoder static, Huffman
/// coded or not, and so do the table entries made of them: no field of
/// theirs holds a reference count on the block, or on a copy, that each
/// later call would increment and decrement.
#[test]
fn grpcs_fixed_fields_decode_to_static_octets() {
    // content-type: application/grpc, grpc-status: 0, te: trailers, each
    // with incremental indexing; Huffman coded, then sent as they are.
    let huffman = "5f8b1d75d0620d263d4c4d656440889acac8b21234da8f81074082497f864d833505b11f";
    let plain = "5f106170706c69636174696f6e2f67727063400b677270632d73746174757301304002746508747261696c657273";
    // The three again, by their dynamic indexes (64, 63, 62: newest first).
    let indexed = "c0bfbe";
    let is_static = |field: &Field| match field {
        Field::Header(name, value) => {
            let known = table::known_value(value.as_bytes()).expect("a known value");
            let name_static = match table::known_name(name.as_str().as_bytes()) {
                Some(known) => std::ptr::eq(known.as_str().as_ptr(), name.as_str().as_ptr()),
                None => true, // content-type and te: the http crate's own
            };
            std::ptr::eq(known.as_ptr(), value.as_bytes().as_ptr()) && name_static
        }
        other => panic!("{other:?}"),
    };
    for block in [huffman, plain] {
        let mut decoder = Decoder::new(4096);
        for block in [block, indexed] {
            let mut fields = Vec::new();
            decoder.decode(&hex(block), |f, _| fields.push(f)).unwrap();
            let names: Vec<String> = fields.iter().map(text).collect();
            assert_eq!(
                names,
                [
                    "content-type: application/grpc",
                    "grpc-status: 0",
                    "te: trailers"
                ]
            );
            assert!(fields.iter().all(is_static), "{block}");
        }
    }
    // Another value: its table entry is a copy, not a slice of the block
    // (which it would keep), and not static.
    let mut decoder = Decoder::new(4096);
    let block = hex("5f0a746578742f706c61696e");
    let mut fields = Vec::new();
    decoder.decode(&block, |f, _| fields.push(f)).unwrap();
    assert_eq!(
        fields.iter().map(text).collect::<Vec<_>>(),
        ["content-type: text/plain"]
    );
    let Some(Field::Header(_, entry)) = decoder.table.get(0).map(|e| &e.field) else {
        panic!("no entry");
    };
    let at = entry.as_bytes().as_ptr() as usize;
    let within = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
    assert!(!within.contains(&at), "the entry is a slice of the block");
    assert_eq!(entry.as_bytes(), b"text/plain");
}

/// The same Huffman-coded string twice on a connection (nghttp2 sends
/// `:path` so, a literal without indexing): the second is the first's
/// value again, not decoded anew; a different string is decoded; a
/// never-indexed one is neither compared nor kept; another connection, or
/// this one once idle, decodes its own.
#[test]
fn a_repeated_huffman_string_is_decoded_once() {
    // :path (index 4) without indexing, "/bench.Echo/Unary" Huffman coded;
    // never indexed (0x14); and "/index.htmlx" without indexing.
    let (coded, never, other) = (
        "048d 6232d449d7c049cec70a8767af",
        "148d 6232d449d7c049cec70a8767af",
        "0489 60d5485f2bce9a68f3",
    );
    let path = |decoder: &mut Decoder, block: &str| {
        let mut fields = Vec::new();
        decoder.decode(&hex(block), |f, _| fields.push(f)).unwrap();
        match fields.pop() {
            Some(Field::Pseudo(Pseudo::Path, value)) => value,
            other => panic!("{other:?}"),
        }
    };
    let same = |a: &HeaderValue, b: &HeaderValue| std::ptr::eq(a.as_bytes(), b.as_bytes());
    let mut decoder = Decoder::new(4096);
    let first = path(&mut decoder, coded);
    assert_eq!(first.as_bytes(), b"/bench.Echo/Unary");
    assert!(same(&path(&mut decoder, coded), &first), "decoded again");
    // Never indexed: decoded, not the kept value, and not kept.
    let secret = path(&mut decoder, never);
    assert_eq!(secret, first);
    assert!(!same(&secret, &first));
    assert!(same(&path(&mut decoder, coded), &first));
    let mut elsewhere = Decoder::new(4096);
    let theirs = path(&mut elsewhere, coded);
    assert_eq!(theirs, first);
    assert!(!same(&theirs, &first), "shared between connections");
    let next = path(&mut decoder, other);
    assert_eq!(next.as_bytes(), b"/index.htmlx".as_slice());
    assert!(same(&path(&mut decoder, other), &next));
    decoder.forget_last();
    assert!(!same(&path(&mut decoder, other), &next), "kept while idle");
}
