//! Who is in the cluster: the member table as a pure state machine.
//!
//! Inputs are method calls carrying the current `Instant` (heartbeats, verification
//! verdicts, clock ticks); outputs are [`Event`]s the async driver acts on. Nothing here
//! sleeps, opens sockets or reads the clock, so every timing rule is tested with injected
//! time. The parts: the member table and its timing rules (`table`), the admission of
//! senders not yet known under a cluster key (`strangers`), and the snapshot readers
//! take of it ([`MembershipView`]).

mod strangers;
mod table;
mod view;

pub(crate) use strangers::Strangers;
pub use table::{DropReason, Event, MAX_MEMBERS, Member, MemberTable, MemberView, Timing, Verdict};
pub use view::MembershipView;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A node process. Random per process start, so a restarted node is a new member even
/// when it keeps its name; the name-level rule (newest incarnation wins) lives in the table.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

impl NodeId {
    /// A fresh id from the operating system's CSPRNG.
    pub fn random() -> NodeId {
        NodeId(rand::random::<u64>())
    }

    /// The id whose 64 bits are `raw` (as heartbeats and frames carry it).
    pub const fn from_u64(raw: u64) -> NodeId {
        NodeId(raw)
    }

    /// Its 64 bits, as heartbeats and frames carry them; shown as 16 hex digits.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<NodeId, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}

/// Whether `name` can be a node name: it is the route suffix of session ids (after the
/// last `.`), shown in tables and logs, so 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a node says about itself in every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    /// Node name, also the route suffix of the session ids it issues.
    pub name: String,
    pub http: SocketAddr,
    pub replication: SocketAddr,
    /// Process start time (Unix ms): among members with one name the newest wins.
    pub incarnation: u64,
}

/// Whether a heartbeat says "I am here", "I am here but still taking my state transfer"
/// or "I am going".
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Announce {
    Alive,
    /// Alive for the cluster (it replicates to it), not yet serving: a balancer keeps it
    /// out of rotation until it says `Alive`.
    Joining,
    Leaving,
}

/// One received heartbeat, decoded and already checked to be of our cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub info: MemberInfo,
    pub announce: Announce,
    pub seq: u64,
}

/// A member's state as others see it (SPEC: `alive` or `suspect`; a dropped member is gone).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
        }
    }
}
