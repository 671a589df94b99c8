//! `[membership]`: a multicast group and timings under which one lost heartbeat never drops
//! a live member (`drop_ms` above two heartbeats), and static members as `host:port`.

use super::super::schema::MembershipConfig;
use super::{ConfigError, check_host_port, check_range, invalid, render_str};

pub(super) fn check(m: &MembershipConfig) -> Result<(), ConfigError> {
    if !m.multicast.ip().is_multicast() {
        return Err(invalid(
            "membership.multicast",
            format!(
                "must be a multicast group in 224.0.0.0/4 like 228.0.0.4:45564, got {}",
                m.multicast
            ),
        ));
    }
    if m.multicast.port() == 0 {
        return Err(invalid(
            "membership.multicast",
            format!("port must be 1..=65535, got {}", m.multicast),
        ));
    }
    check_range("membership.ttl", m.ttl.into(), 0, 255, "")?;
    check_range(
        "membership.heartbeat_ms",
        m.heartbeat_ms,
        10,
        60_000,
        " milliseconds",
    )?;
    if m.drop_ms <= m.heartbeat_ms.saturating_mul(2) {
        return Err(invalid(
            "membership.drop_ms",
            format!(
                "must be greater than 2 × heartbeat_ms ({}), got {}",
                m.heartbeat_ms, m.drop_ms
            ),
        ));
    }
    if m.drop_ms > 600_000 {
        return Err(invalid(
            "membership.drop_ms",
            format!("must be at most 600000 milliseconds, got {}", m.drop_ms),
        ));
    }
    for (i, member) in m.static_members.iter().enumerate() {
        if check_host_port(member).is_err() {
            return Err(invalid(
                format!("membership.static_members[{i}]"),
                format!(
                    "expected host:port like 10.0.0.2:4001 (port 1..=65535), got {}",
                    render_str(member)
                ),
            ));
        }
    }
    for (i, name) in m.dns.iter().enumerate() {
        if check_host_port(name).is_err() {
            return Err(invalid(
                format!("membership.dns[{i}]"),
                format!(
                    "expected name:port like deltacast.shop.svc.cluster.local:4001 (port 1..=65535), got {}",
                    render_str(name)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{invalid_key, load, load_with};

    #[test]
    fn a_bad_multicast_group_names_the_key() {
        let text = invalid_key(
            load("[membership]\nmulticast = \"10.0.0.1:45564\"\n"),
            "membership.multicast",
        );
        assert!(text.contains("224.0.0.0/4"), "{text}");
        let text = invalid_key(
            load("[membership]\nmulticast = \"228.0.0.4\"\n"),
            "membership.multicast",
        );
        assert!(text.contains("group:port"), "{text}");
        invalid_key(
            load("[membership]\nmulticast = \"228.0.0.4:0\"\n"),
            "membership.multicast",
        );
    }

    #[test]
    fn out_of_range_membership_numbers_name_the_key() {
        let text = invalid_key(load("[membership]\nttl = 300\n"), "membership.ttl");
        assert!(text.contains("300"), "{text}");
        invalid_key(load("[membership]\nttl = 5000000000\n"), "membership.ttl");
        invalid_key(
            load("[membership]\nheartbeat_ms = 0\n"),
            "membership.heartbeat_ms",
        );
        invalid_key(
            load("[membership]\nheartbeat_ms = 60001\ndrop_ms = 600000\n"),
            "membership.heartbeat_ms",
        );
        invalid_key(
            load("[membership]\ndrop_ms = 600001\n"),
            "membership.drop_ms",
        );
    }

    #[test]
    fn drop_ms_must_exceed_twice_the_heartbeat() {
        let text = invalid_key(
            load("[membership]\nheartbeat_ms = 500\ndrop_ms = 1000\n"),
            "membership.drop_ms",
        );
        assert!(text.contains("2 × heartbeat_ms (500)"), "{text}");
        load("[membership]\nheartbeat_ms = 500\ndrop_ms = 1001\n").unwrap();
    }

    #[test]
    fn a_static_member_without_a_port_is_rejected() {
        let text = invalid_key(
            load("[membership]\nstatic_members = [\"10.0.0.1:4001\", \"nohost\"]\n"),
            "membership.static_members[1]",
        );
        assert!(text.contains("\"nohost\""), "{text}");
        for bad in [
            "host:0",
            "host:",
            ":4001",
            "host:65536",
            "bad_host:1",
            "host:+1",
        ] {
            invalid_key(
                load_with("", &[&format!("membership.static_members={bad}")]),
                "membership.static_members[0]",
            );
        }
        invalid_key(
            load("[membership]\nstatic_members = [1]\n"),
            "membership.static_members[0]",
        );
        invalid_key(
            load("[membership]\nstatic_members = [\"[::1:1\"]\n"),
            "membership.static_members[0]",
        );
        load("[membership]\nstatic_members = [\"node-2.example.com:4001\", \"[::1]:4001\"]\n")
            .unwrap();
    }

    #[test]
    fn a_dns_name_without_a_port_is_rejected_and_a_list_is_taken() {
        let text = invalid_key(
            load("[membership]\ndns = [\"peers.local:4001\", \"peers.local\"]\n"),
            "membership.dns[1]",
        );
        assert!(text.contains("\"peers.local\""), "{text}");
        for bad in ["peers:0", "peers:", ":4001", "bad_name:1"] {
            invalid_key(
                load_with("", &[&format!("membership.dns={bad}")]),
                "membership.dns[0]",
            );
        }
        let config = load_with("", &["membership.dns=a.svc:4001,b.svc:4001"]).unwrap();
        assert_eq!(config.membership.dns, ["a.svc:4001", "b.svc:4001"]);
        assert!(config.membership.unicast());
        assert!(!load("").unwrap().membership.unicast());
    }
}
