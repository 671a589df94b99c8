//! The balancer's members: static ones from the config and those discovered from the
//! heartbeats, each with its figures (atomics) and its [`Health`]; and the choice of the
//! members to try for a request, through the pure [`Selector`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use super::member::{Admin, Health};
use super::select::{Candidate, Selector, Stickiness, fallbacks};
use crate::config::{BalancerMember, LbMethod};

/// One member: where it is, its weight, its figures and its health.
#[derive(Debug)]
pub struct Member {
    /// Unique in the process: a member that comes back (or moves) is a new one.
    pub id: u64,
    pub route: String,
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    /// `host:port`, the authority requests are sent to.
    pub authority: String,
    pub loadfactor: u32,
    /// From the config (never removed by discovery).
    pub fixed: bool,
    pub elected: AtomicU64,
    pub busy: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    health: Mutex<Health>,
    /// Mirrors [`Health::in_rotation`], set under the lock: a request reads this alone
    /// while the member is healthy, and takes the lock only when it is not.
    in_rotation: AtomicBool,
}

impl Member {
    pub fn new(route: &str, url: &str, loadfactor: u32, fixed: bool) -> Member {
        let url = url.trim_end_matches('/').to_string();
        let authority = url.strip_prefix("http://").unwrap_or(&url).to_string();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Member {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            route: route.to_string(),
            url,
            authority,
            loadfactor,
            fixed,
            elected: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            health: Mutex::new(Health::new()),
            in_rotation: AtomicBool::new(true),
        }
    }

    /// Changes the member's health.
    pub fn update_health<R>(&self, change: impl FnOnce(&mut Health) -> R) -> R {
        let mut health = self.health.lock();
        let result = change(&mut health);
        self.in_rotation
            .store(health.in_rotation(), Ordering::Release);
        result
    }

    /// Healthy and active (see [`Health::in_rotation`]), read without the lock.
    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Acquire)
    }

    fn candidate(&self, now: Instant) -> Candidate<'_> {
        let (usable, sticky_usable) = if self.in_rotation() {
            (true, true)
        } else {
            let health = self.health.lock();
            (health.usable(now), health.sticky_usable(now))
        };
        Candidate {
            route: &self.route,
            loadfactor: self.loadfactor,
            usable,
            sticky_usable,
            busy: self.busy.load(Ordering::Relaxed),
            traffic: self.bytes_in.load(Ordering::Relaxed) + self.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// The member's line of `/balancer-manager/status`.
    pub fn status(&self) -> MemberStatus {
        MemberStatus {
            route: self.route.clone(),
            url: self.url.clone(),
            loadfactor: self.loadfactor,
            state: self.health.lock().state().as_str(),
            elected: self.elected.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// One member in the SPEC's `/balancer-manager/status` JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub route: String,
    pub url: String,
    pub loadfactor: u32,
    pub state: &'static str,
    pub elected: u64,
    pub busy: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
}

/// All members and the selector that chooses among them.
#[derive(Debug)]
pub struct Registry {
    /// Replaced whole when the members change, so a request takes a snapshot with one
    /// reference count.
    members: Mutex<Members>,
    selector: Mutex<Selector>,
}

/// The members at one moment.
pub type Members = Arc<[Arc<Member>]>;

impl Registry {
    pub fn new(method: LbMethod, fixed: &[BalancerMember]) -> Registry {
        let members = fixed
            .iter()
            .map(|m| Arc::new(Member::new(&m.route, &m.url, m.loadfactor, true)))
            .collect();
        Registry {
            members: Mutex::new(members),
            selector: Mutex::new(Selector::new(method)),
        }
    }

    pub fn members(&self) -> Members {
        self.members.lock().clone()
    }

    /// Sets a member's admin state (drain, disable, enable); false when no such route.
    pub fn set_admin(&self, route: &str, admin: Admin) -> bool {
        match self.members().iter().find(|m| m.route == route) {
            Some(m) => {
                m.update_health(|h| h.set_admin(admin));
                true
            }
            None => false,
        }
    }

    /// The members to try for a request, best first.
    pub fn order(&self, sticky: &Stickiness<'_>, now: Instant) -> Order {
        let members = self.members();
        let candidates: Vec<Candidate> = members.iter().map(|m| m.candidate(now)).collect();
        let first = self.selector.lock().pick(&candidates, sticky);
        drop(candidates);
        Order {
            members,
            now,
            first,
            rest: None,
            started: false,
        }
    }

    /// Replaces the discovered members by `found` (route, url): a member still there keeps
    /// its figures and health; a static member's route is never taken over.
    pub fn set_discovered(&self, found: &[(String, String)]) {
        let mut members = self.members.lock();
        let kept: Vec<Arc<Member>> = members
            .iter()
            .filter(|m| {
                m.fixed
                    || found
                        .iter()
                        .any(|(route, url)| *route == m.route && url.trim_end_matches('/') == m.url)
            })
            .cloned()
            .collect();
        let mut next = kept;
        for (route, url) in found {
            if !next.iter().any(|m| m.route == *route) {
                next.push(Arc::new(Member::new(route, url, 1, false)));
            }
        }
        *members = next.into();
    }
}

/// The members one request tries, best first: the pick, then, only when it failed, the
/// other usable members (see [`fallbacks`]), which are worked out only then.
pub struct Order {
    members: Members,
    now: Instant,
    first: Option<usize>,
    /// None until the pick was handed out and failed.
    rest: Option<std::vec::IntoIter<usize>>,
    started: bool,
}

impl Order {
    /// No member is usable.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Whether a member other than the pick might be tried.
    pub fn has_alternatives(&self) -> bool {
        self.members.len() > 1
    }
}

impl Iterator for Order {
    type Item = Arc<Member>;

    fn next(&mut self) -> Option<Arc<Member>> {
        if !self.started {
            self.started = true;
            if let Some(first) = self.first {
                return Some(self.members[first].clone());
            }
        }
        let rest = self.rest.get_or_insert_with(|| {
            let candidates: Vec<Candidate> =
                self.members.iter().map(|m| m.candidate(self.now)).collect();
            fallbacks(&candidates, self.first).into_iter()
        });
        rest.next().map(|at| self.members[at].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(route: &str, port: u16, loadfactor: u32) -> BalancerMember {
        BalancerMember {
            url: format!("http://127.0.0.1:{port}"),
            route: route.to_string(),
            loadfactor,
        }
    }

    fn routes(registry: &Registry) -> Vec<String> {
        registry.members().iter().map(|m| m.route.clone()).collect()
    }

    #[test]
    fn discovery_adds_and_removes_but_keeps_static_members_and_figures() {
        let r = Registry::new(LbMethod::ByRequests, &[fixed("s1", 9001, 2)]);
        r.set_discovered(&[
            ("n1".into(), "http://127.0.0.1:9101".into()),
            ("s1".into(), "http://127.0.0.1:9999".into()),
        ]);
        assert_eq!(routes(&r), ["s1", "n1"]);
        assert_eq!(r.members()[0].url, "http://127.0.0.1:9001");
        r.members()[1].elected.store(5, Ordering::Relaxed);
        r.set_discovered(&[
            ("n1".into(), "http://127.0.0.1:9101".into()),
            ("n2".into(), "http://127.0.0.1:9102".into()),
        ]);
        assert_eq!(routes(&r), ["s1", "n1", "n2"]);
        assert_eq!(r.members()[1].elected.load(Ordering::Relaxed), 5);
        r.set_discovered(&[("n2".into(), "http://127.0.0.1:9102".into())]);
        assert_eq!(routes(&r), ["s1", "n2"]);
        // A restarted node on another port is a new member.
        r.set_discovered(&[("n2".into(), "http://127.0.0.1:9202".into())]);
        assert_eq!(r.members()[1].authority, "127.0.0.1:9202");
    }

    #[test]
    fn the_order_skips_members_in_error_and_follows_the_sticky_route() {
        let r = Registry::new(
            LbMethod::ByRequests,
            &[fixed("a", 9001, 1), fixed("b", 9002, 1)],
        );
        let now = Instant::now();
        let order: Vec<String> = r
            .order(&Stickiness::Route("b"), now)
            .map(|m| m.route.clone())
            .collect();
        assert_eq!(order, ["b", "a"]);
        r.members()[1].update_health(|h| h.on_failure(now));
        let order: Vec<String> = r
            .order(&Stickiness::Route("b"), now)
            .map(|m| m.route.clone())
            .collect();
        assert_eq!(order, ["a"]);
        r.members()[0].update_health(|h| h.on_failure(now));
        assert!(r.order(&Stickiness::None, now).is_empty());
        assert_eq!(r.members()[0].status().state, "error");
    }
}
