//! The node processes of a run: started as `deltacast up` starts the nodes of a local
//! cluster, with the run's cluster key when it is sealed, and what /proc says about them.

use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{self, Cluster, NodeProc, wait_converged, wait_until};

/// With `--sealed`: the arguments that give every node of this run the key.
static KEY_ARGS: OnceLock<[String; 2]> = OnceLock::new();

/// Seals every node started from now on with the key these arguments name.
pub fn seal_with(key_args: [String; 2]) {
    let _ = KEY_ARGS.set(key_args);
}

/// `args`, with the cluster key when the run is sealed.
pub fn with_key(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    args.extend(KEY_ARGS.get().into_iter().flatten().cloned());
    args
}

/// `--set` arguments for a node.
pub fn node_args(settings: &[&str]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// Worker threads of each node when `n` nodes share this machine: its cores divided among
/// them, at least one each — what `deltacast up` gives the nodes of a local cluster
/// (src/cli/up.rs), so that N nodes do not run N × cores threads on the same cores.
fn worker_threads(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    (cores / n.max(1)).max(1)
}

/// Starts `n` nodes of a new cluster, each as `deltacast up` would (its share of the cores,
/// `info` logging), and waits until they see each other and are ready.
pub fn start_cluster(tag: &str, n: usize, args: &[String]) -> (Cluster, Vec<NodeProc>) {
    let c = Cluster::new(tag);
    let env = [
        ("TOKIO_WORKER_THREADS", worker_threads(n).to_string()),
        ("RUST_LOG", "deltacast=info".to_string()),
    ];
    let args = with_key(args);
    let nodes: Vec<NodeProc> = (1..=n)
        .map(|i| c.node_with_env(&format!("n{i}"), &args, &env))
        .collect();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&refs, Duration::from_secs(30));
    for node in &nodes {
        wait_ready(node, None);
    }
    (c, nodes)
}

/// Waits until `node` is ready (and holds `sessions` sessions, when given).
fn wait_ready(node: &NodeProc, sessions: Option<u64>) {
    wait_until(Duration::from_secs(120), "the node is ready", || {
        let s = node.status()?;
        let ready = s["node"]["state"] == "ready";
        let held = sessions.is_none_or(|n| s["sessions"]["active"].as_u64() == Some(n));
        (ready && held).then_some(())
    });
}

/// Waits until `node` lists no member at all (a killed joiner is gone).
pub fn wait_alone(node: &NodeProc) {
    wait_until(Duration::from_secs(20), "the node is alone again", || {
        (node.members("")?.is_empty()).then_some(())
    });
}

pub fn pid(node: &NodeProc) -> u32 {
    node.child.id()
}

pub fn rss_kb(pid: u32) -> u64 {
    common::proc_status(pid, "VmRSS:")
}
