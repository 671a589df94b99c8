//! Membership with real processes over loopback multicast: convergence, failure
//! detection (kill -9, SIGSTOP, SIGTERM), cluster separation and static members.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, FAST, NodeProc, wait_converged, wait_until};
use nix::sys::signal::Signal;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn three_nodes_converge_and_report_each_other_in_status() {
    let c = Cluster::new("converge");
    let nodes: Vec<NodeProc> = ["n1", "n2", "n3"].iter().map(|n| c.node(n, FAST)).collect();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&refs, Duration::from_secs(10));

    let status = nodes[0].status().expect("status of n1");
    assert_eq!(status["cluster"], c.name.as_str());
    assert_eq!(status["node"]["name"], "n1");
    assert_eq!(status["node"]["route"], "n1");
    assert_eq!(status["node"]["state"], "ready");
    assert_eq!(status["node"]["http"], nodes[0].http.to_string());
    assert_eq!(
        status["node"]["replication"],
        nodes[0].replication.to_string()
    );
    assert_eq!(status["node"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["sessions"]["active"], 0);
    assert_eq!(status["replication"]["mode"], "sync");
    assert_eq!(status["replication"]["deltas_sent"], 0);
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    let n2 = &members[0];
    assert_eq!(n2["name"], "n2");
    assert_eq!(n2["route"], "n2");
    assert_eq!(n2["http"], nodes[1].http.to_string());
    assert_eq!(n2["replication"], nodes[1].replication.to_string());
    assert_eq!(n2["state"], "alive");
    assert_ne!(n2["id"], status["node"]["id"]);

    // Some heartbeats later, "last heard" is still about one interval (100 ms), not the
    // time since the member joined.
    wait_until(Duration::from_secs(10), "n1 has run for 1.5 s", || {
        (nodes[0].status()?["node"]["uptime_ms"].as_u64()? > 1500).then_some(())
    });
    let status = nodes[0].status().expect("status of n1");
    for m in status["members"].as_array().expect("members") {
        let heard = m["last_heard_ms"].as_u64().expect("last_heard_ms");
        assert!(
            heard < 600,
            "{} last heard {heard} ms ago with a 100 ms heartbeat",
            m["name"]
        );
    }
}

#[test]
fn a_killed_node_is_removed_by_the_others_within_two_seconds_with_default_timing() {
    let c = Cluster::new("kill9");
    // Default heartbeat (500 ms) and drop_ms (3000 ms): detection must not wait for drop_ms.
    let a = c.node("a", common::DEFAULTS);
    let b = c.node("b", common::DEFAULTS);
    let mut victim = c.node("victim", common::DEFAULTS);
    wait_converged(&[&a, &b, &victim], Duration::from_secs(10));

    victim.signal(Signal::SIGKILL);
    let _ = victim.wait_exit(Duration::from_secs(5));
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "both survivors drop the killed node",
        || {
            (a.members("") == Some(names(&["b"])) && b.members("") == Some(names(&["a"])))
                .then_some(())
        },
    );
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a killed node took {took:?} to be removed"
    );
    assert!(a.log_text().contains("reason=\"refused\"") || a.log_text().contains("reason=refused"));
}

#[test]
fn a_frozen_node_is_dropped_after_drop_ms_and_joins_again_after_sigcont() {
    let c = Cluster::new("sigstop");
    let args = &[
        "--set",
        "membership.heartbeat_ms=200",
        "--set",
        "membership.drop_ms=2000",
    ];
    let a = c.node("a", args);
    let frozen = c.node("frozen", args);
    wait_converged(&[&a, &frozen], Duration::from_secs(10));

    frozen.signal(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    // Suspect after two silent heartbeats, but not dropped: its kernel still accepts TCP,
    // yet nobody answers the ping, so only drop_ms may drop it.
    wait_until(Duration::from_secs(5), "the frozen node is suspect", || {
        (a.members("suspect") == Some(names(&["frozen"]))).then_some(())
    });
    let suspect_after = stopped_at.elapsed();
    assert!(
        suspect_after < Duration::from_millis(1900),
        "still listed while silent for less than drop_ms"
    );
    wait_until(
        Duration::from_secs(10),
        "the frozen node is dropped",
        || (a.members("") == Some(vec![])).then_some(()),
    );
    let dropped_after = stopped_at.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(1500),
        "dropped after {dropped_after:?}, before drop_ms could pass"
    );

    frozen.signal(Signal::SIGCONT);
    wait_converged(&[&a, &frozen], Duration::from_secs(10));
}

#[test]
fn sigterm_makes_a_node_leave_at_once_and_exit_zero() {
    let c = Cluster::new("sigterm");
    // A long drop_ms: only the leave announcement can explain a fast removal.
    let args = &["--set", "membership.drop_ms=30000"];
    let a = c.node("a", args);
    let mut leaver = c.node("leaver", args);
    wait_converged(&[&a, &leaver], Duration::from_secs(10));

    leaver.signal(Signal::SIGTERM);
    let sent_at = Instant::now();
    wait_until(Duration::from_secs(5), "the leaver is gone from a", || {
        (a.members("") == Some(vec![])).then_some(())
    });
    let took = sent_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "leave noticed after {took:?}"
    );
    let status = leaver
        .wait_exit(Duration::from_secs(10))
        .expect("the leaver exits");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(a.log_text().contains("reason=\"left\"") || a.log_text().contains("reason=left"));
}

#[test]
fn two_clusters_on_one_group_stay_apart() {
    let blue = Cluster::new("blue");
    let red = Cluster {
        name: format!("{}-red", blue.name),
        multicast: blue.multicast.clone(),
    };
    let b1 = blue.node("b1", FAST);
    let b2 = blue.node("b2", FAST);
    let r1 = red.node("r1", FAST);
    let r2 = red.node("r2", FAST);
    wait_converged(&[&b1, &b2], Duration::from_secs(10));
    wait_converged(&[&r1, &r2], Duration::from_secs(10));
    // Each hears the other cluster's heartbeats and drops them.
    wait_until(
        Duration::from_secs(10),
        "foreign heartbeats are counted",
        || {
            let s = b1.status()?;
            (s["membership"]["dropped_foreign_cluster"].as_u64()? > 0).then_some(())
        },
    );
    for node in [&b1, &b2, &r1, &r2] {
        assert_eq!(
            node.members("").expect("status").len(),
            1,
            "{} sees only its own cluster",
            node.name
        );
    }
}

#[test]
fn static_members_converge_without_multicast_and_detect_kill_and_leave() {
    let c = Cluster::new("static");
    let nodes = common::start_static(
        &c,
        &["a", "b", "k"],
        &[
            "--set",
            "membership.heartbeat_ms=100",
            "--set",
            "membership.drop_ms=1000",
        ],
    );
    let [a, b, mut k]: [NodeProc; 3] = nodes.try_into().ok().expect("three nodes");
    wait_converged(&[&a, &b, &k], Duration::from_secs(10));
    assert!(
        a.log_text().contains("heartbeats=\"unicast\"")
            || a.log_text().contains("heartbeats=unicast")
    );
    assert_eq!(
        a.status().expect("status")["members"][0]["replication"],
        b.replication.to_string()
    );

    k.signal(Signal::SIGKILL);
    let _ = k.wait_exit(Duration::from_secs(5));
    wait_until(
        Duration::from_secs(5),
        "the killed static member is dropped",
        || (a.members("") == Some(names(&["b"]))).then_some(()),
    );
    drop(k);

    let mut b = b;
    b.signal(Signal::SIGTERM);
    wait_until(
        Duration::from_secs(3),
        "the leaving static member is dropped",
        || (a.members("") == Some(vec![])).then_some(()),
    );
    assert_eq!(
        b.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn a_restarted_node_under_the_same_name_replaces_its_old_incarnation() {
    let c = Cluster::new("restart");
    let a = c.node("a", FAST);
    let old = c.node("b", FAST);
    wait_converged(&[&a, &old], Duration::from_secs(10));
    let old_id = a.status().expect("status")["members"][0]["id"].clone();
    drop(old);
    let new = c.node("b", FAST);
    wait_until(Duration::from_secs(10), "a lists the new b only", || {
        let s = a.status()?;
        let members = s["members"].as_array()?;
        (members.len() == 1 && members[0]["id"] != old_id && members[0]["state"] == "alive")
            .then_some(())
    });
    wait_converged(&[&a, &new], Duration::from_secs(10));
}

#[test]
fn a_new_static_member_joins_a_cluster_whose_lists_do_not_name_it() {
    let c = Cluster::new("newstatic");
    let fast = [
        "--set",
        "membership.heartbeat_ms=100",
        "--set",
        "membership.drop_ms=1000",
    ];
    let [a, b]: [NodeProc; 2] = common::start_static(&c, &["a", "b"], &fast)
        .try_into()
        .ok()
        .expect("two nodes");
    wait_converged(&[&a, &b], Duration::from_secs(10));
    // Added later without touching a and b: it lists them, they answer whoever they hear.
    let everyone = format!(
        "membership.static_members={},{}",
        a.replication, b.replication
    );
    let mut with_list = fast.map(String::from).to_vec();
    with_list.extend(["--set".to_string(), everyone]);
    let newcomer = NodeProc::spawn(&c, "newcomer", &with_list);
    wait_converged(&[&a, &b, &newcomer], Duration::from_secs(10));
}
