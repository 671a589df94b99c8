//! The balancer's own figures, beside the members' (see the registry's `Member`): the
//! answers of proxied requests by status class (the members' and the balancer's own
//! one-line answers alike), the attempts sent again, and how long a request waited for
//! the head of its answer; and `/balancer-manager/metrics`, all of them with the
//! members' and the client connections in Prometheus text (as HAProxy's exporter gives
//! them: per member, labelled by route).
//!
//! Each worker writes figures of its own (its [`WorkerFigures`], on cache lines of its
//! own), so that requests on two workers never write one line; the page adds them up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::balancer::choice::registry::Member;
use crate::balancer::http::manager::Connections;
use crate::metrics::{Buckets, Snapshot, TextWriter, labels};

pub use crate::balancer::choice::registry::{STATUS_CLASSES as CLASSES, status_class as class_of};

/// The upper bounds of the latency buckets, in microseconds: 0.5 ms to 10 s.
pub static LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// What one worker counts.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerFigures {
    answers: [AtomicU64; CLASSES.len()],
    /// Attempts sent again: to the same member on a new connection, or to another.
    retries: AtomicU64,
    /// Of those, the ones that went to another member.
    redispatches: AtomicU64,
    latency: Buckets,
}

impl Default for WorkerFigures {
    fn default() -> WorkerFigures {
        WorkerFigures {
            answers: Default::default(),
            retries: AtomicU64::new(0),
            redispatches: AtomicU64::new(0),
            latency: Buckets::new(&LATENCY_BOUNDS_US),
        }
    }
}

impl WorkerFigures {
    /// A proxied request was answered with `status` (by its member, or by the balancer)
    /// after `took`, from its head until the head of its answer.
    pub fn answered(&self, status: u16, took: Duration) {
        self.answers[class_of(status)].fetch_add(1, Ordering::Relaxed);
        self.latency
            .observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// An attempt goes again: to another member (`redispatch`) or to the same one on a new
    /// connection.
    pub fn retried(&self, redispatch: bool) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if redispatch {
            self.redispatches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The figures of every worker.
#[derive(Debug)]
pub struct Figures {
    workers: Box<[WorkerFigures]>,
}

/// All workers' figures added up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub answers: [u64; CLASSES.len()],
    pub retries: u64,
    pub redispatches: u64,
    pub latency: Snapshot,
}

impl Figures {
    pub fn new(workers: usize) -> Figures {
        Figures {
            workers: (0..workers.max(1))
                .map(|_| WorkerFigures::default())
                .collect(),
        }
    }

    /// Worker `index`'s figures.
    pub fn worker(&self, index: usize) -> &WorkerFigures {
        &self.workers[index % self.workers.len()]
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            answers: [0; CLASSES.len()],
            retries: 0,
            redispatches: 0,
            latency: Snapshot::empty(&LATENCY_BOUNDS_US),
        };
        for w in self.workers.iter() {
            for (total, n) in totals.answers.iter_mut().zip(&w.answers) {
                *total += n.load(Ordering::Relaxed);
            }
            totals.retries += w.retries.load(Ordering::Relaxed);
            totals.redispatches += w.redispatches.load(Ordering::Relaxed);
            w.latency.add_to(&mut totals.latency);
        }
        totals
    }
}

/// A worker's handle on the figures: what its requests write.
#[derive(Clone, Debug)]
pub struct FiguresSlot {
    pub figures: Arc<Figures>,
    pub index: usize,
}

impl FiguresSlot {
    pub fn get(&self) -> &WorkerFigures {
        self.figures.worker(self.index)
    }
}

/// The member states, one gauge each (1 for the state it is in), as HAProxy's
/// `haproxy_server_status{state=...}`.
const STATES: [&str; 4] = ["ok", "error", "draining", "disabled"];

/// `/balancer-manager/metrics`: the members (labelled by route), the client connections
/// and the balancer's own figures, in Prometheus text.
pub fn metrics_text(members: &[Arc<Member>], connections: &Connections, totals: &Totals) -> String {
    let mut w = TextWriter::new();
    let per_member =
        |w: &mut TextWriter, name: &str, kind: &str, help: &str, value: &dyn Fn(&Member) -> u64| {
            let name = format!("deltacast_balancer_member_{name}");
            w.family(&name, kind, help);
            for m in members {
                w.sample(&name, &labels(&[("route", &m.route)]), value(m));
            }
        };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    per_member(
        &mut w,
        "requests_total",
        "counter",
        "Attempts sent to the member (elected).",
        &|m| load(&m.elected),
    );
    per_member(
        &mut w,
        "errors_total",
        "counter",
        "Failed attempts and answers cut off or late, of the member.",
        &|m| load(&m.errors),
    );
    per_member(
        &mut w,
        "busy",
        "gauge",
        "Requests in flight on the member.",
        &|m| load(&m.busy),
    );
    per_member(
        &mut w,
        "bytes_in_total",
        "counter",
        "Request body bytes sent to the member.",
        &|m| load(&m.bytes_in),
    );
    per_member(
        &mut w,
        "bytes_out_total",
        "counter",
        "Answer body bytes received from the member.",
        &|m| load(&m.bytes_out),
    );
    per_member(
        &mut w,
        "loadfactor",
        "gauge",
        "The member's weight.",
        &|m| u64::from(m.loadfactor),
    );
    let name = "deltacast_balancer_member_state";
    w.family(
        name,
        "gauge",
        "1 for the state the member is in (ok, error, draining, disabled), 0 for the others.",
    );
    for m in members {
        let state = m.status().state;
        for s in STATES {
            let set = labels(&[("route", &m.route), ("state", s)]);
            w.sample(name, &set, u8::from(state == s));
        }
    }
    let name = "deltacast_balancer_member_responses_total";
    w.family(name, "counter", "Answers of the member, by status class.");
    for m in members {
        for (class, n) in CLASSES.iter().zip(m.answers()) {
            w.sample(name, &labels(&[("route", &m.route), ("class", class)]), n);
        }
    }
    let name = "deltacast_balancer_responses_total";
    w.family(
        name,
        "counter",
        "Answers to proxied requests, by status class: the members' and the balancer's own (502, 503, 504...).",
    );
    for (class, n) in CLASSES.iter().zip(totals.answers) {
        w.sample(name, &labels(&[("class", class)]), n);
    }
    w.metric(
        "deltacast_balancer_retries_total",
        "counter",
        "Attempts sent again, to another member or to the same one on a new connection.",
        &[("", totals.retries.to_string())],
    );
    w.metric(
        "deltacast_balancer_redispatches_total",
        "counter",
        "Attempts sent again to another member after one failed.",
        &[("", totals.redispatches.to_string())],
    );
    w.metric(
        "deltacast_balancer_connections",
        "gauge",
        "Client connections open.",
        &[("", connections.open.to_string())],
    );
    w.metric(
        "deltacast_balancer_connections_max",
        "gauge",
        "Client connections allowed at once (balancer.max_connections).",
        &[("", connections.max.to_string())],
    );
    w.metric(
        "deltacast_balancer_connections_limit_reached_total",
        "counter",
        "Times every client connection slot was taken.",
        &[("", connections.limit_reached.to_string())],
    );
    let name = "deltacast_balancer_response_head_seconds";
    w.family(
        name,
        "histogram",
        "Time from a proxied request's head until the head of its answer, retries included.",
    );
    w.histogram(name, &[], &totals.latency, 1e6);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_fall_in_their_class() {
        for (status, class) in [
            (100, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (302, "3xx"),
            (404, "4xx"),
            (503, "5xx"),
            (599, "5xx"),
            (600, "other"),
            (999, "other"),
            (0, "other"),
        ] {
            assert_eq!(CLASSES[class_of(status)], class, "{status}");
        }
    }

    #[test]
    fn the_workers_figures_add_up() {
        let f = Figures::new(2);
        f.worker(0).answered(200, Duration::from_micros(300));
        f.worker(1).answered(200, Duration::from_millis(20));
        f.worker(1).answered(503, Duration::from_secs(30));
        f.worker(0).retried(true);
        f.worker(3).retried(false);
        let t = f.totals();
        assert_eq!(t.answers, [0, 2, 0, 0, 1, 0]);
        assert_eq!((t.retries, t.redispatches), (2, 1));
        assert_eq!(t.latency.count(), 3);
        assert_eq!(t.latency.counts[0], 1, "under 0.5 ms");
        assert_eq!(t.latency.counts[5], 1, "20 ms, under 25 ms");
        assert_eq!(t.latency.counts[14], 1, "over 10 s");
        assert_eq!(t.latency.sum, 300 + 20_000 + 30_000_000);
    }

    #[test]
    fn the_metrics_name_every_member_by_route() {
        let members = vec![
            Arc::new(Member::new("n1", "http://127.0.0.1:1", 2, true)),
            Arc::new(Member::new("n2", "http://127.0.0.1:2", 1, true)),
        ];
        members[0].elected.store(7, Ordering::Relaxed);
        members[1].answered(404);
        members[1].update_health(|h| h.on_failure(std::time::Instant::now()));
        let f = Figures::new(1);
        f.worker(0).answered(200, Duration::from_millis(1));
        let connections = Connections {
            open: 3,
            max: 10,
            limit_reached: 0,
        };
        let text = metrics_text(&members, &connections, &f.totals());
        for line in [
            "deltacast_balancer_member_requests_total{route=\"n1\"} 7",
            "deltacast_balancer_member_requests_total{route=\"n2\"} 0",
            "deltacast_balancer_member_loadfactor{route=\"n1\"} 2",
            "deltacast_balancer_member_state{route=\"n1\",state=\"ok\"} 1",
            "deltacast_balancer_member_state{route=\"n2\",state=\"ok\"} 0",
            "deltacast_balancer_member_state{route=\"n2\",state=\"error\"} 1",
            "deltacast_balancer_member_responses_total{route=\"n2\",class=\"4xx\"} 1",
            "deltacast_balancer_responses_total{class=\"2xx\"} 1",
            "deltacast_balancer_connections 3",
            "deltacast_balancer_response_head_seconds_bucket{le=\"0.001\"} 1",
            "deltacast_balancer_response_head_seconds_bucket{le=\"+Inf\"} 1",
            "deltacast_balancer_response_head_seconds_sum 0.001",
            "deltacast_balancer_response_head_seconds_count 1",
            "# TYPE deltacast_balancer_response_head_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
