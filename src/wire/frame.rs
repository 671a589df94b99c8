//! Stream frames of the replication port. The length prefix belongs to the transport's
//! codec; this file encodes and checks what is inside it.

use bytes::Bytes;
use prost::Message;

use super::{PROTOCOL_VERSION, WireError, check_envelope, pb};
use crate::membership::NodeId;

/// Hard limit of one frame; a peer announcing a longer one is cut off.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What a frame says, once its envelope has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameBody {
    /// Are you alive? (the failure detector's verification)
    Ping(u64),
    /// Yes: the answer to the `Ping` with the same nonce.
    Pong(u64),
}

pub fn encode_frame(cluster: &str, sender: NodeId, body: &FrameBody) -> Bytes {
    let body = match body {
        FrameBody::Ping(nonce) => pb::frame::Body::Ping(pb::Ping { nonce: *nonce }),
        FrameBody::Pong(nonce) => pb::frame::Body::Pong(pb::Pong { nonce: *nonce }),
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

/// The sender and body of a frame of `expected_cluster`, or why it must be dropped.
pub fn decode_frame(buf: &[u8], expected_cluster: &str) -> Result<(NodeId, FrameBody), WireError> {
    if buf.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: buf.len(),
            max: MAX_FRAME,
        });
    }
    let msg = pb::Frame::decode(buf)?;
    check_envelope(msg.version, &msg.cluster, expected_cluster)?;
    let body = match msg.body {
        Some(pb::frame::Body::Ping(p)) => FrameBody::Ping(p.nonce),
        Some(pb::frame::Body::Pong(p)) => FrameBody::Pong(p.nonce),
        None => {
            return Err(WireError::Invalid {
                field: "body",
                reason: "missing".into(),
            });
        }
    };
    Ok((NodeId::from_u64(msg.sender), body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ping_and_pong_round_trip() {
        for body in [FrameBody::Ping(7), FrameBody::Pong(u64::MAX)] {
            let bytes = encode_frame("c1", NodeId::from_u64(3), &body);
            assert_eq!(decode_frame(&bytes, "c1"), Ok((NodeId::from_u64(3), body)));
        }
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
    fn an_empty_frame_is_rejected() {
        assert!(decode_frame(&[], "c1").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_frame(&bytes, "c1");
        }
    }
}
