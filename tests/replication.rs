//! Session replication between real processes: what one node acknowledged is on every
//! other node, concurrent writes converge, expiry and invalidation reach everyone, a new
//! node gets everything, and a killed node loses nothing that was acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::{Browser, Cluster, FAST, NodeProc, wait_converged, wait_until};
use nix::sys::signal::Signal;

fn cluster(name: &str, n: usize, extra: &[&str]) -> (Cluster, Vec<NodeProc>) {
    let c = Cluster::new(name);
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    let nodes: Vec<NodeProc> = (1..=n).map(|i| c.node(&format!("n{i}"), &args)).collect();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&refs, Duration::from_secs(10));
    for node in &nodes {
        wait_until(Duration::from_secs(10), "the node is ready", || {
            (node.status()?["node"]["state"] == "ready").then_some(())
        });
    }
    (c, nodes)
}

#[test]
fn in_sync_mode_a_write_on_one_node_is_read_on_another_by_the_very_next_request_500_times() {
    let (_c, nodes) = cluster("sync500", 3, &[]);
    let mut browser = Browser::new();
    for i in 0..500 {
        let writer = &nodes[i % 3];
        let reader = &nodes[(i + 1) % 3];
        let value = format!("value-{i}");
        let put = browser.send(
            writer.http,
            "PUT",
            "/session/attributes/x",
            value.as_bytes(),
        );
        assert_eq!(put.status, 204, "write {i}");
        let got = browser.send(reader.http, "GET", "/session/attributes/x", b"");
        assert_eq!(
            (got.status, got.text()),
            (200, value),
            "read {i} on {}",
            reader.name
        );
    }
}

#[test]
fn sixty_visits_alternating_over_three_nodes_count_sixty_hits() {
    let (_c, nodes) = cluster("hits60", 3, &[]);
    let mut browser = Browser::new();
    for i in 0..60 {
        let page = browser.send(nodes[i % 3].http, "GET", "/", b"");
        assert_eq!(page.status, 200);
    }
    let session = browser.send(nodes[0].http, "GET", "/session", b"");
    assert_eq!(session.json()["attributes"]["hits"], "60");
}

#[test]
fn invalidation_on_one_node_ends_the_session_on_every_node() {
    let (_c, nodes) = cluster("invalidate", 3, &[]);
    let mut browser = Browser::new();
    browser.send(nodes[0].http, "PUT", "/session/attributes/x", b"1");
    let old = browser.session_id().expect("a session");
    let old_cookie = browser.cookie.clone();
    assert_eq!(
        browser
            .send(nodes[1].http, "POST", "/session/invalidate", b"")
            .status,
        204
    );
    for node in &nodes {
        // The old cookie is an unknown session now, wherever it goes.
        let mut stale = Browser {
            cookie: old_cookie.clone(),
        };
        let got = stale.send(node.http, "GET", "/session/attributes/x", b"");
        assert_eq!(got.status, 404, "{} still has the value", node.name);
        let fresh = stale.send(node.http, "GET", "/session", b"");
        assert_ne!(
            stale.session_id(),
            Some(old.clone()),
            "{} revived the session",
            node.name
        );
        assert_eq!(fresh.status, 200);
    }
}

/// How often the busy session is touched: well inside its 2 s, yet not on every probe.
const TOUCH_EVERY: Duration = Duration::from_millis(900);

#[test]
fn an_idle_session_expires_everywhere_while_one_touched_elsewhere_every_second_survives() {
    let (_c, nodes) = cluster("expiry", 3, &["--set", "sessions.max_inactive_s=2"]);
    let mut idle = Browser::new();
    idle.send(nodes[0].http, "PUT", "/session/attributes/x", b"idle");
    let mut busy = Browser::new();
    busy.send(nodes[0].http, "PUT", "/session/attributes/x", b"busy");
    // Touch the busy session on the other nodes, about once a second, until the idle one
    // (2 s, then the sweep's slack) is swept from every node: by then the busy one, as old,
    // has outlived its own 2 s only through touches made elsewhere.
    let mut touches = 0;
    let mut last_touch: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if last_touch.is_none_or(|at| at.elapsed() >= TOUCH_EVERY) {
            let got = busy.send(
                nodes[1 + touches % 2].http,
                "GET",
                "/session/attributes/x",
                b"",
            );
            assert_eq!(
                (got.status, got.text()),
                (200, "busy".to_string()),
                "touch {touches}"
            );
            touches += 1;
            last_touch = Some(Instant::now());
        }
        // Counting sessions touches none of them.
        let active: Vec<Option<serde_json::Value>> = nodes
            .iter()
            .map(|n| n.status().map(|s| s["sessions"]["active"].clone()))
            .collect();
        if active.iter().all(|a| a.as_ref().is_some_and(|a| *a == 1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle session was not swept from every node within 20 s; active sessions: {}",
            nodes
                .iter()
                .zip(&active)
                .map(|(n, a)| match a {
                    Some(a) => format!("{}: {a}", n.name),
                    None => format!("{}: no status", n.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    for node in &nodes {
        let mut probe = idle.clone();
        assert_eq!(
            probe
                .send(node.http, "GET", "/session/attributes/x", b"")
                .status,
            404,
            "idle on {}",
            node.name
        );
        let mut probe = busy.clone();
        let got = probe.send(node.http, "GET", "/session/attributes/x", b"");
        assert_eq!(
            (got.status, got.text()),
            (200, "busy".to_string()),
            "busy on {}",
            node.name
        );
    }
}

#[test]
fn concurrent_writes_of_one_attribute_from_two_nodes_converge() {
    let (_c, nodes) = cluster(
        "converge-writes",
        3,
        &["--set", "sessions.replication=async"],
    );
    let mut browser = Browser::new();
    browser.send(nodes[0].http, "PUT", "/session/attributes/x", b"start");
    let cookie = browser.cookie.clone();
    let (a, b) = (nodes[0].http, nodes[1].http);
    let writers: Vec<_> = [(a, "a"), (b, "b")]
        .into_iter()
        .map(|(addr, tag)| {
            let cookie = cookie.clone();
            std::thread::spawn(move || {
                let mut me = Browser { cookie };
                for i in 0..100 {
                    me.send(
                        addr,
                        "PUT",
                        "/session/attributes/x",
                        format!("{tag}{i}").as_bytes(),
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let read_all = || -> Option<Vec<String>> {
        let values: Vec<String> = nodes
            .iter()
            .map(|n| {
                let mut probe = Browser {
                    cookie: cookie.clone(),
                };
                probe
                    .send(n.http, "GET", "/session/attributes/x", b"")
                    .text()
            })
            .collect();
        values.iter().all(|v| *v == values[0]).then_some(values)
    };
    let values = wait_until(
        Duration::from_secs(10),
        "every node holds the same value",
        read_all,
    );
    assert!(
        values[0] == "a99" || values[0] == "b99",
        "the last write of one side wins, got {}",
        values[0]
    );
}

#[test]
fn a_fourth_node_joining_a_cluster_of_ten_thousand_sessions_gets_them_all() {
    let (c, nodes) = cluster("join10k", 3, &[]);
    let per_thread = 2_500;
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let addr = nodes[t % 3].http;
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let mut b = Browser::new();
                    let answer = b.send(
                        addr,
                        "PUT",
                        "/session/attributes/n",
                        format!("{t}-{i}").as_bytes(),
                    );
                    assert_eq!(answer.status, 204);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    for node in &nodes {
        assert_eq!(
            node.status().expect("status")["sessions"]["active"],
            10_000,
            "{}",
            node.name
        );
    }
    let args: Vec<&str> = FAST.to_vec();
    let joiner = c.node("n4", &args);
    wait_until(
        Duration::from_secs(30),
        "the new node holds every session",
        || {
            let s = joiner.status()?;
            (s["node"]["state"] == "ready" && s["sessions"]["active"] == 10_000).then_some(())
        },
    );
}

#[test]
fn a_node_killed_right_after_200_acknowledged_writes_loses_none_of_them() {
    let (_c, mut nodes) = cluster("kill200", 3, &[]);
    let victim = nodes.remove(0);
    let mut browsers = Vec::new();
    for i in 0..200 {
        let mut b = Browser::new();
        let answer = b.send(
            victim.http,
            "PUT",
            "/session/attributes/v",
            format!("w{i}").as_bytes(),
        );
        assert_eq!(answer.status, 204);
        browsers.push((b, format!("w{i}")));
    }
    victim.signal(Signal::SIGKILL);
    drop(victim);
    for node in &nodes {
        for (b, value) in &browsers {
            let mut probe = b.clone();
            let got = probe.send(node.http, "GET", "/session/attributes/v", b"");
            assert_eq!(
                (got.status, got.text()),
                (200, value.clone()),
                "lost on {}",
                node.name
            );
        }
    }
}

#[test]
fn a_session_from_another_node_is_served_here_and_its_cookie_moves_here() {
    let (_c, nodes) = cluster("failover", 2, &[]);
    let mut browser = Browser::new();
    browser.send(nodes[0].http, "PUT", "/session/attributes/x", b"kept");
    assert!(
        browser
            .cookie
            .as_deref()
            .is_some_and(|c| c.ends_with(".n1"))
    );
    let id = browser.session_id();
    let got = browser.send(nodes[1].http, "GET", "/session/attributes/x", b"");
    assert_eq!((got.status, got.text()), (200, "kept".to_string()));
    assert!(
        browser
            .cookie
            .as_deref()
            .is_some_and(|c| c.ends_with(".n2")),
        "{:?}",
        browser.cookie
    );
    assert_eq!(browser.session_id(), id, "same session, new route");
}

#[test]
fn a_killed_node_is_gone_from_the_others_in_milliseconds_through_its_broken_links() {
    // Long heartbeats: only the broken replication link can explain a fast removal.
    let c = Cluster::new("linkbreak");
    let slow = [
        "--set",
        "membership.heartbeat_ms=2000",
        "--set",
        "membership.drop_ms=10000",
    ];
    let a = c.node("a", &slow);
    let mut b = c.node("b", &slow);
    wait_converged(&[&a, &b], Duration::from_secs(10));
    // A write makes sure the links are up.
    let mut browser = Browser::new();
    wait_until(Duration::from_secs(10), "a is ready", || {
        (a.status()?["node"]["state"] == "ready").then_some(())
    });
    browser.send(a.http, "PUT", "/session/attributes/x", b"1");
    b.signal(Signal::SIGKILL);
    let _ = b.wait_exit(Duration::from_secs(5));
    let killed = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "a drops b", || {
        (a.members("") == Some(vec![])).then_some(())
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} with 2 s heartbeats"
    );
}
