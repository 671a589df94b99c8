//! Replication figures of deltacast (issue 3, "Benchmark"), measured on real node processes
//! (the release binary) over loopback. Every cluster has its own name and multicast port and
//! the default heartbeat timing (500 ms).
//!
//! 1. **Write latency**, sync mode: p50/p99 of `PUT /session/attributes/x` with a small
//!    value, one client sending sequential requests on one keep-alive connection, on a
//!    3-node cluster against a single node; and the **miss rate** of a read on another node
//!    right after the acknowledged write (write on one node, at once GET on the next one).
//! 2. **Write throughput** with 1, 3, 5 and 8 nodes, sync and async: 16 concurrent clients,
//!    each with its own session and keep-alive connection, spread over the nodes, for a
//!    fixed time; writes/s and the ratio to one node. Then the **CPU per delta per receiving
//!    member**: the same load sent to one node only, so the others only receive; their CPU
//!    time (/proc/PID/task/*/schedstat) over their `replication.deltas_received`.
//! 3. **State transfer**: a 1-node cluster filled with 100 000 sessions of ~200 bytes, then
//!    a second node is started and timed from its spawn until its `/status` says `ready`
//!    with every session; its RSS, and how much the member sent meanwhile. The same with
//!    1 000 000 sessions when the fill over HTTP fits in about three minutes (projected from
//!    the 100 000 fill) and the memory is there, or always with `--full`.
//! 4. **Memory per session**: a node's RSS before and after 100 000 sessions with one
//!    10-byte attribute, per session, minus the attribute's bytes; on a single node (made
//!    over HTTP) and on the replica of a 2-node cluster (received as deltas).
//! 5. **Bytes on the wire per delta** for a one-attribute change, from `/status`
//!    (`replication.bytes_sent` over `deltas_sent`) of a 2-node cluster: sequential sync
//!    writes (one delta per frame) and concurrent async ones (deltas share frames).
//!
//! Figures are medians (with min and max) of several runs. The load generator is one tokio
//! current-thread runtime in this process: it shares the machine's cores with the nodes,
//! and the output says how many there are.
//!
//! Run: `cargo bench --bench replication`; `-- --quick` for fewer, shorter runs (no
//! 1 000 000-session transfer); `-- --full` to force the 1 000 000-session transfer;
//! `-- --only latency,throughput,transfer,memory,wire` to run some figures only;
//! `-- --sealed` to run every node with a shared cluster key (`cluster.key_file`), so that
//! the cost of the seal shows against a run without.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, NodeProc, wait_converged, wait_until};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::{Barrier, watch};

/// Concurrent clients of the throughput figure.
const CLIENTS: usize = 16;
/// Largest fill (over HTTP) the default mode accepts for the 1 000 000-session transfer.
const MAX_DEFAULT_FILL: Duration = Duration::from_secs(180);
/// How long one HTTP exchange may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    if std::env::var_os(ECHO_ENV).is_some() {
        echo_server();
        return;
    }
    let opts = Opts::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _key = opts.sealed.then(|| {
        let file = common::KeyFile::new();
        let _ = KEY_ARGS.set(file.args());
        file
    });
    println!(
        "deltacast replication benchmark ({} mode{}{})",
        if opts.quick { "quick" } else { "standard" },
        if opts.full { ", --full" } else { "" },
        if opts.sealed {
            ", --sealed: cluster traffic sealed with a shared key"
        } else {
            ""
        }
    );
    println!("{}", machine_line());
    println!(
        "real `deltacast node` processes on loopback, default heartbeat (500 ms); the load \
         generator (one tokio current-thread runtime) runs on the same cores as the nodes"
    );
    let mut summary = Vec::new();
    if opts.wants("latency") {
        write_latency(&rt, &opts, &mut summary);
    }
    if opts.wants("throughput") {
        throughput(&rt, &opts, &mut summary);
    }
    if opts.wants("transfer") {
        state_transfer(&rt, &opts, &mut summary);
    }
    if opts.wants("memory") {
        memory_per_session(&rt, &opts, &mut summary);
    }
    if opts.wants("wire") {
        bytes_per_delta(&rt, &opts, &mut summary);
    }
    print_summary(&summary);
}

// ---- options ---------------------------------------------------------------------------------

struct Opts {
    quick: bool,
    full: bool,
    sealed: bool,
    only: Option<Vec<String>>,
}

impl Opts {
    /// `cargo bench` adds `--bench`; anything not known is ignored.
    fn parse() -> Opts {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut only = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let list = if arg == "--only" {
                it.next().cloned()
            } else {
                arg.strip_prefix("--only=").map(str::to_string)
            };
            if let Some(list) = list {
                only = Some(list.split(',').map(|s| s.trim().to_string()).collect());
            }
        }
        Opts {
            quick: args.iter().any(|a| a == "--quick"),
            full: args.iter().any(|a| a == "--full"),
            sealed: args.iter().any(|a| a == "--sealed"),
            only,
        }
    }

    fn wants(&self, figure: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|f| f == figure))
    }

    /// `quick` in quick mode, `full` otherwise.
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "machine: {cores} core(s) ({cpu}), shared by the load generator AND every node; \
         load average {load} at start"
    )
}

// ---- statistics and tables -------------------------------------------------------------------

/// Median, min and max of a set of per-run figures.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Spread {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `median (min–max)` with `unit`, each value written by `f`.
    fn show(&self, f: impl Fn(f64) -> String) -> String {
        if self.median.is_nan() {
            return "-".into();
        }
        if self.min == self.max {
            return f(self.median);
        }
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

/// The `p`-quantile (0..=1) of sorted samples, nearest rank.
fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.0} µs")
    } else {
        format!("{x:.1} µs")
    }
}

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else {
        format!("{x:.0} ms")
    }
}

fn mb(kb: f64) -> String {
    format!("{:.0} MB", kb / 1024.0)
}

fn count(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn ratio(x: f64) -> String {
    format!("{x:.2}×")
}

/// A printed table: a title, a header row, rows, and notes under it.
struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    fn new(title: &str, head: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn print(&self) {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.head.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(width(cell));
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(width(cell));
                out.push_str("  ");
                if i == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
            out
        };
        println!();
        println!("{}", self.title);
        println!("{}", line(&self.head));
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len();
        println!("   {}", "-".repeat(total.saturating_sub(2)));
        for row in &self.rows {
            println!("{}", line(row));
        }
        for note in &self.notes {
            println!("   {note}");
        }
    }
}

/// One line of the final summary: what, the measured figure, the target and whether it was met.
struct Headline {
    what: String,
    value: String,
    target: String,
    met: Option<bool>,
}

fn headline(
    summary: &mut Vec<Headline>,
    what: &str,
    value: String,
    target: &str,
    met: Option<bool>,
) {
    summary.push(Headline {
        what: what.to_string(),
        value,
        target: target.to_string(),
        met,
    });
}

fn print_summary(summary: &[Headline]) {
    let mut t = Table::new(
        "SUMMARY (medians)",
        &["figure", "measured", "target", "met"],
    );
    for h in summary {
        let met = match h.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        t.row(vec![
            h.what.clone(),
            h.value.clone(),
            h.target.clone(),
            met.to_string(),
        ]);
    }
    t.print();
}

// ---- processes -------------------------------------------------------------------------------

/// With `--sealed`: the arguments that give every node of this run the key.
static KEY_ARGS: OnceLock<[String; 2]> = OnceLock::new();

/// `args`, with the cluster key when the run is sealed.
fn with_key(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    args.extend(KEY_ARGS.get().into_iter().flatten().cloned());
    args
}

/// `--set` arguments for a node.
fn node_args(settings: &[&str]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// Worker threads of each node when `n` nodes share this machine: its cores divided among
/// them, at least one each — what `deltacast up` gives the nodes of a local cluster
/// (src/cli/up.rs), so that N nodes do not run N × cores threads on the same cores.
fn worker_threads(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    (cores / n.max(1)).max(1)
}

/// Starts `n` nodes of a new cluster, each as `deltacast up` would (its share of the cores,
/// `info` logging), and waits until they see each other and are ready.
fn start_cluster(tag: &str, n: usize, args: &[String]) -> (Cluster, Vec<NodeProc>) {
    let c = Cluster::new(tag);
    let env = [
        ("TOKIO_WORKER_THREADS", worker_threads(n).to_string()),
        ("RUST_LOG", "deltacast=info".to_string()),
    ];
    let args = with_key(args);
    let nodes: Vec<NodeProc> = (1..=n)
        .map(|i| c.node_with_env(&format!("n{i}"), &args, &env))
        .collect();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&refs, Duration::from_secs(30));
    for node in &nodes {
        wait_ready(node, None);
    }
    (c, nodes)
}

/// Waits until `node` is ready (and holds `sessions` sessions, when given).
fn wait_ready(node: &NodeProc, sessions: Option<u64>) {
    wait_until(Duration::from_secs(120), "the node is ready", || {
        let s = node.status()?;
        let ready = s["node"]["state"] == "ready";
        let held = sessions.is_none_or(|n| s["sessions"]["active"].as_u64() == Some(n));
        (ready && held).then_some(())
    });
}

/// Waits until `node` lists no member at all (a killed joiner is gone).
fn wait_alone(node: &NodeProc) {
    wait_until(Duration::from_secs(20), "the node is alone again", || {
        (node.members("")?.is_empty()).then_some(())
    });
}

fn pid(node: &NodeProc) -> u32 {
    node.child.id()
}

fn rss_kb(pid: u32) -> u64 {
    common::proc_status(pid, "VmRSS:")
}

// ---- HTTP client -----------------------------------------------------------------------------

/// One keep-alive HTTP/1.1 connection to one node, with an optional session cookie. It
/// reconnects after a failure.
struct Client {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// The `name=value` of the session cookie.
    cookie: Option<String>,
    /// Keep the cookies the node sets (a browser); false: never send one (every PUT makes a
    /// new session).
    keep_cookie: bool,
}

struct Reply {
    status: u16,
    body: Bytes,
}

impl Client {
    fn new(addr: SocketAddr, keep_cookie: bool) -> Client {
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

    async fn put(&mut self, name: &str, value: Bytes) -> Result<Reply, String> {
        self.send(Method::PUT, &format!("/session/attributes/{name}"), value)
            .await
    }

    async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(Method::GET, path, Bytes::new()).await
    }
}

/// What a node's `/status` and /proc say at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    cpu_ns: u64,
    deltas_sent: u64,
    deltas_received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    errors: u64,
    queue: u64,
    sessions: u64,
}

impl Sample {
    fn from_status(cpu_ns: u64, s: &Value) -> Sample {
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
    fn since(&self, before: &Sample) -> Sample {
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
struct Target {
    pid: u32,
    http: SocketAddr,
}

fn targets(nodes: &[NodeProc]) -> Vec<Target> {
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

async fn sample_all(ts: &[Target]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(ts.len());
    for t in ts {
        out.push(sample(*t).await);
    }
    out
}

/// Waits (at most 30 s) until no node has replication queued.
async fn drained(ts: &[Target]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if sample_all(ts).await.iter().all(|s| s.queue == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- load ------------------------------------------------------------------------------------

/// The outcome of a timed write load.
struct Load {
    writes: u64,
    failures: u64,
    secs: f64,
    /// Per node, the change of its figures over the timed part.
    nodes: Vec<Sample>,
    /// CPU of this process (the load generator) over the timed part.
    client_cpu_ns: u64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.secs
    }
}

/// `clients` concurrent clients, client i on `on[i % on.len()]`, each with its own session
/// and keep-alive connection, write one small attribute as fast as they are answered for
/// `duration`. `all` are every node of the cluster (measured before and after).
async fn write_load(all: &[Target], on: &[Target], clients: usize, duration: Duration) -> Load {
    let ready = Arc::new(Barrier::new(clients + 1));
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = on[i % on.len()].http;
        let ready = ready.clone();
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr, true);
            // The session is made and the connection warm before the clock starts.
            for w in 0..20u64 {
                let _ = c.put("x", Bytes::from(w.to_string())).await;
            }
            ready.wait().await;
            let deadline = go
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|d| *d)
                .unwrap_or_else(Instant::now);
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let result = c.put("x", Bytes::from(n.to_string())).await;
                if Instant::now() > deadline {
                    break;
                }
                match result {
                    Ok(r) if r.status == 204 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    ready.wait().await;
    let before = sample_all(all).await;
    let client_before = common::cpu_ns(std::process::id());
    let start = Instant::now();
    let _ = go_tx.send(Some(start + duration));
    let (mut writes, mut failures) = (0, 0);
    for t in tasks {
        if let Ok((ok, failed)) = t.await {
            writes += ok;
            failures += failed;
        }
    }
    let client_cpu_ns = common::cpu_ns(std::process::id()).saturating_sub(client_before);
    let after = sample_all(all).await;
    Load {
        writes,
        failures,
        secs: duration.as_secs_f64(),
        nodes: after.iter().zip(&before).map(|(a, b)| a.since(b)).collect(),
        client_cpu_ns,
    }
}

/// Makes `count` sessions on `addr`, each with attribute `name` = `value`, with
/// `concurrency` keep-alive clients that never send a cookie. Returns the time it took and
/// the number of failed requests.
async fn fill(
    addr: SocketAddr,
    count: u64,
    concurrency: usize,
    name: &'static str,
    value: Bytes,
) -> (Duration, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, failures, value) = (next.clone(), failures.clone(), value.clone());
            tokio::spawn(async move {
                let mut c = Client::new(addr, false);
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    match c.put(name, value.clone()).await {
                        Ok(r) if r.status == 204 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (start.elapsed(), failures.load(Ordering::Relaxed))
}

// ---- 1. write latency ------------------------------------------------------------------------

/// Latencies (ns) of `count` sequential single-attribute writes on one keep-alive
/// connection, after `warmup` untimed ones; and the number of failed requests.
async fn sequential_writes(addr: SocketAddr, warmup: usize, count: usize) -> (Vec<u64>, u64) {
    let mut c = Client::new(addr, true);
    let mut failures = 0;
    for i in 0..warmup {
        if !matches!(c.put("x", Bytes::from(format!("w{i}"))).await, Ok(r) if r.status == 204) {
            failures += 1;
        }
    }
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let value = Bytes::from(format!("v{i}"));
        let t0 = Instant::now();
        let result = c.put("x", value).await;
        let took = t0.elapsed();
        match result {
            Ok(r) if r.status == 204 => latencies.push(took.as_nanos() as u64),
            _ => failures += 1,
        }
    }
    latencies.sort_unstable();
    (latencies, failures)
}

/// Writes on node i, then at once reads on node i+1 with the same cookie, `count` times
/// over `addrs` in turn. Returns (misses, failed requests).
async fn read_after_write(addrs: &[SocketAddr], count: usize) -> (u64, u64) {
    let mut clients: Vec<Client> = addrs.iter().map(|a| Client::new(*a, true)).collect();
    let mut cookie: Option<String> = None;
    let (mut misses, mut failures) = (0, 0);
    for i in 0..count {
        let (w, r) = (i % addrs.len(), (i + 1) % addrs.len());
        let value = format!("value-{i}");
        clients[w].cookie = cookie.clone();
        match clients[w].put("x", Bytes::from(value.clone())).await {
            Ok(reply) if reply.status == 204 => {}
            _ => {
                failures += 1;
                continue;
            }
        }
        cookie = clients[w].cookie.clone();
        clients[r].cookie = cookie.clone();
        match clients[r].get("/session/attributes/x").await {
            Ok(reply) if reply.status == 200 && reply.body == value.as_bytes() => {}
            Ok(_) => misses += 1,
            Err(_) => failures += 1,
        }
        // The reader may have re-issued the cookie with its route: the browser keeps it.
        cookie = clients[r].cookie.clone();
    }
    (misses, failures)
}

fn write_latency(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
    let runs = opts.pick(3, 7);
    let warmup = opts.pick(300, 1000);
    let count = opts.pick(1500, 4000);
    let misses_per_run = opts.pick(500, 2000);
    println!(
        "\n[1] write latency: {runs} runs of {count} sequential PUTs (after {warmup} warm-up) \
         on one keep-alive connection, 1-node and 3-node runs alternating"
    );
    let (_c1, single) = start_cluster("bench-lat1", 1, &[]);
    let (_c3, trio) = start_cluster("bench-lat3", 3, &[]);
    let mut p50 = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    let mut failures = [0u64, 0];
    for _ in 0..runs {
        for (k, node) in [&single[0], &trio[0]].into_iter().enumerate() {
            let (lat, failed) = rt.block_on(sequential_writes(node.http, warmup, count));
            p50[k].push(quantile(&lat, 0.50) as f64 / 1000.0);
            p99[k].push(quantile(&lat, 0.99) as f64 / 1000.0);
            failures[k] += failed;
        }
    }
    let (s50, s99) = (
        [Spread::of(&p50[0]), Spread::of(&p50[1])],
        [Spread::of(&p99[0]), Spread::of(&p99[1])],
    );
    let ratios: Vec<f64> = p50[1].iter().zip(&p50[0]).map(|(t, s)| t / s).collect();
    let r = Spread::of(&ratios);
    // What the machine itself allows: a bare TCP round trip to two other processes.
    let floor: Vec<f64> = (0..runs)
        .map(|_| bare_round_trip_p50(2, warmup, count))
        .collect();
    let floor = Spread::of(&floor);

    // Miss rate of a read on another node right after the acknowledged write.
    let addrs: Vec<SocketAddr> = trio.iter().map(|n| n.http).collect();
    let mut miss_rates = Vec::new();
    let (mut misses, mut miss_failures, mut reads) = (0, 0, 0);
    for _ in 0..runs {
        let (m, f) = rt.block_on(read_after_write(&addrs, misses_per_run));
        misses += m;
        miss_failures += f;
        reads += misses_per_run as u64;
        miss_rates.push(m as f64 / misses_per_run as f64 * 100.0);
    }
    drop(trio);
    drop(single);
    // For contrast: the same in async mode, where a miss is allowed.
    let (_ca, async_trio) = start_cluster(
        "bench-lat3a",
        3,
        &node_args(&["sessions.replication=async"]),
    );
    let addrs: Vec<SocketAddr> = async_trio.iter().map(|n| n.http).collect();
    let (async_misses, async_failures) = rt.block_on(read_after_write(&addrs, misses_per_run));
    drop(async_trio);

    let mut t = Table::new(
        "[1] write latency, sync mode: PUT /session/attributes/x (value of at most 5 bytes), one client, keep-alive",
        &["cluster", "p50", "p99", "failed requests"],
    );
    t.row(vec![
        "1 node".into(),
        s50[0].show(us),
        s99[0].show(us),
        failures[0].to_string(),
    ]);
    t.row(vec![
        "3 nodes (sync)".into(),
        s50[1].show(us),
        s99[1].show(us),
        failures[1].to_string(),
    ]);
    t.note(format!(
        "p50(3 nodes) / p50(1 node): {} (per-run ratios, median (min–max))",
        r.show(ratio)
    ));
    t.note(format!(
        "the machine's floor: a bare TCP round trip from one process to two others (blocking \
         sockets, 100 B each way, no HTTP, no runtime) takes {} at p50, so a 3-node sync write \
         cannot beat 1-node p50 + that = {} ({}) here",
        floor.show(us),
        us(s50[0].median + floor.median),
        ratio((s50[0].median + floor.median) / s50[0].median)
    ));
    t.note(format!(
        "read on the next node right after the acknowledged write, sync: {misses} misses in {reads} \
         reads ({}), {miss_failures} failed requests",
        Spread::of(&miss_rates).show(|x| format!("{x:.2} %"))
    ));
    t.note(format!(
        "for contrast, async mode (misses allowed there): {async_misses} misses in \
         {misses_per_run} reads, {async_failures} failed requests"
    ));
    t.print();

    headline(
        summary,
        "sync write p50, 3 nodes / 1 node",
        format!(
            "{} ({} vs {}; machine floor {})",
            ratio(r.median),
            us(s50[1].median),
            us(s50[0].median),
            ratio((s50[0].median + floor.median) / s50[0].median)
        ),
        "≤ 1.3×",
        Some(r.median <= 1.3),
    );
    headline(
        summary,
        "sync write p99, 3 nodes",
        us(s99[1].median),
        "< 1 ms (idle machine)",
        Some(s99[1].median < 1000.0),
    );
    headline(
        summary,
        "read-after-write misses on another node (sync)",
        format!("{misses} / {reads}"),
        "0",
        Some(misses == 0),
    );
}

const ECHO_ENV: &str = "DELTACAST_BENCH_ECHO";

/// The bench binary started again as a bare echo server: prints its port, echoes one
/// connection until it closes.
fn echo_server() {
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    println!("{}", addr.port());
    let Ok((mut conn, _)) = listener.accept() else {
        return;
    };
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// p50 in µs of writing 100 bytes to each of `peers` echo processes and reading them back.
fn bare_round_trip_p50(peers: usize, warmup: usize, count: usize) -> f64 {
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut children = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..peers {
        let mut child = std::process::Command::new(&exe)
            .env(ECHO_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start an echo process");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("its stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("its port");
        let port: u16 = line.trim().parse().expect("a port number");
        let conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.set_nodelay(true).expect("nodelay");
        conns.push(conn);
        children.push(child);
    }
    let msg = [7u8; 100];
    let mut buf = [0u8; 100];
    let mut lat = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t0 = Instant::now();
        for c in &mut conns {
            c.write_all(&msg).expect("write");
        }
        for c in &mut conns {
            c.read_exact(&mut buf).expect("read");
        }
        if i >= warmup {
            lat.push(t0.elapsed().as_nanos() as u64);
        }
    }
    drop(conns);
    for mut child in children {
        let _ = child.wait();
    }
    lat.sort_unstable();
    quantile(&lat, 0.50) as f64 / 1000.0
}

// ---- 2. throughput and CPU per delta -----------------------------------------------------------

fn throughput(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
    let runs = opts.pick(2, 3);
    let secs = opts.pick(2, 5);
    let recv_runs = opts.pick(1, 3);
    let recv_secs = opts.pick(2, 3);
    let sizes = [1usize, 3, 5, 8];
    println!(
        "\n[2] write throughput: {CLIENTS} clients (own session, keep-alive) spread over the nodes, \
         {runs} runs of {secs} s per point; receiver CPU: {recv_runs} run(s) of {recv_secs} s with \
         every client on n1"
    );
    let mut t = Table::new(
        &format!(
            "[2] write throughput, {CLIENTS} concurrent clients spread over the nodes ({secs} s runs)"
        ),
        &[
            "mode",
            "nodes",
            "writes/s",
            "vs 1 node",
            "cluster CPU/write",
            "client CPU",
            "failed",
            "repl errors",
        ],
    );
    let mut cpu_table = Table::new(
        &format!(
            "[2b] CPU per delta per receiving member (every client writes to n1; n2..nN only receive; {recv_secs} s runs)"
        ),
        &[
            "mode",
            "nodes",
            "CPU per received delta",
            "deltas/s per receiver",
            "writes/s on n1",
        ],
    );
    let mut sync3_ratio = f64::NAN;
    let mut recv_cost: Vec<(String, usize, f64)> = Vec::new();
    for mode in ["sync", "async"] {
        let mut single = f64::NAN;
        for &n in &sizes {
            let setting = format!("sessions.replication={mode}");
            let (_c, nodes) =
                start_cluster(&format!("bench-tp-{mode}{n}"), n, &node_args(&[&setting]));
            let all = targets(&nodes);
            let mut rates = Vec::new();
            let mut cpu_per_write = Vec::new();
            let mut client_share = Vec::new();
            let (mut failed, mut repl_errors) = (0, 0);
            for _ in 0..runs {
                let load = rt.block_on(async {
                    let load = write_load(&all, &all, CLIENTS, Duration::from_secs(secs)).await;
                    drained(&all).await;
                    load
                });
                rates.push(load.rate());
                let cluster_cpu: u64 = load.nodes.iter().map(|s| s.cpu_ns).sum();
                cpu_per_write.push(cluster_cpu as f64 / 1000.0 / load.writes.max(1) as f64);
                client_share.push(load.client_cpu_ns as f64 / 1e9 / load.secs * 100.0);
                failed += load.failures;
                repl_errors += load.nodes.iter().map(|s| s.errors).sum::<u64>();
            }
            let rate = Spread::of(&rates);
            if n == 1 {
                single = rate.median;
            }
            let vs = rate.median / single;
            if mode == "sync" && n == 3 {
                sync3_ratio = vs;
            }
            t.row(vec![
                mode.into(),
                n.to_string(),
                rate.show(count),
                format!("{:.0} %", vs * 100.0),
                Spread::of(&cpu_per_write).show(us),
                Spread::of(&client_share).show(|x| format!("{x:.0} %")),
                failed.to_string(),
                repl_errors.to_string(),
            ]);
            if n > 1 {
                let mut per_delta = Vec::new();
                let mut per_receiver_rate = Vec::new();
                let mut n1_rate = Vec::new();
                for _ in 0..recv_runs {
                    let load = rt.block_on(async {
                        let load =
                            write_load(&all, &all[..1], CLIENTS, Duration::from_secs(recv_secs))
                                .await;
                        drained(&all).await;
                        load
                    });
                    let receivers = &load.nodes[1..];
                    let cpu: u64 = receivers.iter().map(|s| s.cpu_ns).sum();
                    let deltas: u64 = receivers.iter().map(|s| s.deltas_received).sum();
                    per_delta.push(cpu as f64 / 1000.0 / deltas.max(1) as f64);
                    per_receiver_rate.push(deltas as f64 / receivers.len() as f64 / load.secs);
                    n1_rate.push(load.rate());
                }
                let cost = Spread::of(&per_delta);
                recv_cost.push((mode.to_string(), n, cost.median));
                cpu_table.row(vec![
                    mode.into(),
                    n.to_string(),
                    cost.show(us),
                    Spread::of(&per_receiver_rate).show(count),
                    Spread::of(&n1_rate).show(count),
                ]);
            }
        }
    }
    t.note("vs 1 node: against the 1-node figure of the same mode (medians)");
    t.note("cluster CPU/write: CPU time of all nodes over the run / writes; client CPU: this process (load generator) in % of one core");
    t.note("failed: requests that did not get 204; repl errors: change of replication.errors summed over the nodes");
    t.print();
    cpu_table.note("CPU per received delta: CPU time of the receiving nodes / their replication.deltas_received (includes their idle heartbeat work, negligible)");
    cpu_table.print();

    headline(
        summary,
        "3-node sync throughput vs 1 node",
        format!("{:.0} %", sync3_ratio * 100.0),
        "≥ 50 %",
        Some(sync3_ratio >= 0.5),
    );
    for mode in ["sync", "async"] {
        let costs: Vec<(usize, f64)> = recv_cost
            .iter()
            .filter(|(m, _, _)| m == mode)
            .map(|(_, n, c)| (*n, *c))
            .collect();
        if let (Some(first), Some(last)) = (costs.first(), costs.last()) {
            let list: Vec<String> = costs
                .iter()
                .map(|(n, c)| format!("{n}: {}", us(*c)))
                .collect();
            let growth = last.1 / first.1;
            headline(
                summary,
                &format!("CPU per received delta, {mode}, by nodes"),
                format!(
                    "{} ({} from {} to {} nodes)",
                    list.join(", "),
                    ratio(growth),
                    first.0,
                    last.0
                ),
                "flat",
                Some(growth <= 1.5),
            );
        }
    }
}

// ---- 3. state transfer -------------------------------------------------------------------------

/// A joining node, timed from its spawn until ready with every session.
struct Join {
    took_ms: f64,
    /// The transfer itself, as the joiner logged it (`took_ms`).
    logged_ms: Option<f64>,
    rss_kb: u64,
    hwm_kb: u64,
    /// What the member sent on its replication port during the join.
    member_bytes: u64,
    /// Sessions the member's anti-entropy pushed to the joiner besides the transfer (from
    /// the member's debug log).
    pushed: u64,
}

fn logged_transfer_ms(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("state transfer done"))?;
    let rest = &line[line.find("took_ms=")? + "took_ms=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Sum of the `push=` counts of the anti-entropy lines about `peer` in a node's log.
fn anti_entropy_pushes(log: &str, peer: &str) -> u64 {
    let tag = format!("peer={peer} ");
    log.lines()
        .filter(|l| l.contains("anti-entropy") && l.contains(&tag))
        .filter_map(|l| {
            let rest = &l[l.find("push=")? + "push=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

fn join_once(c: &Cluster, member: &NodeProc, name: &str, args: &[String], sessions: u64) -> Join {
    let member_before = member
        .status()
        .map(|s| Sample::from_status(0, &s))
        .unwrap_or_default();
    let start = Instant::now();
    let joiner = c.node(name, &with_key(args));
    let deadline = start + Duration::from_secs(300);
    loop {
        if let Some(s) = common::get_json(joiner.http, "/status") {
            if s["node"]["state"] == "ready" && s["sessions"]["active"].as_u64() == Some(sessions) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the joiner {name} did not get every session within 300 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took_ms = start.elapsed().as_secs_f64() * 1000.0;
    let rss_kb = rss_kb(pid(&joiner));
    // Let the anti-entropy exchange that follows the link set-up finish too.
    std::thread::sleep(Duration::from_millis(1500));
    let member_after = member
        .status()
        .map(|s| Sample::from_status(0, &s))
        .unwrap_or_default();
    let join = Join {
        took_ms,
        logged_ms: logged_transfer_ms(&joiner.log_text()),
        rss_kb,
        hwm_kb: common::proc_status(pid(&joiner), "VmHWM:"),
        member_bytes: member_after.since(&member_before).bytes_sent,
        pushed: anti_entropy_pushes(&member.log_text(), name),
    };
    drop(joiner);
    wait_alone(member);
    join
}

fn state_transfer(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
    let runs = opts.pick(2, 5);
    let big_runs = opts.pick(1, 3);
    let concurrency = 32;
    // ~200 bytes of attributes: the name "profile" and a 193-byte value.
    let value = Bytes::from(vec![b'p'; 193]);
    let args = node_args(&["sessions.max_sessions=2000000"]);
    println!(
        "\n[3] state transfer: fill n1 over HTTP ({concurrency} keep-alive clients, PUT without cookie), \
         then start a joining node; {runs} joins for 100 000 sessions, {big_runs} for 1 000 000 when measured"
    );
    let mut t = Table::new(
        "[3] state transfer to a joining node (spawn → /status ready with every session; polled every 10 ms)",
        &[
            "sessions",
            "joins",
            "spawn → ready",
            "transfer (joiner's log)",
            "joiner RSS at ready",
            "joiner peak RSS",
            "member sent",
            "also pushed by anti-entropy",
        ],
    );
    let mut notes = Vec::new();
    let mut results: Vec<(u64, Spread, Spread)> = Vec::new();
    let mut plan: Vec<(u64, usize)> = vec![(100_000, runs)];
    let mut i = 0;
    while i < plan.len() {
        let (sessions, joins) = plan[i];
        i += 1;
        let (c, nodes) = start_cluster(&format!("bench-join{sessions}"), 1, &args);
        let member = &nodes[0];
        let (filled_in, failed) = rt.block_on(fill(
            member.http,
            sessions,
            concurrency,
            "profile",
            value.clone(),
        ));
        let held = member
            .status()
            .and_then(|s| s["sessions"]["active"].as_u64())
            .unwrap_or(0);
        let member_rss = rss_kb(pid(member));
        notes.push(format!(
            "fill of {} sessions: {:.1} s ({} /s), {failed} failed requests, {} held; member RSS {}",
            count(sessions as f64),
            filled_in.as_secs_f64(),
            count(sessions as f64 / filled_in.as_secs_f64()),
            count(held as f64),
            mb(member_rss as f64)
        ));
        let all: Vec<Join> = (0..joins)
            .map(|r| join_once(&c, member, &format!("j{r}"), &args, held))
            .collect();
        let spread = |f: &dyn Fn(&Join) -> Option<f64>| {
            Spread::of(&all.iter().filter_map(f).collect::<Vec<_>>())
        };
        let took = spread(&|j| Some(j.took_ms));
        let hwm = spread(&|j| Some(j.hwm_kb as f64));
        t.row(vec![
            count(sessions as f64),
            joins.to_string(),
            took.show(ms),
            spread(&|j| j.logged_ms).show(ms),
            spread(&|j| Some(j.rss_kb as f64)).show(mb),
            hwm.show(mb),
            spread(&|j| Some(j.member_bytes as f64 / 1024.0)).show(mb),
            spread(&|j| Some(j.pushed as f64)).show(count),
        ]);
        results.push((sessions, took, hwm));
        drop(nodes);
        if sessions == 100_000 {
            // The 1 000 000 case, if this machine can take it.
            let big = 1_000_000;
            let projected = filled_in.as_secs_f64() * 10.0;
            let needed_kb = member_rss * 10 + 2 * 1024 * 1024;
            let available_kb = meminfo_kb("MemAvailable:");
            let skip = if opts.quick && !opts.full {
                Some("skipped in --quick mode (add --full to measure it)".to_string())
            } else if available_kb < needed_kb {
                Some(format!(
                    "skipped: the member would need about {} and {} are available",
                    mb(needed_kb as f64),
                    mb(available_kb as f64)
                ))
            } else if !opts.full && projected > MAX_DEFAULT_FILL.as_secs_f64() {
                Some(format!(
                    "skipped: its fill over HTTP would take about {projected:.0} s here (> {} s); \
                     run with --full to measure it",
                    MAX_DEFAULT_FILL.as_secs()
                ))
            } else {
                None
            };
            match skip {
                Some(why) => notes.push(format!("1 000 000 sessions: {why}")),
                None => plan.push((big, big_runs)),
            }
        }
    }
    for note in notes {
        t.note(note);
    }
    t.note("~200 bytes of attributes per session: one attribute \"profile\" of 193 bytes");
    t.note("member sent: replication bytes the existing node sent from the joiner's spawn until 1.5 s after it was ready (state transfer and anything else), MiB");
    t.note("also pushed by anti-entropy: sessions the member's link to the joiner sent again after comparing digests (its debug log), per join");
    t.print();

    for (sessions, took, hwm) in results {
        let (target_ms, label) = if sessions == 100_000 {
            (1000.0, "< 1 s")
        } else {
            (10_000.0, "< 10 s")
        };
        headline(
            summary,
            &format!("state transfer of {} sessions", count(sessions as f64)),
            ms(took.median),
            label,
            Some(took.median < target_ms),
        );
        if sessions == 1_000_000 {
            headline(
                summary,
                "joiner peak RSS with 1 000 000 sessions",
                mb(hwm.median),
                "< 600 MB",
                Some(hwm.median / 1024.0 < 600.0),
            );
        }
    }
}

/// A /proc/meminfo field in kB.
fn meminfo_kb(field: &str) -> u64 {
    common::proc_field("/proc/meminfo", field)
}

// ---- 4. memory per session ---------------------------------------------------------------------

/// One memory run: the measured node's RSS before and after the fill, in kB.
struct MemRun {
    before_kb: u64,
    after_kb: u64,
    failed: u64,
}

fn memory_per_session(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
    let runs = opts.pick(1, 3);
    let sessions: u64 = 100_000;
    let (name, value) = ("v", Bytes::from_static(b"0123456789"));
    let attribute_bytes = (name.len() + value.len()) as f64;
    let args = node_args(&["sessions.max_sessions=2000000"]);
    println!(
        "\n[4] memory per session: {runs} run(s) on a fresh single node, and on the replica of a \
         fresh 2-node cluster"
    );
    let mut cases: Vec<(&str, Vec<MemRun>)> = vec![
        ("single node, sessions made over HTTP", Vec::new()),
        (
            "replica (n2 of 2, sync), sessions received as deltas",
            Vec::new(),
        ),
    ];
    for r in 0..runs {
        for (k, n) in [(0usize, 1usize), (1, 2)] {
            let (_c, nodes) = start_cluster(&format!("bench-mem{n}-{r}"), n, &args);
            let measured = &nodes[n - 1];
            let held =
                |node: &NodeProc| node.status().and_then(|s| s["sessions"]["active"].as_u64());
            // Warm up the nodes (connections, buffers, links, the runtime) with a few
            // sessions first.
            rt.block_on(fill(nodes[0].http, 1000, 32, name, value.clone()));
            std::thread::sleep(Duration::from_millis(500));
            let before = rss_kb(pid(measured));
            let start_count = held(measured).unwrap_or(0);
            let (_, failed) = rt.block_on(fill(nodes[0].http, sessions, 32, name, value.clone()));
            std::thread::sleep(Duration::from_millis(1000));
            let after = rss_kb(pid(measured));
            let made = held(measured).unwrap_or(0).saturating_sub(start_count);
            assert_eq!(
                made + failed,
                sessions,
                "sessions held on {}",
                measured.name
            );
            cases[k].1.push(MemRun {
                before_kb: before,
                after_kb: after,
                failed,
            });
        }
    }
    let mut t = Table::new(
        "[4] memory per session (one attribute \"v\" of 10 bytes; (RSS after − before) / 100 000, minus 11 attribute bytes)",
        &[
            "node",
            "runs",
            "RSS before",
            "RSS after",
            "failed",
            "bytes/session beyond attribute",
        ],
    );
    let mut medians = Vec::new();
    for (label, rows) in &cases {
        let per: Vec<f64> = rows
            .iter()
            .map(|r| {
                (r.after_kb.saturating_sub(r.before_kb) * 1024) as f64 / sessions as f64
                    - attribute_bytes
            })
            .collect();
        let s = Spread::of(&per);
        medians.push(s.median);
        let kb = |f: fn(&MemRun) -> u64| {
            Spread::of(&rows.iter().map(|r| f(r) as f64).collect::<Vec<_>>()).show(mb)
        };
        t.row(vec![
            label.to_string(),
            rows.len().to_string(),
            kb(|r| r.before_kb),
            kb(|r| r.after_kb),
            rows.iter().map(|r| r.failed).sum::<u64>().to_string(),
            s.show(|x| format!("{x:.0} B")),
        ]);
    }
    t.note("RSS counts everything the allocator holds for the sessions (maps, attribute vectors, values, allocator slack)");
    t.print();
    headline(
        summary,
        "memory per session beyond attribute bytes",
        format!("{:.0} B", medians[0]),
        "< 250 B",
        Some(medians[0] < 250.0),
    );
    headline(
        summary,
        "the same on a replica (sessions received as deltas)",
        format!("{:.0} B", medians[1]),
        "< 250 B",
        Some(medians[1] < 250.0),
    );
}

// ---- 5. bytes on the wire per delta ------------------------------------------------------------

fn bytes_per_delta(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
    let runs = opts.pick(2, 5);
    let writes = opts.pick(1000, 3000);
    println!("\n[5] bytes on the wire per delta: 2-node clusters, {runs} runs");
    let mut t = Table::new(
        "[5] bytes on the wire per one-attribute delta (attribute \"x\", value of at most 7 bytes), 2 nodes",
        &[
            "load",
            "sender bytes/delta",
            "receiver (acks) bytes/delta",
            "deltas per ack",
        ],
    );
    let mut sync_bytes = f64::NAN;
    let mut sync_ack = f64::NAN;
    for (mode, clients) in [("sync", 1usize), ("async", CLIENTS)] {
        let setting = format!("sessions.replication={mode}");
        let (_c, nodes) = start_cluster(&format!("bench-wire-{mode}"), 2, &node_args(&[&setting]));
        let all = targets(&nodes);
        let (mut sent, mut acks) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (n1, n2) = rt.block_on(async {
                let before = sample_all(&all).await;
                let failed = if clients == 1 {
                    sequential_writes(all[0].http, 0, writes).await.1
                } else {
                    write_load(&all, &all[..1], clients, Duration::from_secs(1))
                        .await
                        .failures
                };
                assert_eq!(failed, 0, "failed writes while measuring bytes per delta");
                drained(&all).await;
                // Let the access-time batch of these writes go out as well.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let after = sample_all(&all).await;
                (after[0].since(&before[0]), after[1].since(&before[1]))
            });
            let deltas = n1.deltas_sent.max(1) as f64;
            sent.push(n1.bytes_sent as f64 / deltas);
            acks.push(n2.bytes_sent as f64 / deltas);
        }
        let (s, a) = (Spread::of(&sent), Spread::of(&acks));
        let label = if clients == 1 {
            sync_bytes = s.median;
            sync_ack = a.median;
            format!("sync, 1 client, {writes} sequential writes")
        } else {
            format!("async, {clients} clients on n1 for 1 s")
        };
        // One Ack frame per Deltas frame, of about the same size: the sync run (one delta
        // per frame) gives its size.
        let per_frame = sync_ack / a.median;
        t.row(vec![
            label,
            s.show(|x| format!("{x:.1} B")),
            a.show(|x| format!("{x:.1} B")),
            format!("≈ {per_frame:.1}"),
        ]);
    }
    t.note("sender bytes: replication.bytes_sent of n1 (every frame it sent on its links, 4-byte length prefixes included: the delta frames, plus the access-time batches (one small frame per 250 ms) and any anti-entropy digest) / its deltas_sent");
    t.note("receiver bytes: replication.bytes_sent of n2 over the same deltas: its acknowledgements (one per frame) and digest answers");
    t.note("deltas per ack: deltas over Ack frames (an ack covers every frame that arrived before it was sent, so frames are at least as many; the Ack size is taken from the sync run)");
    t.note("every frame carries the cluster name (here ~25 bytes) and the sender id");
    t.print();
    headline(
        summary,
        "bytes on the wire per one-attribute delta (sync)",
        format!("{sync_bytes:.0} B"),
        "(report)",
        None,
    );
}
