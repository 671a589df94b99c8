//! A real HAProxy started by a test: its own directory and config, a free loopback port, in
//! the foreground (`-db`) as a child of the test, stopped by its PID on drop, what it wrote
//! shown when a test fails. Skips (prints why, returns None) when haproxy is not installed.
//! The test gives the sections after `global` and `defaults` (`mode http`, short
//! timeouts); it names the port as `@PORT@` (`bind 127.0.0.1:@PORT@`) and the directory as
//! `@DIR@`.

use std::net::SocketAddr;

use super::daemon::{Daemon, Launch, installed};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// A running HAProxy; stopped by its PID when dropped.
pub struct HaproxyProc {
    pub daemon: Daemon,
}

impl HaproxyProc {
    /// Starts HAProxy with `sections` (frontends, backends…); None (with the reason printed)
    /// when haproxy is missing.
    pub fn start(sections: &str) -> Option<HaproxyProc> {
        if !installed(HAPROXY, "HAProxy") {
            return None;
        }
        let conf = format!(
            "global\n\
             \x20   maxconn 1000\n\
             \x20   stats socket @DIR@/admin.sock mode 600 level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             {sections}\n"
        );
        let daemon = Daemon::start(Launch {
            label: "haproxy",
            program: HAPROXY,
            files: vec![("haproxy.cfg".to_string(), conf)],
            args: vec!["-db", "-f", "@DIR@/haproxy.cfg"],
            log: "output.log",
            port_taken: &["Address already in use", "cannot bind socket"],
        });
        Some(HaproxyProc { daemon })
    }

    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr()
    }

    pub fn logs(&self) -> String {
        self.daemon.logs()
    }
}
