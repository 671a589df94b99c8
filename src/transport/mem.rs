//! An in-memory network, so that several nodes run in one test process, deterministic
//! under tokio's paused time: hosts with addresses of their own, datagrams (unicast and
//! multicast groups) and reliable streams between them, and the faults a test sets: links
//! cut in both directions (partitions), datagrams lost at a rate (from a seeded generator)
//! or held back for a delay. Nothing is passed as a value: datagrams are the bytes sent,
//! streams carry the bytes the frame codec writes, so every message makes the round trip
//! through the real encoders and decoders.
//!
//! What a cut does is what a pulled cable does: datagrams across it are lost, a connection
//! attempt waits (its caller's timeout ends it), open streams stall until the link heals.
//! Closing an end is the one thing that passes a cut at once: the other end reads the end
//! of the stream, as it would after a process exit on a reachable host.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{Datagrams, MAX_UDP_PAYLOAD, Streams};

/// Bytes a stream buffers in each direction before a writer waits, as a socket buffer.
const STREAM_BUFFER: usize = 64 * 1024;
/// The first port handed out for port 0.
const FIRST_EPHEMERAL: u16 = 49_152;

/// The network: cheap to clone, every clone the same network.
#[derive(Clone)]
pub struct Network {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Told when a link heals, for connection attempts waiting on a cut.
    healed: Notify,
}

/// What happened to the datagrams sent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Copies put in a receiver's queue (one per member for a group).
    pub delivered: u64,
    /// Copies lost to a cut link.
    pub cut: u64,
    /// Copies lost to the drop rate.
    pub lost: u64,
}

struct State {
    rng: StdRng,
    drop_rate: f64,
    delay: Duration,
    /// Cut links, each as (lower address, higher address).
    cut: HashSet<(IpAddr, IpAddr)>,
    /// Unicast datagram sockets by address.
    sockets: HashMap<SocketAddr, Arc<Mailbox>>,
    /// Members of each group (group address and port), by socket.
    groups: HashMap<SocketAddr, Vec<(u64, IpAddr, Arc<Mailbox>)>>,
    listeners: HashMap<SocketAddr, mpsc::UnboundedSender<(MemStream, SocketAddr)>>,
    /// Streams that wait for a cut link to heal.
    stalled: Vec<Waker>,
    next_port: u16,
    next_id: u64,
    /// Orders datagrams that are due at the same instant as they were sent.
    next_seq: u64,
    stats: Stats,
}

impl State {
    fn is_cut(&self, a: IpAddr, b: IpAddr) -> bool {
        a != b && self.cut.contains(&ordered(a, b))
    }

    /// A port of `ip` that `taken` does not hold, for port 0.
    fn ephemeral(&mut self, ip: IpAddr, taken: impl Fn(&State, SocketAddr) -> bool) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_EPHEMERAL);
            if !taken(self, SocketAddr::new(ip, port)) {
                return port;
            }
        }
    }
}

fn ordered(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

fn addr_in_use(addr: SocketAddr) -> io::Error {
    io::Error::new(io::ErrorKind::AddrInUse, format!("{addr} is bound already"))
}

impl Network {
    /// A network whose losses follow `seed`, so that a run can be repeated exactly.
    pub fn new(seed: u64) -> Network {
        Network {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rng: StdRng::seed_from_u64(seed),
                    drop_rate: 0.0,
                    delay: Duration::ZERO,
                    cut: HashSet::new(),
                    sockets: HashMap::new(),
                    groups: HashMap::new(),
                    listeners: HashMap::new(),
                    stalled: Vec::new(),
                    next_port: FIRST_EPHEMERAL,
                    next_id: 0,
                    next_seq: 0,
                    stats: Stats::default(),
                }),
                healed: Notify::new(),
            }),
        }
    }

    /// The host with address `ip`: what it binds and opens is on that address.
    pub fn host(&self, ip: IpAddr) -> Host {
        Host {
            net: self.clone(),
            ip,
        }
    }

    /// Cuts every link between a host of `side` and a host of `rest`, in both directions.
    pub fn partition(&self, side: &[IpAddr], rest: &[IpAddr]) {
        let mut state = self.shared.state.lock();
        for a in side {
            for b in rest.iter().filter(|b| *b != a) {
                state.cut.insert(ordered(*a, *b));
            }
        }
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        let stalled = {
            let mut state = self.shared.state.lock();
            state.cut.clear();
            std::mem::take(&mut state.stalled)
        };
        stalled.into_iter().for_each(Waker::wake);
        self.shared.healed.notify_waiters();
    }

    /// Loses each datagram copy with probability `rate` (0 to 1).
    pub fn set_drop_rate(&self, rate: f64) {
        self.shared.state.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Holds each datagram back for `delay` (and each connection attempt for one trip).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state.lock().delay = delay;
    }

    pub fn stats(&self) -> Stats {
        self.shared.state.lock().stats
    }

    /// Puts a copy of `payload` from `from` in the queue of every socket at `to` (a socket's
    /// address or a group) across no cut, unless lost.
    fn send(&self, from: SocketAddr, payload: &[u8], to: SocketAddr) {
        let mut state = self.shared.state.lock();
        let receivers: Vec<(IpAddr, Arc<Mailbox>)> = match state.groups.get(&to) {
            Some(members) => members
                .iter()
                .map(|(_, ip, mailbox)| (*ip, mailbox.clone()))
                .collect(),
            None => state
                .sockets
                .get(&to)
                .map(|mailbox| (to.ip(), mailbox.clone()))
                .into_iter()
                .collect(),
        };
        let at = Instant::now() + state.delay;
        for (ip, mailbox) in receivers {
            if state.is_cut(from.ip(), ip) {
                state.stats.cut += 1;
                continue;
            }
            let drop_rate = state.drop_rate;
            if drop_rate > 0.0 && state.rng.random_bool(drop_rate) {
                state.stats.lost += 1;
                continue;
            }
            state.stats.delivered += 1;
            state.next_seq += 1;
            mailbox.queue.lock().push(Reverse(Parcel {
                at,
                seq: state.next_seq,
                from,
                bytes: Bytes::copy_from_slice(payload),
            }));
            mailbox.arrived.notify_one();
        }
    }

    /// Whether the link between `a` and `b` is cut now; if so, `waker` is woken when it heals.
    fn stalls(&self, a: IpAddr, b: IpAddr, waker: &Waker) -> bool {
        let mut state = self.shared.state.lock();
        if !state.is_cut(a, b) {
            return false;
        }
        if !state.stalled.iter().any(|w| w.will_wake(waker)) {
            state.stalled.push(waker.clone());
        }
        true
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Network")
            .field("cut", &state.cut)
            .field("drop_rate", &state.drop_rate)
            .field("delay", &state.delay)
            .field("stats", &state.stats)
            .finish_non_exhaustive()
    }
}

/// One address of the network: binds datagram sockets and listeners there, and opens
/// streams from there.
#[derive(Clone)]
pub struct Host {
    net: Network,
    ip: IpAddr,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("ip", &self.ip).finish()
    }
}

impl Host {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// How this host opens replication connections.
    pub fn streams(&self) -> Streams {
        Streams::Mem(self.clone())
    }

    /// A datagram socket on `port` of this host (0: a free one).
    pub fn unicast(&self, port: u16) -> io::Result<MemDatagrams> {
        let mut state = self.net.shared.state.lock();
        let port = match port {
            0 => state.ephemeral(self.ip, |s, a| s.sockets.contains_key(&a)),
            port => port,
        };
        let local = SocketAddr::new(self.ip, port);
        if state.sockets.contains_key(&local) {
            return Err(addr_in_use(local));
        }
        let mailbox = Arc::new(Mailbox::default());
        state.sockets.insert(local, mailbox.clone());
        state.next_id += 1;
        Ok(MemDatagrams {
            net: self.net.clone(),
            id: state.next_id,
            local,
            group: None,
            mailbox,
        })
    }

    /// A socket that joins `group` (a multicast address and port) and sends there; any
    /// number of sockets share a group, as with SO_REUSEPORT.
    pub fn multicast(&self, group: SocketAddr) -> io::Result<MemDatagrams> {
        if !group.ip().is_multicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a multicast address", group.ip()),
            ));
        }
        let mut state = self.net.shared.state.lock();
        let mailbox = Arc::new(Mailbox::default());
        state.next_id += 1;
        let id = state.next_id;
        state
            .groups
            .entry(group)
            .or_default()
            .push((id, self.ip, mailbox.clone()));
        Ok(MemDatagrams {
            net: self.net.clone(),
            id,
            // What receivers see as the sender: this host, from the group's port.
            local: SocketAddr::new(self.ip, group.port()),
            group: Some(group),
            mailbox,
        })
    }

    /// A listener on `port` of this host (0: a free one).
    pub fn listen(&self, port: u16) -> io::Result<MemListener> {
        let mut state = self.net.shared.state.lock();
        let port = match port {
            0 => state.ephemeral(self.ip, |s, a| s.listeners.contains_key(&a)),
            port => port,
        };
        let local = SocketAddr::new(self.ip, port);
        if state.listeners.contains_key(&local) {
            return Err(addr_in_use(local));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.listeners.insert(local, tx);
        Ok(MemListener {
            net: self.net.clone(),
            local,
            incoming: rx,
        })
    }

    /// A stream to the listener at `addr`: refused when nobody listens there; across a cut
    /// link it waits until the link heals.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<MemStream> {
        let shared = &self.net.shared;
        loop {
            let healed = shared.healed.notified();
            let found = {
                let mut state = shared.state.lock();
                if state.is_cut(self.ip, addr.ip()) {
                    None
                } else {
                    let listener = state.listeners.get(&addr).cloned();
                    let port = state.ephemeral(self.ip, |_, _| false);
                    Some((listener, port, state.delay))
                }
            };
            let Some((listener, port, delay)) = found else {
                healed.await;
                continue;
            };
            let refused = || {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nobody listens on {addr}"),
                )
            };
            let listener = listener.ok_or_else(refused)?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (mine, theirs) = tokio::io::duplex(STREAM_BUFFER);
            let ends = (self.ip, addr.ip());
            let local = SocketAddr::new(self.ip, port);
            listener
                .send((MemStream::new(theirs, &self.net, ends), local))
                .map_err(|_| refused())?;
            return Ok(MemStream::new(mine, &self.net, ends));
        }
    }
}

/// What a datagram socket receives, in the order it is due.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<BinaryHeap<Reverse<Parcel>>>,
    arrived: Notify,
}

struct Parcel {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    bytes: Bytes,
}

impl PartialEq for Parcel {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Parcel {}

impl PartialOrd for Parcel {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Parcel {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A datagram socket of the network; its address is free again once it is dropped.
pub struct MemDatagrams {
    net: Network,
    id: u64,
    local: SocketAddr,
    group: Option<SocketAddr>,
    mailbox: Arc<Mailbox>,
}

impl fmt::Debug for MemDatagrams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemDatagrams")
            .field("local", &self.local)
            .field("group", &self.group)
            .finish()
    }
}

impl Drop for MemDatagrams {
    fn drop(&mut self) {
        let mut state = self.net.shared.state.lock();
        match self.group {
            Some(group) => {
                if let Some(members) = state.groups.get_mut(&group) {
                    members.retain(|(id, _, _)| *id != self.id);
                    if members.is_empty() {
                        state.groups.remove(&group);
                    }
                }
            }
            None => {
                state.sockets.remove(&self.local);
            }
        }
    }
}

impl Datagrams for MemDatagrams {
    fn group(&self) -> Option<SocketAddr> {
        self.group
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        if payload.len() > MAX_UDP_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a datagram of {} bytes is too long", payload.len()),
            ));
        }
        self.net.send(self.local, payload, to);
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let arrived = self.mailbox.arrived.notified();
            let next = {
                let mut queue = self.mailbox.queue.lock();
                match queue.peek_mut() {
                    Some(top) if top.0.at <= Instant::now() => {
                        let Reverse(parcel) = PeekMut::pop(top);
                        let len = parcel.bytes.len().min(buf.len());
                        buf[..len].copy_from_slice(&parcel.bytes[..len]);
                        return Ok((len, parcel.from));
                    }
                    Some(top) => Some(top.0.at),
                    None => None,
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = arrived => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => arrived.await,
            }
        }
    }
}

/// A listener of the network; its address is free again once it is dropped, and
/// connections it did not accept yet see the end of their stream.
pub struct MemListener {
    net: Network,
    local: SocketAddr,
    incoming: mpsc::UnboundedReceiver<(MemStream, SocketAddr)>,
}

impl fmt::Debug for MemListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemListener")
            .field("local", &self.local)
            .finish()
    }
}

impl MemListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub async fn accept(&mut self) -> io::Result<(MemStream, SocketAddr)> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the listener was unbound"))
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        self.net.shared.state.lock().listeners.remove(&self.local);
    }
}

/// One end of a stream of the network.
pub struct MemStream {
    io: DuplexStream,
    net: Network,
    ends: (IpAddr, IpAddr),
}

impl fmt::Debug for MemStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStream")
            .field("ends", &self.ends)
            .finish()
    }
}

impl MemStream {
    fn new(io: DuplexStream, net: &Network, ends: (IpAddr, IpAddr)) -> MemStream {
        MemStream {
            io,
            net: net.clone(),
            ends,
        }
    }

    fn stalls(&self, cx: &Context<'_>) -> bool {
        self.net.stalls(self.ends.0, self.ends.1, cx.waker())
    }
}

impl AsyncRead for MemStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stalls(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stalls(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_cut_link_loses_datagrams_both_ways_until_it_heals() {
        let net = Network::new(1);
        let a = net.host(ip(1)).unicast(0).unwrap();
        let b = net.host(ip(2)).unicast(0).unwrap();
        let c = net.host(ip(3)).unicast(0).unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        net.partition(&[ip(1)], &[ip(2)]);
        a.send_to(b"lost", to_b).await.unwrap();
        b.send_to(b"lost", to_a).await.unwrap();
        c.send_to(b"passes", to_b).await.unwrap();
        let mut buf = [0u8; 16];
        let (len, from) = b.recv(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..len], from),
            (&b"passes"[..], c.local_addr().unwrap())
        );
        assert!(tokio::time::timeout(LONG, a.recv(&mut buf)).await.is_err());
        assert_eq!(net.stats().cut, 2);
        net.heal();
        a.send_to(b"again", to_b).await.unwrap();
        let (len, _) = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_member_behind_a_cut_misses_what_the_others_hear() {
        let net = Network::new(1);
        let group = SocketAddr::from((Ipv4Addr::new(239, 1, 1, 1), 4000));
        let members: Vec<MemDatagrams> = (1..=3)
            .map(|n| net.host(ip(n)).multicast(group).unwrap())
            .collect();
        net.partition(&[ip(3)], &[ip(1), ip(2)]);
        members[0].send_to(b"hb", group).await.unwrap();
        let mut buf = [0u8; 8];
        for member in &members[..2] {
            assert_eq!(member.recv(&mut buf).await.unwrap().0, 2);
        }
        assert!(
            tokio::time::timeout(LONG, members[2].recv(&mut buf))
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn datagrams_are_lost_at_the_drop_rate_the_same_way_for_the_same_seed() {
        let lost = |seed: u64| async move {
            let net = Network::new(seed);
            net.set_drop_rate(0.25);
            let a = net.host(ip(1)).unicast(0).unwrap();
            let b = net.host(ip(2)).unicast(0).unwrap();
            for _ in 0..1000 {
                a.send_to(b"x", b.local_addr().unwrap()).await.unwrap();
            }
            net.stats()
        };
        let first = lost(7).await;
        assert_eq!(first.lost + first.delivered, 1000);
        assert!((150..350).contains(&first.lost), "{first:?}");
        assert_eq!(lost(7).await, first, "a seed repeats its losses");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_datagram_arrives_after_the_delay_and_in_order() {
        let net = Network::new(1);
        net.set_delay(Duration::from_millis(30));
        let a = net.host(ip(1)).unicast(0).unwrap();
        let b = net.host(ip(2)).unicast(0).unwrap();
        let start = Instant::now();
        a.send_to(b"one", b.local_addr().unwrap()).await.unwrap();
        a.send_to(b"two", b.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 8];
        let (len, _) = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"one");
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        let (len, _) = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"two");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_across_a_cut_stalls_and_resumes_when_it_heals() {
        let net = Network::new(1);
        let mut listener = net.host(ip(2)).listen(4001).unwrap();
        let mut client = net
            .host(ip(1))
            .connect(listener.local_addr())
            .await
            .unwrap();
        let (mut server, from) = listener.accept().await.unwrap();
        assert_eq!(from.ip(), ip(1));
        net.partition(&[ip(1)], &[ip(2)]);
        let write = tokio::spawn(async move {
            client.write_all(b"held").await.unwrap();
            client
        });
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(LONG, server.read_exact(&mut buf))
                .await
                .is_err(),
            "nothing crosses the cut"
        );
        net.heal();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"held");
        drop(write.await.unwrap());
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "the end passes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_attempt_across_a_cut_waits_for_the_heal() {
        let net = Network::new(1);
        let mut listener = net.host(ip(2)).listen(4001).unwrap();
        net.partition(&[ip(2)], &[ip(1)]);
        let host = net.host(ip(1));
        let to = listener.local_addr();
        let attempt = tokio::spawn(async move { host.connect(to).await });
        assert!(tokio::time::timeout(LONG, listener.accept()).await.is_err());
        net.heal();
        assert!(listener.accept().await.is_ok());
        assert!(attempt.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unbound_listener_refuses_and_its_port_is_free_again() {
        let net = Network::new(1);
        let listener = net.host(ip(2)).listen(0).unwrap();
        let to = listener.local_addr();
        drop(listener);
        let refused = net.host(ip(1)).connect(to).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(net.host(ip(2)).listen(to.port()).is_ok());
    }
}
