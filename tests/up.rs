//! `deltacast up`: a local cluster from one command, and no child left behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, Cluster, pid_alive, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Up {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `up` on ephemeral ports and reads its table up to the "Press Ctrl-C" line.
fn start_up(cluster: &Cluster, nodes: &str) -> Up {
    start_up_with(cluster, nodes, &[])
}

/// Like `start_up`, with more arguments.
fn start_up_with(cluster: &Cluster, nodes: &str, extra: &[&str]) -> Up {
    let log = std::fs::File::create(common::log_path(&cluster.name, "up")).expect("log");
    let mut child = Command::new(BIN)
        .args(["up", "--nodes", nodes, "--cluster", &cluster.name])
        .args(extra)
        .args([
            "--set",
            "node.http=127.0.0.1:0",
            "--set",
            "node.replication=127.0.0.1:0",
            "--set",
            "balancer.listen=127.0.0.1:0",
        ])
        .args([
            "--set",
            "membership.heartbeat_ms=100",
            "--set",
            "membership.drop_ms=1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn up");
    let stdout = child.stdout.take().expect("stdout");
    let mut up = Up {
        child,
        lines: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("up prints its table in time");
        let done = line.starts_with("Press Ctrl-C");
        up.lines.push(line);
        if done {
            break;
        }
    }
    up
}

/// (name, url, pid) of each node row.
fn rows(up: &Up) -> Vec<(String, String, i32)> {
    all_rows(up)
        .into_iter()
        .filter(|r| r.0 != "balancer")
        .collect()
}

/// (name, url, pid) of every row, the balancer's included.
fn all_rows(up: &Up) -> Vec<(String, String, i32)> {
    let header = up
        .lines
        .iter()
        .position(|l| l.starts_with("NAME"))
        .expect("header");
    up.lines[header + 1..]
        .iter()
        .take_while(|l| !l.starts_with("Press"))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (
                cells[0].to_string(),
                cells[1].to_string(),
                cells[4].parse().expect("pid"),
            )
        })
        .collect()
}

fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("url")
}

#[test]
fn up_prints_its_table_and_exits_zero_on_sigterm_with_no_child_left() {
    let cluster = Cluster::new("up3");
    let mut up = start_up(&cluster, "3");
    let nodes = rows(&up);
    assert_eq!(
        nodes.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    for (name, url, pid) in &nodes {
        assert!(pid_alive(*pid), "{name} runs");
        let status = common::get_json(addr_of(url), "/status").expect("status");
        assert_eq!(status["node"]["name"], name.as_str());
        assert_eq!(
            status["members"].as_array().map(Vec::len),
            Some(2),
            "{name} sees the others"
        );
    }

    kill(Pid::from_raw(up.child.id() as i32), Signal::SIGTERM).expect("SIGTERM up");
    let status = wait_until(Duration::from_secs(20), "up exits", || {
        up.child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
    for (name, _, pid) in &nodes {
        assert!(!pid_alive(*pid), "{name} (pid {pid}) outlived up");
    }
}

#[test]
fn up_prints_the_balancer_first_and_the_test_page_works_through_it() {
    let cluster = Cluster::new("upbal");
    let mut up = start_up(&cluster, "2");
    let all = all_rows(&up);
    assert_eq!(
        all[0].0, "balancer",
        "the balancer comes first: {:?}",
        up.lines
    );
    let balancer = addr_of(&all[0].1);
    let mut browser = common::Browser::new();
    let first = browser.send(balancer, "GET", "/", b"");
    assert_eq!(first.status, 200);
    assert!(first.text().contains(r#"<td id="hits">1</td>"#));
    let second = browser.send(balancer, "GET", "/", b"");
    assert!(second.text().contains(r#"<td id="hits">2</td>"#));
    let status = common::get_json(balancer, "/balancer-manager/status").expect("status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(2));
    let page = common::exchange(balancer, "GET", "/balancer-manager", None, b"").expect("page");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<table"));
    // `deltacast status` on the balancer shows the balancer's members, not a node's view.
    let (code, stdout, stderr) = common::run_cli(&["status", &all[0].1]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("balancer with 2 member(s)"), "{stdout}");
    assert!(stdout.contains("n1") && stdout.contains("n2"), "{stdout}");

    kill(Pid::from_raw(up.child.id() as i32), Signal::SIGTERM).expect("SIGTERM up");
    let status = wait_until(Duration::from_secs(20), "up exits", || {
        up.child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
    for (name, _, pid) in &all {
        assert!(!pid_alive(*pid), "{name} (pid {pid}) outlived up");
    }
}

#[test]
fn children_stop_by_themselves_when_up_is_killed() {
    let cluster = Cluster::new("upkill");
    let mut up = start_up(&cluster, "2");
    let nodes = all_rows(&up);
    assert_eq!(nodes.len(), 3, "two nodes and the balancer");
    up.child.kill().expect("SIGKILL up");
    let _ = up.child.wait();
    wait_until(
        Duration::from_secs(15),
        "every child of the killed up exits",
        || {
            nodes
                .iter()
                .all(|(_, _, pid)| !pid_alive(*pid))
                .then_some(())
        },
    );
}

#[test]
fn a_killed_node_is_reported_and_the_others_carry_on() {
    let cluster = Cluster::new("upnode");
    let up = start_up(&cluster, "3");
    let nodes = rows(&up);
    kill(Pid::from_raw(nodes[2].2), Signal::SIGKILL).expect("kill n3");
    let n1 = addr_of(&nodes[0].1);
    wait_until(Duration::from_secs(10), "n1 drops n3", || {
        let status = common::get_json(n1, "/status")?;
        (status["members"].as_array()?.len() == 1).then_some(())
    });
    let mut up = up;
    assert!(matches!(up.child.try_wait(), Ok(None)), "up keeps running");
}

#[test]
fn a_stopped_child_does_not_outlive_a_killed_up() {
    let cluster = Cluster::new("upstopped");
    let mut up = start_up(&cluster, "2");
    let nodes = rows(&up);
    kill(Pid::from_raw(nodes[0].2), Signal::SIGSTOP).expect("stop n1");
    up.child.kill().expect("SIGKILL up");
    let _ = up.child.wait();
    wait_until(
        Duration::from_secs(15),
        "the stopped child ends too",
        || {
            nodes
                .iter()
                .all(|(_, _, pid)| !pid_alive(*pid))
                .then_some(())
        },
    );
}

#[test]
fn up_with_static_members_lists_its_own_nodes_and_they_see_each_other() {
    let cluster = Cluster::new("upstatic");
    // Any list turns multicast off; `up` names its own nodes in place of this one.
    let mut up = start_up_with(
        &cluster,
        "3",
        &["--set", "membership.static_members=127.0.0.1:1"],
    );
    assert!(
        up.lines.iter().any(|l| l.contains("static members")),
        "{:?}",
        up.lines
    );
    let nodes = rows(&up);
    assert_eq!(nodes.len(), 3);
    for (name, url, _) in &nodes {
        let status = common::get_json(addr_of(url), "/status").expect("status");
        let members = status["members"].as_array().expect("members");
        assert_eq!(members.len(), 2, "{name} sees the others: {status}");
        for m in members {
            let replication = m["replication"].as_str().expect("replication");
            assert!(
                !replication.ends_with(":1"),
                "{name} lists a node of up, not the given list"
            );
        }
    }
    let all = all_rows(&up);
    let status = common::get_json(addr_of(&all[0].1), "/balancer-manager/status")
        .expect("the balancer's status");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    kill(Pid::from_raw(up.child.id() as i32), Signal::SIGTERM).expect("SIGTERM up");
    let status = wait_until(Duration::from_secs(20), "up exits", || {
        up.child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_node_and_a_balancer_asked_for_port_0_print_the_addresses_they_bound() {
    let cluster = Cluster::new("listening");
    let log = std::fs::File::create(common::log_path(&cluster.name, "n1")).expect("log");
    let mut node = Command::new(BIN)
        .args(["node", "--cluster", &cluster.name, "--name", "n1"])
        .args(["--multicast", &cluster.multicast])
        .args(["--http", "127.0.0.1:0", "--replication", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn node");
    let node_guard = Killed(&mut node);
    let stdout = node_guard.0.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{line}");
    assert_eq!(words[0], "listening", "{line}");
    let http: std::net::SocketAddr = words[1]
        .strip_prefix("node.http=")
        .expect("node.http first")
        .parse()
        .expect("an address");
    let replication = words[2]
        .strip_prefix("node.replication=")
        .expect("node.replication second");
    assert_ne!(http.port(), 0);
    let status = wait_until(Duration::from_secs(20), "the node answers", || {
        common::get_json(http, "/status")
    });
    assert_eq!(status["node"]["http"], http.to_string());
    assert_eq!(status["node"]["replication"], replication);

    let balancer = common::BalancerProc::spawn(&cluster, common::FAST);
    assert_ne!(balancer.addr.port(), 0);
    assert!(balancer.status().is_some(), "it answers where it said");
}

/// Kills its child by PID when dropped.
struct Killed<'a>(&'a mut Child);

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
