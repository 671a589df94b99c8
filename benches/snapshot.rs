//! Snapshot file figures (`sessions.snapshot_file`): the time to write every session of a
//! node at shutdown (encode, write, fsync, rename, fsync of the directory) and to read it
//! back at start (read, checksum, decode, merge into an empty store, remove), for 100 000
//! sessions of five attributes each (a user name, a 300-byte cart, a CSRF token, a locale
//! and a hit counter: about 450 attribute bytes). Target: under one second each.
//!
//! Run: `cargo bench --bench snapshot` (`-- --quick` for one run of 20 000 sessions;
//! `-- --sessions N` for another count).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deltacast::membership::NodeId;
use deltacast::node::snapshot::{self, Restore};
use deltacast::session::{Limits, SessionStore};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sessions = args
        .iter()
        .position(|a| a == "--sessions")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(if quick { 20_000 } else { 100_000 });
    let runs = if quick { 1 } else { 5 };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("sessions.snapshot");

    let now = deltacast::clock::now_ms();
    let store = filled(sessions, now);
    println!(
        "deltacast snapshot benchmark: {sessions} sessions, {} attribute bytes, {runs} run(s)",
        store.bytes()
    );
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let written = snapshot::write(&path, &store, "bench", "n1", now).expect("written");
        writes.push(started.elapsed());
        assert_eq!(written.sessions, sessions);
        size = written.bytes;

        let fresh = SessionStore::new(NodeId::from_u64(2), Limits::default(), 1800);
        let started = Instant::now();
        let restored = snapshot::restore(&path, &fresh, "bench", now + 1_000, 1800);
        reads.push(started.elapsed());
        match restored {
            Restore::Restored { sessions: n, .. } => assert_eq!(n, sessions),
            other => panic!("not restored: {other:?}"),
        }
        assert_eq!(fresh.len(), sessions);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "file size: {:.1} MiB ({} bytes per session)",
        size as f64 / 1048576.0,
        size / sessions.max(1)
    );
    println!("figure                     median      min      max   target");
    report("write (shutdown)", &mut writes);
    report("read + merge (start)", &mut reads);
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<22} {:>8.0} ms {:>5.0} ms {:>5.0} ms   < 1000 ms",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}

/// A store of `n` sessions as a shop makes them, through the store's own API.
fn filled(n: usize, now: u64) -> SessionStore {
    let store = SessionStore::new(NodeId::from_u64(1), Limits::default(), 1800);
    let cart = Bytes::from_static(
        br#"[{"sku":"A-1001","qty":2,"price":1999},{"sku":"B-2002","qty":1,"price":4999},{"sku":"C-3003","qty":5,"price":299},{"sku":"D-4004","qty":1,"price":12999},{"sku":"E-5005","qty":3,"price":799},{"sku":"F-6006","qty":1,"price":99}]"#,
    );
    for i in 0..n {
        store
            .update_or_create(None, now, |s| {
                s.set("user", Bytes::from(format!("user-{i:07}@example.com")))?;
                s.set("cart", cart.clone())?;
                s.set(
                    "csrf",
                    Bytes::from(format!("{:064x}", (i as u128) * 0x9e37_79b9_7f4a_7c15)),
                )?;
                s.set("locale", Bytes::from_static(b"en-GB"))?;
                s.set("hits", Bytes::from((i % 97).to_string()))
            })
            .expect("within limits")
            .value
            .expect("within limits");
    }
    store
}
