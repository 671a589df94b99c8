//! The load generator's HTTP client: one keep-alive connection to one node, with the
//! session cookie a browser would keep; and the figures a node's `/status` and /proc give.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::cluster::pid;
use crate::common::{self, NodeProc};

/// How long one HTTP exchange may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive HTTP/1.1 connection to one node, with an optional session cookie. It
/// reconnects after a failure.
pub struct Client {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// The `name=value` of the session cookie.
    pub cookie: Option<String>,
    /// Keep the cookies the node sets (a browser); false: never send one (every PUT makes a
    /// new session).
    keep_cookie: bool,
}

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Client {
    pub fn new(addr: SocketAddr, keep_cookie: bool) -> Client {
        Client {
            addr,
            host: addr.to_string(),
            sender: None,
            cookie: None,
            keep_cookie,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<Reply, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(format!("no answer within {REQUEST_TIMEOUT:?}"))
            }
        }
    }

    async fn exchange(&mut self, method: Method, path: &str, body: Bytes) -> Result<Reply, String> {
        if self.sender.is_none() {
            self.connect().await?;
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err("not connected".into());
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.as_str());
        if let Some(cookie) = self.cookie.as_deref().filter(|_| self.keep_cookie) {
            request = request.header(header::COOKIE, cookie);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        if self.keep_cookie {
            if let Some(set) = response
                .headers()
                .get(header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
            {
                self.cookie = set.split(';').next().map(str::to_string);
            }
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    pub async fn put(&mut self, name: &str, value: Bytes) -> Result<Reply, String> {
        self.send(Method::PUT, &format!("/session/attributes/{name}"), value)
            .await
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(Method::GET, path, Bytes::new()).await
    }
}

/// What a node's `/status` and /proc say at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub cpu_ns: u64,
    pub deltas_sent: u64,
    pub deltas_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
    pub queue: u64,
    pub sessions: u64,
}

impl Sample {
    pub fn from_status(cpu_ns: u64, s: &Value) -> Sample {
        let r = &s["replication"];
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        Sample {
            cpu_ns,
            deltas_sent: n(&r["deltas_sent"]),
            deltas_received: n(&r["deltas_received"]),
            bytes_sent: n(&r["bytes_sent"]),
            bytes_received: n(&r["bytes_received"]),
            errors: n(&r["errors"]),
            queue: n(&r["queue"]),
            sessions: n(&s["sessions"]["active"]),
        }
    }

    /// What changed from `before` to `self` (counters only).
    pub fn since(&self, before: &Sample) -> Sample {
        Sample {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            deltas_sent: self.deltas_sent.saturating_sub(before.deltas_sent),
            deltas_received: self.deltas_received.saturating_sub(before.deltas_received),
            bytes_sent: self.bytes_sent.saturating_sub(before.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(before.bytes_received),
            errors: self.errors.saturating_sub(before.errors),
            queue: self.queue,
            sessions: self.sessions,
        }
    }
}

/// A node as the async code sees it: its PID and HTTP address.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub pid: u32,
    pub http: SocketAddr,
}

pub fn targets(nodes: &[NodeProc]) -> Vec<Target> {
    nodes
        .iter()
        .map(|n| Target {
            pid: pid(n),
            http: n.http,
        })
        .collect()
}

async fn sample(t: Target) -> Sample {
    let mut c = Client::new(t.http, false);
    let status = match c.get("/status").await {
        Ok(r) if r.status == 200 => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Sample::from_status(common::cpu_ns(t.pid), &status)
}

pub async fn sample_all(ts: &[Target]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(ts.len());
    for t in ts {
        out.push(sample(*t).await);
    }
    out
}

/// Waits (at most 30 s) until no node has replication queued.
pub async fn drained(ts: &[Target]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if sample_all(ts).await.iter().all(|s| s.queue == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
