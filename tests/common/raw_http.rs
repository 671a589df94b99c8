//! Raw HTTP/1.1 on a socket, for tests that must see exactly what went over the wire
//! (bytes the balancer added or removed, how a connection ended): one request and the
//! whole answer, a kept-alive connection, reads bounded by deadlines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Sends raw bytes on a new connection and reads until the balancer closes it: the status,
/// the head (lower case) and the body.
pub fn raw_answer(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The balancer may answer and close before it read everything (a head over its limit).
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer to {:?}: {text:?}", preview(request)));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

pub fn preview(request: &[u8]) -> String {
    String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned()
}

/// The answer has `status` and a one-line text body ending with a newline.
pub fn assert_one_line_answer(addr: SocketAddr, request: &[u8], status: u16) {
    let (got, head, body) = raw_answer(addr, request);
    let what = preview(request);
    assert_eq!(got, status, "{what:?} got {head}");
    assert!(
        head.contains("content-type: text/plain"),
        "{what:?}: {head}"
    );
    assert!(body.ends_with('\n') && body.len() > 1, "{what:?}: {body:?}");
    assert_eq!(body.lines().count(), 1, "{what:?}: {body:?}");
}

/// A kept-alive connection that sends one GET at a time and reads its answer (by its
/// Content-Length).
pub struct KeepAlive {
    pub stream: TcpStream,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        KeepAlive { stream }
    }

    pub fn send(&mut self, path: &str) {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("send");
    }

    /// Reads one answer: status and body.
    pub fn answer(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a content-length");
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, body))
    }

    pub fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        self.send(path);
        self.answer().expect("an answer")
    }

    /// `/balancer-manager/status` on this connection.
    pub fn status(&mut self) -> Value {
        let (code, body) = self.get("/balancer-manager/status");
        assert_eq!(code, 200);
        serde_json::from_slice(&body).expect("JSON")
    }
}

/// Reads one HTTP/1.1 request (Content-Length or chunked body); None at the end.
pub fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw[..raw.len() - 4]).into_owned();
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        body.resize(len, 0);
        stream.read_exact(&mut body).ok()?;
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).ok()?;
                line.push(byte[0]);
            }
            let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some((head, body))
}

/// Sends `request` on a new connection and returns the whole answer (head, body).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    (
        String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase(),
        raw[split + 4..].to_vec(),
    )
}

/// Sends `request` on a new connection, then reads until the balancer closes it (the
/// client keeps its side open): what it read and how long the balancer took to close.
pub fn read_until_closed(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "still open after 10 s; read {:?}",
                    String::from_utf8_lossy(&raw)
                )
            }
            // Reset: closed too.
            Err(_) => break,
        }
    }
    (raw, started.elapsed())
}

/// Reads from `stream` until `want` answers ending in `end` came, or the deadline.
pub fn read_answers(stream: &mut TcpStream, end: &[u8], want: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    while got.windows(end.len()).filter(|w| *w == end).count() < want {
        assert!(
            Instant::now() < deadline,
            "{want} answers did not come: {}",
            String::from_utf8_lossy(&got)
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `first`, then `later` after a pause, and reads until the end: the bytes and
/// whether the end was a reset.
pub fn two_writes(addr: SocketAddr, first: &[u8], later: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(later).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&raw).into_owned(), false),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&raw).into_owned(), true);
            }
            Err(e) => panic!("{e}; read {:?}", String::from_utf8_lossy(&raw)),
        }
    }
}
