//! The Prometheus text of the balancer (`/balancer-manager/metrics`) and of a node
//! (`/metrics`), read by a real Prometheus text parser (the `prometheus-parse` crate), every
//! line of it, and the figures checked against the traffic the test sent: requests per
//! member, answers by status class on both ways of forwarding, bytes, the retry and the
//! member state after a node is killed, the latency histogram's count; a node's sessions,
//! members and deltas.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use common::{BalancerProc, Browser, Cluster, FAST, NodeProc, exchange, wait_until};
use prometheus_parse::{LineInfo, Scrape, Value};

const STARTUP: Duration = Duration::from_secs(30);

fn node(cluster: &Cluster, name: &str) -> NodeProc {
    let n = cluster.node(name, FAST);
    wait_until(STARTUP, "the node answers", || n.status());
    n
}

/// The page at `path`, checked to be Prometheus text, parsed: every line a comment or a
/// sample the parser reads (it skips what it cannot), every sample of a family with a
/// `# TYPE`.
fn scrape(addr: std::net::SocketAddr, path: &str) -> Scrape {
    let answer = exchange(addr, "GET", path, None, b"").expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let text = answer.text();
    let mut typed = Vec::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Sample { metric_name, .. } => {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric_name.strip_suffix(s))
                    .filter(|f| typed.iter().any(|t: &String| t == f))
                    .unwrap_or(metric_name);
                assert!(
                    typed.iter().any(|t| t == family),
                    "{metric_name} has no # TYPE before it"
                );
            }
            LineInfo::Type { .. } => {
                let name = line
                    .split_whitespace()
                    .nth(2)
                    .expect("a TYPE line names a family");
                typed.push(name.to_string());
            }
            LineInfo::Doc { .. } => {}
            LineInfo::Empty | LineInfo::Ignored => panic!("a line no parser reads: {line:?}"),
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The value of the sample `name` with exactly `labels` (counter, gauge or untyped).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&prometheus_parse::Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter(|s| s.labels.len() == labels.len())
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is {other:?}"),
    }
}

/// The sum of `name` over every label set.
fn total(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        })
        .sum()
}

/// The cumulative buckets of histogram `name` (no other labels), by upper bound.
fn buckets(scrape: &Scrape, name: &str) -> Vec<(f64, f64)> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && matches!(s.value, Value::Histogram(_)))
        .unwrap_or_else(|| panic!("no histogram {name}"));
    let Value::Histogram(counts) = &sample.value else {
        unreachable!()
    };
    counts.iter().map(|c| (c.less_than, c.count)).collect()
}

#[test]
fn the_balancers_metrics_count_the_traffic_sent_per_member_and_by_class() {
    let cluster = Cluster::new("metrics-balancer");
    let n1 = node(&cluster, "n1");
    let n2 = node(&cluster, "n2");
    common::wait_converged(&[&n1, &n2], STARTUP);
    let mut args: Vec<OsString> = FAST.iter().map(OsString::from).collect();
    for a in [
        "--set".to_string(),
        "balancer.discover=false".to_string(),
        "--set".to_string(),
        "balancer.sticky=none".to_string(),
        "--member".to_string(),
        format!("n1=http://{}", n1.http),
        "--member".to_string(),
        format!("n2=http://{}", n2.http),
    ] {
        args.push(a.into());
    }
    let b = BalancerProc::spawn(&cluster, &args);
    let before = scrape(b.addr, "/balancer-manager/metrics");
    for route in ["n1", "n2"] {
        assert_eq!(
            value(
                &before,
                "deltacast_balancer_member_requests_total",
                &[("route", route)]
            ),
            0.0
        );
        assert_eq!(
            value(
                &before,
                "deltacast_balancer_member_state",
                &[("route", route), ("state", "ok")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &before,
                "deltacast_balancer_member_loadfactor",
                &[("route", route)]
            ),
            1.0
        );
    }
    assert!(
        value(&before, "deltacast_balancer_connections", &[]) >= 1.0,
        "this one"
    );
    let max = b.status().expect("the status")["connections"]["max"]
        .as_f64()
        .expect("connections.max");
    assert_eq!(
        value(&before, "deltacast_balancer_connections_max", &[]),
        max
    );
    // 40 GETs of the test page (the fast path), 10 PUTs (the hyper path: a body), 6 GETs of
    // an attribute no session has (404), round robin over the two members.
    let mut browser = Browser::new();
    for _ in 0..40 {
        assert_eq!(browser.send(b.addr, "GET", "/", b"").status, 200);
    }
    for i in 0..10 {
        let put = browser.send(
            b.addr,
            "PUT",
            "/session/attributes/a",
            format!("v{i}").as_bytes(),
        );
        assert_eq!(put.status, 204);
    }
    for _ in 0..6 {
        let a = exchange(b.addr, "GET", "/session/attributes/none", None, b"").expect("an answer");
        assert_eq!(a.status, 404);
    }
    let after = scrape(b.addr, "/balancer-manager/metrics");
    let sent = 56.0;
    assert_eq!(
        total(&after, "deltacast_balancer_member_requests_total"),
        sent
    );
    for route in ["n1", "n2"] {
        // Round robin on each worker (one per core): each worker's odd request may go to
        // the same member.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let got = value(
            &after,
            "deltacast_balancer_member_requests_total",
            &[("route", route)],
        );
        assert!(
            (got - sent / 2.0).abs() <= workers / 2.0,
            "{route}: {got} of {sent}"
        );
        assert!(
            value(
                &after,
                "deltacast_balancer_member_bytes_out_total",
                &[("route", route)]
            ) > 0.0
        );
        assert_eq!(
            value(
                &after,
                "deltacast_balancer_member_busy",
                &[("route", route)]
            ),
            0.0
        );
        assert_eq!(
            value(
                &after,
                "deltacast_balancer_member_errors_total",
                &[("route", route)]
            ),
            0.0
        );
    }
    assert_eq!(
        total(&after, "deltacast_balancer_member_bytes_in_total"),
        20.0,
        "the PUT bodies"
    );
    let class =
        |s: &Scrape, c: &str| value(s, "deltacast_balancer_responses_total", &[("class", c)]);
    assert_eq!(class(&after, "2xx"), 50.0);
    assert_eq!(class(&after, "4xx"), 6.0);
    assert_eq!(class(&after, "5xx"), 0.0);
    let member_class = |s: &Scrape, c: &str| {
        ["n1", "n2"]
            .iter()
            .map(|r| {
                value(
                    s,
                    "deltacast_balancer_member_responses_total",
                    &[("route", r), ("class", c)],
                )
            })
            .sum::<f64>()
    };
    assert_eq!(member_class(&after, "2xx"), 50.0);
    assert_eq!(member_class(&after, "4xx"), 6.0);
    assert_eq!(value(&after, "deltacast_balancer_retries_total", &[]), 0.0);
    let hist = "deltacast_balancer_response_head_seconds";
    assert_eq!(value(&after, &format!("{hist}_count"), &[]), sent);
    assert!(value(&after, &format!("{hist}_sum"), &[]) > 0.0);
    let counts = buckets(&after, hist);
    assert_eq!(counts.last(), Some(&(f64::INFINITY, sent)));
    assert!(
        counts
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{counts:?}"
    );
    // n2 dies: the request round robin gives it fails there and is sent to n1.
    drop(n2);
    for _ in 0..4 {
        let a = exchange(b.addr, "GET", "/", None, b"").expect("an answer");
        assert_eq!(a.status, 200);
    }
    let dead = scrape(b.addr, "/balancer-manager/metrics");
    assert_eq!(
        value(
            &dead,
            "deltacast_balancer_member_state",
            &[("route", "n2"), ("state", "error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &dead,
            "deltacast_balancer_member_state",
            &[("route", "n2"), ("state", "ok")]
        ),
        0.0
    );
    // At least the one request that met n2 dead went to n1 instead (more, should a trial
    // request reach it once its retry interval passed); a pooled connection that n2's end
    // closed may have been tried again first, on a new connection.
    let redispatches = value(&dead, "deltacast_balancer_redispatches_total", &[]);
    assert!(redispatches >= 1.0, "{redispatches}");
    assert!(value(&dead, "deltacast_balancer_retries_total", &[]) >= redispatches);
    assert_eq!(
        value(
            &dead,
            "deltacast_balancer_member_errors_total",
            &[("route", "n2")]
        ),
        redispatches
    );
    assert_eq!(class(&dead, "2xx"), 54.0);
    assert_eq!(value(&dead, &format!("{hist}_count"), &[]), sent + 4.0);
    drop(n1);
}

#[test]
fn a_nodes_metrics_count_its_members_sessions_and_deltas() {
    let cluster = Cluster::new("metrics-node");
    let n1 = node(&cluster, "n1");
    let n2 = node(&cluster, "n2");
    common::wait_converged(&[&n1, &n2], STARTUP);
    let sessions = 7;
    for i in 0..sessions {
        let mut browser = Browser::new();
        let put = browser.send(
            n1.http,
            "PUT",
            "/session/attributes/a",
            format!("{i}").as_bytes(),
        );
        assert_eq!(put.status, 204);
    }
    let m1 = scrape(n1.http, "/metrics");
    assert_eq!(value(&m1, "deltacast_members", &[("state", "alive")]), 1.0);
    assert_eq!(
        value(&m1, "deltacast_members", &[("state", "suspect")]),
        0.0
    );
    assert_eq!(
        value(&m1, "deltacast_sessions_active", &[]),
        f64::from(sessions)
    );
    assert!(value(&m1, "deltacast_deltas_sent_total", &[]) >= f64::from(sessions));
    assert!(value(&m1, "deltacast_heartbeats_sent_total", &[]) > 0.0);
    assert!(value(&m1, "deltacast_replication_bytes_sent_total", &[]) > 0.0);
    assert_eq!(value(&m1, "deltacast_replication_errors_total", &[]), 0.0);
    assert!(value(&m1, "deltacast_uptime_seconds", &[]) > 0.0);
    // Sync replication: every session is on n2 once n1 has answered.
    let m2 = scrape(n2.http, "/metrics");
    assert_eq!(
        value(&m2, "deltacast_sessions_active", &[]),
        f64::from(sessions)
    );
    assert!(value(&m2, "deltacast_deltas_received_total", &[]) >= f64::from(sessions));
    let reasons: HashMap<String, f64> = m2
        .samples
        .iter()
        .filter(|s| s.metric == "deltacast_datagrams_dropped_total")
        .filter_map(|s| {
            let Value::Counter(v) = s.value else {
                return None;
            };
            Some((s.labels.get("reason")?.to_string(), v))
        })
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons.values().all(|v| *v == 0.0), "{reasons:?}");
}
