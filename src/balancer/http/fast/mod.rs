//! The balancer's fast path, in the manner of nginx and HAProxy: the common request — an
//! HTTP/1.1 GET, HEAD, OPTIONS or DELETE without a body, upgrade or `Expect` — is forwarded
//! by this module's own code over raw sockets. The head is parsed in place and written to
//! the member ([`head`]); the member's answer head is parsed and passed on, and its body
//! copied as it comes ([`relay`]), on a keep-alive connection of the worker's own. No
//! header map, no allocation per request.
//!
//! Everything else — a request with a body, an upgrade, a manager page, HTTP/1.0, anything
//! that does not parse or is over a limit — hands the connection to hyper (the proxy),
//! with the bytes already read, for the rest of its life.
//!
//! The rules are the rulebook's ([`crate::balancer::rules`]), the same as on the hyper
//! path: the fields that cross, the member a request sticks to, the attempts over the
//! members (driven by its stepper), the one-line answers. An answer body that stops is
//! cut off. A client that sends no head within [`HEADER_READ_TIMEOUT`] (also when idle
//! between requests) is closed.

pub mod chunked;
pub mod head;
pub mod relay;

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::balancer::choice::registry::{Member, Order};
use crate::balancer::http::attempt::{Attempt, Busy, unless_left};
use crate::balancer::http::conn::HEADER_READ_TIMEOUT;
use crate::balancer::http::pool::{self, Pool};
use crate::balancer::http::timeout::Stall;
use crate::balancer::http::upstream::Upstream;
use crate::balancer::net::client::ClientSocket;
use crate::balancer::rules::Peer;
use crate::balancer::rules::refusal::{CONTENT_TYPE, Refusal};
use crate::balancer::rules::stepper::{self, Move, Outcome as Attempted, Stepper};
use crate::balancer::rules::sticky;
use head::{Asked, Prepared, Request, prepare};
use relay::{Answer, NoAnswer, pass_answer, read_answer};

/// A request head not complete within this many bytes goes to hyper, which has the limits.
const MAX_FAST_HEAD: usize = 16 * 1024;
/// Buffers larger than this (grown by a large head or body read) are not kept for reuse.
const KEPT_BUFFER: usize = 64 * 1024;
/// Spare buffer sets a worker keeps at most (about 10 KiB each, see [`Buffers::reset`]).
const KEPT_BUFFERS: usize = 64;

/// How a connection left the fast path.
pub enum Outcome {
    /// It is done (closed, or the client went away).
    Done,
    /// The rest is hyper's; `read` was read already. `head_by`: the head in `read` is
    /// not complete, and must be by then (the header-read timeout that started here).
    HandOff {
        read: Bytes,
        head_by: Option<tokio::time::Instant>,
    },
}

/// The buffers the fast path uses for one client connection: the client's bytes, the
/// head for the member, the member's answer, the head for the client.
pub struct Buffers {
    read: BytesMut,
    out: Vec<u8>,
    answer: BytesMut,
    client_head: Vec<u8>,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            read: BytesMut::with_capacity(4096),
            out: Vec::with_capacity(1024),
            answer: BytesMut::with_capacity(4096),
            client_head: Vec::with_capacity(1024),
        }
    }

    /// Empties them for the next connection; false when one grew too large to keep.
    fn reset(&mut self) -> bool {
        // A `BytesMut` that was advanced reports only the room after that point as its
        // capacity, so this check may keep one larger than it says; their growth is
        // bounded anyway, by the head limits (16 KiB of request head before hyper takes
        // over, `MAX_ANSWER_HEAD` of answer head): a kept set holds under 200 KiB at most.
        self.read.clear();
        self.answer.clear();
        self.out.clear();
        self.client_head.clear();
        self.read.capacity() <= KEPT_BUFFER
            && self.out.capacity() <= KEPT_BUFFER
            && self.answer.capacity() <= KEPT_BUFFER
            && self.client_head.capacity() <= KEPT_BUFFER
    }
}

/// A worker's spare [`Buffers`], reused from one connection to the next: four allocations
/// and four frees less per connection, which count when each request has its own.
#[derive(Default)]
pub struct BufferPool(parking_lot::Mutex<Vec<Buffers>>);

impl BufferPool {
    fn take(&self) -> Buffers {
        self.0.lock().pop().unwrap_or_else(Buffers::new)
    }

    fn put(&self, mut buffers: Buffers) {
        if buffers.reset() {
            let mut spare = self.0.lock();
            if spare.len() < KEPT_BUFFERS {
                spare.push(buffers);
            }
        }
    }
}

/// Serves the requests of one client connection until it closes, or until one needs hyper.
pub async fn serve(
    upstream: &Upstream,
    spare: &BufferPool,
    client: &mut ClientSocket,
    peer: &Peer,
    token: &CancellationToken,
) -> Outcome {
    let mut buffers = spare.take();
    let outcome = serve_with(upstream, client, peer, token, &mut buffers).await;
    spare.put(buffers);
    outcome
}

async fn serve_with(
    upstream: &Upstream,
    client: &mut ClientSocket,
    peer: &Peer,
    token: &CancellationToken,
    buffers: &mut Buffers,
) -> Outcome {
    let Buffers {
        read: buf,
        out,
        answer,
        client_head,
    } = buffers;
    loop {
        // The next request head, within the header-read timeout.
        let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
        let request = loop {
            if !buf.is_empty() {
                match prepare(buf, peer, &upstream.sticky, out, |s| upstream.order(&s)) {
                    Prepared::Ready(request) => break request,
                    Prepared::HandOff => {
                        return Outcome::HandOff {
                            read: Bytes::copy_from_slice(buf),
                            head_by: None,
                        };
                    }
                    Prepared::Refuse(refusal) => {
                        // Answered at once: counted as the hyper path counts its own.
                        upstream
                            .figures()
                            .answered(refusal.status(), std::time::Duration::ZERO);
                        refuse(client, refusal, true).await;
                        let _ = client.shutdown().await;
                        return Outcome::Done;
                    }
                    Prepared::Partial if buf.len() >= MAX_FAST_HEAD => {
                        return Outcome::HandOff {
                            read: Bytes::copy_from_slice(buf),
                            head_by: Some(deadline),
                        };
                    }
                    Prepared::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, client.read_buf(buf)) => read,
                _ = token.cancelled(), if buf.is_empty() => return Outcome::Done,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Outcome::Done,
                Ok(Ok(_)) => {}
            }
        };
        buf.advance(request.head_len);
        let keep = forward(upstream, client, request, out, answer, client_head).await;
        if !keep || token.is_cancelled() {
            // Closing a socket with unread bytes resets it, and a reset drops what is still
            // in the socket (with `write_last`, the whole answer) and ends a close-delimited
            // answer with an error instead of its end. Bytes the client sent after its
            // request may be in the socket unread even when `buf` is empty, so the sending
            // side is always shut first: the answer and the FIN go out before any reset.
            let _ = client.shutdown().await;
            return Outcome::Done;
        }
    }
}

/// Forwards one request over the members of its order, as the stepper says, and counts
/// its answer in the worker's figures; whether the client connection may carry another.
async fn forward(
    upstream: &Upstream,
    client: &mut ClientSocket,
    request: Request<Order<'_>>,
    out: &[u8],
    answer: &mut BytesMut,
    client_head: &mut Vec<u8>,
) -> bool {
    let started = std::time::Instant::now();
    let figures = upstream.figures();
    let pool = &upstream.pool;
    let Request { asked, to, .. } = request;
    let named = to.named();
    let timeout = pool.timeout();
    let mut steps = Stepper::new(to, stepper::Request::BODILESS);
    let mut next = steps.start();
    let mut member: Option<Arc<Member>> = None;
    let mut busy: Option<Busy> = None;
    let mut attempt: Option<Attempt> = None;
    let mut answered: Option<(TcpStream, Answer)> = None;
    loop {
        let fresh = match next {
            Move::Send(to) => {
                if member.is_some() {
                    figures.retried(true);
                }
                busy = Some(Busy::new(&to));
                attempt = Some(Attempt::start(&to));
                member = Some(to);
                false
            }
            Move::Again => {
                figures.retried(false);
                true
            }
            Move::Answer(refusal) => {
                if let (Refusal::MemberTimedOut(_), Some(m)) = (refusal, &member) {
                    timeout.note(Stall::Answer, Some(&m.route));
                }
                figures.answered(refusal.status(), started.elapsed());
                return refuse(client, refusal, asked.close).await;
            }
            // No upgrade is asked on this path, so the stepper never tunnels here.
            Move::Pass | Move::Tunnel => break,
        };
        let Some(to) = &member else { break };
        let attempted = match exchange(pool, to, fresh, out, answer, asked, client_head).await {
            Ok(exchanged) => {
                answered = Some(exchanged);
                Attempted::Answered { switching: false }
            }
            Err(attempted) => attempted,
        };
        let decision = steps.after(attempted);
        if let (Some(verdict), Some(attempt)) = (decision.verdict, attempt.take()) {
            attempt.settle(verdict);
        }
        next = decision.next;
    }
    let (Some(member), Some((conn, head))) = (member, answered) else {
        figures.answered(Refusal::NoAnswer.status(), started.elapsed());
        return refuse(client, Refusal::NoAnswer, asked.close).await;
    };
    member.answered(head.status);
    let (status, took) = (head.status, started.elapsed());
    add_set_cookie(client_head, &upstream.sticky, named, &member);
    // The member stays busy until its answer went through.
    let passed = pass_answer(pool, client, &member, conn, answer, head, client_head).await;
    drop(busy);
    match passed {
        Ok(whole) => {
            figures.answered(status, took);
            whole && !asked.close
        }
        // Nothing of the answer went out: the client gets a whole answer of ours instead.
        Err(refusal) => {
            figures.answered(refusal.status(), took);
            refuse(client, refusal, asked.close).await
        }
    }
}

/// Adds the balancer's own sticky cookie to the head for the client (ending in its empty
/// line), when the rule says the answer of `member` sets it (see
/// [`sticky::Rule::write_set_cookie`]).
fn add_set_cookie(
    client_head: &mut Vec<u8>,
    rule: &sticky::Rule,
    named: Option<u64>,
    member: &Member,
) {
    if rule.balancer_cookie().is_none() || !client_head.ends_with(b"\r\n\r\n") {
        return;
    }
    client_head.truncate(client_head.len() - 2);
    let before = client_head.len();
    client_head.extend_from_slice(b"set-cookie: ");
    if rule.write_set_cookie(named, member.id, &member.route, client_head) {
        client_head.extend_from_slice(b"\r\n");
    } else {
        client_head.truncate(before);
    }
    client_head.extend_from_slice(b"\r\n");
}

/// One attempt on `member`: the request head written on a pooled connection (or a new
/// one, when `fresh` or none is idle) and the answer head read, within the member timeout.
async fn exchange(
    pool: &Pool,
    member: &Member,
    fresh: bool,
    out: &[u8],
    answer: &mut BytesMut,
    asked: Asked,
    client_head: &mut Vec<u8>,
) -> Result<(TcpStream, Answer), Attempted> {
    let after = pool.timeout().after();
    let connected = if fresh {
        pool::connect(&member.authority).await.map(|c| (c, false))
    } else {
        pool.checkout_raw(member).await
    };
    let (mut conn, reused) = match connected {
        Ok(connected) => connected,
        Err(e) => {
            debug!(member = %member.route, error = %e, "member failed");
            return Err(Attempted::Failed { reached: false });
        }
    };
    let deadline = tokio::time::Instant::now() + after;
    let waiting = async {
        match tokio::time::timeout_at(deadline, conn.write_all(out)).await {
            Ok(Ok(())) => read_answer(&mut conn, answer, asked, deadline, client_head).await,
            Ok(Err(_)) => Err(NoAnswer::Closed),
            Err(_) => Err(NoAnswer::TimedOut),
        }
    };
    let no_answer = match unless_left(member, waiting).await {
        Some(Ok(head)) => return Ok((conn, head)),
        Some(Err(no_answer)) => no_answer,
        None => return Err(Attempted::Failed { reached: true }),
    };
    Err(match no_answer {
        NoAnswer::Closed => {
            debug!(member = %member.route, reused, "the member connection closed before an answer");
            Attempted::Closed {
                reused,
                reached: true,
            }
        }
        NoAnswer::Failed(why) => {
            debug!(member = %member.route, error = %why, "member failed");
            Attempted::Failed { reached: true }
        }
        NoAnswer::TimedOut => Attempted::TimedOut(after),
    })
}

/// One of the balancer's own one-line answers; whether the connection stays open after it.
async fn refuse(client: &mut ClientSocket, refusal: Refusal, close: bool) -> bool {
    let line = refusal.to_string();
    let connection = if close { "connection: close\r\n" } else { "" };
    let allow = refusal.allow().map(|a| format!("allow: {a}\r\n"));
    let text = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\n{}{connection}\r\n{line}\n",
        refusal.status(),
        refusal.reason(),
        line.len() + 1,
        allow.as_deref().unwrap_or(""),
    );
    if close {
        let _ = client.write_last(text.as_bytes()).await;
        return false;
    }
    client.write_all(text.as_bytes()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balancer_cookie_goes_before_the_empty_line_of_the_head() {
        let member = Member::new("n2", "http://127.0.0.1:9", 1, true);
        let rule = |sticky| sticky::Rule {
            sticky,
            cookie: "JSESSIONID".into(),
        };
        let cookie = rule(crate::config::Sticky::Cookie("ROUTEID".into()));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let mut set = head.clone();
        add_set_cookie(&mut set, &cookie, None, &member);
        assert_eq!(
            String::from_utf8(set).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nset-cookie: ROUTEID=.n2; Path=/; HttpOnly\r\n\r\n"
        );
        for (rule, named) in [
            (cookie.clone(), Some(member.id)),
            (rule(crate::config::Sticky::Route), None),
        ] {
            let mut kept = head.clone();
            add_set_cookie(&mut kept, &rule, named, &member);
            assert_eq!(kept, head);
        }
    }

    #[test]
    fn buffers_grown_large_are_not_kept() {
        let mut buffers = Buffers::new();
        assert!(buffers.reset());
        buffers.out.reserve(100 * 1024);
        assert!(!buffers.reset(), "a 100 KiB buffer was kept");
        let mut buffers = Buffers::new();
        buffers.read.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        buffers.read.advance(10);
        assert!(buffers.reset());
        assert!(buffers.read.is_empty());
    }
}
