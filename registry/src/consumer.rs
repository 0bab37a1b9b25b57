//! Consumers (`/v1/consumers/{name}`): who may call the routes that ask
//! for an API key, and the keys they call with.
//!
//! A consumer is written as `{"api_keys": ["..."], "metadata": {...}}`
//! ([`ConsumerSpec`]) and stored as a [`Consumer`]: its name, metadata, and
//! the SHA-256 of each key, never the key itself. Gateways receive the
//! hashes over the watch stream and hash each presented key to look it up.
//!
//! Why a plain SHA-256 and not a password hash (bcrypt, argon2): an API key
//! is a long random secret, not a human password. Its entropy, not the
//! cost of the hash, is what makes guessing hopeless (a 16-character key of
//! base64 alphabet is 96 bits), so a slow hash would add nothing against a
//! stolen table while costing every request milliseconds of CPU. A fast,
//! unsalted hash also lets a gateway find the consumer in one map lookup.
//! [`MIN_KEY_LEN`] is what keeps that argument true: short, guessable keys
//! are refused.
//!
//! A key never leaves the registry: no `GET` returns it or its hash (only
//! how many there are), `Debug` of a spec never prints it, and refusals name
//! the field (`api_keys[2]`), not the value. The hashes travel on the watch
//! stream only to watchers allowed to hold key material, like certificate
//! keys ([`crate::model::WatchEvent::without_keys`]).

use std::collections::BTreeMap;

use crate::model::Invalid;

pub use crate::model::{Consumer, ConsumerSummary};

/// Shortest API key accepted: 16 characters, at least 96 bits for a key
/// drawn from a base64 alphabet (see the module note: the key's entropy is
/// what makes a fast hash safe).
pub const MIN_KEY_LEN: usize = 16;
/// Longest API key accepted (it travels in a header or a query string).
pub const MAX_KEY_LEN: usize = 256;
/// Most keys per consumer (room to rotate: add the new, then drop the old).
pub const MAX_KEYS: usize = 16;
/// Most metadata entries per consumer.
pub const MAX_METADATA: usize = 32;
/// Longest metadata key.
pub const MAX_METADATA_KEY: usize = 64;
/// Longest metadata value.
pub const MAX_METADATA_VALUE: usize = 1024;

/// The code of every refusal of a consumer body or name (answered 400).
pub const INVALID_CONSUMER: &str = "invalid_consumer";
/// The code of a key already held by another consumer (answered 409).
pub const CONSUMER_CONFLICT: &str = "consumer_conflict";

/// The body of `PUT /v1/consumers/{name}`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConsumerSpec {
    /// The API keys, in clear (hashed before they are stored).
    pub api_keys: Vec<String>,
    /// Free-form metadata, returned by `GET`.
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for ConsumerSpec {
    /// Never the keys: a spec may end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("api_keys", &self.api_keys.len())
            .field("metadata", &self.metadata)
            .finish()
    }
}

fn refuse(field: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid {
        field: Some(field.to_string()),
        reason: format!("{field}: {reason}"),
        code: INVALID_CONSUMER,
    }
}

impl ConsumerSpec {
    /// Parses and checks the JSON body, naming the field at fault. Read by
    /// hand rather than with serde: serde's messages may quote a value,
    /// and the value here is a key.
    pub fn from_json(body: &[u8]) -> Result<ConsumerSpec, Invalid> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Invalid::malformed("body must be a JSON object"));
        }
        crate::model::reject_duplicate_keys(body)?;
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|_| Invalid::malformed("body is not valid JSON"))?;
        if let Some(unknown) = object.keys().find(|k| *k != "api_keys" && *k != "metadata") {
            return Err(Invalid::unknown_field(unknown));
        }
        let spec = ConsumerSpec {
            api_keys: api_keys(object.get("api_keys"))?,
            metadata: metadata(object.get("metadata"))?,
        };
        Ok(spec)
    }
}

fn api_keys(value: Option<&serde_json::Value>) -> Result<Vec<String>, Invalid> {
    let list = match value {
        None => return Ok(Vec::new()),
        Some(serde_json::Value::Array(list)) => list,
        Some(_) => return Err(refuse("api_keys", "must be an array of strings")),
    };
    if list.len() > MAX_KEYS {
        return Err(refuse("api_keys", format!("at most {MAX_KEYS} keys")));
    }
    let mut keys: Vec<String> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let field = format!("api_keys[{i}]");
        let serde_json::Value::String(key) = v else {
            return Err(refuse(&field, "must be a string"));
        };
        check_key(key).map_err(|reason| refuse(&field, reason))?;
        if keys.contains(key) {
            return Err(refuse(&field, "repeats an earlier key"));
        }
        keys.push(key.clone());
    }
    Ok(keys)
}

/// An API key: [`MIN_KEY_LEN`]..=[`MAX_KEY_LEN`] visible ASCII characters
/// (it must fit a header and a query string unchanged).
fn check_key(key: &str) -> Result<(), String> {
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
        return Err(format!(
            "must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters long (it is {})",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters only (no spaces)".into());
    }
    Ok(())
}

fn metadata(value: Option<&serde_json::Value>) -> Result<BTreeMap<String, String>, Invalid> {
    let map = match value {
        None => return Ok(BTreeMap::new()),
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => return Err(refuse("metadata", "must be an object of strings")),
    };
    if map.len() > MAX_METADATA {
        return Err(refuse(
            "metadata",
            format!("at most {MAX_METADATA} entries"),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let field = format!("metadata.{k}");
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return Err(refuse(
                &field,
                format!("a key is 1 to {MAX_METADATA_KEY} characters"),
            ));
        }
        match v {
            serde_json::Value::String(s) if s.len() <= MAX_METADATA_VALUE => {
                out.insert(k.clone(), s.clone());
            }
            serde_json::Value::String(_) => {
                return Err(refuse(
                    &field,
                    format!("at most {MAX_METADATA_VALUE} characters"),
                ));
            }
            _ => return Err(refuse(&field, "must be a string")),
        }
    }
    Ok(out)
}

/// A consumer name: the route name rule (1 to 128 of `[A-Za-z0-9-_.:]`),
/// not `.` nor `..`. It is passed upstream in a header, which this keeps
/// valid.
pub fn validate_consumer_name(name: &str) -> Result<(), Invalid> {
    crate::route::validate_route_name(name).map_err(|reason| refuse("name", reason))?;
    if crate::model::is_dot_segment(name) {
        return Err(refuse("name", crate::model::DOT_SEGMENT_REASON));
    }
    Ok(())
}

/// SHA-256 of an API key: what the registry stores and a gateway looks up.
#[cfg(feature = "tls")]
pub fn api_key_hash(key: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    digest
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// Decodes 64 lowercase (or uppercase) hex characters into a hash.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

impl Consumer {
    /// The stored form of `spec` under `name`: each key replaced by its hash.
    #[cfg(feature = "tls")]
    pub fn from_spec(name: &str, spec: ConsumerSpec) -> Consumer {
        Consumer {
            name: name.to_string(),
            api_key_sha256: spec
                .api_keys
                .iter()
                .map(|k| hex(&api_key_hash(k.as_bytes())))
                .collect(),
            metadata: spec.metadata,
            revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<String> {
        ConsumerSpec::from_json(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn bodies_are_refused_by_field_without_quoting_keys() {
        assert_eq!(
            field(r#"{"api_keys": ["short"]}"#).as_deref(),
            Some("api_keys[0]")
        );
        assert_eq!(
            field(r#"{"api_keys": ["0123456789abcdef", "with space 0123456"]}"#).as_deref(),
            Some("api_keys[1]")
        );
        assert_eq!(
            field(r#"{"api_keys": ["0123456789abcdef", "0123456789abcdef"]}"#).as_deref(),
            Some("api_keys[1]")
        );
        assert_eq!(field(r#"{"api_keys": "k"}"#).as_deref(), Some("api_keys"));
        assert_eq!(
            field(r#"{"metadata": {"a": 1}}"#).as_deref(),
            Some("metadata.a")
        );
        assert_eq!(field(r#"{"keys": []}"#).as_deref(), Some("keys"));
        let e = ConsumerSpec::from_json(br#"{"api_keys": ["secret-but-short"]}"#);
        // 16 characters: accepted.
        assert!(e.is_ok());
        let e = ConsumerSpec::from_json(br#"{"api_keys": ["tooshort-secret"]}"#).unwrap_err();
        assert!(!e.reason.contains("tooshort-secret"), "{}", e.reason);
    }

    #[test]
    fn watchers_without_key_access_get_no_hashes() {
        use crate::model::WatchEvent;
        let spec = ConsumerSpec::from_json(br#"{"api_keys": ["key-0123456789abcdef"]}"#).unwrap();
        let consumer = Consumer::from_spec("alice", spec);
        let put = WatchEvent::ConsumerPut {
            revision: 3,
            consumer: Box::new(consumer.clone()),
        };
        let snapshot = WatchEvent::Snapshot {
            revision: 3,
            instances: vec![],
            routes: vec![],
            certificates: vec![],
            consumers: vec![consumer],
            gateways: vec![],
        };
        for event in [put, snapshot] {
            let full = serde_json::to_string(&event).unwrap();
            assert!(full.contains("api_key_sha256"), "{full}");
            let stripped = serde_json::to_string(&event.without_keys()).unwrap();
            assert!(!stripped.contains("api_key_sha256"), "{stripped}");
            assert!(stripped.contains("alice"), "{stripped}");
        }
    }

    #[test]
    fn only_hashes_are_stored() {
        let spec = ConsumerSpec::from_json(br#"{"api_keys": ["key-0123456789abcdef"]}"#).unwrap();
        assert!(!format!("{spec:?}").contains("key-0123"));
        let c = Consumer::from_spec("alice", spec);
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("key-0123"), "{json}");
        let h = parse_hash(&c.api_key_sha256[0]).unwrap();
        assert_eq!(h, api_key_hash(b"key-0123456789abcdef"));
    }
}
