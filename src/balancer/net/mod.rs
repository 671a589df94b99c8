//! The balancer's sockets below HTTP: the listening sockets of the workers ([`listener`]),
//! a client connection kept out of the poller until it has to wait ([`client`]), a socket
//! that gives back what was read of it ([`rewind`]), and the limit on client connections
//! ([`limit`]).

pub mod client;
pub use crate::serve::limit;
pub mod listener;
pub mod rewind;
