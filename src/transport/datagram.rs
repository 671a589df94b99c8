//! UDP for heartbeats: one socket that sends to the group (or to each static peer) and
//! receives from it, and the resolver that keeps static peer names current.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

/// Resolves `host:port` names, the first IPv4 address of each (else the first address).
/// Names that do not resolve (yet) are left out and returned with the reason.
pub async fn resolve_peers(
    names: &[String],
    timeout: Duration,
) -> (Vec<SocketAddr>, Vec<(String, String)>) {
    let mut addrs = Vec::with_capacity(names.len());
    let mut failed = Vec::new();
    for name in names {
        match tokio::time::timeout(timeout, tokio::net::lookup_host(name.as_str())).await {
            Ok(Ok(found)) => {
                let found: Vec<SocketAddr> = found.collect();
                match found.iter().find(|a| a.is_ipv4()).or(found.first()) {
                    Some(addr) if !addrs.contains(addr) => addrs.push(*addr),
                    Some(_) => {}
                    None => failed.push((name.clone(), "no address".to_string())),
                }
            }
            Ok(Err(e)) => failed.push((name.clone(), e.to_string())),
            Err(_) => failed.push((name.clone(), format!("no answer within {timeout:?}"))),
        }
    }
    (addrs, failed)
}

/// Re-resolves `names` every `every` until `stop`, publishing the addresses, so peers whose
/// names appear later (containers starting together) or move are found without a restart.
/// Failures are logged when they change, not on every round.
pub async fn keep_resolving(
    names: Vec<String>,
    every: Duration,
    peers: watch::Sender<Vec<SocketAddr>>,
    stop: CancellationToken,
) {
    let mut last_failed: Vec<String> = Vec::new();
    loop {
        let (addrs, failed) = resolve_peers(&names, every.min(Duration::from_secs(5))).await;
        let failed_names: Vec<String> = failed.iter().map(|(n, _)| n.clone()).collect();
        if failed_names != last_failed {
            for (name, reason) in &failed {
                warn!(peer = %name, %reason, "static member does not resolve; retrying");
            }
            last_failed = failed_names;
        }
        peers.send_if_modified(|current| {
            let changed = *current != addrs;
            if changed {
                *current = addrs;
            }
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_and_addresses_resolve_and_bad_names_are_reported() {
        let names = vec![
            "127.0.0.1:4001".to_string(),
            "localhost:4002".to_string(),
            "127.0.0.1:4001".to_string(),
            "no-such-host.invalid:4003".to_string(),
        ];
        let (addrs, failed) = resolve_peers(&names, Duration::from_secs(5)).await;
        assert_eq!(addrs[0], "127.0.0.1:4001".parse().unwrap());
        assert_eq!(addrs[1].port(), 4002);
        assert!(addrs[1].ip().is_loopback());
        assert_eq!(addrs.len(), 2, "duplicates are sent to once");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "no-such-host.invalid:4003");
    }
}
