//! Where a node's sessions live, behind one seam: the node's HTTP handlers, the library's
//! session layer (and whatever else serves requests) find, read and change sessions only
//! through [`Backend`], whatever holds them.
//!
//! - [`Replicated`]: the node's own [`SessionStore`](crate::session::SessionStore) plus the [`Replicator`](crate::replication::Replicator) that sends
//!   every change to every member (the DeltaManager way; the default).
//! - [`RedisBackend`]: a Redis server or a Redis Cluster holds them (`sessions.store =
//!   "redis://..."` or `"redis+cluster://..."`); the node holds none, and replication
//!   carries nothing.
//!
//! Each implementation implements [`SessionBackend`] with `async fn`s; [`Backend`] is an
//! enum over them that dispatches by `match`, so the replicated path stays statically
//! dispatched (no boxed future, no vtable) and costs what it cost before the seam.
//!
//! One request's changes go through one call, applied as one step: a closure gets the
//! session as a [`SessionMut`] (read attributes, set, remove), and whatever it changed is
//! applied atomically (one delta for the replicated store; one script for Redis). The
//! closure may run more than once on a session server (it is `FnMut`): when the session
//! vanished between reading it and writing the change (invalidated, expired), a call that
//! creates runs it again on a fresh session, so it must not have side effects outside the
//! session.
//!
//! A session server that cannot be reached, answers too slowly (`sessions.store_timeout_ms`)
//! or answers what is not its protocol gives [`BackendError::Unavailable`]: the request
//! answers `503 session store unavailable`, the error is counted (`/status`
//! `sessions.store_errors`) and logged at most once per interval, and the next request
//! tries again (the connection comes back by itself). A stored value that does not decode
//! is no session, never an error.

pub mod memcached;
pub mod redis;
pub mod replicated;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use thiserror::Error;
use tracing::warn;

use crate::session::{Detached, SessionId, SessionMut, StoreError};
use crate::throttle::LogThrottle;

pub use self::memcached::MemcachedBackend;
pub use self::redis::RedisBackend;
pub use self::replicated::Replicated;

/// What one call did to a session.
#[derive(Debug)]
pub struct Outcome<R> {
    /// The session's id (after a change of id, the new one).
    pub id: SessionId,
    /// A new session was made for this call.
    pub created: bool,
    /// What the closure returned.
    pub value: R,
}

/// Why a call changed nothing.
#[derive(Debug, Error)]
pub enum BackendError {
    /// A limit of the node refused a new session (`sessions.max_sessions`); nothing changed.
    #[error(transparent)]
    Refused(#[from] StoreError),
    /// The session server could not be used; nothing is known to have changed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// A session server that could not be used for one call.
#[derive(Debug, Error)]
pub enum Unavailable {
    /// No answer within `sessions.store_timeout_ms` (connecting included).
    #[error("the session store did not answer within {timeout_ms} ms")]
    Timeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The connection failed or the server answered with an error.
    #[error("the session store failed: {reason}")]
    Failed {
        /// What the client said, on one line (never an attribute value).
        reason: String,
    },
    /// The server answered something that is not what the script returns.
    #[error("the session store answered what it should not: {reason}")]
    Garbled {
        /// What was wrong with it.
        reason: String,
    },
}

/// The one line the HTTP answers carry for [`BackendError::Unavailable`].
pub const UNAVAILABLE_LINE: &str = "session store unavailable";

/// The operations every place where sessions live implements. `f` runs on the live
/// session (or a new one) as [`SessionMut`]; what it changes is applied in one step.
pub trait SessionBackend: Send + Sync {
    /// Runs `f` on the live session `id`, touching it. `Ok(None)` when there is none
    /// (unknown, expired, invalidated, or stored in a form that does not decode).
    fn update<R, F>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: F,
    ) -> impl Future<Output = Result<Option<Outcome<R>>, BackendError>> + Send
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send;

    /// As [`SessionBackend::update`]; without a live session `id` (or without an id), `f`
    /// runs on a new session with a fresh id (never the client's).
    fn update_or_create<R, F>(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        f: F,
    ) -> impl Future<Output = Result<Outcome<R>, BackendError>> + Send
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send;

    /// Gives the live session `old` a fresh id (attributes kept), runs `f` on it under the
    /// new id; `old` is dead from then on. `Ok(None)` when `old` is not live.
    fn change_id<R, F>(
        &self,
        old: SessionId,
        now_ms: u64,
        f: F,
    ) -> impl Future<Output = Result<Option<Outcome<R>>, BackendError>> + Send
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send;

    /// Applies `changes` (one request's sets and removals, in the order it made them) to
    /// the live session `id`, touching it; without one, to a new session when a change
    /// stores a value (`Ok(None)` when none does). A change a limit refuses is left out and
    /// the first refusal is the outcome's value; the rest still apply. Nothing is read
    /// back, so a session server can do it in one step (Redis: one script); by default it
    /// is [`SessionBackend::update_or_create`] (or [`SessionBackend::update`]) with
    /// [`apply_changes`].
    fn write(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        changes: &[Change],
    ) -> impl Future<Output = Result<Option<Outcome<Option<StoreError>>>, BackendError>> + Send
    {
        async move {
            let apply = |s: &mut SessionMut<'_>| apply_changes(s, changes);
            match id {
                _ if stores_a_value(changes) => {
                    self.update_or_create(id, now_ms, apply).await.map(Some)
                }
                Some(id) => self.update(id, now_ms, apply).await,
                None => Ok(None),
            }
        }
    }

    /// Ends the session `id`; false when it was not live.
    fn invalidate(
        &self,
        id: SessionId,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Whether `id` names a live session (without touching it).
    fn contains(
        &self,
        id: SessionId,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Live sessions, where they can be counted cheaply (`None` for a session server).
    fn active(&self) -> Option<u64>;
}

/// Where this node's sessions live: one of the implementations, dispatched statically.
pub enum Backend {
    /// Every member holds every session (`sessions.store = "replicated"`).
    Replicated(Replicated),
    /// Redis or Redis Cluster holds them.
    Redis(Box<RedisBackend>),
    /// memcached holds them.
    Memcached(MemcachedBackend),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Backend").field(&self.kind()).finish()
    }
}

/// One dispatch for every method: a `match` over the variants.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backend::Replicated($b) => $call,
            Backend::Redis($b) => $call,
            Backend::Memcached($b) => $call,
        }
    };
}

impl Backend {
    /// `replicated`, `redis`, `redis-cluster` or `memcached` (the kind of `sessions.store`).
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Replicated(_) => "replicated",
            Backend::Redis(r) => r.kind(),
            Backend::Memcached(_) => "memcached",
        }
    }

    /// Whether a session server holds the sessions (the node replicates nothing).
    pub fn is_session_server(&self) -> bool {
        !matches!(self, Backend::Replicated(_))
    }

    /// Calls that failed because the session server could not be used (0 for the
    /// replicated store).
    pub fn store_errors(&self) -> u64 {
        match self {
            Backend::Replicated(_) => 0,
            Backend::Redis(r) => r.health().errors(),
            Backend::Memcached(m) => m.health().errors(),
        }
    }

    /// A copy of the live session `id`, touched at `now_ms`, for a caller that reads it
    /// synchronously afterwards (the session layer over a session server).
    pub async fn load(&self, id: SessionId, now_ms: u64) -> Result<Option<Detached>, BackendError> {
        let copy = |s: &mut SessionMut<'_>| {
            Detached::new(
                s.id(),
                s.created_ms(),
                s.last_accessed_ms(),
                s.max_inactive_s(),
                s.attributes().map(|(n, v)| (n.to_string(), v.clone())),
            )
        };
        Ok(self.update(id, now_ms, copy).await?.map(|o| o.value))
    }

    /// The replicated store, when the sessions are replicated.
    pub fn replicated(&self) -> Option<&Replicated> {
        match self {
            Backend::Replicated(r) => Some(r),
            Backend::Redis(_) | Backend::Memcached(_) => None,
        }
    }
}

impl SessionBackend for Backend {
    async fn update<R, F>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: F,
    ) -> Result<Option<Outcome<R>>, BackendError>
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send,
    {
        dispatch!(self, b => b.update(id, now_ms, f).await)
    }

    async fn update_or_create<R, F>(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        f: F,
    ) -> Result<Outcome<R>, BackendError>
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send,
    {
        dispatch!(self, b => b.update_or_create(id, now_ms, f).await)
    }

    async fn change_id<R, F>(
        &self,
        old: SessionId,
        now_ms: u64,
        f: F,
    ) -> Result<Option<Outcome<R>>, BackendError>
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send,
    {
        dispatch!(self, b => b.change_id(old, now_ms, f).await)
    }

    async fn write(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        changes: &[Change],
    ) -> Result<Option<Outcome<Option<StoreError>>>, BackendError> {
        dispatch!(self, b => b.write(id, now_ms, changes).await)
    }

    async fn invalidate(&self, id: SessionId, now_ms: u64) -> Result<bool, BackendError> {
        dispatch!(self, b => b.invalidate(id, now_ms).await)
    }

    async fn contains(&self, id: SessionId, now_ms: u64) -> Result<bool, BackendError> {
        dispatch!(self, b => b.contains(id, now_ms).await)
    }

    fn active(&self) -> Option<u64> {
        dispatch!(self, b => b.active())
    }
}

/// One attribute change of a request: the attribute's name and its new value, or `None`
/// for a removal.
pub type Change = (String, Option<Bytes>);

/// Whether one of `changes` stores a value (so that it would make a session).
pub fn stores_a_value(changes: &[Change]) -> bool {
    changes.iter().any(|(_, v)| v.is_some())
}

/// Applies `changes` in order; the first the limits refuse (the rest still apply).
pub fn apply_changes(s: &mut SessionMut<'_>, changes: &[Change]) -> Option<StoreError> {
    let mut refused = None;
    for (name, value) in changes {
        match value {
            Some(value) => {
                if let Err(e) = s.set(name, value.clone()) {
                    refused.get_or_insert(e);
                }
            }
            None => {
                s.remove(name);
            }
        }
    }
    refused
}

/// How often a session server's failures are logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A session server's failures: counted in full, logged at most once per [`LOG_EVERY`]
/// (with how many were not logged since).
#[derive(Debug)]
pub struct ServerHealth {
    errors: AtomicU64,
    log: Mutex<(LogThrottle<()>, u64)>,
}

impl Default for ServerHealth {
    fn default() -> ServerHealth {
        ServerHealth {
            errors: AtomicU64::new(0),
            log: Mutex::new((LogThrottle::new(LOG_EVERY), 0)),
        }
    }
}

impl ServerHealth {
    /// Failed calls since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a failed call and logs it, unless one was logged within [`LOG_EVERY`].
    pub fn failed(&self, store: &str, error: &Unavailable) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.failed_at(store, error, Instant::now());
    }

    fn failed_at(&self, store: &str, error: &Unavailable, now: Instant) -> bool {
        let mut log = self.log.lock();
        let (throttle, silenced) = &mut *log;
        if throttle.allow(&(), now) {
            let not_logged = std::mem::take(silenced);
            warn!(%store, error = %error, not_logged, "session store unavailable; requests get 503 until it answers");
            true
        } else {
            *silenced += 1;
            false
        }
    }
}

/// `fut` within `timeout`, a timeout as [`Unavailable::Timeout`].
pub(crate) async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, Unavailable>>,
) -> Result<T, Unavailable> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(Unavailable::Timeout {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_all_counted_and_logged_once_per_interval() {
        let health = ServerHealth::default();
        let e = Unavailable::Timeout { timeout_ms: 1000 };
        let t0 = Instant::now();
        health.errors.fetch_add(3, Ordering::Relaxed);
        assert!(health.failed_at("redis", &e, t0));
        assert!(!health.failed_at("redis", &e, t0 + Duration::from_secs(9)));
        assert!(!health.failed_at("redis", &e, t0 + Duration::from_secs(9)));
        assert_eq!(health.log.lock().1, 2);
        assert!(health.failed_at("redis", &e, t0 + LOG_EVERY));
        assert_eq!(
            health.log.lock().1,
            0,
            "the silenced count is reported and reset"
        );
        assert_eq!(health.errors(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_outlasts_the_timeout_is_unavailable() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Unavailable>(1)
        };
        let started = tokio::time::Instant::now();
        let got = within(Duration::from_millis(1000), slow).await;
        assert!(matches!(
            got,
            Err(Unavailable::Timeout { timeout_ms: 1000 })
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        let fast = within(Duration::from_millis(1000), async {
            Ok::<_, Unavailable>(2)
        });
        assert_eq!(fast.await.ok(), Some(2));
    }
}
