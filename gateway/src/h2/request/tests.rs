use super::*;

fn pseudo(p: Pseudo, v: &'static str) -> Field {
    Field::Pseudo(p, HeaderValue::from_static(v))
}

fn header(n: &'static str, v: &'static str) -> Field {
    Field::Header(HeaderName::from_static(n), HeaderValue::from_static(v))
}

fn get(path: &'static str) -> Vec<Field> {
    vec![
        pseudo(Pseudo::Method, "GET"),
        pseudo(Pseudo::Scheme, "https"),
        pseudo(Pseudo::Authority, "example.com:8443"),
        pseudo(Pseudo::Path, path),
    ]
}

fn head(fields: Vec<Field>) -> Result<Head, Refusal> {
    let mut builder = HeadBuilder::new(16 * 1024);
    for f in fields {
        builder.field(f, 40);
    }
    builder.finish()
}

fn malformed(fields: Vec<Field>) -> bool {
    matches!(head(fields), Err(Refusal::Malformed(_)))
}

#[test]
fn a_request_head_as_hypers_server_made_it() {
    let mut fields = get("/a/b?c=d");
    fields.push(header("accept", "*/*"));
    fields.push(header("cookie", "a=1"));
    fields.push(header("cookie", "b=2"));
    fields.push(header("host", "example.com:8443"));
    fields.push(header("te", "trailers"));
    let head = head(fields).unwrap();
    let parts = &head.parts;
    assert_eq!(parts.method, Method::GET);
    assert_eq!(parts.uri, "https://example.com:8443/a/b?c=d");
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(parts.headers.get_all("cookie").iter().count(), 2);
    assert_eq!(parts.headers["host"], "example.com:8443");
    assert_eq!(parts.headers.len(), 5);
    assert_eq!(head.content_length, None);
}

#[test]
fn pseudo_header_rules() {
    // Missing each of the four (without :authority, a host field must
    // name the target: see below).
    for missing in 0..4 {
        let mut fields = get("/");
        fields.remove(missing);
        assert!(malformed(fields), "missing field {missing}");
    }
    let mut twice = get("/");
    twice.push(pseudo(Pseudo::Path, "/again"));
    assert!(malformed(twice));
    let mut late = get("/");
    late.insert(3, header("accept", "*/*"));
    assert!(malformed(late));
    let mut status = get("/");
    status.push(pseudo(Pseudo::Status, "200"));
    assert!(malformed(status));
    let mut protocol = get("/");
    protocol.push(pseudo(Pseudo::Protocol, "websocket"));
    assert!(malformed(protocol));
    assert!(malformed(get("")));
    assert!(malformed(get("relative")));
    assert!(malformed(get("*")));
    let mut options = get("*");
    options[0] = pseudo(Pseudo::Method, "OPTIONS");
    assert!(head(options).is_ok());
    let mut no_authority = get("/p");
    no_authority.remove(2);
    no_authority.push(header("host", "example.com"));
    let head = head(no_authority).unwrap();
    assert_eq!(
        (head.parts.uri.scheme(), head.parts.uri.path()),
        (None, "/p")
    );
    let mut bad_scheme = get("/");
    bad_scheme[1] = pseudo(Pseudo::Scheme, "ht tp");
    assert!(malformed(bad_scheme));
    let mut bad_method = get("/");
    bad_method[0] = pseudo(Pseudo::Method, "G(T");
    assert!(malformed(bad_method));
    let mut bad_authority = get("/");
    bad_authority[2] = pseudo(Pseudo::Authority, "exa mple.com");
    assert!(malformed(bad_authority));
    assert!(malformed(vec![Field::Malformed]));
}

#[test]
fn connect_names_an_authority_only() {
    let connect = vec![
        pseudo(Pseudo::Method, "CONNECT"),
        pseudo(Pseudo::Authority, "upstream:443"),
    ];
    let head = head(connect.clone()).unwrap();
    assert_eq!(head.parts.method, Method::CONNECT);
    assert_eq!(head.parts.uri.authority().unwrap(), "upstream:443");
    let mut with_path = connect.clone();
    with_path.push(pseudo(Pseudo::Path, "/"));
    assert!(malformed(with_path));
    assert!(malformed(connect[..1].to_vec()));
}

#[test]
fn connection_specific_fields_are_malformed() {
    for (name, value) in [
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ] {
        let mut fields = get("/");
        fields.push(header(name, value));
        assert!(malformed(fields), "{name}: {value}");
    }
}

#[test]
fn content_length_must_be_one_number() {
    let with = |values: &[&'static str]| {
        let mut fields = get("/");
        fields.extend(values.iter().map(|v| header("content-length", v)));
        head(fields)
    };
    assert_eq!(with(&["42"]).unwrap().content_length, Some(42));
    assert_eq!(with(&["42", "42"]).unwrap().content_length, Some(42));
    for bad in [
        &["42", "43"][..],
        &["-1"],
        &["4 2"],
        &[""],
        &["99999999999999999999"],
    ] {
        assert!(matches!(with(bad), Err(Refusal::Malformed(_))), "{bad:?}");
    }
}

#[test]
fn a_section_over_the_limit_is_too_large_even_if_malformed() {
    let mut builder = HeadBuilder::new(100);
    for field in get("/") {
        builder.field(field, 30);
    }
    builder.field(Field::Malformed, 30);
    assert_eq!(builder.finish().unwrap_err(), Refusal::TooLarge);
    let mut exact = HeadBuilder::new(120);
    for field in get("/") {
        exact.field(field, 30);
    }
    assert!(exact.finish().is_ok());
}

#[test]
fn review_findings_on_the_target() {
    let mut no_host = get("/");
    no_host.remove(2);
    assert!(malformed(no_host), "neither :authority nor host");
    let mut userinfo = get("/");
    userinfo[2] = pseudo(Pseudo::Authority, "user@example.com");
    assert!(malformed(userinfo));
    assert!(malformed(get("/a#frag")));
    let mut te = get("/");
    te.push(header("te", "Trailers"));
    assert!(head(te).is_ok());
    let connect = vec![
        pseudo(Pseudo::Method, "CONNECT"),
        pseudo(Pseudo::Authority, "upstream"),
    ];
    assert!(malformed(connect));
    // Past the most names a header map holds: too large, not a panic.
    let mut builder = HeadBuilder::new(usize::MAX / 2);
    for field in get("/") {
        builder.field(field, 40);
    }
    for n in 0..40_000 {
        let name = HeaderName::from_bytes(format!("x-{n}").as_bytes()).unwrap();
        builder.field(Field::Header(name, HeaderValue::from_static("v")), 40);
    }
    assert_eq!(builder.finish().unwrap_err(), Refusal::TooLarge);
}

/// `expect: 100-continue` is read from the first `expect` field, in any
/// case; another expectation, or none, asks for nothing.
#[test]
fn the_first_expect_field_says_whether_to_continue() {
    let with = |values: &[&'static str]| {
        let mut fields = get("/");
        fields.push(header("content-length", "3"));
        fields.extend(values.iter().map(|v| header("expect", v)));
        head(fields).unwrap().expects_continue
    };
    assert!(with(&["100-continue"]));
    assert!(with(&["100-Continue"]));
    assert!(with(&["100-continue", "something"]));
    assert!(!with(&["something", "100-continue"]));
    assert!(!with(&[]));
}
