//! The balancer's members: static ones from the config and those discovered from the
//! heartbeats, each with its figures (atomics) and its [`Health`]; and the choice of the
//! members to try for a request, through the pure [`Selector`].

use std::num::NonZero;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use super::member::{Admin, Health};
use super::select::{Candidate, Selector, Stickiness, fallbacks, picks_by_figures};
use crate::config::{BalancerMember, LbMethod};

/// One member: where it is, its weight, its figures and its health.
///
/// `repr(C)` keeps the fields in this order, so that what every choice reads (up to
/// `in_rotation`) and what every request writes (the figures, after `_written`) sit on
/// different cache lines: a request's count on one worker does not take from the other
/// workers the line their next choice reads.
#[derive(Debug)]
#[repr(C)]
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
    /// Mirrors [`Health::in_rotation`], set under the lock: a request reads this alone
    /// while the member is healthy, and takes the lock only when it is not.
    in_rotation: AtomicBool,
    health: Mutex<Health>,
    /// Set when discovery drops the member (its heartbeats stopped, or it left): a
    /// request still waiting for its answer stops waiting (see [`Member::has_left`]).
    left: AtomicBool,
    _written: CacheLine,
    pub elected: AtomicU64,
    pub busy: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    /// Its answers by status class ([`STATUS_CLASSES`]).
    answers: [AtomicU64; STATUS_CLASSES.len()],
}

/// The status classes answers are counted by: `1xx` to `5xx`, and `other` (600..999,
/// which a member may send and the balancer passes on).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// The index in [`STATUS_CLASSES`] of a status code.
pub fn status_class(status: u16) -> usize {
    match status / 100 {
        1..=5 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// Takes no room but starts a new cache line (two, for the prefetcher that fetches
/// lines in pairs) where it stands in a `repr(C)` struct.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CacheLine;

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
            in_rotation: AtomicBool::new(true),
            health: Mutex::new(Health::new()),
            left: AtomicBool::new(false),
            _written: CacheLine,
            elected: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            answers: Default::default(),
        }
    }

    /// It answered with `status` (the head of its answer came).
    pub fn answered(&self, status: u16) {
        self.answers[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Its answers so far, by status class ([`STATUS_CLASSES`]).
    pub fn answers(&self) -> [u64; STATUS_CLASSES.len()] {
        std::array::from_fn(|i| self.answers[i].load(Ordering::Relaxed))
    }

    /// Whether discovery dropped the member: a request waiting for its answer takes this as
    /// the member failing (see [`crate::balancer::http::attempt::unless_left`]), and the
    /// rulebook sends it elsewhere when it may be sent twice, instead of waiting out the
    /// member timeout on a member that is gone.
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
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

    /// The member as the selector sees it at `now`; its busy and traffic figures only
    /// when `figures` (they are the lines every request writes, see [`Member`]).
    fn candidate(&self, now: Instant, figures: bool) -> Candidate<'_> {
        let usable = self.in_rotation() || self.health.lock().usable(now);
        Candidate {
            route: &self.route,
            loadfactor: self.loadfactor,
            usable,
            busy: if figures {
                self.busy.load(Ordering::Relaxed)
            } else {
                0
            },
            traffic: if figures {
                self.bytes_in.load(Ordering::Relaxed) + self.bytes_out.load(Ordering::Relaxed)
            } else {
                0
            },
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

/// All members and the lbmethod's memory. A request reads the member list without a
/// lock (an [`ArcSwap`] snapshot, replaced whole when discovery changes it) and keeps the
/// lbmethod's memory on its own worker, so the workers share no lock on the way to a
/// member; what they do share, the members' figures and health, are atomics (see
/// [`Member`]).
#[derive(Debug)]
pub struct Registry {
    members: ArcSwap<Vec<Arc<Member>>>,
    /// Held by whoever replaces the member list, so two changes never lose one another;
    /// never taken by a request.
    changes: Mutex<()>,
    /// One lbmethod memory per worker thread (see [`worker_slot`]). Each worker weighs on
    /// its own, which keeps every worker's share, and so the sum, in proportion to the
    /// loadfactors. The lock of a slot is taken by its worker alone, so it is never waited
    /// for; it is there for the threads of tests, which may share a slot.
    selectors: Box<[WorkerSelector]>,
}

/// A worker's [`Selector`], alone on its cache lines so that no two workers write one.
#[derive(Debug)]
#[repr(align(128))]
struct WorkerSelector(Mutex<Selector>);

/// The members at one moment.
pub type Members = Arc<Vec<Arc<Member>>>;

/// The slot of the calling thread: threads are numbered in the order they first ask, so
/// the balancer's workers, the only threads that choose, get one slot each.
fn worker_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

impl Registry {
    pub fn new(method: LbMethod, fixed: &[BalancerMember]) -> Registry {
        let workers = std::thread::available_parallelism().map_or(1, NonZero::get);
        Registry::with_workers(method, fixed, workers)
    }

    fn with_workers(method: LbMethod, fixed: &[BalancerMember], workers: usize) -> Registry {
        let members = fixed
            .iter()
            .map(|m| Arc::new(Member::new(&m.route, &m.url, m.loadfactor, true)))
            .collect();
        Registry {
            members: ArcSwap::from_pointee(members),
            changes: Mutex::new(()),
            selectors: (0..workers.max(1))
                .map(|_| WorkerSelector(Mutex::new(Selector::new(method))))
                .collect(),
        }
    }

    pub fn members(&self) -> Members {
        self.members.load_full()
    }

    /// Sets a member's admin state (drain, disable, enable); false when no such route.
    pub fn set_admin(&self, route: &str, admin: Admin) -> bool {
        match self.members.load().iter().find(|m| m.route == route) {
            Some(m) => {
                m.update_health(|h| h.set_admin(admin));
                true
            }
            None => false,
        }
    }

    /// The members to try for a request, best first.
    pub fn order(&self, sticky: &Stickiness<'_>, now: Instant) -> Order<'_> {
        self.order_on(worker_slot(), sticky, now)
    }

    /// [`Registry::order`] with the lbmethod memory of worker `slot`.
    fn order_on(&self, slot: usize, sticky: &Stickiness<'_>, now: Instant) -> Order<'_> {
        let members = self.members.load();
        let mut selector = self.selectors[slot % self.selectors.len()].0.lock();
        let figures = picks_by_figures(selector.method());
        let candidates: Vec<Candidate> =
            members.iter().map(|m| m.candidate(now, figures)).collect();
        let first = selector.pick(&candidates, sticky);
        drop(selector);
        drop(candidates);
        let named = match sticky {
            Stickiness::Route(route) => first.filter(|at| members[*at].route == *route),
            _ => None,
        };
        Order {
            registry: self,
            now,
            first: first.map(|at| members[at].clone()),
            first_id: first.map(|at| members[at].id),
            named: named.map(|at| members[at].id),
            alternatives: members.len() > 1,
            rest: None,
        }
    }

    /// Replaces the discovered members by `found` (route, url): a member still there keeps
    /// its figures and health; a static member's route is never taken over. Requests that
    /// choose after this returns see the new list.
    pub fn set_discovered(&self, found: &[(String, String)]) {
        let _changing = self.changes.lock();
        let members = self.members.load();
        let mut next: Vec<Arc<Member>> = members
            .iter()
            .filter(|m| {
                m.fixed
                    || found
                        .iter()
                        .any(|(route, url)| *route == m.route && url.trim_end_matches('/') == m.url)
            })
            .cloned()
            .collect();
        for (route, url) in found {
            if !next.iter().any(|m| m.route == *route) {
                next.push(Arc::new(Member::new(route, url, 1, false)));
            }
        }
        let dropped: Vec<Arc<Member>> = members
            .iter()
            .filter(|m| !next.iter().any(|n| n.id == m.id))
            .cloned()
            .collect();
        drop(members);
        self.members.store(Arc::new(next));
        // After the new list is in place, so a request sent elsewhere cannot pick it again.
        for member in dropped {
            member.left.store(true, Ordering::Release);
        }
    }
}

/// The members one request tries, best first: the pick, then, only when it failed, the
/// other usable members (see [`fallbacks`]), which are worked out only then, from the
/// members of that moment.
pub struct Order<'r> {
    registry: &'r Registry,
    now: Instant,
    /// The pick, until it is handed out.
    first: Option<Arc<Member>>,
    first_id: Option<u64>,
    /// The pick, when it is the member the request's sticky route named.
    named: Option<u64>,
    alternatives: bool,
    /// None until the pick was handed out and failed.
    rest: Option<std::vec::IntoIter<Arc<Member>>>,
}

impl Order<'_> {
    /// No member is usable.
    pub fn is_empty(&self) -> bool {
        self.first_id.is_none()
    }

    /// The id of the member the request's sticky route named, when that member is the
    /// pick (it is live: neither gone, nor in error, nor disabled); None when the request
    /// named none, or one the lbmethod had to replace.
    pub fn named(&self) -> Option<u64> {
        self.named
    }

    /// Whether a member other than the pick might be tried.
    pub fn has_alternatives(&self) -> bool {
        self.alternatives
    }
}

impl Iterator for Order<'_> {
    type Item = Arc<Member>;

    fn next(&mut self) -> Option<Arc<Member>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let rest = self.rest.get_or_insert_with(|| {
            let members = self.registry.members.load();
            let candidates: Vec<Candidate> = members
                .iter()
                .map(|m| m.candidate(self.now, true))
                .collect();
            let first = self
                .first_id
                .and_then(|id| members.iter().position(|m| m.id == id));
            fallbacks(&candidates, first)
                .into_iter()
                .map(|at| members[at].clone())
                .collect::<Vec<_>>()
                .into_iter()
        });
        rest.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::choice::member::RETRY_MIN;

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

    fn picks(r: &Registry, slot: usize, n: usize) -> Vec<String> {
        let now = Instant::now();
        (0..n)
            .map(|_| {
                r.order_on(slot, &Stickiness::None, now)
                    .next()
                    .map_or_else(|| "-".to_string(), |m| m.route.clone())
            })
            .collect()
    }

    #[test]
    fn each_worker_weighs_on_its_own_and_starts_its_own_round() {
        let r = Registry::with_workers(
            LbMethod::ByRequests,
            &[fixed("a", 9001, 1), fixed("b", 9002, 2)],
            2,
        );
        assert_eq!(picks(&r, 0, 3), ["b", "a", "b"]);
        // Worker 1's round is its own: worker 0's picks did not move it.
        assert_eq!(picks(&r, 1, 1), ["b"]);
        assert_eq!(picks(&r, 0, 3), ["b", "a", "b"]);
        assert_eq!(picks(&r, 1, 2), ["a", "b"]);
    }

    #[test]
    fn workers_choosing_at_once_keep_a_1_to_2_weighting_overall() {
        let r = Registry::with_workers(
            LbMethod::ByRequests,
            &[fixed("a", 9001, 1), fixed("b", 9002, 2)],
            2,
        );
        let per_thread = 300;
        let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut a = 0;
                        let mut b = 0;
                        for _ in 0..per_thread {
                            let pick = r.order(&Stickiness::None, Instant::now()).next();
                            match pick.as_deref().map(|m| m.route.as_str()) {
                                Some("a") => a += 1,
                                Some("b") => b += 1,
                                other => panic!("unexpected pick {other:?}"),
                            }
                        }
                        (a, b)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("a picking thread"))
                .collect()
        });
        let a: usize = counts.iter().map(|c| c.0).sum();
        let b: usize = counts.iter().map(|c| c.1).sum();
        // Each worker's round of 3 gives a once and b twice; 1 200 picks are 400 rounds.
        assert_eq!((a, b), (400, 800));
    }

    #[test]
    fn bybusyness_and_bytraffic_choose_by_the_live_figures_of_every_worker() {
        let members = [fixed("a", 9001, 1), fixed("b", 9002, 1)];
        let r = Registry::with_workers(LbMethod::ByBusyness, &members, 2);
        r.members()[0].busy.store(3, Ordering::Relaxed);
        assert_eq!(picks(&r, 0, 3), ["b", "b", "b"]);
        assert_eq!(picks(&r, 1, 1), ["b"]);
        r.members()[1].busy.store(4, Ordering::Relaxed);
        assert_eq!(picks(&r, 1, 1), ["a"]);
        let r = Registry::with_workers(LbMethod::ByTraffic, &members, 2);
        r.members()[0].bytes_in.store(100, Ordering::Relaxed);
        assert_eq!(picks(&r, 0, 1), ["b"]);
        r.members()[1].bytes_out.store(101, Ordering::Relaxed);
        assert_eq!(picks(&r, 1, 1), ["a"]);
    }

    #[test]
    fn the_fallbacks_go_to_the_least_busy_first() {
        let r = Registry::with_workers(
            LbMethod::ByRequests,
            &[
                fixed("a", 9001, 1),
                fixed("b", 9002, 1),
                fixed("c", 9003, 1),
            ],
            1,
        );
        r.members()[1].busy.store(2, Ordering::Relaxed);
        let order: Vec<String> = r
            .order_on(0, &Stickiness::Route("a"), Instant::now())
            .map(|m| m.route.clone())
            .collect();
        assert_eq!(order, ["a", "c", "b"]);
    }

    #[test]
    fn the_figures_every_request_writes_start_a_cache_line_after_what_choices_read() {
        use std::mem::{offset_of, size_of};
        let read_end = offset_of!(Member, health) + size_of::<Mutex<Health>>();
        assert!(offset_of!(Member, in_rotation) < offset_of!(Member, health));
        assert!(offset_of!(Member, elected) >= read_end);
        assert_eq!(offset_of!(Member, elected) % 128, 0);
        assert!(offset_of!(Member, errors) < offset_of!(Member, elected) + 128);
    }

    #[test]
    fn a_member_discovered_or_dropped_is_seen_by_the_next_choice_of_every_worker() {
        let r = Registry::with_workers(LbMethod::ByRequests, &[], 2);
        assert_eq!(picks(&r, 0, 1), ["-"]);
        r.set_discovered(&[("n1".into(), "http://127.0.0.1:9101".into())]);
        assert_eq!(picks(&r, 0, 2), ["n1", "n1"]);
        assert_eq!(picks(&r, 1, 1), ["n1"]);
        r.set_discovered(&[
            ("n1".into(), "http://127.0.0.1:9101".into()),
            ("n2".into(), "http://127.0.0.1:9102".into()),
        ]);
        let mut seen = picks(&r, 0, 2);
        seen.sort();
        assert_eq!(seen, ["n1", "n2"]);
        assert_eq!(picks(&r, 1, 2).len(), 2);
        r.set_discovered(&[("n2".into(), "http://127.0.0.1:9102".into())]);
        assert_eq!(picks(&r, 0, 3), ["n2", "n2", "n2"]);
        assert_eq!(picks(&r, 1, 3), ["n2", "n2", "n2"]);
    }

    #[test]
    fn a_member_put_in_error_is_skipped_by_every_worker_until_it_answers_again() {
        let r = Registry::with_workers(
            LbMethod::ByRequests,
            &[fixed("a", 9001, 1), fixed("b", 9002, 1)],
            2,
        );
        let t0 = Instant::now();
        r.members()[0].update_health(|h| h.on_failure(t0));
        for slot in 0..2 {
            for _ in 0..4 {
                let order: Vec<String> = r
                    .order_on(slot, &Stickiness::Route("a"), t0)
                    .map(|m| m.route.clone())
                    .collect();
                assert_eq!(order, ["b"], "worker {slot}");
            }
        }
        // Its retry interval passed: one worker sends the trial, the others wait for it.
        let later = t0 + RETRY_MIN;
        let trial = r.order_on(0, &Stickiness::Route("a"), later).next();
        assert_eq!(trial.as_deref().map(|m| m.route.as_str()), Some("a"));
        r.members()[0].update_health(Health::on_send);
        for slot in 0..2 {
            let order: Vec<String> = r
                .order_on(slot, &Stickiness::Route("a"), later)
                .map(|m| m.route.clone())
                .collect();
            assert_eq!(order, ["b"], "worker {slot} while the trial is out");
        }
        r.members()[0].update_health(Health::on_success);
        for slot in 0..2 {
            let order: Vec<String> = r
                .order_on(slot, &Stickiness::Route("a"), later)
                .map(|m| m.route.clone())
                .collect();
            assert_eq!(order, ["a", "b"], "worker {slot} after the trial");
        }
    }

    #[test]
    fn the_members_tried_after_a_failed_pick_are_those_of_that_moment() {
        let r = Registry::with_workers(LbMethod::ByRequests, &[fixed("a", 9001, 1)], 1);
        r.set_discovered(&[("n1".into(), "http://127.0.0.1:9101".into())]);
        let mut order = r.order_on(0, &Stickiness::Route("a"), Instant::now());
        assert!(order.has_alternatives());
        assert_eq!(order.next().map(|m| m.route.clone()).as_deref(), Some("a"));
        // Discovery replaced n1 by n2 while the pick was being tried.
        r.set_discovered(&[("n2".into(), "http://127.0.0.1:9102".into())]);
        let rest: Vec<String> = order.map(|m| m.route.clone()).collect();
        assert_eq!(rest, ["n2"]);
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
