//! `sessions.snapshot_file` with real processes: a whole cluster stopped gracefully and
//! started again keeps every session and attribute; a damaged or cut file starts the node
//! empty and says so; `kill -9` writes nothing, and since a restored file is removed, a
//! crash after a restore does not bring back what changed since.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Browser, Cluster, FAST, NodeProc, exchange, wait_converged, wait_until};
use nix::sys::signal::Signal;

/// A directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(cluster: &Cluster) -> TempDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("snap-{}", cluster.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.snapshot"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node(cluster: &Cluster, name: &str, file: &Path) -> NodeProc {
    let set = format!("sessions.snapshot_file={}", file.display());
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--set", &set]);
    cluster.node(name, &args)
}

fn wait_ready(node: &NodeProc) {
    wait_until(Duration::from_secs(30), "the node is ready", || {
        (node.status()?["node"]["state"] == "ready").then_some(())
    });
}

/// SIGTERM, then the process must exit 0 within a generous bound.
fn stop(node: &mut NodeProc) {
    node.signal(Signal::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{} did not stop:\n{}", node.name, node.log_text()));
    assert!(status.success(), "{} exited {status:?}", node.name);
}

/// The value of attribute `name` of the session of `cookie` on `node` (None when the node
/// does not hold the session: it answers 404 and makes a new one).
fn attribute(node: &NodeProc, cookie: &str, name: &str) -> Option<String> {
    let answer = exchange(
        node.http,
        "GET",
        &format!("/session/attributes/{name}"),
        Some(cookie),
        b"",
    )?;
    (answer.status == 200).then(|| answer.text())
}

fn active(node: &NodeProc) -> Option<u64> {
    node.status()?["sessions"]["active"].as_u64()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A browser whose session on `at` holds `user` and a binary `cart`.
fn shopper(at: &NodeProc, user: &str) -> Browser {
    let mut b = Browser::new();
    assert_eq!(
        b.send(at.http, "PUT", "/session/attributes/user", user.as_bytes())
            .status,
        204
    );
    let cart: Vec<u8> = (0..=255u8).chain(user.bytes()).collect();
    assert_eq!(
        b.send(at.http, "PUT", "/session/attributes/cart", &cart)
            .status,
        204
    );
    b
}

#[test]
fn three_nodes_stopped_one_by_one_and_started_again_hold_every_session_and_attribute() {
    let c = Cluster::new("snap3");
    let dir = TempDir::new(&c);
    let names = ["n1", "n2", "n3"];
    let mut nodes: Vec<NodeProc> = names.iter().map(|n| node(&c, n, &dir.file(n))).collect();
    wait_converged(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(20));
    nodes.iter().for_each(wait_ready);

    let mut shoppers: Vec<(String, Browser)> = (0..30)
        .map(|i| {
            let user = format!("user-{i}");
            let b = shopper(&nodes[i % 3], &user);
            (user, b)
        })
        .collect();
    // A session that ends before the stop must not come back after it.
    let mut gone = shopper(&nodes[0], "gone");
    let gone_cookie = gone.cookie.clone().expect("a cookie");
    assert_eq!(
        gone.send(nodes[1].http, "POST", "/session/invalidate", b"")
            .status,
        204
    );

    // The maintenance stop: one node after the other, with writes in between that only
    // the nodes still up hold.
    stop(&mut nodes[0]);
    for i in 30..35 {
        let user = format!("user-{i}");
        let b = shopper(&nodes[1], &user);
        shoppers.push((user, b));
    }
    stop(&mut nodes[1]);
    stop(&mut nodes[2]);
    for (name, node) in names.iter().zip(&nodes) {
        let file = dir.file(name);
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        assert!(
            node.log_text()
                .contains("sessions written to the snapshot file"),
            "{name}:\n{}",
            node.log_text()
        );
    }

    let nodes: Vec<NodeProc> = names.iter().map(|n| node(&c, n, &dir.file(n))).collect();
    wait_converged(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(20));
    nodes.iter().for_each(wait_ready);
    for n in &nodes {
        wait_until(
            Duration::from_secs(30),
            &format!("{} holds all 35 sessions", n.name),
            || (active(n)? == 35).then_some(()),
        );
    }
    for n in &nodes {
        for (user, b) in &shoppers {
            let cookie = b.cookie.as_deref().expect("a cookie");
            assert_eq!(
                attribute(n, cookie, "user").as_deref(),
                Some(user.as_str()),
                "{} {user}",
                n.name
            );
            let cart: Vec<u8> = (0..=255u8).chain(user.bytes()).collect();
            let got = exchange(n.http, "GET", "/session/attributes/cart", Some(cookie), b"")
                .expect("an answer");
            assert_eq!((got.status, got.body), (200, cart), "{} {user}", n.name);
        }
        assert_eq!(attribute(n, &gone_cookie, "user"), None, "{}", n.name);
        let log = n.log_text();
        assert!(
            log.contains("sessions restored from the snapshot file; the file is removed"),
            "{}:\n{log}",
            n.name
        );
        assert!(!dir.file(&n.name).exists(), "{} kept its file", n.name);
    }
}

#[test]
fn a_damaged_a_cut_and_a_foreign_file_start_the_node_empty_and_it_says_so() {
    let c = Cluster::new("snapbad");
    let dir = TempDir::new(&c);
    let file = dir.file("n1");
    let mut first = node(&c, "n1", &file);
    wait_ready(&first);
    for i in 0..5 {
        shopper(&first, &format!("u{i}"));
    }
    stop(&mut first);
    let good = std::fs::read(&file).expect("the written file");
    assert!(good.starts_with(b"DCSNAPSH"));

    let mut flipped = good.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x40;
    let cut = good[..good.len() * 2 / 3].to_vec();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("flipped", flipped, "checksum mismatch"),
        ("cut", cut, "truncated"),
        (
            "foreign",
            b"[cluster]\nname = \"x\"\n".to_vec(),
            "bad magic",
        ),
    ];
    for (what, bytes, reason) in cases {
        std::fs::write(&file, &bytes).expect("write the bad file");
        let mut n = node(&c, "n1", &file);
        wait_ready(&n);
        assert_eq!(active(&n), Some(0), "{what}");
        let log = n.log_text();
        assert!(
            log.contains(
                "snapshot file is damaged and ignored; starting with no sessions of its own"
            ) && log.contains(reason),
            "{what}:\n{log}"
        );
        assert!(!log.contains("panicked"), "{what}:\n{log}");
        let damaged = dir.0.join("n1.snapshot.damaged");
        assert_eq!(
            std::fs::read(&damaged).expect("moved aside"),
            bytes,
            "{what}"
        );
        // It serves as any node does.
        let b = shopper(&n, "after");
        assert_eq!(
            attribute(&n, b.cookie.as_deref().expect("cookie"), "user").as_deref(),
            Some("after")
        );
        stop(&mut n);
    }
}

#[test]
fn kill_9_writes_nothing_and_a_crash_after_a_restore_brings_back_nothing_stale() {
    let c = Cluster::new("snapkill");
    let dir = TempDir::new(&c);
    let file = dir.file("n1");
    let mut a = node(&c, "n1", &file);
    wait_ready(&a);
    let mut b = shopper(&a, "ada");
    let cookie = b.cookie.clone().expect("a cookie");
    stop(&mut a);
    assert!(file.exists());

    // Restored, then changed: the user logs out.
    let mut a = node(&c, "n1", &file);
    wait_ready(&a);
    assert_eq!(attribute(&a, &cookie, "user").as_deref(), Some("ada"));
    assert!(!file.exists(), "a restored file is removed");
    assert_eq!(
        b.send(a.http, "POST", "/session/invalidate", b"").status,
        204
    );
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(10)).expect("killed");
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("the dir")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert!(left.is_empty(), "kill -9 wrote {left:?}");

    // After the crash: no file, so the logged-out session stays logged out.
    let a = node(&c, "n1", &file);
    wait_ready(&a);
    assert!(
        a.log_text().contains("no snapshot file to restore"),
        "{}",
        a.log_text()
    );
    assert_eq!(attribute(&a, &cookie, "user"), None);
    assert!(
        active(&a) <= Some(1),
        "at most the session the probe itself made"
    );
}

#[test]
fn a_snapshot_file_in_a_missing_directory_fails_the_start_with_one_line() {
    let c = Cluster::new("snapdir");
    let dir = TempDir::new(&c);
    let file = dir.0.join("no-such-dir").join("s");
    let set = format!("sessions.snapshot_file={}", file.display());
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--set", &set]);
    let Err((status, log)) = NodeProc::try_spawn(&c, "n1", 0, &args, &[]) else {
        panic!("a node started with a snapshot file it cannot write");
    };
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(
        log.contains("sessions.snapshot_file: cannot create"),
        "{log}"
    );
}
