//! The async driver of membership: sends heartbeats on an interval, feeds received ones to
//! the member table, verifies suspects over TCP, publishes the view, and announces the
//! leave on shutdown. All decisions are the table's; this file only moves bytes and time.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::membership::{
    Announce, Event, Heartbeat, MemberInfo, MemberTable, MemberView, NodeId, Timing, Verdict,
};
use crate::metrics::Metrics;
use crate::throttle::LogThrottle;
use crate::transport::{self, Datagrams};
use crate::wire::seal::{ClusterKey, DatagramSeal, SealError};
use crate::wire::{self, FrameBody, MAX_DATAGRAM, WireError};

/// The members as last seen by the driver.
#[derive(Clone, Debug)]
pub struct MembershipView {
    pub taken_at: Instant,
    pub members: Vec<MemberView>,
}

impl MembershipView {
    pub fn empty() -> MembershipView {
        MembershipView {
            taken_at: Instant::now(),
            members: Vec::new(),
        }
    }

    /// Time since `member` was last heard, as of `now`.
    pub fn last_heard(&self, member: &MemberView, now: Instant) -> Duration {
        member.last_heard + now.saturating_duration_since(self.taken_at)
    }
}

/// Where heartbeats go.
#[derive(Debug)]
pub enum Peers {
    /// The multicast group of the socket.
    Group,
    /// Static members (kept resolved by [`transport::keep_resolving`]); members heard
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
        }
    }
}

/// Runs until `shutdown` is cancelled, then sends the leaving heartbeat and returns.
pub async fn run(
    cfg: HeartbeatConfig,
    datagrams: Datagrams,
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
    };
    driver.run(shutdown).await;
}

/// Proofs of life under way at once; heartbeats of more strangers wait for a free one.
/// A proof of a sender that is gone ends at once (refused) or within its timeout.
const MAX_STRANGERS: usize = 256;

/// Strangers whose proof failed, remembered so that their next heartbeats wait an interval.
/// Past this many, the oldest are forgotten (they are then simply proven again).
const MAX_TURNED_AWAY: usize = 4096;

/// With a key, the senders heard from that are not members yet: each must prove it is alive
/// (answer a sealed ping on its replication port) before its heartbeat is believed. A
/// recorded heartbeat replayed to a node that never saw it (a node started later, a
/// balancer, a window forgotten) would otherwise bring a dead member back. Pure: time is
/// passed in.
struct Strangers {
    /// Proofs under way: the sender's newest heartbeat (its leave, once it left: the proof
    /// keeps its place until its verdict, so the cap bounds the checks in flight), and when
    /// its proof began.
    proving: HashMap<NodeId, (Heartbeat, Instant)>,
    /// Senders whose proof failed (or that left, or the table refused), until they may try
    /// again on their next heartbeat.
    turned_away: HashMap<NodeId, Instant>,
    /// How long a sender is turned away: one heartbeat interval.
    retry_after: Duration,
    /// A proof older than this has ended without a verdict (its task is gone): dropped.
    longest: Duration,
}

impl Strangers {
    fn new(retry_after: Duration, proof_timeout: Duration) -> Strangers {
        Strangers {
            proving: HashMap::new(),
            turned_away: HashMap::new(),
            retry_after,
            longest: proof_timeout * 2 + retry_after,
        }
    }

    /// A heartbeat of a sender that is not a member. Returns the proof to start, if one
    /// must start now.
    fn heard(&mut self, hb: Heartbeat, now: Instant) -> Option<(NodeId, SocketAddr)> {
        let id = hb.info.id;
        if self.turned_away.get(&id).is_some_and(|until| now < *until) {
            return None;
        }
        if let Some((latest, _)) = self.proving.get_mut(&id) {
            if latest.announce == Announce::Leaving {
                return None;
            }
            if hb.announce == Announce::Leaving {
                latest.announce = Announce::Leaving;
            } else if hb.seq > latest.seq && hb.info.replication == latest.info.replication {
                // Only at the address being proven (an id keeps its addresses for life).
                *latest = hb;
            }
            return None;
        }
        if hb.announce == Announce::Leaving || self.proving.len() >= MAX_STRANGERS {
            return None;
        }
        let addr = hb.info.replication;
        self.proving.insert(id, (hb, now));
        Some((id, addr))
    }

    /// The verdict of `id`'s proof: its newest heartbeat if it answered (to give to the
    /// table); otherwise it is turned away for an interval. The heartbeat of a failed proof
    /// is returned as the error, for the log.
    fn proved(
        &mut self,
        id: NodeId,
        verdict: Verdict,
        now: Instant,
    ) -> Option<Result<Heartbeat, Heartbeat>> {
        let (hb, _) = self.proving.remove(&id)?;
        if hb.announce == Announce::Leaving {
            // It left while proving: whatever the verdict, it is not admitted.
            self.turn_away(id, now);
            return None;
        }
        if verdict == Verdict::Answered {
            return Some(Ok(hb));
        }
        self.turn_away(id, now);
        Some(Err(hb))
    }

    fn turn_away(&mut self, id: NodeId, now: Instant) {
        if self.turned_away.len() >= MAX_TURNED_AWAY {
            self.turned_away.retain(|_, until| now < *until);
            if self.turned_away.len() >= MAX_TURNED_AWAY {
                self.turned_away.clear();
            }
        }
        self.turned_away.insert(id, now + self.retry_after);
    }

    /// Forgets the turned-away senders whose interval is over, and proofs that outlived
    /// their timeout.
    fn tick(&mut self, now: Instant) {
        self.turned_away.retain(|_, until| now < *until);
        let longest = self.longest;
        self.proving
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < longest);
    }
}

struct Driver {
    cfg: HeartbeatConfig,
    /// With a key: senders proving they are alive before they are believed.
    strangers: Strangers,
    admissions: JoinSet<(NodeId, Verdict)>,
    /// Seals sent heartbeats and opens received ones, with a key.
    seal: Option<DatagramSeal>,
    /// Members other parts suspect (a broken replication link, a missing ack).
    suspicions: mpsc::Receiver<NodeId>,
    table: MemberTable,
    datagrams: Datagrams,
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
}

/// Early heartbeats for newcomers go out at most this often, so a burst of joins (or a
/// flood of forged ones) costs one datagram per interval, yet every newcomer hears us
/// within this long instead of up to a whole heartbeat interval.
const ANSWER_SPACING: Duration = Duration::from_millis(20);

impl Driver {
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
                _ = send_every.tick(), if !self.cfg.observer => self.send(Announce::Alive).await,
                _ = sleep_until_some(self.answer_at), if self.answer_at.is_some() => {
                    self.answer_at = None;
                    self.last_answer = Some(Instant::now());
                    self.send(Announce::Alive).await;
                }
                _ = check_every.tick() => {
                    self.strangers.tick(Instant::now());
                    let events = self.table.tick(Instant::now());
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
                    let events = self.table.on_suspicion(id, Instant::now());
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
                        let events = self.table.on_verdict(id, verdict, Instant::now());
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
                    if self
                        .notices
                        .allow(&format!("send {target}"), Instant::now())
                    {
                        warn!(%target, error = %e, "heartbeat send failed");
                    }
                }
            }
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> Vec<Event> {
        let now = Instant::now();
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
        self.admissions.spawn(async move {
            let verdict = verify(addr, &cluster, key.as_ref(), me, id, timeout).await;
            (id, verdict)
        });
    }

    /// The end of a stranger's proof of life: admitted with its newest heartbeat, or not.
    fn on_admission(&mut self, id: NodeId, verdict: Verdict) -> Vec<Event> {
        let now = Instant::now();
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
        if self.notices.allow(&"recv".to_string(), Instant::now()) {
            warn!(error = %e, "heartbeat receive failed");
        }
        // Never spin on a persistent socket error.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fn handle(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
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
                    self.verifications.spawn(async move {
                        let verdict = verify(addr, &cluster, key.as_ref(), me, id, timeout).await;
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
        let now = Instant::now();
        self.view.send_replace(MembershipView {
            taken_at: now,
            members: self.table.view(now),
        });
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Verifies a suspect on its replication port: it must answer a ping with its own id.
/// A bare TCP accept (the kernel's, for a frozen process) is not an answer.
pub async fn verify(
    addr: SocketAddr,
    cluster: &str,
    key: Option<&ClusterKey>,
    me: NodeId,
    suspect: NodeId,
    timeout: Duration,
) -> Verdict {
    let attempt = async {
        let mut stream = match transport::connect(addr, key, me, suspect).await {
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
    use crate::metrics::Metrics;
    use crate::replication::{self, InboundConfig};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_millis(500);

    async fn responder(id: u64) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let store = crate::session::SessionStore::new(NodeId::from_u64(id), Default::default(), 60);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cfg = InboundConfig::new("c".into(), NodeId::from_u64(id), store, ready);
        tokio::spawn(replication::serve(
            listener,
            cfg,
            Arc::new(Metrics::default()),
            stop.clone(),
        ));
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

#[cfg(test)]
mod strangers {
    use super::*;
    use crate::membership::MemberInfo;

    const INTERVAL: Duration = Duration::from_millis(100);
    const TIMEOUT: Duration = Duration::from_millis(250);

    fn hb(id: u64, seq: u64, announce: Announce) -> Heartbeat {
        Heartbeat {
            info: MemberInfo {
                id: NodeId::from_u64(id),
                name: format!("n{id}"),
                http: "127.0.0.1:1".parse().unwrap(),
                replication: "127.0.0.1:2".parse().unwrap(),
                incarnation: 1,
            },
            announce,
            seq,
        }
    }

    fn alive(id: u64, seq: u64) -> Heartbeat {
        hb(id, seq, Announce::Alive)
    }

    #[test]
    fn a_stranger_is_admitted_with_its_newest_heartbeat_once_it_answers() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        assert_eq!(
            s.heard(alive(1, 1), t0),
            Some((NodeId::from_u64(1), "127.0.0.1:2".parse().unwrap()))
        );
        // One proof at a time; later heartbeats only refresh what will be admitted.
        assert_eq!(s.heard(alive(1, 3), t0), None);
        assert_eq!(s.heard(alive(1, 2), t0), None);
        let admitted = s.proved(NodeId::from_u64(1), Verdict::Answered, t0);
        assert_eq!(admitted.map(|r| r.map(|hb| hb.seq)), Some(Ok(3)));
        assert_eq!(s.proved(NodeId::from_u64(1), Verdict::Answered, t0), None);
    }

    #[test]
    fn a_failed_proof_is_tried_again_one_interval_later() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        assert!(s.heard(alive(1, 1), t0).is_some());
        assert!(matches!(
            s.proved(NodeId::from_u64(1), Verdict::Refused, t0),
            Some(Err(_))
        ));
        assert_eq!(s.heard(alive(1, 2), t0 + INTERVAL / 2), None);
        s.tick(t0 + INTERVAL);
        assert!(s.heard(alive(1, 3), t0 + INTERVAL).is_some());
    }

    #[test]
    fn a_stranger_that_leaves_during_its_proof_is_not_admitted_by_it() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        assert!(s.heard(alive(1, 1), t0).is_some());
        assert_eq!(s.heard(hb(1, 2, Announce::Leaving), t0), None);
        assert_eq!(
            s.heard(alive(1, 3), t0),
            None,
            "no second proof while the first runs"
        );
        assert_eq!(s.proving.len(), 1, "its place is kept until the verdict");
        assert_eq!(s.proved(NodeId::from_u64(1), Verdict::Answered, t0), None);
        assert_eq!(
            s.heard(alive(1, 3), t0),
            None,
            "turned away for an interval"
        );
        // A leave from a sender never heard starts nothing.
        assert_eq!(s.heard(hb(2, 1, Announce::Leaving), t0), None);
    }

    #[test]
    fn many_senders_that_fail_their_proof_do_not_keep_a_live_one_out() {
        // Replayed heartbeats of many dead nodes: each proof is refused at once. Failed
        // ones must not hold the places of proofs under way.
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        let mut now = t0;
        for round in 0..20u64 {
            for dead in 1000..1000 + 2 * MAX_STRANGERS as u64 {
                if let Some((id, _)) = s.heard(alive(dead, round), now) {
                    s.proved(id, Verdict::Refused, now);
                }
            }
            now += INTERVAL / 4;
            s.tick(now);
        }
        assert!(
            s.heard(alive(1, 1), now).is_some(),
            "the live sender waits for nothing"
        );
    }

    #[test]
    fn a_proof_without_a_verdict_gives_its_place_back() {
        let t0 = Instant::now();
        let mut s = Strangers::new(INTERVAL, TIMEOUT);
        for id in 0..MAX_STRANGERS as u64 {
            assert!(s.heard(alive(id + 10, 1), t0).is_some());
        }
        assert_eq!(s.heard(alive(1, 1), t0), None, "all places taken");
        s.tick(t0 + TIMEOUT * 2 + INTERVAL);
        assert!(s.heard(alive(1, 1), t0 + TIMEOUT * 2 + INTERVAL).is_some());
    }
}
