//! `sessions.store`: where a node's sessions live. `"replicated"` (every member holds every
//! session), or a session server by URL: `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`,
//! `redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]` or
//! `memcached://HOST:PORT[,HOST:PORT...]`. Parsed when the config is read, so a bad URL
//! is one line naming the key, before anything starts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::validate::check_host_port;

/// `sessions.store`, parsed. [`fmt::Display`] gives the URL without its credentials (what
/// `/status` shows); the config file's text is kept for serialising it back.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum SessionStoreUrl {
    /// `"replicated"`: every member holds every session (the DeltaManager way).
    #[default]
    Replicated,
    /// `redis://...`: one Redis server (or a primary behind a proxy).
    Redis {
        /// The text as configured.
        text: String,
        /// The server.
        server: ServerAddr,
        /// The database (`SELECT`), 0 unless the path names another.
        db: u32,
        /// `AUTH`, from the URL's user information.
        auth: Option<Auth>,
    },
    /// `redis+cluster://...`: a Redis Cluster, found from these seed nodes.
    RedisCluster {
        /// The text as configured.
        text: String,
        /// The seed nodes (the client learns the others from them).
        seeds: Vec<ServerAddr>,
        /// `AUTH` on every node, from the URL's user information.
        auth: Option<Auth>,
    },
    /// `memcached://...`: memcached servers, sessions spread over them by a stable hash.
    Memcached {
        /// The text as configured.
        text: String,
        /// The servers, in the order given (rendezvous hashing: the order does not matter).
        servers: Vec<ServerAddr>,
    },
}

/// A session server's `HOST:PORT`: a name, an IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// The host as written (IPv6 without its brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Redis credentials from a URL's user information (`USER:PASSWORD@` or `:PASSWORD@`),
/// percent-decoded. Never displayed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    /// The ACL user; `None` for the `default` user (`AUTH password`).
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The port a Redis URL means when it names none.
pub const REDIS_PORT: u16 = 6379;
/// The port a memcached URL means when it names none.
pub const MEMCACHED_PORT: u16 = 11211;

impl SessionStoreUrl {
    /// `replicated`, `redis`, `redis-cluster` or `memcached`: the name `/status` gives it.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionStoreUrl::Replicated => "replicated",
            SessionStoreUrl::Redis { .. } => "redis",
            SessionStoreUrl::RedisCluster { .. } => "redis-cluster",
            SessionStoreUrl::Memcached { .. } => "memcached",
        }
    }

    /// Whether a session server holds the sessions (anything but `replicated`).
    pub fn is_session_server(&self) -> bool {
        !matches!(self, SessionStoreUrl::Replicated)
    }

    fn text(&self) -> &str {
        match self {
            SessionStoreUrl::Replicated => "replicated",
            SessionStoreUrl::Redis { text, .. }
            | SessionStoreUrl::RedisCluster { text, .. }
            | SessionStoreUrl::Memcached { text, .. } => text,
        }
    }
}

/// The credentials never show, not even in a debug print of the config.
impl fmt::Debug for SessionStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionStoreUrl({self})")
    }
}

/// The URL as `/status` shows it: no credentials.
impl fmt::Display for SessionStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |servers: &[ServerAddr]| {
            servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            SessionStoreUrl::Replicated => f.write_str("replicated"),
            SessionStoreUrl::Redis { server, db, .. } => write!(f, "redis://{server}/{db}"),
            SessionStoreUrl::RedisCluster { seeds, .. } => {
                write!(f, "redis+cluster://{}", list(seeds))
            }
            SessionStoreUrl::Memcached { servers, .. } => {
                write!(f, "memcached://{}", list(servers))
            }
        }
    }
}

const EXPECTED: &str = "\"replicated\", \"redis://HOST:PORT[/DB]\", \"redis+cluster://HOST:PORT[,HOST:PORT...]\" or \"memcached://HOST:PORT[,HOST:PORT...]\"";

impl FromStr for SessionStoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<SessionStoreUrl, String> {
        if s == "replicated" {
            return Ok(SessionStoreUrl::Replicated);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("{s:?} is not one of {EXPECTED}"));
        };
        let text = s.to_string();
        match scheme {
            "redis" => {
                let (auth, rest) = split_auth(rest)?;
                let (hosts, path) = match rest.split_once('/') {
                    Some((hosts, path)) => (hosts, Some(path)),
                    None => (rest, None),
                };
                let server = server_addr(hosts, REDIS_PORT)?;
                let db = match path {
                    None | Some("") => 0,
                    Some(db) => db
                        .parse::<u32>()
                        .ok()
                        .filter(|_| db.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| format!("the database {db:?} is not a number"))?,
                };
                Ok(SessionStoreUrl::Redis {
                    text,
                    server,
                    db,
                    auth,
                })
            }
            "redis+cluster" => {
                let (auth, rest) = split_auth(rest)?;
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.contains('/') {
                    return Err(
                        "a Redis Cluster has only database 0: no /DB in redis+cluster://"
                            .to_string(),
                    );
                }
                Ok(SessionStoreUrl::RedisCluster {
                    text,
                    seeds: server_list(rest, REDIS_PORT)?,
                    auth,
                })
            }
            "memcached" => {
                if rest.contains('@') {
                    return Err("memcached:// takes no credentials".to_string());
                }
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.contains('/') {
                    return Err("memcached:// takes no path".to_string());
                }
                Ok(SessionStoreUrl::Memcached {
                    text,
                    servers: server_list(rest, MEMCACHED_PORT)?,
                })
            }
            "rediss" | "rediss+cluster" => Err(format!(
                "{scheme}:// (Redis over TLS) is not supported by this build; use a TLS proxy (stunnel, a sidecar) and redis://"
            )),
            _ => Err(format!("{s:?} is not one of {EXPECTED}")),
        }
    }
}

/// `[USER]:PASSWORD@` off the front of what follows `://`.
fn split_auth(rest: &str) -> Result<(Option<Auth>, &str), String> {
    let Some((info, rest)) = rest.rsplit_once('@') else {
        return Ok((None, rest));
    };
    let Some((user, password)) = info.split_once(':') else {
        return Err(
            "the user information must be USER:PASSWORD@ or :PASSWORD@ (a user alone has no password to send)".to_string(),
        );
    };
    let username = percent_decode(user)?;
    Ok((
        Some(Auth {
            username: (!username.is_empty()).then_some(username),
            password: percent_decode(password)?,
        }),
        rest,
    ))
}

/// `%XX` escapes decoded; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return Err("a % in the user information must be %XX".to_string()),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the user information is not UTF-8".to_string())
}

fn server_list(s: &str, default_port: u16) -> Result<Vec<ServerAddr>, String> {
    let servers = s
        .split(',')
        .map(|one| server_addr(one, default_port))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in servers.iter().enumerate() {
        if servers[..i].contains(a) {
            return Err(format!("{a} is named twice"));
        }
    }
    Ok(servers)
}

/// `HOST[:PORT]`, the port `default_port` when not given.
fn server_addr(s: &str, default_port: u16) -> Result<ServerAddr, String> {
    let bare_v6 = s.starts_with('[') && s.ends_with(']');
    let has_port = if s.starts_with('[') {
        !bare_v6
    } else {
        s.contains(':')
    };
    let full = if has_port {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    if check_host_port(&full).is_err() {
        return Err(format!(
            "{s:?} is not HOST:PORT (a name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535)"
        ));
    }
    let (host, port) = full
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{s:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ServerAddr {
        host: host.to_string(),
        port,
    })
}

impl Serialize for SessionStoreUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text())
    }
}

impl<'de> Deserialize<'de> for SessionStoreUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> SessionStoreUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn addr(host: &str, port: u16) -> ServerAddr {
        ServerAddr {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn replicated_is_the_default_and_parses() {
        assert_eq!(SessionStoreUrl::default(), SessionStoreUrl::Replicated);
        assert_eq!(parse("replicated"), SessionStoreUrl::Replicated);
        assert!(!parse("replicated").is_session_server());
    }

    #[test]
    fn a_redis_url_names_the_server_the_database_and_the_credentials() {
        match parse("redis://127.0.0.1:6380/2") {
            SessionStoreUrl::Redis {
                server, db, auth, ..
            } => {
                assert_eq!(server, addr("127.0.0.1", 6380));
                assert_eq!(db, 2);
                assert_eq!(auth, None);
            }
            other => panic!("{other:?}"),
        }
        match parse("redis://app:p%40ss@cache.example.com") {
            SessionStoreUrl::Redis {
                server, db, auth, ..
            } => {
                assert_eq!(server, addr("cache.example.com", REDIS_PORT));
                assert_eq!(db, 0);
                let auth = auth.expect("credentials");
                assert_eq!(auth.username.as_deref(), Some("app"));
                assert_eq!(auth.password, "p@ss");
            }
            other => panic!("{other:?}"),
        }
        match parse("redis://:secret@[::1]:7000/") {
            SessionStoreUrl::Redis { server, auth, .. } => {
                assert_eq!(server, addr("::1", 7000));
                assert_eq!(auth.expect("credentials").username, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_status_form_shows_no_credentials() {
        let url = parse("redis://app:hunter2@127.0.0.1:6379/1");
        assert_eq!(url.to_string(), "redis://127.0.0.1:6379/1");
        let cluster = parse("redis+cluster://:hunter2@a:7000,b:7001");
        assert_eq!(cluster.to_string(), "redis+cluster://a:7000,b:7001");
        assert!(!format!("{cluster:?}").contains("hunter2"));
        assert_eq!(
            parse("memcached://127.0.0.1,[::1]:11212").to_string(),
            "memcached://127.0.0.1:11211,[::1]:11212"
        );
    }

    #[test]
    fn cluster_and_memcached_urls_take_several_servers() {
        match parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002") {
            SessionStoreUrl::RedisCluster { seeds, .. } => {
                assert_eq!(seeds.len(), 3);
                assert_eq!(seeds[2], addr("127.0.0.1", 7002));
            }
            other => panic!("{other:?}"),
        }
        match parse("memcached://10.0.0.1:11211,10.0.0.2:11211") {
            SessionStoreUrl::Memcached { servers, .. } => assert_eq!(servers.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (bad, says) in [
            ("redis", "is not one of"),
            ("postgres://x:1", "is not one of"),
            ("redis://", "is not HOST:PORT"),
            ("redis://host:0", "is not HOST:PORT"),
            ("redis://host:1/x", "not a number"),
            ("redis://user@host:1", "USER:PASSWORD@"),
            ("redis://:%zz@host:1", "%XX"),
            ("redis+cluster://a:1,a:1", "named twice"),
            ("redis+cluster://a:1/3", "database 0"),
            ("memcached://u:p@a:1", "no credentials"),
            ("memcached://a:1,", "is not HOST:PORT"),
            ("rediss://a:1", "TLS"),
        ] {
            let e = bad.parse::<SessionStoreUrl>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn serialising_gives_back_the_configured_text() {
        let text = "redis://app:hunter2@127.0.0.1:6379/1";
        let url = parse(text);
        let json = serde_json::to_string(&url).expect("serialises");
        assert_eq!(json, format!("{text:?}"));
        let back: SessionStoreUrl = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, url);
    }
}
