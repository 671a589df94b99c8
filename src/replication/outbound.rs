//! One link per peer: an ordered TCP connection that carries this node's deltas and access
//! times to the peer and brings its acknowledgements back. Unacknowledged batches are sent
//! again after a reconnect (the merge is idempotent), and every reconnect or overflow is
//! followed by an anti-entropy exchange so nothing missed stays missed.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::chunk::chunk;
use super::entropy::{self, Repair};
use super::{AckHandle, Context};
use crate::clock;
use crate::membership::{MemberInfo, NodeId};
use crate::session::SessionId;
use crate::transport;
use crate::wire::{self, FrameBody, WireError};

/// What a link sends.
pub(crate) enum Outgoing {
    /// A delta, encoded once for every link (`wire::encode_delta`), and, in sync mode, this
    /// peer's part of the writer's wait, dropped once the peer acknowledged it.
    Delta {
        delta: Bytes,
        ack: Option<AckHandle>,
    },
    Access(Arc<Vec<(SessionId, u64)>>),
}

/// Batches sent but not yet acknowledged, most a link keeps in flight.
const WINDOW: usize = 64;
/// Most deltas in one frame.
const MAX_BATCH: usize = 256;
/// How often a link compares digests with its peer even when nothing looked wrong.
const ANTI_ENTROPY_EVERY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A frame of deltas in flight: kept until the peer acknowledges it, sent again after a
/// reconnect. Dropping it releases the writers waiting for it.
struct Batch {
    seq: u64,
    /// The frame as it was sent (a resend sends the same bytes).
    frame: Bytes,
    /// Held only to be dropped with the batch, which releases the waiting writers.
    _acks: Vec<AckHandle>,
}

enum Outcome {
    Stopped,
    Down(LinkError),
}

/// Why a link went down; it is dialled again either way.
#[derive(Debug, Error)]
pub(crate) enum LinkError {
    #[error("closed by the peer")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Not the member this link is for (a restart on its port, or traffic sent
    /// elsewhere): its acknowledgements mean nothing.
    #[error("answered by {answered}, not {expected}")]
    WrongPeer { answered: NodeId, expected: NodeId },
    #[error("bad frame: {0}")]
    BadFrame(WireError),
}

/// Runs the link to `peer` until `stop`.
pub(crate) async fn run(
    ctx: Arc<Context>,
    peer: MemberInfo,
    mut rx: mpsc::Receiver<Outgoing>,
    resync: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut unacked: VecDeque<Batch> = VecDeque::new();
    let mut seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = tokio::time::timeout(CONNECT_TIMEOUT, ctx.streams.connect(peer.replication, ctx.key.as_ref(), ctx.me, peer.id)) => c,
        };
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(peer = %peer.name, error = %e, "replication connect failed");
                ctx.suspect(peer.id);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                ctx.suspect(peer.id);
                continue;
            }
        };
        let up_since = Instant::now();
        debug!(peer = %peer.name, "replication link up");
        let mut link = Link {
            ctx: &ctx,
            peer: &peer,
            stream,
            unacked: &mut unacked,
            seq: &mut seq,
        };
        // Whatever was in flight may be lost; whatever overflowed is missing: compare.
        resync.store(true, Ordering::Relaxed);
        match link.serve(&mut rx, &resync, &stop).await {
            Outcome::Stopped => return,
            Outcome::Down(why) => {
                info!(peer = %peer.name, reason = %why, "replication link down");
                ctx.suspect(peer.id);
                // A link that held is dialled again at once. One that failed soon after it
                // came up (a peer that completes the handshake, then refuses: another key,
                // another node) backs off like a refused connection, instead of looping.
                if up_since.elapsed() >= BACKOFF_MAX {
                    backoff = BACKOFF_MIN;
                } else {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

struct Link<'a> {
    ctx: &'a Context,
    peer: &'a MemberInfo,
    stream: transport::FramedStream,
    unacked: &'a mut VecDeque<Batch>,
    seq: &'a mut u64,
}

impl Link<'_> {
    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<Outgoing>,
        resync: &AtomicBool,
        stop: &CancellationToken,
    ) -> Outcome {
        // Resend what was not acknowledged, in order.
        let resend: Vec<Bytes> = self.unacked.iter().map(|b| b.frame.clone()).collect();
        if resend.is_empty() {
            // Without a key, the peer's port counts a connection as a member's only after
            // its first valid frame, and closes (and counts) one silent for a few seconds;
            // a joining node may have nothing else to send for longer than that.
            if let Err(e) = self.send(&FrameBody::Ping(0)).await {
                return Outcome::Down(e);
            }
        }
        for frame in resend {
            if let Err(e) = self.send_bytes(frame).await {
                return Outcome::Down(e);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_digest: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Outcome::Stopped,
                frame = self.stream.next() => {
                    let body = match frame {
                        None => return Outcome::Down(LinkError::Closed),
                        Some(Err(e)) => return Outcome::Down(e.into()),
                        Some(Ok(bytes)) => {
                            self.ctx.metrics.replication.bytes_received.add(self.stream.codec().wire_len(bytes.len()));
                            match wire::decode_frame(&bytes, &self.ctx.cluster) {
                                Ok((sender, body)) if sender == self.peer.id => body,
                                Ok((sender, _)) => {
                                    self.ctx.metrics.replication.errors.inc();
                                    return Outcome::Down(LinkError::WrongPeer { answered: sender, expected: self.peer.id });
                                }
                                Err(e) => {
                                    self.ctx.metrics.replication.errors.inc();
                                    return Outcome::Down(LinkError::BadFrame(e));
                                }
                            }
                        }
                    };
                    if let Err(e) = self.on_answer(body).await {
                        return Outcome::Down(e);
                    }
                }
                item = rx.recv(), if self.unacked.len() < WINDOW => {
                    let Some(first) = item else { return Outcome::Stopped };
                    let sent = self.send_batch(first, rx).await;
                    // Sent or not, what was taken is out of the queue (kept for resending).
                    self.ctx.taken(rx);
                    if let Err(e) = sent {
                        return Outcome::Down(e);
                    }
                }
                _ = tick.tick() => {
                    let due = last_digest.is_none_or(|at| at.elapsed() >= ANTI_ENTROPY_EVERY);
                    if self.ctx.is_ready() && (resync.swap(false, Ordering::Relaxed) || due) {
                        last_digest = Some(Instant::now());
                        let digest = FrameBody::Digest(self.ctx.store.digest());
                        if let Err(e) = self.send(&digest).await {
                            return Outcome::Down(e);
                        }
                    }
                }
            }
        }
    }

    async fn send(&mut self, body: &FrameBody) -> Result<(), LinkError> {
        let bytes = wire::encode_frame(&self.ctx.cluster, self.ctx.me, body);
        self.send_bytes(bytes).await
    }

    async fn send_bytes(&mut self, bytes: Bytes) -> Result<(), LinkError> {
        self.ctx
            .metrics
            .replication
            .bytes_sent
            .add(self.stream.codec().wire_len(bytes.len()));
        Ok(self.stream.send(bytes).await?)
    }

    /// Sends `first` and whatever else is queued already, as one Deltas frame (and one
    /// Access frame): many writes cost one frame when they pile up.
    async fn send_batch(
        &mut self,
        first: Outgoing,
        rx: &mut mpsc::Receiver<Outgoing>,
    ) -> Result<(), LinkError> {
        // Let the request handlers that are ready to run queue their deltas first: under load
        // they then share this frame (and its write, and the peer's ack) instead of each
        // paying for its own. Idle, this costs one trip through the scheduler. Measured with
        // benches/session_layer (3 nodes in sync mode, 16 clients, 2 cores): about 6 deltas
        // a frame; without the yield the node spends ~9% more CPU a request; a second yield
        // or at most 1-2 frames in flight (instead of WINDOW) made no difference beyond noise.
        tokio::task::yield_now().await;
        let mut deltas = Vec::new();
        let mut acks = Vec::new();
        let mut access: Vec<(SessionId, u64)> = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Outgoing::Delta { delta, ack } => {
                    deltas.push(delta);
                    acks.extend(ack);
                }
                Outgoing::Access(times) => access.extend(times.iter().copied()),
            }
            next = if deltas.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !deltas.is_empty() {
            let count = deltas.len() as u64;
            self.send_deltas(deltas, acks).await?;
            self.ctx.metrics.replication.deltas_sent.add(count);
        }
        if !access.is_empty() {
            self.send(&FrameBody::Access(access)).await?;
        }
        Ok(())
    }

    /// Sends `deltas` as the next frame of the link and keeps the frame until acknowledged;
    /// if the link breaks meanwhile, it goes again after the reconnect.
    async fn send_deltas(
        &mut self,
        deltas: Vec<Bytes>,
        acks: Vec<AckHandle>,
    ) -> Result<(), LinkError> {
        *self.seq += 1;
        let seq = *self.seq;
        let frame = wire::encode_deltas_frame(&self.ctx.cluster, self.ctx.me, seq, deltas);
        self.unacked.push_back(Batch {
            seq,
            frame: frame.clone(),
            _acks: acks,
        });
        self.send_bytes(frame).await
    }

    async fn on_answer(&mut self, body: FrameBody) -> Result<(), LinkError> {
        match body {
            FrameBody::Ack(seq) => {
                // Dropping a batch releases the writers waiting for it.
                while self.unacked.front().is_some_and(|b| b.seq <= seq) {
                    self.unacked.pop_front();
                }
            }
            FrameBody::ShardEntries { shard, entries } => self.reconcile(shard, entries).await?,
            FrameBody::Deltas { deltas, .. } => {
                // Sessions we pulled.
                let now = clock::now_ms();
                self.ctx
                    .metrics
                    .replication
                    .deltas_received
                    .add(deltas.len() as u64);
                for d in &deltas {
                    self.ctx.store.apply(d, now);
                }
            }
            other => {
                debug!(peer = %self.peer.name, kind = other.kind(), "unexpected answer ignored")
            }
        }
        Ok(())
    }

    /// Anti-entropy for one shard whose digests differ: send what the peer misses or holds
    /// differently, and pull what we miss or hold differently. The merge sorts out which
    /// side is newer, so sending both ways is safe.
    async fn reconcile(
        &mut self,
        shard: u32,
        theirs: Vec<(SessionId, u64)>,
    ) -> Result<(), LinkError> {
        let Repair { push, pull } = entropy::repair(&self.ctx.store.shard_entries(shard), &theirs);
        if !push.is_empty() || !pull.is_empty() {
            debug!(peer = %self.peer.name, shard, push = push.len(), pull = pull.len(), "anti-entropy");
        }
        for deltas in chunk(self.ctx.store.export(&push)) {
            let deltas = deltas.iter().map(wire::encode_delta).collect();
            self.send_deltas(deltas, Vec::new()).await?;
        }
        if !pull.is_empty() {
            self.send(&FrameBody::Pull(pull)).await?;
        }
        Ok(())
    }
}
