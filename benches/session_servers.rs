//! Issue 15's benchmark: one attribute write per request (`PUT /session/attributes/n`)
//! against `deltacast node` processes whose sessions live in
//! - `replicated`: every node holds every session (sync replication);
//! - `redis`: one `redis-server`;
//! - `redis-cluster`: a three-master Redis Cluster;
//! - `memcached`: one `memcached` (skipped, saying so, where it is not installed);
//!
//! each with 1 and with 3 nodes (the clients spread over the nodes), in one run; plus
//! `redis-benchmark -t hset` (not pipelined, the same number of clients) on the same
//! `redis-server`, the limit a Redis-backed node can approach; and the node's RSS as the
//! sessions in Redis grow (every request of that phase makes a new session).
//!
//! The load: `--clients` (16) keep-alive HTTP/1.1 connections, each with its own session
//! (the cookie of its first answer), as many requests as they can for `--duration` seconds
//! (5) after one second of warm-up; `--rounds` (2) rounds with the targets interleaved;
//! medians reported. Everything (servers, nodes, the load generator) shares this machine's
//! cores, so ratios in one run are the figures, not the absolute rates.
//!
//! Targets (issue 15): `redis-1` at least 0.5 of `replicated-1`, and at least 0.5 of
//! `redis-benchmark`'s HSET rate; node RSS flat (under 30 MB) with `--sessions` (200000;
//! 1000000 for the figure) sessions in Redis.
//!
//! Besides the rates, each row gives the CPU time per request of the nodes, of the session
//! server and of the load generator (from `/proc/<pid>/task/*/schedstat`; for
//! `redis-benchmark`, its own from its rusage), figures that vary far less from run to run
//! on a shared machine than the rates do; and what they make of the HSET ratio: the whole
//! loop's CPU per request (the rate ratio where everything shares the cores) and the
//! server's alone (the rate ratio where the server's own core is the bottleneck), with the
//! time Redis spends inside the commands (`INFO commandstats`).
//!
//! Run: `cargo bench --bench session_servers` (needs `redis-server`, `redis-cli` and
//! `redis-benchmark`: Debian's redis-server and redis-tools; options `--duration S
//! --rounds N --clients N --sessions N --only NAME[,NAME...]`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{COOKIE, HOST, SET_COOKIE};
use tokio::net::TcpStream;

use common::memcached::MemcachedServer;
use common::redis::{RedisCluster, RedisServer, command_stat};
use common::{Cluster, FAST, NodeProc, proc_status, wait_until};

const PATH: &str = "/session/attributes/n";

struct Options {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    clients: usize,
    sessions: u64,
    only: Option<String>,
}

impl Options {
    /// Whether `name` is measured: every target without `--only`, else those that start
    /// with one of its comma-separated prefixes (`--only replicated-1,redis-1,rss`).
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.split(',').any(|p| name.starts_with(p)))
    }
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
        rounds: value("--rounds").unwrap_or(2) as usize,
        clients: value("--clients").unwrap_or(16) as usize,
        sessions: value("--sessions").unwrap_or(200_000),
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned(),
    }
}

/// One way of serving the sessions: its nodes, the clients spread over them.
struct Target {
    name: String,
    nodes: Vec<NodeProc>,
    /// The session server's processes (none for the replicated store).
    servers: Vec<u32>,
}

fn start_nodes(name: &str, count: usize, store: &str) -> Vec<NodeProc> {
    let cluster = Cluster::new(name);
    let set = format!("sessions.store={store}");
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--set", &set]);
    let nodes: Vec<NodeProc> = (1..=count)
        .map(|i| cluster.node(&format!("n{i}"), &args))
        .collect();
    wait_until(Duration::from_secs(30), "the nodes see each other", || {
        nodes
            .iter()
            .all(|n| n.members("alive").is_some_and(|m| m.len() == count - 1))
            .then_some(())
    });
    nodes
}

fn main() {
    let opts = options();
    let available = ["redis-server", "redis-cli", "redis-benchmark"]
        .iter()
        .all(|bin| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !available {
        eprintln!(
            "session_servers: redis-server, redis-cli and redis-benchmark are needed (Debian's redis-server and redis-tools)"
        );
        return;
    }
    let redis = RedisServer::start("bench-session-servers");
    let cluster = RedisCluster::start("bench-session-servers-cluster");
    let memcached = common::memcached::available("the memcached rows").then(MemcachedServer::start);
    let mut stores = vec![
        ("replicated", "replicated".to_string(), Vec::new()),
        ("redis", redis.url(), redis.pid().into_iter().collect()),
        (
            "redis-cluster",
            cluster.url(),
            cluster
                .servers
                .iter()
                .filter_map(RedisServer::pid)
                .collect(),
        ),
    ];
    if let Some(m) = &memcached {
        stores.push(("memcached", m.url(), m.pid().into_iter().collect()));
    }
    let mut targets = Vec::new();
    for (kind, url, servers) in stores {
        for count in [1, 3] {
            let name = format!("{kind}-{count}");
            if !opts.wants(&name) {
                continue;
            }
            targets.push(Target {
                nodes: start_nodes(&format!("bench-{name}"), count, &url),
                name,
                servers: servers.clone(),
            });
        }
    }
    println!(
        "session servers benchmark: one attribute write per request, {} keep-alive clients each with its own session; {} rounds of {:?} after {:?} of warm-up; load average {}",
        opts.clients,
        opts.rounds,
        opts.duration,
        opts.warmup,
        load_average()
    );
    let mut results: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    let mut hsets = Vec::new();
    let redis_pid: Vec<u32> = redis.pid().into_iter().collect();
    for round in 0..opts.rounds {
        for (i, target) in targets.iter().enumerate() {
            let addrs: Vec<SocketAddr> = target.nodes.iter().map(|n| n.http).collect();
            let nodes: Vec<u32> = target.nodes.iter().map(|n| n.child.id()).collect();
            let r = load(&addrs, &opts, true, &nodes, &target.servers);
            eprintln!(
                "round {}: {:<16} {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  CPU µs/req node {:>5.1} server {:>5.1}  errors {}",
                round + 1,
                target.name,
                r.rate,
                r.p50_us,
                r.p99_us,
                r.node_cpu_us,
                r.server_cpu_us,
                r.errors
            );
            results[i].push(r);
        }
        // In every round, so that the limit sees the same machine as the targets.
        let before = Cpu::of(&redis_pid);
        if let Some((rate, client_us)) = redis_benchmark_hset(redis.port, opts.clients) {
            let server_us = before.used_us(&redis_pid) / HSET_REQUESTS as f64;
            eprintln!(
                "round {}: redis-benchmark HSET {rate:>8.0} req/s  CPU µs/req server {server_us:>5.1} client {client_us:>5.1}",
                round + 1
            );
            hsets.push(Hset {
                rate,
                server_cpu_us: server_us,
                client_cpu_us: client_us,
            });
        }
    }
    report(&targets, &results, &hsets);
    inside_redis(&redis);
    drop(targets);
    rss_as_sessions_grow(&redis, &opts);
}

/// One `redis-benchmark` run.
struct Hset {
    rate: f64,
    /// CPU time of `redis-server` per request, µs.
    server_cpu_us: f64,
    /// CPU time of `redis-benchmark` itself per request, µs.
    client_cpu_us: f64,
}

struct Round {
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// CPU time of the target's node processes per request, µs.
    node_cpu_us: f64,
    /// CPU time of the session server's processes per request, µs (0 for none).
    server_cpu_us: f64,
    /// CPU time of this process (the load generator) per request, µs.
    client_cpu_us: f64,
}

/// CPU time used so far by some processes (every thread), to be read again later.
struct Cpu {
    at: Instant,
    ns: u64,
}

impl Cpu {
    fn of(pids: &[u32]) -> Cpu {
        Cpu {
            at: Instant::now(),
            ns: pids.iter().map(|&p| common::cpu_ns(p)).sum(),
        }
    }

    /// The CPU time `pids` used since, in µs.
    fn used_us(&self, pids: &[u32]) -> f64 {
        Cpu::of(pids).ns.saturating_sub(self.ns) as f64 / 1000.0
    }

    fn elapsed(&self) -> Duration {
        self.at.elapsed()
    }
}

/// `opts.clients` keep-alive clients spread over `addrs`, for the warm-up and the duration;
/// with `keep_session` each keeps the session of its first answer, else every request
/// makes a new one.
fn load(
    addrs: &[SocketAddr],
    opts: &Options,
    keep_session: bool,
    nodes: &[u32],
    servers: &[u32],
) -> Round {
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the clients' runtime");
    client.block_on(async {
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..opts.clients)
            .map(|i| {
                tokio::spawn(one_client(
                    addrs[i % addrs.len()],
                    keep_session,
                    measuring.clone(),
                    stop.clone(),
                    None,
                ))
            })
            .collect();
        tokio::time::sleep(opts.warmup).await;
        let node_cpu = Cpu::of(nodes);
        let server_cpu = Cpu::of(servers);
        let me = [std::process::id()];
        let client_cpu = Cpu::of(&me);
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(opts.duration).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = node_cpu.elapsed();
        let (node_us, server_us) = (node_cpu.used_us(nodes), server_cpu.used_us(servers));
        let client_us = client_cpu.used_us(&me);
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
        // Requests answered while the CPU was counted (the clients stop within one
        // request of `stop`).
        let requests = latencies.len() as f64;
        Round {
            rate: requests / elapsed.as_secs_f64(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            errors,
            node_cpu_us: node_us / requests.max(1.0),
            server_cpu_us: server_us / requests.max(1.0),
            client_cpu_us: client_us / requests.max(1.0),
        }
    })
}

/// One client on one connection (reconnecting after an error): PUTs until `stop`, the
/// latency of each answered while `measuring`, and the requests that failed. `count`, if
/// given, counts every successful request.
async fn one_client(
    addr: SocketAddr,
    keep_session: bool,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    count: Option<Arc<AtomicU64>>,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut cookie: Option<String> = None;
    let mut n = 0u64;
    'connection: while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
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
            n += 1;
            let mut request = Request::put(PATH).header(HOST, addr.to_string());
            if let Some(c) = cookie.as_ref().filter(|_| keep_session) {
                request = request.header(COOKIE, c.as_str());
            }
            let request = request
                .body(Full::new(Bytes::from(n.to_string())))
                .expect("a request");
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
            if let Some(count) = &count {
                count.fetch_add(1, Ordering::Relaxed);
            }
            if measuring.load(Ordering::Relaxed) {
                latencies.push(sent.elapsed().as_micros() as u64);
            }
        }
    }
    (latencies, errors)
}

/// The requests of one `redis-benchmark` run.
const HSET_REQUESTS: u64 = 200_000;

/// `redis-benchmark -t hset` with `clients` connections, not pipelined: requests/s, and
/// its own CPU time per request (µs; from the rusage of the children this process waited
/// for, which during the run is that one child alone).
fn redis_benchmark_hset(port: u16, clients: usize) -> Option<(f64, f64)> {
    let children = || {
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .map(|u| {
                let us = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
                us(u.user_time()) + us(u.system_time())
            })
            .ok()
    };
    let before = children()?;
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "hset", "-n", &HSET_REQUESTS.to_string(), "-q"])
        .args(["-c", &clients.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "HSET: 81234.56 requests per second, p50=0.111 msec" (\r-separated progress before).
    let line = text
        .rsplit('\r')
        .next()?
        .lines()
        .find(|l| l.contains("HSET"))?;
    let rate = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((rate, (children()? - before) / HSET_REQUESTS as f64))
}

/// One node over `redis`, clients that make a new session with every request, the node's
/// RSS before and at each fifth of `opts.sessions`.
fn rss_as_sessions_grow(redis: &RedisServer, opts: &Options) {
    if opts.only.is_some() && !opts.wants("rss") {
        return;
    }
    let nodes = start_nodes("bench-rss", 1, &redis.url());
    let node = &nodes[0];
    let pid = node.child.id();
    let rss_kb = || proc_status(pid, "VmRSS:");
    let keys = || {
        redis
            .cli(&["DBSIZE"])
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = keys();
    println!();
    println!("| sessions in Redis | node RSS MB |");
    println!("|---:|---:|");
    println!("| {before} | {:.1} |", rss_kb() as f64 / 1024.0);
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the clients' runtime");
    let made = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..opts.clients)
        .map(|_| {
            client.spawn(one_client(
                node.http,
                false,
                Arc::new(AtomicBool::new(false)),
                stop.clone(),
                Some(made.clone()),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut max_rss = 0;
    for step in 1..=5 {
        let goal = opts.sessions * step / 5;
        while made.load(Ordering::Relaxed) < goal {
            std::thread::sleep(Duration::from_millis(100));
            max_rss = max_rss.max(rss_kb());
        }
        println!("| {} | {:.1} |", keys(), rss_kb() as f64 / 1024.0);
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = client.block_on(task);
    }
    let rate = opts.sessions as f64 / started.elapsed().as_secs_f64();
    println!();
    println!(
        "| figure | measured | target | met |\n|---|---:|---:|---|\n| node RSS at most, {} new sessions ({rate:.0}/s) | {:.1} MB | < 30 MB | {} |",
        opts.sessions,
        max_rss as f64 / 1024.0,
        if max_rss < 30 * 1024 { "yes" } else { "NO" }
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(targets: &[Target], results: &[Vec<Round>], hsets: &[Hset]) {
    println!();
    println!(
        "| target | writes/s (median) | min–max | p50 µs | p99 µs | node CPU µs/req | server CPU µs/req | client CPU µs/req | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rates = std::collections::HashMap::new();
    // node, server and client CPU µs per request of each target.
    let mut cpus = std::collections::HashMap::new();
    for (target, rounds) in targets.iter().zip(results) {
        let rate = median(rounds.iter().map(|r| r.rate).collect());
        let min = rounds.iter().map(|r| r.rate).fold(f64::INFINITY, f64::min);
        let max = rounds.iter().map(|r| r.rate).fold(0.0, f64::max);
        let p50 = median(rounds.iter().map(|r| r.p50_us as f64).collect());
        let p99 = median(rounds.iter().map(|r| r.p99_us as f64).collect());
        let node = median(rounds.iter().map(|r| r.node_cpu_us).collect());
        let server = median(rounds.iter().map(|r| r.server_cpu_us).collect());
        let client = median(rounds.iter().map(|r| r.client_cpu_us).collect());
        let errors: u64 = rounds.iter().map(|r| r.errors).sum();
        println!(
            "| {} | {rate:.0} | {min:.0}–{max:.0} | {p50:.0} | {p99:.0} | {node:.1} | {server:.1} | {client:.1} | {errors} |",
            target.name
        );
        rates.insert(target.name.as_str(), rate);
        cpus.insert(target.name.as_str(), (node, server, client));
    }
    // The medians of the HSET runs: rate, server and client CPU µs per request.
    let hset_medians = (!hsets.is_empty()).then(|| {
        (
            median(hsets.iter().map(|h| h.rate).collect()),
            median(hsets.iter().map(|h| h.server_cpu_us).collect()),
            median(hsets.iter().map(|h| h.client_cpu_us).collect()),
        )
    });
    let hset = hset_medians.map(|(rate, _, _)| rate);
    let hset_cpu = hset_medians.map(|(_, server, client)| (server, client));
    if let Some((hset, server, client)) = hset_medians {
        let min = hsets.iter().map(|h| h.rate).fold(f64::INFINITY, f64::min);
        let max = hsets.iter().map(|h| h.rate).fold(0.0, f64::max);
        println!(
            "| redis-benchmark -t hset (same server, not pipelined) | {hset:.0} | {min:.0}–{max:.0} | | | | {server:.1} | {client:.1} | |"
        );
    }
    let met = |ok: bool| if ok { "yes" } else { "NO" };
    println!();
    println!("| figure | measured | target | met |");
    println!("|---|---:|---:|---|");
    if let (Some(redis), Some(replicated)) = (rates.get("redis-1"), rates.get("replicated-1")) {
        let r = redis / replicated.max(f64::MIN_POSITIVE);
        println!(
            "| redis-1 ÷ replicated-1 | {r:.2} | ≥ 0.5 | {} |",
            met(r >= 0.5)
        );
    }
    if let (Some(redis), Some(hset)) = (rates.get("redis-1"), hset) {
        let r = redis / hset.max(f64::MIN_POSITIVE);
        println!(
            "| redis-1 ÷ redis-benchmark HSET | {r:.2} | ≥ 0.5 | {} |",
            met(r >= 0.5)
        );
    }
    // What decides that ratio: where the nodes, the server and the load generator share the
    // cores and fill them, the rates stand as the CPU one request costs all of them (the
    // whole loop); where the session server has a core of its own and that core is the
    // bottleneck, as the server's CPU per request alone.
    if let (Some((node, server, client)), Some((hset_server, hset_client))) =
        (cpus.get("redis-1"), hset_cpu)
    {
        let shared = (hset_server + hset_client) / (node + server + client).max(f64::MIN_POSITIVE);
        println!(
            "| CPU µs/req of the whole loop, HSET {:.1} ÷ redis-1 {:.1}: the rate ratio where all share the cores | {shared:.2} | (none) | |",
            hset_server + hset_client,
            node + server + client
        );
        let own = hset_server / server.max(f64::MIN_POSITIVE);
        println!(
            "| server CPU µs/req, HSET {hset_server:.1} ÷ redis-1 {server:.1}: the rate ratio where the server's core is the bottleneck | {own:.2} | (none) | |"
        );
    }
    if let (Some(mc), Some(replicated)) = (rates.get("memcached-1"), rates.get("replicated-1")) {
        let r = mc / replicated.max(f64::MIN_POSITIVE);
        println!("| memcached-1 ÷ replicated-1 | {r:.2} | (none) | |");
    }
    if let (Some(mc), Some(redis)) = (rates.get("memcached-1"), rates.get("redis-1")) {
        let r = mc / redis.max(f64::MIN_POSITIVE);
        println!("| memcached-1 ÷ redis-1 | {r:.2} | (none) | |");
    }
    let errors: u64 = results.iter().flatten().map(|r| r.errors).sum();
    println!(
        "| errors, all targets | {errors} | 0 | {} |",
        met(errors == 0)
    );
}

/// The time Redis spent inside the commands themselves (`INFO commandstats`: the scripts
/// of the `redis-*` targets are the `EVALSHA` calls, `redis-benchmark` the `HSET` ones), what
/// is left of the server's CPU per request without its socket work.
fn inside_redis(redis: &RedisServer) {
    let Some(stats) = redis.cli(&["INFO", "commandstats"]) else {
        return;
    };
    let per_call = |command: &str| {
        command_stat(&stats, command, "usec_per_call").and_then(|v| v.parse::<f64>().ok())
    };
    if let (Some(evalsha), Some(hset)) = (per_call("evalsha"), per_call("hset")) {
        println!(
            "| time inside Redis per call (INFO commandstats): EVALSHA (the scripts) {evalsha:.2} µs, HSET {hset:.2} µs | | (none) | |"
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
