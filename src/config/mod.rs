//! Configuration of a cluster node / balancer: TOML file, then overrides, then `validate()`.
//!
//! The order is fixed so that the command line always wins: one shared file can serve every
//! node, and `--set`/flags (applied in the order given, later wins) adjust a single node.
//! Every error is one line naming the dotted key and what was expected, because operators read
//! these in terminals and logs, and "invalid config" alone does not say what to fix.
//!
//! # Layout
//! - `schema`: the serde structs with `deny_unknown_fields`, their defaults and the
//!   enums' config strings; the template of every key that the other parts look keys up in.
//! - `overrides`: `--set`, `--member` and the dedicated flags, applied to the TOML table
//!   before it is deserialized, so a flag and a file line meet the same checks.
//! - `diagnostics`: turning TOML and serde errors into the one-line messages.
//! - `allow`: address ranges (CIDR) for `balancer.manager_allow`.
//! - `validate/`: the ranges and formats the types alone do not enforce, one file per section.
//!
//! The key file is only a path here: reading and checking it is the seal's business
//! (`ClusterKey::read_file`), so configuration stays free of cryptography.

mod allow;
mod diagnostics;
mod overrides;
mod schema;
mod store;
#[cfg(test)]
mod testing;
mod validate;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use allow::IpRange;
pub use overrides::{Override, OverrideValue};
pub use schema::{
    AjpConfig, BalancerConfig, BalancerMember, ClusterConfig, Config, LbMethod, MembershipConfig,
    NodeConfig, ReplicationMode, SessionsConfig, Sticky,
};
pub use store::{Auth, MEMCACHED_PORT, REDIS_PORT, ServerAddr, SessionStoreUrl};

/// File read by [`Config::load`] when no path is given (skipped when it does not exist).
pub const DEFAULT_FILE: &str = "./cluster.toml";

/// A configuration error. Every `Display` is a single line that names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (a missing [`DEFAULT_FILE`] is not an error).
    #[error("cannot read config file {}: {}", one_line(&path.display().to_string()), one_line(&source.to_string()))]
    Read {
        /// The file as given.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{}: {}", one_line(origin), one_line(message))]
    Syntax {
        /// Where the text came from: the file, or the `origin` given to
        /// [`Config::from_toml_str`].
        origin: String,
        /// Where (`line L, column C: `, when known) and what is wrong.
        message: String,
    },
    /// A key that no section has (in the file or a `--set`).
    #[error(
        "unknown config key `{}` (expected one of: {})",
        one_line(key),
        one_line(expected)
    )]
    UnknownKey {
        /// The dotted key as written.
        key: String,
        /// The valid keys at that place, comma-separated.
        expected: String,
    },
    /// A value of the wrong kind, out of its range or of a bad format.
    #[error("invalid value for `{}`: {}", one_line(key), one_line(expected))]
    Invalid {
        /// The dotted key, with an index for an array item (`balancer.member[0].url`).
        key: String,
        /// What was expected, and what was found.
        expected: String,
    },
    /// A `--set` argument without `=`, or an override key with an empty part.
    #[error("`--set {}` must be dotted.key=value", one_line(arg))]
    BadOverride {
        /// The argument as given.
        arg: String,
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
            None => {
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
        let mut table = diagnostics::parse_document(text, origin)?;
        let mut set_keys = BTreeSet::new();
        overrides::record_keys(&mut set_keys, "", &table);
        for ov in overrides {
            overrides::apply(&mut table, ov, &mut set_keys)?;
        }
        let mut config = diagnostics::deserialize_table(table)?;
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

    /// `membership.heartbeat_ms` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.membership.heartbeat_ms)
    }

    /// `membership.drop_ms` as a duration.
    pub fn drop_after(&self) -> Duration {
        Duration::from_millis(self.membership.drop_ms)
    }

    /// True when the dotted `key` (or a key below it, for a section) was explicitly present in
    /// the file or the overrides, as opposed to coming from the defaults.
    pub fn is_set(&self, key: &str) -> bool {
        self.set_keys.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{load, load_with};
    use super::*;

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
