//! Helpers for tests that run the real `deltacast` binary: a cluster name and multicast
//! port per test, nodes and balancers that bind port 0 and report the address they got (so
//! no port is picked here and bound later by a child, when another program may have taken
//! it), child processes killed by PID when the test ends (even when it fails),
//! deadline-bounded waits and a tiny HTTP client.

#![allow(dead_code)]

pub mod ajp;
pub mod apache;
pub mod daemon;
pub mod fake_member;
pub mod haproxy;
pub mod hosts;
pub mod load;
pub mod memcached;
pub mod nginx;
pub mod raw_http;
pub mod redis;
pub mod relay;
pub mod session_servers;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_deltacast");
pub const GROUP: &str = "228.0.0.4";
/// No extra arguments: the node runs with the default timing.
pub const DEFAULTS: &[&str] = &[];

static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Ports handed out in this test process: the kernel may offer a released port again, and
/// two nodes of parallel tests must never be given the same one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn claim(port: u16) -> bool {
    HANDED_OUT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(port)
}

/// Membership timing for tests: heartbeats every 100 ms, a silent member dropped after 1 s.
pub const FAST: &[&str] = &[
    "--set",
    "membership.heartbeat_ms=100",
    "--set",
    "membership.drop_ms=1000",
];

/// A free TCP port on loopback, never the same twice in one test process: for an address
/// where nothing listens, or one that must be named before its node starts (static members).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        if claim(port) {
            return port;
        }
    }
}

/// A port free for both TCP and UDP on loopback (static members use UDP on the replication
/// port). Another program may take it before a node binds it: start such nodes with
/// [`start_static`], which starts them again when that happens.
pub fn free_dual_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// Sockets that hold the multicast ports of this process's clusters until it exits.
static GROUP_PORTS: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());

/// A UDP port for a cluster's multicast group that no other socket holds, and that none
/// will take while this test process runs: a socket bound to it stays open, bound first
/// without SO_REUSEADDR/SO_REUSEPORT (so the kernel offers a port nobody shares, not one
/// another test's nodes share), then given both, so the cluster's nodes share it. It joins
/// no group and receives nothing.
pub fn free_udp_port() -> u16 {
    loop {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("a udp socket");
        s.set_multicast_all_v4(false).expect("multicast all off");
        s.bind(&SocketAddr::from((GROUP.parse::<Ipv4Addr>().expect("group"), 0)).into())
            .expect("bind a free udp port");
        s.set_reuse_address(true).expect("reuse address");
        s.set_reuse_port(true).expect("reuse port");
        let port = s
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an inet address")
            .port();
        if claim(port) {
            GROUP_PORTS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
            return port;
        }
    }
}

/// The address `deltacast node`/`balancer` reports for `key` in its line on stdout,
/// `listening KEY=ADDR...` (see the README), read within `timeout`; Err with the
/// child's exit status when it exits first. The rest of its stdout is drained in the
/// background.
pub fn read_listening(
    child: &mut Child,
    timeout: Duration,
) -> Result<HashMap<String, SocketAddr>, Option<ExitStatus>> {
    let stdout: ChildStdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Some(found) = parse_listening(&line) {
                    sent = true;
                    let _ = tx.send(found);
                }
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(found) => return Ok(found),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(child.wait().ok());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    return Err(child.try_wait().ok().flatten());
                }
            }
        }
    }
}

/// The listeners of a `listening KEY=ADDR...` line, by key.
pub fn parse_listening(line: &str) -> Option<HashMap<String, SocketAddr>> {
    let mut words = line.split_whitespace();
    if words.next() != Some("listening") {
        return None;
    }
    words
        .map(|pair| {
            let (key, addr) = pair.split_once('=')?;
            Some((key.to_string(), addr.parse().ok()?))
        })
        .collect()
}

/// How long a child gets to bind its listeners and say where.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster of its own for one test: a unique name and multicast port.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub name: String,
    pub multicast: String,
}

impl Cluster {
    pub fn new(test: &str) -> Cluster {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Cluster {
            name: format!("{test}-{}-{n}", std::process::id()),
            multicast: format!("{GROUP}:{}", free_udp_port()),
        }
    }

    /// The multicast group address as a socket address.
    pub fn group(&self) -> SocketAddr {
        self.multicast.parse().expect("group:port")
    }

    /// The config of a node of this cluster started in this process (`Node::start`,
    /// `node::start`): the test timing, the cluster's name and group, `name`, and port 0
    /// for HTTP and replication.
    pub fn in_process_config(&self, name: &str) -> deltacast::Config {
        let mut config = deltacast::Config::for_test();
        config.cluster.name = self.name.clone();
        config.membership.multicast = match self.group() {
            SocketAddr::V4(group) => group,
            SocketAddr::V6(_) => panic!("an IPv4 group"),
        };
        config.node.name = name.into();
        config.node.http = "127.0.0.1:0".parse().expect("addr");
        config.node.replication = "127.0.0.1:0".parse().expect("addr");
        config
    }

    /// Starts a node of this cluster with a short heartbeat (fast tests) unless `extra`
    /// sets it; `extra` are more command-line arguments.
    pub fn node<S: AsRef<OsStr>>(&self, name: &str, extra: &[S]) -> NodeProc {
        NodeProc::spawn(self, name, extra)
    }

    /// Like `node`, with more environment variables for the process (set after the
    /// defaults, so they win).
    pub fn node_with_env<S: AsRef<OsStr>>(
        &self,
        name: &str,
        extra: &[S],
        env: &[(&str, String)],
    ) -> NodeProc {
        NodeProc::spawn_with_env(self, name, 0, extra, env)
    }
}

/// A `deltacast node` child process, killed (SIGKILL, by its PID) when dropped.
pub struct NodeProc {
    pub child: Child,
    pub name: String,
    pub http: SocketAddr,
    pub replication: SocketAddr,
    /// The AJP connector's address, when the node runs one (`--ajp`).
    pub ajp: Option<SocketAddr>,
    pub log: PathBuf,
}

pub fn log_path(cluster: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir.join(format!("{cluster}-{name}.log"))
}

impl NodeProc {
    /// Starts a node of `cluster` on ports it binds itself; panics (with its log) when it
    /// does not come up.
    pub fn spawn<S: AsRef<OsStr>>(cluster: &Cluster, name: &str, extra: &[S]) -> NodeProc {
        NodeProc::spawn_at(cluster, name, 0, extra)
    }

    /// Like `spawn`, with the replication port chosen by the caller (0: any).
    pub fn spawn_at<S: AsRef<OsStr>>(
        cluster: &Cluster,
        name: &str,
        replication_port: u16,
        extra: &[S],
    ) -> NodeProc {
        NodeProc::spawn_with_env(cluster, name, replication_port, extra, &[])
    }

    /// Like `spawn_at`, with more environment variables (set after the defaults).
    pub fn spawn_with_env<S: AsRef<OsStr>>(
        cluster: &Cluster,
        name: &str,
        replication_port: u16,
        extra: &[S],
        env: &[(&str, String)],
    ) -> NodeProc {
        NodeProc::try_spawn(cluster, name, replication_port, extra, env).unwrap_or_else(
            |(status, log)| panic!("node {name} exited while starting ({status:?}):\n{log}"),
        )
    }

    /// Starts a node; Err with its exit status and log when it exits before it reports
    /// its addresses.
    pub fn try_spawn<S: AsRef<OsStr>>(
        cluster: &Cluster,
        name: &str,
        replication_port: u16,
        extra: &[S],
        env: &[(&str, String)],
    ) -> Result<NodeProc, (Option<ExitStatus>, String)> {
        let replication = SocketAddr::from((Ipv4Addr::LOCALHOST, replication_port));
        let log = log_path(&cluster.name, name);
        let stderr = File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("node")
            .args(["--cluster", &cluster.name])
            .args(["--multicast", &cluster.multicast])
            .args(["--name", name])
            .args(["--http", "127.0.0.1:0"])
            .args(["--replication", &replication.to_string()])
            .args(extra)
            .env("RUST_LOG", "deltacast=debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn deltacast node");
        let found = match read_listening(&mut child, START_TIMEOUT) {
            Ok(found) => found,
            Err(status) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err((status, std::fs::read_to_string(&log).unwrap_or_default()));
            }
        };
        let addr = |key: &str| {
            *found
                .get(key)
                .unwrap_or_else(|| panic!("{name} reports {key}"))
        };
        Ok(NodeProc {
            http: addr("node.http"),
            replication: addr("node.replication"),
            ajp: found.get("node.ajp").copied(),
            child,
            name: name.to_string(),
            log,
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the node");
    }

    /// `/status` as JSON, or None when the node does not answer.
    pub fn status(&self) -> Option<Value> {
        get_json(self.http, "/status")
    }

    /// Names of the members this node lists in the given state ("alive", "suspect", or "" for any).
    pub fn members(&self, state: &str) -> Option<Vec<String>> {
        member_names(&self.status()?, state)
    }

    /// Waits (bounded) until the process exits.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGCONT);
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// The names of the members a `/status` document lists in `state` ("" for any), sorted.
/// A `deltacast balancer` child process (its log next to the cluster's), killed (SIGKILL, by
/// its PID) when dropped.
pub struct BalancerProc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl BalancerProc {
    /// Starts a balancer of `cluster` on a free port with `args`, and waits until its
    /// manager answers.
    pub fn spawn<S: AsRef<OsStr>>(cluster: &Cluster, args: &[S]) -> BalancerProc {
        let b = BalancerProc::start(cluster, args);
        wait_until(Duration::from_secs(20), "the balancer answers", || {
            b.status()
        });
        b
    }

    /// Starts a balancer and returns once it reports its address, without asking its
    /// manager (which may refuse the test's address).
    pub fn start<S: AsRef<OsStr>>(cluster: &Cluster, args: &[S]) -> BalancerProc {
        let log = log_path(&cluster.name, "balancer");
        let stderr = File::create(&log).expect("log file");
        let mut child = Command::new(BIN)
            .arg("balancer")
            .args(["--cluster", &cluster.name])
            .args(["--multicast", &cluster.multicast])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "deltacast=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn deltacast balancer");
        let found = read_listening(&mut child, START_TIMEOUT).unwrap_or_else(|status| {
            let _ = child.kill();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the balancer exited while starting ({status:?}):\n{text}")
        });
        let addr = *found
            .get("balancer.listen")
            .expect("the balancer reports balancer.listen");
        BalancerProc { child, addr }
    }

    /// `/balancer-manager/status`.
    /// The routes of the members the balancer lists, sorted.
    pub fn routes(&self) -> Option<Vec<String>> {
        let mut routes: Vec<String> = self.status()?["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["route"].as_str().map(str::to_string))
            .collect();
        routes.sort();
        Some(routes)
    }

    pub fn status(&self) -> Option<Value> {
        get_json(self.addr, "/balancer-manager/status")
    }
}

impl Drop for BalancerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

pub fn member_names(status: &Value, state: &str) -> Option<Vec<String>> {
    let mut names: Vec<String> = status["members"]
        .as_array()?
        .iter()
        .filter(|m| state.is_empty() || m["state"] == state)
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Some(names)
}

/// Polls `probe` every 25 ms until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Like `wait_until` but returns how long it took, for measuring.
pub fn time_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if probe() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until every node lists every other one as alive.
pub fn wait_converged(nodes: &[&NodeProc], timeout: Duration) {
    wait_until(timeout, "every node sees all the others alive", || {
        nodes
            .iter()
            .all(|n| {
                let mut want: Vec<String> = nodes
                    .iter()
                    .filter(|o| o.name != n.name)
                    .map(|o| o.name.clone())
                    .collect();
                want.sort();
                n.members("alive") == Some(want)
            })
            .then_some(())
    });
}

/// How often [`start_static`] starts its nodes again after losing a port.
const STATIC_ATTEMPTS: usize = 5;

/// Starts nodes `names` of `cluster` that list each other (and only each other) as static
/// members, with `extra` arguments. Their replication ports must be named before they
/// start, so they are chosen here; when another program takes one before its node binds
/// it (the node exits with "Address already in use"), all are started again on others.
pub fn start_static<S: AsRef<OsStr>>(
    cluster: &Cluster,
    names: &[&str],
    extra: &[S],
) -> Vec<NodeProc> {
    for _ in 0..STATIC_ATTEMPTS {
        let ports: Vec<u16> = names.iter().map(|_| free_dual_port()).collect();
        let list = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut args: Vec<std::ffi::OsString> = vec![
            "--set".into(),
            format!("membership.static_members={list}").into(),
        ];
        args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
        let mut nodes = Vec::with_capacity(names.len());
        for (name, port) in names.iter().zip(&ports) {
            match NodeProc::try_spawn(cluster, name, *port, &args, &[]) {
                Ok(node) => nodes.push(node),
                Err((_, log)) if log.contains("Address already in use") => break,
                Err((status, log)) => {
                    panic!("node {name} exited while starting ({status:?}):\n{log}")
                }
            }
        }
        if nodes.len() == names.len() {
            return nodes;
        }
    }
    panic!("every attempt to start {names:?} lost a port to another program");
}

/// A plain HTTP/1.1 exchange with `Connection: close`; returns the status code and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    exchange(addr, method, path, None, body).map(|a| (a.status, a.body))
}

pub fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (code, body) = http(addr, "GET", path, b"")?;
    if code != 200 {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// Runs the binary to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run deltacast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a process with this PID still exists (and is not a zombie of ours).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// A UDP socket that sends to the multicast group on loopback.
pub fn group_sender() -> UdpSocket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .expect("multicast interface");
    s.set_multicast_ttl_v4(1).expect("ttl");
    s.set_multicast_loop_v4(true).expect("loop");
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .expect("bind sender");
    s.into()
}

/// An HTTP answer with the headers that matter to session tests.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The `name=value` part of a `Set-Cookie` header, if any.
    pub set_cookie: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 exchange with an optional `Cookie` header.
pub fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &[u8],
) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let set_cookie = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .and_then(|(_, v)| v.trim().split(';').next().map(str::to_string));
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Some(Answer {
        status,
        set_cookie,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).ok()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A browser with one session cookie, talking to any node.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser::default()
    }

    /// Sends a request with the cookie and keeps whatever cookie comes back.
    pub fn send(&mut self, addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
        let answer = exchange(addr, method, path, self.cookie.as_deref(), body)
            .unwrap_or_else(|| panic!("{method} {path} on {addr} got no answer"));
        if let Some(c) = &answer.set_cookie {
            self.cookie = Some(c.clone());
        }
        answer
    }

    /// The session id without the route.
    pub fn session_id(&self) -> Option<String> {
        let value = self.cookie.as_ref()?.split_once('=')?.1;
        Some(value.split('.').next()?.to_string())
    }
}

/// CPU time of all threads of `pid`, in nanoseconds (from /proc/PID/task/*/schedstat).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`), or a count (`Threads:`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    proc_field(&format!("/proc/{pid}/status"), field)
}

/// The number after `field` in a `/proc` file of `Name:  value` lines, 0 if absent.
pub fn proc_field(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A heartbeat of a member that does not exist: `name` and `id`, unreachable addresses.
pub fn forged_heartbeat(name: &str, id: u64) -> deltacast::membership::Heartbeat {
    use deltacast::membership::{Announce, Heartbeat, MemberInfo, NodeId};
    Heartbeat {
        info: MemberInfo {
            id: NodeId::from_u64(id),
            name: name.into(),
            http: "127.0.0.1:1".parse().expect("addr"),
            replication: "127.0.0.1:2".parse().expect("addr"),
            incarnation: 1,
        },
        announce: Announce::Alive,
        seq: 1,
    }
}

/// A fresh cluster key (from the library's `keygen`) in a file only this user can read,
/// removed on drop: for runs of sealed nodes.
pub struct KeyFile(PathBuf);

impl KeyFile {
    pub fn new() -> KeyFile {
        use std::os::unix::fs::OpenOptionsExt;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("deltacast-{}-{n}.key", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("a new key file in the temporary directory");
        writeln!(
            file,
            "{}",
            deltacast::wire::seal::ClusterKey::generate_text()
        )
        .expect("the key written");
        KeyFile(path)
    }

    /// `--set cluster.key_file=PATH`, to add to a node's arguments.
    pub fn args(&self) -> [String; 2] {
        [
            "--set".to_string(),
            format!("cluster.key_file={}", self.0.display()),
        ]
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
