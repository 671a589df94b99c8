//! The sessions file of `sessions.snapshot_file`, bytes to sessions and back: a fixed
//! header (magic, format version, body length, SHA-256 of version, length and body), then
//! a protobuf `Snapshot`. Damage of any kind (a cut, a flipped bit, another program's
//! file, a newer format) is an error here, before any session is looked at; nothing in a
//! file can panic the reader.
//!
//! The body is written session by session ([`SnapshotWriter`]): a repeated field's
//! elements may follow each other anywhere in a message, so the store is encoded shard by
//! shard without building one message of every session first.

use bytes::BufMut;
use prost::Message;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::frame::{delta_from_pb, delta_into_pb, id_from};
use super::{WireError, pb};
use crate::session::{Delta, SessionId};

/// The first bytes of every sessions file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"DCSNAPSH";
/// The format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Magic, version (u32), body length (u64), SHA-256.
pub const SNAPSHOT_HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Field keys of `Snapshot`'s repeated messages (field number << 3 | length-delimited).
const SESSIONS_KEY: u8 = (4 << 3) | 2;
const TOMBSTONES_KEY: u8 = (5 << 3) | 2;

/// Why a sessions file was not read. The caller logs it and starts empty.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than its header, or than the body its header announces.
    #[error("truncated: {len} bytes where {expected} were expected")]
    Truncated {
        /// Bytes in the file.
        len: u64,
        /// Bytes the header (or the header's size) asks for.
        expected: u64,
    },
    /// Bytes after the body the header announces.
    #[error("{extra} bytes after the end of the sessions")]
    Trailing {
        /// How many.
        extra: u64,
    },
    /// Not a deltacast sessions file.
    #[error("not a deltacast sessions file (bad magic)")]
    BadMagic,
    /// Written by a build with another format.
    #[error("format version {0} is not supported (this build reads {SNAPSHOT_VERSION})")]
    Version(u32),
    /// The checksum does not match: some byte changed after it was written.
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    /// The checksum matched but the body does not decode (a bug of the writer, or a file
    /// forged with a matching checksum).
    #[error("undecodable sessions: {0}")]
    Decode(String),
    /// A session in it is not valid.
    #[error("invalid session: {0}")]
    Invalid(WireError),
}

impl From<prost::DecodeError> for SnapshotError {
    fn from(e: prost::DecodeError) -> SnapshotError {
        SnapshotError::Decode(e.to_string())
    }
}

/// What a sessions file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The cluster of the node that wrote it.
    pub cluster: String,
    /// The name of the node that wrote it.
    pub node: String,
    /// When it was written, Unix milliseconds.
    pub written_ms: u64,
    /// Every session that was live, whole.
    pub sessions: Vec<Delta>,
    /// Ids that had ended for good, with when they ended (Unix milliseconds).
    pub tombstones: Vec<(SessionId, u64)>,
}

/// Encodes a sessions file one session at a time.
#[derive(Debug)]
pub struct SnapshotWriter {
    body: Vec<u8>,
    sessions: usize,
    tombstones: usize,
}

impl SnapshotWriter {
    /// A file of `cluster`, written by node `node` at `written_ms`.
    pub fn new(cluster: &str, node: &str, written_ms: u64) -> SnapshotWriter {
        let head = pb::Snapshot {
            cluster: cluster.to_string(),
            node: node.to_string(),
            written_ms,
            sessions: Vec::new(),
            tombstones: Vec::new(),
        };
        let mut body = Vec::with_capacity(64 * 1024);
        head.encode_raw(&mut body);
        SnapshotWriter {
            body,
            sessions: 0,
            tombstones: 0,
        }
    }

    /// Adds a live session (a full delta, as the store exports it).
    pub fn push_session(&mut self, session: Delta) {
        self.body.put_u8(SESSIONS_KEY);
        delta_into_pb(session)
            .encode_length_delimited(&mut self.body)
            .unwrap_or_else(|_| {
                unreachable!("a Vec grows as needed");
            });
        self.sessions += 1;
    }

    /// Adds an id that ended for good at `ended_ms`.
    pub fn push_tombstone(&mut self, id: SessionId, ended_ms: u64) {
        self.body.put_u8(TOMBSTONES_KEY);
        pb::Tombstone {
            id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            ended_ms,
        }
        .encode_length_delimited(&mut self.body)
        .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
        self.tombstones += 1;
    }

    /// Sessions added so far.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Tombstones added so far.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// The whole file: header, then body.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + self.body.len());
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&checksum(&out[8..20], &self.body));
        out.extend_from_slice(&self.body);
        out
    }
}

/// SHA-256 of the version and length fields and the body.
fn checksum(fields: &[u8], body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(fields);
    hash.update(body);
    hash.finalize().into()
}

/// The sessions of a file's bytes, or why it must be ignored.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let len = bytes.len() as u64;
    let Some((header, body)) = bytes.split_at_checked(SNAPSHOT_HEADER_LEN) else {
        // A cut inside the magic is as likely a cut file as another program's.
        let magic_part = bytes.len().min(SNAPSHOT_MAGIC.len());
        if bytes[..magic_part] != SNAPSHOT_MAGIC[..magic_part] {
            return Err(SnapshotError::BadMagic);
        }
        return Err(SnapshotError::Truncated {
            len,
            expected: SNAPSHOT_HEADER_LEN as u64,
        });
    };
    let (magic, rest) = header.split_at(8);
    let (version, rest) = rest.split_at(4);
    let (body_len, sum) = rest.split_at(8);
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u32::from_be_bytes(version.try_into().unwrap_or([0; 4]));
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let announced = u64::from_be_bytes(body_len.try_into().unwrap_or([0; 8]));
    let held = body.len() as u64;
    if held < announced {
        return Err(SnapshotError::Truncated {
            len,
            expected: announced.saturating_add(SNAPSHOT_HEADER_LEN as u64),
        });
    }
    if held > announced {
        return Err(SnapshotError::Trailing {
            extra: held - announced,
        });
    }
    if checksum(&header[8..20], body) != *sum {
        return Err(SnapshotError::Checksum);
    }
    let msg = pb::Snapshot::decode(body)?;
    let sessions = msg
        .sessions
        .into_iter()
        .map(|s| {
            let d = delta_from_pb(s).map_err(SnapshotError::Invalid)?;
            if d.invalidated || d.renamed_from.is_some() {
                return Err(SnapshotError::Invalid(WireError::Invalid {
                    field: "sessions",
                    reason: "an ended or renamed session among the live ones".into(),
                }));
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tombstones = msg
        .tombstones
        .into_iter()
        .map(|t| Ok((id_from(&t.id).map_err(SnapshotError::Invalid)?, t.ended_ms)))
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    Ok(Snapshot {
        cluster: msg.cluster,
        node: msg.node,
        written_ms: msg.written_ms,
        sessions,
        tombstones,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeId;
    use crate::session::{AttributeChange, Version};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn session(n: u8) -> Delta {
        let v = |counter| Version {
            counter,
            node: NodeId::from_u64(7),
        };
        let mut d = Delta::new(SessionId::from_bytes([n; 16]), 1_000, 2_000 + u64::from(n));
        d.full = true;
        d.max_inactive = Some((1800, v(1)));
        d.attributes = vec![
            AttributeChange {
                name: "user".into(),
                value: Some(Bytes::from_static(b"ada")),
                version: v(2),
            },
            AttributeChange {
                name: "cart".into(),
                value: Some(Bytes::from(vec![n; 300])),
                version: v(3),
            },
            AttributeChange {
                name: "removed".into(),
                value: None,
                version: v(4),
            },
        ];
        d
    }

    fn file(sessions: u8, tombstones: u8) -> Vec<u8> {
        let mut w = SnapshotWriter::new("c1", "n2", 99);
        for n in 0..sessions {
            w.push_session(session(n));
        }
        for n in 0..tombstones {
            w.push_tombstone(SessionId::from_bytes([200 + n; 16]), 50 + u64::from(n));
        }
        w.finish()
    }

    #[test]
    fn sessions_and_tombstones_round_trip() {
        let snapshot = decode_snapshot(&file(3, 2)).unwrap();
        assert_eq!(snapshot.cluster, "c1");
        assert_eq!(snapshot.node, "n2");
        assert_eq!(snapshot.written_ms, 99);
        assert_eq!(snapshot.sessions, vec![session(0), session(1), session(2)]);
        assert_eq!(
            snapshot.tombstones,
            vec![
                (SessionId::from_bytes([200; 16]), 50),
                (SessionId::from_bytes([201; 16]), 51)
            ]
        );
    }

    #[test]
    fn an_empty_store_is_a_file_of_no_sessions() {
        let bytes = file(0, 0);
        let snapshot = decode_snapshot(&bytes).unwrap();
        assert!(snapshot.sessions.is_empty() && snapshot.tombstones.is_empty());
        assert_eq!(&bytes[..8], b"DCSNAPSH");
    }

    #[test]
    fn a_file_cut_anywhere_is_truncated() {
        let bytes = file(2, 1);
        for cut in [
            0,
            5,
            SNAPSHOT_HEADER_LEN - 1,
            SNAPSHOT_HEADER_LEN,
            bytes.len() - 1,
        ] {
            assert!(
                matches!(
                    decode_snapshot(&bytes[..cut]),
                    Err(SnapshotError::Truncated { .. })
                ),
                "cut at {cut}: {:?}",
                decode_snapshot(&bytes[..cut])
            );
        }
    }

    #[test]
    fn a_flipped_byte_of_the_body_fails_the_checksum() {
        let mut bytes = file(2, 1);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode_snapshot(&bytes), Err(SnapshotError::Checksum));
        let mut bytes = file(2, 1);
        bytes[SNAPSHOT_HEADER_LEN + 10] ^= 0x80;
        assert_eq!(decode_snapshot(&bytes), Err(SnapshotError::Checksum));
    }

    #[test]
    fn another_format_version_another_program_and_trailing_bytes_are_refused() {
        let mut bytes = file(1, 0);
        bytes[11] = 2;
        assert_eq!(decode_snapshot(&bytes), Err(SnapshotError::Version(2)));
        assert_eq!(
            decode_snapshot(b"[cluster]\nname = \"x\"\n"),
            Err(SnapshotError::BadMagic)
        );
        assert_eq!(decode_snapshot(b"{}"), Err(SnapshotError::BadMagic));
        let mut bytes = file(1, 0);
        bytes.extend_from_slice(b"xyz");
        assert_eq!(
            decode_snapshot(&bytes),
            Err(SnapshotError::Trailing { extra: 3 })
        );
    }

    #[test]
    fn a_matching_checksum_over_a_bad_session_is_still_refused() {
        // Forge a body with a 3-byte session id and a correct checksum.
        let mut body = Vec::new();
        pb::Snapshot {
            cluster: "c1".into(),
            node: "n1".into(),
            written_ms: 1,
            sessions: vec![pb::SessionDelta {
                id: Bytes::from_static(b"abc"),
                ..Default::default()
            }],
            tombstones: Vec::new(),
        }
        .encode(&mut body)
        .unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_be_bytes());
        let sum = checksum(&bytes[8..20], &body);
        bytes.extend_from_slice(&sum);
        bytes.extend_from_slice(&body);
        assert!(matches!(
            decode_snapshot(&bytes),
            Err(SnapshotError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_snapshot(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            // A checksum that matches, so the body decoder itself sees the bytes.
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&SNAPSHOT_MAGIC);
            bytes.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
            bytes.extend_from_slice(&(body.len() as u64).to_be_bytes());
            let sum = checksum(&bytes[8..20], &body);
            bytes.extend_from_slice(&sum);
            bytes.extend_from_slice(&body);
            let _ = decode_snapshot(&bytes);
        }

        #[test]
        fn any_change_to_a_valid_file_is_detected(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
            let original = file(3, 2);
            let mut bytes = original.clone();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            if bytes != original {
                prop_assert!(decode_snapshot(&bytes).is_err());
            }
        }

        #[test]
        fn any_sessions_round_trip(ns in proptest::collection::vec(any::<u8>(), 0..20), ended in proptest::collection::vec((any::<[u8; 16]>(), any::<u64>()), 0..5)) {
            let mut w = SnapshotWriter::new("c", "n", 5);
            for n in &ns {
                w.push_session(session(*n));
            }
            for (id, at) in &ended {
                w.push_tombstone(SessionId::from_bytes(*id), *at);
            }
            let got = decode_snapshot(&w.finish()).unwrap();
            prop_assert_eq!(got.sessions, ns.iter().map(|n| session(*n)).collect::<Vec<_>>());
            prop_assert_eq!(got.tombstones, ended.iter().map(|(id, at)| (SessionId::from_bytes(*id), *at)).collect::<Vec<_>>());
        }
    }
}
