//! The built-in HTTP balancer, in the style of Apache mod_proxy_balancer. The folder, from
//! the inside out (each part uses only those above it in this list):
//!
//! - [`choice`]: which member, and whether it may take requests — the pure lbmethods and
//!   stickiness, health with hysteresis, the members and their figures;
//! - [`rules`]: the one rulebook of a proxied request — the fields that cross, the route a
//!   request sticks to, the attempts over the members (a pure stepper), the one-line
//!   answers; pure;
//! - [`net`]: sockets below HTTP — the listeners, client sockets, the connection limit;
//! - [`http`]: the HTTP handling — the fast path over raw sockets and the hyper path, both
//!   driven by the rulebook, and the connections to the members;
//! - [`worker`]: the workers, one thread and runtime per core, that accept connections and
//!   hand them to the HTTP handling;
//! - [`discovery`]: members learnt from the heartbeats, which the balancer listens to as
//!   an observer (it never sends one);
//! - this module: [`run`], which puts them together.
//!
//! Members are static (`[[balancer.member]]`) and/or discovered.

pub mod choice;
pub mod discovery;
pub mod http;
pub mod net;
pub mod rules;
#[cfg(test)]
mod testing;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::limits;
use crate::shutdown::Shutdown;

use choice::registry::Registry;
use discovery::DiscoveryError;
use http::timeout::MemberTimeout;
use net::limit::ConnectionLimit;
use net::listener::bind_group;
use rules::sticky;
use worker::{DRAIN_GRACE, Shared, WorkerError, Workers};

pub use choice::select::{Candidate, Selector, Stickiness};

#[derive(Debug, Error)]
pub enum BalancerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// Runs the balancer until `shutdown` is triggered.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), BalancerError> {
    run_reporting(config, shutdown, |_| {}).await
}

/// Like [`run`]; `listening` is told the address bound (for port 0, the port the kernel
/// picked) once the balancer serves.
pub async fn run_reporting(
    config: Config,
    shutdown: Shutdown,
    listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), BalancerError> {
    config.validate()?;
    let b = &config.balancer;
    let open_files = limits::raise_open_files_logged();
    let max_connections = match choose_max_connections(
        b.max_connections,
        config.is_set("balancer.max_connections"),
        open_files,
    ) {
        MaxConnections::Fits(max) => max,
        MaxConnections::SetAboveFiles {
            max,
            needed,
            open_files,
        } => {
            warn!(
                max_connections = max,
                needed,
                open_files,
                "the open file limit is below what balancer.max_connections may need (each client connection needs a member connection too); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower balancer.max_connections"
            );
            max
        }
        MaxConnections::Lowered { max, open_files } => {
            info!(
                max_connections = max,
                open_files,
                "balancer.max_connections is not set and the open file limit cannot hold the default; using what it can"
            );
            max
        }
    };
    let count = worker::count();
    let listeners = bind_group(b.listen, count).map_err(|source| BalancerError::Bind {
        what: "balancer",
        addr: b.listen.to_string(),
        source,
    })?;
    let listen = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(b.listen);
    let registry = Arc::new(Registry::new(b.lbmethod, &b.member));
    let stop = CancellationToken::new();
    if b.discover {
        discovery::start(&config, registry.clone(), &shutdown, stop.clone())?;
    } else if b.member.is_empty() {
        warn!(
            "balancer.discover is false and no [[balancer.member]] is configured: every request will get 503"
        );
    }
    let shared = Arc::new(Shared {
        registry,
        limit: Arc::new(ConnectionLimit::new(
            usize::try_from(max_connections).unwrap_or(usize::MAX),
        )),
        timeout: Arc::new(MemberTimeout::new(Duration::from_secs(b.timeout_s))),
        sticky: sticky::Rule {
            sticky: b.sticky.clone(),
            cookie: config.sessions.cookie.clone(),
        },
        manager: Arc::new(http::manager::Guard::new(b.manager_allow.clone())),
        figures: Arc::new(http::figures::Figures::new(count)),
    });
    let workers = match Workers::start(listeners, &shared, &shutdown) {
        Ok(workers) => workers,
        Err(e) => {
            stop.cancel();
            return Err(e.into());
        }
    };
    listening(listen);
    info!(
        listen = %listen,
        lbmethod = %b.lbmethod,
        sticky = %b.sticky,
        discover = b.discover,
        members = b.member.len(),
        max_connections,
        timeout_s = b.timeout_s,
        open_files,
        workers = count,
        "balancer started"
    );
    shutdown.triggered().await;
    info!("balancer shutting down");
    workers.join().await;
    stop.cancel();
    shutdown.drain(DRAIN_GRACE).await;
    info!("balancer stopped");
    Ok(())
}

/// Open files the balancer may need with `max_connections` client connections: each has
/// a connection to a member too, and the process has some of its own (listeners, worker
/// runtimes, the multicast socket, the log).
pub fn open_files_needed(max_connections: u64) -> u64 {
    max_connections.saturating_mul(2).saturating_add(64)
}

/// Whether an open file limit of `soft` is short of what `max_connections` may need: the
/// balancer then says so at start.
pub fn open_files_short(max_connections: u64, soft: u64) -> bool {
    open_files_needed(max_connections) > soft
}

/// The client connection limit in force, given the configured one (`set`: by the user, not
/// the default) and the soft open file limit once raised (None when unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxConnections {
    /// The configured limit: the open files can hold it, or their limit is unknown.
    Fits(u64),
    /// The user's limit, kept although the open files may run out first (said at start).
    SetAboveFiles {
        max: u64,
        needed: u64,
        open_files: u64,
    },
    /// The default does not fit and the user chose none: as many as the open files allow
    /// (as HAProxy derives its `maxconn` from the file limit when none is set).
    Lowered { max: u64, open_files: u64 },
}

pub fn choose_max_connections(
    configured: u64,
    set: bool,
    open_files: Option<u64>,
) -> MaxConnections {
    match open_files {
        Some(soft) if open_files_short(configured, soft) => {
            if set {
                MaxConnections::SetAboveFiles {
                    max: configured,
                    needed: open_files_needed(configured),
                    open_files: soft,
                }
            } else {
                MaxConnections::Lowered {
                    max: (soft.saturating_sub(open_files_needed(0)) / 2).max(1),
                    open_files: soft,
                }
            }
        }
        _ => MaxConnections::Fits(configured),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_short_when_it_cannot_hold_two_files_per_connection() {
        assert_eq!(open_files_needed(10_000), 20_064);
        assert!(open_files_short(10_000, 1024), "the usual soft limit");
        assert!(open_files_short(10_000, 20_063));
        assert!(!open_files_short(10_000, 20_064));
        assert!(!open_files_short(10_000, 1_048_576));
        assert!(!open_files_short(480, 1024));
        assert!(open_files_short(481, 1024));
        assert!(!open_files_short(1_000_000, u64::MAX), "RLIM_INFINITY");
        assert_eq!(open_files_needed(u64::MAX), u64::MAX);
    }

    #[test]
    fn an_unset_connection_limit_is_lowered_to_what_the_open_files_hold_and_a_set_one_is_kept() {
        use MaxConnections::*;
        assert_eq!(choose_max_connections(10_000, false, None), Fits(10_000));
        assert_eq!(
            choose_max_connections(10_000, false, Some(1_048_576)),
            Fits(10_000)
        );
        assert_eq!(
            choose_max_connections(10_000, true, Some(20_064)),
            Fits(10_000)
        );
        let lowered = choose_max_connections(10_000, false, Some(20_000));
        assert_eq!(
            lowered,
            Lowered {
                max: 9_968,
                open_files: 20_000
            }
        );
        if let Lowered { max, open_files } = lowered {
            assert!(!open_files_short(max, open_files));
            assert!(open_files_short(max + 1, open_files));
        }
        assert_eq!(
            choose_max_connections(10_000, false, Some(1024)),
            Lowered {
                max: 480,
                open_files: 1024
            }
        );
        assert_eq!(
            choose_max_connections(10_000, false, Some(10)),
            Lowered {
                max: 1,
                open_files: 10
            }
        );
        assert_eq!(
            choose_max_connections(10_000, true, Some(1024)),
            SetAboveFiles {
                max: 10_000,
                needed: 20_064,
                open_files: 1024
            }
        );
    }
}
