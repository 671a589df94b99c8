//! Replication figures of deltacast, measured on real node processes (the release binary)
//! over loopback. Every cluster has its own name and multicast port and the default
//! heartbeat timing (500 ms). One module per figure, named as `--only` names it:
//!
//! 1. [`latency`]: sync write latency, 3 nodes against 1, and read-after-write misses.
//! 2. [`throughput`]: writes/s on 1, 3, 5 and 8 nodes, sync and async, and the CPU per
//!    delta per receiving member.
//! 3. [`transfer`]: state transfer of 100 000 (and 1 000 000) sessions to a joining node.
//! 4. [`memory`]: memory per session, on the node that made it and on a replica.
//! 5. [`wire`]: bytes on the wire per one-attribute delta.
//!
//! [`support`] holds what they share: the node processes, the HTTP client and the loads,
//! the statistics, the printed tables and the SVG charts. Figures are medians (with min and
//! max) of several runs. The load generator is one tokio current-thread runtime in this
//! process: it shares the machine's cores with the nodes, and the output says how many
//! there are.
//!
//! Run: `cargo bench --bench replication`; `-- --quick` for fewer, shorter runs (no
//! 1 000 000-session transfer); `-- --full` to force the 1 000 000-session transfer;
//! `-- --only latency,throughput,transfer,memory,wire` to run some figures only;
//! `-- --sealed` to run every node with a shared cluster key (`cluster.key_file`), so that
//! the cost of the seal shows against a run without; `-- --svg DIR` to draw the figures a
//! curve says more about (latency percentiles, writes/s against nodes) as SVG files in DIR
//! (relative to the package root, where cargo runs benches).

#[path = "../../tests/common/mod.rs"]
mod common;
mod latency;
mod memory;
mod support;
mod throughput;
mod transfer;
mod wire;

use std::path::{Path, PathBuf};

use support::{Machine, machine, print_summary, seal_with};

/// Concurrent clients of the throughput and wire figures.
const CLIENTS: usize = 16;

/// The figures, by their `--only` name, in the order they run.
const FIGURES: [&str; 5] = ["latency", "throughput", "transfer", "memory", "wire"];

fn main() {
    if std::env::var_os(latency::ECHO_ENV).is_some() {
        latency::echo_server();
        return;
    }
    let opts = Opts::parse();
    if let Some(unknown) = opts
        .only
        .iter()
        .flatten()
        .find(|f| !FIGURES.contains(&f.as_str()))
    {
        eprintln!(
            "unknown figure {unknown:?} in --only (expected some of {})",
            FIGURES.join(",")
        );
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _key = opts.sealed.then(|| {
        let file = common::KeyFile::new();
        seal_with(file.args());
        file
    });
    println!(
        "deltacast replication benchmark ({} mode{}{})",
        if opts.quick { "quick" } else { "standard" },
        if opts.full { ", --full" } else { "" },
        if opts.sealed {
            ", --sealed: cluster traffic sealed with a shared key"
        } else {
            ""
        }
    );
    println!("{}", opts.machine.line());
    println!(
        "real `deltacast node` processes on loopback, default heartbeat (500 ms); the load \
         generator (one tokio current-thread runtime) runs on the same cores as the nodes"
    );
    let mut summary = Vec::new();
    if opts.wants("latency") {
        latency::run(&rt, &opts, &mut summary);
    }
    if opts.wants("throughput") {
        throughput::run(&rt, &opts, &mut summary);
    }
    if opts.wants("transfer") {
        transfer::run(&rt, &opts, &mut summary);
    }
    if opts.wants("memory") {
        memory::run(&rt, &opts, &mut summary);
    }
    if opts.wants("wire") {
        wire::run(&rt, &opts, &mut summary);
    }
    print_summary(&summary);
}

/// Prints where a chart went, or why it could not be written (the figures are printed
/// either way).
fn report_written(written: std::io::Result<PathBuf>) {
    match written {
        Ok(path) => println!("   chart written to {}", path.display()),
        Err(e) => eprintln!("   the chart could not be written: {e}"),
    }
}

struct Opts {
    quick: bool,
    full: bool,
    sealed: bool,
    only: Option<Vec<String>>,
    /// Where to write the SVG charts, if anywhere.
    svg: Option<PathBuf>,
    /// The machine as it was when the run started.
    machine: Machine,
}

impl Opts {
    /// `cargo bench` adds `--bench`; anything not known is ignored.
    fn parse() -> Opts {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Opts {
            quick: args.iter().any(|a| a == "--quick"),
            full: args.iter().any(|a| a == "--full"),
            sealed: args.iter().any(|a| a == "--sealed"),
            only: value_of(&args, "--only")
                .map(|list| list.split(',').map(|s| s.trim().to_string()).collect()),
            svg: value_of(&args, "--svg").map(|dir| Path::new(&dir).to_path_buf()),
            machine: machine(),
        }
    }

    fn wants(&self, figure: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|f| f == figure))
    }

    /// `quick` in quick mode, `full` otherwise.
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    /// How the run was made, for a chart's subtitle: the mode, and the machine at start.
    fn conditions(&self) -> Vec<String> {
        let mode = match (self.quick, self.sealed) {
            (false, false) => "standard mode, cluster traffic in clear",
            (false, true) => "standard mode, cluster traffic sealed with a shared key",
            (true, false) => "quick mode, cluster traffic in clear",
            (true, true) => "quick mode, cluster traffic sealed with a shared key",
        };
        vec![mode.to_string(), self.machine.short()]
    }
}

/// The value of `--name VALUE` or `--name=VALUE`; the last one given wins.
fn value_of(args: &[String], name: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == name {
            found = it.next().cloned();
        } else if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
            found = Some(value.to_string());
        }
    }
    found
}
