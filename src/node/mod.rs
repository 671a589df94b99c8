//! Composition root of every node (`deltacast node` and the library's `Node`): binds the
//! sockets, starts membership, the replication port and HTTP, and takes them down in order
//! on shutdown.

pub mod http;
mod serve;
pub mod sessions;
pub mod snapshot;
pub mod status;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{Backend, MemcachedBackend, RedisBackend, Replicated};
use crate::config::{Config, ConfigError, SessionStoreUrl};
use crate::heartbeat::{self, HeartbeatConfig, Peers};
use crate::membership::{MemberInfo, MembershipView, NodeId};
use crate::metrics::Metrics;
use crate::replication::transfer::{self, Transfer};
use crate::replication::{self, InboundConfig, ReplicationConfig, Replicator};
use crate::serve::limit::ConnectionLimit;
use crate::session::{Limits, SessionStore};
use crate::shutdown::Shutdown;
use crate::transport::{self, Datagrams, Listener, Streams, UdpDatagrams};
use crate::wire::seal::ClusterKey;

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster key file (`cluster.key_file`) could not be read.
    #[error(transparent)]
    Key(#[from] crate::wire::key_file::KeyFileError),
    /// The replication address is loopback while static members live on other hosts.
    #[error(
        "node.replication: {addr} is announced to static members on other hosts, which cannot reach it; use this host's address (or set membership.interface when binding 0.0.0.0)"
    )]
    Unreachable {
        /// The address the node would announce.
        addr: SocketAddr,
    },
    /// The snapshot file (`sessions.snapshot_file`) could not be written where it is asked
    /// for: checked at start, so that the sessions are not lost at the stop.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotFileError),
    /// The session server of `sessions.store` cannot be used as configured.
    #[error(transparent)]
    Redis(#[from] crate::backend::redis::RedisSetupError),
    /// The memcached servers of `sessions.store` cannot be used as configured.
    #[error(transparent)]
    Memcached(#[from] crate::backend::memcached::MemcachedSetupError),
    /// `sessions.store` names a session server this build cannot use.
    #[error("{0}")]
    Store(String),
    /// A socket could not be bound (or a given listener could not be used).
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        /// Which socket: `http`, `replication`, `multicast`, `unicast heartbeat`.
        what: &'static str,
        /// The address asked for.
        addr: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// The node's own lifecycle state, as `/status` shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Taking the cluster's sessions from a member (state transfer); sessions wait.
    Joining,
    /// Serving sessions.
    Ready,
    /// Shutting down: finishing requests, then announcing the leave.
    Leaving,
}

impl NodeState {
    /// The name `/status` uses: `joining`, `ready` or `leaving`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Ready => "ready",
            NodeState::Leaving => "leaving",
        }
    }
}

/// What the HTTP handlers read.
pub struct Shared {
    pub me: MemberInfo,
    pub cluster: String,
    pub started: Instant,
    pub metrics: Arc<Metrics>,
    pub view: watch::Receiver<MembershipView>,
    /// The node's own sessions (empty when a session server holds them).
    pub store: SessionStore,
    pub replicator: Replicator,
    /// Where the sessions live: every request finds and changes its session through it.
    pub backend: Backend,
    /// Name of the session cookie (sessions.cookie).
    pub cookie: String,
    /// Whether a `;jsessionid=` path parameter may name the session (sessions.url_tracking).
    pub url_tracking: bool,
    /// Where the AJP connector listens (`ajp.listen`, the bound port), if it is on.
    pub ajp: Option<SocketAddr>,
    state: watch::Sender<NodeState>,
}

impl Shared {
    pub fn state(&self) -> NodeState {
        *self.state.borrow()
    }

    fn set_state(&self, state: NodeState) {
        self.state.send_replace(state);
    }

    /// Waits (at most `limit`) until the node is no longer joining; false on timeout.
    pub async fn wait_until_ready(&self, limit: Duration) -> bool {
        let mut state = self.state.subscribe();
        tokio::time::timeout(limit, state.wait_for(|s| *s != NodeState::Joining))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

pub use crate::clock::now_ms;

/// How long shutdown waits for tasks to finish before giving up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long queued deltas get to reach the members before the leave.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How often the names of `membership.static_members` and `membership.dns` are resolved
/// again: a pod that starts is found within this (plus a heartbeat).
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// The sockets a node serves on, bound before it starts, so that a caller that binds port 0
/// learns the port it got instead of handing a number to someone who binds it later, and
/// how it opens connections. [`Sockets::bind`] binds what the config says over the
/// operating system's network; a test binds its own, or takes them from an in-memory
/// [`transport::mem::Network`] to run several nodes in one process.
pub struct Sockets<D = UdpDatagrams> {
    pub http: TcpListener,
    pub replication: Listener,
    /// Heartbeats: the multicast group's socket, or with static members a socket on the
    /// replication port's number.
    pub heartbeats: D,
    /// How replication links, state transfers and verifications reach the members.
    pub streams: Streams,
}

/// How often a node asked for port 0 tries another replication port when the UDP port of
/// the same number (static members' heartbeats) is taken.
const DUAL_PORT_TRIES: usize = 16;

impl Sockets<UdpDatagrams> {
    /// Binds `node.http`, `node.replication` and the heartbeat socket: the multicast group,
    /// or with static members the UDP port of the replication port's number. Port 0 is a
    /// free port the kernel picks.
    pub async fn bind(config: &Config) -> Result<Sockets, NodeError> {
        Sockets::bind_with(config, None, None).await
    }

    /// As [`Sockets::bind`], taking the HTTP and replication listeners the caller bound
    /// where it gives them (the rest is bound as the config says). With static members the
    /// heartbeat socket takes the UDP port of the replication listener's number.
    pub async fn bind_with(
        config: &Config,
        http: Option<TcpListener>,
        replication: Option<TcpListener>,
    ) -> Result<Sockets, NodeError> {
        let membership = &config.membership;
        let wanted = config.node.replication;
        let (replication, heartbeats) = if let Some(listener) = replication {
            let local = listener.local_addr().map_err(|source| NodeError::Bind {
                what: "replication",
                addr: "the given listener".to_string(),
                source,
            })?;
            let heartbeats = if !membership.unicast() {
                bind_multicast(config)?
            } else {
                UdpDatagrams::unicast(local).map_err(|source| NodeError::Bind {
                    what: "unicast heartbeat",
                    addr: local.to_string(),
                    source,
                })?
            };
            (listener, heartbeats)
        } else if !membership.unicast() {
            let replication = bind_tcp("replication", wanted).await?;
            (replication, bind_multicast(config)?)
        } else {
            let mut tries = 0;
            loop {
                let listener = bind_tcp("replication", wanted).await?;
                let port = listener.local_addr().map_or(wanted.port(), |a| a.port());
                let local = SocketAddr::new(wanted.ip(), port);
                match UdpDatagrams::unicast(local) {
                    Ok(datagrams) => break (listener, datagrams),
                    // The kernel picked a TCP port whose UDP twin is taken: pick again.
                    Err(e)
                        if wanted.port() == 0
                            && e.kind() == std::io::ErrorKind::AddrInUse
                            && tries < DUAL_PORT_TRIES =>
                    {
                        tries += 1;
                    }
                    Err(source) => {
                        return Err(NodeError::Bind {
                            what: "unicast heartbeat",
                            addr: local.to_string(),
                            source,
                        });
                    }
                }
            }
        };
        let http = match http {
            Some(listener) => listener,
            None => bind_tcp("http", config.node.http).await?,
        };
        Ok(Sockets {
            http,
            replication: replication.into(),
            heartbeats,
            streams: Streams::Tcp,
        })
    }
}

/// The multicast group's socket of `membership.multicast`.
fn bind_multicast(config: &Config) -> Result<UdpDatagrams, NodeError> {
    let m = &config.membership;
    UdpDatagrams::multicast(m.multicast, m.interface, m.ttl).map_err(|source| NodeError::Bind {
        what: "multicast",
        addr: format!("{} on interface {}", m.multicast, m.interface),
        source,
    })
}

/// Where a started node can be reached, as it announces itself to the cluster (a wildcard
/// bind is announced as the membership interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The HTTP address (`node.http`): the node's endpoints, or the app it serves; the
    /// heartbeats announce it, so `deltacast balancer` proxies to it.
    pub http: SocketAddr,
    /// The replication port (`node.replication`).
    pub replication: SocketAddr,
    /// The AJP/1.3 connector (`ajp.listen`, the bound port), when it is on.
    pub ajp: Option<SocketAddr>,
}

/// A node that runs: its addresses, what its HTTP serves, and the orderly stop that
/// [`RunningNode::stopped`] performs once its shutdown is triggered.
#[must_use = "a node stops in order (leave announced, replication flushed) only in `stopped`"]
pub struct RunningNode {
    addresses: Addresses,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    /// What the HTTP listener serves besides `/status` and `/metrics`.
    app: watch::Sender<Option<Router>>,
    stop: Stopping,
}

/// What the orderly stop needs.
struct Stopping {
    http_stop: CancellationToken,
    http_task: tokio::task::JoinHandle<()>,
    ajp_task: Option<tokio::task::JoinHandle<()>>,
    membership_stop: CancellationToken,
    membership_task: tokio::task::JoinHandle<()>,
    cluster_stop: CancellationToken,
    /// `sessions.snapshot_file`, written once every part has stopped.
    snapshot_file: Option<PathBuf>,
}

impl RunningNode {
    /// Where the node listens, as it announces itself.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// What the HTTP handlers read: the store, the replicator, the membership view.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The node's HTTP endpoints as a service of their own, for callers in this process
    /// (a test drives them without a socket).
    pub fn http_service(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// The `/status` document, as `GET /status` serves it.
    pub fn status(&self) -> status::StatusDoc {
        http::status_doc(&self.shared)
    }

    /// Serves `app` on the HTTP listener from now on, in place of what it served before;
    /// `/status` and `/metrics` stay the node's. Requests that arrived before any app was
    /// given wait for one (at most [`APP_WAIT`]).
    pub fn serve_app(&self, app: Router) {
        self.app.send_replace(Some(app));
    }

    /// Waits (at most `limit`) until the node has taken the cluster's sessions and serves
    /// them; false on timeout.
    pub async fn ready(&self, limit: Duration) -> bool {
        self.shared.wait_until_ready(limit).await
    }

    /// Waits until the node has taken the cluster's sessions, or its shutdown was
    /// triggered meanwhile (then the join is abandoned).
    pub async fn joined(&self) {
        let mut state = self.shared.state.subscribe();
        tokio::select! {
            _ = state.wait_for(|s| *s != NodeState::Joining) => {}
            () = self.shutdown.triggered() => {}
        }
    }

    /// The shutdown that stops this node.
    pub fn shutdown_handle(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Triggers the node's shutdown and waits until it has stopped.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        self.stopped().await;
    }

    /// Waits until the node's shutdown is triggered, then stops in order: HTTP first
    /// (requests in flight finish, their replication included), then the links drain,
    /// membership announces the leave, and only then the links and the replication port
    /// close.
    pub async fn stopped(self) {
        let RunningNode {
            shared,
            shutdown,
            stop,
            // Kept until the HTTP has drained: requests waiting for an app get one.
            app: _app,
            ..
        } = self;
        shutdown.triggered().await;
        shared.set_state(NodeState::Leaving);
        info!(name = %shared.me.name, "shutting down");
        stop.http_stop.cancel();
        if tokio::time::timeout(DRAIN_GRACE, stop.http_task)
            .await
            .is_err()
        {
            warn!("requests still running after {DRAIN_GRACE:?}; closing them");
        }
        if let Some(ajp) = stop.ajp_task {
            if tokio::time::timeout(DRAIN_GRACE, ajp).await.is_err() {
                warn!("AJP requests still running after {DRAIN_GRACE:?}; closing them");
            }
        }
        shared.replicator.flush(FLUSH_GRACE).await;
        // The leave must be announced before the links close, or members would see the
        // links break and drop us as dead instead.
        stop.membership_stop.cancel();
        if tokio::time::timeout(DRAIN_GRACE, stop.membership_task)
            .await
            .is_err()
        {
            warn!("the leave announcement did not finish within {DRAIN_GRACE:?}");
        }
        stop.cluster_stop.cancel();
        if !shutdown.drain(DRAIN_GRACE).await {
            warn!("some tasks did not finish within {DRAIN_GRACE:?}; closing them");
        }
        if let Some(path) = stop.snapshot_file {
            write_snapshot(&shared, path).await;
        }
        info!(name = %shared.me.name, "stopped");
    }
}

/// What a node's HTTP listener serves besides `/status` and `/metrics` when it starts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// The node's own endpoints (SPEC "Node HTTP endpoints"), as `deltacast node` does.
    Endpoints,
    /// Nothing yet: an app comes with [`RunningNode::serve_app`], and requests wait for it.
    App,
}

/// How long a request waits for the app of a node started with [`Serving::App`].
pub const APP_WAIT: Duration = Duration::from_secs(10);

/// Binds what the config says and starts the node serving its own endpoints; see
/// [`start_with`].
pub async fn start(config: Config, shutdown: Shutdown) -> Result<RunningNode, NodeError> {
    // A bad key file is the error, before any address is bound.
    let key = read_key(&config)?;
    let sockets = Sockets::bind(&config).await?;
    launch(config, key, sockets, shutdown, Serving::Endpoints).await
}

/// Starts a node on `sockets`, serving its own endpoints: membership, the replication
/// port and HTTP run on tasks of `shutdown` when this returns; the node joins (takes the
/// sessions of a member) in the background and serves sessions once it has.
pub async fn start_with<D: Datagrams>(
    config: Config,
    sockets: Sockets<D>,
    shutdown: Shutdown,
) -> Result<RunningNode, NodeError> {
    let key = read_key(&config)?;
    launch(config, key, sockets, shutdown, Serving::Endpoints).await
}

/// As [`start_with`], binding the listeners not given as the config says, and serving
/// what `serving` says: the one way every node starts (the library's `Node` and
/// `deltacast node` included).
pub async fn start_serving(
    config: Config,
    http: Option<TcpListener>,
    replication: Option<TcpListener>,
    shutdown: Shutdown,
    serving: Serving,
) -> Result<RunningNode, NodeError> {
    let key = read_key(&config)?;
    let sockets = Sockets::bind_with(&config, http, replication).await?;
    launch(config, key, sockets, shutdown, serving).await
}

/// What the HTTP listener serves: the node's `/status` and `/metrics`, and everything else
/// handed to the app of the moment (waiting for one, at most [`APP_WAIT`]).
fn http_router(shared: &Arc<Shared>, app: watch::Receiver<Option<Router>>) -> Router {
    Router::new().fallback(dispatch).with_state(Dispatch {
        endpoints: http::router(shared.clone()),
        app,
    })
}

#[derive(Clone)]
struct Dispatch {
    endpoints: Router,
    app: watch::Receiver<Option<Router>>,
}

async fn dispatch(
    axum::extract::State(to): axum::extract::State<Dispatch>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use tower::ServiceExt as _;
    let path = request.uri().path();
    let router = if path == "/status" || path == "/metrics" {
        to.endpoints
    } else {
        let current = to.app.borrow().clone();
        match current {
            Some(router) => router,
            None => {
                let mut app = to.app;
                let waited = tokio::time::timeout(APP_WAIT, app.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(|r| r.ok().and_then(|router| router.clone()));
                match waited {
                    Some(router) => router,
                    None => {
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [(axum::http::header::RETRY_AFTER, "1")],
                            "this node does not serve its application yet; try again shortly\n",
                        )
                            .into_response();
                    }
                }
            }
        }
    };
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn launch<D: Datagrams>(
    config: Config,
    key: Option<ClusterKey>,
    sockets: Sockets<D>,
    shutdown: Shutdown,
    serving: Serving,
) -> Result<RunningNode, NodeError> {
    let open_files = crate::limits::raise_open_files_logged();
    let membership = &config.membership;
    let Sockets {
        http: http_listener,
        replication: replication_listener,
        heartbeats: datagrams,
        streams,
    } = sockets;
    let bound = |listener: std::io::Result<SocketAddr>| {
        // A bound listener always has a local address; the fallback is never used.
        listener.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    };
    let replication_addr = advertised(
        bound(replication_listener.local_addr()),
        membership.interface.into(),
    );
    let http_addr = advertised(
        bound(http_listener.local_addr()),
        membership.interface.into(),
    );

    let mut discovery = transport::Discovery::new(&membership.static_members, &membership.dns);
    let (peers, resolver) = if discovery.is_empty() {
        (Peers::Group, None)
    } else {
        transport::resolve_round(
            &mut discovery,
            &transport::SystemResolver,
            Duration::from_secs(5),
        )
        .await;
        let resolved = discovery.peers();
        if replication_addr.ip().is_loopback() && resolved.iter().any(|p| !p.ip().is_loopback()) {
            return Err(NodeError::Unreachable {
                addr: replication_addr,
            });
        }
        let (tx, rx) = watch::channel(resolved);
        (Peers::Static(rx), Some((discovery, tx)))
    };
    let heartbeat_mode = if resolver.is_none() {
        "multicast"
    } else {
        "unicast"
    };
    let beyond_loopback = !config.node.replication.ip().is_loopback()
        || (resolver.is_none() && !membership.interface.is_loopback());
    if key.is_some() {
        info!("cluster traffic is sealed with the key of cluster.key_file");
    } else if beyond_loopback {
        warn!(
            replication = %replication_addr,
            interface = %membership.interface,
            "cluster traffic leaves this host unauthenticated and in clear: anyone on the network can read sessions and join; set cluster.key_file (see `deltacast keygen`)"
        );
    }

    let ajp_listener = match config.ajp.listen {
        Some(addr) => Some(bind_tcp("ajp", addr).await?),
        None => None,
    };
    let ajp_addr = ajp_listener
        .as_ref()
        .map(|l| advertised(bound(l.local_addr()), membership.interface.into()));
    if let Some(listen) = config.ajp.listen.filter(|a| !a.ip().is_loopback()) {
        warn!(
            ajp = %listen,
            "the AJP connector listens beyond loopback: AJP is not encrypted, and whoever reaches it with the secret speaks for the front end; firewall it to the front end's hosts"
        );
    }
    let me = MemberInfo {
        id: NodeId::random(),
        name: config.node.name.clone(),
        http: http_addr,
        replication: replication_addr,
        incarnation: now_ms(),
    };
    let metrics = Arc::new(Metrics::default());
    let max_inactive = u32::try_from(config.sessions.max_inactive_s).unwrap_or(u32::MAX);
    let (view_tx, view_rx) = watch::channel(MembershipView::empty());
    let store = SessionStore::new(me.id, limits(&config), max_inactive);
    let snapshot_file = config.sessions.snapshot_file.clone();
    if let Some(path) = &snapshot_file {
        snapshot::check_writable(path)?;
        restore_snapshot(path, &store, &config.cluster.name, max_inactive).await;
    }
    let (suspicions_tx, suspicions_rx) = mpsc::channel(256);
    let mut replication_cfg = ReplicationConfig::new(
        config.cluster.name.clone(),
        me.id,
        config.sessions.replication,
        Duration::from_millis(config.sessions.ack_timeout_ms),
    );
    replication_cfg.key = key.clone();
    replication_cfg.streams = streams.clone();
    let replicator = Replicator::new(
        replication_cfg,
        store.clone(),
        metrics.clone(),
        suspicions_tx,
    );
    let shared = Arc::new(Shared {
        me: me.clone(),
        cluster: config.cluster.name.clone(),
        started: Instant::now(),
        metrics: metrics.clone(),
        view: view_rx.clone(),
        backend: backend(&config, &store, &replicator)?,
        store,
        replicator: replicator.clone(),
        cookie: config.sessions.cookie.clone(),
        url_tracking: config.sessions.url_tracking,
        ajp: ajp_addr,
        state: watch::channel(NodeState::Joining).0,
    });
    info!(
        id = %me.id,
        name = %me.name,
        cluster = %config.cluster.name,
        http = %http_addr,
        replication = %replication_addr,
        heartbeats = heartbeat_mode,
        open_files,
        "node started"
    );

    // Each part stops on a token of its own, in the order of `RunningNode::stopped`.
    let cluster_stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    if let Some((discovery, tx)) = resolver {
        shutdown.spawn(transport::keep_discovering(
            discovery,
            transport::SystemResolver,
            RESOLVE_EVERY,
            tx,
            cluster_stop.clone(),
        ));
    }
    let mut hb_cfg = HeartbeatConfig::new(
        config.cluster.name.clone(),
        me.clone(),
        config.heartbeat(),
        config.drop_after(),
    );
    hb_cfg.key = key.clone();
    hb_cfg.streams = streams.clone();
    hb_cfg.serving = Some(replicator.ready_flag());
    let membership_stop = CancellationToken::new();
    let membership_task = shutdown.spawn(heartbeat::run(
        hb_cfg,
        datagrams,
        peers,
        metrics.clone(),
        view_tx,
        suspicions_rx,
        membership_stop.clone(),
    ));
    let mut inbound_cfg = InboundConfig::new(
        config.cluster.name.clone(),
        me.id,
        shared.store.clone(),
        replicator.ready_flag(),
    );
    inbound_cfg.key = key.clone();
    shutdown.spawn(replication::serve(
        replication_listener,
        inbound_cfg,
        metrics.clone(),
        cluster_stop.clone(),
    ));
    shutdown.spawn(
        replicator
            .clone()
            .run(view_rx.clone(), cluster_stop.clone()),
    );
    let limit = Arc::new(ConnectionLimit::new(node_max_connections(
        &config, open_files,
    )));
    let initial = match serving {
        Serving::Endpoints => Some(http::router(shared.clone())),
        Serving::App => None,
    };
    let (app, app_rx) = watch::channel(initial);
    let router = http_router(&shared, app_rx);
    let ajp_task = ajp_listener.map(|listener| {
        let settings = crate::ajp::server::AjpSettings {
            secret: config.ajp.secret.clone(),
            packet_size: usize::try_from(config.ajp.packet_size).unwrap_or(usize::MAX),
        };
        info!(ajp = ?ajp_addr, packet_size = settings.packet_size, secret = settings.secret.is_some(), "AJP connector started");
        shutdown.spawn(crate::ajp::server::serve(
            listener,
            router.clone(),
            settings,
            metrics.clone(),
            limit.clone(),
            http_stop.clone(),
        ))
    });
    let http_task = shutdown.spawn(serve::serve(
        http_listener,
        router,
        limit,
        http_stop.clone(),
    ));
    // Join: take every session from a member before serving sessions. With a session
    // server there is nothing to take: the node serves at once.
    let joining = shared.clone();
    let wait_for_members = config.heartbeat() * 2;
    if shared.backend.is_session_server() {
        joining.set_state(NodeState::Ready);
        joining.replicator.set_ready();
    } else {
        shutdown.spawn(async move {
        let outcome = tokio::select! {
            _ = joining_stop(&joining) => return,
            outcome = transfer::run(&streams, &joining.cluster, key.as_ref(), joining.me.id, &joining.store, view_rx, wait_for_members) => outcome,
        };
        if outcome == Transfer::Failed {
            warn!("no member could send its sessions; serving what arrives, anti-entropy fills in");
        }
        joining.set_state(NodeState::Ready);
        joining.replicator.set_ready();
        });
    }

    Ok(RunningNode {
        addresses: Addresses {
            http: http_addr,
            replication: replication_addr,
            ajp: ajp_addr,
        },
        shared,
        shutdown,
        app,
        stop: Stopping {
            http_stop,
            http_task,
            ajp_task,
            membership_stop,
            membership_task,
            cluster_stop,
            snapshot_file,
        },
    })
}

/// Merges the snapshot file into `store` (before the node takes any delta or serves) and
/// says in one line what came of it.
async fn restore_snapshot(path: &Path, store: &SessionStore, cluster: &str, max_inactive: u32) {
    let (file, into, cluster_name) = (path.to_path_buf(), store.clone(), cluster.to_string());
    let outcome = tokio::task::spawn_blocking(move || {
        snapshot::restore(&file, &into, &cluster_name, now_ms(), max_inactive)
    })
    .await;
    let path = path.display();
    match outcome {
        Ok(snapshot::Restore::NoFile) => {
            info!(%path, "no snapshot file to restore; starting with no sessions of its own");
        }
        Ok(snapshot::Restore::Restored {
            sessions,
            expired,
            tombstones,
            written_by,
            age_ms,
            took_ms,
            not_removed,
        }) => match not_removed {
            None => info!(
                %path, sessions, expired, tombstones, written_by = %written_by, age_ms, took_ms,
                "sessions restored from the snapshot file; the file is removed"
            ),
            Some(error) => warn!(
                %path, sessions, expired, tombstones, written_by = %written_by, age_ms, took_ms, %error,
                "sessions restored from the snapshot file, which could not be removed: a later start after a crash would restore them again"
            ),
        },
        Ok(snapshot::Restore::Damaged { error, moved_to }) => warn!(
            %path, %error, moved_to = %moved_to.as_deref().map_or_else(|| "(not moved)".into(), |p| p.display().to_string()),
            "snapshot file is damaged and ignored; starting with no sessions of its own"
        ),
        Ok(snapshot::Restore::ForeignCluster { cluster: other }) => warn!(
            %path, cluster = %other,
            "snapshot file is of another cluster and ignored (left in place); starting with no sessions of its own"
        ),
        Ok(snapshot::Restore::Unreadable { error }) => warn!(
            %path, %error,
            "snapshot file cannot be read and is ignored; starting with no sessions of its own"
        ),
        Err(error) => warn!(
            %path, %error,
            "reading the snapshot file failed; starting with no sessions of its own"
        ),
    }
}

/// Writes the snapshot file once the node has stopped taking changes, and says so.
async fn write_snapshot(shared: &Arc<Shared>, path: PathBuf) {
    let store = shared.store.clone();
    let (cluster, name) = (shared.cluster.clone(), shared.me.name.clone());
    let file = path.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        snapshot::write(&file, &store, &cluster, &name, now_ms())
    })
    .await;
    let path = path.display();
    match outcome {
        Ok(Ok(w)) => info!(
            %path, sessions = w.sessions, tombstones = w.tombstones, bytes = w.bytes, took_ms = w.took_ms,
            "sessions written to the snapshot file"
        ),
        Ok(Err(error)) => {
            tracing::error!(%path, %error, "cannot write the snapshot file; this node's sessions are not kept")
        }
        Err(error) => {
            tracing::error!(%path, %error, "writing the snapshot file failed; this node's sessions are not kept")
        }
    }
}

/// Descriptors the node holds besides its HTTP clients: listeners, the replication links
/// to and from each member, the membership socket, logs; generous, since running out of
/// descriptors stalls replication too.
const NODE_RESERVED_FILES: u64 = 256;

/// `node.max_connections`, fitted to the open file limit when unset (one descriptor per
/// client connection, plus [`NODE_RESERVED_FILES`]); a set value is kept, with a warning
/// when the open file limit cannot hold it.
fn node_max_connections(config: &Config, open_files: Option<u64>) -> usize {
    let configured = config.node.max_connections;
    let max = fit_max_connections(
        configured,
        config.is_set("node.max_connections"),
        open_files,
    );
    if max != configured {
        info!(
            max_connections = max,
            "node.max_connections is not set and the open file limit cannot hold the default; using what it can"
        );
    } else if let Some(soft) = open_files.filter(|soft| configured + NODE_RESERVED_FILES > *soft) {
        warn!(
            max_connections = configured,
            open_files = soft,
            "the open file limit is below what node.max_connections may need; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower node.max_connections"
        );
    }
    usize::try_from(max).unwrap_or(usize::MAX)
}

fn fit_max_connections(configured: u64, set: bool, open_files: Option<u64>) -> u64 {
    match open_files {
        Some(soft) if !set && configured + NODE_RESERVED_FILES > soft => {
            soft.saturating_sub(NODE_RESERVED_FILES).max(1)
        }
        _ => configured,
    }
}

/// Where the sessions live, as `sessions.store` says.
fn backend(
    config: &Config,
    store: &SessionStore,
    replicator: &Replicator,
) -> Result<Backend, NodeError> {
    let s = &config.sessions;
    match &s.store {
        SessionStoreUrl::Replicated => Ok(Backend::Replicated(Replicated::new(
            store.clone(),
            replicator.clone(),
        ))),
        url @ (SessionStoreUrl::Redis { .. } | SessionStoreUrl::RedisCluster { .. }) => {
            let redis = RedisBackend::new(
                url,
                &config.cluster.name,
                Duration::from_millis(s.store_timeout_ms),
                limits(config),
                u32::try_from(s.max_inactive_s).unwrap_or(u32::MAX),
            )?;
            info!(store = %url, "sessions live in a session server; this node replicates none");
            Ok(Backend::Redis(Box::new(redis)))
        }
        url @ SessionStoreUrl::Memcached { .. } => {
            let memcached = MemcachedBackend::new(
                url,
                &config.cluster.name,
                Duration::from_millis(s.store_timeout_ms),
                limits(config),
                u32::try_from(s.max_inactive_s).unwrap_or(u32::MAX),
            )?;
            info!(store = %url, "sessions live in memcached; this node replicates none");
            Ok(Backend::Memcached(memcached))
        }
    }
}

/// The cluster key of `cluster.key_file`, if one is set.
fn read_key(config: &Config) -> Result<Option<ClusterKey>, NodeError> {
    Ok(ClusterKey::read_file_if_set(
        config.cluster.key_file.as_deref(),
    )?)
}

/// Resolves when the node starts leaving (so a join in progress is abandoned).
async fn joining_stop(shared: &Shared) {
    let mut state = shared.state.subscribe();
    let _ = state.wait_for(|s| *s == NodeState::Leaving).await;
}

fn limits(config: &Config) -> Limits {
    let s = &config.sessions;
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Limits {
        max_sessions: size(s.max_sessions),
        max_attributes: size(s.max_attributes),
        max_value_bytes: size(s.max_value_bytes),
        max_bytes: s.max_bytes,
        ..Limits::default()
    }
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    transport::bind_listener(addr)
        .await
        .map_err(|source| NodeError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

/// The address others reach: a wildcard bind is announced as the membership interface.
fn advertised(bound: SocketAddr, interface: IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(interface, bound.port())
    } else {
        bound
    }
}

/// A node's shared state in `state`, without sockets or peers (replication is then
/// immediate), for unit tests of what reads it.
#[cfg(test)]
pub(crate) fn shared_for_test(state: NodeState, url_tracking: bool) -> Arc<Shared> {
    let me = MemberInfo {
        id: NodeId::from_u64(1),
        name: "n1".to_string(),
        http: SocketAddr::from(([127, 0, 0, 1], 8081)),
        replication: SocketAddr::from(([127, 0, 0, 1], 4001)),
        incarnation: 1,
    };
    let store = SessionStore::new(me.id, Limits::default(), 1800);
    let metrics = Arc::new(Metrics::default());
    let replication = ReplicationConfig::new(
        "test".to_string(),
        me.id,
        crate::config::ReplicationMode::Sync,
        Duration::from_millis(100),
    );
    let replicator = Replicator::new(
        replication,
        store.clone(),
        metrics.clone(),
        mpsc::channel(1).0,
    );
    Arc::new(Shared {
        me,
        cluster: "test".to_string(),
        started: Instant::now(),
        metrics,
        view: watch::channel(MembershipView::empty()).1,
        backend: Backend::Replicated(Replicated::new(store.clone(), replicator.clone())),
        store,
        replicator,
        cookie: "JSESSIONID".to_string(),
        url_tracking,
        ajp: None,
        state: watch::channel(state).0,
    })
}

#[cfg(test)]
impl Shared {
    /// Moves a test's node to `state`.
    pub(crate) fn set_state_for_test(&self, state: NodeState) {
        self.set_state(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    fn shared() -> Arc<Shared> {
        shared_for_test(NodeState::Ready, false)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).expect("a request")
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_app_status_answers_and_other_requests_wait_then_get_503() {
        let (_app, rx) = watch::channel(None);
        let router = http_router(&shared(), rx);
        let status = router
            .clone()
            .oneshot(get("/status"))
            .await
            .expect("infallible");
        assert_eq!(status.status(), StatusCode::OK);
        let started = tokio::time::Instant::now();
        let waited = router.oneshot(get("/cart")).await.expect("infallible");
        assert_eq!(waited.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), APP_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_arrived_before_the_app_is_served_by_it() {
        let (app, rx) = watch::channel(None);
        let router = http_router(&shared(), rx);
        let waiting = tokio::spawn(router.oneshot(get("/cart")));
        tokio::time::sleep(Duration::from_secs(1)).await;
        app.send_replace(Some(Router::new().route(
            "/cart",
            axum::routing::get(|| async { StatusCode::IM_A_TEAPOT }),
        )));
        let answer = waiting.await.expect("the request ran").expect("infallible");
        assert_eq!(answer.status(), StatusCode::IM_A_TEAPOT);
    }

    #[tokio::test]
    async fn the_nodes_own_status_wins_over_an_apps_route_of_the_same_path() {
        let app = Router::new().route(
            "/status",
            axum::routing::get(|| async { StatusCode::IM_A_TEAPOT }),
        );
        let (_app, rx) = watch::channel(Some(app));
        let answer = http_router(&shared(), rx)
            .oneshot(get("/status"))
            .await
            .expect("infallible");
        assert_eq!(answer.status(), StatusCode::OK);
    }
}
