//! Endpoint sets and smooth weighted round robin.
//!
//! An [`EndpointSet`] is immutable once built; discovery builds a new one when
//! a service's instances change. Picking must be cheap and lock-free, so the
//! smooth weighted round-robin order (nginx's algorithm: spread each
//! endpoint's turns evenly instead of in bursts) is computed once at build
//! time into a sequence, and a request only does one atomic increment to take
//! the next slot.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::uri::Authority;
use portico_registry::model::{Instance, Scheme};

/// Longest precomputed sequence. Sets whose reduced weights sum past this are
/// scaled down proportionally (ratios stay within a fraction of a percent).
const MAX_SEQUENCE: u64 = 1 << 16;

/// One upstream the gateway may send a request to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Instance id (or the `host:port` of a static upstream), for logs.
    pub id: Arc<str>,
    /// Where to connect.
    pub authority: Authority,
    /// The socket address, when the host is an IP literal (no resolution needed).
    pub addr: Option<SocketAddr>,
    /// Protocol to speak.
    pub scheme: Scheme,
    /// Relative share of traffic.
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint for a registered instance, or `None` if its address cannot
    /// form a URI authority.
    pub fn from_instance(instance: &Instance) -> Option<Endpoint> {
        let authority: Authority = instance.authority().parse().ok()?;
        Some(Endpoint {
            id: instance.id.as_str().into(),
            addr: socket_addr(&authority),
            authority,
            scheme: instance.spec.scheme,
            weight: instance.spec.weight.max(1),
        })
    }

    /// A static upstream from the route file.
    pub fn from_static(authority: Authority) -> Endpoint {
        Endpoint {
            id: authority.as_str().into(),
            addr: socket_addr(&authority),
            authority,
            scheme: Scheme::Http,
            weight: 1,
        }
    }
}

fn socket_addr(authority: &Authority) -> Option<SocketAddr> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, authority.port_u16()?))
}

/// An immutable set of endpoints with its round-robin order.
#[derive(Debug, Default)]
pub struct EndpointSet {
    endpoints: Vec<Endpoint>,
    sequence: Vec<u32>,
    next: AtomicUsize,
}

impl EndpointSet {
    /// Builds the set; endpoints are ordered by id so every gateway computes
    /// the same sequence.
    pub fn new(mut endpoints: Vec<Endpoint>) -> EndpointSet {
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        let sequence = smooth_weighted_sequence(&endpoints);
        // Start at a random slot so gateways restarted together do not all hit
        // the same endpoint first.
        let start = if sequence.is_empty() {
            0
        } else {
            fastrand::usize(..sequence.len())
        };
        EndpointSet {
            endpoints,
            sequence,
            next: AtomicUsize::new(start),
        }
    }

    /// Whether there is nothing to pick.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The endpoints, ordered by id.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The next endpoint in smooth weighted round-robin order.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.sequence.is_empty() {
            return None;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.sequence.len();
        self.endpoints.get(self.sequence[slot] as usize)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One full cycle of nginx's smooth weighted round robin: each step, add every
/// weight to its running score, pick the highest, subtract the total from it.
fn smooth_weighted_sequence(endpoints: &[Endpoint]) -> Vec<u32> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let g = endpoints
        .iter()
        .fold(0u64, |acc, e| gcd(acc, u64::from(e.weight)));
    let mut weights: Vec<i64> = endpoints
        .iter()
        .map(|e| (u64::from(e.weight) / g) as i64)
        .collect();
    let mut total: i64 = weights.iter().sum();
    if total as u64 > MAX_SEQUENCE {
        let scale = MAX_SEQUENCE as f64 / total as f64;
        for w in &mut weights {
            *w = ((*w as f64 * scale).round() as i64).max(1);
        }
        total = weights.iter().sum();
    }
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        sequence.push(best as u32);
    }
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, weight: u32) -> Endpoint {
        Endpoint {
            id: id.into(),
            authority: "127.0.0.1:1".parse().unwrap(),
            addr: None,
            scheme: Scheme::Http,
            weight,
        }
    }

    fn counts(set: &EndpointSet, n: usize) -> Vec<usize> {
        let mut c = vec![0; set.len()];
        for _ in 0..n {
            let e = set.pick().unwrap();
            c[set.endpoints().iter().position(|x| x.id == e.id).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_alternate() {
        let set = EndpointSet::new(vec![ep("a", 100), ep("b", 100), ep("c", 100)]);
        assert_eq!(counts(&set, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weights_are_honoured_and_smooth() {
        let set = EndpointSet::new(vec![ep("a", 5), ep("b", 1), ep("c", 1)]);
        assert_eq!(set.sequence.len(), 7);
        assert_eq!(counts(&set, 700), vec![500, 100, 100]);
        // Smooth: "a" never runs more than three times in a row in the cycle.
        assert_eq!(set.sequence, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn huge_sets_are_scaled_not_dropped() {
        let eps: Vec<Endpoint> = (0..200)
            .map(|i| ep(&format!("e{i:03}"), 997 - i % 3))
            .collect();
        let set = EndpointSet::new(eps);
        assert!(set.sequence.len() as u64 <= MAX_SEQUENCE + 200);
        assert!(counts(&set, set.sequence.len()).iter().all(|&c| c > 0));
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert!(EndpointSet::new(vec![]).pick().is_none());
    }
}
