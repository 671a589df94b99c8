//! The shared cluster key (`cluster.key_file`, made by `deltacast keygen`): keyed nodes
//! join and replicate as usual; a node with another key or with none never joins, never
//! changes a session, and what it sends is dropped and counted; bad key files stop the node
//! with one line; a discovering balancer with the key finds the keyed nodes.

mod common;

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    BalancerProc, Browser, Cluster, FAST, NodeProc, exchange, group_sender, run_cli,
    wait_converged, wait_until,
};
use deltacast::membership::NodeId;
use deltacast::session::{AttributeChange, Delta, SessionId, Version};
use deltacast::wire::seal::{self, ClusterKey, Hello, Role, StreamSeal};
use deltacast::wire::{self, FrameBody};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};

const STARTUP: Duration = Duration::from_secs(20);

/// A new key from `deltacast keygen`.
fn keygen() -> String {
    let (code, stdout, stderr) = run_cli(&["keygen"]);
    assert_eq!(code, Some(0), "keygen failed: {stderr}");
    stdout.trim().to_string()
}

/// Writes `text` to a key file of its own for this test and returns its path.
fn key_file(cluster: &Cluster, label: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("seal-keys");
    std::fs::create_dir_all(&dir).expect("key dir");
    let path = dir.join(format!("{}-{label}.key", cluster.name));
    std::fs::write(&path, text).expect("write the key file");
    path
}

/// The fast timings and `cluster.key_file=path`.
fn keyed_args(path: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = FAST.iter().map(OsString::from).collect();
    args.push("--set".into());
    let mut set = OsString::from("cluster.key_file=");
    set.push(path);
    args.push(set);
    args
}

/// A node of `cluster` with the key in `path`, once it answers.
fn keyed_node(cluster: &Cluster, name: &str, path: &Path) -> NodeProc {
    let n = cluster.node(name, &keyed_args(path));
    wait_until(STARTUP, &format!("{name} answers"), || n.status());
    n
}

/// A node of `cluster` without a key, once it answers.
fn plain_node(cluster: &Cluster, name: &str) -> NodeProc {
    let n = cluster.node(name, FAST);
    wait_until(STARTUP, &format!("{name} answers"), || n.status());
    n
}

/// A `membership` counter of the node's `/status` (None if it does not answer or lacks it).
fn membership_counter(node: &NodeProc, field: &str) -> Option<u64> {
    node.status()?["membership"][field].as_u64()
}

fn replication_errors(node: &NodeProc) -> Option<u64> {
    node.status()?["replication"]["errors"].as_u64()
}

/// Waits until `field` of every node is at least its `at_least`.
fn wait_counter(nodes: &[(&NodeProc, u64)], field: &str) {
    let what = format!("the nodes count {field}");
    wait_until(STARTUP, &what, || {
        nodes
            .iter()
            .all(|(n, at_least)| membership_counter(n, field).is_some_and(|v| v >= *at_least))
            .then_some(())
    });
}

/// The attribute `x` of the browser's session as `node` answers it.
fn read_x(browser: &Browser, node: &NodeProc) -> (u16, String) {
    let got = browser
        .clone()
        .send(node.http, "GET", "/session/attributes/x", b"");
    (got.status, got.text())
}

fn active_sessions(node: &NodeProc) -> Option<u64> {
    node.status()?["sessions"]["active"].as_u64()
}

/// A `deltacast node` started by hand (own directory, own arguments), killed by its PID
/// when dropped.
struct Spawned {
    child: Child,
    stderr: PathBuf,
}

impl Spawned {
    fn node(cluster: &Cluster, label: &str, args: &[&str], dir: &Path) -> Spawned {
        let stderr = common::log_path(&cluster.name, label);
        let child = Command::new(common::BIN)
            .arg("node")
            .args(["--cluster", &cluster.name])
            .args(["--multicast", &cluster.multicast])
            .args(["--name", label])
            .args(["--http", "127.0.0.1:0"])
            .args(["--replication", "127.0.0.1:0"])
            .args(FAST)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("log file"))
            .spawn()
            .expect("spawn deltacast node");
        Spawned { child, stderr }
    }

    /// The HTTP address the node reports once it listens.
    fn http(&mut self) -> SocketAddr {
        match common::read_listening(&mut self.child, STARTUP) {
            Ok(found) => found["node.http"],
            Err(status) => panic!("the node exited {status:?}: {}", self.stderr()),
        }
    }

    /// The exit code once the process ended within `timeout`, or None if it still runs.
    fn exit_code(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A heartbeat for a member that does not exist, plain or sealed with `seal`.
fn forged_heartbeat(
    cluster: &str,
    name: &str,
    id: u64,
    seal: Option<&mut seal::DatagramSeal>,
) -> Vec<u8> {
    let hb = common::forged_heartbeat(name, id);
    wire::encode_heartbeat(cluster, &hb, Duration::from_millis(100), seal)
}

/// A replication frame (without its length prefix) that sets `x` to `value` in the
/// session `id` with a version that wins over any real write.
fn forged_deltas(cluster: &str, id: &str, value: &str) -> Bytes {
    let id = SessionId::parse_hex(id).expect("a session id");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let mut delta = Delta::new(id, now, now);
    delta.attributes.push(AttributeChange {
        name: "x".into(),
        value: Some(Bytes::from(value.to_string())),
        version: Version {
            counter: 1 << 40,
            node: NodeId::from_u64(0xbad),
        },
    });
    wire::encode_frame(
        cluster,
        NodeId::from_u64(0xbad),
        &FrameBody::Deltas {
            seq: 1,
            deltas: vec![delta],
        },
    )
}

/// `frame` behind its 4-byte big-endian length, as the replication port reads it.
fn length_prefixed(frame: &[u8]) -> Vec<u8> {
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    out
}

/// The plain forged frame, length prefix included.
fn forged_deltas_frame(cluster: &str, id: &str, value: &str) -> Vec<u8> {
    length_prefixed(&forged_deltas(cluster, id, value))
}

/// A connection to a replication port after the stream handshake, done with `key_text`
/// (right or wrong: the hello carries no proof of the key; the empty first frame does, and
/// a wrong key fails there), and the seal of its frames.
fn sealed_connection(addr: SocketAddr, key_text: &str) -> (TcpStream, StreamSeal) {
    let key = ClusterKey::from_text(key_text).expect("a key");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // The node speaks first: its hello says its id, which ours must name.
    let mut theirs = [0u8; seal::HELLO_LEN];
    s.read_exact(&mut theirs).expect("the node's hello");
    let theirs = Hello::decode(&theirs).expect("a hello");
    let mine = Hello::new(0x5ea1, theirs.from);
    s.write_all(&mine.encode()).expect("send the hello");
    let mut stream_seal = StreamSeal::new(&key, Role::Client, &mine, &theirs);
    // Each end's first frame: an empty one, its proof that it holds the key. The node's is
    // read here, so that what follows is its answer. With a wrong key the node closes the
    // connection at our proof, without sending its own.
    let proof = stream_seal.seal(b"");
    s.write_all(&length_prefixed(&proof))
        .expect("send the proof of the key");
    let mut theirs = [0u8; 4 + seal::FRAME_OVERHEAD];
    if s.read_exact(&mut theirs).is_ok() {
        let _ = stream_seal.open(&mut bytes::BytesMut::from(&theirs[4..]));
    }
    (s, stream_seal)
}

/// Everything the node sends back on `s` until it closes the connection; panics if it
/// keeps it open for 10 s.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    Instant::now() < deadline,
                    "the node kept the connection open for 10 s"
                );
            }
            Err(_) => return got,
        }
    }
}

/// Whether `bytes` begin with a plain frame of `cluster` that decodes (an answer of a node
/// that accepted plain traffic, such as an `Ack`).
fn holds_plain_frame(bytes: &[u8], cluster: &str) -> bool {
    if bytes.len() < 4 {
        return false;
    }
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    bytes
        .get(4..4 + len)
        .is_some_and(|frame| wire::decode_frame(frame, cluster).is_ok())
}

/// A socket that receives the cluster's multicast datagrams (beside the nodes, which share
/// the port).
fn group_listener(group: SocketAddr) -> UdpSocket {
    let SocketAddr::V4(group) = group else {
        panic!("an IPv4 group");
    };
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuse address");
    s.set_reuse_port(true).expect("reuse port");
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())
        .expect("bind the group port");
    s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
        .expect("join the group");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.into()
}

/// Each of `nodes` still holds the one session of `keyed_pair`, with `x = kept`.
fn assert_kept(browser: &Browser, nodes: &[&NodeProc]) {
    for node in nodes {
        assert_eq!(
            read_x(browser, node),
            (200, "kept".to_string()),
            "{}",
            node.name
        );
        assert_eq!(active_sessions(node), Some(1), "{}", node.name);
    }
}

/// A browser with a new session on `node` holding `x = kept`, and the session's id.
fn kept_session(node: &NodeProc) -> (Browser, String) {
    let mut browser = Browser::new();
    let put = browser.send(node.http, "PUT", "/session/attributes/x", b"kept");
    assert_eq!(put.status, 204);
    let session = browser.session_id().expect("a session");
    (browser, session)
}

/// Two converged nodes a and b sharing a fresh key, and a session with `x = kept` written
/// on a.
fn keyed_pair(name: &str) -> (Cluster, PathBuf, NodeProc, NodeProc, Browser) {
    let c = Cluster::new(name);
    let key = key_file(&c, "shared", &format!("{}\n", keygen()));
    let a = keyed_node(&c, "a", &key);
    let b = keyed_node(&c, "b", &key);
    wait_converged(&[&a, &b], STARTUP);
    let (browser, _) = kept_session(&a);
    assert_eq!(read_x(&browser, &b), (200, "kept".to_string()));
    (c, key, a, b, browser)
}

#[test]
fn keygen_prints_one_new_43_character_base64url_key_each_run() {
    let mut keys = Vec::new();
    for _ in 0..3 {
        let (code, stdout, stderr) = run_cli(&["keygen"]);
        assert_eq!(code, Some(0), "keygen exited {code:?}: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "keygen printed {stdout:?}");
        let key = lines[0];
        assert_eq!(key.len(), 43, "{key:?} is not 43 characters");
        assert!(
            key.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            "{key:?} is not base64url"
        );
        keys.push(key.to_string());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "keygen printed the same key twice");
}

#[test]
fn two_nodes_sharing_a_key_file_see_each_other_and_replicate_a_session() {
    let c = Cluster::new("seal-pair");
    let key = keygen();
    // The same key, once with a newline and once padded with white space: both are the key.
    let file_a = key_file(&c, "a", &format!("{key}\n"));
    let file_b = key_file(&c, "b", &format!("  {key} \n\n"));
    let a = keyed_node(&c, "a", &file_a);
    let b = keyed_node(&c, "b", &file_b);
    wait_converged(&[&a, &b], STARTUP);
    for node in [&a, &b] {
        wait_until(STARTUP, "the node is ready", || {
            (node.status()?["node"]["state"] == "ready").then_some(())
        });
    }

    let mut browser = Browser::new();
    let put = browser.send(a.http, "PUT", "/session/attributes/x", b"sealed value");
    assert_eq!(put.status, 204);
    assert_eq!(read_x(&browser, &b), (200, "sealed value".to_string()));
    let session = browser.clone().send(b.http, "GET", "/session", b"");
    assert_eq!(session.json()["attributes"]["x"], "sealed value");
    // And the other way round.
    let put = browser.send(b.http, "PUT", "/session/attributes/y", b"from b");
    assert_eq!(put.status, 204);
    let got = browser
        .clone()
        .send(a.http, "GET", "/session/attributes/y", b"");
    assert_eq!((got.status, got.text()), (200, "from b".to_string()));

    // Nothing of theirs was refused: the counters exist and stay at zero.
    for node in [&a, &b] {
        let status = node.status().expect("status");
        let m = &status["membership"];
        assert_eq!(
            m["dropped_unauthenticated"].as_u64(),
            Some(0),
            "{}: {m}",
            node.name
        );
        assert_eq!(
            m["dropped_replayed"].as_u64(),
            Some(0),
            "{}: {m}",
            node.name
        );
        assert_eq!(status["replication"]["errors"].as_u64(), Some(0));
    }
}

#[test]
fn a_node_with_another_key_never_joins_and_changes_no_session() {
    let (c, _key, a, b, browser) = keyed_pair("seal-otherkey");
    let before_a = membership_counter(&a, "dropped_unauthenticated").expect("a counts");
    let before_b = membership_counter(&b, "dropped_unauthenticated").expect("b counts");

    let other_text = keygen();
    let other = key_file(&c, "other", &other_text);
    let intruder = keyed_node(&c, "intruder", &other);
    // The intruder writes a session of its own.
    let mut stranger = Browser::new();
    assert_eq!(
        stranger
            .send(intruder.http, "PUT", "/session/attributes/x", b"intruder")
            .status,
        204
    );

    // About two seconds of the intruder's heartbeats (100 ms apart), each one refused.
    wait_until(STARTUP, "the keyed nodes refused 20 datagrams", || {
        for (node, want) in [(&a, vec!["b".to_string()]), (&b, vec!["a".to_string()])] {
            let status = node.status()?;
            let members = common::member_names(&status, "")?;
            assert_eq!(members, want, "{} admitted someone", node.name);
        }
        let members = intruder.members("")?;
        assert!(members.is_empty(), "the intruder lists {members:?}");
        let a_now = membership_counter(&a, "dropped_unauthenticated")?;
        let b_now = membership_counter(&b, "dropped_unauthenticated")?;
        (a_now >= before_a + 20 && b_now >= before_b + 20).then_some(())
    });
    // The intruder refuses the keyed nodes' heartbeats in turn.
    wait_counter(&[(&intruder, 10)], "dropped_unauthenticated");
    assert_eq!(intruder.members(""), Some(Vec::new()));

    // Frames sealed with the other key, straight to a's replication port: refused, counted,
    // never answered.
    let session = browser.session_id().expect("a session");
    let errors_before = replication_errors(&a).expect("a counts errors");
    for _ in 0..3 {
        let (mut s, mut other_seal) = sealed_connection(a.replication, &other_text);
        let frame = other_seal.seal(&forged_deltas(&c.name, &session, "forged"));
        let _ = s.write_all(&length_prefixed(&frame));
        let answer = read_until_closed(&mut s);
        assert!(answer.is_empty(), "a answered {} bytes", answer.len());
    }
    wait_until(STARTUP, "the refused connections are counted", || {
        (replication_errors(&a)? >= errors_before + 3).then_some(())
    });

    assert_kept(&browser, &[&a, &b]);
    // The intruder got no state transfer and sent none.
    assert_eq!(active_sessions(&intruder), Some(1));
    assert_eq!(read_x(&browser, &intruder).0, 404);
    assert_eq!(read_x(&stranger, &intruder), (200, "intruder".to_string()));
    assert_eq!(read_x(&stranger, &a).0, 404);
}

#[test]
fn a_node_without_a_key_and_keyed_nodes_never_admit_each_other() {
    let (c, _key, a, b, browser) = keyed_pair("seal-nokey");
    let before_a = membership_counter(&a, "dropped_unauthenticated").expect("a counts");
    let before_b = membership_counter(&b, "dropped_unauthenticated").expect("b counts");

    let plain = plain_node(&c, "plain");
    wait_until(STARTUP, "both sides refused 20 datagrams", || {
        assert_eq!(a.members("")?, ["b"], "a admitted someone");
        assert_eq!(b.members("")?, ["a"], "b admitted someone");
        let members = plain.members("")?;
        assert!(members.is_empty(), "the keyless node lists {members:?}");
        let a_now = membership_counter(&a, "dropped_unauthenticated")?;
        let b_now = membership_counter(&b, "dropped_unauthenticated")?;
        let plain_now = membership_counter(&plain, "dropped_unauthenticated")?;
        (a_now >= before_a + 20 && b_now >= before_b + 20 && plain_now >= 20).then_some(())
    });

    assert_kept(&browser, &[&a, &b]);
    // The keyless node got no state transfer.
    assert_eq!(active_sessions(&plain), Some(0));
    assert_eq!(read_x(&browser, &plain).0, 404);
}

#[test]
fn plain_or_random_bytes_sent_to_a_keyed_node_are_dropped_and_counted_and_change_nothing() {
    let (c, _key, a, b, mut browser) = keyed_pair("seal-raw");
    let session = browser.session_id().expect("a session");

    // Datagrams: plain heartbeats of a member that does not exist, random bytes, and a
    // heartbeat sealed with another key.
    let dropped = |n: &NodeProc| membership_counter(n, "dropped");
    let unauth = |n: &NodeProc| membership_counter(n, "dropped_unauthenticated");
    let (dropped_a, dropped_b) = (dropped(&a).expect("a"), dropped(&b).expect("b"));
    let (unauth_a, unauth_b) = (unauth(&a).expect("a"), unauth(&b).expect("b"));
    let plain = forged_heartbeat(&c.name, "intruder", 0xbad, None);
    let other_key = ClusterKey::from_text(&keygen()).expect("a key");
    let mut other_seal = seal::DatagramSeal::new(other_key, 0xbad);
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let sender = group_sender();
    let (mut sent, mut sent_unauth) = (0u64, 0u64);
    for i in 0..60 {
        let datagram = match i % 3 {
            0 => {
                sent_unauth += 1;
                plain.clone()
            }
            1 => (0..rng.random_range(1..1200))
                .map(|_| rng.random())
                .collect(),
            _ => {
                sent_unauth += 1;
                forged_heartbeat(&c.name, "intruder", 0xbad, Some(&mut other_seal))
            }
        };
        sender.send_to(&datagram, c.group()).expect("send");
        sent += 1;
        // In batches, so that no socket buffer overflows and the count is exact.
        if sent % 15 == 0 {
            wait_until(STARTUP, "the datagrams are counted", || {
                (dropped(&a)? >= dropped_a + sent && dropped(&b)? >= dropped_b + sent).then_some(())
            });
        }
    }
    for (node, d0, u0) in [(&a, dropped_a, unauth_a), (&b, dropped_b, unauth_b)] {
        let status = node.status().expect("the node still answers");
        let m = &status["membership"];
        assert_eq!(m["dropped"].as_u64(), Some(d0 + sent), "{}: {m}", node.name);
        let u = m["dropped_unauthenticated"].as_u64().expect("counted");
        assert!(u >= u0 + sent_unauth, "{}: {m}", node.name);
    }
    assert_eq!(a.members(""), Some(vec!["b".to_string()]));
    assert_eq!(b.members(""), Some(vec!["a".to_string()]));

    // A genuine sealed heartbeat recorded and sent again is refused as a replay.
    let listener = group_listener(c.group());
    let mut recorded = [0u8; 2048];
    let (len, _) = listener
        .recv_from(&mut recorded)
        .expect("a heartbeat of a or b");
    let replayed = |n: &NodeProc| membership_counter(n, "dropped_replayed");
    let replays_before = replayed(&a).expect("a") + replayed(&b).expect("b");
    sender
        .send_to(&recorded[..len], c.group())
        .expect("send the replay");
    wait_until(STARTUP, "the replay is counted", || {
        (replayed(&a)? + replayed(&b)? > replays_before).then_some(())
    });

    // Streams: a plain frame that would overwrite the session, and garbage; each
    // connection is closed without a plain answer.
    let errors_before = replication_errors(&a).expect("a counts errors");
    let forged = forged_deltas_frame(&c.name, &session, "forged");
    for i in 0..6 {
        let mut s = TcpStream::connect(a.replication).expect("connect to a");
        let bytes: Vec<u8> = if i % 2 == 0 {
            forged.clone()
        } else {
            (0..64).map(|_| rng.random()).collect()
        };
        let _ = s.write_all(&bytes);
        let answer = read_until_closed(&mut s);
        assert!(
            !holds_plain_frame(&answer, &c.name),
            "a keyed node answered a plain frame"
        );
    }
    wait_until(STARTUP, "the bad connections are counted", || {
        (replication_errors(&a)? >= errors_before + 6).then_some(())
    });

    // Nothing changed, and the keyed nodes still replicate to each other.
    wait_converged(&[&a, &b], STARTUP);
    assert_kept(&browser, &[&a, &b]);
    assert_eq!(
        browser
            .send(b.http, "PUT", "/session/attributes/x", b"after")
            .status,
        204
    );
    assert_eq!(read_x(&browser, &a), (200, "after".to_string()));
}

#[test]
fn forged_frames_do_overwrite_a_session_when_plain_to_a_keyless_node_or_sealed_with_the_key() {
    // The controls of the refusals above: the same forged frame is applied by a node
    // without a key, and by a keyed node when sealed with its key, so its refusal by a
    // keyed node (plain, or sealed with another key) is the seal's doing.
    let c = Cluster::new("seal-control");
    let n = plain_node(&c, "n");
    let (browser, session) = kept_session(&n);
    let mut s = TcpStream::connect(n.replication).expect("connect");
    s.write_all(&forged_deltas_frame(&c.name, &session, "forged"))
        .expect("send the frame");
    wait_until(STARTUP, "the plain forged value is applied", || {
        (read_x(&browser, &n) == (200, "forged".to_string())).then_some(())
    });

    let keyed = Cluster::new("seal-control-keyed");
    let text = keygen();
    let k = keyed_node(&keyed, "k", &key_file(&keyed, "k", &text));
    let (browser, session) = kept_session(&k);
    let (mut s, mut stream_seal) = sealed_connection(k.replication, &text);
    let frame = stream_seal.seal(&forged_deltas(&keyed.name, &session, "forged"));
    s.write_all(&length_prefixed(&frame))
        .expect("send the frame");
    wait_until(STARTUP, "the sealed forged value is applied", || {
        (read_x(&browser, &k) == (200, "forged".to_string())).then_some(())
    });
}

#[test]
fn a_missing_or_short_key_file_stops_the_node_with_one_line_naming_cluster_key_file() {
    let c = Cluster::new("seal-badkey");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("seal-keys");
    std::fs::create_dir_all(&dir).expect("key dir");
    let missing = dir.join(format!("{}-missing.key", c.name));
    let short = key_file(&c, "short", "abcde\n");
    let fifteen = key_file(&c, "fifteen", "  abcdefghijklmno  \n");
    let cases = [
        ("missing", missing, None),
        ("short", short, Some("16")),
        ("fifteen", fifteen, Some("16")),
    ];
    for (label, path, says) in cases {
        let set = format!("cluster.key_file={}", path.display());
        let mut node = Spawned::node(&c, label, &["--set", &set], &dir);
        let code = node
            .exit_code(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{label}: the node kept running"));
        assert!(
            matches!(code, Some(c) if c != 0),
            "{label}: exited {code:?}"
        );
        let stderr = node.stderr();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{label}: {stderr:?}");
        assert!(lines[0].contains("cluster.key_file"), "{label}: {stderr:?}");
        if let Some(says) = says {
            assert!(lines[0].contains(says), "{label}: {stderr:?}");
        }
    }

    // Sixteen characters inside white space, by a path relative to the current directory,
    // are a key: the node runs.
    let name = format!("{}-sixteen.key", c.name);
    std::fs::write(dir.join(&name), "\n abcdefghijklmnop \n").expect("write");
    let set = format!("cluster.key_file={name}");
    let mut node = Spawned::node(&c, "sixteen", &["--set", &set], &dir);
    let http = node.http();
    wait_until(STARTUP, "the node with a 16-character key answers", || {
        if let Ok(Some(status)) = node.child.try_wait() {
            panic!("the node exited {status}: {}", node.stderr());
        }
        common::get_json(http, "/status")
    });
}

#[test]
fn a_discovering_balancer_with_the_key_finds_keyed_nodes_and_one_without_finds_none() {
    let (c, key, a, b, _browser) = keyed_pair("seal-balancer");
    let mut args: Vec<OsString> = keyed_args(&key);
    args.extend(["--set", "balancer.sticky=none"].map(OsString::from));
    let keyed = BalancerProc::spawn(&c, &args);
    let keyless = BalancerProc::spawn(&c, FAST);
    wait_until(STARTUP, "the keyed balancer discovers a and b", || {
        (keyed.routes()? == ["a", "b"]).then_some(())
    });
    let mut answered = Vec::new();
    for _ in 0..6 {
        let got = exchange(keyed.addr, "GET", "/status", None, b"").expect("an answer");
        assert_eq!(got.status, 200, "{}", got.text());
        answered.push(
            got.json()["node"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    answered.sort();
    answered.dedup();
    assert_eq!(answered, ["a", "b"], "requests went to both members");

    // The keyless balancer heard the same heartbeats and could open none of them.
    assert_eq!(keyless.routes(), Some(Vec::new()));
    let got = exchange(keyless.addr, "GET", "/status", None, b"").expect("an answer");
    assert_eq!(got.status, 503, "{}", got.text());
    // The balancers only listen: the nodes list each other alone.
    assert_eq!(a.members(""), Some(vec!["b".to_string()]));
    assert_eq!(b.members(""), Some(vec!["a".to_string()]));
}

/// b's sealed heartbeats as an outsider on the group records them, for at least `count`.
fn record_heartbeats_of(c: &Cluster, b: &NodeProc, count: usize) -> Vec<Vec<u8>> {
    let status = b.status().expect("b's status");
    let id = status["node"]["id"].as_str().expect("b's id");
    let id = u64::from_str_radix(id, 16).expect("a hexadecimal id");
    let listener = group_listener(c.group());
    let mut recorded = Vec::new();
    let mut buf = [0u8; 2048];
    wait_until(STARTUP, "b's heartbeats recorded", || {
        if let Ok((len, _)) = listener.recv_from(&mut buf) {
            // Sealed: magic, then the sender's id in clear.
            if len > 12 && buf[4..12] == id.to_be_bytes() {
                recorded.push(buf[..len].to_vec());
            }
        }
        (recorded.len() >= count).then_some(())
    });
    recorded
}

/// Sends `recorded` to the group again, a little apart, until `heard` says they arrived.
fn replay(c: &Cluster, recorded: &[Vec<u8>], mut heard: impl FnMut() -> bool) {
    let sender = group_sender();
    wait_until(STARTUP, "the replayed heartbeats are heard", || {
        for datagram in recorded {
            sender.send_to(datagram, c.group()).expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
        heard().then_some(())
    });
}

#[test]
fn recorded_heartbeats_of_a_dead_node_do_not_bring_it_back_on_a_node_started_later() {
    let (c, key, a, b, _browser) = keyed_pair("seal-ghost");
    let recorded = record_heartbeats_of(&c, &b, 10);
    drop(b); // SIGKILL
    wait_until(STARTUP, "a drops b", || {
        a.members("")?.is_empty().then_some(())
    });
    // A node started later has no replay window for b: only a proof of life can tell.
    let fresh = keyed_node(&c, "fresh", &key);
    wait_converged(&[&a, &fresh], STARTUP);
    let before = membership_counter(&fresh, "heartbeats_received").unwrap_or(0);
    replay(&c, &recorded, || {
        membership_counter(&fresh, "heartbeats_received").unwrap_or(0) >= before + 20
    });
    assert_eq!(fresh.members(""), Some(vec!["a".to_string()]));
    assert_eq!(a.members(""), Some(vec!["fresh".to_string()]));
    let joined_b = fresh
        .log_text()
        .lines()
        .filter(|l| l.contains("member joined") && l.contains("name=b "))
        .count();
    assert_eq!(
        joined_b, 0,
        "the dead b was admitted from replayed heartbeats"
    );
}

#[test]
fn recorded_heartbeats_of_a_dead_node_send_no_traffic_through_a_balancer_started_later() {
    let (c, key, a, b, _browser) = keyed_pair("seal-ghost-balancer");
    let recorded = record_heartbeats_of(&c, &b, 10);
    drop(b);
    wait_until(STARTUP, "a drops b", || {
        a.members("")?.is_empty().then_some(())
    });
    let mut args: Vec<OsString> = keyed_args(&key);
    args.extend(["--set", "balancer.sticky=none"].map(OsString::from));
    let balancer = BalancerProc::spawn(&c, &args);
    wait_until(STARTUP, "the balancer discovers a", || {
        (balancer.routes()? == ["a"]).then_some(())
    });
    // The replays reach the balancer's group socket as they reach a's: a counts them.
    let before = membership_counter(&a, "dropped_replayed").unwrap_or(0);
    let mut listed_b = false;
    let sender = group_sender();
    wait_until(STARTUP, "the replayed heartbeats are heard", || {
        for datagram in &recorded {
            sender.send_to(datagram, c.group()).expect("send");
            std::thread::sleep(Duration::from_millis(20));
            listed_b |= balancer
                .routes()
                .is_some_and(|r| r.iter().any(|r| r == "b"));
        }
        (membership_counter(&a, "dropped_replayed").unwrap_or(0) >= before + 20).then_some(())
    });
    assert!(!listed_b, "the balancer listed the dead b");
    assert_eq!(balancer.routes(), Some(vec!["a".to_string()]));
    for _ in 0..10 {
        let got = exchange(balancer.addr, "GET", "/status", None, b"").expect("an answer");
        assert_eq!(got.status, 200, "{}", got.text());
    }
}

#[test]
fn an_outsider_cannot_make_a_keyed_node_log_a_line_per_datagram() {
    let c = Cluster::new("seal-log-flood");
    let k = keyed_node(&c, "k", &key_file(&c, "k", &keygen()));
    wait_until(STARTUP, "k is up", || k.status());
    let before = membership_counter(&k, "dropped_unauthenticated").unwrap_or(0);
    for _ in 0..300 {
        // A new socket, so a new source port, for each datagram: no spoofing needed.
        group_sender()
            .send_to(b"DCsk not sealed with any key, not even close", c.group())
            .expect("send");
    }
    // A burst may overflow the socket's buffer; a hundred counted is plenty to tell.
    wait_until(STARTUP, "k counted the datagrams", || {
        (membership_counter(&k, "dropped_unauthenticated")? >= before + 100).then_some(())
    });
    let lines = k.log_text().matches("dropped datagram").count();
    assert!(
        lines <= 1,
        "{lines} log lines for 300 datagrams from one host"
    );
}

#[test]
fn heartbeats_of_many_dead_nodes_do_not_keep_a_live_one_out() {
    // Each dead id's heartbeats are sealed with the key, as a recording of a long run
    // would be (fresh counters); their replication port refuses, so each proof fails.
    let c = Cluster::new("seal-many-dead");
    let text = keygen();
    let key = key_file(&c, "shared", &text);
    let a = keyed_node(&c, "a", &key);
    wait_until(STARTUP, "a is up", || a.status());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, group, cluster) = (stop.clone(), c.group(), c.name.clone());
        let key = ClusterKey::from_text(&text).expect("a key");
        std::thread::spawn(move || {
            let mut dead: Vec<(u64, seal::DatagramSeal)> = (0..300u64)
                .map(|i| {
                    (
                        0xdead_0000 + i,
                        seal::DatagramSeal::new(key.clone(), 0xdead_0000 + i),
                    )
                })
                .collect();
            let sender = group_sender();
            let until = Instant::now() + STARTUP;
            // Rounds as fast as they go: every id heard again long before an interval ends.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                for (id, s) in &mut dead {
                    let datagram = forged_heartbeat(&cluster, &format!("dead{id:x}"), *id, Some(s));
                    let _ = sender.send_to(&datagram, group);
                }
            }
        })
    };
    // End to end (the unit tests of `Strangers` hold the rule): the live node gets in
    // while the flood goes on.
    let fresh = keyed_node(&c, "fresh", &key);
    let joined = common::time_until(STARTUP, || {
        fresh.members("").is_some_and(|m| m == ["a"])
            && a.members("").is_some_and(|m| m == ["fresh"])
    });
    let flooding = !flood.is_finished();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.join();
    assert!(
        joined.is_some(),
        "a live member was kept out by heartbeats of dead ones"
    );
    assert!(flooding, "the flood ended before the live member got in");
}
