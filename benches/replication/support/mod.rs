//! What every figure shares: the node processes, the HTTP client and the loads, the
//! statistics, and the printed and drawn reports.

mod client;
mod cluster;
mod load;
mod report;
mod stats;
pub mod svg;

pub use client::{Client, Sample, drained, sample_all, targets};
pub use cluster::{node_args, pid, rss_kb, seal_with, start_cluster, wait_alone, with_key};
pub use load::{fill, sequential_writes, write_load};
pub use report::{Headline, Table, headline, print_summary};
pub use stats::{Spread, count, mb, ms, quantile, ratio, us};

/// The machine the figures were measured on, as the report and the charts state it: cores,
/// CPU model and load average at start (the cores are shared by the load generator and
/// every node).
pub fn machine() -> Machine {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine { cores, cpu, load }
}

pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    /// The 1-minute load average when the run started.
    pub load: String,
}

impl Machine {
    /// The line the report starts with.
    pub fn line(&self) -> String {
        format!(
            "machine: {} core(s) ({}), shared by the load generator AND every node; \
             load average {} at start",
            self.cores, self.cpu, self.load
        )
    }

    /// The same, short enough for a chart's subtitle.
    pub fn short(&self) -> String {
        format!(
            "{} core(s) ({}) shared by the load generator and every node; load average {} at start",
            self.cores, self.cpu, self.load
        )
    }
}
