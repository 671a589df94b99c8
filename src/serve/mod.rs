//! What the balancer's and the node's HTTP listeners share, so both defend the same way:
//! how hyper serves a client connection (header-read timeout, which is also the idle
//! keep-alive timeout, and the read buffer limit), the one-line answers in place of hyper's
//! bodiless ones ([`conn`]), and the limit on client connections ([`limit`]).

pub mod conn;
pub mod limit;
