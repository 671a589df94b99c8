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
use super::store::SessionStoreUrl;
use super::validate::is_token;

/// The whole configuration. `PartialEq` compares the settings only, not which keys were set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[cluster]`: the cluster's name and key.
    pub cluster: ClusterConfig,
    /// `[membership]`: how members find each other and when one is dropped.
    pub membership: MembershipConfig,
    /// `[node]`: this node's name and addresses (read by `deltacast node`).
    pub node: NodeConfig,
    /// `[sessions]`: the cookie, lifetimes, replication mode and limits.
    pub sessions: SessionsConfig,
    /// `[balancer]`: the built-in balancer (read by `deltacast balancer`).
    pub balancer: BalancerConfig,
    /// `[ajp]`: the AJP/1.3 connector of a node (off unless `listen` is set).
    pub ajp: AjpConfig,
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
            && self.ajp == other.ajp
    }
}

impl Eq for Config {}

/// `[cluster]`: what every member of one cluster shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Members announcing another cluster name are ignored, even on the same multicast
    /// group. 1 to 255 bytes without control characters; default `"deltacast"`.
    pub name: String,
    /// Shared secret file (text, e.g. from `deltacast keygen`): when set, all cluster traffic
    /// is authenticated and encrypted and others cannot join. Relative to the current
    /// directory; read and checked when the node starts, not here. Default `None` (open).
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

/// `[membership]`: heartbeats and failure detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Multicast `group:port` of the heartbeats: a group in 224.0.0.0/4, port not 0.
    /// Default `228.0.0.4:45564`.
    pub multicast: SocketAddrV4,
    /// Interface the group is joined and sent on: 127.0.0.1 (the default) for a cluster on
    /// one host, this host's LAN address for a cluster across hosts.
    pub interface: Ipv4Addr,
    /// Multicast TTL, 0 to 255; the default 1 keeps heartbeats on the local segment.
    pub ttl: u32,
    /// Heartbeat interval in milliseconds, 10 to 60000; default 500. A member silent for two
    /// intervals is suspect and verified over TCP on its replication port.
    pub heartbeat_ms: u64,
    /// Milliseconds after which a suspect that does not answer verification is dropped:
    /// more than twice `heartbeat_ms`, at most 600000; default 3000.
    pub drop_ms: u64,
    /// Every member's `"host:replication_port"` where multicast is unavailable (clouds,
    /// containers); heartbeats then go by UDP unicast to each. Default empty (multicast).
    pub static_members: Vec<String>,
    /// `"name:replication_port"` names of which every address is a peer, resolved again
    /// every few seconds (a Kubernetes headless service: one address per pod); heartbeats
    /// then go by UDP unicast, as with `static_members` (both may be given). A peer that
    /// leaves the answer is dropped by the usual failure detection. Default empty.
    pub dns: Vec<String>,
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
            dns: Vec::new(),
        }
    }
}

impl MembershipConfig {
    /// Whether heartbeats go by UDP unicast to listed peers (`static_members` or `dns`)
    /// rather than to the multicast group.
    pub fn unicast(&self) -> bool {
        !self.static_members.is_empty() || !self.dns.is_empty()
    }
}

/// `[node]`: this node's identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name, also the route suffix of the session ids it issues (`<id>.n1`): 1 to 64
    /// characters of `A-Z`, `a-z`, `0-9`, `_` or `-` (no dots). Default `"n1"`.
    pub name: String,
    /// HTTP address (test page, session API, `/status`, `/metrics`); port 0 binds any free
    /// port. Default `127.0.0.1:8081`.
    pub http: SocketAddr,
    /// Replication address (TCP; with static members also UDP for heartbeats); port 0
    /// binds any free port. Default `127.0.0.1:4001`.
    pub replication: SocketAddr,
    /// HTTP client connections open at once at most, 1 to 1000000; at the limit, new ones
    /// wait in the listen backlog until one closes. Unset, 10000, or what the open file limit
    /// holds when less.
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

/// `[sessions]`: the cookie, lifetimes, replication mode and the limits of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Name of the session cookie, an RFC 6265 cookie-name token; default `"JSESSIONID"`.
    pub cookie: String,
    /// Seconds without a request after which a session expires, 1 to 31536000; default 1800.
    pub max_inactive_s: u64,
    /// When a write's response may leave; default [`ReplicationMode::Sync`].
    pub replication: ReplicationMode,
    /// Milliseconds a sync write waits for a member's acknowledgement before suspecting it,
    /// 10 to 60000; default 1000.
    pub ack_timeout_ms: u64,
    /// Sessions one node holds at most (new ones beyond: 507), 1 to 100000000; default
    /// 1000000.
    pub max_sessions: u64,
    /// Attributes one session holds at most (more: 507), 1 to 100000; default 64.
    pub max_attributes: u64,
    /// Largest attribute value in bytes (larger: 413), 1 to 8 MiB; default 65536.
    pub max_value_bytes: u64,
    /// All attribute bytes (names and values) this node holds at most (a write beyond:
    /// 507), 1024 to 2^40; default 268435456 (256 MiB).
    pub max_bytes: u64,
    /// Take the session id from a `;jsessionid=` path parameter too. Off (the default), only
    /// the cookie names a session: a link cannot fix a victim's session (OWASP); the
    /// balancer routes by the path parameter either way.
    pub url_tracking: bool,
    /// A file every live session is written to on graceful shutdown and read from at start,
    /// so sessions outlive a restart of the whole cluster; removed once read (see
    /// `docs/deployment.md`). Relative to the current directory; its directory must exist.
    /// Default `None` (no file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_file: Option<PathBuf>,
    /// Where the sessions live: `"replicated"` (the default: every member holds every
    /// session) or a session server's URL (`redis://`, `redis+cluster://`, `memcached://`).
    pub store: SessionStoreUrl,
    /// Milliseconds one call to a session server may take (connecting included) before
    /// the request answers `503 session store unavailable`, 10 to 60000; default 1000.
    pub store_timeout_ms: u64,
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
            snapshot_file: None,
            store: SessionStoreUrl::Replicated,
            store_timeout_ms: 1000,
        }
    }
}

/// `[balancer]`: the built-in balancer of `deltacast balancer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// Address the balancer accepts clients on; default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// How a member is chosen for a request without a sticky member; default
    /// [`LbMethod::ByRequests`].
    pub lbmethod: LbMethod,
    /// What keeps a session's requests on one member; default [`Sticky::Route`].
    pub sticky: Sticky,
    /// Learn members from the membership heartbeats (default `true`), besides `member`.
    pub discover: bool,
    /// Client connections open at once at most, 1 to 1000000; at the limit, new ones wait
    /// in the listen backlog until one closes. Unset, 10000, or what the open file limit
    /// holds when less (`(limit - 64) / 2`: each needs a member connection too).
    pub max_connections: u64,
    /// Seconds a member may keep a proxied request waiting, 1 to 3600, default 60: for the
    /// head of its answer (then 504), for each next chunk of its answer's body, and for each
    /// next chunk of the client's body on its way to it (then 408); HAProxy's
    /// `timeout server`, mod_proxy's `timeout`.
    pub timeout_s: u64,
    /// Client addresses (the TCP peer's; X-Forwarded-For is never trusted) that may open
    /// `/balancer-manager`; others get 403. Default `127.0.0.0/8` and `::1/128`.
    pub manager_allow: Vec<IpRange>,
    /// Static members, the `[[balancer.member]]` tables; default none.
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
    /// The member's `http://host:port` (a trailing `/` allowed, no path).
    pub url: String,
    /// The route suffix of the session ids the member issues; unique among members.
    pub route: String,
    /// Its share of requests relative to the others', 1 to 100.
    #[serde(default = "default_loadfactor")]
    pub loadfactor: u32,
}

fn default_loadfactor() -> u32 {
    1
}

/// `[ajp]`: the AJP/1.3 connector, for Apache httpd's mod_proxy_ajp and mod_jk in front
/// of the nodes (as Tomcat's AJP connector).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AjpConfig {
    /// Address the connector listens on (Tomcat's 8009); unset (the default), no connector.
    /// Port 0 binds any free port. Beyond loopback the node warns: AJP carries no
    /// encryption, and anyone who reaches it and knows the secret speaks for the front end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The shared secret every forward request must carry (mod_proxy_ajp's `secret=`,
    /// mod_jk's `worker.NAME.secret`, Tomcat's `secret`): 1 to 1024 bytes without control
    /// characters. A request without it or with another gets 403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Refuse to start the connector without a secret (Tomcat's `secretRequired`); default
    /// `true`.
    pub secret_required: bool,
    /// The largest AJP packet in bytes, 8192 to 65536; default 8192. Must equal the front
    /// end's (mod_jk's `max_packet_size`, mod_proxy's `ProxyIOBufferSize`).
    pub packet_size: u64,
}

impl Default for AjpConfig {
    fn default() -> Self {
        AjpConfig {
            listen: None,
            secret: None,
            secret_required: true,
            packet_size: 8192,
        }
    }
}

/// The secret is never printed.
impl fmt::Debug for AjpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AjpConfig")
            .field("listen", &self.listen)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("secret_required", &self.secret_required)
            .field("packet_size", &self.packet_size)
            .finish()
    }
}

/// `sessions.replication`: whether a response waits for the other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// `"sync"`: a response leaves only after every live member acknowledged the change.
    #[default]
    Sync,
    /// `"async"`: send the change and go on.
    Async,
}

impl ReplicationMode {
    /// The config string: `"sync"` or `"async"`.
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

/// `balancer.lbmethod`, as in mod_proxy_balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMethod {
    /// `"byrequests"`: requests in proportion to each member's `loadfactor`.
    #[default]
    ByRequests,
    /// `"bytraffic"`: the member with the fewest bytes transferred per unit of `loadfactor`.
    ByTraffic,
    /// `"bybusyness"`: the member with the fewest requests in flight (ties by `loadfactor`).
    ByBusyness,
}

impl LbMethod {
    /// The config string: `"byrequests"`, `"bytraffic"` or `"bybusyness"`.
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

/// Session stickiness; written as `"route"`, `"cookie:NAME"`, `"none"`, `"source_ip"` or
/// `"header:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Sticky {
    /// `"route"`: the route suffix of the session id (cookie or `;jsessionid=`) names the
    /// member.
    #[default]
    Route,
    /// `"cookie:NAME"`: the balancer sets the cookie `NAME=.ROUTE` itself on an answer
    /// whenever the request had none naming a live member, and routes by it (the seed's
    /// `Header add Set-Cookie "ROUTEID=.%{BALANCER_WORKER_ROUTE}e"` with
    /// `stickysession=ROUTEID`): for backends that put no route in their session ids.
    Cookie(String),
    /// `"none"`: no stickiness; every member holds every session.
    None,
    /// `"source_ip"`: requests from one client address go to the same member.
    SourceIp,
    /// `"header:NAME"`: requests with one value of header `NAME` go to the same member;
    /// without the header, no stickiness.
    Header(String),
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Route => f.write_str("route"),
            Sticky::Cookie(name) => write!(f, "cookie:{name}"),
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
            _ => {
                if let Some(name) = s.strip_prefix("cookie:") {
                    return if is_token(name) {
                        Ok(Sticky::Cookie(name.to_string()))
                    } else {
                        Err(format!("{name:?} is not a valid cookie name"))
                    };
                }
                match s.strip_prefix("header:") {
                    Some(name) if is_token(name) => Ok(Sticky::Header(name.to_string())),
                    Some(name) => Err(format!("{name:?} is not a valid HTTP header name")),
                    Option::None => Err(format!(
                        "{s:?} is not one of \"route\", \"cookie:NAME\", \"none\", \"source_ip\", \"header:NAME\""
                    )),
                }
            }
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
        config.sessions.snapshot_file = Some(PathBuf::from("sessions.snapshot"));
        config.ajp.listen = Some(SocketAddr::from(([127, 0, 0, 1], 8009)));
        config.ajp.secret = Some("secret".to_string());
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
        assert!(c.membership.dns.is_empty());
        assert_eq!(c.sessions.snapshot_file, Option::None);
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
        let allow: Vec<String> = c
            .balancer
            .manager_allow
            .iter()
            .map(|r| r.to_string())
            .collect();
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
        config.membership.dns = vec!["deltacast.shop.svc.cluster.local:4001".into()];
        config.sessions.snapshot_file = Some(PathBuf::from("/var/lib/deltacast/sessions"));
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
        for s in [
            "route",
            "none",
            "source_ip",
            "header:X-Sticky",
            "cookie:ROUTEID",
        ] {
            assert_eq!(s.parse::<Sticky>().unwrap().to_string(), s);
        }
        assert_eq!(
            "cookie:ROUTEID".parse::<Sticky>(),
            Ok(Sticky::Cookie("ROUTEID".into()))
        );
        assert!("header:".parse::<Sticky>().is_err());
        assert!("header:a b".parse::<Sticky>().is_err());
        for bad in [
            "cookie:",
            "cookie:a b",
            "cookie:a=b",
            "cookie:a;b",
            "cookie",
        ] {
            assert!(bad.parse::<Sticky>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_template_has_every_optional_key_and_a_sample_member() {
        let t = template();
        let cluster = t["cluster"].as_table().unwrap();
        assert!(cluster.contains_key("key_file"), "{cluster:?}");
        let sessions = t["sessions"].as_table().unwrap();
        assert!(sessions.contains_key("snapshot_file"), "{sessions:?}");
        let membership = t["membership"].as_table().unwrap();
        assert!(membership.contains_key("dns"), "{membership:?}");
        let members = t["balancer"]["member"].as_array().unwrap();
        assert_eq!(members.len(), 1);
        for key in ["url", "route", "loadfactor"] {
            assert!(members[0].as_table().unwrap().contains_key(key), "{key}");
        }
        let ajp = t["ajp"].as_table().unwrap();
        for key in ["listen", "secret", "secret_required", "packet_size"] {
            assert!(ajp.contains_key(key), "{key}");
        }
        for section in [
            "cluster",
            "membership",
            "node",
            "sessions",
            "balancer",
            "ajp",
        ] {
            assert!(t[section].is_table(), "{section}");
        }
    }
}
