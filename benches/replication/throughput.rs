//! Figure 2, `--only throughput`: writes/s of concurrent clients on 1, 3, 5 and 8 nodes,
//! sync and async, with the cluster's CPU per write; then the CPU per delta per receiving
//! member (every client on n1, the others only receive). With `--svg DIR`, also
//! `DIR/throughput.svg`: writes/s against the number of nodes, both modes.

use std::time::Duration;

use tokio::runtime::Runtime;

use crate::support::svg::{Axis, Chart, Point, Scale, Series};
use crate::support::{
    Headline, Spread, Table, count, drained, headline, node_args, ratio, start_cluster, targets,
    us, write_load,
};
use crate::{CLIENTS, Opts};

pub fn run(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
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
    // Per mode, (nodes, writes/s over the runs), for the chart.
    let mut curves: Vec<(&str, Vec<(usize, Spread)>)> = Vec::new();
    for mode in ["sync", "async"] {
        let mut single = f64::NAN;
        let mut curve = Vec::new();
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
            curve.push((n, rate));
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
        curves.push((mode, curve));
    }
    t.note("vs 1 node: against the 1-node figure of the same mode (medians)");
    t.note("cluster CPU/write: CPU time of all nodes over the run / writes; client CPU: this process (load generator) in % of one core");
    t.note("failed: requests that did not get 204; repl errors: change of replication.errors summed over the nodes");
    t.print();
    cpu_table.note("CPU per received delta: CPU time of the receiving nodes / their replication.deltas_received (includes their idle heartbeat work, negligible)");
    cpu_table.print();
    if let Some(dir) = &opts.svg {
        let what = format!(
            "{CLIENTS} concurrent clients (own session, keep-alive) spread over the nodes; median and min–max of {runs} runs of {secs} s"
        );
        crate::report_written(nodes_chart(&curves, &what, opts).write(dir, "throughput"));
    }

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

/// Writes/s against the number of nodes, one line per replication mode, each point the
/// median of its runs with their min–max.
fn nodes_chart(curves: &[(&str, Vec<(usize, Spread)>)], what: &str, opts: &Opts) -> Chart {
    let top = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|(_, s)| s.max))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let nodes: Vec<usize> = curves
        .first()
        .map(|(_, c)| c.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    Chart {
        title: "Replicated writes/s against the number of nodes".into(),
        subtitle: [vec![what.to_string()], opts.conditions()].concat(),
        x: Axis {
            label: "nodes".into(),
            scale: Scale::Linear,
            min: 0.5,
            max: nodes.iter().copied().max().unwrap_or(1) as f64 + 0.5,
            ticks: nodes.iter().map(|n| (*n as f64, n.to_string())).collect(),
        },
        y: Axis::linear_from_zero("writes/s", top, count),
        series: curves
            .iter()
            .map(|(mode, c)| Series {
                name: mode.to_string(),
                points: c
                    .iter()
                    .map(|(n, s)| Point {
                        x: *n as f64,
                        y: s.median,
                        range: Some((s.min, s.max)),
                    })
                    .collect(),
            })
            .collect(),
    }
}
