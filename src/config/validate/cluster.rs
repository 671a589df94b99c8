//! `[cluster]`: a name every member compares, and an optional key file path (its contents
//! are the seal's to check, when the node starts).

use super::super::schema::ClusterConfig;
use super::{ConfigError, invalid, render_str};

pub(super) fn check(cluster: &ClusterConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::{invalid_key, load, load_with};

    #[test]
    fn a_bad_cluster_name_or_an_empty_key_file_is_rejected() {
        invalid_key(load("[cluster]\nname = \"\"\n"), "cluster.name");
        invalid_key(load("[cluster]\nname = \"  \"\n"), "cluster.name");
        let text = invalid_key(
            load_with("", &[&format!("cluster.name={}", "c".repeat(256))]),
            "cluster.name",
        );
        assert!(text.contains("255 bytes"), "{text}");
        invalid_key(load("[cluster]\nname = \"a\\tb\"\n"), "cluster.name");
        invalid_key(load("[cluster]\nkey_file = \"\"\n"), "cluster.key_file");
        load_with("", &[&format!("cluster.name={}", "c".repeat(255))]).unwrap();
    }

    #[test]
    fn a_key_file_is_only_a_path_here_and_need_not_exist_to_load() {
        let config = load("[cluster]\nkey_file = \"/nonexistent/cluster.key\"\n").unwrap();
        assert!(config.cluster.key_file.is_some());
    }
}
