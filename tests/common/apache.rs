//! A real Apache httpd (Debian's `apache2`, event MPM) started by a test: its own directory
//! and config, the modules the test names loaded from `/usr/lib/apache2/modules`, a free
//! loopback port, in the foreground as a child of the test, stopped by its PID on drop,
//! its error log shown when a test fails. Skips (prints why, returns None) when apache2 or
//! a module is not installed.
//!
//! ```ignore
//! let Some(apache) = Apache::new()
//!     .modules(&["proxy", "proxy_http", "proxy_balancer", "slotmem_shm", "lbmethod_byrequests"])
//!     .config("ProxyPass / balancer://cluster/\n...")
//!     .start()
//! else { return };
//! ```
//! Texts name the port as `@PORT@` and the directory as `@DIR@`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::daemon::{Daemon, Launch, installed, is_root};

pub const APACHE: &str = "/usr/sbin/apache2";
pub const MODULES: &str = "/usr/lib/apache2/modules";

/// What the test's Apache loads and serves.
#[derive(Default)]
pub struct Apache {
    modules: Vec<String>,
    files: Vec<(String, String)>,
    config: String,
    log_level: Option<String>,
}

/// A running Apache httpd; stopped by its PID when dropped.
pub struct ApacheProc {
    pub daemon: Daemon,
}

impl Apache {
    pub fn new() -> Apache {
        Apache::default()
    }

    /// Modules to load by their short name: "proxy_http" loads `proxy_http_module` from
    /// `mod_proxy_http.so`. The MPM (event), authz_core and authz_host are always loaded.
    pub fn modules(mut self, names: &[&str]) -> Apache {
        self.modules.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// A file written into the server's directory before it starts (workers.properties…).
    pub fn file(mut self, name: &str, text: &str) -> Apache {
        self.files.push((name.to_string(), text.to_string()));
        self
    }

    /// Directives after the base config (a later directive overrides an earlier one).
    pub fn config(mut self, text: &str) -> Apache {
        self.config.push_str(text);
        self.config.push('\n');
        self
    }

    /// `LogLevel` (default `warn`), e.g. "debug" or "warn proxy:trace2".
    pub fn log_level(mut self, level: &str) -> Apache {
        self.log_level = Some(level.to_string());
        self
    }

    /// Starts it; None (with the reason printed) when apache2 or a module is missing.
    pub fn start(self) -> Option<ApacheProc> {
        if !installed(APACHE, "Apache httpd (apache2)") {
            return None;
        }
        let mut modules: Vec<String> = ["mpm_event", "authz_core", "authz_host"]
            .iter()
            .map(|m| m.to_string())
            .collect();
        for m in self.modules {
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
        for m in &modules {
            let file = Path::new(MODULES).join(format!("mod_{m}.so"));
            if !file.exists() {
                eprintln!(
                    "skipping: {} is missing (the Apache module {m})",
                    file.display()
                );
                return None;
            }
        }
        let loads: String = modules
            .iter()
            .map(|m| format!("LoadModule {m}_module {MODULES}/mod_{m}.so\n"))
            .collect();
        let user = if is_root() {
            "User nobody\nGroup nogroup\n"
        } else {
            ""
        };
        let level = self.log_level.as_deref().unwrap_or("warn");
        let conf = format!(
            "ServerRoot \"@DIR@\"\n\
             ServerName 127.0.0.1\n\
             Listen 127.0.0.1:@PORT@\n\
             PidFile \"@DIR@/httpd.pid\"\n\
             DefaultRuntimeDir \"@DIR@\"\n\
             Mutex file:@DIR@ default\n\
             ErrorLog \"@DIR@/error.log\"\n\
             LogLevel {level}\n\
             LogFormat \"%h \\\"%r\\\" %>s %b %D\" short\n\
             CustomLog \"@DIR@/access.log\" short\n\
             {loads}{user}\
             StartServers 1\n\
             ServerLimit 4\n\
             ThreadsPerChild 25\n\
             MinSpareThreads 25\n\
             MaxSpareThreads 75\n\
             MaxRequestWorkers 100\n\
             {}",
            self.config
        );
        let mut files = self.files;
        files.push(("httpd.conf".to_string(), conf));
        let daemon = Daemon::start(Launch {
            label: "apache",
            program: APACHE,
            files,
            args: vec!["-d", "@DIR@", "-f", "@DIR@/httpd.conf", "-DFOREGROUND"],
            log: "error.log",
            port_taken: &["Address already in use"],
        });
        Some(ApacheProc { daemon })
    }
}

impl ApacheProc {
    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr()
    }

    pub fn dir(&self) -> &PathBuf {
        &self.daemon.dir
    }

    /// The error log and the output.
    pub fn logs(&self) -> String {
        self.daemon.logs()
    }
}
