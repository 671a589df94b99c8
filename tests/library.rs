//! deltacast as a library: `deltacast::Node` started in this test process on port 0, a
//! small axum app under `node.session_layer()` served on each node's HTTP address, and real
//! HTTP exchanges with it (tests/common's client, off the runtime's threads).

mod common;

use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use deltacast::config::{Config, ReplicationMode};
use deltacast::session::SessionId;
use deltacast::session::id::parse_cookie_value;
use deltacast::{Node, Session};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use common::{Answer, Cluster};

const DEADLINE: Duration = Duration::from_secs(20);

// ---- the app under test --------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    age: u32,
    tags: Vec<String>,
}

fn profile() -> Profile {
    Profile {
        name: "Ada".into(),
        age: 36,
        tags: vec!["math".into(), "engines".into()],
    }
}

async fn read_attr(session: Session, Path(name): Path<String>) -> Result<Json<Value>, StatusCode> {
    session
        .get::<Value>(&name)
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

async fn write_attr(session: Session, Path(name): Path<String>, body: String) -> StatusCode {
    session.insert(&name, &body);
    StatusCode::NO_CONTENT
}

async fn remove_attr(session: Session, Path(name): Path<String>) -> StatusCode {
    session.remove(&name);
    StatusCode::NO_CONTENT
}

async fn put_typed(session: Session) -> StatusCode {
    session.insert("profile", &profile());
    session.insert("list", &vec![3u32, 1, 4, 1, 5]);
    session.insert("n", &-42i64);
    session.insert("x", &2.5f64);
    StatusCode::NO_CONTENT
}

async fn get_typed(session: Session) -> Json<Value> {
    Json(json!({
        "profile": session.get::<Profile>("profile"),
        "list": session.get::<Vec<u32>>("list"),
        "n": session.get::<i64>("n"),
        "x": session.get::<f64>("x"),
        // A value read as a type it is not: none, not a panic.
        "wrong": session.get::<u32>("profile"),
    }))
}

/// Several changes and reads of them in one request: one delta.
async fn many(session: Session) -> StatusCode {
    session.insert("a", &1);
    session.insert("b", &2);
    session.insert("a", &3);
    session.remove("c");
    if session.get::<i32>("a") != Some(3) || session.get::<i32>("b") != Some(2) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

async fn meta(session: Session) -> Json<Value> {
    Json(json!({
        "id": session.id().map(|id| id.to_string()),
        "created_ms": session.created_ms(),
        "last_accessed_ms": session.last_accessed_ms(),
        "max_inactive_s": session.max_inactive_s(),
    }))
}

async fn invalidate(session: Session) -> StatusCode {
    session.invalidate();
    StatusCode::NO_CONTENT
}

async fn change_id(session: Session) -> StatusCode {
    session.change_id();
    StatusCode::NO_CONTENT
}

async fn big(session: Session) -> StatusCode {
    session.insert("big", &"x".repeat(100_000));
    session.insert("small", &1);
    StatusCode::NO_CONTENT
}

fn app(node: &Node) -> Router {
    Router::new()
        .route(
            "/attr/{name}",
            get(read_attr).put(write_attr).delete(remove_attr),
        )
        .route("/typed", post(put_typed).get(get_typed))
        .route("/many", post(many))
        .route("/meta", get(meta))
        .route("/invalidate", post(invalidate))
        .route("/change-id", post(change_id))
        .route("/big", put(big))
        .route("/untouched", get(|| async { "nothing of the session" }))
        .layer(node.session_layer())
        .route("/outside", get(|_s: Session| async { "never" }))
}

// ---- harness ---------------------------------------------------------------------------------

fn config(cluster: &Cluster, name: &str) -> Config {
    cluster.in_process_config(name)
}

/// A node on listeners bound here on port 0, serving the app.
async fn start(config: Config) -> Node {
    let http = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("an http port");
    let replication = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a replication port");
    let node = Node::builder(config)
        .http_listener(http)
        .replication_listener(replication)
        .start()
        .await
        .expect("the node starts");
    node.serve(app(&node));
    node
}

/// `names` nodes of one cluster, each `tweak`ed, that see each other and replicate to
/// each other.
async fn cluster(test: &str, names: &[&str], tweak: impl Fn(&mut Config)) -> Vec<Node> {
    let c = Cluster::new(test);
    let mut nodes = Vec::new();
    for name in names {
        let mut config = config(&c, name);
        tweak(&mut config);
        nodes.push(start(config).await);
    }
    let want = names.len() - 1;
    eventually("every node sees the others alive", || {
        nodes.iter().all(|n| {
            n.status()
                .members
                .iter()
                .filter(|m| m.state == "alive")
                .count()
                == want
        })
    })
    .await;
    // Links come up after the view: a write through each node reaches all the others.
    for (i, from) in nodes.iter().enumerate() {
        let probe = send(from, "PUT", "/attr/probe", None, b"up").await;
        assert_eq!(probe.status, 204);
        let id = session_of(&probe);
        for (j, to) in nodes.iter().enumerate() {
            if i != j {
                eventually("a probe write reaches every member", || {
                    stored(to, id, "probe").is_some()
                })
                .await;
            }
        }
    }
    nodes
}

/// Polls `holds` until true, at most [`DEADLINE`].
async fn eventually(what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !holds() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One HTTP exchange with the node's HTTP address, off the runtime's threads (the future
/// owns its arguments, so many can run at once).
fn send(
    node: &Node,
    method: &'static str,
    path: &str,
    cookie: Option<&str>,
    body: &[u8],
) -> impl std::future::Future<Output = Answer> + Send + 'static {
    let addr = node.addresses().http;
    let path = path.to_string();
    let cookie = cookie.map(str::to_string);
    let body = body.to_vec();
    async move {
        tokio::task::spawn_blocking(move || {
            common::exchange(addr, method, &path, cookie.as_deref(), &body)
                .unwrap_or_else(|| panic!("{method} {path} on {addr} got no answer"))
        })
        .await
        .expect("the exchange ran")
    }
}

/// The session id of the cookie an answer set.
fn session_of(answer: &Answer) -> SessionId {
    cookie_value(answer.set_cookie.as_deref().expect("a session cookie")).0
}

/// The (id, route) of a `NAME=VALUE` cookie.
fn cookie_value(cookie: &str) -> (SessionId, Option<String>) {
    let (_, value) = cookie.split_once('=').expect("name=value");
    let parsed = parse_cookie_value(value).expect("a session cookie value");
    (parsed.id, parsed.route)
}

/// What node `node` holds for attribute `name` of session `id`, read without touching it.
fn stored(node: &Node, id: SessionId, name: &str) -> Option<Bytes> {
    let delta = node.store().export(&[id]).into_iter().next()?;
    if delta.invalidated {
        return None;
    }
    delta
        .attributes
        .into_iter()
        .find(|a| a.name == name)
        .and_then(|a| a.value)
}

fn deltas_sent(node: &Node) -> u64 {
    node.status().replication.deltas_sent
}

async fn stop(nodes: Vec<Node>) {
    for node in nodes {
        tokio::time::timeout(DEADLINE, node.shutdown())
            .await
            .expect("the node stops in time");
    }
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_node_is_ready_reports_its_status_and_leaves_gracefully() {
    let mut nodes = cluster("lib-start", &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let status = a.status();
    assert_eq!(status.node.state, "ready");
    assert_eq!(status.node.name, "a");
    assert_eq!(status.node.http, a.addresses().http.to_string());
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].name, "b");
    // The same document over HTTP, beside the app's routes.
    let over_http = send(a, "GET", "/status", None, b"").await;
    assert_eq!(over_http.status, 200);
    let doc: deltacast::node::status::StatusDoc =
        serde_json::from_slice(&over_http.body).expect("a status document");
    assert_eq!((doc.node.id, doc.cluster), (status.node.id, status.cluster));
    assert_eq!(send(b, "GET", "/metrics", None, b"").await.status, 200);
    // A route of the app that is not under the layer is a mistake: 500, not a panic.
    assert_eq!(send(a, "GET", "/outside", None, b"").await.status, 500);

    let b = nodes.pop().expect("b");
    let b_http = b.addresses().http;
    tokio::time::timeout(DEADLINE, b.shutdown())
        .await
        .expect("b stops in time");
    assert!(
        std::net::TcpStream::connect(b_http).is_err(),
        "b's HTTP port is closed once it stopped"
    );
    let a = &nodes[0];
    eventually("a no longer lists b", || a.status().members.is_empty()).await;
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_round_trip_through_json_on_every_member() {
    let nodes = cluster("lib-typed", &["a", "b"], |_| {}).await;
    let put = send(&nodes[0], "POST", "/typed", None, b"").await;
    assert_eq!(put.status, 204);
    let cookie = put.set_cookie.clone().expect("a new session's cookie");
    let want = json!({
        "profile": {"name": "Ada", "age": 36, "tags": ["math", "engines"]},
        "list": [3, 1, 4, 1, 5],
        "n": -42,
        "x": 2.5,
        "wrong": null,
    });
    for node in &nodes {
        let got = send(node, "GET", "/typed", Some(&cookie), b"").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json(), want, "on {}", node.name());
    }
    // Stored as JSON: the node's own view of the attribute is its JSON text.
    let id = session_of(&put);
    assert_eq!(
        stored(&nodes[1], id, "list").as_deref(),
        Some(&b"[3,1,4,1,5]"[..])
    );
    // The id and times of the session.
    let meta = send(&nodes[0], "GET", "/meta", Some(&cookie), b"")
        .await
        .json();
    assert_eq!(meta["id"], id.to_string());
    assert!(meta["created_ms"].as_u64().is_some_and(|t| t > 0));
    assert!(meta["last_accessed_ms"].as_u64() >= meta["created_ms"].as_u64());
    assert_eq!(meta["max_inactive_s"], 1800);
    // Without a session: none of them, and no session is made for asking.
    let none = send(&nodes[0], "GET", "/meta", None, b"").await;
    assert_eq!(none.json()["id"], Value::Null);
    assert!(none.set_cookie.is_none());
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_only_reads_or_never_touches_its_session_sends_no_delta() {
    let nodes = cluster("lib-reads", &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let before = deltas_sent(a);
    let put = send(a, "PUT", "/attr/x", None, b"kept").await;
    assert_eq!(put.status, 204);
    let cookie = put.set_cookie.clone().expect("a cookie");
    let id = session_of(&put);
    eventually("the write's delta is counted", || {
        deltas_sent(a) == before + 1
    })
    .await;
    let written_access = b.store().export(&[id])[0].last_access_ms;

    for _ in 0..10 {
        let got = send(a, "GET", "/attr/x", Some(&cookie), b"").await;
        assert_eq!((got.status, got.text()), (200, "\"kept\"".to_string()));
        assert!(got.set_cookie.is_none(), "the cookie is current");
        let meta = send(a, "GET", "/meta", Some(&cookie), b"").await;
        assert_eq!(meta.status, 200);
        let untouched = send(a, "GET", "/untouched", Some(&cookie), b"").await;
        assert_eq!(untouched.status, 200);
        assert!(untouched.set_cookie.is_none());
        let absent = send(a, "GET", "/attr/nothing", Some(&cookie), b"").await;
        assert_eq!(absent.status, 404);
    }
    // The access times of the reads reach b, batched; any delta would have gone first
    // on the same link.
    eventually("the reads' access time reaches b", || {
        b.store().export(&[id])[0].last_access_ms > written_access
    })
    .await;
    assert_eq!(deltas_sent(a), before + 1, "reads sent deltas");

    // All the changes of one request (sets, an overwrite, a removal) are one delta.
    let many = send(a, "POST", "/many", Some(&cookie), b"").await;
    assert_eq!(many.status, 204, "the request reads its own changes");
    eventually("one more delta", || deltas_sent(a) == before + 2).await;
    eventually("the changes reach b", || {
        stored(b, id, "a").as_deref() == Some(&b"3"[..])
    })
    .await;
    assert_eq!(stored(b, id, "b").as_deref(), Some(&b"2"[..]));
    // Requests with no session that only read make none, and send nothing.
    for _ in 0..5 {
        let got = send(a, "GET", "/attr/x", None, b"").await;
        assert_eq!(got.status, 404);
        assert!(got.set_cookie.is_none());
    }
    assert_eq!(deltas_sent(a), before + 2);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_nodes_app_is_read_through_anothers_whose_route_the_cookie_takes() {
    let nodes = cluster("lib-failover", &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let put = send(a, "PUT", "/attr/cart", None, b"tea").await;
    assert_eq!(put.status, 204);
    let set = put.set_cookie.clone().expect("a cookie");
    assert!(set.starts_with("JSESSIONID="), "{set}");
    let (id, route) = cookie_value(&set);
    assert_eq!(route.as_deref(), Some("a"));
    // The whole header as SPEC writes it (the helper gives the head lower-cased).
    let addr = a.addresses().http;
    let (status, head, _) = tokio::task::spawn_blocking(move || {
        common::raw_http::raw_answer(
            addr,
            b"PUT /attr/other HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1",
        )
    })
    .await
    .expect("the exchange ran");
    assert_eq!(status, 204);
    let header = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .expect("a set-cookie header")
        .to_string();
    assert!(
        header.ends_with(".a; path=/; httponly; samesite=lax"),
        "{header}"
    );

    // Failover: b serves the session from its replica and re-issues the cookie with its
    // own route, the same id.
    let got = send(b, "GET", "/attr/cart", Some(&set), b"").await;
    assert_eq!((got.status, got.text()), (200, "\"tea\"".to_string()));
    let moved = got.set_cookie.clone().expect("the cookie re-issued");
    assert_eq!(cookie_value(&moved), (id, Some("b".to_string())));
    // With b's cookie, b sends none; a write through b is read through a.
    let put = send(b, "PUT", "/attr/cart", Some(&moved), b"coffee").await;
    assert_eq!(put.status, 204);
    assert!(put.set_cookie.is_none(), "{:?}", put.set_cookie);
    let back = send(a, "GET", "/attr/cart", Some(&moved), b"").await;
    assert_eq!(back.text(), "\"coffee\"");
    assert_eq!(
        cookie_value(back.set_cookie.as_deref().expect("re-issued")),
        (id, Some("a".to_string()))
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_malformed_session_id_gets_a_new_one_never_the_clients() {
    let nodes = cluster("lib-unknown", &["a"], |_| {}).await;
    let a = &nodes[0];
    let planted = "JSESSIONID=4DD0340CE6294FF2BBE802CD4CD039EC.a";
    for cookie in [planted, "JSESSIONID=nonsense", "JSESSIONID=4DD0.a.b"] {
        let got = send(a, "GET", "/attr/x", Some(cookie), b"").await;
        assert_eq!(got.status, 404, "no session for {cookie}");
        let put = send(a, "PUT", "/attr/x", Some(cookie), b"1").await;
        assert_eq!(put.status, 204);
        let (id, route) = cookie_value(put.set_cookie.as_deref().expect("a new cookie"));
        assert_ne!(id.to_string(), "4DD0340CE6294FF2BBE802CD4CD039EC");
        assert_eq!(route.as_deref(), Some("a"));
    }
    // Of several cookies, the first that names a live session wins.
    let live = send(a, "PUT", "/attr/x", None, b"live").await;
    let live_cookie = live.set_cookie.clone().expect("a cookie");
    let both = format!("{planted}; {live_cookie}");
    let got = send(a, "GET", "/attr/x", Some(&both), b"").await;
    assert_eq!(got.text(), "\"live\"");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pairs_of_concurrent_requests_setting_different_attributes_lose_none() {
    let nodes = cluster("lib-pairs", &["a", "b", "c"], |c| {
        c.sessions.max_attributes = 512;
    })
    .await;
    let first = send(&nodes[0], "PUT", "/attr/start", None, b"0").await;
    let cookie = first.set_cookie.clone().expect("a cookie");
    let id = session_of(&first);
    let mut pairs = Vec::new();
    for i in 0..100 {
        // Even pairs on one node, odd ones across two.
        let (x, y) = if i % 2 == 0 { (0, 0) } else { (1, 2) };
        let left = send(
            &nodes[x],
            "PUT",
            &format!("/attr/left{i}"),
            Some(&cookie),
            b"l",
        );
        let right = send(
            &nodes[y],
            "PUT",
            &format!("/attr/right{i}"),
            Some(&cookie),
            b"r",
        );
        pairs.push(async move { tokio::join!(left, right) });
    }
    for (l, r) in futures_util::future::join_all(pairs).await {
        assert_eq!((l.status, r.status), (204, 204));
    }
    for node in &nodes {
        let missing: Vec<String> = (0..100)
            .flat_map(|i| [format!("left{i}"), format!("right{i}")])
            .filter(|name| stored(node, id, name).is_none())
            .collect();
        assert!(missing.is_empty(), "{} lost {missing:?}", node.name());
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_mode_a_write_is_on_every_member_when_its_response_arrives() {
    let nodes = cluster("lib-sync", &["a", "b", "c"], |c| {
        c.sessions.replication = ReplicationMode::Sync;
    })
    .await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(a.status().replication.mode, "sync");
    let mut cookie: Option<String> = None;
    for i in 0..30 {
        let value = format!("v{i}");
        let put = send(a, "PUT", "/attr/v", cookie.as_deref(), value.as_bytes()).await;
        assert_eq!(put.status, 204);
        if cookie.is_none() {
            cookie = put.set_cookie.clone();
        }
        let id = cookie_value(cookie.as_deref().expect("a cookie")).0;
        let want = format!("\"{value}\"");
        for member in [b, c] {
            assert_eq!(
                stored(member, id, "v").as_deref(),
                Some(want.as_bytes()),
                "write {i} not on {} when its response arrived",
                member.name()
            );
        }
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_ends_the_session_on_every_member_and_clears_the_cookie() {
    let nodes = cluster("lib-invalidate", &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let put = send(a, "PUT", "/attr/user", None, b"ada").await;
    let cookie = put.set_cookie.clone().expect("a cookie");
    let id = session_of(&put);
    let gone = send(b, "POST", "/invalidate", Some(&cookie), b"").await;
    assert_eq!(gone.status, 204);
    assert_eq!(gone.set_cookie.as_deref(), Some("JSESSIONID="));
    for node in &nodes {
        assert!(!node.store().contains(id), "live on {}", node.name());
        let got = send(node, "GET", "/attr/user", Some(&cookie), b"").await;
        assert_eq!(got.status, 404);
    }
    // A write with the dead cookie makes a new session.
    let again = send(a, "PUT", "/attr/user", Some(&cookie), b"bob").await;
    assert_ne!(session_of(&again), id);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_id_moves_the_attributes_to_a_new_id_and_the_old_one_is_dead_everywhere() {
    let nodes = cluster("lib-changeid", &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let put = send(a, "PUT", "/attr/user", None, b"ada").await;
    let old_cookie = put.set_cookie.clone().expect("a cookie");
    let old = session_of(&put);
    let changed = send(a, "POST", "/change-id", Some(&old_cookie), b"").await;
    assert_eq!(changed.status, 204);
    let new_cookie = changed.set_cookie.clone().expect("the new cookie");
    let new = session_of(&changed);
    assert_ne!(new, old);
    for node in &nodes {
        assert!(
            !node.store().contains(old),
            "old id live on {}",
            node.name()
        );
        let got = send(node, "GET", "/attr/user", Some(&new_cookie), b"").await;
        assert_eq!(got.text(), "\"ada\"", "on {}", node.name());
        let dead = send(node, "GET", "/attr/user", Some(&old_cookie), b"").await;
        assert_eq!(dead.status, 404, "the old id serves on {}", node.name());
    }
    assert!(b.store().contains(new));
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_store_refuses_is_an_error_answer_not_a_panic() {
    let nodes = cluster("lib-limits", &["a"], |c| {
        c.sessions.max_attributes = 2;
        c.sessions.max_value_bytes = 1024;
    })
    .await;
    let a = &nodes[0];
    // Over the value limit: 413, and nothing of the request is kept (no session made).
    let big = send(a, "PUT", "/big", None, b"").await;
    assert_eq!(big.status, 413, "{}", big.text());
    assert!(big.set_cookie.is_none());
    // Over the attribute limit: 507.
    let first = send(a, "PUT", "/attr/one", None, b"1").await;
    let cookie = first.set_cookie.clone().expect("a cookie");
    assert_eq!(
        send(a, "PUT", "/attr/two", Some(&cookie), b"2")
            .await
            .status,
        204
    );
    let third = send(a, "PUT", "/attr/three", Some(&cookie), b"3").await;
    assert_eq!(third.status, 507, "{}", third.text());
    assert_eq!(
        send(a, "GET", "/attr/two", Some(&cookie), b"").await.status,
        200
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_start_returns_once_the_joining_node_holds_the_clusters_sessions() {
    let c = Cluster::new("lib-join");
    let a = start(config(&c, "a")).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let put = send(&a, "PUT", "/attr/n", None, format!("{i}").as_bytes()).await;
        assert_eq!(put.status, 204);
        ids.push(session_of(&put));
    }
    // No waiting here: when start returns, the state transfer is done.
    let b = start(config(&c, "b")).await;
    assert_eq!(b.status().node.state, "ready");
    assert_eq!(b.store().len(), 50, "b serves before it took the sessions");
    for (i, id) in ids.iter().enumerate() {
        let want = format!("\"{i}\"");
        assert_eq!(stored(&b, *id, "n").as_deref(), Some(want.as_bytes()));
    }
    stop(vec![a, b]).await;
}
