//! How many sessions go in one frame. State transfer, answers to pulls and anti-entropy
//! pushes all send whole sessions in bulk; bounded frames keep one transfer from holding a
//! link (and the receiver's memory) for the length of one huge write.

use crate::session::Delta;

/// Most sessions in one frame.
const BATCH_SESSIONS: usize = 2_000;
/// Most bytes (about) in one frame.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Splits `deltas`, in order, into frames of at most [`BATCH_SESSIONS`] sessions and about
/// [`BATCH_BYTES`]; a session larger than that goes alone.
pub(crate) fn chunk(deltas: Vec<Delta>) -> Vec<Vec<Delta>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for d in deltas {
        let size = estimated_size(&d);
        if !current.is_empty() && (current.len() >= BATCH_SESSIONS || bytes + size > BATCH_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(d);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// About what `d` costs on the wire: cheap to compute, not exact (the frame limit has room).
fn estimated_size(d: &Delta) -> usize {
    64 + d
        .attributes
        .iter()
        .map(|a| a.name.len() + a.value.as_ref().map_or(0, |v| v.len()) + 24)
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeId;
    use crate::session::{AttributeChange, SessionId, Version};
    use bytes::Bytes;

    fn session(n: u32, value_len: usize) -> Delta {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let mut d = Delta::new(SessionId::from_bytes(id), 1, 1);
        if value_len > 0 {
            d.attributes.push(AttributeChange {
                name: "a".into(),
                value: Some(Bytes::from(vec![b'x'; value_len])),
                version: Version {
                    counter: 1,
                    node: NodeId::from_u64(1),
                },
            });
        }
        d
    }

    fn sizes(frames: &[Vec<Delta>]) -> Vec<usize> {
        frames.iter().map(Vec::len).collect()
    }

    #[test]
    fn nothing_to_send_is_no_frame() {
        assert!(chunk(Vec::new()).is_empty());
    }

    #[test]
    fn small_sessions_go_two_thousand_to_a_frame_in_their_order() {
        let deltas: Vec<Delta> = (0..4_500).map(|n| session(n, 0)).collect();
        let frames = chunk(deltas.clone());
        assert_eq!(sizes(&frames), vec![2_000, 2_000, 500]);
        assert_eq!(frames.concat(), deltas);
    }

    #[test]
    fn large_sessions_close_a_frame_before_it_passes_four_megabytes() {
        // Each about 1 MiB: three fit, a fourth would pass the limit.
        let deltas: Vec<Delta> = (0..7).map(|n| session(n, 1024 * 1024)).collect();
        let frames = chunk(deltas.clone());
        assert_eq!(sizes(&frames), vec![3, 3, 1]);
        assert_eq!(frames.concat(), deltas);
    }

    #[test]
    fn a_session_larger_than_a_frame_goes_alone_and_is_not_lost() {
        let deltas = vec![session(0, 10), session(1, 5 * 1024 * 1024), session(2, 10)];
        assert_eq!(sizes(&chunk(deltas)), vec![1, 1, 1]);
    }
}
