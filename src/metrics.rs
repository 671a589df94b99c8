//! Counters shared by the tasks of a node: plain atomics, read by `/status` and rendered
//! as Prometheus text by `/metrics`.

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
    pub sessions_active: u64,
    pub replication_queue: u64,
    pub uptime_seconds: f64,
}

impl Metrics {
    /// Prometheus text exposition format, version 0.0.4.
    pub fn render_prometheus(&self, gauges: Gauges) -> String {
        let m = &self.membership;
        let r = &self.replication;
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP deltacast_{name} {help}");
            let _ = writeln!(out, "# TYPE deltacast_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "deltacast_{name}{labels} {value}");
            }
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
        metric(
            "sessions_active",
            "gauge",
            "Sessions held by this node.",
            &[("", gauges.sessions_active.to_string())],
        );
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
