//! A request's body on its way from the client to a member: read with each wait for its
//! next chunk bounded by the member timeout (a client that stops sending must not hold a
//! member connection, nor a request, forever), kept whole when it is small enough to be
//! sent again ([`REPLAY_LIMIT`]), streamed once otherwise, with its moves and failures
//! noted in its [`Upload`] so that a member is not blamed for a client's slowness.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::balancer::choice::registry::Member;
use crate::balancer::http::timeout::{ChunkTimer, MemberTimeout, Stall, Stalled};
use crate::balancer::rules::{MAX_BODY, REPLAY_LIMIT, Refusal, body_too_large};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the client's streamed request body is going, shared by the body on its way to a
/// member and by the proxy: whether it failed on the client's side (then the member is
/// not to blame, and the client gets the answer), and whether it moves or waits for the
/// client (then the member is not the one keeping the request waiting, see
/// the member connection's `send`). Only the task of the request touches it.
#[derive(Clone, Debug, Default)]
pub struct Upload(Arc<UploadState>);

#[derive(Debug, Default)]
struct UploadState {
    failure: AtomicU8,
    /// Chunks taken from the client so far.
    chunks: AtomicU64,
    /// It waits for the client's next chunk.
    waiting: AtomicBool,
}

const BODY_BROKEN: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;
const BODY_TIMED_OUT: u8 = 3;

impl Upload {
    /// The answer for the client, if its body failed (`after`: the member timeout).
    pub fn answer(&self, after: Duration) -> Option<Refusal> {
        match self.0.failure.load(Ordering::Acquire) {
            BODY_TOO_LARGE => Some(Refusal::BodyTooLarge),
            BODY_BROKEN => Some(Refusal::BodyBroken),
            BODY_TIMED_OUT => Some(Refusal::ClientTimedOut(after)),
            _ => None,
        }
    }

    /// How far it got: the chunks taken, and whether it waits for the next. It changes
    /// whenever the upload moves.
    pub fn moves(&self) -> (u64, bool) {
        (
            self.0.chunks.load(Ordering::Relaxed),
            self.0.waiting.load(Ordering::Relaxed),
        )
    }

    /// It waits for the client now.
    pub fn waits_for_client(&self) -> bool {
        self.0.waiting.load(Ordering::Relaxed)
    }

    fn note(&self, error: &BoxError) {
        let what = if error.downcast_ref::<LengthLimitError>().is_some() {
            BODY_TOO_LARGE
        } else if error.downcast_ref::<Stalled>().is_some() {
            BODY_TIMED_OUT
        } else {
            BODY_BROKEN
        };
        self.0.failure.store(what, Ordering::Release);
        self.0.waiting.store(false, Ordering::Relaxed);
    }

    fn chunk(&self) {
        self.0.chunks.fetch_add(1, Ordering::Relaxed);
        self.0.waiting.store(false, Ordering::Relaxed);
    }

    fn ended(&self) {
        self.0.waiting.store(false, Ordering::Relaxed);
    }

    fn waits(&self) {
        self.0.waiting.store(true, Ordering::Relaxed);
    }
}

/// The client's request body as the proxy reads it: each wait for its next chunk is
/// bounded by the member timeout (a client that stops sending must not hold a member
/// connection, nor a request, forever), and when it streams to a member, its moves and
/// failures go to its [`Upload`].
pub struct ClientBody<B> {
    inner: B,
    timer: ChunkTimer,
    timeout: Arc<MemberTimeout>,
    upload: Option<Upload>,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, timeout: Arc<MemberTimeout>, upload: Option<Upload>) -> ClientBody<B> {
        ClientBody {
            inner,
            timer: ChunkTimer::new(timeout.after()),
            timeout,
            upload,
        }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let error: BoxError = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.moved();
                if let Some(upload) = &this.upload {
                    upload.chunk();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                this.timer.moved();
                if let Some(upload) = &this.upload {
                    upload.ended();
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => e.into(),
            Poll::Pending => {
                if let Some(upload) = &this.upload {
                    upload.waits();
                }
                ready!(this.timer.poll_expired(cx));
                this.timeout.note(Stall::RequestBody, None);
                Box::new(Stalled::new(Stall::RequestBody, this.timeout.after()))
            }
        };
        if let Some(upload) = &this.upload {
            upload.note(&error);
        }
        Poll::Ready(Some(Err(error)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body streamed to a member.
type Streamed = ClientBody<Limited<Incoming>>;

/// The request body: kept for a retry, or streamed once.
pub enum Payload {
    Kept(Bytes),
    Stream(Option<Streamed>, Upload),
}

impl Payload {
    /// Whether `body` will stream (see [`Payload::from`]): it can then go to one member
    /// only, once it started.
    pub fn streams(body: &Incoming) -> bool {
        !body.is_end_stream()
            && body
                .size_hint()
                .exact()
                .is_none_or(|len| len > REPLAY_LIMIT)
    }

    /// Buffers small bodies of known length (and empty ones); streams the rest.
    pub async fn from(body: Incoming, timeout: &Arc<MemberTimeout>) -> Result<Payload, Refusal> {
        let hint = body.size_hint();
        if body.is_end_stream() {
            return Ok(Payload::Kept(Bytes::new()));
        }
        if body_too_large(hint.exact()) {
            return Err(Refusal::BodyTooLarge);
        }
        match hint.exact() {
            Some(len) if len <= REPLAY_LIMIT => {
                let limit = usize::try_from(REPLAY_LIMIT).unwrap_or(usize::MAX);
                let body = ClientBody::new(Limited::new(body, limit), timeout.clone(), None);
                match body.collect().await {
                    Ok(collected) => Ok(Payload::Kept(collected.to_bytes())),
                    Err(e) if e.is::<Stalled>() => Err(Refusal::ClientTimedOut(timeout.after())),
                    Err(_) => Err(Refusal::BodyBroken),
                }
            }
            _ => {
                let upload = Upload::default();
                let limit = usize::try_from(MAX_BODY).unwrap_or(usize::MAX);
                let body = ClientBody::new(
                    Limited::new(body, limit),
                    timeout.clone(),
                    Some(upload.clone()),
                );
                Ok(Payload::Stream(Some(body), upload))
            }
        }
    }

    /// Kept whole, so it can be sent again after it was sent.
    pub fn kept(&self) -> bool {
        matches!(self, Payload::Kept(_))
    }

    /// The body for one attempt on `member`, or None when a streamed body was already sent.
    pub fn take(&mut self, member: &Arc<Member>) -> Option<OutBody> {
        let kind = match self {
            Payload::Kept(bytes) => OutKind::Kept(Some(bytes.clone())),
            Payload::Stream(body, _) => OutKind::Stream(body.take()?),
        };
        Some(OutBody {
            kind,
            member: member.clone(),
        })
    }

    /// A body that never left (its request was not sent) comes back for the next attempt.
    pub fn give_back(&mut self, body: OutBody) {
        if let (Payload::Stream(slot @ None, _), OutKind::Stream(stream)) = (self, body.kind) {
            *slot = Some(stream);
        }
    }

    /// The answer for the client when its streamed body failed (`after`: the member
    /// timeout).
    pub fn client_failed(&self, after: Duration) -> Option<Refusal> {
        match self {
            Payload::Kept(_) => None,
            Payload::Stream(_, upload) => upload.answer(after),
        }
    }
}

/// The body of a request to a member; its data bytes count into the member's `bytes_in`.
pub struct OutBody {
    kind: OutKind,
    member: Arc<Member>,
}

impl OutBody {
    /// The client's upload, when the body streams from the client.
    pub fn upload(&self) -> Option<&Upload> {
        match &self.kind {
            OutKind::Kept(_) => None,
            OutKind::Stream(stream) => stream.upload.as_ref(),
        }
    }

    /// A body streamed from the client, for `member`.
    #[cfg(test)]
    pub fn streamed(body: Streamed, member: &Arc<Member>) -> OutBody {
        OutBody {
            kind: OutKind::Stream(body),
            member: member.clone(),
        }
    }

    /// No body, for `member`.
    #[cfg(test)]
    pub fn empty(member: &Arc<Member>) -> OutBody {
        OutBody {
            kind: OutKind::Kept(None),
            member: member.clone(),
        }
    }
}

enum OutKind {
    /// Sent in one frame (None once sent).
    Kept(Option<Bytes>),
    Stream(Streamed),
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.kind {
            OutKind::Kept(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OutKind::Stream(stream) => Pin::new(stream).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.member
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            OutKind::Kept(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            OutKind::Stream(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            OutKind::Kept(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            OutKind::Stream(stream) => stream.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{T, bounded, client_request, frames, timeout};

    #[tokio::test]
    async fn a_client_body_that_breaks_or_grows_too_large_is_the_clients_fault() {
        let upload = Upload::default();
        let whole = ClientBody::new(
            frames(vec![Ok(b"abc"), Ok(b"def")]),
            timeout(),
            Some(upload.clone()),
        );
        assert_eq!(whole.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(upload.answer(T).is_none());
        assert_eq!(upload.moves(), (2, false));

        let broken = ClientBody::new(
            frames(vec![Ok(b"abc"), Err("invalid chunk size".into())]),
            timeout(),
            Some(upload.clone()),
        );
        assert!(broken.collect().await.is_err());
        assert_eq!(upload.answer(T), Some(Refusal::BodyBroken));

        let upload = Upload::default();
        let big = ClientBody::new(
            Limited::new(frames(vec![Ok(b"abc"), Ok(b"def")]), 4),
            timeout(),
            Some(upload.clone()),
        );
        assert!(big.collect().await.is_err());
        assert_eq!(upload.answer(T), Some(Refusal::BodyTooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_that_stops_coming_gets_408_before_any_member_is_asked() {
        let (incoming, _client) =
            client_request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
                .await;
        let start = tokio::time::Instant::now();
        let Err(answer) = bounded(Payload::from(incoming, &timeout())).await else {
            panic!("a body that never came whole was kept");
        };
        assert_eq!(answer, Refusal::ClientTimedOut(T));
        assert_eq!(start.elapsed(), T);
    }
}
