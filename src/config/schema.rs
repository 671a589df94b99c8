//! The shape of the configuration: serde structs that refuse unknown keys, their defaults
//! and the config strings of the enums. Ranges and formats are `validate`'s; the messages
//! of a value of the wrong kind are `diagnostics`'.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Table;

use super::allow::IpRange;
use super::validate::is_token;

/// The whole configuration. `PartialEq` compares the settings only, not which keys were set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub membership: MembershipConfig,
    pub node: NodeConfig,
    pub sessions: SessionsConfig,
    pub balancer: BalancerConfig,
    /// Dotted keys explicitly present in the file or the overrides (and their parent sections).
    #[serde(skip)]
    pub(super) set_keys: BTreeSet<String>,
}

impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        self.cluster == other.cluster
            && self.membership == other.membership
            && self.node == other.node
            && self.sessions == other.sessions
            && self.balancer == other.balancer
    }
}

impl Eq for Config {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Members announcing another cluster name are ignored.
    pub name: String,
    /// Shared secret file; read and checked by the seal (`ClusterKey::read_file`), not here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "deltacast".to_string(),
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    pub multicast: SocketAddrV4,
    pub interface: Ipv4Addr,
    pub ttl: u32,
    pub heartbeat_ms: u64,
    pub drop_ms: u64,
    pub static_members: Vec<String>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            multicast: SocketAddrV4::new(Ipv4Addr::new(228, 0, 0, 4), 45564),
            interface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            heartbeat_ms: 500,
            drop_ms: 3000,
            static_members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Route suffix of this node's session ids.
    pub name: String,
    pub http: SocketAddr,
    pub replication: SocketAddr,
    /// HTTP client connections open at once at most; at the limit, new ones wait in the
    /// listen backlog until one closes. Unset, fitted to the open file limit.
    pub max_connections: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "n1".to_string(),
            http: SocketAddr::from(([127, 0, 0, 1], 8081)),
            replication: SocketAddr::from(([127, 0, 0, 1], 4001)),
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    pub cookie: String,
    pub max_inactive_s: u64,
    pub replication: ReplicationMode,
    /// How long a sync write waits for a member's acknowledgement before suspecting it.
    pub ack_timeout_ms: u64,
    /// Sessions one node holds at most (new ones beyond: 507).
    pub max_sessions: u64,
    /// Attributes one session holds at most (more: 507).
    pub max_attributes: u64,
    /// Largest attribute value in bytes (larger: 413).
    pub max_value_bytes: u64,
    /// All attribute bytes (names and values) this node holds at most (a write beyond: 507).
    pub max_bytes: u64,
    /// Take the session id from a `;jsessionid=` path parameter too. Off, only the cookie
    /// names a session: a link cannot fix a victim's session (OWASP).
    pub url_tracking: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            cookie: "JSESSIONID".to_string(),
            max_inactive_s: 1800,
            replication: ReplicationMode::Sync,
            ack_timeout_ms: 1000,
            max_sessions: 1_000_000,
            max_attributes: 64,
            max_value_bytes: 65_536,
            max_bytes: 256 * 1024 * 1024,
            url_tracking: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    pub listen: SocketAddr,
    pub lbmethod: LbMethod,
    pub sticky: Sticky,
    pub discover: bool,
    /// Client connections open at once at most; at the limit, new ones wait in the
    /// listen backlog until one closes.
    pub max_connections: u64,
    /// Seconds a member may keep a proxied request waiting: for the head of its answer,
    /// for each next chunk of its answer's body, and for each next chunk of the client's
    /// body on its way to it (HAProxy's `timeout server`, mod_proxy's `timeout`).
    pub timeout_s: u64,
    /// Client addresses (the TCP peer's; X-Forwarded-For is never trusted) that may open
    /// `/balancer-manager`; others get 403.
    pub manager_allow: Vec<IpRange>,
    pub member: Vec<BalancerMember>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            lbmethod: LbMethod::ByRequests,
            sticky: Sticky::Route,
            discover: true,
            max_connections: 10_000,
            timeout_s: 60,
            manager_allow: vec![
                IpRange::new([127, 0, 0, 0].into(), 8).unwrap_or_else(|| unreachable!()),
                IpRange::new(std::net::Ipv6Addr::LOCALHOST.into(), 128)
                    .unwrap_or_else(|| unreachable!()),
            ],
            member: Vec::new(),
        }
    }
}

/// A `[[balancer.member]]`: `url` and `route` are required, `loadfactor` defaults to 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerMember {
    pub url: String,
    pub route: String,
    #[serde(default = "default_loadfactor")]
    pub loadfactor: u32,
}

fn default_loadfactor() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    #[default]
    Sync,
    Async,
}

impl ReplicationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        }
    }
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(ReplicationMode::Sync),
            "async" => Ok(ReplicationMode::Async),
            _ => Err(format!("{s:?} is not one of \"sync\", \"async\"")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMethod {
    #[default]
    ByRequests,
    ByTraffic,
    ByBusyness,
}

impl LbMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::ByRequests => "byrequests",
            LbMethod::ByTraffic => "bytraffic",
            LbMethod::ByBusyness => "bybusyness",
        }
    }
}

impl fmt::Display for LbMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LbMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "byrequests" => Ok(LbMethod::ByRequests),
            "bytraffic" => Ok(LbMethod::ByTraffic),
            "bybusyness" => Ok(LbMethod::ByBusyness),
            _ => Err(format!(
                "{s:?} is not one of \"byrequests\", \"bytraffic\", \"bybusyness\""
            )),
        }
    }
}

/// Session stickiness; written as `"route"`, `"none"`, `"source_ip"` or `"header:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Sticky {
    #[default]
    Route,
    None,
    SourceIp,
    Header(String),
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Route => f.write_str("route"),
            Sticky::None => f.write_str("none"),
            Sticky::SourceIp => f.write_str("source_ip"),
            Sticky::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl FromStr for Sticky {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "route" => Ok(Sticky::Route),
            "none" => Ok(Sticky::None),
            "source_ip" => Ok(Sticky::SourceIp),
            _ => match s.strip_prefix("header:") {
                Some(name) if is_token(name) => Ok(Sticky::Header(name.to_string())),
                Some(name) => Err(format!("{name:?} is not a valid HTTP header name")),
                Option::None => Err(format!(
                    "{s:?} is not one of \"route\", \"none\", \"source_ip\", \"header:NAME\""
                )),
            },
        }
    }
}

impl Serialize for Sticky {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sticky {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The default configuration as a table, plus the optional keys and one sample member, so
/// that every valid key has an entry giving its kind (for `--set`) and its siblings (for
/// unknown-key errors).
pub(super) fn template() -> &'static Table {
    static TEMPLATE: OnceLock<Table> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut config = Config::default();
        config.cluster.key_file = Some(PathBuf::from("cluster.key"));
        config.balancer.member.push(BalancerMember {
            url: "http://127.0.0.1:8081".to_string(),
            route: "n1".to_string(),
            loadfactor: 1,
        });
        Table::try_from(&config).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{DEFAULT_TOML, load};
    use super::*;

    #[test]
    fn default_values_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.cluster.name, "deltacast");
        assert_eq!(c.cluster.key_file, Option::None);
        assert_eq!(c.membership.multicast.to_string(), "228.0.0.4:45564");
        assert_eq!(c.membership.interface, Ipv4Addr::LOCALHOST);
        assert_eq!(c.membership.ttl, 1);
        assert!(c.membership.static_members.is_empty());
        assert_eq!(c.node.name, "n1");
        assert_eq!(c.node.http.to_string(), "127.0.0.1:8081");
        assert_eq!(c.node.replication.to_string(), "127.0.0.1:4001");
        assert_eq!(c.sessions.cookie, "JSESSIONID");
        assert_eq!(c.sessions.max_inactive_s, 1800);
        assert_eq!(c.sessions.replication, ReplicationMode::Sync);
        assert_eq!(c.balancer.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.balancer.lbmethod, LbMethod::ByRequests);
        assert_eq!(c.balancer.sticky, Sticky::Route);
        assert!(c.balancer.discover);
        assert_eq!(c.balancer.max_connections, 10_000);
        assert_eq!(c.balancer.timeout_s, 60);
        let allow: Vec<String> = c.balancer.manager_allow.iter().map(|r| r.to_string()).collect();
        assert_eq!(allow, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(c.node.max_connections, 10_000);
        assert_eq!(c.sessions.max_bytes, 268_435_456);
        assert!(!c.sessions.url_tracking);
        assert!(c.balancer.member.is_empty());
    }

    #[test]
    fn the_documented_default_toml_round_trips_to_the_defaults() {
        let config = load(DEFAULT_TOML).unwrap();
        assert_eq!(config, Config::default());
        let written = toml::to_string(&config).unwrap();
        assert_eq!(load(&written).unwrap(), Config::default());
    }

    #[test]
    fn a_full_config_serializes_and_reads_back_unchanged() {
        let mut config = Config::default();
        config.cluster.key_file = Some(PathBuf::from("/etc/deltacast/cluster.key"));
        config.sessions.replication = ReplicationMode::Async;
        config.balancer.lbmethod = LbMethod::ByBusyness;
        config.balancer.sticky = Sticky::Header("X-Route".to_string());
        config.membership.static_members = vec!["10.0.0.2:4001".into(), "db.local:4001".into()];
        config.balancer.member.push(BalancerMember {
            url: "http://127.0.0.1:8081/".into(),
            route: "n1".into(),
            loadfactor: 3,
        });
        let written = toml::to_string(&config).unwrap();
        assert!(written.contains("sticky = \"header:X-Route\""), "{written}");
        assert!(written.contains("replication = \"async\""), "{written}");
        assert_eq!(load(&written).unwrap(), config);
    }

    #[test]
    fn enums_display_and_parse_their_config_strings() {
        assert_eq!(ReplicationMode::Sync.to_string(), "sync");
        assert_eq!(ReplicationMode::Async.to_string(), "async");
        assert_eq!(
            "async".parse::<ReplicationMode>(),
            Ok(ReplicationMode::Async)
        );
        assert_eq!("bytraffic".parse::<LbMethod>(), Ok(LbMethod::ByTraffic));
        assert_eq!(LbMethod::ByBusyness.to_string(), "bybusyness");
        for s in ["route", "none", "source_ip", "header:X-Sticky"] {
            assert_eq!(s.parse::<Sticky>().unwrap().to_string(), s);
        }
        assert!("header:".parse::<Sticky>().is_err());
        assert!("header:a b".parse::<Sticky>().is_err());
    }

    #[test]
    fn the_template_has_every_optional_key_and_a_sample_member() {
        let t = template();
        let cluster = t["cluster"].as_table().unwrap();
        assert!(cluster.contains_key("key_file"), "{cluster:?}");
        let members = t["balancer"]["member"].as_array().unwrap();
        assert_eq!(members.len(), 1);
        for key in ["url", "route", "loadfactor"] {
            assert!(members[0].as_table().unwrap().contains_key(key), "{key}");
        }
        for section in ["cluster", "membership", "node", "sessions", "balancer"] {
            assert!(t[section].is_table(), "{section}");
        }
    }
}
