//! [`Node`]: a cluster node started inside the caller's tokio runtime, the handle an
//! application keeps for as long as it runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::status::StatusDoc;
use crate::node::{self, Addresses, NodeError, RunningNode, Serving, Shared};
use crate::session::SessionStore;
use crate::shutdown::Shutdown;

/// A deltacast node running in this process: it found the cluster by heartbeats (or its
/// static members), took every session from a member (state transfer), serves the
/// replication port, and replicates every change a request makes to the members.
///
/// Its HTTP listener (`node.http`) is the address the heartbeats announce, so it is where
/// `deltacast balancer` sends clients: an application serves itself there with
/// [`Node::serve`], beside the node's `GET /status` and `GET /metrics` (the same documents
/// as `deltacast node` serves, so `deltacast status URL` works on every instance). Until
/// [`Node::serve`] is called, requests other than those two wait (at most ten seconds,
/// then `503`).
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = deltacast::Config::load(None, &[])?; // ./cluster.toml or the defaults
/// let node = deltacast::Node::start(config).await?; // joined, sessions taken
/// let app: Router = Router::new().route("/", get(|| async { "hello" }));
/// # #[cfg(feature = "axum")]
/// let app = app.layer(node.session_layer());
/// node.serve(app);
/// tokio::signal::ctrl_c().await?;
/// node.shutdown().await; // leaves the cluster, finishes requests and replication
/// # Ok(())
/// # }
/// ```
#[must_use = "a node stops in order (leave announced, replication flushed) only in `shutdown` or `stopped`"]
pub struct Node {
    running: RunningNode,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.running.shared().me.name)
            .field("addresses", &self.running.addresses())
            .finish()
    }
}

impl Node {
    /// Binds what `config` says (`node.http`, `node.replication`, the multicast group),
    /// starts membership and replication, and returns once the node has taken the
    /// cluster's sessions (or found no member to take them from). Spawns its tasks on the
    /// caller's tokio runtime.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        Node::builder(config).start().await
    }

    /// A node with more choices than [`Node::start`]: listeners bound by the caller (port
    /// 0 in tests), the node's own endpoints, a shutdown shared with other parts.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            http: None,
            replication: None,
            shutdown: None,
            serving: Serving::App,
        }
    }

    /// Serves `app` on the node's HTTP listener from now on (replacing the app served
    /// before, if any). `GET /status` and `GET /metrics` stay the node's; every other
    /// request goes to `app`, through the node's HTTP protections (header limits and
    /// timeouts, the connection limit, `Host` required) and its graceful drain on shutdown.
    pub fn serve(&self, app: axum::Router) {
        self.running.serve_app(app);
    }

    /// The node's own endpoints (the test page and the session API of `deltacast node`),
    /// as a router to serve with [`Node::serve`] or to merge into an app.
    pub fn endpoints(&self) -> axum::Router {
        self.running.http_service()
    }

    /// Where the node listens, as it announces itself to the cluster.
    pub fn addresses(&self) -> Addresses {
        self.running.addresses()
    }

    /// The node's name, which is also the route suffix of the session ids it issues.
    pub fn name(&self) -> &str {
        &self.running.shared().me.name
    }

    /// The `/status` document: the node, its members, sessions and replication counters
    /// (the same value `GET /status` serialises).
    pub fn status(&self) -> StatusDoc {
        self.running.status()
    }

    /// The node's sessions, to read them outside of a request (an admin page, a test).
    /// Changes made through it are this node's only: they are not replicated. Change
    /// sessions in requests, through the session layer.
    pub fn store(&self) -> &SessionStore {
        &self.running.shared().store
    }

    /// Waits (at most `limit`) until the node serves sessions; false on timeout. A node
    /// from [`Node::start`] already does; one from [`NodeBuilder::launch`] may not yet.
    pub async fn ready(&self, limit: Duration) -> bool {
        self.running.ready(limit).await
    }

    /// The shutdown this node stops on: trigger it (from a signal handler, say) and
    /// [`Node::stopped`] returns once the node has left.
    pub fn shutdown_handle(&self) -> &Shutdown {
        self.running.shutdown_handle()
    }

    /// Leaves the cluster gracefully: requests in flight finish (their replication
    /// included), queued deltas reach the members, the leave is announced, then every
    /// socket closes.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }

    /// Waits until the node's shutdown is triggered (see [`Node::shutdown_handle`]), then
    /// stops as [`Node::shutdown`] does.
    pub async fn stopped(self) {
        self.running.stopped().await;
    }

    /// What the session layer and the HTTP handlers share.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.running.shared()
    }
}

/// Starts a [`Node`] with the choices [`Node::start`] does not offer; see
/// [`Node::builder`].
#[must_use = "a builder does nothing until `start` or `launch`"]
pub struct NodeBuilder {
    config: Config,
    http: Option<TcpListener>,
    replication: Option<TcpListener>,
    shutdown: Option<Shutdown>,
    serving: Serving,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("name", &self.config.node.name)
            .field(
                "http",
                &self.http.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field(
                "replication",
                &self.replication.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field("serving", &self.serving)
            .finish()
    }
}

impl NodeBuilder {
    /// Serves HTTP on this listener instead of binding `node.http`; its address is
    /// announced (a wildcard one as `membership.interface`).
    pub fn http_listener(mut self, listener: TcpListener) -> NodeBuilder {
        self.http = Some(listener);
        self
    }

    /// Serves replication on this listener instead of binding `node.replication`. With
    /// static members the heartbeats use the UDP port of the same number, which must be
    /// free.
    pub fn replication_listener(mut self, listener: TcpListener) -> NodeBuilder {
        self.replication = Some(listener);
        self
    }

    /// Stops the node when `shutdown` is triggered (see [`Node::stopped`]); its tasks are
    /// spawned through it. Without one, the node has a shutdown of its own.
    pub fn shutdown(mut self, shutdown: Shutdown) -> NodeBuilder {
        self.shutdown = Some(shutdown);
        self
    }

    /// Serves the node's own endpoints (the test page and the session API, as
    /// `deltacast node` does) from the start, until [`Node::serve`] replaces them.
    pub fn node_endpoints(mut self) -> NodeBuilder {
        self.serving = Serving::Endpoints;
        self
    }

    /// Starts the node and returns once it has taken the cluster's sessions (or its
    /// shutdown was triggered meanwhile).
    pub async fn start(self) -> Result<Node, NodeError> {
        let node = self.launch().await?;
        node.running.joined().await;
        Ok(node)
    }

    /// Starts the node and returns as soon as its sockets are bound and its tasks run;
    /// it joins in the background (see [`Node::ready`]), its HTTP already answering.
    pub async fn launch(self) -> Result<Node, NodeError> {
        let running = node::start_serving(
            self.config,
            self.http,
            self.replication,
            self.shutdown.unwrap_or_default(),
            self.serving,
        )
        .await?;
        Ok(Node { running })
    }
}
