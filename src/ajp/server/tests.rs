//! The parts of the listener that need no socket: the secret check, the request it makes
//! of a forward request, the body feed. The exchanges themselves run against a real node
//! in tests/ajp.rs.

use super::*;
use crate::ajp::codec::Attributes;

fn prepared(secret: Option<&str>) -> Prepared {
    Prepared::new(AjpSettings {
        secret: secret.map(str::to_string),
        packet_size: 8192,
    })
}

fn forward() -> ForwardRequest {
    ForwardRequest {
        method: http::Method::GET,
        protocol: b"HTTP/1.1".to_vec(),
        uri: b"/session".to_vec(),
        remote_addr: b"10.0.0.7".to_vec(),
        remote_host: Vec::new(),
        server_name: b"shop.example".to_vec(),
        server_port: 8443,
        is_ssl: true,
        headers: vec![(b"cookie".to_vec(), b"JSESSIONID=A.n1".to_vec())],
        attributes: Attributes {
            query_string: Some(b"a=1&b=2".to_vec()),
            route: Some(b"n2".to_vec()),
            ..Attributes::default()
        },
    }
}

#[test]
fn the_secret_must_match_exactly_when_one_is_configured() {
    let p = prepared(Some("s3cret"));
    assert!(p.secret_matches(Some(b"s3cret")));
    for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3CRET"] {
        assert!(!p.secret_matches(Some(wrong)), "{wrong:?}");
    }
    assert!(!p.secret_matches(None));
    let open = prepared(None);
    assert!(open.secret_matches(None));
    assert!(open.secret_matches(Some(b"anything")));
}

#[test]
fn the_packet_size_is_kept_within_the_protocols_range() {
    let p = |n| {
        Prepared::new(AjpSettings {
            secret: None,
            packet_size: n,
        })
        .packet_size
    };
    assert_eq!(p(100), 8192);
    assert_eq!(p(16384), 16384);
    assert_eq!(p(1 << 20), 65536);
}

#[test]
fn a_forward_request_becomes_the_http_request_with_its_query_host_and_route() {
    let (request, length) = to_http(forward()).expect("a request");
    assert_eq!(request.method(), http::Method::GET);
    assert_eq!(request.uri(), "/session?a=1&b=2");
    assert_eq!(request.headers()[header::HOST], "shop.example:8443");
    assert_eq!(request.headers()[header::COOKIE], "JSESSIONID=A.n1");
    assert_eq!(length, None, "no length: read until the front end ends it");
    let info = request
        .extensions()
        .get::<AjpRequestInfo>()
        .expect("the AJP extension");
    assert_eq!(info.route.as_deref(), Some("n2"));
    assert_eq!(info.remote_addr, "10.0.0.7");
    assert!(info.is_ssl);
}

#[test]
fn a_host_header_the_front_end_sent_is_kept_and_a_length_is_read() {
    let mut f = forward();
    f.headers.push((b"host".to_vec(), b"front:80".to_vec()));
    f.headers.push((b"content-length".to_vec(), b"12".to_vec()));
    let (request, length) = to_http(f).expect("a request");
    assert_eq!(request.headers()[header::HOST], "front:80");
    assert_eq!(length, Some(12));
}

#[test]
fn framing_in_doubt_or_a_bad_target_is_a_400() {
    let with = |extra: &[(&[u8], &[u8])], uri: &[u8]| {
        let mut f = forward();
        f.uri = uri.to_vec();
        for (n, v) in extra {
            f.headers.push((n.to_vec(), v.to_vec()));
        }
        to_http(f).map(|_| ())
    };
    assert!(
        with(
            &[(b"content-length", b"1"), (b"content-length", b"2")],
            b"/"
        )
        .is_err()
    );
    assert!(with(&[(b"content-length", b"-1")], b"/").is_err());
    assert!(
        with(
            &[
                (b"content-length", b"1"),
                (b"transfer-encoding", b"chunked")
            ],
            b"/"
        )
        .is_err()
    );
    assert!(with(&[(b"bad name", b"v")], b"/").is_err());
    assert!(with(&[(b"x", b"a\nb")], b"/").is_err());
    assert!(with(&[], b"http://elsewhere/").is_err());
    assert!(with(&[], b"/a b").is_err());
    assert!(with(&[(b"transfer-encoding", b"chunked")], b"/").is_ok());
}

#[tokio::test]
async fn the_body_feed_ends_at_the_length_and_refuses_more() {
    let (tx, mut rx) = mpsc::channel(1);
    let mut feed = BodyFeed {
        tx: Some(tx),
        want: Arc::new(Notify::new()),
        remaining: Some(5),
    };
    feed.deliver(b"abc").expect("within the length");
    assert!(feed.open());
    assert_eq!(
        rx.recv().await.map(|r| r.ok()),
        Some(Some(Bytes::from_static(b"abc")))
    );
    assert!(feed.deliver(b"def").is_err(), "past the length");

    let (tx, mut rx) = mpsc::channel(1);
    let mut feed = BodyFeed {
        tx: Some(tx),
        want: Arc::new(Notify::new()),
        remaining: Some(5),
    };
    feed.deliver(b"").expect("an early end");
    assert!(!feed.open());
    assert!(matches!(rx.recv().await, Some(Err(BodyError::Truncated))));

    let (tx, mut rx) = mpsc::channel(1);
    let mut feed = BodyFeed {
        tx: Some(tx),
        want: Arc::new(Notify::new()),
        remaining: None,
    };
    feed.deliver(b"xy").expect("a chunk");
    assert!(rx.recv().await.is_some());
    feed.abandon();
    assert!(matches!(rx.recv().await, Some(Err(BodyError::Gone))));
}

#[tokio::test]
async fn a_request_body_asks_for_chunks_only_when_read() {
    use http_body_util::BodyExt as _;
    let (tx, rx) = mpsc::channel(1);
    let want = Arc::new(Notify::new());
    let body = RequestBody {
        chunks: Some(rx),
        want: want.clone(),
        remaining: Some(4),
    };
    assert_eq!(body.size_hint().exact(), Some(4));
    let reader = tokio::spawn(body.collect());
    // The reader polls, finds nothing, and asks.
    want.notified().await;
    tx.send(Ok(Bytes::from_static(b"data")))
        .await
        .expect("sent");
    drop(tx);
    let collected = reader.await.expect("ran").expect("a body");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"data"));
}
