//! Figure 1, `--only latency`: sync write latency, one client sending sequential requests on
//! one keep-alive connection, on 3 nodes against 1; the machine's floor (a bare TCP round
//! trip from one process to two others); and the misses of a read on another node right
//! after the acknowledged write. With `--svg DIR`, also `DIR/latency.svg`: the latency
//! percentiles of every timed write, 1 node, 3 nodes and the floor.

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Runtime;

use crate::Opts;
use crate::support::svg::{Axis, Chart, Point, Scale, Series};
use crate::support::{
    Client, Headline, Spread, Table, headline, node_args, quantile, ratio, sequential_writes,
    start_cluster, us,
};

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

pub fn run(rt: &Runtime, opts: &Opts, summary: &mut Vec<Headline>) {
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
    // Every timed write of every run, for the percentile chart.
    let mut pooled: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (k, node) in [&single[0], &trio[0]].into_iter().enumerate() {
            let (lat, failed) = rt.block_on(sequential_writes(node.http, warmup, count));
            p50[k].push(quantile(&lat, 0.50) as f64 / 1000.0);
            p99[k].push(quantile(&lat, 0.99) as f64 / 1000.0);
            failures[k] += failed;
            pooled[k].extend(lat);
        }
    }
    let (s50, s99) = (
        [Spread::of(&p50[0]), Spread::of(&p50[1])],
        [Spread::of(&p99[0]), Spread::of(&p99[1])],
    );
    let ratios: Vec<f64> = p50[1].iter().zip(&p50[0]).map(|(t, s)| t / s).collect();
    let r = Spread::of(&ratios);
    // What the machine itself allows: a bare TCP round trip to two other processes.
    let mut floor_pooled = Vec::new();
    let floor: Vec<f64> = (0..runs)
        .map(|_| {
            let lat = bare_round_trip(2, warmup, count);
            let p50 = quantile(&lat, 0.50) as f64 / 1000.0;
            floor_pooled.extend(lat);
            p50
        })
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
    if let Some(dir) = &opts.svg {
        for sorted in pooled.iter_mut().chain([&mut floor_pooled]) {
            sorted.sort_unstable();
        }
        let series = [
            ("1 node", &pooled[0]),
            ("3 nodes, sync", &pooled[1]),
            ("floor (bare TCP)", &floor_pooled),
        ];
        let what = format!(
            "{runs} runs of {count} sequential PUTs on one keep-alive connection, all pooled; floor: a bare TCP round trip to 2 processes"
        );
        crate::report_written(percentile_chart(&series, &what, opts).write(dir, "latency"));
    }

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

pub const ECHO_ENV: &str = "DELTACAST_BENCH_ECHO";

/// The bench binary started again as a bare echo server: prints its port, echoes one
/// connection until it closes.
pub fn echo_server() {
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

/// Latencies (ns, sorted) of writing 100 bytes to each of `peers` echo processes and
/// reading them back, after `warmup` untimed rounds.
fn bare_round_trip(peers: usize, warmup: usize, count: usize) -> Vec<u64> {
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
    lat
}

/// The percentiles drawn, on the "nines" scale: x = −log10(1 − p), so p50, p90, p99 and
/// p99.9 are evenly spaced and the tail gets the room it needs.
const NINES: f64 = 3.0;

/// Latency percentiles (`sorted` ns) of each series, p0 to p99.9, on a log latency axis.
fn percentile_chart(series: &[(&str, &Vec<u64>)], what: &str, opts: &Opts) -> Chart {
    let steps = 60;
    let curves: Vec<Series> = series
        .iter()
        .map(|(name, sorted)| Series {
            name: name.to_string(),
            points: (0..=steps)
                .map(|i| {
                    let x = NINES * f64::from(i) / f64::from(steps);
                    let p = 1.0 - 10f64.powf(-x);
                    let y = quantile(sorted, p) as f64 / 1000.0;
                    Point { x, y, range: None }
                })
                .collect(),
        })
        .collect();
    let ys = curves.iter().flat_map(|c| c.points.iter().map(|p| p.y));
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    let ticks = [
        (0.0, "p0"),
        (2f64.log10(), "p50"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
    ];
    Chart {
        title: "Sync write latency by percentile".into(),
        subtitle: [vec![what.to_string()], opts.conditions()].concat(),
        x: Axis {
            label: "percentile".into(),
            scale: Scale::Linear,
            min: 0.0,
            max: NINES,
            ticks: ticks.iter().map(|(v, l)| (*v, l.to_string())).collect(),
        },
        y: Axis::log("latency (log scale)", lo, hi, us_tick),
        series: curves,
    }
}

/// A latency tick: µs below a millisecond, ms above.
fn us_tick(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} ms", v / 1000.0)
    } else {
        format!("{v} µs")
    }
}
