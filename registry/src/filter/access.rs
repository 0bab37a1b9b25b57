//! Checking who may call a route, by address: `ip_filter`, and the
//! [`Cidr`] networks it (and the gateway's `--trusted-proxies`) is written in.

use std::net::IpAddr;

use super::{FilterSpec, Refusal};

/// Most networks in one `allow` or `deny` list.
pub const MAX_NETWORKS: usize = 1024;

/// An IP network (`10.0.0.0/8`, `::1/128`, or a plain address: a `/32` or
/// `/128`). Bits past the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`),
/// as nginx's `allow` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/LEN` or `ADDR`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address: a dual-stack listener sees IPv4 clients that way).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), self.prefix, 32)
                    == masked(u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u32) -> u128 {
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits
    }
}

/// A checked `ip_filter`: deny wins over allow; with an allow list, an
/// address in none of its networks is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpFilter {
    /// The networks allowed; `None`: every address not denied.
    pub allow: Option<Vec<Cidr>>,
    /// The networks refused, whatever `allow` says.
    pub deny: Vec<Cidr>,
}

impl IpFilter {
    /// Whether a request from `client` may pass.
    pub fn admits(&self, client: IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(client)) {
            return false;
        }
        match &self.allow {
            Some(allow) => allow.iter().any(|n| n.contains(client)),
            None => true,
        }
    }
}

pub(super) fn compile_ip_filter(spec: &FilterSpec) -> Result<IpFilter, Refusal> {
    if spec.allow.is_none() && spec.deny.is_none() {
        return Err(("allow", "give allow, deny, or both".into()));
    }
    let allow = spec
        .allow
        .as_deref()
        .map(|list| networks("allow", list))
        .transpose()?;
    let deny = match spec.deny.as_deref() {
        Some(list) => networks("deny", list)?,
        None => Vec::new(),
    };
    Ok(IpFilter { allow, deny })
}

fn networks(field: &'static str, list: &[String]) -> Result<Vec<Cidr>, Refusal> {
    if list.is_empty() || list.len() > MAX_NETWORKS {
        return Err((
            field,
            format!(
                "give 1 to {MAX_NETWORKS} networks (omit the list instead of leaving it empty)"
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(j, s)| Cidr::parse(s).map_err(|r| (field, format!("[{j}] {r}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("::2".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::5".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn deny_wins_and_an_allow_list_refuses_the_rest() {
        let f = IpFilter {
            allow: Some(vec![Cidr::parse("10.0.0.0/8").unwrap()]),
            deny: vec![Cidr::parse("10.9.0.0/16").unwrap()],
        };
        assert!(f.admits("10.1.2.3".parse().unwrap()));
        assert!(!f.admits("10.9.2.3".parse().unwrap()));
        assert!(!f.admits("192.168.0.1".parse().unwrap()));
        let deny_only = IpFilter {
            allow: None,
            deny: vec![Cidr::parse("192.168.0.1").unwrap()],
        };
        assert!(deny_only.admits("192.168.0.2".parse().unwrap()));
        assert!(!deny_only.admits("::ffff:192.168.0.1".parse().unwrap()));
    }
}

/// Most entries in one `cors` list.
pub const MAX_CORS_ENTRIES: usize = 256;
/// Longest `max_age` of a `cors` filter (browsers cap it lower anyway:
/// Firefox at 24 h, Chromium at 2 h).
pub const MAX_CORS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Default `allow_methods`: the CORS-safelisted methods.
pub const DEFAULT_CORS_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// A checked `cors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Origins allowed (`scheme://host[:port]`, lowercase); `None`: any (`*`).
    pub origins: Option<Vec<String>>,
    /// Methods a preflight may ask for; `None`: any (`*`).
    pub methods: Option<Vec<http::Method>>,
    /// Request headers a preflight may ask for; `None`: any (`*`).
    pub allow_headers: Option<Vec<http::HeaderName>>,
    /// Response headers a script may read; `None`: all (`*`).
    pub expose_headers: Option<Vec<http::HeaderName>>,
    /// Whether requests with credentials (cookies, `Authorization`) may be
    /// read by the script.
    pub credentials: bool,
    /// How long a browser may cache a preflight's answer, in seconds.
    pub max_age: Option<u64>,
}

/// One list: `["*"]` is `None` (any), otherwise each entry checked.
fn wildcard_or<T>(
    field: &'static str,
    list: &[String],
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, Refusal> {
    if list.is_empty() || list.len() > MAX_CORS_ENTRIES {
        return Err((
            field,
            format!("give 1 to {MAX_CORS_ENTRIES} entries, or [\"*\"]"),
        ));
    }
    if list.iter().any(|e| e == "*") {
        return match list.len() {
            1 => Ok(None),
            _ => Err((field, "\"*\" stands alone".into())),
        };
    }
    list.iter()
        .enumerate()
        .map(|(j, e)| check(e).map_err(|r| (field, format!("[{j}] {r}"))))
        .collect::<Result<Vec<T>, Refusal>>()
        .map(Some)
}

pub(super) fn compile_cors(spec: &FilterSpec) -> Result<Cors, Refusal> {
    let origins = spec.allow_origins.as_deref().ok_or((
        "allow_origins",
        "is required: origins, or [\"*\"]".to_string(),
    ))?;
    let origins = wildcard_or("allow_origins", origins, origin)?;
    let default_methods: Vec<String> = DEFAULT_CORS_METHODS.map(String::from).to_vec();
    let methods = wildcard_or(
        "allow_methods",
        spec.allow_methods.as_deref().unwrap_or(&default_methods),
        |m| {
            http::Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| format!("{m:?} is not a method (uppercase, as GET)"))
        },
    )?;
    let name = |n: &str| {
        http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("{n:?} is not a header name"))
    };
    let allow_headers = match spec.allow_headers.as_deref() {
        None => Some(Vec::new()),
        Some(list) => wildcard_or("allow_headers", list, name)?,
    };
    let expose_headers = match spec.expose_headers.as_deref() {
        None => Some(Vec::new()),
        Some(list) => wildcard_or("expose_headers", list, name)?,
    };
    let credentials = spec.allow_credentials.unwrap_or(false);
    if credentials {
        // With credentials a browser takes `*` literally (Fetch standard,
        // CORS protocol): an origin wildcard would never work, and
        // reflecting any origin instead would hand every site the user's
        // session.
        for (field, wild) in [
            ("allow_origins", origins.is_none()),
            ("allow_methods", methods.is_none()),
            ("allow_headers", allow_headers.is_none()),
            ("expose_headers", expose_headers.is_none()),
        ] {
            if wild {
                return Err((
                    "allow_credentials",
                    format!("does not combine with \"*\" in {field}: list them"),
                ));
            }
        }
    }
    let max_age = match &spec.max_age {
        None => None,
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| {
                (
                    "max_age",
                    format!("{e}: expected a duration such as \"10m\""),
                )
            })?;
            if d > MAX_CORS_MAX_AGE {
                return Err(("max_age", format!("{text:?} is over 24h")));
            }
            Some(d.as_secs())
        }
    };
    Ok(Cors {
        origins,
        methods,
        allow_headers,
        expose_headers,
        credentials,
        max_age,
    })
}

/// `scheme://host[:port]`, as a browser serialises an `Origin`: http or
/// https, no path, no trailing slash; kept lowercase.
fn origin(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not an origin (scheme://host[:port], no path)");
    let uri: http::Uri = text.parse().map_err(|_| bad())?;
    let shaped = matches!(uri.scheme_str(), Some("http") | Some("https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && !text.ends_with('/')
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !shaped {
        return Err(bad());
    }
    Ok(text.to_ascii_lowercase())
}
