//! Checking the authentication filters that keep their credentials on the
//! route: `basic_auth` (bcrypt password hashes), and the one that asks a
//! service instead: `forward_auth`.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;

use super::{FilterSpec, Refusal, compile_consumer_header, header_name};

/// Most users of one `basic_auth` filter.
pub const MAX_BASIC_USERS: usize = 1024;
/// Cheapest bcrypt cost accepted: 5, the default of `htpasswd -B`.
pub const MIN_BCRYPT_COST: u32 = 5;
/// Dearest bcrypt cost accepted: 14 (about a second of CPU per uncached
/// check on a server core; beyond it, a wrong password would be a cheap
/// way to make the gateway burn CPU).
pub const MAX_BCRYPT_COST: u32 = 14;
/// Default `realm` of a `basic_auth` challenge.
pub const DEFAULT_REALM: &str = "portico";

/// A checked `basic_auth`.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// User name and bcrypt hash, by name.
    pub users: BTreeMap<String, String>,
    /// The realm named in `WWW-Authenticate`.
    pub realm: String,
    /// The header naming the user upstream.
    pub consumer_header: http::HeaderName,
    /// The hashes were withheld from this reader: every request is refused.
    pub withheld: bool,
}

impl std::fmt::Debug for BasicAuth {
    /// User names only: a hash is what an offline guesser needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("realm", &self.realm)
            .field("consumer_header", &self.consumer_header)
            .field("withheld", &self.withheld)
            .finish()
    }
}

pub(super) fn compile_basic_auth(spec: &FilterSpec) -> Result<BasicAuth, Refusal> {
    let withheld = spec.secret_withheld == Some(true);
    let users = spec.users.as_ref().ok_or((
        "users",
        "is required: { name = \"<bcrypt hash>\" }".to_string(),
    ))?;
    if users.is_empty() || users.len() > MAX_BASIC_USERS {
        return Err(("users", format!("give 1 to {MAX_BASIC_USERS} users")));
    }
    for (name, hash) in users {
        let valid_name = (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !valid_name {
            return Err((
                "users",
                format!("{name:?} is not a user name (1 to 128 of [A-Za-z0-9-_.@])"),
            ));
        }
        if !withheld {
            check_bcrypt(hash).map_err(|r| ("users", format!("{name:?}: {r}")))?;
        }
    }
    let realm = spec.realm.clone().unwrap_or_else(|| DEFAULT_REALM.into());
    let printable = realm
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if realm.is_empty() || realm.len() > 64 || !printable {
        return Err((
            "realm",
            "1 to 64 printable ASCII characters, without '\"' or '\\'".into(),
        ));
    }
    Ok(BasicAuth {
        users: users.clone(),
        realm,
        consumer_header: compile_consumer_header(spec)?,
        withheld,
    })
}

/// Accepts a bcrypt hash (`$2a$`, `$2b$` or `$2y$`, as `htpasswd -B`
/// writes) within the cost bounds; names what anything else looks like,
/// so an operator who pasted an MD5 `htpasswd` line knows why.
fn check_bcrypt(hash: &str) -> Result<(), String> {
    let weak = [
        ("$apr1$", "an Apache MD5 hash"),
        ("$1$", "an MD5-crypt hash"),
        ("{SHA}", "a SHA-1 hash"),
        ("$5$", "a SHA-256-crypt hash"),
        ("$6$", "a SHA-512-crypt hash"),
        ("$argon2", "an Argon2 hash"),
    ];
    let give = "give a bcrypt hash (htpasswd -nB USER)";
    if let Some((_, what)) = weak.iter().find(|(p, _)| hash.starts_with(p)) {
        return Err(format!("{what} is not accepted: {give}"));
    }
    let parts: Vec<&str> = hash.split('$').collect();
    let shaped = parts.len() == 4
        && parts[0].is_empty()
        && matches!(parts[1], "2a" | "2b" | "2y")
        && parts[2].len() == 2
        && parts[3].len() == 53
        && parts[3]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if !shaped {
        return Err(format!(
            "not a bcrypt hash (plaintext is never accepted): {give}"
        ));
    }
    let cost: u32 = parts[2]
        .parse()
        .map_err(|_| format!("bad bcrypt cost: {give}"))?;
    if !(MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is not within {MIN_BCRYPT_COST}..={MAX_BCRYPT_COST}"
        ));
    }
    Ok(())
}

/// Default `timeout` of a `forward_auth` filter.
pub const DEFAULT_FORWARD_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `timeout` of a `forward_auth` filter.
pub const MAX_FORWARD_AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Most names in `copy_headers` or `forward_headers`.
pub const MAX_FORWARD_AUTH_HEADERS: usize = 64;

/// A checked `forward_auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuth {
    /// The auth service (`http` or `https`).
    pub url: http::Uri,
    /// Time allowed for its whole answer.
    pub timeout: Duration,
    /// Headers of a 2xx answer set on the upstream request.
    pub copy_headers: Vec<HeaderName>,
    /// The request headers sent to the auth service; `None`: all but
    /// hop-by-hop ones.
    pub forward_headers: Option<Vec<HeaderName>>,
}

pub(super) fn compile_forward_auth(spec: &FilterSpec) -> Result<ForwardAuth, Refusal> {
    let text = spec
        .url
        .as_deref()
        .ok_or(("url", "is required".to_string()))?;
    let url: http::Uri = text
        .parse()
        .map_err(|_| ("url", format!("{text:?} is not a URL")))?;
    if !matches!(url.scheme_str(), Some("http") | Some("https")) || url.host().is_none() {
        return Err(("url", format!("{text:?} is not an http(s) URL")));
    }
    let timeout = match &spec.timeout {
        None => DEFAULT_FORWARD_AUTH_TIMEOUT,
        Some(t) => {
            let d = humantime::parse_duration(t).map_err(|e| {
                (
                    "timeout",
                    format!("{e}: expected a duration such as \"5s\""),
                )
            })?;
            if d < Duration::from_millis(1) || d > MAX_FORWARD_AUTH_TIMEOUT {
                return Err(("timeout", format!("{t:?} is not within 1ms..=60s")));
            }
            d
        }
    };
    let copy_headers = names(
        "copy_headers",
        spec.copy_headers.as_deref().unwrap_or_default(),
    )?;
    let forward_headers = spec
        .forward_headers
        .as_deref()
        .map(|list| names("forward_headers", list))
        .transpose()?;
    Ok(ForwardAuth {
        url,
        timeout,
        copy_headers,
        forward_headers,
    })
}

fn names(field: &'static str, list: &[String]) -> Result<Vec<HeaderName>, Refusal> {
    if list.len() > MAX_FORWARD_AUTH_HEADERS {
        return Err((field, format!("at most {MAX_FORWARD_AUTH_HEADERS} names")));
    }
    list.iter()
        .enumerate()
        .map(|(j, n)| header_name(n).map_err(|r| (field, format!("[{j}] {r}"))))
        .collect()
}
