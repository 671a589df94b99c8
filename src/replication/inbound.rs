//! The accepting side of the replication port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::membership::NodeId;
use crate::metrics::Metrics;
use crate::throttle::LogThrottle;
use crate::transport::{self, FramedStream};
use crate::wire::{self, FrameBody};

#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub cluster: String,
    pub me: NodeId,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many inbound connections at once; more are closed at accept.
    pub max_connections: usize,
    pub log_interval: Duration,
}

/// Accepts connections on `listener` until `shutdown`; one task per connection.
pub async fn serve(
    listener: TcpListener,
    cfg: InboundConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let throttle = Arc::new(Mutex::new(LogThrottle::<IpAddr>::new(cfg.log_interval)));
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                warn!(error = %e, "replication accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.replication.errors.inc();
            if throttle.lock().allow(&peer.ip(), Instant::now()) {
                warn!(%peer, "too many replication connections, closing this one");
            }
            continue;
        };
        let (cfg, metrics, throttle, shutdown) = (
            cfg.clone(),
            metrics.clone(),
            throttle.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let _slot = slot;
            let stream = transport::framed(stream);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, peer, &cfg, &metrics, &throttle) => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn connection(
    mut stream: FramedStream,
    peer: SocketAddr,
    cfg: &InboundConfig,
    metrics: &Metrics,
    throttle: &Mutex<LogThrottle<IpAddr>>,
) {
    loop {
        let frame = match tokio::time::timeout(cfg.idle_timeout, stream.next()).await {
            Err(_) => {
                debug!(%peer, "replication connection idle, closing");
                return;
            }
            Ok(None) => return,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                // Oversized length prefix or an I/O error: the stream cannot be resynchronised.
                reject(peer, metrics, throttle, &e.to_string(), "bad stream");
                return;
            }
        };
        metrics
            .replication
            .bytes_received
            .add(frame.len() as u64 + 4);
        match wire::decode_frame(&frame, &cfg.cluster) {
            Ok((_, FrameBody::Ping(nonce))) => {
                let pong = wire::encode_frame(&cfg.cluster, cfg.me, &FrameBody::Pong(nonce));
                metrics.replication.bytes_sent.add(pong.len() as u64 + 4);
                if stream.send(pong).await.is_err() {
                    return;
                }
                metrics.replication.pings_answered.inc();
            }
            Ok((sender, FrameBody::Pong(_))) => {
                debug!(%peer, %sender, "unexpected pong ignored");
            }
            Err(e) => {
                reject(peer, metrics, throttle, &e.to_string(), e.kind());
                return;
            }
        }
    }
}

fn reject(
    peer: SocketAddr,
    metrics: &Metrics,
    throttle: &Mutex<LogThrottle<IpAddr>>,
    error: &str,
    reason: &str,
) {
    metrics.replication.errors.inc();
    if throttle.lock().allow(&peer.ip(), Instant::now()) {
        warn!(%peer, reason, error, "closed a replication connection (further ones from this peer are counted, not logged, for a while)");
    }
}
