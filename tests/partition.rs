//! Multi-host tests: three "hosts" made of network namespaces on a Linux bridge (the host
//! harness of `tests/common/hosts.rs`), each running one real `deltacast node`. Cutting a
//! host's port on the switch makes a real partition (heartbeats and links both fail);
//! bringing it back up heals it.
//!
//! These tests need root (`ip netns`); without it, or where namespaces cannot be made, they
//! say why on stderr and pass. They never touch the root namespace's interfaces, routes or
//! firewall.

mod common;

use std::time::{Duration, Instant};

use common::hosts::{Hosts, settle};
use common::{Browser, FAST, wait_until};
use serde_json::Value;

/// Anti-entropy runs when a link (re)connects; the periodic round every 30 s is the worst
/// case, plus slack for a loaded machine.
const UNION_DEADLINE: Duration = Duration::from_secs(45);

/// Three hosts n1..n3, each running its node, all seeing each other; None when the
/// harness cannot run here (it said why).
fn three_connected(test: &str) -> Option<Hosts> {
    let mut bed = Hosts::new(test, &["n1", "n2", "n3"], FAST)?;
    for i in 0..3 {
        bed.start_node(i, &[]);
    }
    bed.wait_connected(
        &[0, 1, 2],
        Duration::from_secs(20),
        "the three hosts see each other",
    );
    Some(bed)
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
fn new_session(bed: &Hosts, i: usize, attribute: &str, value: &str) -> Browser {
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

fn put(bed: &Hosts, i: usize, browser: &mut Browser, attribute: &str, value: &str) {
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
    let Some(bed) = three_connected("partition") else {
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
    let Some(mut bed) = three_connected("hostkill") else {
        return;
    };
    let all = [0, 1, 2];
    let mut expects = Vec::new();
    for k in 0..30 {
        let value = format!("w{k}");
        let browser = new_session(&bed, k % 2, "v", &value);
        expects.push(expect(&browser, "v", Some(&value)));
    }

    let killed = bed.kill(2);
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

    bed.start_node(2, &[]);
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
