//! UDP for heartbeats: one socket that sends to the group (or to each static peer) and
//! receives from it.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// A heartbeat socket and the addresses every heartbeat goes to.
#[derive(Debug)]
pub struct Datagrams {
    socket: UdpSocket,
    targets: Vec<SocketAddr>,
    multicast: bool,
}

impl Datagrams {
    /// Joins `group` on `interface` and sends there. Several processes on one host share
    /// the port (SO_REUSEADDR + SO_REUSEPORT); binding the group address and turning
    /// IP_MULTICAST_ALL off keep datagrams of other groups on the same port out.
    pub fn multicast(group: SocketAddrV4, interface: Ipv4Addr, ttl: u32) -> io::Result<Datagrams> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::V4(group).into())?;
        socket.join_multicast_v4(group.ip(), &interface)?;
        socket.set_multicast_if_v4(&interface)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(ttl)?;
        socket.set_multicast_all_v4(false)?;
        Ok(Datagrams {
            socket: UdpSocket::from_std(socket.into())?,
            targets: vec![SocketAddr::V4(group)],
            multicast: true,
        })
    }

    /// For networks without multicast: binds `local` and sends to each of `peers`.
    pub fn unicast(local: SocketAddr, peers: Vec<SocketAddr>) -> io::Result<Datagrams> {
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        let targets = peers.into_iter().filter(|p| *p != local).collect();
        Ok(Datagrams {
            socket: UdpSocket::from_std(socket.into())?,
            targets,
            multicast: false,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    pub fn is_multicast(&self) -> bool {
        self.multicast
    }

    /// Sends `payload` to one address besides the targets.
    pub async fn send_to(&self, payload: &[u8], addr: SocketAddr) -> io::Result<()> {
        self.socket.send_to(payload, addr).await.map(|_| ())
    }

    /// Sends `payload` to every target; returns how many sends succeeded and the last error.
    pub async fn send(&self, payload: &[u8]) -> (usize, Option<io::Error>) {
        let mut sent = 0;
        let mut last_error = None;
        for target in &self.targets {
            match self.socket.send_to(payload, target).await {
                Ok(_) => sent += 1,
                Err(e) => last_error = Some(e),
            }
        }
        (sent, last_error)
    }

    /// Receives one datagram. A datagram longer than `buf` is truncated by the kernel;
    /// give a buffer one byte longer than the largest accepted datagram to detect it.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}
