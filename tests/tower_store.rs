//! `deltacast::web::tower_store::DeltacastStore` against tower-sessions' `SessionStore`
//! contract (create, save, load, delete, expiry, id collision), on a cluster of three
//! nodes started in this process (port 0, a cluster name and multicast group of its own),
//! and under tower-sessions' own `SessionManagerLayer` in an axum app over HTTP.

#![cfg(feature = "tower-sessions")]

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use deltacast::node::{self, RunningNode};
use deltacast::session::SessionId;
use deltacast::shutdown::Shutdown;
use deltacast::web::tower_store::{DeltacastStore, LOADED_KEY};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store;
use tower_sessions::{ExpiredDeletion, Session, SessionManagerLayer, SessionStore};

use common::Cluster;

const DEADLINE: Duration = Duration::from_secs(20);

async fn start(cluster: &Cluster, name: &str) -> RunningNode {
    let mut config = cluster.in_process_config(name);
    // Sync mode (the default), with an ack timeout a loaded machine cannot pass: a write
    // has reached every member when the store's call returns.
    config.sessions.ack_timeout_ms = 15_000;
    node::start(config, Shutdown::new())
        .await
        .expect("the node starts")
}

/// Polls `probe` until it gives Some, or panics after [`DEADLINE`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes of one cluster that see each other, serve, and have each replicated a
/// write to the other two (so every link is up): a store call that returns has reached
/// every member.
struct Trio {
    nodes: Vec<RunningNode>,
    stores: Vec<DeltacastStore>,
}

impl Trio {
    async fn start(test: &str) -> Trio {
        let cluster = Cluster::new(test);
        let mut nodes = Vec::new();
        for name in ["a", "b", "c"] {
            nodes.push(start(&cluster, name).await);
        }
        let all = &nodes;
        eventually("the nodes see each other", move || async move {
            all.iter().all(|n| alive(n) == 2).then_some(())
        })
        .await;
        for node in &nodes {
            assert!(node.ready(DEADLINE).await, "the node serves");
        }
        let stores: Vec<DeltacastStore> = nodes
            .iter()
            .map(DeltacastStore::from_running_node)
            .collect();
        for (i, store) in stores.iter().enumerate() {
            let mut warm = record(&[("warm", json!(i))], in_an_hour());
            store.create(&mut warm).await.expect("created");
            let id = warm.id;
            for other in &stores {
                eventually("a first write reaches every member", move || async move {
                    other.load(&id).await.expect("loads")
                })
                .await;
            }
            store.delete(&warm.id).await.expect("deleted");
        }
        Trio { nodes, stores }
    }

    fn stores(&self) -> [&DeltacastStore; 3] {
        [&self.stores[0], &self.stores[1], &self.stores[2]]
    }

    /// Whether any node still holds `id` as a live session.
    fn anywhere(&self, id: &Id) -> bool {
        self.nodes
            .iter()
            .any(|n| n.shared().store.contains(deltacast_id(id)))
    }

    async fn shutdown(self) {
        for node in self.nodes {
            tokio::time::timeout(DEADLINE, node.shutdown())
                .await
                .expect("the node stops in time");
        }
    }
}

fn alive(node: &RunningNode) -> usize {
    let view = node.shared().view.borrow().clone();
    view.members
        .iter()
        .filter(|m| m.state.as_str() == "alive")
        .count()
}

/// deltacast's id of a tower-sessions id, as the store documents it.
fn deltacast_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

fn in_an_hour() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::hours(1)
}

/// A new record as tower-sessions makes one: a random id, the data, the expiry date.
fn record(data: &[(&str, Value)], expiry_date: OffsetDateTime) -> Record {
    Record {
        id: Id::default(),
        data: data
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
        expiry_date,
    }
}

/// The app's data of a record (without what the store keeps to itself).
fn data(record: &Record) -> HashMap<String, Value> {
    let mut data = record.data.clone();
    data.remove(LOADED_KEY);
    data
}

fn map(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

async fn load(store: &DeltacastStore, id: &Id) -> Option<Record> {
    store.load(id).await.expect("load does not fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_or_saved_on_one_node_loads_on_the_others() {
    let trio = Trio::start("tower-save").await;
    let [a, b, c] = trio.stores();

    let mut created = record(&[("user", json!("ada")), ("n", json!(1))], in_an_hour());
    a.create(&mut created).await.expect("created");
    for store in [a, b, c] {
        let got = load(store, &created.id)
            .await
            .expect("held by every member");
        assert_eq!(got.id, created.id);
        assert_eq!(data(&got), data(&created));
        let late = got.expiry_date - created.expiry_date;
        assert!(
            late >= time::Duration::ZERO && late <= time::Duration::seconds(1),
            "the expiry date is kept to the second, never earlier: {late}"
        );
    }

    // A request on b changes n, adds theme and removes user.
    let mut on_b = load(b, &created.id).await.expect("on b");
    on_b.data.insert("n".into(), json!(2));
    on_b.data.insert("theme".into(), json!({"dark": true}));
    on_b.data.remove("user");
    b.save(&on_b).await.expect("saved");
    let want = map(&[("n", json!(2)), ("theme", json!({"dark": true}))]);
    for store in [a, b, c] {
        let got = load(store, &created.id).await.expect("still held");
        assert_eq!(data(&got), want);
    }

    assert!(load(c, &Id::default()).await.is_none(), "an unknown id");

    // What the node refuses is a backend error, and the save writes nothing.
    let mut refused = load(a, &created.id).await.expect("held");
    refused.data.insert(String::new(), json!("an empty key"));
    refused.data.insert("n".into(), json!(99));
    assert!(matches!(
        a.save(&refused).await,
        Err(session_store::Error::Backend(_))
    ));
    for store in [a, b, c] {
        let got = load(store, &created.id).await.expect("still held");
        assert_eq!(data(&got), want, "nothing of the refused save");
    }
    // A stored value that is not JSON (here written on node a alone, beside the store)
    // is a decode error, not a panic.
    let written = trio.nodes[0].shared().store.update(
        deltacast_id(&created.id),
        deltacast::clock::now_ms(),
        |s| s.set("raw", bytes::Bytes::from_static(b"\xff not json")),
    );
    assert!(written.is_some_and(|w| w.value.is_ok()));
    assert!(matches!(
        a.load(&created.id).await,
        Err(session_store::Error::Decode(_))
    ));
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_of_one_session_on_two_nodes_that_change_different_keys_both_keep_theirs() {
    let trio = Trio::start("tower-concurrent").await;
    let [a, b, c] = trio.stores();

    let mut created = record(
        &[("a", json!(0)), ("b", json!(0)), ("list", json!([1, 2]))],
        in_an_hour(),
    );
    a.create(&mut created).await.expect("created");
    let id = created.id;
    for round in 1..=20 {
        // Two requests load the session, each on its node, then save at once.
        let mut on_a = load(a, &id).await.expect("on a");
        let mut on_b = load(b, &id).await.expect("on b");
        on_a.data.insert("a".into(), json!(round));
        on_a.data.insert(format!("a{round}"), json!(true));
        on_b.data.insert("b".into(), json!(round));
        on_b.data.insert(format!("b{round}"), json!(true));
        if round == 1 {
            on_b.data.remove("list");
        }
        let (saved_a, saved_b) = tokio::join!(a.save(&on_a), b.save(&on_b));
        saved_a.expect("saved on a");
        saved_b.expect("saved on b");
    }
    let mut want = map(&[("a", json!(20)), ("b", json!(20))]);
    for round in 1..=20 {
        want.insert(format!("a{round}"), json!(true));
        want.insert(format!("b{round}"), json!(true));
    }
    for store in [a, b, c] {
        let got = load(store, &id).await.expect("held");
        assert_eq!(data(&got), want, "no change of either request is lost");
    }

    // A record whose data was cleared (tower-sessions' `Session::clear`) is saved whole:
    // every key it lacks goes, whoever wrote it.
    let mut cleared = load(c, &id).await.expect("on c");
    cleared.data.clear();
    cleared.data.insert("fresh".into(), json!("start"));
    c.save(&cleared).await.expect("saved");
    for store in [a, b, c] {
        let got = load(store, &id).await.expect("held");
        assert_eq!(data(&got), map(&[("fresh", json!("start"))]));
    }
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_session_is_gone_everywhere_and_a_late_save_does_not_bring_it_back() {
    let trio = Trio::start("tower-delete").await;
    let [a, b, c] = trio.stores();

    let mut created = record(&[("user", json!("ada"))], in_an_hour());
    a.create(&mut created).await.expect("created");
    let id = created.id;
    // A request on b is still running with the session when a deletes it.
    let mut late = load(b, &id).await.expect("on b");
    a.delete(&id).await.expect("deleted");
    for store in [a, b, c] {
        assert!(load(store, &id).await.is_none(), "deleted on every member");
    }
    late.data.insert("cart".into(), json!(["book"]));
    b.save(&late)
        .await
        .expect("a late save of a deleted session is not an error: it writes nothing");
    for store in [a, b, c] {
        assert!(
            load(store, &id).await.is_none(),
            "the late save did not revive it"
        );
    }
    assert!(!trio.anywhere(&id));

    // Deleting again, or an id nobody holds, is fine.
    c.delete(&id).await.expect("deleted again");
    c.delete(&Id::default()).await.expect("an unknown id");
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_an_id_held_elsewhere_in_the_cluster_gets_a_new_id() {
    let trio = Trio::start("tower-collide").await;
    let [a, b, c] = trio.stores();

    let mut on_b = record(&[("owner", json!("b"))], in_an_hour());
    b.create(&mut on_b).await.expect("created on b");
    let mut on_a = record(&[("owner", json!("a"))], in_an_hour());
    on_a.id = on_b.id;
    a.create(&mut on_a).await.expect("created on a");
    assert_ne!(on_a.id, on_b.id, "a new id, written back into the record");
    for store in [a, b, c] {
        let theirs = load(store, &on_b.id).await.expect("b's session");
        assert_eq!(data(&theirs), map(&[("owner", json!("b"))]), "untouched");
        let ours = load(store, &on_a.id).await.expect("a's session");
        assert_eq!(data(&ours), map(&[("owner", json!("a"))]));
    }

    // Nor is a deleted id (a tombstone on every member) given out again.
    c.delete(&on_b.id).await.expect("deleted");
    let mut again = record(&[("owner", json!("again"))], in_an_hour());
    again.id = on_b.id;
    a.create(&mut again).await.expect("created");
    assert_ne!(again.id, on_b.id);
    for store in [a, b, c] {
        assert!(
            load(store, &on_b.id).await.is_none(),
            "the deleted one stays deleted"
        );
    }

    // Ids made on different members never meet.
    let mut ids = HashSet::new();
    for i in 0..60 {
        let mut r = record(&[("i", json!(i))], in_an_hour());
        trio.stores[i % 3].create(&mut r).await.expect("created");
        assert!(ids.insert(r.id), "a fresh id every time");
    }
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_gone_everywhere_once_its_expiry_date_passes() {
    let trio = Trio::start("tower-expiry").await;
    let [a, b, c] = trio.stores();

    // Already past: never loaded.
    let mut past = record(
        &[("k", json!(1))],
        OffsetDateTime::now_utc() - time::Duration::minutes(1),
    );
    a.create(&mut past).await.expect("created");
    for store in [a, b, c] {
        assert!(load(store, &past.id).await.is_none(), "expired already");
    }

    // Due in two seconds: there until then, gone from then on.
    let due = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let mut soon = record(&[("k", json!(2))], due);
    a.create(&mut soon).await.expect("created");
    for store in [a, b, c] {
        let asked = OffsetDateTime::now_utc();
        let got = load(store, &soon.id).await;
        if asked < due {
            assert!(got.is_some(), "not gone before its expiry date");
        }
    }
    let id = soon.id;
    eventually("the session is gone on c", move || async move {
        load(c, &id).await.is_none().then_some(())
    })
    .await;
    assert!(
        OffsetDateTime::now_utc() >= due,
        "gone only once its expiry date passed"
    );
    for store in [a, b] {
        assert!(load(store, &soon.id).await.is_none());
    }
    // The nodes sweep it a little later; tower-sessions' deletion task may ask too.
    c.delete_expired().await.expect("swept");
    let nodes = &trio;
    eventually("every node swept it", move || async move {
        (!nodes.anywhere(&id)).then_some(())
    })
    .await;

    // A save that moves the expiry date into the past ends the session.
    let mut live = record(&[("k", json!(3))], in_an_hour());
    b.create(&mut live).await.expect("created");
    let mut ending = load(c, &live.id).await.expect("live");
    ending.expiry_date = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    c.save(&ending).await.expect("saved");
    for store in [a, b, c] {
        assert!(load(store, &live.id).await.is_none(), "ended by its save");
    }
    trio.shutdown().await;
}

/// Increments the session's counter and answers it.
async fn count(session: Session) -> String {
    let n: u64 = session
        .get("n")
        .await
        .expect("the store answers")
        .unwrap_or(0);
    session.insert("n", n + 1).await.expect("the store answers");
    (n + 1).to_string()
}

/// Ends the session (tower-sessions deletes it from the store).
async fn logout(session: Session) -> &'static str {
    session.flush().await.expect("the store answers");
    "bye"
}

/// One HTTP exchange with the app at `addr`, off the runtime's threads.
async fn send(addr: SocketAddr, path: &'static str, cookie: Option<String>) -> common::Answer {
    tokio::task::spawn_blocking(move || {
        common::exchange(addr, "POST", path, cookie.as_deref(), b"")
    })
    .await
    .expect("the exchange ran")
    .unwrap_or_else(|| panic!("POST {path} on {addr} got no answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_app_on_tower_sessions_keeps_its_sessions_on_every_instance() {
    let trio = Trio::start("tower-http").await;
    // The app, three times: one instance per node, each with the store of its node.
    let mut apps = Vec::new();
    for store in &trio.stores {
        let app = Router::new()
            .route("/count", post(count))
            .route("/logout", post(logout))
            .layer(SessionManagerLayer::new(store.clone()).with_secure(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        apps.push(listener.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    let first = send(apps[0], "/count", None).await;
    assert_eq!((first.status, first.text()), (200, "1".to_string()));
    let cookie = first.set_cookie.expect("a session cookie");
    let (name, value) = cookie.split_once('=').expect("name=value");
    assert_eq!(name, "id", "tower-sessions' cookie");
    let id: Id = value.parse().expect("tower-sessions' id");
    assert!(
        trio.nodes
            .iter()
            .all(|n| n.shared().store.contains(deltacast_id(&id))),
        "every member holds the session once the response is out"
    );
    // The same browser on the other instances, and back.
    for (i, want) in [(1, "2"), (2, "3"), (0, "4")] {
        let answer = send(apps[i], "/count", Some(cookie.clone())).await;
        assert_eq!((answer.status, answer.text()), (200, want.to_string()));
    }

    let bye = send(apps[1], "/logout", Some(cookie.clone())).await;
    assert_eq!(bye.status, 200);
    for node in &trio.nodes {
        assert!(
            !node.shared().store.contains(deltacast_id(&id)),
            "deleted everywhere"
        );
    }
    let after = send(apps[2], "/count", Some(cookie.clone())).await;
    assert_eq!(
        (after.status, after.text()),
        (200, "1".to_string()),
        "a new session"
    );
    let new_cookie = after.set_cookie.expect("a new session cookie");
    assert_ne!(new_cookie, cookie);
    trio.shutdown().await;
}
