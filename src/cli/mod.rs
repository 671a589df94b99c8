//! Command line: clap types, the mapping of flags onto config keys, and the commands.

mod http;
mod status;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;
use tracing::info;

use crate::config::{Config, ConfigError, Override};
use crate::node::{self, NodeError};
use crate::shutdown::{self, Shutdown};

pub use http::HttpError;

#[derive(Debug, Parser)]
#[command(
    name = "deltacast",
    version,
    about = "Peer-to-peer HTTP session replication cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start N nodes on loopback, wait until they see each other, run until Ctrl-C.
    Up(UpArgs),
    /// Run one cluster node.
    Node(NodeArgs),
    /// Print the membership/status table of the node at URL.
    Status(StatusArgs),
}

/// Flags shared by the commands that read the config file.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// Config file (default: ./cluster.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cluster name (cluster.name).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Multicast group and port (membership.multicast).
    #[arg(long, value_name = "GROUP:PORT")]
    pub multicast: Option<String>,
    /// Any key of the config file, e.g. --set sessions.max_inactive_s=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<Override>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Node name, also the route suffix of its session ids (node.name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// HTTP listen address (node.http).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Replication listen address (node.replication).
    #[arg(long, value_name = "ADDR")]
    pub replication: Option<String>,
    /// Stop gracefully when standard input closes (used by `up`, so nodes never outlive it).
    #[arg(long, hide = true)]
    pub watch_stdin: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Base URL of a node, e.g. http://127.0.0.1:8081
    pub url: String,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}")]
    Up(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl ConfigArgs {
    /// The overrides these flags stand for, in the order they apply: --set, then named flags.
    fn overrides(&self) -> Vec<Override> {
        let mut out = self.set.clone();
        if let Some(v) = &self.cluster {
            out.push(Override::text("cluster.name", v));
        }
        if let Some(v) = &self.multicast {
            out.push(Override::text("membership.multicast", v));
        }
        out
    }
}

impl NodeArgs {
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut overrides = self.common.overrides();
        for (key, value) in [
            ("node.name", &self.name),
            ("node.http", &self.http),
            ("node.replication", &self.replication),
        ] {
            if let Some(v) = value {
                overrides.push(Override::text(key, v));
            }
        }
        Config::load(self.common.config.as_deref(), &overrides)
    }
}

/// Runs a command to completion; the exit code is the command's.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Node(args) => run_node(args).await,
        Command::Up(args) => up::run(args).await,
        Command::Status(args) => status::run(args).await,
    }
}

async fn run_node(args: NodeArgs) -> Result<ExitCode, CliError> {
    let config = args.load_config()?;
    let shutdown = Shutdown::new();
    let on_signal = shutdown.clone();
    let signals = shutdown::signal_listener().map_err(|source| CliError::Io {
        context: "cannot install signal handlers".into(),
        source,
    })?;
    tokio::spawn(async move {
        let name = signals.await;
        info!(signal = name, "stopping");
        on_signal.trigger();
    });
    if args.watch_stdin {
        // A plain thread: tokio's stdin would hold runtime shutdown until the read ends.
        let on_eof = shutdown.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            info!("standard input closed, stopping");
            on_eof.trigger();
        });
    }
    node::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
