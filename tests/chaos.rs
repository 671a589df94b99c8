//! The chaos soak, bounded and ignored by default (it takes about two minutes):
//!
//! ```text
//! cargo test --release --test chaos -- --ignored --nocapture
//! ```
//!
//! Three nodes and a balancer, each on a host of the harness (`tests/common/hosts.rs`,
//! network namespaces: root only), a steady load through the balancer that records every
//! acknowledged write, and random faults for `DELTACAST_CHAOS_SECS` (default 120) seconds
//! from a seed (`DELTACAST_CHAOS_SEED`, printed): kill -9 of a node, a graceful restart, a
//! host's link cut for a few seconds. At least one node serves at every instant (a fault
//! is only made while two others serve, a kill waits until the last healed link's
//! anti-entropy had time to run, and a node is a victim again only 3 s after its last fault
//! ended), so no request may fail. At the end every fault is
//! undone, and every acknowledged write must be on every node.

mod common;

use std::time::{Duration, Instant};

use common::hosts::{Hosts, settle};
use common::load::Load;
use common::{FAST, wait_until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CONVERGE: Duration = Duration::from_secs(60);
/// A node healed or restarted this recently may still be catching up: no kill meanwhile.
const SETTLE_AFTER_HEAL: Duration = Duration::from_secs(3);

fn checked_ago(at: Instant) -> Duration {
    Instant::now().saturating_duration_since(at)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What a node's host is going through.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// Its node is down (killed or stopped) until then.
    Down(Instant),
    /// Its link is cut until then.
    Cut(Instant),
}

#[derive(Default, Debug)]
struct Figures {
    kills: u32,
    restarts: u32,
    cuts: u32,
    starts: u32,
}

#[test]
#[ignore = "a two-minute soak: cargo test --release --test chaos -- --ignored --nocapture"]
fn random_kills_restarts_and_link_cuts_under_load_fail_no_request_and_lose_no_acknowledged_write() {
    let Some(mut bed) = Hosts::new("chaos", &["n1", "n2", "n3", "lb"], FAST) else {
        return;
    };
    let secs = env_u64("DELTACAST_CHAOS_SECS").unwrap_or(120);
    let seed = env_u64("DELTACAST_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!("chaos soak: {secs} s, seed {seed} (DELTACAST_CHAOS_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = [0, 1, 2];
    for i in nodes {
        bed.start_node(i, &[]);
    }
    bed.wait_connected(&nodes, CONVERGE, "the nodes see each other");
    bed.start_balancer(3, &[]);
    wait_until(CONVERGE, "the balancer discovers every node", || {
        (bed.balancer_routes(3)? == ["n1", "n2", "n3"]).then_some(())
    });
    let lb = &bed.hosts[3];
    let load = Load::start(
        Some(&lb.ns),
        lb.balancer_local(),
        8,
        4,
        Duration::from_millis(10),
    );
    assert!(load.wait_acked(200, CONVERGE), "the load runs");

    let mut faults = [Fault::None; 3];
    // When each node's last fault ended: a node is a victim again only a while later, so
    // faults do not run back to back into one long outage.
    let mut whole_since = [Instant::now(); 3];
    let began = Instant::now();
    let mut figures = Figures::default();
    let mut last_heal = Instant::now() - SETTLE_AFTER_HEAL;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        // The pace of the chaos, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2000)));
        let now = Instant::now();
        for i in nodes {
            match faults[i] {
                Fault::Down(until) if now >= until => {
                    bed.start_node(i, &[]);
                    figures.starts += 1;
                    faults[i] = Fault::None;
                    last_heal = Instant::now();
                    whole_since[i] = last_heal;
                }
                Fault::Cut(until) if now >= until => {
                    bed.heal(i);
                    faults[i] = Fault::None;
                    last_heal = Instant::now();
                    whole_since[i] = last_heal;
                }
                _ => {}
            }
        }
        // Serving now: no fault, and ready by its own word.
        let serving: Vec<usize> = nodes
            .iter()
            .copied()
            .filter(|&i| faults[i] == Fault::None)
            .filter(|&i| bed.status(i).is_some_and(|s| s["node"]["state"] == "ready"))
            .collect();
        if serving.len() < 2 {
            continue;
        }
        let victim = serving[rng.random_range(0..serving.len())];
        if whole_since[victim].elapsed() < SETTLE_AFTER_HEAL {
            continue;
        }
        let name = bed.hosts[victim].name.clone();
        let lasts = Duration::from_millis(rng.random_range(1000..4000));
        // Kills and restarts twice as likely as cuts: they wait for a quiet cluster.
        let action = rng.random_range(0..5) / 2;
        let t = began.elapsed().as_secs_f64();
        match action {
            0 if last_heal.elapsed() >= SETTLE_AFTER_HEAL
                && faults.iter().all(|f| *f == Fault::None) =>
            {
                eprintln!("{t:6.1}s kill -9 {name}, back in {lasts:?}");
                bed.kill(victim);
                figures.kills += 1;
                faults[victim] = Fault::Down(Instant::now() + lasts);
            }
            1 if last_heal.elapsed() >= SETTLE_AFTER_HEAL
                && faults.iter().all(|f| *f == Fault::None) =>
            {
                eprintln!("{t:6.1}s graceful stop of {name}, back in {lasts:?}");
                let status = bed.stop(victim, Duration::from_secs(30));
                assert!(status.success(), "{name} exits 0 on SIGTERM: {status:?}");
                figures.restarts += 1;
                faults[victim] = Fault::Down(Instant::now() + lasts);
            }
            2 => {
                eprintln!("{t:6.1}s cut {name}'s link for {lasts:?}");
                bed.cut(victim);
                figures.cuts += 1;
                faults[victim] = Fault::Cut(Instant::now() + lasts);
            }
            _ => {}
        }
    }
    // Every fault undone; the cluster whole again; the load goes on a little.
    for i in nodes {
        match faults[i] {
            Fault::Down(_) => {
                bed.start_node(i, &[]);
                figures.starts += 1;
            }
            Fault::Cut(_) => bed.heal(i),
            Fault::None => {}
        }
    }
    bed.wait_connected(
        &nodes,
        CONVERGE,
        "every node sees the others after the chaos",
    );
    wait_until(CONVERGE, "the balancer lists every node again", || {
        (bed.balancer_routes(3)? == ["n1", "n2", "n3"]).then_some(())
    });
    let moving = load.wait_acked(100, CONVERGE);
    let report = load.stop();
    if !moving {
        let first: Vec<String> = report
            .failures
            .iter()
            .take(10)
            .map(|f| format!("{:?} before the end: {}", checked_ago(f.at), f.what))
            .collect();
        panic!(
            "the load does not move after the chaos: {}; balancer {:?}; failures e.g.:\n{}",
            report.summary(),
            bed.balancer_status(3),
            first.join("\n")
        );
    }
    let cookies = report.cookies();
    let checked = Instant::now();
    settle(
        CONVERGE,
        "every acknowledged write is on every node",
        || {
            let mut wrong = Vec::new();
            for i in nodes {
                let answers = bed.sessions(i, &cookies);
                wrong.extend(report.missing(&bed.hosts[i].name, &answers));
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                let count = wrong.len();
                wrong.truncate(5);
                Err(format!("{count} missing, e.g. {}", wrong.join("; ")))
            }
        },
    );
    eprintln!(
        "chaos soak figures: {}; {} kills, {} graceful restarts, {} link cuts, {} node starts; every acknowledged write on all 3 nodes {:?} after the load stopped",
        report.summary(),
        figures.kills,
        figures.restarts,
        figures.cuts,
        figures.starts,
        checked.elapsed()
    );
    let listed: Vec<String> = report
        .failures
        .iter()
        .take(10)
        .map(|f| {
            let at = f.at.saturating_duration_since(began).as_secs_f64();
            format!("{at:6.1}s {}", f.what)
        })
        .collect();
    assert!(
        report.failures.is_empty(),
        "{} requests failed although a node served at every instant, e.g.:\n{}",
        report.failures.len(),
        listed.join("\n")
    );
}
