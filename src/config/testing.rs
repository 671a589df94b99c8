//! Helpers the config tests of every part share: loading from text, and asserting that an
//! error names the key it should, on one line.

use super::{Config, ConfigError, Override};

/// The documented defaults, written out as a user would, with the rules of each key.
pub(super) const DEFAULT_TOML: &str = r##"
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
dns = []                      # Vec<String>, each "name:port" (host name or IP, port 1..=65535)

[node]
name = "n1"                   # 1..=64 chars of [A-Za-z0-9_-] (it is the route suffix after the last '.', so no dots)
http = "127.0.0.1:8081"       # SocketAddr (port 0 allowed: bind any free port)
replication = "127.0.0.1:4001"# SocketAddr (port 0 allowed)
max_connections = 10000       # u64, 1..=1000000

[sessions]
cookie = "JSESSIONID"         # non-empty RFC 6265 cookie-name token
max_inactive_s = 1800         # u64, 1..=31536000
ack_timeout_ms = 1000
max_sessions = 1000000
max_attributes = 64
max_value_bytes = 65536
max_bytes = 268435456         # u64, 1024..=2^40
url_tracking = false
# snapshot_file = "sessions.snapshot"  # Option<PathBuf>, default None
replication = "sync"          # enum ReplicationMode { Sync, Async }, lowercase "sync" | "async"

[balancer]
listen = "127.0.0.1:8080"     # SocketAddr
lbmethod = "byrequests"       # enum LbMethod { ByRequests, ByTraffic, ByBusyness } as "byrequests" | "bytraffic" | "bybusyness"
sticky = "route"              # enum Sticky { Route, Cookie(String), None, SourceIp, Header(String) } from "route" | "cookie:NAME" (NAME a cookie-name token) | "none" | "source_ip" | "header:NAME" (NAME a valid HTTP header name token); serialize back to the same strings
discover = true
max_connections = 10000       # u64, 1..=1000000
timeout_s = 60                # u64, 1..=3600
manager_allow = ["127.0.0.0/8", "::1/128"]  # CIDR ranges or bare addresses
# [[balancer.member]]         # Vec<BalancerMember { url: String, route: String, loadfactor: u32 }>
# url = "http://127.0.0.1:8081"  # must be http://host:port with optional trailing '/'
# route = "n1"                   # same rules as node.name
# loadfactor = 1                 # 1..=100, default 1

[ajp]
# listen = "127.0.0.1:8009"   # SocketAddr; unset: no connector
# secret = "..."              # 1..=1024 bytes, no control characters; required with listen unless secret_required = false
secret_required = true
packet_size = 8192            # u64, 8192..=65536
"##;

pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "test.toml", &[])
}

pub(super) fn load_with(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
    let overrides: Vec<Override> = sets
        .iter()
        .map(|s| Override::parse_set(s))
        .collect::<Result<_, _>>()?;
    Config::from_toml_str(text, "test.toml", &overrides)
}

/// Asserts the error is an `Invalid` naming `key` and returns its one-line message.
pub(super) fn invalid_key(result: Result<Config, ConfigError>, key: &str) -> String {
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

pub(super) fn unknown_key(result: Result<Config, ConfigError>, key: &str) -> String {
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
