//! A minimal launcher of a real Apache httpd (Debian's `apache2`, event MPM) for the AJP
//! tests, until the general one (tests/common/apache.rs, of the balancer work) is on main:
//! its own temporary directory and config, the named modules from
//! `/usr/lib/apache2/modules`, a free loopback port (picked again when another program
//! takes it first), in the foreground as a child of the test, stopped by its PID on drop.
//! Texts name the port `@PORT@` and the directory `@DIR@`.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const APACHE: &str = "/usr/sbin/apache2";
pub const MODULES: &str = "/usr/lib/apache2/modules";

/// What the test's Apache loads and serves.
#[derive(Default)]
pub struct Apache {
    modules: Vec<String>,
    files: Vec<(String, String)>,
    config: String,
}

/// A running Apache httpd, stopped by its PID when dropped.
pub struct ApacheProc {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Apache {
    pub fn new() -> Apache {
        Apache::default()
    }

    /// Modules by short name ("proxy_ajp" is `proxy_ajp_module` in `mod_proxy_ajp.so`);
    /// the event MPM and authz_core are always loaded.
    pub fn modules(mut self, names: &[&str]) -> Apache {
        self.modules.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// A file written into the server's directory before it starts.
    pub fn file(mut self, name: &str, text: &str) -> Apache {
        self.files.push((name.to_string(), text.to_string()));
        self
    }

    /// Directives after the base config.
    pub fn config(mut self, text: &str) -> Apache {
        self.config.push_str(text);
        self.config.push('\n');
        self
    }

    /// Starts it and waits until it accepts connections; None (the reason printed) when
    /// apache2 or a module is not installed.
    pub fn start(self) -> Option<ApacheProc> {
        if !Path::new(APACHE).exists() {
            eprintln!("skipping: {APACHE} is not installed (Debian package apache2)");
            return None;
        }
        let mut modules = vec!["mpm_event".to_string(), "authz_core".to_string()];
        modules.extend(self.modules.iter().cloned());
        for m in &modules {
            let file = Path::new(MODULES).join(format!("mod_{m}.so"));
            if !file.exists() {
                eprintln!("skipping: {} is not installed", file.display());
                return None;
            }
        }
        for _ in 0..5 {
            let port = super::super::free_port();
            let dir = std::env::temp_dir()
                .join(format!("deltacast-apache-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("apache dir");
            let fill = |text: &str| {
                text.replace("@PORT@", &port.to_string())
                    .replace("@DIR@", &dir.display().to_string())
            };
            let loads: String = modules
                .iter()
                .map(|m| format!("LoadModule {m}_module {MODULES}/mod_{m}.so\n"))
                .collect();
            let user = if nix::unistd::geteuid().is_root() {
                "User nobody\nGroup nogroup\n"
            } else {
                ""
            };
            let conf = format!(
                "ServerRoot \"@DIR@\"\nServerName 127.0.0.1\nListen 127.0.0.1:@PORT@\n\
                 PidFile \"@DIR@/httpd.pid\"\nDefaultRuntimeDir \"@DIR@\"\nMutex file:@DIR@ default\n\
                 ErrorLog \"@DIR@/error.log\"\nLogLevel warn\n{loads}{user}\
                 StartServers 1\nServerLimit 4\nThreadsPerChild 25\nMinSpareThreads 25\n\
                 MaxSpareThreads 75\nMaxRequestWorkers 100\n{}",
                self.config
            );
            for (name, text) in self.files.iter().chain([&("httpd.conf".to_string(), conf)]) {
                std::fs::write(dir.join(name), fill(text)).expect("apache file");
            }
            let conf = dir.join("httpd.conf");
            let child = Command::new(APACHE)
                .arg("-d")
                .arg(&dir)
                .arg("-f")
                .arg(&conf)
                .arg("-DFOREGROUND")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr"))
                .spawn()
                .expect("spawn apache2");
            let mut apache = ApacheProc {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = apache.child.try_wait() {
                    let logs = apache.logs();
                    if logs.contains("Address already in use") {
                        break;
                    }
                    panic!("apache2 exited while starting:\n{logs}");
                }
                if TcpStream::connect_timeout(&apache.addr, Duration::from_millis(200)).is_ok() {
                    return Some(apache);
                }
                if Instant::now() > deadline {
                    panic!("apache2 did not listen within 20 s:\n{}", apache.logs());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("every port tried for apache2 was taken by another program");
    }
}

impl ApacheProc {
    /// Its error log, its stderr and mod_jk's log, for a failing test's message.
    pub fn logs(&self) -> String {
        ["error.log", "stderr.log", "mod_jk.log"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for ApacheProc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM: the parent stops its children, then exits.
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
