//! Limits of the process. The open file limit (RLIMIT_NOFILE) is raised at start from its
//! soft value to its hard one, as Go's runtime and nginx's `worker_rlimit_nofile` do: the
//! usual soft limit of 1024 is far below what a server with thousands of connections
//! needs, and only the hard limit is the administrator's choice.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use thiserror::Error;
use tracing::{debug, warn};

#[derive(Debug, Error)]
pub enum LimitError {
    #[error("cannot read the open file limit (RLIMIT_NOFILE): {0}")]
    Read(#[source] nix::Error),
    #[error("cannot raise the open file limit from {soft} to {hard}: {source}")]
    Raise {
        soft: u64,
        hard: u64,
        #[source]
        source: nix::Error,
    },
}

impl LimitError {
    /// The soft limit still in force, when it is known.
    pub fn soft(&self) -> Option<u64> {
        match self {
            LimitError::Read(_) => None,
            LimitError::Raise { soft, .. } => Some(*soft),
        }
    }
}

/// The open file limit after [`raise_open_files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit in force now.
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before, if it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft open file limit to the hard one.
pub fn raise_open_files() -> Result<OpenFiles, LimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LimitError::Read)?;
    if soft >= hard {
        return Ok(OpenFiles {
            soft,
            hard,
            raised_from: None,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| LimitError::Raise {
        soft,
        hard,
        source,
    })?;
    Ok(OpenFiles {
        soft: hard,
        hard,
        raised_from: Some(soft),
    })
}

/// [`raise_open_files`], with what happened in the log (a failure is a warning: the
/// process still runs, within the lower limit). The soft limit in force, when known.
pub fn raise_open_files_logged() -> Option<u64> {
    match raise_open_files() {
        Ok(files) => {
            if let Some(from) = files.raised_from {
                debug!(from, to = files.soft, "raised the open file limit");
            }
            Some(files.soft)
        }
        Err(e) => {
            warn!(error = %e, "the open file limit stays as it is");
            e.soft()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        // Raising the soft limit to the hard one is always allowed, and idempotent; the
        // test never lowers a limit.
        let files = raise_open_files().unwrap();
        assert_eq!(files.soft, files.hard);
        assert_eq!(raise_open_files().unwrap().raised_from, None);
    }
}
