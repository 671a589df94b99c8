//! The only code that opens sockets: best-effort datagrams (heartbeats, multicast or
//! unicast) and reliable length-delimited frame streams (the replication port).

mod datagram;
mod stream;

pub use datagram::{Datagrams, keep_resolving, resolve_peers};
pub use stream::{
    FrameCodec, FramedStream, accept, bind_listener, connect, is_seal_error, seal_error,
};
