//! A real nginx started by a test: its own directory and config, a free loopback port, in
//! the foreground (`daemon off`) as a child of the test, stopped by its PID on drop, its
//! error log shown when a test fails. Skips (prints why, returns None) when nginx is not
//! installed. The test gives what goes inside `http { }`; it names the port as `@PORT@`
//! (`listen 127.0.0.1:@PORT@;`) and the directory as `@DIR@`.

use std::net::SocketAddr;

use super::daemon::{Daemon, Launch, installed, is_root};

pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx; stopped by its PID when dropped.
pub struct NginxProc {
    pub daemon: Daemon,
}

impl NginxProc {
    /// Starts nginx with `http` as the body of its `http { }` block; None (with the reason
    /// printed) when nginx is missing.
    pub fn start(http: &str) -> Option<NginxProc> {
        if !installed(NGINX, "nginx") {
            return None;
        }
        let user = if is_root() {
            "user nobody nogroup;\n"
        } else {
            ""
        };
        let conf = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid @DIR@/nginx.pid;\n\
             error_log @DIR@/error.log warn;\n\
             {user}\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log @DIR@/access.log;\n\
             client_body_temp_path @DIR@/client_body;\n\
             proxy_temp_path @DIR@/proxy;\n\
             fastcgi_temp_path @DIR@/fastcgi;\n\
             uwsgi_temp_path @DIR@/uwsgi;\n\
             scgi_temp_path @DIR@/scgi;\n\
             {http}\n\
             }}\n"
        );
        let daemon = Daemon::start(Launch {
            label: "nginx",
            program: NGINX,
            files: vec![("nginx.conf".to_string(), conf)],
            args: vec![
                "-p",
                "@DIR@/",
                "-c",
                "@DIR@/nginx.conf",
                "-e",
                "@DIR@/error.log",
            ],
            log: "error.log",
            port_taken: &["Address already in use"],
        });
        Some(NginxProc { daemon })
    }

    /// An nginx that answers every request with `200` and `name` as the body, and sets no
    /// cookie: a plain backend that knows nothing of sessions.
    pub fn answering(name: &str) -> Option<NginxProc> {
        NginxProc::start(&format!(
            "server {{\n\
             listen 127.0.0.1:@PORT@;\n\
             location / {{ default_type text/plain; return 200 \"{name}\\n\"; }}\n\
             }}"
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr()
    }

    pub fn logs(&self) -> String {
        self.daemon.logs()
    }
}
