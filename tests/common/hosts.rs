//! A test-host harness: K "hosts" made of network namespaces, each with one veth interface
//! on a Linux bridge in a namespace of its own (the switch), private addresses
//! `10.213.77.<n>/24`, real multicast between them and no route anywhere else. Each host
//! runs at most one `deltacast node` or `deltacast balancer` (started by `ip netns exec`,
//! so a host's `/etc/netns/NAME/hosts` is its `/etc/hosts`), with `membership.interface` set
//! to the host's own address. The test talks HTTP to them from threads that enter the
//! host's namespace (`setns`), cuts and restores a host's link on the switch, and delays or
//! drops its packets with `tc netem` where the kernel has it.
//!
//! Everything it makes is removed when the [`Hosts`] drops, also when the test panics: the
//! processes are killed by PID, then the namespaces and their `/etc/netns` directories go.
//! When the test process itself dies (SIGKILL, Ctrl-C), its children die with it
//! (`PR_SET_PDEATHSIG`), and the next run deletes the namespaces it left: their names carry
//! the PID of the process that made them, and a name whose PID is gone is stale.
//!
//! It needs root; [`Hosts::new`] says why it skips and returns None otherwise. It never
//! touches the root namespace's interfaces, routes or firewall.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};
use serde_json::Value;

use super::{Answer, BIN, Browser, Cluster, exchange, get_json, log_path, read_listening};

/// The hosts' addresses: `10.213.77.<host number>/24`, only inside the harness's namespaces.
pub const SUBNET: [u8; 3] = [10, 213, 77];
/// Every host has its own addresses, so every node can use the same ports.
pub const HTTP_PORT: u16 = 8081;
pub const REPLICATION_PORT: u16 = 4001;
pub const BALANCER_PORT: u16 = 8080;
/// Namespace names of this harness: `dch<pid>x<counter><role>`.
const PREFIX: &str = "dch";
/// How long a process gets to bind its listeners and say where (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Harnesses made by this test process: two tests of one binary share the PID.
static BEDS: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on a fresh thread that first enters the network namespace `ns`: sockets it
/// opens live there. (A thread's network namespace is its own; the caller's is untouched.)
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            enter_ns(ns).unwrap_or_else(|e| panic!("{e}"));
            f()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the network namespace `ns`, for good: call it only on a
/// thread of your own (a load generator's), never on the test's.
pub fn enter_ns(ns: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{ns}");
    let handle = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter {path}: {e}"))
}

/// Runs `PROGRAM ARGS`; the error names the command and what it printed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(drop)
}

fn must_ip(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The `/etc/netns` directory of namespace `ns`: `ip netns exec` bind-mounts its files over
/// `/etc` for the process it starts.
fn etc_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Deletes a namespace of this harness and its `/etc/netns` directory; the processes still
/// in it (a crashed run's orphans) are killed by PID first.
fn remove_namespace(ns: &str) -> Result<(), String> {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_dir_all(etc_dir(ns));
    ip(&["netns", "del", ns])
}

/// The PID a namespace name of this harness carries, if it is one.
pub fn owner_pid(ns: &str) -> Option<i32> {
    let rest = ns.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if rest[digits.len()..].starts_with('x') {
        digits.parse().ok()
    } else {
        None
    }
}

/// Deletes the namespaces an earlier run of this harness left behind (its process is gone).
fn clean_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = owner_pid(ns) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove_namespace(ns) {
            Ok(()) => eprintln!("removed the stale namespace {ns} of a dead run (PID {pid})"),
            Err(e) => eprintln!("cannot remove the stale namespace {ns}: {e}"),
        }
    }
}

/// The namespaces this harness made, deleted on drop (last, after the processes died).
struct Made {
    namespaces: Vec<String>,
}

impl Made {
    fn add(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        Ok(())
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = remove_namespace(ns) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// What a host runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Node,
    Balancer,
}

/// A process started by `ip netns exec` (which execs it: the child's PID is the
/// program's), killed by that PID on drop, and by the kernel when the test process dies.
pub struct HostProc {
    child: Child,
    pub role: Role,
    pub started: Instant,
}

impl HostProc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGCONT);
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One host: a namespace with one interface (`eth0`) on the switch, maybe a process.
pub struct Host {
    /// The node name (route) of the node it runs; also names its log.
    pub name: String,
    pub ns: String,
    /// The host's port on the switch (the other end of its veth pair).
    port: String,
    pub addr: Ipv4Addr,
    pub log: PathBuf,
    proc: Option<HostProc>,
    /// How many processes were started on it.
    pub starts: usize,
}

impl Host {
    /// Its node's HTTP address (the balancer's is [`Host::balancer`]).
    pub fn http(&self) -> SocketAddr {
        SocketAddr::from((self.addr, HTTP_PORT))
    }

    pub fn replication(&self) -> SocketAddr {
        SocketAddr::from((self.addr, REPLICATION_PORT))
    }

    /// The balancer's address from other hosts.
    pub fn balancer(&self) -> SocketAddr {
        SocketAddr::from((self.addr, BALANCER_PORT))
    }

    /// The balancer's address from its own host (loopback: its manager answers there).
    pub fn balancer_local(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, BALANCER_PORT))
    }

    pub fn role(&self) -> Option<Role> {
        self.proc.as_ref().map(|p| p.role)
    }

    pub fn pid(&self) -> Option<Pid> {
        self.proc.as_ref().map(HostProc::pid)
    }
}

/// Hosts on a switch. Fields drop in order: the processes die before the namespaces go.
pub struct Hosts {
    pub cluster: Cluster,
    pub hosts: Vec<Host>,
    switch: String,
    prefix: String,
    /// Arguments every node and balancer gets (timing, a key file...).
    pub common_args: Vec<String>,
    made: Made,
}

impl Hosts {
    /// A switch and one host per name (none running anything yet), or None (after saying
    /// why) when this machine cannot make them. `common_args` go to every process.
    pub fn new(test: &str, names: &[&str], common_args: &[&str]) -> Option<Hosts> {
        if !geteuid().is_root() {
            eprintln!("skipping {test}: it creates network namespaces (`ip netns`) and needs root");
            return None;
        }
        clean_stale();
        let prefix = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        let mut made = Made {
            namespaces: Vec::new(),
        };
        let switch = format!("{prefix}sw");
        if let Err(e) = made.add(&switch) {
            eprintln!("skipping {test}: cannot create a network namespace: {e}");
            return None;
        }
        must_ip(&["-n", &switch, "link", "set", "lo", "up"]);
        // A dumb switch (no IGMP snooping): heartbeats reach every port whatever the
        // bridge learned before a port went down; these tests are about the nodes.
        must_ip(&[
            "-n",
            &switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        must_ip(&["-n", &switch, "link", "set", "br0", "up"]);
        let mut hosts = Hosts {
            cluster: Cluster::new(test),
            hosts: Vec::new(),
            switch,
            prefix,
            common_args: common_args.iter().map(|a| a.to_string()).collect(),
            made,
        };
        for name in names {
            hosts.add_host(name);
        }
        Some(hosts)
    }

    /// One more host on the switch, named `name`; returns its index.
    pub fn add_host(&mut self, name: &str) -> usize {
        let number = self.hosts.len() + 1;
        assert!(number < 255, "at most 254 hosts on one subnet");
        let ns = format!("{}h{number}", self.prefix);
        self.made.add(&ns).unwrap_or_else(|e| panic!("{e}"));
        let port = format!("vh{number}");
        must_ip(&["-n", &ns, "link", "set", "lo", "up"]);
        must_ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ]);
        must_ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        must_ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], number as u8);
        let cidr = format!("{addr}/24");
        must_ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        must_ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        self.hosts.push(Host {
            name: name.to_string(),
            log: log_path(&self.cluster.name, name),
            ns,
            port,
            addr,
            proc: None,
            starts: 0,
        });
        self.hosts.len() - 1
    }

    /// Starts (or restarts) a `deltacast node` named after host `i`, with the harness's
    /// common arguments and then `extra`; returns once it listens (panics with its log when
    /// it exits first).
    pub fn start_node(&mut self, i: usize, extra: &[&str]) {
        let host = &self.hosts[i];
        let http = host.http().to_string();
        let replication = host.replication().to_string();
        let interface = format!("membership.interface={}", host.addr);
        let mut args: Vec<String> = vec!["node".into(), "--name".into(), host.name.clone()];
        args.extend(["--http".into(), http, "--replication".into(), replication]);
        args.extend(["--set".into(), interface]);
        args.extend(extra.iter().map(|a| a.to_string()));
        self.spawn(i, Role::Node, &args);
    }

    /// Starts a `deltacast balancer` on host `i` (listening on every address of the host, so
    /// its manager answers on the host's loopback), discovering members unless `extra` says
    /// otherwise.
    pub fn start_balancer(&mut self, i: usize, extra: &[&str]) {
        let host = &self.hosts[i];
        let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, BALANCER_PORT)).to_string();
        let interface = format!("membership.interface={}", host.addr);
        let mut args: Vec<String> = vec!["balancer".into(), "--listen".into(), listen];
        args.extend(["--set".into(), interface]);
        args.extend(extra.iter().map(|a| a.to_string()));
        self.spawn(i, Role::Balancer, &args);
    }

    fn spawn(&mut self, i: usize, role: Role, args: &[String]) {
        let cluster = self.cluster.clone();
        let common = self.common_args.clone();
        let host = &mut self.hosts[i];
        assert!(host.proc.is_none(), "{} already runs a process", host.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)
            .expect("log file");
        writeln!(
            log,
            "=== test: starting {role:?} {} in {}",
            host.name, host.ns
        )
        .expect("log");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &host.ns, BIN])
            .args(&args[..1])
            .args(["--cluster", &cluster.name])
            .args(["--multicast", &cluster.multicast])
            .args(&common)
            .args(&args[1..])
            .env("RUST_LOG", "deltacast=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: only an async-signal-safe prctl(2) runs between fork and exec. It makes
        // the kernel kill the child when the test dies without running its guards.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().expect("spawn ip netns exec deltacast");
        if let Err(status) = read_listening(&mut child, START_TIMEOUT) {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&host.log).unwrap_or_default();
            panic!(
                "{role:?} on {} exited or hung while starting ({status:?}):\n{text}",
                host.name
            );
        }
        host.starts += 1;
        host.proc = Some(HostProc {
            child,
            role,
            started: Instant::now(),
        });
    }

    /// Whether host `i` runs a process that has not exited.
    pub fn running(&mut self, i: usize) -> bool {
        self.hosts[i]
            .proc
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// SIGKILLs host `i`'s process and reaps it; returns when it is gone.
    pub fn kill(&mut self, i: usize) -> Instant {
        let mut p = self.hosts[i].proc.take().expect("a running process");
        kill(p.pid(), Signal::SIGKILL).expect("kill -9");
        p.child.wait().expect("reap");
        Instant::now()
    }

    /// SIGTERMs host `i`'s process (a graceful stop) and waits (bounded) for its exit.
    pub fn stop(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let mut p = self.hosts[i].proc.take().expect("a running process");
        kill(p.pid(), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let name = &self.hosts[i].name;
                panic!("{name} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Disconnects host `i` from the switch (its port goes down): a broken cable.
    pub fn cut(&self, i: usize) {
        let port = &self.hosts[i].port;
        must_ip(&["-n", &self.switch, "link", "set", port, "down"]);
    }

    pub fn heal(&self, i: usize) {
        let port = &self.hosts[i].port;
        must_ip(&["-n", &self.switch, "link", "set", port, "up"]);
    }

    /// `tc netem` on host `i`'s interface, e.g. `["delay", "20ms", "loss", "10%"]` (both
    /// directions: its own egress and its switch port's); Err says why it cannot be done
    /// here (a kernel without `sch_netem`).
    pub fn impair(&self, i: usize, netem: &[&str]) -> Result<(), String> {
        let host = &self.hosts[i];
        for (ns, dev) in [(&host.ns, "eth0"), (&self.switch, host.port.as_str())] {
            let mut args = vec!["-n", ns, "qdisc", "replace", "dev", dev, "root", "netem"];
            args.extend_from_slice(netem);
            run("tc", &args)?;
        }
        Ok(())
    }

    /// Removes [`impair`](Hosts::impair)'s qdiscs.
    pub fn unimpair(&self, i: usize) {
        let host = &self.hosts[i];
        for (ns, dev) in [(&host.ns, "eth0"), (&self.switch, host.port.as_str())] {
            if let Err(e) = run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"]) {
                eprintln!("unimpair: {e}");
            }
        }
    }

    /// Writes host `i`'s `/etc/hosts` (as `ip netns exec` shows it to the processes it
    /// starts): `localhost` and `entries`. Rewritten in place, so a running process reads
    /// the new content too (the bind mount holds the file, not the name).
    pub fn write_hosts_file(&self, i: usize, entries: &[(Ipv4Addr, &str)]) {
        let dir = etc_dir(&self.hosts[i].ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns directory");
        let mut text = String::from("127.0.0.1\tlocalhost\n");
        for (addr, name) in entries {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join("hosts"))
            .expect("hosts file");
        file.write_all(text.as_bytes()).expect("hosts file written");
    }

    /// The node's `/status` on host `i`, or None when it does not answer.
    pub fn status(&self, i: usize) -> Option<Value> {
        let host = &self.hosts[i];
        in_ns(&host.ns, || get_json(host.http(), "/status"))
    }

    /// The balancer's `/balancer-manager/status` on host `i`.
    pub fn balancer_status(&self, i: usize) -> Option<Value> {
        let host = &self.hosts[i];
        in_ns(&host.ns, || {
            get_json(host.balancer_local(), "/balancer-manager/status")
        })
    }

    /// The routes of the balancer's members on host `i` that are in state `ok`, sorted.
    pub fn balancer_routes(&self, i: usize) -> Option<Vec<String>> {
        let mut routes: Vec<String> = self.balancer_status(i)?["members"]
            .as_array()?
            .iter()
            .filter(|m| m["state"] == "ok")
            .filter_map(|m| m["route"].as_str().map(str::to_string))
            .collect();
        routes.sort();
        Some(routes)
    }

    /// Names of the members host `i`'s node lists, in `state` ("" for any), sorted.
    pub fn members(&self, i: usize, state: &str) -> Option<Vec<String>> {
        super::member_names(&self.status(i)?, state)
    }

    /// Names of the hosts in `among` other than host `i`, sorted.
    pub fn others(&self, i: usize, among: &[usize]) -> Vec<String> {
        let mut names: Vec<String> = among
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| self.hosts[j].name.clone())
            .collect();
        names.sort();
        names
    }

    /// Whether each of `among` is ready and lists exactly the others of `among` as alive.
    pub fn connected(&self, among: &[usize]) -> bool {
        among.iter().all(|&i| {
            self.status(i).is_some_and(|s| {
                s["node"]["state"] == "ready"
                    && super::member_names(&s, "alive") == Some(self.others(i, among))
                    && super::member_names(&s, "") == Some(self.others(i, among))
            })
        })
    }

    /// Waits until [`connected`](Hosts::connected); returns how long it took.
    pub fn wait_connected(&self, among: &[usize], timeout: Duration, what: &str) -> Duration {
        let start = Instant::now();
        super::wait_until(timeout, what, || self.connected(among).then_some(()));
        start.elapsed()
    }

    /// Sends one request to host `i`'s node with `browser`'s cookie, keeping the new one.
    pub fn send(
        &self,
        i: usize,
        browser: &mut Browser,
        method: &str,
        path: &str,
        body: &str,
    ) -> Answer {
        let host = &self.hosts[i];
        in_ns(&host.ns, || {
            browser.send(host.http(), method, path, body.as_bytes())
        })
    }

    /// Reads each `(cookie, attribute)` on host `i`'s node: status and body, or None when
    /// the node did not answer.
    pub fn read(&self, i: usize, keys: &[(&str, &str)]) -> Vec<Option<(u16, String)>> {
        let host = &self.hosts[i];
        in_ns(&host.ns, || {
            keys.iter()
                .map(|(cookie, name)| {
                    let path = format!("/session/attributes/{name}");
                    exchange(host.http(), "GET", &path, Some(cookie), b"")
                        .map(|a| (a.status, a.text()))
                })
                .collect()
        })
    }

    /// `GET /session` for each cookie on host `i`'s node: the attributes as JSON, or None
    /// when the node did not answer 200. (It touches the session's access time.)
    pub fn sessions(&self, i: usize, cookies: &[String]) -> Vec<Option<Value>> {
        let host = &self.hosts[i];
        in_ns(&host.ns, || {
            cookies
                .iter()
                .map(|cookie| {
                    let a = exchange(host.http(), "GET", "/session", Some(cookie), b"")?;
                    (a.status == 200).then(|| a.json())
                })
                .collect()
        })
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in &self.hosts {
                eprintln!("log of {}: {}", host.name, host.log.display());
            }
        }
    }
}

/// Polls `probe` every 50 ms until it is Ok, or panics after `timeout` naming `what` and
/// the last thing that was still wrong.
pub fn settle<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let wrong = match probe() {
            Ok(v) => return v,
            Err(wrong) => wrong,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}; still: {wrong}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
