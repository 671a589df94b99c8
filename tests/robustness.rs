//! Bad input of any kind is dropped and counted, never a panic, never a member added.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Cluster, FAST, group_sender, wait_converged, wait_until};
use deltacast::wire;
use rand::{Rng, SeedableRng};

fn wait_counted(nodes: &[&common::NodeProc], at_least: u64) {
    let what = format!("{at_least} garbage datagrams are counted");
    wait_until(Duration::from_secs(10), &what, || {
        nodes
            .iter()
            .all(|n| {
                let d = n.status().and_then(|s| s["membership"]["dropped"].as_u64());
                if d.is_some_and(|d| d + 3 >= at_least && d < at_least) {
                    eprintln!("{}: dropped {d:?} of {at_least}", n.name);
                }
                d.is_some_and(|d| d >= at_least)
            })
            .then_some(())
    });
}

#[test]
fn three_hundred_garbage_datagrams_change_nothing_and_are_counted() {
    let c = Cluster::new("garbage");
    let a = c.node("a", FAST);
    let b = c.node("b", FAST);
    wait_converged(&[&a, &b], Duration::from_secs(10));
    let before = a.status().expect("status")["membership"]["dropped"]
        .as_u64()
        .expect("dropped");

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let valid = wire::encode_heartbeat(
        &c.name,
        &common::forged_heartbeat("intruder", 0xbad),
        Duration::from_millis(500),
        None,
    );
    let foreign = wire::encode_heartbeat(
        "another-cluster",
        &common::forged_heartbeat("stranger", 0xbad),
        Duration::from_millis(500),
        None,
    );
    let sender = group_sender();
    let group = c.group();
    let mut sent = 0u64;
    for i in 0..300 {
        let datagram: Vec<u8> = match i % 6 {
            // Random bytes of random length.
            0 => (0..rng.random_range(0..1200))
                .map(|_| rng.random())
                .collect(),
            // Our magic, then garbage.
            1 => {
                let mut d = wire::MAGIC.to_vec();
                d.extend((0..rng.random_range(0..200)).map(|_| rng.random::<u8>()));
                d
            }
            // A valid heartbeat cut short.
            2 => valid[..rng.random_range(0..valid.len() - 1)].to_vec(),
            // Oversized: a valid heartbeat padded past the limit.
            3 => {
                let mut d = valid.clone();
                d.resize(wire::MAX_DATAGRAM + 1 + rng.random_range(0..4_000), 0);
                d
            }
            // Another cluster's well-formed heartbeat.
            4 => foreign.clone(),
            // A valid heartbeat with one byte flipped in the body.
            _ => {
                let mut d = valid.clone();
                let at = rng.random_range(4..d.len());
                d[at] ^= 0xff;
                // A flip may leave a decodable message; keep only the ones that fail.
                if wire::decode_datagram(&d, &c.name, None).is_ok() {
                    d.truncate(3);
                }
                d
            }
        };
        sender.send_to(&datagram, group).expect("send garbage");
        sent += 1;
        // In batches, so a loaded machine's socket buffers never overflow: every datagram
        // must reach the nodes for the count below to be exact.
        if sent % 20 == 0 {
            wait_counted(&[&a, &b], before + sent);
        }
    }
    wait_counted(&[&a, &b], before + sent);
    let status = a.status().expect("a still answers");
    assert_eq!(
        status["membership"]["dropped"].as_u64(),
        Some(before + sent),
        "exactly the garbage was dropped"
    );
    assert!(
        status["membership"]["dropped_oversized"]
            .as_u64()
            .unwrap_or(0)
            >= 50
    );
    assert!(
        status["membership"]["dropped_foreign_cluster"]
            .as_u64()
            .unwrap_or(0)
            >= 50
    );
    // Nothing added, nothing lost (a loaded machine may briefly make one suspect).
    assert_eq!(a.members(""), Some(vec!["b".to_string()]));
    assert_eq!(b.members(""), Some(vec!["a".to_string()]));
    // Logged once per sender per interval, not 300 times.
    let warnings = a
        .log_text()
        .lines()
        .filter(|l| l.contains("dropped datagram"))
        .count();
    assert!(warnings <= 2, "{warnings} log lines for one sender");
    let metrics = common::http(a.http, "GET", "/metrics", b"").expect("metrics");
    let text = String::from_utf8_lossy(&metrics.1);
    assert!(text.contains("deltacast_datagrams_dropped_total{reason=\"oversized\"}"));
}

#[test]
fn garbage_on_the_replication_port_is_counted_and_the_node_keeps_working() {
    let c = Cluster::new("tcpgarbage");
    let a = c.node("a", FAST);
    let b = c.node("b", FAST);
    wait_converged(&[&a, &b], Duration::from_secs(10));
    let mut browser = common::Browser::new();
    assert_eq!(
        browser
            .send(a.http, "PUT", "/session/attributes/x", b"kept")
            .status,
        204
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..20 {
        let Ok(mut s) = TcpStream::connect(a.replication) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let bytes: Vec<u8> = match i % 3 {
            // A length prefix beyond the frame limit.
            0 => vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            // A plausible length followed by garbage.
            1 => {
                let mut d = vec![0, 0, 0, 16];
                d.extend((0..16).map(|_| rng.random::<u8>() | 0x80));
                d
            }
            // An HTTP request on the wrong port.
            _ => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        };
        let _ = s.write_all(&bytes);
        // The node closes the connection instead of answering.
        let mut buf = [0u8; 64];
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "garbage got an answer"
        );
    }
    wait_until(
        Duration::from_secs(5),
        "replication errors are counted",
        || {
            let errors = a.status()?["replication"]["errors"].as_u64()?;
            (errors >= 20).then_some(())
        },
    );
    // Still a member, still answering verifications, sessions untouched and still replicated.
    wait_converged(&[&a, &b], Duration::from_secs(10));
    for node in [&a, &b] {
        let got = browser
            .clone()
            .send(node.http, "GET", "/session/attributes/x", b"");
        assert_eq!(
            (got.status, got.text()),
            (200, "kept".to_string()),
            "on {}",
            node.name
        );
        assert_eq!(node.status().expect("status")["sessions"]["active"], 1);
    }
    assert_eq!(
        browser
            .send(b.http, "PUT", "/session/attributes/x", b"after")
            .status,
        204
    );
    let got = browser.send(a.http, "GET", "/session/attributes/x", b"");
    assert_eq!(got.text(), "after");
}

#[test]
fn unknown_paths_and_methods_get_404_and_405() {
    let c = Cluster::new("http404");
    let a = c.node("a", FAST);
    wait_until(Duration::from_secs(10), "the node answers", || a.status());
    assert_eq!(
        common::http(a.http, "GET", "/nope", b"").map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        common::http(a.http, "POST", "/status", b"x").map(|r| r.0),
        Some(405)
    );
    assert_eq!(
        common::http(a.http, "DELETE", "/metrics", b"").map(|r| r.0),
        Some(405)
    );
    let (code, body) = common::http(a.http, "GET", "/metrics", b"").expect("metrics");
    assert_eq!(code, 200);
    let text = String::from_utf8(body).expect("utf-8");
    assert!(text.contains("# TYPE deltacast_members gauge"));
    assert!(text.contains("deltacast_heartbeats_sent_total "));
}
