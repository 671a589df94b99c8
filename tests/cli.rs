//! The command line: bad flags and values exit non-zero with one clear line; `status`
//! prints a table or JSON.

mod common;

use std::time::Duration;

use common::{Cluster, run_cli, wait_converged};

/// The one line of an error: non-zero exit, a single non-empty stderr line naming `key`.
fn assert_one_line_error(args: &[&str], key: &str) {
    let (code, _, stderr) = run_cli(args);
    assert!(
        matches!(code, Some(c) if c != 0),
        "{args:?} exited {code:?}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?} printed {stderr:?}");
    assert!(
        lines[0].contains(key),
        "{args:?}: {:?} does not name {key}",
        lines[0]
    );
}

#[test]
fn bad_values_exit_non_zero_with_one_line_naming_the_key() {
    // --set applies after the flags (SPEC: file, flags, --set), so it decides here.
    assert_one_line_error(
        &["node", "--name", "fine", "--set", "node.name=has.dot"],
        "node.name",
    );
    assert_one_line_error(
        &["node", "--set", "membership.heartbeat_ms=abc"],
        "membership.heartbeat_ms",
    );
    assert_one_line_error(
        &["node", "--set", "membership.heartbeet_ms=5"],
        "membership.heartbeet_ms",
    );
    assert_one_line_error(&["node", "--http", "not-an-address"], "node.http");
    assert_one_line_error(
        &["node", "--multicast", "127.0.0.1:45564"],
        "membership.multicast",
    );
    assert_one_line_error(&["node", "--name", "has.dot"], "node.name");
    assert_one_line_error(
        &["node", "--set", "sessions.replication=maybe"],
        "sessions.replication",
    );
    assert_one_line_error(&["node", "--set", "nodot"], "--set");
    assert_one_line_error(
        &["up", "--set", "membership.drop_ms=100"],
        "membership.drop_ms",
    );
}

#[test]
fn an_unknown_flag_exits_non_zero_and_says_which() {
    let (code, _, stderr) = run_cli(&["node", "--bogus"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--bogus"), "{stderr}");
    let (code, _, _) = run_cli(&["up", "--nodes", "0"]);
    assert_eq!(code, Some(2));
}

#[test]
fn a_bad_config_file_names_the_file_or_the_key() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let unknown = dir.join("cli-unknown-key.toml");
    std::fs::write(&unknown, "[membership]\nheartbeat = 5\n").expect("write");
    assert_one_line_error(
        &["node", "--config", unknown.to_str().expect("path")],
        "membership.heartbeat",
    );
    let syntax = dir.join("cli-syntax.toml");
    std::fs::write(&syntax, "[membership\n").expect("write");
    assert_one_line_error(
        &["node", "--config", syntax.to_str().expect("path")],
        "cli-syntax.toml",
    );
    assert_one_line_error(
        &["node", "--config", "/nonexistent/deltacast.toml"],
        "/nonexistent/deltacast.toml",
    );
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let c = Cluster::new("inuse");
    let (code, _, stderr) = run_cli(&[
        "node",
        "--cluster",
        &c.name,
        "--multicast",
        &c.multicast,
        "--replication",
        "127.0.0.1:0",
        "--http",
        &addr,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&addr) && stderr.contains("http"),
        "{stderr}"
    );
}

#[test]
fn status_prints_a_table_of_the_node_and_its_members_and_raw_json_on_request() {
    let c = Cluster::new("statuscmd");
    let fast = &[
        "--set",
        "membership.heartbeat_ms=100",
        "--set",
        "membership.drop_ms=1000",
    ];
    let a = c.node("alpha", fast);
    let b = c.node("beta", fast);
    wait_converged(&[&a, &b], Duration::from_secs(10));
    let url = format!("http://{}", a.http);

    let (code, stdout, stderr) = run_cli(&["status", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("NAME"))
        .expect("a header row");
    for column in ["ROUTE", "HTTP", "REPLICATION", "STATE", "LAST HEARD"] {
        assert!(
            lines[header].contains(column),
            "{column} in {}",
            lines[header]
        );
    }
    assert!(lines[header + 1].starts_with("alpha *") && lines[header + 1].contains("ready"));
    let beta = lines[header + 2];
    assert!(
        beta.starts_with("beta") && beta.contains("alive") && beta.contains(&b.http.to_string()),
        "{beta}"
    );
    assert!(beta.contains(&b.replication.to_string()), "{beta}");

    let (code, stdout, _) = run_cli(&["status", "--json", &url]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("raw JSON");
    assert_eq!(json["node"]["name"], "alpha");

    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let (code, _, stderr) = run_cli(&["status", &dead]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

/// A server that answers every request with `head` and then sends `chunk` every `pause`
/// until the client goes away; the number of body bytes it got out, in all.
struct HostileServer {
    addr: std::net::SocketAddr,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HostileServer {
    fn start(head: &'static str, chunk: &'static [u8], pause: Duration) -> HostileServer {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent = std::sync::Arc::new(AtomicU64::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (counter, stopped) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let (counter, stopped) = (counter.clone(), stopped.clone());
                std::thread::spawn(move || {
                    let mut request = [0u8; 4096];
                    let _ = conn.read(&mut request);
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    while !stopped.load(Ordering::Relaxed) && conn.write_all(chunk).is_ok() {
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                });
            }
        });
        HostileServer { addr, sent, stop }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so its thread ends.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

#[test]
fn status_reads_at_most_a_megabyte_of_a_server_that_declares_a_terabyte() {
    static MIB: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let server = HostileServer::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n",
        &MIB,
        Duration::ZERO,
    );
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run_cli(&["status", &format!("http://{}", server.addr)]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("more than 1048576 bytes"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // What left the server is what the client read, plus what the sockets' buffers hold
    // (a few MiB on loopback); unbounded reading took gigabytes in these seconds.
    let sent = server.sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 64 * 1024 * 1024, "the client took {sent} bytes");
}

#[test]
fn status_gives_up_on_a_server_that_never_ends_its_answer() {
    let server = HostileServer::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1\r\n \r\n",
        Duration::from_millis(200),
    );
    let started = std::time::Instant::now();
    let (code, _, stderr) = run_cli(&["status", &format!("http://{}", server.addr)]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in time"), "{stderr}");
    // One deadline of 5 s for the whole command (both of its questions); before, each
    // question had 5 s of its own.
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert!(took < Duration::from_millis(9500), "{took:?}");
}

#[test]
fn status_of_an_out_of_range_port_is_an_invalid_url_not_a_refused_connection() {
    let (code, _, stderr) = run_cli(&["status", "http://127.0.0.1:99999"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("invalid URL"), "{stderr}");
}
