//! TCP frame streams: a 4-byte big-endian length, then the frame; longer than
//! [`MAX_FRAME`](crate::wire::MAX_FRAME) is an error that ends the connection. With a
//! cluster key, each end first sends a hello and every frame is sealed (see
//! [`crate::wire::seal`]); a frame that fails authentication ends the connection.

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use crate::wire::MAX_FRAME;
use crate::wire::seal::{self, ClusterKey, HELLO_LEN, HELLO_MAGIC, Role, SealError, StreamSeal};

pub type FramedStream = Framed<TcpStream, FrameCodec>;

/// Length-delimited frames, sealed when the connection has a key.
#[derive(Debug)]
pub struct FrameCodec {
    length: LengthDelimitedCodec,
    seal: Option<StreamSeal>,
}

impl FrameCodec {
    fn new(seal: Option<StreamSeal>) -> FrameCodec {
        FrameCodec {
            length: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(MAX_FRAME + seal::FRAME_OVERHEAD)
                .new_codec(),
            seal,
        }
    }
}

impl FrameCodec {
    /// Bytes a frame of `len` bytes takes on the wire: its length prefix, and its seal.
    pub fn wire_len(&self, len: usize) -> u64 {
        let seal = if self.seal.is_some() {
            seal::FRAME_OVERHEAD
        } else {
            0
        };
        (4 + len + seal) as u64
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(mut frame) = self.length.decode(src)? else {
            return Ok(None);
        };
        if let Some(seal) = &mut self.seal {
            seal.open(&mut frame).map_err(invalid)?;
        }
        Ok(Some(frame))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        match &mut self.seal {
            Some(seal) => self.length.encode(seal.seal(&frame), dst),
            None => self.length.encode(frame, dst),
        }
    }
}

fn invalid(e: SealError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether an error of a stream is a seal's: the peer has another key, or none.
pub fn is_seal_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SealError>())
}

/// A framed stream over an accepted or connected socket; with `key`, after the handshake.
async fn framed(
    mut stream: TcpStream,
    key: Option<&ClusterKey>,
    role: Role,
) -> io::Result<FramedStream> {
    let _ = stream.set_nodelay(true);
    let seal = match key {
        None => None,
        Some(key) => {
            // Both ends speak first, so the handshake costs one trip, not two.
            let (mine, my_random) = seal::hello();
            stream.write_all(&mine).await?;
            let mut theirs = [0u8; HELLO_LEN];
            // The magic first: a peer without the key is refused at its first bytes, even
            // when it sent fewer than a hello's and waits for an answer.
            stream.read_exact(&mut theirs[..HELLO_MAGIC.len()]).await?;
            if theirs[..HELLO_MAGIC.len()] != HELLO_MAGIC {
                return Err(invalid(SealError::BadHello));
            }
            stream.read_exact(&mut theirs[HELLO_MAGIC.len()..]).await?;
            let their_random = seal::parse_hello(&theirs).map_err(invalid)?;
            let (client, server) = match role {
                Role::Client => (&my_random, &their_random),
                Role::Server => (&their_random, &my_random),
            };
            Some(StreamSeal::new(key, role, client, server))
        }
    };
    Ok(Framed::new(stream, FrameCodec::new(seal)))
}

/// The framed stream of a connection this node accepted. The caller bounds the time it may
/// take (a key's handshake waits for the peer's hello).
pub async fn accept(stream: TcpStream, key: Option<&ClusterKey>) -> io::Result<FramedStream> {
    framed(stream, key, Role::Server).await
}

/// Connects to `addr`, with the handshake of `key` if given.
pub async fn connect(addr: SocketAddr, key: Option<&ClusterKey>) -> io::Result<FramedStream> {
    framed(TcpStream::connect(addr).await?, key, Role::Client).await
}

pub async fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};

    async fn pair(
        client_key: Option<&ClusterKey>,
        server_key: Option<ClusterKey>,
    ) -> (io::Result<FramedStream>, io::Result<FramedStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept(stream, server_key.as_ref()).await
        });
        let client = connect(addr, client_key).await;
        (client, server.await.unwrap())
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
    async fn another_key_fails_at_the_first_frame() {
        let (client, server) = pair(
            Some(&key("a key of the test cluster")),
            Some(key("another key, same length")),
        )
        .await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.send(Bytes::from_static(b"hello")).await.unwrap();
        let e = server.next().await.unwrap().unwrap_err();
        assert!(is_seal_error(&e), "{e}");
    }

    #[tokio::test]
    async fn a_plain_client_of_a_keyed_server_is_refused_at_the_hello() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            accept(stream, Some(&key("a key of the test cluster"))).await
        });
        let mut client = connect(addr, None).await.unwrap();
        // A plain frame shorter than a hello: refused at its first bytes, not after a wait.
        client.send(Bytes::from_static(b"ping")).await.unwrap();
        let e = server.await.unwrap().unwrap_err();
        assert!(is_seal_error(&e), "{e}");
    }

    #[tokio::test]
    async fn without_keys_frames_are_plain() {
        let (client, server) = pair(None, None).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.send(Bytes::from_static(b"plain")).await.unwrap();
        assert_eq!(&server.next().await.unwrap().unwrap()[..], b"plain");
    }
}
