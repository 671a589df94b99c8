//! Heartbeat datagrams: `MAGIC` followed by one encoded `Datagram`, or, with a cluster key,
//! the encoded `Datagram` sealed (see [`super::seal`]).

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;

use super::seal::{DatagramSeal, SEALED_MAGIC, SealError};
use super::{PROTOCOL_VERSION, WireError, check_envelope, pb};
use crate::membership::{Announce, Heartbeat, MemberInfo, NodeId, is_valid_name};

/// First bytes of every datagram: random traffic is rejected before any decoding.
pub const MAGIC: [u8; 4] = *b"DCst";

/// Largest datagram accepted. A heartbeat is about 100 bytes; this leaves room for
/// long names and a later seal without ever fragmenting on a LAN.
pub const MAX_DATAGRAM: usize = 1400;

/// The datagram announcing `hb` to the members of `cluster`, sealed when `seal` is given.
pub fn encode_heartbeat(
    cluster: &str,
    hb: &Heartbeat,
    interval: Duration,
    seal: Option<&mut DatagramSeal>,
) -> Vec<u8> {
    let msg = pb::Datagram {
        version: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        sender: hb.info.id.as_u64(),
        body: Some(pb::datagram::Body::Heartbeat(pb::Heartbeat {
            name: hb.info.name.clone(),
            http: hb.info.http.to_string(),
            replication: hb.info.replication.to_string(),
            incarnation: hb.info.incarnation,
            announce: match hb.announce {
                Announce::Alive => pb::Announce::Alive,
                Announce::Joining => pb::Announce::Joining,
                Announce::Leaving => pb::Announce::Leaving,
            } as i32,
            seq: hb.seq,
            heartbeat_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
        })),
    };
    match seal {
        Some(seal) => seal.seal(&msg.encode_to_vec()),
        None => [&MAGIC[..], &msg.encode_to_vec()].concat(),
    }
}

/// A heartbeat of `expected_cluster`, or why the datagram must be dropped. With `seal`, only
/// a datagram sealed with the same key, not received before, is read; without, a sealed one
/// is refused as unauthenticated.
pub fn decode_datagram(
    buf: &[u8],
    expected_cluster: &str,
    seal: Option<&mut DatagramSeal>,
) -> Result<Heartbeat, WireError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge {
            len: buf.len(),
            max: MAX_DATAGRAM,
        });
    }
    let (msg, sealed_by) = match seal {
        Some(seal) => {
            let (sender, body) = seal.open(buf)?;
            (pb::Datagram::decode(&body[..])?, Some(sender))
        }
        None if buf.starts_with(&SEALED_MAGIC) => return Err(SealError::UnexpectedSeal.into()),
        None => {
            let body = buf.strip_prefix(&MAGIC).ok_or(WireError::BadMagic)?;
            (pb::Datagram::decode(body)?, None)
        }
    };
    check_envelope(msg.version, &msg.cluster, expected_cluster)?;
    if sealed_by.is_some_and(|sender| sender != msg.sender) {
        return Err(WireError::Invalid {
            field: "sender",
            reason: "differs from the sealed sender".into(),
        });
    }
    let Some(pb::datagram::Body::Heartbeat(hb)) = msg.body else {
        return Err(WireError::Invalid {
            field: "body",
            reason: "missing".into(),
        });
    };
    let announce = match pb::Announce::try_from(hb.announce) {
        Ok(pb::Announce::Alive) => Announce::Alive,
        Ok(pb::Announce::Joining) => Announce::Joining,
        Ok(pb::Announce::Leaving) => Announce::Leaving,
        _ => {
            return Err(WireError::Invalid {
                field: "announce",
                reason: format!("unknown value {}", hb.announce),
            });
        }
    };
    if !is_valid_name(&hb.name) {
        return Err(WireError::Invalid {
            field: "name",
            reason: "not 1 to 64 of A-Z a-z 0-9 _ -".into(),
        });
    }
    Ok(Heartbeat {
        info: MemberInfo {
            id: NodeId::from_u64(msg.sender),
            name: hb.name,
            http: parse_addr("http", &hb.http)?,
            replication: parse_addr("replication", &hb.replication)?,
            incarnation: hb.incarnation,
        },
        announce,
        seq: hb.seq,
    })
}

fn parse_addr(field: &'static str, text: &str) -> Result<SocketAddr, WireError> {
    text.parse().map_err(|_| WireError::Invalid {
        field,
        reason: format!(
            "not an ip:port: {:?}",
            text.chars().take(64).collect::<String>()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            info: MemberInfo {
                id: NodeId::from_u64(0xfeed),
                name: "n1".into(),
                http: "127.0.0.1:8081".parse().unwrap(),
                replication: "127.0.0.1:4001".parse().unwrap(),
                incarnation: 17,
            },
            announce: Announce::Leaving,
            seq: 9,
        }
    }

    #[test]
    fn a_heartbeat_round_trips() {
        let bytes = encode_heartbeat("c1", &heartbeat(), Duration::from_millis(500), None);
        assert_eq!(decode_datagram(&bytes, "c1", None), Ok(heartbeat()));
    }

    #[test]
    fn every_announce_round_trips() {
        for announce in [Announce::Alive, Announce::Joining, Announce::Leaving] {
            let hb = Heartbeat {
                announce,
                ..heartbeat()
            };
            let bytes = encode_heartbeat("c1", &hb, Duration::from_millis(500), None);
            assert_eq!(decode_datagram(&bytes, "c1", None), Ok(hb));
        }
    }

    #[test]
    fn a_heartbeat_of_another_cluster_is_rejected() {
        let bytes = encode_heartbeat("c1", &heartbeat(), Duration::from_millis(500), None);
        assert_eq!(
            decode_datagram(&bytes, "c2", None),
            Err(WireError::ForeignCluster("c1".into()))
        );
    }

    #[test]
    fn truncated_and_oversized_datagrams_are_rejected() {
        let bytes = encode_heartbeat("c1", &heartbeat(), Duration::from_millis(500), None);
        for len in 0..bytes.len() {
            assert!(
                decode_datagram(&bytes[..len], "c1", None).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut big = bytes.clone();
        big.resize(MAX_DATAGRAM + 1, 0);
        assert!(matches!(
            decode_datagram(&big, "c1", None),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_name_that_could_not_be_a_route_is_rejected() {
        for name in ["", "a.b", "new\nline", "\u{1b}[31m", &"x".repeat(65)] {
            let mut hb = heartbeat();
            hb.info.name = name.to_string();
            let bytes = encode_heartbeat("c1", &hb, Duration::from_millis(500), None);
            assert!(
                matches!(
                    decode_datagram(&bytes, "c1", None),
                    Err(WireError::Invalid { field: "name", .. })
                ),
                "{name:?}"
            );
        }
    }

    fn seal(sender: u64) -> DatagramSeal {
        let key = crate::wire::seal::ClusterKey::from_text("a key of the test cluster").unwrap();
        DatagramSeal::new(key, sender)
    }

    #[test]
    fn a_sealed_heartbeat_round_trips_between_holders_of_the_key_only() {
        let mut sender = seal(0xfeed);
        let bytes = encode_heartbeat(
            "c1",
            &heartbeat(),
            Duration::from_millis(500),
            Some(&mut sender),
        );
        assert!(bytes.starts_with(&SEALED_MAGIC));
        assert_eq!(
            decode_datagram(&bytes, "c1", None),
            Err(WireError::Seal(SealError::UnexpectedSeal))
        );
        let mut receiver = seal(2);
        assert_eq!(
            decode_datagram(&bytes, "c1", Some(&mut receiver)),
            Ok(heartbeat())
        );
        assert_eq!(
            decode_datagram(&bytes, "c1", Some(&mut receiver)).map_err(|e| e.kind()),
            Err("replayed")
        );
        let plain = encode_heartbeat("c1", &heartbeat(), Duration::from_millis(500), None);
        assert_eq!(
            decode_datagram(&plain, "c1", Some(&mut receiver)).map_err(|e| e.kind()),
            Err("unauthenticated")
        );
    }

    #[test]
    fn a_sealed_heartbeat_must_name_its_sealer() {
        let mut other = seal(0xbad);
        let bytes = encode_heartbeat(
            "c1",
            &heartbeat(),
            Duration::from_millis(500),
            Some(&mut other),
        );
        assert!(matches!(
            decode_datagram(&bytes, "c1", Some(&mut seal(2))),
            Err(WireError::Invalid {
                field: "sender",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_sealed_looking_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut with_magic = SEALED_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let mut receiver = seal(2);
            prop_assert!(decode_datagram(&with_magic, "c1", Some(&mut receiver)).is_err());
            let _ = decode_datagram(&bytes, "c1", Some(&mut receiver));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_datagram(&bytes, "c1", None);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_datagram(&with_magic, "c1", None);
        }
    }
}
