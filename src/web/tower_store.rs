//! A [`tower_sessions_core::SessionStore`] over a node's replicated sessions (feature
//! `tower-sessions`): an app on tower-sessions keeps its code and swaps its store.
//!
//! See [`DeltacastStore`] for what maps to what, and `docs/tower-sessions.md` for the
//! differences from tower-sessions' own stores.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, Error, ExpiredDeletion, SessionStore};
use tracing::{debug, warn};

use crate::clock;
use crate::node::{NodeState, RunningNode, Shared};
use crate::session::{Delta, Limits, SessionId, SessionMut, StoreError};

/// The key under which [`DeltacastStore::load`](SessionStore::load) leaves, in the
/// record's data, what it loaded (a fingerprint of each attribute), so that the record's
/// [`save`](SessionStore::save) writes only what the request itself changed. Reserved: an
/// app must not use it as a session key. It is never stored.
pub const LOADED_KEY: &str = "__deltacast.loaded";

/// How long a call waits for a node that is still receiving the cluster's sessions.
const READY_WAIT: Duration = Duration::from_secs(10);

/// tower-sessions' [`SessionStore`] over a deltacast node: every member of the cluster
/// holds every session, so a request may land on any instance of the app, and a session
/// survives the death of any of them.
///
/// ```ignore
/// // Before: let store = MemoryStore::default();
/// let store = DeltacastStore::new(&node); // node: deltacast::Node
/// let app = Router::new().route("/", get(handler)).layer(SessionManagerLayer::new(store));
/// ```
///
/// What maps to what:
/// - **Ids.** tower-sessions' [`Id`] (an `i128`) is deltacast's [`SessionId`] (16 bytes),
///   its little-endian bytes: the cookie value tower-sessions writes (base64url of those
///   bytes) decodes to exactly the session's 16 bytes, shown in hex by the node's
///   `/session` endpoints.
/// - **Data.** Each key of [`Record::data`] is one attribute of the session, its value
///   the key's JSON bytes. A save is a per-attribute delta: it writes the keys whose value
///   this request changed and removes the keys this request removed, nothing else, so two
///   concurrent requests of one session that change different keys both keep theirs, on
///   every member. (For that, [`load`](SessionStore::load) leaves a fingerprint of what
///   it loaded under [`LOADED_KEY`]; a record without it, such as one whose data was
///   [cleared](tower_sessions_core::Session::clear), is saved whole: every stored key it
///   lacks is removed.)
/// - **Expiry.** [`Record::expiry_date`] becomes the session's max inactive interval from
///   its last access, rounded up to the whole second: the session ends at most 1 s after
///   `expiry_date` (in practice a few milliseconds, the time between tower-sessions
///   computing the date and the store writing it), never before. [`load`](SessionStore::load)
///   does not touch the session (tower-sessions moves the expiry on save only), and
///   returns `None` from the end on; the node sweeps the session a little later
///   ([`EXPIRY_SLACK_MS`](crate::session::EXPIRY_SLACK_MS)).
/// - **create** gives the record a new id of deltacast's choosing (from the operating
///   system's CSPRNG, never one this member holds live or as a tombstone, and every member
///   holds every session and tombstone of the cluster) and writes it back into
///   [`Record::id`], as tower-sessions' contract allows: the id a record came with is
///   never used, so no id can collide and none can be chosen by a client.
/// - **delete** invalidates the session everywhere and leaves a tombstone: a save that
///   arrives later (another request still running) writes nothing and returns `Ok`, and
///   no late delta brings the session back.
/// - **save** of a session that is not live (deleted, expired, unknown) writes nothing and
///   returns `Ok`: the app's next request finds no session and tower-sessions makes a new
///   one.
/// - Every write is replicated before the call returns (in sync mode, acknowledged by
///   every live member).
///
/// Errors: a value that is not JSON in the store is [`Error::Decode`]; a value that does
/// not serialize is [`Error::Encode`]; what the node refuses (its limits: an empty or too
/// long key, a too large value, too many keys or sessions, its byte budget; a node still
/// joining) is [`Error::Backend`].
///
/// Gaps with tower-sessions' own stores (see `docs/tower-sessions.md`): its cookie carries
/// no route, so a balancer in front routes with `sticky = "cookie:NAME"`, `"source_ip"`
/// or `"header:NAME"`, or with no stickiness at all (every member holds every session);
/// the expiry is kept to the second; and deltacast's native layer, `deltacast::Session`,
/// is the better choice for an app starting fresh (routes in its cookies, change-id as one
/// delta, no fingerprints in the record).
#[derive(Clone)]
pub struct DeltacastStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for DeltacastStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltacastStore")
            .field("node", &self.shared.me.name)
            .field("sessions", &self.shared.store.len())
            .finish_non_exhaustive()
    }
}

impl DeltacastStore {
    /// The store over the sessions (and replication) of a node's [`Shared`] state.
    pub(crate) fn from_shared(shared: Arc<Shared>) -> DeltacastStore {
        DeltacastStore { shared }
    }

    /// The store over the sessions of a [`Node`](crate::Node) started in this process
    /// (serve the app with [`Node::serve`](crate::Node::serve), so the balancer finds it).
    pub fn new(node: &crate::Node) -> DeltacastStore {
        DeltacastStore::from_shared(node.shared().clone())
    }

    /// The store over the sessions of a node started in this process.
    pub fn from_running_node(node: &RunningNode) -> DeltacastStore {
        DeltacastStore::from_shared(node.shared().clone())
    }

    /// Waits out a joining node (it is receiving the cluster's sessions): a load before
    /// then would not find sessions the cluster holds.
    async fn ready(&self) -> session_store::Result<()> {
        if self.shared.backend.is_session_server() {
            // Its record mapping (fingerprints, expiry dates) is written for the replicated
            // store; over a session server, tower-sessions' own Redis store does the job.
            return Err(Error::Backend(
                "DeltacastStore keeps sessions in the replicated store; this node's sessions.store is a session server (use deltacast's session layer, or tower-sessions' own store for that server)".into(),
            ));
        }
        if self.shared.state() == NodeState::Joining
            && !self.shared.wait_until_ready(READY_WAIT).await
        {
            return Err(Error::Backend(
                "this node is still receiving the cluster's sessions; try again shortly".into(),
            ));
        }
        Ok(())
    }

    async fn replicate(&self, delta: Option<Delta>) {
        if let Some(delta) = delta {
            self.shared.replicator.replicate(delta).await;
        }
    }
}

#[async_trait]
impl SessionStore for DeltacastStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.ready().await?;
        let encoded = encode(record, self.shared.store.limits())?;
        let expiry_ms = unix_ms(record.expiry_date);
        let now = clock::now_ms();
        let store = &self.shared.store;
        let done = store
            .update_or_create(None, now, |s| write(s, &encoded, None, expiry_ms))
            .map_err(backend)?;
        if let Err(e) = done.value {
            // Never replicated: the session exists here only, and ends here.
            let _ = store.invalidate(done.id, now);
            return Err(backend(e));
        }
        record.id = to_tower_id(done.id);
        self.replicate(done.delta).await;
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.ready().await?;
        let encoded = encode(record, self.shared.store.limits())?;
        let loaded = loaded(record);
        let expiry_ms = unix_ms(record.expiry_date);
        let id = to_session_id(&record.id);
        let now = clock::now_ms();
        let Some(done) = self
            .shared
            .store
            .update(id, now, |s| write(s, &encoded, loaded.as_ref(), expiry_ms))
        else {
            debug!(
                "save of a session that is not live (deleted, expired or unknown): nothing written"
            );
            return Ok(());
        };
        // What was written before a refusal is in the store here: it goes everywhere.
        self.replicate(done.delta).await;
        done.value.map_err(backend)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        self.ready().await?;
        let id = to_session_id(session_id);
        let now = clock::now_ms();
        // A read that does not touch the session: tower-sessions moves the expiry on save.
        let Some(delta) = self.shared.store.export(&[id]).pop() else {
            return Ok(None);
        };
        if delta.invalidated {
            return Ok(None);
        }
        let secs = delta.max_inactive.map_or(0, |(secs, _)| secs);
        let ends_ms = delta.last_access_ms.saturating_add(u64::from(secs) * 1000);
        if now >= ends_ms {
            return Ok(None);
        }
        let mut data = HashMap::with_capacity(delta.attributes.len() + 1);
        let mut fingerprints = serde_json::Map::with_capacity(delta.attributes.len());
        for attribute in delta.attributes {
            let Some(bytes) = attribute.value else {
                continue;
            };
            if attribute.name == LOADED_KEY {
                continue;
            }
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                warn!(key = %attribute.name, "a session attribute is not JSON; the session cannot be loaded");
                Error::Decode(format!(
                    "session attribute {:?} is not JSON: {e}",
                    attribute.name
                ))
            })?;
            fingerprints.insert(attribute.name.clone(), Value::String(fingerprint(&bytes)));
            data.insert(attribute.name, value);
        }
        data.insert(LOADED_KEY.to_string(), Value::Object(fingerprints));
        Ok(Some(Record {
            id: *session_id,
            data,
            expiry_date: from_unix_ms(ends_ms),
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.ready().await?;
        let delta = self
            .shared
            .store
            .invalidate(to_session_id(session_id), clock::now_ms());
        self.replicate(delta).await;
        Ok(())
    }
}

#[async_trait]
impl ExpiredDeletion for DeltacastStore {
    /// Sweeps expired sessions now. Not needed: the node sweeps every second by itself
    /// (each member decides alike from the replicated access times, so nothing is sent).
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.shared.store.sweep(clock::now_ms());
        Ok(())
    }
}

/// deltacast's id of a tower-sessions id: its 16 little-endian bytes.
pub(crate) fn to_session_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

/// tower-sessions' id of a deltacast id (the inverse of [`to_session_id`]).
pub(crate) fn to_tower_id(id: SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

/// One key of a record, ready for the store.
#[derive(Debug)]
struct Encoded {
    name: String,
    value: Bytes,
    fingerprint: String,
}

/// The record's keys as attributes (its JSON bytes), checked against the node's limits
/// that do not depend on what the session holds, so that a refused save writes nothing.
fn encode(record: &Record, limits: Limits) -> session_store::Result<Vec<Encoded>> {
    let keys = record.data.keys().filter(|k| *k != LOADED_KEY).count();
    if keys > limits.max_attributes {
        return Err(backend(StoreError::TooManyAttributes {
            max: limits.max_attributes,
        }));
    }
    record
        .data
        .iter()
        .filter(|(name, _)| *name != LOADED_KEY)
        .map(|(name, value)| {
            if name.is_empty() || name.len() > limits.max_name_bytes {
                return Err(backend(StoreError::BadName {
                    max: limits.max_name_bytes,
                }));
            }
            let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string()))?;
            if bytes.len() > limits.max_value_bytes {
                return Err(backend(StoreError::ValueTooLarge {
                    len: bytes.len(),
                    max: limits.max_value_bytes,
                }));
            }
            Ok(Encoded {
                name: name.clone(),
                fingerprint: fingerprint(&bytes),
                value: Bytes::from(bytes),
            })
        })
        .collect()
}

/// What the record's [`load`](SessionStore::load) found (key to fingerprint), if the
/// record carries it.
fn loaded(record: &Record) -> Option<HashMap<String, String>> {
    let found = record.data.get(LOADED_KEY)?.as_object()?;
    found
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// Writes a record into the session `s`: with `loaded` (what the request loaded), only
/// the keys the request changed or removed; without, the record whole (keys it lacks are
/// removed). Then the expiry. Values equal to the stored ones are not written again.
fn write(
    s: &mut SessionMut<'_>,
    encoded: &[Encoded],
    loaded: Option<&HashMap<String, String>>,
    expiry_ms: u64,
) -> Result<(), StoreError> {
    let keep: HashSet<&str> = encoded.iter().map(|e| e.name.as_str()).collect();
    let gone: Vec<String> = match loaded {
        Some(loaded) => loaded
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect(),
        None => s
            .attributes()
            .map(|(name, _)| name)
            .filter(|name| !keep.contains(name))
            .map(str::to_string)
            .collect(),
    };
    // Removals first: they free room for the sets.
    for name in gone {
        s.remove(&name);
    }
    for e in encoded {
        let unchanged_by_request = loaded
            .and_then(|l| l.get(&e.name))
            .is_some_and(|f| *f == e.fingerprint);
        if unchanged_by_request || s.get(&e.name) == Some(&e.value) {
            continue;
        }
        s.set(&e.name, e.value.clone())?;
    }
    let secs = inactive_secs(expiry_ms, s.last_accessed_ms());
    if secs != s.max_inactive_s() {
        s.set_max_inactive_s(secs);
    }
    Ok(())
}

/// The max inactive interval that ends a session last accessed at `last_access_ms` at
/// `expiry_ms` or, rounded up to the whole second, less than a second after; 0 when it is
/// past.
fn inactive_secs(expiry_ms: u64, last_access_ms: u64) -> u32 {
    let left = expiry_ms.saturating_sub(last_access_ms);
    u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX)
}

/// 128 bits of SHA-256 of an attribute's bytes, in hex.
fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(32);
    for b in digest.iter().take(16) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Unix milliseconds of a date, rounded up (an expiry is never moved earlier); 0 before
/// 1970.
fn unix_ms(t: OffsetDateTime) -> u64 {
    let nanos = t.unix_timestamp_nanos();
    let ms = nanos.div_euclid(1_000_000) + i128::from(nanos.rem_euclid(1_000_000) > 0);
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

/// 9999-12-31T23:59:59.999Z, the latest date `time` takes by default.
const LATEST_MS: u64 = 253_402_300_799_999;

/// The date of Unix milliseconds (9999's last instant beyond it).
fn from_unix_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.min(LATEST_MS)) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn backend(e: StoreError) -> Error {
    Error::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeId;
    use crate::session::SessionStore as Sessions;

    fn record(data: &[(&str, Value)], expiry_ms: u64) -> Record {
        Record {
            id: Id(7),
            data: data
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            expiry_date: from_unix_ms(expiry_ms),
        }
    }

    fn stored(store: &Sessions, id: SessionId, now: u64) -> HashMap<String, Value> {
        store
            .update(id, now, |s| {
                s.attributes()
                    .map(|(k, v)| (k.to_string(), serde_json::from_slice(v).expect("json")))
                    .collect()
            })
            .expect("live")
            .value
    }

    #[test]
    fn ids_map_both_ways_and_keep_their_bytes() {
        for raw in [0i128, 1, -1, i128::MIN, i128::MAX, 0x0102_0304] {
            let sid = to_session_id(&Id(raw));
            assert_eq!(to_tower_id(sid), Id(raw));
            assert_eq!(sid.as_bytes(), &raw.to_le_bytes());
        }
        let sid = SessionId::random();
        assert_eq!(to_session_id(&to_tower_id(sid)), sid);
        // The cookie tower-sessions writes is base64url of these same bytes.
        let cookie = to_tower_id(sid).to_string();
        assert_eq!(
            cookie.parse::<Id>().ok().map(|id| to_session_id(&id)),
            Some(sid)
        );
    }

    #[test]
    fn the_interval_rounds_up_to_the_second_and_never_ends_early() {
        assert_eq!(inactive_secs(10_000, 10_000), 0);
        assert_eq!(inactive_secs(9_000, 10_000), 0);
        assert_eq!(inactive_secs(10_001, 10_000), 1);
        assert_eq!(inactive_secs(11_000, 10_000), 1);
        assert_eq!(inactive_secs(11_001, 10_000), 2);
        assert_eq!(inactive_secs(u64::MAX, 0), u32::MAX);
    }

    #[test]
    fn dates_convert_to_milliseconds_and_back() {
        assert_eq!(unix_ms(from_unix_ms(1_700_000_000_123)), 1_700_000_000_123);
        let a_bit_later = from_unix_ms(1_700_000_000_123) + time::Duration::nanoseconds(1);
        assert_eq!(unix_ms(a_bit_later), 1_700_000_000_124, "rounded up");
        assert_eq!(unix_ms(OffsetDateTime::UNIX_EPOCH - time::Duration::DAY), 0);
        assert!(from_unix_ms(u64::MAX) > from_unix_ms(4_000_000_000_000));
    }

    #[test]
    fn a_record_without_what_was_loaded_is_written_whole() {
        let store = Sessions::new(NodeId::from_u64(1), Limits::default(), 1800);
        let first = record(&[("a", Value::from(1)), ("b", Value::from(1))], 61_000);
        let enc = encode(&first, store.limits()).expect("encodes");
        let done = store
            .update_or_create(None, 1_000, |s| write(s, &enc, None, 61_000))
            .expect("created");
        assert_eq!(done.value, Ok(()));
        let second = record(&[("b", Value::from(2))], 61_000);
        let enc = encode(&second, store.limits()).expect("encodes");
        let again = store
            .update(done.id, 2_000, |s| write(s, &enc, None, 61_000))
            .expect("live");
        assert_eq!(again.value, Ok(()));
        let data = stored(&store, done.id, 2_000);
        assert_eq!(data, HashMap::from([("b".to_string(), Value::from(2))]));
    }

    #[test]
    fn a_loaded_record_writes_only_what_its_request_changed() {
        let store = Sessions::new(NodeId::from_u64(1), Limits::default(), 1800);
        let base = record(&[("a", Value::from(1)), ("b", Value::from(1))], 61_000);
        let enc = encode(&base, store.limits()).expect("encodes");
        let id = store
            .update_or_create(None, 1_000, |s| write(s, &enc, None, 61_000))
            .expect("created")
            .id;
        let fp = |v: i32| fingerprint(&serde_json::to_vec(&Value::from(v)).expect("json"));
        let loaded = HashMap::from([("a".to_string(), fp(1)), ("b".to_string(), fp(1))]);
        // Request one changed a; request two changed b and removed nothing; both loaded
        // {a: 1, b: 1}.
        let one = record(&[("a", Value::from(2)), ("b", Value::from(1))], 61_000);
        let two = record(&[("a", Value::from(1)), ("b", Value::from(2))], 61_000);
        for r in [&one, &two] {
            let enc = encode(r, store.limits()).expect("encodes");
            let done = store
                .update(id, 2_000, |s| write(s, &enc, Some(&loaded), 61_000))
                .expect("live");
            assert_eq!(done.value, Ok(()));
        }
        let data = stored(&store, id, 2_000);
        assert_eq!(data["a"], Value::from(2));
        assert_eq!(data["b"], Value::from(2));
        // A third removed a: only a goes, a key added since stays.
        store
            .update(id, 2_000, |s| s.set("c", Bytes::from_static(b"3")))
            .expect("live")
            .value
            .expect("set");
        let three = record(&[("b", Value::from(1))], 61_000);
        let enc = encode(&three, store.limits()).expect("encodes");
        store
            .update(id, 2_000, |s| write(s, &enc, Some(&loaded), 61_000))
            .expect("live")
            .value
            .expect("written");
        let data = stored(&store, id, 2_000);
        assert_eq!(
            data,
            HashMap::from([
                ("b".to_string(), Value::from(2)),
                ("c".to_string(), Value::from(3))
            ])
        );
    }

    #[test]
    fn the_expiry_sets_the_interval_from_the_last_access() {
        let store = Sessions::new(NodeId::from_u64(1), Limits::default(), 1800);
        let r = record(&[], 11_500);
        let enc = encode(&r, store.limits()).expect("encodes");
        let done = store
            .update_or_create(None, 1_000, |s| {
                write(s, &enc, None, 11_500).map(|()| s.max_inactive_s())
            })
            .expect("created");
        assert_eq!(done.value, Ok(11), "10.5 s rounds up to 11");
    }

    #[test]
    fn keys_the_node_would_refuse_are_refused_before_anything_is_written() {
        let limits = Limits::default();
        let empty = record(&[("", Value::from(1))], 1);
        assert!(matches!(encode(&empty, limits), Err(Error::Backend(_))));
        let big = record(&[("k", Value::from("x".repeat(limits.max_value_bytes)))], 1);
        assert!(matches!(encode(&big, limits), Err(Error::Backend(_))));
        let marker_only = record(&[(LOADED_KEY, Value::Object(Default::default()))], 1);
        assert!(encode(&marker_only, limits).expect("encodes").is_empty());
    }
}
