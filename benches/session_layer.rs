//! Issue 13's benchmark: what a session costs an axum app. One app, one handler that reads
//! one session attribute and writes it back incremented (`n`), served four ways, measured
//! in one run with the same load:
//!
//! - (a) `plain`: no session layer (the handler answers a constant): the app's own cost;
//! - (b) `tower-sessions`: tower-sessions' `SessionManagerLayer` with its `MemoryStore`;
//! - (c) `deltacast-1`: deltacast's session layer on one node (nothing to replicate to);
//! - (d) `deltacast-3-sync`: deltacast's layer on the first of three nodes of one cluster in
//!   sync mode: every write is acknowledged by both other nodes before its answer leaves.
//!   All three nodes run in this process, on the apps' runtime;
//! - (d') `deltacast-3-sync-procs`: the same, with the two other nodes as `deltacast node`
//!   processes, as they run in a real cluster (where they are on other machines; here they
//!   share this machine's cores, and their CPU is counted in the figure below).
//!
//! The load: `--clients` (16) keep-alive HTTP/1.1 connections, each its own client with its
//! own session (the cookie of its first answer, sent back on every request after), as many
//! requests as they can for `--duration` seconds (5) after one second of warm-up, `--rounds`
//! (3) rounds with the four targets interleaved so that drift hits each alike; medians of
//! the rounds are reported. The load generator runs in this process on a thread of its own,
//! the apps and nodes on a runtime of two worker threads: everything shares the machine's
//! cores, so the ratios in one run are the figures, not the absolute rates.
//!
//! Targets (issue 13): (c) at least 0.9 of (b); (d) at least 0.5 of (c); no errors.
//!
//! Run: `cargo bench --bench session_layer` (options `--duration S --rounds N --clients N`,
//! and `--only NAME` to load one target alone, e.g. under a profiler).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{COOKIE, HOST, SET_COOKIE};
use tokio::net::{TcpListener, TcpStream};

use deltacast::config::ReplicationMode;
use deltacast::{Node, Session};

const PATH: &str = "/hit";

struct Options {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    clients: usize,
    /// Load only the target of this name (for a profiler); the ratios then are not printed.
    only: Option<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a whole number, not {v:?}"))
            })
    };
    Options {
        duration: Duration::from_secs(value("--duration").unwrap_or(5)),
        warmup: Duration::from_secs(1),
        rounds: value("--rounds").unwrap_or(3) as usize,
        clients: value("--clients").unwrap_or(16) as usize,
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned(),
    }
}

fn main() {
    let opts = options();
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .expect("the servers' runtime");
    let targets = server.block_on(start_targets());
    println!(
        "session layer benchmark: {} keep-alive clients, each its own session; {} rounds of {:?} after {:?} of warm-up; load average {}",
        opts.clients,
        opts.rounds,
        opts.duration,
        opts.warmup,
        load_average()
    );
    let mut results: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        for (i, target) in targets.iter().enumerate() {
            if opts.only.as_ref().is_some_and(|only| only != target.name) {
                continue;
            }
            let pids: Vec<u32> = target.procs.iter().map(|p| p.child.id()).collect();
            let r = load(target.addr, &pids, &opts);
            eprintln!(
                "round {}: {:<18} {:>8.0} req/s  p99 {:>6} µs  server CPU {:>5.1} µs/req  errors {}",
                round + 1,
                target.name,
                r.rate,
                r.p99_us,
                r.server_cpu_us,
                r.errors
            );
            results[i].push(r);
        }
    }
    if opts.only.is_none() {
        report(&targets, &results);
    }
    server.block_on(async move {
        for target in targets {
            for node in target.nodes {
                node.shutdown().await;
            }
        }
    });
}

/// One way of serving the app.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The deltacast nodes behind it, stopped at the end.
    nodes: Vec<Node>,
    /// Its `deltacast node` processes, killed when dropped.
    procs: Vec<common::NodeProc>,
}

async fn start_targets() -> Vec<Target> {
    let plain = Router::new().route(PATH, get(|| async { "1" }));
    let tower = {
        use tower_sessions::{MemoryStore, SessionManagerLayer};
        async fn hit(session: tower_sessions::Session) -> String {
            let n: u64 = session.get("n").await.ok().flatten().unwrap_or(0);
            if session.insert("n", n + 1).await.is_err() {
                return "error".into();
            }
            (n + 1).to_string()
        }
        Router::new()
            .route(PATH, get(hit))
            .layer(SessionManagerLayer::new(MemoryStore::default()).with_secure(false))
    };
    let one = start_cluster("bench-layer-1", 1).await;
    let three = start_cluster("bench-layer-3", 3).await;
    let (beside, procs) = start_with_processes("bench-layer-3p").await;
    for nodes in [&one, &three, &beside] {
        nodes[0].serve(
            Router::new()
                .route(PATH, get(hit))
                .layer(nodes[0].session_layer()),
        );
    }
    vec![
        Target {
            name: "plain",
            addr: serve(plain).await,
            nodes: Vec::new(),
            procs: Vec::new(),
        },
        Target {
            name: "tower-sessions",
            addr: serve(tower).await,
            nodes: Vec::new(),
            procs: Vec::new(),
        },
        Target {
            name: "deltacast-1",
            addr: one[0].addresses().http,
            nodes: one,
            procs: Vec::new(),
        },
        Target {
            name: "deltacast-3-sync",
            addr: three[0].addresses().http,
            nodes: three,
            procs: Vec::new(),
        },
        Target {
            name: "deltacast-3-sync-procs",
            addr: beside[0].addresses().http,
            nodes: beside,
            procs,
        },
    ]
}

/// The handler of (c) and (d): one read, one write.
async fn hit(session: Session) -> String {
    let n: u64 = session.get("n").unwrap_or(0);
    session.insert("n", &(n + 1));
    (n + 1).to_string()
}

/// Serves `app` as an axum app does on its own: `axum::serve` on a port of loopback.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// `size` nodes of one cluster of their own (name, multicast group), in sync mode, each
/// seeing the others alive.
async fn start_cluster(name: &str, size: usize) -> Vec<Node> {
    let cluster = common::Cluster::new(name);
    let mut nodes = Vec::new();
    for i in 0..size {
        let mut config = cluster.in_process_config(&format!("n{}", i + 1));
        config.sessions.replication = ReplicationMode::Sync;
        nodes.push(Node::start(config).await.expect("the node starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alive = |node: &Node| {
            node.status()
                .members
                .iter()
                .filter(|m| m.state == "alive")
                .count()
        };
        if nodes.iter().all(|n| alive(n) == size - 1) {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "the {size} nodes of {name} did not all see each other within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node of its own cluster in this process (sync mode) and two `deltacast node`
/// processes of that cluster, once all three see each other.
async fn start_with_processes(name: &str) -> (Vec<Node>, Vec<common::NodeProc>) {
    let cluster = common::Cluster::new(name);
    let procs: Vec<common::NodeProc> = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || {
            ["n2", "n3"]
                .iter()
                .map(|n| cluster.node(n, &["--set", "sessions.replication=sync"]))
                .collect()
        }
    })
    .await
    .expect("the node processes start");
    let mut config = cluster.in_process_config("n1");
    config.sessions.replication = ReplicationMode::Sync;
    let node = Node::start(config).await.expect("the node starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alive = node
            .status()
            .members
            .iter()
            .filter(|m| m.state == "alive")
            .count();
        if alive == 2 && node.status().node.state == "ready" {
            return (vec![node], procs);
        }
        assert!(
            Instant::now() < deadline,
            "the nodes of {name} did not all see each other within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one round of load against one target gave.
struct Round {
    rate: f64,
    /// CPU time of the servers' runtime threads per answered request, in microseconds: what
    /// the ratio of rates comes from when the machine's cores are the limit, and a figure
    /// that other load on the machine disturbs less than the rates.
    server_cpu_us: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// `opts.clients` keep-alive clients against `addr` for the warm-up and the duration, on a
/// runtime of their own on this thread.
fn load(addr: SocketAddr, pids: &[u32], opts: &Options) -> Round {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the clients' runtime");
    client.block_on(async {
        let measuring = Arc::new(AtomicBool::new(false));
        let mut cpu_at_start = Duration::ZERO;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..opts.clients {
            tasks.push(tokio::spawn(one_client(
                addr,
                measuring.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(opts.warmup).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        cpu_at_start = servers_cpu().unwrap_or(cpu_at_start) + processes_cpu(pids);
        tokio::time::sleep(opts.duration).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu = servers_cpu().map(|c| (c + processes_cpu(pids)).saturating_sub(cpu_at_start));
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (l, e) = task.await.expect("a client ran");
            latencies.extend(l);
            errors += e;
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0)
        };
        Round {
            rate: latencies.len() as f64 / elapsed.as_secs_f64(),
            server_cpu_us: cpu.map_or(f64::NAN, |c| {
                c.as_secs_f64() * 1e6 / latencies.len().max(1) as f64
            }),
            p50_us: at(0.50),
            p99_us: at(0.99),
            errors,
        }
    })
}

/// One client: one connection, its own session; the latency of each request answered
/// while `measuring`, in microseconds, and the requests that failed.
async fn one_client(
    addr: SocketAddr,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut cookie: Option<String> = None;
    'connection: while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr).await else {
            errors += 1;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let mut request = Request::get(PATH).header(HOST, addr.to_string());
            if let Some(c) = &cookie {
                request = request.header(COOKIE, c.as_str());
            }
            let request = request.body(Empty::<Bytes>::new()).expect("a request");
            let sent = Instant::now();
            let answer = match sender.send_request(request).await {
                Ok(answer) => answer,
                Err(_) => {
                    errors += 1;
                    continue 'connection;
                }
            };
            let ok = answer.status().is_success();
            if let Some(set) = answer
                .headers()
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
            {
                cookie = set.split(';').next().map(str::to_string);
            }
            if answer.into_body().collect().await.is_err() || !ok {
                errors += 1;
                continue 'connection;
            }
            if measuring.load(Ordering::Relaxed) {
                latencies.push(sent.elapsed().as_micros() as u64);
            }
        }
    }
    (latencies, errors)
}

/// CPU time (user and system) spent so far by the servers' runtime threads (`bench-server`), which
/// run the apps and the nodes (the load generator runs on the main thread): from
/// `/proc/self/task/*/stat`, in the kernel's clock ticks of 10 ms.
fn servers_cpu() -> Option<Duration> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... : the name ends at the last ')', then fields from the 3rd.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.contains("bench-server") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are the 14th and 15th fields; `rest` starts at the 3rd.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        ticks += field(14)? + field(15)?;
    }
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time of the node processes `pids`, all their threads.
fn processes_cpu(pids: &[u32]) -> Duration {
    Duration::from_nanos(pids.iter().map(|p| common::cpu_ns(*p)).sum())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(targets: &[Target], results: &[Vec<Round>]) {
    println!();
    println!(
        "| target | req/s (median) | req/s min–max | p50 µs | p99 µs | server CPU µs/req | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rates = Vec::new();
    for (target, rounds) in targets.iter().zip(results) {
        let rate = median(rounds.iter().map(|r| r.rate).collect());
        let min = rounds.iter().map(|r| r.rate).fold(f64::INFINITY, f64::min);
        let max = rounds.iter().map(|r| r.rate).fold(0.0, f64::max);
        let p50 = median(rounds.iter().map(|r| r.p50_us as f64).collect());
        let p99 = median(rounds.iter().map(|r| r.p99_us as f64).collect());
        let errors: u64 = rounds.iter().map(|r| r.errors).sum();
        let cpu = median(rounds.iter().map(|r| r.server_cpu_us).collect());
        println!(
            "| {} | {rate:.0} | {min:.0}–{max:.0} | {p50:.0} | {p99:.0} | {cpu:.1} | {errors} |",
            target.name
        );
        rates.push(rate);
    }
    let errors: u64 = results.iter().flatten().map(|r| r.errors).sum();
    let ratio = |a: usize, b: usize| rates[a] / rates[b].max(f64::MIN_POSITIVE);
    let met = |ok: bool| if ok { "yes" } else { "NO" };
    println!();
    println!("| figure | measured | target | met |");
    println!("|---|---:|---:|---|");
    let c_b = ratio(2, 1);
    let d_c = ratio(3, 2);
    println!(
        "| (c) deltacast-1 ÷ (b) tower-sessions | {c_b:.2} | ≥ 0.9 | {} |",
        met(c_b >= 0.9)
    );
    println!(
        "| (d) deltacast-3-sync ÷ (c) deltacast-1 | {d_c:.2} | ≥ 0.5 | {} |",
        met(d_c >= 0.5)
    );
    println!(
        "| (d') deltacast-3-sync-procs ÷ (c) deltacast-1 | {:.2} | ≥ 0.5 | {} |",
        ratio(4, 2),
        met(ratio(4, 2) >= 0.5)
    );
    println!("| (c) deltacast-1 ÷ (a) plain | {:.2} | | |", ratio(2, 0));
    println!(
        "| errors, all targets | {errors} | 0 | {} |",
        met(errors == 0)
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
