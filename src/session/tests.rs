//! Tests of the store and of the merge: limits, expiry, tombstones, and the properties that
//! make replication safe (any order, any duplication, same result).

use bytes::Bytes;
use proptest::prelude::*;

use super::store::{EXPIRY_SLACK_MS, TOMBSTONE_TTL_MS};
use super::*;
use crate::membership::NodeId;

fn store(node: u64) -> SessionStore {
    SessionStore::new(NodeId::from_u64(node), Limits::default(), 60)
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Every live session as sorted full deltas, for comparing stores.
fn contents(s: &SessionStore) -> Vec<Delta> {
    let mut all: Vec<Delta> = (0..s.shard_count())
        .flat_map(|i| s.export_shard(i))
        .collect();
    for d in &mut all {
        d.attributes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    all.sort_by_key(|d| d.id);
    all
}

fn read(s: &SessionStore, id: SessionId, name: &str, now: u64) -> Option<Bytes> {
    s.update(id, now, |m| m.get(name).cloned())
        .and_then(|u| u.value)
}

#[test]
fn a_created_session_and_its_first_attribute_travel_in_one_delta() {
    let a = store(1);
    let done = a
        .update_or_create(None, 100, |s| s.set("x", b("1")))
        .unwrap();
    assert!(done.created);
    let delta = done.delta.unwrap();
    assert_eq!(delta.attributes.len(), 1);
    assert_eq!(delta.max_inactive.map(|m| m.0), Some(60));
    let other = store(2);
    assert_eq!(other.apply(&delta, 101), Applied::Created);
    assert_eq!(read(&other, done.id, "x", 102), Some(b("1")));
}

#[test]
fn a_delta_that_overtakes_the_creation_still_lands() {
    let a = store(1);
    let created = a.update_or_create(None, 100, |_| ()).unwrap();
    let changed = a.update(created.id, 110, |s| s.set("x", b("v"))).unwrap();
    let b2 = store(2);
    // The change arrives first (Tomcat dropped it as "unknown session").
    b2.apply(changed.delta.as_ref().unwrap(), 111);
    b2.apply(created.delta.as_ref().unwrap(), 112);
    assert_eq!(read(&b2, created.id, "x", 113), Some(b("v")));
    assert_eq!(contents(&b2)[0].created_ms, 100);
}

#[test]
fn a_read_only_request_makes_no_delta_but_is_recorded_as_an_access() {
    let a = store(1);
    let id = a.update_or_create(None, 100, |_| ()).unwrap().id;
    a.take_accessed();
    let read = a.update(id, 150, |s| s.get("nothing").is_some()).unwrap();
    assert!(read.delta.is_none());
    assert_eq!(a.take_accessed(), vec![(id, 150)]);
    assert!(a.take_accessed().is_empty());
}

#[test]
fn unknown_or_absent_ids_make_a_fresh_session_never_the_clients_id() {
    let a = store(1);
    let forged = SessionId::from_bytes([7; 16]);
    let done = a.update_or_create(Some(forged), 100, |_| ()).unwrap();
    assert!(done.created);
    assert_ne!(done.id, forged);
    assert!(a.update(forged, 100, |_| ()).is_none());
    assert_eq!(a.len(), 1, "a plain update makes no session");
}

#[test]
fn update_or_create_of_a_live_session_changes_that_session_and_makes_no_other() {
    let a = store(1);
    let first = a.update_or_create(None, 100, |_| ()).unwrap();
    let again = a
        .update_or_create(Some(first.id), 110, |s| s.set("x", b("1")))
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.id, first.id);
    assert_eq!(again.value, Ok(()));
    assert_eq!(a.len(), 1);
    assert_eq!(read(&a, first.id, "x", 120), Some(b("1")));
    // A delta of a change only: the creation is not sent again.
    let delta = again.delta.unwrap();
    assert_eq!(delta.max_inactive, None);
    assert_eq!(delta.attributes.len(), 1);
}

#[test]
fn limits_give_clear_errors_and_change_nothing() {
    let limits = Limits {
        max_sessions: 1,
        max_attributes: 1,
        max_value_bytes: 4,
        max_name_bytes: 8,
        ..Limits::default()
    };
    let a = SessionStore::new(NodeId::from_u64(1), limits, 60);
    let id = a.update_or_create(None, 1, |_| ()).unwrap().id;
    assert_eq!(
        a.update_or_create(None, 2, |_| ()).unwrap_err(),
        StoreError::TooManySessions { max: 1 }
    );
    let too_big = a.update(id, 3, |s| s.set("a", b("12345"))).unwrap();
    assert_eq!(
        too_big.value,
        Err(StoreError::ValueTooLarge { len: 5, max: 4 })
    );
    assert!(too_big.delta.is_none());
    let first = a.update(id, 4, |s| s.set("a", b("1"))).unwrap();
    assert_eq!(first.value, Ok(()));
    let second = a.update(id, 5, |s| s.set("b", b("2"))).unwrap();
    assert_eq!(second.value, Err(StoreError::TooManyAttributes { max: 1 }));
    // Replacing an existing attribute is not a new one.
    let again = a.update(id, 6, |s| s.set("a", b("3"))).unwrap();
    assert_eq!(again.value, Ok(()));
    let bad = a.update(id, 7, |s| s.set("", b("x"))).unwrap();
    assert_eq!(bad.value, Err(StoreError::BadName { max: 8 }));
}

#[test]
fn a_session_past_its_interval_is_not_served_and_is_swept_after_the_slack() {
    let a = store(1);
    let id = a.update_or_create(None, 0, |_| ()).unwrap().id;
    assert!(a.update(id, 60_000, |_| ()).is_some());
    assert!(a.update(id, 120_001, |_| ()).is_none());
    assert_eq!(a.sweep(120_001 + EXPIRY_SLACK_MS - 1).expired, 0);
    assert_eq!(a.sweep(120_001 + EXPIRY_SLACK_MS).expired, 1);
    assert_eq!(a.len(), 0);
}

#[test]
fn access_from_another_member_keeps_a_session_alive() {
    let a = store(1);
    let id = a.update_or_create(None, 0, |_| ()).unwrap().id;
    for t in (10_000..200_000).step_by(10_000) {
        assert!(a.touch(id, t));
        assert_eq!(a.sweep(t + 1).expired, 0);
    }
    assert!(!a.touch(id, 5), "an older access time changes nothing");
}

#[test]
fn tombstones_stop_late_deltas_from_resurrecting_an_invalidated_session() {
    let a = store(1);
    let done = a.update_or_create(None, 0, |s| s.set("x", b("1"))).unwrap();
    let late = a.update(done.id, 5, |s| s.set("x", b("2"))).unwrap();
    let end = a.invalidate(done.id, 10).unwrap();
    let b2 = store(2);
    b2.apply(done.delta.as_ref().unwrap(), 11);
    b2.apply(&end, 12);
    assert_eq!(b2.apply(late.delta.as_ref().unwrap(), 13), Applied::Ended);
    assert!(!b2.contains(done.id));
    // Also when the end comes first and the creation after.
    let c = store(3);
    c.apply(&end, 1);
    assert_eq!(c.apply(done.delta.as_ref().unwrap(), 2), Applied::Ended);
    assert_eq!(c.len(), 0);
    // The tombstone is forgotten after its time.
    assert_eq!(c.sweep(1 + TOMBSTONE_TTL_MS).purged, 1);
}

#[test]
fn an_expired_session_is_replaced_only_by_a_whole_session_with_newer_activity() {
    let a = store(1);
    let done = a.update_or_create(None, 0, |s| s.set("x", b("1"))).unwrap();
    let expire_at = 60_000 + EXPIRY_SLACK_MS + 1;
    assert_eq!(a.sweep(expire_at).expired, 1);
    // A late change alone cannot rebuild it.
    let mut partial = done.delta.clone().unwrap();
    partial.last_access_ms = 70_000;
    assert_eq!(a.apply(&partial, expire_at + 1), Applied::Ended);
    // The other side of a healed partition kept using it: its whole state comes back.
    let mut whole = partial.clone();
    whole.full = true;
    assert_eq!(a.apply(&whole, expire_at + 2), Applied::Created);
    assert_eq!(read(&a, done.id, "x", 70_001), Some(b("1")));
}

#[test]
fn concurrent_writes_of_one_attribute_converge_to_the_same_value_everywhere() {
    let a = store(1);
    let b2 = store(2);
    let created = a.update_or_create(None, 0, |_| ()).unwrap();
    b2.apply(created.delta.as_ref().unwrap(), 0);
    let on_a = a
        .update(created.id, 1, |s| s.set("x", b("from a")))
        .unwrap();
    let on_b = b2
        .update(created.id, 1, |s| s.set("x", b("from b")))
        .unwrap();
    a.apply(on_b.delta.as_ref().unwrap(), 2);
    b2.apply(on_a.delta.as_ref().unwrap(), 2);
    assert_eq!(read(&a, created.id, "x", 3), read(&b2, created.id, "x", 3));
    // Equal Lamport counters: the higher node id wins.
    assert_eq!(read(&a, created.id, "x", 3), Some(b("from b")));
}

#[test]
fn a_write_after_seeing_a_remote_write_wins_over_it() {
    let a = store(1);
    let b2 = store(2);
    let created = a.update_or_create(None, 0, |_| ()).unwrap();
    b2.apply(created.delta.as_ref().unwrap(), 0);
    for i in 0..5 {
        let w = b2
            .update(created.id, 1, |s| s.set("x", Bytes::from(vec![i])))
            .unwrap();
        a.apply(w.delta.as_ref().unwrap(), 1);
    }
    // a's clock moved past b's writes, so a's next write is newer even with a lower id.
    let w = a.update(created.id, 2, |s| s.set("x", b("a"))).unwrap();
    b2.apply(w.delta.as_ref().unwrap(), 3);
    assert_eq!(read(&b2, created.id, "x", 4), Some(b("a")));
}

/// A write by `node` with a per-node unique counter: what Lamport clocks guarantee.
#[derive(Clone, Debug)]
struct Write {
    session: u8,
    node: u64,
    counter: u64,
    name: u8,
    value: Option<u8>,
    access: u64,
    invalidate: bool,
    /// A change-id delta: the session `session` was this one before (ids 0 to 4, so some
    /// old ids never have deltas of their own).
    renamed_from: Option<u8>,
}

fn write_strategy() -> impl Strategy<Value = Write> {
    (
        0u8..3,
        1u64..4,
        1u64..50,
        0u8..4,
        proptest::option::of(any::<u8>()),
        0u64..1000,
        proptest::bool::weighted(0.05),
        proptest::option::weighted(0.1, 0u8..5),
    )
        .prop_map(
            |(session, node, counter, name, value, access, invalidate, renamed_from)| Write {
                session,
                node,
                counter,
                name,
                value,
                access,
                invalidate,
                renamed_from: renamed_from.filter(|old| *old != session && !invalidate),
            },
        )
}

fn to_delta(w: &Write) -> Delta {
    let mut d = Delta::new(
        SessionId::from_bytes([w.session; 16]),
        10 + u64::from(w.session),
        w.access,
    );
    // Unique per (node, counter): the value is a function of them, as with a real writer.
    let value = w
        .value
        .map(|v| Bytes::from(vec![v, w.node as u8, w.counter as u8]));
    d.attributes.push(AttributeChange {
        name: format!("a{}", w.name),
        value,
        version: Version {
            counter: w.counter,
            node: NodeId::from_u64(w.node),
        },
    });
    d.invalidated = w.invalidate;
    if let Some(old) = w.renamed_from {
        d.renamed_from = Some(SessionId::from_bytes([old; 16]));
        d.full = true;
    }
    d
}

proptest! {
    #[test]
    fn merge_is_order_independent_and_idempotent(
        writes in proptest::collection::vec(write_strategy(), 1..40),
        seed in any::<u64>(),
    ) {
        // Deduplicate (node, counter, name) so one version never carries two values.
        let mut seen = std::collections::HashSet::new();
        let deltas: Vec<Delta> = writes
            .iter()
            .filter(|w| seen.insert((w.node, w.counter, w.session, w.name)))
            .map(to_delta)
            .collect();
        let forward = store(9);
        for d in &deltas {
            forward.apply(d, 1);
        }
        // Another order, each delta delivered one to three times.
        let mut shuffled: Vec<&Delta> = deltas.iter().flat_map(|d| std::iter::repeat_n(d, 1 + (seed as usize ^ d.last_access_ms as usize) % 3)).collect();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let other = store(8);
        for d in shuffled {
            other.apply(d, 1);
        }
        prop_assert_eq!(contents(&forward), contents(&other));
        prop_assert_eq!(forward.bytes(), recount(&forward));
        prop_assert_eq!(other.bytes(), recount(&other));
        for s in 0..5u8 {
            let id = SessionId::from_bytes([s; 16]);
            prop_assert_eq!(forward.contains(id), other.contains(id));
        }
        // Tombstones too (invalidated and renamed ids): anti-entropy finds nothing to do.
        prop_assert_eq!(forward.digest(), other.digest());
        prop_assert_eq!(forward.len(), other.len());
    }
}

#[test]
fn digests_find_exactly_the_sessions_that_differ() {
    let a = store(1);
    let b2 = store(2);
    let mut ids = Vec::new();
    for i in 0..50u8 {
        let done = a
            .update_or_create(None, 0, |s| s.set("i", Bytes::from(vec![i])))
            .unwrap();
        b2.apply(done.delta.as_ref().unwrap(), 0);
        ids.push(done.id);
    }
    assert_eq!(a.digest(), b2.digest());
    // Access times alone do not count.
    a.touch(ids[0], 99);
    assert_eq!(a.digest(), b2.digest());
    // One change on a, one session only on b, one invalidated on b.
    let changed = a.update(ids[1], 1, |s| s.set("i", b("changed")));
    assert!(changed.is_some_and(|u| u.value.is_ok()));
    let only_b = b2.update_or_create(None, 1, |_| ()).unwrap().id;
    b2.invalidate(ids[2], 1);
    let differing: Vec<u32> = a
        .digest()
        .iter()
        .zip(b2.digest())
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0)
        .collect();
    let mut found = Vec::new();
    for shard in differing {
        let mine: std::collections::HashMap<_, _> = a.shard_entries(shard).into_iter().collect();
        for (id, h) in b2.shard_entries(shard) {
            if mine.get(&id) != Some(&h) {
                found.push(id);
            }
        }
    }
    found.sort();
    let mut expected = vec![ids[1], ids[2], only_b];
    expected.sort();
    assert_eq!(found, expected);
    // Exchanging them whole makes the stores equal.
    for d in b2.export(&found) {
        a.apply(&d, 2);
    }
    for d in a.export(&found) {
        b2.apply(&d, 2);
    }
    assert_eq!(a.digest(), b2.digest());
    // Equal but for access times, which travel on their own.
    let without_access = |s: &SessionStore| {
        let mut all = contents(s);
        all.iter_mut().for_each(|d| d.last_access_ms = 0);
        all
    };
    assert!(without_access(&a) == without_access(&b2));
}

// ---------------------------------------------------------------------------------------
// The byte budget (sessions.max_bytes): exact on every path, refused only for local writes.

/// The budget bytes of every live session, counted from scratch.
fn recount(s: &SessionStore) -> u64 {
    contents(s)
        .iter()
        .flat_map(|d| &d.attributes)
        .map(|a| (a.name.len() + a.value.as_ref().map_or(0, Bytes::len)) as u64)
        .sum()
}

fn budget(node: u64, max_bytes: u64) -> SessionStore {
    let limits = Limits {
        max_bytes,
        ..Limits::default()
    };
    SessionStore::new(NodeId::from_u64(node), limits, 60)
}

#[test]
fn set_overwrite_and_remove_keep_the_byte_count_exact() {
    let a = store(1);
    let id = a
        .update_or_create(None, 1, |s| s.set("name", b("12345")))
        .unwrap()
        .id;
    assert_eq!(a.bytes(), 9);
    a.update(id, 2, |s| s.set("name", b("1"))).unwrap();
    assert_eq!(a.bytes(), 5);
    a.update(id, 3, |s| s.set("other", b("123"))).unwrap();
    assert_eq!(a.bytes(), 13);
    // A removal keeps the name (its version stops late sets) and frees the value.
    assert!(a.update(id, 4, |s| s.remove("name")).unwrap().value);
    assert_eq!(a.bytes(), 12);
    a.update(id, 5, |s| s.set("name", b("12"))).unwrap();
    assert_eq!(a.bytes(), 14);
    assert_eq!(a.bytes(), recount(&a));
}

#[test]
fn a_write_past_the_budget_is_refused_counted_and_changes_nothing() {
    let a = budget(1, 10);
    let id = a
        .update_or_create(None, 1, |s| s.set("a", b("123456789")))
        .unwrap()
        .id;
    assert_eq!(a.bytes(), 10);
    let refused = a.update(id, 2, |s| s.set("b", b("1"))).unwrap();
    assert_eq!(refused.value, Err(StoreError::OverBudget { max: 10 }));
    assert!(refused.delta.is_none());
    let grown = a.update(id, 3, |s| s.set("a", b("1234567890"))).unwrap();
    assert_eq!(grown.value, Err(StoreError::OverBudget { max: 10 }));
    assert_eq!(read(&a, id, "a", 4), Some(b("123456789")));
    assert_eq!((a.bytes(), a.refused_over_budget()), (10, 2));
    // Shrinking is always allowed, and frees room.
    let shrunk = a.update(id, 5, |s| s.set("a", b("1234567"))).unwrap();
    assert_eq!(shrunk.value, Ok(()));
    assert_eq!(
        a.update(id, 6, |s| s.set("b", b("1"))).unwrap().value,
        Ok(())
    );
    assert_eq!(a.bytes(), 10);
}

#[test]
fn invalidation_and_expiry_free_a_sessions_bytes() {
    let a = store(1);
    let one = a
        .update_or_create(None, 1, |s| s.set("x", b("123")))
        .unwrap()
        .id;
    a.update_or_create(None, 1_000_000, |s| s.set("y", b("12")))
        .unwrap();
    assert_eq!(a.bytes(), 7);
    a.invalidate(one, 2).unwrap();
    assert_eq!(a.bytes(), 3);
    a.sweep(1_000_000 + 60_000 + EXPIRY_SLACK_MS + 1);
    assert_eq!(a.bytes(), 0);
}

#[test]
fn remote_deltas_are_counted_never_refused_and_hold_off_local_writes_until_under() {
    let a = store(1);
    let id = a
        .update_or_create(None, 1, |s| s.set("big", b("123456789")))
        .unwrap();
    let created = id.delta.unwrap();
    let replica = budget(2, 10);
    assert_eq!(replica.apply(&created, 2), Applied::Created);
    assert_eq!(replica.bytes(), 12);
    // Over the budget by replication: the replica keeps what the cluster holds...
    let grown = a.update(id.id, 3, |s| s.set("more", b("1"))).unwrap();
    replica.apply(grown.delta.as_ref().unwrap(), 4);
    assert_eq!(replica.bytes(), 17);
    // ...and refuses local growth, while shrinking still goes through.
    let local = replica.update(id.id, 5, |s| s.set("m", b(""))).unwrap();
    assert_eq!(local.value, Err(StoreError::OverBudget { max: 10 }));
    assert_eq!(replica.refused_over_budget(), 1);
    let removed = a.update(id.id, 6, |s| s.remove("big")).unwrap();
    replica.apply(removed.delta.as_ref().unwrap(), 7);
    assert_eq!(replica.bytes(), 8);
    assert_eq!(
        replica
            .update(id.id, 8, |s| s.set("m", b("1")))
            .unwrap()
            .value,
        Ok(())
    );
    assert_eq!(replica.bytes(), recount(&replica));
    // An overwrite and an invalidation from elsewhere.
    let overwrite = a.update(id.id, 9, |s| s.set("more", b("12345"))).unwrap();
    replica.apply(overwrite.delta.as_ref().unwrap(), 10);
    assert_eq!(replica.bytes(), recount(&replica));
    replica.apply(&a.invalidate(id.id, 11).unwrap(), 12);
    assert_eq!(replica.bytes(), 0);
}

#[test]
fn state_transfer_and_a_revived_session_are_counted_once() {
    let a = store(1);
    for i in 0..20u64 {
        a.update_or_create(None, 1 + i, |s| {
            s.set("k", Bytes::from(vec![0; i as usize]))
        })
        .unwrap();
    }
    let joiner = store(2);
    for shard in 0..a.shard_count() {
        for d in a.export_shard(shard) {
            joiner.apply(&d, 100);
            // A second copy (anti-entropy after the transfer) adds nothing.
            joiner.apply(&d, 101);
        }
    }
    assert_eq!(joiner.bytes(), a.bytes());
    assert_eq!(joiner.bytes(), recount(&a));
    // Expired here, then brought back whole with newer activity (a healed partition).
    let id = a
        .update_or_create(None, 200, |s| s.set("r", b("1234")))
        .unwrap();
    joiner.apply(id.delta.as_ref().unwrap(), 200);
    let before = joiner.bytes();
    joiner.sweep(200 + 60_000 + EXPIRY_SLACK_MS + 1);
    assert_eq!(joiner.bytes(), 0);
    // The access at 50 s never reached the joiner, which expired the session meanwhile.
    a.update(id.id, 50_200, |_| ()).unwrap();
    let revived = a.export(&[id.id]).pop().unwrap();
    assert_eq!(joiner.apply(&revived, 200_000), Applied::Created);
    assert_eq!(joiner.bytes(), 5);
    assert!(before > 5);
}

// ---------------------------------------------------------------------------------------
// change-id (Tomcat's changeSessionId): the session moves to a new id on every member, the
// old id is a tombstone everywhere, whatever order the deltas meet in.

/// A session on `a` made at 100 with `x` = 1 and `y` = 2 (y set at 150), and its deltas.
fn two_attributes(a: &SessionStore) -> (SessionId, Vec<Delta>) {
    let made = a
        .update_or_create(None, 100, |s| s.set("x", b("1")))
        .unwrap();
    let y = a.update(made.id, 150, |s| s.set("y", b("2"))).unwrap();
    (made.id, vec![made.delta.unwrap(), y.delta.unwrap()])
}

/// Whether `s` serves `id` (a request with it finds the session).
fn serves(s: &SessionStore, id: SessionId, now: u64) -> bool {
    s.update(id, now, |_| ()).is_some()
}

/// What a store holds, tombstones included, for comparing members; access times aside
/// (they travel on their own, and the tests' reads touch sessions).
fn everything(s: &SessionStore) -> (Vec<Delta>, Vec<(u32, u64)>, u64, usize) {
    let mut all = contents(s);
    all.iter_mut().for_each(|d| d.last_access_ms = 0);
    (all, s.digest(), s.bytes(), s.len())
}

#[test]
fn change_id_moves_the_whole_session_to_a_fresh_id_and_ends_the_old_one() {
    let a = store(1);
    let (old, _) = two_attributes(&a);
    let before = contents(&a).pop().unwrap();
    let bytes = a.bytes();
    let done = a
        .change_id(old, 200, |s| {
            assert_ne!(s.id(), old, "f sees the new id");
            s.set("user", b("ada")).unwrap();
            s.get("x").cloned()
        })
        .expect("old is live");
    let new = done.id;
    assert_ne!(new, old);
    assert!(!done.created);
    assert_eq!(
        done.value,
        Some(b("1")),
        "f ran on the session's attributes"
    );
    // One change-id delta: the old id, the whole session, f's change included.
    let delta = done.delta.expect("a delta");
    assert_eq!(
        (delta.id, delta.renamed_from, delta.full),
        (new, Some(old), true)
    );
    assert!(!delta.invalidated);
    assert_eq!(delta.created_ms, 100);
    assert_eq!(delta.last_access_ms, 200);
    let mut names: Vec<&str> = delta.attributes.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["user", "x", "y"]);
    // The attributes keep their versions: an older write of x elsewhere still loses.
    let after = contents(&a).pop().unwrap();
    for change in &before.attributes {
        assert!(
            after.attributes.contains(change),
            "{} lost its version",
            change.name
        );
    }
    assert_eq!(after.created_ms, before.created_ms);
    assert_eq!(after.max_inactive, before.max_inactive);
    // Here: the new id serves the session, the old one nothing, one session in all.
    assert_eq!(read(&a, new, "y", 201), Some(b("2")));
    assert_eq!(read(&a, new, "user", 201), Some(b("ada")));
    assert!(!serves(&a, old, 201));
    assert!(!a.contains(old));
    assert_eq!(a.len(), 1);
    assert_eq!(a.bytes(), bytes + 7);
    assert_eq!(a.bytes(), recount(&a));
    // A request with the old id gets a new session, never the old data.
    let fresh = a
        .update_or_create(Some(old), 202, |s| s.get("x").cloned())
        .unwrap();
    assert!(fresh.created);
    assert_ne!(fresh.id, old);
    assert_eq!(fresh.value, None);
}

#[test]
fn change_id_of_a_session_that_is_not_live_changes_nothing() {
    let a = store(1);
    assert!(
        a.change_id(SessionId::from_bytes([7; 16]), 1, |_| ())
            .is_none()
    );
    let (ended, _) = two_attributes(&a);
    a.invalidate(ended, 200).unwrap();
    assert!(a.change_id(ended, 201, |_| ()).is_none());
    // Past its interval (60 s after the last access at 150), not yet swept.
    let (idle, _) = two_attributes(&a);
    assert!(a.change_id(idle, 150 + 60_001, |_| ()).is_none());
    assert!(a.contains(idle), "still there for the sweep");
    // Already renamed: the old id is gone, only the new one can be renamed again.
    let (renamed, _) = two_attributes(&a);
    let first = a.change_id(renamed, 300, |_| ()).unwrap();
    assert!(a.change_id(renamed, 301, |_| ()).is_none());
    let second = a.change_id(first.id, 302, |_| ()).unwrap();
    assert_eq!(read(&a, second.id, "x", 303), Some(b("1")));
    assert!(!serves(&a, first.id, 303));
    assert_eq!(a.len(), 2);
    assert_eq!(a.bytes(), recount(&a));
}

#[test]
fn a_replica_that_applies_a_change_id_holds_what_the_origin_holds() {
    let a = store(1);
    let replica = store(2);
    let (old, deltas) = two_attributes(&a);
    for d in &deltas {
        replica.apply(d, 160);
    }
    let done = a.change_id(old, 200, |s| s.set("user", b("ada"))).unwrap();
    let rename = done.delta.unwrap();
    assert_eq!(replica.apply(&rename, 201), Applied::Created);
    assert_eq!(everything(&replica), everything(&a));
    assert!(!serves(&replica, old, 202));
    assert_eq!(read(&replica, done.id, "user", 202), Some(b("ada")));
    // Applied twice (a resend after a reconnect): nothing changes.
    assert_eq!(replica.apply(&rename, 203), Applied::Unchanged);
    assert_eq!(everything(&replica), everything(&a));
}

#[test]
fn a_change_id_that_overtakes_the_old_sessions_own_deltas_is_not_undone_by_them() {
    // State transfer and anti-entropy are not ordered with the links: the rename can reach
    // a member before the creation of the session it renames.
    let a = store(1);
    let (old, deltas) = two_attributes(&a);
    let rename = a.change_id(old, 200, |_| ()).unwrap().delta.unwrap();
    let late = store(3);
    assert_eq!(late.apply(&rename, 201), Applied::Created);
    for d in &deltas {
        assert_eq!(late.apply(d, 202), Applied::Ended, "the old id stays dead");
    }
    // Even as a whole session with newer activity (a full delta from an exchange).
    let mut whole = deltas[0].clone();
    whole.full = true;
    whole.last_access_ms = 10_000;
    assert_eq!(late.apply(&whole, 203), Applied::Ended);
    assert!(!serves(&late, old, 204));
    assert_eq!(everything(&late), everything(&a));
    // Or between the creation and the next change.
    let middle = store(4);
    middle.apply(&deltas[0], 201);
    middle.apply(&rename, 202);
    assert_eq!(middle.apply(&deltas[1], 203), Applied::Ended);
    assert_eq!(everything(&middle), everything(&a));
}

#[test]
fn a_member_that_holds_neither_id_learns_the_session_and_the_tombstone() {
    let a = store(1);
    let (old, _) = two_attributes(&a);
    let rename = a.change_id(old, 200, |_| ()).unwrap().delta.unwrap();
    let blank = store(5);
    assert_eq!(blank.apply(&rename, 201), Applied::Created);
    assert_eq!(blank.len(), 1);
    assert_eq!(read(&blank, rename.id, "x", 202), Some(b("1")));
    assert_eq!(
        blank.export(&[old]),
        a.export(&[old]),
        "both hold the tombstone"
    );
    assert_eq!(everything(&blank), everything(&a));
}

#[test]
fn a_write_made_elsewhere_to_the_old_id_before_the_rename_reached_it_is_dropped_everywhere() {
    // a renames; meanwhile b (which did not see the rename yet) writes the old id. Every
    // member, whatever the order, ends without b's write: the new session holds exactly
    // what a renamed (a fixation attacker's write to the old id never lands in it).
    let a = store(1);
    let b2 = store(2);
    let (old, deltas) = two_attributes(&a);
    for d in &deltas {
        b2.apply(d, 160);
    }
    let rename = a.change_id(old, 200, |s| s.set("user", b("ada"))).unwrap();
    let new = rename.id;
    let rename = rename.delta.unwrap();
    let write = b2.update(old, 201, |s| s.set("x", b("from b"))).unwrap();
    let write = write.delta.unwrap();
    // On a: the write comes late and finds the tombstone.
    assert_eq!(a.apply(&write, 202), Applied::Ended);
    // On b: the rename comes after b's own write, which goes with the old id.
    assert_eq!(b2.apply(&rename, 202), Applied::Created);
    // On c and d, both orders.
    let c = store(3);
    for d in &deltas {
        c.apply(d, 160);
    }
    c.apply(&write, 203);
    c.apply(&rename, 204);
    let d = store(4);
    for delta in &deltas {
        d.apply(delta, 160);
    }
    d.apply(&rename, 203);
    d.apply(&write, 204);
    for (name, member) in [("b", &b2), ("c", &c), ("d", &d)] {
        assert_eq!(everything(member), everything(&a), "{name} differs from a");
        assert_eq!(read(member, new, "x", 205), Some(b("1")), "{name}");
        assert!(!serves(member, old, 205), "{name} serves the old id");
    }
}

#[test]
fn a_write_to_the_new_id_that_overtakes_the_rename_is_kept() {
    let a = store(1);
    let (old, deltas) = two_attributes(&a);
    let done = a.change_id(old, 200, |_| ()).unwrap();
    let after = a.update(done.id, 210, |s| s.set("cart", b("3"))).unwrap();
    let c = store(3);
    for d in &deltas {
        c.apply(d, 160);
    }
    c.apply(after.delta.as_ref().unwrap(), 211);
    assert_eq!(c.apply(done.delta.as_ref().unwrap(), 212), Applied::Changed);
    assert_eq!(everything(&c), everything(&a));
    assert_eq!(read(&c, done.id, "cart", 213), Some(b("3")));
}

#[test]
fn the_old_ids_tombstone_lives_as_long_as_an_invalidated_ones() {
    let a = store(1);
    let (renamed, _) = two_attributes(&a);
    let (invalidated, _) = two_attributes(&a);
    let new = a.change_id(renamed, 1_000, |_| ()).unwrap().id;
    a.invalidate(invalidated, 1_000).unwrap();
    // The new session is kept alive by accesses meanwhile: only the two tombstones go.
    a.touch(new, 1_000 + TOMBSTONE_TTL_MS);
    assert_eq!(a.sweep(1_000 + TOMBSTONE_TTL_MS - 1).purged, 0);
    assert_eq!(a.sweep(1_000 + TOMBSTONE_TTL_MS).purged, 2);
    assert!(a.contains(new));
}

#[test]
fn a_change_id_makes_an_expiry_final() {
    // The old session expired here (its accesses on the renaming member never came), so it
    // is an expiry tombstone, which a whole session with newer activity could replace; once
    // the rename is known, nothing replaces it.
    let a = store(1);
    let (old, deltas) = two_attributes(&a);
    let c = store(3);
    for d in &deltas {
        c.apply(d, 160);
    }
    c.sweep(150 + 60_000 + EXPIRY_SLACK_MS + 1);
    assert!(!c.contains(old));
    a.touch(old, 60_000);
    let rename = a.change_id(old, 60_100, |_| ()).unwrap().delta.unwrap();
    c.apply(&rename, 70_000);
    let mut whole = deltas[0].clone();
    whole.full = true;
    whole.last_access_ms = 65_000;
    assert_eq!(c.apply(&whole, 70_001), Applied::Ended);
    assert_eq!(c.export(&[old]), a.export(&[old]));
}

#[test]
fn a_joining_node_gets_the_new_id_and_the_old_ids_tombstone_with_the_state_transfer() {
    let a = store(1);
    let (old, deltas) = two_attributes(&a);
    let done = a.change_id(old, 200, |_| ()).unwrap();
    let joiner = store(9);
    for shard in 0..a.shard_count() {
        for d in a
            .export_shard(shard)
            .iter()
            .chain(&a.export_shard_ended(shard))
        {
            joiner.apply(d, 300);
        }
    }
    assert_eq!(everything(&joiner), everything(&a));
    assert!(serves(&joiner, done.id, 301));
    // A delta for the old id still on its way from a third member finds the tombstone.
    for d in &deltas {
        assert_eq!(joiner.apply(d, 302), Applied::Ended);
    }
    assert!(!serves(&joiner, old, 303));
}

#[test]
fn anti_entropy_converges_on_a_rename_the_other_member_never_heard_of() {
    // a renamed while cut off from b (the delta never reached b); b still holds the old id
    // live, and wrote it meanwhile. Exchanging what the digests show differs, as
    // anti-entropy does, leaves both with the new id live and the old a tombstone.
    let a = store(1);
    let b2 = store(2);
    let (old, deltas) = two_attributes(&a);
    for d in &deltas {
        b2.apply(d, 160);
    }
    let new = a.change_id(old, 200, |_| ()).unwrap().id;
    b2.update(old, 201, |s| s.set("x", b("on b"))).unwrap();
    assert_ne!(a.digest(), b2.digest());
    let mut differing: Vec<SessionId> = Vec::new();
    for ((shard, mine), (_, theirs)) in a.digest().into_iter().zip(b2.digest()) {
        if mine == theirs {
            continue;
        }
        let ours: std::collections::HashMap<_, _> = a.shard_entries(shard).into_iter().collect();
        let other: std::collections::HashMap<_, _> = b2.shard_entries(shard).into_iter().collect();
        differing.extend(
            ours.keys()
                .chain(other.keys())
                .filter(|id| ours.get(id) != other.get(id)),
        );
    }
    differing.sort();
    differing.dedup();
    let mut expected = vec![old, new];
    expected.sort();
    assert_eq!(differing, expected);
    let from_a = a.export(&differing);
    let from_b = b2.export(&differing);
    for d in &from_b {
        a.apply(d, 300);
    }
    for d in &from_a {
        b2.apply(d, 300);
    }
    assert_eq!(a.digest(), b2.digest());
    for member in [&a, &b2] {
        assert!(serves(member, new, 301));
        assert!(!serves(member, old, 301));
        assert_eq!(read(member, new, "x", 301), Some(b("1")));
        assert_eq!(member.len(), 1);
        assert_eq!(member.bytes(), recount(member));
    }
}

#[test]
fn an_invalidation_of_the_old_id_crossing_the_change_id_leaves_the_new_session_live() {
    let a = store(1);
    let b2 = store(2);
    let (old, deltas) = two_attributes(&a);
    for d in &deltas {
        b2.apply(d, 160);
    }
    let renamed = a.change_id(old, 200, |_| ()).unwrap();
    let ended = b2.invalidate(old, 200).unwrap();
    a.apply(&ended, 201);
    b2.apply(renamed.delta.as_ref().unwrap(), 201);
    assert_eq!(everything(&a), everything(&b2));
    assert!(serves(&b2, renamed.id, 202));
    assert!(!serves(&b2, old, 202));
}

#[test]
fn two_change_ids_of_one_session_at_once_leave_two_live_sessions_and_the_old_id_dead() {
    let a = store(1);
    let b2 = store(2);
    let (old, deltas) = two_attributes(&a);
    for d in &deltas {
        b2.apply(d, 160);
    }
    let on_a = a.change_id(old, 200, |_| ()).unwrap();
    let on_b = b2.change_id(old, 200, |_| ()).unwrap();
    assert_ne!(on_a.id, on_b.id);
    a.apply(on_b.delta.as_ref().unwrap(), 201);
    b2.apply(on_a.delta.as_ref().unwrap(), 201);
    assert_eq!(everything(&a), everything(&b2));
    for member in [&a, &b2] {
        assert_eq!(member.len(), 2);
        assert!(!serves(member, old, 202));
        assert_eq!(read(member, on_a.id, "x", 202), Some(b("1")));
        assert_eq!(read(member, on_b.id, "x", 202), Some(b("1")));
    }
}
