//! The balancer's own answers to a request it does not (or cannot) get a member's answer
//! for: a status and one line of text, the same on every path (SPEC: "a one-line text
//! body"). The line never carries a header or body value of the request.

use std::fmt;
use std::time::Duration;

/// The content type of every one-line answer.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Why the balancer answers a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 503: no member is usable.
    NoMember,
    /// 502: every member tried failed before it answered.
    NoAnswer,
    /// 502: the member failed after the request may have reached it, and it may not be
    /// sent again (not idempotent, or its body is gone).
    MemberFailed,
    /// 504: no answer head within the member timeout (not sent again: it may have acted).
    MemberTimedOut(Duration),
    /// 408: the client sent no more of its body within the member timeout.
    ClientTimedOut(Duration),
    /// 413: the body is over the balancer's limit.
    BodyTooLarge,
    /// 400: the body could not be read.
    BodyBroken,
    /// 431: the header fields are over their limit.
    HeadersTooLarge,
    /// 400: a request head that does not parse.
    MalformedHead,
    /// 414: a request target over its limit.
    TargetTooLong,
    /// 400: an HTTP/1.1 request without Host.
    NoHost,
    /// 400: more than one Host.
    SeveralHosts,
    /// 400: a Host that is not a host (`Host: a, b`).
    BadHost,
    /// 400: an absolute request target that cannot be forwarded (another scheme than
    /// http(s), userinfo, no host).
    BadTarget,
    /// 405: a method never forwarded (CONNECT); the answer lists the others in `Allow`.
    MethodNotAllowed,
    /// 505: the HTTP/2 connection preface, to an HTTP/1.1 balancer.
    Http2,
}

impl Refusal {
    /// The `Allow` field of the answer, for a 405 (RFC 9110 §15.5.6 requires one).
    pub fn allow(self) -> Option<&'static str> {
        (self == Refusal::MethodNotAllowed).then_some(super::framing::ALLOW)
    }

    /// Whether the client connection is closed after this answer: what follows a CONNECT
    /// or an HTTP/2 preface is not an HTTP/1.1 request.
    pub fn closes(self) -> bool {
        matches!(self, Refusal::MethodNotAllowed | Refusal::Http2)
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::NoMember => 503,
            Refusal::NoAnswer | Refusal::MemberFailed => 502,
            Refusal::MemberTimedOut(_) => 504,
            Refusal::ClientTimedOut(_) => 408,
            Refusal::BodyTooLarge => 413,
            Refusal::BodyBroken
            | Refusal::NoHost
            | Refusal::SeveralHosts
            | Refusal::BadHost
            | Refusal::BadTarget
            | Refusal::MalformedHead => 400,
            Refusal::MethodNotAllowed => 405,
            Refusal::Http2 => 505,
            Refusal::HeadersTooLarge => 431,
            Refusal::TargetTooLong => 414,
        }
    }

    /// The reason phrase of [`Refusal::status`].
    pub fn reason(self) -> &'static str {
        match self.status() {
            400 => "Bad Request",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "Gateway Timeout",
        }
    }
}

/// The line (without its newline).
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoMember => f.write_str("no member is available"),
            Refusal::NoAnswer => f.write_str("no member could answer"),
            Refusal::MemberFailed => f.write_str("the member failed to answer"),
            Refusal::MemberTimedOut(after) => {
                write!(f, "member did not answer within {} s", after.as_secs())
            }
            Refusal::ClientTimedOut(after) => write!(
                f,
                "request timeout: no more of the body came within {} s",
                after.as_secs()
            ),
            Refusal::BodyTooLarge => {
                f.write_str("payload too large: the body exceeds the balancer's limit")
            }
            Refusal::BodyBroken => f.write_str("bad request: the body could not be read"),
            Refusal::HeadersTooLarge => f.write_str("request header fields too large"),
            Refusal::MalformedHead => f.write_str("bad request: malformed request"),
            Refusal::TargetTooLong => f.write_str("URI too long"),
            Refusal::NoHost => f.write_str("bad request: an HTTP/1.1 request needs a Host header"),
            Refusal::SeveralHosts => f.write_str("bad request: more than one Host header"),
            Refusal::BadHost => f.write_str("bad request: the Host header is not a host"),
            Refusal::BadTarget => {
                f.write_str("bad request: the request target cannot be forwarded")
            }
            Refusal::MethodNotAllowed => {
                f.write_str("method not allowed: CONNECT is not forwarded")
            }
            Refusal::Http2 => {
                f.write_str("HTTP version not supported: this balancer speaks HTTP/1.1")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status_reason_and_one_line() {
        let second = Duration::from_secs(1);
        let all = [
            (Refusal::NoMember, 503, "no member is available"),
            (Refusal::NoAnswer, 502, "no member could answer"),
            (Refusal::MemberFailed, 502, "the member failed to answer"),
            (
                Refusal::MemberTimedOut(second * 60),
                504,
                "member did not answer within 60 s",
            ),
            (
                Refusal::ClientTimedOut(second),
                408,
                "request timeout: no more of the body came within 1 s",
            ),
            (
                Refusal::BodyTooLarge,
                413,
                "payload too large: the body exceeds the balancer's limit",
            ),
            (
                Refusal::BodyBroken,
                400,
                "bad request: the body could not be read",
            ),
            (
                Refusal::HeadersTooLarge,
                431,
                "request header fields too large",
            ),
            (
                Refusal::MalformedHead,
                400,
                "bad request: malformed request",
            ),
            (Refusal::TargetTooLong, 414, "URI too long"),
            (
                Refusal::NoHost,
                400,
                "bad request: an HTTP/1.1 request needs a Host header",
            ),
            (
                Refusal::SeveralHosts,
                400,
                "bad request: more than one Host header",
            ),
            (
                Refusal::BadHost,
                400,
                "bad request: the Host header is not a host",
            ),
            (
                Refusal::BadTarget,
                400,
                "bad request: the request target cannot be forwarded",
            ),
            (
                Refusal::MethodNotAllowed,
                405,
                "method not allowed: CONNECT is not forwarded",
            ),
            (
                Refusal::Http2,
                505,
                "HTTP version not supported: this balancer speaks HTTP/1.1",
            ),
        ];
        for (refusal, status, line) in all {
            assert_eq!(refusal.status(), status);
            assert_eq!(refusal.to_string(), line);
            assert!(!refusal.reason().is_empty());
            assert!(!line.contains('\n'));
        }
        assert_eq!(Refusal::NoMember.reason(), "Service Unavailable");
        assert_eq!(Refusal::NoAnswer.reason(), "Bad Gateway");
        assert_eq!(Refusal::MemberTimedOut(second).reason(), "Gateway Timeout");
        assert_eq!(Refusal::MethodNotAllowed.reason(), "Method Not Allowed");
        assert_eq!(Refusal::Http2.reason(), "HTTP Version Not Supported");
        assert!(
            Refusal::MethodNotAllowed
                .allow()
                .is_some_and(|a| a.contains("GET"))
        );
        assert!(Refusal::NoHost.allow().is_none());
        assert!(Refusal::Http2.closes() && Refusal::MethodNotAllowed.closes());
        assert!(!Refusal::NoHost.closes());
    }
}
