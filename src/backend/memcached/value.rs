//! The value of a session's item: the whole session in a small versioned binary form,
//! decoded defensively (whatever does not decode is no session, never a panic).
//!
//! ```text
//! "DCS" version=1 kind            4 + 1 bytes
//! kind 0 (a session):
//!   created_ms u64, accessed_ms u64, max_inactive_s u32, count u32   (big-endian)
//!   count x { name_len u16, name (UTF-8, not empty), value_len u32, value }
//! kind 1 (dead: the old id of a change of id, until it expires): nothing more
//! ```
//! Nothing may follow the last attribute; names are unique.

use bytes::Bytes;

use crate::session::{Detached, SessionId};

const MAGIC: &[u8; 3] = b"DCS";
const VERSION: u8 = 1;
const KIND_SESSION: u8 = 0;
const KIND_DEAD: u8 = 1;

/// What an item holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// A live session.
    Session(Detached),
    /// The old id of a change of id: no session.
    Dead,
    /// Anything that does not decode: no session.
    Garbage,
}

/// The item of a session.
pub fn encode(session: &Detached) -> Vec<u8> {
    let attrs: Vec<(&str, &Bytes)> = session.attributes().collect();
    let size = 5
        + 24
        + attrs
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(KIND_SESSION);
    out.extend_from_slice(&session.created_ms().to_be_bytes());
    out.extend_from_slice(&session.last_accessed_ms().to_be_bytes());
    out.extend_from_slice(&session.max_inactive_s().to_be_bytes());
    out.extend_from_slice(&(attrs.len() as u32).to_be_bytes());
    for (name, value) in attrs {
        // Names and values are bounded by the session limits far below these widths.
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The item of an old id after a change of id.
pub fn encode_dead() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.push(KIND_DEAD);
    out
}

/// What `data` holds for session `id`.
pub fn decode(id: SessionId, data: &[u8]) -> Stored {
    decode_inner(id, data).unwrap_or(Stored::Garbage)
}

fn decode_inner(id: SessionId, data: &[u8]) -> Option<Stored> {
    let mut r = Reader(data);
    if r.take(3)? != MAGIC || r.u8()? != VERSION {
        return None;
    }
    match r.u8()? {
        KIND_DEAD if r.0.is_empty() => return Some(Stored::Dead),
        KIND_SESSION => {}
        _ => return None,
    }
    let created = r.u64()?;
    let accessed = r.u64()?;
    let max_inactive = r.u32()?;
    let count = r.u32()? as usize;
    // Each attribute takes at least 7 bytes: a count beyond what is left is a lie.
    if count > r.0.len() / 7 {
        return None;
    }
    let mut attributes: Vec<(String, Bytes)> = Vec::with_capacity(count);
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = std::str::from_utf8(r.take(name_len)?).ok()?;
        if name.is_empty() || attributes.iter().any(|(n, _)| n == name) {
            return None;
        }
        let value_len = r.u32()? as usize;
        let value = Bytes::copy_from_slice(r.take(value_len)?);
        attributes.push((name.to_string(), value));
    }
    if !r.0.is_empty() || max_inactive == 0 {
        return None;
    }
    Some(Stored::Session(Detached::new(
        id,
        created,
        accessed,
        max_inactive,
        attributes,
    )))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> SessionId {
        SessionId::from_bytes([9; 16])
    }

    #[test]
    fn a_session_decodes_as_it_was_encoded() {
        let s = Detached::new(
            id(),
            1,
            2,
            1800,
            [
                ("hits".to_string(), Bytes::from("3")),
                ("bin".to_string(), Bytes::from_static(&[0, 255])),
            ],
        );
        assert_eq!(decode(id(), &encode(&s)), Stored::Session(s));
        assert_eq!(decode(id(), &encode_dead()), Stored::Dead);
    }

    #[test]
    fn what_is_not_this_form_is_garbage() {
        let s = Detached::new(id(), 1, 2, 60, [("a".to_string(), Bytes::from("b"))]);
        let good = encode(&s);
        let mut trailing = good.clone();
        trailing.push(0);
        let mut other_version = good.clone();
        other_version[3] = 2;
        let mut zero_ttl = good.clone();
        zero_ttl[21..25].copy_from_slice(&0u32.to_be_bytes());
        let mut dead_with_tail = encode_dead();
        dead_with_tail.push(1);
        for bad in [
            &b""[..],
            b"garbage",
            b"DCS",
            &good[..good.len() - 1],
            &trailing,
            &other_version,
            &zero_ttl,
            &dead_with_tail,
        ] {
            assert_eq!(decode(id(), bad), Stored::Garbage, "{bad:?}");
        }
    }

    #[test]
    fn a_name_twice_or_empty_is_garbage() {
        let mut data = encode(&Detached::new(id(), 1, 2, 60, []));
        data[25..29].copy_from_slice(&2u32.to_be_bytes());
        for _ in 0..2 {
            data.extend_from_slice(&1u16.to_be_bytes());
            data.push(b'a');
            data.extend_from_slice(&0u32.to_be_bytes());
        }
        assert_eq!(decode(id(), &data), Stored::Garbage);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_garbage_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            keep_header in any::<bool>(),
        ) {
            let mut data = bytes;
            if keep_header && data.len() >= 5 {
                data[..5].copy_from_slice(b"DCS\x01\x00");
            }
            let _ = decode(id(), &data);
        }

        #[test]
        fn any_session_round_trips(
            created in any::<u64>(),
            accessed in any::<u64>(),
            secs in 1u32..,
            attrs in proptest::collection::btree_map("[a-zA-Z0-9_é]{1,12}", proptest::collection::vec(any::<u8>(), 0..40), 0..8),
        ) {
            let s = Detached::new(id(), created, accessed, secs, attrs.into_iter().map(|(k, v)| (k, Bytes::from(v))));
            prop_assert_eq!(decode(id(), &encode(&s)), Stored::Session(s));
        }
    }
}
