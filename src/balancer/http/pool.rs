//! Connections to the members: HTTP/1.1 over TCP, opened when needed, kept alive in each
//! worker's [`Pool`] for the next request to the same member, and driven by the task of
//! the client connection that uses them, not by a task of their own. A proxied request
//! thus goes from the client's socket to the member's and back within one task, with no
//! hand-off between tasks. A request waits for the head of its answer at most the member
//! timeout ([`MemberTimeout`]).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tracing::debug;

use crate::balancer::choice::registry::Member;
use crate::balancer::http::body::{OutBody, Upload};
use crate::balancer::http::timeout::MemberTimeout;

/// How long a connection to a member may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections to a member are closed after this long unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most idle connections a worker keeps per member; more are closed after use.
const MAX_IDLE_PER_MEMBER: usize = 128;

/// The future that drives one connection: it reads the answers and writes the requests
/// and their bodies, and ends when the connection closes or is upgraded.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One HTTP/1.1 connection to a member.
pub struct MemberConn {
    send: SendRequest<OutBody>,
    /// None once the connection has ended.
    driver: Option<Driver>,
    /// It served a request before this one: a failure to send on it may only mean the
    /// member closed it while it was idle.
    pub reused: bool,
}

/// Why a request got no answer on a connection.
pub enum SendError {
    /// It was not written: it comes back whole, to be sent elsewhere.
    NotSent(hyper::Error, Box<Request<OutBody>>),
    /// It was written, in full or in part, and may have reached the member.
    Failed(hyper::Error),
    /// It was sent, and no answer came within the member timeout (given here).
    TimedOut(Duration),
}

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {authority}: no answer within {CONNECT_TIMEOUT:?}")]
    Timeout { authority: String },
    #[error("HTTP/1.1 handshake with {authority} failed: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
}

/// Whether nothing is waiting on an idle connection: no byte and no end. Asked of the
/// readiness the runtime keeps from epoll, without a system call (nginx watches its idle
/// upstream connections the same way): the answer was read until the socket had no more,
/// which cleared it, so readable now means something came since. What comes in the instant
/// before the next request is the one case left, and a stale connection is retried once.
fn quiet(stream: &TcpStream) -> bool {
    use futures_util::FutureExt;
    stream
        .ready(tokio::io::Interest::READABLE)
        .now_or_never()
        .is_none()
}

/// A TCP connection to `authority` (`host:port`), with TCP_NODELAY.
pub async fn connect(authority: &str) -> Result<TcpStream, ConnectError> {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority));
    let stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(ConnectError::Connect {
                authority: authority.to_string(),
                source,
            });
        }
        Err(_) => {
            return Err(ConnectError::Timeout {
                authority: authority.to_string(),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl MemberConn {
    /// Opens a connection to `authority` (`host:port`).
    pub async fn open(authority: &str) -> Result<MemberConn, ConnectError> {
        let stream = connect(authority).await?;
        MemberConn::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                authority: authority.to_string(),
                source,
            })
    }

    /// HTTP/1.1 over an open connection.
    pub async fn handshake<T>(io: T) -> hyper::Result<MemberConn>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (send, conn) = http1::handshake(io).await?;
        Ok(MemberConn {
            send,
            driver: Some(Box::pin(conn.with_upgrades())),
            reused: false,
        })
    }

    /// Moves the connection forward (reads, writes); false once it has ended.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = &mut self.driver {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    debug!(error = %e, "member connection ended");
                }
                self.driver = None;
            }
        }
        self.driver.is_some()
    }

    /// Whether it is open and waits for a request: the last request was written whole and
    /// its answer read whole.
    pub fn is_idle(&self) -> bool {
        self.driver.is_some() && self.send.is_ready()
    }

    /// Whether it can take a request now: still open and idle. Polls the connection, so
    /// an idle one the member has closed is found closed.
    fn poll_usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// Sends a request and waits for the head of the answer, driving the connection
    /// meanwhile, at most `timeout` once the request was sent. A request body streamed
    /// from the client is still being sent while it moves, and while it waits for the
    /// client (whose own wait is bounded, see [`Upload`]): the time counts from its last
    /// move, not from the start. One timer, reset only when it runs out during an upload.
    pub async fn send(
        &mut self,
        request: Request<OutBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        let upload = request.body().upload().cloned();
        let mut seen = upload.as_ref().map(Upload::moves);
        let mut last_move = None;
        let mut answer = pin!(self.send.try_send_request(request));
        let mut deadline = pin!(tokio::time::sleep(timeout));
        let result = poll_fn(|cx| {
            self.drive(cx);
            if let Poll::Ready(result) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            if let Some(upload) = &upload {
                // The upload moves only while the connection is driven, just above.
                let moves = upload.moves();
                if seen != Some(moves) {
                    seen = Some(moves);
                    last_move = Some(tokio::time::Instant::now());
                }
            }
            while deadline.as_mut().poll(cx).is_ready() {
                let now = tokio::time::Instant::now();
                let next = match (&upload, last_move) {
                    (Some(upload), _) if upload.waits_for_client() => now + timeout,
                    (_, Some(moved)) if moved + timeout > now => moved + timeout,
                    _ => return Poll::Ready(None),
                };
                deadline.as_mut().reset(next);
            }
            Poll::Pending
        })
        .await;
        match result {
            Some(Ok(response)) => Ok(response),
            Some(Err(mut e)) => Err(match e.take_message() {
                Some(request) => SendError::NotSent(e.into_error(), Box::new(request)),
                None => SendError::Failed(e.into_error()),
            }),
            None => Err(SendError::TimedOut(timeout)),
        }
    }

    /// Gives the connection up to a task of its own: for an upgraded connection, whose
    /// driver must run to the end to hand the socket over.
    pub fn into_driver(self) -> Option<Driver> {
        self.driver
    }
}

/// One worker's idle connections, by member, and the timeout of the requests on them.
/// Only that worker uses it; the lock is never contended.
pub struct Pool {
    idle: Mutex<HashMap<u64, Vec<Idle>>>,
    /// Idle connections of the fast path ([`super::fast`]), which speaks HTTP/1.1 on them
    /// itself.
    raw: Mutex<HashMap<u64, Vec<Idle<TcpStream>>>>,
    timeout: Arc<MemberTimeout>,
}

struct Idle<C = MemberConn> {
    conn: C,
    since: Instant,
}

impl Pool {
    pub fn new(timeout: Arc<MemberTimeout>) -> Pool {
        Pool {
            idle: Mutex::default(),
            raw: Mutex::default(),
            timeout,
        }
    }

    /// How long a member may keep a request on these connections waiting.
    pub fn timeout(&self) -> &Arc<MemberTimeout> {
        &self.timeout
    }

    /// A usable idle connection to `member`, the most recently used first, or a new one.
    pub async fn checkout(&self, member: &Member) -> Result<MemberConn, ConnectError> {
        if let Some(conn) = poll_fn(|cx| Poll::Ready(self.take_usable(member, cx))).await {
            return Ok(conn);
        }
        MemberConn::open(&member.authority).await
    }

    fn take_usable(&self, member: &Member, cx: &mut Context<'_>) -> Option<MemberConn> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&member.id)?;
        let now = Instant::now();
        while let Some(mut entry) = list.pop() {
            if now.duration_since(entry.since) < IDLE_TIMEOUT && entry.conn.poll_usable(cx) {
                entry.conn.reused = true;
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps a connection whose answer was read in full, for the next request to `member`.
    pub fn release(&self, member: &Member, conn: MemberConn) {
        if conn.driver.is_none() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(member.id).or_default();
        if list.len() < MAX_IDLE_PER_MEMBER {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// An idle connection of the fast path to `member`, the most recently used first (and
    /// whether it is one), or a new one. An idle connection is kept only if nothing came on
    /// it since its last answer: a byte there (a late part of an answer, a member's 408
    /// before it closes) would be taken for the answer to the next request, and an end
    /// means the member closed it.
    pub async fn checkout_raw(&self, member: &Member) -> Result<(TcpStream, bool), ConnectError> {
        let reused = {
            let mut raw = self.raw.lock();
            let now = Instant::now();
            let list = raw.get_mut(&member.id);
            list.and_then(|list| {
                std::iter::from_fn(|| list.pop()).find(|entry| {
                    now.duration_since(entry.since) < IDLE_TIMEOUT && quiet(&entry.conn)
                })
            })
        };
        match reused {
            Some(entry) => Ok((entry.conn, true)),
            None => Ok((connect(&member.authority).await?, false)),
        }
    }

    /// Keeps a fast-path connection whose answer was read in full and nothing more.
    pub fn release_raw(&self, member: &Member, stream: TcpStream) {
        let mut raw = self.raw.lock();
        let list = raw.entry(member.id).or_default();
        if list.len() < MAX_IDLE_PER_MEMBER {
            list.push(Idle {
                conn: stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle for too long and those of members no longer listed.
    pub fn sweep(&self, members: &[std::sync::Arc<Member>], now: Instant) {
        fn keep<C>(
            map: &mut HashMap<u64, Vec<Idle<C>>>,
            members: &[std::sync::Arc<Member>],
            now: Instant,
        ) {
            map.retain(|id, list| {
                list.retain(|entry| now.duration_since(entry.since) < IDLE_TIMEOUT);
                !list.is_empty() && members.iter().any(|m| m.id == *id)
            });
        }
        keep(&mut self.idle.lock(), members, now);
        keep(&mut self.raw.lock(), members, now);
    }

    /// Idle connections kept now (for tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::balancer::http::body::OutBody;
    use crate::balancer::testing::{
        CHUNKED, T, bounded, client_request, member as test_member, silent_member, streamed,
    };
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Body;
    use hyper::header::{self, HeaderValue};
    use hyper::service::service_fn;
    use tokio::io::AsyncWriteExt;

    fn pool() -> Pool {
        Pool::new(Arc::new(MemberTimeout::new(Duration::from_secs(60))))
    }

    /// A member answering "hello" to every request, keeping connections alive or not;
    /// counts the connections it accepted, and those it has closed.
    async fn member(keep_alive: bool) -> (Arc<Member>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ended) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(
                            TokioIo::new(stream),
                            service_fn(|_req| async {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
                            }),
                        )
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let member = Member::new("m", &format!("http://{addr}"), 1, true);
        (Arc::new(member), accepted, closed)
    }

    /// Sends a GET and reads the answer whole, driving the connection.
    async fn get(conn: &mut MemberConn, member: &Arc<Member>) -> Bytes {
        let body = OutBody::empty(member);
        let mut request = Request::new(body);
        request
            .headers_mut()
            .insert(hyper::header::HOST, "m".parse().unwrap());
        let Ok(response) = conn.send(request, Duration::from_secs(60)).await else {
            panic!("no answer");
        };
        let mut body = response.into_body();
        let mut read = Vec::new();
        while let Some(frame) = poll_fn(|cx| {
            let polled = Pin::new(&mut body).poll_frame(cx);
            if polled.is_pending() {
                conn.drive(cx);
            }
            polled
        })
        .await
        {
            if let Ok(data) = frame.unwrap().into_data() {
                read.extend_from_slice(&data);
            }
        }
        // Lets the connection settle into idle.
        poll_fn(|cx| {
            conn.drive(cx);
            Poll::Ready(())
        })
        .await;
        Bytes::from(read)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read_whole() {
        let (member, accepted, _) = member(true).await;
        let pool = pool();
        let mut conn = pool.checkout(&member).await.unwrap();
        assert!(!conn.reused);
        assert_eq!(get(&mut conn, &member).await, "hello");
        assert!(conn.is_idle());
        pool.release(&member, conn);
        assert_eq!(pool.idle_count(), 1);
        let mut again = pool.checkout(&member).await.unwrap();
        assert!(again.reused);
        assert_eq!(get(&mut again, &member).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_member_closed_is_not_handed_out_again() {
        let (member, accepted, closed) = member(false).await;
        let pool = pool();
        let mut conn = pool.checkout(&member).await.unwrap();
        assert_eq!(get(&mut conn, &member).await, "hello");
        // Kept even if it looks idle: the close may not have arrived yet.
        pool.release(&member, conn);
        // Once the member has closed its side, the pool must see it.
        tokio::time::timeout(Duration::from_secs(10), async {
            while closed.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the member closes the connection");
        let mut fresh = pool.checkout(&member).await.unwrap();
        assert!(!fresh.reused);
        assert_eq!(get(&mut fresh, &member).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sweep_closes_connections_idle_too_long_and_those_of_members_gone() {
        let (member, _, _) = member(true).await;
        let pool = pool();
        let mut conn = pool.checkout(&member).await.unwrap();
        get(&mut conn, &member).await;
        pool.release(&member, conn);
        let now = Instant::now();
        pool.sweep(std::slice::from_ref(&member), now);
        assert_eq!(pool.idle_count(), 1);
        pool.sweep(&[], now);
        assert_eq!(pool.idle_count(), 0);

        let mut conn = pool.checkout(&member).await.unwrap();
        get(&mut conn, &member).await;
        pool.release(&member, conn);
        pool.sweep(std::slice::from_ref(&member), Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_member_that_refuses_connections_gives_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let member = Member::new("gone", &format!("http://{addr}"), 1, true);
        let e = pool().checkout(&member).await.err().unwrap();
        assert!(matches!(e, ConnectError::Connect { .. }), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_never_answers_times_out_after_the_timeout() {
        let mut conn = silent_member().await;
        let mut request = Request::new(OutBody::empty(&test_member()));
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("m"));
        let start = tokio::time::Instant::now();
        let result = bounded(conn.send(request, T)).await;
        assert!(matches!(result, Err(SendError::TimedOut(t)) if t == T));
        assert_eq!(start.elapsed(), T);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_that_keeps_moving_is_not_cut_and_the_time_counts_from_its_end() {
        let (incoming, mut client) = client_request(CHUNKED).await;
        let (request, upload) = streamed(incoming, &test_member());
        let mut conn = silent_member().await;
        let start = tokio::time::Instant::now();
        // Four chunks, each a little within the timeout of the one before: 32 s in all.
        let step = T * 8 / 10;
        let sender = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(step).await;
                client.write_all(b"3\r\nabc\r\n").await.unwrap();
            }
            client.write_all(b"0\r\n\r\n").await.unwrap();
            client
        });
        let result = bounded(conn.send(request, T)).await;
        assert!(matches!(result, Err(SendError::TimedOut(_))));
        assert_eq!(start.elapsed(), step * 4 + T);
        assert!(upload.answer(T).is_none(), "not the client's fault");
        assert_eq!(upload.moves(), (4, false));
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_its_body_gets_408_not_the_member_504() {
        let (incoming, mut client) = client_request(CHUNKED).await;
        let (request, upload) = streamed(incoming, &test_member());
        let mut conn = silent_member().await;
        let start = tokio::time::Instant::now();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"3\r\nabc\r\n").await.unwrap();
            client
        });
        let result = bounded(conn.send(request, T)).await;
        assert!(matches!(result, Err(SendError::Failed(_))));
        assert_eq!(start.elapsed(), Duration::from_secs(1) + T);
        let answer = upload.answer(T).expect("the client's fault");
        assert_eq!(answer, crate::balancer::rules::Refusal::ClientTimedOut(T));
        drop(sender.await.unwrap());
    }
}
