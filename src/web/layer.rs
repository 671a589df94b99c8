//! The session layer: a tower [`Layer`] whose service finds the request's session, hands
//! the handler a [`Session`] (in the request's extensions), and commits what the handler
//! changed after it returns.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use super::session::{Session, plain};
use crate::node::{NodeState, Shared, now_ms};
use crate::session::SessionId;
use crate::session::id::{self, CookieValue};

/// How long a request waits for a joining node to finish its state transfer, as the
/// node's own endpoints wait.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Gives the routes it wraps a [`Session`]; made by [`crate::Node::session_layer`].
///
/// Works with axum 0.8's `Router::layer` and any tower stack whose requests are
/// `http::Request`s. Cookies follow SPEC "Sessions and cookies": the session cookie
/// (`sessions.cookie`) is `ID.route; Path=/; HttpOnly; SameSite=Lax`; of several, the
/// first that names a live session wins; a `;jsessionid=` path parameter counts only with
/// `sessions.url_tracking`; a session another node issued is served here and its cookie
/// re-issued with this node's route; an unknown, expired or malformed id simply means no
/// session.
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("node", &self.shared.me.name)
            .finish()
    }
}

impl SessionLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> SessionLayer {
        SessionLayer { shared }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`SessionLayer`] around `S`.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService")
            .field("node", &self.shared.me.name)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's rule); a fresh clone
        // stays behind for the next request.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let shared = self.shared.clone();
        Box::pin(async move {
            let client = match begin(&shared, request.headers(), request.uri()).await {
                Ok(client) => client,
                Err(refusal) => return Ok(refusal),
            };
            let session = Session::new(shared, client, now_ms());
            request.extensions_mut().insert(session.clone());
            let response = inner.call(request).await?.map(Body::new);
            Ok(session.commit(response).await)
        })
    }
}

/// Waits out a joining node, then finds the session the client names.
async fn begin(
    shared: &Shared,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<CookieValue>, Response<Body>> {
    if shared.state() == NodeState::Joining && !shared.wait_until_ready(READY_WAIT).await {
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is still receiving the cluster's sessions; try again shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(response);
    }
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let path = shared
        .url_tracking
        .then(|| id::find_in_path(uri.path()))
        .flatten();
    Ok(choose(
        id::cookies_in_headers(cookies, &shared.cookie).chain(path),
        |id| shared.store.contains(id),
    ))
}

/// The first candidate that names a live session, as Tomcat does: a stale or planted
/// cookie ahead of the live one must not cost the client its session. Else the first
/// candidate, whose route still tells whether the cookie needs re-issuing.
fn choose(
    mut candidates: impl Iterator<Item = CookieValue>,
    live: impl Fn(SessionId) -> bool,
) -> Option<CookieValue> {
    let first = candidates.next()?;
    if live(first.id) {
        return Some(first);
    }
    candidates.find(|c| live(c.id)).or(Some(first))
}
