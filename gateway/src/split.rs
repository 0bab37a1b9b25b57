//! A weighted split across a route's targets (`targets = [...]`): which
//! target the next request goes to.
//!
//! The order is nginx's smooth weighted round robin, computed once per
//! table for the weights the route has: weights 90 and 10 give nine turns
//! of the first target spread evenly around one of the second, never a
//! burst of one target (a random draw would clump, and over 10,000
//! requests stray by about ±0.3% where this is exact). A request takes the
//! next turn with one `fetch_add` on a cursor kept in the route's state
//! (`RouteState::split_turn`), so the order carries on across table
//! rebuilds and no lock is taken. A weight change is a route change: the
//! new table has the new order, and the cursor simply goes on in it.
//!
//! A target with no endpoint in rotation (no instance in its subset, or all
//! of them ejected or failing their health check) gives its turn away: the
//! request takes further turns until one lands on a target in rotation, so
//! the turns that count are the order without that target, and its share
//! spreads over the others by their weights. When no target has one, the turn's own target is kept if it has
//! endpoints at all (its balancer then works in panic mode, as for a plain
//! route), else the first that has any.
//!
//! Depends on [`crate::balance`] only (the sequence), so it can be read and
//! tested alone; the router holds one [`SplitOrder`] per split route.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The smooth weighted round-robin order of a split's targets.
#[derive(Debug, Clone, Default)]
pub struct SplitOrder {
    /// Target index for each turn of one full cycle; targets of weight 0
    /// never appear.
    sequence: Vec<u8>,
}

/// The target a turn chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    /// Index of the target in the route's `targets`.
    pub index: usize,
    /// The turn's own target had no endpoint in rotation and was passed
    /// over for this one (or, when `index` is that target, nothing better
    /// was found).
    pub skipped: Option<usize>,
}

impl SplitOrder {
    /// The order for `weights` (at most 256 targets, at least one above 0).
    pub fn new(weights: &[u32]) -> SplitOrder {
        let positive: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
        let sequence = crate::balance::smooth_sequence(positive.iter().map(|&i| weights[i]))
            .into_iter()
            .map(|k| u8::try_from(positive[k as usize]).expect("at most 256 targets"))
            .collect();
        SplitOrder { sequence }
    }

    /// Turns in one full cycle.
    pub fn len(&self) -> usize {
        self.sequence.len()
    }

    /// Whether there is no target to choose.
    pub fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }

    /// The target of the next turn. A request `take`s the turn (moves
    /// `cursor`); `/explain` only looks. `in_rotation(i)` says whether
    /// target `i` has an endpoint that may be picked, `has_any(i)` whether
    /// it has any endpoint. `None` only for an empty order.
    pub fn choose(
        &self,
        cursor: &AtomicUsize,
        take: bool,
        in_rotation: impl Fn(usize) -> bool,
        has_any: impl Fn(usize) -> bool,
    ) -> Option<Chosen> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let turn = if take {
            cursor.fetch_add(1, Ordering::Relaxed)
        } else {
            cursor.load(Ordering::Relaxed)
        };
        let first = usize::from(self.sequence[turn % len]);
        if in_rotation(first) {
            return Some(Chosen {
                index: first,
                skipped: None,
            });
        }
        // Further turns (taken, for a request, as the balancer does):
        // the turns that land on targets in rotation are the sequence
        // without the passed-over target, so its share goes to the others
        // in their own proportions.
        let mut peeked = turn;
        let mut next = || {
            let t = if take {
                cursor.fetch_add(1, Ordering::Relaxed)
            } else {
                peeked = peeked.wrapping_add(1);
                peeked
            };
            usize::from(self.sequence[t % len])
        };
        let index = (1..len)
            .map(|_| next())
            .find(|&i| in_rotation(i))
            .or_else(|| {
                // Nothing in rotation: the turn's own target, or failing
                // that any target with endpoints (panic mode within it).
                let any = (0..self.sequence.len()).map(|k| usize::from(self.sequence[k]));
                (!has_any(first)).then(|| any.clone().find(|&i| has_any(i)))?
            })
            .unwrap_or(first);
        Some(Chosen {
            index,
            skipped: Some(first),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &SplitOrder, n: usize, up: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let cursor = AtomicUsize::new(0);
        let mut seen = vec![0; 4];
        for _ in 0..n {
            let c = order.choose(&cursor, true, up, |_| true).unwrap();
            seen[c.index] += 1;
        }
        seen
    }

    #[test]
    fn turns_follow_the_weights_exactly_over_a_cycle() {
        let order = SplitOrder::new(&[90, 10]);
        assert_eq!(order.len(), 10, "weights reduced by their gcd");
        assert_eq!(counts(&order, 10_000, |_| true)[..2], [9_000, 1_000]);
        let order = SplitOrder::new(&[3, 0, 1]);
        assert_eq!(counts(&order, 400, |_| true)[..3], [300, 0, 100]);
    }

    #[test]
    fn the_smaller_target_is_spread_not_clumped() {
        let order = SplitOrder::new(&[2, 1]);
        let cursor = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..6)
            .map(|_| {
                order
                    .choose(&cursor, true, |_| true, |_| true)
                    .unwrap()
                    .index
            })
            .collect();
        assert_eq!(picks, [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn a_target_out_of_rotation_gives_its_turns_to_the_others() {
        let order = SplitOrder::new(&[50, 25, 25]);
        let seen = counts(&order, 400, |i| i != 0);
        assert_eq!(seen[..3], [0, 200, 200]);
        let cursor = AtomicUsize::new(0);
        let c = order.choose(&cursor, false, |_| false, |i| i == 2).unwrap();
        assert_eq!(c.index, 2, "nothing in rotation: a target with endpoints");
        assert_eq!(c.skipped, Some(0));
        assert_eq!(cursor.load(Ordering::Relaxed), 0, "a peek moves nothing");
    }
}
