//! HPACK's two tables (RFC 7541, section 2.3): the static one and a
//! decoder's dynamic one, both holding fields already checked, so a field
//! the peer refers to by index costs two reference-count increments, not a
//! parse.

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
