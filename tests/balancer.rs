//! The balancer in front of real nodes: distribution by weights, sticky routes, failover
//! on kill -9 without a failed request, discovery from the heartbeats, 503 without members;
//! and in front of members the tests play (`common::fake_member`), for what real nodes
//! would not do, seen byte for byte (`common::raw_http`).

mod common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fake_member::{
    Behaviour, CHUNKED_ANSWER, ForeignBackend, IdShape, RawMember, echo_member, slow_member,
    upgrading_member,
};
use common::raw_http::{
    KeepAlive, assert_one_line_answer, raw_exchange, read_answers, read_until_closed, two_writes,
};
use common::{BalancerProc, Browser, Cluster, FAST, NodeProc, exchange, free_port, wait_until};
use nix::sys::signal::Signal;
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(20);

/// A balancer of `cluster` with the fast membership timings and `extra`.
fn balancer<S: AsRef<OsStr>>(cluster: &Cluster, extra: &[S]) -> BalancerProc {
    let mut args: Vec<OsString> = FAST.iter().map(OsString::from).collect();
    args.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
    BalancerProc::spawn(cluster, &args)
}

fn node(cluster: &Cluster, name: &str) -> NodeProc {
    let n = cluster.node(name, FAST);
    wait_until(STARTUP, "the node answers", || n.status());
    n
}

/// The name of the node that answered `GET /status` through the balancer.
fn answered_by(addr: SocketAddr) -> String {
    let a = exchange(addr, "GET", "/status", None, b"").expect("an answer");
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["node"]["name"]
        .as_str()
        .expect("node name")
        .to_string()
}

/// Three converged nodes n1..n3 and a balancer that discovered all of them.
fn three_nodes_behind_a_balancer(name: &str) -> (Cluster, Vec<NodeProc>, BalancerProc) {
    let cluster = Cluster::new(name);
    let nodes = vec![
        node(&cluster, "n1"),
        node(&cluster, "n2"),
        node(&cluster, "n3"),
    ];
    common::wait_converged(&nodes.iter().collect::<Vec<_>>(), STARTUP);
    let b = balancer(&cluster, common::DEFAULTS);
    wait_until(STARTUP, "the balancer discovers 3 members", || {
        (b.routes()? == ["n1", "n2", "n3"]).then_some(())
    });
    (cluster, nodes, b)
}

/// The hits counter of the test page.
fn hits(page: &str) -> u64 {
    let at = page.find("id=\"hits\">").expect("hits cell") + "id=\"hits\">".len();
    page[at..]
        .split('<')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn route_of(cookie: &str) -> String {
    cookie.rsplit('.').next().unwrap_or_default().to_string()
}

#[test]
fn requests_are_spread_by_the_weights() {
    let cluster = Cluster::new("bal-weights");
    let n1 = node(&cluster, "n1");
    let n2 = node(&cluster, "n2");
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-balancer.toml", cluster.name));
    let toml = format!(
        "[balancer]\ndiscover = false\nsticky = \"none\"\n\
         [[balancer.member]]\nroute = \"n1\"\nurl = \"http://{}\"\nloadfactor = 1\n\
         [[balancer.member]]\nroute = \"n2\"\nurl = \"http://{}\"\nloadfactor = 2\n",
        n1.http, n2.http
    );
    std::fs::write(&file, toml).expect("write the config");
    let b = balancer(&cluster, &[OsStr::new("--config"), file.as_os_str()]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1500 {
        *counts.entry(answered_by(b.addr)).or_default() += 1;
    }
    let (c1, c2) = (counts["n1"], counts["n2"]);
    assert_eq!(c1 + c2, 1500);
    assert!((450..=550).contains(&c1), "n1 got {c1}, n2 got {c2}");
    assert!((900..=1100).contains(&c2), "n1 got {c1}, n2 got {c2}");
    let status = b.status().expect("status");
    let elected: u64 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["elected"].as_u64().unwrap())
        .sum();
    assert_eq!(elected, 1500);
}

#[test]
fn a_session_sticks_to_its_route() {
    let (_cluster, _nodes, b) = three_nodes_behind_a_balancer("bal-sticky");
    let mut browser = Browser::new();
    let first = browser.send(b.addr, "GET", "/", b"");
    assert_eq!(first.status, 200);
    let cookie = browser.cookie.clone().expect("a session cookie");
    let route = route_of(&cookie);
    for i in 1..=50 {
        let a = browser.send(b.addr, "GET", "/", b"");
        assert_eq!(a.status, 200);
        assert!(
            a.text().contains(&format!("<td id=\"node\">{route}</td>")),
            "request {i} left {route}"
        );
        assert_eq!(hits(&a.text()), i + 1);
        assert_eq!(browser.cookie.as_deref(), Some(cookie.as_str()));
    }
}

#[test]
fn sessions_of_a_backend_that_is_not_deltacast_stick_whatever_their_ids_look_like() {
    let cluster = Cluster::new("bal-foreign");
    let backends = [
        ForeignBackend::start("node0", IdShape::Jetty),
        ForeignBackend::start("A", IdShape::Short),
        ForeignBackend::start("r3", IdShape::QuotedUuid),
    ];
    let mut args = vec!["--set".to_string(), "balancer.discover=false".to_string()];
    for backend in &backends {
        args.extend(["--member".to_string(), backend.member_arg()]);
    }
    let b = balancer(&cluster, &args);
    // Requests without a session go round the members (equal weights): one session from
    // each backend, its cookie as the backend wrote it.
    let mut sessions: HashMap<String, String> = HashMap::new();
    wait_until(
        Duration::from_secs(10),
        "a session from every backend",
        || {
            let a = exchange(b.addr, "GET", "/", None, b"")?;
            sessions.insert(a.text().trim().to_string(), a.set_cookie?);
            (sessions.len() == backends.len()).then_some(())
        },
    );
    assert!(
        sessions["node0"].starts_with("JSESSIONID=node0k3s9x"),
        "{sessions:?}"
    );
    assert!(sessions["A"].starts_with("JSESSIONID=x"), "{sessions:?}");
    assert!(
        sessions["r3"].starts_with("JSESSIONID=\"123e4567-"),
        "{sessions:?}"
    );
    for (route, cookie) in &sessions {
        let answered = |what: &str, body: &[u8]| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            assert_eq!(&text, route, "{what} with {cookie} left {route}");
        };
        // The fast path (GET) and the hyper path (a POST with a body) alike.
        for i in 0..10 {
            let a = exchange(b.addr, "GET", &format!("/page/{i}"), Some(cookie), b"")
                .expect("an answer");
            answered("a GET", &a.body);
            assert_eq!(
                a.set_cookie, None,
                "the session went to a backend that did not know it"
            );
            let a = exchange(b.addr, "POST", "/form", Some(cookie), b"item=1").expect("an answer");
            answered("a POST", &a.body);
        }
        // Among other cookies in one field, in a second Cookie field, and in the path.
        let among = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nCookie: theme=dark.blue; {cookie}; lang=en\r\n\r\n"
        );
        answered(
            "a cookie among others",
            &raw_exchange(b.addr, among.as_bytes()).1,
        );
        let second = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nCookie: theme=dark.blue\r\nCookie: {cookie}\r\n\r\n"
        );
        answered(
            "a second Cookie field",
            &raw_exchange(b.addr, second.as_bytes()).1,
        );
        let value = cookie["JSESSIONID=".len()..].trim_matches('"');
        let path = format!(
            "GET /cart;jsessionid={value}?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        );
        answered("a path parameter", &raw_exchange(b.addr, path.as_bytes()).1);
    }
    let status = b.status().expect("status");
    for m in status["members"].as_array().expect("members") {
        assert_eq!(m["state"], "ok", "{status}");
        assert_eq!(m["errors"], 0, "{status}");
    }
}

#[test]
fn killing_the_sticky_member_under_load_fails_no_request() {
    let (_cluster, mut nodes, b) = three_nodes_behind_a_balancer("bal-failover");
    // Four clients, each with its session and an attribute.
    let mut browsers = Vec::new();
    for i in 0..4 {
        let mut browser = Browser::new();
        assert_eq!(browser.send(b.addr, "GET", "/", b"").status, 200);
        let put = browser.send(
            b.addr,
            "PUT",
            "/session/attributes/who",
            format!("client{i}").as_bytes(),
        );
        assert!(put.status < 300, "PUT: {} {}", put.status, put.text());
        browsers.push(browser);
    }
    let victim = route_of(browsers[0].cookie.as_deref().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for (i, mut browser) in browsers.into_iter().enumerate() {
        let stop = stop.clone();
        let answered = answered.clone();
        let addr = b.addr;
        clients.push(std::thread::spawn(move || {
            let mut last = 1;
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = exchange(addr, "GET", "/", browser.cookie.as_deref(), b"")
                    .unwrap_or_else(|| panic!("client {i}: no answer after {sent} requests"));
                assert_eq!(a.status, 200, "client {i}: {}", a.text());
                if let Some(c) = &a.set_cookie {
                    browser.cookie = Some(c.clone());
                }
                let now = hits(&a.text());
                assert!(now > last, "client {i}: hits went from {last} to {now}");
                last = now;
                sent += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            let who = browser.send(addr, "GET", "/session/attributes/who", b"");
            assert_eq!(who.status, 200);
            assert_eq!(who.text().trim(), format!("client{i}"));
            (browser.cookie.unwrap(), sent)
        }));
    }
    // Under load before the kill, and for a good while after it.
    let at_least = |n: u64| {
        let answered = answered.clone();
        move || (answered.load(Ordering::Relaxed) >= n).then_some(())
    };
    wait_until(
        Duration::from_secs(20),
        "the clients are under way",
        at_least(40),
    );
    let at = nodes.iter().position(|n| n.name == victim).unwrap();
    let mut dead = nodes.remove(at);
    dead.signal(Signal::SIGKILL);
    dead.wait_exit(Duration::from_secs(5));
    let after_kill = answered.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(30),
        "1000 more answers after the kill",
        at_least(after_kill + 1000),
    );
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(String, u32)> = clients
        .into_iter()
        .map(|c| c.join().expect("a client failed"))
        .collect();
    let (cookie, sent) = &results[0];
    assert!(*sent > 10, "client 0 sent only {sent} requests");
    assert_ne!(route_of(cookie), victim, "the cookie's route did not move");
    for (cookie, _) in &results {
        assert_ne!(route_of(cookie), victim);
    }
}

#[test]
fn new_members_are_used_quickly_and_dropped_ones_no_more() {
    let cluster = Cluster::new("bal-discover");
    let n1 = node(&cluster, "n1");
    let b = balancer(&cluster, &["--set", "balancer.sticky=none"]);
    wait_until(STARTUP, "the balancer discovers n1", || {
        (b.routes()? == ["n1"]).then_some(())
    });
    let n2 = node(&cluster, "n2");
    let started = Instant::now();
    wait_until(Duration::from_secs(3), "n2 gets traffic", || {
        (answered_by(b.addr) == "n2").then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(3));
    // The balancer only listens: the nodes never list it as a member, however many
    // heartbeats go round.
    wait_until(STARTUP, "n1 sees n2", || {
        (n1.members("")? == ["n2"]).then_some(())
    });
    let heard = |n: &NodeProc| n.status()?["membership"]["heartbeats_received"].as_u64();
    let before = heard(&n1).expect("n1's heartbeat count");
    wait_until(
        Duration::from_secs(10),
        "n1 hears five more heartbeats",
        || (heard(&n1)? >= before + 5).then_some(()),
    );
    assert_eq!(n1.members("").unwrap(), ["n2"]);
    assert_eq!(n2.members("").unwrap(), ["n1"]);
    drop(n2);
    wait_until(Duration::from_secs(5), "n2 is dropped", || {
        (b.routes()? == ["n1"]).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(answered_by(b.addr), "n1");
    }
    drop(n1);
}

#[test]
fn no_member_gives_503_with_one_line() {
    let cluster = Cluster::new("bal-empty");
    let b = balancer(&cluster, &["--set", "balancer.discover=false"]);
    let a = exchange(b.addr, "GET", "/anything", None, b"").expect("an answer");
    assert_eq!(a.status, 503);
    assert_eq!(a.text().lines().count(), 1, "{:?}", a.text());
    let page = exchange(b.addr, "GET", "/balancer-manager", None, b"").expect("the page");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<table"));
}

#[test]
fn a_dead_static_member_is_put_in_error_and_skipped() {
    let cluster = Cluster::new("bal-dead");
    let n1 = node(&cluster, "n1");
    let dead = format!("n9=http://127.0.0.1:{}", free_port());
    let m1 = format!("n1=http://{}", n1.http);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &dead,
            "--member",
            &m1,
            "--set",
            "balancer.discover=false",
            "--set",
            "balancer.sticky=none",
        ],
    );
    for _ in 0..10 {
        let a = exchange(b.addr, "POST", "/status", None, b"x").expect("an answer");
        // POST /status is not a node route, but it must reach n1, never fail at n9.
        assert_ne!(a.status, 502);
        assert_ne!(a.status, 503);
    }
    let status = b.status().expect("status");
    let n9 = &status["members"][0];
    assert_eq!(n9["route"], "n9");
    assert_eq!(n9["state"], "error");
    assert!(n9["errors"].as_u64().unwrap() >= 1);
}

#[test]
fn malformed_and_oversized_requests_get_one_line_answers_and_others_are_still_served() {
    let cluster = Cluster::new("bal-bad");
    let n1 = node(&cluster, "n1");
    let m1 = format!("n1=http://{}", n1.http);
    let b = balancer(
        &cluster,
        &["--member", &m1, "--set", "balancer.discover=false"],
    );
    // A client with a kept-alive connection, served before and after the bad ones.
    let mut calm = KeepAlive::open(b.addr);
    assert_eq!(calm.get("/balancer-manager/status").0, 200);
    let malformed: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
        b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
    ];
    for bad in malformed {
        assert_one_line_answer(b.addr, bad, 400);
    }
    // Header fields over 32 KiB (read whole, refused by the balancer), and a head over the
    // 128 KiB read buffer (refused while it is read).
    for size in [100 * 1024, 300 * 1024] {
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        assert_one_line_answer(b.addr, huge.as_bytes(), 431);
    }
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    assert_one_line_answer(b.addr, long.as_bytes(), 414);
    // The declared length alone is refused: the body is never sent.
    assert_one_line_answer(
        b.addr,
        b"POST /session/attributes/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",
        413,
    );
    // A malformed chunked body is the client's fault, not the member's.
    assert_one_line_answer(
        b.addr,
        b"PUT /session/attributes/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        400,
    );
    let member = &b.status().expect("status")["members"][0];
    assert_eq!(member["state"], "ok", "{member}");
    assert_eq!(member["errors"], 0, "{member}");
    // And the balancer still serves, old and new connections alike.
    assert_eq!(calm.get("/balancer-manager/status").0, 200);
    assert_eq!(answered_by(b.addr), "n1");
}

#[test]
fn at_the_connection_limit_a_new_client_waits_until_a_connection_closes() {
    let cluster = Cluster::new("bal-limit");
    let b = balancer(
        &cluster,
        &[
            "--set",
            "balancer.discover=false",
            "--set",
            "balancer.max_connections=2",
        ],
    );
    // Two kept-alive connections take both slots (each served once, so both are accepted).
    let mut first = KeepAlive::open(b.addr);
    let mut second = KeepAlive::open(b.addr);
    assert_eq!(first.get("/balancer-manager/status").0, 200);
    assert_eq!(second.get("/balancer-manager/status").0, 200);
    wait_until(STARTUP, "the balancer counts the limit reached", || {
        let c = &first.status()["connections"];
        (c["open"] == 2 && c["max"] == 2 && c["limit_reached"].as_u64()? >= 1).then_some(())
    });
    // A third client connects (the kernel queues it in the listen backlog) and asks: it is
    // not served while both slots are taken. This only checks that no answer comes within
    // 300 ms, a bound that cannot fail a correct balancer however slow the machine is; the
    // positive checks are the counters above and the answer below.
    let mut third = KeepAlive::open(b.addr);
    third.send("/balancer-manager/status");
    third
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    match third.answer() {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the third client was served at the limit: {other:?}"),
    }
    // One of the first two leaves: the third is accepted and answered.
    drop(second);
    third
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let (code, body) = third.answer().expect("the third client's answer");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(status["connections"]["open"], 2, "{status}");
    // The first still works on its connection.
    assert_eq!(first.status()["connections"]["max"], 2);
}

#[test]
fn a_slowloris_client_is_closed_and_does_not_hurt_others() {
    let cluster = Cluster::new("bal-slow");
    let n1 = node(&cluster, "n1");
    let m1 = format!("n1=http://{}", n1.http);
    let b = balancer(
        &cluster,
        &["--member", &m1, "--set", "balancer.discover=false"],
    );
    let slow_client = |first: &[u8]| {
        let mut slow = TcpStream::connect(b.addr).expect("connect");
        slow.write_all(first).expect("part of a head");
        slow.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        slow
    };
    // One sends a header line now and then; the other sends a large part of a head at
    // once, and only late (8 s in) enough more for it to pass from the fast path to hyper:
    // the 10 s header-read timeout still counts from the start.
    let mut small = slow_client(b"GET / HTTP/1.1\r\nHost: x\r\n");
    let mut large_head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..15 {
        large_head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)).as_bytes());
    }
    let mut large = slow_client(&large_head);
    let mut large_sent_more = false;
    let started = Instant::now();
    let mut closed = [None, None];
    while started.elapsed() < Duration::from_secs(15) && closed.contains(&None) {
        // Others are served meanwhile.
        assert_eq!(answered_by(b.addr), "n1");
        if !large_sent_more && started.elapsed() >= Duration::from_secs(8) {
            let more = format!("X-Pad-more: {}\r\n", "p".repeat(2000));
            let _ = large.write_all(more.as_bytes());
            large_sent_more = true;
        }
        for (i, slow) in [&mut small, &mut large].into_iter().enumerate() {
            if closed[i].is_some() {
                continue;
            }
            // One more header line now and then, never the end of the head.
            let _ = slow.write_all(b"X-Slow: 1\r\n");
            let mut buf = [0u8; 1024];
            match slow.read(&mut buf) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Ok(_) | Err(_) => closed[i] = Some(started.elapsed()),
            }
        }
    }
    let [Some(small_closed), Some(large_closed)] = closed else {
        panic!("a slow client is still connected after 15 s: {closed:?}");
    };
    assert!(small_closed >= Duration::from_secs(5), "{small_closed:?}");
    assert!(
        large_sent_more && large_closed >= Duration::from_secs(8),
        "{large_closed:?}"
    );
}

#[test]
fn headers_are_rewritten_and_bodies_stream_both_ways() {
    let cluster = Cluster::new("bal-echo");
    let echo = echo_member();
    let member = format!("e1=http://{echo}");
    let b = balancer(
        &cluster,
        &["--member", &member, "--set", "balancer.discover=false"],
    );
    // A small body with a length, and hop-by-hop headers to remove.
    let (head, body) = raw_exchange(
        b.addr,
        b"POST /echo?x=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 192.0.2.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("x-hop"),
        "hop-by-hop answer header passed: {head}"
    );
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(head.contains("x-end: 1"));
    let split = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let seen = String::from_utf8_lossy(&body[..split]).to_ascii_lowercase();
    assert_eq!(&body[split + 4..], b"hello");
    assert!(seen.starts_with("post /echo?x=1 http/1.1"), "{seen}");
    for want in [
        "host: example.test",
        "x-forwarded-for: 192.0.2.1, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: example.test",
        "via: 1.1 deltacast",
    ] {
        assert!(seen.contains(want), "{want} missing in {seen}");
    }
    for gone in ["x-secret", "te:", "proxy-connection"] {
        assert!(!seen.contains(gone), "{gone} forwarded: {seen}");
    }
    // A large chunked body streams through (no retry buffer), intact.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut request =
        b"PUT /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for chunk in payload.chunks(70_000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (head, body) = raw_exchange(b.addr, &request);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let split = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(&body[split + 4..], &payload[..]);
    let status = b.status().expect("status");
    let m = &status["members"][0];
    assert!(m["bytes_in"].as_u64().unwrap() >= 300_005);
    assert!(m["bytes_out"].as_u64().unwrap() >= 300_005);
    assert_eq!(m["busy"], 0);
}

#[test]
fn an_upgraded_connection_passes_through() {
    let cluster = Cluster::new("bal-upgrade");
    let member = format!("u1=http://{}", upgrading_member());
    let b = balancer(
        &cluster,
        &["--member", &member, "--set", "balancer.discover=false"],
    );
    let mut stream = TcpStream::connect(b.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("read the head"), 1, "closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [&b"ping"[..], b"second message"] {
        stream.write_all(message).expect("send on the tunnel");
        let mut got = vec![0u8; message.len()];
        stream.read_exact(&mut got).expect("echo");
        assert_eq!(got, message);
    }
}

#[test]
fn a_member_disabled_from_the_page_gets_no_traffic() {
    let cluster = Cluster::new("bal-admin");
    let n1 = node(&cluster, "n1");
    let n2 = node(&cluster, "n2");
    let m1 = format!("n1=http://{}", n1.http);
    let m2 = format!("n2=http://{}", n2.http);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &m1,
            "--member",
            &m2,
            "--set",
            "balancer.discover=false",
            "--set",
            "balancer.sticky=none",
        ],
    );
    let page = exchange(b.addr, "GET", "/balancer-manager", None, b"").expect("page");
    let page = page.text();
    let marker = "name=\"nonce\" value=\"";
    let start = page.find(marker).expect("the page's forms carry a nonce") + marker.len();
    let nonce = &page[start..start + page[start..].find('"').expect("closing quote")];
    let form = format!("route=n1&action=disable&nonce={nonce}");
    let post = |origin: &str| {
        raw_exchange(
            b.addr,
            format!(
                "POST /balancer-manager/member HTTP/1.1\r\nHost: {}\r\n{origin}Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                b.addr,
                form.len()
            )
            .as_bytes(),
        )
        .0
    };
    assert!(post("Origin: http://evil.example\r\n").starts_with("http/1.1 403"));
    assert_eq!(b.status().unwrap()["members"][0]["state"], "ok");
    let ok = post(&format!("Origin: http://{}\r\n", b.addr));
    assert!(ok.starts_with("http/1.1 303"), "{ok}");
    assert_eq!(b.status().unwrap()["members"][0]["state"], "disabled");
    for _ in 0..20 {
        assert_eq!(answered_by(b.addr), "n2");
    }
    let page = exchange(b.addr, "GET", "/balancer-manager", None, b"").expect("page");
    assert!(page.text().contains("disabled"));
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let cluster = Cluster::new("bal-idle");
    let n1 = node(&cluster, "n1");
    let m1 = format!("n1=http://{}", n1.http);
    let b = balancer(
        &cluster,
        &["--member", &m1, "--set", "balancer.discover=false"],
    );
    let mut stream = TcpStream::connect(b.addr).expect("connect");
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 65536];
    assert!(stream.read(&mut buf).expect("an answer") > 0);
    let idle = Instant::now();
    // Nothing more is sent: the balancer closes the connection after its timeout.
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
}

/// A session cookie whose route sends a request to the member `route`.
fn routed_to(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

/// The member timeout fired: not before 1 s (`timeout_s = 1`), and well within 5 s.
fn assert_timed_out_after_1_s(took: Duration) {
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

/// The member of a `/balancer-manager/status` with this route.
fn member_status(b: &BalancerProc, route: &str) -> Value {
    let status = b.status().expect("status");
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["route"] == route)
        .cloned()
        .unwrap_or_else(|| panic!("no member {route} in {status}"))
}

/// A member frozen (SIGSTOP: its kernel still takes the connection, nothing answers) while
/// requests wait on it: its heartbeats stop, discovery drops it, and the requests (a GET,
/// on the fast path, and a PUT with a body, on the general one: both safe to send twice)
/// go to the other member then, not after the member timeout (60 s; the test's client gives
/// up after 10).
#[test]
fn a_request_waiting_on_a_member_whose_heartbeats_stop_is_sent_to_another() {
    let cluster = Cluster::new("bal-in-flight");
    let n1 = node(&cluster, "n1");
    let n2 = node(&cluster, "n2");
    common::wait_converged(&[&n1, &n2], STARTUP);
    let b = balancer(&cluster, &["--set", "balancer.timeout_s=60"]);
    wait_until(STARTUP, "the balancer discovers both", || {
        (b.routes()? == ["n1", "n2"]).then_some(())
    });
    // Answered by n1 while it runs.
    let a = exchange(b.addr, "GET", "/status", Some(&routed_to("n1")), b"").expect("an answer");
    assert_eq!(a.json()["node"]["name"], "n1");
    n1.signal(Signal::SIGSTOP);
    let addr = b.addr;
    let get =
        std::thread::spawn(move || exchange(addr, "GET", "/status", Some(&routed_to("n1")), b""));
    let put = std::thread::spawn(move || {
        let path = "/session/attributes/x";
        exchange(addr, "PUT", path, Some(&routed_to("n1")), b"1")
    });
    wait_until(Duration::from_secs(5), "both requests wait on n1", || {
        (member_status(&b, "n1")["busy"] == 2).then_some(())
    });
    let answer = |client: std::thread::JoinHandle<Option<common::Answer>>, what: &str| {
        client
            .join()
            .expect("the client thread")
            .unwrap_or_else(|| panic!("no answer to the {what} before the client gave up"))
    };
    let a = answer(get, "GET");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["node"]["name"], "n2");
    let a = answer(put, "PUT");
    assert_eq!(a.status, 204, "{}", a.text());
    let cookie = a.set_cookie.expect("n2 made the session");
    assert!(cookie.contains(".n2"), "{cookie}");
    assert_eq!(b.routes().as_deref(), Some(&["n2".to_string()][..]));
    n1.signal(Signal::SIGCONT);
}

#[test]
fn a_member_that_never_answers_gets_504_and_a_healthy_one_still_serves() {
    let cluster = Cluster::new("bal-timeout");
    let silent = RawMember::start(Behaviour::Silent);
    let healthy = RawMember::start(Behaviour::Healthy);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &silent.member_arg("s1"),
            "--member",
            &healthy.member_arg("h1"),
            "--set",
            "balancer.discover=false",
            "--set",
            "balancer.timeout_s=1",
        ],
    );
    let started = Instant::now();
    let a = exchange(b.addr, "GET", "/slow", Some(&routed_to("s1")), b"").expect("an answer");
    assert_timed_out_after_1_s(started.elapsed());
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(a.text(), "member did not answer within 1 s\n");
    silent.wait_closed(1);

    // While a request waits for the silent member, the healthy one serves others.
    let addr = b.addr;
    let waiting = std::thread::spawn(move || {
        exchange(addr, "GET", "/slow", Some(&routed_to("s1")), b"").map(|a| a.status)
    });
    wait_until(
        Duration::from_secs(5),
        "the second request reaches the silent member",
        || (silent.accepted() >= 2).then_some(()),
    );
    for _ in 0..5 {
        let a = exchange(b.addr, "GET", "/fast", Some(&routed_to("h1")), b"").expect("answer");
        assert_eq!((a.status, a.text().as_str()), (200, "ok\n"));
    }
    assert_eq!(waiting.join().expect("the waiting client"), Some(504));
    silent.wait_closed(2);

    // Not sent again elsewhere, and the slow member is counted but not put in error.
    assert!(
        !healthy.received().contains("/slow"),
        "{}",
        healthy.received()
    );
    let s1 = member_status(&b, "s1");
    assert_eq!(s1["state"], "ok", "{s1}");
    assert_eq!(s1["errors"], 2, "{s1}");
    assert_eq!(s1["busy"], 0, "{s1}");
    let h1 = member_status(&b, "h1");
    assert_eq!(
        (h1["state"].clone(), h1["errors"].clone()),
        ("ok".into(), 0.into())
    );
}

#[test]
fn an_answer_that_stops_mid_body_is_cut_off() {
    let cluster = Cluster::new("bal-cutoff");
    let cut = RawMember::start(Behaviour::CutOff);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &cut.member_arg("c1"),
            "--set",
            "balancer.discover=false",
            "--set",
            "balancer.timeout_s=1",
        ],
    );
    let (raw, took) = read_until_closed(b.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").expect("the member's head");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 100"), "{head}");
    assert_eq!(body, "0123456789", "a short body, then the end");
    assert_timed_out_after_1_s(took);
    cut.wait_closed(1);
    let c1 = member_status(&b, "c1");
    assert_eq!(c1["state"], "ok", "{c1}");
    assert_eq!(c1["errors"], 1, "{c1}");
}

#[test]
fn a_client_that_stops_sending_its_body_gets_408_and_frees_the_member_connection() {
    let cluster = Cluster::new("bal-slowbody");
    let silent = RawMember::start(Behaviour::Silent);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &silent.member_arg("s1"),
            "--set",
            "balancer.discover=false",
            "--set",
            "balancer.timeout_s=1",
        ],
    );
    let assert_408 = |raw: &[u8]| {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
        assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{head}"
        );
        assert_eq!(
            body,
            "request timeout: no more of the body came within 1 s\n"
        );
    };
    // A small body is read whole before a member is asked: the member never sees it.
    let (raw, took) = read_until_closed(
        b.addr,
        b"PUT /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
    );
    assert_timed_out_after_1_s(took);
    assert_408(&raw);
    assert_eq!(silent.accepted(), 0);

    // A large one streams to the member as it comes: the member connection is dropped.
    let (raw, took) = read_until_closed(
        b.addr,
        b"PUT /large HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789",
    );
    assert_timed_out_after_1_s(took);
    assert_408(&raw);
    silent.wait_closed(1);
    let seen = silent.received();
    assert!(seen.starts_with("PUT /large HTTP/1.1\r\n"), "{seen}");
    assert!(seen.ends_with("\r\n\r\n0123456789"), "{seen}");
    // The client's fault, not the member's.
    let s1 = member_status(&b, "s1");
    assert_eq!(s1["state"], "ok", "{s1}");
    assert_eq!(s1["errors"], 0, "{s1}");
    assert_eq!(s1["busy"], 0, "{s1}");
}

#[test]
fn chunked_close_delimited_and_bodiless_answers_pass_whole_and_requests_with_bodies_still_work() {
    let cluster = Cluster::new("bal-fast");
    let chunked = RawMember::start(Behaviour::Chunked);
    let until_close = RawMember::start(Behaviour::UntilClose);
    let healthy = RawMember::start(Behaviour::Healthy);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &chunked.member_arg("c"),
            "--member",
            &until_close.member_arg("u"),
            "--member",
            &healthy.member_arg("h"),
            "--set",
            "balancer.discover=false",
        ],
    );
    let mut client = TcpStream::connect(b.addr).expect("connect");
    // Two requests in one write (pipelined) for the chunked member: both answers, whole, in
    // order, on the one connection; the member's connection is kept for the second.
    let get = |route: &str, method: &str| {
        format!(
            "{method} /x HTTP/1.1\r\nHost: t\r\nCookie: {}\r\n\r\n",
            routed_to(route)
        )
    };
    let two = format!("{}{}", get("c", "GET"), get("c", "GET"));
    client.write_all(two.as_bytes()).expect("send");
    let answers = read_answers(&mut client, CHUNKED_ANSWER, 2);
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{answers}"
    );
    assert_eq!(
        answers.matches("transfer-encoding: chunked").count()
            + answers.matches("Transfer-Encoding: chunked").count(),
        2,
        "{answers}"
    );
    assert!(
        !answers.to_ascii_lowercase().contains("connection: close"),
        "{answers}"
    );
    assert_eq!(chunked.accepted(), 1, "one member connection for both");

    // HEAD: the answer's head only, though it declares a length.
    client.write_all(get("h", "HEAD").as_bytes()).expect("send");
    let head = read_answers(&mut client, b"\r\n\r\n", 1);
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );

    // A request with a body on the same connection goes through hyper, and is answered.
    let post = format!(
        "POST /form HTTP/1.1\r\nHost: t\r\nCookie: {}\r\nContent-Length: 3\r\n\r\nabc",
        routed_to("h")
    );
    client.write_all(post.as_bytes()).expect("send");
    let answer = read_answers(&mut client, b"ok\n", 1);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    wait_until(Duration::from_secs(5), "the member got the body", || {
        healthy
            .received()
            .contains("POST /form HTTP/1.1")
            .then_some(())
    });
    // ...and the connection, hyper's from then on, serves the next ones.
    client.write_all(get("c", "GET").as_bytes()).expect("send");
    // (hyper passes the chunks on re-encoded, its own way: the data is what counts.)
    let again = read_answers(&mut client, b" world\r\n0\r\n", 1);
    assert!(again.contains("hello"), "{again}");

    // An answer whose body ends with the member's connection: passed whole, then the
    // client's connection is closed too (its end is the body's end).
    let mut client = TcpStream::connect(b.addr).expect("connect");
    client.write_all(get("u", "GET").as_bytes()).expect("send");
    let mut all = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    client.read_to_end(&mut all).expect("read until closed");
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(
        all.to_ascii_lowercase().contains("connection: close\r\n"),
        "{all}"
    );
    assert!(all.ends_with("\r\n\r\nbye\n"), "{all}");

    // What the members received: the rewritten heads.
    let received = chunked.received();
    assert!(
        received.contains("x-forwarded-for: 127.0.0.1\r\n"),
        "{received}"
    );
    assert!(received.contains("via: 1.1 deltacast\r\n"), "{received}");
    let status = b.status().expect("status");
    for m in status["members"].as_array().expect("members") {
        assert_eq!(m["state"], "ok", "{status}");
        assert_eq!(m["errors"], 0, "{status}");
    }
}

#[test]
fn a_pooled_connection_the_member_closed_is_replaced_without_an_error() {
    let cluster = Cluster::new("bal-stale");
    let closing = RawMember::start(Behaviour::ClosesAfterAnswer);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &closing.member_arg("m"),
            "--set",
            "balancer.discover=false",
        ],
    );
    let mut client = TcpStream::connect(b.addr).expect("connect");
    for i in 0..20 {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        client.write_all(request.as_bytes()).expect("send");
        let answer = read_answers(&mut client, b"ok\n", 1);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "request {i}: {answer}"
        );
    }
    // Every request found the pooled connection closed and took a new one.
    assert!(closing.accepted() >= 20);
    let status = b.status().expect("status");
    assert_eq!(status["members"][0]["state"], "ok", "{status}");
    assert_eq!(status["members"][0]["errors"], 0, "{status}");
}

#[test]
fn bytes_a_member_sends_after_its_answer_never_reach_the_next_client() {
    let cluster = Cluster::new("bal-late");
    let member = RawMember::start(Behaviour::LateBytes);
    let b = balancer(
        &cluster,
        &[
            "--member",
            &member.member_arg("m"),
            "--set",
            "balancer.discover=false",
        ],
    );
    for i in 0..3 {
        // Each client on its own connection, after the member sent its late bytes on the
        // pooled connection of the one before.
        let a = exchange(b.addr, "GET", &format!("/{i}"), None, b"").expect("an answer");
        assert_eq!((a.status, a.text().as_str()), (200, "ok\n"), "request {i}");
        wait_until(
            Duration::from_secs(5),
            "the member sent its late bytes",
            || (member.late() > i).then_some(()),
        );
    }
    // Connections with late bytes are dropped, not used again.
    assert!(member.accepted() >= 3);
}

/// A balancer in front of a `slow_member` answering `answer` (closing after it if
/// `close`); three times, a client sends `first` and, while the member takes its time, a
/// second request: what the client got each time, and whether it ended with a reset.
fn answers_with_more_bytes_unread(
    name: &str,
    answer: &'static [u8],
    close: bool,
    first: &[u8],
) -> Vec<(String, bool)> {
    let cluster = Cluster::new(name);
    let member = slow_member(Duration::from_millis(400), answer, close);
    let m = format!("m1=http://{member}");
    let b = balancer(
        &cluster,
        &["--member", &m, "--set", "balancer.discover=false"],
    );
    (0..3)
        .map(|_| two_writes(b.addr, first, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect()
}

#[test]
fn a_close_request_followed_by_more_bytes_still_gets_its_answer() {
    let answers = answers_with_more_bytes_unread(
        "r5-close-more",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
        false,
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    for (got, reset) in answers {
        assert!(got.starts_with("HTTP/1.1 200"), "reset={reset} got={got:?}");
    }
}

#[test]
fn a_close_delimited_answer_to_a_pipelining_client_ends_with_a_fin() {
    let answers = answers_with_more_bytes_unread(
        "r5-until-close",
        b"HTTP/1.0 200 OK\r\n\r\nbye\n",
        true,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    for (got, reset) in answers {
        assert!(got.ends_with("bye\n"), "reset={reset} got={got:?}");
        assert!(
            !reset,
            "the close-delimited body ended with a reset: {got:?}"
        );
    }
}
