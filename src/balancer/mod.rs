//! The built-in HTTP balancer, in the style of Apache mod_proxy_balancer: the pure choice of
//! a member ([`select`]), a member's health with hysteresis ([`member`]), the members and
//! their figures ([`registry`]), the proxy ([`proxy`]), the manager paths ([`manager`]) and
//! the client connections with their limits ([`conn`]).
//! Members are static (`[[balancer.member]]`) and/or discovered from the heartbeats, which
//! the balancer listens to as an observer (it never sends one).

pub mod conn;
pub mod manager;
pub mod member;
pub mod proxy;
pub mod registry;
pub mod select;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError};
use crate::heartbeat::{self, HeartbeatConfig, MembershipView, Peers};
use crate::membership::{MemberInfo, NodeId};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::throttle::LogThrottle;
use crate::transport::Datagrams;

use conn::{ClientIo, ConnectionLimit, Exchange};
use proxy::{HttpClient, ProxyBody};
use registry::Registry;

pub use select::{Candidate, Selector, Stickiness};

#[derive(Debug, Error)]
pub enum BalancerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// Idle pooled connections to members are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// What every connection task reads.
struct Shared {
    shutdown: Shutdown,
    registry: Arc<Registry>,
    client: HttpClient,
    config: Config,
    limit: ConnectionLimit,
}

/// Runs the balancer until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), BalancerError> {
    config.validate()?;
    let b = &config.balancer;
    let listener = TcpListener::bind(b.listen)
        .await
        .map_err(|source| BalancerError::Bind {
            what: "balancer",
            addr: b.listen.to_string(),
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(b.listen);
    let registry = Arc::new(Registry::new(b.lbmethod, &b.member));
    let stop = CancellationToken::new();
    if b.discover {
        start_discovery(&config, registry.clone(), &shutdown, stop.clone())?;
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector);
    info!(
        listen = %listen,
        lbmethod = %b.lbmethod,
        sticky = %b.sticky,
        discover = b.discover,
        members = b.member.len(),
        max_connections = b.max_connections,
        "balancer started"
    );
    let shared = Arc::new(Shared {
        shutdown: shutdown.clone(),
        registry,
        client,
        config: config.clone(),
        limit: ConnectionLimit::new(usize::try_from(b.max_connections).unwrap_or(usize::MAX)),
    });
    let mut accept_errors = LogThrottle::new(conn::LIMIT_LOG_INTERVAL);
    loop {
        // A slot first, then accept: at the limit, new clients wait in the listen backlog.
        let slot = match shared.limit.try_slot() {
            Some(slot) => slot,
            None => {
                if let Some(times) = shared.limit.log_due(Instant::now()) {
                    warn!(
                        max_connections = shared.limit.max(),
                        times,
                        "connection limit reached; new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    _ = shutdown.triggered() => break,
                    slot = shared.limit.slot() => match slot {
                        Some(slot) => slot,
                        None => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.triggered() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning, log once in a while.
                    if accept_errors.allow(&(), Instant::now()) {
                        warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let token = shutdown.token().clone();
        shutdown.spawn(async move {
            let exchange = Exchange::new();
            let io = ClientIo::new(stream, exchange.clone(), Some(slot));
            let service = service_fn(move |req| {
                exchange.request();
                let shared = shared.clone();
                let exchange = exchange.clone();
                async move { Ok::<_, Infallible>(exchange.response(handle(&shared, req, peer).await)) }
            });
            let conn = conn::http1()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "client connection ended");
                    }
                }
                _ = token.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
                }
            }
        });
    }
    info!("balancer shutting down");
    stop.cancel();
    if !shutdown.drain(DRAIN_GRACE).await {
        warn!("some connections did not finish within {DRAIN_GRACE:?}; closing them");
    }
    info!("balancer stopped");
    Ok(())
}

async fn handle(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    if proxy::headers_too_large(req.headers()) {
        return proxy::plain(
            hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large",
        );
    }
    if let Some(problem) = proxy::host_problem(req.version(), req.headers()) {
        return proxy::plain(hyper::StatusCode::BAD_REQUEST, problem);
    }
    let path = req.uri().path();
    if req.method() == hyper::Method::POST && path == manager::MEMBER_PATH {
        return set_member(shared, req).await;
    }
    if manager::is_manager_path(path) {
        let members: Vec<_> = shared
            .registry
            .members()
            .iter()
            .map(|m| m.status())
            .collect();
        let connections = manager::Connections {
            open: shared.limit.open(),
            max: shared.limit.max(),
            limit_reached: shared.limit.reached(),
        };
        return manager::answer(req.method(), path, &members, &connections);
    }
    proxy::forward(
        &shared.registry,
        &shared.client,
        &shared.config.balancer.sticky,
        &shared.config.sessions.cookie,
        req,
        peer.ip(),
        &shared.shutdown,
    )
    .await
}

/// `POST /balancer-manager/member`: drain, disable or enable a member (same origin only).
async fn set_member(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    use http_body_util::{BodyExt, Limited};
    use hyper::StatusCode;
    if !manager::same_origin(req.headers()) {
        return proxy::plain(
            StatusCode::FORBIDDEN,
            "forbidden: not posted from this page",
        );
    }
    let Ok(form) = Limited::new(req.into_body(), 4096).collect().await else {
        return proxy::plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    };
    let form = String::from_utf8_lossy(&form.to_bytes()).into_owned();
    let Some((route, admin)) = manager::parse_action(&form) else {
        return proxy::plain(
            StatusCode::BAD_REQUEST,
            "bad request: expected route=ROUTE&action=drain|disable|enable",
        );
    };
    if !shared.registry.set_admin(&route, admin) {
        return proxy::plain(StatusCode::NOT_FOUND, "no member with that route");
    }
    info!(%route, ?admin, "member state set from the manager page");
    manager::back_to_page()
}

/// Joins the multicast group as an observer and keeps the registry's discovered members
/// equal to the members the heartbeats show (route = name, url = http://<http addr>).
fn start_discovery(
    config: &Config,
    registry: Arc<Registry>,
    shutdown: &Shutdown,
    stop: CancellationToken,
) -> Result<(), BalancerError> {
    let m = &config.membership;
    let datagrams = Datagrams::multicast(m.multicast, m.interface, m.ttl).map_err(|source| {
        BalancerError::Bind {
            what: "multicast",
            addr: format!("{} on interface {}", m.multicast, m.interface),
            source,
        }
    })?;
    let nowhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let me = MemberInfo {
        id: NodeId::random(),
        name: String::new(),
        http: nowhere,
        replication: nowhere,
        incarnation: 0,
    };
    let mut hb = HeartbeatConfig::new(
        config.cluster.name.clone(),
        me,
        config.heartbeat(),
        config.drop_after(),
    );
    hb.observer = true;
    let (view_tx, mut view_rx) = watch::channel(MembershipView::empty());
    let (suspicions_tx, suspicions_rx) = mpsc::channel(1);
    shutdown.spawn(heartbeat::run(
        hb,
        datagrams,
        Peers::Group,
        Arc::new(Metrics::default()),
        view_tx,
        suspicions_rx,
        stop.clone(),
    ));
    shutdown.spawn(async move {
        // Nobody suspects members here; the sender lives as long as the task.
        let _suspicions = suspicions_tx;
        let mut last: Vec<(String, String)> = Vec::new();
        loop {
            let found = discovered(&view_rx.borrow_and_update());
            if found != last {
                info!(members = ?found, "discovered members");
                registry.set_discovered(&found);
                last = found;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = view_rx.changed() => if changed.is_err() { break },
            }
        }
    });
    Ok(())
}

/// The (route, url) of each member of a view, sorted by route.
pub fn discovered(view: &MembershipView) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = view
        .members
        .iter()
        .map(|m| (m.info.name.clone(), format!("http://{}", m.info.http)))
        .collect();
    found.sort();
    found
}
