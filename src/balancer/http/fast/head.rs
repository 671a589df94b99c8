//! The request head on the fast path: parsed in place (httparse), judged by the rulebook
//! (whether the fast path takes it at all, which fields cross, where it belongs), and
//! written for the member without a header map or an allocation.

use httparse::Status;

use crate::balancer::choice::select::Stickiness;
use crate::balancer::http::manager;
use crate::balancer::rules::fields::{self, ADDED, Named, Source, Token};
use crate::balancer::rules::{self, Peer, Refusal, framing, sticky};

/// Most header fields of a head handled here (hyper's limit too: beyond, its 431).
pub const MAX_HEADERS: usize = 100;

/// What the client asked that shapes the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asked {
    /// `HEAD`: the answer has no body whatever its fields say.
    pub head: bool,
    /// The client said `Connection: close`.
    pub close: bool,
}

/// A request the fast path forwards, once its head is parsed; `to`: where it goes (the
/// members to try, chosen while the head was at hand).
pub struct Request<K> {
    pub head_len: usize,
    pub asked: Asked,
    pub to: K,
}

pub enum Prepared<K> {
    Partial,
    Ready(Request<K>),
    HandOff,
    /// Answered by the balancer itself, and the connection closed: what follows is not an
    /// HTTP/1.1 request (a CONNECT's tunnel, an HTTP/2 connection).
    Refuse(Refusal),
}

/// Parses the request head at the start of `buf` and, when the fast path takes it, writes
/// the head for the member into `out` and chooses where it goes with `choose`, given
/// what the head says about where it belongs.
pub fn prepare<K>(
    buf: &[u8],
    peer: &Peer,
    rule: &sticky::Rule,
    out: &mut Vec<u8>,
    choose: impl FnOnce(Stickiness<'_>) -> K,
) -> Prepared<K> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Prepared::Partial,
        Err(_) if framing::http2_preface(buf) => return Prepared::Refuse(Refusal::Http2),
        Err(_) => return Prepared::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Prepared::HandOff;
    };
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") || !target.starts_with('/') {
        return match framing::method_refused(method) {
            Some(refusal) => Prepared::Refuse(refusal),
            None => Prepared::HandOff,
        };
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if manager::is_manager_path(path) {
        return Prepared::HandOff;
    }
    let mut size = 0;
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut close = false;
    let mut named = Named::default();
    for h in req.headers.iter() {
        size += rules::field_size(h.name, h.value);
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = h.value;
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Prepared::HandOff;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Prepared::HandOff;
        } else if name.eq_ignore_ascii_case("connection") {
            let Ok(value) = std::str::from_utf8(h.value) else {
                return Prepared::HandOff;
            };
            for token in fields::connection_tokens(value) {
                match token {
                    Token::Close => close = true,
                    Token::KeepAlive => {}
                    Token::Upgrade => return Prepared::HandOff,
                    Token::Names(field) => {
                        if named.push(field).is_err() {
                            return Prepared::HandOff;
                        }
                    }
                }
            }
        }
    }
    if rules::host_problem(true, hosts, host).is_some() || rules::headers_too_large(size) {
        return Prepared::HandOff;
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if fields::forwarded(h.name, &named) {
            write_field(out, h.name.as_bytes(), h.value);
        }
    }
    for added in ADDED {
        let ours = match added.source {
            Source::Peer => peer.text(),
            Source::Host => host,
            Source::Text(text) => text.as_bytes(),
        };
        out.extend_from_slice(added.name.as_bytes());
        out.extend_from_slice(b": ");
        if added.list {
            let sent = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(added.name));
            fields::write_list(out, sent.map(|h| h.value), ours);
        } else {
            out.extend_from_slice(ours);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let fields = req.headers.iter().map(|h| (h.name, h.value));
    let to = choose(rule.key(fields, target, peer));
    Prepared::Ready(Request {
        head_len,
        asked: Asked {
            head: method == "HEAD",
            close,
        },
        to,
    })
}

pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sticky;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer() -> Peer {
        Peer::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
    }

    fn rule(sticky: Sticky) -> sticky::Rule {
        sticky::Rule {
            sticky,
            cookie: "JSESSIONID".into(),
        }
    }

    /// What `prepare` makes of `head`: where it goes is the stickiness, written out.
    fn prepared(head: &str, sticky: Sticky) -> (Prepared<String>, String) {
        let mut out = Vec::new();
        let p = prepare(head.as_bytes(), &peer(), &rule(sticky), &mut out, |s| {
            format!("{s:?}")
        });
        (p, String::from_utf8(out).unwrap())
    }

    fn ready(head: &str) -> (Request<String>, String) {
        match prepared(head, Sticky::Route) {
            (Prepared::Ready(r), out) => (r, out),
            _ => panic!("not taken by the fast path: {head:?}"),
        }
    }

    #[test]
    fn a_request_head_is_rewritten_for_the_member_as_the_hyper_path_does() {
        let head = "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
                    X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n\
                    X-Forwarded-For: 192.0.2.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\
                    Via: 1.0 edge\r\nAccept: */*\r\n\r\nNEXT";
        let (request, out) = ready(head);
        assert_eq!(request.head_len, head.len() - 4);
        assert_eq!(request.asked, Asked::default());
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\
             x-forwarded-for: 192.0.2.9, 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example\r\nvia: 1.0 edge, 1.1 deltacast\r\n\r\n"
        );
        let (request, out) = ready("HEAD / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
        assert_eq!(
            request.asked,
            Asked {
                head: true,
                close: true
            }
        );
        assert_eq!(
            out,
            "HEAD / HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: h\r\nvia: 1.1 deltacast\r\n\r\n"
        );
    }

    #[test]
    fn requests_with_a_body_an_upgrade_or_anything_unusual_go_to_hyper() {
        let hyper = [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /balancer-manager HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /balancer-manager/status?x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q\r\n\r\n",
            "GET / HTTP/1.1\r\nHost h\r\n\r\n",
            "\x16\x03\x01 not http at all\r\n\r\n",
        ];
        for head in hyper {
            assert!(
                matches!(prepared(head, Sticky::Route).0, Prepared::HandOff),
                "{head:?}"
            );
        }
        let mut big = "GET / HTTP/1.1\r\nHost: h\r\n".to_string();
        for i in 0..40 {
            big.push_str(&format!("X-{i}: {}\r\n", "v".repeat(900)));
        }
        big.push_str("\r\n");
        assert!(matches!(prepared(&big, Sticky::Route).0, Prepared::HandOff));
        assert!(matches!(
            prepared("GET / HTTP/1.1\r\nHost: h\r\n", Sticky::Route).0,
            Prepared::Partial
        ));
        for (head, refusal) in [
            (
                "CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
                Refusal::MethodNotAllowed,
            ),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Refusal::Http2),
        ] {
            assert!(
                matches!(prepared(head, Sticky::Route).0, Prepared::Refuse(r) if r == refusal),
                "{head:?}"
            );
        }
        // Bodiless requests with an empty body declared, and DELETE, are taken.
        ready("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        ready("DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn where_it_goes_comes_from_the_cookie_the_path_a_header_or_the_address() {
        let cookie = "GET / HTTP/1.1\r\nHost: h\r\nCookie: a=b; JSESSIONID=4DD0340CE6294FF2BBE802CD4CD039EC.n2\r\n\r\n";
        assert_eq!(ready(cookie).0.to, "Route(\"n2\")");
        let foreign = "GET / HTTP/1.1\r\nHost: h\r\nCookie: JSESSIONID=node0abc123.node0\r\n\r\n";
        assert_eq!(ready(foreign).0.to, "Route(\"node0\")");
        let path =
            "GET /x;jsessionid=4DD0340CE6294FF2BBE802CD4CD039EC.n3?q HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(ready(path).0.to, "Route(\"n3\")");
        assert_eq!(ready("GET / HTTP/1.1\r\nHost: h\r\n\r\n").0.to, "None");
        let Prepared::Ready(r) = prepared(
            "GET / HTTP/1.1\r\nHost: h\r\nX-User: alice\r\n\r\n",
            Sticky::Header("x-user".into()),
        )
        .0
        else {
            panic!("not taken");
        };
        assert_eq!(r.to, format!("{:?}", Stickiness::Key(b"alice")));
        let Prepared::Ready(r) = prepared("GET / HTTP/1.1\r\nHost: h\r\n\r\n", Sticky::SourceIp).0
        else {
            panic!("not taken");
        };
        assert_eq!(r.to, format!("{:?}", Stickiness::Key(b"10.1.2.3")));
    }

    #[test]
    fn connection_cannot_take_away_the_framing_or_host() {
        let (_, out) = ready(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: host, content-length, x\r\nContent-Length: 0\r\nX: 1\r\n\r\n",
        );
        assert!(out.contains("\r\nHost: h\r\n"), "{out}");
        assert!(out.contains("\r\nContent-Length: 0\r\n"), "{out}");
        assert!(!out.contains("\r\nX: 1"), "{out}");
    }
}
