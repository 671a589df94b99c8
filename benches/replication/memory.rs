//! Figure 4, `--only memory`: memory per session. A node's RSS before and after 100 000
//! sessions with one 10-byte attribute, per session, minus the attribute's bytes; on a
//! single node (sessions made over HTTP) and on the replica of a 2-node cluster (received
//! as deltas).

use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::common::NodeProc;
use crate::support::{
    Headline, Spread, Table, fill, headline, mb, node_args, pid, rss_kb, start_cluster,
};

/// One memory run: the measured node's RSS before and after the fill, in kB.
struct MemRun {
    before_kb: u64,
    after_kb: u64,
    failed: u64,
}

pub fn run(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
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
