//! A client connection on the hyper path (the balancer's and the node's): how hyper serves it (timeouts,
//! buffer limit), and a one-line text answer to a request hyper cannot parse.
//!
//! hyper answers a request head it cannot parse by itself (400, 431 or 414, with
//! `content-length: 0`) and gives no hook to add a body. [`ClientIo`] sits between hyper
//! and the socket and replaces that answer with the same status, a `text/plain` one-line
//! body and `connection: close`. It tells hyper's answer from a response of ours with
//! [`Exchange`]: hyper writes its answer only while no request of this connection is being
//! served (hyper's `on_parse_error` writes only in its `Writing::Init` state), so a write
//! that comes after our last response was handed to the socket in full, and before the
//! service was called again, can only be that answer. When that is not certain (the end of
//! our last response was still in hyper's buffer when the bad head came), the bytes go
//! through unchanged: the client then gets hyper's own answer, still a correct HTTP answer.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tracing::debug;

/// The type of every one-line answer (as the balancer's refusals).
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// After our answer to a bad head, how long (at most) and how many bytes the rest of the
/// request is read and dropped before the socket closes: closing with unread bytes would
/// reset the connection, and a client still sending (a huge head) would then see the
/// reset instead of the answer (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// How long a client may take to send a request head (a slowloris client is closed).
///
/// hyper also runs this timer while a kept-alive connection waits for its next request
/// (after each response it sets `notify_read`, and the next read of a head starts the
/// timer), so it is the idle timeout of client connections as well: an idle keep-alive
/// connection is closed after this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest read buffer of a client connection: a head that does not fit is answered
/// 431 (and a request target over 64 KiB, 414).
pub const MAX_READ_BUF: usize = 128 * 1024;

/// How the client side of every connection is served.
pub fn http1() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_READ_BUF)
        .keep_alive(true);
    builder
}

// ---------------------------------------------------------------------------------------------
// The answer to a head hyper could not parse

/// The one-line body of each status hyper answers a bad head with.
fn error_line(status: StatusCode) -> String {
    match status {
        StatusCode::BAD_REQUEST => "bad request: malformed request",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request header fields too large",
        StatusCode::URI_TOO_LONG => "URI too long",
        StatusCode::HTTP_VERSION_NOT_SUPPORTED => "HTTP version not supported",
        _ => "bad request",
    }
    .to_string()
}

/// Our answer in place of hyper's bodiless answer `hyper_answer` (a whole response head):
/// the same version, status and `date`, a `text/plain` one-line body, and `connection:
/// close`. None when the bytes are not a 4xx response head.
pub fn error_answer(hyper_answer: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(hyper_answer).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let version = status_line.get(..8)?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let code = status_line.get(9..12)?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    if !status.is_client_error() {
        return None;
    }
    let date = lines.find(|l| {
        l.split_once(':')
            .is_some_and(|(name, _)| name.eq_ignore_ascii_case("date"))
    });
    let body = format!("{}\n", error_line(status));
    let mut answer = format!(
        "{version} {} {}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(date) = date {
        answer.push_str(date);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

/// How an HTTP/2 client with prior knowledge begins (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The answer to the HTTP/2 preface: this listener speaks HTTP/1.1 only.
fn h2_answer() -> Vec<u8> {
    let body = format!("{}\n", error_line(StatusCode::HTTP_VERSION_NOT_SUPPORTED));
    format!(
        "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Where one connection is between requests, as far as its writes are concerned.
#[derive(Debug)]
pub struct Exchange {
    state: AtomicU8,
    /// Whether hyper has parsed a request head on this connection yet.
    started: AtomicBool,
}

/// Between requests: nothing of ours is owed or buffered; a write now is hyper's own
/// answer to a head it could not parse.
const BETWEEN: u8 = 0;
/// A request is being served: its response (or hyper's `100 Continue`) may be written.
const SERVING: u8 = 1;
/// The response body has ended; its last bytes leave at hyper's next flush.
const FLUSHING: u8 = 2;
/// Every byte goes through unchanged from now on (an upgraded connection).
const PASS: u8 = 3;

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new(Exchange {
            state: AtomicU8::new(BETWEEN),
            started: AtomicBool::new(false),
        })
    }

    fn set(&self, from: u8, to: u8) {
        let _ = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }

    /// hyper parsed a request head and called the service.
    pub fn request(&self) {
        self.started.store(true, Ordering::Release);
        self.set(BETWEEN, SERVING);
        self.set(FLUSHING, SERVING);
    }

    /// The service's response, with a body that reports its end. After a `101 Switching
    /// Protocols` the connection is a tunnel and is never looked at again.
    pub fn response<B>(self: &Arc<Self>, response: Response<B>) -> Response<Tracked<B>> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.state.store(PASS, Ordering::Release);
        }
        response.map(|inner| Tracked {
            inner,
            exchange: self.clone(),
        })
    }

    /// hyper dropped the response body: every byte of it is in hyper's write buffer.
    fn body_done(&self) {
        self.set(SERVING, FLUSHING);
    }

    /// hyper flushes the socket, which it does only once its write buffer is empty: the
    /// last response is in the socket in full.
    fn flushing(&self) {
        self.set(FLUSHING, BETWEEN);
    }

    /// Whether hyper has parsed a request head on this connection yet.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether nothing of this connection is being served now: closing it loses nothing
    /// (an idle keep-alive connection, or one whose head has not come yet).
    pub fn idle(&self) -> bool {
        self.between_requests()
    }

    fn between_requests(&self) -> bool {
        self.state.load(Ordering::Acquire) == BETWEEN
    }

    fn pass(&self) {
        self.state.store(PASS, Ordering::Release);
    }
}

/// A response body that tells its [`Exchange`] when hyper is done with it.
pub struct Tracked<B> {
    inner: B,
    exchange: Arc<Exchange>,
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.exchange.body_done();
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket of one client connection as hyper sees it: replaces hyper's bodiless answer
/// to a bad head with ours, and holds the connection's slot under the limit for as long
/// as the socket lives (through an upgrade too).
pub struct ClientIo<S> {
    stream: S,
    exchange: Arc<Exchange>,
    /// Our answer in place of hyper's, and how much of it is written.
    answer: Option<(Bytes, usize)>,
    /// After our answer: until when, and how much, the rest of the request is dropped.
    linger: Option<(Pin<Box<Sleep>>, usize)>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<S> ClientIo<S> {
    pub fn new(stream: S, exchange: Arc<Exchange>, slot: Option<OwnedSemaphorePermit>) -> Self {
        ClientIo {
            stream,
            exchange,
            answer: None,
            linger: None,
            _slot: slot,
        }
    }

    /// Whether `bufs` (all of them) are taken in place of being written: hyper's answer to
    /// a bad head (replaced by ours), or anything after our answer (nothing may follow it).
    fn intercept(&mut self, bufs: &[IoSlice<'_>]) -> Option<usize> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.answer.is_some() {
            return Some(len);
        }
        if len == 0 || !self.exchange.between_requests() {
            return None;
        }
        let written: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        match error_answer(&written) {
            Some(answer) => {
                debug!(
                    status = %String::from_utf8_lossy(written.get(9..12).unwrap_or_default()),
                    "answering a request that could not be parsed"
                );
                self.answer = Some((Bytes::from(answer), 0));
                Some(len)
            }
            None => {
                // Not hyper's answer after all: never look again, let everything through.
                debug!("unexpected bytes written between requests; passing them through");
                self.exchange.pass();
                None
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> ClientIo<S> {
    /// Writes what is left of our answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, sent)) = &mut self.answer {
            if *sent >= answer.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &answer[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> ClientIo<S> {
    /// Reads and drops what the client still sends, until it closes, [`LINGER`] passes
    /// or [`LINGER_MAX_BYTES`] were dropped.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (deadline, dropped) = self
            .linger
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep(LINGER)), 0));
        let mut scratch = [0u8; 4096];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *dropped > LINGER_MAX_BYTES {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => *dropped += buf.filled().len(),
                Ok(()) | Err(_) => return Poll::Ready(()),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.answer.is_some() {
            // After our answer hyper reads nothing more (the rest is lingered away).
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if !self.exchange.started() && before == 0 && buf.filled().starts_with(H2_PREFACE) {
            // hyper closes on the HTTP/2 preface without a word: answer 505 in one line,
            // and show hyper the end of the stream, so it shuts down (writing our answer).
            debug!("answering the HTTP/2 preface on an HTTP/1 connection");
            self.answer = Some((Bytes::from(h2_answer()), 0));
            buf.set_filled(0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(taken) = self.intercept(&[IoSlice::new(buf)]) {
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(taken) = self.intercept(bufs) {
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.exchange.flushing();
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        if self.linger.is_none() {
            ready!(Pin::new(&mut self.stream).poll_shutdown(cx))?;
            if self.answer.is_none() {
                return Poll::Ready(Ok(()));
            }
        }
        ready!(self.poll_linger(cx));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use hyper::Request;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 25 Nov 2026 11:42:51 GMT\r\n\r\n";

    fn split(answer: &[u8]) -> (String, String) {
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_ascii_lowercase(), body.to_string())
    }

    /// A one-line body, its length declared, text/plain, connection: close.
    fn assert_one_line(answer: &[u8], status: &str) {
        let (head, body) = split(answer);
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        assert!(head.contains("content-type: text/plain"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(body.ends_with('\n'), "{body:?}");
        assert_eq!(body.lines().count(), 1, "{body:?}");
        assert!(body.len() > 1);
    }

    #[test]
    fn hypers_bodiless_answers_become_one_line_answers() {
        let answer = error_answer(HYPER_400).unwrap();
        assert_one_line(&answer, "400");
        let (head, body) = split(&answer);
        assert_eq!(body, "bad request: malformed request\n");
        assert!(
            head.contains("date: wed, 25 nov 2026 11:42:51 gmt"),
            "{head}"
        );
        assert!(!head.contains("content-length: 0"), "{head}");
        for (hyper, status) in [
            (
                &b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
                "431",
            ),
            (
                b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                "414",
            ),
        ] {
            assert_one_line(&error_answer(hyper).unwrap(), status);
        }
    }

    #[test]
    fn only_a_whole_4xx_head_is_replaced() {
        assert!(error_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(error_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
        assert!(error_answer(b"hello").is_none());
        assert!(error_answer(b"").is_none());
        assert!(error_answer(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).is_none());
    }

    /// Serves one connection the way the balancer does, over an in-memory pipe: `GET /up`
    /// answers 101 (then echoes), anything else 200 with the path as the body.
    fn serve() -> DuplexStream {
        serve_with(1 << 20)
    }

    /// `serve` with a pipe that holds `capacity` bytes each way.
    fn serve_with(capacity: usize) -> DuplexStream {
        let (client, server) = tokio::io::duplex(capacity);
        tokio::spawn(async move {
            let exchange = Exchange::new();
            let io = ClientIo::new(server, exchange.clone(), None);
            let service = service_fn(move |mut req: Request<Incoming>| {
                exchange.request();
                let exchange = exchange.clone();
                async move {
                    let response = if req.uri().path() == "/up" {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(upgrade.await.unwrap());
                            let mut buf = [0u8; 64];
                            while let Ok(n @ 1..) = io.read(&mut buf).await {
                                let _ = io.write_all(&buf[..n]).await;
                            }
                        });
                        Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap()
                    } else {
                        let _ = req.body_mut().collect().await;
                        Response::new(Full::new(Bytes::from(req.uri().path().to_string())))
                    };
                    Ok::<_, Infallible>(exchange.response(response))
                }
            });
            let _ = http1()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
                .await;
        });
        client
    }

    async fn send(request: &[u8]) -> Vec<u8> {
        let mut client = serve();
        client.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_malformed_head_gets_a_one_line_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"[..],
            b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
            b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ] {
            let answer = send(bad).await;
            assert_one_line(&answer, "400");
        }
    }

    #[tokio::test]
    async fn an_oversized_head_gets_a_one_line_431_and_a_long_target_414() {
        // hyper's limit is checked between reads, so a head a little over it may still
        // be read whole; four times over never is.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4 * MAX_READ_BUF)
        );
        assert_one_line(&send(big.as_bytes()).await, "431");
        let many: String = (0..200).map(|i| format!("X-H{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_one_line(&send(many.as_bytes()).await, "431");
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        assert_one_line(&send(long.as_bytes()).await, "414");
    }

    #[tokio::test]
    async fn a_client_still_sending_after_a_bad_head_is_drained_and_reads_the_answer() {
        let (mut read, mut write) = tokio::io::split(serve_with(16 * 1024));
        let sender = tokio::spawn(async move {
            write.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
            // Far more than the pipe holds: only the balancer's reading lets this finish.
            write.write_all(&vec![b'x'; 256 * 1024]).await.unwrap();
            write
        });
        let mut answer = Vec::new();
        read.read_to_end(&mut answer).await.unwrap();
        assert_one_line(&answer, "400");
        drop(sender.await.unwrap());
    }

    #[tokio::test]
    async fn answers_before_a_bad_head_go_out_unchanged() {
        let answer =
            send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nPOST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcNOT HTTP\r\n\r\n").await;
        let text = String::from_utf8(answer).unwrap();
        let first = text.find("/first").expect("the first answer");
        let second = text.find("/second").expect("the second answer");
        let bad = text.find("HTTP/1.1 400 ").expect("the 400");
        assert!(first < second && second < bad, "{text}");
        assert_one_line(&text.as_bytes()[bad..], "400");
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_never_rewritten() {
        let mut client = serve();
        client
            .write_all(
                b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101 "));
        // Bytes that would be a 4xx head on an HTTP connection pass through the tunnel.
        let echoed = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        client.write_all(echoed).await.unwrap();
        let mut got = vec![0u8; echoed.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &echoed[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
        let mut client = serve();
        client
            .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 256];
        let n = client.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
        let idle = tokio::time::Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        let waited = idle.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited < HEADER_READ_TIMEOUT * 2,
            "closed after {waited:?}"
        );
    }
}
