//! Replication over TCP between members: one ordered link per peer carrying deltas and
//! access times out, acknowledgements back; the inbound side applies what arrives through
//! the store's versioned merge. The same port answers the failure detector's pings, serves
//! state transfers to joining nodes and anti-entropy digests.

mod chunk;
mod entropy;
mod inbound;
mod outbound;
pub mod transfer;

pub use inbound::{InboundConfig, serve};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::clock;
use crate::config::ReplicationMode;
use crate::membership::{MemberInfo, MemberState, MembershipView, NodeId};
use crate::metrics::Metrics;
use crate::session::{Delta, SessionStore};
use crate::transport::Streams;
use crate::wire;
use crate::wire::seal::ClusterKey;
use outbound::Outgoing;

/// How replication behaves.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub cluster: String,
    pub me: NodeId,
    pub mode: ReplicationMode,
    /// How long a sync write waits for each alive member's acknowledgement.
    pub ack_timeout: Duration,
    /// Deltas queued per peer at most; beyond, the peer is resynchronised later.
    pub queue: usize,
    /// How often access times of touched sessions are sent.
    pub access_every: Duration,
    /// How often expired sessions and old tombstones are swept.
    pub sweep_every: Duration,
    /// The cluster key: links are sealed with it.
    pub key: Option<ClusterKey>,
    /// How links reach the members.
    pub streams: Streams,
}

impl ReplicationConfig {
    pub fn new(
        cluster: String,
        me: NodeId,
        mode: ReplicationMode,
        ack_timeout: Duration,
    ) -> ReplicationConfig {
        ReplicationConfig {
            cluster,
            me,
            mode,
            ack_timeout,
            queue: 10_000,
            access_every: Duration::from_millis(250),
            sweep_every: Duration::from_secs(1),
            key: None,
            streams: Streams::Tcp,
        }
    }
}

/// What the links share.
pub(crate) struct Context {
    pub cluster: String,
    pub key: Option<ClusterKey>,
    pub streams: Streams,
    pub me: NodeId,
    pub store: SessionStore,
    pub metrics: Arc<Metrics>,
    suspicions: mpsc::Sender<NodeId>,
    ready: Arc<AtomicBool>,
    /// Woken when a link has taken everything from its queue, or links went away: what
    /// [`Replicator::flush`] waits for.
    drained: Notify,
    /// How many flushes are waiting on `drained`. Almost always zero: a link that empties
    /// its queue then pays one load, not the lock `notify_waiters` takes (shared by every
    /// link).
    flushers: AtomicUsize,
}

impl Context {
    /// Called by a link after it took from its queue (and wrote what it took): wakes the
    /// waiting flushes once the queue is empty (a busy queue wakes nobody, and with no
    /// flush waiting an empty one wakes nobody either).
    pub fn taken(&self, queue: &mpsc::Receiver<outbound::Outgoing>) {
        if !queue.is_empty() {
            return;
        }
        // Pairs with the fence in `flush`: this link emptied the queue, then reads the
        // count; a flush counted itself, then reads the queues. With a SeqCst fence
        // between each write and the read after it, one of the two reads sees the other
        // side's write: either the flush sees this queue empty, or this link sees the
        // flush counted and wakes it. (The queue's own atomics are not SeqCst, hence
        // fences rather than SeqCst on the count alone.) A counted flush that has not made
        // its `Notified` yet loses nothing: the one it makes is either woken by this call
        // or made after it (tokio's Notify orders the two), and then reads this queue empty.
        fence(Ordering::SeqCst);
        if self.flushers.load(Ordering::SeqCst) > 0 {
            self.drained.notify_waiters();
        }
    }

    /// Tells membership that `id` may be gone (a broken link, a missing ack); it verifies.
    pub fn suspect(&self, id: NodeId) {
        let _ = self.suspicions.try_send(id);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// What one sync write waits for: the members that have not acknowledged it yet.
struct Acks {
    pending: Mutex<Vec<NodeId>>,
    /// Notified when `pending` becomes empty.
    all: Notify,
}

impl Acks {
    /// Waits for `members`; with none, it is done at once.
    fn new(members: Vec<NodeId>) -> Arc<Acks> {
        let acks = Arc::new(Acks {
            pending: Mutex::new(members),
            all: Notify::new(),
        });
        if acks.pending.lock().is_empty() {
            acks.all.notify_one();
        }
        acks
    }
}

/// One member's part of a sync write's wait, carried with the delta on that member's link
/// and dropped when the member acknowledged it (or when the delta will not reach it: the
/// link stopped because the member left, or the queue refused it). The last one to go
/// wakes the writer.
pub(crate) struct AckHandle {
    acks: Arc<Acks>,
    member: NodeId,
}

impl AckHandle {
    fn new(acks: &Arc<Acks>, member: NodeId) -> AckHandle {
        AckHandle {
            acks: acks.clone(),
            member,
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        let mut pending = self.acks.pending.lock();
        let before = pending.len();
        pending.retain(|m| *m != self.member);
        if pending.len() < before && pending.is_empty() {
            drop(pending);
            self.acks.all.notify_one();
        }
    }
}

struct Link {
    alive: bool,
    tx: mpsc::Sender<Outgoing>,
    resync: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// Sends every local change to the other members. Cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    cfg: Arc<ReplicationConfig>,
    ctx: Arc<Context>,
    links: Arc<RwLock<HashMap<NodeId, Link>>>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("mode", &self.cfg.mode)
            .field("links", &self.links.read().len())
            .finish()
    }
}

impl Replicator {
    /// `suspicions` goes to the membership driver.
    pub fn new(
        cfg: ReplicationConfig,
        store: SessionStore,
        metrics: Arc<Metrics>,
        suspicions: mpsc::Sender<NodeId>,
    ) -> Replicator {
        Replicator {
            ctx: Arc::new(Context {
                cluster: cfg.cluster.clone(),
                key: cfg.key.clone(),
                streams: cfg.streams.clone(),
                me: cfg.me,
                store,
                metrics,
                suspicions,
                ready: Arc::new(AtomicBool::new(false)),
                drained: Notify::new(),
                flushers: AtomicUsize::new(0),
            }),
            cfg: Arc::new(cfg),
            links: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    pub fn mode(&self) -> ReplicationMode {
        self.cfg.mode
    }

    /// Deltas queued for sending, over all links.
    pub fn queued(&self) -> u64 {
        self.links
            .read()
            .values()
            .map(|l| (l.tx.max_capacity() - l.tx.capacity()) as u64)
            .sum()
    }

    /// Whether the node holds the cluster's state (shared with the inbound side, which answers
    /// digests only then: a joining node would otherwise be sent everything twice).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ctx.ready.clone()
    }

    /// The node holds the cluster's state (state transfer done): anti-entropy may run, and
    /// runs now with every member.
    pub fn set_ready(&self) {
        self.ctx.ready.store(true, Ordering::Relaxed);
        for link in self.links.read().values() {
            link.resync.store(true, Ordering::Relaxed);
        }
    }

    /// Replicates one request's delta. In sync mode it returns once every alive member
    /// acknowledged it, or once the ack timeout passed (the laggards are then suspected and
    /// verified by membership); in async mode once it is queued.
    pub async fn replicate(&self, delta: Delta) {
        let sync = self.cfg.mode == ReplicationMode::Sync;
        let deadline = tokio::time::Instant::now() + self.cfg.ack_timeout;
        let mut full = Vec::new();
        let acks = {
            let links = self.links.read();
            if links.is_empty() {
                return;
            }
            // Encoded once, whatever the number of links.
            let encoded = wire::encode_delta(&delta);
            let acks = sync.then(|| {
                Acks::new(
                    links
                        .iter()
                        .filter(|(_, l)| l.alive)
                        .map(|(id, _)| *id)
                        .collect(),
                )
            });
            for (id, link) in links.iter() {
                let item = Outgoing::Delta {
                    delta: encoded.clone(),
                    ack: acks
                        .as_ref()
                        .filter(|_| link.alive)
                        .map(|acks| AckHandle::new(acks, *id)),
                };
                match link.tx.try_send(item) {
                    Ok(()) => {}
                    // A full queue holds the writer back (below), but never past the ack
                    // timeout; a dead member's queue is not waited for.
                    Err(mpsc::error::TrySendError::Full(item)) if link.alive => {
                        full.push((*id, link.tx.clone(), link.resync.clone(), item));
                    }
                    Err(_) => self.dropped(*id, link.alive, &link.resync),
                }
            }
            acks
        };
        for (id, tx, resync, item) in full {
            let sent = tokio::time::timeout_at(deadline, tx.send(item)).await;
            if !sent.is_ok_and(|r| r.is_ok()) {
                self.dropped(id, true, &resync);
            }
        }
        let Some(acks) = acks else { return };
        if tokio::time::timeout_at(deadline, acks.all.notified())
            .await
            .is_err()
        {
            for id in acks.pending.lock().iter() {
                debug!(member = %id, "no acknowledgement within the ack timeout; suspecting");
                self.ctx.suspect(*id);
            }
        }
    }

    /// A delta could not be queued for `id`: anti-entropy brings it over later.
    fn dropped(&self, id: NodeId, alive: bool, resync: &AtomicBool) {
        resync.store(true, Ordering::Relaxed);
        self.ctx.metrics.replication.errors.inc();
        if alive {
            warn!(member = %id, "replication queue full; member suspected and resynchronised later");
            self.ctx.suspect(id);
        }
    }

    /// Waits (at most `limit`) until every queue is empty, before leaving the cluster. When
    /// it has to wait, a link wakes it only after the batch that emptied its queue is
    /// written to the socket (not yet acknowledged): the link that empties last has its
    /// deltas on the wire when this returns. A batch that another link took and is still
    /// writing at that moment is not waited for, nor is one being written when it starts.
    pub async fn flush(&self, limit: Duration) {
        // Counted for as long as this flush waits (a timeout or a dropped future included),
        // so links wake it; counted before the queues are read (see `Context::taken`).
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.ctx.flushers.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&self.ctx.flushers);
        fence(Ordering::SeqCst);
        let _ = tokio::time::timeout(limit, async {
            loop {
                // Registered before the queues are looked at, so a link that empties its
                // queue in between still wakes this wait.
                let drained = self.ctx.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if self.queued() == 0 {
                    return;
                }
                drained.await;
            }
        })
        .await;
    }

    /// Keeps one link per member of `view`, sends access times and sweeps expired
    /// sessions, until `stop`.
    pub async fn run(self, mut view: watch::Receiver<MembershipView>, stop: CancellationToken) {
        let mut access = tokio::time::interval(self.cfg.access_every);
        let mut sweep = tokio::time::interval(self.cfg.sweep_every);
        let tasks = TaskTracker::new();
        loop {
            let members: Vec<(MemberInfo, bool)> = view
                .borrow_and_update()
                .members
                .iter()
                .map(|m| (m.info.clone(), m.state == MemberState::Alive))
                .collect();
            self.sync_links(members, &stop, &tasks);
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = view.changed() => if changed.is_err() { break },
                _ = access.tick() => self.send_access(),
                _ = sweep.tick() => {
                    let stats = self.ctx.store.sweep(clock::now_ms());
                    if stats.expired > 0 || stats.purged > 0 {
                        debug!(expired = stats.expired, purged = stats.purged, "swept sessions");
                    }
                }
            }
        }
        for (_, link) in self.links.write().drain() {
            link.stop.cancel();
        }
        self.ctx.drained.notify_waiters();
        tasks.close();
        tasks.wait().await;
    }

    fn sync_links(
        &self,
        members: Vec<(MemberInfo, bool)>,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let mut links = self.links.write();
        let before = links.len();
        links.retain(|id, link| {
            let keep = members.iter().any(|(m, _)| m.id == *id);
            if !keep {
                link.stop.cancel();
            }
            keep
        });
        if links.len() < before {
            // A member's queue left with it.
            self.ctx.drained.notify_waiters();
        }
        for (info, alive) in members {
            if let Some(link) = links.get_mut(&info.id) {
                link.alive = alive;
                continue;
            }
            let (tx, rx) = mpsc::channel(self.cfg.queue);
            let resync = Arc::new(AtomicBool::new(true));
            let link_stop = stop.child_token();
            tasks.spawn(outbound::run(
                self.ctx.clone(),
                info.clone(),
                rx,
                resync.clone(),
                link_stop.clone(),
            ));
            links.insert(
                info.id,
                Link {
                    alive,
                    tx,
                    resync,
                    stop: link_stop,
                },
            );
        }
    }

    fn send_access(&self) {
        let touched = self.ctx.store.take_accessed();
        if touched.is_empty() {
            return;
        }
        let touched = Arc::new(touched);
        for link in self.links.read().values() {
            // Access times are best effort: the next batch carries newer ones anyway.
            let _ = link.tx.try_send(Outgoing::Access(touched.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId::from_u64).collect()
    }

    #[test]
    fn a_sync_write_is_released_only_when_every_member_acked() {
        let acks = Acks::new(ids(3));
        let handles: Vec<AckHandle> = ids(3).iter().map(|m| AckHandle::new(&acks, *m)).collect();
        let mut wait = Box::pin(acks.all.notified());
        let mut handles = handles.into_iter();
        for left in [2, 1] {
            drop(handles.next());
            assert!(wait.as_mut().now_or_never().is_none());
            assert_eq!(acks.pending.lock().len(), left);
        }
        drop(handles.next());
        assert!(wait.as_mut().now_or_never().is_some());
        assert!(acks.pending.lock().is_empty());
    }

    #[test]
    fn the_members_that_did_not_ack_are_the_ones_left_pending() {
        let acks = Acks::new(ids(3));
        let first = AckHandle::new(&acks, NodeId::from_u64(1));
        let _third = AckHandle::new(&acks, NodeId::from_u64(3));
        // The second member's delta was never queued (its handle went with it).
        drop(AckHandle::new(&acks, NodeId::from_u64(2)));
        drop(first);
        assert_eq!(*acks.pending.lock(), vec![NodeId::from_u64(3)]);
        assert!(acks.all.notified().now_or_never().is_none());
    }

    #[test]
    fn all_acks_arriving_before_the_writer_waits_are_not_missed() {
        let acks = Acks::new(ids(2));
        drop(AckHandle::new(&acks, NodeId::from_u64(2)));
        drop(AckHandle::new(&acks, NodeId::from_u64(1)));
        assert!(acks.all.notified().now_or_never().is_some());
    }

    #[test]
    fn a_write_with_no_member_to_wait_for_is_released_at_once() {
        let acks = Acks::new(Vec::new());
        assert!(acks.all.notified().now_or_never().is_some());
    }

    /// A replicator with one link whose queue the test holds (as the link task would)
    /// and one delta queued on it.
    fn with_one_queued_delta() -> (Replicator, mpsc::Receiver<Outgoing>) {
        let cfg = ReplicationConfig::new(
            "c".into(),
            NodeId::from_u64(1),
            ReplicationMode::Async,
            Duration::from_secs(1),
        );
        let (suspicions, _) = mpsc::channel(1);
        let store = SessionStore::new(NodeId::from_u64(1), Default::default(), 60);
        let replicator = Replicator::new(cfg, store, Arc::new(Metrics::default()), suspicions);
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Outgoing::Access(Arc::new(Vec::new())))
            .expect("room in the queue");
        replicator.links.write().insert(
            NodeId::from_u64(2),
            Link {
                alive: true,
                tx,
                resync: Arc::new(AtomicBool::new(false)),
                stop: CancellationToken::new(),
            },
        );
        (replicator, rx)
    }

    /// Starts `flush(limit)`; the handle answers how long it waited.
    fn flushing(replicator: &Replicator, limit: Duration) -> tokio::task::JoinHandle<Duration> {
        let replicator = replicator.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            replicator.flush(limit).await;
            started.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_with_nothing_queued_returns_at_once() {
        let (replicator, mut rx) = with_one_queued_delta();
        rx.try_recv().expect("the queued delta");
        assert_eq!(replicator.queued(), 0);
        let waited = flushing(&replicator, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_returns_the_moment_a_link_takes_the_last_queued_delta() {
        let (replicator, mut rx) = with_one_queued_delta();
        let flush = flushing(&replicator, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!flush.is_finished(), "a delta is still queued");
        rx.try_recv().expect("the queued delta");
        replicator.ctx.taken(&rx);
        assert_eq!(flush.await.unwrap(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_returns_when_the_member_with_a_delta_still_queued_leaves() {
        let (replicator, _rx) = with_one_queued_delta();
        let flush = flushing(&replicator, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        replicator.sync_links(Vec::new(), &stop, &tasks);
        assert_eq!(flush.await.unwrap(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_gives_up_at_its_limit_when_no_link_takes_its_queue() {
        let (replicator, _rx) = with_one_queued_delta();
        let waited = flushing(&replicator, Duration::from_secs(2)).await.unwrap();
        assert_eq!(waited, Duration::from_secs(2));
        assert_eq!(replicator.queued(), 1);
    }

    /// Links wake flushes only while one is counted: a count left behind would make every
    /// later batch take the Notify's lock again.
    #[tokio::test(start_paused = true)]
    async fn a_flush_is_counted_as_waiting_only_until_it_ends_however_it_ends() {
        let (replicator, mut rx) = with_one_queued_delta();
        let flushers = || replicator.ctx.flushers.load(Ordering::SeqCst);
        // At its limit.
        let flush = flushing(&replicator, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flushers(), 1);
        flush.await.unwrap();
        assert_eq!(flushers(), 0);
        // Dropped while it waits.
        let flush = flushing(&replicator, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flushers(), 1);
        flush.abort();
        assert!(flush.await.unwrap_err().is_cancelled());
        assert_eq!(flushers(), 0);
        // Woken by the link that emptied its queue.
        let flush = flushing(&replicator, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flushers(), 1);
        rx.try_recv().expect("the queued delta");
        replicator.ctx.taken(&rx);
        flush.await.unwrap();
        assert_eq!(flushers(), 0);
    }
}

/// Links against a relay that sends them to another node than meant, with and without a
/// cluster key, and against a peer that refuses.
#[cfg(test)]
mod relayed_links {
    use super::*;
    use crate::config::ReplicationMode;
    use crate::membership::MemberView;
    use crate::session::{AttributeChange, SessionId, Version};
    use crate::wire::seal::{ClusterKey, Hello};
    use bytes::Bytes;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const A: NodeId = NodeId::from_u64(0xa);
    const B: NodeId = NodeId::from_u64(0xb);
    const C: NodeId = NodeId::from_u64(0xc);

    fn key() -> ClusterKey {
        ClusterKey::from_text("a key of the test cluster").unwrap()
    }

    fn store(id: NodeId) -> SessionStore {
        SessionStore::new(id, Default::default(), 600)
    }

    /// The replication port of `me`, serving `store`.
    async fn inbound(
        me: NodeId,
        store: SessionStore,
        key: Option<ClusterKey>,
        stop: &CancellationToken,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        serve_on(listener, me, store, key, stop);
        addr
    }

    /// Serves `me`'s replication port on `listener`.
    fn serve_on(
        listener: TcpListener,
        me: NodeId,
        store: SessionStore,
        key: Option<ClusterKey>,
        stop: &CancellationToken,
    ) {
        let mut cfg = InboundConfig::new("c".into(), me, store, Arc::new(AtomicBool::new(true)));
        cfg.key = key;
        tokio::spawn(serve(
            listener,
            cfg,
            Arc::new(Metrics::default()),
            stop.clone(),
        ));
    }

    /// A plain byte relay (no key): every connection to it is piped to `to`.
    async fn relay_to(to: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        addr
    }

    /// A's replicator (in sync mode), with B alive at `b_addr` as A sees it.
    fn replicator_of_a(
        b_addr: SocketAddr,
        key: Option<ClusterKey>,
        stop: &CancellationToken,
    ) -> (Replicator, SessionStore, mpsc::Receiver<NodeId>) {
        replicator_of_a_in(ReplicationMode::Sync, b_addr, key, stop, true)
    }

    fn replicator_of_a_in(
        mode: ReplicationMode,
        b_addr: SocketAddr,
        key: Option<ClusterKey>,
        stop: &CancellationToken,
        ready: bool,
    ) -> (Replicator, SessionStore, mpsc::Receiver<NodeId>) {
        let mut cfg = ReplicationConfig::new("c".into(), A, mode, Duration::from_secs(2));
        cfg.key = key;
        let (suspicions, suspected) = mpsc::channel(100_000);
        let store = store(A);
        let replicator =
            Replicator::new(cfg, store.clone(), Arc::new(Metrics::default()), suspicions);
        if ready {
            replicator.set_ready();
        }
        let view = MembershipView::new(
            std::time::Instant::now(),
            vec![MemberView {
                info: MemberInfo {
                    id: B,
                    name: "b".into(),
                    http: "127.0.0.1:1".parse().unwrap(),
                    replication: b_addr,
                    incarnation: 1,
                },
                state: MemberState::Alive,
                last_heard: Duration::ZERO,
                joining: false,
            }],
        );
        let (keep, view) = watch::channel(view);
        tokio::spawn(replicator.clone().run(view, stop.clone()));
        // The view's sender must outlive the test: dropping it would end the links.
        std::mem::forget(keep);
        (replicator, store, suspected)
    }

    /// Waits until the replicator has its link to B (a write before would wait for nobody).
    async fn linked(replicator: &Replicator) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while replicator.links.read().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no link to B within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn delta(id: SessionId) -> Delta {
        let now = clock::now_ms();
        let mut d = Delta::new(id, now, now);
        d.attributes.push(AttributeChange {
            name: "x".into(),
            value: Some(Bytes::from_static(b"v")),
            version: Version {
                counter: 1,
                node: A,
            },
        });
        d
    }

    /// Where a relay without the key sends A's link to B.
    #[derive(Clone, Copy, Debug)]
    enum Relay {
        /// Nowhere: A reaches B.
        None,
        /// Into A's own replication port.
        IntoA,
        /// To a third node, C.
        ToC,
    }

    /// Writes one session on A in sync mode; says whether B got it and whether A suspected B.
    async fn write_through(relay: Relay, key: Option<ClusterKey>) -> (bool, bool) {
        let stop = CancellationToken::new();
        let b_store = store(B);
        let a_port = inbound(A, store(A), key.clone(), &stop).await;
        let b_port = inbound(B, b_store.clone(), key.clone(), &stop).await;
        let c_port = inbound(C, store(C), key.clone(), &stop).await;
        let b_seen_by_a = match relay {
            Relay::None => b_port,
            Relay::IntoA => relay_to(a_port).await,
            Relay::ToC => relay_to(c_port).await,
        };
        let (replicator, _, mut suspected) = replicator_of_a(b_seen_by_a, key, &stop);
        linked(&replicator).await;
        let id = SessionId::random();
        replicator.replicate(delta(id)).await;
        let on_b = b_store.export(&[id]).len() == 1;
        let was_suspected = suspected.try_recv().is_ok();
        stop.cancel();
        (on_b, was_suspected)
    }

    #[tokio::test]
    async fn a_sync_write_reaches_the_member_before_it_returns() {
        assert_eq!(write_through(Relay::None, Some(key())).await, (true, false));
        assert_eq!(write_through(Relay::None, None).await, (true, false));
    }

    /// Before the ids were checked, A acknowledged its own deltas for B, or took C's acks
    /// for B's: the write returned at once, B never had it, and nobody was suspected.
    #[tokio::test]
    async fn a_link_relayed_to_another_node_is_not_taken_for_the_member() {
        let cases = [Relay::IntoA, Relay::ToC]
            .into_iter()
            .flat_map(|relay| [(relay, Some(key())), (relay, None)]);
        // Each case waits out the ack timeout: all at once, they wait it once.
        let outcomes = futures_util::future::join_all(cases.map(|(relay, key)| async move {
            let keyed = key.is_some();
            (relay, keyed, write_through(relay, key).await)
        }))
        .await;
        for (relay, keyed, (on_b, suspected)) in outcomes {
            assert!(!on_b, "{relay:?}, keyed {keyed}: B got the write");
            assert!(
                suspected,
                "{relay:?}, keyed {keyed}: the member behind the relay is suspected"
            );
        }
    }

    /// The other flush tests play the link by hand; here a real one, to a real replication
    /// port, must wake the flush when it has sent what was queued.
    #[tokio::test]
    async fn a_flush_is_woken_by_a_real_link_that_sends_the_queued_deltas() {
        let stop = CancellationToken::new();
        // B's port answers only once the flush waits: until then A's link is held in the
        // key's handshake (it needs B's hello), so the deltas stay queued.
        let b_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b_listener.local_addr().unwrap();
        let b_store = store(B);
        let (replicator, _, _suspected) =
            replicator_of_a_in(ReplicationMode::Async, b_addr, Some(key()), &stop, true);
        linked(&replicator).await;
        let ids: Vec<SessionId> = (0..3).map(|_| SessionId::random()).collect();
        for id in &ids {
            replicator.replicate(delta(*id)).await;
        }
        assert_eq!(
            replicator.queued(),
            3,
            "the link took deltas before B answered"
        );
        let flush = {
            let replicator = replicator.clone();
            tokio::spawn(async move { replicator.flush(Duration::from_secs(60)).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while replicator.ctx.flushers.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the flush did not start within 5 s"
            );
            tokio::task::yield_now().await;
        }
        serve_on(b_listener, B, b_store.clone(), Some(key()), &stop);
        let woken = tokio::time::timeout(Duration::from_secs(5), flush).await;
        assert!(
            woken.is_ok(),
            "the flush was not woken within 5 s of B answering; {} still queued",
            replicator.queued()
        );
        assert_eq!(replicator.queued(), 0);
        // And what was sent is B's.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while b_store.export(&ids).len() < ids.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B holds {} of the 3 sessions after 5 s",
                b_store.export(&ids).len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
    }

    /// Before a link greeted its peer, a joining node without a key (it has nothing to send
    /// until it holds the cluster's state) had its links closed as unproven at the peer's
    /// first-frame timeout, counted there as errors, and dialled again.
    #[tokio::test]
    async fn a_link_with_nothing_to_send_proves_itself_at_once() {
        let stop = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = InboundConfig::new("c".into(), B, store(B), Arc::new(AtomicBool::new(true)));
        cfg.first_frame_timeout = Duration::from_millis(300);
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(serve(listener, cfg, metrics.clone(), stop.clone()));
        // A is joining: not ready, so no digest either.
        let (replicator, _, _) =
            replicator_of_a_in(ReplicationMode::Sync, addr, None, &stop, false);
        linked(&replicator).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.replication.pings_answered.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B had no frame from A's link within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Three first-frame timeouts later, the one link is still the first one.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(metrics.replication.errors.get(), 0, "B closed A's link");
        assert_eq!(
            metrics.replication.pings_answered.get(),
            1,
            "A dialled B again"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_peer_that_completes_the_hello_then_closes_is_not_redialled_in_a_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, mut accepts) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                // Noted before the connection can fail, so the gaps below are never
                // shorter than the link's pauses.
                let _ = accepted.send(tokio::time::Instant::now());
                tokio::spawn(async move {
                    // What B with another key does: its hello, then close at the first frame.
                    let _ = s.write_all(&Hello::new(B.as_u64(), 0).encode()).await;
                    let mut buf = [0u8; 128];
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let stop = CancellationToken::new();
        let _a = replicator_of_a(addr, Some(key()), &stop);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut at = Vec::new();
        while at.len() < 5 {
            match tokio::time::timeout_at(deadline, accepts.recv()).await {
                Ok(Some(instant)) => at.push(instant),
                _ => panic!("{} connections within 10 s, expected 5", at.len()),
            }
        }
        stop.cancel();
        // Backing off from 50 ms, doubling (up to 2 s).
        for (i, pause_ms) in [50, 100, 200, 400].into_iter().enumerate() {
            let gap = at[i + 1] - at[i];
            assert!(
                gap >= Duration::from_millis(pause_ms),
                "attempt {} came {gap:?} after the one before, expected at least {pause_ms} ms",
                i + 2
            );
        }
    }

    /// A renamed a session while its link to B was down, and the change-id delta never
    /// reached B (a queue overflow, say); B still holds the old id live and wrote to it.
    /// When they meet, the link's anti-entropy leaves both with only the new id live and
    /// the old one a tombstone, and digests that agree.
    #[tokio::test]
    async fn anti_entropy_settles_a_change_id_the_other_member_missed() {
        let stop = CancellationToken::new();
        // B's port answers only later: until then A's link waits in the key's handshake.
        let b_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b_listener.local_addr().unwrap();
        let (_replicator, a_store, _suspected) =
            replicator_of_a_in(ReplicationMode::Async, b_addr, Some(key()), &stop, true);
        let b_store = store(B);
        let now = clock::now_ms();
        let made = a_store
            .update_or_create(None, now, |s| s.set("user", Bytes::from_static(b"ada")))
            .unwrap();
        let old = made.id;
        b_store.apply(made.delta.as_ref().unwrap(), now);
        let renamed = a_store.change_id(old, now + 1, |_| ()).unwrap();
        let new = renamed.id;
        let on_b = b_store.update(old, now + 2, |s| s.set("late", Bytes::from_static(b"1")));
        assert!(on_b.is_some_and(|u| u.value.is_ok()));
        assert_ne!(a_store.digest(), b_store.digest());
        serve_on(b_listener, B, b_store.clone(), Some(key()), &stop);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a_store.digest() != b_store.digest() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "A and B still disagree after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (name, s) in [("A", &a_store), ("B", &b_store)] {
            assert!(!s.contains(old), "{name} serves the old id");
            assert!(s.contains(new), "{name} lacks the new id");
            assert_eq!(s.len(), 1, "{name}");
            let user = s.update(new, now + 3, |m| m.get("user").cloned());
            assert_eq!(
                user.and_then(|u| u.value),
                Some(Bytes::from_static(b"ada")),
                "{name}"
            );
            // The old id is a tombstone: it is exported as an invalidation.
            let tombstone = s.export(&[old]);
            assert!(
                tombstone.len() == 1 && tombstone[0].invalidated,
                "{name}: {tombstone:?}"
            );
        }
        stop.cancel();
    }
}
