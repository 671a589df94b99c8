//! The node's HTTP under attack, as issue 12 found it: slowloris, an idle flood, the
//! connection limit, the Host rule and the HTTP/2 preface, against a real node process over
//! raw sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::raw_http::{KeepAlive, assert_one_line_answer};
use common::{Cluster, FAST, NodeProc, wait_until};

/// A generous bound for one answer to a normal client on a loaded machine.
const ANSWER_BOUND: Duration = Duration::from_secs(5);

/// The node closes a connection that sent no full head after its header-read timeout
/// (10 s); the test waits far longer before calling it a failure.
const CLOSED_BY: Duration = Duration::from_secs(40);

fn node(test: &str, extra: &[&str]) -> (Cluster, NodeProc) {
    let cluster = Cluster::new(test);
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(extra);
    let n = cluster.node("n1", &args);
    (cluster, n)
}

/// A GET of /status on a new connection, timed.
fn status_took(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut client = KeepAlive::open(addr);
    let (code, _) = client.get("/status");
    assert_eq!(code, 200);
    started.elapsed()
}

/// Whether the peer closed `stream` (without blocking).
fn closed(mut stream: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    stream.set_nonblocking(true).expect("nonblocking");
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

#[test]
fn slowloris_connections_are_closed_after_the_header_read_timeout_while_a_client_is_served() {
    let (_cluster, n) = node("nh-slowloris", &[]);
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(n.http).expect("connect");
            s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
                .expect("send");
            s
        })
        .collect();
    let started = Instant::now();
    let mut open = slow.len();
    while open > 0 {
        assert!(
            started.elapsed() < CLOSED_BY,
            "{open} slowloris connections still open after {CLOSED_BY:?}"
        );
        // One more header byte a second on each, as slowloris does.
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        let took = status_took(n.http);
        assert!(took < ANSWER_BOUND, "a normal client waited {took:?}");
        open = slow.iter().filter(|s| !closed(s)).count();
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn an_idle_flood_at_the_connection_limit_does_not_keep_a_normal_client_waiting() {
    let (_cluster, n) = node("nh-idle", &["--set", "node.max_connections=100"]);
    // Every slot held by an idle kept-alive connection.
    let idle: Vec<KeepAlive> = (0..100)
        .map(|_| {
            let mut c = KeepAlive::open(n.http);
            c.get("/status");
            c
        })
        .collect();
    // The node makes room instead of leaving a new client for the 10 s idle timeout.
    for _ in 0..5 {
        let took = status_took(n.http);
        assert!(
            took < ANSWER_BOUND,
            "during the flood, /status took {took:?}"
        );
    }
    wait_until(CLOSED_BY, "the idle flood closed by the node", || {
        let open = idle.iter().filter(|c| !closed(&c.stream)).count();
        (open == 0).then_some(())
    });
    let took = status_took(n.http);
    assert!(
        took < ANSWER_BOUND,
        "after the flood, /status took {took:?}"
    );
}

/// Sends `request` followed by a pipelined `GET /status`, reads until the node closes:
/// every answer on the connection.
fn pipelined(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut both = request.to_vec();
    both.extend_from_slice(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(&both).expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn a_request_without_exactly_one_host_gets_400_and_nothing_after_it_is_served() {
    let (_cluster, n) = node("nh-host", &[]);
    let bad: [&[u8]; 3] = [
        b"GET /status HTTP/1.1\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: a, b\r\n\r\n",
    ];
    for request in bad {
        assert_one_line_answer(n.http, request, 400);
        let answers = pipelined(n.http, request);
        assert!(answers.starts_with("HTTP/1.1 400 "), "{answers}");
        assert_eq!(answers.matches("HTTP/1.1 ").count(), 1, "{answers}");
    }
    // A head too large: 431, and the pipelined request is not served either.
    let big = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answers = pipelined(n.http, big.as_bytes());
    assert!(answers.starts_with("HTTP/1.1 431 "), "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 ").count(), 1, "{answers}");
    assert!(status_took(n.http) < ANSWER_BOUND);
}

#[test]
fn the_http2_preface_gets_a_one_line_answer() {
    let (_cluster, n) = node("nh-h2", &[]);
    assert_one_line_answer(n.http, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
}
