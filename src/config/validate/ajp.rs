//! `[ajp]`: the connector needs a secret unless told otherwise (the lesson of Ghostcat,
//! CVE-2020-1938: an AJP port open without one lets anyone speak for the front end), and a
//! packet size the protocol allows.

use super::super::schema::AjpConfig;
use super::{ConfigError, check_range, invalid};

pub(super) fn check(ajp: &AjpConfig) -> Result<(), ConfigError> {
    if let Some(secret) = &ajp.secret {
        if secret.is_empty() || secret.len() > 1024 || secret.chars().any(char::is_control) {
            return Err(invalid(
                "ajp.secret",
                "must be 1 to 1024 bytes without control characters",
            ));
        }
    }
    if ajp.listen.is_some() && ajp.secret_required && ajp.secret.is_none() {
        return Err(invalid(
            "ajp.secret",
            "required when ajp.listen is set (as Tomcat's secretRequired): set the secret the front end sends (mod_proxy_ajp secret=, mod_jk worker.NAME.secret), or set ajp.secret_required = false",
        ));
    }
    check_range("ajp.packet_size", ajp.packet_size, 8192, 65536, " bytes")
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{invalid_key, load, load_with};

    #[test]
    fn the_connector_is_off_by_default_and_needs_a_secret_when_on() {
        let config = load("").unwrap();
        assert_eq!(config.ajp.listen, None);
        assert!(config.ajp.secret_required);
        assert_eq!(config.ajp.packet_size, 8192);
        let text = invalid_key(load("[ajp]\nlisten = \"127.0.0.1:8009\"\n"), "ajp.secret");
        assert!(text.contains("secret_required"), "{text}");
        let config = load("[ajp]\nlisten = \"127.0.0.1:8009\"\nsecret = \"s\"\n").unwrap();
        assert_eq!(config.ajp.secret.as_deref(), Some("s"));
        load_with("", &["ajp.listen=127.0.0.1:0", "ajp.secret_required=false"]).unwrap();
        // A secret without a listener is fine (a shared file for nodes with and without).
        load("[ajp]\nsecret = \"s\"\n").unwrap();
    }

    #[test]
    fn a_bad_secret_or_packet_size_names_its_key() {
        invalid_key(load("[ajp]\nsecret = \"\"\n"), "ajp.secret");
        invalid_key(load("[ajp]\nsecret = \"a\\nb\"\n"), "ajp.secret");
        invalid_key(
            load_with("", &[&format!("ajp.secret={}", "x".repeat(1025))]),
            "ajp.secret",
        );
        for bad in ["8191", "65537", "0"] {
            let text = invalid_key(
                load_with("", &[&format!("ajp.packet_size={bad}")]),
                "ajp.packet_size",
            );
            assert!(text.contains("8192 and 65536"), "{text}");
        }
        for good in ["8192", "65536"] {
            load_with("", &[&format!("ajp.packet_size={good}")]).unwrap();
        }
        invalid_key(load("[ajp]\nlisten = \"nowhere\"\n"), "ajp.listen");
    }

    #[test]
    fn the_secret_never_appears_in_debug_output() {
        let config = load("[ajp]\nsecret = \"hunter2\"\n").unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
