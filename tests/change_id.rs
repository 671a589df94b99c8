//! `POST /session/change-id` between real processes: the session moves to a new id on every
//! member with its attributes, the old id is dead everywhere (a request with it gets a new,
//! empty session), a node that joins afterwards knows both, and without a session there is
//! nothing to rename.

mod common;

use std::time::Duration;

use common::{Browser, Cluster, FAST, NodeProc, wait_converged, wait_until};

const READY: Duration = Duration::from_secs(20);

fn ready(node: &NodeProc) {
    wait_until(READY, "the node is ready", || {
        (node.status()?["node"]["state"] == "ready").then_some(())
    });
}

/// `n` nodes of a cluster of their own (sync replication, the default), all ready and
/// seeing each other.
fn cluster(name: &str, n: usize) -> (Cluster, Vec<NodeProc>) {
    let c = Cluster::new(name);
    let nodes: Vec<NodeProc> = (1..=n).map(|i| c.node(&format!("n{i}"), FAST)).collect();
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_converged(&refs, READY);
    nodes.iter().for_each(ready);
    (c, nodes)
}

/// The route of a `JSESSIONID=HEX.route` cookie.
fn route(cookie: &str) -> &str {
    cookie.rsplit_once('.').map_or("", |(_, r)| r)
}

/// What `browser` reads of attribute `name` on `node`: (status, body).
fn read(browser: &Browser, node: &NodeProc, name: &str) -> (u16, String) {
    let mut b = browser.clone();
    let got = b.send(
        node.http,
        "GET",
        &format!("/session/attributes/{name}"),
        b"",
    );
    (got.status, got.text())
}

/// A client still holding `old_cookie` is not served the old session on `node`: the
/// attribute is absent, and the session document is a new, empty session with a new id.
fn old_id_is_dead_on(node: &NodeProc, old_cookie: &str, old_id: &str) {
    let stale = Browser {
        cookie: Some(old_cookie.to_string()),
    };
    assert_eq!(
        read(&stale, node, "user").0,
        404,
        "{} still serves the old id",
        node.name
    );
    let mut stale = stale;
    let doc = stale.send(node.http, "GET", "/session", b"");
    assert_eq!(doc.status, 200);
    let fresh = stale.session_id().expect("a session");
    assert_ne!(fresh, old_id, "{} revived the old id", node.name);
    assert_eq!(
        doc.json()["attributes"],
        serde_json::json!({}),
        "{}",
        node.name
    );
}

#[test]
fn change_id_on_one_node_moves_the_session_everywhere_and_kills_the_old_id() {
    let (cluster, nodes) = cluster("changeid", 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut browser = Browser::new();
    assert_eq!(
        browser
            .send(a.http, "PUT", "/session/attributes/user", b"ada")
            .status,
        204
    );
    assert_eq!(
        browser
            .send(a.http, "PUT", "/session/attributes/cart", b"2 apples")
            .status,
        204
    );
    let before = browser.send(a.http, "GET", "/session", b"").json();
    let old_cookie = browser.cookie.clone().expect("a cookie");
    let old_id = browser.session_id().expect("a session");

    let renamed = browser.send(a.http, "POST", "/session/change-id", b"");
    assert_eq!(renamed.status, 204, "{}", renamed.text());
    let new_cookie = renamed.set_cookie.clone().expect("the new cookie");
    assert!(new_cookie.starts_with("JSESSIONID="), "{new_cookie}");
    assert_eq!(
        route(&new_cookie),
        "n1",
        "the cookie names this node's route"
    );
    let new_id = browser.session_id().expect("the new id");
    assert_ne!(new_id, old_id);

    // Sync mode: the very next request on another node already sees the new id...
    for node in [b, c] {
        assert_eq!(
            read(&browser, node, "user"),
            (200, "ada".into()),
            "{}",
            node.name
        );
        assert_eq!(
            read(&browser, node, "cart"),
            (200, "2 apples".into()),
            "{}",
            node.name
        );
        let doc = browser
            .clone()
            .send(node.http, "GET", "/session", b"")
            .json();
        assert_eq!(doc["id"], format!("{new_id}.{}", node.name));
        assert_eq!(doc["created_ms"], before["created_ms"], "{}", node.name);
    }
    // ...and the old id is dead on every node.
    for node in &nodes {
        old_id_is_dead_on(node, &old_cookie, &old_id);
    }

    // Again, on another node and in the `;jsessionid=` form of the path: the cookie then
    // names that node's route.
    let path = format!("/session/change-id;jsessionid={new_id}.n1");
    let again = browser.send(b.http, "POST", &path, b"");
    assert_eq!(again.status, 204, "{}", again.text());
    assert_eq!(route(again.set_cookie.as_deref().unwrap_or("")), "n2");
    let third_id = browser.session_id().expect("the third id");
    assert_ne!(third_id, new_id);
    for node in [a, c] {
        assert_eq!(
            read(&browser, node, "user"),
            (200, "ada".into()),
            "{}",
            node.name
        );
    }

    // A node that joins now gets the session by state transfer, and the old ids' tombstones.
    let late = cluster.node("n4", FAST);
    ready(&late);
    assert_eq!(read(&browser, &late, "cart"), (200, "2 apples".into()));
    old_id_is_dead_on(&late, &old_cookie, &old_id);
    old_id_is_dead_on(&late, &format!("JSESSIONID={new_id}.n1"), &new_id);
}

#[test]
fn change_id_without_a_session_answers_404_and_sets_no_cookie() {
    let (_cluster, nodes) = cluster("changeid404", 1);
    let mut browser = Browser::new();
    let none = browser.send(nodes[0].http, "POST", "/session/change-id", b"");
    assert_eq!((none.status, none.text()), (404, "no session\n".into()));
    assert_eq!(none.set_cookie, None);
    let mut unknown = Browser {
        cookie: Some("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.n1".into()),
    };
    let got = unknown.send(nodes[0].http, "POST", "/session/change-id", b"");
    assert_eq!(got.status, 404);
    assert_eq!(got.set_cookie, None);
    let status = nodes[0].status().expect("status");
    assert_eq!(status["sessions"]["active"], 0, "no session was made");
    // A wrong method is refused, as on the other session paths.
    assert_eq!(
        browser
            .send(nodes[0].http, "GET", "/session/change-id", b"")
            .status,
        405
    );
}
