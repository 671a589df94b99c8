//! Figure 3, `--only transfer`: state transfer to a joining node. A 1-node cluster is
//! filled with 100 000 sessions of about 200 bytes, then a second node is timed from its
//! spawn until its `/status` says `ready` with every session; its RSS, and what the member
//! sent meanwhile. The same with 1 000 000 sessions when the fill over HTTP fits in about
//! three minutes (projected from the 100 000 fill) and the memory is there, or always with
//! `--full`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::common::{self, Cluster, NodeProc};
use crate::support::{
    Headline, Sample, Spread, Table, count, fill, headline, mb, ms, node_args, pid, rss_kb,
    start_cluster, wait_alone, with_key,
};

/// Largest fill (over HTTP) the default mode accepts for the 1 000 000-session transfer.
const MAX_DEFAULT_FILL: Duration = Duration::from_secs(180);

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

pub fn run(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
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
