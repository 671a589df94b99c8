//! The replicated store (`sessions.store = "replicated"`): the node's [`SessionStore`] plus
//! the [`Replicator`]. Each call is one store call (its closure under the session's shard
//! lock) and, when it changed the session, that one delta replicated before the call
//! returns (in sync mode, acknowledged by every live member): exactly the path the
//! handlers took before the seam, with nothing added but a `match`.

use crate::replication::Replicator;
use crate::session::{Delta, SessionId, SessionMut, SessionStore, Update};

use super::{BackendError, Outcome, SessionBackend};

/// Every member holds every session; changes travel as deltas.
#[derive(Clone)]
pub struct Replicated {
    store: SessionStore,
    replicator: Replicator,
}

impl std::fmt::Debug for Replicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicated")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Replicated {
    /// The backend over a node's store and its replicator.
    pub fn new(store: SessionStore, replicator: Replicator) -> Replicated {
        Replicated { store, replicator }
    }

    /// The node's sessions.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    async fn replicate(&self, delta: Option<Delta>) {
        if let Some(delta) = delta {
            self.replicator.replicate(delta).await;
        }
    }

    async fn finish<R>(&self, update: Update<R>) -> Outcome<R> {
        self.replicate(update.delta).await;
        Outcome {
            id: update.id,
            created: update.created,
            value: update.value,
        }
    }
}

impl SessionBackend for Replicated {
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
        match self.store.update(id, now_ms, f) {
            Some(update) => Ok(Some(self.finish(update).await)),
            None => Ok(None),
        }
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
        let update = self.store.update_or_create(id, now_ms, f)?;
        Ok(self.finish(update).await)
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
        match self.store.change_id(old, now_ms, f) {
            Some(update) => Ok(Some(self.finish(update).await)),
            None => Ok(None),
        }
    }

    async fn invalidate(&self, id: SessionId, now_ms: u64) -> Result<bool, BackendError> {
        let delta = self.store.invalidate(id, now_ms);
        let ended = delta.is_some();
        self.replicate(delta).await;
        Ok(ended)
    }

    async fn contains(&self, id: SessionId, _now_ms: u64) -> Result<bool, BackendError> {
        Ok(self.store.contains(id))
    }

    fn active(&self) -> Option<u64> {
        Some(self.store.len() as u64)
    }
}
