//! One request's visit to its session, as the node's own endpoints and the library's
//! session layer (`web::SessionLayer`) both make it: written once, so the two can never
//! disagree on which session a request has or when its cookie is sent.
//!
//! - [`begin`]: a joining node makes the request wait (at most [`READY_WAIT`]) for its
//!   state transfer, else answers `503` with `Retry-After: 1`; then the session is the
//!   first session cookie, of all `Cookie` headers, that names a live session, then (only
//!   with `sessions.url_tracking`) a `;jsessionid=` path parameter; with none live, the
//!   first of them, whose route still matters ([`choose`]).
//! - [`Visit::finish`]: after the backend applied (and, replicated, sent) a change, the
//!   cookie is (re-)issued when the session was made, or when the client's cookie names
//!   another id or another route (failover: Tomcat's JvmRouteBinderValve), so stickiness
//!   follows the session.
//! - The answers both give: [`plain`] one-line texts, [`store_status`] for what the store
//!   refuses, [`backend_error`] for a session server that cannot be used, the cookie
//!   headers.
//!
//! It lives under `node` because the node is the lower part: `web` (behind feature `axum`)
//! already builds on `node::Shared`, while the node's endpoints compile without `web`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use crate::backend::{BackendError, Outcome, SessionBackend, UNAVAILABLE_LINE};
use crate::node::{NodeState, Shared, now_ms};
use crate::session::id::{self, CookieValue};
use crate::session::{SessionId, StoreError};

/// How long a request waits for a joining node to finish its state transfer.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(10);

/// One request's view of its session: the id the client presented (if any parses) and the
/// single clock reading every store call of the request uses.
#[derive(Debug)]
pub(crate) struct Visit {
    /// The session the client named (the first of its candidates that is live, else the
    /// first), or None.
    pub(crate) client: Option<CookieValue>,
    pub(crate) now_ms: u64,
}

/// What a request did to a session (applied, and replicated where the sessions are).
pub(crate) struct Done<R> {
    pub(crate) id: SessionId,
    pub(crate) value: R,
    /// The `Set-Cookie` value to send, if the client must learn the id or the route.
    pub(crate) cookie: Option<HeaderValue>,
}

/// Waits out a joining node, then reads the client's session id.
pub(crate) async fn begin(
    shared: &Shared,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Visit, Response> {
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
    let now_ms = now_ms();
    let client = match named(shared, headers, uri) {
        // One candidate (the usual case) or none: nothing to choose, nothing to ask.
        Named::AtMostOne(client) => client,
        Named::Several(all) => {
            choose_live(all.into_iter(), |id| shared.backend.contains(id, now_ms))
                .await
                .map_err(|e| backend_error(&e))?
        }
    };
    Ok(Visit { client, now_ms })
}

/// The session ids a request names, in order: every session cookie of every `Cookie`
/// header, then (with `sessions.url_tracking`) a `;jsessionid=` path parameter.
enum Named {
    AtMostOne(Option<CookieValue>),
    Several(Vec<CookieValue>),
}

/// Sync, so that nothing borrowing the headers lives across an await of [`begin`].
fn named(shared: &Shared, headers: &HeaderMap, uri: &Uri) -> Named {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let path = shared
        .url_tracking
        .then(|| id::find_in_path(uri.path()))
        .flatten();
    let mut candidates = id::cookies_in_headers(cookies, &shared.cookie).chain(path);
    match (candidates.next(), candidates.next()) {
        (first, None) => Named::AtMostOne(first),
        (Some(first), Some(second)) => {
            Named::Several([first, second].into_iter().chain(candidates).collect())
        }
        (None, Some(_)) => Named::AtMostOne(None),
    }
}

/// The first candidate that names a live session, as Tomcat does: a stale or planted
/// cookie ahead of the live one must not cost the client its session. Else the first
/// candidate, whose route still tells whether the cookie needs re-issuing. Asks the
/// backend (a session server: one round trip per candidate until one is live).
async fn choose_live<F, Fut>(
    candidates: impl Iterator<Item = CookieValue>,
    live: F,
) -> Result<Option<CookieValue>, BackendError>
where
    F: Fn(SessionId) -> Fut,
    Fut: std::future::Future<Output = Result<bool, BackendError>>,
{
    let mut first = None;
    for candidate in candidates {
        if live(candidate.id).await? {
            return Ok(Some(candidate));
        }
        first.get_or_insert(candidate);
    }
    Ok(first)
}

impl Visit {
    /// The id the client named, without its route.
    pub(crate) fn id(&self) -> Option<SessionId> {
        self.client.as_ref().map(|c| c.id)
    }

    /// Decides the cookie for what the backend did (it already applied the change, and
    /// replicated it before returning: sync replication).
    pub(crate) fn finish<R>(&self, shared: &Shared, outcome: Outcome<R>) -> Done<R> {
        Done {
            id: outcome.id,
            value: outcome.value,
            cookie: self.cookie(shared, outcome.id, outcome.created),
        }
    }

    /// The cookie for session `id` when the client must learn it: the session was
    /// `created`, or the client's cookie names another id or route (failover re-issue).
    pub(crate) fn cookie(
        &self,
        shared: &Shared,
        id: SessionId,
        created: bool,
    ) -> Option<HeaderValue> {
        let route = shared.me.name.as_str();
        let current = self
            .client
            .as_ref()
            .is_some_and(|c| c.id == id && c.route.as_deref() == Some(route));
        if created || !current {
            header_value(&id::set_cookie_header(&shared.cookie, id, route))
        } else {
            None
        }
    }

    /// Ends the client's session everywhere (replicated before this returns); nothing
    /// happens when it has none live.
    pub(crate) async fn invalidate(&self, shared: &Shared) -> Result<(), BackendError> {
        if let Some(id) = self.id() {
            shared.backend.invalidate(id, self.now_ms).await?;
        }
        Ok(())
    }
}

/// The `Set-Cookie` value that clears the session cookie.
pub(crate) fn clear_cookie(shared: &Shared) -> Option<HeaderValue> {
    header_value(&format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax",
        shared.cookie
    ))
}

fn header_value(value: &str) -> Option<HeaderValue> {
    match HeaderValue::from_str(value) {
        Ok(v) => Some(v),
        Err(_) => {
            // Cookie names and routes are validated tokens, so this cannot happen.
            warn!("the session cookie is not a valid header value; not sent");
            None
        }
    }
}

/// Adds the `Set-Cookie` header, if there is one to send.
pub(crate) fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// A one-line text answer.
pub(crate) fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The status of a change the store refused: `507` when the node is full, `413` for a
/// value over the limit, `400` for a bad name.
pub(crate) fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::TooManySessions { .. }
        | StoreError::TooManyAttributes { .. }
        | StoreError::OverBudget { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::BadName { .. } => StatusCode::BAD_REQUEST,
    }
}

/// The answer for a call the backend could not make: what the store refuses (its limits)
/// as [`store_status`] says, a session server that cannot be used as `503` with the one
/// line `session store unavailable` (counted and logged by the backend).
pub(crate) fn backend_error(e: &BackendError) -> Response {
    match e {
        BackendError::Refused(e) => plain(store_status(e), &e.to_string()),
        BackendError::Unavailable(_) => plain(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_LINE),
    }
}

/// An answer's body as text, for the tests of both users.
#[cfg(test)]
pub(crate) async fn body_text(response: Response) -> String {
    use http_body_util::BodyExt as _;
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_cookie_that_names_a_live_session_wins() {
        let value = |s: &str| id::parse_cookie_value(s).expect("a valid value");
        let unknown = value("00000000000000000000000000000001.n1");
        let live = value("00000000000000000000000000000002.n2");
        let other_live = value("00000000000000000000000000000003.n1");
        let (live_id, other_id) = (live.id, other_live.id);
        let is_live = |id: SessionId| async move { Ok(id == live_id || id == other_id) };
        let choose = |all: Vec<CookieValue>| async move {
            choose_live(all.into_iter(), is_live)
                .await
                .expect("no error")
        };
        let chosen = choose(vec![unknown.clone(), live.clone(), other_live.clone()]).await;
        assert_eq!(chosen, Some(live.clone()));
        assert_eq!(
            choose(vec![other_live.clone(), live]).await,
            Some(other_live)
        );
        // None live: the first, so a fresh session replaces it.
        assert_eq!(choose(vec![unknown.clone()]).await, Some(unknown));
        assert_eq!(choose(Vec::new()).await, None);
    }

    #[test]
    fn every_session_cookie_of_every_cookie_header_is_a_candidate() {
        let headers = [
            "JSESSIONID=00000000000000000000000000000001.n1; JSESSIONID=bad",
            "x=1; JSESSIONID=00000000000000000000000000000002",
        ];
        let found: Vec<String> = id::cookies_in_headers(headers, "JSESSIONID")
            .map(|c| c.id.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "00000000000000000000000000000001",
                "00000000000000000000000000000002"
            ]
        );
    }

    #[test]
    fn the_cookie_is_sent_when_made_or_when_the_client_names_another_id_or_route() {
        let shared = crate::node::shared_for_test(NodeState::Ready, false);
        let id = SessionId::from_bytes([1; 16]);
        let other = SessionId::from_bytes([2; 16]);
        let visit = |cookie: Option<&str>| Visit {
            client: cookie.map(|c| id::parse_cookie_value(c).expect("a valid value")),
            now_ms: 0,
        };
        let here = id::cookie_value(id, &shared.me.name);
        let elsewhere = id::cookie_value(id, "elsewhere");
        let unrouted = id.to_string();
        assert!(visit(Some(&here)).cookie(&shared, id, false).is_none());
        assert!(visit(Some(&here)).cookie(&shared, id, true).is_some());
        assert!(visit(Some(&here)).cookie(&shared, other, false).is_some());
        assert!(visit(Some(&elsewhere)).cookie(&shared, id, false).is_some());
        assert!(visit(Some(&unrouted)).cookie(&shared, id, false).is_some());
        assert!(visit(None).cookie(&shared, id, false).is_some());
        let sent = visit(None).cookie(&shared, id, false).expect("a cookie");
        assert_eq!(
            sent.to_str().expect("ascii"),
            id::set_cookie_header(&shared.cookie, id, &shared.me.name)
        );
    }
}
