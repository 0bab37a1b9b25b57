//! Endpoint sets and smooth weighted round robin.
//!
//! An [`EndpointSet`] is immutable once built; discovery builds a new one when
//! a service's instances change. Picking must be cheap and lock-free, so the
//! smooth weighted round-robin order (nginx's algorithm: spread each
//! endpoint's turns evenly instead of in bursts) is computed once at build
//! time into a sequence, and a request only does one atomic increment to take
//! the next slot.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap};
use http::uri::Authority;
use portico_registry::model::{Instance, Scheme};

use crate::config::{Balance, HashOn};
use crate::health::{EndpointHealth, HealthRegistry, OutlierPolicy, now_ms};

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
    /// The authority as the connection pool's key. A response body holds
    /// it until its connection goes back: a reference count, and 16 bytes
    /// where the `Authority` is 32 (the pool's `PooledBody` is kept small).
    pub pool_key: Arc<str>,
    /// The socket address, when the host is an IP literal (no resolution needed).
    pub addr: Option<SocketAddr>,
    /// Protocol to speak.
    pub scheme: Scheme,
    /// Relative share of traffic.
    pub weight: u32,
    /// Passive health, shared with every other table holding this endpoint.
    pub health: Arc<EndpointHealth>,
    /// Failure domain, from the instance's registration.
    pub zone: Option<Arc<str>>,
    /// The TLS server name of an `https` instance, from its
    /// `tls_server_name` metadata (`None`: the host of its address).
    pub tls_name: Option<Arc<str>>,
}

impl Endpoint {
    /// An endpoint for a registered instance, or `None` if its address cannot
    /// form a URI authority.
    pub fn from_instance(instance: &Instance, health: &HealthRegistry) -> Option<Endpoint> {
        let authority: Authority = instance.authority().parse().ok()?;
        Some(Endpoint {
            id: instance.id.as_str().into(),
            pool_key: authority.as_str().into(),
            addr: socket_addr(&authority),
            health: health.get(authority.as_str()),
            authority,
            scheme: instance.spec.scheme,
            weight: instance.spec.weight.max(1),
            zone: instance.spec.zone.as_deref().map(Arc::from),
            tls_name: instance
                .spec
                .meta
                .get(crate::tls::upstream::SERVER_NAME_META)
                .map(|n| Arc::from(n.as_str())),
        })
    }

    /// A static upstream from the route file.
    pub fn from_static(authority: Authority, health: &HealthRegistry) -> Endpoint {
        let key: Arc<str> = authority.as_str().into();
        Endpoint {
            id: key.clone(),
            pool_key: key,
            addr: socket_addr(&authority),
            health: health.get(authority.as_str()),
            authority,
            scheme: Scheme::Http,
            weight: 1,
            zone: None,
            tls_name: None,
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
    /// Hash ring for `consistent_hash` routes, built on first use.
    ring: OnceLock<Vec<(u64, u32)>>,
    /// The endpoints in the gateway's own zone, when some are and some are not.
    local: Option<Box<LocalZone>>,
}

/// The same-zone subset of a set, with each member's index in the whole set.
#[derive(Debug)]
struct LocalZone {
    set: EndpointSet,
    to_global: Vec<usize>,
}

/// Whether a pick takes a turn of the round-robin cursor (a request) or
/// only looks (`/explain`).
#[derive(Debug, Clone, Copy)]
enum Mode {
    Take,
    Peek,
}

/// The round-robin slots one pick goes through: taken from the shared
/// cursor (each `next` is one `fetch_add`), or counted on a private copy
/// of it so the shared cursor does not move.
enum Turns<'a> {
    Take(&'a AtomicUsize),
    Peek(usize),
}

impl Turns<'_> {
    fn next(&mut self) -> usize {
        match self {
            Turns::Take(cursor) => cursor.fetch_add(1, Ordering::Relaxed),
            Turns::Peek(at) => {
                let slot = *at;
                *at = at.wrapping_add(1);
                slot
            }
        }
    }
}

/// Virtual nodes per endpoint of average weight on the hash ring: enough
/// that adding one endpoint to ten moves close to the ideal 1/11 of keys.
const RING_POINTS: u64 = 160;

/// Lets the per-endpoint latency histograms ([`crate::metrics`]) follow a
/// set's endpoints by id without that leaf module importing this one.
impl crate::metrics::EndpointIds for EndpointSet {
    fn ids(&self) -> Box<dyn Iterator<Item = &Arc<str>> + '_> {
        Box::new(self.endpoints().iter().map(|e| &e.id))
    }
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
            ring: OnceLock::new(),
            local: None,
        }
    }

    /// A set that prefers endpoints in `zone` (the gateway's own) while at
    /// least half of them, and at least one, are in rotation; it spills
    /// over to every zone otherwise. Without a zone, or when every endpoint
    /// is in it or none is, this is [`EndpointSet::new`].
    pub fn with_zone(endpoints: Vec<Endpoint>, zone: Option<&str>) -> EndpointSet {
        let mut set = EndpointSet::new(endpoints);
        let Some(zone) = zone else { return set };
        let to_global: Vec<usize> = (0..set.endpoints.len())
            .filter(|&i| set.endpoints[i].zone.as_deref() == Some(zone))
            .collect();
        if !to_global.is_empty() && to_global.len() < set.endpoints.len() {
            let members = to_global
                .iter()
                .map(|&i| set.endpoints[i].clone())
                .collect();
            set.local = Some(Box::new(LocalZone {
                set: EndpointSet::new(members),
                to_global,
            }));
        }
        set
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

    /// Whether any endpoint is in rotation at `now` (not ejected, not
    /// failing its health check): what makes a split target worth its turn.
    pub fn any_in_rotation(&self, now: u64) -> bool {
        self.endpoints.iter().any(|e| !e.health.is_out(now))
    }

    /// The next endpoint in smooth weighted round-robin order, skipping
    /// endpoints that are out (ejected, or failed by an active health check)
    /// and those in `avoid` (indices already tried by this request). When
    /// every endpoint not avoided is out, that is ignored (panic mode: traffic
    /// to all rather than to none). `None` when nothing is left.
    pub fn pick(&self, avoid: &[usize]) -> Option<(usize, &Endpoint)> {
        self.round_robin(avoid, &mut self.turns(Mode::Take))
    }

    fn turns(&self, mode: Mode) -> Turns<'_> {
        match mode {
            Mode::Take => Turns::Take(&self.next),
            Mode::Peek => Turns::Peek(self.next.load(Ordering::Relaxed)),
        }
    }

    fn round_robin(&self, avoid: &[usize], turns: &mut Turns<'_>) -> Option<(usize, &Endpoint)> {
        if self.sequence.is_empty() {
            return None;
        }
        let slot = turns.next() % self.sequence.len();
        let first = self.sequence[slot] as usize;
        let endpoint = &self.endpoints[first];
        if !avoid.contains(&first) && !endpoint.health.is_out_now() {
            return Some((first, endpoint));
        }
        // Slow path: take further turns of the sequence, so the skipped
        // endpoint's share spreads over the others by weight.
        let n = self.endpoints.len();
        let now = now_ms();
        for _ in 0..(2 * n).min(self.sequence.len()) {
            let slot = turns.next() % self.sequence.len();
            let i = self.sequence[slot] as usize;
            if !avoid.contains(&i) && !self.endpoints[i].health.is_out(now) {
                return Some((i, &self.endpoints[i]));
            }
        }
        // Still nothing: any endpoint not ejected, else any not avoided (panic mode).
        let candidates = || {
            (0..n)
                .map(|j| (first + j) % n)
                .filter(|i| !avoid.contains(i))
        };
        let i = candidates()
            .find(|&i| !self.endpoints[i].health.is_out(now))
            .or_else(|| candidates().next())?;
        Some((i, &self.endpoints[i]))
    }

    /// Picks with the route's algorithm. `key` is the request's hash key for
    /// `consistent_hash` (without one, round robin).
    pub fn pick_with(
        &self,
        lb: &Balance,
        key: Option<u64>,
        avoid: &[usize],
    ) -> Option<(usize, &Endpoint)> {
        self.select(lb, key, avoid, Mode::Take)
    }

    /// What [`EndpointSet::pick_with`] would pick now, without taking a turn:
    /// the round-robin cursor stays where it is, so the next request still
    /// gets exactly this pick (barring concurrent traffic). For `/explain`,
    /// which must observe the balancer without steering live traffic.
    /// Random and two-choice algorithms draw as a request would; their
    /// draws move no shared state.
    pub fn peek_with(
        &self,
        lb: &Balance,
        key: Option<u64>,
        avoid: &[usize],
    ) -> Option<(usize, &Endpoint)> {
        self.select(lb, key, avoid, Mode::Peek)
    }

    fn select(
        &self,
        lb: &Balance,
        key: Option<u64>,
        avoid: &[usize],
        mode: Mode,
    ) -> Option<(usize, &Endpoint)> {
        if let Some(local) = &self.local {
            let now = now_ms();
            let members = &local.set.endpoints;
            let in_rotation = members.iter().filter(|e| !e.health.is_out(now)).count();
            if in_rotation > 0 && in_rotation * 2 >= members.len() {
                // Indices this request already tried, in the local numbering.
                let mut local_avoid = [usize::MAX; 16];
                let mut m = 0;
                for (j, g) in local.to_global.iter().enumerate() {
                    if avoid.contains(g) && m < local_avoid.len() {
                        local_avoid[m] = j;
                        m += 1;
                    }
                }
                let mut turns = local.set.turns(mode);
                if let Some((j, e)) = local.set.pick_any(lb, key, &local_avoid[..m], &mut turns)
                    && !e.health.is_out(now)
                {
                    return Some((local.to_global[j], e));
                }
            }
        }
        self.pick_any(lb, key, avoid, &mut self.turns(mode))
    }

    fn pick_any(
        &self,
        lb: &Balance,
        key: Option<u64>,
        avoid: &[usize],
        turns: &mut Turns<'_>,
    ) -> Option<(usize, &Endpoint)> {
        match lb {
            Balance::RoundRobin => self.round_robin(avoid, turns),
            Balance::Random => {
                let i = self.random_index()?;
                self.usable(i, avoid)
                    .or_else(|| self.round_robin(avoid, turns))
            }
            Balance::LeastRequest | Balance::PeakEwma => {
                let a = self.random_index()?;
                let mut b = self.random_index()?;
                if b == a && self.endpoints.len() > 1 {
                    b = (a + 1 + fastrand::usize(..self.endpoints.len() - 1))
                        % self.endpoints.len();
                }
                let cost = |i: usize| {
                    let e = &self.endpoints[i];
                    let load = f64::from(e.health.in_flight()) + 1.0;
                    let cost = match lb {
                        Balance::PeakEwma => e.health.ewma_us().max(1.0) * load,
                        _ => load,
                    };
                    cost / f64::from(e.weight)
                };
                let best = if cost(b) < cost(a) { b } else { a };
                let other = if best == a { b } else { a };
                self.usable(best, avoid)
                    .or_else(|| self.usable(other, avoid))
                    .or_else(|| self.round_robin(avoid, turns))
            }
            Balance::ConsistentHash(_) => match key {
                Some(key) => self.ring_pick(key, avoid, turns),
                None => self.round_robin(avoid, turns),
            },
        }
    }

    /// A weight-proportional random index.
    fn random_index(&self) -> Option<usize> {
        if self.sequence.is_empty() {
            return None;
        }
        Some(self.sequence[fastrand::usize(..self.sequence.len())] as usize)
    }

    fn usable(&self, i: usize, avoid: &[usize]) -> Option<(usize, &Endpoint)> {
        let e = self.endpoints.get(i)?;
        (!avoid.contains(&i) && !e.health.is_out_now()).then_some((i, e))
    }

    fn ring_pick(
        &self,
        key: u64,
        avoid: &[usize],
        turns: &mut Turns<'_>,
    ) -> Option<(usize, &Endpoint)> {
        let ring = self.ring.get_or_init(|| build_ring(&self.endpoints));
        if ring.is_empty() {
            return None;
        }
        let start = ring.partition_point(|&(h, _)| h < key);
        // Walk clockwise past ejected or already-tried endpoints.
        for step in 0..ring.len() {
            let (_, i) = ring[(start + step) % ring.len()];
            if let Some(found) = self.usable(i as usize, avoid) {
                return Some(found);
            }
        }
        self.round_robin(avoid, turns)
    }

    /// Records the outcome of an exchange with endpoint `index`, ejecting it
    /// when it has failed too often in a row and the set's cap allows.
    pub fn record(&self, index: usize, failed: bool, policy: &OutlierPolicy) {
        let Some(endpoint) = self.endpoints.get(index) else {
            return;
        };
        if !failed {
            endpoint.health.record_success();
            return;
        }
        let count = endpoint.health.record_failure();
        if policy.consecutive_failures == 0 || count < policy.consecutive_failures {
            return;
        }
        let now = now_ms();
        if endpoint.health.is_ejected(now) {
            return;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.health.is_ejected(now))
            .count();
        let allowed = ejected == 0
            || (ejected + 1) * 100 <= policy.max_ejected_percent as usize * self.endpoints.len();
        if allowed {
            let length = endpoint.health.eject(now, policy);
            tracing::warn!(
                endpoint = %endpoint.id,
                address = %endpoint.authority,
                failures = count,
                ejected_for = ?length,
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

/// The `consistent_hash` key of a request with this path, these headers and
/// this client IP (as text), if it carries one. Takes the parts rather than
/// a request so `/explain` hashes exactly as the proxy does from inputs that
/// need not form a valid request.
pub fn hash_key(on: &HashOn, path: &str, headers: &HeaderMap, client_ip: &[u8]) -> Option<u64> {
    let bytes: &[u8] = match on {
        HashOn::Header(name) => headers.get(name)?.as_bytes(),
        HashOn::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let rest = pair.strip_prefix(name.as_bytes())?;
                rest.strip_prefix(b"=")
            })?,
        HashOn::ClientIp => client_ip,
        HashOn::Path => path.as_bytes(),
    };
    Some(stable_hash(bytes))
}

/// Stable 64-bit hash (FNV-1a, then a splitmix finaliser for spread): the
/// same on every gateway and across restarts, which a ring needs.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn build_ring(endpoints: &[Endpoint]) -> Vec<(u64, u32)> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        // Points in proportion to weight, around RING_POINTS for an average one.
        let points = (RING_POINTS * u64::from(e.weight) * endpoints.len() as u64 / total)
            .clamp(1, 4 * RING_POINTS);
        for p in 0..points {
            let mut label = Vec::with_capacity(e.id.len() + 8);
            label.extend_from_slice(e.id.as_bytes());
            label.extend_from_slice(&p.to_le_bytes());
            ring.push((stable_hash(&label), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One full cycle of nginx's smooth weighted round robin over a set's
/// endpoints.
fn smooth_weighted_sequence(endpoints: &[Endpoint]) -> Vec<u32> {
    smooth_sequence(endpoints.iter().map(|e| e.weight))
}

/// One full cycle of nginx's smooth weighted round robin: each step, add every
/// weight to its running score, pick the highest, subtract the total from it.
/// Weights are reduced by their gcd; a cycle longer than 65536 turns is
/// scaled down (ratios kept within a fraction of a percent). Every weight
/// must be above 0. Also orders a route's split targets.
pub fn smooth_sequence(weights: impl Iterator<Item = u32> + Clone) -> Vec<u32> {
    let g = weights.clone().fold(0u64, |acc, w| gcd(acc, u64::from(w)));
    if g == 0 {
        return Vec::new();
    }
    let mut weights: Vec<i64> = weights.map(|w| (u64::from(w) / g) as i64).collect();
    if weights.iter().all(|&w| w == 1) {
        // Equal weights: the loop below would pick each index once, in
        // order (ties go to the lowest), at a cost of n steps of n each,
        // which a service of thousands of instances feels at every change.
        return (0..weights.len() as u32).collect();
    }
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
            pool_key: "127.0.0.1:1".into(),
            addr: None,
            scheme: Scheme::Http,
            weight,
            health: Arc::default(),
            zone: None,
            tls_name: None,
        }
    }

    fn counts(set: &EndpointSet, n: usize) -> Vec<usize> {
        let mut c = vec![0; set.len()];
        for _ in 0..n {
            let (_, e) = set.pick(&[]).unwrap();
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
    fn equal_weights_take_turns_in_id_order_as_the_full_loop_does() {
        // The loop without its equal-weight shortcut, for reference.
        let full = |n: usize| {
            let mut current = vec![0i64; n];
            (0..n)
                .map(|_| {
                    let mut best = 0;
                    for i in 0..n {
                        current[i] += 1;
                        if current[i] > current[best] {
                            best = i;
                        }
                    }
                    current[best] -= n as i64;
                    best as u32
                })
                .collect::<Vec<u32>>()
        };
        for n in [1, 2, 7, 100] {
            assert_eq!(smooth_sequence(std::iter::repeat_n(250, n)), full(n));
        }
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
        assert!(EndpointSet::new(vec![]).pick(&[]).is_none());
    }

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            ..OutlierPolicy::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_and_picking_skips_the_ejected() {
        let set = EndpointSet::new(vec![ep("a", 1), ep("b", 1), ep("c", 1)]);
        set.record(0, true, &policy());
        set.record(0, true, &policy());
        set.record(0, false, &policy()); // a success resets the count
        set.record(0, true, &policy());
        set.record(0, true, &policy());
        assert!(!set.endpoints[0].health.is_ejected_now());
        set.record(0, true, &policy());
        assert!(set.endpoints[0].health.is_ejected_now());
        assert_eq!(counts(&set, 300), vec![0, 150, 150]);
    }

    #[test]
    fn the_ejection_cap_holds_and_panic_mode_sends_to_all() {
        let set = EndpointSet::new(vec![ep("a", 1), ep("b", 1), ep("c", 1), ep("d", 1)]);
        for i in 0..4 {
            for _ in 0..3 {
                set.record(i, true, &policy());
            }
        }
        // At most half of four may be ejected.
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.health.is_ejected_now())
            .count();
        assert_eq!(ejected, 2);
        let single = EndpointSet::new(vec![ep("x", 1)]);
        for _ in 0..3 {
            single.record(0, true, &policy());
        }
        assert!(single.endpoints[0].health.is_ejected_now());
        // Every endpoint ejected: traffic still flows (panic mode).
        assert!(single.pick(&[]).is_some());
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_few_keys_when_one_joins() {
        let lb = Balance::ConsistentHash(crate::config::HashOn::Path);
        let ten: Vec<Endpoint> = (0..10).map(|i| ep(&format!("i{i}"), 100)).collect();
        let mut eleven = ten.clone();
        eleven.push(ep("i10", 100));
        let (a, b) = (EndpointSet::new(ten), EndpointSet::new(eleven));
        let mut moved = 0;
        let mut per_endpoint = [0usize; 10];
        for k in 0..10_000u32 {
            let key = stable_hash(&k.to_le_bytes());
            let (i, e) = a.pick_with(&lb, Some(key), &[]).unwrap();
            assert_eq!(
                a.pick_with(&lb, Some(key), &[]).unwrap().0,
                i,
                "one key, one endpoint"
            );
            per_endpoint[i] += 1;
            if b.pick_with(&lb, Some(key), &[]).unwrap().1.id != e.id {
                moved += 1;
            }
        }
        assert!(moved <= 1_500, "{moved} of 10,000 keys moved");
        assert!(per_endpoint.iter().all(|&n| n > 500), "{per_endpoint:?}");
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let set = EndpointSet::new(vec![ep("busy", 1), ep("idle", 1)]);
        let _held: Vec<_> = (0..10).map(|_| set.endpoints[0].health.begin()).collect();
        for _ in 0..100 {
            let (_, e) = set.pick_with(&Balance::LeastRequest, None, &[]).unwrap();
            assert_eq!(&*e.id, "idle");
        }
    }

    #[test]
    fn peak_ewma_avoids_the_slow() {
        let set = EndpointSet::new(vec![ep("fast", 1), ep("slow", 1)]);
        set.endpoints[0]
            .health
            .observe_latency(std::time::Duration::from_millis(1));
        set.endpoints[1]
            .health
            .observe_latency(std::time::Duration::from_millis(100));
        let slow = (0..1000)
            .filter(|_| &*set.pick_with(&Balance::PeakEwma, None, &[]).unwrap().1.id == "slow")
            .count();
        // Two choices: the slow one wins only when it is drawn twice (~1/4).
        assert!(slow < 350, "{slow}");
    }

    #[test]
    fn the_own_zone_is_preferred_until_too_few_are_left() {
        let zoned = |id: &str, zone: &str| Endpoint {
            zone: Some(zone.into()),
            ..ep(id, 1)
        };
        let set = EndpointSet::with_zone(
            vec![
                zoned("a1", "a"),
                zoned("a2", "a"),
                zoned("b1", "b"),
                zoned("b2", "b"),
            ],
            Some("a"),
        );
        let local = |set: &EndpointSet| {
            (0..100)
                .filter(|_| {
                    set.pick_with(&Balance::RoundRobin, None, &[])
                        .unwrap()
                        .1
                        .zone
                        .as_deref()
                        == Some("a")
                })
                .count()
        };
        assert_eq!(local(&set), 100);
        // One of two local endpoints out: half are still in, keep local.
        set.endpoints[0].health.add_check_down();
        assert_eq!(local(&set), 100);
        // Both out: spill over to zone b.
        set.endpoints[1].health.add_check_down();
        assert_eq!(local(&set), 0);
        // A retry avoids the local endpoint it tried: it spills rather than repeat.
        set.endpoints[0].health.remove_check_down();
        set.endpoints[1].health.remove_check_down();
        let (i, _) = set.pick_with(&Balance::RoundRobin, None, &[]).unwrap();
        let (j, _) = set.pick_with(&Balance::RoundRobin, None, &[i]).unwrap();
        assert_ne!(i, j);
    }

    #[test]
    fn a_peek_predicts_the_next_pick_and_moves_nothing() {
        let set = EndpointSet::new(vec![ep("a", 2), ep("b", 1), ep("c", 1)]);
        set.endpoints[1].health.add_check_down();
        for lb in [
            Balance::RoundRobin,
            Balance::ConsistentHash(crate::config::HashOn::Path),
        ] {
            for _ in 0..20 {
                let cursor = set.next.load(Ordering::Relaxed);
                let peeked = set.peek_with(&lb, None, &[]).unwrap().0;
                assert_eq!(set.peek_with(&lb, None, &[2]).map(|p| p.0), Some(0));
                assert_eq!(set.next.load(Ordering::Relaxed), cursor, "a peek moved it");
                assert_eq!(set.pick_with(&lb, None, &[]).unwrap().0, peeked);
            }
        }
    }

    #[test]
    fn avoided_endpoints_are_not_picked_again() {
        let set = EndpointSet::new(vec![ep("a", 1), ep("b", 1)]);
        for _ in 0..10 {
            let (i, _) = set.pick(&[]).unwrap();
            let (j, _) = set.pick(&[i]).unwrap();
            assert_ne!(i, j);
            assert!(set.pick(&[0, 1]).is_none());
        }
    }
}
