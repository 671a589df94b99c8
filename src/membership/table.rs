//! The member table and its timing rules (see the module doc of `membership`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Announce, Heartbeat, MemberInfo, MemberState, NodeId};

/// The timing rules of failure detection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often members send heartbeats.
    pub heartbeat: Duration,
    /// Silence after which a member is suspect and verified over TCP (two heartbeats).
    pub suspect_after: Duration,
    /// Silence, with no verification answered either, after which a suspect is dropped.
    pub drop_after: Duration,
    /// How often an unanswered suspect is verified again.
    pub reverify_every: Duration,
}

impl Timing {
    pub fn new(heartbeat: Duration, drop_after: Duration) -> Timing {
        Timing {
            heartbeat,
            suspect_after: heartbeat * 2,
            drop_after,
            reverify_every: heartbeat,
        }
    }
}

/// The answer of a TCP verification of a suspect (Tomcat's TcpFailureDetector, faster).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It answered a ping: the process is alive, only datagrams were lost.
    Answered,
    /// Connection refused: nothing listens there, the process is gone.
    Refused,
    /// No answer in time: a frozen process or an unreachable host.
    NoAnswer,
}

/// Why a member left the table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It announced that it is leaving.
    Left,
    /// Verification found nothing listening on its replication port.
    Refused,
    /// Neither heartbeats nor verification answers for `drop_after`.
    Silent,
    /// A newer incarnation under the same name took its place.
    Replaced,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Left => "left",
            DropReason::Refused => "refused",
            DropReason::Silent => "silent",
            DropReason::Replaced => "replaced",
        }
    }
}

/// What changed, or what the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Joined(MemberInfo),
    Suspected(NodeId),
    /// A suspect proved alive again (a heartbeat or an answered verification).
    Recovered(NodeId),
    Dropped {
        info: MemberInfo,
        reason: DropReason,
    },
    /// Verify this member over TCP and report with [`MemberTable::on_verdict`].
    Verify {
        id: NodeId,
        addr: SocketAddr,
    },
    /// A new member was ignored because the table holds [`MAX_MEMBERS`] already.
    TableFull {
        ignored: NodeId,
    },
    /// A heartbeat used the name of a newer member and was ignored.
    NameConflict {
        name: String,
        kept: NodeId,
        ignored: NodeId,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Verification {
    Idle,
    InFlight,
}

/// One member as the table holds it.
#[derive(Clone, Debug)]
pub struct Member {
    pub info: MemberInfo,
    pub state: MemberState,
    /// Last heartbeat from it.
    pub last_heard: Instant,
    /// Last proof of life: a heartbeat or an answered verification.
    last_alive: Instant,
    /// When the last verification started (the one in flight, if any).
    last_verify_started: Option<Instant>,
    verification: Verification,
    /// The last verification got no answer: only then may silence drop it, so a node
    /// that was itself frozen verifies everyone before dropping anyone.
    unanswered: bool,
    /// Its last heartbeat said it is still taking its state transfer.
    pub joining: bool,
}

impl Member {
    /// A verdict is stale when the member proved alive after the verification began.
    fn verdict_is_stale(&self) -> bool {
        self.last_verify_started
            .is_some_and(|started| self.last_alive > started)
    }

    /// Starts a verification unless one is in flight or one started too recently.
    fn start_verification(&mut self, now: Instant, every: Duration) -> Option<Event> {
        let due = self
            .last_verify_started
            .is_none_or(|at| now.saturating_duration_since(at) >= every);
        if self.verification == Verification::InFlight || !due {
            return None;
        }
        self.verification = Verification::InFlight;
        self.last_verify_started = Some(now);
        Some(Event::Verify {
            id: self.info.id,
            addr: self.info.replication,
        })
    }
}

/// Most members a table holds: forged heartbeats with fresh ids cannot grow it further.
pub const MAX_MEMBERS: usize = 1024;

/// A member as shown in `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub info: MemberInfo,
    pub state: MemberState,
    pub last_heard: Duration,
    /// It said it is still taking its state transfer (not serving yet).
    pub joining: bool,
}

/// The members of the cluster other than this node.
#[derive(Debug)]
pub struct MemberTable {
    me: NodeId,
    timing: Timing,
    members: BTreeMap<NodeId, Member>,
    /// Ids whose late datagrams must not bring them back, until the instant given.
    quarantine: HashMap<NodeId, Instant>,
}

impl MemberTable {
    pub fn new(me: NodeId, timing: Timing) -> MemberTable {
        MemberTable {
            me,
            timing,
            members: BTreeMap::new(),
            quarantine: HashMap::new(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The members for display, ordered by name.
    pub fn view(&self, now: Instant) -> Vec<MemberView> {
        let mut view: Vec<MemberView> = self
            .members
            .values()
            .map(|m| MemberView {
                info: m.info.clone(),
                state: m.state,
                last_heard: now.saturating_duration_since(m.last_heard),
                joining: m.joining,
            })
            .collect();
        view.sort_by(|a, b| {
            a.info
                .name
                .cmp(&b.info.name)
                .then(a.info.id.cmp(&b.info.id))
        });
        view
    }

    /// A heartbeat arrived from `hb.info.id` (already checked to be of our cluster).
    pub fn on_heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let id = hb.info.id;
        if id == self.me {
            return events;
        }
        if hb.announce == Announce::Leaving {
            self.quarantine.insert(id, now + self.timing.drop_after);
            if let Some(m) = self.members.remove(&id) {
                events.push(Event::Dropped {
                    info: m.info,
                    reason: DropReason::Left,
                });
            }
            return events;
        }
        if let Some(m) = self.members.get_mut(&id) {
            // A process keeps its name and addresses for life: a restart is a new id, so
            // whatever else a datagram under this id claims is not taken.
            m.last_heard = now;
            m.last_alive = now;
            m.unanswered = false;
            m.joining = hb.announce == Announce::Joining;
            if m.state == MemberState::Suspect {
                m.state = MemberState::Alive;
                events.push(Event::Recovered(id));
            }
            return events;
        }
        if self.quarantine.get(&id).is_some_and(|until| now < *until) {
            return events;
        }
        if self.members.len() >= MAX_MEMBERS {
            events.push(Event::TableFull { ignored: id });
            return events;
        }
        // A new id. Another id under the same name is an older or newer incarnation.
        let rival = self
            .members
            .values()
            .find(|m| m.info.name == hb.info.name)
            .map(|m| (m.info.id, m.info.incarnation));
        if let Some((rival_id, rival_incarnation)) = rival {
            if (hb.info.incarnation, id) < (rival_incarnation, rival_id) {
                events.push(Event::NameConflict {
                    name: hb.info.name,
                    kept: rival_id,
                    ignored: id,
                });
                return events;
            }
            if let Some(old) = self.members.remove(&rival_id) {
                self.quarantine
                    .insert(rival_id, now + self.timing.drop_after);
                events.push(Event::Dropped {
                    info: old.info,
                    reason: DropReason::Replaced,
                });
            }
        }
        self.quarantine.remove(&id);
        events.push(Event::Joined(hb.info.clone()));
        self.members.insert(
            id,
            Member {
                joining: hb.announce == Announce::Joining,
                info: hb.info,
                state: MemberState::Alive,
                last_heard: now,
                last_alive: now,
                last_verify_started: None,
                verification: Verification::Idle,
                unanswered: false,
            },
        );
        events
    }

    /// The answer of a verification asked for by [`Event::Verify`].
    pub fn on_verdict(&mut self, id: NodeId, verdict: Verdict, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(m) = self.members.get_mut(&id) else {
            return events;
        };
        m.verification = Verification::Idle;
        if verdict != Verdict::Answered && m.verdict_is_stale() {
            // It was heard from after this verification began: the verdict is out of date.
            return events;
        }
        match verdict {
            Verdict::Answered => {
                m.last_alive = now;
                m.unanswered = false;
                if m.state == MemberState::Suspect {
                    m.state = MemberState::Alive;
                    events.push(Event::Recovered(id));
                }
            }
            Verdict::Refused => {
                if let Some(m) = self.members.remove(&id) {
                    self.quarantine.insert(id, now + self.timing.drop_after);
                    events.push(Event::Dropped {
                        info: m.info,
                        reason: DropReason::Refused,
                    });
                }
            }
            Verdict::NoAnswer => m.unanswered = true,
        }
        events
    }

    /// Something outside the heartbeats says this member may be gone (a broken link):
    /// suspect it now and verify it, without waiting for its heartbeats to go missing.
    pub fn on_suspicion(&mut self, id: NodeId, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(m) = self.members.get_mut(&id) {
            if m.state == MemberState::Alive {
                m.state = MemberState::Suspect;
                events.push(Event::Suspected(id));
            }
            events.extend(m.start_verification(now, Duration::ZERO));
        }
        events
    }

    /// Advance the clock: suspect the silent, verify suspects, drop the long silent.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let t = self.timing;
        let mut dropped = Vec::new();
        for (id, m) in self.members.iter_mut() {
            let unproven = now.saturating_duration_since(m.last_alive);
            if unproven >= t.drop_after && m.state == MemberState::Suspect && m.unanswered {
                dropped.push(*id);
                continue;
            }
            if now.saturating_duration_since(m.last_heard) <= t.suspect_after {
                continue;
            }
            // Heartbeats are missing. Verify it every interval; it stays alive while it
            // answers, and is suspect once no proof of life is recent enough.
            if unproven > t.suspect_after && m.state == MemberState::Alive {
                m.state = MemberState::Suspect;
                events.push(Event::Suspected(*id));
            }
            events.extend(m.start_verification(now, t.reverify_every));
        }
        for id in dropped {
            if let Some(m) = self.members.remove(&id) {
                events.push(Event::Dropped {
                    info: m.info,
                    reason: DropReason::Silent,
                });
            }
        }
        self.quarantine.retain(|_, until| now < *until);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Announce, Heartbeat, MemberInfo, MemberState, NodeId};

    const HB: Duration = Duration::from_millis(500);
    const DROP: Duration = Duration::from_millis(3000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn info(id: u64, name: &str, incarnation: u64) -> MemberInfo {
        MemberInfo {
            id: NodeId::from_u64(id),
            name: name.to_string(),
            http: SocketAddr::from(([127, 0, 0, 1], 8000 + id as u16)),
            replication: SocketAddr::from(([127, 0, 0, 1], 4000 + id as u16)),
            incarnation,
        }
    }

    fn alive(id: u64, name: &str) -> Heartbeat {
        Heartbeat {
            info: info(id, name, 1),
            announce: Announce::Alive,
            seq: 1,
        }
    }

    fn leaving(id: u64, name: &str) -> Heartbeat {
        Heartbeat {
            announce: Announce::Leaving,
            ..alive(id, name)
        }
    }

    fn table() -> (MemberTable, Instant) {
        (
            MemberTable::new(NodeId::from_u64(1), Timing::new(HB, DROP)),
            Instant::now(),
        )
    }

    fn id(n: u64) -> NodeId {
        NodeId::from_u64(n)
    }

    fn state(t: &MemberTable, n: u64) -> Option<MemberState> {
        t.get(id(n)).map(|m| m.state)
    }

    #[test]
    fn a_first_heartbeat_joins_the_member() {
        let (mut t, t0) = table();
        let events = t.on_heartbeat(alive(2, "n2"), t0);
        assert_eq!(events, vec![Event::Joined(info(2, "n2", 1))]);
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
    }

    #[test]
    fn a_joining_member_is_a_member_shown_joining_until_it_says_alive() {
        let (mut t, t0) = table();
        let joining = Heartbeat {
            announce: Announce::Joining,
            ..alive(2, "n2")
        };
        assert_eq!(
            t.on_heartbeat(joining.clone(), t0),
            vec![Event::Joined(info(2, "n2", 1))]
        );
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
        assert!(t.view(t0)[0].joining);
        assert!(t.on_heartbeat(joining, t0 + HB).is_empty());
        assert!(t.view(t0 + HB)[0].joining);
        assert!(t.on_heartbeat(alive(2, "n2"), t0 + HB * 2).is_empty());
        assert!(!t.view(t0 + HB * 2)[0].joining, "it serves now");
    }

    #[test]
    fn own_heartbeats_are_ignored() {
        let (mut t, t0) = table();
        assert!(t.on_heartbeat(alive(1, "me"), t0).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn refreshing_heartbeats_keep_a_member_alive_forever() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        for i in 1..100 {
            let now = t0 + HB * i;
            assert!(t.on_heartbeat(alive(2, "n2"), now).is_empty());
            assert!(t.tick(now + ms(100)).is_empty());
        }
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
    }

    #[test]
    fn one_lost_heartbeat_does_not_make_a_member_suspect() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        // The heartbeat at t0 + 500 is lost; two intervals have not yet passed.
        assert!(t.tick(t0 + ms(999)).is_empty());
        assert!(t.on_heartbeat(alive(2, "n2"), t0 + ms(1000)).is_empty());
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
    }

    #[test]
    fn silence_beyond_two_heartbeats_makes_a_member_suspect_and_asks_for_verification() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        let events = t.tick(t0 + ms(1001));
        assert_eq!(
            events,
            vec![
                Event::Suspected(id(2)),
                Event::Verify {
                    id: id(2),
                    addr: info(2, "n2", 1).replication
                }
            ]
        );
        assert_eq!(state(&t, 2), Some(MemberState::Suspect));
        // No second verification while the first is in flight.
        assert!(t.tick(t0 + ms(2000)).is_empty());
    }

    #[test]
    fn a_refused_verification_drops_the_member_at_once() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        let events = t.on_verdict(id(2), Verdict::Refused, t0 + ms(1002));
        assert_eq!(
            events,
            vec![Event::Dropped {
                info: info(2, "n2", 1),
                reason: DropReason::Refused
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_late_datagram_of_a_refused_member_does_not_bring_it_back() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        t.on_verdict(id(2), Verdict::Refused, t0 + ms(1002));
        assert!(t.on_heartbeat(alive(2, "n2"), t0 + ms(1100)).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn a_member_that_answers_verification_stays_alive_without_heartbeats_and_does_not_flap() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        let events = t.on_verdict(id(2), Verdict::Answered, t0 + ms(1010));
        assert_eq!(events, vec![Event::Recovered(id(2))]);
        // Its heartbeats stay lost: verified every interval, never suspect again while it
        // answers, never dropped even long past drop_ms.
        for step in 1..=12 {
            let now = t0 + ms(1010 + 500 * step);
            let verify = Event::Verify {
                id: id(2),
                addr: info(2, "n2", 1).replication,
            };
            assert_eq!(t.tick(now), vec![verify], "step {step}");
            assert!(
                t.on_verdict(id(2), Verdict::Answered, now + ms(5))
                    .is_empty()
            );
        }
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
    }

    #[test]
    fn a_verdict_that_started_before_the_member_was_heard_again_is_ignored() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        // A heartbeat overtakes the verification's answer.
        t.on_heartbeat(alive(2, "n2"), t0 + ms(1005));
        assert!(
            t.on_verdict(id(2), Verdict::Refused, t0 + ms(1010))
                .is_empty()
        );
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
        // A stale "no answer" does not arm the silence drop either.
        t.tick(t0 + ms(2006));
        t.on_heartbeat(alive(2, "n2"), t0 + ms(2007));
        assert!(
            t.on_verdict(id(2), Verdict::NoAnswer, t0 + ms(2500))
                .is_empty()
        );
        assert!(
            t.tick(t0 + ms(5100))
                .iter()
                .all(|e| !matches!(e, Event::Dropped { .. }))
        );
    }

    #[test]
    fn a_known_id_cannot_change_its_name_or_addresses() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        let mut forged = alive(2, "other");
        forged.info.replication = SocketAddr::from(([10, 0, 0, 1], 1));
        assert!(t.on_heartbeat(forged, t0 + ms(10)).is_empty());
        assert_eq!(t.get(id(2)).map(|m| m.info.clone()), Some(info(2, "n2", 1)));
    }

    #[test]
    fn the_table_stops_growing_at_its_limit() {
        let (mut t, t0) = table();
        for n in 0..MAX_MEMBERS as u64 {
            t.on_heartbeat(alive(100 + n, &format!("m{n}")), t0);
        }
        let events = t.on_heartbeat(alive(5, "late"), t0);
        assert_eq!(events, vec![Event::TableFull { ignored: id(5) }]);
        assert_eq!(t.len(), MAX_MEMBERS);
    }

    #[test]
    fn an_unanswered_suspect_is_verified_again_and_dropped_after_drop_ms() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        assert!(
            t.on_verdict(id(2), Verdict::NoAnswer, t0 + ms(1501))
                .is_empty()
        );
        assert_eq!(state(&t, 2), Some(MemberState::Suspect));
        let events = t.tick(t0 + ms(1501));
        assert_eq!(
            events,
            vec![Event::Verify {
                id: id(2),
                addr: info(2, "n2", 1).replication
            }]
        );
        t.on_verdict(id(2), Verdict::NoAnswer, t0 + ms(2001));
        assert!(
            t.tick(t0 + ms(2999))
                .iter()
                .all(|e| !matches!(e, Event::Dropped { .. }))
        );
        let events = t.tick(t0 + ms(3000));
        assert_eq!(
            events,
            vec![Event::Dropped {
                info: info(2, "n2", 1),
                reason: DropReason::Silent
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_node_that_was_frozen_itself_verifies_everyone_before_dropping_anyone() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        // We were stopped for 10 s: n2 looks silent far beyond drop_after.
        let events = t.tick(t0 + ms(10_000));
        assert!(events.contains(&Event::Suspected(id(2))));
        assert!(t.tick(t0 + ms(10_100)).is_empty());
        assert_eq!(state(&t, 2), Some(MemberState::Suspect));
        assert_eq!(
            t.on_verdict(id(2), Verdict::Answered, t0 + ms(10_101)),
            vec![Event::Recovered(id(2))]
        );
    }

    #[test]
    fn a_member_dropped_for_silence_joins_again_when_it_is_heard() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        t.on_verdict(id(2), Verdict::NoAnswer, t0 + ms(1501));
        t.tick(t0 + ms(3000));
        assert!(t.is_empty());
        // SIGCONT: the frozen process sends its heartbeats again, same id.
        let events = t.on_heartbeat(alive(2, "n2"), t0 + ms(9000));
        assert_eq!(events, vec![Event::Joined(info(2, "n2", 1))]);
    }

    #[test]
    fn a_heartbeat_from_a_suspect_recovers_it() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        t.tick(t0 + ms(1001));
        let events = t.on_heartbeat(alive(2, "n2"), t0 + ms(1100));
        assert_eq!(events, vec![Event::Recovered(id(2))]);
        // The verification still in flight may answer late; nothing changes.
        assert!(
            t.on_verdict(id(2), Verdict::NoAnswer, t0 + ms(1200))
                .is_empty()
        );
        assert_eq!(state(&t, 2), Some(MemberState::Alive));
    }

    #[test]
    fn a_leaving_heartbeat_drops_the_member_at_once_and_late_heartbeats_are_ignored() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        let events = t.on_heartbeat(leaving(2, "n2"), t0 + ms(10));
        assert_eq!(
            events,
            vec![Event::Dropped {
                info: info(2, "n2", 1),
                reason: DropReason::Left
            }]
        );
        assert!(t.on_heartbeat(alive(2, "n2"), t0 + ms(20)).is_empty());
        assert!(t.is_empty());
        // The quarantine ends: the same id may come back later.
        t.tick(t0 + DROP + ms(20));
        assert_eq!(t.on_heartbeat(alive(2, "n2"), t0 + DROP + ms(30)).len(), 1);
    }

    #[test]
    fn a_restarted_member_with_a_new_id_under_the_same_name_replaces_the_old_one() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        let restarted = Heartbeat {
            info: info(7, "n2", 2),
            announce: Announce::Alive,
            seq: 1,
        };
        let events = t.on_heartbeat(restarted, t0 + ms(100));
        assert_eq!(
            events,
            vec![
                Event::Dropped {
                    info: info(2, "n2", 1),
                    reason: DropReason::Replaced
                },
                Event::Joined(info(7, "n2", 2)),
            ]
        );
        assert_eq!(t.len(), 1);
        // The old incarnation's late datagrams do not bring it back.
        assert!(t.on_heartbeat(alive(2, "n2"), t0 + ms(200)).is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_older_incarnation_under_a_taken_name_is_ignored_and_reported() {
        let (mut t, t0) = table();
        let newer = Heartbeat {
            info: info(7, "n2", 5),
            announce: Announce::Alive,
            seq: 1,
        };
        t.on_heartbeat(newer, t0);
        let events = t.on_heartbeat(alive(2, "n2"), t0 + ms(10));
        assert_eq!(
            events,
            vec![Event::NameConflict {
                name: "n2".into(),
                kept: id(7),
                ignored: id(2)
            }]
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_broken_link_makes_a_member_suspect_and_verified_at_once() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(2, "n2"), t0);
        let events = t.on_suspicion(id(2), t0 + ms(10));
        assert_eq!(
            events,
            vec![
                Event::Suspected(id(2)),
                Event::Verify {
                    id: id(2),
                    addr: info(2, "n2", 1).replication
                }
            ]
        );
        let events = t.on_verdict(id(2), Verdict::Refused, t0 + ms(11));
        assert!(matches!(
            events[..],
            [Event::Dropped {
                reason: DropReason::Refused,
                ..
            }]
        ));
    }

    #[test]
    fn the_view_lists_members_by_name_with_the_time_since_last_heard() {
        let (mut t, t0) = table();
        t.on_heartbeat(alive(3, "n3"), t0);
        t.on_heartbeat(alive(2, "n2"), t0 + ms(100));
        let view = t.view(t0 + ms(250));
        let names: Vec<_> = view.iter().map(|v| v.info.name.as_str()).collect();
        assert_eq!(names, ["n2", "n3"]);
        assert_eq!(view[0].last_heard, ms(150));
        assert_eq!(view[1].last_heard, ms(250));
    }
}
