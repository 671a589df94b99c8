//! The AJP/1.3 listener: one task per connection, one request at a time on it, as mod_jk
//! and mod_proxy_ajp use a connection.
//!
//! A forward request becomes an `http::Request` handed to the tower service this listener
//! is given (the node's router, the same one its HTTP listener serves). Its body streams
//! on demand: the first chunk comes with the request when the length is known (as the
//! protocol has it), every further one only when the handler reads, by a get-body-chunk,
//! so a request whose body is never read costs no round trip. The answer goes out as
//! send-headers, body chunks of at most the packet size and an end-response that keeps the
//! connection (unless the node is stopping). A CPing gets a CPong.
//!
//! Ghostcat (CVE-2020-1938) taught what an AJP port must refuse: a request without the
//! configured secret, or with another, gets `403` and never reaches the service (compared
//! in constant time, over digests so that not even the length leaks); so does one that
//! carries a `req_attribute` outside the short list front ends really send (Tomcat's
//! list: the Ghostcat attack set `javax.servlet.include.*` through them). Packets that do
//! not decode close the connection (a forward request that does not decode is answered
//! `400` first), are counted (`ajp.errors`) and logged once per peer per interval.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt as _};
use tracing::{debug, info, warn};

use super::codec::{
    self, AjpError, ContainerPacket, ForwardRequest, MAGIC_SERVER, SendHeaders, ServerPacket,
};
use crate::metrics::Metrics;
use crate::serve::limit::ConnectionLimit;
use crate::throttle::LogThrottle;

/// How long a connection may sit between requests before it is closed. Front ends check a
/// pooled connection before they reuse it (mod_jk's and mod_proxy's "is it still
/// connected"), so closing an idle one costs them a reconnect, not a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the rest of a packet, a body chunk asked for, or a write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open connections may finish their request once the listener stops.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How often a peer's bad packets are logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// After an answer that closes the connection, how long and how many bytes of what the
/// peer still sends are read and dropped first: closing with unread bytes would reset the
/// connection, and the front end could lose the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// `req_attribute` names a forward request may carry: what mod_jk and mod_proxy_ajp send
/// (Tomcat's implicitly allowed list). Any other is refused with 403.
pub const ALLOWED_REQ_ATTRIBUTES: [&str; 13] = [
    "AJP_LOCAL_ADDR",
    "AJP_REMOTE_PORT",
    "AJP_SSL_PROTOCOL",
    "JK_LB_ACTIVATION",
    "CERT_ISSUER",
    "CERT_SUBJECT",
    "CERT_COOKIE",
    "HTTPS_SERVER_SUBJECT",
    "CERT_FLAGS",
    "HTTPS_SECRETKEYSIZE",
    "CERT_SERIALNUMBER",
    "HTTPS_SERVER_ISSUER",
    "HTTPS_KEYSIZE",
];

/// What the listener needs from `[ajp]`.
#[derive(Clone)]
pub struct AjpSettings {
    /// The secret every request must carry; `None` (only with `secret_required = false`):
    /// none is asked for.
    pub secret: Option<String>,
    /// `ajp.packet_size`.
    pub packet_size: usize,
}

impl std::fmt::Debug for AjpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AjpSettings")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("packet_size", &self.packet_size)
            .finish()
    }
}

/// What the front end told about a request beyond HTTP, as an extension of every request
/// the service gets from this listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AjpRequestInfo {
    /// The `route` attribute: with mod_jk the route of the worker it chose, with
    /// mod_proxy_ajp the route the session named (when it named one). The node's own
    /// route is `node.name`; the front end's routes must be the nodes' names.
    pub route: Option<String>,
    /// The client's address, as the front end saw it.
    pub remote_addr: String,
    /// Whether the client came over TLS.
    pub is_ssl: bool,
}

/// Why a connection ended early.
#[derive(Debug, Error)]
enum ConnError {
    #[error(transparent)]
    Decode(#[from] AjpError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("the peer closed the connection {0}")]
    Closed(&'static str),
    #[error("the response body failed: {0}")]
    ResponseBody(String),
}

/// Accepts and serves until `stop`, then lets open connections finish their request (at
/// most `DRAIN_GRACE`, 5 s). `limit` is shared with the node's HTTP listener: one budget of
/// descriptors for both.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    settings: AjpSettings,
    metrics: Arc<Metrics>,
    limit: Arc<ConnectionLimit>,
    stop: CancellationToken,
) where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Display + Send,
{
    let settings = Arc::new(Prepared::new(settings));
    let throttle = Arc::new(Mutex::new(LogThrottle::<IpAddr>::new(LOG_INTERVAL)));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if throttle.lock().allow(&IpAddr::from([0, 0, 0, 0]), Instant::now()) {
                        warn!(error = %e, "accepting an AJP connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let slot = match limit.try_slot() {
            Some(slot) => slot,
            None => {
                if let Some(times) = limit.log_due(Instant::now()) {
                    warn!(
                        max_connections = limit.max(),
                        times, "node.max_connections reached; new AJP connections wait"
                    );
                }
                tokio::select! {
                    slot = limit.slot() => match slot { Some(s) => s, None => break },
                    _ = stop.cancelled() => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(
            stream,
            peer,
            service.clone(),
            settings.clone(),
            metrics.clone(),
            stop.clone(),
        );
        let throttle = throttle.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let metrics = conn.metrics.clone();
            match conn.run().await {
                Ok(()) => {}
                Err(ConnError::Decode(e)) => {
                    metrics.ajp.errors.inc();
                    if throttle.lock().allow(&peer.ip(), Instant::now()) {
                        warn!(peer = %peer.ip(), error = %e, "AJP packet did not decode; connection closed");
                    }
                }
                Err(e) => debug!(%peer, error = %e, "AJP connection ended"),
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        info!("AJP requests still running after {DRAIN_GRACE:?}; closing them");
    }
}

/// The settings as the connections use them.
struct Prepared {
    /// The digest of the secret, compared in constant time with the digest of what came.
    secret: Option<[u8; 32]>,
    packet_size: usize,
}

impl Prepared {
    fn new(settings: AjpSettings) -> Prepared {
        Prepared {
            secret: settings.secret.map(|s| digest(s.as_bytes())),
            packet_size: settings
                .packet_size
                .clamp(codec::MIN_PACKET_SIZE, codec::MAX_PACKET_SIZE),
        }
    }

    /// Whether `given` is the secret (always, when none is configured).
    fn secret_matches(&self, given: Option<&[u8]>) -> bool {
        match (&self.secret, given) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(expected), Some(given)) => bool::from(expected.ct_eq(&digest(given))),
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The body of a request that came over AJP: chunks the connection fetches when the
/// handler asks for them.
pub struct RequestBody {
    chunks: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
    want: Arc<Notify>,
    /// Bytes still to come, when the length is known.
    remaining: Option<u64>,
}

/// Why a request body ended before its end.
#[derive(Debug, Error)]
pub enum BodyError {
    /// The front end ended the body before its `Content-Length`.
    #[error("the request body ended early")]
    Truncated,
    /// The connection broke or the exchange ended while the body was read.
    #[error("the request body is no longer available")]
    Gone,
}

impl RequestBody {
    fn empty() -> RequestBody {
        RequestBody {
            chunks: None,
            want: Arc::new(Notify::new()),
            remaining: Some(0),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(chunks) = this.chunks.as_mut() else {
            return Poll::Ready(None);
        };
        match chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                if let Some(r) = this.remaining.as_mut() {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.chunks = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.chunks = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.want.notify_one();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Where the body of the request in progress stands, on the connection's side.
struct BodyFeed {
    tx: Option<mpsc::Sender<Result<Bytes, BodyError>>>,
    want: Arc<Notify>,
    /// Bytes still to come when the length is known; `None`: until an empty chunk.
    remaining: Option<u64>,
}

impl BodyFeed {
    fn open(&self) -> bool {
        self.tx.is_some()
    }

    /// Passes on a chunk the front end sent; the body ends with an empty one or when the
    /// length is reached.
    fn deliver(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if data.is_empty() {
            if self.remaining.is_some_and(|r| r > 0) {
                let _ = tx.try_send(Err(BodyError::Truncated));
            }
            return Ok(());
        }
        if let Some(r) = self.remaining.as_mut() {
            let len = data.len() as u64;
            if len > *r {
                return Err(ConnError::Decode(AjpError::Trailing(
                    usize::try_from(len - *r).unwrap_or(usize::MAX),
                )));
            }
            *r -= len;
        }
        // The channel holds one chunk and a chunk is only fetched when it is empty.
        let _ = tx.try_send(Ok(Bytes::copy_from_slice(data)));
        if self.remaining != Some(0) {
            self.tx = Some(tx);
        }
        Ok(())
    }

    /// Ends the feed: a handler still reading learns the body is gone.
    fn abandon(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(BodyError::Gone));
        }
    }
}

struct Connection<S> {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buf: BytesMut,
    out: Vec<u8>,
    peer: SocketAddr,
    service: S,
    settings: Arc<Prepared>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl<S, B> Connection<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Display + Send,
{
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        service: S,
        settings: Arc<Prepared>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Connection<S> {
        let (reader, writer) = stream.into_split();
        Connection {
            reader,
            writer,
            buf: BytesMut::with_capacity(settings.packet_size),
            out: Vec::with_capacity(settings.packet_size),
            peer,
            service,
            settings,
            metrics,
            stop,
        }
    }

    async fn run(mut self) -> Result<(), ConnError> {
        let stop = self.stop.clone();
        loop {
            let idle = self.buf.is_empty();
            let packet = tokio::select! {
                packet = self.read_packet(Some(IDLE_TIMEOUT)) => packet?,
                _ = stop.cancelled(), if idle => return Ok(()),
            };
            let Some(packet) = packet else {
                return Ok(());
            };
            let payload = codec::payload(&packet);
            match codec::decode_server(payload) {
                Ok(ServerPacket::CPing) => {
                    self.metrics.ajp.cpings.inc();
                    self.queue(&ContainerPacket::CPong)?;
                    self.flush().await?;
                }
                Ok(ServerPacket::Shutdown) => {
                    return Err(ConnError::Decode(AjpError::UnknownType(0x07)));
                }
                Ok(ServerPacket::ForwardRequest(request)) => {
                    self.metrics.ajp.requests.inc();
                    if !self.exchange(*request).await? {
                        self.linger_close().await;
                        return Ok(());
                    }
                }
                Err(e) => {
                    if payload.first() == Some(&0x02) {
                        // A request that does not decode still gets an answer.
                        self.metrics.ajp.requests.inc();
                        self.answer_line(
                            StatusCode::BAD_REQUEST,
                            "bad request: malformed AJP forward request",
                        )?;
                        self.flush().await?;
                        self.linger_close().await;
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Serves one forward request; whether the connection takes another.
    async fn exchange(&mut self, request: ForwardRequest) -> Result<bool, ConnError> {
        if !self
            .settings
            .secret_matches(request.attributes.secret.as_deref())
        {
            self.metrics.ajp.refused.inc();
            debug!(peer = %self.peer.ip(), "AJP request without the right secret refused");
            self.answer_line(
                StatusCode::FORBIDDEN,
                "forbidden: missing or wrong AJP secret",
            )?;
            self.flush().await?;
            return Ok(false);
        }
        if let Some((name, _)) = request.attributes.req_attributes.iter().find(|(name, _)| {
            !ALLOWED_REQ_ATTRIBUTES
                .iter()
                .any(|a| a.as_bytes() == name.as_slice())
        }) {
            self.metrics.ajp.refused.inc();
            debug!(peer = %self.peer.ip(), attribute = %String::from_utf8_lossy(name), "AJP request attribute not allowed; refused");
            self.answer_line(
                StatusCode::FORBIDDEN,
                "forbidden: request attribute not allowed",
            )?;
            self.flush().await?;
            return Ok(false);
        }
        let (http_request, length) = match to_http(request) {
            Ok(parts) => parts,
            Err(line) => {
                self.answer_line(StatusCode::BAD_REQUEST, line)?;
                self.flush().await?;
                return Ok(false);
            }
        };
        let is_head = http_request.method() == http::Method::HEAD;
        let (tx, rx) = mpsc::channel(1);
        let want = Arc::new(Notify::new());
        let mut feed = BodyFeed {
            tx: Some(tx),
            want: want.clone(),
            remaining: length,
        };
        let body = if length == Some(0) {
            feed.tx = None;
            RequestBody::empty()
        } else {
            RequestBody {
                chunks: Some(rx),
                want,
                remaining: length,
            }
        };
        if length.is_some_and(|n| n > 0) {
            // The protocol sends the first chunk with the request.
            let chunk = self.read_body_chunk().await?;
            feed.deliver(codec::decode_body(codec::payload(&chunk))?)?;
        }
        let request = http_request.map(|()| body);
        let mut answer = std::pin::pin!(self.service.clone().oneshot(request));
        let response = loop {
            tokio::select! {
                biased;
                response = &mut answer => break match response {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                () = feed.want.notified(), if feed.open() => {
                    let ask = feed.remaining.map_or(u64::MAX, |r| r);
                    let max = codec::max_read_chunk(self.settings.packet_size) as u64;
                    let ask = u16::try_from(ask.min(max)).unwrap_or(u16::MAX);
                    self.queue(&ContainerPacket::GetBodyChunk(ask))?;
                    self.flush().await?;
                    let chunk = self.read_body_chunk().await?;
                    feed.deliver(codec::decode_body(codec::payload(&chunk))?)?;
                }
            }
        };
        feed.abandon();
        let reuse = !self.stop.is_cancelled();
        self.respond(response, is_head, reuse).await?;
        Ok(reuse)
    }

    /// Writes `response`: its head, its body in chunks, the end.
    async fn respond(
        &mut self,
        response: Response<B>,
        is_head: bool,
        reuse: bool,
    ) -> Result<(), ConnError> {
        let (parts, mut body) = response.into_parts();
        let mut headers = Vec::with_capacity(parts.headers.len() + 1);
        for (name, value) in &parts.headers {
            if is_hop_by_hop(name) {
                continue;
            }
            headers.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
        }
        let bodiless = is_head
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        if !parts.headers.contains_key(header::CONTENT_LENGTH) && !bodiless {
            if let Some(n) = body.size_hint().exact() {
                headers.push((b"content-length".to_vec(), n.to_string().into_bytes()));
            }
        }
        self.queue(&ContainerPacket::SendHeaders(SendHeaders {
            status: parts.status.as_u16(),
            reason: parts
                .status
                .canonical_reason()
                .unwrap_or("")
                .as_bytes()
                .to_vec(),
            headers,
        }))?;
        let max = codec::max_send_chunk(self.settings.packet_size);
        if !bodiless {
            loop {
                // Write what is queued before waiting for a body that is not ready.
                let frame = match body.frame().now_or_never() {
                    Some(frame) => frame,
                    None => {
                        self.flush().await?;
                        body.frame().await
                    }
                };
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| ConnError::ResponseBody(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    for chunk in data.chunks(max) {
                        self.queue(&ContainerPacket::SendBodyChunk(chunk.to_vec()))?;
                        if self.out.len() >= 64 * 1024 {
                            self.flush().await?;
                        }
                    }
                }
            }
        }
        self.queue(&ContainerPacket::EndResponse { reuse })?;
        self.flush().await
    }

    /// A one-line `text/plain` answer, queued.
    fn answer_line(&mut self, status: StatusCode, line: &str) -> Result<(), ConnError> {
        let body = format!("{line}\n");
        self.queue(&ContainerPacket::SendHeaders(SendHeaders {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").as_bytes().to_vec(),
            headers: vec![
                (
                    b"content-type".to_vec(),
                    crate::serve::conn::CONTENT_TYPE.as_bytes().to_vec(),
                ),
                (
                    b"content-length".to_vec(),
                    body.len().to_string().into_bytes(),
                ),
            ],
        }))?;
        self.queue(&ContainerPacket::SendBodyChunk(body.into_bytes()))?;
        self.queue(&ContainerPacket::EndResponse { reuse: false })
    }

    fn queue(&mut self, packet: &ContainerPacket) -> Result<(), ConnError> {
        let bytes = codec::encode_container(packet, self.settings.packet_size)?;
        self.out.extend_from_slice(&bytes);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(IO_TIMEOUT, self.writer.write_all(&self.out)).await;
        self.out.clear();
        match written {
            Ok(result) => Ok(result?),
            Err(_) => Err(ConnError::Timeout("writing")),
        }
    }

    /// The next body packet, asked for or due.
    async fn read_body_chunk(&mut self) -> Result<Bytes, ConnError> {
        match self.read_packet(None).await? {
            Some(packet) => Ok(packet),
            None => Err(ConnError::Closed("while sending a request body")),
        }
    }

    /// The next whole packet from the web server; `None` when it closed the connection
    /// between packets. `first_byte` bounds the wait for the packet to begin (the idle
    /// timeout); once it began, or without that bound, [`IO_TIMEOUT`] applies to each read.
    async fn read_packet(
        &mut self,
        first_byte: Option<Duration>,
    ) -> Result<Option<Bytes>, ConnError> {
        loop {
            if let Some(len) =
                codec::packet_len(&self.buf, MAGIC_SERVER, self.settings.packet_size)?
            {
                return Ok(Some(self.buf.split_to(len).freeze()));
            }
            let limit = match first_byte {
                Some(idle) if self.buf.is_empty() => idle,
                _ => IO_TIMEOUT,
            };
            self.buf.reserve(self.settings.packet_size);
            let read = tokio::time::timeout(limit, self.reader.read_buf(&mut self.buf)).await;
            match read {
                Err(_) if self.buf.is_empty() && first_byte.is_some() => return Ok(None),
                Err(_) => return Err(ConnError::Timeout("reading a packet")),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) if self.buf.is_empty() && first_byte.is_some() => return Ok(None),
                Ok(Ok(0)) => return Err(ConnError::Closed("in the middle of a packet")),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Closes after an answer: no more writes, then what the peer still sends is read and
    /// dropped for a moment, so the close does not reset the connection under the answer.
    async fn linger_close(&mut self) {
        let _ = self.writer.shutdown().await;
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut drained = 0usize;
        let mut scratch = [0u8; 8192];
        while drained < LINGER_MAX_BYTES {
            match tokio::time::timeout_at(deadline, self.reader.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// Headers of one hop that do not travel in AJP (the front end frames the answer).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name.as_str() == "keep-alive"
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
}

/// The HTTP request of a forward request, and its body's length (`None`: until the front
/// end sends an empty chunk); or the line of a 400.
fn to_http(request: ForwardRequest) -> Result<(Request<()>, Option<u64>), &'static str> {
    let ForwardRequest {
        method,
        protocol,
        uri,
        remote_addr,
        server_name,
        server_port,
        is_ssl,
        headers,
        attributes,
        ..
    } = request;
    let asterisk = uri == b"*" && method == http::Method::OPTIONS;
    if !uri.starts_with(b"/") && !asterisk {
        return Err("bad request: the request URI must be a path");
    }
    let mut target = uri;
    if let Some(query) = attributes.query_string.as_ref().filter(|q| !q.is_empty()) {
        target.push(b'?');
        target.extend_from_slice(query);
    }
    let uri = Uri::try_from(target).map_err(|_| "bad request: invalid request URI")?;
    let version = match protocol.as_slice() {
        b"HTTP/1.0" => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder().method(method).uri(uri).version(version);
    let map = builder
        .headers_mut()
        .ok_or("bad request: malformed AJP forward request")?;
    let mut chunked = false;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(&name).map_err(|_| "bad request: invalid header name")?;
        let value =
            HeaderValue::from_bytes(&value).map_err(|_| "bad request: invalid header value")?;
        if name == header::TRANSFER_ENCODING {
            chunked = true;
            continue;
        }
        map.append(name, value);
    }
    let mut lengths = map.get_all(header::CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(one), None) => Some(
            std::str::from_utf8(one.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("bad request: invalid Content-Length")?,
        ),
        (Some(_), Some(_)) => return Err("bad request: several Content-Length headers"),
    };
    if chunked && length.is_some() {
        return Err("bad request: both Content-Length and Transfer-Encoding");
    }
    if !map.contains_key(header::HOST) {
        let host = if server_port == 80 || server_port == 443 || server_port == 0 {
            String::from_utf8_lossy(&server_name).into_owned()
        } else {
            format!("{}:{server_port}", String::from_utf8_lossy(&server_name))
        };
        if let Ok(value) = HeaderValue::from_str(&host) {
            map.insert(header::HOST, value);
        }
    }
    let route = attributes
        .route
        .and_then(|r| String::from_utf8(r).ok())
        .filter(|r| !r.is_empty());
    builder = builder.extension(AjpRequestInfo {
        route,
        remote_addr: String::from_utf8_lossy(&remote_addr).into_owned(),
        is_ssl,
    });
    // Without a length the body runs until the front end sends an empty chunk, as Tomcat
    // reads it; it is only asked for when the handler reads.
    let request = builder
        .body(())
        .map_err(|_| "bad request: malformed AJP forward request")?;
    Ok((request, length))
}

#[cfg(test)]
mod tests;
