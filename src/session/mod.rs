//! The session store, as a library: sessions with attributes, versions and expiry, and the
//! deltas that replicate them. It knows nothing of sockets or HTTP; the node's HTTP layer
//! is one user of it, and a Rust web application can use it directly.
//!
//! ```
//! use bytes::Bytes;
//! use deltacast::membership::NodeId;
//! use deltacast::session::{Limits, SessionStore};
//!
//! let a = SessionStore::new(NodeId::from_u64(1), Limits::default(), 1800);
//! let b = SessionStore::new(NodeId::from_u64(2), Limits::default(), 1800);
//! // A request on node a: make a session and set an attribute; one delta says it all.
//! let done = a
//!     .update_or_create(None, 1_000, |s| s.set("user", Bytes::from_static(b"ada")))
//!     .expect("within limits");
//! // Replicate it: node b now serves the same session.
//! b.apply(done.delta.as_ref().expect("a change"), 1_001);
//! let user = b.update(done.id, 1_002, |s| s.get("user").cloned()).expect("live on b");
//! assert_eq!(user.value, Some(Bytes::from_static(b"ada")));
//! ```

mod delta;
pub mod id;
mod store;

/// The node that wrote a change ([`Version::node`]) or holds a store.
pub use crate::membership::NodeId;
pub use delta::{AttributeChange, Delta, Version};
pub use id::SessionId;
pub use store::{
    Applied, Detached, EXPIRY_SLACK_MS, Limits, SessionMut, SessionStore, StoreError, SweepStats,
    TOMBSTONE_TTL_MS, Update,
};

#[cfg(test)]
mod tests;
