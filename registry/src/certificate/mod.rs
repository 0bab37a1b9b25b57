//! Certificates kept in the registry (`/v1/certificates/{name}`): what is
//! written, what is stored, and what readers see.
//!
//! A certificate is written as a PEM chain and its key ([`CertificateSpec`]),
//! checked by [`load`] (the very code the gateway loads its `--tls-cert`
//! files with), and stored whole as a [`Certificate`]: the PEM plus the
//! [`CertificateSummary`] computed once at write time (names, expiry,
//! fingerprint), so a listing needs no parsing.
//!
//! The key is the one secret the registry keeps. It leaves the registry
//! only on the watch stream, and only to a watcher whose token may hold key
//! material ([`Certificate::without_pem`] strips it for everyone else); no
//! `GET` ever returns it, and `Debug` never prints it, so no log line can.

#[cfg(feature = "tls")]
pub mod load;
#[cfg(feature = "tls")]
pub mod trust;

use crate::model::Invalid;

// The stored and watched forms live in `model`, beside the watch events
// that carry them.
pub use crate::model::{Certificate, CertificateSummary};

/// The body of `PUT /v1/certificates/{name}`.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// The PEM chain, leaf first.
    pub cert_pem: String,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl std::fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSpec").finish_non_exhaustive()
    }
}

/// The code of every refusal of a certificate body or name (answered 400).
pub const INVALID_CERTIFICATE: &str = "invalid_certificate";

fn refuse(field: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid {
        field: Some(field.to_string()),
        reason: format!("{field}: {reason}"),
        code: INVALID_CERTIFICATE,
    }
}

impl CertificateSpec {
    /// Parses the JSON body `{"cert_pem": "...", "key_pem": "..."}`, naming
    /// the field at fault. Read by hand: two string fields need no more, and
    /// serde's messages could quote the value (the key) back.
    pub fn from_json(body: &[u8]) -> Result<CertificateSpec, Invalid> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Invalid::malformed("body must be a JSON object"));
        }
        crate::model::reject_duplicate_keys(body)?;
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| Invalid::malformed(format!("body is not valid JSON: {e}")))?;
        if let Some(unknown) = object.keys().find(|k| *k != "cert_pem" && *k != "key_pem") {
            return Err(Invalid::unknown_field(unknown));
        }
        let text = |field: &str| match object.get(field) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(serde_json::Value::String(_)) => Err(refuse(field, "is empty")),
            Some(_) => Err(refuse(field, "must be a string of PEM text")),
            None => Err(refuse(field, "is missing")),
        };
        Ok(CertificateSpec {
            cert_pem: text("cert_pem")?,
            key_pem: text("key_pem")?,
        })
    }
}

/// A certificate name: the route name rule (1 to 128 of `[A-Za-z0-9-_.:]`,
/// so `example.com` or `acme:example.com` work), not `.` nor `..`.
pub fn validate_certificate_name(name: &str) -> Result<(), Invalid> {
    crate::route::validate_route_name(name).map_err(|reason| refuse("name", reason))?;
    if crate::model::is_dot_segment(name) {
        return Err(refuse("name", crate::model::DOT_SEGMENT_REASON));
    }
    Ok(())
}

/// Unix seconds as RFC 3339 (UTC, whole seconds); times before 1970 (no
/// real certificate) as the epoch.
pub fn rfc3339(unix_s: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_s.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_refused_by_field() {
        let field = |body: &str| {
            CertificateSpec::from_json(body.as_bytes())
                .unwrap_err()
                .field
        };
        assert_eq!(field(r#"{"key_pem": "k"}"#).as_deref(), Some("cert_pem"));
        assert_eq!(field(r#"{"cert_pem": "c"}"#).as_deref(), Some("key_pem"));
        assert_eq!(
            field(r#"{"cert_pem": "c", "key_pem": 3}"#).as_deref(),
            Some("key_pem")
        );
        assert_eq!(
            field(r#"{"cert_pem": "c", "key_pem": "k", "x": 1}"#).as_deref(),
            Some("x")
        );
        assert!(CertificateSpec::from_json(br#"{"cert_pem": "c", "key_pem": "k"}"#).is_ok());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let spec = CertificateSpec {
            cert_pem: "CHAIN".into(),
            key_pem: "SECRET".into(),
        };
        assert!(!format!("{spec:?}").contains("SECRET"));
        let cert = Certificate {
            summary: CertificateSummary {
                name: "a".into(),
                names: vec![],
                not_after: rfc3339(0),
                not_after_unix: 0,
                fingerprint_sha256: String::new(),
                revision: 0,
            },
            cert_pem: Some("CHAIN".into()),
            key_pem: Some("SECRET".into()),
        };
        assert!(!format!("{cert:?}").contains("SECRET"));
        let stripped = serde_json::to_string(&cert.without_pem()).unwrap();
        assert!(
            !stripped.contains("SECRET") && !stripped.contains("pem"),
            "{stripped}"
        );
    }
}
