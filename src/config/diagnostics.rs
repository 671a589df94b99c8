//! The one-line messages: a TOML syntax error with its line and column, and a serde error
//! turned into the dotted key it is about, what that key expects in words, and the value
//! that was given. serde's own messages name Rust types and lose the path, which tells an
//! operator nothing about the line to fix.

use std::borrow::Cow;

use toml::{Table, Value};

use super::schema::template;
use super::{Config, ConfigError, invalid};

pub(super) fn parse_document(text: &str, origin: &str) -> Result<Table, ConfigError> {
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
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
pub(super) fn lookup<'a>(table: &'a Table, segs: &[Seg], first_item: bool) -> Option<&'a Value> {
    let (first, rest) = segs.split_first()?;
    let mut cur = match first {
        Seg::Key(k) => table.get(k)?,
        Seg::Index(_) => return None,
    };
    for seg in rest {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Table(t)) => t.get(k)?,
            (Seg::Index(_), Value::Array(a)) if first_item => a.first()?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

pub(super) fn key_segs(key: &str) -> Vec<Seg> {
    key.split('.').map(|k| Seg::Key(k.to_string())).collect()
}

/// What a key expects, in words; `normalized` is the dotted key with `[]` for indexes.
pub(super) fn hint(normalized: &str) -> Option<&'static str> {
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
        "membership.dns" => {
            "expected a list of name:port strings like [\"deltacast.shop.svc.cluster.local:4001\"]"
        }
        "membership.dns[]" => {
            "expected a name:port string like \"deltacast.shop.svc.cluster.local:4001\""
        }
        "sessions.snapshot_file" => "expected a file path string like \"sessions.snapshot\"",
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
        "sessions.max_bytes" => "expected a whole number of bytes from 1024 to 1099511627776",
        "sessions.url_tracking" => "expected true or false",
        "node.max_connections" => "expected a whole number from 1 to 1000000",
        "balancer.manager_allow" => {
            "expected a list of address ranges like [\"127.0.0.0/8\", \"::1/128\"] or 10.0.0.0/8,192.168.1.5"
        }
        "balancer.manager_allow[]" => "expected an address range like \"10.0.0.0/8\" or an address",
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
        _ => return None,
    })
}

pub(super) fn kind_hint(value: &Value) -> &'static str {
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
pub(super) fn render_str(s: &str) -> String {
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

pub(super) fn deserialize_table(table: Table) -> Result<Config, ConfigError> {
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
            None => message
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
        None => what.into_owned(),
    };
    invalid(key, expected)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{invalid_key, load, unknown_key};
    use super::*;

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
    fn a_key_path_is_written_dotted_with_its_indexes_or_normalized_for_the_hints() {
        let segs = [
            Seg::Key("balancer".into()),
            Seg::Key("member".into()),
            Seg::Index(2),
            Seg::Key("url".into()),
        ];
        assert_eq!(dotted(&segs, false), "balancer.member[2].url");
        assert_eq!(dotted(&segs, true), "balancer.member[].url");
        assert!(hint(&dotted(&segs, true)).is_some());
        assert_eq!(
            lookup(template(), &segs, true).and_then(Value::as_str),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(lookup(template(), &segs, false), None);
    }

    #[test]
    fn a_long_value_is_shortened_to_eighty_characters_in_a_message() {
        let long = "x".repeat(200);
        let shown = render_str(&long);
        assert_eq!(shown.chars().count(), 80, "{shown}");
        assert!(
            shown.starts_with("\"xxx") && shown.ends_with("..."),
            "{shown}"
        );
        assert_eq!(render_str("short"), "\"short\"");
        let array = Value::Array(vec![Value::Integer(1), Value::String("a".into())]);
        assert_eq!(render(&array), "[1, \"a\"]");
    }
}
