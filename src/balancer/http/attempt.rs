//! One request's use of a member, as both ways of forwarding keep it: the member is busy
//! while the request is on it (until its answer is passed on, or its tunnel closes), and
//! the attempt's [`Verdict`] goes to the member's health once the attempt is over.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::balancer::choice::member::Health;
use crate::balancer::choice::registry::Member;
use crate::balancer::rules::stepper::Verdict;

/// A request in flight on a member: `busy` while it lives.
pub struct Busy(Arc<Member>);

impl Busy {
    pub fn new(member: &Arc<Member>) -> Busy {
        member.busy.fetch_add(1, Ordering::Relaxed);
        Busy(member.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One attempt's health bookkeeping: a trial abandoned without a verdict (the client went
/// away) counts as a failure, so the member is not stuck waiting for it. A member in
/// rotation has no trial to start or end: its health is then left alone (and unlocked).
pub struct Attempt {
    member: Arc<Member>,
    settled: bool,
}

impl Attempt {
    pub fn start(member: &Arc<Member>) -> Attempt {
        if !member.in_rotation() {
            member.update_health(Health::on_send);
        }
        member.elected.fetch_add(1, Ordering::Relaxed);
        Attempt {
            member: member.clone(),
            settled: false,
        }
    }

    /// The attempt is over, with this verdict.
    pub fn settle(mut self, verdict: Verdict) {
        match verdict {
            Verdict::Succeeded => {
                self.settled = true;
                if !self.member.in_rotation() {
                    self.member.update_health(Health::on_success);
                }
            }
            Verdict::Failed => {
                self.settled = true;
                self.member.errors.fetch_add(1, Ordering::Relaxed);
                self.member.update_health(|h| h.on_failure(Instant::now()));
            }
            // An error of the member, but slow is not dead: its health is left as for an
            // attempt given up (in error only if it already was: then its trial failed).
            Verdict::Slow => {
                self.member.errors.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Abandoned => {}
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.member.update_health(|h| {
                if h.failures() > 0 {
                    h.on_failure(Instant::now());
                }
            });
        }
    }
}

/// How often a request waiting for a member's answer looks whether the member left.
pub const LEFT_CHECK: Duration = Duration::from_millis(250);

/// `waiting` (an attempt's wait for its answer head), unless discovery drops `member`
/// meanwhile (looked at every [`LEFT_CHECK`]): then `None`, and the attempt counts as the
/// member failing after the request reached it, which the rulebook sends again elsewhere
/// only when that is safe. Without this, a request in flight to a member whose heartbeats
/// stopped (a cut network, a frozen host) waits out the whole member timeout.
pub async fn unless_left<F: Future>(member: &Member, waiting: F) -> Option<F::Output> {
    let mut waiting = std::pin::pin!(waiting);
    loop {
        match tokio::time::timeout(LEFT_CHECK, &mut waiting).await {
            Ok(done) => return Some(done),
            Err(_) if member.has_left() => {
                debug!(member = %member.route, "the member left while a request waited for its answer");
                return None;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Arc<Member> {
        Arc::new(Member::new("m", "http://127.0.0.1:1", 1, true))
    }

    #[test]
    fn a_member_is_busy_while_it_is_tried_and_elected_once_per_attempt() {
        let m = member();
        let busy = Busy::new(&m);
        let attempt = Attempt::start(&m);
        assert_eq!(m.busy.load(Ordering::Relaxed), 1);
        assert_eq!(m.elected.load(Ordering::Relaxed), 1);
        attempt.settle(Verdict::Succeeded);
        assert_eq!(
            m.busy.load(Ordering::Relaxed),
            1,
            "busy until its answer is passed on"
        );
        drop(busy);
        assert_eq!(m.busy.load(Ordering::Relaxed), 0);
        assert_eq!(m.status().state, "ok");
    }

    #[test]
    fn a_failure_puts_the_member_in_error_and_slowness_only_counts() {
        let m = member();
        Attempt::start(&m).settle(Verdict::Slow);
        assert_eq!((m.status().state, m.status().errors), ("ok", 1));
        Attempt::start(&m).settle(Verdict::Abandoned);
        assert_eq!((m.status().state, m.status().errors), ("ok", 1));
        Attempt::start(&m).settle(Verdict::Failed);
        assert_eq!((m.status().state, m.status().errors), ("error", 2));
    }

    #[test]
    fn a_trial_given_up_fails_and_one_that_succeeds_puts_the_member_back() {
        let m = member();
        Attempt::start(&m).settle(Verdict::Failed);
        // On trial, then dropped without a verdict: still in error.
        drop(Attempt::start(&m));
        assert_eq!(m.status().state, "error");
        Attempt::start(&m).settle(Verdict::Succeeded);
        assert_eq!(m.status().state, "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_soon_after_its_member_left_and_not_before() {
        let member = Arc::new(Member::new("n1", "http://127.0.0.1:1", 1, false));
        let registry = crate::balancer::choice::registry::Registry::new(
            crate::config::LbMethod::default(),
            &[],
        );
        registry.set_discovered(&[("n1".into(), "http://127.0.0.1:1".into())]);
        let member_of_registry = registry.members()[0].clone();
        // An answer that comes is passed on, however long it took.
        let slow = async {
            tokio::time::sleep(LEFT_CHECK * 7).await;
            "answer"
        };
        assert_eq!(unless_left(&member, slow).await, Some("answer"));
        // The member is dropped by discovery while a request waits for it forever.
        let started = tokio::time::Instant::now();
        let drop_it = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            registry.set_discovered(&[]);
        };
        let (waited, ()) = tokio::join!(
            unless_left(&member_of_registry, std::future::pending::<()>()),
            drop_it
        );
        assert_eq!(waited, None);
        assert!(member_of_registry.has_left());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took <= Duration::from_secs(2) + LEFT_CHECK,
            "{took:?}"
        );
    }
}
