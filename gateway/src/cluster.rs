//! This gateway among the others: its own record in the registry
//! (`/v1/gateways/{id}`), the records of its peers, and the division of
//! every `scope = "cluster"` rate limit among them.
//!
//! **The record.** [`announce`] writes this gateway's record every
//! renewal period (a third of its lease, and at most [`DEMAND_PERIOD`]
//! while it has cluster limits): its listen addresses, version, the
//! registry revision it has applied, its demand per cluster limit, and
//! per route the requests per second, 5xx share and p99 since its previous
//! record (the busiest [`MAX_ROUTE_LOADS`] routes that had requests). A
//! failed write is retried at the next period; a registry that lost the
//! record (lease lapsed, registry restarted) just takes it again. At a
//! clean shutdown the record is deleted, so the peers take back its share
//! at once instead of a lease later.
//!
//! **Peers.** The discovery task applies the gateway records of the watch
//! stream here ([`Cluster::set_peers`], [`Cluster::put_peer`],
//! [`Cluster::remove_peer`]): every gateway learns of a peer joining or
//! leaving as fast as of any registry change, and of a dead one when its
//! lease lapses and the registry deletes the record.
//!
//! **Shares.** A cluster limit `L` is admitted on this gateway at
//! `share x rate`, with a burst of `share x burst` (at least one). With
//! `d_g` the demand (requests per second seen, admitted or not, during the
//! last period) each gateway `g` of the `N` that have `L` published, and
//! `D` their sum:
//!
//! ```text
//! share_g = (d_g + f x D / N) / (D x (1 + f))        (D > 0)
//! share_g = 1 / N                                    (D = 0)
//! ```
//!
//! The shares of all gateways add up to exactly 1 (every gateway computes
//! from the same published figures), follow demand (a gateway seeing all
//! the traffic gets `(1 + f/N) / (1 + f)` of the limit), and the floor `f`
//! ([`DEMAND_FLOOR`]) leaves an idle gateway `f / (N (1 + f))` of it, so its
//! first requests are admitted until its next record raises its share. A
//! limit's share is recomputed whenever a peer record arrives or goes and
//! after each of this gateway's own writes; never on the request path.
//! When the registry is unreachable nothing changes: the last shares stay.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portico_registry::client::RegistryClient;
use portico_registry::gateway::{
    DEFAULT_GATEWAY_TTL, GatewayRecord, GatewaySpec, MAX_ROUTE_LOADS, RouteLoad,
};

use crate::metrics::RouteTotals;

use crate::filter::rate_limit::LimitShare;

/// Longest time between two records while this gateway has cluster
/// limits: how stale the demand the others divide by may be.
pub const DEMAND_PERIOD: Duration = Duration::from_secs(1);
/// The floor of a share, as a part of an even share (see the module docs):
/// 5%, so an idle gateway is never shut out while a busy one loses at most
/// about 5% of the limit to the floor.
pub const DEMAND_FLOOR: f64 = 0.05;

/// How a gateway registers itself (`--gateway-id`, `--gateway-ttl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The record's id.
    pub id: String,
    /// The record's lease.
    pub ttl: Duration,
    /// The addresses written in the record; empty: the listeners' own.
    pub addresses: Vec<String>,
    /// The admin listener's address written in the record (`None`: no
    /// admin listener, or not reachable by the registry).
    pub admin: Option<String>,
}

impl Announce {
    /// Registration as `id` with the default lease.
    pub fn new(id: impl Into<String>) -> Announce {
        Announce {
            id: id.into(),
            ttl: DEFAULT_GATEWAY_TTL,
            addresses: Vec::new(),
            admin: None,
        }
    }
}

/// The default gateway id: this host's name and the listen address, with
/// every character an id may not hold made a `-` (`edge-1-127.0.0.1-8080`):
/// stable across restarts, and unique per listener on one host.
pub fn default_id(listen: &str) -> String {
    let host = hostname().unwrap_or_else(|| "gateway".to_string());
    let id: String = format!("{host}-{listen}")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    id.chars().take(portico_registry::gateway::MAX_ID).collect()
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// This gateway's view of the cluster; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    /// This gateway's id (its own record is not a peer).
    id: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Live cluster limits by id (`{route}/filters[{index}]`); a limiter
    /// dropped with its route drops out at the next write.
    limits: HashMap<String, Weak<LimitShare>>,
    /// The other gateways' records, by id.
    peers: BTreeMap<String, GatewayRecord>,
    /// This gateway's demand as last written (what the peers divide by).
    published: BTreeMap<String, f64>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new("")
    }
}

impl Cluster {
    /// A cluster view for the gateway `id`.
    pub fn new(id: &str) -> Cluster {
        Cluster {
            id: id.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("cluster state lock poisoned")
    }

    /// Takes a cluster limit into account and sets its share now.
    pub fn register_limit(&self, id: String, share: &Arc<LimitShare>) {
        let mut state = self.lock();
        share.set_share(state.share_of(&id));
        state.limits.insert(id, Arc::downgrade(share));
    }

    /// Replaces every peer record (a snapshot).
    pub fn set_peers(&self, records: Vec<GatewayRecord>) {
        let mut state = self.lock();
        state.peers = records
            .into_iter()
            .filter(|r| r.id != self.id)
            .map(|r| (r.id.clone(), r))
            .collect();
        state.reshare();
    }

    /// A peer registered or renewed.
    pub fn put_peer(&self, record: GatewayRecord) {
        if record.id == self.id {
            return;
        }
        let mut state = self.lock();
        state.peers.insert(record.id.clone(), record);
        state.reshare();
    }

    /// A peer left (clean shutdown) or its lease lapsed.
    pub fn remove_peer(&self, id: &str) {
        let mut state = self.lock();
        if state.peers.remove(id).is_some() {
            state.reshare();
        }
    }

    /// How many other gateways are alive, as far as this one knows.
    pub fn peers(&self) -> usize {
        self.lock().peers.len()
    }

    /// This gateway's share of cluster limit `id` (`{route}/filters[N]`)
    /// as set now; `None` for no such live limit.
    pub fn share(&self, id: &str) -> Option<f64> {
        let share = self.lock().limits.get(id)?.upgrade()?;
        Some(share.get_share())
    }

    /// Whether any cluster limit is live (renewals then come faster).
    pub fn has_limits(&self) -> bool {
        self.lock().limits.values().any(|w| w.strong_count() > 0)
    }

    /// Reads the demand seen over `elapsed` for every live limit, keeps it
    /// as the published figures, and answers it for the record.
    fn measure(&self, elapsed: Duration) -> BTreeMap<String, f64> {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut state = self.lock();
        state.limits.retain(|_, w| w.strong_count() > 0);
        let demand: BTreeMap<String, f64> = state
            .limits
            .iter()
            .filter_map(|(id, w)| Some((id.clone(), w.upgrade()?)))
            .map(|(id, share)| {
                (
                    id,
                    (share.take_arrivals() as f64 / secs * 1000.0).round() / 1000.0,
                )
            })
            .collect();
        state.published = demand.clone();
        demand
    }

    /// Recomputes every share after this gateway's own record was written.
    fn published(&self) {
        self.lock().reshare();
    }
}

impl State {
    fn reshare(&mut self) {
        for (id, weak) in &self.limits {
            if let Some(share) = weak.upgrade() {
                share.set_share(self.share_of(id));
            }
        }
    }

    /// This gateway's share of limit `id`; see the module docs.
    fn share_of(&self, id: &str) -> f64 {
        let mine = self.published.get(id).copied().unwrap_or(0.0);
        let others: Vec<f64> = self
            .peers
            .values()
            .filter_map(|p| p.spec.demand.get(id).copied())
            .collect();
        share(mine, &others)
    }
}

/// The share of a gateway with demand `mine` among peers with demand
/// `others` (see the module docs).
pub fn share(mine: f64, others: &[f64]) -> f64 {
    if others.is_empty() {
        return 1.0; // Alone: exactly the whole limit, not 0.999...
    }
    let n = (others.len() + 1) as f64;
    let total = mine + others.iter().sum::<f64>();
    if total <= 0.0 {
        return 1.0 / n;
    }
    (mine + DEMAND_FLOOR * total / n) / (total * (1.0 + DEMAND_FLOOR))
}

/// Each route's counters at the previous record, to report the load
/// between two records.
#[derive(Debug, Default)]
struct RouteLoads {
    before: HashMap<String, RouteTotals>,
}

impl RouteLoads {
    /// The load of each route over `elapsed` since the last call, the
    /// busiest [`MAX_ROUTE_LOADS`] that had requests; remembers `now`.
    fn measure(
        &mut self,
        now: Vec<(String, RouteTotals)>,
        elapsed: Duration,
    ) -> BTreeMap<String, RouteLoad> {
        let mut loads: Vec<(String, RouteLoad)> = now
            .iter()
            .filter_map(|(name, totals)| {
                let before = self.before.get(name).copied().unwrap_or_default();
                Some((name.clone(), totals.load_since(&before, elapsed)?))
            })
            .collect();
        if loads.len() > MAX_ROUTE_LOADS {
            loads.sort_by(|a, b| b.1.rps.total_cmp(&a.1.rps));
            loads.truncate(MAX_ROUTE_LOADS);
        }
        self.before = now.into_iter().collect();
        loads.into_iter().collect()
    }
}

/// What the record says besides demand.
#[derive(Debug, Clone)]
pub struct RecordFacts {
    /// Listen addresses.
    pub addresses: Vec<String>,
    /// Unix ms when the gateway started.
    pub started_at_ms: u64,
    /// The admin listener's address, if it runs one (the dashboard's
    /// explain box reaches it through the registry).
    pub admin: Option<String>,
}

/// The task writing this gateway's record. Dropped (the gateway's serve
/// future cancelled, a gateway killed in a test) it stops writing, so the
/// record lapses as a dead gateway's does.
#[derive(Debug)]
pub struct Announcer {
    task: tokio::task::JoinHandle<()>,
    client: RegistryClient,
    id: String,
}

impl Announcer {
    /// Starts writing the record of `settings.id` through `client`.
    pub fn spawn(
        client: RegistryClient,
        cluster: Arc<Cluster>,
        settings: Announce,
        facts: RecordFacts,
        applied: impl Fn() -> u64 + Send + 'static,
        routes: impl Fn() -> Vec<(String, RouteTotals)> + Send + 'static,
    ) -> Announcer {
        let id = settings.id.clone();
        let task = tokio::spawn(announce(
            client.clone(),
            cluster,
            settings,
            facts,
            (applied, routes),
        ));
        Announcer { task, client, id }
    }

    /// A clean shutdown: stops writing, then deletes the record so the
    /// peers take this gateway's share back at once.
    pub async fn leave(mut self) {
        self.task.abort();
        // Stopped before the delete, so no renewal lands after it.
        let _ = (&mut self.task).await;
        if let Err(e) = self.client.delete_gateway(&self.id).await {
            tracing::warn!(id = %self.id, error = %e, "could not remove this gateway's record; its lease will lapse");
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes this gateway's record every period until aborted; see the
/// module docs. `applied` reads the registry revision applied now,
/// `routes` each route's counters now.
async fn announce(
    client: RegistryClient,
    cluster: Arc<Cluster>,
    settings: Announce,
    facts: RecordFacts,
    (applied, routes): (impl Fn() -> u64, impl Fn() -> Vec<(String, RouteTotals)>),
) {
    let mut last = tokio::time::Instant::now();
    let mut failing = false;
    let mut loads = RouteLoads::default();
    loop {
        let now = tokio::time::Instant::now();
        let spec = GatewaySpec {
            routes: loads.measure(routes(), now - last),
            addresses: facts.addresses.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            applied_revision: applied(),
            started_at_ms: facts.started_at_ms,
            ttl: settings.ttl,
            demand: cluster.measure(now - last),
            admin: facts.admin.clone(),
        };
        last = now;
        match client.put_gateway(&settings.id, &spec).await {
            Ok(_) => {
                if failing {
                    tracing::info!(id = %settings.id, "gateway record written again");
                }
                failing = false;
                cluster.published();
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(id = %settings.id, error = %e, "could not write this gateway's record; cluster limits keep their last shares; retrying");
                }
                failing = true;
            }
        }
        let period = match cluster.has_limits() {
            true => (settings.ttl / 3).min(DEMAND_PERIOD),
            false => settings.ttl / 3,
        };
        tokio::time::sleep_until(now + period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_one_and_follow_demand() {
        let even = share(100.0, &[100.0, 100.0]);
        assert!((even - 1.0 / 3.0).abs() < 1e-9, "{even}");
        let busy = share(300.0, &[0.0, 0.0]);
        let idle = share(0.0, &[300.0, 0.0]);
        assert!((busy + 2.0 * idle - 1.0).abs() < 1e-9);
        assert!(busy > 0.96 && idle > 0.0, "{busy} {idle}");
        assert_eq!(share(0.0, &[0.0, 0.0]), 1.0 / 3.0);
        assert_eq!(share(5.0, &[]), 1.0, "alone");
    }

    #[test]
    fn default_ids_are_valid_ids() {
        let id = default_id("127.0.0.1:8080");
        assert!(
            portico_registry::gateway::validate_gateway_id(&id).is_ok(),
            "{id}"
        );
        assert!(id.ends_with("127.0.0.1-8080"), "{id}");
        let v6 = default_id("[::1]:8080");
        assert!(
            portico_registry::gateway::validate_gateway_id(&v6).is_ok(),
            "{v6}"
        );
    }
}
