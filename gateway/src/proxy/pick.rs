//! Which endpoint a try goes to: the one pick both the request path
//! ([`super::attempt`]) and `/explain` (the `admin` module) call, so what
//! `/explain` shows is what a request does, not a copy that may drift.
//!
//! A request *takes* its pick (the balancer's turn moves, a breaker admits
//! the endpoint and hands back a ticket); `/explain` *peeks* (nothing
//! moves, no admission, and a warming endpoint is not declined by chance,
//! so the answer is stable).

use http::HeaderMap;

use crate::balance::{Endpoint, EndpointSet};
use crate::breaker::Ticket;
use crate::config::{Balance, Route};
use crate::health::now_ms;
use crate::router::RouteEntry;

/// What the balancer offers for the next try.
#[derive(Debug)]
pub enum Pick<'a> {
    /// This endpoint (its index in the set).
    Endpoint(usize, &'a Endpoint),
    /// Nothing left that this request may try.
    Exhausted,
    /// Endpoints are left, but every one's circuit is open.
    AllOpen,
}

impl Pick<'_> {
    /// The index picked, if any.
    pub fn endpoint(&self) -> Option<usize> {
        match self {
            Pick::Endpoint(i, _) => Some(*i),
            _ => None,
        }
    }
}

/// Whether a pick is a request's (takes the turn and the breaker's
/// admission) or an observer's (moves nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// A request: the round-robin cursor moves, breakers admit.
    Take,
    /// `/explain`: nothing moves.
    Peek,
}

/// The request's `consistent_hash` key, on routes that balance by one.
pub fn hash_key(route: &Route, path: &str, headers: &HeaderMap, client_ip: &[u8]) -> Option<u64> {
    match &route.lb {
        Balance::ConsistentHash(on) => crate::balance::hash_key(on, path, headers, client_ip),
        _ => None,
    }
}

/// Picks an endpoint of `entry` not in `tried` (with `anywhere`, one
/// already tried when nothing new is left). On a route with a breaker,
/// `ticket` gets the admission to hand back with the try's outcome.
#[inline]
pub fn pick<'a>(
    entry: &'a RouteEntry,
    key: Option<u64>,
    tried: &[usize],
    anywhere: bool,
    turn: Turn,
    ticket: &mut Option<Ticket>,
) -> Pick<'a> {
    let (route, set) = (&*entry.route, &*entry.endpoints);
    *ticket = None;
    let picked = if route.breaker.is_none() && route.slow_start.is_none() {
        select(set, route, key, tried, turn).or_else(|| {
            anywhere
                .then(|| select(set, route, key, &[], turn))
                .flatten()
        })
    } else {
        match pick_admitted(set, route, key, tried, turn, ticket) {
            Some(found) => found,
            None => return Pick::AllOpen,
        }
    };
    match picked {
        Some((i, e)) => Pick::Endpoint(i, e),
        None => Pick::Exhausted,
    }
}

fn select<'a>(
    set: &'a EndpointSet,
    route: &Route,
    key: Option<u64>,
    avoid: &[usize],
    turn: Turn,
) -> Option<(usize, &'a Endpoint)> {
    match turn {
        Turn::Take => set.pick_with(&route.lb, key, avoid),
        Turn::Peek => set.peek_with(&route.lb, key, avoid),
    }
}

/// Picks for a route with a breaker or slow start: skips endpoints whose
/// circuit is open, and lets a warming endpoint decline its turn by chance
/// (its share grows over the slow-start window). `Some(None)`: nothing left
/// to pick; `None`: every circuit left was open.
fn pick_admitted<'a>(
    set: &'a EndpointSet,
    route: &Route,
    key: Option<u64>,
    tried: &[usize],
    turn: Turn,
    ticket: &mut Option<Ticket>,
) -> Option<Option<(usize, &'a Endpoint)>> {
    let mut skip = [usize::MAX; 32];
    let mut m = tried.len().min(skip.len());
    skip[..m].copy_from_slice(&tried[..m]);
    let now = now_ms();
    let mut any_open = false;
    // Admits through the endpoint's circuit (always, without a breaker);
    // a peek only looks whether it is open.
    let mut admit = |e: &Endpoint, ticket: &mut Option<Ticket>| match (&route.breaker, turn) {
        (None, _) => true,
        (Some(policy), Turn::Take) => {
            *ticket = e.health.breaker.admit(now, policy);
            any_open |= ticket.is_none();
            ticket.is_some()
        }
        (Some(_), Turn::Peek) => {
            let open = e.health.breaker.is_open(now);
            any_open |= open;
            !open
        }
    };
    // A warming endpoint that declined: used if nothing else will take it
    // (and its circuit admits it).
    let mut declined: Option<(usize, &'a Endpoint)> = None;
    loop {
        let picked = (m < skip.len())
            .then(|| select(set, route, key, &skip[..m], turn))
            .flatten();
        let Some((i, e)) = picked else {
            return match declined {
                Some(found) if admit(found.1, ticket) => Some(Some(found)),
                _ if any_open => None,
                _ => Some(None),
            };
        };
        let warming = turn == Turn::Take
            && route
                .slow_start
                .is_some_and(|window| !e.health.warm_enough(now, window));
        if warming {
            declined.get_or_insert((i, e));
        } else if admit(e, ticket) {
            return Some(Some((i, e)));
        }
        skip[m] = i;
        m += 1;
    }
}
