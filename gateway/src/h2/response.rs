//! A response's head from its decoded fields, checked as RFC 9113 (section
//! 8) asks of a client: the client side ([`super::client`]) reads what an
//! upstream answers with it.
//!
//! A head that breaks a rule is malformed: the stream is reset with
//! `PROTOCOL_ERROR` and the proxy sees the exchange fail (a 502), as it
//! did with hyper's client. The same builder reads trailers (no
//! pseudo-header allowed there).

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, StatusCode, Version};

use super::request::{Length, allowed};
use super::table::{Field, Pseudo};

/// A checked response head.
#[derive(Debug)]
pub struct Head {
    pub parts: http::response::Parts,
    /// The `content-length` every such field gave, if any: the stream's
    /// DATA must add up to it (section 8.1.1).
    pub content_length: Option<u64>,
}

/// Why a response head (or trailer section) is refused: the stream is
/// reset, `PROTOCOL_ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed(&'static str),
    /// Larger than this side's `SETTINGS_MAX_HEADER_LIST_SIZE`.
    TooLarge,
}

/// Collects a response's (or its trailers') fields as the decoder gives
/// them.
#[derive(Debug)]
pub struct HeadBuilder {
    status: Option<HeaderValue>,
    headers: HeaderMap,
    size: usize,
    max_size: usize,
    regular_seen: bool,
    malformed: Option<&'static str>,
    /// Read as the fields come (see the request's builder).
    length: Length,
}

impl HeadBuilder {
    /// A builder that refuses a section over `max_size` octets.
    pub fn new(max_size: usize) -> HeadBuilder {
        HeadBuilder {
            status: None,
            headers: crate::buffers::map(crate::buffers::HEAD_ROOM),
            size: 0,
            max_size,
            regular_seen: false,
            malformed: None,
            length: Length::default(),
        }
    }

    /// One decoded field, with its size.
    pub fn field(&mut self, field: Field, size: usize) {
        self.size = self.size.saturating_add(size);
        if self.size > self.max_size || self.malformed.is_some() {
            return;
        }
        if let Err(why) = self.add(field) {
            self.malformed = Some(why);
        }
    }

    fn add(&mut self, field: Field) -> Result<(), &'static str> {
        match field {
            Field::Malformed => Err("a field's name or value is not allowed"),
            Field::Pseudo(Pseudo::Status, value) => {
                if self.regular_seen {
                    return Err("a pseudo-header after a regular field");
                }
                match self.status.replace(value) {
                    Some(_) => Err(":status twice"),
                    None => Ok(()),
                }
            }
            Field::Pseudo(..) => Err("a request pseudo-header in a response"),
            Field::Header(name, value) => {
                self.regular_seen = true;
                if !allowed(&name, &value) {
                    return Err("a connection-specific field");
                }
                if name == CONTENT_LENGTH {
                    self.length.add(&value);
                }
                if self.headers.try_append(name, value).is_err() {
                    self.size = usize::MAX;
                }
                Ok(())
            }
        }
    }

    fn refusal(&self) -> Option<Refusal> {
        if self.size > self.max_size {
            return Some(Refusal::TooLarge);
        }
        self.malformed.map(Refusal::Malformed)
    }

    /// The response head, or why it is refused.
    pub fn finish(self) -> Result<Head, Refusal> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let status = self.status.ok_or(Refusal::Malformed("no :status"))?;
        let status = parse_status(&status).ok_or(Refusal::Malformed("an invalid :status"))?;
        let content_length = self.length.get().map_err(Refusal::Malformed)?;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        Ok(Head {
            parts,
            content_length,
        })
    }

    /// The section as trailers: no pseudo-header.
    pub fn finish_trailers(self) -> Result<HeaderMap, Refusal> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        match self.status {
            Some(_) => Err(Refusal::Malformed("a pseudo-header in trailers")),
            None => Ok(self.headers),
        }
    }
}

/// Three digits, 100 to 999 (RFC 9110, section 15).
fn parse_status(value: &HeaderValue) -> Option<StatusCode> {
    let raw = value.as_bytes();
    if raw.len() != 3 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    StatusCode::from_bytes(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn header(name: &str, value: &str) -> Field {
        Field::Header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        )
    }

    fn status(value: &str) -> Field {
        Field::Pseudo(Pseudo::Status, HeaderValue::from_str(value).unwrap())
    }

    fn build(fields: Vec<Field>) -> Result<Head, Refusal> {
        let mut b = HeadBuilder::new(1024);
        for f in fields {
            b.field(f, 40);
        }
        b.finish()
    }

    #[test]
    fn a_status_and_fields_make_a_head() {
        let head = build(vec![
            status("200"),
            header("content-type", "application/grpc"),
            header("content-length", "5"),
        ])
        .unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.version, Version::HTTP_2);
        assert_eq!(head.parts.headers["content-type"], "application/grpc");
        assert_eq!(head.content_length, Some(5));
    }

    #[test]
    fn malformed_heads_are_refused_with_their_reason() {
        let cases = [
            (vec![header("a", "b")], "no :status"),
            (vec![status("20")], "an invalid :status"),
            (vec![status("099")], "an invalid :status"),
            (vec![status("200"), status("200")], ":status twice"),
            (
                vec![header("a", "b"), status("200")],
                "a pseudo-header after a regular field",
            ),
            (
                vec![
                    status("200"),
                    Field::Pseudo(Pseudo::Path, HeaderValue::from_static("/")),
                ],
                "a request pseudo-header in a response",
            ),
            (
                vec![status("200"), header("connection", "close")],
                "a connection-specific field",
            ),
            (
                vec![status("200"), header("transfer-encoding", "chunked")],
                "a connection-specific field",
            ),
            (
                vec![
                    status("200"),
                    header("content-length", "1"),
                    header("content-length", "2"),
                ],
                "content-length fields that differ",
            ),
            (
                vec![status("200"), Field::Malformed],
                "a field's name or value is not allowed",
            ),
        ];
        for (fields, why) in cases {
            assert_eq!(build(fields).unwrap_err(), Refusal::Malformed(why), "{why}");
        }
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let mut b = HeadBuilder::new(100);
        b.field(status("200"), 40);
        b.field(header("a", "b"), 40);
        b.field(header("c", "d"), 40);
        assert_eq!(b.finish().unwrap_err(), Refusal::TooLarge);
    }

    #[test]
    fn trailers_take_no_pseudo_header() {
        let mut b = HeadBuilder::new(1024);
        b.field(header("grpc-status", "0"), 40);
        assert_eq!(b.finish_trailers().unwrap()["grpc-status"], "0");
        let mut b = HeadBuilder::new(1024);
        b.field(status("200"), 40);
        assert_eq!(
            b.finish_trailers().unwrap_err(),
            Refusal::Malformed("a pseudo-header in trailers")
        );
    }
}
