//! The workers' listening sockets: bound as one SO_REUSEPORT group, and accepted from
//! without registering each new connection with the runtime.

use std::net::SocketAddr;

use tokio::io::Interest;

/// The listening sockets, one per worker, in one SO_REUSEPORT group: the kernel spreads
/// new connections over them (nginx's `reuseport`), so no worker is woken for a
/// connection another one takes. Each is bound with SO_REUSEADDR, as tokio's
/// `TcpListener::bind` does, so a restart is not refused while old connections linger in
/// TIME_WAIT, and has TCP_NODELAY, which Linux passes on to the connections it accepts
/// (a worker checks that on its first one).
pub fn bind_group(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // A socket outside the group is refused while anything listens there, also a
        // group of another process, which SO_REUSEPORT alone would silently join.
        drop(bind(addr, false)?);
    }
    let first = bind(addr, true)?;
    let addr = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..count {
        group.push(bind(addr, true)?);
    }
    Ok(group)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The listen backlog of each worker (tokio's default).
const LISTEN_BACKLOG: i32 = 1024;

/// A worker's listening socket. The connections it accepts are std streams, not yet
/// registered with the runtime (see [`super::client::ClientSocket`]).
pub struct Listener {
    /// The socket; mio accepts with `SOCK_NONBLOCK | SOCK_CLOEXEC` in one system call.
    socket: mio::net::TcpListener,
    /// A second descriptor of the same socket, registered with the runtime for its
    /// readiness. tokio offers readiness and `try_io` on a stream but not on a listener,
    /// and registering a descriptor of one's own takes unsafe code (`AsyncFd::register`);
    /// a listening socket is readable when a connection waits, whatever type holds it.
    ready: tokio::net::TcpStream,
}

impl Listener {
    /// Must be called within the runtime.
    pub fn new(listener: std::net::TcpListener) -> std::io::Result<Listener> {
        let duplicate = std::os::fd::OwnedFd::from(listener.try_clone()?);
        let ready = tokio::net::TcpStream::from_std(std::net::TcpStream::from(duplicate))?;
        Ok(Listener {
            socket: mio::net::TcpListener::from_std(listener),
            ready,
        })
    }

    /// The next connection (non-blocking, close-on-exec) and its peer's address.
    pub async fn accept(&self) -> std::io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
        loop {
            self.ready.readable().await?;
            match self
                .ready
                .try_io(Interest::READABLE, || self.socket.accept())
            {
                Ok((stream, peer)) => return Ok((stream.into(), peer)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}
