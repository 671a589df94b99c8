//! The session layer: a tower [`Layer`] whose service finds the request's session, hands
//! the handler a [`Session`] (in the request's extensions), and commits what the handler
//! changed after it returns.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::http::{Request, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use super::session::Session;
use crate::node::Shared;
use crate::node::sessions::visit::{backend_error, begin};

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
            // The same wait and the same choice of session as the node's own endpoints.
            let visit = match begin(&shared, request.headers(), request.uri()).await {
                Ok(visit) => visit,
                Err(refusal) => return Ok(refusal),
            };
            // A session server is read once, here: the handler's reads are synchronous.
            let loaded = match (&shared.backend, visit.id()) {
                (backend, Some(id)) if backend.is_session_server() => {
                    match backend.load(id, visit.now_ms).await {
                        Ok(loaded) => loaded,
                        Err(e) => return Ok(backend_error(&e)),
                    }
                }
                _ => None,
            };
            let session = Session::new(shared, visit, loaded);
            request.extensions_mut().insert(session.clone());
            let response = inner.call(request).await?.map(Body::new);
            Ok(session.commit(response).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use std::time::Duration;

    use axum::http::{StatusCode, header};

    use super::*;
    use crate::node::sessions::visit::{READY_WAIT, body_text as text};
    use crate::node::{NodeState, shared_for_test};
    use crate::session::id;

    fn app(shared: &Arc<Shared>) -> Router {
        Router::new()
            .route(
                "/set",
                get(|s: Session| async move {
                    s.insert("x", &1);
                    "set"
                }),
            )
            .route(
                "/id",
                get(
                    |s: Session| async move { s.id().map(|id| id.to_string()).unwrap_or_default() },
                ),
            )
            .route(
                "/unserialisable",
                get(|s: Session| async move {
                    s.insert("fine", &1);
                    // JSON object keys must be strings.
                    s.insert("map", &HashMap::from([((1, 2), 3)]));
                    "stored?"
                }),
            )
            .fallback(get(|s: Session| async move {
                s.id().map(|id| id.to_string()).unwrap_or_default()
            }))
            .layer(SessionLayer::new(shared.clone()))
    }

    fn request(path: &str, cookie: Option<&str>) -> Request<Body> {
        let mut request = Request::get(path);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.body(Body::empty()).expect("a request")
    }

    /// A session made through the layer: its cookie header value.
    async fn new_session(shared: &Arc<Shared>) -> String {
        let response = app(shared)
            .oneshot(request("/set", None))
            .await
            .expect("infallible");
        let cookie = response.headers()[header::SET_COOKIE]
            .to_str()
            .expect("ascii");
        cookie.split(';').next().expect("name=value").to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_stays_joining_answers_503_after_ten_seconds_and_makes_no_session() {
        let shared = shared_for_test(NodeState::Joining, false);
        let started = tokio::time::Instant::now();
        let response = app(&shared)
            .oneshot(request("/set", None))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), READY_WAIT);
        assert!(response.headers().get(header::SET_COOKIE).is_none());
        assert!(shared.store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_to_a_joining_node_is_served_once_it_is_ready() {
        let shared = shared_for_test(NodeState::Joining, false);
        let later = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            later.set_state_for_test(NodeState::Ready);
        });
        let started = tokio::time::Instant::now();
        let response = app(&shared)
            .oneshot(request("/set", None))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(shared.store.len(), 1);
    }

    #[tokio::test]
    async fn a_jsessionid_path_parameter_names_the_session_only_with_url_tracking() {
        for tracking in [false, true] {
            let shared = shared_for_test(NodeState::Ready, tracking);
            let cookie = new_session(&shared).await;
            let value = cookie.split_once('=').expect("name=value").1.to_string();
            let id = value.split('.').next().expect("ID.route").to_string();
            let response = app(&shared)
                .oneshot(request(&format!("/page;jsessionid={value}"), None))
                .await
                .expect("infallible");
            let seen = text(response).await;
            if tracking {
                assert_eq!(seen, id);
            } else {
                assert_eq!(seen, "", "the path named the session without url_tracking");
            }
        }
    }

    #[tokio::test]
    async fn a_value_that_does_not_serialise_fails_the_request_and_commits_nothing() {
        let shared = shared_for_test(NodeState::Ready, false);
        let response = app(&shared)
            .oneshot(request("/unserialisable", None))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::SET_COOKIE).is_none());
        assert!(shared.store.is_empty(), "the valid change was committed");
        let line = text(response).await;
        assert!(line.contains("\"map\"") && line.ends_with('\n'), "{line:?}");
    }

    #[tokio::test]
    async fn a_change_after_the_response_is_refused() {
        let shared = shared_for_test(NodeState::Ready, false);
        let kept: Arc<parking_lot::Mutex<Option<Session>>> = Arc::default();
        let slot = kept.clone();
        let app = Router::new()
            .route(
                "/",
                get(move |s: Session| async move {
                    *slot.lock() = Some(s);
                    "kept"
                }),
            )
            .layer(SessionLayer::new(shared.clone()));
        let response = app.oneshot(request("/", None)).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let session = kept.lock().take().expect("the handler ran");
        assert_eq!(
            session.try_insert("late", &1),
            Err(super::super::SessionError::Committed)
        );
        assert!(shared.store.is_empty());
    }

    #[tokio::test]
    async fn what_a_request_stores_after_invalidating_goes_to_a_new_session() {
        let shared = shared_for_test(NodeState::Ready, false);
        let cookie = new_session(&shared).await;
        let old = id::parse_cookie_value(cookie.split_once('=').expect("name=value").1)
            .expect("a cookie value")
            .id;
        let app = Router::new()
            .route(
                "/",
                get(|s: Session| async move {
                    s.invalidate();
                    let gone = s.get::<i32>("x").is_none() && s.id().is_none();
                    s.insert("flash", "logged out");
                    if gone { "gone" } else { "still there" }
                }),
            )
            .layer(SessionLayer::new(shared.clone()));
        let response = app
            .oneshot(request("/", Some(&cookie)))
            .await
            .expect("infallible");
        let set = response.headers()[header::SET_COOKIE]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(text(response).await, "gone");
        let new = id::parse_cookie_value(
            set.split(';')
                .next()
                .and_then(|p| p.split_once('='))
                .expect("name=value")
                .1,
        )
        .expect("a new session's cookie")
        .id;
        assert_ne!(new, old);
        assert!(!shared.store.contains(old));
        let flash = shared.store.update(new, 1, |s| s.get("flash").cloned());
        assert_eq!(
            flash.and_then(|u| u.value).as_deref(),
            Some(&b"\"logged out\""[..])
        );
    }
}
