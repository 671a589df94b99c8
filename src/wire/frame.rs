//! Stream frames of the replication port. The length prefix belongs to the transport's
//! codec; this file encodes and checks what is inside it.

use bytes::Bytes;
use prost::Message;

use super::{PROTOCOL_VERSION, WireError, check_envelope, pb};
use crate::membership::NodeId;
use crate::session::{AttributeChange, Delta, SessionId, Version};

/// Hard limit of one frame; a peer announcing a longer one is cut off.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What a frame says, once its envelope has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameBody {
    /// Are you alive? (the failure detector's verification)
    Ping(u64),
    /// Yes: the answer to the `Ping` with the same nonce.
    Pong(u64),
    /// Session changes in order; answered by `Ack(seq)`.
    Deltas { seq: u64, deltas: Vec<Delta> },
    /// Every `Deltas` up to this seq is applied.
    Ack(u64),
    /// Access times of sessions touched on the sender.
    Access(Vec<(SessionId, u64)>),
    /// A joining node asks for every session.
    StateRequest(u64),
    /// A batch of the answer; `done` on the last.
    StateBatch {
        request: u64,
        sessions: Vec<Delta>,
        done: bool,
    },
    /// Anti-entropy: the sender's digest of each shard.
    Digest(Vec<(u32, u64)>),
    /// Anti-entropy: the per-session digests of one shard that differs.
    ShardEntries {
        shard: u32,
        entries: Vec<(SessionId, u64)>,
    },
    /// Anti-entropy: send me these sessions whole.
    Pull(Vec<SessionId>),
}

impl FrameBody {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameBody::Ping(_) => "ping",
            FrameBody::Pong(_) => "pong",
            FrameBody::Deltas { .. } => "deltas",
            FrameBody::Ack(_) => "ack",
            FrameBody::Access(_) => "access",
            FrameBody::StateRequest(_) => "state_request",
            FrameBody::StateBatch { .. } => "state_batch",
            FrameBody::Digest(_) => "digest",
            FrameBody::ShardEntries { .. } => "shard_entries",
            FrameBody::Pull(_) => "pull",
        }
    }
}

pub fn encode_frame(cluster: &str, sender: NodeId, body: &FrameBody) -> Bytes {
    use pb::frame::Body as B;
    let body = match body {
        FrameBody::Ping(nonce) => B::Ping(pb::Ping { nonce: *nonce }),
        FrameBody::Pong(nonce) => B::Pong(pb::Pong { nonce: *nonce }),
        FrameBody::Deltas { seq, deltas } => B::Deltas(pb::Deltas {
            seq: *seq,
            deltas: deltas.iter().map(delta_to_pb).collect(),
        }),
        FrameBody::Ack(seq) => B::Ack(pb::Ack { seq: *seq }),
        FrameBody::Access(times) => B::Access(pb::Access {
            times: times
                .iter()
                .map(|(id, at)| pb::AccessTime {
                    id: id_bytes(*id),
                    last_access_ms: *at,
                })
                .collect(),
        }),
        FrameBody::StateRequest(request) => B::StateRequest(pb::StateRequest { request: *request }),
        FrameBody::StateBatch {
            request,
            sessions,
            done,
        } => B::StateBatch(pb::StateBatch {
            request: *request,
            sessions: sessions.iter().map(delta_to_pb).collect(),
            done: *done,
        }),
        FrameBody::Digest(shards) => B::Digest(pb::Digest {
            shards: shards
                .iter()
                .map(|(shard, hash)| pb::ShardDigest {
                    shard: *shard,
                    hash: *hash,
                })
                .collect(),
        }),
        FrameBody::ShardEntries { shard, entries } => B::ShardEntries(pb::ShardEntries {
            shard: *shard,
            entries: entries
                .iter()
                .map(|(id, hash)| pb::EntryDigest {
                    id: id_bytes(*id),
                    hash: *hash,
                })
                .collect(),
        }),
        FrameBody::Pull(ids) => B::Pull(pb::Pull {
            ids: ids.iter().map(|id| id_bytes(*id)).collect(),
        }),
    };
    pb::Frame {
        version: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        sender: sender.as_u64(),
        body: Some(body),
    }
    .encode_to_vec()
    .into()
}

/// One delta encoded on its own (a `SessionDelta` message), for [`encode_deltas_frame`]: a
/// change sent to many peers is encoded once, not once per link.
pub fn encode_delta(delta: &Delta) -> Bytes {
    delta_to_pb(delta).encode_to_vec().into()
}

/// The frame `encode_frame` makes of `FrameBody::Deltas { seq, deltas }`, byte for byte,
/// from deltas already encoded by [`encode_delta`].
pub fn encode_deltas_frame(cluster: &str, sender: NodeId, seq: u64, deltas: Vec<Bytes>) -> Bytes {
    pb::DeltasFrame {
        version: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        sender: sender.as_u64(),
        deltas: Some(pb::EncodedDeltas { seq, deltas }),
    }
    .encode_to_vec()
    .into()
}

/// The sender and body of a frame of `expected_cluster`, or why it must be dropped.
pub fn decode_frame(buf: &[u8], expected_cluster: &str) -> Result<(NodeId, FrameBody), WireError> {
    use pb::frame::Body as B;
    if buf.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: buf.len(),
            max: MAX_FRAME,
        });
    }
    let msg = pb::Frame::decode(buf)?;
    check_envelope(msg.version, &msg.cluster, expected_cluster)?;
    let body = match msg.body {
        Some(B::Ping(p)) => FrameBody::Ping(p.nonce),
        Some(B::Pong(p)) => FrameBody::Pong(p.nonce),
        Some(B::Deltas(d)) => FrameBody::Deltas {
            seq: d.seq,
            deltas: d
                .deltas
                .into_iter()
                .map(delta_from_pb)
                .collect::<Result<_, _>>()?,
        },
        Some(B::Ack(a)) => FrameBody::Ack(a.seq),
        Some(B::Access(a)) => FrameBody::Access(
            a.times
                .into_iter()
                .map(|t| Ok((id_from(&t.id)?, t.last_access_ms)))
                .collect::<Result<_, WireError>>()?,
        ),
        Some(B::StateRequest(r)) => FrameBody::StateRequest(r.request),
        Some(B::StateBatch(b)) => FrameBody::StateBatch {
            request: b.request,
            sessions: b
                .sessions
                .into_iter()
                .map(delta_from_pb)
                .collect::<Result<_, _>>()?,
            done: b.done,
        },
        Some(B::Digest(d)) => {
            FrameBody::Digest(d.shards.into_iter().map(|s| (s.shard, s.hash)).collect())
        }
        Some(B::ShardEntries(e)) => FrameBody::ShardEntries {
            shard: e.shard,
            entries: e
                .entries
                .into_iter()
                .map(|x| Ok((id_from(&x.id)?, x.hash)))
                .collect::<Result<_, WireError>>()?,
        },
        Some(B::Pull(p)) => FrameBody::Pull(
            p.ids
                .iter()
                .map(|id| id_from(id))
                .collect::<Result<_, _>>()?,
        ),
        None => {
            return Err(WireError::Invalid {
                field: "body",
                reason: "missing".into(),
            });
        }
    };
    Ok((NodeId::from_u64(msg.sender), body))
}

fn id_bytes(id: SessionId) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

pub(super) fn id_from(bytes: &[u8]) -> Result<SessionId, WireError> {
    SessionId::from_slice(bytes).ok_or_else(|| WireError::Invalid {
        field: "session id",
        reason: format!("{} bytes, expected 16", bytes.len()),
    })
}

fn version_to_pb(v: Version) -> pb::Version {
    pb::Version {
        counter: v.counter,
        node: v.node.as_u64(),
    }
}

fn version_from_pb(v: Option<pb::Version>) -> Version {
    v.map_or(Version::ZERO, |v| Version {
        counter: v.counter,
        node: NodeId::from_u64(v.node),
    })
}

fn delta_to_pb(d: &Delta) -> pb::SessionDelta {
    pb::SessionDelta {
        id: id_bytes(d.id),
        created_ms: d.created_ms,
        last_access_ms: d.last_access_ms,
        max_inactive_s: d.max_inactive.map(|(s, _)| s),
        max_inactive_version: d.max_inactive.map(|(_, v)| version_to_pb(v)),
        attributes: d
            .attributes
            .iter()
            .map(|a| pb::AttributeChange {
                name: a.name.clone(),
                value: a.value.clone(),
                version: Some(version_to_pb(a.version)),
            })
            .collect(),
        invalidated: d.invalidated,
        full: d.full,
        renamed_from: d.renamed_from.map(id_bytes).unwrap_or_default(),
    }
}

/// As [`delta_to_pb`], taking the delta: its names move instead of being copied (the
/// snapshot file encodes every session once).
pub(super) fn delta_into_pb(d: Delta) -> pb::SessionDelta {
    pb::SessionDelta {
        id: id_bytes(d.id),
        created_ms: d.created_ms,
        last_access_ms: d.last_access_ms,
        max_inactive_s: d.max_inactive.map(|(s, _)| s),
        max_inactive_version: d.max_inactive.map(|(_, v)| version_to_pb(v)),
        attributes: d
            .attributes
            .into_iter()
            .map(|a| pb::AttributeChange {
                name: a.name,
                value: a.value,
                version: Some(version_to_pb(a.version)),
            })
            .collect(),
        invalidated: d.invalidated,
        full: d.full,
        renamed_from: d.renamed_from.map(id_bytes).unwrap_or_default(),
    }
}

/// Longest attribute name accepted from the wire.
const MAX_NAME_BYTES: usize = 1024;

pub(super) fn delta_from_pb(d: pb::SessionDelta) -> Result<Delta, WireError> {
    let attributes = d
        .attributes
        .into_iter()
        .map(|a| {
            if a.name.is_empty() || a.name.len() > MAX_NAME_BYTES {
                return Err(WireError::Invalid {
                    field: "attribute name",
                    reason: format!("{} bytes, expected 1 to {MAX_NAME_BYTES}", a.name.len()),
                });
            }
            Ok(AttributeChange {
                name: a.name,
                value: a.value,
                version: version_from_pb(a.version),
            })
        })
        .collect::<Result<_, _>>()?;
    let id = id_from(&d.id)?;
    let renamed_from = checked_renamed_from(&d.renamed_from, id, d.invalidated)?;
    Ok(Delta {
        id,
        created_ms: d.created_ms,
        last_access_ms: d.last_access_ms,
        max_inactive: d
            .max_inactive_s
            .map(|s| (s, version_from_pb(d.max_inactive_version))),
        attributes,
        invalidated: d.invalidated,
        full: d.full,
        renamed_from,
    })
}

/// The old id of a change-id delta: none when empty (a plain delta, or one from a sender
/// that does not know the field); else 16 bytes, another id than the delta's, and not on
/// an invalidation (a change of id that also ended the session means nothing).
fn checked_renamed_from(
    bytes: &[u8],
    id: SessionId,
    invalidated: bool,
) -> Result<Option<SessionId>, WireError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let invalid = |reason: String| WireError::Invalid {
        field: "renamed_from",
        reason,
    };
    let old = SessionId::from_slice(bytes)
        .ok_or_else(|| invalid(format!("{} bytes, expected 16", bytes.len())))?;
    if old == id {
        return Err(invalid("the session's own id".into()));
    }
    if invalidated {
        return Err(invalid("on an invalidation".into()));
    }
    Ok(Some(old))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_deltas_frame_of_deltas_encoded_once_is_the_frame_of_the_deltas() {
        let mut second = delta();
        second.id = SessionId::from_bytes([4; 16]);
        second.attributes.clear();
        second.invalidated = true;
        let empty = Delta::new(SessionId::from_bytes([5; 16]), 0, 0);
        let me = NodeId::from_u64(7);
        for (seq, deltas) in [
            (1, vec![delta()]),
            (0, vec![delta(), second.clone()]),
            (u64::MAX, vec![empty, second, delta()]),
            (3, vec![]),
        ] {
            let encoded: Vec<Bytes> = deltas.iter().map(encode_delta).collect();
            let body = FrameBody::Deltas { seq, deltas };
            let frame = encode_deltas_frame("c", me, seq, encoded);
            assert_eq!(frame, encode_frame("c", me, &body));
            assert_eq!(decode_frame(&frame, "c").unwrap(), (me, body));
        }
    }

    fn delta() -> Delta {
        let mut d = Delta::new(SessionId::from_bytes([3; 16]), 10, 20);
        d.max_inactive = Some((
            1800,
            Version {
                counter: 1,
                node: NodeId::from_u64(9),
            },
        ));
        d.attributes.push(AttributeChange {
            name: "hits".into(),
            value: Some(Bytes::from_static(b"41")),
            version: Version {
                counter: 7,
                node: NodeId::from_u64(9),
            },
        });
        d.attributes.push(AttributeChange {
            name: "gone".into(),
            value: None,
            version: Version {
                counter: 8,
                node: NodeId::from_u64(9),
            },
        });
        d
    }

    /// A change of id: the whole session under its new id, naming the old one.
    fn renamed() -> Delta {
        let mut d = delta();
        d.full = true;
        d.renamed_from = Some(SessionId::from_bytes([6; 16]));
        d
    }

    #[test]
    fn every_body_round_trips() {
        let id = SessionId::from_bytes([5; 16]);
        let mut ended = delta();
        ended.invalidated = true;
        ended.full = true;
        for body in [
            FrameBody::Ping(7),
            FrameBody::Pong(u64::MAX),
            FrameBody::Deltas {
                seq: 3,
                deltas: vec![delta(), ended, renamed()],
            },
            FrameBody::Ack(3),
            FrameBody::Access(vec![(id, 99)]),
            FrameBody::StateRequest(1),
            FrameBody::StateBatch {
                request: 1,
                sessions: vec![delta(), renamed()],
                done: true,
            },
            FrameBody::Digest(vec![(0, 1), (63, u64::MAX)]),
            FrameBody::ShardEntries {
                shard: 4,
                entries: vec![(id, 5)],
            },
            FrameBody::Pull(vec![id]),
        ] {
            let bytes = encode_frame("c1", NodeId::from_u64(3), &body);
            assert_eq!(decode_frame(&bytes, "c1"), Ok((NodeId::from_u64(3), body)));
        }
    }

    #[test]
    fn a_one_attribute_delta_is_small_on_the_wire() {
        let mut d = Delta::new(
            SessionId::from_bytes([3; 16]),
            1_764_000_000_000,
            1_764_000_000_500,
        );
        d.attributes.push(AttributeChange {
            name: "hits".into(),
            value: Some(Bytes::from_static(b"42")),
            version: Version {
                counter: 1234,
                node: NodeId::from_u64(u64::MAX),
            },
        });
        let frame = encode_frame(
            "deltacast",
            NodeId::from_u64(u64::MAX),
            &FrameBody::Deltas {
                seq: 1,
                deltas: vec![d],
            },
        );
        // 4 bytes of length prefix are added by the codec.
        assert!(frame.len() + 4 < 100, "{} bytes", frame.len() + 4);
    }

    #[test]
    fn a_frame_of_another_cluster_is_rejected() {
        let bytes = encode_frame("c1", NodeId::from_u64(3), &FrameBody::Ping(1));
        assert_eq!(
            decode_frame(&bytes, "other"),
            Err(WireError::ForeignCluster("c1".into()))
        );
    }

    #[test]
    fn a_session_id_of_the_wrong_length_is_rejected() {
        let msg = pb::Frame {
            version: PROTOCOL_VERSION,
            cluster: "c1".into(),
            sender: 1,
            body: Some(pb::frame::Body::Pull(pb::Pull {
                ids: vec![Bytes::from_static(b"short")],
            })),
        };
        assert!(matches!(
            decode_frame(&msg.encode_to_vec(), "c1"),
            Err(WireError::Invalid {
                field: "session id",
                ..
            })
        ));
    }

    /// `SessionDelta` as senders built before `renamed_from` (field 9) encode it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct SessionDeltaBeforeRenames {
        #[prost(bytes = "bytes", tag = "1")]
        id: Bytes,
        #[prost(uint64, tag = "2")]
        created_ms: u64,
        #[prost(uint64, tag = "3")]
        last_access_ms: u64,
        #[prost(uint32, optional, tag = "4")]
        max_inactive_s: Option<u32>,
        #[prost(message, optional, tag = "5")]
        max_inactive_version: Option<pb::Version>,
        #[prost(message, repeated, tag = "6")]
        attributes: Vec<pb::AttributeChange>,
        #[prost(bool, tag = "7")]
        invalidated: bool,
        #[prost(bool, tag = "8")]
        full: bool,
    }

    #[test]
    fn a_delta_from_a_sender_without_renames_decodes_as_before() {
        let d = delta();
        let now = delta_to_pb(&d);
        let old = SessionDeltaBeforeRenames {
            id: now.id,
            created_ms: now.created_ms,
            last_access_ms: now.last_access_ms,
            max_inactive_s: now.max_inactive_s,
            max_inactive_version: now.max_inactive_version,
            attributes: now.attributes,
            invalidated: now.invalidated,
            full: now.full,
        };
        let old_bytes: Bytes = old.encode_to_vec().into();
        // Such a delta is byte for byte what this build sends for a delta without a rename.
        assert_eq!(old_bytes, encode_delta(&d));
        let frame = encode_deltas_frame("c1", NodeId::from_u64(3), 1, vec![old_bytes]);
        let (_, body) = decode_frame(&frame, "c1").unwrap();
        assert_eq!(
            body,
            FrameBody::Deltas {
                seq: 1,
                deltas: vec![d]
            }
        );
        assert!(
            matches!(body, FrameBody::Deltas { ref deltas, .. } if deltas[0].renamed_from.is_none())
        );
    }

    #[test]
    fn a_rename_with_a_bad_old_id_is_rejected_without_a_panic() {
        let me = NodeId::from_u64(3);
        let frame_of =
            |d: pb::SessionDelta| encode_deltas_frame("c1", me, 1, vec![d.encode_to_vec().into()]);
        let short = pb::SessionDelta {
            renamed_from: Bytes::from_static(b"short"),
            ..delta_to_pb(&renamed())
        };
        let long = pb::SessionDelta {
            renamed_from: Bytes::from(vec![1; 17]),
            ..delta_to_pb(&renamed())
        };
        let itself = pb::SessionDelta {
            renamed_from: Bytes::from_static(&[3; 16]),
            ..delta_to_pb(&renamed())
        };
        let ended = pb::SessionDelta {
            invalidated: true,
            ..delta_to_pb(&renamed())
        };
        for (what, d) in [
            ("short", short),
            ("long", long),
            ("its own id", itself),
            ("invalidated", ended),
        ] {
            let got = decode_frame(&frame_of(d), "c1");
            assert!(
                matches!(
                    got,
                    Err(WireError::Invalid {
                        field: "renamed_from",
                        ..
                    })
                ),
                "{what}: {got:?}"
            );
        }
    }

    #[test]
    fn an_empty_frame_is_rejected() {
        assert!(decode_frame(&[], "c1").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_frame(&bytes, "c1");
        }

        #[test]
        fn mutated_rename_frames_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = encode_frame("c1", NodeId::from_u64(3), &FrameBody::Deltas { seq: 1, deltas: vec![renamed()] }).to_vec();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            if let Ok((_, FrameBody::Deltas { deltas, .. })) = decode_frame(&bytes, "c1") {
                for d in deltas {
                    prop_assert!(d.renamed_from.is_none_or(|old| old != d.id && !d.invalidated));
                }
            }
        }

        #[test]
        fn mutated_valid_frames_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = encode_frame("c1", NodeId::from_u64(3), &FrameBody::Deltas { seq: 1, deltas: vec![delta()] }).to_vec();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = decode_frame(&bytes, "c1");
        }
    }
}
