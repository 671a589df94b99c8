//! The `/status` document (SPEC), shared by the node that serves it and the `status`
//! command that reads it.

use serde::{Deserialize, Serialize};

use crate::metrics::MembershipCounters;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusDoc {
    pub node: NodeStatus,
    pub cluster: String,
    pub members: Vec<MemberStatus>,
    pub sessions: SessionsStatus,
    pub replication: ReplicationStatus,
    #[serde(default)]
    pub membership: MembershipCounters,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: String,
    pub name: String,
    pub route: String,
    pub http: String,
    pub replication: String,
    /// `joining`, `ready` or `leaving`.
    pub state: String,
    pub uptime_ms: u64,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: String,
    pub name: String,
    pub route: String,
    pub http: String,
    pub replication: String,
    /// `alive`, `suspect` or `leaving`.
    pub state: String,
    pub last_heard_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SessionsStatus {
    pub active: u64,
    /// Attribute bytes (names and values) held now, against `sessions.max_bytes`.
    #[serde(default)]
    pub bytes: u64,
    /// Writes from clients refused (507) because they would have passed `max_bytes`.
    #[serde(default)]
    pub refused_over_budget: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationStatus {
    pub mode: String,
    pub deltas_sent: u64,
    pub deltas_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub queue: u64,
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
        assert_eq!(doc.membership, MembershipCounters::default());
    }
}
