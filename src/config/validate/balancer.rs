//! `[balancer]`: the sticky header must be a header name, the sticky cookie a cookie name
//! other than the session cookie, the limits bounded, and every
//! static member a plain `http://host:port` with a route of its own, since a route names
//! exactly one member.

use std::collections::BTreeSet;

use super::super::schema::{BalancerConfig, Sticky};
use super::render_str;
use super::{ConfigError, check_host_port, check_range, check_route_name, invalid, is_token};

/// `session_cookie`: `sessions.cookie`, which the balancer's own cookie must not replace.
pub(super) fn check(b: &BalancerConfig, session_cookie: &str) -> Result<(), ConfigError> {
    if let Sticky::Cookie(name) = &b.sticky {
        if !is_token(name) {
            return Err(invalid(
                "balancer.sticky",
                format!(
                    "cookie:NAME needs NAME to be a cookie name token, got {}",
                    render_str(&b.sticky.to_string())
                ),
            ));
        }
        if name == session_cookie {
            return Err(invalid(
                "balancer.sticky",
                format!(
                    "cookie:{name} would replace the session cookie (sessions.cookie); name the balancer's own cookie, e.g. cookie:ROUTEID, or use \"route\""
                ),
            ));
        }
    }
    if matches!(&b.sticky, Sticky::Header(name) if !is_token(name)) {
        return Err(invalid(
            "balancer.sticky",
            format!(
                "header:NAME needs NAME to be an HTTP header name token, got {}",
                render_str(&b.sticky.to_string())
            ),
        ));
    }
    check_range(
        "balancer.max_connections",
        b.max_connections,
        1,
        1_000_000,
        "",
    )?;
    check_range("balancer.timeout_s", b.timeout_s, 1, 3600, " seconds")?;
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
        check_range(
            &format!("balancer.member[{i}].loadfactor"),
            member.loadfactor.into(),
            1,
            100,
            "",
        )?;
    }
    Ok(())
}

/// Only `http://host:port[/]`: a path, query or user part would be dropped silently when
/// requests are forwarded, so it is refused instead.
fn check_member_url(url: &str) -> Result<(), ()> {
    let rest = url.strip_prefix("http://").ok_or(())?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(());
    }
    check_host_port(rest)
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{invalid_key, load, load_with};
    use super::super::super::{Config, Sticky};

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
    fn a_sticky_cookie_needs_a_cookie_name_other_than_the_session_cookie() {
        let config = load("[balancer]\nsticky = \"cookie:ROUTEID\"\n").unwrap();
        assert_eq!(config.balancer.sticky, Sticky::Cookie("ROUTEID".into()));
        let config = load_with("", &["balancer.sticky=cookie:ROUTEID"]).unwrap();
        assert_eq!(config.balancer.sticky, Sticky::Cookie("ROUTEID".into()));
        for bad in ["cookie:", "cookie:a b", "cookie:a=b"] {
            let text = invalid_key(
                load(&format!("[balancer]\nsticky = \"{bad}\"\n")),
                "balancer.sticky",
            );
            assert!(text.contains("cookie"), "{text}");
        }
        let text = invalid_key(
            load("[balancer]\nsticky = \"cookie:JSESSIONID\"\n"),
            "balancer.sticky",
        );
        assert!(text.contains("session cookie"), "{text}");
        let text = invalid_key(
            load("[sessions]\ncookie = \"SID\"\n[balancer]\nsticky = \"cookie:SID\"\n"),
            "balancer.sticky",
        );
        assert!(text.contains("sessions.cookie"), "{text}");
        let mut config = Config::default();
        config.balancer.sticky = Sticky::Cookie("a;b".into());
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
    fn manager_allow_takes_ranges_and_bare_addresses_and_names_a_bad_one() {
        let config =
            load("[balancer]\nmanager_allow = [\"10.0.0.0/8\", \"192.168.1.5\"]\n").unwrap();
        let allow: Vec<String> = config
            .balancer
            .manager_allow
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(allow, ["10.0.0.0/8", "192.168.1.5/32"]);
        let config = load_with("", &["balancer.manager_allow=10.0.0.0/8, ::1"]).unwrap();
        assert_eq!(config.balancer.manager_allow.len(), 2);
        let config = load("[balancer]\nmanager_allow = []\n").unwrap();
        assert!(config.balancer.manager_allow.is_empty());
        let text = invalid_key(
            load("[balancer]\nmanager_allow = [\"10.0.0.0/33\"]\n"),
            "balancer.manager_allow[0]",
        );
        assert!(text.contains("10.0.0.0/33"), "{text}");
        invalid_key(
            load_with("", &["balancer.manager_allow=localhost"]),
            "balancer.manager_allow[0]",
        );
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
}
