//! What the balancer's unit tests share: in-memory clients and members served by hyper,
//! a short member timeout, and a bound on every wait so that a test fails rather than hangs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, DuplexStream};

use crate::balancer::choice::registry::Member;
use crate::balancer::http::body::{BoxError, ClientBody, OutBody, Upload};
use crate::balancer::http::pool::MemberConn;
use crate::balancer::http::timeout::MemberTimeout;

pub fn frames(
    chunks: Vec<Result<&'static [u8], BoxError>>,
) -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| c.map(|bytes| Frame::data(Bytes::from_static(bytes)))),
    );
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

pub const T: Duration = Duration::from_secs(10);

pub fn timeout() -> Arc<MemberTimeout> {
    Arc::new(MemberTimeout::new(T))
}

/// `wait`'s outcome, or a failed test if it takes 10 timeouts (of paused time): a
/// wait that is never ended fails rather than hangs.
pub async fn bounded<F: std::future::Future>(wait: F) -> F::Output {
    match tokio::time::timeout(T * 10, wait).await {
        Ok(outcome) => outcome,
        Err(_) => panic!("still waiting after {:?}", T * 10),
    }
}

/// A client on an in-memory connection that sent `head`, served by hyper as the
/// balancer serves its clients (without an answer, ever): the body of its request, and
/// the client's end of the connection, to send the rest.
pub async fn client_request(head: &'static [u8]) -> (Incoming, DuplexStream) {
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
pub async fn silent_member() -> MemberConn {
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

pub fn member() -> Arc<Member> {
    Arc::new(Member::new("m", "http://127.0.0.1:1", 1, true))
}

/// A request to `member` whose body streams from `incoming`, and its upload.
pub fn streamed(incoming: Incoming, member: &Arc<Member>) -> (Request<OutBody>, Upload) {
    let upload = Upload::default();
    let body = ClientBody::new(
        Limited::new(incoming, 1 << 20),
        timeout(),
        Some(upload.clone()),
    );
    let body = OutBody::streamed(body, member);
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

/// The head of a request whose body is chunked.
pub const CHUNKED: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
