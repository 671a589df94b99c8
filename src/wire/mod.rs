//! Bytes to messages and back. Synchronous and socket-free: the generated protobuf types
//! stay private here, and everything that leaves this module is a checked domain value.
//!
//! Every envelope is checked in the same order before its body is looked at: size,
//! magic (datagrams), decode, protocol version, cluster name, sender.

mod datagram;
mod frame;
pub mod key_file;
pub mod seal;
mod snapshot;

pub use datagram::{MAGIC, MAX_DATAGRAM, decode_datagram, encode_heartbeat};
pub use frame::{
    FrameBody, MAX_FRAME, decode_frame, encode_delta, encode_deltas_frame, encode_frame,
};
pub use snapshot::{
    SNAPSHOT_HEADER_LEN, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, Snapshot, SnapshotError, SnapshotWriter,
    decode_snapshot,
};

use thiserror::Error;

/// Version of the cluster protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

#[allow(clippy::all, missing_docs)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/deltacast.v1.rs"));
}

/// Why a datagram or frame was not accepted. Every variant is counted and dropped by the
/// caller; none of them is ever fatal.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not a deltacast message (bad magic)")]
    BadMagic,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u32),
    #[error("message of cluster {0:?}")]
    ForeignCluster(String),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

impl WireError {
    /// A short stable label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "oversized",
            WireError::BadMagic | WireError::Decode(_) | WireError::Invalid { .. } => "malformed",
            WireError::Version(_) => "version",
            WireError::ForeignCluster(_) => "foreign_cluster",
            WireError::Seal(seal::SealError::Replayed) => "replayed",
            WireError::Seal(_) => "unauthenticated",
        }
    }
}

impl From<prost::DecodeError> for WireError {
    fn from(e: prost::DecodeError) -> WireError {
        WireError::Decode(e.to_string())
    }
}

fn check_envelope(version: u32, cluster: &str, expected_cluster: &str) -> Result<(), WireError> {
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    if cluster != expected_cluster {
        return Err(WireError::ForeignCluster(cluster.to_string()));
    }
    Ok(())
}
