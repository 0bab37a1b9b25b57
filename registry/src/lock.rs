//! Locks and ACME challenge answers kept in the registry (`/v1/locks/{name}`,
//! `/v1/challenges/{token}`): what is written, stored and answered.
//!
//! A lock lets one of several gateways do a job alone (ordering a
//! certificate from an ACME CA). Its record holds the holder and the time it
//! lapses, written into the value itself, so a holder that dies lets go by
//! itself when that time passes: no sweeper, no store lease, and the same
//! rule on the embedded store and on etcd (where the registry replica that
//! wrote it may be gone too). Taking and renewing are compare-and-swap on
//! the record's revision (see `catalog::locks`).
//!
//! A challenge answer is the key authorization an ACME CA checks (fetched
//! over HTTP-01, or hashed into the certificate of a TLS-ALPN-01
//! handshake), published by the gateway that orders so any gateway the CA
//! reaches can answer it. It lapses the same way, and lapsed answers are
//! removed when the next one is published.
//!
//! Always built: the SDK's calls and the registry's handlers share these
//! types.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Invalid;

/// Registry certificates a `gateway` token may write: the ones gateways
/// order from an ACME CA for the fleet (`acme-<first domain>`).
pub const ACME_CERTIFICATE_PREFIX: &str = "acme-";
/// The code of every refusal of a lock or challenge body or name (answered 400).
pub const INVALID_LOCK: &str = "invalid_lock";
/// Shortest lock or challenge TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lock or challenge TTL: a holder renews well before it.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest lock name (`acme:` and a few sorted DNS names fit).
pub const MAX_NAME: usize = 512;
/// Longest holder.
pub const MAX_HOLDER: usize = 128;
/// Longest challenge token (ACME's are 43 base64url characters).
pub const MAX_TOKEN: usize = 256;
/// Longest key authorization (token, `.`, a 43-character thumbprint).
pub const MAX_KEY_AUTHORIZATION: usize = 512;

fn refuse(field: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid {
        field: Some(field.to_string()),
        reason: format!("{field}: {reason}"),
        code: INVALID_LOCK,
    }
}

/// The body of `PUT /v1/locks/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSpec {
    /// Who takes it: any stable id of the taker (see [`validate_holder`]).
    pub holder: String,
    /// How long it is held unless renewed (`"30s"`), 1s to 1h.
    pub ttl: Duration,
}

/// The body of `PUT /v1/challenges/{token}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeSpec {
    /// The key authorization answered for the token (`TOKEN.THUMBPRINT`).
    pub key_authorization: String,
    /// How long it is answered unless deleted first, 1s to 1h.
    pub ttl: Duration,
}

/// A lock as stored and answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The lock's name.
    pub name: String,
    /// Who holds (or last held) it.
    pub holder: String,
    /// Unix milliseconds at which it lapses unless renewed.
    pub expires_unix_ms: u64,
    /// Revision of the last write (stamped when read).
    #[serde(default)]
    pub revision: u64,
}

impl Lock {
    /// Whether it still holds at `now_ms`.
    pub fn held_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_unix_ms
    }
}

/// A challenge answer as stored and answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The token the CA asks for.
    pub token: String,
    /// What is answered.
    pub key_authorization: String,
    /// Unix milliseconds after which it is no longer answered.
    pub expires_unix_ms: u64,
}

/// Reads a JSON object of string fields, refusing unknown ones, naming the
/// field at fault.
fn object(
    body: &[u8],
    known: &[&str],
) -> Result<serde_json::Map<String, serde_json::Value>, Invalid> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Invalid::malformed("body must be a JSON object"));
    }
    crate::model::reject_duplicate_keys(body)?;
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| Invalid::malformed(format!("body is not valid JSON: {e}")))?;
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Invalid::unknown_field(unknown));
    }
    Ok(object)
}

fn text<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'a str, Invalid> {
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(refuse(field, "must be a string")),
        None => Err(refuse(field, "is missing")),
    }
}

fn ttl(object: &serde_json::Map<String, serde_json::Value>) -> Result<Duration, Invalid> {
    let ttl = humantime::parse_duration(text(object, "ttl")?)
        .map_err(|e| refuse("ttl", format!("not a duration like \"30s\": {e}")))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(refuse("ttl", "must be between 1s and 1h"));
    }
    Ok(ttl)
}

impl LockSpec {
    /// Parses `{"holder": "...", "ttl": "30s"}`.
    pub fn from_json(body: &[u8]) -> Result<LockSpec, Invalid> {
        let object = object(body, &["holder", "ttl"])?;
        let holder = text(&object, "holder")?;
        validate_holder(holder)?;
        Ok(LockSpec {
            holder: holder.to_string(),
            ttl: ttl(&object)?,
        })
    }
}

impl ChallengeSpec {
    /// Parses `{"key_authorization": "...", "ttl": "5m"}` for `token`: the
    /// key authorization must be `TOKEN.THUMBPRINT` (RFC 8555 §8.1), with
    /// the URL's token for HTTP-01. A TLS-ALPN-01 answer is stored under
    /// the name ([`alpn_token`]), so its ACME token can only be checked
    /// for its form.
    pub fn from_json(token: &str, body: &[u8]) -> Result<ChallengeSpec, Invalid> {
        let object = object(body, &["key_authorization", "ttl"])?;
        let key_authorization = text(&object, "key_authorization")?;
        let thumbprint = match token.starts_with(ALPN_TOKEN_PREFIX) {
            true => key_authorization
                .split_once('.')
                .filter(|(t, _)| !t.is_empty() && t.bytes().all(is_base64url))
                .map(|(_, rest)| rest),
            false => key_authorization
                .strip_prefix(token)
                .and_then(|rest| rest.strip_prefix('.')),
        };
        match thumbprint {
            _ if key_authorization.len() > MAX_KEY_AUTHORIZATION => {
                return Err(refuse(
                    "key_authorization",
                    format!("longer than {MAX_KEY_AUTHORIZATION} bytes"),
                ));
            }
            Some(t) if !t.is_empty() && t.bytes().all(is_base64url) => {}
            _ => {
                return Err(refuse(
                    "key_authorization",
                    "must be the token (the URL's, for HTTP-01), '.', and a base64url thumbprint",
                ));
            }
        }
        Ok(ChallengeSpec {
            key_authorization: key_authorization.to_string(),
            ttl: ttl(&object)?,
        })
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A lock name: 1 to 512 of `[A-Za-z0-9._:,*-]` (`acme:a.example,b.example`).
pub fn validate_lock_name(name: &str) -> Result<(), Invalid> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._:,*-".contains(&b);
    if name.is_empty() || name.len() > MAX_NAME || !name.bytes().all(ok) {
        return Err(refuse(
            "name",
            format!("must be 1 to {MAX_NAME} of A-Z a-z 0-9 . _ : , * -"),
        ));
    }
    Ok(())
}

/// A holder: 1 to 128 of `[A-Za-z0-9._:@-]`, so it goes in a query string
/// (`DELETE ...?holder=`) as it is.
pub fn validate_holder(holder: &str) -> Result<(), Invalid> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._:@-".contains(&b);
    if holder.is_empty() || holder.len() > MAX_HOLDER || !holder.bytes().all(ok) {
        return Err(refuse(
            "holder",
            format!("must be 1 to {MAX_HOLDER} of A-Z a-z 0-9 . _ : @ -"),
        ));
    }
    Ok(())
}

/// A challenge token: 1 to 256 base64url characters (an HTTP-01 token,
/// RFC 8555 §8.3), or [`ALPN_TOKEN_PREFIX`] and a DNS name (a TLS-ALPN-01
/// answer, see [`alpn_token`]).
pub fn validate_token(token: &str) -> Result<(), Invalid> {
    let ok = match token.strip_prefix(ALPN_TOKEN_PREFIX) {
        Some(name) => is_dns_name(name),
        None => !token.is_empty() && token.bytes().all(is_base64url),
    };
    if !ok || token.len() > MAX_TOKEN {
        return Err(refuse(
            "token",
            format!(
                "must be 1 to {MAX_TOKEN} base64url characters, or {ALPN_TOKEN_PREFIX} and a DNS name"
            ),
        ));
    }
    Ok(())
}

/// What a TLS-ALPN-01 answer's token starts with. The CA's validation
/// handshake names the domain (SNI), not the token, so the answer is
/// stored under the name. A dot is never in an HTTP-01 token (base64url),
/// so the two kinds cannot collide.
pub const ALPN_TOKEN_PREFIX: &str = "tls-alpn-01.";

/// The token a TLS-ALPN-01 answer for `name` is stored under (the name in
/// lower case: SNI is case-insensitive).
pub fn alpn_token(name: &str) -> String {
    format!("{ALPN_TOKEN_PREFIX}{}", name.to_ascii_lowercase())
}

/// Labels of letters, digits and `-`, joined by single dots.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_bodies_are_refused_by_field() {
        let field = |body: &str| LockSpec::from_json(body.as_bytes()).unwrap_err().field;
        assert_eq!(field(r#"{"ttl": "3s"}"#).as_deref(), Some("holder"));
        assert_eq!(field(r#"{"holder": "a"}"#).as_deref(), Some("ttl"));
        assert_eq!(
            field(r#"{"holder": "a b", "ttl": "3s"}"#).as_deref(),
            Some("holder")
        );
        assert_eq!(
            field(r#"{"holder": "a", "ttl": "2h"}"#).as_deref(),
            Some("ttl")
        );
        assert_eq!(
            field(r#"{"holder": "a", "ttl": 3}"#).as_deref(),
            Some("ttl")
        );
        assert_eq!(
            field(r#"{"holder": "a", "ttl": "3s", "x": 1}"#).as_deref(),
            Some("x")
        );
        let spec = LockSpec::from_json(br#"{"holder": "gw-1", "ttl": "3s"}"#).unwrap();
        assert_eq!(spec.ttl, Duration::from_secs(3));
    }

    #[test]
    fn challenge_bodies_must_answer_their_token() {
        let ok =
            ChallengeSpec::from_json("tok", br#"{"key_authorization": "tok.th-1_", "ttl": "1m"}"#);
        assert!(ok.is_ok());
        for bad in [
            r#"{"key_authorization": "other.th", "ttl": "1m"}"#,
            r#"{"key_authorization": "tok.", "ttl": "1m"}"#,
            r#"{"key_authorization": "tok.t h", "ttl": "1m"}"#,
        ] {
            let e = ChallengeSpec::from_json("tok", bad.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("key_authorization"), "{bad}");
        }
        assert!(validate_token("abc-_9").is_ok());
        assert!(validate_token("a/b").is_err());
        assert!(
            validate_token("a.b").is_err(),
            "a dot only after the ALPN prefix"
        );
        assert!(validate_token(&alpn_token("Api.Example.COM")).is_ok());
        assert_eq!(alpn_token("Api.Example.COM"), "tls-alpn-01.api.example.com");
        for bad in ["", ".", "a..b", "a.", "a_b", "*.a"] {
            assert!(
                validate_token(&format!("{ALPN_TOKEN_PREFIX}{bad}")).is_err(),
                "{bad}"
            );
        }
        assert!(validate_lock_name("acme:a.example,b.example").is_ok());
        assert!(validate_lock_name("a/b").is_err());
    }
}
