//! TCP frame streams: a 4-byte big-endian length, then the frame; longer than
//! [`MAX_FRAME`](crate::wire::MAX_FRAME) is an error that ends the connection. With a
//! cluster key, each end first sends a hello and every frame is sealed (see
//! [`crate::wire::seal`]); a frame that fails authentication ends the connection. Each
//! end's first frame is an empty one, its proof that it holds the key: until the other's
//! arrives an end takes no frame longer than that, so a peer without the key (or one that
//! answers in a member's place) cannot make it buffer a large one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::intake::{FrameBudget, Metered};
use super::mem;
use crate::membership::NodeId;
use crate::wire::MAX_FRAME;
use crate::wire::seal::{
    self, ClusterKey, HELLO_LEN, HELLO_MAGIC, Hello, Role, SealError, StreamSeal,
};

pub type FramedStream = Framed<Metered<Stream>, FrameCodec>;

/// Where a node's replication connections go: the operating system's TCP, or a host of an
/// in-memory [`mem::Network`]. A closed set, so an enum: the bytes of every frame take
/// the same static path whichever it is, and [`FramedStream`] stays one type.
#[derive(Clone, Debug, Default)]
pub enum Streams {
    #[default]
    Tcp,
    Mem(mem::Host),
}

impl Streams {
    /// A connection to `addr`, not framed yet.
    pub async fn open(&self, addr: SocketAddr) -> io::Result<Stream> {
        match self {
            Streams::Tcp => Ok(Stream::Tcp(TcpStream::connect(addr).await?)),
            Streams::Mem(host) => Ok(Stream::Mem(host.connect(addr).await?)),
        }
    }

    /// Connects this node (`me`) to the node `peer` at `addr`, with the handshake of `key`
    /// if given: with a key, a connection that reaches another node fails.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        key: Option<&ClusterKey>,
        me: NodeId,
        peer: NodeId,
    ) -> io::Result<FramedStream> {
        framed(self.open(addr).await?, key, Ends::Client { me, peer }, None).await
    }
}

/// A connection's bytes: a TCP socket or an in-memory link.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Mem(mem::MemStream),
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Tcp(stream)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Mem(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Mem(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A bound replication port: a TCP listener or a listener of an in-memory network.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Mem(mem::MemListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

impl From<mem::MemListener> for Listener {
    fn from(listener: mem::MemListener) -> Listener {
        Listener::Mem(listener)
    }
}

impl Listener {
    /// The next connection and the address it comes from.
    pub async fn accept(&mut self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Stream::Tcp(s), a)),
            Listener::Mem(l) => l.accept().await.map(|(s, a)| (Stream::Mem(s), a)),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Mem(l) => Ok(l.local_addr()),
        }
    }
}

/// Length-delimited frames, sealed when the connection has a key.
#[derive(Debug)]
pub struct FrameCodec {
    seal: Option<StreamSeal>,
    /// With a key: whether the other end's empty first frame, which proves the key, came.
    proven: bool,
    /// Longest frame taken now (after the length prefix).
    max_len: usize,
}

/// A length prefix beyond what this end takes.
#[derive(Debug, Error)]
#[error("frame size too big: {len} bytes, at most {max}")]
pub struct FrameTooLong {
    len: usize,
    max: usize,
}

impl FrameCodec {
    /// `proven`: whether the other end's proof of the key came already (or there is no key).
    fn new(seal: Option<StreamSeal>, proven: bool) -> FrameCodec {
        let max_len = if proven {
            MAX_FRAME + overhead(&seal)
        } else {
            seal::FRAME_OVERHEAD
        };
        FrameCodec {
            seal,
            proven,
            max_len,
        }
    }

    /// Bytes a frame of `len` bytes takes on the wire: its length prefix, and its seal.
    pub fn wire_len(&self, len: usize) -> u64 {
        (4 + len + overhead(&self.seal)) as u64
    }
}

/// Bytes a seal adds to each frame.
fn overhead(seal: &Option<StreamSeal>) -> usize {
    if seal.is_some() {
        seal::FRAME_OVERHEAD
    } else {
        0
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        loop {
            let &[a, b, c, d, ..] = &src[..] else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len > self.max_len {
                let e = FrameTooLong {
                    len,
                    max: self.max_len,
                };
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // No room is reserved for the rest: the buffer grows as the bytes arrive, so a
            // length announced is not memory taken.
            if src.len() < 4 + len {
                return Ok(None);
            }
            src.advance(4);
            let mut frame = src.split_to(len);
            if let Some(seal) = &mut self.seal {
                seal.open(&mut frame).map_err(invalid)?;
            }
            if self.proven {
                return Ok(Some(frame));
            }
            if !frame.is_empty() {
                return Err(invalid(SealError::Unauthenticated));
            }
            // The other end's proof (an authentic empty frame): from now on, any size.
            self.proven = true;
            self.max_len = MAX_FRAME + seal::FRAME_OVERHEAD;
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        if frame.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes exceeds {MAX_FRAME}", frame.len()),
            ));
        }
        let len = frame.len() + overhead(&self.seal);
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        let start = dst.len();
        dst.extend_from_slice(&frame);
        // Sealed where it will be sent: no buffer of its own, no second copy.
        if let Some(seal) = &mut self.seal {
            seal.seal_into(dst, start);
        }
        Ok(())
    }
}

fn invalid(e: SealError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether an error of a stream is a seal's: the peer has another key, or none.
pub fn is_seal_error(e: &io::Error) -> bool {
    seal_error(e).is_some()
}

/// The seal's error behind an error of a stream, if it is one.
pub fn seal_error(e: &io::Error) -> Option<SealError> {
    e.get_ref()?.downcast_ref::<SealError>().copied()
}

/// The ends of a connection, by node id, for a key's handshake.
#[derive(Debug, Clone, Copy)]
enum Ends {
    /// This node connected to `peer`, meaning to reach that node.
    Client { me: NodeId, peer: NodeId },
    /// This node accepted: the peer says who it is.
    Server { me: NodeId },
}

/// A framed stream over an accepted or connected socket; with `key`, after the handshake.
async fn framed(
    mut stream: Stream,
    key: Option<&ClusterKey>,
    ends: Ends,
    budget: Option<FrameBudget>,
) -> io::Result<FramedStream> {
    if let Stream::Tcp(tcp) = &stream {
        let _ = tcp.set_nodelay(true);
    }
    // From here on the stream is at a frame's start: the budget counts every byte of them.
    let metered = |stream| match budget {
        Some(budget) => Metered::with_budget(stream, budget),
        None => Metered::plain(stream),
    };
    let Some(key) = key else {
        return Ok(Framed::new(metered(stream), FrameCodec::new(None, true)));
    };
    let mine = match ends {
        Ends::Client { me, peer } => Hello::new(me.as_u64(), peer.as_u64()),
        Ends::Server { me } => Hello::new(me.as_u64(), 0),
    };
    // Both ends speak first, so the handshake costs one trip, not two.
    stream.write_all(&mine.encode()).await?;
    let mut theirs = [0u8; HELLO_LEN];
    // The magic first: a peer without the key is refused at its first bytes, even when it
    // sent fewer than a hello's and waits for an answer.
    stream.read_exact(&mut theirs[..HELLO_MAGIC.len()]).await?;
    if theirs[..HELLO_MAGIC.len()] != HELLO_MAGIC {
        return Err(invalid(SealError::BadHello));
    }
    stream.read_exact(&mut theirs[HELLO_MAGIC.len()..]).await?;
    let theirs = Hello::decode(&theirs).map_err(invalid)?;
    // The ids are in the keys too; checking them here says what went wrong, at once.
    let seal = match ends {
        Ends::Client { peer, .. } => {
            if theirs.from != peer.as_u64() {
                return Err(invalid(SealError::WrongPeer));
            }
            StreamSeal::new(key, Role::Client, &mine, &theirs)
        }
        Ends::Server { me } => {
            if theirs.to != me.as_u64() {
                return Err(invalid(SealError::WrongPeer));
            }
            StreamSeal::new(key, Role::Server, &theirs, &mine)
        }
    };
    // The client proves the key first; the server proves it only to a client that did, so
    // that nobody without the key gets a sealed frame to test guesses of it against.
    let mut codec = match ends {
        Ends::Client { .. } => FrameCodec::new(Some(seal), false),
        Ends::Server { .. } => {
            let mut codec = FrameCodec::new(Some(seal), false);
            let mut theirs = BytesMut::zeroed(4 + seal::FRAME_OVERHEAD);
            stream.read_exact(&mut theirs).await?;
            match codec.decode(&mut theirs) {
                Ok(None) if codec.proven => codec,
                // Another key, or something longer than a proof.
                _ => return Err(invalid(SealError::Unauthenticated)),
            }
        }
    };
    let mut proof = BytesMut::new();
    codec.encode(Bytes::new(), &mut proof)?;
    stream.write_all(&proof).await?;
    Ok(Framed::new(metered(stream), codec))
}

/// The framed stream of a connection this node (`me`) accepted. The caller bounds the time
/// it may take (a key's handshake waits for the peer's hello).
pub async fn accept(
    stream: impl Into<Stream>,
    key: Option<&ClusterKey>,
    me: NodeId,
) -> io::Result<FramedStream> {
    framed(stream.into(), key, Ends::Server { me }, None).await
}

/// [`accept`] for the replication port: frames are read against `budget` (see
/// [`super::intake`]), which all connections of the port share.
pub async fn accept_with_budget(
    stream: impl Into<Stream>,
    key: Option<&ClusterKey>,
    me: NodeId,
    budget: FrameBudget,
) -> io::Result<FramedStream> {
    framed(stream.into(), key, Ends::Server { me }, Some(budget)).await
}

/// [`Streams::connect`] over TCP.
pub async fn connect(
    addr: SocketAddr,
    key: Option<&ClusterKey>,
    me: NodeId,
    peer: NodeId,
) -> io::Result<FramedStream> {
    Streams::Tcp.connect(addr, key, me, peer).await
}

pub async fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;

    const CLIENT: NodeId = NodeId::from_u64(1);
    const SERVER: NodeId = NodeId::from_u64(2);

    /// A client (1) that means to reach `meant`, and the server (2) it reaches.
    async fn pair_meaning(
        client_key: Option<&ClusterKey>,
        server_key: Option<ClusterKey>,
        meant: NodeId,
    ) -> (io::Result<FramedStream>, io::Result<FramedStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept(stream, server_key.as_ref(), SERVER).await
        });
        let client = connect(addr, client_key, CLIENT, meant).await;
        (client, server.await.unwrap())
    }

    async fn pair(
        client_key: Option<&ClusterKey>,
        server_key: Option<ClusterKey>,
    ) -> (io::Result<FramedStream>, io::Result<FramedStream>) {
        pair_meaning(client_key, server_key, SERVER).await
    }

    fn key(text: &str) -> ClusterKey {
        ClusterKey::from_text(text).unwrap()
    }

    #[tokio::test]
    async fn sealed_frames_cross_a_connection_both_ways() {
        let k = key("a key of the test cluster");
        let (client, server) = pair(Some(&k), Some(k.clone())).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        for i in 0..3u8 {
            client.send(Bytes::from(vec![i; 100])).await.unwrap();
            assert_eq!(&server.next().await.unwrap().unwrap()[..], &[i; 100]);
            server.send(Bytes::from_static(b"ok")).await.unwrap();
            assert_eq!(&client.next().await.unwrap().unwrap()[..], b"ok");
        }
    }

    #[tokio::test]
    async fn another_key_fails_at_the_proof_and_gets_no_sealed_frame() {
        let (client, server) = pair(
            Some(&key("a key of the test cluster")),
            Some(key("another key, same length")),
        )
        .await;
        let refused = server.unwrap_err();
        assert_eq!(
            seal_error(&refused),
            Some(SealError::Unauthenticated),
            "{refused}"
        );
        // The server closed without its proof: the client's first read ends the stream.
        let mut client = client.unwrap();
        assert!(!matches!(client.next().await, Some(Ok(_))));
    }

    #[tokio::test]
    async fn a_plain_client_of_a_keyed_server_is_refused_at_the_hello() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept(stream, Some(&key("a key of the test cluster")), SERVER).await
        });
        let mut client = connect(addr, None, CLIENT, SERVER).await.unwrap();
        // A plain frame shorter than a hello: refused at its first bytes, not after a wait.
        client.send(Bytes::from_static(b"ping")).await.unwrap();
        let e = server.await.unwrap().unwrap_err();
        assert!(is_seal_error(&e), "{e}");
    }

    #[tokio::test]
    async fn a_connection_that_reaches_another_node_than_meant_fails_on_both_sides() {
        let k = key("a key of the test cluster");
        let (client, server) = pair_meaning(Some(&k), Some(k.clone()), NodeId::from_u64(3)).await;
        let client = client.unwrap_err();
        let server = server.unwrap_err();
        assert_eq!(seal_error(&client), Some(SealError::WrongPeer), "{client}");
        assert_eq!(seal_error(&server), Some(SealError::WrongPeer), "{server}");
    }

    #[tokio::test]
    async fn before_the_proof_of_the_key_a_server_takes_no_large_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept(stream, Some(&key("a key of the test cluster")), SERVER).await
        });
        // A peer without the key completes the hello, then announces 16 MiB.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&Hello::new(9, SERVER.as_u64()).encode())
            .await
            .unwrap();
        raw.write_all(&(MAX_FRAME as u32).to_be_bytes())
            .await
            .unwrap();
        raw.write_all(&[0u8; 4096]).await.unwrap();
        let refused = server.await.unwrap().unwrap_err();
        assert_eq!(
            seal_error(&refused),
            Some(SealError::Unauthenticated),
            "{refused}"
        );
        // It never got the server's proof: nothing sealed to test guesses of the key on.
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer).await;
        assert_eq!(answer.len(), HELLO_LEN, "only the server's hello");
    }

    #[tokio::test]
    async fn before_the_proof_of_the_key_a_client_takes_no_large_frame_either() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut raw, _) = listener.accept().await.unwrap();
            // A party without the key answering in the server's place: the id is in clear.
            raw.write_all(&Hello::new(SERVER.as_u64(), 0).encode())
                .await
                .unwrap();
            raw.write_all(&(MAX_FRAME as u32).to_be_bytes())
                .await
                .unwrap();
            let _ = raw.write_all(&[0u8; 4096]).await;
            let mut sink = [0u8; 1024];
            while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let k = key("a key of the test cluster");
        let mut client = connect(addr, Some(&k), CLIENT, SERVER).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("refused at once, not held")
            .expect("an answer")
            .unwrap_err();
        assert!(
            refused.to_string().contains("frame size too big"),
            "{refused}"
        );
        assert!(client.read_buffer().capacity() < 64 * 1024);
    }

    #[tokio::test]
    async fn a_length_announced_is_not_memory_taken_before_its_bytes_come() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut server = accept(accepted, None, SERVER).await.unwrap();
        raw.write_all(&(MAX_FRAME as u32).to_be_bytes())
            .await
            .unwrap();
        raw.write_all(&[0u8; 4096]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while server.read_buffer().len() < 4 + 4096 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bytes never came"
            );
            let next = tokio::time::timeout(Duration::from_millis(10), server.next()).await;
            assert!(next.is_err(), "no frame yet: {next:?}");
        }
        assert!(
            server.read_buffer().capacity() < 1024 * 1024,
            "{} bytes taken for 4 KiB of a 16 MiB frame",
            server.read_buffer().capacity()
        );
    }

    #[tokio::test]
    async fn without_keys_frames_are_plain() {
        let (client, server) = pair(None, None).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.send(Bytes::from_static(b"plain")).await.unwrap();
        assert_eq!(&server.next().await.unwrap().unwrap()[..], b"plain");
    }
}
