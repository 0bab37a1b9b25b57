//! HPACK (RFC 7541): a header block into fields, and a response's (or,
//! for the client side, a request's) fields into a header block.
//!
//! The decoder is complete: every representation, Huffman-coded strings,
//! the dynamic table and its size updates. Its fields come out checked
//! ([`Field`]): a name that is not a lowercase token or a known
//! pseudo-header, or a value HTTP/2 forbids, gives [`Field::Malformed`],
//! while decoding carries on so the dynamic table stays in step with the
//! peer's. An encoding error (a bad index, integer or Huffman string, a
//! truncated block, a size update out of place or over the limit) is
//! `COMPRESSION_ERROR` for the whole connection, and the decoder must not
//! be used again.
//!
//! The encoder keeps no dynamic table, as HAProxy's does not: a field
//! whose name is in the static table refers to it by index, `:status`
//! takes the static entry when there is one, and everything else goes as a
//! literal, never added to a table, and not Huffman-coded. It costs bytes
//! on the wire (about a fifth more for text than Huffman, and repeated
//! fields are sent whole each time); it saves the work that took most of
//! the h2 crate's encoding time in the h2c profile (a dynamic table to
//! search and keep per connection, a Huffman pass per string). It starts
//! each connection, and follows every change of the peer's
//! `SETTINGS_HEADER_TABLE_SIZE`, by setting its table's size to 0, which a
//! decoder that lowered its limit waits for.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::huffman;
use super::table::{self, Dynamic, ENTRY_OVERHEAD, Entry, Field, Name, Pseudo, STATIC_LEN};

/// Why a header block could not be decoded: each is `COMPRESSION_ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer longer than any limit it could carry.
    IntegerOverflow,
    /// Index 0, or past the end of the tables.
    BadIndex(usize),
    /// A Huffman-coded string that is not valid (RFC 7541, section 5.2).
    Huffman,
    /// A dynamic table size update after a field, or above the limit this
    /// side announced.
    SizeUpdate(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("header block truncated"),
            DecodeError::IntegerOverflow => f.write_str("integer too large"),
            DecodeError::BadIndex(i) => write!(f, "no table entry at index {i}"),
            DecodeError::Huffman => f.write_str("invalid Huffman-coded string"),
            DecodeError::SizeUpdate(n) => write!(f, "table size update to {n} not allowed"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one connection's header blocks, in order.
#[derive(Debug)]
pub struct Decoder {
    table: Dynamic,
    /// The most this side allows the table (its
    /// `SETTINGS_HEADER_TABLE_SIZE`).
    limit: usize,
    /// The last short Huffman-coded string decoded, with its value.
    last: LastDecoded,
}

/// How a literal field is to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexing {
    /// Added to the dynamic table.
    Incremental,
    /// Not added.
    Without,
    /// Not added here, and never by any hop after: its value is marked
    /// sensitive, so Portico's own encoders keep it a literal too.
    Never,
}

impl Decoder {
    /// A decoder whose table may grow to `limit` octets (4096 is the
    /// protocol's default for `SETTINGS_HEADER_TABLE_SIZE`).
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: Dynamic::new(limit),
            limit,
            last: LastDecoded::default(),
        }
    }

    /// Decodes `block`, handing each field to `each` with its size as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` counts it (name and value octets as
    /// sent, plus 32). Strings sent as they are stay slices of `block`,
    /// but for gRPC's fixed values, which come out static ([`string`]).
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut each: impl FnMut(Field, usize),
    ) -> Result<(), DecodeError> {
        let mut at = 0;
        let mut first = true;
        while at < block.len() {
            let byte = block[at];
            let (field, size) = if byte & 0x80 != 0 {
                let (field, _, size) = self.entry(integer(block, &mut at, 7)?)?;
                (field.clone(), size)
            } else if byte & 0x40 != 0 {
                self.literal(block, &mut at, 6, Indexing::Incremental)?
            } else if byte & 0x20 != 0 {
                self.size_update(block, &mut at, first)?;
                continue;
            } else if byte & 0x10 != 0 {
                self.literal(block, &mut at, 4, Indexing::Never)?
            } else {
                self.literal(block, &mut at, 4, Indexing::Without)?
            };
            first = false;
            each(field, size);
        }
        Ok(())
    }

    /// Lets go of the last decoded string (an idle connection's room).
    pub fn forget_last(&mut self) {
        self.last = LastDecoded::default();
    }

    /// The table's size as HPACK counts it (for tests and checks).
    pub fn table_size(&self) -> usize {
        self.table.size()
    }

    /// The table's current maximum (the last size update, or the limit).
    pub fn table_max(&self) -> usize {
        self.table.max()
    }

    /// The entry at `index` (1-based; the static table first): its field,
    /// its name's length and its size.
    fn entry(&self, index: usize) -> Result<(&Field, usize, usize), DecodeError> {
        match index {
            0 => Err(DecodeError::BadIndex(0)),
            1..=STATIC_LEN => Ok(table::static_entry(index)),
            _ => match self.table.get(index - STATIC_LEN - 1) {
                Some(e) => Ok((&e.field, e.name_len, e.size)),
                None => Err(DecodeError::BadIndex(index)),
            },
        }
    }

    fn size_update(
        &mut self,
        block: &[u8],
        at: &mut usize,
        first: bool,
    ) -> Result<(), DecodeError> {
        let size = integer(block, at, 5)?;
        if !first || size > self.limit {
            return Err(DecodeError::SizeUpdate(size));
        }
        self.table.resize(size);
        Ok(())
    }

    /// A literal field line whose prefix has `prefix` bits of name index.
    fn literal(
        &mut self,
        block: &Bytes,
        at: &mut usize,
        prefix: u8,
        indexing: Indexing,
    ) -> Result<(Field, usize), DecodeError> {
        let (name, name_len) = match integer(block, at, prefix)? {
            0 => {
                let raw = string(block, at, Some(&mut self.last))?;
                (parse_name(&raw), raw.len())
            }
            index => {
                let (field, name_len, _) = self.entry(index)?;
                (field.name(), name_len)
            }
        };
        // A never-indexed value (a credential, say) is not remembered
        // past its block, nor compared with what is ([`LastDecoded`]).
        let last = (indexing != Indexing::Never).then_some(&mut self.last);
        let raw = string(block, at, last)?;
        let size = name_len + raw.len() + ENTRY_OVERHEAD;
        if indexing == Indexing::Incremental {
            // Owned, not a slice of the block: an entry can outlive the
            // frame by hours, and would keep all of it. A known value is
            // static already ([`string`]).
            let owned = known_or(&raw, || Bytes::copy_from_slice(&raw));
            let field = field(name, owned, false);
            self.table.insert(Entry {
                field: field.clone(),
                name_len,
                size,
            });
            return Ok((field, size));
        }
        Ok((field(name, raw, indexing == Indexing::Never), size))
    }
}

/// A name sent as a literal, checked.
fn parse_name(raw: &[u8]) -> Name {
    if raw.first() == Some(&b':') {
        return Pseudo::parse(raw).map_or(Name::Malformed, Name::Pseudo);
    }
    if let Some(known) = table::known_name(raw) {
        return Name::Header(known.clone());
    }
    HeaderName::from_lowercase(raw).map_or(Name::Malformed, Name::Header)
}

/// A field from its name and value, checked (RFC 9113, section 8.2.1).
fn field(name: Name, value: Bytes, sensitive: bool) -> Field {
    let edge = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if edge(value.first()) || edge(value.last()) {
        return Field::Malformed;
    }
    let Ok(mut value) = HeaderValue::from_maybe_shared(value) else {
        return Field::Malformed;
    };
    value.set_sensitive(sensitive);
    match name {
        Name::Pseudo(p) => Field::Pseudo(p, value),
        Name::Header(n) => Field::Header(n, value),
        Name::Malformed => Field::Malformed,
    }
}

/// An integer with a `prefix`-bit prefix (RFC 7541, section 5.1), at most
/// 2^32: no limit HTTP/2 sets (table sizes, string lengths) is higher.
fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, DecodeError> {
    let max_prefix = (1u16 << prefix) - 1;
    let first = u16::from(*block.get(*at).ok_or(DecodeError::Truncated)?) & max_prefix;
    *at += 1;
    if first < max_prefix {
        return Ok(usize::from(first));
    }
    let mut value = u64::from(max_prefix);
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(DecodeError::Truncated)?;
        *at += 1;
        value += u64::from(byte & 0x7f) << shift;
        if value > 1 << 32 {
            return Err(DecodeError::IntegerOverflow);
        }
        if byte & 0x80 == 0 {
            return Ok(value as usize);
        }
        shift += 7;
        if shift > 28 {
            return Err(DecodeError::IntegerOverflow);
        }
    }
}

/// A string literal (section 5.2): a slice of `block`, or its Huffman
/// decoding; one of gRPC's fixed values comes out static
/// (`table::known_value`): no reference to the block to count, and no
/// copy of a decoded string. A short Huffman-coded string the same as
/// `last` is its value again, and one decoded becomes `last`
/// ([`LastDecoded`]).
fn string(
    block: &Bytes,
    at: &mut usize,
    mut last: Option<&mut LastDecoded>,
) -> Result<Bytes, DecodeError> {
    let huffman = *block.get(*at).ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).filter(|&end| end <= block.len());
    let end = end.ok_or(DecodeError::Truncated)?;
    let start = std::mem::replace(at, end);
    if !huffman {
        return Ok(known_or(&block[start..end], || block.slice(start..end)));
    }
    let raw = &block[start..end];
    if let Some(again) = last.as_deref().and_then(|last| last.get(raw)) {
        return Ok(again);
    }
    // Decoded into a per-thread scratch vector, then copied out shared
    // (`buffers::shared_copy`): a vector of its own was an allocation per
    // string, and another at its first clone.
    thread_local! {
        static DECODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let decoded = DECODED.with_borrow_mut(|out| {
        out.clear();
        let decoded = huffman::decode(raw, out).map_err(|_| DecodeError::Huffman);
        let copy = decoded.map(|()| known_or(out, || crate::buffers::shared_copy(out)));
        if out.capacity() > SCRATCH_KEPT {
            *out = Vec::new();
        }
        copy
    })?;
    if let Some(last) = last.as_mut() {
        last.set(raw, &decoded);
    }
    Ok(decoded)
}

/// `raw` as its known static octets ([`table::known_value`]), or else
/// `otherwise`'s bytes.
fn known_or(raw: &[u8], otherwise: impl FnOnce() -> Bytes) -> Bytes {
    table::known_value(raw).map_or_else(otherwise, Bytes::from_static)
}

/// Room the Huffman scratch vector keeps between strings; one grown past
/// it by a long value is freed.
const SCRATCH_KEPT: usize = 4096;

/// The last short Huffman-coded string a connection's decoder decoded:
/// its octets as sent, and what they decode to. nghttp2's encoder (h2load,
/// curl, and the proxies built on it) sends `:path` as a literal without
/// indexing, so a client that calls one method sends the same coded path
/// with every request; the Huffman pass was about 1,100 instructions of a
/// unary gRPC call. Decoding is a function of the octets, so an equal
/// string decodes to the same (shared) value.
///
/// Per connection, as the dynamic table is: nothing one client sent is
/// compared with what another sends. Never-indexed values are neither
/// kept nor compared. An idle connection lets it go
/// ([`Decoder::forget_last`]): the value holds its `buffers::shared_copy`
/// chunk.
#[derive(Debug, Default)]
struct LastDecoded {
    coded: Vec<u8>,
    decoded: Option<Bytes>,
}

/// The longest string [`LastDecoded`] keeps (a path, a method's name).
const LAST_DECODED_MAX: usize = 128;

impl LastDecoded {
    fn get(&self, coded: &[u8]) -> Option<Bytes> {
        let decoded = self.decoded.as_ref()?;
        (self.coded == coded).then(|| decoded.clone())
    }

    fn set(&mut self, coded: &[u8], decoded: &Bytes) {
        if coded.len() <= LAST_DECODED_MAX {
            self.coded.clear();
            self.coded.extend_from_slice(coded);
            self.decoded = Some(decoded.clone());
        }
    }
}

/// Encodes one connection's header blocks; no dynamic table (see the
/// module's comment).
#[derive(Debug)]
pub struct Encoder {
    /// Whether the next block starts by setting the peer's table to 0.
    clear_table: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { clear_table: true }
    }
}

impl Encoder {
    /// The peer changed `SETTINGS_HEADER_TABLE_SIZE`: the next block says
    /// again that this side's table is empty.
    pub fn peer_table_size_changed(&mut self) {
        self.clear_table = true;
    }

    /// A response head: `:status`, then `headers`.
    pub fn response(&mut self, status: StatusCode, headers: &HeaderMap, dst: &mut BytesMut) {
        self.start(dst);
        match status.as_u16() {
            200 => dst.put_u8(0x88),
            204 => dst.put_u8(0x89),
            206 => dst.put_u8(0x8a),
            304 => dst.put_u8(0x8b),
            400 => dst.put_u8(0x8c),
            404 => dst.put_u8(0x8d),
            500 => dst.put_u8(0x8e),
            _ => {
                // Literal without indexing, the name `:status` (index 8).
                dst.put_u8(0x08);
                put_string(status.as_str().as_bytes(), dst);
            }
        }
        fields(headers, dst);
    }

    /// A request head (the client side's): the pseudo-headers, then
    /// `headers`. `authority` is left out when `None` (the `host` field
    /// then names the target, section 8.3.1).
    pub fn request(&mut self, target: &Target<'_>, headers: &HeaderMap, dst: &mut BytesMut) {
        self.start(dst);
        match target.method {
            "GET" => dst.put_u8(0x82),
            "POST" => dst.put_u8(0x83),
            other => literal_pseudo(2, other.as_bytes(), dst),
        }
        match target.scheme {
            "http" => dst.put_u8(0x86),
            "https" => dst.put_u8(0x87),
            other => literal_pseudo(6, other.as_bytes(), dst),
        }
        if let Some(authority) = target.authority {
            literal_pseudo(1, authority.as_bytes(), dst);
        }
        match target.path {
            "/" => dst.put_u8(0x84),
            other => literal_pseudo(4, other.as_bytes(), dst),
        }
        fields(headers, dst);
    }

    /// A trailer block.
    pub fn trailers(&mut self, headers: &HeaderMap, dst: &mut BytesMut) {
        self.start(dst);
        fields(headers, dst);
    }

    fn start(&mut self, dst: &mut BytesMut) {
        if self.clear_table {
            // Dynamic table size update to 0.
            dst.put_u8(0x20);
            self.clear_table = false;
        }
    }
}

/// A request's pseudo-headers, as [`Encoder::request`] writes them.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: Option<&'a str>,
    pub path: &'a str,
}

/// A pseudo-header as a literal without indexing, its name the static
/// table's entry at `name_index`.
fn literal_pseudo(name_index: usize, value: &[u8], dst: &mut BytesMut) {
    put_integer(name_index, 4, 0x00, dst);
    put_string(value, dst);
}

/// Each field as a literal never added to a table: "without indexing", or
/// "never indexed" for a sensitive value.
fn fields(headers: &HeaderMap, dst: &mut BytesMut) {
    literal_fields(headers, dst);
}

/// `fields` as [`Encoder`] writes a map's, with no table involved: bytes
/// that can be made away from the connection, ahead of time, and added to
/// a block after the map's own ([`crate::h2::client::SendRequest::send_with`]).
pub fn literal_fields<'a>(
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    dst: &mut BytesMut,
) {
    for (name, value) in fields {
        let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
        match table::static_name_index(name) {
            Some(index) => put_integer(index, 4, flags, dst),
            None => {
                dst.put_u8(flags);
                put_string(name.as_str().as_bytes(), dst);
            }
        }
        put_string(value.as_bytes(), dst);
    }
}

/// A string literal as it is (no Huffman).
fn put_string(s: &[u8], dst: &mut BytesMut) {
    put_integer(s.len(), 7, 0, dst);
    dst.extend_from_slice(s);
}

/// An integer with a `prefix`-bit prefix, the first octet's other bits
/// `flags`.
fn put_integer(mut value: usize, prefix: u8, flags: u8, dst: &mut BytesMut) {
    let max_prefix = (1usize << prefix) - 1;
    if value < max_prefix {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | max_prefix as u8);
    value -= max_prefix;
    while value >= 0x80 {
        dst.put_u8(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

#[cfg(test)]
mod tests;
