//! A steady load through a balancer that records every acknowledged write, for tests that
//! kill, restart or cut nodes under it: each worker thread (in a network namespace of the
//! host harness, or the test's own) keeps a few sessions and writes one of [`SLOTS`]
//! attributes of one of them per request (`PUT /session/attributes/a<slot>`, the value
//! naming the worker and the request), paced. A `204` is an acknowledged write: in sync
//! mode every live member holds it, so it (or a later write of the same attribute) must be
//! on every node at the end. Anything else (no answer, another status) is a failed request,
//! kept with its time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::exchange;
use super::hosts::enter_ns;

/// Attributes per session the load writes over and over (a session holds at most 64).
pub const SLOTS: usize = 16;

/// One attribute of a session: the last value it was told is saved, and the values sent
/// after it whose requests failed (each may or may not have been saved).
#[derive(Clone, Debug, Default)]
pub struct Slot {
    pub acked: Option<String>,
    pub later: Vec<String>,
}

/// One session a worker writes to, and what it was told is saved.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The latest cookie (`JSESSIONID=ID.route`), None until a request made the session.
    pub cookie: Option<String>,
    pub slots: Vec<Slot>,
    /// How many writes to it were acknowledged.
    pub acks: u64,
}

impl Default for Tracked {
    fn default() -> Tracked {
        Tracked {
            cookie: None,
            slots: vec![Slot::default(); SLOTS],
            acks: 0,
        }
    }
}

/// A request that did not get its `204`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: Instant,
    pub what: String,
}

/// The counters a running load shares.
#[derive(Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub acked: AtomicU64,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    workers: Vec<JoinHandle<(Vec<Tracked>, Vec<Failure>)>>,
    started: Instant,
}

/// What a stopped load did.
#[derive(Debug)]
pub struct LoadReport {
    pub sessions: Vec<Tracked>,
    pub requests: u64,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

impl Load {
    /// Starts `workers` threads in network namespace `ns` (None: the test's own) sending
    /// to `target`, each with `sessions` sessions, one request per `pace` at most.
    pub fn start(
        ns: Option<&str>,
        target: SocketAddr,
        workers: usize,
        sessions: usize,
        pace: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let started = Instant::now();
        let workers = (0..workers)
            .map(|w| {
                let stop = stop.clone();
                let progress = progress.clone();
                let ns = ns.map(str::to_string);
                std::thread::spawn(move || {
                    if let Some(ns) = ns {
                        enter_ns(&ns).unwrap_or_else(|e| panic!("{e}"));
                    }
                    work(w, target, sessions, pace, &stop, &progress)
                })
            })
            .collect();
        Load {
            stop,
            progress,
            workers,
            started,
        }
    }

    pub fn requests(&self) -> u64 {
        self.progress.requests.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.progress.failed.load(Ordering::Relaxed)
    }

    pub fn acked(&self) -> u64 {
        self.progress.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` further writes were acknowledged (bounded by `timeout`): the load
    /// is moving. False when it did not.
    pub fn wait_acked(&self, more: u64, timeout: Duration) -> bool {
        let target = self.acked() + more;
        super::time_until(timeout, || self.acked() >= target).is_some()
    }

    /// Stops the workers (each finishes the request it is in) and collects their records.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut sessions = Vec::new();
        let mut failures = Vec::new();
        for worker in self.workers {
            let (s, f) = worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            sessions.extend(s);
            failures.extend(f);
        }
        failures.sort_by_key(|f| f.at);
        LoadReport {
            sessions,
            requests: self.progress.requests.load(Ordering::Relaxed),
            failures,
            elapsed: self.started.elapsed(),
        }
    }
}

fn work(
    worker: usize,
    target: SocketAddr,
    sessions: usize,
    pace: Duration,
    stop: &AtomicBool,
    progress: &Progress,
) -> (Vec<Tracked>, Vec<Failure>) {
    let mut tracked = vec![Tracked::default(); sessions];
    let mut failures = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let session = &mut tracked[seq as usize % sessions];
        let slot = (seq as usize / sessions) % SLOTS;
        let attribute = format!("a{slot}");
        let value = format!("{worker}-{seq}");
        let path = format!("/session/attributes/{attribute}");
        let answer = exchange(
            target,
            "PUT",
            &path,
            session.cookie.as_deref(),
            value.as_bytes(),
        );
        progress.requests.fetch_add(1, Ordering::Relaxed);
        match answer {
            Some(a) if a.status == 204 => {
                if let Some(c) = a.set_cookie {
                    session.cookie = Some(c);
                }
                session.slots[slot] = Slot {
                    acked: Some(value),
                    later: Vec::new(),
                };
                session.acks += 1;
                progress.acked.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                session.slots[slot].later.push(value);
                progress.failed.fetch_add(1, Ordering::Relaxed);
                let what = match other {
                    Some(a) => format!("{} {}", a.status, a.text().lines().next().unwrap_or("")),
                    None => "no answer".to_string(),
                };
                failures.push(Failure {
                    at: Instant::now(),
                    what: format!("PUT {path} by worker {worker}: {what}"),
                });
            }
        }
        seq += 1;
        if let Some(rest) = pace.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    (tracked, failures)
}

impl LoadReport {
    pub fn acked(&self) -> u64 {
        self.sessions.iter().map(|s| s.acks).sum()
    }

    /// The cookies of the sessions that were made, in the order of [`missing`](Self::missing)'s
    /// `answers`.
    pub fn cookies(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter_map(|s| s.cookie.clone())
            .collect()
    }

    /// The acknowledged writes that `answers` (a node's `GET /session` JSON for each of
    /// [`cookies`](Self::cookies), None where it did not answer) do not show, described.
    pub fn missing(&self, node: &str, answers: &[Option<Value>]) -> Vec<String> {
        let made = self.sessions.iter().filter(|s| s.cookie.is_some());
        let mut wrong = Vec::new();
        for (session, answer) in made.zip(answers) {
            let cookie = session.cookie.as_deref().unwrap_or("");
            let Some(answer) = answer else {
                wrong.push(format!("{node} did not answer for {cookie}"));
                continue;
            };
            let id = cookie.split_once('=').map_or("", |(_, v)| v);
            let id = id.split('.').next().unwrap_or("");
            let got = answer["id"].as_str().unwrap_or("");
            if !got.starts_with(id) {
                wrong.push(format!("{node} does not hold {cookie} (answered {got})"));
                continue;
            }
            for (slot, written) in session.slots.iter().enumerate() {
                let Some(acked) = &written.acked else {
                    continue;
                };
                let attribute = format!("a{slot}");
                let got = &answer["attributes"][&attribute];
                let fine = got == acked.as_str() || written.later.iter().any(|l| got == l.as_str());
                if !fine {
                    wrong.push(format!(
                        "{node}: {attribute} of {cookie} is {got}, acknowledged {acked}"
                    ));
                }
            }
        }
        wrong
    }

    /// How many (session, attribute) pairs hold an acknowledged value: what
    /// [`missing`](Self::missing) checks on each node.
    pub fn checked(&self) -> usize {
        self.sessions
            .iter()
            .map(|s| s.slots.iter().filter(|w| w.acked.is_some()).count())
            .sum()
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.1?} ({:.0}/s), {} acknowledged writes to {} attributes of {} sessions, {} failed",
            self.requests,
            self.elapsed,
            self.requests as f64 / self.elapsed.as_secs_f64().max(0.001),
            self.acked(),
            self.checked(),
            self.cookies().len(),
            self.failures.len()
        )
    }
}
