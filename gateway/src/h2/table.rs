//! HPACK's two tables (RFC 7541, section 2.3): the static one and a
//! decoder's dynamic one, both holding fields already checked, so a field
//! the peer refers to by index costs two reference-count increments, not a
//! parse; none for the static table's fields, and none for gRPC's fixed
//! names and values ([`known_name`], [`known_value`]), which the decoder
//! keeps static wherever they come from.

use std::collections::VecDeque;

use http::{HeaderName, HeaderValue};

/// A pseudo-header field (RFC 9113, section 8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    /// Extended CONNECT's (RFC 8441).
    Protocol,
    Status,
}

impl Pseudo {
    /// Its name, colon included.
    pub fn as_str(self) -> &'static str {
        match self {
            Pseudo::Method => ":method",
            Pseudo::Scheme => ":scheme",
            Pseudo::Authority => ":authority",
            Pseudo::Path => ":path",
            Pseudo::Protocol => ":protocol",
            Pseudo::Status => ":status",
        }
    }

    /// The pseudo-header `name` names, if any (`name` includes the colon).
    pub fn parse(name: &[u8]) -> Option<Pseudo> {
        Some(match name {
            b":method" => Pseudo::Method,
            b":scheme" => Pseudo::Scheme,
            b":authority" => Pseudo::Authority,
            b":path" => Pseudo::Path,
            b":protocol" => Pseudo::Protocol,
            b":status" => Pseudo::Status,
            _ => return None,
        })
    }
}

/// One decoded field line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Pseudo(Pseudo, HeaderValue),
    Header(HeaderName, HeaderValue),
    /// A field that makes its message malformed (RFC 9113, section 8.2.1):
    /// a name that is not a lowercase token or a known pseudo-header, or a
    /// value with a control character, or starting or ending with a space
    /// or tab. Decoding goes on (the tables must stay in step with the
    /// peer's); the stream is refused.
    Malformed,
}

/// The part of a field a literal may refer to by index: its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    Pseudo(Pseudo),
    Header(HeaderName),
    Malformed,
}

impl Field {
    pub(crate) fn name(&self) -> Name {
        match self {
            Field::Pseudo(p, _) => Name::Pseudo(*p),
            Field::Header(n, _) => Name::Header(n.clone()),
            Field::Malformed => Name::Malformed,
        }
    }
}

/// A table entry: the field, with the lengths HPACK sizes it by (the
/// octets as sent, which a malformed field no longer holds).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub field: Field,
    pub name_len: usize,
    /// Name and value lengths plus 32 (RFC 7541, section 4.1).
    pub size: usize,
}

/// The extra size HPACK counts per entry.
pub const ENTRY_OVERHEAD: usize = 32;

macro_rules! static_table {
    ($(($kind:ident, $name:literal, $value:literal),)*) => {
        /// RFC 7541, Appendix A, in order: index 1 is the first.
        const STATIC_NAMES: &[(&str, &str)] = &[$(($name, $value),)*];
        static STATIC: [Field; 61] = [$(static_table!(@field $kind, $name, $value),)*];
    };
    (@field pseudo, $name:literal, $value:literal) => {
        Field::Pseudo(pseudo_of($name), HeaderValue::from_static($value))
    };
    (@field header, $name:literal, $value:literal) => {
        Field::Header(HeaderName::from_static($name), HeaderValue::from_static($value))
    };
}

const fn pseudo_of(name: &str) -> Pseudo {
    match name.as_bytes() {
        b":authority" => Pseudo::Authority,
        b":method" => Pseudo::Method,
        b":path" => Pseudo::Path,
        b":scheme" => Pseudo::Scheme,
        _ => Pseudo::Status,
    }
}

static_table! {
    (pseudo, ":authority", ""),
    (pseudo, ":method", "GET"),
    (pseudo, ":method", "POST"),
    (pseudo, ":path", "/"),
    (pseudo, ":path", "/index.html"),
    (pseudo, ":scheme", "http"),
    (pseudo, ":scheme", "https"),
    (pseudo, ":status", "200"),
    (pseudo, ":status", "204"),
    (pseudo, ":status", "206"),
    (pseudo, ":status", "304"),
    (pseudo, ":status", "400"),
    (pseudo, ":status", "404"),
    (pseudo, ":status", "500"),
    (header, "accept-charset", ""),
    (header, "accept-encoding", "gzip, deflate"),
    (header, "accept-language", ""),
    (header, "accept-ranges", ""),
    (header, "accept", ""),
    (header, "access-control-allow-origin", ""),
    (header, "age", ""),
    (header, "allow", ""),
    (header, "authorization", ""),
    (header, "cache-control", ""),
    (header, "content-disposition", ""),
    (header, "content-encoding", ""),
    (header, "content-language", ""),
    (header, "content-length", ""),
    (header, "content-location", ""),
    (header, "content-range", ""),
    (header, "content-type", ""),
    (header, "cookie", ""),
    (header, "date", ""),
    (header, "etag", ""),
    (header, "expect", ""),
    (header, "expires", ""),
    (header, "from", ""),
    (header, "host", ""),
    (header, "if-match", ""),
    (header, "if-modified-since", ""),
    (header, "if-none-match", ""),
    (header, "if-range", ""),
    (header, "if-unmodified-since", ""),
    (header, "last-modified", ""),
    (header, "link", ""),
    (header, "location", ""),
    (header, "max-forwards", ""),
    (header, "proxy-authenticate", ""),
    (header, "proxy-authorization", ""),
    (header, "range", ""),
    (header, "referer", ""),
    (header, "refresh", ""),
    (header, "retry-after", ""),
    (header, "server", ""),
    (header, "set-cookie", ""),
    (header, "strict-transport-security", ""),
    (header, "transfer-encoding", ""),
    (header, "user-agent", ""),
    (header, "vary", ""),
    (header, "via", ""),
    (header, "www-authenticate", ""),
}

/// How many entries the static table has; dynamic indexes follow.
pub const STATIC_LEN: usize = 61;

/// The static entry at `index` (1-based): its field, its name's length
/// and its size.
pub(crate) fn static_entry(index: usize) -> (&'static Field, usize, usize) {
    let (name, value) = STATIC_NAMES[index - 1];
    let size = name.len() + value.len() + ENTRY_OVERHEAD;
    (&STATIC[index - 1], name.len(), size)
}

/// The static index of a regular header's name, for an encoder's literal
/// with an indexed name. A `match` (the compiler switches on the length,
/// then compares): a search of the table cost hundreds of instructions per
/// name it did not find. A test checks it against the table.
pub fn static_name_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

/// The custom names gRPC (and a proxy in front) put on every call, as
/// static names: a field decoded with one of them holds no reference
/// count, where a name made from the block's octets holds one that every
/// clone out of the dynamic table increments and every drop decrements
/// (two atomic operations per field and call).
pub(crate) fn known_name(raw: &[u8]) -> Option<&'static HeaderName> {
    static NAMES: [HeaderName; 11] = [
        HeaderName::from_static("grpc-status"),
        HeaderName::from_static("grpc-message"),
        HeaderName::from_static("grpc-timeout"),
        HeaderName::from_static("grpc-encoding"),
        HeaderName::from_static("grpc-accept-encoding"),
        HeaderName::from_static("grpc-status-details-bin"),
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-forwarded-proto"),
        HeaderName::from_static("x-forwarded-host"),
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("traceparent"),
    ];
    let at = match raw {
        b"grpc-status" => 0,
        b"grpc-message" => 1,
        b"grpc-timeout" => 2,
        b"grpc-encoding" => 3,
        b"grpc-accept-encoding" => 4,
        b"grpc-status-details-bin" => 5,
        b"x-forwarded-for" => 6,
        b"x-forwarded-proto" => 7,
        b"x-forwarded-host" => 8,
        b"x-request-id" => 9,
        b"traceparent" => 10,
        _ => return None,
    };
    Some(&NAMES[at])
}

/// The values gRPC puts on every call (its content types, `te:
/// trailers`, the OK status, the compression names), as static octets,
/// for the reason [`known_name`] gives. A `match`: the compiler switches
/// on the length, then compares.
pub(crate) fn known_value(raw: &[u8]) -> Option<&'static [u8]> {
    static KNOWN: [&str; 13] = [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc+json",
        "trailers",
        "0",
        "identity",
        "gzip",
        "deflate",
        "identity,deflate,gzip",
        "identity, deflate, gzip",
        "deflate,gzip",
        "http",
        "https",
    ];
    let at = match raw {
        b"application/grpc" => 0,
        b"application/grpc+proto" => 1,
        b"application/grpc+json" => 2,
        b"trailers" => 3,
        b"0" => 4,
        b"identity" => 5,
        b"gzip" => 6,
        b"deflate" => 7,
        b"identity,deflate,gzip" => 8,
        b"identity, deflate, gzip" => 9,
        b"deflate,gzip" => 10,
        b"http" => 11,
        b"https" => 12,
        _ => return None,
    };
    Some(KNOWN[at].as_bytes())
}

/// A decoder's dynamic table: newest entry first.
#[derive(Debug)]
pub(crate) struct Dynamic {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
}

impl Dynamic {
    pub fn new(max: usize) -> Dynamic {
        Dynamic {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    /// The entry at `index` (0: the newest).
    pub fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    /// Adds `entry`, evicting the oldest entries to make room; an entry
    /// larger than the table empties it and is not added (section 4.4).
    pub fn insert(&mut self, entry: Entry) {
        self.evict_to(self.max.saturating_sub(entry.size));
        if entry.size <= self.max {
            self.size += entry.size;
            self.entries.push_front(entry);
        }
    }

    /// A new maximum size (a dynamic table size update).
    pub fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let oldest = self.entries.pop_back().expect("size counts entries");
            self.size -= oldest.size;
        }
    }

    /// The table's size as HPACK counts it.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_table_is_rfc_7541s() {
        assert_eq!(STATIC_NAMES.len(), STATIC_LEN);
        assert_eq!(STATIC_NAMES[0], (":authority", ""));
        assert_eq!(STATIC_NAMES[7], (":status", "200"));
        assert_eq!(STATIC_NAMES[15], ("accept-encoding", "gzip, deflate"));
        assert_eq!(STATIC_NAMES[60], ("www-authenticate", ""));
        assert_eq!(
            static_entry(2).0,
            &Field::Pseudo(Pseudo::Method, HeaderValue::from_static("GET"))
        );
        assert_eq!(static_entry(14).2, ":status".len() + 3 + 32);
        let date = HeaderName::from_static("date");
        assert_eq!(static_name_index(&date), Some(33));
        let custom = HeaderName::from_static("x-request-id");
        assert_eq!(static_name_index(&custom), None);
        for (at, (name, _)) in STATIC_NAMES.iter().enumerate().skip(14) {
            let name = HeaderName::from_static(name);
            assert_eq!(static_name_index(&name), Some(at + 1), "{name}");
        }
    }

    #[test]
    fn known_names_and_values_are_the_octets_they_stand_for() {
        for name in [
            "grpc-status",
            "grpc-message",
            "grpc-timeout",
            "grpc-encoding",
            "grpc-accept-encoding",
            "grpc-status-details-bin",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
            "traceparent",
        ] {
            assert_eq!(known_name(name.as_bytes()).map(|n| n.as_str()), Some(name));
        }
        assert_eq!(known_name(b"grpc-statu"), None);
        assert_eq!(known_name(b"content-type"), None);
        for value in [
            "application/grpc",
            "trailers",
            "0",
            "identity, deflate, gzip",
            "https",
        ] {
            assert_eq!(known_value(value.as_bytes()), Some(value.as_bytes()));
        }
        assert_eq!(known_value(b"application/grpc+protobuf"), None);
        assert_eq!(known_value(b"Trailers"), None);
    }

    #[test]
    fn eviction_keeps_the_table_within_its_size() {
        let entry = |size| Entry {
            field: Field::Malformed,
            name_len: 0,
            size,
        };
        let mut table = Dynamic::new(100);
        table.insert(entry(40));
        table.insert(entry(50));
        assert_eq!((table.size(), table.entries.len()), (90, 2));
        table.insert(entry(45));
        assert_eq!((table.size(), table.entries.len()), (95, 2));
        table.insert(entry(101));
        assert_eq!((table.size(), table.entries.len()), (0, 0));
        table.insert(entry(60));
        table.resize(59);
        assert_eq!((table.size(), table.entries.len()), (0, 0));
    }
}
