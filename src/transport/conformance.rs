//! One suite of what heartbeats and replication rely on from their sockets, run against the
//! operating system's implementation and the in-memory one alike, so that simulated nodes
//! meet what real ones meet. Waits are deadlines for the real sockets, never sleeps.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};

use super::mem::{MemDatagrams, Network};
use super::{Datagrams, Listener, MAX_UDP_PAYLOAD, Streams, UdpDatagrams, accept};
use crate::membership::NodeId;
use crate::wire::seal::ClusterKey;

/// How long a real socket gets to deliver what was sent over loopback.
const DEADLINE: Duration = Duration::from_secs(5);

/// Makes the sockets of the datagram suite.
trait DatagramWorld {
    type D: Datagrams;
    /// A socket of host `host` on a free port.
    fn unicast(&self, host: u8) -> io::Result<Self::D>;
    /// A socket at `addr`.
    fn unicast_at(&self, addr: SocketAddr) -> io::Result<Self::D>;
    /// A socket of host `host` that joins the world's group.
    fn multicast(&self, host: u8) -> io::Result<Self::D>;
    fn group(&self) -> SocketAddr;
}

/// Loopback UDP; its group's port is held by a socket of its own for the test's life.
struct Udp {
    group: SocketAddrV4,
    _held: socket2::Socket,
}

impl Udp {
    fn new() -> Udp {
        use socket2::{Domain, Protocol, Socket, Type};
        let group = Ipv4Addr::new(228, 0, 0, 4);
        // Bound without reuse first, so the port is one nobody shares; then shared.
        let held = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        held.set_multicast_all_v4(false).unwrap();
        held.bind(&SocketAddr::from((group, 0)).into()).unwrap();
        held.set_reuse_address(true).unwrap();
        held.set_reuse_port(true).unwrap();
        let port = held.local_addr().unwrap().as_socket().unwrap().port();
        Udp {
            group: SocketAddrV4::new(group, port),
            _held: held,
        }
    }
}

impl DatagramWorld for Udp {
    type D = UdpDatagrams;

    fn unicast(&self, _host: u8) -> io::Result<UdpDatagrams> {
        UdpDatagrams::unicast(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    fn unicast_at(&self, addr: SocketAddr) -> io::Result<UdpDatagrams> {
        UdpDatagrams::unicast(addr)
    }

    fn multicast(&self, _host: u8) -> io::Result<UdpDatagrams> {
        UdpDatagrams::multicast(self.group, Ipv4Addr::LOCALHOST, 1)
    }

    fn group(&self) -> SocketAddr {
        SocketAddr::V4(self.group)
    }
}

/// Hosts 10.0.0.N of an in-memory network.
struct Mem(Network);

fn mem_ip(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))
}

impl DatagramWorld for Mem {
    type D = MemDatagrams;

    fn unicast(&self, host: u8) -> io::Result<MemDatagrams> {
        self.0.host(mem_ip(host)).unicast(0)
    }

    fn unicast_at(&self, addr: SocketAddr) -> io::Result<MemDatagrams> {
        self.0.host(addr.ip()).unicast(addr.port())
    }

    fn multicast(&self, host: u8) -> io::Result<MemDatagrams> {
        self.0.host(mem_ip(host)).multicast(self.group())
    }

    fn group(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(239, 1, 1, 1), 45_564))
    }
}

async fn recv_within<D: Datagrams>(socket: &D, buf: &mut [u8]) -> (usize, SocketAddr) {
    tokio::time::timeout(DEADLINE, socket.recv(buf))
        .await
        .expect("a datagram in time")
        .expect("received")
}

async fn datagram_suite<W: DatagramWorld>(world: &W) {
    a_datagram_arrives_whole_with_its_sender(world).await;
    nothing_arrives_before_it_is_sent(world).await;
    a_datagram_to_nobody_is_no_error(world).await;
    a_datagram_longer_than_udp_allows_is_refused(world).await;
    a_datagram_longer_than_the_buffer_is_cut_to_it(world).await;
    an_address_is_bound_once_and_free_again_once_dropped(world).await;
    a_datagram_to_the_group_reaches_every_member_the_sender_too(world).await;
}

async fn a_datagram_arrives_whole_with_its_sender<W: DatagramWorld>(world: &W) {
    let a = world.unicast(1).unwrap();
    let b = world.unicast(2).unwrap();
    a.send_to(b"a heartbeat", b.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let (len, from) = recv_within(&b, &mut buf).await;
    assert_eq!(&buf[..len], b"a heartbeat");
    assert_eq!(from, a.local_addr().unwrap());
}

async fn nothing_arrives_before_it_is_sent<W: DatagramWorld>(world: &W) {
    let b = world.unicast(2).unwrap();
    let mut buf = [0u8; 64];
    assert!(b.recv(&mut buf).now_or_never().is_none());
}

async fn a_datagram_to_nobody_is_no_error<W: DatagramWorld>(world: &W) {
    let nobody = world.unicast(3).unwrap().local_addr().unwrap();
    let a = world.unicast(1).unwrap();
    assert!(a.send_to(b"anyone?", nobody).await.is_ok());
}

async fn a_datagram_longer_than_udp_allows_is_refused<W: DatagramWorld>(world: &W) {
    let a = world.unicast(1).unwrap();
    let b = world.unicast(2).unwrap();
    let to = b.local_addr().unwrap();
    assert!(
        a.send_to(&vec![0u8; MAX_UDP_PAYLOAD + 1], to)
            .await
            .is_err()
    );
    assert!(a.send_to(&vec![7u8; MAX_UDP_PAYLOAD], to).await.is_ok());
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD + 1];
    assert_eq!(recv_within(&b, &mut buf).await.0, MAX_UDP_PAYLOAD);
}

async fn a_datagram_longer_than_the_buffer_is_cut_to_it<W: DatagramWorld>(world: &W) {
    let a = world.unicast(1).unwrap();
    let b = world.unicast(2).unwrap();
    a.send_to(b"0123456789abcdef", b.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 10];
    let (len, _) = recv_within(&b, &mut buf).await;
    assert_eq!(&buf[..len], b"0123456789");
}

async fn an_address_is_bound_once_and_free_again_once_dropped<W: DatagramWorld>(world: &W) {
    let a = world.unicast(1).unwrap();
    let addr = a.local_addr().unwrap();
    let again = world.unicast_at(addr);
    assert_eq!(
        again.map(|_| ()).unwrap_err().kind(),
        io::ErrorKind::AddrInUse
    );
    drop(a);
    assert!(world.unicast_at(addr).is_ok());
}

async fn a_datagram_to_the_group_reaches_every_member_the_sender_too<W: DatagramWorld>(world: &W) {
    let first = world.multicast(1).unwrap();
    let second = world.multicast(2).unwrap();
    let group = world.group();
    assert_eq!(first.group(), Some(group));
    first.send_to(b"to all", group).await.unwrap();
    for member in [&first, &second] {
        let mut buf = [0u8; 64];
        let (len, from) = recv_within(member, &mut buf).await;
        assert_eq!(&buf[..len], b"to all");
        assert_eq!(from.port(), group.port(), "sent from the group's port");
    }
}

#[tokio::test]
async fn udp_datagrams_meet_the_suite() {
    datagram_suite(&Udp::new()).await;
}

#[tokio::test(start_paused = true)]
async fn in_memory_datagrams_meet_the_suite() {
    datagram_suite(&Mem(Network::new(1))).await;
}

/// Makes the listeners and connectors of the stream suite.
trait StreamWorld {
    fn ip(&self, host: u8) -> IpAddr;
    fn streams(&self, host: u8) -> Streams;
    /// A listener of host `host` on `port` (0: a free one).
    fn listen(&self, host: u8, port: u16) -> io::Result<Listener>;
}

struct Tcp;

impl StreamWorld for Tcp {
    fn ip(&self, _host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn streams(&self, _host: u8) -> Streams {
        Streams::Tcp
    }

    fn listen(&self, _host: u8, port: u16) -> io::Result<Listener> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        listener.set_nonblocking(true)?;
        Ok(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?))
    }
}

impl StreamWorld for Mem {
    fn ip(&self, host: u8) -> IpAddr {
        mem_ip(host)
    }

    fn streams(&self, host: u8) -> Streams {
        self.0.host(mem_ip(host)).streams()
    }

    fn listen(&self, host: u8, port: u16) -> io::Result<Listener> {
        self.0.host(mem_ip(host)).listen(port).map(Listener::Mem)
    }
}

const CLIENT: NodeId = NodeId::from_u64(1);
const SERVER: NodeId = NodeId::from_u64(2);

async fn stream_suite<W: StreamWorld>(world: &W) {
    let key = ClusterKey::from_text("a key of the conformance suite").unwrap();
    frames_cross_a_connection_both_ways(world, None).await;
    frames_cross_a_connection_both_ways(world, Some(key)).await;
    a_connection_to_nobody_is_refused(world).await;
    the_end_of_one_end_is_the_end_of_the_other(world).await;
    a_port_is_bound_once_and_free_again_once_dropped(world).await;
}

async fn frames_cross_a_connection_both_ways<W: StreamWorld>(world: &W, key: Option<ClusterKey>) {
    let mut listener = world.listen(2, 0).unwrap();
    let addr = listener.local_addr().unwrap();
    let server_key = key.clone();
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        (accept(stream, server_key.as_ref(), SERVER).await, peer)
    });
    let mut client = world
        .streams(1)
        .connect(addr, key.as_ref(), CLIENT, SERVER)
        .await
        .unwrap();
    let (server, peer) = server.await.unwrap();
    let mut server = server.unwrap();
    assert_eq!(peer.ip(), world.ip(1), "accepted from the client's host");
    // A frame larger than any buffer on the way arrives whole.
    let large = Bytes::from(vec![5u8; 1 << 20]);
    let sending = tokio::spawn(async move {
        client.send(Bytes::from_static(b"first")).await.unwrap();
        client.send(large).await.unwrap();
        client
    });
    let first = tokio::time::timeout(DEADLINE, server.next()).await.unwrap();
    assert_eq!(&first.unwrap().unwrap()[..], b"first");
    let second = tokio::time::timeout(DEADLINE, server.next()).await.unwrap();
    let second = second.unwrap().unwrap();
    assert_eq!(second.len(), 1 << 20);
    assert!(second.iter().all(|b| *b == 5));
    let mut client = sending.await.unwrap();
    server.send(Bytes::from_static(b"ack")).await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, client.next()).await.unwrap();
    assert_eq!(&answer.unwrap().unwrap()[..], b"ack");
}

async fn a_connection_to_nobody_is_refused<W: StreamWorld>(world: &W) {
    let addr = world.listen(2, 0).unwrap().local_addr().unwrap();
    let refused = world
        .streams(1)
        .connect(addr, None, CLIENT, SERVER)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

async fn the_end_of_one_end_is_the_end_of_the_other<W: StreamWorld>(world: &W) {
    let mut listener = world.listen(2, 0).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        accept(stream, None, SERVER).await.unwrap()
    });
    let mut client = world
        .streams(1)
        .connect(addr, None, CLIENT, SERVER)
        .await
        .unwrap();
    drop(server.await.unwrap());
    let end = tokio::time::timeout(DEADLINE, client.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

async fn a_port_is_bound_once_and_free_again_once_dropped<W: StreamWorld>(world: &W) {
    let first = world.listen(2, 0).unwrap();
    let port = first.local_addr().unwrap().port();
    let again = world.listen(2, port);
    assert_eq!(
        again.map(|_| ()).unwrap_err().kind(),
        io::ErrorKind::AddrInUse
    );
    drop(first);
    assert!(world.listen(2, port).is_ok());
}

#[tokio::test]
async fn tcp_streams_meet_the_suite() {
    stream_suite(&Tcp).await;
}

#[tokio::test(start_paused = true)]
async fn in_memory_streams_meet_the_suite() {
    stream_suite(&Mem(Network::new(1))).await;
}
