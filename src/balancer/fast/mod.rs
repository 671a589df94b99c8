//! The balancer's fast path, in the manner of nginx and HAProxy: the common request — an
//! HTTP/1.1 GET, HEAD, OPTIONS or DELETE without a body, upgrade or `Expect` — is forwarded
//! by this file's own code. The head is parsed in place (httparse) and written to the
//! member rewritten as `proxy.rs` rewrites it (hop-by-hop fields out, `X-Forwarded-*` and
//! `Via` in, Host kept); the member's answer head is parsed and passed on the same way, and
//! its body copied as it comes (a chunked one as is, its end found by `chunked.rs`), on a
//! keep-alive connection of the worker's own. No header map, no allocation per request.
//!
//! Everything else — a request with a body, an upgrade, a manager page, HTTP/1.0, anything
//! that does not parse or is over a limit — hands the connection to hyper (`proxy.rs`),
//! with the bytes already read, for the rest of its life: there the full rules apply and
//! every error gets its one-line answer.
//!
//! The rules are those of `proxy.rs`: stickiness and the member order from the registry;
//! a member that fails before answering is put in error and the request goes to the next
//! (these methods are idempotent); a pooled connection the member closed meanwhile is
//! replaced without blaming the member; no answer head within the member timeout is 504
//! (not resent); an answer body that stops is cut off; 503 when no member is usable, 502
//! when every tried member failed. A client that sends no head within
//! [`HEADER_READ_TIMEOUT`] (also when idle between requests) is closed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use httparse::Status;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::chunked::ChunkedEnd;
use super::client::ClientSocket;
use super::conn::HEADER_READ_TIMEOUT;
use super::manager;
use super::proxy::{
    Attempt, Busy, MAX_HEADER_BYTES, NO_ANSWER, NO_MEMBER, Peer, StickyKey, VIA,
    member_timeout_line, sticky_key_of_fields,
};
use super::registry::Member;
use super::timeout::Stall;
use super::worker::Worker;
use crate::config::Sticky;

/// Most header fields of a head handled here (hyper's limit too: beyond, its 431).
const MAX_HEADERS: usize = 100;
/// A request head not complete within this many bytes goes to hyper, which has the limits.
const MAX_FAST_HEAD: usize = 16 * 1024;
/// Buffers larger than this (grown by a large head or body read) are not kept for reuse.
const KEPT_BUFFER: usize = 64 * 1024;
/// Spare buffer sets a worker keeps at most (about 10 KiB each, see [`Buffers::reset`]).
const KEPT_BUFFERS: usize = 64;
/// Largest answer head accepted from a member.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// Fields named by `Connection` removed at most; a request naming more goes to hyper, an
/// answer naming more is refused.
const MAX_NAMED: usize = 16;
/// Fields never forwarded (RFC 9110 §7.6.1), besides those `Connection` names. A request
/// with `Transfer-Encoding` or `Upgrade` never takes the fast path; an answer keeps its
/// `Transfer-Encoding`, as its body is passed on as it is.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];
/// Fields of the request this file writes itself.
const REWRITTEN: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
];

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

/// A request the fast path forwards, once its head is parsed.
struct Request {
    head_len: usize,
    /// `HEAD`: the answer has no body whatever its fields say.
    head: bool,
    /// The client said `Connection: close`.
    close: bool,
    key: StickyKey,
}

enum Prepared {
    Partial,
    Ready(Request),
    HandOff,
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
    worker: &Worker,
    client: &mut ClientSocket,
    peer: &Peer,
    token: &CancellationToken,
) -> Outcome {
    let mut buffers = worker.buffers.take();
    let outcome = serve_with(worker, client, peer, token, &mut buffers).await;
    worker.buffers.put(buffers);
    outcome
}

async fn serve_with(
    worker: &Worker,
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
    let sticky = &worker.shared.config.balancer.sticky;
    let cookie = worker.shared.config.sessions.cookie.as_str();
    loop {
        // The next request head, within the header-read timeout.
        let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
        let request = loop {
            if !buf.is_empty() {
                match prepare(buf, peer, sticky, cookie, out) {
                    Prepared::Ready(request) => break request,
                    Prepared::HandOff => {
                        return Outcome::HandOff {
                            read: Bytes::copy_from_slice(buf),
                            head_by: None,
                        };
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
        let keep = forward(worker, client, &request, out, answer, client_head).await;
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

/// Parses the request head at the start of `buf` and, when the fast path takes it, writes
/// the head for the member into `out`.
fn prepare(buf: &[u8], peer: &Peer, sticky: &Sticky, cookie: &str, out: &mut Vec<u8>) -> Prepared {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Prepared::Partial,
        Err(_) => return Prepared::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Prepared::HandOff;
    };
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") || !target.starts_with('/') {
        return Prepared::HandOff;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if manager::is_manager_path(path) {
        return Prepared::HandOff;
    }
    let mut size = 0;
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut close = false;
    let mut named: [&str; MAX_NAMED] = [""; MAX_NAMED];
    let mut named_count = 0;
    for h in req.headers.iter() {
        size += h.name.len() + h.value.len() + 4;
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = h.value;
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Prepared::HandOff;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Prepared::HandOff;
        } else if name.eq_ignore_ascii_case("connection") {
            let Ok(value) = std::str::from_utf8(h.value) else {
                return Prepared::HandOff;
            };
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return Prepared::HandOff;
                } else if !token.eq_ignore_ascii_case("keep-alive") && !never_named(token) {
                    if named_count == MAX_NAMED {
                        return Prepared::HandOff;
                    }
                    named[named_count] = token;
                    named_count += 1;
                }
            }
        }
    }
    if hosts != 1 || size > MAX_HEADER_BYTES {
        return Prepared::HandOff;
    }
    let named = &named[..named_count];
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        let dropped = HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
            || REWRITTEN.iter().any(|n| name.eq_ignore_ascii_case(n))
            || named.iter().any(|n| name.eq_ignore_ascii_case(n));
        if !dropped {
            write_field(out, name.as_bytes(), h.value);
        }
    }
    write_list(out, "x-forwarded-for", req.headers, peer.text());
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    write_field(out, b"x-forwarded-host", host);
    write_list(out, "via", req.headers, VIA.as_bytes());
    out.extend_from_slice(b"\r\n");
    let fields = req.headers.iter().map(|h| (h.name, h.value));
    let key = sticky_key_of_fields(sticky, cookie, fields, target, peer);
    Prepared::Ready(Request {
        head_len,
        head: method == "HEAD",
        close,
        key,
    })
}

/// Fields a `Connection` header may not take away: the message's framing and Host (RFC
/// 9110 §7.6.1 lists what it may name: the connection's own fields, never these).
fn never_named(token: &str) -> bool {
    ["content-length", "transfer-encoding", "host"]
        .iter()
        .any(|n| token.eq_ignore_ascii_case(n))
}

/// The field `name` as one list: the values the client sent, then this hop's `last`.
fn write_list(out: &mut Vec<u8>, name: &str, fields: &[httparse::Header<'_>], last: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for h in fields.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        out.extend_from_slice(h.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(last);
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the body of an answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// An answer head from a member, and the head for the client written from it.
struct Answer {
    head_len: usize,
    framing: Framing,
    /// The member connection may carry another request after this answer.
    member_keeps: bool,
    /// The client connection closes after this answer.
    client_closes: bool,
}

/// Why no answer head came from a member.
enum NoAnswer {
    /// A pooled connection was closed before anything came back: try a new one.
    Stale,
    /// The member failed: try the next one.
    Failed(String),
    /// Nothing within the member timeout: 504.
    TimedOut,
}

/// Forwards one request; whether the client connection may carry another.
async fn forward(
    worker: &Worker,
    client: &mut ClientSocket,
    request: &Request,
    out: &[u8],
    answer: &mut BytesMut,
    client_head: &mut Vec<u8>,
) -> bool {
    let shared = &worker.shared;
    let order = shared
        .registry
        .order(&request.key.as_stickiness(), Instant::now());
    if order.is_empty() {
        return plain(client, 503, NO_MEMBER, request.close).await;
    }
    let timeout = worker.pool.timeout();
    for member in order {
        let busy = Busy::new(&member);
        let attempt = Attempt::start(&member);
        // A pooled connection found quiet may still have been closed by the member just
        // then: the request goes once more, on a new connection.
        let mut stale_retry = true;
        let exchanged = loop {
            let (mut conn, reused) = match worker.pool.checkout_raw(&member).await {
                Ok(c) => c,
                Err(e) => break Err(NoAnswer::Failed(e.to_string())),
            };
            let deadline = tokio::time::Instant::now() + timeout.after();
            let sent = tokio::time::timeout_at(deadline, conn.write_all(out)).await;
            let got = match sent {
                Ok(Ok(())) => read_answer(&mut conn, answer, request, deadline, client_head).await,
                Ok(Err(_)) => Err(NoAnswer::Stale),
                Err(_) => Err(NoAnswer::TimedOut),
            };
            match got {
                Ok(head) => break Ok((conn, head)),
                Err(NoAnswer::Stale) if reused && stale_retry => {
                    stale_retry = false;
                    continue;
                }
                Err(NoAnswer::Stale) => {
                    break Err(NoAnswer::Failed("the connection closed".into()));
                }
                Err(e) => break Err(e),
            }
        };
        match exchanged {
            Ok((conn, head)) => {
                attempt.succeeded();
                let whole =
                    pass_answer(worker, client, &member, conn, answer, head, client_head).await;
                return whole && !request.close;
            }
            Err(NoAnswer::TimedOut) => {
                attempt.timed_out();
                timeout.note(Stall::Answer, Some(&member.route));
                let line = member_timeout_line(timeout.after());
                return plain(client, 504, &line, request.close).await;
            }
            Err(failed) => {
                attempt.failed();
                let why = match &failed {
                    NoAnswer::Failed(why) => why.as_str(),
                    _ => "the connection closed",
                };
                debug!(member = %member.route, error = %why, "member failed");
            }
        }
        drop(busy);
    }
    plain(client, 502, NO_ANSWER, request.close).await
}

/// Reads a member's answer head into `answer` (interim 1xx heads are skipped) and writes
/// the head for the client into `client_head`.
async fn read_answer(
    conn: &mut TcpStream,
    answer: &mut BytesMut,
    request: &Request,
    deadline: tokio::time::Instant,
    client_head: &mut Vec<u8>,
) -> Result<Answer, NoAnswer> {
    answer.clear();
    let mut got_any = false;
    loop {
        if !answer.is_empty() {
            match parse_answer(answer, request, client_head) {
                Ok(Some(Parsed::Final(head))) => return Ok(head),
                Ok(Some(Parsed::Interim(len))) => {
                    answer.advance(len);
                    continue;
                }
                Ok(None) if answer.len() > MAX_ANSWER_HEAD => {
                    return Err(NoAnswer::Failed("answer head too large".into()));
                }
                Ok(None) => {}
                Err(why) => return Err(NoAnswer::Failed(why.into())),
            }
        }
        if answer.capacity() - answer.len() < 1024 {
            answer.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, conn.read_buf(answer)).await {
            Err(_) => return Err(NoAnswer::TimedOut),
            Ok(Ok(0)) | Ok(Err(_)) if !got_any => return Err(NoAnswer::Stale),
            Ok(Ok(0)) => return Err(NoAnswer::Failed("the answer ended early".into())),
            Ok(Err(e)) => return Err(NoAnswer::Failed(e.to_string())),
            Ok(Ok(_)) => got_any = true,
        }
    }
}

/// The answer head at the start of `answer`, if complete, with the client's head written.
fn parse_answer(
    answer: &[u8],
    request: &Request,
    client_head: &mut Vec<u8>,
) -> Result<Option<Parsed>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(answer) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed answer head"),
    };
    let (Some(version), Some(code)) = (res.version, res.code) else {
        return Err("malformed answer head");
    };
    if code == 101 {
        return Err("switching protocols without an upgrade asked");
    }
    if (100..200).contains(&code) {
        // An interim answer (103 Early Hints, say): optional for the client, not passed on.
        return Ok(Some(Parsed::Interim(head_len)));
    }
    if !(200..1000).contains(&code) {
        return Err("bad status code");
    }
    let mut close = version == 0;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut named: [&str; MAX_NAMED] = [""; MAX_NAMED];
    let mut named_count = 0;
    let mut dated = false;
    for h in res.headers.iter() {
        let name = h.name;
        dated |= name.eq_ignore_ascii_case("date");
        if name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or("bad content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(h.value).map_err(|_| "bad connection field")?;
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close &= version != 0;
                } else if !never_named(token) {
                    if named_count == MAX_NAMED {
                        return Err("too many fields named by Connection");
                    }
                    named[named_count] = token;
                    named_count += 1;
                }
            }
        }
    }
    let framing = if request.head || code == 204 || code == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let named = &named[..named_count];
    let client_closes = request.close || framing == Framing::UntilClose;
    client_head.clear();
    client_head.extend_from_slice(b"HTTP/1.1 ");
    client_head.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    client_head.push(b' ');
    client_head.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    client_head.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        let name = h.name;
        // With Transfer-Encoding, a Content-Length is wrong (RFC 9112 §6.3): not passed on.
        let dropped = HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
            || named.iter().any(|n| name.eq_ignore_ascii_case(n))
            || (chunked.is_some() && name.eq_ignore_ascii_case("content-length"));
        if !dropped {
            write_field(client_head, name.as_bytes(), h.value);
        }
    }
    if !dated {
        // A proxy forwarding an answer without a date adds one (RFC 9110 §6.6.1).
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        write_field(client_head, b"date", now.as_bytes());
    }
    if client_closes {
        client_head.extend_from_slice(b"connection: close\r\n");
    }
    client_head.extend_from_slice(b"\r\n");
    Ok(Some(Parsed::Final(Answer {
        head_len,
        framing,
        member_keeps: !close && framing != Framing::UntilClose,
        client_closes,
    })))
}

/// A complete answer head.
enum Parsed {
    /// An interim (1xx) head of this many bytes, skipped.
    Interim(usize),
    Final(Answer),
}

/// Passes a member's answer (its head read into `answer`, the client's written into
/// `client_head`) on to the client, and the member connection back to the pool when it
/// may carry another request. Whether the answer went through whole.
async fn pass_answer(
    worker: &Worker,
    client: &mut ClientSocket,
    member: &Member,
    mut conn: TcpStream,
    answer: &mut BytesMut,
    head: Answer,
    out: &mut Vec<u8>,
) -> bool {
    let timeout = worker.pool.timeout();
    answer.advance(head.head_len);
    let mut chunks = ChunkedEnd::default();
    // The chunked body's data bytes already counted in the member's `bytes_out`.
    let mut counted = 0;
    // The body bytes still to come (for a length), and whether the body is whole.
    let (mut left, mut whole) = match head.framing {
        Framing::None => (0, true),
        Framing::Length(n) => (n, n == 0),
        Framing::Chunked | Framing::UntilClose => (0, false),
    };
    let mut extra = false;
    loop {
        // What of the bytes read belongs to the body (`out` holds the head at first).
        let pending: &[u8] = answer;
        let take = match head.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(pending.len());
                left -= take as u64;
                whole = left == 0;
                take
            }
            Framing::Chunked => match chunks.feed(pending) {
                Ok(take) => {
                    whole = chunks.done();
                    take
                }
                Err(e) => {
                    debug!(member = %member.route, error = %e, "answer cut off");
                    // What came before goes out; the connection is closed.
                    let _ = client.write_all(out).await;
                    return false;
                }
            },
            Framing::UntilClose => pending.len(),
        };
        extra |= take < pending.len();
        out.extend_from_slice(&pending[..take]);
        // The body's bytes, as the hyper path counts them: a chunked one without framing.
        let body_bytes = match head.framing {
            Framing::Chunked => {
                let data = chunks.data();
                let new = data - counted;
                counted = data;
                new
            }
            _ => take as u64,
        };
        member.bytes_out.fetch_add(body_bytes, Ordering::Relaxed);
        let written = if whole && head.client_closes {
            client.write_last(out).await
        } else {
            client.write_all(out).await
        };
        if written.is_err() {
            return false;
        }
        out.clear();
        if whole {
            break;
        }
        answer.clear();
        if answer.capacity() < 4096 {
            answer.reserve(4096);
        }
        match tokio::time::timeout(timeout.after(), conn.read_buf(answer)).await {
            Ok(Ok(0)) if head.framing == Framing::UntilClose => return false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                debug!(member = %member.route, "the member's answer ended early; cut off");
                return false;
            }
            Err(_) => {
                member.errors.fetch_add(1, Ordering::Relaxed);
                timeout.note(Stall::AnswerBody, Some(&member.route));
                return false;
            }
            Ok(Ok(_)) => {}
        }
    }
    if head.member_keeps && !extra {
        worker.pool.release_raw(member, conn);
    }
    head.framing != Framing::UntilClose
}

/// A one-line text answer of ours; whether the connection stays open after it.
async fn plain(client: &mut ClientSocket, status: u16, line: &str, close: bool) -> bool {
    let reason = match status {
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    let body_len = line.len() + 1;
    let connection = if close { "connection: close\r\n" } else { "" };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {body_len}\r\n{connection}\r\n{line}\n"
    );
    if close {
        let _ = client.write_last(text.as_bytes()).await;
        return false;
    }
    client.write_all(text.as_bytes()).await.is_ok()
}

/// A socket that first gives back bytes already read from it: how hyper takes over a
/// connection the fast path started.
pub struct Rewind<S> {
    read: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(read: Bytes, inner: S) -> Rewind<S> {
        Rewind { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer() -> Peer {
        Peer::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
    }

    fn prepared(head: &str, sticky: &Sticky) -> (Prepared, String) {
        let mut out = Vec::new();
        let p = prepare(head.as_bytes(), &peer(), sticky, "JSESSIONID", &mut out);
        (p, String::from_utf8(out).unwrap())
    }

    fn ready(head: &str) -> (Request, String) {
        match prepared(head, &Sticky::Route) {
            (Prepared::Ready(r), out) => (r, out),
            _ => panic!("not taken by the fast path: {head:?}"),
        }
    }

    #[test]
    fn a_request_head_is_rewritten_for_the_member_as_the_hyper_path_does() {
        let head = "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
                    X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n\
                    X-Forwarded-For: 192.0.2.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\
                    Via: 1.0 edge\r\nAccept: */*\r\n\r\nNEXT";
        let (request, out) = ready(head);
        assert_eq!(request.head_len, head.len() - 4);
        assert!(!request.close && !request.head);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\
             x-forwarded-for: 192.0.2.9, 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example\r\nvia: 1.0 edge, 1.1 deltacast\r\n\r\n"
        );
        let (request, out) = ready("HEAD / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
        assert!(request.close && request.head);
        assert_eq!(
            out,
            "HEAD / HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: h\r\nvia: 1.1 deltacast\r\n\r\n"
        );
    }

    #[test]
    fn requests_with_a_body_an_upgrade_or_anything_unusual_go_to_hyper() {
        let hyper = [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /balancer-manager HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /balancer-manager/status?x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q\r\n\r\n",
            "GET / HTTP/1.1\r\nHost h\r\n\r\n",
            "\x16\x03\x01 not http at all\r\n\r\n",
        ];
        for head in hyper {
            assert!(
                matches!(prepared(head, &Sticky::Route).0, Prepared::HandOff),
                "{head:?}"
            );
        }
        let mut big = "GET / HTTP/1.1\r\nHost: h\r\n".to_string();
        for i in 0..40 {
            big.push_str(&format!("X-{i}: {}\r\n", "v".repeat(900)));
        }
        big.push_str("\r\n");
        assert!(matches!(
            prepared(&big, &Sticky::Route).0,
            Prepared::HandOff
        ));
        assert!(matches!(
            prepared("GET / HTTP/1.1\r\nHost: h\r\n", &Sticky::Route).0,
            Prepared::Partial
        ));
        // Bodiless requests with an empty body declared, and DELETE, are taken.
        ready("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        ready("DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn the_sticky_key_comes_from_the_cookie_the_path_a_header_or_the_address() {
        let cookie = "GET / HTTP/1.1\r\nHost: h\r\nCookie: a=b; JSESSIONID=4DD0340CE6294FF2BBE802CD4CD039EC.n2\r\n\r\n";
        assert_eq!(ready(cookie).0.key, StickyKey::Route("n2".into()));
        let path =
            "GET /x;jsessionid=4DD0340CE6294FF2BBE802CD4CD039EC.n3?q HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(ready(path).0.key, StickyKey::Route("n3".into()));
        assert_eq!(
            ready("GET / HTTP/1.1\r\nHost: h\r\n\r\n").0.key,
            StickyKey::None
        );
        let header = Sticky::Header("x-user".into());
        let Prepared::Ready(r) = prepared(
            "GET / HTTP/1.1\r\nHost: h\r\nX-User: alice\r\n\r\n",
            &header,
        )
        .0
        else {
            panic!("not taken");
        };
        assert_eq!(r.key, StickyKey::Key(b"alice".to_vec()));
        let Prepared::Ready(r) = prepared("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &Sticky::SourceIp).0
        else {
            panic!("not taken");
        };
        assert_eq!(r.key, StickyKey::Key(b"10.1.2.3".to_vec()));
    }

    fn answer_of(
        head: &str,
        request_head: bool,
        close: bool,
    ) -> Result<(Answer, String), &'static str> {
        let request = Request {
            head_len: 0,
            head: request_head,
            close,
            key: StickyKey::None,
        };
        let mut client = Vec::new();
        match parse_answer(head.as_bytes(), &request, &mut client)? {
            Some(Parsed::Final(a)) => Ok((a, without_added_date(head, client))),
            Some(Parsed::Interim(_)) => Err("interim"),
            None => Err("partial"),
        }
    }

    /// The head for the client, less the `date` field added when the member's `head` had
    /// none (checked to be there, and to be an HTTP date).
    fn without_added_date(head: &str, client: Vec<u8>) -> String {
        let client = String::from_utf8(client).unwrap();
        if head.to_ascii_lowercase().contains("\r\ndate:") {
            assert_eq!(
                client.matches("date:").count() + client.matches("Date:").count(),
                1
            );
            return client;
        }
        let start = client.find("date: ").expect("a date added");
        let end = start + client[start..].find("\r\n").unwrap() + 2;
        let value = &client[start + 6..end - 2];
        assert!(httpdate::parse_http_date(value).is_ok(), "{value}");
        format!("{}{}", &client[..start], &client[end..])
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

    #[test]
    fn a_members_date_is_passed_on_and_a_missing_one_added() {
        let with =
            "HTTP/1.1 200 OK\r\nDate: Tue, 24 Nov 2026 08:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
        let (_, client) = answer_of(with, false, false).unwrap();
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nDate: Tue, 24 Nov 2026 08:00:00 GMT\r\nContent-Length: 0\r\n\r\n"
        );
        let (_, client) = answer_of("HTTP/1.1 204 No Content\r\n\r\n", false, false).unwrap();
        assert_eq!(client, "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn an_answer_head_is_passed_on_without_hop_by_hop_fields_and_its_framing_known() {
        let (a, client) = answer_of(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nSet-Cookie: s=1\r\n\r\nhello",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Length(5));
        assert!(a.member_keeps);
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: s=1\r\n\r\n"
        );
        let (a, client) = answer_of(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Chunked);
        assert_eq!(
            client,
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let (a, client) = answer_of("HTTP/1.0 200 OK\r\n\r\nbody", false, false).unwrap();
        assert_eq!(a.framing, Framing::UntilClose);
        assert!(!a.member_keeps);
        assert_eq!(client, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let (a, _) =
            answer_of("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false).unwrap();
        assert_eq!(a.framing, Framing::None, "an answer to HEAD has no body");
        let (a, _) = answer_of(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::None);
        let (a, _) = answer_of(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert!(!a.member_keeps);
        let (a, _) = answer_of(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::UntilClose);
        assert_eq!(
            answer_of("HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", false, false).err(),
            Some("interim")
        );
        assert_eq!(
            answer_of("HTTP/1.1 200 OK\r\nContent-Le", false, false).err(),
            Some("partial")
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(answer_of(bad, false, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_content_length_beside_transfer_encoding_is_not_passed_on() {
        let (a, client) = answer_of(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Chunked);
        assert_eq!(
            client,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_take_away_the_framing_or_host() {
        let (_, out) = ready(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: host, content-length, x\r\nContent-Length: 0\r\nX: 1\r\n\r\n",
        );
        assert!(out.contains("\r\nHost: h\r\n"), "{out}");
        assert!(out.contains("\r\nContent-Length: 0\r\n"), "{out}");
        assert!(!out.contains("\r\nX: 1"), "{out}");
        let (a, client) = answer_of(
            "HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nContent-Length: 3\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Length(3));
        assert_eq!(client, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        let many = format!(
            "HTTP/1.1 200 OK\r\nConnection: {}\r\nContent-Length: 0\r\n\r\n",
            (0..=MAX_NAMED)
                .map(|i| format!("x{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(answer_of(&many, false, false).is_err());
    }

    #[test]
    fn a_content_length_is_digits_only() {
        for bad in ["+3", "3 3", "", "0x3", "-0", "99999999999999999999999"] {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(answer_of(&head, false, false).is_err(), "{bad:?}");
        }
        let (a, _) = answer_of(
            "HTTP/1.1 200 OK\r\nContent-Length:  007 \r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.framing, Framing::Length(7));
    }
}
