//! A normal client's latency under slowloris, on a node and through the balancer (issue 12's
//! figure): p50/p99 of keep-alive GETs of /status, without and with `--conns` slowloris
//! connections (each sending a header byte a second, reopened when closed) to the process
//! measured. Release binaries on loopback.
//!
//! `cargo bench --bench slowloris -- [--conns 2000] [--requests 500]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::io::Write;

use common::raw_http::KeepAlive;
use common::{BalancerProc, Cluster};

struct Opts {
    conns: usize,
    requests: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        conns: 2000,
        requests: 500,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--conns" => o.conns = value(),
            "--requests" => o.requests = value(),
            _ => {}
        }
    }
    o
}

/// Keeps `conns` slowloris connections open to `addr` until dropped.
struct Slowloris {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Slowloris {
    fn start(addr: SocketAddr, conns: usize) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            let connect = || -> Option<TcpStream> {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").ok()?;
                Some(c)
            };
            let mut all: Vec<Option<TcpStream>> = (0..conns).map(|_| connect()).collect();
            while !s.load(Ordering::Relaxed) {
                let round = Instant::now();
                for slot in &mut all {
                    let alive = slot.as_mut().is_some_and(|c| c.write_all(b"X").is_ok());
                    if !alive {
                        *slot = connect();
                    }
                }
                o.store(
                    all.iter().filter(|c| c.is_some()).count(),
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
            }
        });
        Slowloris {
            stop,
            open,
            thread: Some(thread),
        }
    }

    /// Waits (at most 60 s) until most of the connections are open.
    fn wait_open(&self, conns: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.open.load(Ordering::Relaxed) < conns * 9 / 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Latencies (µs, sorted) of `count` keep-alive GETs of /status; a closed connection is
/// reopened (its reconnect counted in that request's time), a failed request counts as
/// its time too.
fn latencies(addr: SocketAddr, count: usize) -> (Vec<u64>, usize) {
    let mut out = Vec::with_capacity(count);
    let mut failed = 0;
    let mut client: Option<KeepAlive> = None;
    for _ in 0..count {
        let t0 = Instant::now();
        let c = client.get_or_insert_with(|| KeepAlive::open(addr));
        c.send("/status");
        match c.answer() {
            Ok((200, _)) => {}
            _ => {
                failed += 1;
                client = None;
            }
        }
        out.push(t0.elapsed().as_micros() as u64);
    }
    out.sort_unstable();
    (out, failed)
}

fn pct(sorted: &[u64], p: f64) -> String {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.2} ms", sorted[i] as f64 / 1000.0)
}

fn main() {
    let o = opts();
    if let Err(e) = deltacast::limits::raise_open_files() {
        eprintln!("could not raise the open file limit: {e}");
    }
    let cluster = Cluster::new("bench-slowloris");
    let node = cluster.node("n1", &[] as &[&str]);
    let member = format!("n1=http://{}", node.http);
    let balancer = BalancerProc::spawn(
        &cluster,
        &["--member", &member, "--set", "balancer.discover=false"],
    );
    println!(
        "a normal client under {} slowloris connections ({} keep-alive GETs of /status each row)",
        o.conns, o.requests
    );
    println!("| target | slowloris open | p50 | p99 | max | failed |\n|---|---|---|---|---|---|");
    for (name, addr) in [("node", node.http), ("balancer → node", balancer.addr)] {
        let (base, failed) = latencies(addr, o.requests);
        println!(
            "| {name}, no attack | 0 | {} | {} | {} | {failed} |",
            pct(&base, 0.5),
            pct(&base, 0.99),
            pct(&base, 1.0)
        );
        let attack = Slowloris::start(addr, o.conns);
        let open = attack.wait_open(o.conns);
        let (under, failed) = latencies(addr, o.requests);
        println!(
            "| {name}, slowloris | {open} | {} | {} | {} | {failed} |",
            pct(&under, 0.5),
            pct(&under, 0.99),
            pct(&under, 1.0)
        );
        drop(attack);
    }
}
