//! UDP for heartbeats: one socket that sends to the group (or to each static peer) and
//! receives from it (the names of the peers are `discovery`'s).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::Datagrams;

/// A heartbeat socket over UDP: the operating system's [`Datagrams`].
#[derive(Debug)]
pub struct UdpDatagrams {
    socket: UdpSocket,
    group: Option<SocketAddr>,
}

impl UdpDatagrams {
    /// Joins `group` on `interface` and sends there. Several processes on one host share
    /// the port (SO_REUSEADDR + SO_REUSEPORT); binding the group address and turning
    /// IP_MULTICAST_ALL off keep datagrams of other groups on the same port out.
    pub fn multicast(
        group: SocketAddrV4,
        interface: Ipv4Addr,
        ttl: u32,
    ) -> io::Result<UdpDatagrams> {
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
        Ok(UdpDatagrams {
            socket: UdpSocket::from_std(socket.into())?,
            group: Some(SocketAddr::V4(group)),
        })
    }

    /// For networks without multicast: binds `local`; the caller names the peers per send.
    pub fn unicast(local: SocketAddr) -> io::Result<UdpDatagrams> {
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        Ok(UdpDatagrams {
            socket: UdpSocket::from_std(socket.into())?,
            group: None,
        })
    }
}

impl Datagrams for UdpDatagrams {
    fn group(&self) -> Option<SocketAddr> {
        self.group
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    async fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(payload, to).await.map(|_| ())
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}
