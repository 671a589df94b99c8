//! Deltas and their merge. Every attribute carries a [`Version`] (a Lamport counter and the
//! writer's node id), so the last writer wins the same way on every member whatever order
//! the deltas arrive in, and applying one twice changes nothing. Invalidation is final:
//! it wins over any attribute change, before or after it.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::RwLock;

use super::SessionId;
use crate::membership::NodeId;

/// A Lamport timestamp with the writer's id: a total order every member computes alike.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The writer's Lamport clock after the write: above every counter it had seen.
    pub counter: u64,
    /// The writer; breaks ties between equal counters.
    pub node: NodeId,
}

impl Version {
    /// Below every real version: what a session holds before its first change.
    pub const ZERO: Version = Version {
        counter: 0,
        node: NodeId::from_u64(0),
    };
}

/// One attribute set (`value: Some`) or removed (`value: None`) at `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeChange {
    /// The attribute's name.
    pub name: String,
    /// The new value; `None` for a removal.
    pub value: Option<Bytes>,
    /// When and by whom: the higher version wins on every member.
    pub version: Version,
}

/// Everything one request changed in one session (Tomcat's DeltaRequest), or with `full`
/// the whole session (state transfer and anti-entropy). A delta for a session the receiver
/// does not know creates it, so a change can never be lost to having overtaken the
/// creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The session it changes.
    pub id: SessionId,
    /// When the session was made, in Unix milliseconds (the earliest wins).
    pub created_ms: u64,
    /// The session's latest access, in Unix milliseconds (the latest wins).
    pub last_access_ms: u64,
    /// The max inactive interval in seconds and when it was set (on creation or change).
    pub max_inactive: Option<(u32, Version)>,
    /// The attributes set or removed, at most one change per name.
    pub attributes: Vec<AttributeChange>,
    /// The session was invalidated: final on every member.
    pub invalidated: bool,
    /// Carries the whole session rather than a change.
    pub full: bool,
    /// A change of id (Tomcat's `EVT_CHANGE_SESSION_ID`): the session was known as this id
    /// until now. That id ends on every member as if invalidated (a tombstone), and the
    /// delta is `full`: it carries the whole session under `id`. Whatever else reached the
    /// old id is not carried over (see [`SessionStore::change_id`](super::SessionStore::change_id)).
    pub renamed_from: Option<SessionId>,
}

impl Delta {
    /// A delta of session `id` that changes nothing yet (no attributes, not invalidated,
    /// not full).
    pub fn new(id: SessionId, created_ms: u64, last_access_ms: u64) -> Delta {
        Delta {
            id,
            created_ms,
            last_access_ms,
            max_inactive: None,
            attributes: Vec::new(),
            invalidated: false,
            full: false,
            renamed_from: None,
        }
    }

    /// The largest version it carries, for the receiver's Lamport clock.
    pub(crate) fn max_counter(&self) -> u64 {
        let attrs = self.attributes.iter().map(|a| a.version.counter);
        let inactive = self.max_inactive.iter().map(|(_, v)| v.counter);
        attrs.chain(inactive).max().unwrap_or(0)
    }

    /// Records a change, replacing an earlier change of the same attribute in this delta.
    pub(crate) fn record(&mut self, change: AttributeChange) {
        match self.attributes.iter_mut().find(|a| a.name == change.name) {
            Some(existing) => *existing = change,
            None => self.attributes.push(change),
        }
    }
}

/// An attribute as a session holds it; a removal is kept (value `None`) with its version so
/// that an older set arriving late cannot bring the value back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attribute {
    /// Interned: the same few names recur in every session, one allocation serves all.
    pub name: Arc<str>,
    pub value: Option<Bytes>,
    pub version: Version,
}

/// The replicated state of a live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionState {
    pub created_ms: u64,
    pub last_access_ms: u64,
    pub max_inactive_s: u32,
    pub max_inactive_version: Version,
    pub attributes: Vec<Attribute>,
}

impl SessionState {
    /// The state a first delta describes (also for a delta that overtook the creation).
    pub fn from_delta(d: &Delta, default_max_inactive_s: u32) -> SessionState {
        let mut s = SessionState {
            created_ms: d.created_ms,
            last_access_ms: d.last_access_ms,
            max_inactive_s: default_max_inactive_s,
            max_inactive_version: Version::ZERO,
            attributes: Vec::with_capacity(d.attributes.len()),
        };
        s.merge(d);
        s
    }

    /// Merges `d` in: commutative, associative and idempotent. Returns whether anything changed.
    pub fn merge(&mut self, d: &Delta) -> bool {
        let mut changed = false;
        if d.created_ms < self.created_ms {
            self.created_ms = d.created_ms;
            changed = true;
        }
        if d.last_access_ms > self.last_access_ms {
            self.last_access_ms = d.last_access_ms;
            changed = true;
        }
        if let Some((secs, version)) = d.max_inactive {
            if version > self.max_inactive_version {
                self.max_inactive_s = secs;
                self.max_inactive_version = version;
                changed = true;
            }
        }
        for change in &d.attributes {
            changed |= self.merge_attribute(change);
        }
        changed
    }

    pub fn merge_attribute(&mut self, change: &AttributeChange) -> bool {
        match self.attributes.iter_mut().find(|a| *a.name == *change.name) {
            Some(a) if change.version > a.version => {
                a.value = change.value.clone();
                a.version = change.version;
                true
            }
            Some(_) => false,
            None => {
                // Exactly one more: sessions hold a few attributes, and spare capacity
                // would cost more than the moves.
                self.attributes.reserve_exact(1);
                self.attributes.push(Attribute {
                    name: intern(&change.name),
                    value: change.value.clone(),
                    version: change.version,
                });
                true
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.attributes
            .iter()
            .find(|a| &*a.name == name)
            .and_then(|a| a.value.as_ref())
    }

    /// Attributes that have a value (removals are kept only as versions).
    pub fn present(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.attributes
            .iter()
            .filter_map(|a| a.value.as_ref().map(|v| (&*a.name, v)))
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.last_access_ms
            .saturating_add(u64::from(self.max_inactive_s) * 1000)
    }

    /// The whole session as a delta (state transfer, anti-entropy).
    pub fn to_full_delta(&self, id: SessionId) -> Delta {
        Delta {
            id,
            created_ms: self.created_ms,
            last_access_ms: self.last_access_ms,
            max_inactive: Some((self.max_inactive_s, self.max_inactive_version)),
            attributes: self
                .attributes
                .iter()
                .map(|a| AttributeChange {
                    name: a.name.to_string(),
                    value: a.value.clone(),
                    version: a.version,
                })
                .collect(),
            invalidated: false,
            full: true,
            renamed_from: None,
        }
    }
}

/// Names longer than this are not interned (they are rare and would bloat the table).
const INTERN_MAX_LEN: usize = 64;
/// Distinct names interned at most, so a client inventing names cannot grow the table.
const INTERN_MAX_NAMES: usize = 4096;

/// The shared copy of an attribute name.
pub(crate) fn intern(name: &str) -> Arc<str> {
    static NAMES: OnceLock<RwLock<HashSet<Arc<str>>>> = OnceLock::new();
    if name.len() > INTERN_MAX_LEN {
        return Arc::from(name);
    }
    let names = NAMES.get_or_init(|| RwLock::new(HashSet::new()));
    if let Some(found) = names.read().get(name) {
        return found.clone();
    }
    let mut names = names.write();
    if let Some(found) = names.get(name) {
        return found.clone();
    }
    let fresh: Arc<str> = Arc::from(name);
    if names.len() < INTERN_MAX_NAMES {
        names.insert(fresh.clone());
    }
    fresh
}
