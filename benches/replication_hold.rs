//! The figure of issue 12's note: a node's RSS under the replication-port hold attack,
//! before and after the port's budget. One node, default settings; the attacker (this
//! process) opens connections to its replication port one after another, proves each with
//! a valid Ping (the port has no key), announces a 16 MiB frame and sends it at a slow pace,
//! then holds the connection. Printed: the node's RSS before, at its peak, at the attack's
//! end (the node closed every connection, or the attacker gave up holding them) and once
//! the attacker left, and when the node closed the connections.
//!
//! Run: `cargo bench --bench replication_hold`; options `--connections N` (20),
//! `--sent MIB` (16: the whole frame but its last byte), `--rate KIB_PER_S` (512, per
//! connection; 0: as fast as the node takes it), `--hold SECS` (60: how long the attacker
//! holds a connection at most). `DELTACAST_BIN=path` measures another build of the node,
//! e.g. the code before the budget, built in a worktree of its own:
//!
//! ```text
//! git worktree add --detach ../repl-base 0b4dd19
//! (cd ../repl-base && CARGO_TARGET_DIR=target cargo build --release --bin deltacast)
//! DELTACAST_BIN=../repl-base/target/release/deltacast cargo bench --bench replication_hold
//! ```

#[path = "../tests/replication_port/attack.rs"]
mod attack;
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attack::Attack;
use common::{Cluster, proc_status, read_listening};

const MIB: usize = 1024 * 1024;

/// A node process, killed by its PID when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let mut connections = 20;
    let mut sent = 16 * MIB - 1;
    let mut rate = Some(512 * 1024);
    let mut hold = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--connections" => connections = value("--connections") as usize,
            "--sent" => sent = (value("--sent") as usize * MIB).min(16 * MIB - 1),
            "--rate" => rate = Some(value("--rate") * 1024).filter(|&r| r > 0),
            "--hold" => hold = Duration::from_secs(value("--hold")),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    let bin = std::env::var("DELTACAST_BIN").unwrap_or_else(|_| common::BIN.to_string());
    let cluster = Cluster::new("bench-hold");
    let mut child = Command::new(&bin)
        .arg("node")
        .args(["--cluster", &cluster.name])
        .args(["--multicast", &cluster.multicast])
        .args(["--name", "held"])
        .args(["--http", "127.0.0.1:0", "--replication", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let found = read_listening(&mut child, Duration::from_secs(30));
    let node = Node(child);
    let found = found.unwrap_or_else(|status| panic!("{bin} did not start: {status:?}"));
    let replication = found["node.replication"];
    let pid = node.0.id();
    // Let it settle (runtime, listeners, first heartbeats).
    std::thread::sleep(Duration::from_secs(2));
    let before_kb = proc_status(pid, "VmRSS:");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("node: {bin}");
    println!(
        "attack: {connections} connections, a 16 MiB frame announced, {:.1} MiB of it sent at {}, \
         held at most {hold:?}; load average {}",
        sent as f64 / MIB as f64,
        rate.map_or("full speed".to_string(), |r| format!(
            "{} KiB/s each",
            r / 1024
        )),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let started = Instant::now();
    let running = attack::start(
        replication,
        &cluster.name,
        Attack {
            connections,
            declared: deltacast::wire::MAX_FRAME,
            sent,
            rate,
            hold,
        },
    );
    // The node's RSS while the attack lasts: its peak, and the last look before the end.
    let mut peak_kb = before_kb;
    let mut last_kb = before_kb;
    while !running.finished() {
        last_kb = proc_status(pid, "VmRSS:");
        peak_kb = peak_kb.max(last_kb);
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended = running.wait();
    let took = started.elapsed();
    peak_kb = peak_kb.max(proc_status(pid, "VmHWM:"));
    // Once the attacker is gone (and the node had a moment to free what it held).
    std::thread::sleep(Duration::from_secs(1));
    let after_kb = proc_status(pid, "VmRSS:");
    let closed: Vec<Duration> = ended.iter().filter_map(|e| e.closed_after).collect();
    let written: usize = ended.iter().map(|e| e.sent).sum();
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "RSS: {:.0} MB before, {:.0} MB at peak (+{:.0}), {:.0} MB at the attack's end \
         ({:.1} s), {:.0} MB once the attacker left",
        mb(before_kb),
        mb(peak_kb),
        mb(peak_kb.saturating_sub(before_kb)),
        mb(last_kb),
        took.as_secs_f64(),
        mb(after_kb)
    );
    println!(
        "connections closed by the node: {} of {connections}{}; {:.0} MiB written by the \
         attacker; the attack lasted {:.1} s",
        closed.len(),
        match (closed.iter().min(), closed.iter().max()) {
            (Some(first), Some(last)) => format!(", after {first:.1?} to {last:.1?}"),
            _ => String::new(),
        },
        written as f64 / MIB as f64,
        took.as_secs_f64()
    );
}
