//! The session endpoints of a node: the classic test page, the session document and the
//! attribute API (SPEC "Node HTTP endpoints").
//!
//! Every request finds its session the same way: the first session cookie, from all
//! `Cookie` headers, that names a live session, then (only with `sessions.url_tracking`,
//! against fixation by link) a `;jsessionid=` path parameter (Tomcat's URL rewriting); with
//! none live, the first of them, for its route. The id without
//! its route is the key; an unknown, expired, invalidated or malformed id is never an
//! error, it just means "no session". A request that changed its session replicates the
//! delta before the response leaves, which is what makes sync replication true. The cookie
//! is (re-)issued when a session was made, or when the client's cookie names another route
//! or none (failover: Tomcat's JvmRouteBinderValve), so stickiness follows the session.
//!
//! `POST /session/change-id` is Tomcat's `changeSessionId` (done at login, against
//! fixation): the session moves to a fresh id with all its attributes, the change is
//! replicated (as one change-id delta, acknowledged in sync mode) before the answer, and
//! the answer is `204` with the new cookie (this node's route). The old id is dead on every
//! member from then on: a request with it gets a new, empty session. Without a live session
//! there is nothing to rename: `404` (one line, `no session`), nothing is made and no
//! cookie is set, as `GET /session/attributes/{name}` answers without one.
//!
//! Attribute values are client data: they are never logged.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

pub(crate) mod visit;

use self::visit::{backend_error, begin, clear_cookie, plain, store_status, with_cookie};
use super::Shared;
use crate::backend::SessionBackend;
use crate::session::StoreError;
use crate::session::id;

/// The attribute the test page counts its visits in.
const HITS: &str = "hits";

/// The session routes; merged into the node's router, which supplies the state and the
/// 404 fallback. A wrong method on these paths is a `405` with an `Allow` header.
///
/// The `;{params}` routes take Tomcat's URL-rewriting form (`/session;jsessionid=ID.n1`),
/// which the router would otherwise not match; attribute names shed theirs in
/// `attribute_name`.
pub fn router() -> Router<Arc<Shared>> {
    let page = || get(page).fallback(method_not_allowed);
    let document = || get(document).fallback(method_not_allowed);
    let invalidate = || post(invalidate).fallback(method_not_allowed);
    let change_id = || post(change_id).fallback(method_not_allowed);
    Router::new()
        .route("/", page())
        .route("/;{params}", page())
        .route("/session", document())
        .route("/session;{params}", document())
        .route("/session/invalidate", invalidate())
        .route("/session/invalidate;{params}", invalidate())
        .route("/session/change-id", change_id())
        .route("/session/change-id;{params}", change_id())
        .route(
            "/session/attributes/{name}",
            get(get_attribute)
                .put(put_attribute)
                .delete(delete_attribute)
                .fallback(method_not_allowed),
        )
}

/// Session-dependent answers must not be cached by anyone in between.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---- GET / -------------------------------------------------------------------------------

struct PageView {
    hits: u64,
    created_ms: u64,
    stored: Result<(), StoreError>,
}

async fn page(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let visit = match begin(&shared, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let outcome = shared
        .backend
        .update_or_create(visit.id(), visit.now_ms, |s| {
            let hits = s.get(HITS).map_or(0, |v| parse_count(v)).saturating_add(1);
            let stored = s.set(HITS, Bytes::from(hits.to_string()));
            PageView {
                hits,
                created_ms: s.created_ms(),
                stored,
            }
        })
        .await;
    let done = match outcome {
        Ok(outcome) => visit.finish(&shared, outcome),
        Err(e) => return backend_error(&e),
    };
    let response = match &done.value.stored {
        Err(e) => store_error(e),
        Ok(()) => {
            let html = render_page(
                &shared.me.name,
                &id::cookie_value(done.id, &shared.me.name),
                done.value.created_ms,
                done.value.hits,
            );
            no_store(Html(html).into_response())
        }
    };
    with_cookie(response, done.cookie)
}

/// A visit counter: UTF-8 decimal; anything else counts as 0.
fn parse_count(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn render_page(node: &str, session: &str, created_ms: u64, hits: u64) -> String {
    let node = escape_html(node);
    let session = escape_html(session);
    let created = match (rfc3339(created_ms), human_utc(created_ms)) {
        (Some(machine), Some(human)) => format!(r#"<time datetime="{machine}">{human}</time>"#),
        _ => format!("{created_ms} ms after 1970-01-01 UTC"),
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>deltacast · {node}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: .3em 1em .3em 0; }}
th {{ font-weight: normal; color: #666; }}
</style>
</head>
<body>
<h1>deltacast node {node}</h1>
<table>
<tr><th>Node</th><td id="node">{node}</td></tr>
<tr><th>Session</th><td id="session"><code>{session}</code></td></tr>
<tr><th>Created on</th><td id="created">{created}</td></tr>
<tr><th>Hits</th><td id="hits">{hits}</td></tr>
</table>
<p>Reload the page to count another hit.</p>
</body>
</html>
"#
    )
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `ms` after the epoch in RFC 3339, UTC, with milliseconds: `2023-11-14T22:13:20.123Z`.
/// `None` past the year 9999, which RFC 3339 cannot write: only a clock or a member gone
/// wrong says so, and the page must still render.
fn rfc3339(ms: u64) -> Option<String> {
    use std::fmt::Write as _;
    let time = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    let mut out = String::with_capacity(24);
    write!(out, "{}", humantime::format_rfc3339_millis(time)).ok()?;
    Some(out)
}

/// `2023-11-14 22:13:20 UTC`: the RFC 3339 form, read by people.
fn human_utc(ms: u64) -> Option<String> {
    let machine = rfc3339(ms)?;
    let (date, rest) = machine.split_once('T')?;
    let time = rest.get(..8)?;
    Some(format!("{date} {time} UTC"))
}

// ---- GET /session --------------------------------------------------------------------------

/// The session document (SPEC). Attributes keep the order they were first set in.
#[derive(Serialize)]
struct SessionDoc {
    id: String,
    node: String,
    created_ms: u64,
    last_accessed_ms: u64,
    max_inactive_s: u32,
    attributes: Pairs,
    binary_attributes: Pairs,
}

/// A JSON object written in the order of its pairs.
struct Pairs(Vec<(String, String)>);

impl Serialize for Pairs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

async fn document(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let visit = match begin(&shared, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let route = shared.me.name.clone();
    let outcome = shared
        .backend
        .update_or_create(visit.id(), visit.now_ms, |s| {
            let mut text = Vec::new();
            let mut binary = Vec::new();
            for (name, value) in s.attributes() {
                match std::str::from_utf8(value) {
                    Ok(v) => text.push((name.to_string(), v.to_string())),
                    Err(_) => binary.push((name.to_string(), base64(value))),
                }
            }
            SessionDoc {
                id: id::cookie_value(s.id(), &route),
                node: route.clone(),
                created_ms: s.created_ms(),
                last_accessed_ms: s.last_accessed_ms(),
                max_inactive_s: s.max_inactive_s(),
                attributes: Pairs(text),
                binary_attributes: Pairs(binary),
            }
        })
        .await;
    match outcome {
        Ok(outcome) => {
            let done = visit.finish(&shared, outcome);
            with_cookie(
                no_store(axum::Json(done.value).into_response()),
                done.cookie,
            )
        }
        Err(e) => backend_error(&e),
    }
}

/// Standard base64 alphabet, padded (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- /session/attributes/{name} --------------------------------------------------------------

/// The attribute name of `/session/attributes/{name}`, from the raw path: the last segment
/// without its `;` path parameters, percent-decoded. (Decoding first would confuse an
/// encoded `%3B` in a name with a `;jsessionid=` parameter.) None when not UTF-8.
fn attribute_name(uri: &Uri) -> Option<String> {
    let segment = uri.path().rsplit('/').next().unwrap_or_default();
    let raw = segment.split(';').next().unwrap_or_default();
    percent_decode(raw)
}

/// Percent-decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|name| name.into_owned())
}

fn bad_name(shared: &Shared) -> Response {
    let max = shared.store.limits().max_name_bytes;
    plain(
        StatusCode::BAD_REQUEST,
        &format!("the attribute name must be 1 to {max} bytes of UTF-8"),
    )
}

async fn get_attribute(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let visit = match begin(&shared, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(name) = attribute_name(&uri) else {
        return bad_name(&shared);
    };
    let Some(id) = visit.id() else {
        return plain(StatusCode::NOT_FOUND, "no session");
    };
    let outcome = shared
        .backend
        .update(id, visit.now_ms, |s| s.get(&name).cloned())
        .await;
    let done = match outcome {
        Ok(Some(outcome)) => visit.finish(&shared, outcome),
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no session"),
        Err(e) => return backend_error(&e),
    };
    let response = match done.value {
        None => plain(StatusCode::NOT_FOUND, "no such attribute"),
        Some(value) => {
            let kind = if std::str::from_utf8(&value).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            no_store(([(header::CONTENT_TYPE, kind)], value).into_response())
        }
    };
    with_cookie(response, done.cookie)
}

async fn put_attribute(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let visit = match begin(&shared, &parts.headers, &parts.uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let limits = shared.store.limits();
    // Checked before anything is made, so a bad request changes nothing.
    let name = match attribute_name(&parts.uri) {
        Some(name) if !name.is_empty() && name.len() <= limits.max_name_bytes => name,
        _ => return bad_name(&shared),
    };
    let value = match read_body(body, &parts.headers, limits.max_value_bytes).await {
        Ok(value) => value,
        Err(r) => return r,
    };
    // A write that needs nothing read: one step on a session server.
    let changes = [(name, Some(value))];
    match shared
        .backend
        .write(visit.id(), visit.now_ms, &changes)
        .await
    {
        Ok(Some(outcome)) => {
            let done = visit.finish(&shared, outcome);
            let response = match done.value {
                None => StatusCode::NO_CONTENT.into_response(),
                Some(e) => store_error(&e),
            };
            with_cookie(response, done.cookie)
        }
        // A value is stored, so a session is always there (made if need be).
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => backend_error(&e),
    }
}

/// Reads at most `max` bytes of body: a declared length over the limit is refused before
/// reading, and a body that turns out longer (chunked) as soon as it passes the limit.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, Response> {
    let too_large = || {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the attribute value exceeds the limit of {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > u64::try_from(max).unwrap_or(u64::MAX)) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(plain(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
    }
}

async fn delete_attribute(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let visit = match begin(&shared, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(name) = attribute_name(&uri) else {
        return bad_name(&shared);
    };
    let Some(id) = visit.id() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let changes = [(name, None)];
    match shared.backend.write(Some(id), visit.now_ms, &changes).await {
        Ok(Some(outcome)) => {
            let done = visit.finish(&shared, outcome);
            with_cookie(StatusCode::NO_CONTENT.into_response(), done.cookie)
        }
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => backend_error(&e),
    }
}

// ---- POST /session/invalidate ------------------------------------------------------------------

async fn invalidate(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let visit = match begin(&shared, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = visit.invalidate(&shared).await {
        return backend_error(&e);
    }
    with_cookie(
        StatusCode::NO_CONTENT.into_response(),
        clear_cookie(&shared),
    )
}

// ---- POST /session/change-id -------------------------------------------------------------------

async fn change_id(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let visit = match begin(&shared, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(id) = visit.id() else {
        return plain(StatusCode::NOT_FOUND, "no session");
    };
    match shared.backend.change_id(id, visit.now_ms, |_| ()).await {
        // The id is new to the client, so `finish` issues the cookie with this node's route.
        Ok(Some(outcome)) => {
            let done = visit.finish(&shared, outcome);
            with_cookie(StatusCode::NO_CONTENT.into_response(), done.cookie)
        }
        Ok(None) => plain(StatusCode::NOT_FOUND, "no session"),
        Err(e) => backend_error(&e),
    }
}

// ---- errors ------------------------------------------------------------------------------------

fn store_error(e: &StoreError) -> Response {
    plain(store_status(e), &e.to_string())
}

async fn method_not_allowed() -> Response {
    plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

#[cfg(test)]
mod tests {
    use super::visit::{READY_WAIT, body_text};
    use super::*;
    use crate::node::{NodeState, now_ms};
    use crate::session::SessionId;

    /// A node's shared state in `state`, without any sockets or peers (replication is then
    /// immediate).
    fn shared(state: NodeState) -> Arc<Shared> {
        crate::node::shared_for_test(state, false)
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_stays_joining_answers_503_after_ten_seconds() {
        let shared = shared(NodeState::Joining);
        let started = tokio::time::Instant::now();
        let response = page(
            State(shared.clone()),
            HeaderMap::new(),
            Uri::from_static("/"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), READY_WAIT);
        assert!(response.headers().get(header::SET_COOKIE).is_none());
        let text = body_text(response).await;
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{text:?}"
        );
        assert!(shared.store.is_empty(), "no session made while joining");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_to_a_joining_node_is_served_once_it_is_ready() {
        let shared = shared(NodeState::Joining);
        let later = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            later.set_state_for_test(NodeState::Ready);
        });
        let started = tokio::time::Instant::now();
        let response = document(
            State(shared.clone()),
            HeaderMap::new(),
            Uri::from_static("/session"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(response.headers().get(header::SET_COOKIE).is_some());
        assert_eq!(shared.store.len(), 1);
    }

    #[tokio::test]
    async fn a_leaving_node_still_serves_sessions() {
        let shared = shared(NodeState::Leaving);
        let response = page(
            State(shared.clone()),
            HeaderMap::new(),
            Uri::from_static("/"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            body_text(response)
                .await
                .contains(r#"<td id="hits">1</td>"#)
        );
    }

    /// A `Cookie` header naming `id` with route `n1`.
    fn cookie_for(id: SessionId) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("JSESSIONID={}", id::cookie_value(id, "n1"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&value).expect("a header"),
        );
        headers
    }

    #[tokio::test]
    async fn change_id_answers_204_with_the_new_cookie_and_the_old_id_is_dead() {
        let shared = shared(NodeState::Ready);
        let made = shared
            .store
            .update_or_create(None, now_ms(), |s| s.set("x", Bytes::from_static(b"1")))
            .expect("a session");
        let response = change_id(
            State(shared.clone()),
            cookie_for(made.id),
            Uri::from_static("/session/change-id"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let cookies: Vec<&str> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        let value = cookies[0]
            .strip_prefix("JSESSIONID=")
            .and_then(|rest| rest.strip_suffix("; Path=/; HttpOnly; SameSite=Lax"))
            .expect("the SPEC cookie form");
        let new = id::parse_cookie_value(value).expect("an id with a route");
        assert_eq!(new.route.as_deref(), Some("n1"));
        assert_ne!(new.id, made.id);
        assert!(!shared.store.contains(made.id));
        let x = shared
            .store
            .update(new.id, now_ms(), |s| s.get("x").cloned())
            .and_then(|u| u.value);
        assert_eq!(x, Some(Bytes::from_static(b"1")));
        assert_eq!(shared.store.len(), 1);
    }

    #[tokio::test]
    async fn change_id_without_a_live_session_answers_404_and_makes_none() {
        let shared = shared(NodeState::Ready);
        for headers in [HeaderMap::new(), cookie_for(SessionId::from_bytes([7; 16]))] {
            let response = change_id(
                State(shared.clone()),
                headers,
                Uri::from_static("/session/change-id"),
            )
            .await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            assert!(response.headers().get(header::SET_COOKIE).is_none());
            assert_eq!(body_text(response).await, "no session\n");
        }
        assert!(shared.store.is_empty());
    }

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        let cases: [(&[u8], &str); 8] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0x00, 0xfe, 0x80, 0x01], "/wD+gAE="),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want, "{input:?}");
        }
    }

    #[test]
    fn times_are_written_in_utc_on_the_gregorian_calendar() {
        let machine = |ms| rfc3339(ms).expect("in range");
        assert_eq!(machine(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(machine(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(machine(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(machine(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(machine(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            human_utc(1_700_000_000_999).as_deref(),
            Some("2023-11-14 22:13:20 UTC")
        );
        assert_eq!(human_utc(0).as_deref(), Some("1970-01-01 00:00:00 UTC"));
        // Far beyond any real clock: no date, and no panic.
        assert_eq!(rfc3339(253_402_300_800_000), None);
        assert_eq!(rfc3339(u64::MAX), None);
        assert_eq!(human_utc(u64::MAX), None);
    }

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("n1"), "n1");
    }

    #[test]
    fn the_page_shows_every_field() {
        let html = render_page("n<1>", "ABC.n1", 1_700_000_000_000, 7);
        assert!(html.contains(r#"<td id="node">n&lt;1&gt;</td>"#));
        assert!(html.contains("<code>ABC.n1</code>"));
        assert!(html.contains(r#"<time datetime="2023-11-14T22:13:20.000Z">"#));
        assert!(html.contains(r#"<td id="hits">7</td>"#));
    }

    #[test]
    fn a_creation_time_past_the_year_9999_is_shown_in_milliseconds() {
        let html = render_page("n1", "ABC.n1", u64::MAX, 1);
        assert!(
            html.contains(&format!(
                r#"<td id="created">{} ms after 1970-01-01 UTC</td>"#,
                u64::MAX
            )),
            "{html}"
        );
    }

    #[test]
    fn the_hit_counter_reads_decimal_and_counts_anything_else_as_zero() {
        assert_eq!(parse_count(b"41"), 41);
        assert_eq!(parse_count(b""), 0);
        assert_eq!(parse_count(b"many"), 0);
        assert_eq!(parse_count(b"-3"), 0);
        assert_eq!(parse_count(&[0xff, 0x31]), 0);
        assert_eq!(parse_count(b"99999999999999999999999"), 0);
    }

    #[test]
    fn attribute_names_are_decoded_without_their_path_parameters() {
        let name = |path: &str| attribute_name(&path.parse::<Uri>().expect("uri"));
        assert_eq!(name("/session/attributes/user").as_deref(), Some("user"));
        assert_eq!(
            name("/session/attributes/caf%C3%A9%20au%20lait").as_deref(),
            Some("café au lait")
        );
        assert_eq!(
            name("/session/attributes/cart;jsessionid=ABC.n1?x=1").as_deref(),
            Some("cart")
        );
        assert_eq!(name("/session/attributes/a%3Bb").as_deref(), Some("a;b"));
        assert_eq!(name("/session/attributes/100%").as_deref(), Some("100%"));
        assert_eq!(name("/session/attributes/%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(
            name("/session/attributes/;jsessionid=X").as_deref(),
            Some("")
        );
        assert_eq!(name("/session/attributes/%FF"), None);
    }
}
