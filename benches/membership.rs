//! Membership figures, measured on real processes over loopback multicast with the
//! default timing (heartbeat 500 ms, drop 3000 ms):
//! - convergence time of 3 and of 8 nodes started together;
//! - time from kill -9 of a node to its removal on the others;
//! - CPU and memory of an idle node.
//!
//! Run: `cargo bench --bench membership` (add `-- --quick` for fewer, shorter runs; add
//! `-- --sealed` to give every node a cluster key: a node then admits a new member only
//! after its proof of life, a sealed ping on its replication port).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, NodeProc, time_until};
use nix::sys::signal::Signal;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let key = std::env::args()
        .any(|a| a == "--sealed")
        .then(common::KeyFile::new);
    let args: Vec<String> = key.as_ref().map(|k| k.args().to_vec()).unwrap_or_default();
    let args = &args[..];
    let (convergence_runs, kill_runs, idle_secs) = if quick { (3, 5, 10) } else { (5, 10, 30) };
    println!(
        "deltacast membership benchmark ({} mode{})",
        if quick { "quick" } else { "full" },
        if key.is_some() {
            ", --sealed: every node with a cluster key"
        } else {
            ""
        }
    );
    println!("figure                                   runs   median      min      max");
    for n in [3, 8] {
        let samples: Vec<Duration> = (0..convergence_runs)
            .map(|_| convergence(n, args))
            .collect();
        report(
            &format!("convergence of {n} nodes started together"),
            samples,
        );
    }
    let samples: Vec<Duration> = (0..kill_runs).map(|_| kill_to_removal(args)).collect();
    report("kill -9 to removal on the others", samples);
    idle(idle_secs, args);
}

fn all_converged(nodes: &[NodeProc]) -> bool {
    nodes.iter().all(|n| {
        n.members("alive")
            .is_some_and(|m| m.len() == nodes.len() - 1)
    })
}

/// From the first spawn until every node lists every other as alive.
fn convergence(n: usize, args: &[String]) -> Duration {
    let c = Cluster::new("bench-converge");
    let start = Instant::now();
    let nodes: Vec<NodeProc> = (1..=n).map(|i| c.node(&format!("n{i}"), args)).collect();
    time_until(Duration::from_secs(30), || all_converged(&nodes)).expect("the nodes converge");
    start.elapsed()
}

/// From the SIGKILL until both survivors no longer list the victim.
fn kill_to_removal(args: &[String]) -> Duration {
    let c = Cluster::new("bench-kill");
    let a = c.node("a", args);
    let b = c.node("b", args);
    let mut victim = c.node("victim", args);
    let trio = [a, b];
    time_until(Duration::from_secs(30), || {
        trio.iter()
            .all(|n| n.members("alive").is_some_and(|m| m.len() == 2))
            && victim.members("alive").is_some_and(|m| m.len() == 2)
    })
    .expect("the nodes converge");
    // Kill at a random point of the heartbeat cycle, as a crash would.
    std::thread::sleep(Duration::from_millis(rand::random_range(0..500)));
    victim.signal(Signal::SIGKILL);
    let killed = Instant::now();
    time_until(Duration::from_secs(30), || {
        trio.iter()
            .all(|n| n.members("").is_some_and(|m| m.len() == 1))
    })
    .expect("the victim is removed");
    let took = killed.elapsed();
    let _ = victim.wait_exit(Duration::from_secs(5));
    took
}

/// CPU% and RSS of each node of an idle 3-node cluster over `secs` seconds.
fn idle(secs: u64, args: &[String]) {
    let c = Cluster::new("bench-idle");
    let nodes: Vec<NodeProc> = (1..=3).map(|i| c.node(&format!("n{i}"), args)).collect();
    time_until(Duration::from_secs(30), || all_converged(&nodes)).expect("the nodes converge");
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<u64> = nodes.iter().map(|n| common::cpu_ns(n.child.id())).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t0.elapsed().as_nanos() as f64;
    println!("idle node over {secs} s (3-node cluster, heartbeat 500 ms):");
    for (n, cpu0) in nodes.iter().zip(before) {
        let cpu = (common::cpu_ns(n.child.id()) - cpu0) as f64 / wall * 100.0;
        println!(
            "  {}: CPU {:.3} %  RSS {:.1} MB  threads {}",
            n.name,
            cpu,
            common::proc_status(n.child.id(), "VmRSS:") as f64 / 1024.0,
            common::proc_status(n.child.id(), "Threads:")
        );
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{what:<40} {:>4} {:>10} {:>8} {:>8}",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}
