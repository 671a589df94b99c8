//! deltacast: a peer-to-peer HTTP session replication cluster in the style of Tomcat's
//! DeltaManager. Nodes find each other by UDP multicast heartbeats (or a static member
//! list), detect failures fast and honestly, and replicate every session change as a
//! small delta over TCP, so any node can serve any session.
//!
//! The `deltacast` binary runs nodes, the built-in balancer and a local cluster; this
//! crate is the same thing as a library: an axum (or any tower) app starts a [`Node`] in
//! its own process and keeps its sessions in the cluster through [`Session`] (feature
//! `axum`, on by default), or through a tower-sessions store (feature `tower-sessions`,
//! `web::tower_store`).
//!
//! ```
//! use axum::{Router, routing::get};
//! use deltacast::{Config, Node, Session};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! /// Counts the visits of one session: one read, one write, one delta per request.
//! async fn visits(session: Session) -> String {
//!     let n = session.get::<u64>("visits").unwrap_or(0) + 1;
//!     session.insert("visits", &n);
//!     format!("visit {n}")
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Usually `Config::load(Some(path), &[])?` (cluster.toml); here a cluster of one, on
//! // ports the kernel picks.
//! let mut config = Config::default();
//! config.cluster.name = format!("doctest-{}", std::process::id());
//! config.node.http = "127.0.0.1:0".parse()?;
//! config.node.replication = "127.0.0.1:0".parse()?;
//! let node = Node::start(config).await?; // joined the cluster and took its sessions
//! node.serve(Router::new().route("/", get(visits)).layer(node.session_layer()));
//!
//! // A client's first request: a new session, its cookie, the change replicated.
//! let mut client = tokio::net::TcpStream::connect(node.addresses().http).await?;
//! client.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n").await?;
//! let mut answer = String::new();
//! client.read_to_string(&mut answer).await?;
//! assert!(answer.starts_with("HTTP/1.1 200"));
//! assert!(answer.contains("set-cookie: JSESSIONID="));
//! assert!(answer.ends_with("visit 1"));
//! assert_eq!(node.status().sessions.active, Some(1));
//!
//! node.shutdown().await; // leaves the cluster, finishes requests and replication
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! The library's API:
//! - [`web`]: [`Node`] (start, serve an app, status, shutdown) and [`NodeBuilder`]; the
//!   session layer and the [`Session`] extractor (feature `axum`); the tower-sessions store
//!   (feature `tower-sessions`).
//! - [`config`]: the configuration file, flags and `--set` overrides, validated.
//! - [`status`]: the `/status` document, as [`Node::status`] returns it.
//! - [`session`]: the session store library (ids, cookies, versioned deltas, merge), which
//!   [`Node::store`] reads.
//! - [`backend`]: where a node's sessions live (the replicated store, Redis, Redis
//!   Cluster), behind the one seam every request goes through.
//! - [`shutdown`]: the cancellation token and task tracker every task is spawned through.
//!
//! The parts inside, public for the binary, the tests and the benchmarks but not API
//! (hidden from these docs, and free to change):
//! - `node`: the composition root of every node (`deltacast node` and [`Node`]) and its
//!   HTTP endpoints.
//! - `membership`: the member table, a pure state machine driven with injected time; the
//!   admission of strangers under a key; the view of the members others read.
//! - `wire`: bytes to checked messages and back (protobuf via prost), and the seal of the
//!   cluster key (authenticated encryption, replay windows); no sockets.
//! - `transport`: the only code that opens sockets (UDP datagrams, TCP frame streams), and
//!   their in-memory twins, on which tests run several nodes in one process.
//! - `heartbeat`: the async driver of membership (send, receive, verify, leave).
//! - `replication`: links per peer, the replication port, state transfer, anti-entropy
//!   (its comparisons pure, in their own module).
//! - `serve`: what the node's and the balancer's HTTP listeners share (limits, timeouts,
//!   one-line refusals).
//! - `balancer`: the built-in balancer: member choice, health, proxy, discovery, manager,
//!   client connections and their limits, member connections, one worker thread per core,
//!   a fast path for the common requests beside hyper.
//! - `ajp`: the AJP/1.3 connector (a pure codec, and a listener that hands each request to
//!   the node's own router), for Apache mod_proxy_ajp and mod_jk in front.
//! - `cli`: the command line (`node`, `balancer`, `up`, `status`, `keygen`).
//! - `metrics` (atomic counters behind `/status` and `/metrics`), `throttle` (log once per
//!   sender per interval), `limits` (the open file limit, raised at start), `clock` (the
//!   wall clock of session times, read by the drivers only and passed down).
//!
//! Dependencies point inward: `membership` and `wire` know nothing of tokio or sockets,
//! `transport` knows nothing of membership rules, `heartbeat` and `replication` know
//! nothing of `node` (time comes from `clock` or as an argument), and only `node`, `web`
//! and `cli` put the parts together.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod config;
pub mod session;
pub mod shutdown;
pub mod web;

#[doc(hidden)]
pub mod ajp;
#[doc(hidden)]
pub mod balancer;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod clock;
#[doc(hidden)]
pub mod heartbeat;
#[doc(hidden)]
pub mod limits;
#[doc(hidden)]
pub mod membership;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod node;
#[doc(hidden)]
pub mod replication;
#[doc(hidden)]
pub mod serve;
#[doc(hidden)]
pub mod throttle;
#[doc(hidden)]
pub mod transport;
#[doc(hidden)]
pub mod wire;

pub use config::Config;
pub use node::status;
pub use node::{Addresses, NodeError};
pub use web::{Node, NodeBuilder};
#[cfg(feature = "axum")]
pub use web::{Session, SessionLayer};
