//! The `compression` filter's settings, checked.
//!
//! What is compressed, and why these defaults (docs/configuration.md says
//! the same for operators):
//! - `encodings`: zstd, br and gzip, the three browsers and HTTP clients
//!   send in `Accept-Encoding`. The client's q-values decide; the list's
//!   order breaks ties (the first listed wins).
//! - `min_size` 1 KiB: below it a compressed response saves less than its
//!   own framing and the CPU spent (Traefik's default too). A response
//!   whose size is not known in advance is compressed.
//! - `content_types`: text that compresses well. `text/event-stream` and
//!   gRPC are never compressed, whatever the list says: a compressor holds
//!   bytes back, and a stream of events must not wait for the next one.
//! - `level` `default` (4 for every encoding): on-the-fly compression
//!   spends CPU per response, and level 4 keeps most of the size gain at a
//!   fraction of the CPU of the best levels (br's best, 11, is for files
//!   compressed once).

use super::{FilterSpec, Refusal};

/// Default `min_size`, in bytes.
pub const DEFAULT_MIN_SIZE: u64 = 1024;
/// Most `content_types` entries.
pub const MAX_CONTENT_TYPES: usize = 64;
/// Default `content_types`.
pub const DEFAULT_CONTENT_TYPES: [&str; 7] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/wasm",
    "image/svg+xml",
    "application/problem+json",
];

/// A content coding the gateway can compress with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `zstd` (RFC 8878).
    Zstd,
    /// `br` (RFC 7932).
    Brotli,
    /// `gzip`.
    Gzip,
}

impl Encoding {
    /// The name in `Accept-Encoding` / `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// How hard to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Each encoding's fastest.
    Fastest,
    /// Level 4 of every encoding (see the module docs).
    Default,
    /// Each encoding's best (slow: for responses that are few or cached).
    Best,
}

/// A checked `compression`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// The encodings offered, in order of preference.
    pub encodings: Vec<Encoding>,
    /// Responses with a known size below this are sent as they are.
    pub min_size: u64,
    /// Media types compressed: `type/subtype` or `type/*`, lower case.
    pub content_types: Vec<String>,
    /// How hard.
    pub level: Level,
}

impl Compression {
    /// Whether a response of `content_type` is compressed (parameters such
    /// as `; charset=utf-8` ignored, case-insensitive).
    pub fn compresses(&self, content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "text/event-stream" || essence.starts_with("application/grpc") {
            return false;
        }
        self.content_types
            .iter()
            .any(|pattern| match pattern.strip_suffix("/*") {
                Some(top) => essence
                    .strip_prefix(top)
                    .is_some_and(|rest| rest.starts_with('/')),
                None => *pattern == essence,
            })
    }
}

pub(super) fn compile_compression(spec: &FilterSpec) -> Result<Compression, Refusal> {
    let encodings = match &spec.encodings {
        None => vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
        Some(list) if list.is_empty() => {
            return Err(("encodings", "lists at least one encoding".into()));
        }
        Some(list) => {
            let mut out = Vec::new();
            for name in list {
                let e = match name.as_str() {
                    "zstd" => Encoding::Zstd,
                    "br" => Encoding::Brotli,
                    "gzip" => Encoding::Gzip,
                    other => {
                        return Err((
                            "encodings",
                            format!("{other:?} is not an encoding (zstd, br, gzip)"),
                        ));
                    }
                };
                if out.contains(&e) {
                    return Err(("encodings", format!("{name:?} is listed twice")));
                }
                out.push(e);
            }
            out
        }
    };
    let content_types = match &spec.content_types {
        None => DEFAULT_CONTENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(list) => content_types(list)?,
    };
    let level = match spec.level.as_deref() {
        None | Some("default") => Level::Default,
        Some("fastest") => Level::Fastest,
        Some("best") => Level::Best,
        Some(other) => {
            return Err((
                "level",
                format!("{other:?} is not a level (fastest, default, best)"),
            ));
        }
    };
    Ok(Compression {
        encodings,
        min_size: spec.min_size.unwrap_or(DEFAULT_MIN_SIZE),
        content_types,
        level,
    })
}

fn content_types(list: &[String]) -> Result<Vec<String>, Refusal> {
    if list.is_empty() || list.len() > MAX_CONTENT_TYPES {
        return Err((
            "content_types",
            format!("lists 1 to {MAX_CONTENT_TYPES} media types"),
        ));
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    list.iter()
        .map(|t| {
            let lower = t.to_ascii_lowercase();
            match lower.split_once('/') {
                Some((top, sub)) if token(top) && (sub == "*" || token(sub)) => Ok(lower),
                _ => Err((
                    "content_types",
                    format!("{t:?} is not a media type (type/subtype or type/*)"),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FilterSpec {
        FilterSpec {
            kind: "compression".into(),
            ..FilterSpec::default()
        }
    }

    #[test]
    fn defaults_compress_text_but_never_event_streams_or_grpc() {
        let c = compile_compression(&spec()).unwrap();
        assert_eq!(c.min_size, DEFAULT_MIN_SIZE);
        assert_eq!(c.level, Level::Default);
        assert!(c.compresses("text/html; charset=utf-8"));
        assert!(c.compresses("Application/JSON"));
        assert!(!c.compresses("image/png"));
        assert!(!c.compresses("text/event-stream"));
        assert!(!c.compresses("application/grpc+proto"));
        assert!(!c.compresses("textual/plain"), "text/* is a whole type");
    }

    #[test]
    fn mistakes_are_refused_by_field() {
        let field = |s: FilterSpec| compile_compression(&s).unwrap_err().0;
        let mut s = spec();
        s.encodings = Some(vec!["deflate".into()]);
        assert_eq!(field(s), "encodings");
        let mut s = spec();
        s.encodings = Some(vec!["gzip".into(), "gzip".into()]);
        assert_eq!(field(s), "encodings");
        let mut s = spec();
        s.content_types = Some(vec!["json".into()]);
        assert_eq!(field(s), "content_types");
        let mut s = spec();
        s.level = Some("max".into());
        assert_eq!(field(s), "level");
    }
}
