//! The loads the figures put on a cluster: concurrent clients writing for a fixed time,
//! sequential writes on one connection, and a fill of many fresh sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Barrier, watch};

use super::client::{Client, Sample, Target, sample_all};
use crate::common;

/// The outcome of a timed write load.
pub struct Load {
    pub writes: u64,
    pub failures: u64,
    pub secs: f64,
    /// Per node, the change of its figures over the timed part.
    pub nodes: Vec<Sample>,
    /// CPU of this process (the load generator) over the timed part.
    pub client_cpu_ns: u64,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.writes as f64 / self.secs
    }
}

/// `clients` concurrent clients, client i on `on[i % on.len()]`, each with its own session
/// and keep-alive connection, write one small attribute as fast as they are answered for
/// `duration`. `all` are every node of the cluster (measured before and after).
pub async fn write_load(all: &[Target], on: &[Target], clients: usize, duration: Duration) -> Load {
    let ready = Arc::new(Barrier::new(clients + 1));
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = on[i % on.len()].http;
        let ready = ready.clone();
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr, true);
            // The session is made and the connection warm before the clock starts.
            for w in 0..20u64 {
                let _ = c.put("x", Bytes::from(w.to_string())).await;
            }
            ready.wait().await;
            let deadline = go
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|d| *d)
                .unwrap_or_else(Instant::now);
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let result = c.put("x", Bytes::from(n.to_string())).await;
                if Instant::now() > deadline {
                    break;
                }
                match result {
                    Ok(r) if r.status == 204 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    ready.wait().await;
    let before = sample_all(all).await;
    let client_before = common::cpu_ns(std::process::id());
    let start = Instant::now();
    let _ = go_tx.send(Some(start + duration));
    let (mut writes, mut failures) = (0, 0);
    for t in tasks {
        if let Ok((ok, failed)) = t.await {
            writes += ok;
            failures += failed;
        }
    }
    let client_cpu_ns = common::cpu_ns(std::process::id()).saturating_sub(client_before);
    let after = sample_all(all).await;
    Load {
        writes,
        failures,
        secs: duration.as_secs_f64(),
        nodes: after.iter().zip(&before).map(|(a, b)| a.since(b)).collect(),
        client_cpu_ns,
    }
}

/// Makes `count` sessions on `addr`, each with attribute `name` = `value`, with
/// `concurrency` keep-alive clients that never send a cookie. Returns the time it took and
/// the number of failed requests.
pub async fn fill(
    addr: SocketAddr,
    count: u64,
    concurrency: usize,
    name: &'static str,
    value: Bytes,
) -> (Duration, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, failures, value) = (next.clone(), failures.clone(), value.clone());
            tokio::spawn(async move {
                let mut c = Client::new(addr, false);
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    match c.put(name, value.clone()).await {
                        Ok(r) if r.status == 204 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (start.elapsed(), failures.load(Ordering::Relaxed))
}

/// Latencies (ns) of `count` sequential single-attribute writes on one keep-alive
/// connection, after `warmup` untimed ones; and the number of failed requests.
pub async fn sequential_writes(addr: SocketAddr, warmup: usize, count: usize) -> (Vec<u64>, u64) {
    let mut c = Client::new(addr, true);
    let mut failures = 0;
    for i in 0..warmup {
        if !matches!(c.put("x", Bytes::from(format!("w{i}"))).await, Ok(r) if r.status == 204) {
            failures += 1;
        }
    }
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let value = Bytes::from(format!("v{i}"));
        let t0 = Instant::now();
        let result = c.put("x", value).await;
        let took = t0.elapsed();
        match result {
            Ok(r) if r.status == 204 => latencies.push(took.as_nanos() as u64),
            _ => failures += 1,
        }
    }
    latencies.sort_unstable();
    (latencies, failures)
}
