//! The session map: sharded behind `parking_lot` locks, cheap to clone (a handle), and
//! every mutation returns the [`Delta`] it caused so the caller can replicate it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{RwLock, RwLockWriteGuard};
use thiserror::Error;

use super::delta::{SessionState, Version};
use super::{AttributeChange, Delta, SessionId};
use crate::membership::NodeId;

const SHARDS: usize = 64;

/// How long after expiry (beyond `max_inactive`) a session is swept: longer than access
/// times take to reach every member, so no member drops a session another kept alive.
pub const EXPIRY_SLACK_MS: u64 = 2_000;

/// How long a tombstone keeps late deltas from resurrecting an ended session.
pub const TOMBSTONE_TTL_MS: u64 = 10 * 60 * 1000;

/// Limits that keep one client from exhausting a node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live sessions this node holds at most: a new local session beyond it is refused
    /// ([`StoreError::TooManySessions`]); replicated ones are always taken. Default 1000000.
    pub max_sessions: usize,
    /// Attributes with a value one session holds at most, for local writes; default 64.
    pub max_attributes: usize,
    /// Largest attribute value in bytes, for local writes; default 65536.
    pub max_value_bytes: usize,
    /// Longest attribute name in bytes (names must not be empty); default 256.
    pub max_name_bytes: usize,
    /// All attribute bytes (names and values) this node holds, in every session.
    pub max_bytes: u64,
}

impl Limits {
    /// Whether `name` and `value` are within the limits that depend on them alone (the
    /// name's length, the value's size); the ones that depend on the session (attributes
    /// held, bytes held) are checked where it is.
    pub fn check(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        if name.is_empty() || name.len() > self.max_name_bytes {
            return Err(StoreError::BadName {
                max: self.max_name_bytes,
            });
        }
        if value.len() > self.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: 1_000_000,
            max_attributes: 64,
            max_value_bytes: 64 * 1024,
            max_name_bytes: 256,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A local write refused by the [`Limits`]; nothing was changed. The node's HTTP answers
/// 507 for the limits of the node (sessions, attributes, bytes), 413 for a value too large,
/// 400 for a bad name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    /// A new session would pass [`Limits::max_sessions`].
    #[error("this node holds its limit of {max} sessions")]
    TooManySessions {
        /// The limit.
        max: usize,
    },
    /// A new attribute would pass [`Limits::max_attributes`].
    #[error("a session holds at most {max} attributes")]
    TooManyAttributes {
        /// The limit.
        max: usize,
    },
    /// The value is longer than [`Limits::max_value_bytes`].
    #[error("attribute value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name is empty or longer than [`Limits::max_name_bytes`].
    #[error("attribute name must be 1 to {max} bytes")]
    BadName {
        /// The limit.
        max: usize,
    },
    /// The write would pass [`Limits::max_bytes`].
    #[error("this node holds its limit of {max} attribute bytes")]
    OverBudget {
        /// The limit.
        max: u64,
    },
}

/// How a session ended; kept as a tombstone for [`TOMBSTONE_TTL_MS`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Ended {
    /// Invalidated somewhere, or its id changed (the old id of a change-id ends exactly as
    /// an invalidated one): final everywhere.
    Invalidated,
    /// Expired here (every member decides the same from the replicated access time).
    /// A whole session with newer activity may still replace it (a healed partition).
    Expired { last_access_ms: u64 },
}

#[derive(Debug)]
enum Entry {
    Live(SessionState),
    Ended { how: Ended, at_ms: u64 },
}

/// What [`SessionStore::apply`] did with a delta.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It made a session this store did not have.
    Created,
    /// It changed a session this store had.
    Changed,
    /// Nothing new (a duplicate or older versions).
    Unchanged,
    /// The session ended here; its tombstone absorbed the delta.
    Ended,
}

/// The result of [`SessionStore::update`], [`SessionStore::update_or_create`] and
/// [`SessionStore::change_id`].
#[derive(Debug)]
pub struct Update<R> {
    /// The session's id (after [`SessionStore::change_id`], the new one).
    pub id: SessionId,
    /// A new session was made for this request.
    pub created: bool,
    /// What the closure returned.
    pub value: R,
    /// Everything the request changed, to replicate; `None` when it only read.
    pub delta: Option<Delta>,
}

/// What one [`SessionStore::sweep`] did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Live sessions that expired (each now a tombstone).
    pub expired: usize,
    /// Tombstones forgotten, older than [`TOMBSTONE_TTL_MS`].
    pub purged: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<SessionId, Entry>,
    /// Sessions of this shard accessed since the last [`SessionStore::take_accessed`],
    /// with the time (kept per shard: no lock shared by all requests).
    accessed: HashMap<SessionId, u64>,
}

struct Inner {
    node: NodeId,
    limits: Limits,
    default_max_inactive_s: u32,
    shards: Box<[RwLock<Shard>]>,
    clock: AtomicU64,
    live: AtomicUsize,
    /// Attribute bytes held (see [`state_bytes`]); kept exact on every path that changes a
    /// session, one atomic for the store so a write checks the budget without a lock.
    bytes: AtomicU64,
    /// Local writes refused because they would have passed `max_bytes`.
    refused: AtomicU64,
}

/// What a session costs the budget: every attribute's name (removals keep theirs, as
/// versions) and value.
fn state_bytes(state: &SessionState) -> u64 {
    state
        .attributes
        .iter()
        .map(|a| attribute_bytes(&a.name, a.value.as_ref()))
        .sum()
}

fn attribute_bytes(name: &str, value: Option<&Bytes>) -> u64 {
    (name.len() + value.map_or(0, Bytes::len)) as u64
}

/// A cheap-to-clone handle on one node's sessions.
#[derive(Clone)]
pub struct SessionStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("node", &self.inner.node)
            .field("live", &self.len())
            .finish()
    }
}

/// One live session during one request, under its shard's lock (or a [`Detached`] copy
/// read from a session server). Changes are recorded in the request's delta.
pub struct SessionMut<'a> {
    id: SessionId,
    state: &'a mut SessionState,
    owner: Owner<'a>,
    delta: Delta,
    changed: bool,
}

/// Whose limits, clock and byte budget a [`SessionMut`] writes under.
enum Owner<'a> {
    /// A session of this store: its limits, its Lamport clock, its byte budget.
    Store(&'a Inner),
    /// A [`Detached`] session: the limits of its server's node, versions counted in the
    /// session alone (a session server keeps no versions), no budget (the node holds none
    /// of its bytes).
    Detached { limits: Limits, clock: u64 },
}

impl Owner<'_> {
    fn limits(&self) -> &Limits {
        match self {
            Owner::Store(inner) => &inner.limits,
            Owner::Detached { limits, .. } => limits,
        }
    }

    fn next_version(&mut self) -> Version {
        match self {
            Owner::Store(inner) => inner.next_version(),
            Owner::Detached { clock, .. } => {
                *clock += 1;
                Version {
                    counter: *clock,
                    node: NodeId::from_u64(0),
                }
            }
        }
    }

    /// Takes `n` bytes of the budget; false when that would pass it (and counted).
    fn reserve(&self, n: u64) -> bool {
        match self {
            Owner::Store(inner) => {
                if inner.reserve(n) {
                    true
                } else {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    false
                }
            }
            Owner::Detached { .. } => true,
        }
    }

    fn release(&self, n: u64) {
        if let Owner::Store(inner) = self {
            inner.release(n);
        }
    }
}

impl SessionMut<'_> {
    /// The session's id (without a route).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// When the session was made, in Unix milliseconds.
    pub fn created_ms(&self) -> u64 {
        self.state.created_ms
    }

    /// The latest access, in Unix milliseconds, this request's included.
    pub fn last_accessed_ms(&self) -> u64 {
        self.state.last_access_ms
    }

    /// Seconds without access after which the session expires.
    pub fn max_inactive_s(&self) -> u32 {
        self.state.max_inactive_s
    }

    /// The value of attribute `name`; `None` when it has none.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.state.get(name)
    }

    /// The attributes that have a value, in the order they were first set.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.state.present()
    }

    /// Sets attribute `name` to `value` (a compact copy of it), recorded in the delta. `Err`
    /// when a [`Limits`] would be passed; then nothing changed.
    pub fn set(&mut self, name: &str, value: Bytes) -> Result<(), StoreError> {
        let limits = *self.owner.limits();
        limits.check(name, &value)?;
        if self.state.get(name).is_none() && self.state.present().count() >= limits.max_attributes {
            return Err(StoreError::TooManyAttributes {
                max: limits.max_attributes,
            });
        }
        let before = self.held(name);
        let after = attribute_bytes(name, Some(&value));
        // Reserved before the change, in one step, so concurrent writes on other shards
        // cannot pass the budget together.
        if after > before && !self.owner.reserve(after - before) {
            return Err(StoreError::OverBudget {
                max: limits.max_bytes,
            });
        }
        // A compact copy: the caller's value may be a slice of a much larger buffer (an
        // HTTP read buffer), which the session would otherwise keep alive.
        self.change(name, Some(Bytes::copy_from_slice(&value)));
        if after < before {
            self.owner.release(before - after);
        }
        Ok(())
    }

    /// The budget bytes the attribute `name` holds now (0 when the session never had it).
    fn held(&self, name: &str) -> u64 {
        self.state
            .attributes
            .iter()
            .find(|a| *a.name == *name)
            .map_or(0, |a| attribute_bytes(&a.name, a.value.as_ref()))
    }

    /// Removes an attribute; false when it had no value.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(value) = self.state.get(name) else {
            return false;
        };
        let freed = value.len() as u64;
        self.change(name, None);
        self.owner.release(freed);
        true
    }

    /// Sets the seconds without access after which this session expires, recorded in the
    /// delta (the latest change wins on every member).
    pub fn set_max_inactive_s(&mut self, secs: u32) {
        let version = self.owner.next_version();
        self.delta.max_inactive = Some((secs, version));
        self.state.max_inactive_s = secs;
        self.state.max_inactive_version = version;
        self.changed = true;
    }

    fn change(&mut self, name: &str, value: Option<Bytes>) {
        let change = AttributeChange {
            name: name.to_string(),
            value,
            version: self.owner.next_version(),
        };
        self.state.merge_attribute(&change);
        self.delta.record(change);
        self.changed = true;
    }
}

/// A session held by a session server (Redis, memcached), read into this process for
/// one request: the same [`SessionMut`] API as a session of a [`SessionStore`], under the
/// same [`Limits`] (but no byte budget: the node holds none of its bytes), and the changes
/// come back as a [`Delta`] for the server to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detached {
    id: SessionId,
    state: SessionState,
}

impl Detached {
    /// A session as its server holds it: attributes in the order given (the server's).
    pub fn new(
        id: SessionId,
        created_ms: u64,
        last_access_ms: u64,
        max_inactive_s: u32,
        attributes: impl IntoIterator<Item = (String, Bytes)>,
    ) -> Detached {
        let attributes = attributes
            .into_iter()
            .map(|(name, value)| super::delta::Attribute {
                name: super::delta::intern(&name),
                value: Some(value),
                version: Version::ZERO,
            })
            .collect();
        Detached {
            id,
            state: SessionState {
                created_ms,
                last_access_ms,
                max_inactive_s,
                max_inactive_version: Version::ZERO,
                attributes,
            },
        }
    }

    /// The session's id (without a route).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The same session under another id (a change of id).
    pub fn with_id(self, id: SessionId) -> Detached {
        Detached { id, ..self }
    }

    /// When the session was made, in Unix milliseconds.
    pub fn created_ms(&self) -> u64 {
        self.state.created_ms
    }

    /// The latest access, in Unix milliseconds.
    pub fn last_accessed_ms(&self) -> u64 {
        self.state.last_access_ms
    }

    /// Seconds without access after which the session expires.
    pub fn max_inactive_s(&self) -> u32 {
        self.state.max_inactive_s
    }

    /// The attributes that have a value, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.state.present()
    }

    /// Runs `f` on the session under `limits` (touched at `now_ms`); the delta holds what
    /// `f` changed (attribute sets and removals, the max inactive interval), `None` when it
    /// only read. The delta's versions count within this session only.
    pub fn edit<R>(
        &mut self,
        limits: Limits,
        now_ms: u64,
        f: impl FnOnce(&mut SessionMut<'_>) -> R,
    ) -> (R, Option<Delta>) {
        if now_ms > self.state.last_access_ms {
            self.state.last_access_ms = now_ms;
        }
        let clock = self
            .state
            .attributes
            .iter()
            .map(|a| a.version.counter)
            .chain([self.state.max_inactive_version.counter])
            .max()
            .unwrap_or(0);
        let mut s = SessionMut {
            id: self.id,
            delta: Delta::new(self.id, self.state.created_ms, self.state.last_access_ms),
            state: &mut self.state,
            owner: Owner::Detached { limits, clock },
            changed: false,
        };
        let value = f(&mut s);
        let delta = s.changed.then_some(s.delta);
        (value, delta)
    }
}

/// The shard that holds `id`.
fn shard_index(id: &SessionId) -> usize {
    usize::from(id.as_bytes()[0]) % SHARDS
}

/// The shards of two ids, both locked for writing: the one with the lower index first,
/// which is the only order in which any code holds two shard locks (no other path holds
/// more than one), so two pairs never wait on each other. One lock when both ids share a
/// shard.
struct Pair<'a> {
    low: RwLockWriteGuard<'a, Shard>,
    high: Option<RwLockWriteGuard<'a, Shard>>,
    low_index: usize,
}

impl Pair<'_> {
    /// The locked shard of `id` (one of the pair's two ids).
    fn shard(&mut self, id: &SessionId) -> &mut Shard {
        match &mut self.high {
            Some(high) if shard_index(id) != self.low_index => high,
            _ => &mut self.low,
        }
    }
}

impl Inner {
    fn shard(&self, id: &SessionId) -> &RwLock<Shard> {
        &self.shards[shard_index(id)]
    }

    fn lock_pair(&self, a: &SessionId, b: &SessionId) -> Pair<'_> {
        let (a, b) = (shard_index(a), shard_index(b));
        let (low, high) = (a.min(b), a.max(b));
        Pair {
            low: self.shards[low].write(),
            high: (high != low).then(|| self.shards[high].write()),
            low_index: low,
        }
    }

    fn next_version(&self) -> Version {
        Version {
            counter: self.clock.fetch_add(1, Ordering::Relaxed) + 1,
            node: self.node,
        }
    }

    fn observe(&self, counter: u64) {
        self.clock.fetch_max(counter, Ordering::Relaxed);
    }

    /// Takes `n` bytes of the budget; false (and nothing taken) when that would pass it.
    fn reserve(&self, n: u64) -> bool {
        let max = self.limits.max_bytes;
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|total| *total <= max)
            })
            .is_ok()
    }

    /// Counts bytes a replicated change brought: never refused (a member that refused
    /// what another accepted would diverge from it), even past the budget.
    fn charge(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Accounts a change of a session from `before` to `after` budget bytes.
    fn account(&self, before: u64, after: u64) {
        if after > before {
            self.charge(after - before);
        } else {
            self.release(before - after);
        }
    }
}

impl SessionStore {
    /// A store for node `node` whose new sessions live `default_max_inactive_s` without access.
    pub fn new(node: NodeId, limits: Limits, default_max_inactive_s: u32) -> SessionStore {
        SessionStore {
            inner: Arc::new(Inner {
                node,
                limits,
                default_max_inactive_s,
                shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
                clock: AtomicU64::new(0),
                live: AtomicUsize::new(0),
                bytes: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The node whose store this is: the writer in the versions of its changes.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The limits the store was made with.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Live sessions held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Whether [`SessionStore::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attribute bytes (names and values) held in live sessions, against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Local writes refused for the byte budget since the start.
    pub fn refused_over_budget(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Runs `f` on the live session `id`, touching it. `None` when there is none (unknown,
    /// expired or invalidated): a read or a removal has nothing to act on, and makes no
    /// session for it. The delta holds everything `f` changed; `None` when it only read.
    pub fn update<R>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: impl FnOnce(&mut SessionMut<'_>) -> R,
    ) -> Option<Update<R>> {
        self.update_live(id, now_ms, f).ok()
    }

    /// As [`SessionStore::update`] on the live session `id`; when there is none (no id,
    /// unknown, expired or invalidated), `f` runs on a new session with a fresh id instead,
    /// never the client's (no session fixation), and the delta holds the creation too.
    /// `Err` only when a new session would pass the session limit; then nothing changed.
    pub fn update_or_create<R>(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        f: impl FnOnce(&mut SessionMut<'_>) -> R,
    ) -> Result<Update<R>, StoreError> {
        let f = match id {
            Some(id) => match self.update_live(id, now_ms, f) {
                Ok(update) => return Ok(update),
                Err(f) => f,
            },
            None => f,
        };
        self.create(now_ms, f)
    }

    /// `f` on the live session `id`, or `f` back when there is none, so that
    /// [`SessionStore::update_or_create`] can still hand it to a new session.
    fn update_live<R, F>(&self, id: SessionId, now_ms: u64, f: F) -> Result<Update<R>, F>
    where
        F: FnOnce(&mut SessionMut<'_>) -> R,
    {
        let mut guard = self.inner.shard(&id).write();
        let shard = &mut *guard;
        let Some(Entry::Live(state)) = shard.entries.get_mut(&id) else {
            return Err(f);
        };
        if now_ms > state.expires_at_ms() {
            return Err(f);
        }
        if now_ms > state.last_access_ms {
            state.last_access_ms = now_ms;
        }
        shard.accessed.insert(id, state.last_access_ms);
        let mut s = SessionMut {
            id,
            delta: Delta::new(id, state.created_ms, state.last_access_ms),
            state,
            owner: Owner::Store(&self.inner),
            changed: false,
        };
        let value = f(&mut s);
        let delta = s.changed.then_some(s.delta);
        Ok(Update {
            id,
            created: false,
            value,
            delta,
        })
    }

    fn create<R>(
        &self,
        now_ms: u64,
        f: impl FnOnce(&mut SessionMut<'_>) -> R,
    ) -> Result<Update<R>, StoreError> {
        let max = self.inner.limits.max_sessions;
        if self.len() >= max {
            return Err(StoreError::TooManySessions { max });
        }
        let id = self.fresh_id();
        let version = self.inner.next_version();
        let mut state = SessionState {
            created_ms: now_ms,
            last_access_ms: now_ms,
            max_inactive_s: self.inner.default_max_inactive_s,
            max_inactive_version: version,
            attributes: Vec::new(),
        };
        let mut delta = Delta::new(id, now_ms, now_ms);
        delta.max_inactive = Some((state.max_inactive_s, version));
        let mut s = SessionMut {
            id,
            state: &mut state,
            owner: Owner::Store(&self.inner),
            delta,
            changed: true,
        };
        let value = f(&mut s);
        let delta = s.delta;
        self.inner
            .shard(&id)
            .write()
            .entries
            .insert(id, Entry::Live(state));
        self.inner.live.fetch_add(1, Ordering::Relaxed);
        Ok(Update {
            id,
            created: true,
            value,
            delta: Some(delta),
        })
    }

    /// A random id this store holds nothing under (neither a session nor a tombstone).
    fn fresh_id(&self) -> SessionId {
        loop {
            let candidate = SessionId::random();
            if !self
                .inner
                .shard(&candidate)
                .read()
                .entries
                .contains_key(&candidate)
            {
                return candidate;
            }
        }
    }

    /// Gives the live session `old` a fresh random id (Tomcat's `changeSessionId`, done at
    /// login against session fixation), runs `f` on it under the new id, and ends `old`.
    /// `None` when `old` is not live (unknown, expired or ended); then nothing changed.
    ///
    /// The session keeps its attributes (with their versions), its creation time and its
    /// max inactive interval; it is touched at `now_ms`. `old` becomes a tombstone, exactly
    /// as an invalidated session does (and for as long, [`TOMBSTONE_TTL_MS`]): a late delta
    /// for it, a request with it, a state transfer or an anti-entropy exchange never brings
    /// it back. The rename is one step for this store: no request sees both ids live, or
    /// neither.
    ///
    /// The returned [`Update`] has the new id, `created: false`, `f`'s value, and ONE delta
    /// (with [`Delta::renamed_from`]) that carries the old id and the whole session,
    /// `f`'s changes included, to replicate as any other. Every member applies it the same
    /// way, whatever it holds: the old id ends there too, the session is merged in under
    /// the new one. Writes that another member made to the old id concurrently (before the
    /// change-id reached it) are dropped everywhere, as Tomcat drops them: the new session
    /// holds what this store held, and only what is written to the new id from now on.
    /// Carrying them over would let anyone who knows the old id (the fixation attacker
    /// this call is for) write into the session after the login.
    ///
    /// `f` runs under the locks of the two ids' shards: it must not call this store.
    pub fn change_id<R>(
        &self,
        old: SessionId,
        now_ms: u64,
        f: impl FnOnce(&mut SessionMut<'_>) -> R,
    ) -> Option<Update<R>> {
        loop {
            let new = self.fresh_id();
            let mut pair = self.inner.lock_pair(&old, &new);
            if pair.shard(&new).entries.contains_key(&new) {
                // Taken between the draw and the lock: draw again.
                continue;
            }
            let shard = pair.shard(&old);
            let mut state = match shard.entries.remove(&old) {
                Some(Entry::Live(state)) if now_ms <= state.expires_at_ms() => state,
                Some(other) => {
                    shard.entries.insert(old, other);
                    return None;
                }
                None => return None,
            };
            shard.entries.insert(
                old,
                Entry::Ended {
                    how: Ended::Invalidated,
                    at_ms: now_ms,
                },
            );
            shard.accessed.remove(&old);
            if now_ms > state.last_access_ms {
                state.last_access_ms = now_ms;
            }
            let mut s = SessionMut {
                id: new,
                delta: Delta::new(new, state.created_ms, state.last_access_ms),
                state: &mut state,
                owner: Owner::Store(&self.inner),
                changed: false,
            };
            let value = f(&mut s);
            let mut delta = state.to_full_delta(new);
            delta.renamed_from = Some(old);
            pair.shard(&new).entries.insert(new, Entry::Live(state));
            return Some(Update {
                id: new,
                created: false,
                value,
                delta: Some(delta),
            });
        }
    }

    /// Ends a session on this node; the delta ends it everywhere. None when it was not live.
    pub fn invalidate(&self, id: SessionId, now_ms: u64) -> Option<Delta> {
        let mut shard = self.inner.shard(&id).write();
        let Some(Entry::Live(state)) = shard.entries.get(&id) else {
            return None;
        };
        let mut delta = Delta::new(id, state.created_ms, state.last_access_ms);
        delta.invalidated = true;
        self.inner.release(state_bytes(state));
        shard.entries.insert(
            id,
            Entry::Ended {
                how: Ended::Invalidated,
                at_ms: now_ms,
            },
        );
        self.inner.live.fetch_sub(1, Ordering::Relaxed);
        Some(delta)
    }

    /// Merges a delta from another member. Idempotent and order-independent.
    ///
    /// A change of id ([`Delta::renamed_from`]) ends the old id here as an invalidation
    /// does, whatever this store held of it (the session, a tombstone, or nothing yet: the
    /// old id's own deltas may still be on their way), and merges the whole session in
    /// under the new id, as one step.
    pub fn apply(&self, delta: &Delta, now_ms: u64) -> Applied {
        self.inner.observe(delta.max_counter());
        if let Some(old) = delta.renamed_from {
            // An invalidated change-id, or one naming the same id twice, is no rename (the
            // wire refuses both; a delta built in-process might not).
            if old != delta.id && !delta.invalidated {
                let mut pair = self.inner.lock_pair(&old, &delta.id);
                self.end(&mut pair.shard(&old).entries, old, now_ms);
                return self.merge(&mut pair.shard(&delta.id).entries, delta, now_ms);
            }
        }
        let mut shard = self.inner.shard(&delta.id).write();
        self.merge(&mut shard.entries, delta, now_ms)
    }

    /// Ends `id` in its shard's `entries`: a live session's bytes are freed and a tombstone
    /// takes its place, an expiry becomes final, an unknown id gets a tombstone.
    fn end(&self, entries: &mut HashMap<SessionId, Entry>, id: SessionId, now_ms: u64) {
        match entries.get_mut(&id) {
            Some(Entry::Ended { how, .. }) => *how = Ended::Invalidated,
            Some(entry) => {
                if let Entry::Live(state) = entry {
                    self.inner.release(state_bytes(state));
                }
                *entry = Entry::Ended {
                    how: Ended::Invalidated,
                    at_ms: now_ms,
                };
                self.inner.live.fetch_sub(1, Ordering::Relaxed);
            }
            None => {
                entries.insert(
                    id,
                    Entry::Ended {
                        how: Ended::Invalidated,
                        at_ms: now_ms,
                    },
                );
            }
        }
    }

    /// [`SessionStore::apply`] of `delta` (its own id only) to its shard's `entries`.
    fn merge(
        &self,
        entries: &mut HashMap<SessionId, Entry>,
        delta: &Delta,
        now_ms: u64,
    ) -> Applied {
        if delta.invalidated {
            self.end(entries, delta.id, now_ms);
            return Applied::Ended;
        }
        match entries.get_mut(&delta.id) {
            None => {
                let state = SessionState::from_delta(delta, self.inner.default_max_inactive_s);
                self.inner.charge(state_bytes(&state));
                entries.insert(delta.id, Entry::Live(state));
                self.inner.live.fetch_add(1, Ordering::Relaxed);
                Applied::Created
            }
            Some(Entry::Live(state)) => {
                // Most deltas from peers carry only access times: no bytes to recount.
                let merged = if delta.attributes.is_empty() {
                    state.merge(delta)
                } else {
                    let before = state_bytes(state);
                    let merged = state.merge(delta);
                    self.inner.account(before, state_bytes(state));
                    merged
                };
                if merged {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            }
            Some(Entry::Ended { how, .. }) => {
                let revives = matches!(*how, Ended::Expired { last_access_ms } if delta.full && delta.last_access_ms > last_access_ms);
                if !revives {
                    return Applied::Ended;
                }
                let state = SessionState::from_delta(delta, self.inner.default_max_inactive_s);
                self.inner.charge(state_bytes(&state));
                entries.insert(delta.id, Entry::Live(state));
                self.inner.live.fetch_add(1, Ordering::Relaxed);
                Applied::Created
            }
        }
    }

    /// Access times from another member (batched): the latest wins.
    pub fn touch(&self, id: SessionId, last_access_ms: u64) -> bool {
        let mut shard = self.inner.shard(&id).write();
        match shard.entries.get_mut(&id) {
            Some(Entry::Live(state)) if last_access_ms > state.last_access_ms => {
                state.last_access_ms = last_access_ms;
                true
            }
            _ => false,
        }
    }

    /// The sessions accessed here since the last call, with their access times.
    pub fn take_accessed(&self) -> Vec<(SessionId, u64)> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let mut shard = shard.write();
            if !shard.accessed.is_empty() {
                out.extend(shard.accessed.drain());
            }
        }
        out
    }

    /// Expires sessions idle beyond their interval (plus [`EXPIRY_SLACK_MS`]) and forgets
    /// tombstones older than [`TOMBSTONE_TTL_MS`].
    pub fn sweep(&self, now_ms: u64) -> SweepStats {
        let mut stats = SweepStats::default();
        for shard in self.inner.shards.iter() {
            let mut shard = shard.write();
            shard.entries.retain(|_, entry| match entry {
                Entry::Live(state) => {
                    if now_ms > state.expires_at_ms().saturating_add(EXPIRY_SLACK_MS) {
                        self.inner.release(state_bytes(state));
                        *entry = Entry::Ended {
                            how: Ended::Expired {
                                last_access_ms: state.last_access_ms,
                            },
                            at_ms: now_ms,
                        };
                        stats.expired += 1;
                    }
                    true
                }
                Entry::Ended { at_ms, .. } => {
                    let keep = now_ms < at_ms.saturating_add(TOMBSTONE_TTL_MS);
                    if !keep {
                        stats.purged += 1;
                    }
                    keep
                }
            });
        }
        self.inner.live.fetch_sub(stats.expired, Ordering::Relaxed);
        stats
    }

    /// Number of shards, for exporting the store in pieces.
    pub(crate) fn shard_count(&self) -> usize {
        SHARDS
    }

    /// Every live session of shard `index` as a full delta (state transfer).
    pub(crate) fn export_shard(&self, index: usize) -> Vec<Delta> {
        self.export_shard_with(index, |id, e| match e {
            Entry::Live(state) => Some(state.to_full_delta(id)),
            Entry::Ended { .. } => None,
        })
    }

    /// Every id of shard `index` that ended for good (invalidated, or the old id of a
    /// change-id) as an invalidation delta: the state transfer sends them after the
    /// shard's sessions, so that on a joining node a late delta for such an id finds its
    /// tombstone rather than making the session again. Expired sessions are left out
    /// (each member decides expiry itself).
    pub(crate) fn export_shard_ended(&self, index: usize) -> Vec<Delta> {
        self.export_shard_with(index, |id, e| match e {
            Entry::Ended {
                how: Ended::Invalidated,
                ..
            } => Some(invalidation(id)),
            _ => None,
        })
    }

    /// Every id of shard `index` that ended for good, with when it ended (Unix ms): what
    /// the sessions file keeps, so a restore can give each tombstone its remaining time
    /// (applying the invalidation at that instant) rather than a fresh one.
    pub(crate) fn export_shard_tombstones(&self, index: usize) -> Vec<(SessionId, u64)> {
        let Some(shard) = self.inner.shards.get(index) else {
            return Vec::new();
        };
        shard
            .read()
            .entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Ended {
                    how: Ended::Invalidated,
                    at_ms,
                } => Some((*id, *at_ms)),
                _ => None,
            })
            .collect()
    }

    /// What `delta_of` makes of each entry of shard `index`, under its read lock.
    fn export_shard_with(
        &self,
        index: usize,
        delta_of: impl Fn(SessionId, &Entry) -> Option<Delta>,
    ) -> Vec<Delta> {
        let Some(shard) = self.inner.shards.get(index) else {
            return Vec::new();
        };
        shard
            .read()
            .entries
            .iter()
            .filter_map(|(id, e)| delta_of(*id, e))
            .collect()
    }

    /// Whether `id` is live here (expired-but-unswept counts as live).
    pub fn contains(&self, id: SessionId) -> bool {
        matches!(
            self.inner.shard(&id).read().entries.get(&id),
            Some(Entry::Live(_))
        )
    }
}

// ---------------------------------------------------------------------------------------
// Anti-entropy digests: order-independent hashes of what each shard holds, so two members
// find what differs by comparing 64 numbers, then the entries of differing shards only.
// Access times are left out (they travel in batches and converge by themselves).

/// FNV-1a: a stable hash, the same on every member whatever its build.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Fnv {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    fn u64(&mut self, v: u64) -> &mut Fnv {
        self.bytes(&v.to_le_bytes())
    }
}

fn entry_hash(id: &SessionId, entry: &Entry) -> Option<u64> {
    match entry {
        Entry::Live(s) => {
            let mut h = Fnv::new();
            h.bytes(id.as_bytes())
                .u64(s.created_ms)
                .u64(u64::from(s.max_inactive_s))
                .u64(s.max_inactive_version.counter)
                .u64(s.max_inactive_version.node.as_u64());
            // Attributes in any order: combine their hashes commutatively.
            let attrs = s.attributes.iter().fold(0u64, |acc, a| {
                let mut h = Fnv::new();
                h.bytes(a.name.as_bytes())
                    .u64(a.version.counter)
                    .u64(a.version.node.as_u64());
                acc.wrapping_add(h.0)
            });
            Some(h.u64(attrs).0)
        }
        Entry::Ended {
            how: Ended::Invalidated,
            ..
        } => Some(Fnv::new().bytes(id.as_bytes()).bytes(b"invalidated").0),
        // Expiry is each member's own decision: nothing to compare.
        Entry::Ended {
            how: Ended::Expired { .. },
            ..
        } => None,
    }
}

impl SessionStore {
    /// The digest of every shard: (shard, hash).
    pub(crate) fn digest(&self) -> Vec<(u32, u64)> {
        self.inner
            .shards
            .iter()
            .enumerate()
            .map(|(i, shard)| {
                let hash = shard
                    .read()
                    .entries
                    .iter()
                    .filter_map(|(id, e)| entry_hash(id, e))
                    .fold(0u64, u64::wrapping_add);
                (i as u32, hash)
            })
            .collect()
    }

    /// The per-session digests of one shard.
    pub(crate) fn shard_entries(&self, shard: u32) -> Vec<(SessionId, u64)> {
        let Some(shard) = self.inner.shards.get(shard as usize) else {
            return Vec::new();
        };
        shard
            .read()
            .entries
            .iter()
            .filter_map(|(id, e)| entry_hash(id, e).map(|h| (*id, h)))
            .collect()
    }

    /// What this store holds of `ids`, whole: live sessions as full deltas, invalidated
    /// ones as invalidations. Unknown and expired ids are left out.
    pub fn export(&self, ids: &[SessionId]) -> Vec<Delta> {
        ids.iter()
            .filter_map(|id| match self.inner.shard(id).read().entries.get(id) {
                Some(Entry::Live(state)) => Some(state.to_full_delta(*id)),
                Some(Entry::Ended {
                    how: Ended::Invalidated,
                    ..
                }) => Some(invalidation(*id)),
                _ => None,
            })
            .collect()
    }
}

/// The delta that ends `id` everywhere, as a tombstone is sent (it carries nothing else).
fn invalidation(id: SessionId) -> Delta {
    let mut d = Delta::new(id, 0, 0);
    d.invalidated = true;
    d
}
