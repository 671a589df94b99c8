//! A raw AJP/1.3 client, written from the protocol's description and apart from the
//! library's codec, so the tests check the connector against the protocol rather than
//! against itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A request to send: the method code (2 GET, 4 POST, 5 PUT, 6 DELETE), the path, headers
/// (names as strings), and attributes.
#[derive(Clone, Debug, Default)]
pub struct Forward {
    pub method: u8,
    pub uri: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub secret: Option<String>,
    pub route: Option<String>,
    pub req_attributes: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Forward {
    pub fn get(uri: &str, secret: Option<&str>) -> Forward {
        Forward {
            method: 2,
            uri: uri.into(),
            secret: secret.map(str::to_string),
            headers: vec![("Host".into(), "shop.example".into())],
            ..Forward::default()
        }
    }

    pub fn put(uri: &str, secret: Option<&str>, body: &[u8]) -> Forward {
        let mut f = Forward::get(uri, secret);
        f.method = 5;
        f.headers
            .push(("Content-Length".into(), body.len().to_string()));
        f.body = body.to_vec();
        f
    }

    pub fn cookie(mut self, cookie: Option<&str>) -> Forward {
        if let Some(c) = cookie {
            self.headers.push(("Cookie".into(), c.into()));
        }
        self
    }
}

/// What came back for one request.
#[derive(Debug, Default)]
pub struct AjpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub reuse: bool,
    /// How many get-body-chunk packets the container sent.
    pub body_asks: usize,
    /// The largest send-body-chunk packet's payload.
    pub largest_chunk: usize,
}

impl AjpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `name=value` of the Set-Cookie header.
    pub fn set_cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
    out.push(0);
}

/// A packet to the container: 0x12 0x34, the length, the payload.
pub fn packet(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x12, 0x34];
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The forward request's packet.
pub fn forward_packet(f: &Forward) -> Vec<u8> {
    let mut p = vec![0x02, f.method];
    push_string(&mut p, b"HTTP/1.1");
    push_string(&mut p, f.uri.as_bytes());
    push_string(&mut p, b"127.0.0.1");
    p.extend_from_slice(&[0xFF, 0xFF]); // remote_host: null
    push_string(&mut p, b"shop.example");
    p.extend_from_slice(&80u16.to_be_bytes());
    p.push(0);
    p.extend_from_slice(&(f.headers.len() as u16).to_be_bytes());
    for (name, value) in &f.headers {
        match name.to_ascii_lowercase().as_str() {
            "host" => p.extend_from_slice(&[0xA0, 0x0B]),
            "cookie" => p.extend_from_slice(&[0xA0, 0x09]),
            "content-length" => p.extend_from_slice(&[0xA0, 0x08]),
            _ => push_string(&mut p, name.as_bytes()),
        }
        push_string(&mut p, value.as_bytes());
    }
    if let Some(q) = &f.query {
        p.push(0x05);
        push_string(&mut p, q.as_bytes());
    }
    if let Some(r) = &f.route {
        p.push(0x06);
        push_string(&mut p, r.as_bytes());
    }
    if let Some(s) = &f.secret {
        p.push(0x0C);
        push_string(&mut p, s.as_bytes());
    }
    for (name, value) in &f.req_attributes {
        p.push(0x0A);
        push_string(&mut p, name.as_bytes());
        push_string(&mut p, value.as_bytes());
    }
    p.push(0xFF);
    packet(&p)
}

/// A body packet with `data` (empty: the end of the body).
pub fn body_packet(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return packet(&[]);
    }
    let mut p = (data.len() as u16).to_be_bytes().to_vec();
    p.extend_from_slice(data);
    packet(&p)
}

/// One AJP connection to a node.
pub struct AjpClient {
    pub stream: TcpStream,
    /// The most body bytes one body packet carries (8192-byte packets: 8186).
    pub chunk: usize,
}

impl AjpClient {
    pub fn connect(addr: SocketAddr) -> AjpClient {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to ajp");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        AjpClient {
            stream,
            chunk: 8186,
        }
    }

    /// The next packet from the container: its payload, None when the connection closed.
    pub fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).ok()?;
        assert_eq!(&head[..2], b"AB", "a container packet begins with AB");
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).ok()?;
        Some(payload)
    }

    /// Whether the container closed the connection (reads end) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }

    pub fn cping(&mut self) -> bool {
        self.stream.write_all(&packet(&[0x0A])).expect("send cping");
        self.read_packet() == Some(vec![0x09])
    }

    /// Sends `f`, feeds its body as the container asks, and reads the answer.
    pub fn request(&mut self, f: &Forward) -> Option<AjpAnswer> {
        self.stream.write_all(&forward_packet(f)).ok()?;
        let mut sent = 0;
        if !f.body.is_empty() {
            let n = f.body.len().min(self.chunk);
            self.stream.write_all(&body_packet(&f.body[..n])).ok()?;
            sent = n;
        }
        let mut answer = AjpAnswer::default();
        loop {
            let p = self.read_packet()?;
            let u16_at = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]) as usize;
            match p.first()? {
                0x04 => {
                    answer.status = u16_at(1) as u16;
                    let mut at = 3;
                    let string = |at: &mut usize| {
                        let len = u16::from_be_bytes([p[*at], p[*at + 1]]) as usize;
                        let s = String::from_utf8_lossy(&p[*at + 2..*at + 2 + len]).into_owned();
                        assert_eq!(p[*at + 2 + len], 0, "strings end with 0");
                        *at += len + 3;
                        s
                    };
                    let _reason = string(&mut at);
                    let count = u16_at(at);
                    at += 2;
                    for _ in 0..count {
                        let name = if p[at] == 0xA0 {
                            let code = p[at + 1];
                            at += 2;
                            [
                                "content-type",
                                "content-language",
                                "content-length",
                                "date",
                                "last-modified",
                                "location",
                                "set-cookie",
                                "set-cookie2",
                                "servlet-engine",
                                "status",
                                "www-authenticate",
                            ][code as usize - 1]
                                .to_string()
                        } else {
                            string(&mut at)
                        };
                        let value = string(&mut at);
                        answer.headers.push((name, value));
                    }
                }
                0x03 => {
                    let len = u16_at(1);
                    answer.body.extend_from_slice(&p[3..3 + len]);
                    assert_eq!(p.len(), len + 4, "a body chunk ends with one 0");
                    assert_eq!(p[3 + len], 0);
                    answer.largest_chunk = answer.largest_chunk.max(p.len());
                }
                0x05 => {
                    answer.reuse = p[1] == 1;
                    return Some(answer);
                }
                0x06 => {
                    answer.body_asks += 1;
                    let want = u16_at(1);
                    let n = (f.body.len() - sent).min(want).min(self.chunk);
                    self.stream
                        .write_all(&body_packet(&f.body[sent..sent + n]))
                        .ok()?;
                    sent += n;
                }
                other => panic!("unexpected container packet type {other:#04x}"),
            }
        }
    }
}
