//! The proxy: forwards a request to the members in the order the registry gives, on the
//! worker's pooled connections ([`Pool`]), and retries on the next member only when that
//! is safe. Every wait on a member, and on a client's body, is bounded by the member
//! timeout ([`super::timeout`]).
//! The request → stickiness and header rewriting parts are pure functions.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::member::Health;
use super::pool::{MemberConn, Pool, SendError};
use super::registry::{Member, Registry};
use super::select::Stickiness;
use super::timeout::{ChunkTimer, MemberTimeout, Stall, Stalled};
use super::tunnel;
use crate::config::Sticky;
use crate::session::id;
use crate::shutdown::Shutdown;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
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

/// Request bodies up to this size (with a known length) are kept so the request can be
/// sent again to another member; larger ones stream and are never retried.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// The largest request body forwarded: a larger declared length is answered 413, a
/// chunked body that grows past it is cut off.
pub const MAX_BODY: u64 = 64 * 1024 * 1024;

/// The `Via` token this proxy adds.
pub(super) const VIA: &str = "1.1 deltacast";

/// Headers that concern one connection only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client at the other end of one connection, with what its requests get as
/// `X-Forwarded-For` when they carry none (made once per connection, not per request).
#[derive(Clone, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr) -> Peer {
        let text = match ip {
            // Without the formatting machinery: this runs for every new connection.
            IpAddr::V4(v4) => {
                let mut text = Vec::with_capacity(15);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
                text
            }
            IpAddr::V6(_) => ip.to_string().into_bytes(),
        };
        let forwarded_for = HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Peer { ip, forwarded_for }
    }

    /// The address as text.
    pub fn text(&self) -> &[u8] {
        self.forwarded_for.as_bytes()
    }
}

/// The stickiness of one request, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyKey {
    None,
    Route(String),
    Key(Vec<u8>),
}

impl StickyKey {
    pub fn as_stickiness(&self) -> Stickiness<'_> {
        match self {
            StickyKey::None => Stickiness::None,
            StickyKey::Route(r) => Stickiness::Route(r),
            StickyKey::Key(k) => Stickiness::Key(k),
        }
    }
}

/// What the request says about where it should go.
pub fn sticky_key(
    sticky: &Sticky,
    cookie_name: &str,
    headers: &HeaderMap,
    path_and_query: &str,
    peer: &Peer,
) -> StickyKey {
    let fields = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    sticky_key_of_fields(sticky, cookie_name, fields, path_and_query, peer)
}

/// [`sticky_key`] over header fields as (name, value) pairs, however they were parsed.
pub fn sticky_key_of_fields<'a>(
    sticky: &Sticky,
    cookie_name: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    path_and_query: &str,
    peer: &Peer,
) -> StickyKey {
    match sticky {
        Sticky::None => StickyKey::None,
        Sticky::SourceIp => StickyKey::Key(peer.text().to_vec()),
        Sticky::Header(name) => fields
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(StickyKey::None, |(_, v)| StickyKey::Key(v.to_vec())),
        Sticky::Route => {
            let cookies = fields
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .filter_map(|(_, v)| std::str::from_utf8(v).ok());
            id::find_in_cookie_headers(cookies, cookie_name)
                .and_then(|c| c.route)
                .or_else(|| id::find_in_path(path_and_query).and_then(|c| c.route))
                .map_or(StickyKey::None, StickyKey::Route)
        }
    }
}

/// Removes the hop-by-hop headers, including those the `Connection` header names. Most
/// messages have none but `Connection` with a usual token, so the common case is one pass
/// over the names and no allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of the fixed ones are there, as bits of their index in HOP_BY_HOP.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << at;
        }
    }
    if present == 0 {
        return;
    }
    // The fields the Connection header names beyond the fixed ones, when present.
    let mut named: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let fixed = HOP_BY_HOP
            .iter()
            .any(|h| token.eq_ignore_ascii_case(h.as_str()));
        if !token.is_empty() && !fixed && headers.contains_key(token) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (at, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(name);
        }
    }
}

/// Rewrites a request's headers for a member: hop-by-hop ones removed, `X-Forwarded-For`
/// appended, `X-Forwarded-Proto`, `X-Forwarded-Host` (the original Host) and `Via` added;
/// Host is kept.
pub fn forward_request_headers(headers: &mut HeaderMap, peer: &Peer) {
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get(X_FORWARDED_FOR) {
        None => peer.forwarded_for.clone(),
        Some(_) => append_list(headers, &X_FORWARDED_FOR, &peer.forwarded_for),
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let via = HeaderValue::from_static(VIA);
    let via = match headers.get(header::VIA) {
        None => via,
        Some(_) => append_list(headers, &header::VIA, &via),
    };
    headers.insert(header::VIA, via);
}

/// The protocol a request asks to switch to (`Connection: upgrade` and `Upgrade: P`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back `Connection: upgrade` and `Upgrade: protocol` after the hop-by-hop strip.
fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The values of `name` joined by ", ", then `item`.
fn append_list(headers: &HeaderMap, name: &HeaderName, item: &HeaderValue) -> HeaderValue {
    let mut list = Vec::new();
    for value in headers.get_all(name).iter().chain([item]) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_maybe_shared(Bytes::from(list))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The largest request header fields, in bytes (names, values and separators): more is 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Whether the header fields are over [`MAX_HEADER_BYTES`].
pub fn headers_too_large(headers: &HeaderMap) -> bool {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    size > MAX_HEADER_BYTES
}

/// What is wrong with a request's `Host` header fields, if anything: HTTP/1.1 requires
/// exactly one, and no request may carry two (RFC 9112 §3.2: answered 400).
pub fn host_problem(version: Version, headers: &HeaderMap) -> Option<&'static str> {
    match headers.get_all(header::HOST).iter().count() {
        0 if version == Version::HTTP_11 => {
            Some("bad request: an HTTP/1.1 request needs a Host header")
        }
        0 | 1 => None,
        _ => Some("bad request: more than one Host header"),
    }
}

/// Whether a declared body length is over [`MAX_BODY`].
pub fn body_too_large(declared: Option<u64>) -> bool {
    declared.is_some_and(|len| len > MAX_BODY)
}

/// Whether a method may be sent twice (RFC 9110 §9.2.2; the ones we retry).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Whether a failed attempt may go to the next member: always when the request never
/// reached the member, for idempotent methods otherwise; never when the body is gone.
pub fn may_retry(method: &Method, replayable: bool, never_sent: bool) -> bool {
    replayable && (never_sent || idempotent(method))
}

/// A plain one-line answer.
pub fn plain(status: StatusCode, line: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(format!("{line}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The line of the 503 when no member is usable.
pub(super) const NO_MEMBER: &str = "no member is available";
/// The line of the 502 when every member tried failed.
pub(super) const NO_ANSWER: &str = "no member could answer";

/// The line of the 504 when the member sent no answer head in time.
pub(super) fn member_timeout_line(after: Duration) -> String {
    format!("member did not answer within {} s", after.as_secs())
}

/// The answer when the member sent no answer head in time (504).
pub fn member_timed_out(after: Duration) -> Response<ProxyBody> {
    plain(StatusCode::GATEWAY_TIMEOUT, &member_timeout_line(after))
}

/// The answer when the client sent no more of its body in time (408).
pub fn client_timed_out(after: Duration) -> Response<ProxyBody> {
    plain(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "request timeout: no more of the body came within {} s",
            after.as_secs()
        ),
    )
}

pub fn full(bytes: Bytes) -> ProxyBody {
    ProxyBody::Whole(Full::new(bytes))
}

/// A request in flight on a member: `busy` while it lives.
pub(super) struct Busy(Arc<Member>);

impl Busy {
    pub(super) fn new(member: &Arc<Member>) -> Busy {
        member.busy.fetch_add(1, Ordering::Relaxed);
        Busy(member.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One attempt's health bookkeeping: a trial abandoned without an outcome (the client
/// went away) counts as a failure, so the member is not stuck waiting for it. A member in
/// rotation has no trial to start or end: its health is then left alone (and unlocked).
pub(super) struct Attempt {
    member: Arc<Member>,
    settled: bool,
}

impl Attempt {
    pub(super) fn start(member: &Arc<Member>) -> Attempt {
        if !member.in_rotation() {
            member.update_health(Health::on_send);
        }
        member.elected.fetch_add(1, Ordering::Relaxed);
        Attempt {
            member: member.clone(),
            settled: false,
        }
    }

    pub(super) fn succeeded(mut self) {
        self.settled = true;
        if !self.member.in_rotation() {
            self.member.update_health(Health::on_success);
        }
    }

    pub(super) fn failed(mut self) {
        self.settled = true;
        self.member.errors.fetch_add(1, Ordering::Relaxed);
        self.member.update_health(|h| h.on_failure(Instant::now()));
    }

    /// No answer within the member timeout: an error of the member, but slow is not dead,
    /// so its health is left as for an attempt given up (in error only if it already was:
    /// then its trial failed).
    pub(super) fn timed_out(self) {
        self.member.errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.member.update_health(|h| {
                if h.failures() > 0 {
                    h.on_failure(Instant::now());
                }
            });
        }
    }
}

/// How the client's streamed request body is going, shared by the body on its way to a
/// member and by the proxy: whether it failed on the client's side (then the member is
/// not to blame, and the client gets the answer), and whether it moves or waits for the
/// client (then the member is not the one keeping the request waiting, see
/// [`MemberConn::send`]). Only the task of the request touches it.
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
    pub fn answer(&self, after: Duration) -> Option<Response<ProxyBody>> {
        match self.0.failure.load(Ordering::Acquire) {
            BODY_TOO_LARGE => Some(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large: the body exceeds the balancer's limit",
            )),
            BODY_BROKEN => Some(plain(
                StatusCode::BAD_REQUEST,
                "bad request: the body could not be read",
            )),
            BODY_TIMED_OUT => Some(client_timed_out(after)),
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
enum Payload {
    Kept(Bytes),
    Stream(Option<Streamed>, Upload),
}

impl Payload {
    /// Buffers small bodies of known length (and empty ones); streams the rest.
    async fn from(
        body: Incoming,
        timeout: &Arc<MemberTimeout>,
    ) -> Result<Payload, Response<ProxyBody>> {
        let hint = body.size_hint();
        if body.is_end_stream() {
            return Ok(Payload::Kept(Bytes::new()));
        }
        if body_too_large(hint.exact()) {
            return Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large: the body exceeds the balancer's limit",
            ));
        }
        match hint.exact() {
            Some(len) if len <= REPLAY_LIMIT => {
                let limit = usize::try_from(REPLAY_LIMIT).unwrap_or(usize::MAX);
                let body = ClientBody::new(Limited::new(body, limit), timeout.clone(), None);
                match body.collect().await {
                    Ok(collected) => Ok(Payload::Kept(collected.to_bytes())),
                    Err(e) if e.is::<Stalled>() => Err(client_timed_out(timeout.after())),
                    Err(_) => Err(plain(
                        StatusCode::BAD_REQUEST,
                        "bad request: the body could not be read",
                    )),
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
    fn kept(&self) -> bool {
        matches!(self, Payload::Kept(_))
    }

    /// A body is there for one more attempt.
    fn available(&self) -> bool {
        match self {
            Payload::Kept(_) => true,
            Payload::Stream(body, _) => body.is_some(),
        }
    }

    /// The body for one attempt on `member`, or None when a streamed body was already sent.
    fn take(&mut self, member: &Arc<Member>) -> Option<OutBody> {
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
    fn give_back(&mut self, body: OutBody) {
        if let (Payload::Stream(slot @ None, _), OutKind::Stream(stream)) = (self, body.kind) {
            *slot = Some(stream);
        }
    }

    /// The answer for the client when its streamed body failed (`after`: the member
    /// timeout).
    fn client_failed(&self, after: Duration) -> Option<Response<ProxyBody>> {
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

/// A member's answer on its way to the client: it drives the member connection while it
/// is read (no other task does), counts its bytes into the member's `bytes_out`, keeps the
/// member busy while it lives, gives the connection back to the pool once read whole, and
/// cuts the answer off when the member sends no next chunk within the member timeout.
pub struct MemberBody {
    inner: Incoming,
    /// None once given back (or given up).
    conn: Option<MemberConn>,
    pool: Arc<Pool>,
    member: Arc<Member>,
    timer: ChunkTimer,
    _busy: Busy,
}

impl MemberBody {
    /// Back to the pool if the connection is idle: its request was written whole and its
    /// answer read whole. Otherwise it is closed.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.is_idle() {
                self.pool.release(&self.member, conn);
            }
        }
    }
}

impl Body for MemberBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
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

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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

/// The origin form (`/path?query`) of a request target, as a member is sent it.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// Why an attempt on one member got no answer; the request comes back when it never left.
struct Failure {
    error: BoxError,
    unsent: Option<Request<OutBody>>,
    /// It was sent and the member did not answer within the member timeout.
    timed_out: bool,
}

/// Sends a request to `member` on a pooled connection (or a new one) and waits for the
/// head of its answer. When the member closed the idle connection just as it was taken,
/// the request goes again on a new connection: that is no failure of the member.
async fn exchange(
    pool: &Pool,
    member: &Member,
    request: Request<OutBody>,
) -> Result<(Response<Incoming>, MemberConn), Failure> {
    let timeout = pool.timeout().after();
    let mut conn = match pool.checkout(member).await {
        Ok(conn) => conn,
        Err(e) => {
            return Err(Failure {
                error: e.into(),
                unsent: Some(request),
                timed_out: false,
            });
        }
    };
    let request = match conn.send(request, timeout).await {
        Ok(response) => return Ok((response, conn)),
        Err(SendError::NotSent(e, request)) if conn.reused => {
            debug!(member = %member.route, error = %e, "an idle connection was closed by the member; using a new one");
            *request
        }
        Err(e) => return Err(e.into()),
    };
    let mut conn = match MemberConn::open(&member.authority).await {
        Ok(conn) => conn,
        Err(e) => {
            return Err(Failure {
                error: e.into(),
                unsent: Some(request),
                timed_out: false,
            });
        }
    };
    match conn.send(request, timeout).await {
        Ok(response) => Ok((response, conn)),
        Err(e) => Err(e.into()),
    }
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Failure {
        match e {
            SendError::NotSent(error, request) => Failure {
                error: error.into(),
                unsent: Some(*request),
                timed_out: false,
            },
            SendError::Failed(error) => Failure {
                error: error.into(),
                unsent: None,
                timed_out: false,
            },
            SendError::TimedOut(after) => Failure {
                error: Box::new(Stalled::new(Stall::Answer, after)),
                unsent: None,
                timed_out: true,
            },
        }
    }
}

/// The request to one member. One without a Host header (HTTP/1.0 allows that) gets the
/// member's, as HTTP/1.1 requires one.
fn member_request(
    parts: &hyper::http::request::Parts,
    mut headers: HeaderMap,
    body: OutBody,
    member: &Member,
) -> Request<OutBody> {
    if !headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(&member.authority) {
            headers.insert(header::HOST, host);
        }
    }
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = headers;
    request
}

/// Forwards one request; answers 503 when no member is usable and 502 when every tried
/// member failed.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    registry: &Registry,
    pool: &Arc<Pool>,
    sticky: &Sticky,
    cookie_name: &str,
    req: Request<Incoming>,
    peer: &Peer,
    shutdown: &Shutdown,
) -> Response<ProxyBody> {
    let mut req = req;
    let upgrade = upgrade_protocol(req.headers());
    let mut client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let key = sticky_key(sticky, cookie_name, &parts.headers, path_and_query, peer);
    let order = registry.order(&key.as_stickiness(), Instant::now());
    if order.is_empty() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, NO_MEMBER);
    }
    forward_request_headers(&mut parts.headers, peer);
    if let Some(protocol) = upgrade {
        set_upgrade(&mut parts.headers, protocol);
    }
    parts.uri = origin_form(&parts.uri);
    let timeout = pool.timeout();
    let mut payload = match Payload::from(body, timeout).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // The headers, kept for another attempt when one may follow a sent request.
    let keep_headers = payload.kept() && idempotent(&parts.method) && order.has_alternatives();
    let mut headers = Some(std::mem::take(&mut parts.headers));
    let mut tried_any = false;
    for member in order {
        let Some(body) = payload.take(&member) else {
            break;
        };
        let attempt_headers = if keep_headers {
            headers.clone()
        } else {
            headers.take()
        };
        let Some(attempt_headers) = attempt_headers else {
            break;
        };
        let busy = Busy::new(&member);
        let attempt = Attempt::start(&member);
        tried_any = true;
        let request = member_request(&parts, attempt_headers, body, &member);
        match exchange(pool, &member, request).await {
            Ok((response, conn)) => {
                attempt.succeeded();
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_side.take() {
                        return tunnel(
                            response,
                            conn,
                            client_side,
                            busy,
                            shutdown,
                            pool.timeout().after(),
                        );
                    }
                }
                let (mut head, body) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let body = MemberBody {
                    inner: body,
                    conn: Some(conn),
                    pool: pool.clone(),
                    member,
                    timer: ChunkTimer::new(timeout.after()),
                    _busy: busy,
                };
                return Response::from_parts(head, ProxyBody::Member(body));
            }
            Err(failure) => {
                if let Some(answer) = payload.client_failed(timeout.after()) {
                    // The client's body broke or stalled, not the member: no verdict on
                    // the member (as when a client goes away), and the client learns why.
                    drop(attempt);
                    debug!(member = %member.route, error = %failure.error, "the client's request body failed");
                    return answer;
                }
                if failure.timed_out {
                    // Not sent again: the member may have acted on it.
                    attempt.timed_out();
                    timeout.note(Stall::Answer, Some(&member.route));
                    return member_timed_out(timeout.after());
                }
                attempt.failed();
                let never_sent = failure.unsent.is_some();
                debug!(member = %member.route, error = %failure.error, never_sent, "member failed");
                if let Some(request) = failure.unsent {
                    let (sent, body) = request.into_parts();
                    headers.get_or_insert(sent.headers);
                    payload.give_back(body);
                }
                if !may_retry(&parts.method, payload.available(), never_sent) {
                    return plain(StatusCode::BAD_GATEWAY, "the member failed to answer");
                }
            }
        }
    }
    if tried_any {
        plain(StatusCode::BAD_GATEWAY, NO_ANSWER)
    } else {
        plain(StatusCode::SERVICE_UNAVAILABLE, NO_MEMBER)
    }
}

/// Answers 101 to the client and, once both sides have switched, copies bytes both ways
/// until either closes, nothing moves for `idle`, or shutdown (see [`tunnel::copy`]). The
/// member connection gets a task of its own, to run until it hands its socket over.
fn tunnel(
    mut response: Response<Incoming>,
    conn: MemberConn,
    client_side: hyper::upgrade::OnUpgrade,
    busy: Busy,
    shutdown: &Shutdown,
    idle: Duration,
) -> Response<ProxyBody> {
    let member_side = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    let protocol = head.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut head.headers);
    if let Some(protocol) = protocol {
        set_upgrade(&mut head.headers, protocol);
    }
    let driver = conn.into_driver();
    let stop = shutdown.token().clone();
    shutdown.spawn(async move {
        let _busy = busy;
        let member_side = async move {
            if let Some(driver) = driver {
                let _ = driver.await;
            }
            member_side.await
        };
        let (Ok(client), Ok(member)) = tokio::join!(client_side, member_side) else {
            debug!("an upgrade did not complete");
            return;
        };
        match tunnel::copy(TokioIo::new(client), TokioIo::new(member), idle, &stop).await {
            tunnel::Ended::Closed(copied) => debug!(?copied, "upgraded connection closed"),
            tunnel::Ended::Idle => debug!(?idle, "upgraded connection idle; closed"),
            tunnel::Ended::Shutdown => {}
        }
    });
    Response::from_parts(head, full(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn peer() -> Peer {
        Peer::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_route_comes_from_the_session_cookie_then_the_path() {
        let h = headers(&[(
            "cookie",
            "a=b; JSESSIONID=0123456789abcdef0123456789abcdef.n2",
        )]);
        let k = sticky_key(&Sticky::Route, "JSESSIONID", &h, "/", &peer());
        assert_eq!(k, StickyKey::Route("n2".into()));
        let k = sticky_key(&Sticky::Route, "OTHER", &h, "/", &peer());
        assert_eq!(k, StickyKey::None);
        let k = sticky_key(
            &Sticky::Route,
            "JSESSIONID",
            &HeaderMap::new(),
            "/x;jsessionid=0123456789abcdef0123456789abcdef.n3?q=1",
            &peer(),
        );
        assert_eq!(k, StickyKey::Route("n3".into()));
        let k = sticky_key(&Sticky::None, "JSESSIONID", &h, "/", &peer());
        assert_eq!(k, StickyKey::None);
    }

    #[test]
    fn source_ip_and_header_stickiness_give_hash_keys() {
        let h = headers(&[("x-user", "alice")]);
        assert_eq!(
            sticky_key(&Sticky::SourceIp, "J", &h, "/", &peer()),
            StickyKey::Key(b"10.0.0.7".to_vec())
        );
        assert_eq!(
            sticky_key(&Sticky::Header("X-User".into()), "J", &h, "/", &peer()),
            StickyKey::Key(b"alice".to_vec())
        );
        assert_eq!(
            sticky_key(&Sticky::Header("X-Other".into()), "J", &h, "/", &peer()),
            StickyKey::None
        );
    }

    #[test]
    fn forwarded_headers_are_added_and_hop_by_hop_ones_removed() {
        let mut h = headers(&[
            ("host", "example.org"),
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "s"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("x-forwarded-for", "1.2.3.4"),
            ("via", "1.0 other"),
            ("cookie", "a=b"),
        ]);
        forward_request_headers(&mut h, &peer());
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "trailer",
        ] {
            assert!(h.get(gone).is_none(), "{gone} still there");
        }
        assert_eq!(h["host"], "example.org");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.org");
        assert_eq!(h["via"], "1.0 other, 1.1 deltacast");
        assert_eq!(h["cookie"], "a=b");
    }

    #[test]
    fn only_hop_by_hop_headers_are_stripped_from_an_answer() {
        let mut h = headers(&[
            ("content-length", "3"),
            ("connection", "keep-alive, close, X-Absent"),
            ("keep-alive", "timeout=5"),
            ("x-end", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, headers(&[("content-length", "3"), ("x-end", "1")]));
        let plain = headers(&[("content-length", "3"), ("server", "s")]);
        let mut same = plain.clone();
        strip_hop_by_hop(&mut same);
        assert_eq!(same, plain);
    }

    #[test]
    fn a_peer_address_is_written_as_usual() {
        for ip in [
            "10.0.0.7",
            "0.0.0.0",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "fe80::1",
        ] {
            let peer = Peer::new(ip.parse().unwrap());
            assert_eq!(peer.text(), ip.as_bytes());
        }
    }

    #[test]
    fn a_first_hop_gets_fresh_forwarded_headers() {
        let mut h = headers(&[("host", "h:1")]);
        forward_request_headers(&mut h, &peer());
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["via"], "1.1 deltacast");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn header_fields_over_the_limit_are_too_large() {
        let small = headers(&[("host", "x"), ("cookie", "a=b")]);
        assert!(!headers_too_large(&small));
        let big = "a".repeat(MAX_HEADER_BYTES);
        assert!(headers_too_large(&headers(&[("x-big", &big)])));
    }

    #[test]
    fn a_request_needs_one_host_and_http_1_0_may_have_none() {
        let one = headers(&[("host", "x")]);
        let none = HeaderMap::new();
        let two = headers(&[("host", "x"), ("host", "y")]);
        assert_eq!(host_problem(Version::HTTP_11, &one), None);
        assert_eq!(host_problem(Version::HTTP_10, &one), None);
        assert_eq!(host_problem(Version::HTTP_10, &none), None);
        assert!(host_problem(Version::HTTP_11, &none).is_some());
        assert!(host_problem(Version::HTTP_11, &two).is_some());
        assert!(host_problem(Version::HTTP_10, &two).is_some());
    }

    #[test]
    fn a_declared_body_over_the_limit_is_too_large() {
        assert!(!body_too_large(None));
        assert!(!body_too_large(Some(MAX_BODY)));
        assert!(body_too_large(Some(MAX_BODY + 1)));
    }

    #[test]
    fn an_upgrade_needs_both_the_connection_token_and_the_header() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&ws).unwrap(), "websocket");
        assert_eq!(
            upgrade_protocol(&headers(&[("upgrade", "websocket")])),
            None
        );
        assert_eq!(
            upgrade_protocol(&headers(&[("connection", "upgrade")])),
            None
        );
    }

    fn frames(
        chunks: Vec<Result<&'static [u8], BoxError>>,
    ) -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| c.map(|bytes| Frame::data(Bytes::from_static(bytes)))),
        );
        http_body_util::StreamBody::new(stream).boxed_unsync()
    }

    const T: Duration = Duration::from_secs(10);

    fn timeout() -> Arc<MemberTimeout> {
        Arc::new(MemberTimeout::new(T))
    }

    /// `wait`'s outcome, or a failed test if it takes 10 timeouts (of paused time): a
    /// wait that is never ended fails rather than hangs.
    async fn bounded<F: std::future::Future>(wait: F) -> F::Output {
        match tokio::time::timeout(T * 10, wait).await {
            Ok(outcome) => outcome,
            Err(_) => panic!("still waiting after {:?}", T * 10),
        }
    }

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
        assert_eq!(upload.answer(T).unwrap().status(), StatusCode::BAD_REQUEST);

        let upload = Upload::default();
        let big = ClientBody::new(
            Limited::new(frames(vec![Ok(b"abc"), Ok(b"def")]), 4),
            timeout(),
            Some(upload.clone()),
        );
        assert!(big.collect().await.is_err());
        assert_eq!(
            upload.answer(T).unwrap().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    /// A client on an in-memory connection that sent `head`, served by hyper as the
    /// balancer serves its clients (without an answer, ever): the body of its request, and
    /// the client's end of the connection, to send the rest.
    async fn client_request(head: &'static [u8]) -> (Incoming, DuplexStream) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(req.into_body());
                }
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        client.write_all(head).await.unwrap();
        (rx.await.unwrap(), client)
    }

    /// A connection to a member on an in-memory pipe that reads each request's body whole
    /// and then never answers.
    async fn silent_member() -> MemberConn {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(theirs), service)
                .await;
        });
        MemberConn::handshake(TokioIo::new(ours)).await.unwrap()
    }

    fn member() -> Arc<Member> {
        Arc::new(Member::new("m", "http://127.0.0.1:1", 1, true))
    }

    /// A request to `member` whose body streams from `incoming`, and its upload.
    fn streamed(incoming: Incoming, member: &Arc<Member>) -> (Request<OutBody>, Upload) {
        let upload = Upload::default();
        let body = ClientBody::new(
            Limited::new(incoming, 1 << 20),
            timeout(),
            Some(upload.clone()),
        );
        let body = OutBody {
            kind: OutKind::Stream(body),
            member: member.clone(),
        };
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("m"));
        request.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        (request, upload)
    }

    const CHUNKED: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[tokio::test(start_paused = true)]
    async fn a_member_that_never_answers_times_out_after_the_timeout() {
        let mut conn = silent_member().await;
        let mut request = Request::new(OutBody::empty(&member()));
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
        let (request, upload) = streamed(incoming, &member());
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
        let (request, upload) = streamed(incoming, &member());
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
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        drop(sender.await.unwrap());
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
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(start.elapsed(), T);
    }

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
        let mut body = MemberBody {
            inner: response.into_body(),
            conn: Some(conn),
            pool,
            member: member.clone(),
            timer: ChunkTimer::new(T),
            _busy: Busy::new(&member),
        };
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

    #[test]
    fn retries_only_when_safe() {
        assert!(
            may_retry(&Method::POST, true, true),
            "never reached the member"
        );
        assert!(!may_retry(&Method::POST, true, false), "POST may have run");
        assert!(may_retry(&Method::GET, true, false));
        assert!(may_retry(&Method::PUT, true, false));
        assert!(may_retry(&Method::DELETE, true, false));
        assert!(!may_retry(&Method::PATCH, true, false));
        assert!(!may_retry(&Method::GET, false, true), "the body is gone");
    }
}
