//! The library's face for applications: [`Node`], a cluster node started inside the
//! application's own tokio runtime, and (feature `axum`, on by default) the session layer
//! and the [`Session`] extractor that give an axum (or any tower) app sessions replicated
//! to every member.
//!
//! The layer finds the request's session from its cookie exactly as the node's own
//! endpoints do, hands the handler a [`Session`], and after the handler returns turns
//! everything the request changed into one delta, replicated (in sync mode acknowledged by
//! every live member) before the response leaves.
//!
//! With the `tower-sessions` feature, [`tower_store`] holds a store for apps on
//! tower-sessions instead.

mod node;
#[cfg(feature = "tower-sessions")]
pub mod tower_store;

#[cfg(feature = "axum")]
mod layer;
#[cfg(feature = "axum")]
mod session;

pub use node::{Node, NodeBuilder};

#[cfg(feature = "axum")]
pub use layer::{SessionLayer, SessionService};
#[cfg(feature = "axum")]
pub use session::{MissingSessionLayer, Session, SessionError};

#[cfg(feature = "axum")]
impl Node {
    /// The tower layer that gives the routes under it a [`Session`]:
    /// `Router::new().route(..).layer(node.session_layer())`.
    pub fn session_layer(&self) -> SessionLayer {
        SessionLayer::new(self.shared().clone())
    }
}
