//! How a message's body is delimited (RFC 9112 §6), and what of a request's head may
//! cross the balancer at all: one reading of each, which both ways of forwarding ask, so
//! that a member's answer whose framing is in doubt is passed on the same way, or refused
//! the same way, whichever way its request took.
//!
//! An answer's framing, as nginx and HAProxy read it: `Transfer-Encoding` wins over
//! `Content-Length` (RFC 9112 §6.3, 3.), the `Content-Length` is not passed on, and the
//! member connection is not used again, since the member and the balancer may disagree
//! on where the answer ended (HAProxy's "T-E + C-L: force close and remove C-L"). A
//! transfer coding other than a single `chunked` was not asked for (the balancer sends no
//! `TE`) and is refused as nginx does, as are a malformed or conflicting length, a
//! `Transfer-Encoding` in HTTP/1.0 (§6.1) and a `101` nobody asked for: 502.

use std::fmt;

use super::Refusal;

/// How the body of a member's answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// There is none (an answer to HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// With the connection.
    UntilClose,
}

/// How an answer is framed, and what that leaves of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub body: Body,
    /// Its `Content-Length` goes on to the client: false when `Transfer-Encoding` won.
    pub length_passed: bool,
    /// The member connection may carry another request afterwards, as far as the framing
    /// says (its `Connection` field may still close it).
    pub reusable: bool,
}

/// Why an answer's framing is in doubt: it is not passed on (502).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doubt {
    /// A `101` to a request that asked for no upgrade (RFC 9110 §15.2.2), or to a
    /// protocol it did not ask for (§7.8: the server "MUST NOT switch to a protocol that
    /// was not indicated by the client").
    UnrequestedSwitch,
    /// A `Content-Length` that is not a number.
    BadLength,
    /// Two `Content-Length` values that differ.
    ConflictingLengths,
    /// A transfer coding other than one `chunked`.
    UnknownCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 answer (RFC 9112 §6.1).
    CodingInHttp10,
}

impl Doubt {
    /// What is wrong, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Doubt::UnrequestedSwitch => "switching protocols without an upgrade asked",
            Doubt::BadLength => "bad content-length",
            Doubt::ConflictingLengths => "conflicting content-length",
            Doubt::UnknownCoding => "a transfer coding other than chunked",
            Doubt::CodingInHttp10 => "transfer-encoding in HTTP/1.0",
        }
    }
}

impl fmt::Display for Doubt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the request asked that decides how its answer is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Asked<'a> {
    /// `HEAD`: the answer has no body whatever its fields say.
    pub head: bool,
    /// The protocols it asked to switch to (its `Upgrade` field, with `Connection:
    /// upgrade`): a `101` to one of them is its answer.
    pub upgrade: Option<&'a [u8]>,
}

/// The framing fields of an answer head, gathered one field at a time (no allocation):
/// each path feeds it the fields it parsed, then asks [`AnswerFields::framing`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerFields<'a> {
    asked: Asked<'a>,
    /// The answer's `Upgrade` named only protocols asked for (and was there).
    switch_asked: Option<bool>,
    length: Option<u64>,
    doubt: Option<Doubt>,
    /// `Transfer-Encoding` fields seen.
    codings_fields: bool,
    /// Transfer codings listed so far, and whether the first was `chunked`.
    codings: u32,
    chunked_first: bool,
}

impl<'a> AnswerFields<'a> {
    /// The fields of the answer to a request that asked `asked`.
    pub fn new(asked: Asked<'a>) -> AnswerFields<'a> {
        AnswerFields {
            asked,
            ..AnswerFields::default()
        }
    }

    /// Notes one header field (any: those that do not frame the body are skipped).
    pub fn field(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("upgrade") {
            let asked = self.asked.upgrade.unwrap_or_default();
            let named =
                protocols(value).all(|p| protocols(asked).any(|a| a.eq_ignore_ascii_case(p)));
            self.switch_asked = Some(self.switch_asked.unwrap_or(true) && named);
        } else if name.eq_ignore_ascii_case("content-length") {
            match content_length(value) {
                Some(n) if self.length.is_some_and(|l| l != n) => {
                    self.doubt.get_or_insert(Doubt::ConflictingLengths);
                }
                Some(n) => self.length = Some(n),
                None => {
                    self.doubt.get_or_insert(Doubt::BadLength);
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.codings_fields = true;
            for coding in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() {
                    continue;
                }
                if self.codings == 0 {
                    self.chunked_first = coding.eq_ignore_ascii_case(b"chunked");
                }
                self.codings = self.codings.saturating_add(1);
            }
        }
    }

    /// How the answer with these fields, `status` and version (`http_1_0`) is framed; or
    /// why it is in doubt.
    pub fn framing(&self, status: u16, http_1_0: bool) -> Result<Framing, Doubt> {
        let asked = self.asked;
        if status == 101 {
            if asked.upgrade.is_none() || self.switch_asked != Some(true) {
                return Err(Doubt::UnrequestedSwitch);
            }
            return Ok(Framing {
                body: Body::None,
                length_passed: true,
                reusable: false,
            });
        }
        if let Some(doubt) = self.doubt {
            return Err(doubt);
        }
        let chunked = if self.codings_fields {
            if http_1_0 {
                return Err(Doubt::CodingInHttp10);
            }
            if self.codings != 1 || !self.chunked_first {
                return Err(Doubt::UnknownCoding);
            }
            true
        } else {
            false
        };
        let body = if asked.head || (100..200).contains(&status) || status == 204 || status == 304 {
            Body::None
        } else if chunked {
            Body::Chunked
        } else {
            match self.length {
                Some(n) => Body::Length(n),
                None => Body::UntilClose,
            }
        };
        let both = chunked && self.length.is_some();
        Ok(Framing {
            body,
            length_passed: !chunked,
            reusable: !both && body != Body::UntilClose,
        })
    }
}

/// The protocols of an `Upgrade` value, without blanks.
fn protocols(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// A `Content-Length` value: digits only, blanks around them allowed (RFC 9110 §8.6).
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether a `Host` value is a host and an optional port (RFC 9110 §7.2, RFC 3986 §3.2.2):
/// a name (letters, digits, `-._~`, `%` escapes and the sub-delimiters but the comma) or
/// a bracketed IP literal, then `:` and digits. Empty is allowed (a target without an
/// authority). A comma is refused though RFC 3986 allows it in a name: no DNS name has
/// one, and to a member that folds fields into lists, `Host: a, b` reads as two Hosts.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let name_ok = host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            )
    });
    name_ok && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// What the Host of a request with this target is: for the absolute form
/// (`http://other.example/x`), the target's authority, which replaces any `Host` field
/// (RFC 9112 §3.2.2: a proxy "MUST ignore the received Host header field" and generate
/// it from the target, so that the balancer and the member cannot disagree on it); None
/// for the origin form, whose `Host` stands. An absolute target of another scheme than
/// http(s), without a host, with userinfo (RFC 9110 §4.2.4: an error), or whose authority
/// is not a host, is refused.
pub fn target_host<'a>(
    scheme: Option<&str>,
    authority: Option<&'a str>,
) -> Result<Option<&'a str>, Refusal> {
    match (scheme, authority) {
        (None, None) => Ok(None),
        (Some(scheme), Some(authority))
            if (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && !authority.is_empty()
                && !authority.contains('@')
                && valid_host(authority.as_bytes()) =>
        {
            Ok(Some(authority))
        }
        _ => Err(Refusal::BadTarget),
    }
}

/// The answer to a method the balancer never forwards: `CONNECT` would make it an open
/// tunnel to anywhere its members can reach (405, RFC 9110 §15.5.6).
pub fn method_refused(method: &str) -> Option<Refusal> {
    method
        .eq_ignore_ascii_case("CONNECT")
        .then_some(Refusal::MethodNotAllowed)
}

/// The methods a 405 lists in `Allow`: those a member is asked with.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4): a client with prior
/// knowledge of HTTP/2, which this HTTP/1.1 balancer answers 505 rather than close silently.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Whether `read` (a connection's first bytes, which did not parse as HTTP/1.1) is the
/// HTTP/2 preface.
pub fn http2_preface(read: &[u8]) -> bool {
    read.starts_with(HTTP2_PREFACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(pairs: &[(&str, &str)], asked: Asked<'a>) -> AnswerFields<'a> {
        let mut f = AnswerFields::new(asked);
        for (n, v) in pairs {
            f.field(n, v.as_bytes());
        }
        f
    }

    const GET: Asked = Asked {
        head: false,
        upgrade: None,
    };

    fn framing(pairs: &[(&str, &str)], status: u16) -> Result<Framing, Doubt> {
        fields(pairs, GET).framing(status, false)
    }

    #[test]
    fn transfer_encoding_wins_over_a_length_which_is_dropped_and_the_connection_not_reused() {
        let both = framing(
            &[("Content-Length", "3"), ("Transfer-Encoding", "chunked")],
            200,
        )
        .unwrap();
        assert_eq!(
            both,
            Framing {
                body: Body::Chunked,
                length_passed: false,
                reusable: false
            }
        );
        let te = framing(&[("transfer-encoding", " Chunked ")], 200).unwrap();
        assert_eq!(
            te,
            Framing {
                body: Body::Chunked,
                length_passed: false,
                reusable: true
            }
        );
        let cl = framing(&[("content-length", "5")], 200).unwrap();
        assert_eq!(
            cl,
            Framing {
                body: Body::Length(5),
                length_passed: true,
                reusable: true
            }
        );
    }

    #[test]
    fn without_length_or_coding_the_body_ends_with_the_connection() {
        let f = framing(&[("server", "x")], 200).unwrap();
        assert_eq!(f.body, Body::UntilClose);
        assert!(!f.reusable);
    }

    #[test]
    fn answers_without_a_body_have_none_whatever_their_fields_say() {
        for status in [204, 304, 103] {
            assert_eq!(
                framing(&[("content-length", "9")], status).unwrap().body,
                Body::None
            );
        }
        let head = Asked {
            head: true,
            upgrade: None,
        };
        let f = fields(&[("content-length", "9")], head)
            .framing(200, false)
            .unwrap();
        assert_eq!(f.body, Body::None);
        assert!(f.reusable && f.length_passed);
    }

    #[test]
    fn doubtful_answers_are_refused() {
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Fields, u16, Doubt); 10] = [
            (&[], 101, Doubt::UnrequestedSwitch),
            (
                &[("content-length", "1"), ("content-length", "2")],
                200,
                Doubt::ConflictingLengths,
            ),
            (&[("content-length", "-1")], 200, Doubt::BadLength),
            (&[("content-length", "3, 3")], 200, Doubt::BadLength),
            (&[("content-length", "")], 200, Doubt::BadLength),
            (
                &[("content-length", "99999999999999999999999")],
                200,
                Doubt::BadLength,
            ),
            (&[("transfer-encoding", "gzip")], 200, Doubt::UnknownCoding),
            (
                &[("transfer-encoding", "gzip, chunked")],
                200,
                Doubt::UnknownCoding,
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                200,
                Doubt::UnknownCoding,
            ),
            (&[("transfer-encoding", "")], 200, Doubt::UnknownCoding),
        ];
        for (pairs, status, doubt) in cases {
            assert_eq!(framing(pairs, status), Err(doubt), "{pairs:?}");
        }
        let http10 = fields(
            &[("transfer-encoding", "chunked"), ("content-length", "3")],
            GET,
        );
        assert_eq!(http10.framing(200, true), Err(Doubt::CodingInHttp10));
        // Equal lengths twice are one length.
        assert_eq!(
            framing(&[("content-length", "2"), ("content-length", " 2")], 200)
                .unwrap()
                .body,
            Body::Length(2)
        );
    }

    #[test]
    fn a_switch_is_an_answer_only_to_a_request_that_asked_for_it() {
        let upgrade = Asked {
            head: false,
            upgrade: Some(b"websocket, h2c"),
        };
        let f = fields(&[("upgrade", "WebSocket")], upgrade)
            .framing(101, false)
            .unwrap();
        assert_eq!(f.body, Body::None);
        assert!(!f.reusable);
        for answered in [
            &[][..],
            &[("upgrade", "evil")],
            &[("upgrade", "websocket, evil")],
        ] {
            assert_eq!(
                fields(answered, upgrade).framing(101, false),
                Err(Doubt::UnrequestedSwitch),
                "{answered:?}"
            );
        }
        assert_eq!(
            fields(&[("upgrade", "websocket")], GET).framing(101, false),
            Err(Doubt::UnrequestedSwitch)
        );
    }

    #[test]
    fn a_host_is_a_name_or_an_ip_literal_and_a_port() {
        for good in [
            "",
            "shop.example",
            "shop.example:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "xn--bcher-kva.example",
            "under_score.example",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "a, b", "a,b", "a b", "a/b", "a:b", "[::1", "[::1]x", "[zz]", "a\tb", "a@b", "\"a\"",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn an_absolute_target_gives_the_host_and_odd_ones_are_refused() {
        assert_eq!(target_host(None, None), Ok(None));
        assert_eq!(
            target_host(Some("http"), Some("other.example")),
            Ok(Some("other.example"))
        );
        assert_eq!(
            target_host(Some("HTTPS"), Some("other.example:8443")),
            Ok(Some("other.example:8443"))
        );
        for (scheme, authority) in [
            (Some("ftp"), Some("other.example")),
            (Some("http"), Some("user@other.example")),
            (Some("http"), Some("")),
            (Some("http"), None),
            (None, Some("other.example:443")),
            (Some("http"), Some("a,b")),
        ] {
            assert_eq!(
                target_host(scheme, authority),
                Err(Refusal::BadTarget),
                "{scheme:?} {authority:?}"
            );
        }
    }

    #[test]
    fn connect_is_never_forwarded_and_the_preface_is_recognised() {
        assert_eq!(method_refused("CONNECT"), Some(Refusal::MethodNotAllowed));
        assert_eq!(method_refused("GET"), None);
        assert!(!ALLOW.contains("CONNECT"));
        assert!(http2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!http2_preface(b"PRI * HTTP/1.1\r\n\r\n"));
    }
}
