//! Configuration of a cluster node / balancer: TOML file, then overrides, then `validate()`.
//!
//! The order is fixed so that the command line always wins: one shared file can serve every
//! node, and `--set`/flags (applied in the order given, later wins) adjust a single node.
//! Every error is one line naming the dotted key and what was expected, because operators read
//! these in terminals and logs, and "invalid config" alone does not say what to fix.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::{Table, Value};

use crate::wire::seal::ClusterKey;

/// File read by [`Config::load`] when no path is given (skipped when it does not exist).
pub const DEFAULT_FILE: &str = "./cluster.toml";

/// A configuration error. Every `Display` is a single line that names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {}", one_line(&path.display().to_string()), one_line(&source.to_string()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {}", one_line(origin), one_line(message))]
    Syntax { origin: String, message: String },
    #[error(
        "unknown config key `{}` (expected one of: {})",
        one_line(key),
        one_line(expected)
    )]
    UnknownKey { key: String, expected: String },
    #[error("invalid value for `{}`: {}", one_line(key), one_line(expected))]
    Invalid { key: String, expected: String },
    #[error("`--set {}` must be dotted.key=value", one_line(arg))]
    BadOverride { arg: String },
    #[error("cannot read the key file of `cluster.key_file` ({}): {}", one_line(&path.display().to_string()), one_line(&source.to_string()))]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        expected: expected.into(),
    }
}

/// Escapes control characters (newlines included) so a message stays on one line.
fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// Structures

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
    set_keys: BTreeSet<String>,
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
    /// Shared secret file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl ClusterConfig {
    /// The cluster key read from `key_file`, if one is set. A relative path is relative to
    /// the current directory. Warns when other users may read the file.
    pub fn key(&self) -> Result<Option<ClusterKey>, ConfigError> {
        let Some(path) = &self.key_file else {
            return Ok(None);
        };
        let read = |source| ConfigError::KeyFile {
            path: path.clone(),
            source,
        };
        // One open: the permissions checked are those of the file read.
        let mut file = std::fs::File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.permissions().mode();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(read)?;
        let key =
            ClusterKey::from_text(&text).map_err(|e| invalid("cluster.key_file", e.to_string()))?;
        if !ClusterKey::is_generated(&text) {
            tracing::warn!(path = %path.display(), "the cluster key is a hand-chosen text: whoever records cluster traffic can test guesses offline; a key from `deltacast keygen` cannot be guessed");
        }
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the cluster key file can be read by other users; chmod 600 it");
        }
        Ok(Some(key))
    }
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "n1".to_string(),
            http: SocketAddr::from(([127, 0, 0, 1], 8081)),
            replication: SocketAddr::from(([127, 0, 0, 1], 4001)),
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

// ---------------------------------------------------------------------------------------------
// Overrides

/// One override: a dotted key and a raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: OverrideValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideValue {
    /// Always set as a TOML string (from a dedicated flag such as `--name`).
    Text(String),
    /// From `--set`: typed by the default value of the key (see [`Config::from_toml_str`]).
    Raw(String),
    /// From `--member ROUTE=URL`: appends `{ route, url, loadfactor = 1 }` to the array at `key`.
    AppendMember { route: String, url: String },
}

impl Override {
    /// From a flag like `--name`: the value is always a string.
    pub fn text(key: &str, value: &str) -> Override {
        Override {
            key: key.to_string(),
            value: OverrideValue::Text(value.to_string()),
        }
    }

    /// From `--set dotted.key=value`. Whitespace around the key, its dots and the value is
    /// ignored. Fails when there is no `=` or the key (or one of its parts) is empty.
    pub fn parse_set(arg: &str) -> Result<Override, ConfigError> {
        let bad = || ConfigError::BadOverride {
            arg: arg.to_string(),
        };
        let (key, value) = arg.split_once('=').ok_or_else(bad)?;
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(Override {
            key: parts.join("."),
            value: OverrideValue::Raw(value.trim().to_string()),
        })
    }

    /// From the repeatable `--member ROUTE=URL` flag: appends a `balancer.member`.
    /// The route and URL themselves are checked by [`Config::validate`].
    pub fn parse_member(arg: &str) -> Result<Override, ConfigError> {
        match arg.split_once('=') {
            Some((route, url)) if !route.trim().is_empty() && !url.trim().is_empty() => {
                Ok(Override {
                    key: "balancer.member".to_string(),
                    value: OverrideValue::AppendMember {
                        route: route.trim().to_string(),
                        url: url.trim().to_string(),
                    },
                })
            }
            _ => Err(invalid(
                "balancer.member",
                format!("--member expects ROUTE=URL like n1=http://127.0.0.1:8081, got {arg:?}"),
            )),
        }
    }
}

impl FromStr for Override {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Override::parse_set(s)
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            OverrideValue::Text(v) | OverrideValue::Raw(v) => write!(f, "{}={v}", self.key),
            OverrideValue::AppendMember { route, url } => {
                write!(f, "{} += {route}={url}", self.key)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

impl Config {
    /// Reads `file`, or [`DEFAULT_FILE`] when `None` and it exists (else starts from the
    /// defaults), then applies `overrides` in order, deserializes and validates.
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let read_error = |path: &Path, source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let (text, origin) = match file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) => return Err(read_error(path, e)),
            },
            Option::None => {
                let path = Path::new(DEFAULT_FILE);
                match std::fs::read_to_string(path) {
                    Ok(text) => (text, DEFAULT_FILE.to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (String::new(), "defaults".to_string())
                    }
                    Err(e) => return Err(read_error(path, e)),
                }
            }
        };
        Config::from_toml_str(&text, &origin, overrides)
    }

    /// Same as [`Config::load`] from TOML text; `origin` only appears in syntax errors.
    ///
    /// A `Raw` override is typed by the default value of its key: strings are taken verbatim,
    /// numbers and booleans must parse as such, arrays may be TOML (`["a:1","b:2"]`) or
    /// comma-separated strings (`a:1,b:2`); a key without a default is parsed as a TOML value
    /// if possible and otherwise taken as a string.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let mut table = parse_document(text, origin)?;
        let mut set_keys = BTreeSet::new();
        record_keys(&mut set_keys, "", &table);
        for ov in overrides {
            apply_override(&mut table, ov, &mut set_keys)?;
        }
        let mut config = deserialize_table(table)?;
        config.set_keys = set_keys;
        config.validate()?;
        Ok(config)
    }

    /// Defaults with short intervals for tests: heartbeat 100 ms, drop after 600 ms.
    pub fn for_test() -> Config {
        let mut config = Config::default();
        config.membership.heartbeat_ms = 100;
        config.membership.drop_ms = 600;
        config
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.membership.heartbeat_ms)
    }

    pub fn drop_after(&self) -> Duration {
        Duration::from_millis(self.membership.drop_ms)
    }

    /// True when the dotted `key` (or a key below it, for a section) was explicitly present in
    /// the file or the overrides, as opposed to coming from the defaults.
    pub fn is_set(&self, key: &str) -> bool {
        self.set_keys.contains(key)
    }

    /// Checks the ranges and formats that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if cluster.name.trim().is_empty() {
            return Err(invalid("cluster.name", "must not be empty"));
        }
        if cluster.name.len() > 255 || cluster.name.chars().any(char::is_control) {
            return Err(invalid(
                "cluster.name",
                format!(
                    "must be at most 255 bytes without control characters, got {}",
                    render_str(&cluster.name)
                ),
            ));
        }
        if cluster
            .key_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid("cluster.key_file", "must not be empty when given"));
        }

        let m = &self.membership;
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
        if m.ttl > 255 {
            return Err(invalid(
                "membership.ttl",
                format!("must be between 0 and 255, got {}", m.ttl),
            ));
        }
        if !(10..=60_000).contains(&m.heartbeat_ms) {
            return Err(invalid(
                "membership.heartbeat_ms",
                format!(
                    "must be between 10 and 60000 milliseconds, got {}",
                    m.heartbeat_ms
                ),
            ));
        }
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

        check_route_name("node.name", &self.node.name)?;

        let s = &self.sessions;
        if !is_token(&s.cookie) {
            return Err(invalid(
                "sessions.cookie",
                format!(
                    "must be a non-empty cookie name token (letters, digits and !#$%&'*+-.^_`|~), got {}",
                    render_str(&s.cookie)
                ),
            ));
        }
        if !(1..=31_536_000).contains(&s.max_inactive_s) {
            return Err(invalid(
                "sessions.max_inactive_s",
                format!(
                    "must be between 1 and 31536000 seconds, got {}",
                    s.max_inactive_s
                ),
            ));
        }
        let ranges: [(&str, u64, u64, u64); 4] = [
            ("sessions.ack_timeout_ms", s.ack_timeout_ms, 10, 60_000),
            ("sessions.max_sessions", s.max_sessions, 1, 100_000_000),
            ("sessions.max_attributes", s.max_attributes, 1, 100_000),
            (
                "sessions.max_value_bytes",
                s.max_value_bytes,
                1,
                8 * 1024 * 1024,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between {min} and {max}, got {value}"),
                ));
            }
        }

        let b = &self.balancer;
        if matches!(&b.sticky, Sticky::Header(name) if !is_token(name)) {
            return Err(invalid(
                "balancer.sticky",
                format!(
                    "header:NAME needs NAME to be an HTTP header name token, got {}",
                    render_str(&b.sticky.to_string())
                ),
            ));
        }
        if !(1..=1_000_000).contains(&b.max_connections) {
            return Err(invalid(
                "balancer.max_connections",
                format!("must be between 1 and 1000000, got {}", b.max_connections),
            ));
        }
        if !(1..=3600).contains(&b.timeout_s) {
            return Err(invalid(
                "balancer.timeout_s",
                format!("must be between 1 and 3600 seconds, got {}", b.timeout_s),
            ));
        }
        let mut routes = BTreeSet::new();
        for (i, member) in b.member.iter().enumerate() {
            if check_member_url(&member.url).is_err() {
                return Err(invalid(
                    format!("balancer.member[{i}].url"),
                    format!(
                        "expected http://host:port with an optional trailing '/', got {}",
                        render_str(&member.url)
                    ),
                ));
            }
            let route_key = format!("balancer.member[{i}].route");
            check_route_name(&route_key, &member.route)?;
            if !routes.insert(member.route.as_str()) {
                return Err(invalid(
                    route_key,
                    format!("route {:?} is used by another member", member.route),
                ));
            }
            if !(1..=100).contains(&member.loadfactor) {
                return Err(invalid(
                    format!("balancer.member[{i}].loadfactor"),
                    format!("must be between 1 and 100, got {}", member.loadfactor),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

/// RFC 7230 `token` (also the RFC 6265 cookie-name): non-empty, `tchar` only.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_route_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-' (it is the route suffix, so no dots), got {}",
                render_str(name)
            ),
        ))
    }
}

fn is_hostname(host: &str) -> bool {
    (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port` with host a name, an IPv4 address or a bracketed IPv6 address; port 1..=65535.
fn check_host_port(s: &str) -> Result<(), ()> {
    let port = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or(())?;
        host.parse::<Ipv6Addr>().map_err(|_| ())?;
        port
    } else {
        let (host, port) = s.rsplit_once(':').ok_or(())?;
        if host.parse::<Ipv4Addr>().is_err() && !is_hostname(host) {
            return Err(());
        }
        port
    };
    let digits_only = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(p) if digits_only && p != 0 => Ok(()),
        _ => Err(()),
    }
}

fn check_member_url(url: &str) -> Result<(), ()> {
    let rest = url.strip_prefix("http://").ok_or(())?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(());
    }
    check_host_port(rest)
}

// ---------------------------------------------------------------------------------------------
// TOML table handling

fn parse_document(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let position = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| {
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        ConfigError::Syntax {
            origin: origin.to_string(),
            message: format!("{position}{message}"),
        }
    })
}

/// Records `prefix.key` for every key of `table`, recursing into sub-tables (not arrays).
fn record_keys(set_keys: &mut BTreeSet<String>, prefix: &str, table: &Table) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let Value::Table(sub) = value {
            record_keys(set_keys, &dotted, sub);
        }
        set_keys.insert(dotted);
    }
}

/// The default configuration as a table, plus the optional keys and one sample member, so
/// that every valid key has an entry giving its kind (for `--set`) and its siblings (for
/// unknown-key errors).
fn template() -> &'static Table {
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b[0].c`, or with `normalized` `a.b[].c` (for the hint table).
fn dotted(segs: &[Seg], normalized: bool) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(_) if normalized => out.push_str("[]"),
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Looks `segs` up in `table`; with `first_item`, any index means the first array item.
fn lookup<'a>(table: &'a Table, segs: &[Seg], first_item: bool) -> Option<&'a Value> {
    let (first, rest) = segs.split_first()?;
    let mut cur = match first {
        Seg::Key(k) => table.get(k)?,
        Seg::Index(_) => return Option::None,
    };
    for seg in rest {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Table(t)) => t.get(k)?,
            (Seg::Index(_), Value::Array(a)) if first_item => a.first()?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return Option::None,
        };
    }
    Some(cur)
}

fn key_segs(key: &str) -> Vec<Seg> {
    key.split('.').map(|k| Seg::Key(k.to_string())).collect()
}

/// What a key expects, in words; `normalized` is the dotted key with `[]` for indexes.
fn hint(normalized: &str) -> Option<&'static str> {
    Some(match normalized {
        "cluster" | "membership" | "node" | "sessions" | "balancer" => "expected a table (section)",
        "cluster.name" => "expected a string like \"deltacast\"",
        "cluster.key_file" => "expected a file path string like \"cluster.key\"",
        "membership.multicast" => "expected group:port like 228.0.0.4:45564",
        "membership.interface" => "expected an IPv4 address like 127.0.0.1",
        "membership.ttl" => "expected a whole number from 0 to 255",
        "membership.heartbeat_ms" | "membership.drop_ms" => {
            "expected a whole number of milliseconds"
        }
        "membership.static_members" => {
            "expected a list of host:port strings like [\"10.0.0.2:4001\"] or 10.0.0.2:4001,10.0.0.3:4001"
        }
        "membership.static_members[]" => "expected a host:port string like \"10.0.0.2:4001\"",
        "node.name" | "balancer.member[].route" => "expected a string like \"n1\"",
        "node.http" | "node.replication" | "balancer.listen" => {
            "expected ip:port like 127.0.0.1:8081"
        }
        "sessions.cookie" => "expected a string like \"JSESSIONID\"",
        "sessions.max_inactive_s" => "expected a whole number of seconds",
        "sessions.ack_timeout_ms" => "expected a whole number of milliseconds",
        "sessions.max_sessions" | "sessions.max_attributes" | "sessions.max_value_bytes" => {
            "expected a whole number"
        }
        "sessions.replication" => "expected one of \"sync\", \"async\"",
        "balancer.lbmethod" => "expected one of \"byrequests\", \"bytraffic\", \"bybusyness\"",
        "balancer.sticky" => {
            "expected one of \"route\", \"none\", \"source_ip\", \"header:NAME\" (NAME an HTTP header name token)"
        }
        "balancer.discover" => "expected true or false",
        "balancer.max_connections" => "expected a whole number from 1 to 1000000",
        "balancer.timeout_s" => "expected a whole number of seconds from 1 to 3600",
        "balancer.member" => "expected an array of [[balancer.member]] tables with url and route",
        "balancer.member[]" => "expected a table with url, route and optional loadfactor",
        "balancer.member[].url" => "expected a string like \"http://127.0.0.1:8081\"",
        "balancer.member[].loadfactor" => "expected a whole number from 1 to 100",
        _ => return Option::None,
    })
}

fn kind_hint(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "expected a string",
        Value::Integer(_) => "expected a whole number",
        Value::Float(_) => "expected a number",
        Value::Boolean(_) => "expected true or false",
        Value::Datetime(_) => "expected a date-time",
        Value::Array(_) => "expected a list",
        Value::Table(_) => "expected a table (section)",
    }
}

/// A string quoted and escaped, shortened when long.
fn render_str(s: &str) -> String {
    shorten(format!("{s:?}"))
}

/// A TOML value on one line for error messages, shortened when long.
fn render(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(_) => "a table".to_string(),
    };
    shorten(text)
}

fn shorten(text: String) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text
    } else {
        let mut short: String = text.chars().take(MAX - 3).collect();
        short.push_str("...");
        short
    }
}

/// Turns the raw text of a `--set` into a TOML value of the kind the key's default has.
fn typed_raw(key: &str, raw: &str) -> Result<Value, ConfigError> {
    let template_value = lookup(template(), &key_segs(key), true);
    let bad = |fallback: &'static str| {
        invalid(
            key,
            format!("{}, got {}", hint(key).unwrap_or(fallback), render_str(raw)),
        )
    };
    let trimmed = raw.trim();
    let parsed = || trimmed.parse::<Value>().ok();
    let Some(template_value) = template_value else {
        // Not a known key (or one without a default): TOML if it parses, else a string.
        return Ok(parsed().unwrap_or_else(|| Value::String(raw.to_string())));
    };
    let fallback = kind_hint(template_value);
    match template_value {
        Value::String(_) => {
            // A quoted TOML string (`node.name="n1"`) loses its quotes; anything else is verbatim.
            let quoted = if trimmed.starts_with(['"', '\'']) {
                parsed()
            } else {
                Option::None
            };
            match quoted {
                Some(v @ Value::String(_)) => Ok(v),
                _ => Ok(Value::String(raw.to_string())),
            }
        }
        Value::Integer(_) => match parsed() {
            Some(v @ Value::Integer(_)) => Ok(v),
            _ => Err(bad(fallback)),
        },
        Value::Float(_) => match parsed() {
            Some(v @ Value::Float(_)) => Ok(v),
            // An integer is written without a dot; the precision loss is irrelevant here.
            Some(Value::Integer(i)) => Ok(Value::Float(i as f64)),
            _ => Err(bad(fallback)),
        },
        Value::Boolean(_) => match parsed() {
            Some(v @ Value::Boolean(_)) => Ok(v),
            _ => Err(bad(fallback)),
        },
        Value::Datetime(_) => match parsed() {
            Some(v @ Value::Datetime(_)) => Ok(v),
            _ => Err(bad(fallback)),
        },
        Value::Array(_) => {
            if trimmed.starts_with('[') {
                match parsed() {
                    Some(v @ Value::Array(_)) => Ok(v),
                    _ => Err(bad(fallback)),
                }
            } else {
                Ok(Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(|item| Value::String(item.to_string()))
                        .collect(),
                ))
            }
        }
        Value::Table(sub) => match parsed() {
            Some(v @ Value::Table(_)) if trimmed.starts_with('{') => Ok(v),
            _ => {
                let example = sub.keys().next().map_or("key", String::as_str);
                Err(invalid(
                    key,
                    format!(
                        "is a section; set one of its keys like {key}.{example}=..., or give an inline table {{ ... }}"
                    ),
                ))
            }
        },
    }
}

fn apply_override(
    root: &mut Table,
    ov: &Override,
    set_keys: &mut BTreeSet<String>,
) -> Result<(), ConfigError> {
    let segs: Vec<&str> = ov.key.split('.').collect();
    let Some((last, parents)) = segs.split_last() else {
        return Err(ConfigError::BadOverride {
            arg: ov.to_string(),
        });
    };
    if segs.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::BadOverride {
            arg: ov.to_string(),
        });
    }
    let not_a_table = |prefix: &str| {
        invalid(
            ov.key.as_str(),
            format!("`{prefix}` is not a section, so it has no key `{last}`"),
        )
    };

    let value = match &ov.value {
        OverrideValue::Text(text) => Some(Value::String(text.clone())),
        OverrideValue::Raw(raw) => Some(typed_raw(&ov.key, raw)?),
        OverrideValue::AppendMember { .. } => Option::None,
    };

    // Walk (creating as needed) the tables along the key.
    let mut cur = root;
    let mut template_table = Some(template());
    for (i, seg) in parents.iter().enumerate() {
        let prefix = segs[..=i].join(".");
        let template_child = template_table.and_then(|t| t.get(*seg));
        let blocked = match cur.get(*seg) {
            Some(existing) => !existing.is_table(),
            Option::None => template_child.is_some_and(|v| !v.is_table()),
        };
        if blocked {
            return Err(not_a_table(&prefix));
        }
        template_table = template_child.and_then(Value::as_table);
        let entry = cur
            .entry(seg.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => return Err(not_a_table(&prefix)),
        };
        set_keys.insert(prefix);
    }

    match (&ov.value, value) {
        (OverrideValue::AppendMember { route, url }, _) => {
            let mut member = Table::new();
            member.insert("url".to_string(), Value::String(url.clone()));
            member.insert("route".to_string(), Value::String(route.clone()));
            member.insert("loadfactor".to_string(), Value::Integer(1));
            let entry = cur
                .entry(last.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            match entry {
                Value::Array(items) => items.push(Value::Table(member)),
                _ => {
                    return Err(invalid(
                        ov.key.as_str(),
                        "must be an array of [[balancer.member]] tables to append a member",
                    ));
                }
            }
        }
        (_, Some(value)) => {
            if let Value::Table(sub) = &value {
                record_keys(set_keys, &ov.key, sub);
            }
            cur.insert(last.to_string(), value);
        }
        (_, Option::None) => {}
    }
    set_keys.insert(ov.key.clone());
    Ok(())
}

fn deserialize_table(table: Table) -> Result<Config, ConfigError> {
    let snapshot = table.clone();
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let mut segs: Vec<Seg> = Vec::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Map { key } => segs.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    segs.push(Seg::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Seq { index } => segs.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        convert_de_error(segs, e.inner().message(), &snapshot)
    })
}

/// The text between the first pair of backticks after `prefix`, if `message` starts so.
fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

fn convert_de_error(mut segs: Vec<Seg>, message: &str, table: &Table) -> ConfigError {
    if let Some(field) = backticked(message, "unknown field ") {
        // The path normally ends with the unknown key already; make sure it does.
        if segs.last() != Some(&Seg::Key(field.to_string())) {
            segs.push(Seg::Key(field.to_string()));
        }
        let parent = &segs[..segs.len() - 1];
        let siblings = if parent.is_empty() {
            Some(template())
        } else {
            lookup(template(), parent, true).and_then(Value::as_table)
        };
        let expected = match siblings {
            Some(t) => t.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
            Option::None => message
                .split_once("expected ")
                .map_or("(none)", |(_, list)| list)
                .replace('`', ""),
        };
        return ConfigError::UnknownKey {
            key: dotted(&segs, false),
            expected,
        };
    }
    if let Some(field) = backticked(message, "missing field ") {
        segs.push(Seg::Key(field.to_string()));
        let what = hint(&dotted(&segs, true)).unwrap_or("expected a value");
        return invalid(dotted(&segs, false), format!("is required; {what}"));
    }
    let key = dotted(&segs, false);
    let what = hint(&dotted(&segs, true))
        .map(Cow::Borrowed)
        .unwrap_or_else(|| Cow::Owned(message.lines().collect::<Vec<_>>().join("; ")));
    let expected = match lookup(table, &segs, false) {
        Some(value) => format!("{what}, got {}", render(value)),
        Option::None => what.into_owned(),
    };
    invalid(key, expected)
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_TOML: &str = r##"
[cluster]
name = "deltacast"            # members of another cluster name are ignored
# key_file = "cluster.key"    # shared secret file path (Option<PathBuf>, default None)

[membership]
multicast = "228.0.0.4:45564" # group:port  -> SocketAddrV4, the IP must be multicast (224.0.0.0/4), port != 0
interface = "127.0.0.1"       # Ipv4Addr
ttl = 1                       # u32, 0..=255
heartbeat_ms = 500            # u64, 10..=60000
drop_ms = 3000                # u64, must be > 2 * heartbeat_ms and <= 600000
static_members = []           # Vec<String>, each "host:port" (host name or IP, port 1..=65535)

[node]
name = "n1"                   # 1..=64 chars of [A-Za-z0-9_-] (it is the route suffix after the last '.', so no dots)
http = "127.0.0.1:8081"       # SocketAddr (port 0 allowed: bind any free port)
replication = "127.0.0.1:4001"# SocketAddr (port 0 allowed)

[sessions]
cookie = "JSESSIONID"         # non-empty RFC 6265 cookie-name token
max_inactive_s = 1800         # u64, 1..=31536000
ack_timeout_ms = 1000
max_sessions = 1000000
max_attributes = 64
max_value_bytes = 65536
replication = "sync"          # enum ReplicationMode { Sync, Async }, lowercase "sync" | "async"

[balancer]
listen = "127.0.0.1:8080"     # SocketAddr
lbmethod = "byrequests"       # enum LbMethod { ByRequests, ByTraffic, ByBusyness } as "byrequests" | "bytraffic" | "bybusyness"
sticky = "route"              # enum Sticky { Route, None, SourceIp, Header(String) } from "route" | "none" | "source_ip" | "header:NAME" (NAME a valid HTTP header name token); serialize back to the same strings
discover = true
max_connections = 10000       # u64, 1..=1000000
timeout_s = 60                # u64, 1..=3600
# [[balancer.member]]         # Vec<BalancerMember { url: String, route: String, loadfactor: u32 }>
# url = "http://127.0.0.1:8081"  # must be http://host:port with optional trailing '/'
# route = "n1"                   # same rules as node.name
# loadfactor = 1                 # 1..=100, default 1
"##;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml", &[])
    }

    fn load_with(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let overrides: Vec<Override> = sets
            .iter()
            .map(|s| Override::parse_set(s))
            .collect::<Result<_, _>>()?;
        Config::from_toml_str(text, "test.toml", &overrides)
    }

    /// Asserts the error is an `Invalid` naming `key` and returns its one-line message.
    fn invalid_key(result: Result<Config, ConfigError>, key: &str) -> String {
        match result {
            Err(e @ ConfigError::Invalid { .. }) => {
                let text = e.to_string();
                if let ConfigError::Invalid { key: k, .. } = &e {
                    assert_eq!(k, key, "{text}");
                }
                assert!(text.contains(key), "{text}");
                assert!(!text.contains('\n'), "{text}");
                text
            }
            other => panic!("expected Invalid for {key}, got {other:?}"),
        }
    }

    fn unknown_key(result: Result<Config, ConfigError>, key: &str) -> String {
        match result {
            Err(e @ ConfigError::UnknownKey { .. }) => {
                let text = e.to_string();
                if let ConfigError::UnknownKey { key: k, .. } = &e {
                    assert_eq!(k, key, "{text}");
                }
                assert!(!text.contains('\n'), "{text}");
                text
            }
            other => panic!("expected UnknownKey for {key}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_load_from_an_empty_string_and_validate() {
        let config = load("").unwrap();
        assert_eq!(config, Config::default());
        config.validate().unwrap();
        Config::for_test().validate().unwrap();
        assert_eq!(config.heartbeat(), Duration::from_millis(500));
        assert_eq!(config.drop_after(), Duration::from_millis(3000));
    }

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
    fn overrides_apply_over_the_file_in_order_and_the_later_wins() {
        let file = "[node]\nname = \"file\"\n[membership]\nttl = 3\n";
        let overrides = [
            Override::text("node.name", "fromflag"),
            Override::parse_set("node.name=fromset").unwrap(),
            Override::parse_set("membership.ttl=4").unwrap(),
        ];
        let config = Config::from_toml_str(file, "f.toml", &overrides).unwrap();
        assert_eq!(config.node.name, "fromset");
        assert_eq!(config.membership.ttl, 4);

        let config = load_with(file, &[]).unwrap();
        assert_eq!(config.node.name, "file");
        assert_eq!(config.membership.ttl, 3);

        let overrides = [
            Override::text("node.name", "fromflag"),
            Override::parse_set("node.name=last").unwrap(),
        ];
        let config = Config::from_toml_str(file, "f.toml", &overrides).unwrap();
        assert_eq!(config.node.name, "last");
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named_with_its_section() {
        let text = unknown_key(
            load("[membership]\nheartbeat = 5\n"),
            "membership.heartbeat",
        );
        assert!(text.contains("`membership.heartbeat`"), "{text}");
        assert!(text.contains("heartbeat_ms"), "{text}");
    }

    #[test]
    fn an_unknown_key_via_set_is_named() {
        let text = unknown_key(
            load_with("", &["membership.heartbeat=5"]),
            "membership.heartbeat",
        );
        assert!(text.contains("drop_ms"), "{text}");
        unknown_key(load_with("", &["nodes.name=x"]), "nodes");
    }

    #[test]
    fn an_unknown_section_is_named() {
        let text = unknown_key(load("[clusterr]\nname = \"x\"\n"), "clusterr");
        assert!(text.contains("membership"), "{text}");
        unknown_key(load("top = 1\n"), "top");
    }

    #[test]
    fn an_unknown_key_in_a_member_is_named_with_its_index() {
        let text = unknown_key(
            load("[[balancer.member]]\nurl = \"http://a:1\"\nroute = \"a\"\nweight = 2\n"),
            "balancer.member[0].weight",
        );
        assert!(text.contains("loadfactor"), "{text}");
    }

    #[test]
    fn a_bad_address_names_the_key_and_the_value() {
        let text = invalid_key(load("[node]\nhttp = \"localhost\"\n"), "node.http");
        assert!(text.contains("ip:port"), "{text}");
        assert!(text.contains("\"localhost\""), "{text}");
        invalid_key(
            load("[balancer]\nlisten = \"127.0.0.1:99999\"\n"),
            "balancer.listen",
        );
        invalid_key(
            load("[membership]\ninterface = \"::1\"\n"),
            "membership.interface",
        );
    }

    #[test]
    fn port_zero_is_allowed_for_listening_addresses() {
        let config = load_with("", &["node.http=127.0.0.1:0", "node.replication=[::1]:0"]).unwrap();
        assert_eq!(config.node.http.port(), 0);
        assert!(config.node.replication.is_ipv6());
    }

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
    fn a_bad_number_names_the_key() {
        let text = invalid_key(
            load("[membership]\nheartbeat_ms = \"abc\"\n"),
            "membership.heartbeat_ms",
        );
        assert!(text.contains("\"abc\""), "{text}");
        assert!(text.contains("whole number of milliseconds"), "{text}");
        let text = invalid_key(
            load("[membership]\nheartbeat_ms = -5\n"),
            "membership.heartbeat_ms",
        );
        assert!(text.contains("-5"), "{text}");
        invalid_key(load("[membership]\nttl = 1.5\n"), "membership.ttl");
    }

    #[test]
    fn out_of_range_numbers_name_the_key() {
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
        invalid_key(
            load("[sessions]\nmax_inactive_s = 0\n"),
            "sessions.max_inactive_s",
        );
        invalid_key(
            load("[sessions]\nmax_inactive_s = 31536001\n"),
            "sessions.max_inactive_s",
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
    fn a_bad_enum_value_lists_the_allowed_values() {
        let text = invalid_key(
            load("[sessions]\nreplication = \"maybe\"\n"),
            "sessions.replication",
        );
        assert!(
            text.contains("\"async\"") && text.contains("\"maybe\""),
            "{text}"
        );
        let text = invalid_key(
            load("[balancer]\nlbmethod = \"roundrobin\"\n"),
            "balancer.lbmethod",
        );
        assert!(text.contains("bybusyness"), "{text}");
        invalid_key(load("[balancer]\nsticky = \"cookie\"\n"), "balancer.sticky");
    }

    #[test]
    fn a_bad_sticky_header_names_the_key() {
        let text = invalid_key(
            load("[balancer]\nsticky = \"header:bad name\"\n"),
            "balancer.sticky",
        );
        assert!(text.contains("header"), "{text}");
        invalid_key(
            load("[balancer]\nsticky = \"header:\"\n"),
            "balancer.sticky",
        );
        let config = load("[balancer]\nsticky = \"header:X-Route\"\n").unwrap();
        assert_eq!(config.balancer.sticky, Sticky::Header("X-Route".into()));

        let mut config = Config::default();
        config.balancer.sticky = Sticky::Header("a:b".into());
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("balancer.sticky"), "{err}");
    }

    #[test]
    fn the_connection_limit_must_be_from_1_to_a_million() {
        for bad in ["0", "1000001"] {
            let text = invalid_key(
                load(&format!("[balancer]\nmax_connections = {bad}\n")),
                "balancer.max_connections",
            );
            assert!(text.contains("between 1 and 1000000"), "{text}");
        }
        let text = invalid_key(
            load_with("", &["balancer.max_connections=many"]),
            "balancer.max_connections",
        );
        assert!(text.contains("\"many\""), "{text}");
        invalid_key(
            load("[balancer]\nmax_connections = -1\n"),
            "balancer.max_connections",
        );
        let config = load_with("", &["balancer.max_connections=2"]).unwrap();
        assert_eq!(config.balancer.max_connections, 2);
        assert!(config.is_set("balancer.max_connections"));
    }

    #[test]
    fn the_member_timeout_must_be_from_1_to_3600_seconds() {
        for bad in ["0", "3601"] {
            let text = invalid_key(
                load(&format!("[balancer]\ntimeout_s = {bad}\n")),
                "balancer.timeout_s",
            );
            assert!(text.contains("between 1 and 3600 seconds"), "{text}");
        }
        let text = invalid_key(
            load_with("", &["balancer.timeout_s=soon"]),
            "balancer.timeout_s",
        );
        assert!(text.contains("\"soon\""), "{text}");
        assert!(text.contains("seconds from 1 to 3600"), "{text}");
        invalid_key(load("[balancer]\ntimeout_s = -1\n"), "balancer.timeout_s");
        invalid_key(load("[balancer]\ntimeout_s = 1.5\n"), "balancer.timeout_s");
        for good in [1, 3600] {
            let config = load_with("", &[&format!("balancer.timeout_s={good}")]).unwrap();
            assert_eq!(config.balancer.timeout_s, good);
            assert!(config.is_set("balancer.timeout_s"));
        }
    }

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
    fn a_bad_cookie_or_cluster_name_is_rejected() {
        invalid_key(load("[sessions]\ncookie = \"\"\n"), "sessions.cookie");
        invalid_key(load("[sessions]\ncookie = \"a;b\"\n"), "sessions.cookie");
        invalid_key(load("[cluster]\nname = \"\"\n"), "cluster.name");
        invalid_key(load("[cluster]\nkey_file = \"\"\n"), "cluster.key_file");
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
    fn a_bad_member_url_names_the_member() {
        let member = |url: &str| format!("[[balancer.member]]\nurl = \"{url}\"\nroute = \"n1\"\n");
        for bad in [
            "https://127.0.0.1:8081",
            "http://127.0.0.1",
            "http://127.0.0.1:8081/path",
            "http://user@host:1",
            "127.0.0.1:8081",
            "",
        ] {
            let text = invalid_key(load(&member(bad)), "balancer.member[0].url");
            assert!(text.contains("http://host:port"), "{text}");
        }
        for good in [
            "http://127.0.0.1:8081",
            "http://node-1:80/",
            "http://[::1]:8081",
        ] {
            load(&member(good)).unwrap();
        }
    }

    #[test]
    fn member_routes_and_loadfactors_are_checked() {
        invalid_key(
            load("[[balancer.member]]\nurl = \"http://a:1\"\nroute = \"a.b\"\n"),
            "balancer.member[0].route",
        );
        invalid_key(
            load("[[balancer.member]]\nurl = \"http://a:1\"\nroute = \"a\"\nloadfactor = 0\n"),
            "balancer.member[0].loadfactor",
        );
        invalid_key(
            load("[[balancer.member]]\nurl = \"http://a:1\"\nroute = \"a\"\nloadfactor = 101\n"),
            "balancer.member[0].loadfactor",
        );
        let text = invalid_key(
            load("[[balancer.member]]\nurl = \"http://a:1\"\n"),
            "balancer.member[0].route",
        );
        assert!(text.contains("required"), "{text}");
        invalid_key(
            load_with(
                "",
                &[
                    "balancer.member=[{url=\"http://a:1\",route=\"a\"},{url=\"http://b:1\",route=\"a\"}]",
                ],
            ),
            "balancer.member[1].route",
        );
        let config = load("[[balancer.member]]\nurl = \"http://a:1\"\nroute = \"a\"\n").unwrap();
        assert_eq!(config.balancer.member[0].loadfactor, 1);
    }

    #[test]
    fn a_toml_syntax_error_is_one_line_with_the_origin_and_line() {
        let err = Config::from_toml_str("[node]\nname = \"n1\"\nhttp = \n", "node.toml", &[])
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(text.starts_with("node.toml: line 3"), "{text}");
        assert!(!text.contains('\n'), "{text}");

        let err = load("[node\n").unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
        let err = load("a = 1\na = 2\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn set_without_an_equals_sign_or_key_is_a_bad_override() {
        for bad in ["membership.ttl", "=3", " = 3", "a..b=1", ".a=1", "a.=1"] {
            match Override::parse_set(bad) {
                Err(e @ ConfigError::BadOverride { .. }) => {
                    assert!(e.to_string().contains("dotted.key=value"), "{e}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let parsed: Override = " membership . ttl = 3 ".parse().unwrap();
        assert_eq!(parsed.key, "membership.ttl");
        assert_eq!(parsed.value, OverrideValue::Raw("3".into()));
        let with_equals = Override::parse_set("node.name=a=b").unwrap();
        assert_eq!(with_equals.value, OverrideValue::Raw("a=b".into()));
    }

    #[test]
    fn set_of_a_number_key_with_a_non_number_names_the_key() {
        let text = invalid_key(
            load_with("", &["membership.heartbeat_ms=abc"]),
            "membership.heartbeat_ms",
        );
        assert!(
            text.contains("\"abc\"") && text.contains("milliseconds"),
            "{text}"
        );
        invalid_key(load_with("", &["membership.ttl=1.5"]), "membership.ttl");
        invalid_key(
            load_with("", &["balancer.discover=yes"]),
            "balancer.discover",
        );
        invalid_key(
            load_with("", &["membership.static_members=[\"a:1\""]),
            "membership.static_members",
        );
    }

    #[test]
    fn set_of_a_key_below_a_value_names_the_key() {
        let text = invalid_key(load_with("", &["node.name.x=1"]), "node.name.x");
        assert!(text.contains("`node.name` is not a section"), "{text}");
        invalid_key(
            load_with("[node]\nname = \"n2\"\n", &["node.name.x=1"]),
            "node.name.x",
        );
        invalid_key(
            load_with("", &["balancer.member.url=x"]),
            "balancer.member.url",
        );
        invalid_key(load_with("", &["membership=1"]), "membership");
    }

    #[test]
    fn set_of_max_inactive_s_works() {
        let config = load_with("", &["sessions.max_inactive_s=2"]).unwrap();
        assert_eq!(config.sessions.max_inactive_s, 2);
    }

    #[test]
    fn set_of_static_members_accepts_a_comma_list_or_a_toml_array() {
        let config = load_with(
            "",
            &["membership.static_members=127.0.0.1:4001,127.0.0.1:4002"],
        )
        .unwrap();
        assert_eq!(
            config.membership.static_members,
            vec!["127.0.0.1:4001".to_string(), "127.0.0.1:4002".to_string()]
        );
        let config = load_with(
            "",
            &["membership.static_members=[\"127.0.0.1:4001\", \"h:2\"]"],
        )
        .unwrap();
        assert_eq!(config.membership.static_members.len(), 2);
        let config = load_with(
            "[membership]\nstatic_members = [\"a:1\"]\n",
            &["membership.static_members="],
        )
        .unwrap();
        assert!(config.membership.static_members.is_empty());
    }

    #[test]
    fn set_of_key_file_and_other_values_works() {
        let config = load_with(
            "",
            &[
                "membership={ ttl = 7 }",
                "cluster.key_file=x.key",
                "sessions.replication=async",
                "balancer.sticky=header:X-Route",
                "balancer.discover=false",
                "membership.multicast=239.1.2.3:5000",
                "node.name=\"quoted\"",
            ],
        )
        .unwrap();
        assert_eq!(config.cluster.key_file, Some(PathBuf::from("x.key")));
        assert_eq!(config.sessions.replication, ReplicationMode::Async);
        assert_eq!(config.balancer.sticky, Sticky::Header("X-Route".into()));
        assert!(!config.balancer.discover);
        assert_eq!(config.membership.multicast.to_string(), "239.1.2.3:5000");
        assert_eq!(config.node.name, "quoted");
        assert_eq!(config.membership.ttl, 7);
        assert!(config.is_set("membership.ttl"));
    }

    #[test]
    fn is_set_is_true_only_for_keys_from_the_file_or_overrides() {
        let overrides = [
            Override::parse_set("node.name=n2").unwrap(),
            Override::text("cluster.name", "other"),
        ];
        let config = Config::from_toml_str(
            "[membership]\nmulticast = \"228.0.0.5:45000\"\n",
            "f",
            &overrides,
        )
        .unwrap();
        assert!(config.is_set("membership.multicast"));
        assert!(config.is_set("membership"));
        assert!(config.is_set("node.name"));
        assert!(config.is_set("cluster.name"));
        assert!(!config.is_set("membership.ttl"));
        assert!(!config.is_set("node.http"));
        assert!(!config.is_set("balancer"));
        assert!(!Config::default().is_set("membership.multicast"));
        let defaults = load(DEFAULT_TOML).unwrap();
        assert!(defaults.is_set("membership.multicast"));
        assert!(!defaults.is_set("cluster.key_file"));
    }

    #[test]
    fn parse_member_appends_members() {
        let overrides = [
            Override::parse_member("n2=http://127.0.0.1:8082").unwrap(),
            Override::parse_member("n3=http://127.0.0.1:8083/").unwrap(),
        ];
        let file = "[[balancer.member]]\nurl = \"http://127.0.0.1:8081\"\nroute = \"n1\"\nloadfactor = 5\n";
        let config = Config::from_toml_str(file, "f", &overrides).unwrap();
        let routes: Vec<&str> = config
            .balancer
            .member
            .iter()
            .map(|m| m.route.as_str())
            .collect();
        assert_eq!(routes, ["n1", "n2", "n3"]);
        assert_eq!(config.balancer.member[1].url, "http://127.0.0.1:8082");
        assert_eq!(config.balancer.member[1].loadfactor, 1);
        assert_eq!(config.balancer.member[0].loadfactor, 5);
        assert!(config.is_set("balancer.member"));

        let config = Config::from_toml_str("", "f", &overrides[..1]).unwrap();
        assert_eq!(config.balancer.member.len(), 1);

        for bad in ["n2", "=http://a:1", "n2="] {
            match Override::parse_member(bad) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "balancer.member"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let overrides = [Override::parse_member("n.2=http://a:1").unwrap()];
        invalid_key(
            Config::from_toml_str("", "f", &overrides),
            "balancer.member[0].route",
        );
    }

    #[test]
    fn load_reads_the_given_file_and_reports_a_missing_one() {
        let dir =
            std::env::temp_dir().join(format!("deltacast-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, "[node]\nname = \"fromfile\"\n").unwrap();
        let config = Config::load(Some(&path), &[Override::text("cluster.name", "c2")]).unwrap();
        assert_eq!(config.node.name, "fromfile");
        assert_eq!(config.cluster.name, "c2");

        let missing = dir.join("missing.toml");
        match Config::load(Some(&missing), &[]) {
            Err(e @ ConfigError::Read { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("missing.toml") && !text.contains('\n'),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "[node]\nname = \n").unwrap();
        let err = Config::load(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("node.toml: line 2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_error_kind_displays_on_one_line() {
        let errors = vec![
            ConfigError::Read {
                path: PathBuf::from("a\nb.toml"),
                source: std::io::Error::other("first\nsecond"),
            },
            ConfigError::Syntax {
                origin: "x.toml".into(),
                message: "line 1, column 1: bad\nthing".into(),
            },
            ConfigError::UnknownKey {
                key: "a\nb".into(),
                expected: "x, y".into(),
            },
            ConfigError::Invalid {
                key: "k".into(),
                expected: "expected\nsomething".into(),
            },
            ConfigError::BadOverride { arg: "x\ny".into() },
            load("[membership]\nheartbeat = 5\n").unwrap_err(),
            load("[\"a\\nb\"]\n").unwrap_err(),
            load_with("", &["node.name=a\nb"]).unwrap_err(),
            load("[node]\nname = \"\"\"\nmulti\nline\"\"\"\n").unwrap_err(),
            Override::parse_set("a\nb").unwrap_err(),
            load("x = [\n").unwrap_err(),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
            assert!(!text.is_empty());
        }
    }
}
