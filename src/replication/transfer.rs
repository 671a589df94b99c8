//! State transfer: a joining node asks one alive member for every session, streamed in
//! batches, and merges them; deltas that arrive meanwhile go through the same merge, so
//! their order does not matter. If the member fails mid-way, the next one is asked.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::heartbeat::MembershipView;
use crate::membership::{MemberInfo, MemberState, NodeId};
use crate::session::SessionStore;
use crate::transport;
use crate::wire::{self, FrameBody};

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

/// The longest silence of a member in the middle of a transfer.
const STALL: Duration = Duration::from_secs(10);

/// Runs the transfer: waits up to `wait_for_members` for a first member, then asks the
/// alive members one after another until one sends everything.
pub async fn run(
    cluster: &str,
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
    let candidates: Vec<MemberInfo> = view
        .borrow()
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.info.clone())
        .collect();
    for member in candidates {
        let started = Instant::now();
        match from_member(cluster, me, store, &member).await {
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
    cluster: &str,
    me: NodeId,
    store: &SessionStore,
    member: &MemberInfo,
) -> Result<usize, String> {
    let mut stream = tokio::time::timeout(STALL, transport::connect(member.replication))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let request = rand::random::<u64>();
    stream
        .send(wire::encode_frame(
            cluster,
            me,
            &FrameBody::StateRequest(request),
        ))
        .await
        .map_err(|e| e.to_string())?;
    let mut sessions = 0;
    loop {
        let frame = match tokio::time::timeout(STALL, stream.next()).await {
            Err(_) => return Err(format!("no data for {STALL:?}")),
            Ok(None) => return Err("closed before the end".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        match wire::decode_frame(&frame, cluster) {
            Ok((
                _,
                FrameBody::StateBatch {
                    request: r,
                    sessions: batch,
                    done,
                },
            )) if r == request => {
                let now = crate::node::now_ms();
                for d in &batch {
                    store.apply(d, now);
                }
                sessions += batch.len();
                if done {
                    return Ok(sessions);
                }
            }
            Ok(_) => {}
            Err(e) => return Err(format!("bad frame: {e}")),
        }
    }
}
