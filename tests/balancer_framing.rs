//! The framing of what crosses the balancer, seen byte for byte: members that answer with
//! doubtful framing (both `Content-Length` and `Transfer-Encoding`, a malformed chunk
//! before and after the head went on, a `101` nobody asked for) get the same treatment on
//! both paths — a plain GET takes the fast path, a POST or PUT the hyper path — and client
//! requests the balancer must not pass on as they came: CONNECT, an absolute-form target,
//! a Host that is not one, a GET with a chunked body, the HTTP/2 preface.

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::fake_member::{Behaviour, RawMember, echo_member};
use common::raw_http::{read_answers, read_until_closed};
use common::{BalancerProc, Cluster, FAST};

/// A balancer of its own cluster in front of the one member at `member` (`route=url`).
fn balancer_for(test: &str, member: &str) -> (Cluster, BalancerProc) {
    let cluster = Cluster::new(test);
    let mut args: Vec<OsString> = FAST.iter().map(OsString::from).collect();
    for a in ["--member", member, "--set", "balancer.discover=false"] {
        args.push(a.into());
    }
    let b = BalancerProc::spawn(&cluster, &args);
    (cluster, b)
}

/// The request of each path, closing the connection after its answer: a plain GET (the
/// fast path) and a POST with a body (the hyper path).
const PATHS: [(&str, &[u8]); 2] = [
    (
        "fast",
        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ),
    (
        "hyper",
        b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    ),
];

/// A whole answer as the client got it, up to the close.
struct Got {
    status: u16,
    /// The head, in the case it came in.
    head: String,
    body: Vec<u8>,
}

impl Got {
    fn of(raw: &[u8], what: &str) -> Got {
        let text = String::from_utf8_lossy(raw);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no answer head, got {text:?}"));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no status in {head:?}"));
        Got {
            status,
            head,
            body: raw[split + 4..].to_vec(),
        }
    }

    fn lower_head(&self) -> String {
        self.head.to_ascii_lowercase()
    }

    /// The field `name`'s value (the first), if any.
    fn field(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The body as the client reads it by the answer's framing: chunked, or the length
    /// declared (then exactly that many bytes came before the close); None if neither.
    fn payload(&self) -> Option<Vec<u8>> {
        if self
            .field("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            return dechunk(&self.body);
        }
        let length: usize = self.field("content-length")?.parse().ok()?;
        (self.body.len() == length).then(|| self.body.clone())
    }

    /// A one-line text answer of the balancer's own with this status.
    fn assert_one_line(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.head);
        assert!(
            self.lower_head().contains("content-type: text/plain"),
            "{what}: {}",
            self.head
        );
        let body = String::from_utf8_lossy(&self.body);
        assert!(body.ends_with('\n') && body.len() > 1, "{what}: {body:?}");
        assert_eq!(body.lines().count(), 1, "{what}: {body:?}");
    }
}

/// Sends `request` on a new connection and reads the answer until the balancer closes it.
fn answer(addr: SocketAddr, request: &[u8], what: &str) -> Got {
    let (raw, _) = read_until_closed(addr, request);
    Got::of(&raw, what)
}

/// The data of a chunked body; None when it does not parse or has no last chunk.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return body.starts_with(b"\r\n").then_some(data);
        }
        data.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The member's field `X-Member: 1` as it reached the client: the fast path passes the
/// member's fields byte for byte, hyper writes them in lower case. Shows which path took it.
fn assert_taken_by(got: &Got, path: &str) {
    let expected = if path == "fast" {
        "X-Member: 1"
    } else {
        "x-member: 1"
    };
    assert!(
        got.head.contains(expected),
        "not the {path} path: {}",
        got.head
    );
}

#[test]
fn an_answer_with_both_length_and_chunked_is_read_chunked_on_both_paths_and_its_connection_closed()
{
    let member = RawMember::start(Behaviour::Answers(
        b"HTTP/1.1 200 OK\r\nX-Member: 1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ));
    let (_cluster, b) = balancer_for("frame-clte", &member.member_arg("m"));
    let mut connections = 0;
    for (path, request) in PATHS {
        for _ in 0..2 {
            let got = answer(b.addr, request, path);
            assert_eq!(got.status, 200, "{path}: {}", got.head);
            assert_taken_by(&got, path);
            // hyper frames the body anew (with a length, when it came whole): what counts is
            // that the client reads `hello`, whole, not the 3 bytes the member claimed.
            assert_eq!(
                got.payload().as_deref(),
                Some(&b"hello"[..]),
                "{path}: {} {:?}",
                got.head,
                String::from_utf8_lossy(&got.body)
            );
            assert_ne!(got.field("content-length").as_deref(), Some("3"), "{path}");
        }
        // Each of the two answers had a connection of its own: the one whose framing was
        // in doubt is never used again.
        connections += 2;
        assert_eq!(member.accepted(), connections, "{path}");
    }
}

#[test]
fn a_malformed_chunk_is_502_before_the_head_went_out_and_a_cut_answer_after_on_both_paths() {
    let before = RawMember::start(Behaviour::Answers(
        b"HTTP/1.1 200 OK\r\nX-Member: 1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ));
    let (_c, b) = balancer_for("frame-badchunk", &before.member_arg("m"));
    for (path, request) in PATHS {
        let got = answer(b.addr, request, path);
        got.assert_one_line(502, path);
    }
    drop(b);

    for (path, request) in PATHS {
        let after = RawMember::start(Behaviour::AnswersInTwo(
            b"HTTP/1.1 200 OK\r\nX-Member: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"zz\r\nworld\r\n0\r\n\r\n",
        ));
        let (_c, b) = balancer_for(&format!("frame-cut-{path}"), &after.member_arg("m"));
        let mut client = TcpStream::connect(b.addr).expect("connect");
        client.write_all(request).expect("send");
        // The head and the first chunk went on; only then does the member go wrong.
        let first = read_answers(&mut client, b"hello", 1);
        after.go();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{path}: still open after 10 s ({e}): {rest:?}"),
            }
        }
        let mut all = first.into_bytes();
        all.extend_from_slice(&rest);
        let got = Got::of(&all, path);
        assert_eq!(got.status, 200, "{path}");
        assert_taken_by(&got, path);
        assert_eq!(
            dechunk(&got.body),
            None,
            "{path}: the cut answer ended cleanly: {:?}",
            String::from_utf8_lossy(&got.body)
        );
        assert!(
            !String::from_utf8_lossy(&got.body).contains("world"),
            "{path}"
        );
    }
}

#[test]
fn an_unrequested_switch_of_protocols_is_502_on_both_paths() {
    // Asked for `echo`, switched to `evil` (RFC 9110 §7.8): unrequested as well.
    let other: (&str, &[u8]) = (
        "hyper, another protocol",
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    );
    for (path, request) in PATHS.into_iter().chain([other]) {
        // A member of its own for each: the first 502 puts it in error for a while.
        let member = RawMember::start(Behaviour::Answers(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\nevil bytes",
        ));
        let (_c, b) = balancer_for(
            &format!("frame-101-{}", path.len()),
            &member.member_arg("m"),
        );
        let got = answer(b.addr, request, path);
        got.assert_one_line(502, path);
        assert!(
            !String::from_utf8_lossy(&got.body).contains("evil"),
            "{path}"
        );
    }
}

#[test]
fn connect_gets_405_with_allow_on_both_paths_and_is_never_forwarded() {
    let member = RawMember::start(Behaviour::Healthy);
    let (_c, b) = balancer_for("frame-connect", &member.member_arg("m"));
    let connect = b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n";
    // A connection's first request: the fast path's.
    let got = answer(b.addr, connect, "fast");
    got.assert_one_line(405, "fast");
    assert!(
        got.field("allow").is_some_and(|a| a.contains("GET")),
        "{}",
        got.head
    );
    // On a connection hyper serves (after a request with a body).
    let mut client = TcpStream::connect(b.addr).expect("connect");
    client
        .write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        .expect("send");
    let first = read_answers(&mut client, b"ok\n", 1);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    client.write_all(connect).expect("send");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).expect("closed after the 405");
    let got = Got::of(&raw, "hyper");
    got.assert_one_line(405, "hyper");
    assert!(
        got.field("allow").is_some_and(|a| a.contains("GET")),
        "{}",
        got.head
    );
    assert!(
        !member.received().contains("CONNECT"),
        "{}",
        member.received()
    );
}

#[test]
fn an_absolute_form_target_is_forwarded_with_its_authority_as_host() {
    let member = echo_member();
    let (_c, b) = balancer_for("frame-absolute", &format!("m=http://{member}"));
    for request in [
        &b"GET http://other.example/x?q=1 HTTP/1.1\r\nHost: orig.example\r\nConnection: close\r\n\r\n"[..],
        b"POST http://other.example/x?q=1 HTTP/1.1\r\nHost: orig.example\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let got = answer(b.addr, request, "absolute");
        assert_eq!(got.status, 200, "{}", got.head);
        // The echo: what the member received.
        let echoed = String::from_utf8_lossy(&got.body).to_ascii_lowercase();
        assert!(echoed.contains(" /x?q=1 http/1.1\r\n"), "{echoed}");
        assert!(echoed.contains("\r\nhost: other.example\r\n"), "{echoed}");
        assert!(
            echoed.contains("\r\nx-forwarded-host: other.example\r\n"),
            "{echoed}"
        );
        assert!(!echoed.contains("orig.example"), "{echoed}");
    }
    for odd in [
        &b"GET ftp://other.example/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        b"GET http://user@other.example/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ] {
        answer(b.addr, odd, "odd target").assert_one_line(400, "odd target");
    }
}

#[test]
fn a_host_that_is_a_list_gets_400_on_both_paths() {
    let member = RawMember::start(Behaviour::Healthy);
    let (_c, b) = balancer_for("frame-host", &member.member_arg("m"));
    for request in [
        &b"GET /x HTTP/1.1\r\nHost: a, b\r\nConnection: close\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: a, b\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /x HTTP/1.1\r\nHost: a,b\r\nConnection: close\r\n\r\n",
    ] {
        let what = String::from_utf8_lossy(&request[..4]).into_owned();
        answer(b.addr, request, &what).assert_one_line(400, &what);
    }
    assert_eq!(member.received(), "", "nothing reached the member");
}

#[test]
fn a_get_with_a_chunked_body_reaches_the_member_with_it_as_one_with_a_length_does() {
    let member = echo_member();
    let (_c, b) = balancer_for("frame-getbody", &format!("m=http://{member}"));
    for request in [
        &b"GET /search HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nquery"[..],
        b"GET /search HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nquery\r\n0\r\n\r\n",
    ] {
        let got = answer(b.addr, request, "GET with a body");
        assert_eq!(got.status, 200, "{}", got.head);
        // The echo ends with the body the member read.
        let echoed = String::from_utf8_lossy(&got.body);
        assert!(echoed.ends_with("\r\n\r\nquery"), "{echoed:?}");
    }
}

#[test]
fn the_http2_preface_gets_a_one_line_505_and_the_connection_closes() {
    let member = RawMember::start(Behaviour::Healthy);
    let (_c, b) = balancer_for("frame-h2", &member.member_arg("m"));
    // The preface and an empty SETTINGS frame, as an HTTP/2 client with prior knowledge
    // sends them.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let got = answer(b.addr, &preface, "preface");
    got.assert_one_line(505, "preface");
    assert_eq!(member.received(), "");
}
