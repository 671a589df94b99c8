//! Counters shared by the tasks of a node: plain atomics, read by `/status` and rendered
//! as Prometheus text by `/metrics`; and the Prometheus text writer ([`TextWriter`]) and
//! histogram buckets ([`Buckets`]) that the node's `/metrics` and the balancer's
//! `/balancer-manager/metrics` share.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Membership traffic of this node.
#[derive(Debug, Default)]
pub struct MembershipMetrics {
    pub heartbeats_sent: Counter,
    pub heartbeats_received: Counter,
    /// Datagrams that did not decode (random bytes, truncated, wrong version).
    pub dropped_malformed: Counter,
    /// Datagrams larger than the limit.
    pub dropped_oversized: Counter,
    /// Well-formed datagrams of another cluster name.
    pub dropped_foreign_cluster: Counter,
    /// Datagrams not sealed with this node's cluster key (another key, altered, plain while
    /// a key is set, or sealed while none is).
    pub dropped_unauthenticated: Counter,
    /// Sealed datagrams received before (or too old to tell).
    pub dropped_replayed: Counter,
    pub verifications: Counter,
    pub joined: Counter,
    pub dropped_members: Counter,
}

/// Replication traffic of this node (filled by the replication layer).
#[derive(Debug, Default)]
pub struct ReplicationMetrics {
    pub deltas_sent: Counter,
    pub deltas_received: Counter,
    pub bytes_sent: Counter,
    pub bytes_received: Counter,
    /// Frames or connections that were rejected (undecodable, foreign cluster, oversized).
    pub errors: Counter,
    /// Liveness pings answered on the replication port.
    pub pings_answered: Counter,
}

/// The AJP connector's traffic (filled by `ajp::server`).
#[derive(Debug, Default)]
pub struct AjpMetrics {
    /// Forward requests answered (refusals included).
    pub requests: Counter,
    /// Connections closed because a packet did not decode (wrong magic, oversized,
    /// malformed, unknown type), or broke off mid-request.
    pub errors: Counter,
    /// Forward requests refused with 403 (missing or wrong secret, a request attribute
    /// that is not allowed).
    pub refused: Counter,
    /// CPings answered.
    pub cpings: Counter,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub membership: MembershipMetrics,
    pub replication: ReplicationMetrics,
    pub ajp: AjpMetrics,
}

/// The `membership` object of `/status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct MembershipCounters {
    /// All dropped datagrams, whatever the reason.
    pub dropped: u64,
    /// Datagrams that did not decode.
    pub dropped_malformed: u64,
    /// Datagrams over the size limit.
    pub dropped_oversized: u64,
    /// Datagrams of another cluster (another `cluster.name`).
    pub dropped_foreign_cluster: u64,
    /// Datagrams that failed the cluster key's authentication (or came in clear to a
    /// keyed node).
    pub dropped_unauthenticated: u64,
    /// Authentic datagrams seen before (the replay window).
    pub dropped_replayed: u64,
    /// Heartbeats this node sent.
    pub heartbeats_sent: u64,
    /// Heartbeats of members this node took.
    pub heartbeats_received: u64,
    /// TCP checks of a silent member's replication port before dropping it.
    pub verifications: u64,
}

impl MembershipMetrics {
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed.get()
            + self.dropped_oversized.get()
            + self.dropped_foreign_cluster.get()
            + self.dropped_unauthenticated.get()
            + self.dropped_replayed.get()
    }

    pub fn counters(&self) -> MembershipCounters {
        MembershipCounters {
            dropped: self.dropped(),
            dropped_malformed: self.dropped_malformed.get(),
            dropped_oversized: self.dropped_oversized.get(),
            dropped_foreign_cluster: self.dropped_foreign_cluster.get(),
            dropped_unauthenticated: self.dropped_unauthenticated.get(),
            dropped_replayed: self.dropped_replayed.get(),
            heartbeats_sent: self.heartbeats_sent.get(),
            heartbeats_received: self.heartbeats_received.get(),
            verifications: self.verifications.get(),
        }
    }
}

/// Gauges that live elsewhere (the member table, the session store), passed in at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub members_alive: u64,
    pub members_suspect: u64,
    /// `None` where a session server holds the sessions (not counted).
    pub sessions_active: Option<u64>,
    pub replication_queue: u64,
    pub uptime_seconds: f64,
}

impl Metrics {
    /// Prometheus text exposition format, version 0.0.4.
    pub fn render_prometheus(&self, gauges: Gauges) -> String {
        let m = &self.membership;
        let r = &self.replication;
        let mut out = TextWriter::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            out.metric(&format!("deltacast_{name}"), kind, help, samples);
        };
        metric(
            "members",
            "gauge",
            "Other members of the cluster by state.",
            &[
                ("{state=\"alive\"}", gauges.members_alive.to_string()),
                ("{state=\"suspect\"}", gauges.members_suspect.to_string()),
            ],
        );
        metric(
            "heartbeats_sent_total",
            "counter",
            "Heartbeats sent.",
            &[("", m.heartbeats_sent.get().to_string())],
        );
        metric(
            "heartbeats_received_total",
            "counter",
            "Heartbeats of this cluster received from other members.",
            &[("", m.heartbeats_received.get().to_string())],
        );
        metric(
            "datagrams_dropped_total",
            "counter",
            "Datagrams dropped, by reason.",
            &[
                (
                    "{reason=\"malformed\"}",
                    m.dropped_malformed.get().to_string(),
                ),
                (
                    "{reason=\"oversized\"}",
                    m.dropped_oversized.get().to_string(),
                ),
                (
                    "{reason=\"foreign_cluster\"}",
                    m.dropped_foreign_cluster.get().to_string(),
                ),
                (
                    "{reason=\"unauthenticated\"}",
                    m.dropped_unauthenticated.get().to_string(),
                ),
                (
                    "{reason=\"replayed\"}",
                    m.dropped_replayed.get().to_string(),
                ),
            ],
        );
        metric(
            "verifications_total",
            "counter",
            "TCP verifications of suspect members.",
            &[("", m.verifications.get().to_string())],
        );
        metric(
            "members_joined_total",
            "counter",
            "Members that joined.",
            &[("", m.joined.get().to_string())],
        );
        metric(
            "members_dropped_total",
            "counter",
            "Members dropped (left, dead, silent or replaced).",
            &[("", m.dropped_members.get().to_string())],
        );
        if let Some(active) = gauges.sessions_active {
            metric(
                "sessions_active",
                "gauge",
                "Sessions held by this node.",
                &[("", active.to_string())],
            );
        }
        metric(
            "deltas_sent_total",
            "counter",
            "Deltas sent to members.",
            &[("", r.deltas_sent.get().to_string())],
        );
        metric(
            "deltas_received_total",
            "counter",
            "Deltas received from members.",
            &[("", r.deltas_received.get().to_string())],
        );
        metric(
            "replication_bytes_sent_total",
            "counter",
            "Replication bytes sent.",
            &[("", r.bytes_sent.get().to_string())],
        );
        metric(
            "replication_bytes_received_total",
            "counter",
            "Replication bytes received.",
            &[("", r.bytes_received.get().to_string())],
        );
        metric(
            "replication_errors_total",
            "counter",
            "Replication frames or connections rejected.",
            &[("", r.errors.get().to_string())],
        );
        metric(
            "replication_queue",
            "gauge",
            "Deltas queued for sending.",
            &[("", gauges.replication_queue.to_string())],
        );
        let a = &self.ajp;
        metric(
            "ajp_requests_total",
            "counter",
            "AJP forward requests answered (refusals included).",
            &[("", a.requests.get().to_string())],
        );
        metric(
            "ajp_errors_total",
            "counter",
            "AJP connections closed on a packet that did not decode.",
            &[("", a.errors.get().to_string())],
        );
        metric(
            "ajp_refused_total",
            "counter",
            "AJP forward requests refused with 403 (secret, request attribute).",
            &[("", a.refused.get().to_string())],
        );
        metric(
            "ajp_cpings_total",
            "counter",
            "AJP CPings answered.",
            &[("", a.cpings.get().to_string())],
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the node started.",
            &[("", format!("{:.3}", gauges.uptime_seconds))],
        );
        out.finish()
    }
}

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes the Prometheus text exposition format (version 0.0.4): a family's `# HELP` and
/// `# TYPE` lines, then its samples, one a line.
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    pub fn new() -> TextWriter {
        TextWriter {
            out: String::with_capacity(4096),
        }
    }

    /// A family `name` of `kind` ("counter", "gauge", "histogram") and its samples, each
    /// its label set as written by [`labels`] ("" for none) and its value.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
        self.family(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    /// The `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line: `name{labels} value`, `labels` as written by [`labels`].
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{labels} {value}");
    }

    /// The samples of one histogram of a family declared `histogram`: the cumulative
    /// `_bucket` lines (with `le`, after `labels` as pairs), `_sum` (in the unit the
    /// buckets' bounds are divided into by `scale`, e.g. microseconds into seconds) and
    /// `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        pairs: &[(&str, &str)],
        snapshot: &Snapshot,
        scale: f64,
    ) {
        let mut cumulative = 0;
        for (i, count) in snapshot.counts.iter().enumerate() {
            cumulative += count;
            let le = match snapshot.bounds.get(i) {
                Some(bound) => format_float(*bound as f64 / scale),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = pairs.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &labels(&with_le), cumulative);
        }
        let sum = format_float(snapshot.sum as f64 / scale);
        self.sample(&format!("{name}_sum"), &labels(pairs), sum);
        self.sample(&format!("{name}_count"), &labels(pairs), cumulative);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label set, `{a="x",b="y"}` (empty for none), the values escaped as the format says
/// (backslash, double quote, line feed).
pub fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus reads it: the shortest form that reads back the same.
fn format_float(v: f64) -> String {
    format!("{v}")
}

/// The buckets of a histogram of integer observations (microseconds, bytes), kept as
/// atomics: `bounds` are the upper bounds (inclusive, as Prometheus's `le`), one more
/// bucket counts what is above the last. Observing is two relaxed additions.
#[derive(Debug)]
pub struct Buckets {
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// What a histogram holds at one moment (several [`Buckets`] added up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub bounds: &'static [u64],
    /// Per bucket (not cumulative); one more than `bounds`.
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl Buckets {
    pub fn new(bounds: &'static [u64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let at = self.bounds.partition_point(|bound| *bound < value);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Adds what these buckets hold to `total` (of the same bounds).
    pub fn add_to(&self, total: &mut Snapshot) {
        for (sum, count) in total.counts.iter_mut().zip(self.counts.iter()) {
            *sum += count.load(Ordering::Relaxed);
        }
        total.sum += self.sum.load(Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut total = Snapshot::empty(self.bounds);
        self.add_to(&mut total);
        total
    }
}

impl Snapshot {
    pub fn empty(bounds: &'static [u64]) -> Snapshot {
        Snapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0,
        }
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_an_empty_set_is_nothing() {
        assert_eq!(labels(&[]), "");
        assert_eq!(labels(&[("route", "n1")]), "{route=\"n1\"}");
        assert_eq!(
            labels(&[("a", "x\"y"), ("b", "back\\slash\nline")]),
            "{a=\"x\\\"y\",b=\"back\\\\slash\\nline\"}"
        );
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        static BOUNDS: [u64; 3] = [10, 100, 1000];
        let b = Buckets::new(&BOUNDS);
        for v in [0, 10, 11, 100, 5000, 1000] {
            b.observe(v);
        }
        let s = b.snapshot();
        assert_eq!(s.counts, [2, 2, 1, 1]);
        assert_eq!(s.sum, 6121);
        assert_eq!(s.count(), 6);
        let mut total = Snapshot::empty(&BOUNDS);
        b.add_to(&mut total);
        b.add_to(&mut total);
        assert_eq!(total.counts, [4, 4, 2, 2]);
        let mut w = TextWriter::new();
        w.family("t_seconds", "histogram", "A test.");
        w.histogram("t_seconds", &[("route", "n1")], &s, 1000.0);
        assert_eq!(
            w.finish(),
            "# HELP t_seconds A test.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{route=\"n1\",le=\"0.01\"} 2\n\
             t_seconds_bucket{route=\"n1\",le=\"0.1\"} 4\n\
             t_seconds_bucket{route=\"n1\",le=\"1\"} 5\n\
             t_seconds_bucket{route=\"n1\",le=\"+Inf\"} 6\n\
             t_seconds_sum{route=\"n1\"} 6.121\n\
             t_seconds_count{route=\"n1\"} 6\n"
        );
    }

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        let m = Metrics::default();
        m.membership.heartbeats_sent.add(3);
        m.membership.dropped_malformed.inc();
        let text = m.render_prometheus(Gauges {
            members_alive: 2,
            ..Gauges::default()
        });
        assert!(text.contains("# TYPE deltacast_heartbeats_sent_total counter\n"));
        assert!(text.contains("deltacast_heartbeats_sent_total 3\n"));
        assert!(text.contains("deltacast_members{state=\"alive\"} 2\n"));
        assert!(text.contains("deltacast_datagrams_dropped_total{reason=\"malformed\"} 1\n"));
        assert_eq!(m.membership.counters().dropped, 1);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("sample line");
            assert!(name.starts_with("deltacast_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
