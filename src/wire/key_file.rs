//! Reading the cluster key from the file `cluster.key_file` names. It lives beside the seal,
//! not in the configuration: what makes a key usable, and which texts are weak, is the seal's
//! knowledge, and the configuration only carries the path.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::seal::{ClusterKey, KeyError};

/// Why the key file gave no key. Each is one line naming `cluster.key_file`, so an operator
/// knows which setting to fix.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("cannot read the key file of `cluster.key_file` ({}): {}", one_line(&path.display().to_string()), one_line(&source.to_string()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid value for `cluster.key_file`: {source}")]
    Invalid { path: PathBuf, source: KeyError },
}

impl ClusterKey {
    /// The key of `cluster.key_file` when one is set; `None` leaves cluster traffic unsealed.
    pub fn read_file_if_set(path: Option<&Path>) -> Result<Option<ClusterKey>, KeyFileError> {
        path.map(ClusterKey::read_file).transpose()
    }

    /// The key in the file at `path` (relative to the current directory). Warns when the
    /// text is hand-chosen or other users may read the file: both still work, but both let
    /// someone else learn the key.
    pub fn read_file(path: &Path) -> Result<ClusterKey, KeyFileError> {
        let read = |source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        // One open: the permissions checked are those of the file read.
        let mut file = std::fs::File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.permissions().mode();
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read)?;
        let key = ClusterKey::from_text(&text).map_err(|source| KeyFileError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
        if !ClusterKey::is_generated(&text) {
            tracing::warn!(path = %path.display(), "the cluster key is a hand-chosen text: whoever records cluster traffic can test guesses offline; a key from `deltacast keygen` cannot be guessed");
        }
        if readable_by_others(mode) {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the cluster key file can be read by other users; chmod 600 it");
        }
        Ok(key)
    }
}

/// Whether the group or others have any permission on a file of this `mode`.
fn readable_by_others(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Escapes control characters (newlines included) so a message stays on one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of this test process, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Dir {
            let path = std::env::temp_dir()
                .join(format!("deltacast-key-file-{label}-{}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_missing_key_file_is_one_line_naming_cluster_key_file_and_the_path() {
        let dir = Dir::new("missing");
        let path = dir.0.join("no\nsuch.key");
        let err = ClusterKey::read_file(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Read { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read the key file of `cluster.key_file` ("),
            "{text}"
        );
        assert!(
            text.contains("no\\nsuch.key") && !text.contains('\n'),
            "{text}"
        );
    }

    #[test]
    fn a_short_key_names_cluster_key_file_and_the_characters_needed() {
        let dir = Dir::new("short");
        let path = dir.write("short.key", "  abcdefghijklmno  \n");
        let err = ClusterKey::read_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `cluster.key_file`: the key has 15 characters; at least 16 are needed (make one with `deltacast keygen`)"
        );
    }

    #[test]
    fn the_key_of_a_file_is_the_key_of_its_trimmed_text() {
        let dir = Dir::new("good");
        let text = ClusterKey::generate_text();
        let path = dir.write("good.key", &format!("\n {text} \n\n"));
        let from_file = ClusterKey::read_file(&path).unwrap();
        let mut a = super::super::seal::DatagramSeal::new(from_file, 1);
        let mut b = super::super::seal::DatagramSeal::new(ClusterKey::from_text(&text).unwrap(), 2);
        assert_eq!(b.open(&a.seal(b"hi")).unwrap(), (1, b"hi".to_vec()));
    }

    #[test]
    fn a_file_is_readable_by_others_when_group_or_other_has_any_bit() {
        assert!(!readable_by_others(0o100600));
        assert!(!readable_by_others(0o400));
        assert!(readable_by_others(0o640));
        assert!(readable_by_others(0o604));
        assert!(readable_by_others(0o601));
    }
}
