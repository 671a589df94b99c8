//! `deltacast up`: a whole local cluster from one command. Starts N node processes and a
//! balancer on loopback, waits until every node sees all the others and the balancer sees
//! every node, prints their URLs (the balancer first), and stops them all on Ctrl-C/SIGTERM.
//!
//! Children never outlive this process: each asks the kernel to kill it when we die
//! (PR_SET_PDEATHSIG, set by the child for itself, so no unsafe `pre_exec` here), which
//! holds even when we are killed with SIGKILL and even for a stopped child. A graceful
//! stop forwards SIGTERM: every node announces its leave and exits 0.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::http;
use super::status::table;
use super::{CliError, ConfigArgs, UpArgs};
use crate::config::Config;
use crate::node::status::StatusDoc;
use crate::shutdown;

/// Keys `up` sets for each node itself (from the config, picked ports, its own cluster).
const PER_NODE_KEYS: &[&str] = &[
    "node.name",
    "node.http",
    "node.replication",
    "membership.multicast",
    "membership.static_members",
    "cluster.name",
];

/// The name of the balancer's row in the table.
const BALANCER: &str = "balancer";

/// How long the nodes get to find each other and take over the cluster's sessions.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node gets to leave gracefully before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Spawned {
    name: String,
    pid: u32,
    http: SocketAddr,
    replication: SocketAddr,
    kill: Option<oneshot::Sender<()>>,
    exited: Option<ExitStatus>,
}

pub async fn run(args: UpArgs) -> Result<ExitCode, CliError> {
    let base = Config::load(args.common.config.as_deref(), &args.common.overrides(&[]))?;
    // A bad key file stops here, with its one line, rather than in every child.
    crate::wire::seal::ClusterKey::read_file_if_set(base.cluster.key_file.as_deref())?;
    let n = usize::from(args.nodes);
    let multicast = if base.is_set("membership.multicast") {
        base.membership.multicast
    } else {
        SocketAddrV4::new(*base.membership.multicast.ip(), free_udp_port()?)
    };
    let loopback = Ipv4Addr::LOCALHOST;
    let mut taken = Vec::new();
    let mut plan = Vec::with_capacity(n);
    for i in 0..n {
        let http = pick_port(loopback, base.node.http.port(), i, &mut taken)?;
        let replication = pick_port(loopback, base.node.replication.port(), i, &mut taken)?;
        plan.push((format!("n{}", i + 1), http, replication));
    }
    let static_members: Vec<String> = plan.iter().map(|(_, _, r)| r.to_string()).collect();
    let uses_static = !base.membership.static_members.is_empty();

    let signals = shutdown::signal_listener().map_err(|source| CliError::Io {
        context: "cannot install signal handlers".into(),
        source,
    })?;
    tokio::pin!(signals);

    let exe = std::env::current_exe().map_err(|source| CliError::Io {
        context: "cannot find the deltacast executable".into(),
        source,
    })?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(usize, ExitStatus)>();
    let mut nodes: Vec<Spawned> = Vec::with_capacity(n);
    let node_threads = node_worker_threads(n);
    for (index, (name, http, replication)) in plan.into_iter().enumerate() {
        let mut cmd = child_command(&exe, "node", &args.common, |_| false);
        if let Some(threads) = node_threads {
            cmd.env(WORKER_THREADS_ENV, threads.to_string());
        }
        cmd.args(["--cluster", &base.cluster.name])
            .args(["--multicast", &multicast.to_string()])
            .args(["--name", &name])
            .args(["--http", &http.to_string()])
            .args(["--replication", &replication.to_string()]);
        if uses_static {
            cmd.arg("--set").arg(format!(
                "membership.static_members={}",
                static_members.join(",")
            ));
        }
        // A process group of its own: Ctrl-C in a terminal reaches only `up`, which then
        // stops the nodes itself, each exactly once.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                stop_all(&mut nodes, &mut exit_rx).await;
                return Err(CliError::Io {
                    context: format!("cannot start node {name}"),
                    source,
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        let (kill_tx, kill_rx) = oneshot::channel();
        tokio::spawn(reap(index, child, kill_rx, exit_tx.clone()));
        nodes.push(Spawned {
            name,
            pid,
            http,
            replication,
            kill: Some(kill_tx),
            exited: None,
        });
    }

    // The balancer, last in the list: it fronts the nodes (discovered from the heartbeats,
    // or given as static members when the nodes do not use multicast).
    let balancer_listen = pick_port(loopback, base.balancer.listen.port(), 0, &mut taken)?;
    let discover = base.balancer.discover && !uses_static;
    let mut cmd = child_command(&exe, "balancer", &args.common, |key| {
        key == "balancer.listen"
    });
    cmd.args(["--cluster", &base.cluster.name])
        .args(["--multicast", &multicast.to_string()])
        .args(["--listen", &balancer_listen.to_string()]);
    if !discover {
        for node in &nodes {
            cmd.arg("--member")
                .arg(format!("{}=http://{}", node.name, node.http));
        }
        cmd.args(["--set", "balancer.discover=false"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    match cmd.spawn() {
        Ok(child) => {
            let pid = child.id().unwrap_or(0);
            let (kill_tx, kill_rx) = oneshot::channel();
            tokio::spawn(reap(nodes.len(), child, kill_rx, exit_tx.clone()));
            nodes.push(Spawned {
                name: BALANCER.to_string(),
                pid,
                http: balancer_listen,
                replication: balancer_listen,
                kill: Some(kill_tx),
                exited: None,
            });
        }
        Err(source) => {
            stop_all(&mut nodes, &mut exit_rx).await;
            return Err(CliError::Io {
                context: "cannot start the balancer".into(),
                source,
            });
        }
    }

    // Wait until every node lists all the others as alive and the balancer lists every
    // node, or give up.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if all_see_each_other(&nodes[..n]).await && balancer_sees(&nodes[n], n).await {
            break;
        }
        let failure = tokio::select! {
            name = &mut signals => Some(format!("{name} received while starting")),
            Some((i, status)) = exit_rx.recv() => {
                nodes[i].exited = Some(status);
                Some(format!("{} exited while starting ({status}); see its log above", describe(&nodes[i])))
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                (Instant::now() > deadline).then(|| format!("the nodes did not all see each other within {READY_TIMEOUT:?} (is multicast on {} working? try --set membership.static_members=...)", base.membership.interface))
            }
        };
        if let Some(reason) = failure {
            stop_all(&mut nodes, &mut exit_rx).await;
            return Err(CliError::Up(reason));
        }
    }

    print_table(&base, multicast, uses_static, &nodes[..n], &nodes[n]);
    loop {
        tokio::select! {
            name = &mut signals => {
                info!(signal = name, "stopping the cluster");
                break;
            }
            Some((i, status)) = exit_rx.recv() => {
                nodes[i].exited = Some(status);
                if nodes[..n].iter().all(|n| n.exited.is_some()) {
                    stop_all(&mut nodes, &mut exit_rx).await;
                    return Err(CliError::Up("every node has exited".into()));
                }
                warn!(child = %describe(&nodes[i]), pid = nodes[i].pid, %status, "exited; the others carry on");
            }
        }
    }
    stop_all(&mut nodes, &mut exit_rx).await;
    println!("deltacast: all nodes and the balancer stopped");
    Ok(ExitCode::SUCCESS)
}

/// Owns one child: reports its exit, or kills it when asked.
async fn reap(
    index: usize,
    mut child: Child,
    kill: oneshot::Receiver<()>,
    exits: mpsc::UnboundedSender<(usize, ExitStatus)>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = kill => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    if let Ok(status) = status {
        let _ = exits.send((index, status));
    }
}

/// Asks every running node to leave (SIGTERM), waits, and kills stragglers.
async fn stop_all(nodes: &mut [Spawned], exits: &mut mpsc::UnboundedReceiver<(usize, ExitStatus)>) {
    for node in nodes.iter().filter(|n| n.exited.is_none()) {
        if let Ok(pid) = i32::try_from(node.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while nodes.iter().any(|n| n.exited.is_none()) {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some((i, status))) => nodes[i].exited = Some(status),
            Ok(None) => break,
            Err(_) => {
                for node in nodes.iter_mut().filter(|n| n.exited.is_none()) {
                    warn!(node = %node.name, pid = node.pid, "node did not stop in time, killing it");
                    if let Some(kill) = node.kill.take() {
                        let _ = kill.send(());
                    }
                }
                while nodes.iter().any(|n| n.exited.is_none()) {
                    match exits.recv().await {
                        Some((i, status)) => nodes[i].exited = Some(status),
                        None => break,
                    }
                }
            }
        }
    }
}

async fn all_see_each_other(nodes: &[Spawned]) -> bool {
    let expected = nodes.len() - 1;
    for node in nodes {
        let Ok(uri) = http::with_path(&format!("http://{}", node.http), "/status") else {
            return false;
        };
        let Ok(body) = http::get(&uri, Duration::from_secs(1)).await else {
            return false;
        };
        let Ok(doc) = serde_json::from_slice::<StatusDoc>(&body) else {
            return false;
        };
        let alive = doc.members.iter().filter(|m| m.state == "alive").count();
        if alive < expected || doc.node.state != "ready" {
            return false;
        }
    }
    true
}

/// "node NAME" or "the balancer", for messages.
fn describe(child: &Spawned) -> String {
    if child.name == BALANCER {
        "the balancer".to_string()
    } else {
        format!("node {}", child.name)
    }
}

/// Whether the balancer answers and lists `expected` members.
async fn balancer_sees(balancer: &Spawned, expected: usize) -> bool {
    let Ok(uri) = http::with_path(
        &format!("http://{}", balancer.http),
        "/balancer-manager/status",
    ) else {
        return false;
    };
    let Ok(body) = http::get(&uri, Duration::from_secs(1)).await else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|doc| doc["members"].as_array().map(Vec::len))
        == Some(expected)
}

fn print_table(
    base: &Config,
    multicast: SocketAddrV4,
    uses_static: bool,
    nodes: &[Spawned],
    balancer: &Spawned,
) {
    let how = if uses_static {
        "static members".to_string()
    } else {
        format!("multicast {multicast} on {}", base.membership.interface)
    };
    println!(
        "deltacast: {} node(s) of cluster {:?} are up ({how})",
        nodes.len(),
        base.cluster.name
    );
    let mut rows = vec![[
        "NAME".to_string(),
        "URL".into(),
        "REPLICATION".into(),
        "STATUS".into(),
        "PID".into(),
    ]];
    rows.push([
        BALANCER.to_string(),
        format!("http://{}/", balancer.http),
        "-".into(),
        format!("http://{}/balancer-manager", balancer.http),
        balancer.pid.to_string(),
    ]);
    for node in nodes {
        rows.push([
            node.name.clone(),
            format!("http://{}/", node.http),
            node.replication.to_string(),
            format!("http://{}/status", node.http),
            node.pid.to_string(),
        ]);
    }
    print!("{}", table(&rows));
    println!("Press Ctrl-C to stop.");
}

/// `preferred + index` when it is free on `ip` (so a default cluster gets the familiar
/// 8081, 8082...), else any free port. Ports handed out earlier in this run are skipped.
fn pick_port(
    ip: Ipv4Addr,
    preferred: u16,
    index: usize,
    taken: &mut Vec<u16>,
) -> Result<SocketAddr, CliError> {
    let wanted = u16::try_from(usize::from(preferred) + index)
        .ok()
        .filter(|p| preferred != 0 && *p != 0);
    if let Some(port) = wanted {
        if !taken.contains(&port)
            && TcpListener::bind((ip, port)).is_ok()
            && UdpSocket::bind((ip, port)).is_ok()
        {
            taken.push(port);
            return Ok(SocketAddr::from((ip, port)));
        }
    }
    loop {
        let listener = TcpListener::bind((ip, 0)).map_err(|source| CliError::Io {
            context: "cannot find a free port".into(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| CliError::Io {
            context: "cannot find a free port".into(),
            source,
        })?;
        if !taken.contains(&addr.port()) {
            taken.push(addr.port());
            return Ok(addr);
        }
    }
}

/// tokio reads the worker count of a runtime from this variable.
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Worker threads per node when `n` nodes share this host: its cores divided among them (at
/// least one each), so that a local cluster does not run cores × nodes threads that then
/// wake each other across the few cores there are. None when the user chose a count.
fn node_worker_threads(n: usize) -> Option<usize> {
    if std::env::var_os(WORKER_THREADS_ENV).is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    Some((cores / n.max(1)).max(1))
}

/// `deltacast <sub>` as a child of `up`: tied to this process, with the user's config file
/// and `--set`s. `--set` applies after flags, so the keys `up` sets per child itself
/// (PER_NODE_KEYS, and those `also_skip` names) are not passed on.
fn child_command(
    exe: &Path,
    sub: &str,
    common: &ConfigArgs,
    also_skip: impl Fn(&str) -> bool,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(sub)
        .arg("--parent-pid")
        .arg(std::process::id().to_string());
    if let Some(file) = &common.config {
        cmd.arg("--config").arg(file);
    }
    for o in common
        .set
        .iter()
        .filter(|o| !PER_NODE_KEYS.contains(&o.key.as_str()) && !also_skip(&o.key))
    {
        cmd.arg("--set").arg(o.to_string());
    }
    cmd
}

fn free_udp_port() -> Result<u16, CliError> {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|source| CliError::Io {
            context: "cannot find a free UDP port for the multicast group".into(),
            source,
        })
}
