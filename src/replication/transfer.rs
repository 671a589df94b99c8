//! State transfer: a joining node asks one alive member for every session, streamed in
//! batches, and merges them; deltas that arrive meanwhile go through the same merge, so
//! their order does not matter. If the member fails mid-way, the next one is asked.

use std::io;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock;
use crate::membership::{MemberInfo, MemberState, MembershipView, NodeId};
use crate::session::SessionStore;
use crate::transport::Streams;
use crate::wire::seal::ClusterKey;
use crate::wire::{self, FrameBody, WireError};

/// How a transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// No other member showed up: this node starts the cluster.
    Alone,
    /// `sessions` came from `from`.
    Done {
        from: String,
        sessions: usize,
        took: Duration,
    },
    /// Every member failed; the node serves what it has and anti-entropy fills the rest.
    Failed,
}

/// Why one member's transfer failed; the next member is asked.
#[derive(Debug, Error)]
pub(crate) enum TransferError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("no data for {0:?}")]
    Stalled(Duration),
    #[error("closed before the end")]
    Closed,
    /// Another node answers at the member's address: its state is not the member's.
    #[error("answered by {answered}, not {expected}")]
    WrongPeer { answered: NodeId, expected: NodeId },
    #[error("bad frame: {0}")]
    BadFrame(WireError),
}

/// The longest silence of a member in the middle of a transfer.
const STALL: Duration = Duration::from_secs(10);

/// Runs the transfer: waits up to `wait_for_members` for a first member, then asks the
/// alive members one after another until one sends everything.
pub async fn run(
    streams: &Streams,
    cluster: &str,
    key: Option<&ClusterKey>,
    me: NodeId,
    store: &SessionStore,
    mut view: watch::Receiver<MembershipView>,
    wait_for_members: Duration,
) -> Transfer {
    let found = tokio::time::timeout(
        wait_for_members,
        view.wait_for(|v| v.members.iter().any(|m| m.state == MemberState::Alive)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !found {
        return Transfer::Alone;
    }
    // Members that serve first: one still joining itself holds only part of the state.
    let mut alive: Vec<(bool, MemberInfo)> = view
        .borrow()
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| (m.joining, m.info.clone()))
        .collect();
    alive.sort_by_key(|(joining, _)| *joining);
    let candidates = alive.into_iter().map(|(_, info)| info);
    for member in candidates {
        let started = Instant::now();
        match from_member(streams, cluster, key, me, store, &member).await {
            Ok(sessions) => {
                let took = started.elapsed();
                info!(from = %member.name, sessions, took_ms = took.as_millis() as u64, "state transfer done");
                return Transfer::Done {
                    from: member.name,
                    sessions,
                    took,
                };
            }
            Err(e) => {
                warn!(from = %member.name, error = %e, "state transfer failed; asking another member")
            }
        }
    }
    Transfer::Failed
}

async fn from_member(
    streams: &Streams,
    cluster: &str,
    key: Option<&ClusterKey>,
    me: NodeId,
    store: &SessionStore,
    member: &MemberInfo,
) -> Result<usize, TransferError> {
    let mut stream = tokio::time::timeout(
        STALL,
        streams.connect(member.replication, key, me, member.id),
    )
    .await
    .map_err(|_| TransferError::ConnectTimeout)??;
    let request = rand::random::<u64>();
    stream
        .send(wire::encode_frame(
            cluster,
            me,
            &FrameBody::StateRequest(request),
        ))
        .await?;
    let mut sessions = 0;
    loop {
        let frame = match tokio::time::timeout(STALL, stream.next()).await {
            Err(_) => return Err(TransferError::Stalled(STALL)),
            Ok(None) => return Err(TransferError::Closed),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(frame))) => frame,
        };
        match wire::decode_frame(&frame, cluster) {
            Ok((sender, _)) if sender != member.id => {
                return Err(TransferError::WrongPeer {
                    answered: sender,
                    expected: member.id,
                });
            }
            Ok((
                _,
                FrameBody::StateBatch {
                    request: r,
                    sessions: batch,
                    done,
                },
            )) if r == request => {
                let now = clock::now_ms();
                for d in &batch {
                    store.apply(d, now);
                }
                // Tombstones (invalidations) come along; only sessions are counted.
                sessions += batch.iter().filter(|d| !d.invalidated).count();
                if done {
                    return Ok(sessions);
                }
            }
            Ok(_) => {}
            Err(e) => return Err(TransferError::BadFrame(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberView;
    use crate::metrics::Metrics;
    use crate::replication::{InboundConfig, serve};
    use crate::transport;
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    fn member(id: u64, name: &str, replication: std::net::SocketAddr) -> MemberView {
        MemberView {
            info: MemberInfo {
                id: NodeId::from_u64(id),
                name: name.into(),
                http: "127.0.0.1:1".parse().unwrap(),
                replication,
                incarnation: 1,
            },
            state: MemberState::Alive,
            last_heard: Duration::ZERO,
            joining: false,
        }
    }

    /// A node (id 9) joining a cluster of `members`: its store, and how the transfer went.
    async fn join(members: Vec<MemberView>) -> (SessionStore, Transfer) {
        let view = MembershipView::new(std::time::Instant::now(), members);
        let (_tx, rx) = watch::channel(view);
        let joiner = SessionStore::new(NodeId::from_u64(9), Default::default(), 60);
        let outcome = run(
            &Streams::Tcp,
            "c",
            None,
            NodeId::from_u64(9),
            &joiner,
            rx,
            Duration::from_secs(1),
        )
        .await;
        (joiner, outcome)
    }

    /// The replication port of member `id`, holding `sessions` sessions.
    async fn member_with_sessions(
        id: u64,
        sessions: u32,
    ) -> (std::net::SocketAddr, SessionStore, CancellationToken) {
        let store = SessionStore::new(NodeId::from_u64(id), Default::default(), 60);
        for i in 0..sessions {
            store
                .update_or_create(None, 1, |s| s.set("i", Bytes::from(i.to_string())))
                .unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            InboundConfig::new(
                "c".into(),
                NodeId::from_u64(id),
                store.clone(),
                Arc::new(true.into()),
            ),
            Arc::new(Metrics::default()),
            stop.clone(),
        ));
        (addr, store, stop)
    }

    #[tokio::test]
    async fn state_is_taken_only_from_the_member_asked() {
        // Member 3 is listed where member 2 answers (3 restarted as 2, or traffic sent
        // elsewhere): its "state" is 2's, not 3's, and is not taken for 3's.
        let (addr, _, stop) = member_with_sessions(2, 10).await;
        let members = vec![member(3, "moved", addr), member(2, "there", addr)];
        let (_, outcome) = join(members).await;
        assert!(
            matches!(outcome, Transfer::Done { ref from, sessions: 10, .. } if from == "there"),
            "{outcome:?}"
        );
        stop.cancel();
    }

    /// What asking member `id` at `addr` alone gives a joiner (id 9).
    async fn ask(id: u64, addr: std::net::SocketAddr) -> Result<usize, TransferError> {
        let joiner = SessionStore::new(NodeId::from_u64(9), Default::default(), 60);
        let member = member(id, "asked", addr).info;
        from_member(
            &Streams::Tcp,
            "c",
            None,
            NodeId::from_u64(9),
            &joiner,
            &member,
        )
        .await
    }

    #[tokio::test]
    async fn a_transfer_answered_by_another_node_fails_naming_both() {
        let (addr, _, stop) = member_with_sessions(2, 3).await;
        let failed = ask(3, addr).await;
        assert!(
            matches!(failed, Err(TransferError::WrongPeer { answered, expected })
                if answered == NodeId::from_u64(2) && expected == NodeId::from_u64(3)),
            "{failed:?}"
        );
        let text = failed.unwrap_err().to_string();
        for id in [NodeId::from_u64(2), NodeId::from_u64(3)] {
            assert!(text.contains(&id.to_string()), "{id} not in {text:?}");
        }
        stop.cancel();
    }

    /// A member (id `id`) that takes one whole frame, then closes without answering; the
    /// handle says whether that frame was a state request.
    async fn takes_the_request_then_closes(id: u64) -> (std::net::SocketAddr, JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = tokio::spawn(async move {
            let Ok((s, _)) = listener.accept().await else {
                return false;
            };
            let Ok(mut stream) = transport::accept(s, None, NodeId::from_u64(id)).await else {
                return false;
            };
            let frame = stream.next().await;
            frame.and_then(Result::ok).is_some_and(|f| {
                matches!(
                    wire::decode_frame(&f, "c"),
                    Ok((_, FrameBody::StateRequest(_)))
                )
            })
        });
        (addr, taken)
    }

    #[tokio::test]
    async fn a_member_that_takes_the_request_and_closes_without_a_batch_fails_the_transfer() {
        let (addr, taken) = takes_the_request_then_closes(1).await;
        let failed = ask(1, addr).await;
        assert!(matches!(failed, Err(TransferError::Closed)), "{failed:?}");
        assert!(taken.await.unwrap(), "the member got no state request");
    }

    #[tokio::test]
    async fn a_member_that_sends_every_batch_gives_its_count() {
        let (addr, _, stop) = member_with_sessions(2, 3).await;
        assert_eq!(ask(2, addr).await.unwrap(), 3);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_member_that_closes_after_the_request_is_replaced_by_the_next_one() {
        let (dying_addr, taken) = takes_the_request_then_closes(1).await;
        let (good_addr, full, stop) = member_with_sessions(2, 5000).await;
        let members = vec![member(1, "dying", dying_addr), member(2, "good", good_addr)];
        let (joiner, outcome) = join(members).await;
        assert!(
            matches!(outcome, Transfer::Done { ref from, sessions: 5000, .. } if from == "good"),
            "{outcome:?}"
        );
        assert_eq!(joiner.len(), 5000);
        assert_eq!(joiner.digest(), full.digest());
        assert!(
            taken.await.unwrap(),
            "the dying member got no state request"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_joiner_gets_a_renamed_session_under_its_new_id_and_the_old_ids_tombstone() {
        let (addr, member_store, stop) = member_with_sessions(2, 3).await;
        let made = member_store
            .update_or_create(None, 1, |s| s.set("user", Bytes::from_static(b"ada")))
            .unwrap();
        let renamed = member_store.change_id(made.id, 2, |_| ()).unwrap();
        let joiner = SessionStore::new(NodeId::from_u64(9), Default::default(), 60);
        let sessions = from_member(
            &Streams::Tcp,
            "c",
            None,
            NodeId::from_u64(9),
            &joiner,
            &member(2, "asked", addr).info,
        )
        .await
        .unwrap();
        // Sessions are counted, tombstones are not.
        assert_eq!(sessions, 4);
        assert_eq!(joiner.digest(), member_store.digest());
        assert!(joiner.contains(renamed.id));
        // The old id's creation, still on its way from another member, finds the tombstone.
        assert_eq!(
            joiner.apply(made.delta.as_ref().unwrap(), 3),
            crate::session::Applied::Ended
        );
        assert!(!joiner.contains(made.id));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_hears_no_member_starts_alone() {
        let (_tx, rx) = watch::channel(MembershipView::empty());
        let joiner = SessionStore::new(NodeId::from_u64(9), Default::default(), 60);
        assert_eq!(
            run(
                &Streams::Tcp,
                "c",
                None,
                NodeId::from_u64(9),
                &joiner,
                rx,
                Duration::from_secs(1)
            )
            .await,
            Transfer::Alone
        );
    }
}
