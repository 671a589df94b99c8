//! The members as the driver last saw them: what `/status`, replication, state transfer
//! and the balancer read. A plain value; the driver publishes it (a tokio watch lives in
//! `heartbeat`, not here).

use std::time::{Duration, Instant};

use super::MemberView;

/// A snapshot of the member table, taken at one instant, so a reader can age the
/// "last heard" figures to its own `now` without asking the table again.
#[derive(Clone, Debug, Default)]
pub struct MembershipView {
    /// When the snapshot was taken; none before anything was heard (no member to age).
    taken_at: Option<Instant>,
    pub members: Vec<MemberView>,
}

impl MembershipView {
    /// The view of a node that has heard nobody yet.
    pub fn empty() -> MembershipView {
        MembershipView::default()
    }

    /// `members` as the table listed them at `taken_at`.
    pub fn new(taken_at: Instant, members: Vec<MemberView>) -> MembershipView {
        MembershipView {
            taken_at: Some(taken_at),
            members,
        }
    }

    /// Time since `member` was last heard, as of `now`.
    pub fn last_heard(&self, member: &MemberView, now: Instant) -> Duration {
        let since_taken = self
            .taken_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        member.last_heard + since_taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MemberInfo, MemberState, NodeId};

    fn heard(ago: Duration) -> MemberView {
        MemberView {
            info: MemberInfo {
                id: NodeId::from_u64(1),
                name: "n1".into(),
                http: "127.0.0.1:1".parse().unwrap(),
                replication: "127.0.0.1:2".parse().unwrap(),
                incarnation: 1,
            },
            state: MemberState::Alive,
            last_heard: ago,
            joining: false,
        }
    }

    #[test]
    fn last_heard_grows_with_the_age_of_the_snapshot() {
        let t0 = Instant::now();
        let view = MembershipView::new(t0, vec![heard(Duration::from_millis(120))]);
        let member = &view.members[0];
        assert_eq!(view.last_heard(member, t0), Duration::from_millis(120));
        assert_eq!(
            view.last_heard(member, t0 + Duration::from_secs(1)),
            Duration::from_millis(1120)
        );
    }

    #[test]
    fn a_reader_whose_now_is_older_than_the_snapshot_sees_the_snapshot_figure() {
        let t0 = Instant::now();
        let view = MembershipView::new(
            t0 + Duration::from_secs(1),
            vec![heard(Duration::from_millis(5))],
        );
        assert_eq!(
            view.last_heard(&view.members[0], t0),
            Duration::from_millis(5)
        );
    }
}
