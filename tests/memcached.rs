//! memcached as the session store (`sessions.store = "memcached://..."`), against real
//! servers each test starts itself (tests/common/memcached.rs): nodes share sessions through
//! the server and replicate nothing; one item per session under the documented key;
//! concurrent writes of different attributes all kept (CAS); change-id, invalidation and
//! expiry; sessions outliving every node; a dead server answered with one `503` line and a
//! node that stays up and comes back by itself; garbage under a key read as no session;
//! sessions spread over two servers by the key's hash.

mod common;

use std::time::Duration;

use common::memcached::{MemcachedServer, available};
use common::session_servers::{concurrent_pairs_lose_none, get, put};
use common::{Browser, Cluster, FAST, NodeProc, exchange, wait_until};

/// A node of `cluster` whose sessions live in `url`, with `extra` flags.
fn node(cluster: &Cluster, name: &str, url: &str, extra: &[&str]) -> NodeProc {
    let set = format!("sessions.store={url}");
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

/// Whether the item's value (the binary form of docs/session-servers.md) holds `bytes`.
fn holds(value: &[u8], bytes: &[u8]) -> bool {
    value.windows(bytes.len()).any(|w| w == bytes)
}

macro_rules! needs_memcached {
    ($name:literal) => {
        if !available($name) {
            return;
        }
    };
}

#[test]
fn a_write_on_one_node_is_read_on_another_with_nothing_replicated() {
    needs_memcached!("a_write_on_one_node_is_read_on_another_with_nothing_replicated");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-a-to-b");
    let a = node(&c, "a", &server.url(), &[]);
    let b = node(&c, "b", &server.url(), &[]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    assert_eq!(get(&mut browser, b.http, "user"), (200, "ada".to_string()));
    put(&mut browser, b.http, "cart", "3 books");
    assert_eq!(
        get(&mut browser, a.http, "cart"),
        (200, "3 books".to_string())
    );
    let doc = browser.send(a.http, "GET", "/session", b"").json();
    assert_eq!(doc["attributes"]["user"], "ada");
    assert_eq!(doc["attributes"]["cart"], "3 books");
    wait_until(Duration::from_secs(20), "a and b see each other", || {
        (a.members("alive")? == ["b"] && b.members("alive")? == ["a"]).then_some(())
    });
    for n in [&a, &b] {
        let status = n.status().expect("status");
        assert_eq!(status["replication"]["deltas_sent"], 0, "{status}");
        assert!(status["sessions"]["active"].is_null(), "{status}");
        assert_eq!(status["sessions"]["store"], "memcached", "{status}");
        assert_eq!(status["sessions"]["store_errors"], 0);
    }
}

#[test]
fn the_session_is_one_item_under_the_documented_key() {
    needs_memcached!("the_session_is_one_item_under_the_documented_key");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-layout");
    let a = node(&c, "a", &server.url(), &[]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    put(&mut browser, a.http, "lang", "en");
    let answer = browser.send(a.http, "DELETE", "/session/attributes/lang", b"");
    assert_eq!(answer.status, 204);
    let key = key(&c, &browser);
    let value = server.get(&key).expect("an item under the key");
    assert!(value.starts_with(b"DCS\x01\x00"), "{value:?}");
    assert!(holds(&value, b"user") && holds(&value, b"ada"), "{value:?}");
    assert!(
        !holds(&value, b"lang"),
        "a removed attribute stays: {value:?}"
    );
    // max_inactive_s (1800) right after the two times.
    assert_eq!(&value[21..25], &1800u32.to_be_bytes());
    let created = u64::from_be_bytes(value[5..13].try_into().expect("8 bytes"));
    let accessed = u64::from_be_bytes(value[13..21].try_into().expect("8 bytes"));
    assert!(created > 1_600_000_000_000 && accessed >= created);
    // The id without its route is the key: the route is not in it.
    assert!(!key.contains('.'), "{key}");
}

#[test]
fn concurrent_requests_setting_different_attributes_lose_none() {
    needs_memcached!("concurrent_requests_setting_different_attributes_lose_none");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-concurrent");
    let more = ["--set", "sessions.max_attributes=1000"];
    let a = node(&c, "a", &server.url(), &more);
    let b = node(&c, "b", &server.url(), &more);
    concurrent_pairs_lose_none(a.http, b.http);
}

#[test]
fn change_id_moves_the_session_and_invalidate_ends_it() {
    needs_memcached!("change_id_moves_the_session_and_invalidate_ends_it");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-change-id");
    let a = node(&c, "a", &server.url(), &[]);
    let b = node(&c, "b", &server.url(), &[]);
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    let old_cookie = browser.cookie.clone().expect("a cookie");
    let old_key = key(&c, &browser);
    let answer = browser.send(a.http, "POST", "/session/change-id", b"");
    assert_eq!(answer.status, 204, "{}", answer.text());
    let new_key = key(&c, &browser);
    assert_ne!(new_key, old_key);
    // The old item holds the dead marker alone: no attribute under the old id.
    let old_value = server.get(&old_key).unwrap_or_default();
    assert!(!holds(&old_value, b"ada"), "{old_value:?}");
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
    assert!(holds(&server.get(&new_key).expect("the new item"), b"ada"));
    let answer = browser.send(b.http, "POST", "/session/invalidate", b"");
    assert_eq!(answer.status, 204);
    assert_eq!(server.get(&new_key), None);
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

#[test]
fn a_session_expires_after_max_inactive_s() {
    needs_memcached!("a_session_expires_after_max_inactive_s");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-expiry");
    let a = node(
        &c,
        "a",
        &server.url(),
        &["--set", "sessions.max_inactive_s=2"],
    );
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    let key = key(&c, &browser);
    // Touched (written: the expiry moves): still there after more than one interval.
    for v in ["b", "c", "d"] {
        std::thread::sleep(Duration::from_millis(900));
        put(&mut browser, a.http, "user", v);
    }
    assert_eq!(get(&mut browser, a.http, "user"), (200, "d".to_string()));
    // Left alone: memcached's expiry ends it (to the second, so give it a few).
    wait_until(Duration::from_secs(15), "the item expired", || {
        server.get(&key).is_none().then_some(())
    });
    let (status, text) = get(&mut browser, a.http, "user");
    assert_eq!((status, text.as_str()), (404, "no session\n"));
}

#[test]
fn sessions_outlive_a_restart_of_every_node() {
    needs_memcached!("sessions_outlive_a_restart_of_every_node");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-restart");
    let mut browser = Browser::new();
    {
        let a = node(&c, "a", &server.url(), &[]);
        let b = node(&c, "b", &server.url(), &[]);
        put(&mut browser, a.http, "user", "ada");
        put(&mut browser, b.http, "cart", "tea");
    }
    let a = node(&c, "a", &server.url(), &[]);
    let b = node(&c, "b", &server.url(), &[]);
    assert_eq!(get(&mut browser, b.http, "user"), (200, "ada".to_string()));
    assert_eq!(get(&mut browser, a.http, "cart"), (200, "tea".to_string()));
}

#[test]
fn a_dead_server_is_one_503_line_and_the_node_comes_back_with_it() {
    needs_memcached!("a_dead_server_is_one_503_line_and_the_node_comes_back_with_it");
    let mut server = MemcachedServer::start();
    let c = Cluster::new("mc-dead");
    let a = node(
        &c,
        "a",
        &server.url(),
        &["--set", "sessions.store_timeout_ms=500"],
    );
    let mut browser = Browser::new();
    put(&mut browser, a.http, "user", "ada");
    server.kill();
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
    let log = a.log_text();
    let logged = log.matches("session store unavailable").count();
    assert!((1..=2).contains(&logged), "{logged} log lines:\n{log}");
    server.restart();
    // memcached lost everything: the very next request succeeds, with a new session.
    let answer = exchange(
        a.http,
        "PUT",
        "/session/attributes/user",
        browser.cookie.as_deref(),
        b"bob",
    )
    .expect("an answer");
    assert_eq!(answer.status, 204, "{}", answer.text());
}

#[test]
fn garbage_under_a_session_key_is_no_session() {
    needs_memcached!("garbage_under_a_session_key_is_no_session");
    let server = MemcachedServer::start();
    let c = Cluster::new("mc-garbage");
    let a = node(&c, "a", &server.url(), &[]);
    let ids = [
        "0123456789ABCDEF0123456789ABCDEF",
        "00000000000000000000000000000002",
        "00000000000000000000000000000003",
    ];
    let key = |id: &str| format!("deltacast:{}:{id}", c.name);
    server.set(&key(ids[0]), b"not a session");
    server.set(&key(ids[1]), b"DCS\x01\x00\xff\xff");
    server.set(&key(ids[2]), b"");
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
    }
    let status = a.status().expect("status");
    assert_eq!(status["sessions"]["store_errors"], 0, "{status}");
}

#[test]
fn two_servers_share_the_sessions_by_the_key_hash() {
    needs_memcached!("two_servers_share_the_sessions_by_the_key_hash");
    let one = MemcachedServer::start();
    let two = MemcachedServer::start();
    let url = format!("memcached://{},{}", one.addr(), two.addr());
    // The other node lists them the other way round: rendezvous hashing does not care.
    let reversed = format!("memcached://{},{}", two.addr(), one.addr());
    let c = Cluster::new("mc-two");
    let a = node(&c, "a", &url, &[]);
    let b = node(&c, "b", &reversed, &[]);
    let mut browsers: Vec<Browser> = (0..40).map(|_| Browser::new()).collect();
    for (i, browser) in browsers.iter_mut().enumerate() {
        put(browser, a.http, "n", &i.to_string());
    }
    let (mut on_one, mut on_two) = (0, 0);
    for (i, browser) in browsers.iter_mut().enumerate() {
        let key = key(&c, browser);
        match (one.get(&key).is_some(), two.get(&key).is_some()) {
            (true, false) => on_one += 1,
            (false, true) => on_two += 1,
            other => panic!("session {i} on {other:?}"),
        }
        assert_eq!(get(browser, b.http, "n"), (200, i.to_string()));
    }
    assert!(on_one >= 5 && on_two >= 5, "{on_one} and {on_two}");
}
