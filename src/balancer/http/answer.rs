//! The answers the balancer gives a client on the hyper path: its own one-line ones, and a
//! member's, whose body streams from the member connection as the client reads it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::balancer::choice::registry::Member;
use crate::balancer::http::attempt::Busy;
use crate::balancer::http::body::BoxError;
use crate::balancer::http::pool::{MemberConn, Pool};
use crate::balancer::http::timeout::{ChunkTimer, Stall, Stalled};
use crate::balancer::rules::refusal::CONTENT_TYPE;
use crate::balancer::rules::{Refusal, framing};

/// The most body bytes read ahead of the head ([`MemberBody::read_ready`]): about what the
/// fast path reads with a head.
const READ_AHEAD: usize = 64 * 1024;

/// How a member's answer is framed, as the rulebook reads its head (the same reading as
/// the fast path's), or why it is in doubt.
pub fn framing<B>(
    answer: &Response<B>,
    asked: framing::Asked<'_>,
) -> Result<framing::Framing, framing::Doubt> {
    let mut fields = framing::AnswerFields::new(asked);
    let headers = answer.headers();
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        for value in headers.get_all(&name) {
            fields.field(name.as_str(), value.as_bytes());
        }
    }
    let http_1_0 = answer.version() == hyper::Version::HTTP_10;
    fields.framing(answer.status().as_u16(), http_1_0)
}

/// The body of an answer to a client: one of ours, whole, or a member's, streamed.
pub enum ProxyBody {
    Whole(Full<Bytes>),
    Member(MemberBody),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Whole(whole) => Pin::new(whole)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|e: Infallible| match e {}))),
            ProxyBody::Member(member) => Pin::new(member).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Whole(whole) => whole.is_end_stream(),
            ProxyBody::Member(member) => member.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Whole(whole) => whole.size_hint(),
            ProxyBody::Member(member) => member.size_hint(),
        }
    }
}

/// One of the balancer's own one-line answers.
pub fn refusal(refusal: Refusal) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = plain(status, &refusal.to_string());
    if let Some(allow) = refusal.allow() {
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if refusal.closes() {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer
}

/// A plain one-line answer.
pub fn plain(status: StatusCode, line: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(format!("{line}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

pub fn full(bytes: Bytes) -> ProxyBody {
    ProxyBody::Whole(Full::new(bytes))
}

/// A member's answer on its way to the client: it drives the member connection while it
/// is read (no other task does), counts its bytes into the member's `bytes_out`, keeps the
/// member busy while it lives, gives the connection back to the pool once read whole, and
/// cuts the answer off when the member sends no next chunk within the member timeout.
pub struct MemberBody {
    inner: Incoming,
    /// Frames read before the head went out ([`MemberBody::read_ready`]), passed on first.
    early: VecDeque<Frame<Bytes>>,
    /// `inner` ended while being read ahead.
    ended: bool,
    /// None once given back (or given up).
    conn: Option<MemberConn>,
    /// The framing allows the connection another request (see [`framing::Framing`]).
    reusable: bool,
    pool: Arc<Pool>,
    member: Arc<Member>,
    timer: ChunkTimer,
    _busy: Busy,
}

impl MemberBody {
    /// The answer body `inner` of `member`, read on `conn`, each wait for its next chunk
    /// bounded by `after`; the member is `busy` until it is dropped. `reusable`: the
    /// answer's framing lets the connection go back to the pool once read whole.
    pub fn new(
        inner: Incoming,
        conn: MemberConn,
        reusable: bool,
        pool: Arc<Pool>,
        member: Arc<Member>,
        after: Duration,
        busy: Busy,
    ) -> MemberBody {
        MemberBody {
            inner,
            early: VecDeque::new(),
            ended: false,
            conn: Some(conn),
            reusable,
            pool,
            member,
            timer: ChunkTimer::new(after),
            _busy: busy,
        }
    }

    /// Reads what of the body is there already, without waiting (at most `READ_AHEAD`
    /// bytes), before the head goes to the client: a body that is malformed in what came
    /// with the head is then answered 502 rather than an answer cut off before its first
    /// byte, as the fast path judges the bytes that came with the head before it writes
    /// any. What is read is passed on first.
    pub async fn read_ready(&mut self) -> Result<(), BoxError> {
        std::future::poll_fn(|cx| {
            let mut read = 0;
            while read < READ_AHEAD {
                match self.poll_member(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        read += frame.data_ref().map_or(0, Bytes::len);
                        self.early.push_back(frame);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        self.ended = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Back to the pool if the connection is idle: its request was written whole and its
    /// answer read whole. Otherwise it is closed.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.is_idle() {
                self.pool.release(&self.member, conn);
            }
        }
    }
}

impl MemberBody {
    /// The next frame from the member connection.
    fn poll_member(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            if let Some(conn) = &mut this.conn {
                // Reads more of the answer into `inner`.
                conn.drive(cx);
                polled = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.moved();
                if let Some(data) = frame.data_ref() {
                    this.member
                        .bytes_out
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                if let Some(conn) = &mut this.conn {
                    // Lets the connection settle into idle before it is judged.
                    conn.drive(cx);
                }
                this.release();
            }
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Pending => {
                ready!(this.timer.poll_expired(cx));
                // Closed, never pooled: the rest of the answer may still come.
                this.conn = None;
                this.member.errors.fetch_add(1, Ordering::Relaxed);
                let timeout = this.pool.timeout();
                timeout.note(Stall::AnswerBody, Some(&this.member.route));
                let stalled = Stalled::new(Stall::AnswerBody, timeout.after());
                return Poll::Ready(Some(Err(Box::new(stalled))));
            }
        }
        polled.map(|frame| frame.map(|f| f.map_err(|e| -> BoxError { Box::new(e) })))
    }

    /// The data bytes read ahead and not yet passed on.
    fn early_bytes(&self) -> u64 {
        self.early
            .iter()
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum()
    }
}

impl Body for MemberBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.early.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.poll_member(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.early.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // The frames read ahead are no longer in `inner`'s.
        let early = self.early_bytes();
        let rest = if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + early);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + early);
        }
        hint
    }
}

impl Drop for MemberBody {
    fn drop(&mut self) {
        // An answer without a body (HEAD, 204, 304, length 0) is never read: it is whole.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::http::body::OutBody;
    use crate::balancer::testing::{T, bounded, member, timeout};
    use http_body_util::BodyExt;
    use hyper::Request;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_answer_body_that_stops_coming_is_cut_off_and_counted_against_the_member() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let member = member();
        let mut conn = MemberConn::handshake(TokioIo::new(ours)).await.unwrap();
        let answer = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = theirs.read(&mut buf).await;
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await
                .unwrap();
            // Nothing more, until our end closes.
            while let Ok(1..) = theirs.read(&mut buf).await {}
        });
        let mut request = Request::new(OutBody::empty(&member));
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("m"));
        let response = conn.send(request, T).await.ok().expect("a head");
        let pool = Arc::new(Pool::new(timeout()));
        let mut body = MemberBody::new(
            response.into_body(),
            conn,
            true,
            pool,
            member.clone(),
            T,
            Busy::new(&member),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "0123456789");
        let start = tokio::time::Instant::now();
        let error = bounded(body.frame()).await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), T);
        assert!(error.is::<Stalled>(), "{error}");
        assert!(
            body.conn.is_none(),
            "the connection is closed, never pooled"
        );
        assert_eq!(member.errors.load(Ordering::Relaxed), 1);
        drop(body);
        assert_eq!(member.busy.load(Ordering::Relaxed), 0);
        answer.await.unwrap();
    }
}
