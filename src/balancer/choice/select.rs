//! Which member serves a request: stickiness first (the session's route, or a hash of the
//! client address or a header), then the lbmethod with `loadfactor` weights, with
//! mod_proxy_balancer's semantics. Pure: no clock, no sockets, no locks; the caller keeps
//! the [`Selector`] where it likes (the registry keeps one per worker: each weighs its own
//! picks, and shares in proportion to the weights add up to such shares) and passes the
//! members' live figures in.

use std::hash::{Hash, Hasher};

use crate::config::LbMethod;

/// What the selector needs to know about one member for one pick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The member's route (its node name: the suffix of its session ids).
    pub route: &'a str,
    /// Weight, 1..=100 as in mod_proxy_balancer.
    pub loadfactor: u32,
    /// It may take requests (not in error, draining or disabled): SPEC's "a sticky route
    /// whose member is down, draining or disabled falls back to the lbmethod".
    pub usable: bool,
    /// Requests in flight (bybusyness).
    pub busy: u64,
    /// Bytes moved so far, in and out (bytraffic).
    pub traffic: u64,
}

/// What a request says about where it belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stickiness<'a> {
    /// No preference.
    None,
    /// The route of its session (cookie suffix or `;jsessionid=`).
    Route(&'a str),
    /// A key to hash onto a member (client address, a header value).
    Key(&'a [u8]),
}

/// The lbmethod's memory between picks: mod_proxy_balancer's `lbstatus` per member,
/// by route, so members may come and go.
#[derive(Debug, Clone)]
pub struct Selector {
    method: LbMethod,
    lbstatus: Vec<(String, i64)>,
}

impl Selector {
    pub fn new(method: LbMethod) -> Selector {
        Selector {
            method,
            lbstatus: Vec::new(),
        }
    }

    pub fn method(&self) -> LbMethod {
        self.method
    }

    /// The index of the member to use, or None when no member is usable. A sticky route
    /// whose member is usable wins; otherwise (unknown route, member down) the lbmethod
    /// picks, so the session moves to a member that can serve it.
    pub fn pick(&mut self, members: &[Candidate], sticky: &Stickiness<'_>) -> Option<usize> {
        match sticky {
            Stickiness::Route(route) => {
                if let Some(i) = members.iter().position(|m| m.usable && m.route == *route) {
                    return Some(i);
                }
            }
            Stickiness::Key(key) => {
                if let Some(i) = rendezvous(members, key) {
                    return Some(i);
                }
            }
            Stickiness::None => {}
        }
        self.by_method(members)
    }

    /// The members in the order a request should try them: the pick first, then the other
    /// usable members by the same method (for a retry after a failure).
    pub fn order(&mut self, members: &[Candidate], sticky: &Stickiness<'_>) -> Vec<usize> {
        let first = self.pick(members, sticky);
        first.into_iter().chain(fallbacks(members, first)).collect()
    }

    fn by_method(&mut self, members: &[Candidate]) -> Option<usize> {
        // Forget members that are gone.
        self.lbstatus
            .retain(|(route, _)| members.iter().any(|m| m.route == *route));
        match self.method {
            LbMethod::ByRequests => self.smooth_weighted(members, |_| true),
            LbMethod::ByBusyness => {
                let least = members.iter().filter(|m| m.usable).map(|m| m.busy).min()?;
                // Among the least busy, the weights decide (as mod_lbmethod_bybusyness).
                self.smooth_weighted(members, |m| m.busy == least)
            }
            LbMethod::ByTraffic => members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.usable)
                // traffic / loadfactor, compared without division: a/x < b/y ⇔ a·y < b·x.
                .min_by(|(_, a), (_, b)| {
                    let left = u128::from(a.traffic) * u128::from(b.loadfactor.max(1));
                    let right = u128::from(b.traffic) * u128::from(a.loadfactor.max(1));
                    left.cmp(&right)
                })
                .map(|(i, _)| i),
        }
    }

    /// mod_proxy_balancer's byrequests: every eligible member's lbstatus grows by its
    /// weight, the largest is chosen and pays back the total. Over time each member gets
    /// requests in proportion to its weight, interleaved smoothly (1:2 gives a b b a b b).
    fn smooth_weighted(
        &mut self,
        members: &[Candidate],
        eligible: impl Fn(&Candidate) -> bool,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, m) in members.iter().enumerate() {
            if !m.usable || !eligible(m) {
                continue;
            }
            let weight = i64::from(m.loadfactor.max(1));
            let status = self.status_mut(m.route);
            *status += weight;
            total += weight;
            let status = *status;
            if best.is_none_or(|(_, s)| status > s) {
                best = Some((i, status));
            }
        }
        let (chosen, _) = best?;
        *self.status_mut(members[chosen].route) -= total;
        Some(chosen)
    }

    fn status_mut(&mut self, route: &str) -> &mut i64 {
        let at = match self.lbstatus.iter().position(|(r, _)| r == route) {
            Some(at) => at,
            None => {
                self.lbstatus.push((route.to_string(), 0));
                self.lbstatus.len() - 1
            }
        };
        &mut self.lbstatus[at].1
    }
}

/// Whether picks by `method` read the members' busy and traffic figures; byrequests
/// weighs by its own count of picks alone (and stickiness reads neither).
pub fn picks_by_figures(method: LbMethod) -> bool {
    match method {
        LbMethod::ByRequests => false,
        LbMethod::ByBusyness | LbMethod::ByTraffic => true,
    }
}

/// The members to try after `first` failed: every other usable one, the least busy
/// first, then the heaviest weight.
pub fn fallbacks(members: &[Candidate], first: Option<usize>) -> Vec<usize> {
    let mut rest: Vec<usize> = (0..members.len())
        .filter(|i| members[*i].usable && Some(*i) != first)
        .collect();
    rest.sort_by_key(|i| (members[*i].busy, std::cmp::Reverse(members[*i].loadfactor)));
    rest
}

/// Highest-random-weight hashing: each key goes to the usable member with the highest
/// hash of (key, route). Stable while membership is stable, and when a member leaves only
/// its own keys move.
fn rendezvous(members: &[Candidate], key: &[u8]) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.usable)
        .max_by_key(|(_, m)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            m.route.hash(&mut h);
            h.finish()
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(route: &str, loadfactor: u32) -> Candidate<'_> {
        Candidate {
            route,
            loadfactor,
            usable: true,
            busy: 0,
            traffic: 0,
        }
    }

    fn counts(selector: &mut Selector, members: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; members.len()];
        for _ in 0..picks {
            counts[selector.pick(members, &Stickiness::None).expect("a member")] += 1;
        }
        counts
    }

    #[test]
    fn byrequests_with_a_1_to_2_weighting_gives_1_to_2_smoothly() {
        let members = [member("a", 1), member("b", 2)];
        let mut s = Selector::new(LbMethod::ByRequests);
        let first: Vec<usize> = (0..6)
            .map(|_| s.pick(&members, &Stickiness::None).unwrap())
            .collect();
        assert_eq!(first, [1, 0, 1, 1, 0, 1], "interleaved, not a burst");
        assert_eq!(counts(&mut s, &members, 1500), [500, 1000]);
    }

    #[test]
    fn byrequests_picks_the_same_whatever_the_busy_and_traffic_figures() {
        assert!(!picks_by_figures(LbMethod::ByRequests));
        let blind = [member("a", 1), member("b", 2), member("c", 3)];
        let mut seen = blind.clone();
        seen[0].busy = 7;
        seen[1].traffic = 1 << 40;
        seen[2].busy = 1;
        let mut without = Selector::new(LbMethod::ByRequests);
        let mut with = Selector::new(LbMethod::ByRequests);
        for i in 0..60 {
            let sticky = if i % 5 == 0 {
                Stickiness::Route("b")
            } else {
                Stickiness::None
            };
            assert_eq!(without.pick(&blind, &sticky), with.pick(&seen, &sticky));
        }
        assert!(picks_by_figures(LbMethod::ByBusyness));
        assert!(picks_by_figures(LbMethod::ByTraffic));
    }

    #[test]
    fn byrequests_with_equal_weights_is_round_robin() {
        let members = [member("a", 1), member("b", 1), member("c", 1)];
        let mut s = Selector::new(LbMethod::ByRequests);
        assert_eq!(counts(&mut s, &members, 300), [100, 100, 100]);
    }

    #[test]
    fn unusable_members_get_nothing_and_none_usable_gives_none() {
        let mut members = [member("a", 1), member("b", 5)];
        members[1].usable = false;
        let mut s = Selector::new(LbMethod::ByRequests);
        assert_eq!(counts(&mut s, &members, 10), [10, 0]);
        members[0].usable = false;
        assert_eq!(s.pick(&members, &Stickiness::None), None);
    }

    #[test]
    fn a_sticky_route_wins_and_falls_back_when_its_member_is_down() {
        let mut members = [member("n1", 1), member("n2", 1), member("n3", 1)];
        let mut s = Selector::new(LbMethod::ByRequests);
        for _ in 0..50 {
            assert_eq!(s.pick(&members, &Stickiness::Route("n2")), Some(1));
        }
        // Down, draining or disabled: its sessions go elsewhere, and so do new ones.
        members[1].usable = false;
        assert_ne!(s.pick(&members, &Stickiness::None), Some(1));
        let picked = s.pick(&members, &Stickiness::Route("n2")).unwrap();
        assert_ne!(picked, 1);
        assert_eq!(
            s.pick(&members, &Stickiness::Route("unknown"))
                .map(|i| members[i].usable),
            Some(true)
        );
    }

    #[test]
    fn bybusyness_prefers_the_least_busy_then_the_weights() {
        let mut members = [member("a", 1), member("b", 1), member("c", 3)];
        members[0].busy = 5;
        let mut s = Selector::new(LbMethod::ByBusyness);
        // b and c are equally idle: 1:3 between them, a gets nothing.
        assert_eq!(counts(&mut s, &members, 400), [0, 100, 300]);
        members[2].busy = 9;
        assert_eq!(s.pick(&members, &Stickiness::None), Some(1));
    }

    #[test]
    fn bytraffic_picks_the_least_traffic_per_weight() {
        let mut members = [member("a", 1), member("b", 2)];
        members[0].traffic = 1000;
        members[1].traffic = 1500;
        let mut s = Selector::new(LbMethod::ByTraffic);
        // a: 1000/1, b: 1500/2 = 750 → b.
        assert_eq!(s.pick(&members, &Stickiness::None), Some(1));
        members[1].traffic = 2500;
        assert_eq!(s.pick(&members, &Stickiness::None), Some(0));
    }

    #[test]
    fn hashed_keys_are_stable_and_only_a_leaving_members_keys_move() {
        let mut members = [member("a", 1), member("b", 1), member("c", 1)];
        let mut s = Selector::new(LbMethod::ByRequests);
        let keys: Vec<String> = (0..300).map(|i| format!("10.0.0.{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| s.pick(&members, &Stickiness::Key(k.as_bytes())).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| s.pick(&members, &Stickiness::Key(k.as_bytes())).unwrap())
            .collect();
        assert_eq!(before, again);
        assert!(
            (0..3).all(|m| before.iter().filter(|b| **b == m).count() > 50),
            "spread over members"
        );
        members[2].usable = false;
        for (k, b) in keys.iter().zip(&before) {
            let now = s.pick(&members, &Stickiness::Key(k.as_bytes())).unwrap();
            if *b != 2 {
                assert_eq!(now, *b, "a key of a staying member moved");
            }
        }
    }

    #[test]
    fn the_retry_order_starts_with_the_pick_and_lists_every_usable_member_once() {
        let mut members = [member("a", 1), member("b", 1), member("c", 1)];
        members[1].usable = false;
        let mut s = Selector::new(LbMethod::ByRequests);
        let order = s.order(&members, &Stickiness::Route("c"));
        assert_eq!(order, [2, 0]);
    }
}
