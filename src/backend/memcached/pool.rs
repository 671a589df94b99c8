//! The connections to memcached servers, and which server holds a key.
//!
//! Each server has a small pool of idle connections; a call takes one (or connects), sends
//! one command, reads one answer, and gives the connection back only when the answer was
//! whole and nothing more came. A connection that failed, timed out (its future dropped
//! mid-answer) or read garbage is dropped, so the stream never goes out of step.
//!
//! The server of a key is chosen by rendezvous hashing (highest random weight): each
//! server scores `hash(server, key)` and the highest wins. It needs no ring, is the same on
//! every node whatever order the servers are listed in, and when a server is added or
//! removed only the keys that move to or from it move (about 1/n of them).

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proto::Parse;
use crate::backend::Unavailable;

/// Idle connections kept per server.
const MAX_IDLE: usize = 64;

/// One server and its idle connections.
#[derive(Debug)]
pub struct Server {
    /// `host:port`, also what it is hashed by.
    addr: String,
    idle: Mutex<Vec<Conn>>,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why one exchange failed, and whether a fresh connection may simply try again.
enum Failure {
    /// A pooled connection was closed or reset before any answer came: the server never
    /// read the command (it restarted, or dropped an idle connection).
    Stale(Unavailable),
    Other(Unavailable),
}

impl Server {
    /// The server at `host:port`; connects on first use.
    pub fn new(addr: String) -> Server {
        Server {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `command` and reads the answer `parse` accepts. The caller bounds it in time.
    pub async fn call<T>(
        &self,
        command: &[u8],
        parse: impl Fn(&[u8]) -> Parse<T>,
    ) -> Result<T, Unavailable> {
        let pooled = self.idle.lock().pop();
        if let Some(conn) = pooled {
            match self.exchange(conn, command, &parse).await {
                Ok(value) => return Ok(value),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Stale(_)) => {
                    // Every idle connection is as old as this one: drop them all.
                    self.idle.lock().clear();
                }
            }
        }
        let conn = self.connect().await?;
        match self.exchange(conn, command, &parse).await {
            Ok(value) => Ok(value),
            Err(Failure::Stale(e) | Failure::Other(e)) => Err(e),
        }
    }

    async fn connect(&self) -> Result<Conn, Unavailable> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Unavailable::Failed {
                reason: format!("cannot connect to {}: {e}", self.addr),
            })?;
        // One small command and its answer per exchange: do not wait to fill a segment.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
        })
    }

    async fn exchange<T>(
        &self,
        mut conn: Conn,
        command: &[u8],
        parse: &impl Fn(&[u8]) -> Parse<T>,
    ) -> Result<T, Failure> {
        let failed = |e: std::io::Error, answered: bool| {
            let e = Unavailable::Failed {
                reason: format!("{}: {e}", self.addr),
            };
            if answered {
                Failure::Other(e)
            } else {
                Failure::Stale(e)
            }
        };
        conn.stream
            .write_all(command)
            .await
            .map_err(|e| failed(e, false))?;
        loop {
            match parse(&conn.buf) {
                Parse::Ready(value, used) => {
                    conn.buf.advance(used);
                    if conn.buf.is_empty() {
                        let mut idle = self.idle.lock();
                        if idle.len() < MAX_IDLE {
                            idle.push(conn);
                        }
                    }
                    // Bytes beyond the answer were never asked for: the connection goes.
                    return Ok(value);
                }
                Parse::Invalid(reason) => {
                    return Err(Failure::Other(Unavailable::Garbled {
                        reason: format!("{}: {reason}", self.addr),
                    }));
                }
                Parse::Incomplete => {}
            }
            let answered = !conn.buf.is_empty();
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed by the server",
                    );
                    return Err(failed(e, answered));
                }
                Ok(_) => {}
                Err(e) => return Err(failed(e, answered)),
            }
        }
    }
}

/// The index in `servers` (by their `host:port`) of the server that holds `key`.
pub fn pick<'a>(servers: impl IntoIterator<Item = &'a str>, key: &str) -> usize {
    let mut best = (0, 0u64);
    for (i, server) in servers.into_iter().enumerate() {
        let score = score(server, key);
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// A stable 64-bit hash of (server, key): FNV-1a over both (with a separator), then
/// splitmix64's finalizer for well-spread bits. The same on every node and every build.
fn score(server: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in server.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("deltacast:test:{i:032X}")).collect()
    }

    #[test]
    fn every_key_goes_to_one_server_and_all_servers_get_some() {
        let servers = ["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"];
        let mut counts = [0usize; 3];
        for key in keys(3000) {
            counts[pick(servers, &key)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_order_servers_are_listed_in_does_not_matter() {
        let a = ["h1:1", "h2:2", "h3:3"];
        let b = ["h3:3", "h1:1", "h2:2"];
        for key in keys(200) {
            assert_eq!(a[pick(a, &key)], b[pick(b, &key)]);
        }
    }

    #[test]
    fn adding_a_server_moves_only_the_keys_it_takes() {
        let before = ["h1:1", "h2:2", "h3:3"];
        let after = ["h1:1", "h2:2", "h3:3", "h4:4"];
        let mut moved = 0;
        for key in keys(2000) {
            let (was, is) = (before[pick(before, &key)], after[pick(after, &key)]);
            if was != is {
                assert_eq!(is, "h4:4", "a key moved between two old servers");
                moved += 1;
            }
        }
        assert!((350..650).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn one_server_takes_everything() {
        assert_eq!(pick(["only:1"], "k"), 0);
        assert_eq!(pick(std::iter::empty(), "k"), 0);
    }
}
