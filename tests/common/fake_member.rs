//! Members played by the test itself, for what real nodes would not do: echo what they
//! received, switch protocols, answer slowly, never, in part, twice, or close at once; and
//! a backend that is not deltacast, whose session ids have a shape of their own. Each
//! serves from threads of the test process.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::raw_http::read_request;
use super::wait_until;

/// Serves each connection of a new listener on 127.0.0.1 (port 0) from a thread of its own,
/// until the test process ends; returns the listener's address.
fn serve_each(handle: impl Fn(TcpStream) + Send + Copy + 'static) -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || handle(stream));
        }
    });
    addr
}

/// A member that answers every request with its head and body as it received them, plus
/// hop-by-hop headers the balancer must not pass back. Runs until the test process ends.
pub fn echo_member() -> SocketAddr {
    serve_each(|mut stream| {
        while let Some((head, body)) = read_request(&mut stream) {
            let mut answer = head.into_bytes();
            answer.extend_from_slice(b"\r\n\r\n");
            answer.extend_from_slice(&body);
            let top = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 1\r\n\r\n",
                answer.len()
            );
            if stream.write_all(top.as_bytes()).is_err() || stream.write_all(&answer).is_err() {
                return;
            }
        }
    })
}

/// A member that switches every request to an "echo" protocol and echoes bytes back.
pub fn upgrading_member() -> SocketAddr {
    serve_each(|mut stream| {
        let Some((head, _)) = read_request(&mut stream) else {
            return;
        };
        if !head.to_ascii_lowercase().contains("upgrade: echo") {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let _ = stream.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        );
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    })
}

/// A member that reads one request head per connection, waits `delay`, answers `answer`,
/// and closes if `close`.
pub fn slow_member(delay: Duration, answer: &'static [u8], close: bool) -> SocketAddr {
    serve_each(move |mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                got.drain(..end + 4);
                std::thread::sleep(delay);
                if s.write_all(answer).is_err() {
                    return;
                }
                if close {
                    return;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// What a [`RawMember`] does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads everything, never answers.
    Silent,
    /// Answers the first request with `Content-Length: 100` and 10 bytes of it, then
    /// nothing more.
    CutOff,
    /// Answers every request (a head without a body) `200 ok`.
    Healthy,
    /// Answers every request with a chunked body, `hello world` in two chunks and a trailer.
    Chunked,
    /// Answers in HTTP/1.0, the body ending with the connection, and closes it.
    UntilClose,
    /// Answers `200 ok` as if it kept the connection, then closes it (a member whose
    /// keep-alive timeout ran out).
    ClosesAfterAnswer,
    /// Answers `200 ok`, then, once the answer surely went on, sends a second answer
    /// nobody asked for (`evil`) on the same connection.
    LateBytes,
    /// Answers every request with these bytes as they are: a member's own framing, right
    /// or wrong.
    Answers(&'static [u8]),
    /// Answers the first request with the first bytes, then, once the test calls
    /// [`RawMember::go`], with the second: an answer that goes wrong after its head went on.
    AnswersInTwo(&'static [u8], &'static [u8]),
}

/// The chunked answer of [`Behaviour::Chunked`], as it goes over the wire.
pub const CHUNKED_ANSWER: &[u8] = b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

/// A member played by the test on a raw socket, one thread per connection. It counts the
/// connections it accepted and those the balancer closed, and keeps every byte it
/// received. Dropping it stops it and joins all its threads.
pub struct RawMember {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    /// Late bytes written ([`Behaviour::LateBytes`]).
    late: Arc<AtomicU64>,
    /// The second part may go ([`Behaviour::AnswersInTwo`]).
    go: Arc<AtomicBool>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl RawMember {
    pub fn start(behaviour: Behaviour) -> RawMember {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let late = Arc::new(AtomicU64::new(0));
        let go = Arc::new(AtomicBool::new(false));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, accepted, closed, late, go, received) = (
                stop.clone(),
                accepted.clone(),
                closed.clone(),
                late.clone(),
                go.clone(),
                received.clone(),
            );
            std::thread::spawn(move || {
                let mut threads = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let (stop, closed, late, go, received) = (
                                stop.clone(),
                                closed.clone(),
                                late.clone(),
                                go.clone(),
                                received.clone(),
                            );
                            threads.push(std::thread::spawn(move || {
                                let flags = Flags {
                                    stop: &stop,
                                    late: &late,
                                    go: &go,
                                };
                                serve_raw(stream, behaviour, flags, &received);
                                // Ended by the balancer, not by the test stopping it.
                                if !stop.load(Ordering::Relaxed) {
                                    closed.fetch_add(1, Ordering::Relaxed);
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                for thread in threads {
                    let _ = thread.join();
                }
            })
        };
        RawMember {
            addr,
            stop,
            accepted,
            closed,
            late,
            go,
            received,
            acceptor: Some(acceptor),
        }
    }

    /// Lets the second part of its answers go ([`Behaviour::AnswersInTwo`]).
    pub fn go(&self) {
        self.go.store(true, Ordering::Relaxed);
    }

    /// Connections the balancer closed so far.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Connections it accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Late answers it wrote so far ([`Behaviour::LateBytes`]).
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// `route=http://addr`, for `--member`.
    pub fn member_arg(&self, route: &str) -> String {
        format!("{route}=http://{}", self.addr)
    }

    pub fn received(&self) -> String {
        let bytes = self.received.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits (bounded) until the balancer closed `n` of its connections.
    pub fn wait_closed(&self, n: u64) {
        wait_until(
            Duration::from_secs(10),
            "the balancer closes the member's connections",
            || (self.closed.load(Ordering::Relaxed) >= n).then_some(()),
        );
    }
}

impl Drop for RawMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// What the test and a [`RawMember`]'s connections share: stop, the late answers written,
/// and whether a second part may go.
#[derive(Clone, Copy)]
pub struct Flags<'a> {
    pub stop: &'a AtomicBool,
    pub late: &'a AtomicU64,
    pub go: &'a AtomicBool,
}

/// One connection of a [`RawMember`], until the balancer closes it or the test stops.
pub fn serve_raw(
    mut stream: TcpStream,
    behaviour: Behaviour,
    flags: Flags<'_>,
    received: &std::sync::Mutex<Vec<u8>>,
) {
    let Flags { stop, late, go } = flags;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut pending = Vec::new();
    let mut answered = false;
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            let answer: &[u8] = match behaviour {
                Behaviour::Silent => b"",
                Behaviour::CutOff if !answered => {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
                }
                Behaviour::CutOff => b"",
                Behaviour::Healthy | Behaviour::ClosesAfterAnswer | Behaviour::LateBytes => {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                }
                Behaviour::Chunked => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Behaviour::UntilClose => {
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbye\n"
                }
                Behaviour::Answers(answer) => answer,
                Behaviour::AnswersInTwo(first, _) if !answered => first,
                Behaviour::AnswersInTwo(..) => b"",
            };
            let first = !answered;
            answered = true;
            if stream.write_all(answer).is_err() {
                return;
            }
            if matches!(behaviour, Behaviour::Chunked) && stream.write_all(CHUNKED_ANSWER).is_err()
            {
                return;
            }
            if let (Behaviour::AnswersInTwo(_, second), true) = (behaviour, first) {
                while !go.load(Ordering::Relaxed) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if stream.write_all(second).is_err() {
                    return;
                }
            }
            if matches!(
                behaviour,
                Behaviour::UntilClose | Behaviour::ClosesAfterAnswer
            ) {
                return;
            }
            if matches!(behaviour, Behaviour::LateBytes) {
                // Late enough for the balancer to have pooled the connection.
                std::thread::sleep(Duration::from_millis(100));
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil\n")
                    .is_err()
                {
                    return;
                }
                late.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How a [`ForeignBackend`] writes the session ids it issues: never deltacast's 32 hex
/// digits, always ending in `.ROUTE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdShape {
    /// Jetty's: the worker name, letters and digits, then `.` and the worker name again
    /// (`node0k3s9x1.node0`).
    Jetty,
    /// As short as an id goes: `x7.A`.
    Short,
    /// A UUID, in a quoted cookie value (RFC 6265 allows one):
    /// `"123e4567-e89b-42d3-a456-426614174000.r3"`.
    QuotedUuid,
}

/// A backend that is not deltacast, as mod_proxy_balancer fronts any: every request is
/// answered `200` with the backend's route as the body, and one without a `JSESSIONID`
/// cookie also gets a new session id of its [`IdShape`] in a `Set-Cookie`. Serves from
/// threads of the test process until it ends.
pub struct ForeignBackend {
    pub addr: SocketAddr,
    pub route: String,
}

impl ForeignBackend {
    pub fn start(route: &str, shape: IdShape) -> ForeignBackend {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let issued = Arc::new(AtomicU64::new(0));
        let name = route.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (route, issued) = (name.clone(), issued.clone());
                std::thread::spawn(move || {
                    while let Some((head, _body)) = read_request(&mut stream) {
                        let has_session = head.lines().any(|l| {
                            l.split_once(':').is_some_and(|(n, v)| {
                                n.eq_ignore_ascii_case("cookie") && v.contains("JSESSIONID=")
                            })
                        });
                        let cookie = if has_session {
                            String::new()
                        } else {
                            let n = issued.fetch_add(1, Ordering::Relaxed);
                            let value = session_id(shape, &route, n);
                            format!("Set-Cookie: JSESSIONID={value}; Path=/; HttpOnly\r\n")
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{cookie}Content-Length: {}\r\n\r\n{route}\n",
                            route.len() + 1
                        );
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ForeignBackend {
            addr,
            route: route.to_string(),
        }
    }

    /// `route=http://addr`, for `--member`.
    pub fn member_arg(&self) -> String {
        format!("{}=http://{}", self.route, self.addr)
    }
}

/// The `n`th session id a backend of `route` issues, as it writes it in its cookie.
fn session_id(shape: IdShape, route: &str, n: u64) -> String {
    match shape {
        IdShape::Jetty => format!("{route}k3s9x{n}.{route}"),
        IdShape::Short => format!("x{n}.{route}"),
        IdShape::QuotedUuid => format!("\"123e4567-e89b-42d3-a456-{n:012}.{route}\""),
    }
}
