//! The node's HTTP listener: the axum router served through hyper with the balancer's
//! protections (crate::serve): a header-read timeout that is also the idle keep-alive
//! timeout, a read buffer limit, one-line answers to heads hyper cannot parse, a
//! connection limit, and `Host` required exactly once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::serve::conn::{self, CONTENT_TYPE, ClientIo, Exchange};
use crate::serve::limit::ConnectionLimit;
use crate::throttle::LogThrottle;

/// How long open connections may finish their request once the node stops serving HTTP.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Accepts and serves until `stop`, then lets open connections finish (at most
/// [`DRAIN_GRACE`]). At the limit it stops accepting: new clients wait in the listen
/// backlog until a connection closes. So that an idle flood cannot hold every slot for the
/// whole idle timeout, reaching the limit also asks every idle connection to close (as
/// nginx's `ngx_drain_connections` closes reusable keep-alive connections): one serving a
/// request finishes it first; one that has not sent a request yet is left to the header-read
/// timeout (it might be the client about to send one). The limit is only drained for a
/// client that is waiting: the loop accepts first and holds that one connection until a
/// slot frees.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limit: Arc<ConnectionLimit>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(0u64);
    let mut accept_errors = LogThrottle::new(crate::serve::limit::LIMIT_LOG_INTERVAL);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if accept_errors.allow(&(), Instant::now()) {
                        warn!(error = %e, "accepting an HTTP connection failed");
                    }
                    // Out of descriptors: give a closing connection the time to free one.
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
                        times, "node.max_connections reached; new clients wait"
                    );
                }
                drain_tx.send_modify(|n| *n += 1);
                tokio::select! {
                    slot = limit.slot() => match slot { Some(s) => s, None => break },
                    _ = stop.cancelled() => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        let mut drain = drain_rx.clone();
        drain.mark_unchanged();
        tracker.spawn(async move {
            let exchange = Exchange::new();
            let idle = exchange.clone();
            let io = ClientIo::new(stream, exchange.clone(), Some(slot));
            let service = service_fn(move |req: Request<Incoming>| {
                exchange.request();
                let router = router.clone();
                let exchange = exchange.clone();
                async move {
                    let response = match host_refusal(&req) {
                        Some(refusal) => refusal,
                        None => match router.oneshot(req.map(Body::new)).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        },
                    };
                    Ok::<_, Infallible>(exchange.response(response))
                }
            });
            let conn = conn::http1().serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut watching = true;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            debug!(%peer, error = %e, "client connection ended");
                        }
                        break;
                    }
                    changed = drain.changed(), if watching => {
                        if changed.is_err() {
                            watching = false;
                        } else if idle.idle() && idle.started() {
                            debug!(%peer, "idle connection closed to make room");
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
                            break;
                        }
                    }
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
                        break;
                    }
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_GRACE, tracker.wait()).await;
}

/// A 400 (closing the connection) unless the request has exactly one `Host` field with one
/// value (RFC 9112 §3.2): with none or several, which host is meant is in doubt, and so is
/// whether the client and anything between agree on where the request ends.
fn host_refusal<B>(req: &Request<B>) -> Option<Response<Body>> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    let valid = match (first, hosts.next()) {
        (Some(host), None) => !host.as_bytes().contains(&b','),
        _ => false,
    };
    if valid {
        return None;
    }
    Some(one_line(
        StatusCode::BAD_REQUEST,
        "bad request: Host header required exactly once",
    ))
}

/// A one-line `text/plain` answer after which the connection closes.
fn one_line(status: StatusCode, line: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{line}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(hosts: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        for h in hosts {
            req.headers_mut()
                .append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        req
    }

    #[test]
    fn a_request_needs_exactly_one_host_with_one_value() {
        assert!(host_refusal(&request(&["a"])).is_none());
        assert!(host_refusal(&request(&["127.0.0.1:8081"])).is_none());
        for bad in [&[][..], &["a", "b"], &["a, b"], &["a", "a"]] {
            let refusal = host_refusal(&request(bad)).expect("refused");
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
            assert_eq!(refusal.headers()[header::CONNECTION], "close");
        }
    }
}
