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
    /// A connection whose first frame does not arrive within this is closed (a client that
    /// connects and says nothing must not hold a slot for long).
    pub first_frame_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many inbound connections at once; more are closed at accept.
    pub max_connections: usize,
    pub log_interval: Duration,
}

impl InboundConfig {
    /// The production limits: 5 s for a first frame, 60 s idle, 1024 connections.
    pub fn new(cluster: String, me: NodeId) -> InboundConfig {
        InboundConfig {
            cluster,
            me,
            first_frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            log_interval: Duration::from_secs(10),
        }
    }
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
    let mut wait = cfg.first_frame_timeout;
    loop {
        let frame = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => {
                debug!(%peer, "replication connection idle, closing");
                return;
            }
            Ok(None) => return,
            Ok(Some(Ok(frame))) => {
                wait = cfg.idle_timeout;
                frame
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start() -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let cfg = InboundConfig::new("c".into(), NodeId::from_u64(1));
        tokio::spawn(serve(listener, cfg, metrics.clone(), stop.clone()));
        (addr, metrics, stop)
    }

    #[tokio::test]
    async fn a_ping_gets_a_pong_with_our_id() {
        let (addr, metrics, stop) = start().await;
        let mut stream = transport::connect(addr).await.expect("connect");
        stream
            .send(wire::encode_frame(
                "c",
                NodeId::from_u64(2),
                &FrameBody::Ping(42),
            ))
            .await
            .expect("send");
        let frame = stream.next().await.expect("a frame").expect("ok");
        assert_eq!(
            wire::decode_frame(&frame, "c"),
            Ok((NodeId::from_u64(1), FrameBody::Pong(42)))
        );
        assert_eq!(metrics.replication.pings_answered.get(), 1);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_first_frame_timeout() {
        let (addr, _metrics, stop) = start().await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(
            silent.read(&mut buf).await.expect("read"),
            0,
            "closed, not answered"
        );
        assert!(started.elapsed() >= Duration::from_secs(5));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_frame_of_another_cluster_closes_the_connection_and_is_counted() {
        let (addr, metrics, stop) = start().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let frame = wire::encode_frame("other", NodeId::from_u64(2), &FrameBody::Ping(1));
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        stream.write_all(&bytes).await.expect("write");
        let mut buf = [0u8; 8];
        assert!(matches!(stream.read(&mut buf).await, Ok(0) | Err(_)));
        assert_eq!(metrics.replication.errors.get(), 1);
        stop.cancel();
    }
}
