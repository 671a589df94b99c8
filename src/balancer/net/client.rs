//! A client connection kept out of the runtime's poller for as long as it need not wait.
//!
//! A new connection is served with plain non-blocking reads and writes: when its request is
//! already in the socket as it is accepted (often, under load) and its answer fits in the
//! socket's send buffer, it is served and closed without ever being registered with epoll.
//! That saves the two system calls of registering and removing it (`EPOLL_CTL_ADD`,
//! `EPOLL_CTL_DEL`), the kernel's wake-ups for it, and tokio's allocation and bookkeeping
//! of a registration. The first read or write that would block registers the connection
//! with tokio, for the rest of its life; from then on it is an ordinary [`TcpStream`].

use std::io::{self, Read};
use std::net::Shutdown;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Most bytes read at once while the connection is not registered.
const DIRECT_READ: usize = 4096;

thread_local! {
    /// Where a read lands before it is copied to the connection's buffer: safe code cannot
    /// read into a buffer's uninitialised room, and clearing that room for every read
    /// would cost more than copying the few hundred bytes of a request head.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; DIRECT_READ].into_boxed_slice());
}

/// A client connection, registered with the runtime only once it has to wait.
pub struct ClientSocket {
    state: State,
}

enum State {
    /// Not registered: every operation is tried once, without waiting.
    Direct(std::net::TcpStream),
    /// Registered with the runtime.
    Polled(TcpStream),
    /// Registration failed; the socket is closed.
    Closed,
}

impl ClientSocket {
    /// Wraps an accepted connection, which must be in non-blocking mode.
    pub fn new(stream: std::net::TcpStream) -> ClientSocket {
        ClientSocket {
            state: State::Direct(stream),
        }
    }

    /// Whether the connection has been registered with the runtime (it once had to wait).
    #[cfg(test)]
    fn is_polled(&self) -> bool {
        matches!(self.state, State::Polled(_))
    }

    /// Reads what the client sent into `buf`, waiting for it if nothing is there yet; 0
    /// at the end of the stream.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if let Some(n) = self.read_now(buf)? {
            return Ok(n);
        }
        self.polled()?.read_buf(buf).await
    }

    /// What can be read without waiting: `None` when nothing is there yet (or the
    /// connection is registered, so reads go through the runtime).
    fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let State::Direct(stream) = &mut self.state else {
            return Ok(None);
        };
        SCRATCH.with_borrow_mut(|scratch| {
            loop {
                match stream.read(scratch) {
                    Ok(n) => {
                        buf.extend_from_slice(&scratch[..n]);
                        return Ok(Some(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// Writes all of `data`, waiting for room in the socket when it is full.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data, 0).await
    }

    /// Writes all of `data`, the last bytes before the connection is closed, which must
    /// follow at once: they may wait in the socket for the close (`MSG_MORE`), which then
    /// sends them and the end of the stream in one segment rather than two.
    pub async fn write_last(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data, libc::MSG_MORE).await
    }

    async fn write(&mut self, mut data: &[u8], flags: libc::c_int) -> io::Result<()> {
        let flags = flags | libc::MSG_NOSIGNAL;
        while !data.is_empty() {
            let sent = match &self.state {
                State::Direct(stream) => {
                    socket2::SockRef::from(stream).send_with_flags(data, flags)
                }
                // Through `try_io`, so that a full socket clears the runtime's readiness.
                State::Polled(stream) => stream.try_io(Interest::WRITABLE, || {
                    socket2::SockRef::from(stream).send_with_flags(data, flags)
                }),
                State::Closed => return Err(closed()),
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Full: wait for room, registering the connection if it is not yet.
                    self.polled()?.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Ends the sending side (what was written still goes out).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.state {
            State::Direct(stream) => stream.shutdown(Shutdown::Write),
            State::Polled(stream) => stream.shutdown().await,
            State::Closed => Err(closed()),
        }
    }

    /// The connection as a registered tokio stream, for code that needs `AsyncRead` and
    /// `AsyncWrite` (hyper).
    pub fn into_polled(mut self) -> io::Result<TcpStream> {
        self.polled()?;
        match self.state {
            State::Polled(stream) => Ok(stream),
            State::Direct(_) | State::Closed => Err(closed()),
        }
    }

    /// Registers the connection with the runtime if it is not yet.
    fn polled(&mut self) -> io::Result<&mut TcpStream> {
        if matches!(self.state, State::Direct(_)) {
            if let State::Direct(stream) = std::mem::replace(&mut self.state, State::Closed) {
                self.state = State::Polled(TcpStream::from_std(stream)?);
            }
        }
        match &mut self.state {
            State::Polled(stream) => Ok(stream),
            State::Direct(_) | State::Closed => Err(closed()),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the client connection could not be registered",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: the accepted side (non-blocking, as the worker accepts it) and
    /// the client's side.
    async fn pair() -> (std::net::TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let accepted = accepted.unwrap().0.into_std().unwrap();
        (accepted, client.unwrap())
    }

    #[tokio::test]
    async fn what_is_there_already_is_read_without_registering() {
        let (accepted, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut socket = ClientSocket::new(accepted);
        let mut buf = BytesMut::from(&b"x"[..]);
        // The bytes may take a moment to cross loopback; once they are there, the read
        // takes them without registering.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut probe = [0u8; 1];
            let State::Direct(s) = &socket.state else {
                panic!("registered too early")
            };
            if s.peek(&mut probe).is_ok() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::task::yield_now().await;
        }
        let n = socket.read_buf(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        assert_eq!(&buf[..], b"xGET / HTTP/1.1\r\n\r\n");
        assert!(!socket.is_polled());
        socket.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(!socket.is_polled());
        socket.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn a_read_with_nothing_there_registers_and_waits() {
        let (accepted, mut client) = pair().await;
        let mut socket = ClientSocket::new(accepted);
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let n = socket.read_buf(&mut buf).await.unwrap();
            (socket.is_polled(), buf.split_to(n))
        });
        tokio::task::yield_now().await;
        client.write_all(b"late").await.unwrap();
        let (polled, got) = reader.await.unwrap();
        assert_eq!(&got[..], b"late");
        assert!(polled);
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_takes_goes_through_whole() {
        let (accepted, mut client) = pair().await;
        let mut socket = ClientSocket::new(accepted);
        // Far more than the send and receive buffers hold: the write has to wait for the
        // client to read, so it registers half-way and finishes from there.
        let data: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            socket.write_all(&data).await.unwrap();
            socket.shutdown().await.unwrap();
            socket.is_polled()
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "the bytes differ");
        assert!(writer.await.unwrap());
    }

    #[tokio::test]
    async fn the_last_bytes_go_out_with_the_close() {
        for registered in [false, true] {
            let (accepted, mut client) = pair().await;
            let mut socket = ClientSocket::new(accepted);
            if registered {
                socket.polled().unwrap();
            }
            socket.write_last(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            drop(socket);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n", "registered: {registered}");
        }
    }

    #[tokio::test]
    async fn the_end_of_the_stream_reads_as_zero() {
        let (accepted, client) = pair().await;
        drop(client);
        let mut socket = ClientSocket::new(accepted);
        let mut buf = BytesMut::new();
        assert_eq!(socket.read_buf(&mut buf).await.unwrap(), 0);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_registered_stream_serves_hyper() {
        let (accepted, mut client) = pair().await;
        let socket = ClientSocket::new(accepted);
        let mut stream = socket.into_polled().unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }
}
