//! The balancer's workers, in nginx's model: one thread per core, each with a
//! single-threaded tokio runtime of its own, its own listening socket (of one SO_REUSEPORT
//! group), its own connections to the members. A client connection is accepted, served and proxied on
//! one thread from start to end: no request is handed from one thread to another and no
//! worker wakes another. What the workers share (the members with their health and
//! figures, the connection limit) sits behind atomics and short locks in [`Shared`].
//! Each connection is served by the fast path first, and handed to hyper (the
//! [`Service`]) at its first request the fast path does not take.

use std::convert::Infallible;
use std::num::NonZero;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::balancer::choice::registry::Registry;
use crate::balancer::http::conn::{self, ClientIo, Exchange};
use crate::balancer::http::fast::{self, BufferPool};
use crate::balancer::http::figures::{Figures, FiguresSlot};
use crate::balancer::http::manager;
use crate::balancer::http::pool::Pool;
use crate::balancer::http::service::Service;
use crate::balancer::http::timeout::MemberTimeout;
use crate::balancer::http::upstream::Upstream;
use crate::balancer::net::client::ClientSocket;
use crate::balancer::net::limit::{self, ConnectionLimit};
use crate::balancer::net::listener::Listener;
use crate::balancer::net::rewind::Rewind;
use crate::balancer::rules::{Peer, sticky};
use crate::shutdown::Shutdown;
use crate::throttle::LogThrottle;

/// How often a worker closes the connections to members that were idle too long.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long shutdown waits for requests in flight.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A worker that could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start balancer worker {index}: {source}")]
pub struct WorkerError {
    pub index: usize,
    pub source: std::io::Error,
}

/// What every worker reads.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub limit: Arc<ConnectionLimit>,
    pub timeout: Arc<MemberTimeout>,
    pub sticky: sticky::Rule,
    pub manager: Arc<manager::Guard>,
    /// The balancer's own figures, one part per worker.
    pub figures: Arc<Figures>,
}

/// One worker per core the process may use.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZero::get)
}

/// What the connections of one worker read.
struct Worker {
    /// The hyper path's entry, and what forwarding reads on this worker (its own
    /// connections to the members among it).
    service: Service,
    /// This worker's spare buffers for the fast path.
    buffers: BufferPool,
    limit: Arc<ConnectionLimit>,
    /// Triggered with the balancer's; owns this worker's tasks.
    shutdown: Shutdown,
}

/// What the requests of one client connection read.
struct Client {
    worker: Arc<Worker>,
    exchange: Arc<Exchange>,
    peer: Peer,
}

/// The running workers.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts a worker per listener, each accepting on its own until `shutdown` is
    /// triggered. If one cannot start, those already started are stopped.
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) -> Result<Workers, WorkerError> {
        let workers = shutdown.child();
        let mut threads = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            match start_one(index, listener, shared, &workers) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    workers.trigger();
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Workers { threads })
    }

    /// Waits until every worker has stopped accepting and drained its connections.
    pub async fn join(self) {
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join())
                .filter(Result::is_err)
                .count()
        })
        .await;
        match joined {
            Ok(0) => {}
            Ok(panicked) => warn!(panicked, "balancer workers ended in a panic"),
            Err(e) => warn!(error = %e, "could not wait for the balancer workers"),
        }
    }
}

fn start_one(
    index: usize,
    listener: std::net::TcpListener,
    shared: &Arc<Shared>,
    workers: &Shutdown,
) -> Result<JoinHandle<()>, WorkerError> {
    let failed = |source| WorkerError { index, source };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    let listener = {
        let _in_runtime = runtime.enter();
        Listener::new(listener).map_err(failed)?
    };
    let shared = shared.clone();
    let shutdown = workers.child();
    std::thread::Builder::new()
        .name(format!("balancer-{index}"))
        .spawn(move || run(index, runtime, listener, shared, shutdown))
        .map_err(failed)
}

/// One worker's thread: serves until shutdown, then drains its connections.
fn run(
    index: usize,
    runtime: Runtime,
    listener: Listener,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    runtime.block_on(async move {
        let upstream = Upstream {
            registry: shared.registry.clone(),
            pool: Arc::new(Pool::new(shared.timeout.clone())),
            sticky: shared.sticky.clone(),
            figures: FiguresSlot {
                figures: shared.figures.clone(),
                index,
            },
        };
        let worker = Arc::new(Worker {
            service: Service::new(
                upstream,
                shared.limit.clone(),
                shutdown.clone(),
                shared.manager.clone(),
            ),
            buffers: BufferPool::default(),
            limit: shared.limit.clone(),
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(sweep(worker.clone()));
        accept_loop(&listener, &worker).await;
        drop(listener);
        if !shutdown.drain(DRAIN_GRACE).await {
            warn!("some connections did not finish within {DRAIN_GRACE:?}; closing them");
        }
    });
}

/// Closes, now and then, the pooled connections idle for too long or to members gone,
/// until shutdown.
async fn sweep(worker: Arc<Worker>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let upstream = &worker.service.upstream;
    loop {
        tokio::select! {
            _ = worker.shutdown.triggered() => break,
            _ = interval.tick() => {
                let members = upstream.registry.members();
                upstream.pool.sweep(&members, Instant::now());
            }
        }
    }
}

/// Accepts client connections until shutdown, each served once it has a slot under the
/// limit. At the limit this worker waits for a slot with the connection it accepted; the
/// next ones wait in its listen backlog.
async fn accept_loop(listener: &Listener, worker: &Arc<Worker>) {
    let shutdown = &worker.shutdown;
    let limit = &worker.limit;
    let mut accept_errors = LogThrottle::new(limit::LIMIT_LOG_INTERVAL);
    // Whether accepted connections come without the listener's TCP_NODELAY (known after
    // the first one), so each needs it set: one system call per connection saved where
    // they inherit it.
    let mut set_nodelay = None;
    loop {
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
        let slot = match limit.try_slot() {
            Some(slot) => slot,
            None => tokio::select! {
                _ = shutdown.triggered() => break,
                slot = limit.slot() => match slot {
                    Some(slot) => slot,
                    None => break,
                },
            },
        };
        if limit.full() {
            if let Some(times) = limit.log_due(Instant::now()) {
                warn!(
                    max_connections = limit.max(),
                    times, "connection limit reached; new connections wait in the listen backlog"
                );
            }
        }
        let needed = *set_nodelay.get_or_insert_with(|| !stream.nodelay().unwrap_or(false));
        if needed {
            let _ = stream.set_nodelay(true);
        }
        let worker = worker.clone();
        let token = shutdown.token().clone();
        // Boxed: the task then holds a pointer rather than the whole connection's state,
        // which tokio would otherwise copy several times over while spawning it.
        shutdown.spawn(Box::pin(async move {
            let peer = Peer::new(peer.ip());
            let mut stream = ClientSocket::new(stream);
            // The common requests are forwarded by the fast path; the first one it does not
            // take hands the connection, with what was read of it, to hyper.
            let upstream = &worker.service.upstream;
            let served = fast::serve(upstream, &worker.buffers, &mut stream, &peer, &token).await;
            let (read, head_by) = match served {
                fast::Outcome::Done => return,
                fast::Outcome::HandOff { read, head_by } => (read, head_by),
            };
            let stream = match stream.into_polled() {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(peer = %peer.ip, error = %e, "client connection ended");
                    return;
                }
            };
            // Boxed: hyper's connection state is large, and most connections never need it
            // (the task of each connection is as large as its future).
            Box::pin(serve_hyper(
                worker,
                Rewind::new(read, stream),
                peer,
                slot,
                token,
                head_by,
            ))
            .await;
        }));
    }
}

/// Serves the rest of a client connection with hyper: every request, with the full rules.
/// `head_by`: the first head, begun on the fast path, must be complete by then (hyper's own
/// header-read timer starts anew, so without this a slow client would get it twice).
async fn serve_hyper<S>(
    worker: Arc<Worker>,
    stream: S,
    peer: Peer,
    slot: OwnedSemaphorePermit,
    token: CancellationToken,
    head_by: Option<tokio::time::Instant>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = peer.ip;
    let exchange = Exchange::new();
    let io = ClientIo::new(stream, exchange.clone(), Some(slot));
    let client = Arc::new(Client {
        worker,
        exchange: exchange.clone(),
        peer,
    });
    let service = service_fn(move |req| {
        client.exchange.request();
        let client = client.clone();
        async move {
            let response = client.worker.service.handle(req, &client.peer).await;
            Ok::<_, Infallible>(client.exchange.response(response))
        }
    });
    let conn = conn::http1()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let first_head = async {
        match head_by {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(first_head);
    let mut waiting_first = head_by.is_some();
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(peer = %ip, error = %e, "client connection ended");
                }
                break;
            }
            _ = first_head.as_mut(), if waiting_first => {
                if !exchange.started() {
                    debug!(peer = %ip, "no request head within the header-read timeout; closed");
                    break;
                }
                waiting_first = false;
            }
            _ = token.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
                break;
            }
        }
    }
}
