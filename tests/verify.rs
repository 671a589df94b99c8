//! The failure detector's verification against the real replication port: heartbeat's own
//! tests use a ping responder written out by hand (heartbeat knows nothing of
//! replication), so this is where the two are held together, under a cluster key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use deltacast::heartbeat::verify;
use deltacast::membership::{NodeId, Verdict};
use deltacast::metrics::Metrics;
use deltacast::replication::{InboundConfig, serve};
use deltacast::session::SessionStore;
use deltacast::wire::seal::ClusterKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "verify-test";
const SUSPECT: NodeId = NodeId::from_u64(7);
const VERIFIER: NodeId = NodeId::from_u64(1);
const TIMEOUT: Duration = Duration::from_secs(2);

fn key(text: &str) -> ClusterKey {
    ClusterKey::from_text(text).expect("a key")
}

/// The suspect's replication port, served as a node serves it, with `key`.
async fn suspect_port(key: ClusterKey, stop: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = SessionStore::new(SUSPECT, Default::default(), 60);
    let mut cfg = InboundConfig::new(
        CLUSTER.into(),
        SUSPECT,
        store,
        Arc::new(AtomicBool::new(true)),
    );
    cfg.key = Some(key);
    tokio::spawn(serve(
        listener,
        cfg,
        Arc::new(Metrics::default()),
        stop.clone(),
    ));
    addr
}

async fn verify_with(addr: SocketAddr, key: Option<&ClusterKey>, suspect: NodeId) -> Verdict {
    verify(addr, CLUSTER, key, VERIFIER, suspect, TIMEOUT).await
}

#[tokio::test]
async fn a_keyed_member_answers_a_verifier_with_the_key() {
    let stop = CancellationToken::new();
    let addr = suspect_port(key("the cluster's key"), &stop).await;
    assert_eq!(
        verify_with(addr, Some(&key("the cluster's key")), SUSPECT).await,
        Verdict::Answered
    );
    stop.cancel();
}

#[tokio::test]
async fn a_keyed_member_does_not_answer_a_verifier_without_the_key_or_with_another() {
    let stop = CancellationToken::new();
    let addr = suspect_port(key("the cluster's key"), &stop).await;
    assert_eq!(verify_with(addr, None, SUSPECT).await, Verdict::NoAnswer);
    assert_eq!(
        verify_with(addr, Some(&key("another key of another cluster")), SUSPECT).await,
        Verdict::NoAnswer
    );
    stop.cancel();
}

/// With the key, the handshake names the node that answers: another node on the suspect's
/// port (a restart under a new id) means the suspect is gone.
#[tokio::test]
async fn another_keyed_node_on_the_suspects_port_means_the_suspect_is_gone() {
    let stop = CancellationToken::new();
    let addr = suspect_port(key("the cluster's key"), &stop).await;
    assert_eq!(
        verify_with(addr, Some(&key("the cluster's key")), NodeId::from_u64(8)).await,
        Verdict::Refused
    );
    stop.cancel();
}
