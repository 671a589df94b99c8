//! The replication-port hold of issue 12, as an attacker without the key runs it: on each
//! connection one valid Ping (which is all a port without a key asks before it takes
//! frames of any size), then a frame announced at 16 MiB whose bytes come at the
//! attacker's pace and then stop. Shared by the test of the port and the figure of the
//! issue's note (benches/replication_hold.rs).

// Each of the two uses part of it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deltacast::membership::NodeId;
use deltacast::wire::{self, FrameBody};

/// One run of the attack.
#[derive(Clone, Copy, Debug)]
pub struct Attack {
    pub connections: usize,
    /// The length the frame announces.
    pub declared: usize,
    /// How much of it is sent before the attacker stops and holds the connection.
    pub sent: usize,
    /// Bytes a second per connection; None: as fast as the node takes them.
    pub rate: Option<u64>,
    /// How long a connection is held, at most, before the attacker gives up on it.
    pub hold: Duration,
}

/// How one connection ended.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    /// Bytes of the frame written (taken by the node, or held by the sockets between).
    pub sent: usize,
    /// Since the frame's first byte, when the node closed the connection; None if it was
    /// still open when the attacker gave up.
    pub closed_after: Option<Duration>,
}

/// The attack under way, one thread per connection.
pub struct Running(Vec<JoinHandle<Ended>>);

impl Running {
    /// Whether every connection ended (closed by the node, or given up).
    pub fn finished(&self) -> bool {
        self.0.iter().all(|t| t.is_finished())
    }

    /// How each connection ended, once all did.
    pub fn wait(self) -> Vec<Ended> {
        self.0
            .into_iter()
            .map(|t| t.join().expect("an attacking thread"))
            .collect()
    }
}

/// Starts `attack` on the replication port at `addr` of `cluster`. Connections are opened
/// one after another, each proven by its Ping before the next, as an attacker who knows
/// the cap on unproven connections would.
pub fn start(addr: SocketAddr, cluster: &str, attack: Attack) -> Running {
    let mut threads = Vec::new();
    for i in 0..attack.connections {
        let Some(stream) = proven(addr, cluster, i as u64) else {
            // Refused at once: nothing held.
            threads.push(std::thread::spawn(|| Ended {
                sent: 0,
                closed_after: Some(Duration::ZERO),
            }));
            continue;
        };
        threads.push(std::thread::spawn(move || hold(stream, attack)));
    }
    Running(threads)
}

/// A connection that sent a valid Ping and got its Pong.
fn proven(addr: SocketAddr, cluster: &str, i: u64) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let ping = wire::encode_frame(
        cluster,
        NodeId::from_u64(0xbad_0000 + i),
        &FrameBody::Ping(i),
    );
    let mut bytes = (ping.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&ping);
    s.write_all(&bytes).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut pong = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut pong).ok()?;
    matches!(wire::decode_frame(&pong, cluster), Ok((_, FrameBody::Pong(n))) if n == i).then_some(s)
}

/// Whether an error of the socket means the node closed it (not a timeout of ours).
fn closed(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn hold(mut s: TcpStream, attack: Attack) -> Ended {
    const PIECE: usize = 64 * 1024;
    let piece = vec![0u8; PIECE];
    let started = Instant::now();
    let give_up = started + attack.hold;
    let ended = |sent, closed: bool| Ended {
        sent,
        closed_after: closed.then(|| started.elapsed()),
    };
    // Short timeouts, so that a blocked write or read still sees the attacker's deadline.
    if s.set_write_timeout(Some(Duration::from_millis(100)))
        .is_err()
        || s.set_read_timeout(Some(Duration::from_millis(100)))
            .is_err()
    {
        return ended(0, true);
    }
    let mut head = (attack.declared as u32).to_be_bytes().to_vec();
    let mut sent = 0;
    while !head.is_empty() {
        match s.write(&head) {
            Ok(n) => drop(head.drain(..n)),
            Err(e) if closed(&e) => return ended(sent, true),
            Err(_) if Instant::now() >= give_up => return ended(sent, false),
            Err(_) => {}
        }
    }
    while sent < attack.sent {
        if let Some(rate) = attack.rate {
            // Paced: this many bytes by now, no more.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait.min(give_up.saturating_duration_since(Instant::now())));
            }
        }
        let n = PIECE.min(attack.sent - sent);
        match s.write(&piece[..n]) {
            Ok(n) => sent += n,
            Err(e) if closed(&e) => return ended(sent, true),
            Err(_) => {}
        }
        if Instant::now() >= give_up {
            return ended(sent, false);
        }
    }
    // Stopped: wait for the node to close, until the attacker gives up.
    let mut sink = [0u8; 1024];
    while Instant::now() < give_up {
        match s.read(&mut sink) {
            Ok(0) => return ended(sent, true),
            Ok(_) => {}
            Err(e) if closed(&e) => return ended(sent, true),
            Err(_) => {}
        }
    }
    ended(sent, false)
}
