//! Multi-host tests: three "hosts" made of network namespaces, joined by a Linux bridge in a
//! fourth namespace (the switch), each running one real `deltacast node`. Cutting a host's
//! port on the switch makes a real partition (heartbeats and links both fail); bringing it
//! back up heals it.
//!
//! These tests need root (`ip netns`); without it, or where namespaces cannot be made, they
//! say why on stderr and pass. They never touch the root namespace's interfaces, routes or
//! firewall: every interface and address lives inside the namespaces the test creates, and
//! a guard deletes them (after killing the nodes) when the test ends, even when it fails.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Answer, BIN, Browser, Cluster, FAST, exchange, get_json, log_path, wait_until};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};
use serde_json::Value;

/// The hosts' addresses: `10.213.77.<host number>/24`, only inside the test's namespaces.
const SUBNET: [u8; 3] = [10, 213, 77];
const HTTP_PORT: u16 = 8081;
const REPLICATION_PORT: u16 = 4001;
/// Anti-entropy runs when a link (re)connects; the periodic round every 30 s is the worst
/// case, plus slack for a loaded machine.
const UNION_DEADLINE: Duration = Duration::from_secs(45);

/// Testbeds made by this test process: two tests of one binary share the PID.
static TESTBEDS: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on a fresh thread that first enters the network namespace `ns`: sockets it
/// opens live there. (A thread's network namespace is its own; the caller's is untouched.)
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let handle = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&handle, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("enter {path}: {e}"));
            f()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `ip ARGS`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must_ip(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The namespaces this test created, deleted on drop.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A `deltacast node` started by `ip netns exec` (which execs it: the child's PID is the
/// node's), killed by that PID on drop.
struct NodeInNs {
    child: Child,
}

impl NodeInNs {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for NodeInNs {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One host: a namespace with one interface on the switch, and maybe a node.
struct Host {
    name: String,
    ns: String,
    /// The host's port on the switch (the other end of its veth pair).
    port: String,
    addr: Ipv4Addr,
    log: PathBuf,
    node: Option<NodeInNs>,
}

impl Host {
    fn http(&self) -> SocketAddr {
        SocketAddr::from((self.addr, HTTP_PORT))
    }
}

/// Hosts on a switch. Fields drop in order: the nodes die before their namespaces go.
struct Testbed {
    cluster: Cluster,
    hosts: Vec<Host>,
    switch: String,
    _namespaces: Namespaces,
}

impl Testbed {
    /// Three hosts n1..n3, each running its node, all seeing each other; None as [`new`].
    ///
    /// [`new`]: Testbed::new
    fn three_connected(test: &str) -> Option<Testbed> {
        let mut bed = Testbed::new(test, &["n1", "n2", "n3"])?;
        for i in 0..3 {
            bed.start(i);
        }
        bed.wait_connected(
            &[0, 1, 2],
            Duration::from_secs(20),
            "the three hosts see each other",
        );
        Some(bed)
    }

    /// The namespaces, the bridge and one host per name, or None (after saying why) when
    /// this machine cannot make them.
    fn new(test: &str, names: &[&str]) -> Option<Testbed> {
        if !geteuid().is_root() {
            eprintln!("skipping {test}: it creates network namespaces (`ip netns`) and needs root");
            return None;
        }
        let prefix = format!(
            "dc{}x{}",
            std::process::id(),
            TESTBEDS.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Namespaces { names: Vec::new() };
        let switch = format!("{prefix}sw");
        if let Err(e) = net.add(&switch) {
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
        let cluster = Cluster::new(test);
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let number = i as u8 + 1;
            let ns = format!("{prefix}h{number}");
            net.add(&ns).unwrap_or_else(|e| panic!("{e}"));
            let port = format!("vh{number}");
            must_ip(&["-n", &ns, "link", "set", "lo", "up"]);
            must_ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ]);
            must_ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            must_ip(&["-n", &switch, "link", "set", &port, "up"]);
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], number);
            must_ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            must_ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            hosts.push(Host {
                name: name.to_string(),
                log: log_path(&cluster.name, name),
                ns,
                port,
                addr,
                node: None,
            });
        }
        Some(Testbed {
            cluster,
            hosts,
            switch,
            _namespaces: net,
        })
    }

    /// Starts (or restarts) host `i`'s node; its stderr is appended to the host's log.
    fn start(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        assert!(host.node.is_none(), "{} already runs a node", host.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)
            .expect("log file");
        writeln!(log, "=== test: starting {} in {}", host.name, host.ns).expect("log");
        let http = host.http().to_string();
        let replication = SocketAddr::from((host.addr, REPLICATION_PORT)).to_string();
        let interface = format!("membership.interface={}", host.addr);
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, BIN, "node"])
            .args(["--cluster", &self.cluster.name])
            .args(["--multicast", &self.cluster.multicast])
            .args(["--name", &host.name])
            .args(["--http", &http])
            .args(["--replication", &replication])
            .args(["--set", &interface])
            .args(FAST)
            .env("RUST_LOG", "deltacast=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ip netns exec deltacast node");
        host.node = Some(NodeInNs { child });
    }

    /// SIGKILLs host `i`'s node and reaps it; returns when it is gone.
    fn kill_node(&mut self, i: usize) -> Instant {
        let mut node = self.hosts[i].node.take().expect("a running node");
        kill(node.pid(), Signal::SIGKILL).expect("kill -9 the node");
        node.child.wait().expect("reap the node");
        Instant::now()
    }

    /// Disconnects host `i` from the switch (its port goes down).
    fn cut(&self, i: usize) {
        must_ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.hosts[i].port,
            "down",
        ]);
    }

    fn heal(&self, i: usize) {
        must_ip(&["-n", &self.switch, "link", "set", &self.hosts[i].port, "up"]);
    }

    fn status(&self, i: usize) -> Option<Value> {
        let host = &self.hosts[i];
        in_ns(&host.ns, || get_json(host.http(), "/status"))
    }

    /// Names of the members host `i`'s node lists, in `state` ("" for any), sorted.
    fn members(&self, i: usize, state: &str) -> Option<Vec<String>> {
        common::member_names(&self.status(i)?, state)
    }

    /// Names of the hosts in `among` other than host `i`, sorted.
    fn others(&self, i: usize, among: &[usize]) -> Vec<String> {
        let mut names: Vec<String> = among
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| self.hosts[j].name.clone())
            .collect();
        names.sort();
        names
    }

    /// Waits until each of `among` lists exactly the others of `among` as alive and is ready.
    fn wait_connected(&self, among: &[usize], timeout: Duration, what: &str) {
        wait_until(timeout, what, || {
            among
                .iter()
                .all(|&i| {
                    self.status(i)
                        .is_some_and(|s| s["node"]["state"] == "ready")
                        && self.members(i, "alive") == Some(self.others(i, among))
                })
                .then_some(())
        });
    }

    /// Sends one request to host `i`'s node with `browser`'s cookie, keeping the new one.
    fn send(
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
    fn read(&self, i: usize, keys: &[(&str, &str)]) -> Vec<Option<(u16, String)>> {
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
}

impl Drop for Testbed {
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
fn settle<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
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

/// What one attribute of one session must read as, on every node.
struct Expect {
    cookie: String,
    attribute: &'static str,
    /// None: the session exists but the attribute does not.
    value: Option<String>,
}

fn expect(browser: &Browser, attribute: &'static str, value: Option<&str>) -> Expect {
    Expect {
        cookie: browser.cookie.clone().expect("the browser holds a session"),
        attribute,
        value: value.map(str::to_string),
    }
}

/// A new session on host `i` with `attribute` set to `value`.
fn new_session(bed: &Testbed, i: usize, attribute: &str, value: &str) -> Browser {
    let mut browser = Browser::new();
    let path = format!("/session/attributes/{attribute}");
    let answer = bed.send(i, &mut browser, "PUT", &path, value);
    assert_eq!(
        answer.status, 204,
        "PUT {attribute} on {}",
        bed.hosts[i].name
    );
    browser
}

fn put(bed: &Testbed, i: usize, browser: &mut Browser, attribute: &str, value: &str) {
    let path = format!("/session/attributes/{attribute}");
    let answer = bed.send(i, browser, "PUT", &path, value);
    assert_eq!(
        answer.status, 204,
        "PUT {attribute} on {}",
        bed.hosts[i].name
    );
}

#[test]
fn both_sides_of_a_healed_partition_end_up_holding_the_union_of_their_writes() {
    let Some(bed) = Testbed::three_connected("partition") else {
        return;
    };
    let all = [0, 1, 2];

    // Before the partition, everyone gets these by sync replication.
    let mut expects = Vec::new();
    for k in 0..10 {
        let value = format!("before-{k}");
        let browser = new_session(&bed, 0, "v", &value);
        expects.push(expect(&browser, "v", Some(&value)));
    }
    let mut shared = new_session(&bed, 0, "base", "0");
    put(&bed, 0, &mut shared, "gone", "soon");

    bed.cut(2);
    wait_until(
        Duration::from_secs(15),
        "n1 and n2 drop n3, and n3 drops them",
        || {
            (bed.members(0, "") == Some(vec!["n2".into()])
                && bed.members(1, "") == Some(vec!["n1".into()])
                && bed.members(2, "") == Some(vec![]))
            .then_some(())
        },
    );

    // Both sides write: new sessions, different attributes of one session, and the same
    // attribute of that session.
    for k in 0..10 {
        let left = format!("left-{k}");
        let browser = new_session(&bed, 0, "v", &left);
        expects.push(expect(&browser, "v", Some(&left)));
        let right = format!("right-{k}");
        let browser = new_session(&bed, 2, "v", &right);
        expects.push(expect(&browser, "v", Some(&right)));
    }
    let mut on_n3 = shared.clone();
    put(&bed, 0, &mut shared, "left", "L");
    put(&bed, 2, &mut on_n3, "right", "R");
    put(&bed, 2, &mut on_n3, "base", "changed-on-n3");
    let removed = bed.send(0, &mut shared, "DELETE", "/session/attributes/gone", "");
    assert_eq!(removed.status, 204, "DELETE gone on n1");
    put(&bed, 0, &mut shared, "both", "from-n1");
    put(&bed, 2, &mut on_n3, "both", "from-n3");
    expects.push(expect(&shared, "left", Some("L")));
    expects.push(expect(&shared, "right", Some("R")));
    expects.push(expect(&shared, "base", Some("changed-on-n3")));
    expects.push(expect(&shared, "gone", None));
    let sessions = 10 + 1 + 10 + 10;

    bed.heal(2);
    bed.wait_connected(
        &all,
        Duration::from_secs(20),
        "the healed hosts see each other again",
    );

    let mut keys: Vec<(&str, &str)> = expects
        .iter()
        .map(|e| (e.cookie.as_str(), e.attribute))
        .collect();
    let both_cookie = shared.cookie.clone().expect("the shared session");
    keys.push((&both_cookie, "both"));
    let healed = Instant::now();
    let winner = settle(
        UNION_DEADLINE,
        "every node holds the union of both sides' writes",
        || {
            let mut wrong = Vec::new();
            let mut both = Vec::new();
            for i in 0..3 {
                let name = &bed.hosts[i].name;
                let active = bed.status(i).map(|s| s["sessions"]["active"].clone());
                if active != Some(Value::from(sessions)) {
                    wrong.push(format!("{name} holds {active:?} sessions, not {sessions}"));
                }
                let got = bed.read(i, &keys);
                for (e, got) in expects.iter().zip(&got) {
                    let ok = match (&e.value, got) {
                        (Some(want), Some((200, body))) => body == want,
                        (None, Some((404, body))) => body.contains("no such attribute"),
                        _ => false,
                    };
                    if !ok {
                        wrong.push(format!(
                            "{name}: {} of {} reads {got:?}, want {:?}",
                            e.attribute, e.cookie, e.value
                        ));
                    }
                }
                both.push(got.last().cloned().flatten());
            }
            let agreed = both.iter().all(|b| *b == both[0]);
            match &both[0] {
                Some((200, v)) if agreed && (v == "from-n1" || v == "from-n3") => {}
                _ => wrong.push(format!("`both` reads {both:?} on n1, n2, n3")),
            }
            if wrong.is_empty() {
                Ok(both[0].clone().map(|(_, v)| v))
            } else {
                let count = wrong.len();
                wrong.truncate(5);
                Err(format!("{count} wrong, e.g. {}", wrong.join("; ")))
            }
        },
    );
    eprintln!(
        "union reached {:?} after the hosts saw each other again; `both` = {winner:?}",
        healed.elapsed()
    );
}

#[test]
fn a_killed_host_node_is_dropped_at_once_and_its_restart_gets_every_session_by_state_transfer() {
    let Some(mut bed) = Testbed::three_connected("hostkill") else {
        return;
    };
    let all = [0, 1, 2];
    let mut expects = Vec::new();
    for k in 0..30 {
        let value = format!("w{k}");
        let browser = new_session(&bed, k % 2, "v", &value);
        expects.push(expect(&browser, "v", Some(&value)));
    }

    let killed = bed.kill_node(2);
    wait_until(
        Duration::from_secs(10),
        "n1 and n2 drop the killed n3",
        || {
            (bed.members(0, "") == Some(vec!["n2".into()])
                && bed.members(1, "") == Some(vec!["n1".into()]))
            .then_some(())
        },
    );
    let took = killed.elapsed();
    // Its host is up and refuses connections: the broken links and a refused verification
    // drop it within milliseconds, well before the 1 s drop time.
    assert!(took < Duration::from_millis(1000), "took {took:?}");

    bed.start(2);
    bed.wait_connected(
        &all,
        Duration::from_secs(20),
        "the restarted n3 joins again",
    );
    let keys: Vec<(&str, &str)> = expects
        .iter()
        .map(|e| (e.cookie.as_str(), e.attribute))
        .collect();
    // Ready means the state transfer is done: every session must be there at once.
    let active = bed.status(2).expect("n3 status")["sessions"]["active"].clone();
    assert_eq!(
        active,
        Value::from(expects.len()),
        "sessions on the restarted n3"
    );
    for (e, got) in expects.iter().zip(bed.read(2, &keys)) {
        assert_eq!(
            got,
            e.value.clone().map(|v| (200, v)),
            "{} of {} on the restarted n3",
            e.attribute,
            e.cookie
        );
    }
}
