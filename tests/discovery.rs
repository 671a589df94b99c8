//! `membership.dns` with real processes: every address a name resolves to is a peer. On
//! loopback a name resolves to one address, so each node lists `localhost:PORT` of every
//! node, itself included (as a headless service's answer includes the pod asking); the
//! multi-host case (one name, one address per host) is the network-namespace harness's.

mod common;

use std::time::Duration;

use common::{Cluster, FAST, NodeProc, free_dual_port, wait_converged, wait_until};

/// Starts nodes `names` whose `membership.dns` lists `localhost:PORT` of the ports in
/// `listed` (their own among them); None when another program took a port first.
fn start(
    cluster: &Cluster,
    names: &[&str],
    ports: &[u16],
    listed: &[u16],
) -> Option<Vec<NodeProc>> {
    let dns = listed
        .iter()
        .map(|p| format!("localhost:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let set = format!("membership.dns={dns}");
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--set", &set]);
    let mut nodes = Vec::new();
    for (name, port) in names.iter().zip(ports) {
        match NodeProc::try_spawn(cluster, name, *port, &args, &[]) {
            Ok(node) => nodes.push(node),
            Err((_, log)) if log.contains("Address already in use") => return None,
            Err((status, log)) => panic!("{name} exited while starting ({status:?}):\n{log}"),
        }
    }
    Some(nodes)
}

#[test]
fn nodes_that_find_each_other_by_a_dns_name_converge_and_a_later_one_joins_them() {
    for _ in 0..5 {
        let c = Cluster::new("dns");
        let ports: Vec<u16> = (0..3).map(|_| free_dual_port()).collect();
        // The first two are configured before the third exists: their answer names two.
        let Some(mut nodes) = start(&c, &["n1", "n2"], &ports[..2], &ports[..2]) else {
            continue;
        };
        wait_converged(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(20));
        for n in &nodes {
            let log = n.log_text();
            assert!(
                log.contains("peer found by name source=\"dns\""),
                "{}:\n{log}",
                n.name
            );
        }
        // A node added later, whose answer names all three: the others learn it from its
        // heartbeats and answer it.
        let Some(third) = start(&c, &["n3"], &ports[2..], &ports) else {
            continue;
        };
        nodes.extend(third);
        wait_converged(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(20));
        let status = nodes[2].status().expect("status");
        assert_eq!(
            status["members"].as_array().map(Vec::len),
            Some(2),
            "{status}"
        );
        wait_until(Duration::from_secs(20), "n3 is ready", || {
            (nodes[2].status()?["node"]["state"] == "ready").then_some(())
        });
        return;
    }
    panic!("every attempt lost a port to another program");
}
