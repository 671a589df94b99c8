//! Every packet kind round-trips; known bytes (as mod_jk writes them) decode; arbitrary
//! and mutated packets never panic.

use proptest::prelude::*;

use super::*;

const SIZE: usize = MIN_PACKET_SIZE;

fn request() -> ForwardRequest {
    ForwardRequest {
        method: http::Method::PUT,
        protocol: b"HTTP/1.1".to_vec(),
        uri: b"/session/attributes/cart".to_vec(),
        remote_addr: b"127.0.0.1".to_vec(),
        remote_host: Vec::new(),
        server_name: b"shop.example".to_vec(),
        server_port: 443,
        is_ssl: true,
        headers: vec![
            (b"host".to_vec(), b"shop.example".to_vec()),
            (b"content-length".to_vec(), b"5".to_vec()),
            (b"cookie".to_vec(), b"JSESSIONID=AB.n1".to_vec()),
            (b"x-custom".to_vec(), b"yes".to_vec()),
        ],
        attributes: Attributes {
            query_string: Some(b"a=1".to_vec()),
            route: Some(b"n1".to_vec()),
            secret: Some(b"s3cret".to_vec()),
            remote_user: Some(b"alice".to_vec()),
            auth_type: Some(b"Basic".to_vec()),
            ssl_cipher: Some(b"TLS_AES_128_GCM_SHA256".to_vec()),
            ssl_key_size: Some(128),
            req_attributes: vec![(b"AJP_REMOTE_PORT".to_vec(), b"51234".to_vec())],
            ..Attributes::default()
        },
    }
}

fn roundtrip_server(packet: ServerPacket) {
    let bytes = encode_server(&packet, SIZE).expect("encodes");
    assert_eq!(&bytes[..2], &MAGIC_SERVER);
    assert_eq!(
        packet_len(&bytes, MAGIC_SERVER, SIZE),
        Ok(Some(bytes.len()))
    );
    assert_eq!(decode_server(payload(&bytes)), Ok(packet));
}

fn roundtrip_container(packet: ContainerPacket) {
    let bytes = encode_container(&packet, SIZE).expect("encodes");
    assert_eq!(&bytes[..2], b"AB");
    assert_eq!(
        packet_len(&bytes, MAGIC_CONTAINER, SIZE),
        Ok(Some(bytes.len()))
    );
    assert_eq!(decode_container(payload(&bytes)), Ok(packet));
}

#[test]
fn a_forward_request_round_trips_with_every_attribute() {
    let mut full = request();
    let a = &mut full.attributes;
    a.context = Some(b"/".to_vec());
    a.servlet_path = Some(b"/x".to_vec());
    a.ssl_cert = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
    a.ssl_session = Some(b"abcd".to_vec());
    roundtrip_server(ServerPacket::ForwardRequest(Box::new(full)));
    roundtrip_server(ServerPacket::ForwardRequest(Box::new(request())));
}

#[test]
fn every_coded_method_round_trips_and_others_go_through_stored_method() {
    for name in METHODS.iter().chain(&["PATCH", "BREW"]) {
        let mut r = request();
        r.method = http::Method::from_bytes(name.as_bytes()).unwrap();
        let bytes = encode_server(&ServerPacket::ForwardRequest(Box::new(r.clone())), SIZE)
            .expect("encodes");
        let coded = METHODS.contains(name);
        assert_eq!(bytes[5] == METHOD_STORED, !coded, "{name}");
        assert_eq!(
            decode_server(payload(&bytes)),
            Ok(ServerPacket::ForwardRequest(Box::new(r)))
        );
    }
}

#[test]
fn every_coded_request_header_is_written_as_its_code_and_read_back() {
    for (i, name) in REQUEST_HEADERS.iter().enumerate() {
        let mut r = request();
        r.headers = vec![(name.to_ascii_uppercase().into_bytes(), b"v".to_vec())];
        let bytes =
            encode_server(&ServerPacket::ForwardRequest(Box::new(r)), SIZE).expect("encodes");
        let code = 0xA001 + i as u16;
        assert!(
            bytes.windows(2).any(|w| w == code.to_be_bytes()),
            "{name} coded"
        );
        match decode_server(payload(&bytes)) {
            Ok(ServerPacket::ForwardRequest(r)) => {
                assert_eq!(r.headers, vec![(name.as_bytes().to_vec(), b"v".to_vec())])
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn cping_and_shutdown_round_trip() {
    roundtrip_server(ServerPacket::CPing);
    roundtrip_server(ServerPacket::Shutdown);
    assert_eq!(
        encode_server(&ServerPacket::CPing, SIZE).unwrap(),
        [0x12, 0x34, 0, 1, 0x0A]
    );
}

#[test]
fn body_packets_round_trip_and_the_empty_one_ends_the_body() {
    for data in [&b"hello"[..], &[0u8; 8186][..]] {
        let bytes = encode_body(data, SIZE).expect("encodes");
        assert_eq!(
            packet_len(&bytes, MAGIC_SERVER, SIZE),
            Ok(Some(bytes.len()))
        );
        assert_eq!(decode_body(payload(&bytes)), Ok(data));
    }
    assert_eq!(max_read_chunk(SIZE), 8186);
    assert!(encode_body(&[0u8; 8187], SIZE).is_err());
    let end = encode_body(b"", SIZE).unwrap();
    assert_eq!(end, [0x12, 0x34, 0, 0]);
    assert_eq!(decode_body(payload(&end)), Ok(&b""[..]));
    // A body packet whose chunk length says more than it holds.
    assert_eq!(
        decode_body(&[0, 5, b'a']),
        Err(AjpError::Truncated("body chunk"))
    );
    assert_eq!(decode_body(&[0, 1, b'a', b'b']), Err(AjpError::Trailing(1)));
}

#[test]
fn every_container_packet_round_trips() {
    let mut headers = vec![(b"x-node".to_vec(), b"n1".to_vec())];
    for name in RESPONSE_HEADERS {
        headers.push((name.as_bytes().to_vec(), b"v".to_vec()));
    }
    roundtrip_container(ContainerPacket::SendHeaders(SendHeaders {
        status: 200,
        reason: b"OK".to_vec(),
        headers,
    }));
    roundtrip_container(ContainerPacket::SendBodyChunk(b"<html>".to_vec()));
    roundtrip_container(ContainerPacket::SendBodyChunk(vec![
        7;
        max_send_chunk(SIZE)
    ]));
    roundtrip_container(ContainerPacket::EndResponse { reuse: true });
    roundtrip_container(ContainerPacket::EndResponse { reuse: false });
    roundtrip_container(ContainerPacket::GetBodyChunk(8186));
    roundtrip_container(ContainerPacket::CPong);
}

#[test]
fn container_packets_have_the_bytes_mod_proxy_ajp_expects() {
    assert_eq!(
        encode_container(&ContainerPacket::CPong, SIZE).unwrap(),
        *b"AB\x00\x01\x09"
    );
    assert_eq!(
        encode_container(&ContainerPacket::EndResponse { reuse: true }, SIZE).unwrap(),
        *b"AB\x00\x02\x05\x01"
    );
    assert_eq!(
        encode_container(&ContainerPacket::GetBodyChunk(8186), SIZE).unwrap(),
        *b"AB\x00\x03\x06\x1f\xfa"
    );
    // The chunk length, the bytes and a terminating 0 (mod_proxy_ajp checks it).
    assert_eq!(
        encode_container(&ContainerPacket::SendBodyChunk(b"hi".to_vec()), SIZE).unwrap(),
        *b"AB\x00\x06\x03\x00\x02hi\x00"
    );
    let head = encode_container(
        &ContainerPacket::SendHeaders(SendHeaders {
            status: 204,
            reason: b"No Content".to_vec(),
            headers: vec![(b"set-cookie".to_vec(), b"a=b".to_vec())],
        }),
        SIZE,
    )
    .unwrap();
    assert_eq!(
        head,
        *b"AB\x00\x1a\x04\x00\xcc\x00\x0aNo Content\x00\x00\x01\xa0\x07\x00\x03a=b\x00"
    );
    // A body chunk is at most the packet size minus 8.
    assert!(encode_container(&ContainerPacket::SendBodyChunk(vec![0; 8185]), SIZE).is_err());
}

/// A forward request as mod_jk writes it for `GET /x?y HTTP/1.1` with a Host header, a
/// route, a secret and AJP_REMOTE_PORT, byte by byte.
#[test]
fn a_forward_request_written_by_hand_decodes() {
    let mut p = vec![0x02, 0x02];
    for s in [&b"HTTP/1.1"[..], b"/x", b"127.0.0.1"] {
        p.extend_from_slice(&(s.len() as u16).to_be_bytes());
        p.extend_from_slice(s);
        p.push(0);
    }
    p.extend_from_slice(&[0xFF, 0xFF]); // remote_host: null
    p.extend_from_slice(b"\x00\x09localhost\x00");
    p.extend_from_slice(&[0x1F, 0x90, 0x00]); // port 8080, not ssl
    p.extend_from_slice(&[0x00, 0x01, 0xA0, 0x0B]); // one header: Host
    p.extend_from_slice(b"\x00\x09localhost\x00");
    p.extend_from_slice(b"\x05\x00\x01y\x00"); // query_string
    p.extend_from_slice(b"\x06\x00\x02n1\x00"); // route
    p.extend_from_slice(b"\x0c\x00\x01s\x00"); // secret
    p.extend_from_slice(b"\x0a\x00\x0fAJP_REMOTE_PORT\x00\x00\x0551234\x00");
    p.push(0xFF);
    match decode_server(&p) {
        Ok(ServerPacket::ForwardRequest(r)) => {
            assert_eq!(r.method, http::Method::GET);
            assert_eq!(r.uri, b"/x");
            assert!(r.remote_host.is_empty());
            assert_eq!(r.server_port, 8080);
            assert_eq!(r.headers, vec![(b"host".to_vec(), b"localhost".to_vec())]);
            assert_eq!(r.attributes.query_string.as_deref(), Some(&b"y"[..]));
            assert_eq!(r.attributes.route.as_deref(), Some(&b"n1"[..]));
            assert_eq!(r.attributes.secret.as_deref(), Some(&b"s"[..]));
            assert_eq!(r.attributes.req_attributes.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // Without the final 0xFF the attributes never end.
    p.pop();
    assert_eq!(
        decode_server(&p),
        Err(AjpError::Truncated("attribute code"))
    );
}

#[test]
fn bad_packets_are_named_errors() {
    assert_eq!(
        packet_len(b"GET / HTTP/1.1\r\n", MAGIC_SERVER, SIZE),
        Err(AjpError::BadMagic(0x4745))
    );
    assert_eq!(packet_len(b"\x12", MAGIC_SERVER, SIZE), Ok(None));
    assert_eq!(packet_len(b"\x12\x34\x00", MAGIC_SERVER, SIZE), Ok(None));
    assert_eq!(
        packet_len(b"\x12\x35\x00\x00", MAGIC_SERVER, SIZE),
        Err(AjpError::BadMagic(0x1235))
    );
    assert_eq!(
        packet_len(b"\x12\x34\x20\x00", MAGIC_SERVER, SIZE),
        Err(AjpError::TooLarge {
            len: 8196,
            max: SIZE
        })
    );
    assert_eq!(
        packet_len(b"\x12\x34\x00\x02\x0a", MAGIC_SERVER, SIZE),
        Ok(None)
    );
    assert_eq!(decode_server(&[]), Err(AjpError::Empty));
    assert_eq!(decode_server(&[0x04]), Err(AjpError::UnknownType(0x04)));
    assert_eq!(decode_server(&[0x0A, 0x00]), Err(AjpError::Trailing(1)));
    // Method code 0 and 28 do not exist; a stored method without the attribute.
    let mut r = encode_server(&ServerPacket::ForwardRequest(Box::new(request())), SIZE).unwrap();
    for (code, err) in [
        (0, AjpError::UnknownMethod(0)),
        (28, AjpError::UnknownMethod(28)),
        (0xFF, AjpError::StoredMethodMissing),
    ] {
        r[5] = code;
        assert_eq!(decode_server(payload(&r)), Err(err));
    }
}

#[test]
fn an_unknown_attribute_code_or_header_code_is_refused() {
    let mut bytes =
        encode_server(&ServerPacket::ForwardRequest(Box::new(request())), SIZE).unwrap();
    let end = bytes.len() - 1;
    bytes.insert(end, 0x0E);
    let len = (bytes.len() - HEAD_LEN) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        decode_server(payload(&bytes)),
        Err(AjpError::UnknownAttribute(0x0E))
    );
    let mut r = request();
    r.headers = vec![(b"host".to_vec(), b"h".to_vec())];
    let mut bytes = encode_server(&ServerPacket::ForwardRequest(Box::new(r)), SIZE).unwrap();
    let at = bytes
        .windows(2)
        .position(|w| w == [0xA0, 0x0B])
        .expect("host coded");
    bytes[at + 1] = 0x0F;
    assert_eq!(
        decode_server(payload(&bytes)),
        Err(AjpError::UnknownHeaderCode(0xA00F))
    );
}

#[test]
fn too_many_headers_are_refused_and_packets_that_do_not_fit_are_not_written() {
    let mut r = request();
    r.headers = (0..=MAX_HEADERS)
        .map(|i| (format!("x-{i}").into_bytes(), b"v".to_vec()))
        .collect();
    let bytes = encode_server(&ServerPacket::ForwardRequest(Box::new(r)), SIZE).unwrap();
    assert!(matches!(
        decode_server(payload(&bytes)),
        Err(AjpError::TooMany {
            what: "headers",
            ..
        })
    ));
    let mut big = request();
    big.uri = vec![b'a'; SIZE];
    assert_eq!(
        encode_server(&ServerPacket::ForwardRequest(Box::new(big.clone())), SIZE),
        Err(AjpError::DoesNotFit("forward request"))
    );
    assert!(
        encode_server(
            &ServerPacket::ForwardRequest(Box::new(big)),
            MAX_PACKET_SIZE
        )
        .is_ok()
    );
}

// ---- properties --------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn opt(max: usize) -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(bytes(max))
}

fn header_name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(REQUEST_HEADERS.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        "[a-z][a-z0-9-]{0,20}".prop_map(String::into_bytes),
    ]
}

fn forward_strategy() -> impl Strategy<Value = ForwardRequest> {
    let method = prop_oneof![
        proptest::sample::select(METHODS.to_vec()).prop_map(String::from),
        "[A-Z]{1,12}",
    ]
    .prop_map(|m| http::Method::from_bytes(m.as_bytes()).expect("a token"));
    let line = (
        method,
        bytes(20),
        bytes(200),
        bytes(40),
        bytes(40),
        bytes(40),
        any::<u16>(),
        any::<bool>(),
    );
    let headers = proptest::collection::vec((header_name_strategy(), bytes(100)), 0..20);
    let attrs = (
        (opt(30), opt(30), opt(30), opt(30), opt(100), opt(30)),
        (
            opt(100),
            opt(30),
            opt(30),
            proptest::option::of(any::<u16>()),
            opt(60),
        ),
        proptest::collection::vec((bytes(30), bytes(30)), 0..5),
    )
        .prop_map(
            |((c, sp, ru, at, qs, rt), (cert, ci, ss, ks, se), req)| Attributes {
                context: c,
                servlet_path: sp,
                remote_user: ru,
                auth_type: at,
                query_string: qs,
                route: rt,
                ssl_cert: cert,
                ssl_cipher: ci,
                ssl_session: ss,
                ssl_key_size: ks,
                secret: se,
                req_attributes: req,
            },
        );
    (line, headers, attrs).prop_map(
        |((method, protocol, uri, ra, rh, sn, port, ssl), headers, attributes)| ForwardRequest {
            method,
            protocol,
            uri,
            remote_addr: ra,
            remote_host: rh,
            server_name: sn,
            server_port: port,
            is_ssl: ssl,
            headers,
            attributes,
        },
    )
}

fn container_strategy() -> impl Strategy<Value = ContainerPacket> {
    let name = prop_oneof![
        proptest::sample::select(RESPONSE_HEADERS.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        "[a-z][a-z0-9-]{0,20}".prop_map(String::into_bytes),
    ];
    prop_oneof![
        (
            any::<u16>(),
            bytes(30),
            proptest::collection::vec((name, bytes(60)), 0..20)
        )
            .prop_map(|(status, reason, headers)| ContainerPacket::SendHeaders(
                SendHeaders {
                    status,
                    reason,
                    headers
                }
            )),
        bytes(max_send_chunk(SIZE)).prop_map(ContainerPacket::SendBodyChunk),
        any::<bool>().prop_map(|reuse| ContainerPacket::EndResponse { reuse }),
        any::<u16>().prop_map(ContainerPacket::GetBodyChunk),
        Just(ContainerPacket::CPong),
    ]
}

/// Decodes `buf` every way a side may, as the connection does: never a panic.
fn decode_everything(buf: &[u8]) {
    for magic in [MAGIC_SERVER, MAGIC_CONTAINER] {
        let _ = packet_len(buf, magic, SIZE);
    }
    let p = payload(buf);
    let _ = decode_server(p);
    let _ = decode_container(p);
    let _ = decode_body(p);
    let _ = decode_server(buf);
    let _ = decode_container(buf);
    let _ = decode_body(buf);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_forward_request_round_trips(request in forward_strategy()) {
        let packet = ServerPacket::ForwardRequest(Box::new(request));
        let bytes = encode_server(&packet, MAX_PACKET_SIZE).expect("fits");
        prop_assert_eq!(packet_len(&bytes, MAGIC_SERVER, MAX_PACKET_SIZE), Ok(Some(bytes.len())));
        prop_assert_eq!(decode_server(payload(&bytes)), Ok(packet));
    }

    #[test]
    fn any_container_packet_round_trips(packet in container_strategy()) {
        let bytes = encode_container(&packet, SIZE).expect("fits");
        prop_assert_eq!(decode_container(payload(&bytes)), Ok(packet));
    }

    #[test]
    fn any_body_round_trips(data in bytes(max_read_chunk(SIZE))) {
        let bytes = encode_body(&data, SIZE).expect("fits");
        prop_assert_eq!(decode_body(payload(&bytes)), Ok(&data[..]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in bytes(2048)) {
        decode_everything(&buf);
    }

    #[test]
    fn mutated_packets_never_panic(
        request in forward_strategy(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode_server(&ServerPacket::ForwardRequest(Box::new(request)), MAX_PACKET_SIZE)
            .expect("fits");
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        decode_everything(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_container_packets_never_panic(
        packet in container_strategy(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode_container(&packet, SIZE).expect("fits");
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        decode_everything(&bytes);
    }
}
