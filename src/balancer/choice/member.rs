//! A member's health and administrative state, with hysteresis: a member that fails is put
//! in error and tried again after a retry interval that doubles while it keeps failing
//! (one trial request at a time), and is back in rotation at its first success. Pure:
//! time comes in as an argument.

use std::time::{Duration, Instant};

/// What `/balancer-manager/status` shows (SPEC): `ok`, `error`, `draining` or `disabled`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    Ok,
    Error,
    Draining,
    Disabled,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Ok => "ok",
            MemberState::Error => "error",
            MemberState::Draining => "draining",
            MemberState::Disabled => "disabled",
        }
    }
}

/// Set by an operator from the manager page.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admin {
    /// In rotation.
    Active,
    /// Taken out of every choice, sticky or not (SPEC), while it stays listed: what a
    /// deploy does before stopping a member.
    Draining,
    /// No requests at all.
    Disabled,
}

/// The first retry interval after a failure, and the longest.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    admin: Admin,
    /// Consecutive failures; 0 when healthy.
    failures: u32,
    /// While in error: when a trial request may go.
    retry_at: Option<Instant>,
    /// A trial request is on its way.
    trial: bool,
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            admin: Admin::Active,
            failures: 0,
            retry_at: None,
            trial: false,
        }
    }

    pub fn set_admin(&mut self, admin: Admin) {
        self.admin = admin;
    }

    pub fn state(&self) -> MemberState {
        match self.admin {
            Admin::Disabled => MemberState::Disabled,
            Admin::Draining => MemberState::Draining,
            Admin::Active if self.failures > 0 => MemberState::Error,
            Admin::Active => MemberState::Ok,
        }
    }

    /// Whether new requests may go to it now. A member in error takes one trial request
    /// once its retry interval has passed.
    pub fn usable(&self, now: Instant) -> bool {
        self.admin == Admin::Active && self.healthy_or_due(now)
    }

    /// Healthy and active: it takes any request, whatever the time. What a request reads
    /// without the lock (see the registry's `Member`).
    pub fn in_rotation(&self) -> bool {
        self.admin == Admin::Active && self.failures == 0
    }

    fn healthy_or_due(&self, now: Instant) -> bool {
        self.failures == 0 || (!self.trial && self.retry_at.is_some_and(|at| now >= at))
    }

    /// A request is sent to it; a member in error is now on trial. The caller reports the
    /// outcome of every send (success or failure, after its own timeout), or the trial
    /// would never end.
    pub fn on_send(&mut self) {
        if self.failures > 0 {
            self.trial = true;
        }
    }

    /// It answered: back in rotation.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.trial = false;
    }

    /// It refused or dropped a connection: in error, retried after an interval that
    /// doubles with every consecutive failure (from [`RETRY_MIN`] up to [`RETRY_MAX`]).
    pub fn on_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let retry = RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX);
        self.retry_at = Some(now + retry);
        self.trial = false;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_new_member_is_ok_and_usable() {
        let h = Health::new();
        assert_eq!(h.state(), MemberState::Ok);
        assert!(h.usable(Instant::now()));
        assert!(h.in_rotation());
    }

    #[test]
    fn only_a_healthy_active_member_is_in_rotation() {
        let mut h = Health::new();
        h.on_failure(Instant::now());
        assert!(!h.in_rotation());
        h.on_success();
        assert!(h.in_rotation());
        h.set_admin(Admin::Draining);
        assert!(!h.in_rotation());
    }

    #[test]
    fn a_failure_puts_it_in_error_until_the_retry_interval_passes() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.on_failure(t0);
        assert_eq!(h.state(), MemberState::Error);
        assert!(!h.usable(t0 + ms(499)));
        assert!(h.usable(t0 + RETRY_MIN));
    }

    #[test]
    fn only_one_trial_request_goes_to_a_member_in_error() {
        let t0 = Instant::now();
        let mut h = Health::new();
        h.on_failure(t0);
        let later = t0 + RETRY_MIN;
        assert!(h.usable(later));
        h.on_send();
        assert!(
            !h.usable(later),
            "a second request waits for the trial's outcome"
        );
        h.on_success();
        assert_eq!(h.state(), MemberState::Ok);
        assert!(h.usable(later));
    }

    #[test]
    fn the_retry_interval_doubles_while_it_keeps_failing_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut h = Health::new();
        let mut expected = RETRY_MIN;
        for _ in 0..12 {
            h.on_failure(t0);
            assert!(!h.usable(t0 + expected - ms(1)));
            assert!(h.usable(t0 + expected));
            expected = (expected * 2).min(RETRY_MAX);
        }
        assert_eq!(expected, RETRY_MAX);
    }

    #[test]
    fn draining_and_disabled_members_take_no_request() {
        let now = Instant::now();
        let mut h = Health::new();
        h.set_admin(Admin::Draining);
        assert_eq!(h.state(), MemberState::Draining);
        assert!(!h.usable(now));
        h.set_admin(Admin::Disabled);
        assert_eq!(h.state(), MemberState::Disabled);
        assert!(!h.usable(now));
        h.set_admin(Admin::Active);
        assert!(h.usable(now));
    }
}
