//! `deltacast up`: a whole local cluster from one command. Starts N node processes and a
//! balancer on loopback, waits until every node sees all the others and the balancer sees
//! every node, prints their URLs (the balancer first), and stops them all on Ctrl-C/SIGTERM.
//!
//! Children never outlive this process: each asks the kernel to kill it when we die
//! (PR_SET_PDEATHSIG, set by the child for itself, so no unsafe `pre_exec` here), which
//! holds even when we are killed with SIGKILL and even for a stopped child. A graceful
//! stop forwards SIGTERM: every node announces its leave and exits 0.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::http;
use super::status::table;
use super::{CliError, ConfigArgs, UpArgs};
use crate::config::Config;
use crate::node::status::StatusDoc;
use crate::shutdown::{self, Shutdown};

/// Keys `up` sets for each node itself (from the config, picked ports, its own cluster).
const PER_NODE_KEYS: &[&str] = &[
    "node.name",
    "node.http",
    "node.replication",
    "membership.multicast",
    "membership.static_members",
    "cluster.name",
    "sessions.snapshot_file",
    "ajp.listen",
];

/// The name of the balancer's row in the table.
const BALANCER: &str = "balancer";

/// How long the nodes get to find each other and take over the cluster's sessions.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node gets to leave gracefully before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the tasks that watch the children get to end once the children are gone.
const TASKS_GRACE: Duration = Duration::from_secs(2);
/// Starts of the nodes at most: a start is tried again only when a port `up` chose for a
/// node was taken by another program before the node could bind it.
const START_ATTEMPTS: usize = 3;

/// The first word of the line `deltacast node` and `deltacast balancer` print on stdout once
/// they serve; see [`listening_line`].
const LISTENING: &str = "listening";

/// The line a node or balancer prints on stdout once its listeners are bound:
/// `listening KEY=ADDR...`, one pair per listener, named by the config key that asked for
/// it (`node.http`, `node.replication`, `balancer.listen`), with the address it got (for
/// port 0, the port the kernel picked). `up` learns its children's addresses from it, so it
/// never hands out a port for a child to bind later, when another program may have taken it.
pub(crate) fn listening_line(listeners: &[(&str, SocketAddr)]) -> String {
    let mut line = LISTENING.to_string();
    for (key, addr) in listeners {
        line.push_str(&format!(" {key}={addr}"));
    }
    line
}

/// Prints [`listening_line`] on stdout. A closed stdout does not stop a node.
pub(crate) fn report_listening(listeners: &[(&str, SocketAddr)]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", listening_line(listeners));
    let _ = out.flush();
}

/// The listeners of a [`listening_line`], by key; None for any other line.
fn parse_listening(line: &str) -> Option<HashMap<String, SocketAddr>> {
    let mut words = line.split_whitespace();
    if words.next() != Some(LISTENING) {
        return None;
    }
    words
        .map(|pair| {
            let (key, addr) = pair.split_once('=')?;
            Some((key.to_string(), addr.parse().ok()?))
        })
        .collect()
}

/// A child of `up`: a node or the balancer.
struct Spawned {
    name: String,
    pid: u32,
    /// The ports `up` asked for (0: any), to tell a lost race from another failure.
    asked: Vec<(u16, Wants)>,
    /// Known once the child reports them.
    http: SocketAddr,
    replication: SocketAddr,
    listening: Option<oneshot::Receiver<HashMap<String, SocketAddr>>>,
    /// Whether it reported its addresses.
    reported: bool,
    kill: Option<oneshot::Sender<()>>,
    exited: Option<ExitStatus>,
}

/// What a port `up` asks for must be free for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wants {
    Tcp,
    /// TCP and UDP: the replication port of a node with static members.
    TcpAndUdp,
}

/// Why the children did not all come up.
enum Failure {
    /// Another program took a port `up` chose before the child bound it: start again.
    LostPort(String),
    /// Anything else: give up, with this reason.
    Fatal(String),
}

/// The running children and what watches them.
struct Children {
    exe: PathBuf,
    list: Vec<Spawned>,
    /// Owns the tasks that reap the children and read their stdout.
    tasks: Shutdown,
    exit_tx: mpsc::UnboundedSender<(usize, ExitStatus)>,
    exit_rx: mpsc::UnboundedReceiver<(usize, ExitStatus)>,
}

impl Children {
    /// Starts `cmd` as the child `name`; `asked` are the ports it was told to bind.
    fn spawn(
        &mut self,
        name: String,
        mut cmd: Command,
        asked: Vec<(u16, Wants)>,
    ) -> std::io::Result<()> {
        // A process group of its own: Ctrl-C in a terminal reaches only `up`, which then
        // stops the children itself, each exactly once.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let (listening_tx, listening_rx) = oneshot::channel();
        if let Some(stdout) = child.stdout.take() {
            self.tasks
                .spawn(read_stdout(name.clone(), stdout, listening_tx));
        }
        let (kill_tx, kill_rx) = oneshot::channel();
        let index = self.list.len();
        self.tasks
            .spawn(reap(index, child, kill_rx, self.exit_tx.clone()));
        let unknown = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        self.list.push(Spawned {
            name,
            pid,
            asked,
            http: unknown,
            replication: unknown,
            listening: Some(listening_rx),
            reported: false,
            kill: Some(kill_tx),
            exited: None,
        });
        Ok(())
    }

    /// Waits until the children from `from` on report their addresses (until `deadline`,
    /// a signal, or the exit of a child).
    async fn wait_listening(
        &mut self,
        from: usize,
        deadline: Instant,
        signals: &mut (impl Future<Output = &'static str> + Unpin),
    ) -> Result<(), Failure> {
        for i in from..self.list.len() {
            let Some(mut listening) = self.list[i].listening.take() else {
                continue;
            };
            let found = tokio::select! {
                found = &mut listening => found.ok(),
                name = &mut *signals => return Err(Failure::Fatal(format!("{name} received while starting"))),
                Some((j, status)) = self.exit_rx.recv() => {
                    self.list[j].exited = Some(status);
                    if j != i {
                        return Err(self.exited_while_starting(j, status));
                    }
                    // It may have reported before it exited; its stdout is at its end now.
                    listening.await.ok()
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(Failure::Fatal(format!("{} did not report its addresses within {READY_TIMEOUT:?}", describe(&self.list[i]))));
                }
            };
            let child = &mut self.list[i];
            match found {
                Some(found) if child.exited.is_none() => {
                    child.reported = true;
                    let key = |k: &str| found.get(k).copied();
                    if child.name == BALANCER {
                        child.http = key("balancer.listen").unwrap_or(child.http);
                        child.replication = child.http;
                    } else {
                        child.http = key("node.http").unwrap_or(child.http);
                        child.replication = key("node.replication").unwrap_or(child.replication);
                    }
                }
                _ => {
                    let status = child.exited;
                    return Err(self.exited_while_starting(i, status.unwrap_or_default()));
                }
            }
        }
        Ok(())
    }

    /// The failure of child `i`, which exited while the children were starting: a lost
    /// race when a port `up` asked it to bind is now held by someone else.
    fn exited_while_starting(&self, i: usize, status: ExitStatus) -> Failure {
        let child = &self.list[i];
        let taken = child.asked.iter().find(|(port, wants)| {
            !child.reported && *port != 0 && !is_free(Ipv4Addr::LOCALHOST, *port, *wants)
        });
        match taken {
            Some((port, _)) => Failure::LostPort(format!(
                "port {port}, chosen for {}, was taken by another program before it could bind it",
                describe(child)
            )),
            None => Failure::Fatal(format!(
                "{} exited while starting ({status}); see its log above",
                describe(child)
            )),
        }
    }

    /// Asks every running child to stop (SIGTERM), waits, kills stragglers, and forgets
    /// the children.
    async fn stop_all(&mut self) {
        stop_all(&mut self.list, &mut self.exit_rx).await;
        self.list.clear();
    }
}

pub async fn run(args: UpArgs) -> Result<ExitCode, CliError> {
    let base = Config::load(args.common.config.as_deref(), &args.common.overrides(&[]))?;
    // A bad key file stops here, with its one line, rather than in every child.
    crate::wire::seal::ClusterKey::read_file_if_set(base.cluster.key_file.as_deref())?;
    let n = usize::from(args.nodes);
    // Held until `up` ends, so that no other program takes the group's port meanwhile.
    let (multicast, _group_port) = if base.is_set("membership.multicast") {
        (base.membership.multicast, None)
    } else {
        let (port, held) = reserve_group_port(*base.membership.multicast.ip())?;
        (
            SocketAddrV4::new(*base.membership.multicast.ip(), port),
            Some(held),
        )
    };
    let uses_static = base.membership.unicast();

    let signals = shutdown::signal_listener().map_err(|source| CliError::Io {
        context: "cannot install signal handlers".into(),
        source,
    })?;
    tokio::pin!(signals);

    let exe = std::env::current_exe().map_err(|source| CliError::Io {
        context: "cannot find the deltacast executable".into(),
        source,
    })?;
    let (exit_tx, exit_rx) = mpsc::unbounded_channel::<(usize, ExitStatus)>();
    let mut children = Children {
        exe,
        list: Vec::with_capacity(n + 1),
        tasks: Shutdown::new(),
        exit_tx,
        exit_rx,
    };
    let result = start_and_serve(
        &args,
        &base,
        n,
        multicast,
        uses_static,
        &mut children,
        &mut signals,
    )
    .await;
    children.stop_all().await;
    if !children.tasks.drain(TASKS_GRACE).await {
        warn!("the watch on some children did not end in time");
    }
    result
}

/// Starts the nodes and the balancer, waits until they see each other, prints the table and
/// serves until a signal. The caller stops what is left.
async fn start_and_serve(
    args: &UpArgs,
    base: &Config,
    n: usize,
    multicast: SocketAddrV4,
    uses_static: bool,
    children: &mut Children,
    signals: &mut (impl Future<Output = &'static str> + Unpin),
) -> Result<ExitCode, CliError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let node_threads = node_worker_threads(n);
    let mut taken = Vec::new();
    let mut attempt = 1;
    loop {
        start_nodes(
            args,
            base,
            n,
            multicast,
            uses_static,
            attempt,
            node_threads,
            &mut taken,
            children,
        )?;
        match children.wait_listening(0, deadline, signals).await {
            Ok(()) => break,
            Err(Failure::LostPort(why)) if attempt < START_ATTEMPTS => {
                warn!(attempt, "{why}; starting the nodes again on other ports");
                children.stop_all().await;
                attempt += 1;
            }
            Err(Failure::LostPort(why) | Failure::Fatal(why)) => return Err(CliError::Up(why)),
        }
    }

    // The balancer, last in the list: it fronts the nodes (discovered from the heartbeats,
    // or given as static members when the nodes do not use multicast).
    let discover = base.balancer.discover && !uses_static;
    let mut attempt = 1;
    loop {
        let listen = if attempt == 1 {
            wanted_port(base.balancer.listen.port(), 0, Wants::Tcp, &mut taken)
        } else {
            0
        };
        let mut cmd = child_command(&children.exe, "balancer", &args.common, |key| {
            key == "balancer.listen"
        });
        cmd.args(["--cluster", &base.cluster.name])
            .args(["--multicast", &multicast.to_string()])
            .args([
                "--listen",
                &SocketAddr::from((Ipv4Addr::LOCALHOST, listen)).to_string(),
            ]);
        if !discover {
            for node in &children.list[..n] {
                cmd.arg("--member")
                    .arg(format!("{}=http://{}", node.name, node.http));
            }
            cmd.args(["--set", "balancer.discover=false"]);
        }
        children
            .spawn(BALANCER.to_string(), cmd, vec![(listen, Wants::Tcp)])
            .map_err(|source| CliError::Io {
                context: "cannot start the balancer".into(),
                source,
            })?;
        match children.wait_listening(n, deadline, signals).await {
            Ok(()) => break,
            Err(Failure::LostPort(why)) if attempt < START_ATTEMPTS => {
                warn!(
                    attempt,
                    "{why}; starting the balancer again on another port"
                );
                children.list.truncate(n);
                attempt += 1;
            }
            Err(Failure::LostPort(why) | Failure::Fatal(why)) => return Err(CliError::Up(why)),
        }
    }

    // Wait until every node lists all the others as alive and the balancer lists every
    // node, or give up.
    loop {
        let nodes = &children.list;
        if all_see_each_other(&nodes[..n]).await && balancer_sees(&nodes[n], n).await {
            break;
        }
        let failure = tokio::select! {
            name = &mut *signals => Some(format!("{name} received while starting")),
            Some((i, status)) = children.exit_rx.recv() => {
                children.list[i].exited = Some(status);
                Some(format!("{} exited while starting ({status}); see its log above", describe(&children.list[i])))
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                (Instant::now() > deadline).then(|| format!("the nodes did not all see each other within {READY_TIMEOUT:?} (is multicast on {} working? try --set membership.static_members=...)", base.membership.interface))
            }
        };
        if let Some(reason) = failure {
            return Err(CliError::Up(reason));
        }
    }

    let nodes = &children.list;
    print_table(base, multicast, uses_static, &nodes[..n], &nodes[n]);
    loop {
        tokio::select! {
            name = &mut *signals => {
                info!(signal = name, "stopping the cluster");
                break;
            }
            Some((i, status)) = children.exit_rx.recv() => {
                children.list[i].exited = Some(status);
                if children.list[..n].iter().all(|n| n.exited.is_some()) {
                    return Err(CliError::Up("every node has exited".into()));
                }
                let child = &children.list[i];
                warn!(child = %describe(child), pid = child.pid, %status, "exited; the others carry on");
            }
        }
    }
    children.stop_all().await;
    println!("deltacast: all nodes and the balancer stopped");
    Ok(ExitCode::SUCCESS)
}

/// Starts the `n` nodes. With multicast each binds port 0 itself (after the familiar
/// 8081..., 4001... on a first attempt, when free); static members must be named before
/// the nodes start, so their replication ports are chosen here.
#[allow(clippy::too_many_arguments)]
fn start_nodes(
    args: &UpArgs,
    base: &Config,
    n: usize,
    multicast: SocketAddrV4,
    uses_static: bool,
    attempt: usize,
    node_threads: Option<usize>,
    taken: &mut Vec<u16>,
    children: &mut Children,
) -> Result<(), CliError> {
    let mut plan = Vec::with_capacity(n);
    for i in 0..n {
        let http = if attempt == 1 {
            wanted_port(base.node.http.port(), i, Wants::Tcp, taken)
        } else {
            0
        };
        let preferred = if attempt == 1 {
            base.node.replication.port()
        } else {
            0
        };
        let replication = if uses_static {
            chosen_port(preferred, i, Wants::TcpAndUdp, taken)?
        } else {
            wanted_port(preferred, i, Wants::Tcp, taken)
        };
        // With `[ajp] listen`, each node its own port next to the configured one.
        let ajp = base.ajp.listen.map(|listen| {
            let port = if attempt == 1 {
                wanted_port(listen.port(), i, Wants::Tcp, taken)
            } else {
                0
            };
            SocketAddr::new(listen.ip(), port)
        });
        plan.push((format!("n{}", i + 1), http, replication, ajp));
    }
    let static_members: Vec<String> = plan
        .iter()
        .map(|(_, _, r, _)| SocketAddr::from((Ipv4Addr::LOCALHOST, *r)).to_string())
        .collect();
    for (name, http, replication, ajp) in plan {
        let mut cmd = child_command(&children.exe, "node", &args.common, |_| false);
        if let Some(threads) = node_threads {
            cmd.env(WORKER_THREADS_ENV, threads.to_string());
        }
        let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
        cmd.args(["--cluster", &base.cluster.name])
            .args(["--multicast", &multicast.to_string()])
            .args(["--name", &name])
            .args(["--http", &at(http)])
            .args(["--replication", &at(replication)]);
        if let Some(ajp) = ajp {
            cmd.arg("--ajp").arg(ajp.to_string());
        }
        if uses_static {
            cmd.arg("--set").arg(format!(
                "membership.static_members={}",
                static_members.join(",")
            ));
        }
        if let Some(file) = &base.sessions.snapshot_file {
            cmd.arg("--set").arg(format!(
                "sessions.snapshot_file={}",
                node_snapshot_file(file, &name).display()
            ));
        }
        let replication_wants = if uses_static {
            Wants::TcpAndUdp
        } else {
            Wants::Tcp
        };
        let mut asked = vec![(http, Wants::Tcp), (replication, replication_wants)];
        if let Some(ajp) = ajp.filter(|a| a.port() != 0) {
            asked.push((ajp.port(), Wants::Tcp));
        }
        if let Err(source) = children.spawn(name.clone(), cmd, asked) {
            return Err(CliError::Io {
                context: format!("cannot start node {name}"),
                source,
            });
        }
    }
    Ok(())
}

/// Reads a child's stdout: its [`listening_line`] goes to `listening`; anything else it
/// prints is passed on to stderr, where the children's logs go.
async fn read_stdout(
    name: String,
    stdout: ChildStdout,
    listening: oneshot::Sender<HashMap<String, SocketAddr>>,
) {
    let mut listening = Some(listening);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match parse_listening(&line) {
            Some(found) if listening.is_some() => {
                if let Some(tx) = listening.take() {
                    let _ = tx.send(found);
                }
            }
            _ => {
                let _ = writeln!(std::io::stderr(), "{name}: {line}");
            }
        }
    }
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

/// `preferred + index` when it looks free (so a default cluster gets the familiar 8081,
/// 8082...), else 0: the child binds a port the kernel picks and reports it. Ports asked for
/// earlier in this run are skipped.
fn wanted_port(preferred: u16, index: usize, wants: Wants, taken: &mut Vec<u16>) -> u16 {
    let wanted = u16::try_from(usize::from(preferred) + index)
        .ok()
        .filter(|p| preferred != 0 && *p != 0);
    match wanted {
        Some(port) if !taken.contains(&port) && is_free(Ipv4Addr::LOCALHOST, port, wants) => {
            taken.push(port);
            port
        }
        _ => 0,
    }
}

/// A port that must be named before its child starts (static members list each other):
/// `preferred + index` when free, else one the kernel offers now. Another program may
/// take it before the child binds it; `up` then starts again (see [`Failure::LostPort`]).
fn chosen_port(
    preferred: u16,
    index: usize,
    wants: Wants,
    taken: &mut Vec<u16>,
) -> Result<u16, CliError> {
    let port = wanted_port(preferred, index, wants, taken);
    if port != 0 {
        return Ok(port);
    }
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|source| CliError::Io {
                context: "cannot find a free port".into(),
                source,
            })?
            .port();
        if !taken.contains(&port) && is_free(Ipv4Addr::LOCALHOST, port, wants) {
            taken.push(port);
            return Ok(port);
        }
    }
}

/// Whether `port` can be bound on `ip` now, as `wants` says.
fn is_free(ip: Ipv4Addr, port: u16, wants: Wants) -> bool {
    TcpListener::bind((ip, port)).is_ok()
        && (wants == Wants::Tcp || UdpSocket::bind((ip, port)).is_ok())
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

/// The snapshot file of node `name` of `up`: the nodes share a directory, so each gets the
/// configured file name with its own name appended (`sessions.snapshot.n1`).
fn node_snapshot_file(file: &Path, name: &str) -> std::path::PathBuf {
    let mut owned = file.as_os_str().to_os_string();
    owned.push(".");
    owned.push(name);
    owned.into()
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

/// A port for the cluster's multicast group, and the socket that holds it until `up` ends,
/// so that no other program takes it meanwhile. It is bound first without SO_REUSEADDR and
/// SO_REUSEPORT, so the kernel offers a port that no socket holds (with them, it may offer
/// one that another cluster's nodes share); then it takes both, as the nodes bind the port,
/// so they share it. It joins no group and, with IP_MULTICAST_ALL off, receives nothing.
fn reserve_group_port(group: Ipv4Addr) -> Result<(u16, socket2::Socket), CliError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let reserve = || -> std::io::Result<(u16, Socket)> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_multicast_all_v4(false)?;
        socket.bind(&SocketAddr::from((group, 0)).into())?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        let port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
        Ok((port, socket))
    };
    reserve().map_err(|source| CliError::Io {
        context: "cannot find a free UDP port for the multicast group".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::UdpDatagrams;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn each_node_of_up_gets_a_snapshot_file_of_its_own() {
        assert_eq!(
            node_snapshot_file(Path::new("/var/lib/d/sessions.snapshot"), "n2"),
            Path::new("/var/lib/d/sessions.snapshot.n2")
        );
        assert_eq!(node_snapshot_file(Path::new("s"), "n1"), Path::new("s.n1"));
    }

    #[test]
    fn a_listening_line_reads_back_as_its_listeners() {
        let http: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let replication: SocketAddr = "[::1]:4001".parse().unwrap();
        let line = listening_line(&[("node.http", http), ("node.replication", replication)]);
        assert_eq!(
            line,
            "listening node.http=127.0.0.1:8081 node.replication=[::1]:4001"
        );
        let found = parse_listening(&line).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["node.http"], http);
        assert_eq!(found["node.replication"], replication);
    }

    #[test]
    fn other_lines_are_not_listening_lines() {
        for line in [
            "",
            "listeningnode.http=127.0.0.1:1",
            "hello node.http=127.0.0.1:1",
            "listening node.http=not-an-address",
            "listening node.http",
        ] {
            assert!(parse_listening(line).is_none(), "{line:?}");
        }
    }

    fn children_with(asked: Vec<(u16, Wants)>, reported: bool) -> Children {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let unknown = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        Children {
            exe: PathBuf::new(),
            list: vec![Spawned {
                name: "n1".into(),
                pid: 0,
                asked,
                http: unknown,
                replication: unknown,
                listening: None,
                reported,
                kill: None,
                exited: None,
            }],
            tasks: Shutdown::new(),
            exit_tx,
            exit_rx,
        }
    }

    #[test]
    fn a_child_that_exits_while_another_program_holds_its_port_lost_a_race() {
        let thief = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = thief.local_addr().unwrap().port();
        let children = children_with(vec![(0, Wants::Tcp), (port, Wants::Tcp)], false);
        let failure = children.exited_while_starting(0, ExitStatus::from_raw(1 << 8));
        assert!(
            matches!(&failure, Failure::LostPort(why) if why.contains(&port.to_string())),
            "{}",
            match failure {
                Failure::LostPort(w) | Failure::Fatal(w) => w,
            }
        );
    }

    #[test]
    fn a_child_that_exits_with_its_ports_free_or_after_reporting_failed_for_another_reason() {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free = children_with(vec![(port, Wants::Tcp)], false);
        assert!(matches!(
            free.exited_while_starting(0, ExitStatus::from_raw(1 << 8)),
            Failure::Fatal(_)
        ));
        let thief = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let held = thief.local_addr().unwrap().port();
        let reported = children_with(vec![(held, Wants::Tcp)], true);
        assert!(matches!(
            reported.exited_while_starting(0, ExitStatus::from_raw(1 << 8)),
            Failure::Fatal(_)
        ));
        // Port 0 is the kernel's choice: nothing to lose.
        let any = children_with(vec![(0, Wants::TcpAndUdp)], false);
        assert!(matches!(
            any.exited_while_starting(0, ExitStatus::from_raw(1 << 8)),
            Failure::Fatal(_)
        ));
    }

    #[test]
    fn a_port_held_for_udp_only_is_not_free_for_a_static_members_replication_port() {
        // A UDP port whose TCP twin is free (nearly always the first one).
        let (_udp, port) = (0..100)
            .map(|_| {
                let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let port = udp.local_addr().unwrap().port();
                (udp, port)
            })
            .find(|(_, port)| TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).is_ok())
            .expect("a UDP port with a free TCP twin");
        assert!(is_free(Ipv4Addr::LOCALHOST, port, Wants::Tcp));
        assert!(!is_free(Ipv4Addr::LOCALHOST, port, Wants::TcpAndUdp));
    }

    #[tokio::test]
    async fn the_group_port_is_held_against_others_and_shared_with_the_nodes() {
        let group: Ipv4Addr = "228.0.0.4".parse().unwrap();
        let (port, _held) = reserve_group_port(group).unwrap();
        assert_ne!(port, 0);
        assert!(
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_err(),
            "another program cannot take it"
        );
        let node = UdpDatagrams::multicast(SocketAddrV4::new(group, port), Ipv4Addr::LOCALHOST, 1);
        assert!(node.is_ok(), "a node shares it: {node:?}");
    }
}
