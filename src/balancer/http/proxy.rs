//! The hyper path's proxy: forwards a request over the members in the order the registry
//! gives, as the rulebook's stepper says (member order, one more go on a new connection
//! after a stale pooled one, retry only when safe, the one-line answers), on the worker's
//! pooled connections ([`Pool`]). Every wait on a member, and on a client's body, is
//! bounded by the member timeout ([`crate::balancer::http::timeout`]). The header fields are rewritten as
//! the rulebook says, here on a [`HeaderMap`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::balancer::choice::registry::Member;
use crate::balancer::http::answer::{self, MemberBody, ProxyBody, full};
use crate::balancer::http::attempt::{Attempt, Busy, unless_left};
use crate::balancer::http::body::{OutBody, Payload};
use crate::balancer::http::pool::{MemberConn, Pool, SendError};
use crate::balancer::http::timeout::Stall;
use crate::balancer::http::tunnel;
use crate::balancer::http::upstream::Upstream;
use crate::balancer::rules::fields::{self, ADDED, Crossing, Source, Token};
use crate::balancer::rules::stepper::{self, Move, Outcome as Attempted, Stepper};
use crate::balancer::rules::{self, Peer, Refusal, framing};
use crate::shutdown::Shutdown;

/// Removes the fields that stay on their connection ([`fields::hop_by_hop`]), and those
/// the `Connection` field names (never the framing or Host). Most messages have none but
/// `Connection` with a usual token, so the common case is one pass over the names and no
/// allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|name| fields::hop_by_hop(name.as_str(), Crossing::Reframed))
    {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(fields::connection_tokens);
    for token in tokens {
        if let Token::Names(field) = token {
            if headers.contains_key(field) {
                if let Ok(name) = HeaderName::from_bytes(field.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in fields::HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Rewrites a request's header fields for a member: the hop-by-hop ones removed, and the
/// client's own `X-Forwarded-*` and `Via` replaced by this hop's ([`ADDED`]: the lists
/// appended to); Host is kept.
pub fn forward_request_headers(headers: &mut HeaderMap, peer: &Peer) {
    strip_hop_by_hop(headers);
    for added in ADDED {
        let name = HeaderName::from_static(added.name);
        let ours = match added.source {
            Source::Peer => Some(peer.value().clone()),
            Source::Host => headers.get(header::HOST).cloned(),
            Source::Text(text) => Some(HeaderValue::from_static(text)),
        };
        let value = match ours {
            Some(ours) if added.list && headers.contains_key(&name) => {
                let mut list = Vec::new();
                let sent = headers.get_all(&name).iter().map(HeaderValue::as_bytes);
                fields::write_list(&mut list, sent, ours.as_bytes());
                Some(HeaderValue::from_maybe_shared(Bytes::from(list)).unwrap_or(ours))
            }
            other => other,
        };
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
}

/// The protocol a request asks to switch to (`Connection: upgrade` and `Upgrade: P`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(fields::connection_tokens)
        .any(|t| t == Token::Upgrade);
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back `Connection: upgrade` and `Upgrade: protocol` after the hop-by-hop strip.
fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The size of the header fields, as the limit counts it.
pub fn headers_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| rules::field_size(n.as_str(), v.as_bytes()))
        .sum()
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
    if body.size_hint().exact().is_none() && !body.is_end_stream() {
        // A body of unknown length (chunked from the client) goes on chunked whatever the
        // method: hyper would send a GET's, HEAD's or DELETE's as no body at all, where
        // one with a length keeps it (request framing does not depend on the method,
        // RFC 9112 §6; nginx and HAProxy forward both).
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = headers;
    request
}

/// Forwards one request over the members its stickiness and the lbmethod give, as the
/// stepper says.
pub async fn forward(
    upstream: &Upstream,
    req: Request<Incoming>,
    peer: &Peer,
    shutdown: &Shutdown,
) -> Response<ProxyBody> {
    let pool = &upstream.pool;
    let timeout = pool.timeout();
    let mut req = req;
    // An absolute-form target's authority is the request's Host (RFC 9112 §3.2.2).
    let uri = req.uri();
    match framing::target_host(uri.scheme_str(), uri.authority().map(|a| a.as_str())) {
        Ok(None) => {}
        Ok(Some(host)) => match HeaderValue::from_str(host) {
            Ok(host) => {
                req.headers_mut().insert(header::HOST, host);
            }
            Err(_) => return answer::refusal(Refusal::BadTarget),
        },
        Err(refusal) => return answer::refusal(refusal),
    }
    let upgrade = upgrade_protocol(req.headers());
    let asked_upgrade = upgrade.clone();
    let mut client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fields = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    let order = upstream.order(&upstream.sticky.key(fields, target, peer));
    let alternatives = order.has_alternatives();
    let named = order.named();
    let idempotent = rules::idempotent(parts.method.as_str());
    let request = stepper::Request {
        idempotent,
        streamed: Payload::streams(&body),
        upgrade: upgrade.is_some(),
    };
    let mut steps = Stepper::new(order, request);
    let mut next = steps.start();
    if let Move::Answer(refusal) = next {
        return answer::refusal(refusal);
    }
    forward_request_headers(&mut parts.headers, peer);
    if let Some(protocol) = upgrade {
        set_upgrade(&mut parts.headers, protocol);
    }
    parts.uri = origin_form(&parts.uri);
    let mut payload = match Payload::from(body, timeout).await {
        Ok(payload) => payload,
        Err(refusal) => return answer::refusal(refusal),
    };
    let headers = std::mem::take(&mut parts.headers);
    let mut sending = Sending {
        parts: &parts,
        headers: Some(headers),
        payload: &mut payload,
        idempotent,
        alternatives,
        after: timeout.after(),
    };
    let mut member: Option<Arc<Member>> = None;
    let mut busy: Option<Busy> = None;
    let mut attempt: Option<Attempt> = None;
    let mut answered: Option<(Response<Incoming>, MemberConn, framing::Framing)> = None;
    let mut tunnels = false;
    let asked = framing::Asked {
        head: parts.method == hyper::Method::HEAD,
        upgrade: asked_upgrade.as_ref().map(HeaderValue::as_bytes),
    };
    loop {
        let fresh = match next {
            Move::Send(to) => {
                if member.is_some() {
                    upstream.figures().retried(true);
                }
                busy = Some(Busy::new(&to));
                attempt = Some(Attempt::start(&to));
                member = Some(to);
                false
            }
            Move::Again => {
                upstream.figures().retried(false);
                true
            }
            Move::Pass => break,
            Move::Tunnel => {
                tunnels = true;
                break;
            }
            Move::Answer(refusal) => {
                if let (Refusal::MemberTimedOut(_), Some(m)) = (refusal, &member) {
                    timeout.note(Stall::Answer, Some(&m.route));
                }
                return answer::refusal(refusal);
            }
        };
        let Some(to) = &member else { break };
        let attempted = match sending.send(pool, to, fresh).await {
            Ok((response, conn)) => match answer::framing(&response, asked) {
                Ok(framed) => {
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    answered = Some((response, conn, framed));
                    Attempted::Answered { switching }
                }
                // Not passed on, and its connection closed, as on the fast path.
                Err(doubt) => {
                    debug!(member = %to.route, error = %doubt, "member failed");
                    Attempted::Failed { reached: true }
                }
            },
            Err(attempted) => attempted,
        };
        let decision = steps.after(attempted);
        if let (Some(verdict), Some(attempt)) = (decision.verdict, attempt.take()) {
            attempt.settle(verdict);
        }
        next = decision.next;
    }
    let (Some(member), Some(busy), Some((response, conn, framed))) = (member, busy, answered)
    else {
        return answer::refusal(Refusal::NoAnswer);
    };
    member.answered(response.status().as_u16());
    let set_cookie = balancer_cookie(upstream, named, &member);
    if let (true, Some(client_side)) = (tunnels, client_side.take()) {
        return tunnel(
            response,
            conn,
            client_side,
            busy,
            shutdown,
            timeout.after(),
            set_cookie,
        );
    }
    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    if let Some(cookie) = set_cookie {
        head.headers.append(header::SET_COOKIE, cookie);
    }
    if !framed.length_passed {
        // Transfer-Encoding won (RFC 9112 §6.3): its Content-Length is not passed on.
        head.headers.remove(header::CONTENT_LENGTH);
    }
    let route = member.clone();
    let mut body = MemberBody::new(
        body,
        conn,
        framed.reusable,
        pool.clone(),
        member,
        timeout.after(),
        busy,
    );
    if let Err(e) = body.read_ready().await {
        // Nothing went to the client yet: a whole answer of ours instead.
        debug!(member = %route.route, error = %e, "malformed answer; 502");
        route
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return answer::refusal(Refusal::MemberFailed);
    }
    Response::from_parts(head, ProxyBody::Member(body))
}

/// The balancer's own sticky cookie for the answer of `member`, when the rule says it
/// sets one (see [`crate::balancer::rules::sticky::Rule::write_set_cookie`]).
fn balancer_cookie(
    upstream: &Upstream,
    named: Option<u64>,
    member: &Member,
) -> Option<HeaderValue> {
    upstream.sticky.balancer_cookie()?;
    let mut value = Vec::new();
    if !upstream
        .sticky
        .write_set_cookie(named, member.id, &member.route, &mut value)
    {
        return None;
    }
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// What each attempt of one request sends.
struct Sending<'a> {
    parts: &'a Parts,
    /// None while they are on their way (they come back when the request was not sent).
    headers: Option<HeaderMap>,
    payload: &'a mut Payload,
    /// It may be sent twice.
    idempotent: bool,
    /// A member other than the first may be tried.
    alternatives: bool,
    after: Duration,
}

impl Sending<'_> {
    /// One attempt on `member`: the request sent on a pooled connection (or a new one when
    /// `fresh` or none is idle), and the head of its answer waited for.
    async fn send(
        &mut self,
        pool: &Pool,
        member: &Arc<Member>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, MemberConn), Attempted> {
        let conn = if fresh {
            MemberConn::open(&member.authority).await
        } else {
            pool.checkout(member).await
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                debug!(member = %member.route, error = %e, "member failed");
                return Err(Attempted::Failed { reached: false });
            }
        };
        // Kept for another attempt when one may follow a sent request: on another member,
        // or on this one, when the member closed its pooled connection meanwhile.
        let keep = self.payload.kept() && self.idempotent && (self.alternatives || conn.reused);
        let headers = if keep {
            self.headers.clone()
        } else {
            self.headers.take()
        };
        // The stepper sends again only while both are there.
        let (Some(headers), Some(body)) = (headers, self.payload.take(member)) else {
            return Err(Attempted::Failed { reached: true });
        };
        let request = member_request(self.parts, headers, body, member);
        let reused = conn.reused;
        let failed = match unless_left(member, conn.send(request, self.after)).await {
            Some(Ok(response)) => return Ok((response, conn)),
            Some(Err(failed)) => failed,
            None => return Err(Attempted::Failed { reached: true }),
        };
        if let Some(refusal) = self.payload.client_failed(self.after) {
            debug!(member = %member.route, "the client's request body failed");
            return Err(Attempted::ClientFailed(refusal));
        }
        Err(match failed {
            SendError::NotSent(e, request) => {
                debug!(member = %member.route, error = %e, reused, "the request could not be sent");
                let (sent, body) = request.into_parts();
                self.headers.get_or_insert(sent.headers);
                self.payload.give_back(body);
                Attempted::Closed {
                    reused,
                    reached: false,
                }
            }
            SendError::Failed(e) if e.is_incomplete_message() => {
                debug!(member = %member.route, error = %e, reused, "the member connection closed before an answer");
                Attempted::Closed {
                    reused,
                    reached: true,
                }
            }
            SendError::Failed(e) => {
                debug!(member = %member.route, error = %e, "member failed");
                Attempted::Failed { reached: true }
            }
            SendError::TimedOut(after) => Attempted::TimedOut(after),
        })
    }
}

/// Answers 101 to the client and, once both sides have switched, copies bytes both ways
/// until either closes, nothing moves for `idle`, or shutdown (see [`tunnel::copy`]). The
/// member connection gets a task of its own, to run until it hands its socket over. The
/// 101 carries the balancer's sticky cookie when `set_cookie` has one.
fn tunnel(
    mut response: Response<Incoming>,
    conn: MemberConn,
    client_side: hyper::upgrade::OnUpgrade,
    busy: Busy,
    shutdown: &Shutdown,
    idle: Duration,
    set_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let member_side = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    let protocol = head.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut head.headers);
    if let Some(cookie) = set_cookie {
        head.headers.append(header::SET_COOKIE, cookie);
    }
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
    use std::net::{IpAddr, Ipv4Addr};

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
    fn a_first_hop_gets_fresh_forwarded_headers() {
        let mut h = headers(&[("host", "h:1")]);
        forward_request_headers(&mut h, &peer());
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["via"], "1.1 deltacast");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn connection_cannot_take_away_the_framing_or_host_on_this_path_either() {
        let mut h = headers(&[
            ("host", "h"),
            ("connection", "host, content-length, transfer-encoding, x"),
            ("content-length", "3"),
            ("x", "1"),
        ]);
        forward_request_headers(&mut h, &peer());
        assert_eq!(h["host"], "h");
        assert_eq!(h["content-length"], "3");
        assert!(h.get("x").is_none());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn a_request_without_host_keeps_no_forwarded_host_of_the_clients() {
        let mut h = headers(&[
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
        ]);
        forward_request_headers(&mut h, &peer());
        assert!(h.get("x-forwarded-host").is_none(), "{h:?}");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 10.0.0.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn header_fields_are_sized_as_the_fast_path_sizes_them() {
        let small = headers(&[("host", "x"), ("cookie", "a=b")]);
        assert_eq!(headers_size(&small), 9 + 13);
        assert!(!rules::headers_too_large(headers_size(&small)));
        let big = "a".repeat(rules::MAX_HEADER_BYTES);
        assert!(rules::headers_too_large(headers_size(&headers(&[(
            "x-big", &big
        )]))));
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
}
