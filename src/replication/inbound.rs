//! The accepting side of the replication port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::chunk::chunk;
use super::entropy;
use crate::clock;
use crate::membership::NodeId;
use crate::metrics::Metrics;
use crate::session::SessionStore;
use crate::throttle::LogThrottle;
use crate::transport::{self, FrameBudget, FrameLimits, FramedStream, Listener, Stream};
use crate::wire::seal::{ClusterKey, SealError};
use crate::wire::{self, FrameBody};

#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub cluster: String,
    pub me: NodeId,
    /// Where received deltas are applied and state transfers are read from.
    pub store: SessionStore,
    /// Digests are answered only once this node holds the cluster's state.
    pub ready: Arc<AtomicBool>,
    /// A connection that has not proven itself within this is closed and counted: a client
    /// that connects and says nothing must not hold a slot for long. With a key, the
    /// handshake proves it; without, its first frame, which must be valid.
    pub first_frame_timeout: Duration,
    /// A proven connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many inbound connections at once; more are closed at accept.
    pub max_connections: usize,
    /// At most this many of them from one address, so that one host cannot take every
    /// slot (a member needs one link, and a few short ones for checks and transfers).
    pub max_per_address: usize,
    /// At most this many of them from one address not proven yet. A member proves a
    /// connection in its first round trip, so even a host running several members has only
    /// a few at a time; a host that opens connections and says nothing reaches this long
    /// before [`InboundConfig::max_per_address`].
    pub max_unproven_per_address: usize,
    /// How frames still arriving are bounded: the bytes of all of them together, and how
    /// slowly one may arrive.
    pub frames: FrameLimits,
    pub log_interval: Duration,
    /// The cluster key: connections begin with its handshake and every frame is sealed.
    pub key: Option<ClusterKey>,
}

impl InboundConfig {
    /// The production limits: 5 s to prove a connection, 5 min idle (links carry a digest
    /// every 30 s), 1024 connections, 16 unproven ones per address, 64 MiB of frames in
    /// flight.
    pub fn new(
        cluster: String,
        me: NodeId,
        store: SessionStore,
        ready: Arc<AtomicBool>,
    ) -> InboundConfig {
        InboundConfig {
            cluster,
            me,
            store,
            ready,
            first_frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_per_address: 128,
            max_unproven_per_address: 16,
            frames: FrameLimits::default(),
            log_interval: Duration::from_secs(10),
            key: None,
        }
    }
}

/// Accepts connections on `listener` until `shutdown`; one task per connection.
pub async fn serve(
    listener: impl Into<Listener>,
    cfg: InboundConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let throttle = Arc::new(Mutex::new(LogThrottle::<IpAddr>::new(cfg.log_interval)));
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let unproven_per_address = Arc::new(PerAddress::default());
    let budget = FrameBudget::new(cfg.frames);
    let connections = TaskTracker::new();
    let mut listener = listener.into();
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
        let Some(from_address) = per_address.take(peer.ip(), cfg.max_per_address) else {
            metrics.replication.errors.inc();
            if throttle.lock().allow(&peer.ip(), Instant::now()) {
                warn!(%peer, max = cfg.max_per_address, "too many replication connections from this address, closing this one");
            }
            continue;
        };
        let Some(unproven) = unproven_per_address.take(peer.ip(), cfg.max_unproven_per_address)
        else {
            metrics.replication.errors.inc();
            if throttle.lock().allow(&peer.ip(), Instant::now()) {
                warn!(%peer, max = cfg.max_unproven_per_address, "too many unproven replication connections from this address, closing this one");
            }
            continue;
        };
        let (cfg, metrics, throttle, shutdown, budget) = (
            cfg.clone(),
            metrics.clone(),
            throttle.clone(),
            shutdown.clone(),
            budget.clone(),
        );
        connections.spawn(async move {
            let _slot = (slot, from_address);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, peer, &cfg, &metrics, &throttle, budget, unproven) => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The inbound connections open per address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted for its address, until dropped.
struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// A place for one more connection from `ip`, if it has fewer than `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves one accepted connection until it ends. `unproven` holds its place among its
/// address's unproven connections until it proves itself.
async fn connection(
    stream: Stream,
    peer: SocketAddr,
    cfg: &InboundConfig,
    metrics: &Metrics,
    throttle: &Mutex<LogThrottle<IpAddr>>,
    budget: FrameBudget,
    unproven: AddressSlot,
) {
    let mut unproven = Some(unproven);
    // The handshake (with a key) and the first frame share one deadline: a peer that says
    // nothing useful holds its slot for `first_frame_timeout` at most.
    let first_by = tokio::time::Instant::now() + cfg.first_frame_timeout;
    let handshake = transport::accept_with_budget(stream, cfg.key.as_ref(), cfg.me, budget);
    let mut stream = match tokio::time::timeout_at(first_by, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if transport::seal_error(&e) == Some(SealError::WrongPeer) => {
            // A member still linked to this port's previous process: it finds out now.
            debug!(%peer, "replication connection meant for another node, closing");
            return;
        }
        Ok(Err(e)) if transport::is_seal_error(&e) => {
            reject(peer, metrics, throttle, &e.to_string(), "unauthenticated");
            return;
        }
        Ok(Err(e)) => {
            // Closed or reset before its hello: no bytes were refused.
            debug!(%peer, error = %e, "replication connection ended in the handshake");
            return;
        }
        Err(_) => {
            let error = "no handshake within the first-frame timeout";
            reject(peer, metrics, throttle, error, "first_frame_timeout");
            return;
        }
    };
    let mut wait = first_by.saturating_duration_since(tokio::time::Instant::now());
    if cfg.key.is_some() {
        // The handshake proved the key: a member's link may now idle (a joining node's
        // has nothing to send until it holds the cluster's state).
        unproven = None;
        wait = cfg.idle_timeout;
    }
    loop {
        let frame = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if unproven.is_some() => {
                let error = "no frame within the first-frame timeout";
                reject(peer, metrics, throttle, error, "first_frame_timeout");
                return;
            }
            Err(_) => {
                debug!(%peer, "replication connection idle, closing");
                return;
            }
            Ok(None) => return,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                // Oversized length prefix, a frame failing authentication, a stall or an
                // I/O error: the stream cannot be resynchronised.
                reject_stream(peer, metrics, throttle, &e);
                return;
            }
        };
        // Every frame that has already arrived is handled before anything is written
        // back: acknowledgements are cumulative, so a burst of batches costs one ack and
        // one write.
        let mut ack = None;
        let mut handled_frames = 0;
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            let handled =
                on_frame(&mut stream, peer, cfg, metrics, throttle, &frame, &mut ack).await;
            // Done with it before the stream is read again, where its reservation ends.
            drop(frame);
            if handled.is_err() {
                return;
            }
            if unproven.take().is_some() {
                // A valid frame: proven, this connection may idle like a member's.
                wait = cfg.idle_timeout;
            }
            handled_frames += 1;
            // A peer that never stops sending still gets its acks at least this often.
            if handled_frames == MAX_FRAMES_PER_ACK {
                break;
            }
            next = match stream.next().now_or_never() {
                None => None,
                Some(Some(Ok(frame))) => Some(frame),
                Some(Some(Err(e))) => {
                    reject_stream(peer, metrics, throttle, &e);
                    return;
                }
                Some(None) => {
                    // The peer closed after its last frames: their ack still goes out.
                    let _ = flush_with_ack(&mut stream, cfg, metrics, ack).await;
                    return;
                }
            };
        }
        if flush_with_ack(&mut stream, cfg, metrics, ack)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Most frames handled before their acknowledgement goes out.
const MAX_FRAMES_PER_ACK: usize = 32;

/// The connection is to be closed (bad frame, write failure).
struct Closed;

/// Handles one frame: answers are queued on `stream` (not flushed), an acknowledgement is
/// left in `ack` to be sent after the burst.
async fn on_frame(
    stream: &mut FramedStream,
    peer: SocketAddr,
    cfg: &InboundConfig,
    metrics: &Metrics,
    throttle: &Mutex<LogThrottle<IpAddr>>,
    frame: &[u8],
    ack: &mut Option<u64>,
) -> Result<(), Closed> {
    metrics
        .replication
        .bytes_received
        .add(stream.codec().wire_len(frame.len()));
    let (sender, body) = match wire::decode_frame(frame, &cfg.cluster) {
        Ok((sender, _)) if sender == cfg.me => {
            // This node's own frames sent back to it: acknowledging them would confirm
            // writes that reached no other member.
            reject(
                peer,
                metrics,
                throttle,
                "frame of this node itself",
                "own_frame",
            );
            return Err(Closed);
        }
        Ok(decoded) => decoded,
        Err(e) => {
            reject(peer, metrics, throttle, &e.to_string(), e.kind());
            return Err(Closed);
        }
    };
    if let FrameBody::StateRequest(request) = body {
        debug!(%sender, "state transfer requested");
        flush_with_ack(stream, cfg, metrics, ack.take())
            .await
            .map_err(|_| Closed)?;
        return send_state(stream, cfg, metrics, request)
            .await
            .map_err(|_| Closed);
    }
    for answer in answer(cfg, metrics, sender, body, clock::now_ms()) {
        match answer {
            FrameBody::Ack(seq) => *ack = Some(ack.map_or(seq, |a: u64| a.max(seq))),
            other => feed(stream, cfg, metrics, &other)
                .await
                .map_err(|_| Closed)?,
        }
    }
    Ok(())
}

/// Queues the pending acknowledgement, if any, and writes out everything queued.
async fn flush_with_ack(
    stream: &mut FramedStream,
    cfg: &InboundConfig,
    metrics: &Metrics,
    ack: Option<u64>,
) -> std::io::Result<()> {
    match ack {
        Some(seq) => send(stream, cfg, metrics, &FrameBody::Ack(seq)).await,
        None => SinkExt::<bytes::Bytes>::flush(stream).await,
    }
}

/// Queues one frame without flushing (the codec flushes by itself past its buffer limit).
async fn feed(
    stream: &mut FramedStream,
    cfg: &InboundConfig,
    metrics: &Metrics,
    body: &FrameBody,
) -> std::io::Result<()> {
    let bytes = wire::encode_frame(&cfg.cluster, cfg.me, body);
    metrics
        .replication
        .bytes_sent
        .add(stream.codec().wire_len(bytes.len()));
    stream.feed(bytes).await
}

/// Sends one frame at once.
async fn send(
    stream: &mut FramedStream,
    cfg: &InboundConfig,
    metrics: &Metrics,
    body: &FrameBody,
) -> std::io::Result<()> {
    feed(stream, cfg, metrics, body).await?;
    SinkExt::<bytes::Bytes>::flush(stream).await
}

/// The whole store, shard by shard in batches, streamed so that only one shard is copied
/// at a time; the last batch says `done`. Each shard's sessions come with its ids that
/// ended for good (invalidated, or renamed by a change-id), as invalidations: the joining
/// node then holds their tombstones, and a late delta for one cannot make it again there.
async fn send_state(
    stream: &mut FramedStream,
    cfg: &InboundConfig,
    metrics: &Metrics,
    request: u64,
) -> std::io::Result<()> {
    for shard in 0..cfg.store.shard_count() {
        let mut whole = cfg.store.export_shard(shard);
        whole.extend(cfg.store.export_shard_ended(shard));
        for sessions in chunk(whole) {
            let batch = FrameBody::StateBatch {
                request,
                sessions,
                done: false,
            };
            send(stream, cfg, metrics, &batch).await?;
        }
    }
    let last = FrameBody::StateBatch {
        request,
        sessions: Vec::new(),
        done: true,
    };
    send(stream, cfg, metrics, &last).await
}

/// What a received frame asks of this node, as the frames to send back.
fn answer(
    cfg: &InboundConfig,
    metrics: &Metrics,
    sender: NodeId,
    body: FrameBody,
    now_ms: u64,
) -> Vec<FrameBody> {
    match body {
        FrameBody::Ping(nonce) => {
            metrics.replication.pings_answered.inc();
            vec![FrameBody::Pong(nonce)]
        }
        FrameBody::Deltas { seq, deltas } => {
            metrics.replication.deltas_received.add(deltas.len() as u64);
            for delta in &deltas {
                cfg.store.apply(delta, now_ms);
            }
            // seq 0: an answer to a pull, not to be acknowledged.
            if seq == 0 {
                Vec::new()
            } else {
                vec![FrameBody::Ack(seq)]
            }
        }
        FrameBody::Access(times) => {
            for (id, at) in times {
                cfg.store.touch(id, at);
            }
            Vec::new()
        }
        // Still joining: the state transfer brings everything, and once ready this node
        // starts an exchange with every member itself.
        FrameBody::Digest(_) if !cfg.ready.load(Ordering::Relaxed) => Vec::new(),
        FrameBody::Digest(theirs) => entropy::differing_shards(&cfg.store.digest(), &theirs)
            .into_iter()
            .map(|shard| FrameBody::ShardEntries {
                shard,
                entries: cfg.store.shard_entries(shard),
            })
            .collect(),
        FrameBody::Pull(ids) => chunk(cfg.store.export(&ids))
            .into_iter()
            .map(|deltas| FrameBody::Deltas { seq: 0, deltas })
            .collect(),
        other => {
            debug!(%sender, kind = other.kind(), "unexpected frame on an inbound link ignored");
            Vec::new()
        }
    }
}

/// A stream that failed: a frame that failed authentication, or one that cannot be read.
fn reject_stream(
    peer: SocketAddr,
    metrics: &Metrics,
    throttle: &Mutex<LogThrottle<IpAddr>>,
    e: &std::io::Error,
) {
    let reason = if transport::is_seal_error(e) {
        "unauthenticated"
    } else if let Some(intake) = transport::intake_error(e) {
        intake.kind()
    } else {
        "bad stream"
    };
    reject(peer, metrics, throttle, &e.to_string(), reason);
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
    use crate::session::{Delta, SessionId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn start() -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        start_with(|_| {}).await
    }

    /// The replication port of node 1, its configuration changed by `tweak`.
    async fn start_with(
        tweak: impl FnOnce(&mut InboundConfig),
    ) -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let store = SessionStore::new(NodeId::from_u64(1), Default::default(), 60);
        let mut cfg = InboundConfig::new(
            "c".into(),
            NodeId::from_u64(1),
            store,
            Arc::new(AtomicBool::new(true)),
        );
        tweak(&mut cfg);
        tokio::spawn(serve(listener, cfg, metrics.clone(), stop.clone()));
        (addr, metrics, stop)
    }

    /// Whether the node answers a ping on a new connection.
    async fn answers_a_ping(addr: SocketAddr) -> bool {
        let Ok(mut stream) =
            transport::connect(addr, None, NodeId::from_u64(2), NodeId::from_u64(1)).await
        else {
            return false;
        };
        let ping = wire::encode_frame("c", NodeId::from_u64(2), &FrameBody::Ping(7));
        if stream.send(ping).await.is_err() {
            return false;
        }
        matches!(stream.next().await, Some(Ok(frame))
            if wire::decode_frame(&frame, "c") == Ok((NodeId::from_u64(1), FrameBody::Pong(7))))
    }

    /// While two silent connections hold their address's places, a further connection
    /// from it is closed (and counted) rather than served; once they close, one is served
    /// again.
    async fn refused_while_held_then_served(addr: SocketAddr, metrics: &Metrics) {
        let silent = [
            TcpStream::connect(addr).await.expect("connect"),
            TcpStream::connect(addr).await.expect("connect"),
        ];
        // Their places are taken once they are accepted: the next one is closed at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while answers_a_ping(addr).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a third connection was served"
            );
            tokio::task::yield_now().await;
        }
        assert!(metrics.replication.errors.get() >= 1);
        drop(silent);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !answers_a_ping(addr).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the places were not given back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_connection_slot() {
        let (addr, metrics, stop) = start_with(|cfg| cfg.max_per_address = 2).await;
        refused_while_held_then_served(addr, &metrics).await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_ping_gets_a_pong_with_our_id() {
        let (addr, metrics, stop) = start().await;
        let mut stream = transport::connect(addr, None, NodeId::from_u64(2), NodeId::from_u64(1))
            .await
            .expect("connect");
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

    #[tokio::test]
    async fn a_burst_of_delta_frames_is_applied_and_acknowledged_up_to_its_last_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store = SessionStore::new(NodeId::from_u64(1), Default::default(), 60);
        let cfg = InboundConfig::new(
            "c".into(),
            NodeId::from_u64(1),
            store.clone(),
            Arc::new(AtomicBool::new(true)),
        );
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            cfg,
            Arc::new(Metrics::default()),
            stop.clone(),
        ));
        // Three frames in one write: they arrive together and are answered together.
        let ids: Vec<SessionId> = (0..3).map(|_| SessionId::random()).collect();
        let mut bytes = Vec::new();
        for (seq, id) in (1..).zip(&ids) {
            let now = clock::now_ms();
            let body = FrameBody::Deltas {
                seq,
                deltas: vec![Delta::new(*id, now, now)],
            };
            let frame = wire::encode_frame("c", NodeId::from_u64(2), &body);
            bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&frame);
        }
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        raw.write_all(&bytes).await.expect("write");
        let mut stream =
            tokio_util::codec::Framed::new(raw, tokio_util::codec::LengthDelimitedCodec::new());
        // Acks are cumulative: however the frames were split by the network, the answers are
        // increasing and the last one covers the third frame.
        let mut acked = 0;
        while acked < 3 {
            let frame = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an ack within 10 s: the last frame must be acknowledged")
                .expect("an answer")
                .expect("ok");
            match wire::decode_frame(&frame, "c") {
                Ok((_, FrameBody::Ack(seq))) => {
                    assert!(seq > acked, "acks increase: {seq} after {acked}");
                    acked = seq;
                }
                other => panic!("expected an ack, got {other:?}"),
            }
        }
        assert_eq!(acked, 3);
        assert!(
            ids.iter().all(|id| store.contains(*id)),
            "every delta applied before its ack"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_first_frame_timeout_and_counted() {
        let (addr, metrics, stop) = start().await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(
            silent.read(&mut buf).await.expect("read"),
            0,
            "closed, not answered"
        );
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert_eq!(metrics.replication.errors.get(), 1);
        stop.cancel();
    }

    /// A connection that proved itself with a ping, kept open.
    async fn proven(addr: SocketAddr) -> FramedStream {
        let mut stream = transport::connect(addr, None, NodeId::from_u64(2), NodeId::from_u64(1))
            .await
            .expect("connect");
        let ping = wire::encode_frame("c", NodeId::from_u64(2), &FrameBody::Ping(1));
        stream.send(ping).await.expect("send");
        stream.next().await.expect("a pong").expect("ok");
        stream
    }

    #[tokio::test(start_paused = true)]
    async fn a_proven_connection_may_idle_past_the_first_frame_timeout() {
        let (addr, metrics, stop) = start().await;
        let mut link = proven(addr).await;
        let idle = tokio::time::timeout(Duration::from_secs(60), link.next()).await;
        assert!(idle.is_err(), "still open after a minute: {idle:?}");
        assert_eq!(metrics.replication.errors.get(), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn silent_connections_from_one_address_reach_their_cap_while_proven_ones_do_not_count() {
        let (addr, metrics, stop) = start_with(|cfg| {
            cfg.max_unproven_per_address = 2;
            cfg.first_frame_timeout = Duration::from_secs(60);
        })
        .await;
        let mut links = Vec::new();
        for _ in 0..4 {
            links.push(proven(addr).await);
        }
        refused_while_held_then_served(addr, &metrics).await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_frame_that_stalls_after_a_valid_ping_closes_its_connection_and_is_counted() {
        let (addr, metrics, stop) = start_with(|cfg| {
            cfg.frames.grace = Duration::from_millis(300);
            cfg.frames.silence = Duration::from_millis(300);
        })
        .await;
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        let ping = wire::encode_frame("c", NodeId::from_u64(2), &FrameBody::Ping(1));
        let mut bytes = (ping.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&ping);
        // Then 16 MiB announced, and 100 KiB of it.
        bytes.extend_from_slice(&(wire::MAX_FRAME as u32).to_be_bytes());
        bytes.resize(bytes.len() + 100 * 1024, 0);
        raw.write_all(&bytes).await.expect("write");
        let started = tokio::time::Instant::now();
        let mut answer = Vec::new();
        // Ended (an end of stream or a reset), not held for the idle timeout.
        let _ended = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut answer))
            .await
            .expect("closed within seconds");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(metrics.replication.errors.get(), 1);
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
