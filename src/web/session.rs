//! [`Session`]: one request's handle on its session, extracted by handlers under the
//! session layer. Reads go to the store (and see the request's own changes); changes are
//! recorded per attribute and committed, as one delta, after the handler returns.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tracing::{debug, warn};

use crate::backend::{
    Backend, BackendError, Outcome, SessionBackend, apply_changes, stores_a_value,
};
use crate::node::Shared;
use crate::node::sessions::visit::{
    Visit, backend_error, clear_cookie, plain, store_status, with_cookie,
};
use crate::session::{Detached, SessionId, SessionMut, StoreError};

/// Why a change could not be recorded or committed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    /// The value did not serialise as JSON (a map with keys that are not strings, say).
    #[error("the value of session attribute {name:?} does not serialise as JSON: {reason}")]
    Serialize {
        /// The attribute's name.
        name: String,
        /// What serde_json said (it never repeats the value).
        reason: String,
    },
    /// The store refused it: a bad name, a value over `sessions.max_value_bytes`, too many
    /// attributes, sessions or bytes on this node.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request's changes were already committed (the response has left): a change made
    /// after that, from a task the handler spawned, say, would be lost, so it is refused.
    #[error("the request's session changes were already committed")]
    Committed,
}

/// One request's session, from the session layer (see [`crate::Node::session_layer`]).
///
/// A cheap handle (clones share one request's state); its methods take `&self`. Values
/// are stored as JSON (serde), per attribute: a request records only what it changes, so
/// two concurrent requests of one session that set different attributes both keep theirs,
/// on every member. Everything a request changes (attributes, invalidation, a new id)
/// becomes one delta when the handler returns, replicated before the response leaves. A
/// request that only reads sends no delta (its access time travels batched), and one that
/// never touches its session costs nothing.
///
/// A request without a live session has none until it stores something: then the layer
/// makes one with a fresh id (never one the client sent) and sets the cookie.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Attribute values never appear in logs.
        f.debug_struct("Session")
            .field("client", &self.inner.visit.id())
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// The session the client named, and the request's one clock reading.
    visit: Visit,
    pending: Mutex<Pending>,
}

/// What the request did so far.
#[derive(Default)]
struct Pending {
    /// Attribute changes in the order first made, the latest value of each; `None` removes.
    changes: Vec<(String, Option<Bytes>)>,
    /// The client's session was found live in the store.
    seen_live: bool,
    /// With a session server: the client's session as the layer read it (reads see it).
    loaded: Option<Detached>,
    invalidated: bool,
    change_id: bool,
    /// The first change that could not be recorded: the request then commits nothing and
    /// answers with this error.
    error: Option<SessionError>,
    committed: bool,
}

impl Session {
    /// The request's session; `loaded` is the client's session as read from a session
    /// server (with the replicated store, reads go to the store itself).
    pub(crate) fn new(shared: Arc<Shared>, visit: Visit, loaded: Option<Detached>) -> Session {
        Session {
            inner: Arc::new(Inner {
                shared,
                visit,
                pending: Mutex::new(Pending {
                    loaded,
                    ..Pending::default()
                }),
            }),
        }
    }

    /// The value of attribute `name`, decoded from JSON as `T`; `None` when the session or
    /// the attribute does not exist, or its value does not decode as `T`. Sees the
    /// request's own changes.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let raw = self.get_bytes(name)?;
        match serde_json::from_slice(&raw) {
            Ok(value) => Some(value),
            Err(e) => {
                debug!(attribute = name, error = %e, "a session value does not decode as the type asked for");
                None
            }
        }
    }

    /// The stored bytes of attribute `name` (JSON when [`Session::insert`] wrote it; the
    /// node's `PUT /session/attributes/{name}` stores the request body as it came).
    pub fn get_bytes(&self, name: &str) -> Option<Bytes> {
        let mut pending = self.inner.pending.lock();
        if let Some((_, value)) = pending.changes.iter().find(|(n, _)| n == name) {
            return value.clone();
        }
        self.read(&mut pending, |s| s.get(name).cloned()).flatten()
    }

    /// Sets attribute `name` to `value` (as JSON). A value that cannot be stored (it does
    /// not serialise, or is over a limit) makes the whole request commit nothing and
    /// answer with the error (`500`, `413`, `400`); use [`Session::try_insert`] to handle
    /// it yourself.
    pub fn insert<T: Serialize + ?Sized>(&self, name: &str, value: &T) {
        if let Err(e) = self.try_insert(name, value) {
            let mut pending = self.inner.pending.lock();
            debug!(attribute = name, error = %e, "a session change was refused");
            if pending.error.is_none() && !pending.committed {
                pending.error = Some(e);
            }
        }
    }

    /// As [`Session::insert`], returning the error instead (nothing is recorded then,
    /// and the request goes on).
    pub fn try_insert<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        let bytes = serde_json::to_vec(value).map_err(|e| SessionError::Serialize {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        self.try_insert_bytes(name, Bytes::from(bytes))
    }

    /// Sets attribute `name` to these bytes as they are (no JSON).
    pub fn try_insert_bytes(&self, name: &str, value: Bytes) -> Result<(), SessionError> {
        let limits = self.inner.shared.store.limits();
        if name.is_empty() || name.len() > limits.max_name_bytes {
            return Err(StoreError::BadName {
                max: limits.max_name_bytes,
            }
            .into());
        }
        if value.len() > limits.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max: limits.max_value_bytes,
            }
            .into());
        }
        self.record(name, Some(value))
    }

    /// Removes attribute `name` (nothing happens when it has no value).
    pub fn remove(&self, name: &str) {
        if let Err(e) = self.record(name, None) {
            debug!(attribute = name, error = %e, "a session change was refused");
        }
    }

    /// Gives the session a new id when the request commits (do it at login, against
    /// session fixation): the attributes move to the new id on every member, the old id is
    /// dead everywhere, and the response carries the new cookie. Nothing happens for a
    /// request without a live session (a session it makes gets a fresh id anyway).
    pub fn change_id(&self) {
        let mut pending = self.inner.pending.lock();
        if !pending.committed && !pending.invalidated {
            pending.change_id = true;
        }
    }

    /// Ends the session on every member when the request commits, and clears the cookie.
    /// From now on the request sees no attributes; anything it stores after this goes to
    /// a new session (with a new id).
    pub fn invalidate(&self) {
        let mut pending = self.inner.pending.lock();
        if pending.committed {
            return;
        }
        pending.invalidated = true;
        pending.change_id = false;
        pending.changes.clear();
    }

    /// The id of the live session the request has, without its route; `None` when it has
    /// none yet (one made by this request, or the new id of [`Session::change_id`], is
    /// known once the response leaves: it is in its cookie).
    pub fn id(&self) -> Option<SessionId> {
        let mut pending = self.inner.pending.lock();
        self.read(&mut pending, |s| s.id())
    }

    /// When the session was made, in milliseconds since the Unix epoch; `None` without a
    /// live session.
    pub fn created_ms(&self) -> Option<u64> {
        let mut pending = self.inner.pending.lock();
        self.read(&mut pending, |s| s.created_ms())
    }

    /// When the session was last accessed (this request included), in milliseconds since
    /// the Unix epoch; `None` without a live session.
    pub fn last_accessed_ms(&self) -> Option<u64> {
        let mut pending = self.inner.pending.lock();
        self.read(&mut pending, |s| s.last_accessed_ms())
    }

    /// How long the session lives without access, in seconds; `None` without a live
    /// session.
    pub fn max_inactive_s(&self) -> Option<u32> {
        let mut pending = self.inner.pending.lock();
        self.read(&mut pending, |s| s.max_inactive_s())
    }

    /// `f` on the client's live session (touching it: its access time travels batched).
    fn read<R>(
        &self,
        pending: &mut Pending,
        f: impl FnOnce(&mut SessionMut<'_>) -> R,
    ) -> Option<R> {
        if pending.invalidated {
            return None;
        }
        let id = self.inner.visit.id()?;
        let shared = &self.inner.shared;
        let now = self.inner.visit.now_ms;
        let value = match &shared.backend {
            Backend::Replicated(r) => r.store().update(id, now, f)?.value,
            _ => {
                let loaded = pending.loaded.as_mut()?;
                loaded.edit(shared.store.limits(), now, f).0
            }
        };
        pending.seen_live = true;
        Some(value)
    }

    fn record(&self, name: &str, value: Option<Bytes>) -> Result<(), SessionError> {
        let mut pending = self.inner.pending.lock();
        if pending.committed {
            warn!(
                attribute = name,
                "a session change after the response was dropped"
            );
            return Err(SessionError::Committed);
        }
        match pending.changes.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot)) => *slot = value,
            None => pending.changes.push((name.to_string(), value)),
        }
        Ok(())
    }

    /// Commits what the request did (one delta, replicated before this returns) and
    /// decides the cookie; `response` is the handler's answer, replaced by an error answer
    /// when the store refuses the changes.
    pub(crate) async fn commit(&self, response: Response) -> Response {
        let pending = {
            let mut guard = self.inner.pending.lock();
            let taken = std::mem::take(&mut *guard);
            guard.committed = true;
            taken
        };
        if let Some(e) = pending.error {
            return error_response(&e);
        }
        let shared = &self.inner.shared;
        let visit = &self.inner.visit;
        let client = visit.id();
        if pending.invalidated {
            if let Err(e) = visit.invalidate(shared).await {
                return backend_error(&e);
            }
            if !stores_a_value(&pending.changes) {
                return with_cookie(response, clear_cookie(shared));
            }
            // What the request stored after the invalidation goes to a new session.
            return self.write(None, false, &pending.changes, response).await;
        }
        if pending.changes.is_empty() && !pending.change_id {
            // Read or untouched: no delta. A session served here that the cookie says
            // another node issued (failover) gets the cookie with this node's route.
            if pending.seen_live {
                if let Some(id) = client {
                    return with_cookie(response, visit.cookie(shared, id, false));
                }
            }
            return response;
        }
        self.write(client, pending.change_id, &pending.changes, response)
            .await
    }

    /// Applies `changes` to the session `id` (a new one when it is not live and the
    /// changes store something; with `change_id`, under a new id) through the backend
    /// (which replicates them, for the replicated store) and sets the cookie.
    async fn write(
        &self,
        id: Option<SessionId>,
        change_id: bool,
        changes: &[(String, Option<Bytes>)],
        response: Response,
    ) -> Response {
        let shared = &self.inner.shared;
        let backend = &shared.backend;
        let visit = &self.inner.visit;
        let now = visit.now_ms;
        let outcome: Result<Option<Outcome<Option<StoreError>>>, BackendError> = match id {
            Some(id) if change_id => {
                let apply = |s: &mut SessionMut<'_>| apply_changes(s, changes);
                match backend.change_id(id, now, apply).await {
                    Ok(None) if stores_a_value(changes) => {
                        backend.update_or_create(None, now, apply).await.map(Some)
                    }
                    other => other,
                }
            }
            _ => backend.write(id, now, changes).await,
        };
        let update = match outcome {
            Ok(Some(update)) => update,
            Ok(None) => return response,
            Err(e) => return backend_error(&e),
        };
        let done = visit.finish(shared, update);
        let response = match done.value {
            Some(e) => error_response(&SessionError::Store(e)),
            None => response,
        };
        with_cookie(response, done.cookie)
    }
}

/// The answer for a change the session could not take, as the node's endpoints answer.
fn error_response(e: &SessionError) -> Response {
    let status = match e {
        SessionError::Store(e) => store_status(e),
        SessionError::Serialize { .. } | SessionError::Committed => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    plain(status, &e.to_string())
}

/// The rejection of the [`Session`] extractor on a route the session layer does not wrap:
/// a `500`, since that is a mistake in the app.
#[derive(Debug, Clone, Copy, Error)]
#[error("no session here: the route is not under node.session_layer()")]
pub struct MissingSessionLayer;

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        plain(StatusCode::INTERNAL_SERVER_ERROR, &self.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Session, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}
