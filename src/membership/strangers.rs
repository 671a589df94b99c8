//! Admission of strangers under a cluster key (see [`Strangers`]). The driver
//! (`heartbeat`) runs the proofs over TCP and passes in their verdicts and the time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Announce, Heartbeat, NodeId, Verdict};

/// Proofs of life under way at once; heartbeats of more strangers wait for a free one.
/// A proof of a sender that is gone ends at once (refused) or within its timeout.
const MAX_STRANGERS: usize = 256;

/// Strangers whose proof failed, remembered so that their next heartbeats wait an interval.
/// Past this many, the oldest are forgotten (they are then simply proven again).
const MAX_TURNED_AWAY: usize = 4096;

/// With a key, the senders heard from that are not members yet: each must prove it is alive
/// (answer a sealed ping on its replication port) before its heartbeat is believed. A
/// recorded heartbeat replayed to a node that never saw it (a node started later, a
/// balancer, a window forgotten) would otherwise bring a dead member back. Pure: time is
/// passed in.
pub(crate) struct Strangers {
    /// Proofs under way: the sender's newest heartbeat (its leave, once it left: the proof
    /// keeps its place until its verdict, so the cap bounds the checks in flight), and when
    /// its proof began.
    proving: HashMap<NodeId, (Heartbeat, Instant)>,
    /// Senders whose proof failed (or that left, or the table refused), until they may try
    /// again on their next heartbeat.
    turned_away: HashMap<NodeId, Instant>,
    /// How long a sender is turned away: one heartbeat interval.
    retry_after: Duration,
    /// A proof older than this has ended without a verdict (its task is gone): dropped.
    longest: Duration,
}

impl Strangers {
    pub(crate) fn new(retry_after: Duration, proof_timeout: Duration) -> Strangers {
        Strangers {
            proving: HashMap::new(),
            turned_away: HashMap::new(),
            retry_after,
            longest: proof_timeout * 2 + retry_after,
        }
    }

    /// A heartbeat of a sender that is not a member. Returns the proof to start, if one
    /// must start now.
    pub(crate) fn heard(&mut self, hb: Heartbeat, now: Instant) -> Option<(NodeId, SocketAddr)> {
        let id = hb.info.id;
        if self.turned_away.get(&id).is_some_and(|until| now < *until) {
            return None;
        }
        if let Some((latest, _)) = self.proving.get_mut(&id) {
            if latest.announce == Announce::Leaving {
                return None;
            }
            if hb.announce == Announce::Leaving {
                latest.announce = Announce::Leaving;
            } else if hb.seq > latest.seq && hb.info.replication == latest.info.replication {
                // Only at the address being proven (an id keeps its addresses for life).
                *latest = hb;
            }
            return None;
        }
        if hb.announce == Announce::Leaving || self.proving.len() >= MAX_STRANGERS {
            return None;
        }
        let addr = hb.info.replication;
        self.proving.insert(id, (hb, now));
        Some((id, addr))
    }

    /// The verdict of `id`'s proof: its newest heartbeat if it answered (to give to the
    /// table); otherwise it is turned away for an interval. The heartbeat of a failed proof
    /// is returned as the error, for the log.
    pub(crate) fn proved(
        &mut self,
        id: NodeId,
        verdict: Verdict,
        now: Instant,
    ) -> Option<Result<Heartbeat, Heartbeat>> {
        let (hb, _) = self.proving.remove(&id)?;
        if hb.announce == Announce::Leaving {
            // It left while proving: whatever the verdict, it is not admitted.
            self.turn_away(id, now);
            return None;
        }
        if verdict == Verdict::Answered {
            return Some(Ok(hb));
        }
        self.turn_away(id, now);
        Some(Err(hb))
    }

    pub(crate) fn turn_away(&mut self, id: NodeId, now: Instant) {
        if self.turned_away.len() >= MAX_TURNED_AWAY {
            self.turned_away.retain(|_, until| now < *until);
            if self.turned_away.len() >= MAX_TURNED_AWAY {
                self.turned_away.clear();
            }
        }
        self.turned_away.insert(id, now + self.retry_after);
    }

    /// Forgets the turned-away senders whose interval is over, and proofs that outlived
    /// their timeout.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.turned_away.retain(|_, until| now < *until);
        let longest = self.longest;
        self.proving
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < longest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberInfo;

    const INTERVAL: Duration = Duration::from_millis(100);
    const TIMEOUT: Duration = Duration::from_millis(250);

    fn hb(id: u64, seq: u64, announce: Announce) -> Heartbeat {
        Heartbeat {
            info: MemberInfo {
                id: NodeId::from_u64(id),
                name: format!("n{id}"),
                http: "127.0.0.1:1".parse().unwrap(),
                replication: "127.0.0.1:2".parse().unwrap(),
                incarnation: 1,
            },
            announce,
            seq,
        }
    }

    fn alive(id: u64, seq: u64) -> Heartbeat {
        hb(id, seq, Announce::Alive)
    }

    #[test]
    fn a_stranger_is_admitted_with_its_newest_heartbeat_once_it_answers() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        assert_eq!(
            s.heard(alive(1, 1), t0),
            Some((NodeId::from_u64(1), "127.0.0.1:2".parse().unwrap()))
        );
        // One proof at a time; later heartbeats only refresh what will be admitted.
        assert_eq!(s.heard(alive(1, 3), t0), None);
        assert_eq!(s.heard(alive(1, 2), t0), None);
        let admitted = s.proved(NodeId::from_u64(1), Verdict::Answered, t0);
        assert_eq!(admitted.map(|r| r.map(|hb| hb.seq)), Some(Ok(3)));
        assert_eq!(s.proved(NodeId::from_u64(1), Verdict::Answered, t0), None);
    }

    #[test]
    fn a_failed_proof_is_tried_again_one_interval_later() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        assert!(s.heard(alive(1, 1), t0).is_some());
        assert!(matches!(
            s.proved(NodeId::from_u64(1), Verdict::Refused, t0),
            Some(Err(_))
        ));
        assert_eq!(s.heard(alive(1, 2), t0 + INTERVAL / 2), None);
        s.tick(t0 + INTERVAL);
        assert!(s.heard(alive(1, 3), t0 + INTERVAL).is_some());
    }

    #[test]
    fn a_stranger_that_leaves_during_its_proof_is_not_admitted_by_it() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        assert!(s.heard(alive(1, 1), t0).is_some());
        assert_eq!(s.heard(hb(1, 2, Announce::Leaving), t0), None);
        assert_eq!(
            s.heard(alive(1, 3), t0),
            None,
            "no second proof while the first runs"
        );
        assert_eq!(s.proving.len(), 1, "its place is kept until the verdict");
        assert_eq!(s.proved(NodeId::from_u64(1), Verdict::Answered, t0), None);
        assert_eq!(
            s.heard(alive(1, 3), t0),
            None,
            "turned away for an interval"
        );
        // A leave from a sender never heard starts nothing.
        assert_eq!(s.heard(hb(2, 1, Announce::Leaving), t0), None);
    }

    #[test]
    fn many_senders_that_fail_their_proof_do_not_keep_a_live_one_out() {
        // Replayed heartbeats of many dead nodes: each proof is refused at once. Failed
        // ones must not hold the places of proofs under way.
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        let mut now = t0;
        for round in 0..20u64 {
            for dead in 1000..1000 + 2 * MAX_STRANGERS as u64 {
                if let Some((id, _)) = s.heard(alive(dead, round), now) {
                    s.proved(id, Verdict::Refused, now);
                }
            }
            now += INTERVAL / 4;
            s.tick(now);
        }
        assert!(
            s.heard(alive(1, 1), now).is_some(),
            "the live sender waits for nothing"
        );
    }

    #[test]
    fn a_proof_without_a_verdict_gives_its_place_back() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        for id in 0..MAX_STRANGERS as u64 {
            assert!(s.heard(alive(id + 10, 1), t0).is_some());
        }
        assert_eq!(s.heard(alive(1, 1), t0), None, "all places taken");
        s.tick(t0 + TIMEOUT * 2 + INTERVAL);
        assert!(s.heard(alive(1, 1), t0 + TIMEOUT * 2 + INTERVAL).is_some());
    }
}
