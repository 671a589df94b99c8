//! The balancer's one rulebook: what a proxied request and its answer may carry across,
//! which member a request belongs to, when an attempt may go again, and the one-line
//! answers of the balancer itself. Both ways of forwarding (the fast path over raw
//! sockets and the hyper path) ask these functions, so that a request is treated the same
//! whichever way it takes. Pure: names and values in, small values out; no sockets, no
//! clock, no allocation on the paths a request takes.
//!
//! - [`fields`]: hop-by-hop fields, `Connection` tokens, the fields this hop adds
//!   (`X-Forwarded-*`, `Via`);
//! - [`sticky`]: the member a request is sticky to (session route, hashed key);
//! - [`framing`]: how a member's answer is framed, or why it is in doubt (502); the
//!   Host a request has, the methods never forwarded;
//! - [`refusal`]: the balancer's own answers (502, 503, 504, 408, ...), one line each;
//! - [`stepper`]: the attempts of one request: which member next, once more on a fresh
//!   connection, pass the answer on, tunnel, or answer the client.

pub mod fields;
pub mod framing;
pub mod refusal;
pub mod stepper;
pub mod sticky;

pub use fields::Peer;
pub use refusal::Refusal;

/// The largest request header fields, in bytes (names, values and separators): more is 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Request bodies up to this size (with a known length) are kept so the request can be
/// sent again to another member; larger ones stream and are never retried.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// The largest request body forwarded: a larger declared length is answered 413, a
/// chunked body that grows past it is cut off.
pub const MAX_BODY: u64 = 64 * 1024 * 1024;

/// The size of header fields as the limit counts them: name, value, `: ` and CRLF.
pub fn field_size(name: &str, value: &[u8]) -> usize {
    name.len() + value.len() + 4
}

/// Whether header fields of this total size (see [`field_size`]) are too large (431).
pub fn headers_too_large(size: usize) -> bool {
    size > MAX_HEADER_BYTES
}

/// Whether a declared body length is over [`MAX_BODY`] (413).
pub fn body_too_large(declared: Option<u64>) -> bool {
    declared.is_some_and(|len| len > MAX_BODY)
}

/// What is wrong with a request's `Host` fields, given how many it has and the value of
/// the last: HTTP/1.1 requires exactly one, no request may carry two, and its value must
/// be a host (RFC 9112 §3.2: answered 400; see [`framing::valid_host`]).
pub fn host_problem(http_1_1: bool, hosts: usize, value: &[u8]) -> Option<Refusal> {
    match hosts {
        0 if http_1_1 => Some(Refusal::NoHost),
        0 => None,
        1 if framing::valid_host(value) => None,
        1 => Some(Refusal::BadHost),
        _ => Some(Refusal::SeveralHosts),
    }
}

/// Whether a method may be sent twice (RFC 9110 §9.2.2; the ones retried on another
/// member after they may have reached the first).
pub fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_over_32_kib_are_too_large() {
        assert_eq!(field_size("host", b"x"), 9);
        assert!(!headers_too_large(MAX_HEADER_BYTES));
        assert!(headers_too_large(MAX_HEADER_BYTES + 1));
    }

    #[test]
    fn a_declared_body_over_the_limit_is_too_large() {
        assert!(!body_too_large(None));
        assert!(!body_too_large(Some(MAX_BODY)));
        assert!(body_too_large(Some(MAX_BODY + 1)));
    }

    #[test]
    fn a_request_needs_one_host_and_http_1_0_may_have_none() {
        assert_eq!(host_problem(true, 1, b"h"), None);
        assert_eq!(host_problem(false, 1, b"h:80"), None);
        assert_eq!(host_problem(false, 0, b""), None);
        assert_eq!(host_problem(true, 0, b""), Some(Refusal::NoHost));
        assert_eq!(host_problem(true, 2, b"h"), Some(Refusal::SeveralHosts));
        assert_eq!(host_problem(false, 2, b"h"), Some(Refusal::SeveralHosts));
        assert_eq!(host_problem(true, 1, b"a, b"), Some(Refusal::BadHost));
    }

    #[test]
    fn only_the_safe_and_idempotent_methods_may_be_sent_twice() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert!(idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get"] {
            assert!(!idempotent(m), "{m}");
        }
    }
}
