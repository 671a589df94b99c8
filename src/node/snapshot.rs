//! `sessions.snapshot_file`: every live session written to a file on graceful shutdown and
//! merged back at start, so sessions outlive a stop of the whole cluster.
//!
//! Writing is atomic (a temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a crash mid-write leaves the previous file or the new one, never half of
//! one; the file holds session data and is created with mode 0600. At start the file is
//! merged through the store's usual versioned merge (the state transfer's sessions merge
//! the same way, whichever comes first), expired sessions left out, and then **removed**:
//! the sessions live in memory and on the members from then on, and a file kept would
//! bring back, after a later `kill -9` (which writes nothing), sessions that were
//! invalidated or changed since. A file that does not decode is renamed to
//! `<file>.damaged` and the node starts without it; a file of another cluster is left
//! alone and not read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use crate::session::{Delta, SessionStore, TOMBSTONE_TTL_MS};
use crate::wire::{SnapshotError, SnapshotWriter, decode_snapshot};

/// Why the snapshot file could not be written (or, at start, could not be written later).
#[derive(Debug, Error)]
#[error("sessions.snapshot_file: cannot {what} {path}: {source}")]
pub struct SnapshotFileError {
    /// What was being done: `create`, `write`, `sync`, `rename to`, ...
    pub what: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// What the operating system said.
    pub source: io::Error,
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotFileError {
    let path = path.to_path_buf();
    move |source| SnapshotFileError { what, path, source }
}

/// What writing the file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Live sessions written.
    pub sessions: usize,
    /// Tombstones written.
    pub tombstones: usize,
    /// The file's size.
    pub bytes: usize,
    /// How long encoding and writing took, in milliseconds.
    pub took_ms: u128,
}

/// What reading the file at start did.
#[derive(Debug, PartialEq, Eq)]
pub enum Restore {
    /// There was no file: the node starts with what the state transfer brings.
    NoFile,
    /// The file was merged into the store and removed.
    Restored {
        /// Sessions merged in.
        sessions: usize,
        /// Sessions of the file that had expired meanwhile, left out.
        expired: usize,
        /// Tombstones merged in (still within their time).
        tombstones: usize,
        /// The node that wrote the file.
        written_by: String,
        /// How old the file was, in milliseconds.
        age_ms: u64,
        /// How long reading and merging took, in milliseconds.
        took_ms: u128,
        /// Why the read file could not be removed, if it could not: it would be read
        /// again at the next start.
        not_removed: Option<String>,
    },
    /// The file does not decode: renamed to `moved_to` (when that worked), not read.
    Damaged {
        /// Why it does not decode.
        error: SnapshotError,
        /// Where it was moved to.
        moved_to: Option<PathBuf>,
    },
    /// The file is of another cluster: left where it is, not read.
    ForeignCluster {
        /// The cluster it names.
        cluster: String,
    },
    /// The file exists but could not be read.
    Unreadable {
        /// What the operating system said.
        error: String,
    },
}

/// The temporary file a write goes through, beside the file (a rename is atomic only
/// within one file system).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The directory the file is in (`.` for a bare file name).
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Checks at start that the file can be written at shutdown (its directory exists and
/// takes a new file), so that a wrong path fails the start rather than losing the
/// sessions at the stop.
pub fn check_writable(path: &Path) -> Result<(), SnapshotFileError> {
    let temp = temp_path(path);
    let _ = fs::remove_file(&temp);
    let file = create_private(&temp)?;
    drop(file);
    fs::remove_file(&temp).map_err(io_error("remove", &temp))
}

fn create_private(path: &Path) -> Result<File, SnapshotFileError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))
}

/// Writes every live session and tombstone of `store` to `path`, atomically.
pub fn write(
    path: &Path,
    store: &SessionStore,
    cluster: &str,
    node: &str,
    now_ms: u64,
) -> Result<Written, SnapshotFileError> {
    let started = Instant::now();
    let mut writer = SnapshotWriter::new(cluster, node, now_ms);
    for shard in 0..store.shard_count() {
        for session in store.export_shard(shard) {
            writer.push_session(session);
        }
        for (id, ended_ms) in store.export_shard_tombstones(shard) {
            writer.push_tombstone(id, ended_ms);
        }
    }
    let (sessions, tombstones) = (writer.sessions(), writer.tombstones());
    let bytes = writer.finish();
    let temp = temp_path(path);
    let _ = fs::remove_file(&temp);
    let written = write_file(&temp, &bytes).and_then(|()| {
        fs::rename(&temp, path).map_err(io_error("rename the temporary file to", path))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_directory(path)?;
    Ok(Written {
        sessions,
        tombstones,
        bytes: bytes.len(),
        took_ms: started.elapsed().as_millis(),
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotFileError> {
    let mut file = create_private(path)?;
    file.write_all(bytes).map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("sync", path))
}

/// Makes a rename or removal in the file's directory durable.
fn sync_directory(path: &Path) -> Result<(), SnapshotFileError> {
    let dir = directory(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync the directory", dir))
}

/// Reads `path` and merges its sessions into `store` (sessions that expired by `now_ms`
/// and tombstones past their time left out), then removes it; see [`Restore`].
/// `default_max_inactive_s` is the lifetime of a session whose file entry carries none.
pub fn restore(
    path: &Path,
    store: &SessionStore,
    cluster: &str,
    now_ms: u64,
    default_max_inactive_s: u32,
) -> Restore {
    let started = Instant::now();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Restore::NoFile,
        Err(e) => {
            return Restore::Unreadable {
                error: e.to_string(),
            };
        }
    };
    let snapshot = match decode_snapshot(&bytes) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            let damaged = path.with_file_name(format!(
                "{}.damaged",
                path.file_name()
                    .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy())
            ));
            let moved_to = fs::rename(path, &damaged).ok().map(|()| damaged);
            let _ = sync_directory(path);
            return Restore::Damaged { error, moved_to };
        }
    };
    if snapshot.cluster != cluster {
        return Restore::ForeignCluster {
            cluster: snapshot.cluster,
        };
    }
    let mut sessions = 0;
    let mut expired = 0;
    for session in &snapshot.sessions {
        if expired_by(session, now_ms, default_max_inactive_s) {
            expired += 1;
            continue;
        }
        store.apply(session, now_ms);
        sessions += 1;
    }
    let mut tombstones = 0;
    for (id, ended_ms) in snapshot.tombstones {
        if ended_ms.saturating_add(TOMBSTONE_TTL_MS) <= now_ms {
            continue;
        }
        let mut end = Delta::new(id, 0, 0);
        end.invalidated = true;
        // Applied at the instant it ended, so it keeps only the rest of its time.
        store.apply(&end, ended_ms.min(now_ms));
        tombstones += 1;
    }
    let not_removed = fs::remove_file(path)
        .map_err(|e| e.to_string())
        .and_then(|()| sync_directory(path).map_err(|e| e.to_string()))
        .err();
    Restore::Restored {
        sessions,
        expired,
        tombstones,
        written_by: snapshot.node,
        age_ms: now_ms.saturating_sub(snapshot.written_ms),
        took_ms: started.elapsed().as_millis(),
        not_removed,
    }
}

/// Whether a session of the file can no longer be used at `now_ms` (a request would not
/// find it live).
fn expired_by(session: &Delta, now_ms: u64, default_max_inactive_s: u32) -> bool {
    let secs = session
        .max_inactive
        .map_or(default_max_inactive_s, |(secs, _)| secs);
    now_ms
        > session
            .last_access_ms
            .saturating_add(u64::from(secs) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeId;
    use crate::session::{Limits, SessionId};
    use bytes::Bytes;
    use std::os::unix::fs::PermissionsExt as _;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "deltacast-snapshot-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn store(node: u64) -> SessionStore {
        SessionStore::new(NodeId::from_u64(node), Limits::default(), 1800)
    }

    /// A session with `user` and `cart` set at `now_ms`.
    fn session(store: &SessionStore, now_ms: u64, user: &str) -> SessionId {
        store
            .update_or_create(None, now_ms, |s| {
                s.set("user", Bytes::copy_from_slice(user.as_bytes()))?;
                s.set("cart", Bytes::from(vec![b'x'; 200]))
            })
            .unwrap()
            .id
    }

    fn value(store: &SessionStore, id: SessionId, now_ms: u64, name: &str) -> Option<Bytes> {
        store
            .update(id, now_ms, |s| s.get(name).cloned())
            .and_then(|u| u.value)
    }

    #[test]
    fn a_written_store_is_restored_whole_on_another_store_and_the_file_removed() {
        let dir = TempDir::new("whole");
        let path = dir.0.join("sessions.snapshot");
        let a = store(1);
        let ids: Vec<SessionId> = (0..50)
            .map(|i| session(&a, 1_000, &format!("u{i}")))
            .collect();
        let ended = session(&a, 1_000, "gone");
        a.invalidate(ended, 1_500);
        let written = write(&path, &a, "c1", "n1", 2_000).unwrap();
        assert_eq!((written.sessions, written.tombstones), (50, 1));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let b = store(2);
        let restored = restore(&path, &b, "c1", 3_000, 1800);
        let Restore::Restored {
            sessions,
            expired,
            tombstones,
            written_by,
            age_ms,
            not_removed,
            ..
        } = restored
        else {
            panic!("{restored:?}");
        };
        assert_eq!((sessions, expired, tombstones), (50, 0, 1));
        assert_eq!(
            (written_by.as_str(), age_ms, not_removed),
            ("n1", 1_000, None)
        );
        assert!(!path.exists(), "a restored file is removed");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                value(&b, *id, 3_001, "user"),
                Some(Bytes::from(format!("u{i}")))
            );
        }
        // The tombstone holds: an older copy of the ended session does not come back.
        assert!(!b.contains(ended));
        let mut old = Delta::new(ended, 1_000, 1_000);
        old.full = true;
        b.apply(&old, 3_002);
        assert!(
            !b.contains(ended),
            "a late copy is absorbed by the tombstone"
        );
        assert_eq!(restore(&path, &b, "c1", 3_003, 1800), Restore::NoFile);
    }

    #[test]
    fn the_restore_merges_with_newer_state_through_the_versions() {
        let dir = TempDir::new("merge");
        let path = dir.0.join("s");
        let a = store(1);
        let id = session(&a, 1_000, "old");
        write(&path, &a, "c1", "n1", 1_100).unwrap();
        // Meanwhile the cluster (here: b, from a's delta) moved on.
        let b = store(2);
        for d in a.export(&[id]) {
            b.apply(&d, 1_200);
        }
        let newer = b
            .update(id, 1_300, |s| s.set("user", Bytes::from_static(b"new")))
            .unwrap();
        assert!(newer.value.is_ok() && newer.delta.is_some());
        assert!(matches!(
            restore(&path, &b, "c1", 1_400, 1800),
            Restore::Restored { sessions: 1, .. }
        ));
        assert_eq!(
            value(&b, id, 1_500, "user"),
            Some(Bytes::from_static(b"new"))
        );
    }

    #[test]
    fn expired_sessions_and_old_tombstones_are_left_out() {
        let dir = TempDir::new("expired");
        let path = dir.0.join("s");
        let a = store(1);
        let old = session(&a, 1_000, "old");
        let ended = session(&a, 1_000, "ended");
        a.invalidate(ended, 1_000);
        let fresh = session(&a, 1_700_000, "fresh");
        write(&path, &a, "c1", "n1", 1_700_000).unwrap();
        let b = store(2);
        // 1800 s after the old one's last access, 10 minutes after the tombstone.
        let now = 1_000 + 1_800_000 + 1;
        let restored = restore(&path, &b, "c1", now, 1800);
        assert!(
            matches!(
                restored,
                Restore::Restored {
                    sessions: 1,
                    expired: 1,
                    tombstones: 0,
                    ..
                }
            ),
            "{restored:?}"
        );
        assert!(!b.contains(old));
        assert!(b.contains(fresh));
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_nothing_is_restored() {
        let dir = TempDir::new("damaged");
        let path = dir.0.join("s");
        let a = store(1);
        session(&a, 1_000, "x");
        write(&path, &a, "c1", "n1", 1_100).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let b = store(2);
        let restored = restore(&path, &b, "c1", 1_200, 1800);
        assert_eq!(
            restored,
            Restore::Damaged {
                error: SnapshotError::Checksum,
                moved_to: Some(dir.0.join("s.damaged")),
            }
        );
        assert!(b.is_empty());
        assert!(!path.exists());
        assert_eq!(restore(&path, &b, "c1", 1_200, 1800), Restore::NoFile);
    }

    #[test]
    fn a_truncated_file_is_damaged_and_a_foreign_one_is_left_alone() {
        let dir = TempDir::new("cut");
        let path = dir.0.join("s");
        let a = store(1);
        session(&a, 1_000, "x");
        write(&path, &a, "c1", "n1", 1_100).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let b = store(2);
        assert!(matches!(
            restore(&path, &b, "c1", 1_200, 1800),
            Restore::Damaged {
                error: SnapshotError::Truncated { .. },
                ..
            }
        ));
        write(&path, &a, "other", "n1", 1_100).unwrap();
        assert_eq!(
            restore(&path, &b, "c1", 1_200, 1800),
            Restore::ForeignCluster {
                cluster: "other".into()
            }
        );
        assert!(
            path.exists(),
            "another cluster's file is not ours to remove"
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = TempDir::new("replace");
        let path = dir.0.join("s");
        fs::write(&path, b"previous").unwrap();
        let a = store(1);
        session(&a, 1_000, "x");
        write(&path, &a, "c1", "n1", 1_100).unwrap();
        let names: Vec<String> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["s"]);
        assert!(decode_snapshot(&fs::read(&path).unwrap()).is_ok());
    }

    #[test]
    fn a_missing_directory_fails_the_start_check() {
        let dir = TempDir::new("missing");
        let err = check_writable(&dir.0.join("no/such/dir/s")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sessions.snapshot_file: cannot create"),
            "{err}"
        );
        check_writable(&dir.0.join("s")).unwrap();
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
    }
}
