//! Nodes started in this test process with `node::start` on the operating system's
//! network: each binds port 0, tells where it listens, finds the others over loopback
//! multicast, and stops when asked.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deltacast::node::{self, RunningNode};
use deltacast::shutdown::Shutdown;

use common::Cluster;

const DEADLINE: Duration = Duration::from_secs(20);

async fn start(cluster: &Cluster, name: &str) -> RunningNode {
    let config = cluster.in_process_config(name);
    node::start(config, Shutdown::new())
        .await
        .expect("the node starts")
}

fn alive(node: &RunningNode) -> usize {
    let view = node.shared().view.borrow().clone();
    view.members
        .iter()
        .filter(|m| m.state.as_str() == "alive")
        .count()
}

/// One blocking HTTP exchange off the runtime's threads.
async fn exchange(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    cookie: Option<String>,
    body: &'static [u8],
) -> Option<common::Answer> {
    tokio::task::spawn_blocking(move || {
        common::exchange(addr, method, path, cookie.as_deref(), body)
    })
    .await
    .expect("the exchange ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_in_one_process_on_port_0_find_each_other_serve_and_stop_when_asked() {
    let cluster = Cluster::new("inproc");
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(start(&cluster, name).await);
    }
    let mut ports: Vec<u16> = nodes
        .iter()
        .flat_map(|n| [n.addresses().http.port(), n.addresses().replication.port()])
        .collect();
    assert!(ports.iter().all(|p| *p != 0), "{ports:?}");
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6, "every node has ports of its own");

    let deadline = Instant::now() + DEADLINE;
    while !nodes.iter().all(|n| alive(n) == 2) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not find each other"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in &nodes {
        assert!(node.ready(DEADLINE).await, "the node serves");
    }

    // Written through one node's HTTP address, read through another's.
    let (a, b) = (nodes[0].addresses().http, nodes[1].addresses().http);
    let put = exchange(a, "PUT", "/session/attributes/x", None, b"kept")
        .await
        .expect("an answer");
    assert_eq!(put.status, 204);
    let cookie = put.set_cookie.expect("a session cookie");
    let got = exchange(b, "GET", "/session/attributes/x", Some(cookie), b"")
        .await
        .expect("an answer");
    assert_eq!((got.status, got.text()), (200, "kept".to_string()));

    let last = nodes.pop().expect("c");
    let c_http = last.addresses().http;
    tokio::time::timeout(DEADLINE, last.shutdown())
        .await
        .expect("c stops in time");
    assert!(
        std::net::TcpStream::connect(c_http).is_err(),
        "c's HTTP port is closed once it stopped"
    );
    let deadline = Instant::now() + DEADLINE;
    while !nodes.iter().all(|n| alive(n) == 1) {
        assert!(Instant::now() < deadline, "c's leave was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in nodes {
        tokio::time::timeout(DEADLINE, node.shutdown())
            .await
            .expect("the node stops in time");
    }
}
