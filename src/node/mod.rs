//! Composition root of `deltacast node`: binds the sockets, starts membership, the
//! replication port and HTTP, and takes them down in order on shutdown.

pub mod http;
pub mod sessions;
pub mod status;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::heartbeat::{self, HeartbeatConfig, Peers};
use crate::membership::{MemberInfo, MembershipView, NodeId};
use crate::metrics::Metrics;
use crate::replication::transfer::{self, Transfer};
use crate::replication::{self, InboundConfig, ReplicationConfig, Replicator};
use crate::session::{Limits, SessionStore};
use crate::shutdown::Shutdown;
use crate::transport::{self, Datagrams};

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] crate::wire::key_file::KeyFileError),
    #[error(
        "node.replication: {addr} is announced to static members on other hosts, which cannot reach it; use this host's address (or set membership.interface when binding 0.0.0.0)"
    )]
    Unreachable { addr: SocketAddr },
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// The node's own lifecycle state, as `/status` shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    Joining,
    Ready,
    Leaving,
}

impl NodeState {
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
    pub store: SessionStore,
    pub replicator: Replicator,
    /// Name of the session cookie (sessions.cookie).
    pub cookie: String,
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
/// How often static member names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// Runs a node until `shutdown` is triggered, then leaves the cluster and returns.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), NodeError> {
    let key = crate::wire::seal::ClusterKey::read_file_if_set(config.cluster.key_file.as_deref())?;
    let open_files = crate::limits::raise_open_files_logged();
    let membership = &config.membership;
    let replication_listener = bind_tcp("replication", config.node.replication).await?;
    let replication_addr = advertised(
        local_addr(&replication_listener),
        membership.interface.into(),
    );
    let http_listener = bind_tcp("http", config.node.http).await?;
    let http_addr = advertised(local_addr(&http_listener), membership.interface.into());

    let static_names = &membership.static_members;
    let (datagrams, peers, resolver) = if static_names.is_empty() {
        let datagrams =
            Datagrams::multicast(membership.multicast, membership.interface, membership.ttl)
                .map_err(|source| NodeError::Bind {
                    what: "multicast",
                    addr: format!(
                        "{} on interface {}",
                        membership.multicast, membership.interface
                    ),
                    source,
                })?;
        (datagrams, Peers::Group, None)
    } else {
        let (resolved, _) = transport::resolve_peers(static_names, Duration::from_secs(5)).await;
        if replication_addr.ip().is_loopback() && resolved.iter().any(|p| !p.ip().is_loopback()) {
            return Err(NodeError::Unreachable {
                addr: replication_addr,
            });
        }
        // Unicast heartbeats share the replication port number, over UDP.
        let local = SocketAddr::new(config.node.replication.ip(), replication_addr.port());
        let datagrams = Datagrams::unicast(local).map_err(|source| NodeError::Bind {
            what: "unicast heartbeat",
            addr: local.to_string(),
            source,
        })?;
        let (tx, rx) = watch::channel(resolved);
        (
            datagrams,
            Peers::Static(rx),
            Some((static_names.clone(), tx)),
        )
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
    let (suspicions_tx, suspicions_rx) = mpsc::channel(256);
    let mut replication_cfg = ReplicationConfig::new(
        config.cluster.name.clone(),
        me.id,
        config.sessions.replication,
        Duration::from_millis(config.sessions.ack_timeout_ms),
    );
    replication_cfg.key = key.clone();
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
        store,
        replicator: replicator.clone(),
        cookie: config.sessions.cookie.clone(),
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

    // Stopped in order on shutdown: HTTP first (requests in flight finish, their
    // replication included), then the links drain, membership announces the leave, and
    // only then the links and the replication port close.
    let cluster_stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    if let Some((names, tx)) = resolver {
        shutdown.spawn(transport::keep_resolving(
            names,
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
    // Membership stops on its own token, first: the leave must be announced before the
    // links close, or members would see the links break and drop us as dead instead.
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
    let server = axum::serve(http_listener, http::router(shared.clone())).with_graceful_shutdown({
        let http_stop = http_stop.clone();
        async move { http_stop.cancelled().await }
    });
    let http_task = shutdown.spawn(async move {
        if let Err(e) = server.await {
            warn!(error = %e, "http server failed");
        }
    });
    // Join: take every session from a member before serving sessions.
    let joining = shared.clone();
    let wait_for_members = config.heartbeat() * 2;
    shutdown.spawn(async move {
        let outcome = tokio::select! {
            _ = joining_stop(&joining) => return,
            outcome = transfer::run(&joining.cluster, key.as_ref(), joining.me.id, &joining.store, view_rx, wait_for_members) => outcome,
        };
        if outcome == Transfer::Failed {
            warn!("no member could send its sessions; serving what arrives, anti-entropy fills in");
        }
        joining.set_state(NodeState::Ready);
        joining.replicator.set_ready();
    });

    shutdown.triggered().await;
    shared.set_state(NodeState::Leaving);
    info!(name = %me.name, "shutting down");
    http_stop.cancel();
    if tokio::time::timeout(DRAIN_GRACE, http_task).await.is_err() {
        warn!("requests still running after {DRAIN_GRACE:?}; closing them");
    }
    replicator.flush(FLUSH_GRACE).await;
    membership_stop.cancel();
    if tokio::time::timeout(DRAIN_GRACE, membership_task)
        .await
        .is_err()
    {
        warn!("the leave announcement did not finish within {DRAIN_GRACE:?}");
    }
    cluster_stop.cancel();
    if !shutdown.drain(DRAIN_GRACE).await {
        warn!("some tasks did not finish within {DRAIN_GRACE:?}; closing them");
    }
    info!(name = %me.name, "stopped");
    Ok(())
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

fn local_addr(listener: &TcpListener) -> SocketAddr {
    // A bound listener always has a local address; the fallback is never used in practice.
    listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The address others reach: a wildcard bind is announced as the membership interface.
fn advertised(bound: SocketAddr, interface: IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(interface, bound.port())
    } else {
        bound
    }
}
