//! `[node]`: the name is the route suffix of every session id this node issues. Its
//! addresses are typed already, and port 0 (bind any free port) is allowed.

use super::super::schema::NodeConfig;
use super::{ConfigError, check_range, check_route_name};

pub(super) fn check(node: &NodeConfig) -> Result<(), ConfigError> {
    check_route_name("node.name", &node.name)?;
    check_range(
        "node.max_connections",
        node.max_connections,
        1,
        1_000_000,
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{invalid_key, load, load_with};

    #[test]
    fn a_node_name_with_a_dot_is_rejected() {
        let text = invalid_key(load("[node]\nname = \"n.1\"\n"), "node.name");
        assert!(text.contains("no dots"), "{text}");
        invalid_key(load("[node]\nname = \"\"\n"), "node.name");
        invalid_key(
            load_with("", &[&format!("node.name={}", "a".repeat(65))]),
            "node.name",
        );
        load_with("", &[&format!("node.name={}", "a_-Z9".repeat(12))]).unwrap();
    }

    #[test]
    fn port_zero_is_allowed_for_listening_addresses() {
        let config = load_with("", &["node.http=127.0.0.1:0", "node.replication=[::1]:0"]).unwrap();
        assert_eq!(config.node.http.port(), 0);
        assert!(config.node.replication.is_ipv6());
    }
}
