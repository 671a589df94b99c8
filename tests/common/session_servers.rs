//! What the tests of every session server (tests/redis.rs, tests/memcached.rs) do alike.

use std::net::SocketAddr;

use super::{Browser, exchange};

/// Sets attribute `name` of the browser's session through `node`; `204` expected.
pub fn put(b: &mut Browser, node: SocketAddr, name: &str, value: &str) {
    let path = format!("/session/attributes/{name}");
    let answer = b.send(node, "PUT", &path, value.as_bytes());
    assert_eq!(answer.status, 204, "PUT {name}: {}", answer.text());
}

/// Attribute `name` of the browser's session through `node`: status and body.
pub fn get(b: &mut Browser, node: SocketAddr, name: &str) -> (u16, String) {
    let answer = b.send(node, "GET", &format!("/session/attributes/{name}"), b"");
    (answer.status, answer.text())
}

/// 100 pairs of requests on one session, the two of a pair at once, one on node `a` and
/// one on node `b`, each setting an attribute of its own: afterwards the session holds
/// all 201 (the nodes need `sessions.max_attributes` above 201).
pub fn concurrent_pairs_lose_none(a: SocketAddr, b: SocketAddr) {
    let mut browser = Browser::new();
    put(&mut browser, a, "start", "1");
    let cookie = browser.cookie.clone().expect("a cookie");
    const PAIRS: usize = 100;
    const THREADS: usize = 8;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let cookie = cookie.clone();
            scope.spawn(move || {
                for i in (t..PAIRS).step_by(THREADS) {
                    // The two requests of a pair run at once, one on each node.
                    std::thread::scope(|pair| {
                        for (node, side) in [(a, "a"), (b, "b")] {
                            let cookie = cookie.clone();
                            pair.spawn(move || {
                                let path = format!("/session/attributes/{side}{i}");
                                let answer = exchange(node, "PUT", &path, Some(&cookie), b"x")
                                    .expect("an answer");
                                assert_eq!(answer.status, 204, "{path}: {}", answer.text());
                                // Node b re-issues the cookie with its route; the id stays.
                                if let Some(set) = &answer.set_cookie {
                                    assert_eq!(
                                        set.split('.').next(),
                                        cookie.split('.').next(),
                                        "{path}: a new session"
                                    );
                                }
                            });
                        }
                    });
                }
            });
        }
    });
    let doc = browser.send(b, "GET", "/session", b"").json();
    let attributes = doc["attributes"].as_object().expect("attributes");
    let missing: Vec<String> = (0..PAIRS)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .filter(|name| !attributes.contains_key(name))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(attributes.len(), 2 * PAIRS + 1);
}
