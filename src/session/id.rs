//! Session ids, routes and the session cookie.
//!
//! A [`SessionId`] is the cluster-wide key of a session: every node stores and replicates it
//! under the bare 128-bit id, never with a route attached. The route (`ID.n2`, Tomcat's jvmRoute
//! form) only steers load-balancer stickiness and may change on failover without the session
//! changing. Everything here reads hostile client input, so nothing errors or panics: a value
//! that does not parse simply means "no session", and the caller makes a new one.

use std::error::Error;
use std::fmt;
use std::str::FromStr;

/// Length of a session id in bytes.
const ID_LEN: usize = 16;
/// Length of a session id written as hex digits.
const HEX_LEN: usize = ID_LEN * 2;
/// Longest route accepted in a cookie value.
const MAX_ROUTE_LEN: usize = 64;
/// Upper-case hex digits, indexed by nibble.
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// 128 bits from the operating system's CSPRNG; the cluster-wide key of a session (no route).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// From the OS CSPRNG: `rand::rngs::OsRng` via `rand::TryRngCore::try_fill_bytes`; if that
    /// fails, fall back to `rand::rng()` (`ThreadRng`, itself OS-seeded).
    #[must_use]
    pub fn random() -> SessionId {
        use rand::TryRngCore as _;
        let mut b = [0u8; ID_LEN];
        if rand::rngs::OsRng.try_fill_bytes(&mut b).is_err() {
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
        }
        SessionId(b)
    }

    /// Wraps 16 raw bytes.
    #[must_use]
    pub const fn from_bytes(b: [u8; 16]) -> SessionId {
        SessionId(b)
    }

    /// The 16 raw bytes (as sent on the wire).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// From exactly 16 bytes (e.g. off the wire); None otherwise.
    #[must_use]
    pub fn from_slice(b: &[u8]) -> Option<SessionId> {
        <[u8; ID_LEN]>::try_from(b).ok().map(SessionId)
    }

    /// 32 hex digits, upper or lower case accepted; anything else None.
    #[must_use]
    pub fn parse_hex(s: &str) -> Option<SessionId> {
        // Work on bytes: every accepted byte is ASCII, so a multi-byte character anywhere
        // simply fails the digit check and no &str is ever sliced.
        let digits = s.as_bytes();
        if digits.len() != HEX_LEN {
            return None;
        }
        let mut out = [0u8; ID_LEN];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0])?;
            let lo = hex_value(pair[1])?;
            *byte = (hi << 4) | lo;
        }
        Some(SessionId(out))
    }

    /// The id as 32 upper-case ASCII hex digits.
    fn hex_upper(&self) -> [u8; HEX_LEN] {
        let mut out = [0u8; HEX_LEN];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0.iter()) {
            pair[0] = HEX_UPPER[usize::from(b >> 4)];
            pair[1] = HEX_UPPER[usize::from(b & 0x0f)];
        }
        out
    }
}

/// The value of one ASCII hex digit, either case.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex_upper();
        let s = std::str::from_utf8(&hex).map_err(|_| fmt::Error)?;
        f.pad(s)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not 32 hex digits.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct InvalidSessionId;

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid session id: expected 32 hex digits")
    }
}

impl Error for InvalidSessionId {}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<SessionId, InvalidSessionId> {
        SessionId::parse_hex(s).ok_or(InvalidSessionId)
    }
}

/// What the client sent: the id and, if present, the route after the last '.'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieValue {
    /// The cluster-wide session key.
    pub id: SessionId,
    /// The route of the node that last issued the cookie, if the value carried one.
    pub route: Option<String>,
}

/// Whether `route` is 1..=64 of `[A-Za-z0-9_-]`.
fn is_valid_route(route: &str) -> bool {
    (1..=MAX_ROUTE_LEN).contains(&route.len())
        && route
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Parses a session cookie value such as `4DD0340CE6294FF2BBE802CD4CD039EC.n2` (Tomcat jvmRoute
/// form) or `4DD0340CE6294FF2BBE802CD4CD039EC` (no route). The route is everything after the
/// LAST '.', and must be 1..=64 of [A-Za-z0-9_-] else the whole value is rejected (None). The id
/// part must be exactly 32 hex digits. Surrounding double quotes (RFC 6265 quoted cookie value)
/// are allowed. Never panics on any input.
#[must_use]
pub fn parse_cookie_value(value: &str) -> Option<CookieValue> {
    // '"' and '.' are ASCII, so strip_* and split_at at rfind('.') stay on char boundaries.
    let value = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => value,
    };
    let (id, route) = match value.rfind('.') {
        Some(dot) => {
            let (id, dot_and_route) = value.split_at(dot);
            let route = dot_and_route.get(1..)?;
            if !is_valid_route(route) {
                return None;
            }
            (id, Some(route.to_owned()))
        }
        None => (value, None),
    };
    Some(CookieValue {
        id: SessionId::parse_hex(id)?,
        route,
    })
}

/// The value to send: `ID.route` (ID upper-case hex).
#[must_use]
pub fn cookie_value(id: SessionId, route: &str) -> String {
    format!("{id}.{route}")
}

/// The whole Set-Cookie header value: `{name}={ID}.{route}; Path=/; HttpOnly; SameSite=Lax`.
#[must_use]
pub fn set_cookie_header(name: &str, id: SessionId, route: &str) -> String {
    format!("{name}={id}.{route}; Path=/; HttpOnly; SameSite=Lax")
}

/// Finds the session cookie `name` in the values of all `Cookie` request headers (a request may
/// carry several Cookie headers, each `a=b; c=d`), and returns the first one that parses.
/// Cookie names compare case-sensitively; whitespace around pairs is ignored; pairs without '='
/// and garbage (non-UTF-8 is already excluded by the &str type) are skipped; never panics.
#[must_use]
pub fn find_in_cookie_headers<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<CookieValue> {
    cookies_in_headers(headers, name).next()
}

/// Every session cookie `name` that parses, in the order of the `Cookie` headers and of
/// the pairs within each: a node tries them in turn for one that names a live session.
pub fn cookies_in_headers<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> impl Iterator<Item = CookieValue> {
    headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(move |(n, _)| n.trim() == name)
        .filter_map(|(_, v)| parse_cookie_value(v.trim()))
}

/// Finds `;jsessionid=VALUE` (path parameter, name matched case-insensitively, as Tomcat's URL
/// rewriting) in a request path, e.g. `/cart;jsessionid=4DD0...EC.n2?x=1` → the parsed value;
/// the value ends at '?', '#', '/' or ';'. None when absent or when the value does not parse.
///
/// Only the path is searched (the query string and fragment are not). If the parameter occurs
/// more than once, the first occurrence whose value parses wins.
#[must_use]
pub fn find_in_path(path_and_query: &str) -> Option<CookieValue> {
    const PARAM: &[u8] = b";jsessionid=";
    let is_end = |c: u8| matches!(c, b'?' | b'#' | b'/' | b';');

    let bytes = path_and_query.as_bytes();
    let path_end = bytes
        .iter()
        .position(|&c| c == b'?' || c == b'#')
        .unwrap_or(bytes.len());
    let path = bytes.get(..path_end)?;

    let mut from = 0;
    while let Some(rest) = path.get(from..) {
        let at = rest
            .windows(PARAM.len())
            .position(|w| w.eq_ignore_ascii_case(PARAM))?;
        let start = from + at + PARAM.len();
        let len = path
            .get(start..)?
            .iter()
            .position(|&c| is_end(c))
            .unwrap_or(path.len() - start);
        // `start` follows an ASCII match and `start + len` is an ASCII delimiter or the end of
        // the path, so both are char boundaries; `get` keeps this panic-free regardless.
        if let Some(found) = path_and_query
            .get(start..start + len)
            .and_then(parse_cookie_value)
        {
            return Some(found);
        }
        from = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const ID: &str = "4DD0340CE6294FF2BBE802CD4CD039EC";
    const ID_BYTES: [u8; 16] = [
        0x4D, 0xD0, 0x34, 0x0C, 0xE6, 0x29, 0x4F, 0xF2, 0xBB, 0xE8, 0x02, 0xCD, 0x4C, 0xD0, 0x39,
        0xEC,
    ];
    const OTHER: &str = "0123456789ABCDEF0123456789ABCDEF";

    fn id() -> SessionId {
        SessionId::from_bytes(ID_BYTES)
    }

    fn cv(id: SessionId, route: Option<&str>) -> Option<CookieValue> {
        Some(CookieValue {
            id,
            route: route.map(str::to_owned),
        })
    }

    #[test]
    fn a_thousand_random_ids_are_all_distinct() {
        let ids: HashSet<SessionId> = (0..1000).map(|_| SessionId::random()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn display_is_32_upper_case_hex_digits_that_parse_back() {
        for _ in 0..100 {
            let id = SessionId::random();
            let s = id.to_string();
            assert_eq!(s.len(), 32);
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            );
            assert_eq!(SessionId::parse_hex(&s), Some(id));
            assert_eq!(s.parse::<SessionId>(), Ok(id));
            assert_eq!(format!("{id:?}"), s);
        }
    }

    #[test]
    fn display_of_known_bytes_is_the_expected_hex() {
        assert_eq!(id().to_string(), ID);
        assert_eq!(SessionId::from_bytes([0; 16]).to_string(), "0".repeat(32));
        assert_eq!(
            SessionId::from_bytes([0xff; 16]).to_string(),
            "F".repeat(32)
        );
    }

    #[test]
    fn parse_hex_accepts_either_case_and_rejects_everything_else() {
        assert_eq!(SessionId::parse_hex(ID), Some(id()));
        assert_eq!(SessionId::parse_hex(&ID.to_lowercase()), Some(id()));
        assert_eq!(SessionId::parse_hex(&ID[..31]), None);
        assert_eq!(SessionId::parse_hex(&format!("{ID}0")), None);
        assert_eq!(SessionId::parse_hex(&format!("{}G", &ID[..31])), None);
        assert_eq!(SessionId::parse_hex(&format!(" {}", &ID[..31])), None);
        assert_eq!(SessionId::parse_hex(&format!("+{}", &ID[..31])), None);
        assert_eq!(SessionId::parse_hex(""), None);
        assert_eq!("nope".parse::<SessionId>(), Err(InvalidSessionId));
        assert!(!InvalidSessionId.to_string().is_empty());
    }

    #[test]
    fn from_slice_takes_exactly_sixteen_bytes() {
        assert_eq!(SessionId::from_slice(&ID_BYTES), Some(id()));
        assert_eq!(SessionId::from_slice(&ID_BYTES[..15]), None);
        assert_eq!(SessionId::from_slice(&[0u8; 17]), None);
        assert_eq!(SessionId::from_slice(&[]), None);
        assert_eq!(id().as_bytes(), &ID_BYTES);
    }

    #[test]
    fn a_cookie_value_with_a_route_parses_into_id_and_route() {
        assert_eq!(
            parse_cookie_value(&format!("{ID}.n2")),
            cv(id(), Some("n2"))
        );
    }

    #[test]
    fn a_cookie_value_without_a_route_parses_into_the_id_alone() {
        assert_eq!(parse_cookie_value(ID), cv(id(), None));
    }

    #[test]
    fn a_quoted_cookie_value_is_accepted() {
        assert_eq!(
            parse_cookie_value(&format!("\"{ID}.n2\"")),
            cv(id(), Some("n2"))
        );
        assert_eq!(parse_cookie_value(&format!("\"{ID}\"")), cv(id(), None));
    }

    #[test]
    fn unbalanced_or_lone_quotes_are_rejected() {
        assert_eq!(parse_cookie_value(&format!("\"{ID}.n2")), None);
        assert_eq!(parse_cookie_value(&format!("{ID}.n2\"")), None);
        assert_eq!(parse_cookie_value("\""), None);
        assert_eq!(parse_cookie_value("\"\""), None);
        assert_eq!(parse_cookie_value(&format!("\"\"{ID}\"\"")), None);
    }

    #[test]
    fn lower_case_hex_is_accepted() {
        assert_eq!(
            parse_cookie_value(&format!("{}.n1", ID.to_lowercase())),
            cv(id(), Some("n1"))
        );
    }

    #[test]
    fn routes_may_contain_dashes_and_underscores() {
        assert_eq!(
            parse_cookie_value(&format!("{ID}.node-1_a")),
            cv(id(), Some("node-1_a"))
        );
        assert_eq!(parse_cookie_value(&format!("{ID}.-")), cv(id(), Some("-")));
        let longest = "r".repeat(64);
        assert_eq!(
            parse_cookie_value(&format!("{ID}.{longest}")),
            cv(id(), Some(&longest))
        );
    }

    #[test]
    fn only_the_last_dot_separates_the_route() {
        assert_eq!(parse_cookie_value("AAAA.BBBB.n1"), None);
        assert_eq!(parse_cookie_value(&format!("AAAA.{ID}.n1")), None);
        assert_eq!(
            parse_cookie_value(&format!("{}.{}.n1", &ID[..16], &ID[16..])),
            None
        );
        assert_eq!(parse_cookie_value(&format!("{ID}.n1.n2")), None);
    }

    #[test]
    fn hostile_cookie_values_give_none() {
        let e = "é".repeat(32);
        let hostile: Vec<String> = vec![
            String::new(),
            ID[..31].to_owned(),
            format!("{ID}0"),
            format!("{ID}0.n1"),
            format!("{}.n1", &ID[..31]),
            format!("{}Z", &ID[..31]),
            "G".repeat(32),
            format!("{ID}.{}", "r".repeat(65)),
            format!("{ID}."),
            format!("{ID}.n 1"),
            format!("{ID}.n;1"),
            format!("{ID}.nœud"),
            format!("{ID}.n\u{0}"),
            format!("{ID}.n\r\n"),
            format!("{ID}.\u{7f}"),
            format!(" {ID}.n1"),
            format!("{ID}.n1 "),
            ".".to_owned(),
            "..".to_owned(),
            ".".repeat(33),
            format!(".{ID}"),
            format!("{ID}.."),
            e.clone(),
            format!("a{e}"),
            format!("{}é", &ID[..31]),
            format!("{}é.n1", &ID[..31]),
            format!("é{}", &ID[..31]),
            format!("{e}.n1"),
            format!("{ID}.{e}"),
            "\u{1F600}".repeat(8),
            format!("{}\u{1F600}", &ID[..29]),
            "\"".repeat(34),
        ];
        for value in &hostile {
            assert_eq!(parse_cookie_value(value), None, "{value:?}");
            assert_eq!(SessionId::parse_hex(value), None, "{value:?}");
        }
    }

    #[test]
    fn cookie_value_is_upper_case_id_dot_route() {
        assert_eq!(cookie_value(id(), "n2"), format!("{ID}.n2"));
    }

    #[test]
    fn set_cookie_header_is_the_exact_tomcat_style_string() {
        assert_eq!(
            set_cookie_header("JSESSIONID", id(), "n2"),
            "JSESSIONID=4DD0340CE6294FF2BBE802CD4CD039EC.n2; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_several_headers_and_pairs() {
        let first = "a=b; theme=dark".to_owned();
        let second = format!("lang=en; JSESSIONID={ID}.n2; z=1");
        let headers = [first.as_str(), second.as_str()];
        assert_eq!(
            find_in_cookie_headers(headers, "JSESSIONID"),
            cv(id(), Some("n2"))
        );
    }

    #[test]
    fn the_first_valid_duplicate_wins() {
        let one = format!("JSESSIONID={ID}.n1; JSESSIONID={OTHER}.n2");
        let two = format!("JSESSIONID={OTHER}.n3");
        assert_eq!(
            find_in_cookie_headers([one.as_str(), two.as_str()], "JSESSIONID"),
            cv(id(), Some("n1"))
        );
        assert_eq!(
            find_in_cookie_headers([two.as_str(), one.as_str()], "JSESSIONID"),
            cv(SessionId::parse_hex(OTHER).unwrap(), Some("n3"))
        );
    }

    #[test]
    fn whitespace_around_pairs_is_ignored() {
        let header = format!("  a=b ;\t JSESSIONID = {ID}.n2 \t;c=d");
        assert_eq!(
            find_in_cookie_headers([header.as_str()], "JSESSIONID"),
            cv(id(), Some("n2"))
        );
    }

    #[test]
    fn pairs_without_an_equals_sign_are_skipped() {
        let header = format!("JSESSIONID; garbage;;; =; JSESSIONID={ID}");
        assert_eq!(
            find_in_cookie_headers([header.as_str()], "JSESSIONID"),
            cv(id(), None)
        );
    }

    #[test]
    fn cookies_with_similar_names_are_not_the_session_cookie() {
        let header = format!(
            "XJSESSIONID={OTHER}.x; JSESSIONIDX={OTHER}.y; jsessionid={OTHER}.z; JSESSIONID={ID}.n1"
        );
        assert_eq!(
            find_in_cookie_headers([header.as_str()], "JSESSIONID"),
            cv(id(), Some("n1"))
        );
        let only_similar = format!("XJSESSIONID={ID}.n1; jsessionid={ID}.n1");
        assert_eq!(
            find_in_cookie_headers([only_similar.as_str()], "JSESSIONID"),
            None
        );
    }

    #[test]
    fn a_bad_session_cookie_is_skipped_for_a_later_good_one() {
        let header = format!("JSESSIONID=garbage.n1; JSESSIONID={ID}.n2");
        assert_eq!(
            find_in_cookie_headers([header.as_str()], "JSESSIONID"),
            cv(id(), Some("n2"))
        );
        let bad = "JSESSIONID=é.é; JSESSIONID=";
        let good = format!("JSESSIONID=\"{ID}\"");
        assert_eq!(
            find_in_cookie_headers([bad, good.as_str()], "JSESSIONID"),
            cv(id(), None)
        );
    }

    #[test]
    fn no_headers_or_no_session_cookie_gives_none() {
        assert_eq!(find_in_cookie_headers([], "JSESSIONID"), None);
        assert_eq!(find_in_cookie_headers([""], "JSESSIONID"), None);
        assert_eq!(
            find_in_cookie_headers(["a=b; c=d", ";;;", "="], "JSESSIONID"),
            None
        );
        assert_eq!(
            find_in_cookie_headers(["JSESSIONID=nope"], "JSESSIONID"),
            None
        );
    }

    #[test]
    fn the_path_parameter_is_found_with_and_without_a_query() {
        assert_eq!(
            find_in_path(&format!("/cart;jsessionid={ID}.n2?x=1")),
            cv(id(), Some("n2"))
        );
        assert_eq!(
            find_in_path(&format!("/cart;jsessionid={ID}.n2")),
            cv(id(), Some("n2"))
        );
        assert_eq!(
            find_in_path(&format!("/cart;jsessionid={ID}#top")),
            cv(id(), None)
        );
    }

    #[test]
    fn the_path_parameter_name_is_case_insensitive() {
        assert_eq!(
            find_in_path(&format!("/cart;JSESSIONID={ID}.n2")),
            cv(id(), Some("n2"))
        );
        assert_eq!(
            find_in_path(&format!("/cart;JSessionId={ID}.n2?a=b")),
            cv(id(), Some("n2"))
        );
    }

    #[test]
    fn the_path_parameter_value_ends_at_a_slash_or_semicolon() {
        assert_eq!(
            find_in_path(&format!("/a;jsessionid={ID}.n2/more?x=1")),
            cv(id(), Some("n2"))
        );
        assert_eq!(
            find_in_path(&format!("/a;jsessionid={ID}.n2;other=1")),
            cv(id(), Some("n2"))
        );
    }

    #[test]
    fn an_absent_path_parameter_gives_none() {
        assert_eq!(find_in_path(""), None);
        assert_eq!(find_in_path("/"), None);
        assert_eq!(find_in_path("/cart?x=1"), None);
        assert_eq!(find_in_path("/cart;jsessionid"), None);
        assert_eq!(find_in_path(&format!("/cart;sessionid={ID}")), None);
        assert_eq!(find_in_path(&format!("/cart?;jsessionid={ID}.n1")), None);
        assert_eq!(find_in_path(&format!("/cart#;jsessionid={ID}.n1")), None);
    }

    #[test]
    fn a_bad_path_parameter_value_gives_none() {
        assert_eq!(find_in_path("/cart;jsessionid="), None);
        assert_eq!(find_in_path("/cart;jsessionid=?x=1"), None);
        assert_eq!(find_in_path("/cart;jsessionid=nope.n1"), None);
        assert_eq!(find_in_path(&format!("/cart;jsessionid={ID}.")), None);
        assert_eq!(
            find_in_path(&format!("/cart;jsessionid={}é", &ID[..31])),
            None
        );
        assert_eq!(find_in_path(&format!("/cart;jsessionid={ID}.nœud")), None);
    }

    #[test]
    fn a_later_good_path_parameter_is_used_after_a_bad_one() {
        assert_eq!(
            find_in_path(&format!("/a;jsessionid=bad/b;jsessionid={ID}.n3")),
            cv(id(), Some("n3"))
        );
    }

    proptest! {
        #[test]
        fn parse_cookie_value_never_panics(s in any::<String>()) {
            let _ = parse_cookie_value(&s);
        }

        #[test]
        fn find_in_cookie_headers_never_panics(
            headers in proptest::collection::vec(any::<String>(), 0..4),
            name in any::<String>(),
        ) {
            let _ = find_in_cookie_headers(headers.iter().map(String::as_str), &name);
            let _ = find_in_cookie_headers(headers.iter().map(String::as_str), "JSESSIONID");
        }

        #[test]
        fn find_in_path_never_panics(s in any::<String>()) {
            let _ = find_in_path(&s);
            let _ = find_in_path(&format!(";jsessionid={s}"));
        }

        #[test]
        fn hostile_looking_cookie_values_never_panic(
            s in "[\"0-9A-Fa-f.é\u{1F600};= \\-_]{0,80}",
        ) {
            let _ = parse_cookie_value(&s);
            let _ = find_in_cookie_headers([format!("JSESSIONID={s}").as_str()], "JSESSIONID");
            let _ = find_in_path(&format!("/p;JSESSIONID={s}?q"));
        }

        #[test]
        fn cookie_value_round_trips_for_any_id_and_valid_route(
            bytes in any::<[u8; 16]>(),
            route in "[A-Za-z0-9_-]{1,64}",
        ) {
            let id = SessionId::from_bytes(bytes);
            let value = cookie_value(id, &route);
            prop_assert_eq!(
                parse_cookie_value(&value),
                Some(CookieValue { id, route: Some(route.clone()) })
            );
            let header = set_cookie_header("JSESSIONID", id, &route);
            let pair = header.split(';').next().unwrap_or_default();
            prop_assert_eq!(
                find_in_cookie_headers([pair], "JSESSIONID"),
                Some(CookieValue { id, route: Some(route.clone()) })
            );
            prop_assert_eq!(
                find_in_path(&format!("/x;jsessionid={value}/y?z")),
                Some(CookieValue { id, route: Some(route) })
            );
        }
    }
}
