//! Redis and Redis Cluster as the session store (`sessions.store`), against real servers
//! that each test starts itself (tests/common/redis.rs): nodes share sessions through the
//! server and replicate nothing; the key layout of docs/session-servers.md; concurrent
//! writes of different attributes all kept; change-id, invalidation and expiry by TTL;
//! sessions outliving every node; a dead server answered with one `503` line and a node
//! that stays up and comes back by itself; garbage under a key read as no session.

mod common;

use std::time::Duration;

use common::redis::{RedisCluster, RedisServer, available, command_stat};
use common::session_servers::{concurrent_pairs_lose_none, get, put};
use common::{Browser, Cluster, FAST, NodeProc, exchange, wait_until};

/// The server a test runs against.
enum Store {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Store {
    fn start(kind: Kind, name: &str) -> Store {
        match kind {
            Kind::Single => Store::Single(RedisServer::start(name)),
            Kind::Cluster => Store::Cluster(RedisCluster::start(name)),
        }
    }

    fn url(&self) -> String {
        match self {
            Store::Single(s) => s.url(),
            Store::Cluster(c) => c.url(),
        }
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        match self {
            Store::Single(s) => s.cli(args),
            Store::Cluster(c) => c.cli(args),
        }
    }

    fn kill(&mut self) {
        match self {
            Store::Single(s) => s.kill(),
            Store::Cluster(c) => c.kill(),
        }
    }

    fn restart(&mut self) {
        match self {
            Store::Single(s) => s.restart(),
            Store::Cluster(c) => c.restart(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Single,
    Cluster,
}

/// A node of `cluster` whose sessions live in `store`, with `extra` flags.
fn node(cluster: &Cluster, name: &str, store: &Store, extra: &[&str]) -> NodeProc {
    let set = format!("sessions.store={}", store.url());
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--set", &set]);
    args.extend(extra);
    cluster.node(name, &args)
}

/// The server's key of the session a browser holds.
fn key(cluster: &Cluster, browser: &Browser) -> String {
    format!(
        "deltacast:{}:{}",
        cluster.name,
        browser.session_id().expect("a session cookie")
    )
}

/// `HGETALL` as field/value pairs.
fn hgetall(store: &Store, key: &str) -> Vec<(String, String)> {
    let out = store.cli(&["HGETALL", key]).unwrap_or_default();
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(f, _)| f == name)
        .map(|(_, v)| v.as_str())
}

// ---- scenarios -----------------------------------------------------------------------------

fn a_write_on_one_node_is_read_on_another_with_nothing_replicated(kind: Kind) {
    let store = Store::start(kind, &format!("a-to-b-{kind:?}"));
    let c = Cluster::new("redis-a-to-b");
    let a = node(&c, "a", &store, &[]);
    let b = node(&c, "b", &store, &[]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    assert_eq!(get(&mut browser, b.http, "user"), (200, "ada".to_string()));
    // Written on b, read on a too.
    put(&mut browser, b.http, "cart", "3 books");
    assert_eq!(
        get(&mut browser, a.http, "cart"),
        (200, "3 books".to_string())
    );
    let doc = browser.send(a.http, "GET", "/session", b"").json();
    assert_eq!(doc["attributes"]["user"], "ada");
    assert_eq!(doc["attributes"]["cart"], "3 books");
    // Both nodes find each other (the balancer discovers them) and send no deltas.
    wait_until(Duration::from_secs(20), "a and b see each other", || {
        (a.members("alive")? == ["b"] && b.members("alive")? == ["a"]).then_some(())
    });
    for n in [&a, &b] {
        let status = n.status().expect("status");
        assert_eq!(status["replication"]["deltas_sent"], 0, "{status}");
        assert!(status["sessions"]["active"].is_null(), "{status}");
        let kind = if store.url().starts_with("redis+cluster://") {
            "redis-cluster"
        } else {
            "redis"
        };
        assert_eq!(status["sessions"]["store"], kind, "{status}");
        assert_eq!(status["sessions"]["store_errors"], 0);
    }
}

fn the_session_is_one_hash_under_the_documented_key(kind: Kind) {
    let store = Store::start(kind, &format!("layout-{kind:?}"));
    let c = Cluster::new("redis-layout");
    let a = node(&c, "a", &store, &[]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    put(&mut browser, a.http, "lang", "en");
    let answer = browser.send(a.http, "DELETE", "/session/attributes/lang", b"");
    assert_eq!(answer.status, 204);
    let key = key(&c, &browser);
    assert_eq!(store.cli(&["TYPE", &key]).as_deref(), Some("hash"));
    let fields = hgetall(&store, &key);
    assert_eq!(field(&fields, "attr:user"), Some("ada"), "{fields:?}");
    assert_eq!(field(&fields, "attr:lang"), None, "{fields:?}");
    assert_eq!(field(&fields, "max_inactive"), Some("1800"));
    let created: u64 = field(&fields, "created")
        .expect("created")
        .parse()
        .expect("ms");
    let accessed: u64 = field(&fields, "accessed")
        .expect("accessed")
        .parse()
        .expect("ms");
    assert!(
        created > 1_600_000_000_000 && accessed >= created,
        "{fields:?}"
    );
    let ttl: i64 = store
        .cli(&["PTTL", &key])
        .and_then(|t| t.parse().ok())
        .expect("a TTL");
    assert!(ttl > 1_700_000 && ttl <= 1_800_000, "PTTL {ttl}");
}

fn concurrent_requests_setting_different_attributes_lose_none(kind: Kind) {
    let store = Store::start(kind, &format!("concurrent-{kind:?}"));
    let c = Cluster::new("redis-concurrent");
    // 201 attributes in one session: past the default limit of 64.
    let more = ["--set", "sessions.max_attributes=1000"];
    let a = node(&c, "a", &store, &more);
    let b = node(&c, "b", &store, &more);
    concurrent_pairs_lose_none(a.http, b.http);
}

/// How many times the server ran `command` (scripts' calls included), from `INFO
/// commandstats` of a single server.
fn calls(store: &Store, command: &str) -> u64 {
    let stats = store.cli(&["INFO", "commandstats"]).unwrap_or_default();
    command_stat(&stats, command, "calls")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn a_write_is_one_step_within_the_limits(kind: Kind) {
    let store = Store::start(kind, &format!("one-step-{kind:?}"));
    let c = Cluster::new("redis-one-step");
    let a = node(&c, "a", &store, &["--set", "sessions.max_attributes=2"]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "a", "1");
    let key = key(&c, &browser);
    let single = matches!(kind, Kind::Single);
    // (The first write also loads its script into the server.)
    put(&mut browser, a.http, "b", "first");
    let scripts = calls(&store, "evalsha");
    put(&mut browser, a.http, "b", "2");
    if single {
        // One round trip for a write to a live session: no read before it.
        assert_eq!(calls(&store, "evalsha"), scripts + 1);
    }
    // A third attribute passes sessions.max_attributes: refused by the server's step, and
    // nothing of it written.
    let answer = browser.send(a.http, "PUT", "/session/attributes/c", b"3");
    assert_eq!(answer.status, 507, "{}", answer.text());
    let fields = hgetall(&store, &key);
    assert_eq!(field(&fields, "attr:c"), None, "{fields:?}");
    assert_eq!(field(&fields, "attr:b"), Some("2"), "{fields:?}");
    // Changing one it has is within the limit; after a removal there is room again.
    put(&mut browser, a.http, "a", "one");
    let answer = browser.send(a.http, "DELETE", "/session/attributes/b", b"");
    assert_eq!(answer.status, 204);
    put(&mut browser, a.http, "c", "3");
    assert_eq!(get(&mut browser, a.http, "a"), (200, "one".to_string()));
    assert_eq!(get(&mut browser, a.http, "c"), (200, "3".to_string()));
    assert_eq!(get(&mut browser, a.http, "b").0, 404);
    if single {
        // Many requests of one session at once renew its TTL (and `accessed`) once per
        // window (1 s here), not each: at most one renewal per second begun, plus one.
        let renewals = calls(&store, "pexpire");
        let started = std::time::Instant::now();
        for i in 0..40 {
            if i % 2 == 0 {
                assert_eq!(get(&mut browser, a.http, "a"), (200, "one".to_string()));
            } else {
                put(&mut browser, a.http, "c", &i.to_string());
            }
        }
        let seconds = started.elapsed().as_secs();
        let made = calls(&store, "pexpire") - renewals;
        assert!(made <= seconds + 2, "{made} renewals in {seconds} s");
    }
    let ttl: i64 = store
        .cli(&["PTTL", &key])
        .and_then(|t| t.parse().ok())
        .expect("a TTL");
    assert!(ttl > 1_790_000 && ttl <= 1_800_000, "PTTL {ttl}");
}

fn change_id_moves_the_session_and_invalidate_ends_it(kind: Kind) {
    let store = Store::start(kind, &format!("change-id-{kind:?}"));
    let c = Cluster::new("redis-change-id");
    let a = node(&c, "a", &store, &[]);
    let b = node(&c, "b", &store, &[]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    let old_cookie = browser.cookie.clone().expect("a cookie");
    let old_key = key(&c, &browser);
    let answer = browser.send(a.http, "POST", "/session/change-id", b"");
    assert_eq!(answer.status, 204, "{}", answer.text());
    let new_key = key(&c, &browser);
    assert_ne!(new_key, old_key);
    // The old id is dead everywhere; the new one has the attributes, on either node.
    assert_eq!(store.cli(&["EXISTS", &old_key]).as_deref(), Some("0"));
    let old = exchange(
        b.http,
        "GET",
        "/session/attributes/user",
        Some(&old_cookie),
        b"",
    )
    .expect("an answer");
    assert_eq!((old.status, old.text()), (404, "no session\n".to_string()));
    assert_eq!(get(&mut browser, b.http, "user"), (200, "ada".to_string()));
    let fields = hgetall(&store, &new_key);
    assert_eq!(field(&fields, "attr:user"), Some("ada"));
    assert_eq!(field(&fields, "dead"), None);
    // Invalidate: the key goes, the cookie is cleared, the next request has no session.
    let answer = browser.send(b.http, "POST", "/session/invalidate", b"");
    assert_eq!(answer.status, 204);
    assert_eq!(store.cli(&["EXISTS", &new_key]).as_deref(), Some("0"));
    let gone = exchange(
        a.http,
        "GET",
        "/session/attributes/user",
        Some(&format!(
            "JSESSIONID={}",
            new_key.rsplit(':').next().unwrap_or_default()
        )),
        b"",
    )
    .expect("an answer");
    assert_eq!(gone.status, 404);
}

fn a_session_expires_after_max_inactive_s(kind: Kind) {
    let store = Store::start(kind, &format!("expiry-{kind:?}"));
    let c = Cluster::new("redis-expiry");
    let a = node(&c, "a", &store, &["--set", "sessions.max_inactive_s=1"]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    let key = key(&c, &browser);
    let ttl: i64 = store
        .cli(&["PTTL", &key])
        .and_then(|t| t.parse().ok())
        .expect("a TTL");
    assert!(ttl > 0 && ttl <= 1000, "PTTL {ttl}");
    // Touched: still there after more than one interval in all.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(&mut browser, a.http, "user"), (200, "ada".to_string()));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(&mut browser, a.http, "user"), (200, "ada".to_string()));
    // Left alone: the server's TTL ends it.
    wait_until(Duration::from_secs(10), "the key expired", || {
        (store.cli(&["EXISTS", &key]).as_deref() == Some("0")).then_some(())
    });
    let (status, text) = get(&mut browser, a.http, "user");
    assert_eq!((status, text.as_str()), (404, "no session\n"));
}

fn sessions_outlive_a_restart_of_every_node(kind: Kind) {
    let store = Store::start(kind, &format!("restart-{kind:?}"));
    let c = Cluster::new("redis-restart");
    let mut browser = Browser::new();
    {
        let a = node(&c, "a", &store, &[]);
        let b = node(&c, "b", &store, &[]);
        put(&mut browser, a.http, "user", "ada");
        put(&mut browser, b.http, "cart", "tea");
        // Both killed (by PID) here.
    }
    let a = node(&c, "a", &store, &[]);
    let b = node(&c, "b", &store, &[]);
    assert_eq!(get(&mut browser, b.http, "user"), (200, "ada".to_string()));
    assert_eq!(get(&mut browser, a.http, "cart"), (200, "tea".to_string()));
}

fn a_dead_server_is_one_503_line_and_the_node_comes_back_with_it(kind: Kind) {
    let mut store = Store::start(kind, &format!("dead-{kind:?}"));
    let c = Cluster::new("redis-dead");
    let a = node(&c, "a", &store, &["--set", "sessions.store_timeout_ms=500"]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    store.kill();
    for path in ["/session", "/session/attributes/user", "/"] {
        let answer = browser.send(a.http, "GET", path, b"");
        assert_eq!(answer.status, 503, "{path}");
        assert_eq!(answer.text(), "session store unavailable\n", "{path}");
    }
    let answer = browser.send(a.http, "PUT", "/session/attributes/x", b"1");
    assert_eq!(answer.status, 503);
    let status = a.status().expect("the node still answers /status");
    assert!(
        status["sessions"]["store_errors"].as_u64().unwrap_or(0) >= 4,
        "{status}"
    );
    assert_eq!(status["node"]["state"], "ready");
    // Logged, but not once per request.
    let log = a.log_text();
    let logged = log.matches("session store unavailable").count();
    assert!((1..=2).contains(&logged), "{logged} log lines:\n{log}");
    store.restart();
    // The server lost everything (nothing is saved): the next request gets a new session.
    wait_until(
        Duration::from_secs(30),
        "the node uses the server again",
        || {
            let answer = exchange(
                a.http,
                "PUT",
                "/session/attributes/user",
                browser.cookie.as_deref(),
                b"bob",
            )?;
            (answer.status == 204).then_some(())
        },
    );
}

fn garbage_under_a_session_key_is_no_session(kind: Kind) {
    let store = Store::start(kind, &format!("garbage-{kind:?}"));
    let c = Cluster::new("redis-garbage");
    let a = node(&c, "a", &store, &[]);
    let ids = [
        "0123456789ABCDEF0123456789ABCDEF",
        "00000000000000000000000000000002",
        "00000000000000000000000000000003",
        "00000000000000000000000000000004",
    ];
    let key = |id: &str| format!("deltacast:{}:{id}", c.name);
    store
        .cli(&["SET", &key(ids[0]), "not a hash"])
        .expect("SET");
    store
        .cli(&[
            "HSET",
            &key(ids[1]),
            "created",
            "yesterday",
            "accessed",
            "1",
            "max_inactive",
            "60",
        ])
        .expect("HSET");
    store
        .cli(&["RPUSH", &key(ids[2]), "a", "b"])
        .expect("RPUSH");
    store
        .cli(&["HSET", &key(ids[3]), "attr:user", "eve"])
        .expect("HSET");
    for id in ids {
        let cookie = format!("JSESSIONID={id}.a");
        let answer = exchange(a.http, "GET", "/session", Some(&cookie), b"").expect("an answer");
        assert_eq!(answer.status, 200, "{id}: {}", answer.text());
        let doc = answer.json();
        assert!(
            doc["attributes"].as_object().is_some_and(|m| m.is_empty()),
            "{doc}"
        );
        let new = answer.set_cookie.expect("a fresh session's cookie");
        assert!(!new.contains(id), "the garbage id was reused: {new}");
        // A write (one step, nothing read first) does not write into the garbage either.
        let answer = exchange(a.http, "PUT", "/session/attributes/x", Some(&cookie), b"1")
            .expect("an answer");
        assert_eq!(answer.status, 204, "{id}: {}", answer.text());
        let new = answer.set_cookie.expect("a fresh session's cookie");
        assert!(!new.contains(id), "the garbage id was written: {new}");
    }
    assert_eq!(
        store.cli(&["GET", &key(ids[0])]).as_deref(),
        Some("not a hash")
    );
    for id in &ids[1..] {
        assert_eq!(
            store.cli(&["EXISTS", &key(id)]).as_deref(),
            Some("1"),
            "the garbage is left where it was"
        );
    }
    assert_eq!(
        store.cli(&["HEXISTS", &key(ids[3]), "attr:x"]).as_deref(),
        Some("0")
    );
    let status = a.status().expect("status");
    assert_eq!(status["sessions"]["store_errors"], 0, "{status}");
}

/// The library's session layer over a session server: an axum app on two in-process
/// nodes counts visits, logs in (change-id) and out (invalidate); every step is in the
/// server, whichever node served it.
fn the_session_layer_keeps_an_apps_sessions_in_the_server(kind: Kind) {
    use axum::Router;
    use axum::routing::{get, post};
    use deltacast::{Node, Session};

    async fn visit(session: Session) -> String {
        let n = session.get::<u64>("visits").unwrap_or(0) + 1;
        session.insert("visits", &n);
        n.to_string()
    }
    async fn login(session: Session) -> &'static str {
        session.insert("user", "ada");
        session.change_id();
        "welcome"
    }
    async fn whoami(session: Session) -> String {
        session.get::<String>("user").unwrap_or_default()
    }
    async fn logout(session: Session) -> &'static str {
        session.invalidate();
        "bye"
    }

    let store = Store::start(kind, &format!("layer-{kind:?}"));
    let c = Cluster::new("redis-layer");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|name| {
            let mut config = c.in_process_config(name);
            config.sessions.store = store.url().parse().expect("a store URL");
            let node = runtime
                .block_on(Node::start(config))
                .expect("the node starts");
            node.serve(
                Router::new()
                    .route("/visit", get(visit))
                    .route("/login", post(login))
                    .route("/whoami", get(whoami))
                    .route("/logout", post(logout))
                    .layer(node.session_layer()),
            );
            node
        })
        .collect();
    let (a, b) = (nodes[0].addresses().http, nodes[1].addresses().http);
    let mut browser = Browser::new();
    for (i, node) in [a, b, a, b].into_iter().enumerate() {
        let answer = browser.send(node, "GET", "/visit", b"");
        assert_eq!((answer.status, answer.text()), (200, (i + 1).to_string()));
    }
    let old_key = key(&c, &browser);
    assert_eq!(
        store.cli(&["HGET", &old_key, "attr:visits"]).as_deref(),
        Some("4")
    );
    let answer = browser.send(b, "POST", "/login", b"");
    assert_eq!(answer.status, 200);
    let new_key = key(&c, &browser);
    assert_ne!(new_key, old_key, "login changes the id");
    assert_eq!(store.cli(&["EXISTS", &old_key]).as_deref(), Some("0"));
    assert_eq!(browser.send(a, "GET", "/whoami", b"").text(), "ada");
    assert_eq!(browser.send(a, "GET", "/visit", b"").text(), "5");
    assert_eq!(browser.send(a, "POST", "/logout", b"").text(), "bye");
    assert_eq!(store.cli(&["EXISTS", &new_key]).as_deref(), Some("0"));
    for node in nodes {
        assert_eq!(node.status().sessions.active, None);
        assert_eq!(node.status().replication.deltas_sent, 0);
        runtime.block_on(node.shutdown());
    }
}

/// A session's slot moves from one master to another while requests use it: first the
/// key alone (the old owner answers `ASK`), then the slot (`MOVED`). Reads and writes
/// succeed throughout, and nothing is lost.
#[test]
fn redis_cluster_requests_follow_ask_and_moved_while_a_slot_migrates() {
    if !available("redis_cluster_requests_follow_ask_and_moved_while_a_slot_migrates") {
        return;
    }
    let store = RedisCluster::start("migrate");
    let c = Cluster::new("redis-migrate");
    let set = format!("sessions.store={}", store.url());
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend(["--set", &set]);
    let a = c.node("a", &args);
    let mut browser = Browser::new();
    let put_ok = |browser: &mut Browser, name: &str, value: &str| {
        let answer = browser.send(
            a.http,
            "PUT",
            &format!("/session/attributes/{name}"),
            value.as_bytes(),
        );
        assert_eq!(answer.status, 204, "PUT {name}: {}", answer.text());
    };
    put_ok(&mut browser, "before", "1");
    let key = format!(
        "deltacast:{}:{}",
        c.name,
        browser.session_id().expect("a session")
    );
    let slot = store
        .cli(&["CLUSTER", "KEYSLOT", &key])
        .expect("the key's slot");
    let id_of = |port: u16| store.cli_at(port, &["CLUSTER", "MYID"]).expect("a node id");
    let ports: Vec<u16> = store.servers.iter().map(|s| s.port).collect();
    // The owner is the node that has the key.
    let source = *ports
        .iter()
        .find(|p| store.cli_at(**p, &["EXISTS", &key]).as_deref() == Some("1"))
        .expect("a node holds the key");
    let target = *ports.iter().find(|p| **p != source).expect("another node");
    let (source_id, target_id) = (id_of(source), id_of(target));
    let admin = |port: u16, args: &[&str]| {
        let out = store.cli_at(port, args).unwrap_or_default();
        assert!(
            out.contains("OK") || out.contains("NOKEY"),
            "{args:?} on {port}: {out}"
        );
    };
    admin(
        target,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
    );
    admin(
        source,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
    );
    put_ok(&mut browser, "migrating", "2");
    // The key moves alone: its old owner now answers ASK for it.
    admin(
        source,
        &[
            "MIGRATE",
            "127.0.0.1",
            &target.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            &key,
        ],
    );
    let asked = store.cli_at(source, &["EXISTS", &key]).unwrap_or_default();
    assert!(asked.starts_with("ASK "), "{asked}");
    assert_eq!(get(&mut browser, a.http, "before"), (200, "1".to_string()));
    put_ok(&mut browser, "asked", "3");
    // The slot moves: every node now says MOVED.
    for port in &ports {
        admin(*port, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
    }
    put_ok(&mut browser, "moved", "4");
    let doc = browser.send(a.http, "GET", "/session", b"").json();
    for (name, value) in [
        ("before", "1"),
        ("migrating", "2"),
        ("asked", "3"),
        ("moved", "4"),
    ] {
        assert_eq!(doc["attributes"][name], value, "{doc}");
    }
    assert_eq!(
        store
            .cli_at(target, &["HGET", &key, "attr:moved"])
            .as_deref(),
        Some("4")
    );
    assert_eq!(a.status().expect("status")["sessions"]["store_errors"], 0);
}

// ---- one test per scenario and server kind ---------------------------------------------------

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[test]
                fn $name() {
                    if super::available(stringify!($name)) {
                        super::$name(super::Kind::Single);
                    }
                }
            )*
        }
        mod redis_cluster {
            $(
                #[test]
                fn $name() {
                    if super::available(stringify!($name)) {
                        super::$name(super::Kind::Cluster);
                    }
                }
            )*
        }
    };
}

scenarios!(
    a_write_on_one_node_is_read_on_another_with_nothing_replicated,
    the_session_is_one_hash_under_the_documented_key,
    concurrent_requests_setting_different_attributes_lose_none,
    a_write_is_one_step_within_the_limits,
    change_id_moves_the_session_and_invalidate_ends_it,
    a_session_expires_after_max_inactive_s,
    sessions_outlive_a_restart_of_every_node,
    a_dead_server_is_one_503_line_and_the_node_comes_back_with_it,
    garbage_under_a_session_key_is_no_session,
    the_session_layer_keeps_an_apps_sessions_in_the_server,
);
