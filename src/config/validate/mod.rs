//! The checks the types alone do not make: ranges, names and address formats, one file per
//! section, run in the order of the file's sections so the first error reported is the
//! first a reader of the file meets.

mod ajp;
mod balancer;
mod cluster;
mod membership;
mod node;
mod sessions;

use std::net::{Ipv4Addr, Ipv6Addr};

use super::diagnostics::render_str;
use super::{Config, ConfigError, invalid};

impl Config {
    /// Checks the ranges and formats that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), ConfigError> {
        cluster::check(&self.cluster)?;
        membership::check(&self.membership)?;
        node::check(&self.node)?;
        sessions::check(&self.sessions)?;
        balancer::check(&self.balancer, &self.sessions.cookie)?;
        ajp::check(&self.ajp)
    }
}

/// `value` within `min..=max`, or an error naming `key`; `unit` (with its leading space, or
/// empty) follows the bounds in the message.
fn check_range(key: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be between {min} and {max}{unit}, got {value}"),
        ))
    }
}

/// RFC 7230 `token` (also the RFC 6265 cookie-name): non-empty, `tchar` only.
pub(in crate::config) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A node name or member route: it follows the last `.` of a session id, so it has none.
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
pub(in crate::config) fn check_host_port(s: &str) -> Result<(), ()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_non_empty_and_of_tchars_only() {
        assert!(is_token("JSESSIONID"));
        assert!(is_token("X-Route_1.~"));
        for bad in ["", "a b", "a;b", "a:b", "é"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn host_port_takes_names_ipv4_and_bracketed_ipv6_with_a_port_from_1() {
        for good in ["10.0.0.2:4001", "node-2.example.com:1", "[::1]:65535"] {
            assert_eq!(check_host_port(good), Ok(()), "{good}");
        }
        for bad in [
            "::1:4001", "[::1]", "host", "-host:1", "host:0", "host:+1", "a..b:1",
        ] {
            assert_eq!(check_host_port(bad), Err(()), "{bad}");
        }
    }

    #[test]
    fn a_value_outside_its_range_names_the_key_the_bounds_and_the_value() {
        assert!(check_range("k", 5, 5, 5, "").is_ok());
        let text = check_range("a.b", 61, 1, 60, " seconds")
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "invalid value for `a.b`: must be between 1 and 60 seconds, got 61"
        );
    }
}
