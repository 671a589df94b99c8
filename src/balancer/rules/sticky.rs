//! Which member a request belongs to (SPEC, "Stickiness"), as mod_proxy_balancer decides
//! it, for any backend: with `route`, the route is what follows the last `.` of the
//! session cookie's value, or of a `;jsessionid=` path parameter, whatever the id before
//! it looks like (`4DD0...EC.n2`, Jetty's `node0abc123.node0`, `x.A`); with `source_ip`
//! or `header:NAME`, a key hashed onto a member. Nothing here knows what a session id
//! is: the balancer fronts backends whose ids it has never seen.
//!
//! Everything is borrowed from the request, so finding the key costs no allocation.

use crate::balancer::choice::select::Stickiness;
use crate::config::Sticky;

use super::Peer;

/// The configured stickiness: `balancer.sticky`, and the session cookie's name.
#[derive(Clone, Debug)]
pub struct Rule {
    pub sticky: Sticky,
    pub cookie: String,
}

impl Rule {
    /// Where a request with these header fields and target should go (see [`stickiness`]).
    pub fn key<'a>(
        &self,
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        target: &'a str,
        peer: &'a Peer,
    ) -> Stickiness<'a> {
        stickiness(&self.sticky, &self.cookie, fields, target, peer)
    }
}

/// What the request says about where it should go, by the configured stickiness, from
/// its header fields as (name, value) pairs however they were parsed, and its target
/// (path and query).
pub fn stickiness<'a>(
    sticky: &Sticky,
    cookie: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    target: &'a str,
    peer: &'a Peer,
) -> Stickiness<'a> {
    match sticky {
        Sticky::None => Stickiness::None,
        Sticky::SourceIp => Stickiness::Key(peer.text()),
        Sticky::Header(name) => fields
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(Stickiness::None, |(_, v)| Stickiness::Key(v)),
        Sticky::Route => {
            let cookies = fields
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .map(|(_, v)| v);
            route_in_cookies(cookies, cookie)
                .or_else(|| route_in_path(target))
                .map_or(Stickiness::None, Stickiness::Route)
        }
    }
}

/// The route a session id carries: what follows the last `.` of the value (without the
/// quotes of a quoted cookie value, RFC 6265 §4.1.1). None without a `.`, with nothing
/// after it, or when that is not text.
pub fn route_of(value: &[u8]) -> Option<&str> {
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    let dot = value.iter().rposition(|b| *b == b'.')?;
    let route = value.get(dot + 1..).filter(|r| !r.is_empty())?;
    std::str::from_utf8(route).ok()
}

/// The route of the first cookie named `name` that carries one, in the values of every
/// `Cookie` field in order (a request may have several fields, each `a=b; c=d`, and
/// several cookies of one name, for different paths: the first with a route wins, as the
/// browser sends the most specific first). Cookie names compare case-sensitively.
pub fn route_in_cookies<'a>(
    fields: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a str> {
    fields
        .into_iter()
        .flat_map(|field| field.split(|b| *b == b';'))
        .filter_map(|pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (&pair[..at], &pair[at + 1..]);
            (trim_ows(n) == name.as_bytes()).then(|| trim_ows(v))
        })
        .find_map(route_of)
}

/// The route of the first `;jsessionid=` path parameter that carries one (the name in any
/// case, as Tomcat's URL rewriting writes it): the parameter's value ends at `/`, `;`, `?`
/// or `#`; only the path is searched, not the query.
pub fn route_in_path(target: &str) -> Option<&str> {
    const PARAM: &[u8] = b";jsessionid=";
    let bytes = target.as_bytes();
    let path = &bytes[..bytes
        .iter()
        .position(|b| matches!(b, b'?' | b'#'))
        .unwrap_or(bytes.len())];
    let mut rest = path;
    while let Some(at) = rest
        .windows(PARAM.len())
        .position(|w| w.eq_ignore_ascii_case(PARAM))
    {
        let value = &rest[at + PARAM.len()..];
        let end = value
            .iter()
            .position(|b| matches!(b, b'/' | b';'))
            .unwrap_or(value.len());
        if let Some(route) = route_of(&value[..end]) {
            return Some(route);
        }
        rest = &value[end..];
    }
    None
}

/// Without the optional white space (spaces, tabs) around it.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer() -> Peer {
        Peer::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))
    }

    fn route_in(cookies: &[&str]) -> Option<String> {
        route_in_cookies(cookies.iter().map(|c| c.as_bytes()), "JSESSIONID").map(str::to_owned)
    }

    #[test]
    fn the_route_follows_the_last_dot_whatever_the_id_looks_like() {
        for (value, route) in [
            ("4DD0340CE6294FF2BBE802CD4CD039EC.n2", "n2"),
            ("node0abc123.node0", "node0"),
            ("x.A", "A"),
            ("a.b.c", "c"),
            ("0123456789abcdef0123456789abcdef.n3", "n3"),
            (".A", "A"),
            ("id.route-with_odd.chars~", "chars~"),
        ] {
            assert_eq!(route_of(value.as_bytes()), Some(route), "{value}");
        }
        for no_route in ["4DD0340CE6294FF2BBE802CD4CD039EC", "x.", "", ".", "\"\""] {
            assert_eq!(route_of(no_route.as_bytes()), None, "{no_route}");
        }
        assert_eq!(route_of(b"x.\xff"), None, "not text");
    }

    #[test]
    fn a_quoted_cookie_value_is_read_without_its_quotes() {
        assert_eq!(route_in(&["JSESSIONID=\"x.A\""]), Some("A".into()));
        assert_eq!(
            route_in(&["JSESSIONID=\"node0abc.node0\"; b=c"]),
            Some("node0".into())
        );
        // Quotes that do not close are part of the value.
        assert_eq!(route_in(&["JSESSIONID=\"x.A"]), Some("A".into()));
        assert_eq!(route_in(&["JSESSIONID=x.A\""]), Some("A\"".into()));
    }

    #[test]
    fn the_session_cookie_is_found_among_several_in_one_field_and_several_fields() {
        assert_eq!(
            route_in(&["a=b; JSESSIONID=node0xyz.node1; c=d.e"]),
            Some("node1".into())
        );
        assert_eq!(
            route_in(&["a=b.c", "theme=dark", "JSESSIONID=x.A"]),
            Some("A".into())
        );
        // The first that carries a route wins, in field order then pair order.
        assert_eq!(
            route_in(&["JSESSIONID=x.A; JSESSIONID=y.B", "JSESSIONID=z.C"]),
            Some("A".into())
        );
        assert_eq!(
            route_in(&["JSESSIONID=noroute; JSESSIONID=y.B"]),
            Some("B".into())
        );
        assert_eq!(
            route_in(&["JSESSIONID=", "JSESSIONID=z.C"]),
            Some("C".into())
        );
        // White space around pairs and names; other bytes elsewhere do not matter.
        let odd: [&[u8]; 1] = [b"a=\xff;\t JSESSIONID = x.A "];
        assert_eq!(route_in_cookies(odd, "JSESSIONID"), Some("A"));
    }

    #[test]
    fn only_a_cookie_of_exactly_the_name_counts() {
        for other in [
            "jsessionid=x.A",
            "XJSESSIONID=x.A",
            "JSESSIONIDX=x.A",
            "a=JSESSIONID=x.A",
            "JSESSIONID",
            "",
            "a=b.c",
        ] {
            assert_eq!(route_in(&[other]), None, "{other}");
        }
    }

    #[test]
    fn a_jsessionid_path_parameter_carries_a_route_too() {
        for (target, route) in [
            (
                "/x;jsessionid=0123456789abcdef0123456789abcdef.n3?q=1",
                Some("n3"),
            ),
            ("/cart;JSESSIONID=node0abc.node0", Some("node0")),
            ("/a;jsessionid=x.A/b", Some("A")),
            ("/a;jsessionid=x.A;other=1", Some("A")),
            ("/a;jsessionid=noroute;jsessionid=y.B", Some("B")),
            ("/a;jsessionid=x.A#frag", Some("A")),
            ("/a?;jsessionid=x.A", None),
            ("/a#;jsessionid=x.A", None),
            ("/a;jsessionid=", None),
            ("/a;jsession=x.A", None),
            ("/", None),
        ] {
            assert_eq!(route_in_path(target), route, "{target}");
        }
    }

    fn stick<'a>(
        sticky: &Sticky,
        fields: &'a [(&'a str, &'a str)],
        target: &'a str,
        peer: &'a Peer,
    ) -> Stickiness<'a> {
        stickiness(
            sticky,
            "JSESSIONID",
            fields.iter().map(|(n, v)| (*n, v.as_bytes())),
            target,
            peer,
        )
    }

    #[test]
    fn the_cookie_wins_over_the_path_and_either_gives_the_route() {
        let peer = peer();
        let cookie = [("Cookie", "a=b; JSESSIONID=x.A")];
        assert_eq!(
            stick(&Sticky::Route, &cookie, "/p;jsessionid=y.B", &peer),
            Stickiness::Route("A")
        );
        assert_eq!(
            stick(
                &Sticky::Route,
                &[("cookie", "JSESSIONID=noroute")],
                "/p;jsessionid=y.B",
                &peer
            ),
            Stickiness::Route("B")
        );
        assert_eq!(stick(&Sticky::Route, &[], "/", &peer), Stickiness::None);
        assert_eq!(
            stick(
                &Sticky::Route,
                &[("x-cookie", "JSESSIONID=x.A")],
                "/",
                &peer
            ),
            Stickiness::None
        );
        assert_eq!(stick(&Sticky::None, &cookie, "/", &peer), Stickiness::None);
    }

    #[test]
    fn source_ip_and_header_stickiness_give_hash_keys() {
        let peer = peer();
        let fields = [("X-User", "alice"), ("x-user", "bob")];
        assert_eq!(
            stick(&Sticky::SourceIp, &fields, "/", &peer),
            Stickiness::Key(b"10.0.0.7")
        );
        assert_eq!(
            stick(&Sticky::Header("x-user".into()), &fields, "/", &peer),
            Stickiness::Key(b"alice")
        );
        assert_eq!(
            stick(&Sticky::Header("X-Other".into()), &fields, "/", &peer),
            Stickiness::None
        );
    }
}
