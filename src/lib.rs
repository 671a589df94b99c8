//! deltacast: a peer-to-peer HTTP session replication cluster in the style of Tomcat's
//! DeltaManager. Nodes find each other by UDP multicast heartbeats (or a static member
//! list), detect failures fast and honestly, and replicate every session change as a
//! small delta over TCP.
//!
//! # Layout
//! - [`config`]: the configuration file, flags and `--set` overrides, validated.
//! - [`metrics`]: atomic counters behind `/status` and `/metrics`.
//! - [`shutdown`]: the cancellation token and task tracker every task is spawned through.
//! - [`throttle`]: log once per sender per interval, so floods are counted, not logged.
//! - [`limits`]: the process's open file limit, raised to the hard one at start.
//! - [`clock`]: the wall clock of session times, read by the drivers only and passed down.
//! - [`membership`]: the member table, a pure state machine driven with injected time; the
//!   admission of strangers under a key; the view of the members others read.
//! - [`wire`]: bytes to checked messages and back (protobuf via prost), and the seal of
//!   the cluster key (authenticated encryption, replay windows); no sockets.
//! - [`transport`]: the only code that opens sockets (UDP datagrams, TCP frame streams),
//!   and their in-memory twins, on which tests run several nodes in one process.
//! - [`heartbeat`]: the async driver of membership (send, receive, verify, leave).
//! - [`replication`]: links per peer, the replication port, state transfer, anti-entropy
//!   (its comparisons pure, in their own module).
//! - [`session`]: the session store library (ids, cookies, versioned deltas, merge).
//! - [`node`]: the composition root of `deltacast node` and its HTTP endpoints.
//! - [`balancer`]: the built-in balancer: member choice, health, proxy, discovery, manager,
//!   client connections and their limits, member connections, one worker thread per core,
//!   a fast path for the common requests beside hyper.
//! - [`cli`]: the command line (`node`, `balancer`, `up`, `status`, `keygen`).
//!
//! Dependencies point inward: `membership` and `wire` know nothing of tokio or sockets,
//! `transport` knows nothing of membership rules, `heartbeat` and `replication` know
//! nothing of `node` (time comes from `clock` or as an argument), and only `node` and
//! `cli` put the parts together.

#![forbid(unsafe_code)]

pub mod balancer;
pub mod cli;
pub mod clock;
pub mod config;
pub mod heartbeat;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod serve;
pub mod session;
pub mod shutdown;
pub mod throttle;
pub mod transport;
pub mod web;
pub mod wire;

pub use config::Config;
