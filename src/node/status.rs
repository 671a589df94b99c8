//! The `/status` document (SPEC), shared by the node that serves it and the `status`
//! command that reads it.

use serde::{Deserialize, Serialize};

pub use crate::metrics::MembershipCounters;

/// The JSON document of `GET /status`: one node's view of itself and the cluster, taken
/// at one moment. Counters count since the node started. No session attribute value ever
/// appears in it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusDoc {
    /// `node`: this node.
    pub node: NodeStatus,
    /// `cluster`: the cluster name (`cluster.name`).
    pub cluster: String,
    /// `members`: the other members this node knows (not itself); a dropped member is no
    /// longer listed.
    pub members: Vec<MemberStatus>,
    /// `sessions`: the sessions this node holds.
    pub sessions: SessionsStatus,
    /// `replication`: the replication traffic of this node.
    pub replication: ReplicationStatus,
    /// `membership`: heartbeat counters, and dropped datagrams by reason (zeros when an
    /// older node's document lacks them).
    #[serde(default)]
    pub membership: MembershipCounters,
    /// `ajp`: the AJP/1.3 connector, `null` when it is off.
    #[serde(default)]
    pub ajp: Option<AjpStatus>,
}

/// `ajp` in [`StatusDoc`]; the counters count since the node started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AjpStatus {
    /// The address the connector listens on (`host:port`, the bound port).
    pub listen: String,
    /// Forward requests answered (refusals included).
    pub requests: u64,
    /// Connections closed because a packet did not decode.
    pub errors: u64,
}

/// `node` in [`StatusDoc`]: the node that answered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's id: 16 lower-case hex digits, new at every start.
    pub id: String,
    /// `node.name`.
    pub name: String,
    /// The route suffix of the session ids it issues (its name).
    pub route: String,
    /// Its HTTP address as announced to the others (`host:port`): the bound one, so a real
    /// port even when 0 was configured, and `membership.interface` for an unspecified host.
    pub http: String,
    /// Its replication address as announced to the others (`host:port`), likewise.
    pub replication: String,
    /// `joining` (state transfer under way), `ready` or `leaving`.
    pub state: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// The deltacast version it runs (the crate's, e.g. `0.1.0`).
    pub version: String,
}

/// One entry of `members` in [`StatusDoc`]: another member, as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id: 16 lower-case hex digits.
    pub id: String,
    /// The name it announces.
    pub name: String,
    /// The route suffix of the session ids it issues (its name).
    pub route: String,
    /// Its HTTP address (`host:port`), from its heartbeats.
    pub http: String,
    /// Its replication address (`host:port`), from its heartbeats.
    pub replication: String,
    /// `alive`, `suspect` or `leaving`.
    pub state: String,
    /// Milliseconds since this node last heard from it.
    pub last_heard_ms: u64,
}

/// `sessions` in [`StatusDoc`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SessionsStatus {
    /// Live sessions this node holds (every member holds every session; expired ones not
    /// yet swept included); `null` where a session server holds them (it cannot count
    /// them cheaply).
    pub active: Option<u64>,
    /// `sessions.store`'s kind: `replicated`, `redis`, `redis-cluster` or `memcached`.
    #[serde(default)]
    pub store: String,
    /// Calls to the session server that failed (unreachable, too slow, garbled): each was
    /// a `503 session store unavailable`. Always 0 for the replicated store.
    #[serde(default)]
    pub store_errors: u64,
    /// Attribute bytes (names and values) held now, against `sessions.max_bytes`.
    #[serde(default)]
    pub bytes: u64,
    /// Writes from clients refused (507) because they would have passed `max_bytes`.
    #[serde(default)]
    pub refused_over_budget: u64,
}

/// `replication` in [`StatusDoc`]; the counters count since the node started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// `sessions.replication`: `sync` or `async`.
    pub mode: String,
    /// Deltas sent to other members (one per member it went to).
    pub deltas_sent: u64,
    /// Deltas received from other members.
    pub deltas_received: u64,
    /// Replication bytes sent.
    pub bytes_sent: u64,
    /// Replication bytes received.
    pub bytes_received: u64,
    /// Deltas queued for sending now, over all links.
    pub queue: u64,
    /// Replication frames or connections rejected (undecodable, foreign cluster, oversized).
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses() {
        let text = r#"{
          "node": {"id": "a", "name": "n1", "route": "n1", "http": "127.0.0.1:8081",
                   "replication": "127.0.0.1:4001", "state": "ready", "uptime_ms": 1234, "version": "0.1.0"},
          "cluster": "deltacast",
          "members": [{"id": "b", "name": "n2", "route": "n2", "http": "127.0.0.1:8082",
                       "replication": "127.0.0.1:4002", "state": "alive", "last_heard_ms": 120}],
          "sessions": {"active": 10},
          "replication": {"mode": "sync", "deltas_sent": 0, "deltas_received": 0,
                          "bytes_sent": 0, "bytes_received": 0, "queue": 0, "errors": 0}
        }"#;
        let doc: StatusDoc = serde_json::from_str(text).expect("SPEC example");
        assert_eq!(doc.members[0].last_heard_ms, 120);
        assert_eq!(doc.sessions.active, Some(10));
        assert_eq!(doc.membership, MembershipCounters::default());
        assert_eq!(doc.ajp, None);
        let with_ajp = text.replacen(
            "\"cluster\"",
            r#""ajp": {"listen": "127.0.0.1:8009", "requests": 3, "errors": 1}, "cluster""#,
            1,
        );
        let doc: StatusDoc = serde_json::from_str(&with_ajp).expect("with ajp");
        assert_eq!(doc.ajp.map(|a| a.errors), Some(1));
    }
}
