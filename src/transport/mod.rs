//! The only code that opens sockets: best-effort datagrams (heartbeats, multicast or
//! unicast) and reliable length-delimited frame streams (the replication port). Each has
//! the operating system's implementation and an in-memory one ([`mem`]), which runs several
//! nodes in one test process under tokio's paused time, with partitions, drops and delays,
//! and the real encoding of every byte.

mod datagram;
pub mod discovery;
pub mod intake;
pub mod mem;
mod stream;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

pub use datagram::UdpDatagrams;
pub use discovery::{Discovery, SystemResolver, keep_discovering, resolve_round};
pub use intake::{FrameBudget, FrameLimits, IntakeError, intake_error};
pub use stream::{
    FrameCodec, FrameTooLong, FramedStream, Listener, Stream, Streams, accept, accept_with_budget,
    bind_listener, connect, is_seal_error, seal_error,
};

/// Largest payload of one UDP datagram over IPv4: what a socket refuses to send beyond.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// A best-effort datagram socket, as heartbeats need it: what one sends may be lost,
/// duplicated by nobody, and arrives whole or not at all.
pub trait Datagrams: Send + Sync + 'static {
    /// The multicast group this socket sends to, when it sends to one.
    fn group(&self) -> Option<SocketAddr>;

    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends one datagram to `to` (an address or the group). Nobody there is no error; a
    /// payload longer than [`MAX_UDP_PAYLOAD`] is.
    fn send_to(
        &self,
        payload: &[u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Receives one datagram and its sender. One longer than `buf` is cut to it, as the
    /// kernel does; give a buffer one byte longer than the largest accepted to notice.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}

#[cfg(test)]
mod conformance;
