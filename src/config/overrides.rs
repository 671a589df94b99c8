//! Overrides from the command line, applied to the TOML table before it is deserialized, so
//! a flag and a line of the file meet the same types, messages and checks. A `--set` value is
//! typed by the default of its key (see `typed_raw`), so `--set membership.ttl=2` needs no
//! TOML quoting and `--set node.name=n2` needs none either.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use toml::{Table, Value};

use super::diagnostics::{hint, key_segs, kind_hint, lookup, render_str};
use super::schema::template;
use super::{ConfigError, invalid};

/// One override: a dotted key and a raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The dotted key, e.g. `sessions.max_inactive_s` or `balancer.member`.
    pub key: String,
    /// The value and how it is to be read.
    pub value: OverrideValue,
}

/// The value of an [`Override`], by the flag it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideValue {
    /// Always set as a TOML string (from a dedicated flag such as `--name`).
    Text(String),
    /// From `--set`: typed by the default value of the key
    /// (see [`Config::from_toml_str`](super::Config::from_toml_str)).
    Raw(String),
    /// From `--member ROUTE=URL`: appends `{ route, url, loadfactor = 1 }` to the array at `key`.
    AppendMember {
        /// The member's route, as `balancer.member[].route`.
        route: String,
        /// The member's URL, as `balancer.member[].url`.
        url: String,
    },
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
    /// The route and URL themselves are checked by [`Config::validate`](super::Config::validate).
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

/// Records `prefix.key` for every key of `table`, recursing into sub-tables (not arrays).
pub(super) fn record_keys(set_keys: &mut BTreeSet<String>, prefix: &str, table: &Table) {
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
                None
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

/// Applies one override to the table, creating the sections along its key, and records the
/// keys it set for [`Config::is_set`](super::Config::is_set).
pub(super) fn apply(
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
        OverrideValue::AppendMember { .. } => None,
    };

    // Walk (creating as needed) the tables along the key.
    let mut cur = root;
    let mut template_table = Some(template());
    for (i, seg) in parents.iter().enumerate() {
        let prefix = segs[..=i].join(".");
        let template_child = template_table.and_then(|t| t.get(*seg));
        let blocked = match cur.get(*seg) {
            Some(existing) => !existing.is_table(),
            None => template_child.is_some_and(|v| !v.is_table()),
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
        (_, None) => {}
    }
    set_keys.insert(ov.key.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::testing::{DEFAULT_TOML, invalid_key, load, load_with, unknown_key};
    use super::super::{Config, ReplicationMode, Sticky};
    use super::*;

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
    fn an_unknown_key_via_set_is_named() {
        let text = unknown_key(
            load_with("", &["membership.heartbeat=5"]),
            "membership.heartbeat",
        );
        assert!(text.contains("drop_ms"), "{text}");
        unknown_key(load_with("", &["nodes.name=x"]), "nodes");
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
}
