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
