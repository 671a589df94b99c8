//! The AJP/1.3 connector of a real node: (a) driven by a raw AJP client (tests/common/ajp)
//! packet by packet, (b) behind a real Apache httpd with mod_proxy_ajp and with mod_jk.

mod common;

use std::io::Write;
use std::time::Duration;

use common::ajp::{AjpClient, Forward};
use common::apache::Apache;
use common::{Cluster, NodeProc, exchange, wait_converged, wait_until};
use nix::sys::signal::Signal;

const SECRET: &str = "s3cret-for-tests";

fn ajp_node(cluster: &Cluster, name: &str, extra: &[&str]) -> NodeProc {
    let mut args = vec![
        "--ajp",
        "127.0.0.1:0",
        "--set",
        "ajp.secret=s3cret-for-tests",
        "--set",
        "sessions.max_value_bytes=2097152",
        "--set",
        "membership.heartbeat_ms=100",
        "--set",
        "membership.drop_ms=1000",
    ];
    args.extend_from_slice(extra);
    cluster.node(name, &args)
}

fn ajp_status(node: &NodeProc) -> serde_json::Value {
    node.status().expect("the node answers /status")["ajp"].clone()
}

// ---- (a) a raw AJP client ---------------------------------------------------------------

#[test]
fn a_node_serves_its_endpoints_over_ajp_and_keeps_the_connection() {
    let cluster = Cluster::new("ajp-serve");
    let node = ajp_node(&cluster, "n1", &[]);
    let addr = node.ajp.expect("the node reports node.ajp");
    let mut client = AjpClient::connect(addr);

    let first = client
        .request(&Forward::get("/", Some(SECRET)))
        .expect("an answer");
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.reuse, "the connection is kept");
    assert!(
        first.text().contains("<td id=\"hits\">1</td>"),
        "{}",
        first.text()
    );
    let cookie = first.set_cookie().expect("a session cookie");
    assert!(
        cookie.starts_with("JSESSIONID=") && cookie.ends_with(".n1"),
        "{cookie}"
    );
    assert_eq!(
        first
            .header("content-length")
            .map(|l| l.parse::<usize>().ok()),
        Some(Some(first.body.len()))
    );

    // A CPing between requests, then the same session on the same connection.
    assert!(client.cping(), "CPing answered by CPong");
    let mut second = Forward::get("/", Some(SECRET)).cookie(Some(&cookie));
    second.route = Some("n1".into());
    second.req_attributes = vec![("AJP_REMOTE_PORT".into(), "50000".into())];
    let second = client.request(&second).expect("an answer");
    assert_eq!(second.status, 200);
    assert!(
        second.text().contains("<td id=\"hits\">2</td>"),
        "{}",
        second.text()
    );
    assert_eq!(
        second.set_cookie(),
        None,
        "the cookie names this node already"
    );

    // The query string attribute reaches the router; an unknown path is the router's 404.
    let mut query = Forward::get("/session", Some(SECRET)).cookie(Some(&cookie));
    query.query = Some("x=1".into());
    let doc = client.request(&query).expect("an answer");
    assert_eq!(doc.status, 200);
    assert!(doc.text().contains("\"hits\":\"2\""), "{}", doc.text());
    let missing = client
        .request(&Forward::get("/nowhere", Some(SECRET)))
        .expect("an answer");
    assert_eq!(missing.status, 404);
    assert!(missing.reuse);

    let ajp = ajp_status(&node);
    assert_eq!(ajp["listen"], addr.to_string());
    assert_eq!(ajp["requests"], 4);
    assert_eq!(ajp["errors"], 0);
    let metrics = exchange(node.http, "GET", "/metrics", None, b"").expect("metrics");
    assert!(
        metrics.text().contains("deltacast_ajp_requests_total 4\n"),
        "{}",
        metrics.text()
    );
}

#[test]
fn a_request_body_streams_through_get_body_chunk_and_a_large_answer_in_chunks() {
    let cluster = Cluster::new("ajp-body");
    let node = ajp_node(&cluster, "n1", &[]);
    let mut client = AjpClient::connect(node.ajp.expect("ajp"));
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let put = client
        .request(&Forward::put(
            "/session/attributes/blob",
            Some(SECRET),
            &body,
        ))
        .expect("an answer");
    assert_eq!(put.status, 204, "{}", put.text());
    assert!(put.reuse);
    // 200 000 bytes in chunks of at most 8186: the first comes with the request.
    assert!(put.body_asks >= 200_000 / 8186, "{} asks", put.body_asks);
    let cookie = put.set_cookie().expect("a session was made");

    let get = client
        .request(&Forward::get("/session/attributes/blob", Some(SECRET)).cookie(Some(&cookie)))
        .expect("an answer");
    assert_eq!(get.status, 200);
    assert!(get.body == body, "the value comes back whole");
    assert!(get.largest_chunk <= 8192 - 4, "chunks fit the packet size");
    assert_eq!(
        get.body_asks, 0,
        "a GET without a body is not asked for one"
    );
}

#[test]
fn a_missing_or_wrong_secret_gets_403_and_changes_nothing() {
    let cluster = Cluster::new("ajp-secret");
    let node = ajp_node(&cluster, "n1", &[]);
    let addr = node.ajp.expect("ajp");
    for secret in [
        None,
        Some("wrong"),
        Some("s3cret-for-test"),
        Some("s3cret-for-tests!"),
    ] {
        let mut client = AjpClient::connect(addr);
        let answer = client
            .request(&Forward::put("/session/attributes/a", secret, b"value"))
            .expect("an answer");
        assert_eq!(answer.status, 403, "secret {secret:?}");
        assert_eq!(answer.set_cookie(), None);
        assert!(!answer.reuse, "the connection closes after a refusal");
        assert!(client.closed());
    }
    let status = node.status().expect("status");
    assert_eq!(status["sessions"]["active"], 0, "nothing was made");
    assert_eq!(status["sessions"]["store"], "replicated", "{status}");
    assert_eq!(status["sessions"]["store_errors"], 0, "{status}");
    assert_eq!(status["ajp"]["requests"], 4);
    assert_eq!(status["ajp"]["errors"], 0);
}

#[test]
fn a_request_attribute_outside_the_allow_list_is_refused() {
    let cluster = Cluster::new("ajp-attr");
    let node = ajp_node(&cluster, "n1", &[]);
    let mut client = AjpClient::connect(node.ajp.expect("ajp"));
    // The Ghostcat request: a file to include, named by request attributes.
    let mut ghostcat = Forward::get("/", Some(SECRET));
    ghostcat.req_attributes = vec![(
        "javax.servlet.include.request_uri".into(),
        "/WEB-INF/web.xml".into(),
    )];
    let answer = client.request(&ghostcat).expect("an answer");
    assert_eq!(answer.status, 403);
    assert_eq!(node.status().expect("status")["sessions"]["active"], 0);
}

#[test]
fn packets_that_do_not_decode_close_the_connection_and_are_counted() {
    let cluster = Cluster::new("ajp-garbage");
    let node = ajp_node(&cluster, "n1", &[]);
    let addr = node.ajp.expect("ajp");
    // HTTP spoken to the AJP port.
    let mut http = AjpClient::connect(addr);
    http.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert!(http.closed(), "closed on a bad magic");
    // A packet longer than the packet size.
    let mut big = AjpClient::connect(addr);
    big.stream
        .write_all(&[0x12, 0x34, 0xFF, 0xFF, 0x02])
        .expect("send");
    assert!(big.closed(), "closed on an oversized packet");
    // A forward request cut short inside a whole packet: answered 400, then closed.
    let mut cut = AjpClient::connect(addr);
    let mut packet = common::ajp::forward_packet(&Forward::get("/", Some(SECRET)));
    packet.truncate(20);
    let len = (packet.len() - 4) as u16;
    packet[2..4].copy_from_slice(&len.to_be_bytes());
    cut.stream.write_all(&packet).expect("send");
    let answer = cut.read_packet().expect("an answer");
    assert_eq!(&answer[..3], &[0x04, 0x01, 0x90], "send headers with 400");
    // The node still serves, and counted each.
    let mut good = AjpClient::connect(addr);
    assert!(good.cping());
    wait_until(Duration::from_secs(10), "three errors counted", || {
        (ajp_status(&node)["errors"] == 3).then_some(())
    });
    let log = node.log_text();
    assert!(log.contains("AJP packet did not decode"), "{log}");
}

#[test]
fn the_connector_needs_a_secret_unless_told_otherwise_and_is_null_when_off() {
    let cluster = Cluster::new("ajp-config");
    let (code, _, stderr) = common::run_cli(&[
        "node",
        "--cluster",
        &cluster.name,
        "--multicast",
        &cluster.multicast,
        "--http",
        "127.0.0.1:0",
        "--replication",
        "127.0.0.1:0",
        "--ajp",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("ajp.secret"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let plain = cluster.node("n1", common::FAST);
    assert_eq!(plain.ajp, None);
    assert!(plain.status().expect("status")["ajp"].is_null());
    let open = cluster.node(
        "n2",
        &["--ajp", "127.0.0.1:0", "--set", "ajp.secret_required=false"],
    );
    let mut client = AjpClient::connect(open.ajp.expect("ajp"));
    let answer = client.request(&Forward::get("/", None)).expect("an answer");
    assert_eq!(answer.status, 200);
}

#[test]
fn a_larger_packet_size_carries_larger_chunks_both_ways() {
    let cluster = Cluster::new("ajp-packet");
    let node = ajp_node(&cluster, "n1", &["--set", "ajp.packet_size=65536"]);
    let mut client = AjpClient::connect(node.ajp.expect("ajp"));
    client.chunk = 65536 - 6;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
    let put = client
        .request(&Forward::put("/session/attributes/v", Some(SECRET), &body))
        .expect("an answer");
    assert_eq!(put.status, 204, "{}", put.text());
    assert!(
        put.body_asks <= 300_000 / 8186,
        "{} asks: larger chunks asked for",
        put.body_asks
    );
    let cookie = put.set_cookie().expect("a session");
    let get = client
        .request(&Forward::get("/session/attributes/v", Some(SECRET)).cookie(Some(&cookie)))
        .expect("an answer");
    assert!(get.body == body);
    assert!(
        get.largest_chunk > 8192,
        "chunks of up to 64 KiB: {}",
        get.largest_chunk
    );
    assert!(get.largest_chunk <= 65536 - 4);
}

#[test]
fn a_node_with_an_idle_ajp_connection_stops_gracefully() {
    let cluster = Cluster::new("ajp-stop");
    let mut node = ajp_node(&cluster, "n1", &[]);
    let mut client = AjpClient::connect(node.ajp.expect("ajp"));
    let answer = client
        .request(&Forward::get("/", Some(SECRET)))
        .expect("an answer");
    assert!(answer.reuse);
    // The connection stays open and idle, as a front end's pool keeps it.
    node.signal(Signal::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(20))
        .expect("the node stopped");
    assert_eq!(status.code(), Some(0), "{}", node.log_text());
    assert!(client.closed(), "the idle connection was closed");
}

// ---- (b) a real Apache httpd in front ----------------------------------------------------

/// Which node answered the test page, and its hit count.
fn page(text: &str) -> (String, u64) {
    let field = |id: &str| {
        let start = format!("<td id=\"{id}\">");
        let at = text.find(&start).map(|i| i + start.len())?;
        let end = text[at..].find("</td>")?;
        Some(text[at..at + end].to_string())
    };
    let node = field("node").unwrap_or_default();
    let hits = field("hits").and_then(|h| h.parse().ok()).unwrap_or(0);
    (node, hits)
}

/// Two nodes with connectors, converged.
fn two_nodes(test: &str) -> (Cluster, NodeProc, NodeProc) {
    let cluster = Cluster::new(test);
    let n1 = ajp_node(&cluster, "n1", &[]);
    let n2 = ajp_node(&cluster, "n2", &[]);
    wait_converged(&[&n1, &n2], Duration::from_secs(20));
    (cluster, n1, n2)
}

/// Through `front`: sticky by route, a 1 MB PUT, the session kept when its node is
/// killed (the route moves), and a wrong secret refused (`/wrong/` goes to n1 with one).
fn front_end_checks(
    front: std::net::SocketAddr,
    n1: NodeProc,
    n2: NodeProc,
    logs: &dyn Fn() -> String,
) {
    let mut cookie: Option<String> = None;
    let send = |method: &str, path: &str, body: &[u8], cookie: &mut Option<String>| {
        let answer = exchange(front, method, path, cookie.as_deref(), body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer\n{}", logs()));
        if let Some(c) = &answer.set_cookie {
            *cookie = Some(c.clone());
        }
        answer
    };
    let first = send("GET", "/", b"", &mut cookie);
    assert_eq!(first.status, 200, "{}\n{}", first.text(), logs());
    let (sticky, hits) = page(&first.text());
    assert_eq!(hits, 1);
    let route = cookie
        .clone()
        .and_then(|c| c.rsplit('.').next().map(str::to_string));
    assert_eq!(
        route.as_deref(),
        Some(sticky.as_str()),
        "the cookie names the node"
    );
    for i in 2..=6 {
        let answer = send("GET", "/", b"", &mut cookie);
        assert_eq!(page(&answer.text()), (sticky.clone(), i), "sticky by route");
    }

    // A 1 MB body through the front end, and back.
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 253) as u8).collect();
    let put = send("PUT", "/session/attributes/big", &big, &mut cookie);
    assert_eq!(put.status, 204, "{}\n{}", put.text(), logs());
    let back = send("GET", "/session/attributes/big", b"", &mut cookie);
    assert_eq!(back.status, 200);
    assert!(
        back.body == big,
        "the 1 MB value comes back whole ({} bytes)",
        back.body.len()
    );

    // The front end's route to n1 with a wrong secret: refused, nothing made.
    let before = n1.status().expect("status")["sessions"]["active"].clone();
    let mut none = None;
    let wrong = send("PUT", "/wrong/session/attributes/x", b"v", &mut none);
    assert_eq!(wrong.status, 403, "{}\n{}", wrong.text(), logs());
    assert_eq!(none, None);
    assert_eq!(n1.status().expect("status")["sessions"]["active"], before);
    assert_eq!(
        n1.status().expect("status")["ajp"]["errors"],
        0,
        "{}",
        logs()
    );

    // The sticky node dies: the other serves the session and the route moves.
    let (mut dead, alive) = if sticky == "n1" { (n1, n2) } else { (n2, n1) };
    dead.signal(Signal::SIGKILL);
    dead.wait_exit(Duration::from_secs(10))
        .expect("the node died");
    let after = send("GET", "/", b"", &mut cookie);
    assert_eq!(after.status, 200, "{}\n{}", after.text(), logs());
    assert_eq!(
        page(&after.text()),
        (alive.name.clone(), 7),
        "the session is kept"
    );
    let moved = cookie.clone().unwrap_or_default();
    assert!(
        moved.ends_with(&format!(".{}", alive.name)),
        "the route moved: {moved}"
    );
    let again = send("GET", "/", b"", &mut cookie);
    assert_eq!(page(&again.text()), (alive.name.clone(), 8));
    let back = send("GET", "/session/attributes/big", b"", &mut cookie);
    assert!(back.body == big, "the 1 MB value survived its node");
}

/// The mod_proxy_ajp configuration of docs/front-ends.md (AJP).
fn mod_proxy_ajp_config(n1: &NodeProc, n2: &NodeProc, secret: &str) -> String {
    let a1 = n1.ajp.expect("ajp");
    let a2 = n2.ajp.expect("ajp");
    format!(
        "<Proxy \"balancer://nodes\">\n\
         \x20 BalancerMember \"ajp://127.0.0.1:{p1}\" route=n1 secret={secret}\n\
         \x20 BalancerMember \"ajp://127.0.0.1:{p2}\" route=n2 secret={secret}\n\
         \x20 ProxySet stickysession=JSESSIONID|jsessionid\n\
         </Proxy>\n\
         ProxyPass \"/wrong/\" \"ajp://localhost:{p1}/\" secret=not-the-secret\n\
         ProxyPass \"/\" \"balancer://nodes/\"\n",
        p1 = a1.port(),
        p2 = a2.port(),
    )
}

#[test]
fn apache_mod_proxy_ajp_fronts_two_nodes_sticky_with_bodies_failover_and_the_secret() {
    let (_cluster, n1, n2) = two_nodes("ajp-mod-proxy");
    let Some(apache) = Apache::new()
        .modules(&[
            "proxy",
            "proxy_ajp",
            "proxy_balancer",
            "slotmem_shm",
            "lbmethod_byrequests",
        ])
        .config(&mod_proxy_ajp_config(&n1, &n2, SECRET))
        .start()
    else {
        return;
    };
    let addr = apache.addr();
    let logs = || {
        let jk = std::fs::read_to_string(apache.dir().join("mod_jk.log")).unwrap_or_default();
        format!("{}\n--- mod_jk.log\n{jk}", apache.logs())
    };
    front_end_checks(addr, n1, n2, &logs);
}

/// The mod_jk workers.properties of docs/front-ends.md (AJP).
fn workers_properties(n1: &NodeProc, n2: &NodeProc, secret: &str) -> String {
    let mut text = String::from("worker.list=lb,wrong\n");
    for node in [n1, n2] {
        let name = &node.name;
        let port = node.ajp.expect("ajp").port();
        text.push_str(&format!(
            "worker.{name}.type=ajp13\nworker.{name}.host=127.0.0.1\nworker.{name}.port={port}\n\
             worker.{name}.route={name}\nworker.{name}.secret={secret}\n"
        ));
    }
    text.push_str(
        "worker.lb.type=lb\nworker.lb.balance_workers=n1,n2\nworker.lb.sticky_session=true\n",
    );
    text.push_str(&format!(
        "worker.wrong.type=ajp13\nworker.wrong.host=localhost\nworker.wrong.port={}\nworker.wrong.secret=not-the-secret\n",
        n1.ajp.expect("ajp").port()
    ));
    text
}

#[test]
fn apache_mod_jk_fronts_two_nodes_sticky_with_bodies_failover_and_the_secret() {
    let (_cluster, n1, n2) = two_nodes("ajp-mod-jk");
    let Some(apache) = Apache::new()
        .modules(&["jk"])
        .file("workers.properties", &workers_properties(&n1, &n2, SECRET))
        .config(
            "JkWorkersFile \"@DIR@/workers.properties\"\n\
             JkShmFile \"@DIR@/jk.shm\"\n\
             JkLogFile \"@DIR@/mod_jk.log\"\n\
             JkLogLevel info\n\
             JkMount /wrong/* wrong\n\
             JkMount /* lb\n",
        )
        .start()
    else {
        return;
    };
    let addr = apache.addr();
    let logs = || {
        let jk = std::fs::read_to_string(apache.dir().join("mod_jk.log")).unwrap_or_default();
        format!("{}\n--- mod_jk.log\n{jk}", apache.logs())
    };
    front_end_checks(addr, n1, n2, &logs);
}
