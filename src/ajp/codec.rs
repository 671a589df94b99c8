//! AJP/1.3 packets and their parts, as Tomcat's connector and Apache's mod_jk and
//! mod_proxy_ajp speak them; pure (no I/O, no tokio), every length checked against the
//! packet size before a byte is read.
//!
//! A packet is a 4-byte head (magic, then the payload length as a big-endian `u16`) and the
//! payload. The web server's packets begin `0x12 0x34`, the container's (ours) `A B`.
//! Strings are a `u16` length, the bytes and a `0x00`; the length `0xFFFF` is the null
//! string (no bytes, no terminator), read as empty. A request header name or a response
//! header name is either a string or one of the coded names (`0xA0nn`): a string's length
//! never starts with `0xA0` since no packet holds 40 KiB of name.
//!
//! Which packets may come when is the connection's business (`server`): a body packet
//! has no type byte, so only the state of the exchange tells it from a request packet.
//! [`ServerPacket`] is what the web server sends in the place of a request, [`decode_body`]
//! reads what it sends after a forward request, [`ContainerPacket`] is what we send.

use thiserror::Error;

/// The first two bytes of a packet from the web server.
pub const MAGIC_SERVER: [u8; 2] = [0x12, 0x34];
/// The first two bytes of a packet from the container (`AB`).
pub const MAGIC_CONTAINER: [u8; 2] = *b"AB";
/// Bytes of a packet head: the magic and the payload length.
pub const HEAD_LEN: usize = 4;
/// The smallest and the largest packet size (`ajp.packet_size`, mod_jk's
/// `max_packet_size`, mod_proxy's `ProxyIOBufferSize`), head included.
pub const MIN_PACKET_SIZE: usize = 8192;
/// See [`MIN_PACKET_SIZE`].
pub const MAX_PACKET_SIZE: usize = 65536;
/// The most body bytes one send-body-chunk packet carries at packet size `packet_size`:
/// the head, the type byte, the chunk length and the terminating `0x00` (Tomcat's
/// `SEND_HEAD_LEN`).
pub const fn max_send_chunk(packet_size: usize) -> usize {
    packet_size - HEAD_LEN - 4
}
/// The most body bytes one body packet from the web server carries: the head and the
/// chunk length (Tomcat's `READ_HEAD_LEN`).
pub const fn max_read_chunk(packet_size: usize) -> usize {
    packet_size - HEAD_LEN - 2
}
/// Request headers one forward request may carry (Tomcat's `maxHeaderCount`).
pub const MAX_HEADERS: usize = 100;
/// `req_attribute` pairs one forward request may carry.
pub const MAX_REQ_ATTRIBUTES: usize = 64;

/// Packet type codes.
mod code {
    pub const FORWARD_REQUEST: u8 = 0x02;
    pub const SEND_BODY_CHUNK: u8 = 0x03;
    pub const SEND_HEADERS: u8 = 0x04;
    pub const END_RESPONSE: u8 = 0x05;
    pub const GET_BODY_CHUNK: u8 = 0x06;
    pub const SHUTDOWN: u8 = 0x07;
    pub const CPONG: u8 = 0x09;
    pub const CPING: u8 = 0x0A;
}

/// Attribute codes of a forward request.
mod attr {
    pub const CONTEXT: u8 = 0x01;
    pub const SERVLET_PATH: u8 = 0x02;
    pub const REMOTE_USER: u8 = 0x03;
    pub const AUTH_TYPE: u8 = 0x04;
    pub const QUERY_STRING: u8 = 0x05;
    pub const ROUTE: u8 = 0x06;
    pub const SSL_CERT: u8 = 0x07;
    pub const SSL_CIPHER: u8 = 0x08;
    pub const SSL_SESSION: u8 = 0x09;
    pub const REQ_ATTRIBUTE: u8 = 0x0A;
    pub const SSL_KEY_SIZE: u8 = 0x0B;
    pub const SECRET: u8 = 0x0C;
    pub const STORED_METHOD: u8 = 0x0D;
    pub const ARE_DONE: u8 = 0xFF;
}

/// The method code that says "the method is in the `stored_method` attribute".
const METHOD_STORED: u8 = 0xFF;

/// Method codes 1..=27, in order.
const METHODS: [&str; 27] = [
    "OPTIONS",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "TRACE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "ACL",
    "REPORT",
    "VERSION-CONTROL",
    "CHECKIN",
    "CHECKOUT",
    "UNCHECKOUT",
    "SEARCH",
    "MKWORKSPACE",
    "UPDATE",
    "LABEL",
    "MERGE",
    "BASELINE-CONTROL",
    "MKACTIVITY",
];

/// Coded request header names `0xA001..=0xA00E`, in order (lower case, as `http` keeps them).
const REQUEST_HEADERS: [&str; 14] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "connection",
    "content-type",
    "content-length",
    "cookie",
    "cookie2",
    "host",
    "pragma",
    "referer",
    "user-agent",
];

/// Coded response header names `0xA001..=0xA00B`, in order.
const RESPONSE_HEADERS: [&str; 11] = [
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
];

/// Why bytes are not a valid AJP packet. Nothing of a packet that fails is used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AjpError {
    /// The packet does not begin with the magic of its direction.
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// The packet is longer than the packet size allows.
    #[error("packet of {len} bytes exceeds the packet size {max}")]
    TooLarge {
        /// The packet's length, head included.
        len: usize,
        /// The packet size in force.
        max: usize,
    },
    /// A packet with no payload where a type byte was due.
    #[error("empty packet")]
    Empty,
    /// A type byte this side does not take.
    #[error("unexpected packet type {0:#04x}")]
    UnknownType(u8),
    /// A field runs past the end of the payload.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A string without its terminating `0x00`.
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    /// A method code that no method has.
    #[error("unknown method code {0:#04x}")]
    UnknownMethod(u8),
    /// A method name that is not an HTTP token.
    #[error("invalid method name")]
    InvalidMethod,
    /// The method is "stored" but no `stored_method` attribute came.
    #[error("stored method missing")]
    StoredMethodMissing,
    /// A coded header name that no header has.
    #[error("unknown header code {0:#06x}")]
    UnknownHeaderCode(u16),
    /// An attribute code that no attribute has: its format is unknown, so the rest of the
    /// packet cannot be read.
    #[error("unknown attribute code {0:#04x}")]
    UnknownAttribute(u8),
    /// More headers or request attributes than allowed.
    #[error("{what}: {count} exceed the limit of {max}")]
    TooMany {
        /// `headers` or `request attributes`.
        what: &'static str,
        /// How many came (or were announced).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes after the end of a packet's fields.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A packet to send that does not fit the packet size, or a field over 64 KiB.
    #[error("{0} does not fit in a packet")]
    DoesNotFit(&'static str),
}

/// The whole packet at the start of `buf`, if it is there: `Ok(Some(len))` with its length
/// (head included), `Ok(None)` when more bytes are needed, or an error as soon as the head
/// shows a wrong magic or a length over `max_packet`.
pub fn packet_len(
    buf: &[u8],
    magic: [u8; 2],
    max_packet: usize,
) -> Result<Option<usize>, AjpError> {
    if let Some(first) = buf.first() {
        if *first != magic[0] {
            let second = buf.get(1).copied().unwrap_or(0);
            return Err(AjpError::BadMagic(u16::from_be_bytes([*first, second])));
        }
    }
    if buf.len() < HEAD_LEN {
        return Ok(None);
    }
    if buf[1] != magic[1] {
        return Err(AjpError::BadMagic(u16::from_be_bytes([buf[0], buf[1]])));
    }
    let len = HEAD_LEN + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len > max_packet {
        return Err(AjpError::TooLarge {
            len,
            max: max_packet,
        });
    }
    Ok((buf.len() >= len).then_some(len))
}

/// The payload of the whole packet `packet` (as [`packet_len`] delimited it).
pub fn payload(packet: &[u8]) -> &[u8] {
    packet.get(HEAD_LEN..).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// What the web server sends

/// A forward request: the request line, the headers and the attributes of one HTTP
/// request. Strings are bytes as they came: the front end decides their encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// The method (a coded one, or the `stored_method` attribute's).
    pub method: http::Method,
    /// `HTTP/1.1`, as the client sent it.
    pub protocol: Vec<u8>,
    /// The request path, without the query.
    pub uri: Vec<u8>,
    /// The client's address.
    pub remote_addr: Vec<u8>,
    /// The client's host name (often empty or the address).
    pub remote_host: Vec<u8>,
    /// The server name the client asked for.
    pub server_name: Vec<u8>,
    /// The port the client connected to.
    pub server_port: u16,
    /// Whether the client came over TLS.
    pub is_ssl: bool,
    /// Header names in lower case, values as they came, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The attributes.
    pub attributes: Attributes,
}

/// The attributes of a forward request; each present at most once (a repeated one: the
/// last wins), `req_attribute` pairs in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `context` (unused by mod_jk and mod_proxy_ajp).
    pub context: Option<Vec<u8>>,
    /// `servlet_path` (unused likewise).
    pub servlet_path: Option<Vec<u8>>,
    /// `remote_user`: the user the front end authenticated.
    pub remote_user: Option<Vec<u8>>,
    /// `auth_type`: how it did.
    pub auth_type: Option<Vec<u8>>,
    /// `query_string`: the query, without `?`.
    pub query_string: Option<Vec<u8>>,
    /// `route` (`jvm_route`): the route the front end chose or the session named.
    pub route: Option<Vec<u8>>,
    /// `ssl_cert`: the client certificate (PEM).
    pub ssl_cert: Option<Vec<u8>>,
    /// `ssl_cipher`.
    pub ssl_cipher: Option<Vec<u8>>,
    /// `ssl_session`.
    pub ssl_session: Option<Vec<u8>>,
    /// `ssl_key_size`.
    pub ssl_key_size: Option<u16>,
    /// `secret` (Tomcat's `secret`, mod_jk's `worker.NAME.secret`, mod_proxy_ajp's `secret=`).
    pub secret: Option<Vec<u8>>,
    /// `req_attribute` name/value pairs (environment variables the front end forwards).
    pub req_attributes: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A packet the web server sends where a request may begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket {
    /// A request.
    ForwardRequest(Box<ForwardRequest>),
    /// "Are you there?": answered by a CPong.
    CPing,
    /// Tomcat's shutdown command: refused (never honoured from the network).
    Shutdown,
}

/// Reads a [`ServerPacket`] from the payload of a packet from the web server.
pub fn decode_server(payload: &[u8]) -> Result<ServerPacket, AjpError> {
    let mut r = Reader::new(payload);
    let kind = r.u8("packet type").map_err(|_| AjpError::Empty)?;
    let packet = match kind {
        code::FORWARD_REQUEST => ServerPacket::ForwardRequest(Box::new(forward_request(&mut r)?)),
        code::CPING => ServerPacket::CPing,
        code::SHUTDOWN => ServerPacket::Shutdown,
        other => return Err(AjpError::UnknownType(other)),
    };
    r.finish()?;
    Ok(packet)
}

fn forward_request(r: &mut Reader<'_>) -> Result<ForwardRequest, AjpError> {
    let method_code = r.u8("method")?;
    let protocol = r.string("protocol")?;
    let uri = r.string("request URI")?;
    let remote_addr = r.string("remote address")?;
    let remote_host = r.string("remote host")?;
    let server_name = r.string("server name")?;
    let server_port = r.u16("server port")?;
    let is_ssl = r.u8("is_ssl")? != 0;
    let count = usize::from(r.u16("header count")?);
    if count > MAX_HEADERS {
        return Err(AjpError::TooMany {
            what: "headers",
            count,
            max: MAX_HEADERS,
        });
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = header_name(r, &REQUEST_HEADERS)?;
        let value = r.string("header value")?;
        headers.push((name, value));
    }
    let mut attributes = Attributes::default();
    let mut stored_method = None;
    loop {
        let code = r.u8("attribute code")?;
        let slot = match code {
            attr::ARE_DONE => break,
            attr::CONTEXT => &mut attributes.context,
            attr::SERVLET_PATH => &mut attributes.servlet_path,
            attr::REMOTE_USER => &mut attributes.remote_user,
            attr::AUTH_TYPE => &mut attributes.auth_type,
            attr::QUERY_STRING => &mut attributes.query_string,
            attr::ROUTE => &mut attributes.route,
            attr::SSL_CERT => &mut attributes.ssl_cert,
            attr::SSL_CIPHER => &mut attributes.ssl_cipher,
            attr::SSL_SESSION => &mut attributes.ssl_session,
            attr::SECRET => &mut attributes.secret,
            attr::STORED_METHOD => &mut stored_method,
            attr::SSL_KEY_SIZE => {
                attributes.ssl_key_size = Some(r.u16("ssl_key_size")?);
                continue;
            }
            attr::REQ_ATTRIBUTE => {
                if attributes.req_attributes.len() == MAX_REQ_ATTRIBUTES {
                    return Err(AjpError::TooMany {
                        what: "request attributes",
                        count: MAX_REQ_ATTRIBUTES + 1,
                        max: MAX_REQ_ATTRIBUTES,
                    });
                }
                let name = r.string("request attribute name")?;
                let value = r.string("request attribute value")?;
                attributes.req_attributes.push((name, value));
                continue;
            }
            other => return Err(AjpError::UnknownAttribute(other)),
        };
        *slot = Some(r.string("attribute")?);
    }
    let method = match method_code {
        METHOD_STORED => {
            let name = stored_method.ok_or(AjpError::StoredMethodMissing)?;
            http::Method::from_bytes(&name).map_err(|_| AjpError::InvalidMethod)?
        }
        1..=27 => {
            let name = METHODS[usize::from(method_code - 1)];
            http::Method::from_bytes(name.as_bytes()).map_err(|_| AjpError::InvalidMethod)?
        }
        other => return Err(AjpError::UnknownMethod(other)),
    };
    Ok(ForwardRequest {
        method,
        protocol,
        uri,
        remote_addr,
        remote_host,
        server_name,
        server_port,
        is_ssl,
        headers,
        attributes,
    })
}

/// A coded name from `table` (`0xA001` is its first) or a string name, in lower case.
fn header_name(r: &mut Reader<'_>, table: &[&str]) -> Result<Vec<u8>, AjpError> {
    let first = r.peek("header name")?;
    if first == 0xA0 {
        let coded = r.u16("header code")?;
        let index = usize::from(coded & 0x00FF);
        return match index.checked_sub(1).and_then(|i| table.get(i)) {
            Some(name) => Ok(name.as_bytes().to_vec()),
            None => Err(AjpError::UnknownHeaderCode(coded)),
        };
    }
    let mut name = r.string("header name")?;
    name.make_ascii_lowercase();
    Ok(name)
}

/// The body bytes of a body packet's payload (empty: the body has ended).
pub fn decode_body(payload: &[u8]) -> Result<&[u8], AjpError> {
    if payload.is_empty() {
        return Ok(payload);
    }
    let mut r = Reader::new(payload);
    let len = usize::from(r.u16("body chunk length")?);
    let data = r.take(len, "body chunk")?;
    r.finish()?;
    Ok(data)
}

/// Writes `packet` as the web server would (for tests, benchmarks and a client).
pub fn encode_server(packet: &ServerPacket, max_packet: usize) -> Result<Vec<u8>, AjpError> {
    let mut w = Writer::new(MAGIC_SERVER);
    match packet {
        ServerPacket::CPing => w.u8(code::CPING),
        ServerPacket::Shutdown => w.u8(code::SHUTDOWN),
        ServerPacket::ForwardRequest(request) => encode_forward(&mut w, request)?,
    }
    w.finish(max_packet, "forward request")
}

fn encode_forward(w: &mut Writer, request: &ForwardRequest) -> Result<(), AjpError> {
    w.u8(code::FORWARD_REQUEST);
    let method = request.method.as_str();
    let coded = METHODS.iter().position(|m| *m == method);
    w.u8(match coded {
        Some(i) => u8::try_from(i + 1).unwrap_or(METHOD_STORED),
        None => METHOD_STORED,
    });
    w.string(&request.protocol)?;
    w.string(&request.uri)?;
    w.string(&request.remote_addr)?;
    w.string(&request.remote_host)?;
    w.string(&request.server_name)?;
    w.u16(request.server_port);
    w.u8(u8::from(request.is_ssl));
    w.u16(u16::try_from(request.headers.len()).map_err(|_| AjpError::DoesNotFit("headers"))?);
    for (name, value) in &request.headers {
        w.header_name(name, &REQUEST_HEADERS)?;
        w.string(value)?;
    }
    let a = &request.attributes;
    let strings = [
        (attr::CONTEXT, &a.context),
        (attr::SERVLET_PATH, &a.servlet_path),
        (attr::REMOTE_USER, &a.remote_user),
        (attr::AUTH_TYPE, &a.auth_type),
        (attr::QUERY_STRING, &a.query_string),
        (attr::ROUTE, &a.route),
        (attr::SSL_CERT, &a.ssl_cert),
        (attr::SSL_CIPHER, &a.ssl_cipher),
        (attr::SSL_SESSION, &a.ssl_session),
        (attr::SECRET, &a.secret),
    ];
    for (code, value) in strings {
        if let Some(value) = value {
            w.u8(code);
            w.string(value)?;
        }
    }
    if let Some(size) = a.ssl_key_size {
        w.u8(attr::SSL_KEY_SIZE);
        w.u16(size);
    }
    if coded.is_none() {
        w.u8(attr::STORED_METHOD);
        w.string(method.as_bytes())?;
    }
    for (name, value) in &a.req_attributes {
        w.u8(attr::REQ_ATTRIBUTE);
        w.string(name)?;
        w.string(value)?;
    }
    w.u8(attr::ARE_DONE);
    Ok(())
}

/// A body packet as the web server sends it: `data` (empty: the end of the body).
pub fn encode_body(data: &[u8], max_packet: usize) -> Result<Vec<u8>, AjpError> {
    let mut w = Writer::new(MAGIC_SERVER);
    if !data.is_empty() {
        w.u16(u16::try_from(data.len()).map_err(|_| AjpError::DoesNotFit("body chunk"))?);
        w.bytes(data);
    }
    w.finish(max_packet, "body chunk")
}

// ---------------------------------------------------------------------------------------------
// What the container sends

/// The status line and headers of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendHeaders {
    /// The status code.
    pub status: u16,
    /// The reason phrase (`OK`).
    pub reason: Vec<u8>,
    /// Header names in lower case, values, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A packet the container sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerPacket {
    /// The response's status and headers.
    SendHeaders(SendHeaders),
    /// Some of the response's body.
    SendBodyChunk(Vec<u8>),
    /// The response is over; `reuse`: the connection takes another request.
    EndResponse {
        /// Whether the connection stays open for the next request.
        reuse: bool,
    },
    /// Asks for up to this many more bytes of the request's body.
    GetBodyChunk(u16),
    /// The answer to a CPing.
    CPong,
}

/// Writes `packet` as a whole packet (head included) of at most `max_packet` bytes.
pub fn encode_container(packet: &ContainerPacket, max_packet: usize) -> Result<Vec<u8>, AjpError> {
    let mut w = Writer::new(MAGIC_CONTAINER);
    let what = match packet {
        ContainerPacket::SendHeaders(head) => {
            w.u8(code::SEND_HEADERS);
            w.u16(head.status);
            w.string(&head.reason)?;
            w.u16(
                u16::try_from(head.headers.len())
                    .map_err(|_| AjpError::DoesNotFit("response headers"))?,
            );
            for (name, value) in &head.headers {
                w.header_name(name, &RESPONSE_HEADERS)?;
                w.string(value)?;
            }
            "response headers"
        }
        ContainerPacket::SendBodyChunk(data) => {
            w.u8(code::SEND_BODY_CHUNK);
            w.string(data)?;
            "body chunk"
        }
        ContainerPacket::EndResponse { reuse } => {
            w.u8(code::END_RESPONSE);
            w.u8(u8::from(*reuse));
            "end response"
        }
        ContainerPacket::GetBodyChunk(len) => {
            w.u8(code::GET_BODY_CHUNK);
            w.u16(*len);
            "get body chunk"
        }
        ContainerPacket::CPong => {
            w.u8(code::CPONG);
            "cpong"
        }
    };
    w.finish(max_packet, what)
}

/// Reads a [`ContainerPacket`] from the payload of a packet from the container (what a
/// web server, or a test standing in for one, does).
pub fn decode_container(payload: &[u8]) -> Result<ContainerPacket, AjpError> {
    let mut r = Reader::new(payload);
    let kind = r.u8("packet type").map_err(|_| AjpError::Empty)?;
    let packet = match kind {
        code::SEND_HEADERS => {
            let status = r.u16("status")?;
            let reason = r.string("reason")?;
            let count = usize::from(r.u16("header count")?);
            if count > MAX_HEADERS {
                return Err(AjpError::TooMany {
                    what: "headers",
                    count,
                    max: MAX_HEADERS,
                });
            }
            let mut headers = Vec::with_capacity(count);
            for _ in 0..count {
                let name = header_name(&mut r, &RESPONSE_HEADERS)?;
                let value = r.string("header value")?;
                headers.push((name, value));
            }
            ContainerPacket::SendHeaders(SendHeaders {
                status,
                reason,
                headers,
            })
        }
        code::SEND_BODY_CHUNK => ContainerPacket::SendBodyChunk(r.string("body chunk")?),
        code::END_RESPONSE => ContainerPacket::EndResponse {
            reuse: r.u8("reuse")? != 0,
        },
        code::GET_BODY_CHUNK => ContainerPacket::GetBodyChunk(r.u16("requested length")?),
        code::CPONG => ContainerPacket::CPong,
        other => return Err(AjpError::UnknownType(other)),
    };
    r.finish()?;
    Ok(packet)
}

// ---------------------------------------------------------------------------------------------
// Bytes

/// Reads fields from a payload; every read checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AjpError> {
        let end = self.pos.checked_add(n).ok_or(AjpError::Truncated(what))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(AjpError::Truncated(what))?;
        self.pos = end;
        Ok(bytes)
    }

    fn peek(&self, what: &'static str) -> Result<u8, AjpError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(AjpError::Truncated(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, AjpError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, AjpError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A string; the null string reads as empty.
    fn string(&mut self, what: &'static str) -> Result<Vec<u8>, AjpError> {
        let len = self.u16(what)?;
        if len == 0xFFFF {
            return Ok(Vec::new());
        }
        let bytes = self.take(usize::from(len), what)?.to_vec();
        if self.u8(what).map_err(|_| AjpError::Unterminated(what))? != 0 {
            return Err(AjpError::Unterminated(what));
        }
        Ok(bytes)
    }

    fn finish(&self) -> Result<(), AjpError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(AjpError::Trailing(n)),
        }
    }
}

/// Writes a packet: the head is filled in by `finish`.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(magic: [u8; 2]) -> Writer {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&magic);
        buf.extend_from_slice(&[0, 0]);
        Writer { buf }
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    fn string(&mut self, v: &[u8]) -> Result<(), AjpError> {
        // 0xFFFF is the null string: no string of ours is that long.
        let len = u16::try_from(v.len())
            .ok()
            .filter(|l| *l != 0xFFFF)
            .ok_or(AjpError::DoesNotFit("string"))?;
        self.u16(len);
        self.bytes(v);
        self.u8(0);
        Ok(())
    }

    /// A coded name when `name` is in `table` (in any case), else the string.
    fn header_name(&mut self, name: &[u8], table: &[&str]) -> Result<(), AjpError> {
        match table
            .iter()
            .position(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            Some(i) => {
                self.u16(0xA001 + u16::try_from(i).unwrap_or(0));
                Ok(())
            }
            None => {
                // A string name's length must not read as a coded name.
                if name.is_empty() || name.len() >= 0xA000 {
                    return Err(AjpError::DoesNotFit("header name"));
                }
                self.string(name)
            }
        }
    }

    fn finish(mut self, max_packet: usize, what: &'static str) -> Result<Vec<u8>, AjpError> {
        let len = self.buf.len();
        if len > max_packet.min(HEAD_LEN + 0xFFFF) {
            return Err(AjpError::DoesNotFit(what));
        }
        let payload = u16::try_from(len - HEAD_LEN).map_err(|_| AjpError::DoesNotFit(what))?;
        self.buf[2..4].copy_from_slice(&payload.to_be_bytes());
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests;
