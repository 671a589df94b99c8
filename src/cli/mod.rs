//! Command line: clap types, the mapping of flags onto config keys, and the commands.

mod http;
mod status;
mod up;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;
use tracing::info;

use crate::balancer::{self, BalancerError};
use crate::config::{Config, ConfigError, Override};
use crate::node::NodeError;
use crate::shutdown::{self, Shutdown};
use crate::web::Node;
use crate::wire::seal::ClusterKey;

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
    /// Run the HTTP balancer alone.
    Balancer(BalancerArgs),
    /// Print the membership/status table of the node at URL.
    Status(StatusArgs),
    /// Print a new random cluster key, for the file that cluster.key_file names
    /// (e.g. `deltacast keygen > cluster.key && chmod 600 cluster.key`).
    Keygen,
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
    /// AJP/1.3 listen address, for Apache mod_proxy_ajp or mod_jk (ajp.listen; needs
    /// ajp.secret unless ajp.secret_required=false).
    #[arg(long, value_name = "ADDR")]
    pub ajp: Option<String>,
    /// Die with this parent process (used by `up`, so nodes never outlive it).
    #[arg(long, hide = true, value_name = "PID")]
    pub parent_pid: Option<i32>,
}

#[derive(Debug, Args)]
pub struct BalancerArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Listen address (balancer.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A static member, e.g. n1=http://127.0.0.1:8081 (balancer.member, repeatable).
    #[arg(long = "member", value_name = "ROUTE=URL")]
    pub member: Vec<String>,
    /// Die with this parent process (used by `up`).
    #[arg(long, hide = true, value_name = "PID")]
    pub parent_pid: Option<i32>,
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
    Key(#[from] crate::wire::key_file::KeyFileError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Balancer(#[from] BalancerError),
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
    /// The overrides of these flags plus `named` (key, flag value) ones, in the order they
    /// apply over the file: named flags first, then `--set` (SPEC: file, flags, `--set`).
    fn overrides(&self, named: &[(&str, &Option<String>)]) -> Vec<Override> {
        let flags = [
            ("cluster.name", &self.cluster),
            ("membership.multicast", &self.multicast),
        ];
        let mut out: Vec<Override> = flags
            .iter()
            .chain(named)
            .filter_map(|(key, value)| value.as_deref().map(|v| Override::text(key, v)))
            .collect();
        out.extend(self.set.iter().cloned());
        out
    }
}

impl NodeArgs {
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let overrides = self.common.overrides(&[
            ("node.name", &self.name),
            ("node.http", &self.http),
            ("node.replication", &self.replication),
            ("ajp.listen", &self.ajp),
        ]);
        Config::load(self.common.config.as_deref(), &overrides)
    }
}

impl BalancerArgs {
    /// The file, then `--cluster`/`--multicast`/`--listen`, then `--member`, then `--set`.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut overrides = self.common.overrides(&[("balancer.listen", &self.listen)]);
        let set = overrides.split_off(overrides.len() - self.common.set.len());
        for member in &self.member {
            overrides.push(Override::parse_member(member)?);
        }
        overrides.extend(set);
        Config::load(self.common.config.as_deref(), &overrides)
    }
}

/// Runs a command to completion; the exit code is the command's.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Node(args) => run_node(args).await,
        Command::Balancer(args) => run_balancer(args).await,
        Command::Up(args) => up::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Keygen => {
            println!("{}", ClusterKey::generate_text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `deltacast node`: a [`Node`] serving its own endpoints, its HTTP answering (and its
/// addresses reported) while it joins, stopped by a signal.
async fn run_node(args: NodeArgs) -> Result<ExitCode, CliError> {
    let config = args.load_config()?;
    let shutdown = serve_until_signal(args.parent_pid)?;
    let node = Node::builder(config)
        .shutdown(shutdown)
        .node_endpoints()
        .launch()
        .await?;
    report_listening(&node);
    node.stopped().await;
    Ok(ExitCode::SUCCESS)
}

/// Prints the line `deltacast up` and the tests read to learn where a node listens:
/// `listening node.http=ADDR node.replication=ADDR` on stdout. An app built on [`Node`]
/// that takes `deltacast node`'s flags prints it too, so it runs where `deltacast node`
/// runs.
pub fn report_listening(node: &Node) {
    let addrs = node.addresses();
    let mut listening = vec![
        ("node.http", addrs.http),
        ("node.replication", addrs.replication),
    ];
    if let Some(ajp) = addrs.ajp {
        listening.push(("node.ajp", ajp));
    }
    up::report_listening(&listening);
}

/// The shutdown of a process that serves until SIGTERM or SIGINT (Ctrl-C): give it to
/// [`crate::NodeBuilder::shutdown`], and [`Node::stopped`] returns once the node left.
pub fn shutdown_on_signal() -> Result<Shutdown, CliError> {
    serve_until_signal(None)
}

async fn run_balancer(args: BalancerArgs) -> Result<ExitCode, CliError> {
    let config = args.load_config()?;
    let shutdown = serve_until_signal(args.parent_pid)?;
    balancer::run_reporting(config, shutdown, |listen| {
        up::report_listening(&[("balancer.listen", listen)]);
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The shutdown of a long-running process: triggered by SIGTERM or SIGINT; and when
/// started by `up`, tied to that parent's life.
fn serve_until_signal(parent_pid: Option<i32>) -> Result<Shutdown, CliError> {
    let shutdown = Shutdown::new();
    let signals = shutdown::signal_listener().map_err(|source| CliError::Io {
        context: "cannot install signal handlers".into(),
        source,
    })?;
    trigger_on(&shutdown, signals);
    if let Some(parent) = parent_pid {
        tie_to_parent(parent)?;
    }
    Ok(shutdown)
}

/// Triggers `shutdown` when `signal` resolves (with the signal's name). The task is owned
/// by the shutdown like every task, so it also ends when something else triggers it: the
/// drain then does not wait out its grace for a signal that never comes.
fn trigger_on<S>(shutdown: &Shutdown, signal: S)
where
    S: Future<Output = &'static str> + Send + 'static,
{
    let on_signal = shutdown.clone();
    shutdown.spawn(async move {
        tokio::select! {
            name = signal => {
                info!(signal = name, "stopping");
                on_signal.trigger();
            }
            () = on_signal.triggered() => {}
        }
    });
}

/// Makes the kernel kill this process when its parent dies (PR_SET_PDEATHSIG), even if it
/// is stopped, and checks that the parent did not die before that was in place.
fn tie_to_parent(parent: i32) -> Result<(), CliError> {
    use nix::sys::signal::Signal;
    use nix::unistd::{Pid, getppid};
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| CliError::Io {
        context: "cannot tie the node to its parent".into(),
        source: e.into(),
    })?;
    if getppid() != Pid::from_raw(parent) {
        return Err(CliError::Up(format!("the parent process {parent} is gone")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_signal_triggers_the_shutdown_and_its_task_is_drained() {
        let shutdown = Shutdown::new();
        let (send, received) = tokio::sync::oneshot::channel::<()>();
        trigger_on(&shutdown, async move {
            let _ = received.await;
            "SIGTERM"
        });
        assert!(!shutdown.token().is_cancelled());
        send.send(()).expect("the task waits for the signal");
        shutdown.triggered().await;
        assert!(shutdown.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_signal_task_ends_when_the_shutdown_comes_from_elsewhere() {
        let shutdown = Shutdown::new();
        trigger_on(&shutdown, std::future::pending());
        shutdown.trigger();
        assert!(
            shutdown.drain(Duration::from_secs(5)).await,
            "the drain waited for a signal that never comes"
        );
    }
}
