//! The HTTP handling: the two ways a request is forwarded, both by the rulebook
//! ([`crate::balancer::rules`]) —
//! - the fast path ([`fast`]): the common bodiless requests, over raw sockets, without
//!   hyper and without allocation;
//! - the hyper path: the entry of every other request ([`service`]: limits, the manager
//!   pages of [`manager`]), the proxy ([`proxy`]) with the request bodies ([`body`]) and
//!   the answers ([`answer`]) it streams, upgraded connections ([`tunnel`]), and how hyper
//!   serves a client connection ([`conn`]);
//!
//! and what both use: what forwarding reads on a worker ([`upstream`]), the connections
//! to the members ([`pool`]), one attempt's bookkeeping on a member ([`attempt`]), the
//! member timeout ([`timeout`]), and the balancer's own figures and their Prometheus page
//! ([`figures`]).

pub mod answer;
pub mod attempt;
pub mod body;
pub use crate::serve::conn;
pub mod fast;
pub mod figures;
pub mod manager;
pub mod pool;
pub mod proxy;
pub mod service;
pub mod timeout;
pub mod tunnel;
pub mod upstream;
