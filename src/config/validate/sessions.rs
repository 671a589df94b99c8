//! `[sessions]`: a cookie name browsers accept, and bounds on lifetimes and sizes so one
//! client cannot make a node hold without limit.

use super::super::schema::SessionsConfig;
use super::{ConfigError, check_range, invalid, is_token, render_str};

pub(super) fn check(s: &SessionsConfig) -> Result<(), ConfigError> {
    if !is_token(&s.cookie) {
        return Err(invalid(
            "sessions.cookie",
            format!(
                "must be a non-empty cookie name token (letters, digits and !#$%&'*+-.^_`|~), got {}",
                render_str(&s.cookie)
            ),
        ));
    }
    check_range(
        "sessions.max_inactive_s",
        s.max_inactive_s,
        1,
        31_536_000,
        " seconds",
    )?;
    check_range("sessions.ack_timeout_ms", s.ack_timeout_ms, 10, 60_000, "")?;
    check_range("sessions.max_sessions", s.max_sessions, 1, 100_000_000, "")?;
    check_range("sessions.max_attributes", s.max_attributes, 1, 100_000, "")?;
    check_range(
        "sessions.max_value_bytes",
        s.max_value_bytes,
        1,
        8 * 1024 * 1024,
        "",
    )?;
    check_range("sessions.max_bytes", s.max_bytes, 1024, 1 << 40, " bytes")?;
    if let Some(path) = &s.snapshot_file {
        let text = path.to_string_lossy();
        let names_a_file = !text.ends_with('/')
            && path
                .file_name()
                .is_some_and(|name| !name.is_empty() && name != "." && name != "..");
        if !names_a_file {
            return Err(invalid(
                "sessions.snapshot_file",
                format!(
                    "must name a file like \"sessions.snapshot\" or \"/var/lib/deltacast/sessions\", got {}",
                    render_str(&text)
                ),
            ));
        }
        if s.store.is_session_server() {
            return Err(invalid(
                "sessions.snapshot_file",
                format!(
                    "is for the replicated store only: with sessions.store = {} the sessions outlive the nodes in the server; remove sessions.snapshot_file",
                    render_str(&s.store.to_string())
                ),
            ));
        }
    }
    check_range(
        "sessions.store_timeout_ms",
        s.store_timeout_ms,
        10,
        60_000,
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{invalid_key, load, load_with};

    #[test]
    fn a_bad_cookie_name_is_rejected() {
        invalid_key(load("[sessions]\ncookie = \"\"\n"), "sessions.cookie");
        invalid_key(load("[sessions]\ncookie = \"a;b\"\n"), "sessions.cookie");
        let text = invalid_key(load("[sessions]\ncookie = \"a b\"\n"), "sessions.cookie");
        assert!(text.contains("\"a b\""), "{text}");
        load("[sessions]\ncookie = \"SID\"\n").unwrap();
    }

    #[test]
    fn out_of_range_session_numbers_name_the_key() {
        invalid_key(
            load("[sessions]\nmax_inactive_s = 0\n"),
            "sessions.max_inactive_s",
        );
        let text = invalid_key(
            load("[sessions]\nmax_inactive_s = 31536001\n"),
            "sessions.max_inactive_s",
        );
        assert!(text.contains("between 1 and 31536000 seconds"), "{text}");
        let cases: [(&str, u64, u64); 6] = [
            ("store_timeout_ms", 10, 60_000),
            ("ack_timeout_ms", 10, 60_000),
            ("max_sessions", 1, 100_000_000),
            ("max_attributes", 1, 100_000),
            ("max_value_bytes", 1, 8 * 1024 * 1024),
            ("max_bytes", 1024, 1 << 40),
        ];
        for (name, min, max) in cases {
            let key = format!("sessions.{name}");
            for bad in [min - 1, max + 1] {
                let text = invalid_key(load_with("", &[&format!("{key}={bad}")]), &key);
                assert!(text.contains(&format!("got {bad}")), "{text}");
            }
            for good in [min, max] {
                load_with("", &[&format!("{key}={good}")]).unwrap();
            }
        }
    }

    #[test]
    fn a_snapshot_file_must_name_a_file() {
        for bad in ["", "/", "/var/lib/", ".", ".."] {
            let text = invalid_key(
                load_with("", &[&format!("sessions.snapshot_file={bad}")]),
                "sessions.snapshot_file",
            );
            assert!(text.contains("must name a file"), "{text}");
        }
        let config = load("[sessions]\nsnapshot_file = \"/var/lib/deltacast/sessions\"\n").unwrap();
        assert_eq!(
            config.sessions.snapshot_file.as_deref(),
            Some(std::path::Path::new("/var/lib/deltacast/sessions"))
        );
        invalid_key(
            load("[sessions]\nsnapshot_file = 3\n"),
            "sessions.snapshot_file",
        );
        let text = invalid_key(
            load("[sessions]\nsnapshot_file = \"s\"\nstore = \"redis://127.0.0.1:6379\"\n"),
            "sessions.snapshot_file",
        );
        assert!(text.contains("replicated store only"), "{text}");
    }

    #[test]
    fn the_session_store_is_a_url_or_replicated() {
        use crate::config::SessionStoreUrl;
        let c = load("[sessions]\nstore = \"redis://127.0.0.1:6379/0\"\n").unwrap();
        assert_eq!(c.sessions.store.kind(), "redis");
        let c = load_with(
            "",
            &["sessions.store=redis+cluster://127.0.0.1:7000,127.0.0.1:7001"],
        )
        .unwrap();
        assert!(matches!(
            c.sessions.store,
            SessionStoreUrl::RedisCluster { ref seeds, .. } if seeds.len() == 2
        ));
        let text = invalid_key(
            load("[sessions]\nstore = \"mongodb://x:1\"\n"),
            "sessions.store",
        );
        assert!(text.contains("redis://HOST:PORT"), "{text}");
        invalid_key(
            load_with("", &["sessions.store=redis://:1"]),
            "sessions.store",
        );
        let text = invalid_key(
            load_with(
                "",
                &[
                    "sessions.store=redis://127.0.0.1:6379",
                    "sessions.snapshot_file=s.snap",
                ],
            ),
            "sessions.snapshot_file",
        );
        assert!(text.contains("replicated store only"), "{text}");
    }
}
