//! Replication over TCP between members. This part answers the failure detector's
//! pings on the replication port and rejects anything it cannot decode; the session
//! deltas travel over the same port.

mod inbound;

pub use inbound::{InboundConfig, serve};
