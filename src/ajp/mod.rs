//! AJP/1.3, the protocol Apache httpd's mod_proxy_ajp and mod_jk speak to Tomcat, so they
//! front deltacast nodes as they front Tomcat.
//!
//! - `codec`: packets to typed parts and back, pure (no I/O), every length checked.
//! - `server`: the listener; each forward request becomes an `http::Request` handed to the
//!   tower service it is given (the node's own router, so no endpoint is written twice),
//!   request bodies come through get-body-chunk, answers go out as send-headers, body
//!   chunks and end-response with reuse.
//!
//! It knows HTTP types and the service it is handed, nothing of sessions or replication.

pub mod codec;
pub mod server;
