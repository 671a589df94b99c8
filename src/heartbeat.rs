//! The async driver of membership: sends heartbeats on an interval, feeds received ones to
//! the member table, verifies suspects over TCP, publishes the view, and announces the
//! leave on shutdown. All decisions are the table's; this file only moves bytes and time.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::membership::{
    Announce, Event, Heartbeat, MemberInfo, MemberTable, MembershipView, NodeId, Strangers, Timing,
    Verdict,
};
use crate::metrics::Metrics;
use crate::throttle::LogThrottle;
use crate::transport::{self, Datagrams, Streams};
use crate::wire::seal::{ClusterKey, DatagramSeal, SealError};
use crate::wire::{self, FrameBody, MAX_DATAGRAM, WireError};

/// Where heartbeats go.
#[derive(Debug)]
pub enum Peers {
    /// The multicast group of the socket.
    Group,
    /// Static members and the peers of `membership.dns` (kept resolved by
    /// [`transport::keep_discovering`]); members heard
    /// from outside the list are answered too.
    Static(watch::Receiver<Vec<SocketAddr>>),
}

/// What the driver needs to know.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    pub cluster: String,
    pub me: MemberInfo,
    pub timing: Timing,
    /// How long a verification may take before it counts as no answer.
    pub verify_timeout: Duration,
    /// Interval of the log throttles, per sender or per kind of notice.
    pub log_interval: Duration,
    /// Listen only (the balancer): never send a heartbeat, an answer or a leave, so the
    /// members never list this process.
    pub observer: bool,
    /// The cluster key: heartbeats and verifications are sealed with it.
    pub key: Option<ClusterKey>,
    /// How verifications reach a member's replication port.
    pub streams: Streams,
    /// Whether the node serves yet (its state transfer is done): until it does, its
    /// heartbeats say `Joining`, so a balancer keeps it out of rotation. None: always.
    pub serving: Option<Arc<AtomicBool>>,
}

impl HeartbeatConfig {
    pub fn new(
        cluster: String,
        me: MemberInfo,
        heartbeat: Duration,
        drop_after: Duration,
    ) -> HeartbeatConfig {
        HeartbeatConfig {
            cluster,
            me,
            timing: Timing::new(heartbeat, drop_after),
            // Long enough for a loaded machine to answer, short enough to re-verify often.
            verify_timeout: heartbeat.clamp(Duration::from_millis(250), Duration::from_secs(1)),
            log_interval: drop_after.max(Duration::from_secs(10)),
            observer: false,
            key: None,
            streams: Streams::Tcp,
            serving: None,
        }
    }

    /// What a heartbeat sent now announces: `Joining` until the node serves, then `Alive`.
    pub fn presence(&self) -> Announce {
        match &self.serving {
            Some(serving) if !serving.load(Ordering::Acquire) => Announce::Joining,
            _ => Announce::Alive,
        }
    }
}

/// Runs until `shutdown` is cancelled, then sends the leaving heartbeat and returns.
pub async fn run<D: Datagrams>(
    cfg: HeartbeatConfig,
    datagrams: D,
    peers: Peers,
    metrics: Arc<Metrics>,
    view: watch::Sender<MembershipView>,
    suspicions: mpsc::Receiver<NodeId>,
    shutdown: CancellationToken,
) {
    let mut driver = Driver {
        seal: cfg
            .key
            .clone()
            .map(|key| DatagramSeal::new(key, cfg.me.id.as_u64())),
        suspicions,
        strangers: Strangers::new(cfg.timing.heartbeat, cfg.verify_timeout),
        admissions: JoinSet::new(),
        table: MemberTable::new(cfg.me.id, cfg.timing),
        bad_senders: LogThrottle::new(cfg.log_interval),
        notices: LogThrottle::new(cfg.log_interval),
        cfg,
        datagrams,
        peers,
        metrics,
        view,
        seq: 0,
        verifications: JoinSet::new(),
        last_answer: None,
        answer_at: None,
        announced: None,
    };
    driver.run(shutdown).await;
}

struct Driver<D> {
    cfg: HeartbeatConfig,
    /// With a key: senders proving they are alive before they are believed.
    strangers: Strangers,
    admissions: JoinSet<(NodeId, Verdict)>,
    /// Seals sent heartbeats and opens received ones, with a key.
    seal: Option<DatagramSeal>,
    /// Members other parts suspect (a broken replication link, a missing ack).
    suspicions: mpsc::Receiver<NodeId>,
    table: MemberTable,
    datagrams: D,
    peers: Peers,
    metrics: Arc<Metrics>,
    view: watch::Sender<MembershipView>,
    /// Bad datagrams: logged once per sender per interval.
    /// By address, not port: a sender opening a socket per datagram is still one sender.
    bad_senders: LogThrottle<IpAddr>,
    /// Other recurring notices (name conflicts, a full table, socket errors), per kind.
    notices: LogThrottle<String>,
    seq: u64,
    verifications: JoinSet<(NodeId, Verdict)>,
    /// When the last early heartbeat (the answer to a newcomer) went out.
    last_answer: Option<Instant>,
    /// An early heartbeat is due at this instant.
    answer_at: Option<tokio::time::Instant>,
    /// What the last heartbeat announced: when a joining node starts serving, it says so
    /// at once rather than a whole interval later.
    announced: Option<Announce>,
}

/// Early heartbeats for newcomers go out at most this often, so a burst of joins (or a
/// flood of forged ones) costs one datagram per interval, yet every newcomer hears us
/// within this long instead of up to a whole heartbeat interval.
const ANSWER_SPACING: Duration = Duration::from_millis(20);

impl<D: Datagrams> Driver<D> {
    async fn run(&mut self, shutdown: CancellationToken) {
        let heartbeat = self.cfg.timing.heartbeat;
        let mut send_every = tokio::time::interval(heartbeat);
        send_every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut check_every = tokio::time::interval((heartbeat / 5).max(Duration::from_millis(10)));
        check_every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        info!(id = %self.cfg.me.id, name = %self.cfg.me.name, peers = ?self.peers, "membership started");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = send_every.tick(), if !self.cfg.observer => self.send(self.cfg.presence()).await,
                _ = sleep_until_some(self.answer_at), if self.answer_at.is_some() => {
                    self.answer_at = None;
                    self.last_answer = Some(now());
                    self.send(self.cfg.presence()).await;
                }
                _ = check_every.tick() => {
                    if self.announced == Some(Announce::Joining)
                        && self.cfg.presence() == Announce::Alive
                    {
                        self.send(Announce::Alive).await;
                    }
                    self.strangers.tick(now());
                    let events = self.table.tick(now());
                    self.handle(events);
                    self.publish();
                }
                received = self.datagrams.recv(&mut buf) => match received {
                    Ok((len, from)) => {
                        let events = self.on_datagram(&buf[..len], from);
                        self.handle(events);
                    }
                    Err(e) => self.on_recv_error(e).await,
                },
                Some(id) = self.suspicions.recv() => {
                    let events = self.table.on_suspicion(id, now());
                    self.handle(events);
                }
                Some(done) = self.admissions.join_next(), if !self.admissions.is_empty() => {
                    if let Ok((id, verdict)) = done {
                        debug!(member = %id, ?verdict, "proof of life done");
                        let events = self.on_admission(id, verdict);
                        self.handle(events);
                    }
                }
                Some(done) = self.verifications.join_next(), if !self.verifications.is_empty() => {
                    if let Ok((id, verdict)) = done {
                        debug!(member = %id, ?verdict, "verification done");
                        let events = self.table.on_verdict(id, verdict, now());
                        self.handle(events);
                    }
                }
            }
        }
        self.verifications.abort_all();
        self.admissions.abort_all();
        if self.cfg.observer {
            info!("stopped listening to the cluster");
            return;
        }
        // Twice: one lost datagram must not turn a clean leave into a slow drop.
        self.send(Announce::Leaving).await;
        self.send(Announce::Leaving).await;
        info!(name = %self.cfg.me.name, "left the cluster");
    }

    /// Where a heartbeat goes now: the group, or the static peers plus every member heard
    /// from (so a node added later that lists everyone is answered by all), never ourselves.
    fn targets(&self) -> Vec<SocketAddr> {
        match &self.peers {
            Peers::Group => self.datagrams.group().into_iter().collect(),
            Peers::Static(list) => {
                let mut targets: Vec<SocketAddr> = list.borrow().clone();
                for m in self.table.members() {
                    if !targets.contains(&m.info.replication) {
                        targets.push(m.info.replication);
                    }
                }
                targets.retain(|t| *t != self.cfg.me.replication);
                targets
            }
        }
    }

    async fn send(&mut self, announce: Announce) {
        self.seq += 1;
        self.announced = Some(announce);
        let hb = Heartbeat {
            info: self.cfg.me.clone(),
            announce,
            seq: self.seq,
        };
        let bytes = wire::encode_heartbeat(
            &self.cfg.cluster,
            &hb,
            self.cfg.timing.heartbeat,
            self.seal.as_mut(),
        );
        for target in self.targets() {
            match self.datagrams.send_to(&bytes, target).await {
                Ok(()) => self.metrics.membership.heartbeats_sent.inc(),
                Err(e) => {
                    if self.notices.allow(&format!("send {target}"), now()) {
                        warn!(%target, error = %e, "heartbeat send failed");
                    }
                }
            }
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> Vec<Event> {
        let now = now();
        match wire::decode_datagram(bytes, &self.cfg.cluster, self.seal.as_mut()) {
            Ok(hb) if hb.info.id == self.cfg.me.id => Vec::new(),
            Ok(hb) => {
                self.metrics.membership.heartbeats_received.inc();
                if hb.info.name == self.cfg.me.name
                    && self.notices.allow(&format!("own name {}", hb.info.id), now)
                {
                    warn!(%from, other = %hb.info.id, name = %hb.info.name, "another member uses this node's name");
                }
                if self.seal.is_some() && self.table.get(hb.info.id).is_none() {
                    self.on_stranger(hb, now);
                    return Vec::new();
                }
                let events = self.table.on_heartbeat(hb, now);
                // Fresh "last heard" figures for /status.
                self.publish();
                events
            }
            Err(e) => {
                let m = &self.metrics.membership;
                match e {
                    WireError::TooLarge { .. } => m.dropped_oversized.inc(),
                    WireError::ForeignCluster(_) => m.dropped_foreign_cluster.inc(),
                    WireError::Seal(SealError::Replayed) => m.dropped_replayed.inc(),
                    WireError::Seal(_) => m.dropped_unauthenticated.inc(),
                    _ => m.dropped_malformed.inc(),
                }
                if self.bad_senders.allow(&from.ip(), now) {
                    warn!(%from, reason = e.kind(), error = %e, "dropped datagram (more from this sender are counted, not logged, for a while)");
                }
                Vec::new()
            }
        }
    }

    /// With a key, a heartbeat of a sender not in the table is believed only once the
    /// sender proves it is alive now (see [`Strangers`]): it answers a ping on its
    /// replication port, over a connection whose keys depend on fresh random bytes of ours
    /// and on its id.
    fn on_stranger(&mut self, hb: Heartbeat, now: Instant) {
        let Some((id, addr)) = self.strangers.heard(hb, now) else {
            return;
        };
        let cluster = self.cfg.cluster.clone();
        let key = self.cfg.key.clone();
        let me = self.cfg.me.id;
        let timeout = self.cfg.verify_timeout;
        let streams = self.cfg.streams.clone();
        self.admissions.spawn(async move {
            let verdict =
                verify_over(&streams, addr, &cluster, key.as_ref(), me, id, timeout).await;
            (id, verdict)
        });
    }

    /// The end of a stranger's proof of life: admitted with its newest heartbeat, or not.
    fn on_admission(&mut self, id: NodeId, verdict: Verdict) -> Vec<Event> {
        let now = now();
        match self.strangers.proved(id, verdict, now) {
            None => Vec::new(),
            Some(Err(hb)) => {
                // One line per interval for all of them: a flood of replays is not one of logs.
                if self.notices.allow(&"stranger".to_string(), now) {
                    warn!(member = %id, name = %hb.info.name, replication = %hb.info.replication, ?verdict, "heard a member that does not answer on its replication port: not admitted (a replay of a node that is gone, or its replication port cannot be reached from here)");
                }
                Vec::new()
            }
            Some(Ok(hb)) => {
                let events = self.table.on_heartbeat(hb, now);
                if self.table.get(id).is_none() {
                    // The table refused it (full, an older incarnation of a taken name,
                    // quarantined): its next heartbeats wait an interval, as a failed proof's.
                    self.strangers.turn_away(id, now);
                }
                self.publish();
                events
            }
        }
    }

    async fn on_recv_error(&mut self, e: io::Error) {
        if self.notices.allow(&"recv".to_string(), now()) {
            warn!(error = %e, "heartbeat receive failed");
        }
        // Never spin on a persistent socket error.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fn handle(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let now = now();
        let mut answer_now = false;
        for event in events {
            match event {
                Event::Joined(info) => {
                    self.metrics.membership.joined.inc();
                    info!(member = %info.id, name = %info.name, http = %info.http, replication = %info.replication, "member joined");
                    answer_now = true;
                }
                Event::Suspected(id) => info!(member = %id, "member suspect, verifying"),
                Event::Recovered(id) => info!(member = %id, "member alive again"),
                Event::Dropped { info, reason } => {
                    self.metrics.membership.dropped_members.inc();
                    info!(member = %info.id, name = %info.name, reason = reason.as_str(), "member dropped");
                }
                Event::Verify { id, addr } => {
                    self.metrics.membership.verifications.inc();
                    let cluster = self.cfg.cluster.clone();
                    let me = self.cfg.me.id;
                    let timeout = self.cfg.verify_timeout;
                    let key = self.cfg.key.clone();
                    let streams = self.cfg.streams.clone();
                    self.verifications.spawn(async move {
                        let verdict =
                            verify_over(&streams, addr, &cluster, key.as_ref(), me, id, timeout)
                                .await;
                        (id, verdict)
                    });
                }
                Event::NameConflict {
                    name,
                    kept,
                    ignored,
                } => {
                    if self.notices.allow(&format!("conflict {name}"), now) {
                        warn!(%name, %kept, %ignored, "ignored an older incarnation under a taken name");
                    }
                }
                Event::TableFull { ignored } => {
                    if self.notices.allow(&"table full".to_string(), now) {
                        warn!(%ignored, "member table full, ignoring new members");
                    }
                }
            }
        }
        self.publish();
        // A newcomer learns of us at once instead of after up to one interval.
        if answer_now && !self.cfg.observer && self.answer_at.is_none() {
            let earliest = self.last_answer.map_or(now, |at| at + ANSWER_SPACING);
            self.answer_at = Some(tokio::time::Instant::from_std(earliest.max(now)));
        }
    }

    fn publish(&self) {
        let now = now();
        self.view
            .send_replace(MembershipView::new(now, self.table.view(now)));
    }
}

/// The driver's clock: tokio's, so that under paused time (tests of in-process nodes) the
/// member table ages as the timers run; outside of tests it reads the same as the system's.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Verifies a suspect on its replication port over TCP; see [`verify_over`].
pub async fn verify(
    addr: SocketAddr,
    cluster: &str,
    key: Option<&ClusterKey>,
    me: NodeId,
    suspect: NodeId,
    timeout: Duration,
) -> Verdict {
    verify_over(&Streams::Tcp, addr, cluster, key, me, suspect, timeout).await
}

/// Verifies a suspect on its replication port, reached through `streams`: it must answer a
/// ping with its own id. A bare TCP accept (the kernel's, for a frozen process) is not an
/// answer.
pub async fn verify_over(
    streams: &Streams,
    addr: SocketAddr,
    cluster: &str,
    key: Option<&ClusterKey>,
    me: NodeId,
    suspect: NodeId,
    timeout: Duration,
) -> Verdict {
    let attempt = async {
        let mut stream = match streams.connect(addr, key, me, suspect).await {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Verdict::Refused,
            // Another node (a restart) on that port: the suspect is gone, as below.
            Err(e) if transport::seal_error(&e) == Some(SealError::WrongPeer) => {
                return Verdict::Refused;
            }
            Err(_) => return Verdict::NoAnswer,
        };
        let nonce = rand::random::<u64>();
        if stream
            .send(wire::encode_frame(cluster, me, &FrameBody::Ping(nonce)))
            .await
            .is_err()
        {
            return Verdict::NoAnswer;
        }
        while let Some(Ok(frame)) = stream.next().await {
            if let Ok((sender, FrameBody::Pong(n))) = wire::decode_frame(&frame, cluster) {
                if n == nonce {
                    // Another process (a restart) on that port means the suspect is gone.
                    return if sender == suspect {
                        Verdict::Answered
                    } else {
                        Verdict::Refused
                    };
                }
            }
        }
        Verdict::NoAnswer
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Verdict::NoAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_millis(500);

    #[test]
    fn a_node_announces_joining_until_its_state_transfer_is_done() {
        let me = MemberInfo {
            id: NodeId::from_u64(1),
            name: "n1".into(),
            http: "127.0.0.1:8081".parse().unwrap(),
            replication: "127.0.0.1:4001".parse().unwrap(),
            incarnation: 1,
        };
        let mut cfg = HeartbeatConfig::new("c".into(), me, T, T * 6);
        assert_eq!(cfg.presence(), Announce::Alive, "no flag: always serving");
        let serving = Arc::new(AtomicBool::new(false));
        cfg.serving = Some(serving.clone());
        assert_eq!(cfg.presence(), Announce::Joining);
        serving.store(true, Ordering::Release);
        assert_eq!(cfg.presence(), Announce::Alive);
    }

    /// What a member's replication port does with pings (cluster "c", no key): answers each
    /// with a pong carrying its own id, and closes at a frame it cannot decode. Written out
    /// here so that membership's tests need no replication port.
    async fn responder(id: u64) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let me = NodeId::from_u64(id);
        let serving = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = serving.cancelled() => return,
                    accepted = listener.accept() => accepted.expect("accept"),
                };
                tokio::spawn(async move {
                    let Ok(mut stream) = transport::accept(stream, None, me).await else {
                        return;
                    };
                    while let Some(Ok(frame)) = stream.next().await {
                        let Ok((_, FrameBody::Ping(nonce))) = wire::decode_frame(&frame, "c")
                        else {
                            return;
                        };
                        let pong = wire::encode_frame("c", me, &FrameBody::Pong(nonce));
                        if stream.send(pong).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, stop)
    }

    #[tokio::test]
    async fn a_live_member_answers_verification() {
        let (addr, stop) = responder(7).await;
        let verdict = verify(addr, "c", None, NodeId::from_u64(1), NodeId::from_u64(7), T).await;
        assert_eq!(verdict, Verdict::Answered);
        stop.cancel();
    }

    #[tokio::test]
    async fn nothing_listening_is_refused() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let verdict = verify(addr, "c", None, NodeId::from_u64(1), NodeId::from_u64(7), T).await;
        assert_eq!(verdict, Verdict::Refused);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_accept_by_the_kernel_is_no_answer() {
        // A bound, listening socket nobody accepts from: what a frozen process looks like.
        let frozen = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = frozen.local_addr().expect("addr");
        let verdict = verify(addr, "c", None, NodeId::from_u64(1), NodeId::from_u64(7), T).await;
        assert_eq!(verdict, Verdict::NoAnswer);
    }

    #[tokio::test]
    async fn another_process_on_the_port_means_the_suspect_is_gone() {
        let (addr, stop) = responder(8).await;
        let verdict = verify(addr, "c", None, NodeId::from_u64(1), NodeId::from_u64(7), T).await;
        assert_eq!(verdict, Verdict::Refused);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_member_of_another_cluster_on_the_port_is_no_answer() {
        let (addr, stop) = responder(7).await;
        let verdict = verify(
            addr,
            "other",
            None,
            NodeId::from_u64(1),
            NodeId::from_u64(7),
            T,
        )
        .await;
        assert_eq!(verdict, Verdict::NoAnswer);
        stop.cancel();
    }
}
