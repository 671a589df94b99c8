//! The seal of cluster traffic under a shared key: with `cluster.key_file` set, every
//! datagram and every stream frame is encrypted and authenticated, so only holders of the
//! key can join, read or change anything. Datagrams, all under one key, use
//! XChaCha20-Poly1305 with random nonces (long enough never to repeat by chance); frames,
//! under keys of their connection, ChaCha20-Poly1305 with their number as the nonce.
//!
//! - **Key.** The key file's text (trimmed) is only input keying material: HKDF-SHA256 derives
//!   one key for datagrams and one secret for streams from it, so neither the text nor a key
//!   in use is ever sent or logged.
//! - **Datagrams** carry `SEALED_MAGIC`, the sender's node id and a counter in clear,
//!   authenticated as associated data, then a random 24-byte nonce and the sealed body. The
//!   receiver keeps a 64-wide replay window per sender: a datagram recorded and sent again,
//!   or one older than the window, is refused.
//! - **Streams** begin with a hello each way: magic, version, the sender's node id, the id
//!   it means to reach (a client's; a server does not know yet), 32 random bytes. Both ends
//!   derive the keys of this connection from the two hellos, the two ids included, one per
//!   direction, and number the frames: the nonce is the frame's number. So a frame replayed,
//!   dropped, reordered or taken from another connection fails authentication, and so does
//!   a connection redirected to another node than the one meant (the ids differ), which
//!   the hellos' ids also refuse at once.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use sha2::Sha256;
use thiserror::Error;

/// Fewest characters a key text may have (`deltacast keygen` prints 43).
pub const MIN_KEY_CHARS: usize = 16;

/// First bytes of a sealed datagram (a plain one begins with [`super::MAGIC`]).
pub const SEALED_MAGIC: [u8; 4] = *b"DCsk";

/// First bytes of a stream hello.
pub const HELLO_MAGIC: [u8; 4] = *b"DCsh";

/// Version of the stream handshake.
const HELLO_VERSION: u8 = 1;

/// Length of a stream hello: magic, version, from, to, random bytes.
pub const HELLO_LEN: usize = 4 + 1 + 8 + 8 + 32;

/// Magic, sender, counter: in clear, authenticated.
const DATAGRAM_HEADER: usize = 4 + 8 + 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Bytes a sealed datagram has beyond its body.
pub const DATAGRAM_OVERHEAD: usize = DATAGRAM_HEADER + NONCE_LEN + TAG_LEN;

/// Bytes a sealed frame has beyond its body.
pub const FRAME_OVERHEAD: usize = TAG_LEN;

/// Senders whose replay windows are kept; past this, the one heard from least recently is
/// forgotten. Only senders holding the key get a window at all.
const MAX_SENDERS: usize = 4096;

/// Salt of the first derivation: keys of this protocol are never those of another use of
/// the same text.
const KEY_SALT: &[u8] = b"deltacast cluster key v1";

/// Why a key text cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "the key has {chars} characters; at least {MIN_KEY_CHARS} are needed (make one with `deltacast keygen`)"
    )]
    TooShort { chars: usize },
}

/// Why sealed traffic was refused. Each is dropped and counted by the caller.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum SealError {
    /// Not sealed (plain traffic while a key is set, or another program's bytes).
    #[error("not sealed with the cluster key")]
    NotSealed,
    /// Sealed, but not with this key, or changed on the way.
    #[error("failed authentication (another key, or altered on the way)")]
    Unauthenticated,
    /// Authentic, but received before or too old for the window.
    #[error("replayed or too old")]
    Replayed,
    /// Sealed, but this node has no key.
    #[error("sealed with a cluster key, and this node has none")]
    UnexpectedSeal,
    /// A stream hello that is not one, or of another version.
    #[error("bad handshake (no key, another version, or not deltacast)")]
    BadHello,
    /// A stream hello of another node than the one meant: a restarted process on the same
    /// port, or a connection redirected.
    #[error("the other end is not the node meant (a restarted process, or redirected traffic)")]
    WrongPeer,
}

/// The cluster's shared key, as derived keys: cheap to clone, never printed.
#[derive(Clone)]
pub struct ClusterKey {
    datagram: XChaCha20Poly1305,
    stream: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The key of a key file's text; surrounding white space is not part of it.
    pub fn from_text(text: &str) -> Result<ClusterKey, KeyError> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars < MIN_KEY_CHARS {
            return Err(KeyError::TooShort { chars });
        }
        let hkdf = Hkdf::<Sha256>::new(Some(KEY_SALT), text.as_bytes());
        let mut datagram = [0u8; 32];
        let mut stream = [0u8; 32];
        expand(&hkdf, b"datagram", &mut datagram);
        expand(&hkdf, b"stream", &mut stream);
        Ok(ClusterKey {
            datagram: XChaCha20Poly1305::new(&datagram.into()),
            stream,
        })
    }

    /// Whether `text` is a key as `deltacast keygen` makes them (32 bytes, base64url), not a
    /// hand-chosen text, which could be guessed offline from recorded traffic.
    pub fn is_generated(text: &str) -> bool {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .is_ok_and(|bytes| bytes.len() == 32)
    }

    /// A new random key text: 32 bytes from the operating system's CSPRNG, base64url.
    pub fn generate_text() -> String {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}

fn expand(hkdf: &Hkdf<Sha256>, info: &[u8], out: &mut [u8; 32]) {
    // 32 bytes is far below HKDF-SHA256's limit of 8160: this cannot fail.
    if hkdf.expand(info, out).is_err() {
        unreachable!("HKDF-SHA256 refused a 32-byte output");
    }
}

/// Seals this node's datagrams and opens the cluster's.
#[derive(Debug)]
pub struct DatagramSeal {
    key: ClusterKey,
    sender: u64,
    counter: u64,
    windows: HashMap<u64, Window>,
    /// Increases with every accepted datagram: the age of a window, for eviction.
    clock: u64,
}

impl DatagramSeal {
    /// `sender`: this node's id, sent in clear (receivers keep a replay window per id).
    pub fn new(key: ClusterKey, sender: u64) -> DatagramSeal {
        DatagramSeal {
            key,
            sender,
            counter: 0,
            windows: HashMap::new(),
            clock: 0,
        }
    }

    /// The sealed datagram of `body`.
    pub fn seal(&mut self, body: &[u8]) -> Vec<u8> {
        self.counter += 1;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(DATAGRAM_OVERHEAD + body.len());
        out.extend_from_slice(&SEALED_MAGIC);
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(body);
        let (header, rest) = out.split_at_mut(DATAGRAM_HEADER);
        let tag = self
            .key
            .datagram
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                header,
                &mut rest[start - DATAGRAM_HEADER..],
            )
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 refused a datagram body"));
        out.extend_from_slice(&tag);
        out
    }

    /// The sender and body of a sealed datagram, once authenticated and not seen before.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(u64, Vec<u8>), SealError> {
        if !bytes.starts_with(&SEALED_MAGIC) {
            return Err(SealError::NotSealed);
        }
        if bytes.len() < DATAGRAM_OVERHEAD {
            return Err(SealError::Unauthenticated);
        }
        let (header, rest) = bytes.split_at(DATAGRAM_HEADER);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
        let sender = be_u64(&header[4..12]);
        let counter = be_u64(&header[12..20]);
        // A cheap look first: an old or repeated counter is refused without decrypting.
        if self
            .windows
            .get(&sender)
            .is_some_and(|w| !w.is_new(counter))
        {
            return Err(SealError::Replayed);
        }
        let mut body = sealed.to_vec();
        self.key
            .datagram
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                header,
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| SealError::Unauthenticated)?;
        self.clock += 1;
        if !self.windows.contains_key(&sender) && self.windows.len() >= MAX_SENDERS {
            self.forget_oldest();
        }
        let window = self.windows.entry(sender).or_default();
        window.last_used = self.clock;
        if !window.accept(counter) {
            return Err(SealError::Replayed);
        }
        Ok((sender, body))
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.last_used)
            .map(|(id, _)| *id)
        {
            self.windows.remove(&oldest);
        }
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(bytes);
    u64::from_be_bytes(raw)
}

/// The counters of one sender accepted so far: the highest, and which of the 63 below it.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    top: u64,
    /// Bit i: `top - i` was accepted.
    seen: u64,
    last_used: u64,
}

impl Window {
    const WIDTH: u64 = 64;

    fn is_new(&self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        if n > self.top {
            return true;
        }
        let age = self.top - n;
        age < Self::WIDTH && self.seen & (1 << age) == 0
    }

    /// Marks `n` accepted; false if it was not new.
    fn accept(&mut self, n: u64) -> bool {
        if !self.is_new(n) {
            return false;
        }
        if n > self.top {
            let shift = n - self.top;
            self.seen = if shift >= Self::WIDTH {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = n;
        } else {
            self.seen |= 1 << (self.top - n);
        }
        true
    }
}

/// One end's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id.
    pub from: u64,
    /// The node the sender means to reach; 0 from a server (it speaks before it knows).
    pub to: u64,
    pub random: [u8; 32],
}

impl Hello {
    /// A new hello with fresh random bytes.
    pub fn new(from: u64, to: u64) -> Hello {
        Hello {
            from,
            to,
            random: rand::random(),
        }
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&HELLO_MAGIC);
        out[4] = HELLO_VERSION;
        out[5..13].copy_from_slice(&self.from.to_be_bytes());
        out[13..21].copy_from_slice(&self.to.to_be_bytes());
        out[21..].copy_from_slice(&self.random);
        out
    }

    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Hello, SealError> {
        if bytes[..4] != HELLO_MAGIC || bytes[4] != HELLO_VERSION {
            return Err(SealError::BadHello);
        }
        let mut random = [0u8; 32];
        random.copy_from_slice(&bytes[21..]);
        Ok(Hello {
            from: be_u64(&bytes[5..13]),
            to: be_u64(&bytes[13..21]),
            random,
        })
    }
}

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connected.
    Client,
    /// Accepted.
    Server,
}

/// The seal of one connection: a key and a frame number each way.
///
/// Frames use ring's ChaCha20-Poly1305: a replication frame is mostly 50 to 150 bytes, and
/// there ring takes about 0.2 µs where the RustCrypto crate takes 1.7 µs on this machine
/// (its AVX2 Poly1305 sets up for each message).
pub struct StreamSeal {
    sending: LessSafeKey,
    receiving: LessSafeKey,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for StreamSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSeal")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl StreamSeal {
    /// The seal of a connection whose client said `client` and server `server`. The keys
    /// depend on both ends' random bytes and ids: a connection relayed to another node
    /// than the client meant gets keys that do not match.
    pub fn new(key: &ClusterKey, role: Role, client: &Hello, server: &Hello) -> StreamSeal {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&client.random);
        salt[32..].copy_from_slice(&server.random);
        let hkdf = Hkdf::<Sha256>::new(Some(&salt), &key.stream);
        let ends = |label: &[u8]| {
            let mut info = label.to_vec();
            info.extend_from_slice(&client.from.to_be_bytes());
            info.extend_from_slice(&server.from.to_be_bytes());
            info
        };
        let mut to_server = [0u8; 32];
        let mut to_client = [0u8; 32];
        expand(&hkdf, &ends(b"client to server"), &mut to_server);
        expand(&hkdf, &ends(b"server to client"), &mut to_client);
        let (sending, receiving) = match role {
            Role::Client => (to_server, to_client),
            Role::Server => (to_client, to_server),
        };
        StreamSeal {
            sending: frame_key(&sending),
            receiving: frame_key(&receiving),
            sent: 0,
            received: 0,
        }
    }

    /// The sealed form of the next frame sent.
    pub fn seal(&mut self, frame: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(frame.len() + TAG_LEN);
        out.extend_from_slice(frame);
        self.seal_into(&mut out, 0);
        out.freeze()
    }

    /// Seals the next frame sent where it lies, `buf[start..]`, and appends its tag.
    pub fn seal_into(&mut self, buf: &mut BytesMut, start: usize) {
        let nonce = frame_nonce(self.sent);
        self.sent += 1;
        let tag = self
            .sending
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut buf[start..])
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 refused a frame"));
        buf.extend_from_slice(tag.as_ref());
    }

    /// Opens the next frame received, in place.
    pub fn open(&mut self, frame: &mut BytesMut) -> Result<(), SealError> {
        if frame.len() < TAG_LEN {
            return Err(SealError::Unauthenticated);
        }
        let nonce = frame_nonce(self.received);
        let body_len = self
            .receiving
            .open_in_place(nonce, Aad::empty(), &mut frame[..])
            .map_err(|_| SealError::Unauthenticated)?
            .len();
        frame.truncate(body_len);
        self.received += 1;
        Ok(())
    }
}

/// A frame's number as its nonce. Each connection and direction has keys of its own, so a
/// counter never repeats under a key, and needs none of XChaCha's extended nonce.
fn frame_nonce(n: u64) -> ring::aead::Nonce {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(nonce)
}

/// A ChaCha20-Poly1305 key for frames.
fn frame_key(key: &[u8; 32]) -> LessSafeKey {
    match UnboundKey::new(&CHACHA20_POLY1305, key) {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable!("ring refused a 32-byte ChaCha20-Poly1305 key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ClusterKey {
        ClusterKey::from_text(text).unwrap()
    }

    const K: &str = "correct horse battery staple";

    #[test]
    fn a_short_key_is_refused_and_white_space_is_not_part_of_it() {
        assert_eq!(
            ClusterKey::from_text("  short\n").unwrap_err(),
            KeyError::TooShort { chars: 5 }
        );
        let mut a = DatagramSeal::new(key(K), 1);
        let mut b = DatagramSeal::new(key(&format!("\n {K} \n")), 2);
        assert_eq!(b.open(&a.seal(b"hi")).unwrap(), (1, b"hi".to_vec()));
    }

    #[test]
    fn generated_keys_are_long_enough_and_differ() {
        let (a, b) = (ClusterKey::generate_text(), ClusterKey::generate_text());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(ClusterKey::from_text(&a).is_ok());
    }

    #[test]
    fn a_generated_key_is_told_from_a_hand_chosen_text() {
        assert!(ClusterKey::is_generated(&ClusterKey::generate_text()));
        assert!(ClusterKey::is_generated(&format!(
            " {}\n",
            ClusterKey::generate_text()
        )));
        assert!(!ClusterKey::is_generated(K));
        assert!(!ClusterKey::is_generated(&"A".repeat(42)));
    }

    #[test]
    fn the_key_is_never_printed() {
        assert_eq!(format!("{:?}", key(K)), "ClusterKey(..)");
        let seal = DatagramSeal::new(key(K), 1);
        assert!(!format!("{seal:?}").contains("horse"));
    }

    #[test]
    fn a_datagram_opens_with_the_same_key_only() {
        let mut a = DatagramSeal::new(key(K), 7);
        let sealed = a.seal(b"heartbeat");
        assert!(
            !sealed.windows(9).any(|w| w == b"heartbeat"),
            "body in clear"
        );
        assert_eq!(sealed.len(), b"heartbeat".len() + DATAGRAM_OVERHEAD);
        let mut other = DatagramSeal::new(key("another key of the cluster"), 8);
        assert_eq!(other.open(&sealed), Err(SealError::Unauthenticated));
        let mut same = DatagramSeal::new(key(K), 8);
        assert_eq!(same.open(&sealed), Ok((7, b"heartbeat".to_vec())));
    }

    #[test]
    fn any_changed_byte_fails_authentication() {
        let mut a = DatagramSeal::new(key(K), 7);
        let sealed = a.seal(b"heartbeat");
        for i in 4..sealed.len() {
            let mut changed = sealed.clone();
            changed[i] ^= 0x01;
            let mut b = DatagramSeal::new(key(K), 8);
            assert_eq!(
                b.open(&changed),
                Err(SealError::Unauthenticated),
                "byte {i}"
            );
        }
        let mut b = DatagramSeal::new(key(K), 8);
        for len in 0..sealed.len() {
            assert!(b.open(&sealed[..len]).is_err(), "prefix of {len}");
        }
        assert_eq!(b.open(b"DCst plain"), Err(SealError::NotSealed));
    }

    #[test]
    fn a_replayed_datagram_is_refused_and_late_ones_within_the_window_are_not() {
        let mut a = DatagramSeal::new(key(K), 7);
        let sealed: Vec<Vec<u8>> = (0..100).map(|_| a.seal(b"x")).collect();
        let mut b = DatagramSeal::new(key(K), 8);
        assert!(b.open(&sealed[50]).is_ok());
        assert_eq!(b.open(&sealed[50]), Err(SealError::Replayed));
        // Late but within 64 of the newest: accepted once.
        assert!(b.open(&sealed[10]).is_ok());
        assert_eq!(b.open(&sealed[10]), Err(SealError::Replayed));
        assert!(b.open(&sealed[99]).is_ok());
        // Now 99 is the newest: 30 is too old to tell, so it is refused.
        assert_eq!(b.open(&sealed[30]), Err(SealError::Replayed));
        assert!(b.open(&sealed[40]).is_ok());
        // Windows are per sender.
        let mut c = DatagramSeal::new(key(K), 9);
        assert!(b.open(&c.seal(b"y")).is_ok());
    }

    #[test]
    fn a_forged_datagram_does_not_move_the_window() {
        let mut a = DatagramSeal::new(key(K), 7);
        let first = a.seal(b"x");
        let mut forged = a.seal(b"x");
        // The counter pushed far ahead: authentication fails, and nothing is marked.
        forged[12..20].copy_from_slice(&u64::MAX.to_be_bytes());
        let mut b = DatagramSeal::new(key(K), 8);
        assert_eq!(b.open(&forged), Err(SealError::Unauthenticated));
        assert!(b.open(&first).is_ok());
    }

    #[test]
    fn the_window_handles_jumps_and_its_edges() {
        let mut w = Window::default();
        assert!(!w.accept(0));
        assert!(w.accept(1));
        assert!(w.accept(64));
        assert!(!w.accept(1), "64 - 1 = 63 back: still in the window, seen");
        assert!(w.accept(1000));
        assert!(!w.accept(936), "exactly 64 back: outside");
        assert!(w.accept(937));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }

    #[test]
    fn the_least_recent_sender_is_forgotten_past_the_limit() {
        let mut b = DatagramSeal::new(key(K), 0);
        let mut first = DatagramSeal::new(key(K), 1);
        let replay = first.seal(b"x");
        assert!(b.open(&replay).is_ok());
        for sender in 2..=MAX_SENDERS as u64 {
            assert!(
                b.open(&DatagramSeal::new(key(K), sender).seal(b"x"))
                    .is_ok()
            );
        }
        assert_eq!(b.windows.len(), MAX_SENDERS);
        assert_eq!(b.open(&replay), Err(SealError::Replayed));
        assert!(
            b.open(&DatagramSeal::new(key(K), 99_999).seal(b"x"))
                .is_ok()
        );
        assert_eq!(b.windows.len(), MAX_SENDERS);
        assert!(!b.windows.contains_key(&1));
    }

    fn pair(client_key: &str, server_key: &str) -> (StreamSeal, StreamSeal) {
        let client_hello = Hello::new(1, 2);
        let server_hello = Hello::new(2, 0);
        let seen_by_server = Hello::decode(&client_hello.encode()).unwrap();
        let seen_by_client = Hello::decode(&server_hello.encode()).unwrap();
        (
            StreamSeal::new(
                &key(client_key),
                Role::Client,
                &client_hello,
                &seen_by_client,
            ),
            StreamSeal::new(
                &key(server_key),
                Role::Server,
                &seen_by_server,
                &server_hello,
            ),
        )
    }

    #[test]
    fn frames_flow_both_ways_in_order() {
        let (mut client, mut server) = pair(K, K);
        for i in 0..5u8 {
            let mut frame = BytesMut::from(&client.seal(&[i; 10])[..]);
            assert_eq!(frame.len(), 10 + FRAME_OVERHEAD);
            server.open(&mut frame).unwrap();
            assert_eq!(&frame[..], &[i; 10]);
            let mut back = BytesMut::from(&server.seal(b"ack")[..]);
            client.open(&mut back).unwrap();
            assert_eq!(&back[..], b"ack");
        }
        let mut empty = BytesMut::from(&client.seal(b"")[..]);
        server.open(&mut empty).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_frame_replayed_reordered_or_reflected_fails() {
        let (mut client, mut server) = pair(K, K);
        let first = client.seal(b"one");
        let second = client.seal(b"two");
        let mut replay = BytesMut::from(&second[..]);
        assert_eq!(server.open(&mut replay), Err(SealError::Unauthenticated));
        server.open(&mut BytesMut::from(&first[..])).unwrap();
        assert_eq!(
            server.open(&mut BytesMut::from(&first[..])),
            Err(SealError::Unauthenticated)
        );
        // A client's own frame sent back to it.
        let (mut client, _) = pair(K, K);
        let mine = client.seal(b"x");
        assert_eq!(
            client.open(&mut BytesMut::from(&mine[..])),
            Err(SealError::Unauthenticated)
        );
    }

    #[test]
    fn a_frame_of_another_connection_or_key_fails() {
        let (mut client_a, _server_a) = pair(K, K);
        let (_client_b, mut server_b) = pair(K, K);
        let frame = client_a.seal(b"x");
        assert_eq!(
            server_b.open(&mut BytesMut::from(&frame[..])),
            Err(SealError::Unauthenticated)
        );
        let (mut client, mut server) = pair(K, "another key of the cluster");
        let frame = client.seal(b"x");
        assert_eq!(
            server.open(&mut BytesMut::from(&frame[..])),
            Err(SealError::Unauthenticated)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_open(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut receiver = DatagramSeal::new(key(K), 2);
            let mut sealed_looking = SEALED_MAGIC.to_vec();
            sealed_looking.extend_from_slice(&bytes);
            proptest::prop_assert!(receiver.open(&sealed_looking).is_err());
            proptest::prop_assert!(receiver.open(&bytes).is_err());
            let (_, mut server) = pair(K, K);
            proptest::prop_assert!(server.open(&mut BytesMut::from(&bytes[..])).is_err());
        }
    }

    #[test]
    fn a_hello_round_trips_and_must_be_one() {
        let hello = Hello::new(7, 9);
        let mut bytes = hello.encode();
        assert_eq!(Hello::decode(&bytes), Ok(hello));
        assert_ne!(Hello::new(7, 9).random, hello.random);
        bytes[4] = 2;
        assert_eq!(Hello::decode(&bytes), Err(SealError::BadHello));
        let plain_frame = [0u8; HELLO_LEN];
        assert_eq!(Hello::decode(&plain_frame), Err(SealError::BadHello));
    }

    #[test]
    fn a_connection_relayed_to_another_node_gets_keys_that_do_not_match() {
        // The client (1) means to reach 2; a relay without the key pipes it to 3, which
        // answers with its own hello, relabelled as 2's. Were the ids not in the keys,
        // both ends would agree.
        let client_hello = Hello::new(1, 2);
        let third = Hello::new(3, 0);
        let relabelled = Hello { from: 2, ..third };
        let mut client = StreamSeal::new(&key(K), Role::Client, &client_hello, &relabelled);
        let mut relayed_to = StreamSeal::new(&key(K), Role::Server, &client_hello, &third);
        let frame = client.seal(b"deltas");
        assert_eq!(
            relayed_to.open(&mut BytesMut::from(&frame[..])),
            Err(SealError::Unauthenticated)
        );
        // Its own connection sent back to it: it answers as 1, not 2.
        let mut itself = StreamSeal::new(&key(K), Role::Server, &client_hello, &Hello::new(1, 0));
        assert_eq!(
            itself.open(&mut BytesMut::from(&frame[..])),
            Err(SealError::Unauthenticated)
        );
    }
}
