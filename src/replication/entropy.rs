//! Anti-entropy's comparisons, pure. Members compare in two steps so that agreeing
//! members exchange almost nothing: first one hash per shard (the digest), then, for the
//! shards that differ, one hash per session; what differs is sent both ways and the
//! versioned merge decides which side is newer. The links only move the frames.

use std::collections::{HashMap, HashSet};

use crate::session::SessionId;

/// The shards of `theirs` (a peer's digest, shard number and hash) that `mine` does not
/// hold with the same hash, each once, in the peer's order. A shard missing from `mine`
/// differs: the peer may hold sessions of it that this node lacks.
pub(crate) fn differing_shards(mine: &[(u32, u64)], theirs: &[(u32, u64)]) -> Vec<u32> {
    let mine: HashMap<u32, u64> = mine.iter().copied().collect();
    let mut named = HashSet::new();
    theirs
        .iter()
        .filter(|(shard, hash)| mine.get(shard) != Some(hash))
        // A digest naming a shard twice gets one answer, not one whole shard per mention.
        .filter(|(shard, _)| named.insert(*shard))
        .map(|(shard, _)| *shard)
        .collect()
}

/// What to do about one shard whose hashes differ.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Repair {
    /// Sessions the peer lacks or holds differently: send ours.
    pub push: Vec<SessionId>,
    /// Sessions this node lacks or holds differently: ask for theirs.
    pub pull: Vec<SessionId>,
}

/// Compares one shard's session hashes, ours and the peer's. A session held differently
/// is both pushed and pulled: which side is newer is the merge's decision, on both sides.
pub(crate) fn repair(mine: &[(SessionId, u64)], theirs: &[(SessionId, u64)]) -> Repair {
    let mine_by_id: HashMap<SessionId, u64> = mine.iter().copied().collect();
    let theirs_by_id: HashMap<SessionId, u64> = theirs.iter().copied().collect();
    let push = mine
        .iter()
        .filter(|(id, hash)| theirs_by_id.get(id) != Some(hash))
        .map(|(id, _)| *id)
        .collect();
    // A session the peer names twice is pulled once (by the hash it named last).
    let mut named = HashSet::new();
    let pull = theirs
        .iter()
        .filter(|(id, _)| named.insert(*id))
        .filter(|(id, _)| mine_by_id.get(id) != theirs_by_id.get(id))
        .map(|(id, _)| *id)
        .collect();
    Repair { push, pull }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SessionId {
        SessionId::from_bytes([n; 16])
    }

    #[test]
    fn members_that_agree_compare_no_shard() {
        let digest = [(0, 11), (1, 22), (2, 0)];
        assert!(differing_shards(&digest, &digest).is_empty());
    }

    #[test]
    fn only_the_shards_whose_hashes_differ_are_compared_further() {
        let mine = [(0, 11), (1, 22), (2, 33)];
        let theirs = [(0, 11), (1, 99), (2, 33)];
        assert_eq!(differing_shards(&mine, &theirs), vec![1]);
    }

    #[test]
    fn a_shard_this_node_does_not_have_differs() {
        assert_eq!(differing_shards(&[(0, 11)], &[(0, 11), (7, 0)]), vec![7]);
    }

    #[test]
    fn a_shard_the_peer_left_out_of_its_digest_is_not_compared() {
        assert!(differing_shards(&[(0, 11), (1, 22)], &[(0, 11)]).is_empty());
    }

    #[test]
    fn a_shard_named_twice_in_a_digest_is_compared_once() {
        let theirs = [(3, 1), (3, 1), (4, 1), (3, 2)];
        assert_eq!(differing_shards(&[(3, 0), (4, 0)], &theirs), vec![3, 4]);
    }

    #[test]
    fn sessions_held_alike_are_neither_pushed_nor_pulled() {
        let entries = [(id(1), 10), (id(2), 20)];
        assert_eq!(repair(&entries, &entries), Repair::default());
    }

    #[test]
    fn what_one_side_lacks_goes_to_it_and_what_differs_goes_both_ways() {
        let mine = [(id(1), 10), (id(2), 20), (id(3), 30)];
        let theirs = [(id(2), 20), (id(3), 31), (id(4), 40)];
        assert_eq!(
            repair(&mine, &theirs),
            Repair {
                push: vec![id(1), id(3)],
                pull: vec![id(3), id(4)],
            }
        );
    }

    #[test]
    fn a_session_the_peer_names_twice_is_pulled_once() {
        let theirs = [(id(1), 10), (id(1), 11)];
        assert_eq!(repair(&[], &theirs).pull, vec![id(1)]);
        assert!(repair(&[(id(1), 11)], &theirs).pull.is_empty());
    }

    #[test]
    fn an_empty_side_is_sent_everything_and_asks_for_nothing() {
        let mine = [(id(1), 10), (id(2), 20)];
        assert_eq!(
            repair(&mine, &[]),
            Repair {
                push: vec![id(1), id(2)],
                pull: Vec::new(),
            }
        );
        assert_eq!(
            repair(&[], &mine),
            Repair {
                push: Vec::new(),
                pull: vec![id(1), id(2)],
            }
        );
    }
}
