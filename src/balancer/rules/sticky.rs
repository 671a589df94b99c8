//! Which member a request belongs to (SPEC, "Stickiness"), as mod_proxy_balancer decides
//! it, for any backend: with `route`, the route is what follows the last `.` of the
//! session cookie's value, or of a `;jsessionid=` path parameter, whatever the id before
//! it looks like (`4DD0...EC.n2`, Jetty's `node0abc123.node0`, `x.A`); with
//! `cookie:NAME`, what follows the last `.` of the balancer's own cookie `NAME`, which
//! the balancer sets (`NAME=.ROUTE`, [`Rule::write_set_cookie`]) on an answer whenever the
//! request's cookie did not name the member that answered; with `source_ip` or
//! `header:NAME`, a key hashed onto a member. Nothing here knows what a session id is:
//! the balancer fronts backends whose ids it has never seen.
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

    /// The name of the cookie the balancer sets itself (`cookie:NAME`), if it sets one.
    pub fn balancer_cookie(&self) -> Option<&str> {
        match &self.sticky {
            Sticky::Cookie(name) => Some(name),
            _ => None,
        }
    }

    /// With `cookie:NAME`, writes into `out` the value of the `Set-Cookie` field the answer
    /// of member `answered` (its id and route) carries to the client,
    /// `NAME=.ROUTE; Path=/; HttpOnly`, unless the request was sent by its cookie to that
    /// very member (`named`: the id of the member the request's cookie named and that was
    /// picked for it, see the registry's `Order::named`). So the cookie is set when the
    /// request had none, or one naming a member that is gone, down, disabled or not the
    /// one that answered (a retry moved it): it moves with its member. Whether it wrote;
    /// never for a route that a cookie value cannot carry (RFC 6265 §4.1.1) or that would
    /// not read back.
    pub fn write_set_cookie(
        &self,
        named: Option<u64>,
        answered: u64,
        route: &str,
        out: &mut Vec<u8>,
    ) -> bool {
        let Sticky::Cookie(name) = &self.sticky else {
            return false;
        };
        // A `.` in the route would not read back (the route follows the last one).
        let carried = !route.is_empty() && route.bytes().all(|b| b != b'.' && cookie_octet(b));
        if named == Some(answered) || !carried {
            return false;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=.");
        out.extend_from_slice(route.as_bytes());
        out.extend_from_slice(b"; Path=/; HttpOnly");
        true
    }
}

/// A byte a cookie value may hold unquoted (RFC 6265 §4.1.1 `cookie-octet`).
fn cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
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
        Sticky::Cookie(name) => {
            let cookies = fields
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .map(|(_, v)| v);
            route_in_cookies(cookies, name).map_or(Stickiness::None, Stickiness::Route)
        }
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
    fn the_balancers_own_cookie_gives_the_route_and_the_session_cookie_does_not() {
        let peer = peer();
        let rule = Sticky::Cookie("ROUTEID".into());
        assert_eq!(
            stick(
                &rule,
                &[("Cookie", "PHPSESSID=abc; ROUTEID=.n2")],
                "/",
                &peer
            ),
            Stickiness::Route("n2")
        );
        assert_eq!(
            stick(&rule, &[("cookie", "ROUTEID=\".n1\"")], "/", &peer),
            Stickiness::Route("n1")
        );
        for none in ["JSESSIONID=x.n1", "ROUTEID=", "ROUTEID=n1", "routeid=.n1"] {
            assert_eq!(
                stick(&rule, &[("Cookie", none)], "/x;jsessionid=y.B", &peer),
                Stickiness::None,
                "{none}"
            );
        }
    }

    fn cookie_rule() -> Rule {
        Rule {
            sticky: Sticky::Cookie("ROUTEID".into()),
            cookie: "JSESSIONID".into(),
        }
    }

    fn set_cookie(rule: &Rule, named: Option<u64>, answered: u64, route: &str) -> Option<String> {
        let mut out = Vec::new();
        rule.write_set_cookie(named, answered, route, &mut out)
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_cookie_is_set_unless_the_request_named_the_member_that_answered() {
        let rule = cookie_rule();
        assert_eq!(rule.balancer_cookie(), Some("ROUTEID"));
        let want = Some("ROUTEID=.n2; Path=/; HttpOnly".to_string());
        assert_eq!(set_cookie(&rule, None, 2, "n2"), want, "no cookie yet");
        assert_eq!(
            set_cookie(&rule, Some(1), 2, "n2"),
            want,
            "moved by a retry"
        );
        assert_eq!(set_cookie(&rule, Some(2), 2, "n2"), None, "already there");
        for odd in ["", "a b", "a;b", "a,b", "a\"b", "a\\b", "\u{e9}", "a.b"] {
            assert_eq!(set_cookie(&rule, None, 2, odd), None, "{odd:?}");
        }
        assert_eq!(
            set_cookie(&rule, None, 2, "node-0_A"),
            Some("ROUTEID=.node-0_A; Path=/; HttpOnly".to_string())
        );
        for other in [Sticky::Route, Sticky::None, Sticky::SourceIp] {
            let rule = Rule {
                sticky: other,
                cookie: "JSESSIONID".into(),
            };
            assert_eq!(rule.balancer_cookie(), None);
            assert_eq!(set_cookie(&rule, None, 2, "n2"), None);
        }
    }

    /// The `Set-Cookie` an answer gets, at `now`, for a request with `cookies`, when the
    /// first member of its order answers; and that member's route.
    fn answered_with(
        registry: &crate::balancer::choice::registry::Registry,
        cookies: &str,
        now: std::time::Instant,
    ) -> (String, Option<String>) {
        let rule = cookie_rule();
        let peer = peer();
        let fields = [("Cookie", cookies.as_bytes())];
        let mut order = registry.order(&rule.key(fields, "/", &peer), now);
        let named = order.named();
        let member = order.next().expect("a member");
        let mut out = Vec::new();
        let set = rule
            .write_set_cookie(named, member.id, &member.route, &mut out)
            .then(|| String::from_utf8(out).unwrap());
        (member.route.clone(), set)
    }

    #[test]
    fn the_balancer_cookie_is_set_when_its_member_is_not_live_and_kept_while_it_is() {
        use crate::balancer::choice::member::{Admin, Health, RETRY_MIN};
        use crate::balancer::choice::registry::Registry;
        use crate::config::{BalancerMember, LbMethod};
        let member = |route: &str, port: u16| BalancerMember {
            url: format!("http://127.0.0.1:{port}"),
            route: route.into(),
            loadfactor: 1,
        };
        let r = Registry::new(
            LbMethod::ByRequests,
            &[member("n1", 9001), member("n2", 9002)],
        );
        let t0 = std::time::Instant::now();
        let cookie = |route: &str| Some(format!("ROUTEID=.{route}; Path=/; HttpOnly"));
        // No cookie, or one naming no member: the lbmethod picks, the answer names it.
        for none in ["", "ROUTEID=.n9", "ROUTEID=x"] {
            let (route, set) = answered_with(&r, none, t0);
            assert_eq!(set, cookie(&route), "{none:?}");
        }
        // A cookie naming a live member: that member, nothing set.
        for _ in 0..10 {
            assert_eq!(answered_with(&r, "ROUTEID=.n2", t0), ("n2".into(), None));
        }
        // Its member in error: the other one, and the cookie moves to it.
        r.members()[1].update_health(|h| h.on_failure(t0));
        assert_eq!(
            answered_with(&r, "ROUTEID=.n2", t0),
            ("n1".into(), cookie("n1"))
        );
        assert_eq!(answered_with(&r, "ROUTEID=.n1", t0), ("n1".into(), None));
        // Its retry interval passed: the trial request goes back to it, nothing set.
        let later = t0 + RETRY_MIN;
        assert_eq!(answered_with(&r, "ROUTEID=.n2", later), ("n2".into(), None));
        r.members()[1].update_health(Health::on_success);
        // Draining: the session moves (SPEC), and new ones go elsewhere.
        r.set_admin("n2", Admin::Draining);
        assert_eq!(
            answered_with(&r, "ROUTEID=.n2", later),
            ("n1".into(), cookie("n1"))
        );
        for _ in 0..4 {
            assert_eq!(answered_with(&r, "", later), ("n1".into(), cookie("n1")));
        }
        // Disabled: the same.
        r.set_admin("n2", Admin::Disabled);
        assert_eq!(
            answered_with(&r, "ROUTEID=.n2", later),
            ("n1".into(), cookie("n1"))
        );
        // Gone: the same.
        r.set_admin("n2", Admin::Active);
        let gone = Registry::new(LbMethod::ByRequests, &[member("n1", 9001)]);
        assert_eq!(
            answered_with(&gone, "ROUTEID=.n2", later),
            ("n1".into(), cookie("n1"))
        );
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
